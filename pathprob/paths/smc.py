"""DFA-guided sequential importance sampling and SMC estimates of a set's mass, with betting intervals.

At each step the proposal is the model restricted to the tokens after which the path can
still end inside the set (``proposal.allowed_tokens``: the DFA, run inside jit, with the
number of tokens left), renormalised. The weight multiplies by the allowed mass
Z_t = sum over allowed v of p(v | x_<t), so the final weight prod_t Z_t · 1[accepted] is
an unbiased estimate of P(S); when every allowed path ends inside the set (always, with
this look-ahead, unless the model gives the allowed tokens probability 0) and the Z_t do
not depend on the path, it has zero variance.

Every weight lies in [0, Z_1]: Z_1, the allowed mass at the first step, is the same for
every path, and each later factor is at most 1 (so P(S) <= Z_1 too). Without
resampling the weights are i.i.d.: the interval is Waudby-Smith & Ramdas's betting
interval for the mean of weights / Z_1 in [0, 1], valid at every n with no assumption on
their distribution (``intervals.betting_interval``). With resampling (systematic,
whenever ESS/B drops below ``resample``), each replicate of B particles estimates P(S)
by the product over resampling stages of the mean incremental weights: unbiased because
resampling preserves the expected unnormalised measure given the particles (Del Moral
2004; the decision to resample is a function of the current weights, so adaptivity keeps
this property), and in [0, Z_1] because every stage's mean is at most 1 after the first.
Replicates are independent, so the interval is the betting interval over the R
replicates: valid for P(S) at every R, but as it assumes only the bound its upper end
is at least about Z_1 · log(2/α) / (0.75 R), so resampling needs many replicates.
Both intervals are widened for float32 rounding (``intervals.widen``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from pathprob import devices
from pathprob.devices import AXIS
from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel, State, encode_prompt, repeat_paths, take_paths
from pathprob.paths import frontier
from pathprob.paths.ancestral import DEFAULT_CHUNK, chunk_keys, stream
from pathprob.paths.intervals import LogMoments, betting_interval, widen
from pathprob.paths.proposal import Guide, Proposal, allowed_tokens, inverse_cdf, make_guide, restrict
from pathprob.paths.results import Estimate, logsumexp64
from pathprob.paths.running import Method, OnChunk, Run, fold_chunks
from pathprob.paths.sets import PathSet

MIN_REPLICATES = 8


def _systematic(key: jax.Array, logw_B: jax.Array) -> jax.Array:
    """int32[B]: ancestor indices by systematic resampling (offspring i has mean B·W_i)."""
    B = logw_B.shape[0]
    w_B = jnp.exp(logw_B - jnp.max(logw_B))
    cdf_B = jnp.cumsum(w_B) / jnp.sum(w_B)
    points_B = (jax.random.uniform(key) + jnp.arange(B)) / B
    return jnp.minimum(jnp.searchsorted(cdf_B, points_B, side="right"), B - 1).astype(jnp.int32)


def _smc_replicate(lm, root: State, guide: Guide, key: jax.Array, *, batch: int, max_new: int, threshold: float):
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


_smc_chunk = jax.jit(_smc_replicate, static_argnames=("batch", "max_new", "threshold"))


@functools.lru_cache(maxsize=16)
def _smc_replicates_on(mesh, impl, *, batch: int, max_new: int, threshold: float):
    """D replicates at once, replicate k on device k with key data row k; results stacked [D, ...]."""

    def body(lm, root, guide, key_data):
        key = jax.random.wrap_key_data(key_data[0], impl=impl)
        out = _smc_replicate(lm, root, guide, key, batch=batch, max_new=max_new, threshold=threshold)
        return jax.tree.map(lambda x: x[None], out)

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P(), P(AXIS)), out_specs=P(AXIS),
                                 check_vma=False))


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
    on_chunk: OnChunk | None = None,
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
    if resample is not None and not 0 < resample <= 1:
        raise PathprobError(f"resample must be an ESS fraction in (0, 1], got {resample!r}")
    if resample is not None and (not isinstance(n, int) or n < 2):
        raise PathprobError(f"smc with resampling needs n >= 2, got {n!r}")
    key, run = Run.start(key)
    prompt_P = encode_prompt(lm, prompt, room=max_new)
    root, logprobs_1V = frontier.start(lm, [prompt_P], max_new)
    guide = make_guide(dfa, max_new, lm.eos_id)
    log_bound = float(_log_first_mass(logprobs_1V, guide, max_new=max_new, eos=lm.eos_id))
    if resample is None:
        return _sis(lm, prompt_P, guide, dfa, max_new, n=n, key=key, chunk=chunk, level=level, on_chunk=on_chunk,
                    run=run, log_bound=log_bound)
    return _smc(lm, root, guide, max_new, n=n, key=key, threshold=float(resample), particles=particles, level=level,
                on_chunk=on_chunk, run=run, log_bound=log_bound)


@functools.partial(jax.jit, static_argnames=("max_new", "eos"))
def _log_first_mass(logprobs_1V: jax.Array, guide: Guide, *, max_new: int, eos: int) -> jax.Array:
    """log Z_1: the allowed mass at the first step, the same for every path, which bounds every weight."""
    allowed_1V = allowed_tokens(guide, guide.initial[None], max_new - 1, eos)
    return restrict(logprobs_1V, allowed_1V)[1][0]


def _bounded_interval(log_x: np.ndarray, log_bound: float, level: float, planned: int,
                      max_new: int) -> tuple[float, float]:
    """The betting interval for the mean of exp(``log_x``) in [0, exp(``log_bound``)], widened for float32.

    The scaled values are clipped at 1: a weight can exceed Z_1 only by the float32
    rounding of a batch that computed Z_1 in another shape, which ``widen`` covers.
    """
    if log_bound == -math.inf:
        return 0.0, 0.0
    bound = math.exp(log_bound)
    lower, upper = betting_interval(np.minimum(np.exp(log_x - log_bound), 1.0), level, planned=planned)
    lower, upper = widen((bound * lower, bound * upper), max_new)
    return lower, min(upper, 1.0)


def _sis(lm, prompt_P, guide, dfa, max_new, *, n, key, chunk, level, on_chunk, run, log_bound) -> Estimate:
    """The state is the tuple of each chunk's log weights (float64, -inf outside the set)."""

    def estimate(log_w_parts: tuple[np.ndarray, ...]) -> Estimate:
        log_w = np.concatenate(log_w_parts)
        weights = LogMoments().plus(log_w)
        hits = int(np.sum(np.isfinite(log_w)))
        interval = _bounded_interval(log_w, log_bound, level, n, max_new)
        return run.estimate("smc", weights.mean, interval, n=weights.n, level=level, stderr=weights.stderr,
                            ess=weights.ess, hits=hits, weighted_ess=True,
                            details={"resampling": None, "log_value": weights.log_mean, "hits": hits,
                                     "bound": math.exp(log_bound),
                                     "interval": "betting (Waudby-Smith & Ramdas) over i.i.d. weights prod_t Z_t "
                                                 "in [0, Z_1]"})

    fold = lambda parts, part: (*parts, np.where(part.extras["accepted"], part.log_weights, -np.inf))
    parts = stream(lm, prompt_P, n, max_new, key=key, chunk=chunk, proposal=Proposal(guided=True), dfa=dfa)
    # The betting interval costs O(n): running estimates are refreshed as n grows by 10%.
    return fold_chunks(parts, fold, (), estimate, total=n, on_chunk=on_chunk, refresh=1.1)


def _replicate_size(n: int, particles: int) -> int:
    """Particles per replicate: ``particles`` (a power of two) unless that leaves fewer than 8 replicates."""
    size = frontier.bucket(particles)
    if -(-n // size) < MIN_REPLICATES:
        size = max(1, 1 << ((n // MIN_REPLICATES).bit_length() - 1)) if n >= MIN_REPLICATES else 1
    return size


def _smc(lm, root, guide, max_new, *, n, key, threshold, particles, level, on_chunk, run, log_bound) -> Estimate:
    """The state is a tuple of one (log estimate, final ESS, resampling steps, accepted particles) per replicate."""
    size = _replicate_size(n, particles)
    replicates = max(-(-n // size), 2)
    where = devices.current()

    def draw():
        for r in range(replicates):
            yield jax.device_get(_smc_chunk(lm, root, guide, jax.random.fold_in(key, r), batch=size, max_new=max_new,
                                            threshold=threshold))

    def draw_on():  # replicates r, ..., r + D - 1 at once, replicate r + k on device k, each with fold_in(key, r + k)
        D = where.size
        fn = _smc_replicates_on(where.mesh, jax.random.key_impl(key), batch=size, max_new=max_new,
                                threshold=threshold)
        placed, placed_root, placed_guide = where.place_model(lm), where.replicate(root), where.replicate(guide)

        def launch(first: int):  # past ``replicates``: padding replicates, never read
            keys = jax.random.key_data(chunk_keys(key, range(first, first + D)))
            return fn(placed, placed_root, placed_guide, where.shard_rows(np.asarray(keys)))

        pending = launch(0)
        for first in range(0, replicates, D):
            out, pending = pending, (launch(first + D) if first + D < replicates else None)  # keep the devices busy
            out = {name: where.host(value) for name, value in out.items()}
            for k in range(min(D, replicates - first)):
                yield {name: value[k] for name, value in out.items()}

    def fold(done: tuple, out: dict) -> tuple:
        logw_B = np.where(out["accepted"], np.asarray(out["logw"], np.float64), -np.inf)
        log_z = float(np.sum(np.asarray(out["log_stage"], np.float64))) + logsumexp64(logw_B) - math.log(size)
        finite = logw_B[np.isfinite(logw_B)]
        ess = float(np.exp(2 * logsumexp64(finite) - logsumexp64(2 * finite))) if finite.size else 0.0
        return (*done, (log_z, ess, int(np.sum(out["resampled"])), finite.size))

    def estimate(done: tuple) -> Estimate:
        log_z, ess, stages, accepted = (np.asarray(column) for column in zip(*done))
        values = LogMoments().plus(log_z)
        hits = int(np.sum(accepted))
        return run.estimate("smc", values.mean, _bounded_interval(log_z, log_bound, level, replicates, max_new),
                            n=values.n * size, level=level, stderr=values.stderr, ess=float(np.sum(ess)), hits=hits,
                            weighted_ess=True,
                            details={"resampling": f"systematic when ESS < {threshold:g}·particles",
                                     "particles": size, "replicates": values.n, "log_value": values.log_mean,
                                     "mean_resampling_steps": float(np.mean(stages)), "hits": hits,
                                     "bound": math.exp(log_bound),
                                     "interval": "betting (Waudby-Smith & Ramdas) over i.i.d. replicate estimates "
                                                 "in [0, Z_1]"})

    return fold_chunks(draw() if where is None else draw_on(), fold, (), estimate, total=replicates * size,
                       on_chunk=on_chunk, count=lambda _: size)


METHOD = Method("smc", "DFA-guided sequential importance sampling (SMC with resample); betting interval",
                mass=smc_mass, options=("resample", "particles"))
