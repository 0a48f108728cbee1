"""DFA-guided sequential importance sampling and SMC estimates of a set's mass.

At each step the proposal is the model restricted to the tokens after which the path can
still end inside the set (``proposal.allowed_tokens``: the DFA, run inside jit, with the
number of tokens left), renormalised. The weight multiplies by the allowed mass
Z_t = sum over allowed v of p(v | x_<t), so the final weight prod_t Z_t · 1[accepted] is
an unbiased estimate of P(S), in [0, 1]; when every allowed path ends inside the set
(always, with this look-ahead, unless the model gives the allowed tokens probability 0)
and the Z_t do not depend on the path, it has zero variance.

Without resampling the weights are i.i.d.: the interval is the normal one,
mean ± z·sd/√n. With resampling (systematic, whenever ESS/B drops below ``resample``),
each replicate of B particles estimates P(S) by the product over resampling stages of
the mean incremental weights, unbiased because resampling preserves the expected
unnormalised measure given the particles (Del Moral 2004; the decision to resample is a
function of the current weights, so adaptivity keeps this property). Replicates are
independent: the interval is mean ± t_{R-1}·sd/√R over R replicates.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel, State, encode_prompt, repeat_paths, take_paths
from pathprob.paths import frontier
from pathprob.paths.intervals import LogMoments, clip, normal_interval, t_interval
from pathprob.paths.results import Estimate, logsumexp64
from pathprob.paths.proposal import Guide, Proposal, allowed_tokens, inverse_cdf, make_guide, restrict
from pathprob.paths.ancestral import DEFAULT_CHUNK, stream
from pathprob.paths.samples import as_key
from pathprob.paths.sets import PathSet

MIN_REPLICATES = 8


def _systematic(key: jax.Array, logw_B: jax.Array) -> jax.Array:
    """int32[B]: ancestor indices by systematic resampling (offspring i has mean B·W_i)."""
    B = logw_B.shape[0]
    w_B = jnp.exp(logw_B - jnp.max(logw_B))
    cdf_B = jnp.cumsum(w_B) / jnp.sum(w_B)
    points_B = (jax.random.uniform(key) + jnp.arange(B)) / B
    return jnp.minimum(jnp.searchsorted(cdf_B, points_B, side="right"), B - 1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("batch", "max_new", "threshold"))
def _smc_chunk(lm, root: State, guide: Guide, key: jax.Array, *, batch: int, max_new: int, threshold: float):
    """One SMC replicate of ``batch`` particles.

    Returns per-step ``log_stage`` float32[L] (log mean weight when the step resampled,
    else 0) and ``resampled`` bool[L], and the final ``logw`` float32[B] since the last
    resampling and ``accepted`` bool[B].
    """
    eos = lm.eos_id
    carry = (repeat_paths(root, batch), jnp.full((batch,), guide.initial, jnp.int32), jnp.zeros((batch,), bool),
             jnp.zeros((batch,), jnp.float32))

    def step(carry, xs):
        state, dfa_B, done_B, logw_B = carry
        t, key_t = xs
        draw_key, resample_key = jax.random.split(key_t)
        logp_BV = lm.next_logprobs(state)
        logq_BV, log_allowed_B = restrict(logp_BV, allowed_tokens(guide, dfa_B, max_new - 1 - t, eos))
        token_B = inverse_cdf(logq_BV, jax.random.uniform(draw_key, (batch,)))
        live_B = ~done_B
        logw_B = logw_B + jnp.where(live_B, log_allowed_B, 0.0)
        dfa_B = jnp.where(live_B, guide.transitions_SV[dfa_B, token_B], dfa_B)
        state = lm.advance(state, jnp.where(live_B, token_B, eos))
        done_B = done_B | (token_B == eos)

        log_total = jax.nn.logsumexp(logw_B)
        ess = jnp.exp(2 * log_total - jax.nn.logsumexp(2 * logw_B))
        go = jnp.isfinite(log_total) & (ess < threshold * batch) & (t < max_new - 1)

        def resample(args):
            state, dfa_B, done_B, logw_B = args
            index_B = _systematic(resample_key, logw_B)
            return (take_paths(state, index_B), dfa_B[index_B], done_B[index_B], jnp.zeros_like(logw_B)), \
                log_total - jnp.log(jnp.float32(batch))

        def keep(args):
            return args, jnp.float32(0.0)

        carry, log_stage = jax.lax.cond(go, resample, keep, (state, dfa_B, done_B, logw_B))
        return carry, {"log_stage": log_stage, "resampled": go}

    (_, dfa_B, _, logw_B), out = jax.lax.scan(step, carry, (jnp.arange(max_new), jax.random.split(key, max_new)))
    return {**out, "logw": logw_B, "accepted": guide.accepting_S[dfa_B]}


def smc_mass(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    pathset: PathSet,
    max_new: int,
    *,
    n: int,
    key,
    resample: float | None = None,
    particles: int = 1024,
    chunk: int = DEFAULT_CHUNK,
    level: float = 0.95,
    on_chunk: Callable[[int, int, Estimate], None] | None = None,
) -> Estimate:
    """P(set) by DFA-guided sequential importance sampling, or SMC with ``resample`` in (0, 1].

    ``resample`` is the ESS/B threshold below which particles are resampled; SMC then
    runs replicates of ``particles`` particles (a power of two; fewer when n is small, so
    that there are at least 8 replicates) and reports ``n`` = particles × replicates.
    """
    dfa = pathset.dfa(lm.tokenizer)
    if dfa is None:
        raise PathprobError(f"method 'smc' needs a set with a DFA (a Regex or a combination of Regex sets); {pathset} "
                            "has none: use method 'mc', 'is' or 'hybrid'")
    t0 = time.perf_counter()
    _, seed, _ = as_key(key)
    if resample is None:
        return _sis(lm, prompt, dfa, max_new, n=n, key=key, chunk=chunk, level=level, on_chunk=on_chunk,
                    t0=t0, seed=seed)
    if not 0 < resample <= 1:
        raise PathprobError(f"resample must be an ESS fraction in (0, 1], got {resample!r}")
    return _smc(lm, prompt, dfa, max_new, n=n, key=key, threshold=float(resample), particles=particles, level=level,
                on_chunk=on_chunk, t0=t0, seed=seed)


def _sis(lm, prompt, dfa, max_new, *, n, key, chunk, level, on_chunk, t0, seed) -> Estimate:
    weights = LogMoments()
    done = 0

    def estimate() -> Estimate:
        value, stderr = weights.mean, weights.stderr
        lower, upper = clip(normal_interval(value, stderr, level), 0.0, 1.0)
        return Estimate(value=value, lower=lower, upper=upper, method="smc", n=weights.n, stderr=stderr,
                        ess=weights.ess, seconds=time.perf_counter() - t0, level=level, seed=seed,
                        details={"resampling": None, "log_value": weights.log_mean,
                                 "interval": "normal: mean ± z·sd/√n over i.i.d. weights prod_t Z_t in [0, 1]"})

    for part in stream(lm, prompt, n, max_new, key=key, chunk=chunk, proposal=Proposal(guided=True), dfa=dfa):
        weights.add(np.where(part.extras["accepted"], part.log_weights, -np.inf))
        done += len(part)
        if on_chunk is not None:
            on_chunk(done, n, estimate())
    return estimate()


def _smc(lm, prompt, dfa, max_new, *, n, key, threshold, particles, level, on_chunk, t0, seed) -> Estimate:
    if not isinstance(n, int) or n < 2:
        raise PathprobError(f"smc with resampling needs n >= 2, got {n!r}")
    key, _, _ = as_key(key)
    size = frontier.bucket(particles)
    if -(-n // size) < MIN_REPLICATES:
        size = max(1, 1 << ((n // MIN_REPLICATES).bit_length() - 1)) if n >= MIN_REPLICATES else 1
    replicates = max(-(-n // size), 2)
    prompt_P = encode_prompt(lm, prompt, room=max_new)
    root = frontier.start(lm, [prompt_P], max_new)[0]
    guide = make_guide(dfa, max_new, lm.eos_id)
    values, ess, stages = LogMoments(), 0.0, []

    def estimate() -> Estimate:
        value, stderr = values.mean, values.stderr
        lower, upper = clip(t_interval(value, stderr, values.n, level), 0.0, 1.0)
        return Estimate(value=value, lower=lower, upper=upper, method="smc", n=values.n * size, stderr=stderr,
                        ess=ess, seconds=time.perf_counter() - t0, level=level, seed=seed,
                        details={"resampling": f"systematic when ESS < {threshold:g}·particles",
                                 "particles": size, "replicates": values.n, "log_value": values.log_mean,
                                 "mean_resampling_steps": float(np.mean(stages)) if stages else 0.0,
                                 "interval": "t over independent replicates: mean ± t_{R-1}·sd/√R"})

    for r in range(replicates):
        out = jax.device_get(_smc_chunk(lm, root, guide, jax.random.fold_in(key, r), batch=size, max_new=max_new,
                                        threshold=threshold))
        logw_B = np.where(out["accepted"], np.asarray(out["logw"], np.float64), -np.inf)
        log_z = float(np.sum(np.asarray(out["log_stage"], np.float64))) + logsumexp64(logw_B) - math.log(size)
        values.add([log_z])
        finite = logw_B[np.isfinite(logw_B)]
        ess += float(np.exp(2 * logsumexp64(finite) - logsumexp64(2 * finite))) if finite.size else 0.0
        stages.append(int(np.sum(out["resampled"])))
        if on_chunk is not None and values.n >= 2:
            on_chunk(values.n * size, replicates * size, estimate())
    return estimate()
