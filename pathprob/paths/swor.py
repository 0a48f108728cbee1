"""Sampling without replacement by stochastic beam search, and priority-sampling estimates.

Gumbel-top-k over whole paths (Kool, van Hoof & Welling 2019, "Stochastic beams and
where to find them"): every complete path x gets G_x = log p(x) + Gumbel, i.i.d., and
the k paths with the largest G_x are a sample without replacement. Stochastic beam
search draws them top-down: a prefix's perturbed value is the max over its extensions,
its children's values are Gumbels conditioned on that max, and a beam of the best
``beam`` >= k + 1 prefixes per level provably contains the ancestors of the top k + 1
paths. A finished path is its own only child.

Estimator (priority sampling, Duffield, Lund & Thorup 2007; bottom-k rank conditioning,
Cohen & Kaplan 2007): with kappa the (k+1)-th largest G and
q_i = 1 - exp(-exp(log p_i - kappa)) = P(G_i > kappa), the sum over the k paths of
f(x_i) p_i / q_i is unbiased for sum_x p(x) f(x). Conditional on the other paths'
values, each term is a Horvitz-Thompson term with inclusion probability q_i; the terms
are uncorrelated, so V = sum_i f_i² p_i² (1 - q_i) / q_i² is an unbiased estimate of the
variance.

Interval. The estimate is L + U: L = sum f_i p_i over the sampled paths (known) and
U = sum f_i p_i (1 - q_i) / q_i, the estimate of the unsampled paths' part. Paths far
below the threshold enter almost independently with q ~ p e^-kappa and weight
p / q ~ e^kappa: U is then tau times a Poisson count, tau = V / U. Few such paths make
the normal interval U ± z√V too short on the side of the unseen mass (as the Wald
interval of a binomial is); the Poisson score interval for the count does not. The
reported interval is the union of the two (lower end no lower than L), intersected with
bounds the k distinct paths prove. Measured coverage of nominal 95% on tiny models:
96-100% for set masses from 0.004 to 0.27 and for the entropy, k = 16-128 (the normal
interval alone: 6-96%). When the beam holds fewer than k + 1 paths, every path was
found: kappa = -inf, q_i = 1 and the estimate is exact.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel, State, check_max_new, encode_prompt, repeat_paths, take_paths
from pathprob.paths import frontier
from pathprob.paths.intervals import clip, widen, z_quantile
from pathprob.paths.results import Estimate, path_lengths
from pathprob.paths.running import Method, OnChunk, Run, report_once
from pathprob.paths.samples import as_key, contains
from pathprob.paths.sets import PathSet


def _log1mexp(a: jax.Array) -> jax.Array:
    """log(1 - exp(a)) for a <= 0 (-inf at 0)."""
    return jnp.where(a > -0.693, jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


def _conditioned(top_B: jax.Array, g_BV: jax.Array) -> jax.Array:
    """Gumbels ``g_BV`` conditioned on their row max being ``top_B`` (Kool et al. 2019, eq. 23, stable form)."""
    max_B1 = jnp.max(g_BV, axis=-1, keepdims=True)
    v_BV = top_B[:, None] - g_BV + _log1mexp(g_BV - max_B1)
    conditioned_BV = top_B[:, None] - jax.nn.softplus(v_BV)
    return jnp.where(jnp.isfinite(top_B)[:, None] & (g_BV > -jnp.inf), conditioned_BV, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("beam", "max_new"))
def _beam_search(lm, root: State, key: jax.Array, *, beam: int, max_new: int) -> dict:
    """Stochastic beam search; the beam sorted by perturbed value, best first.

    Returns ``tokens`` int32[B, L] (-1 after the end), ``step_logp`` float32[B, L],
    ``phi`` float32[B] (log p on the device) and ``g`` float32[B] (perturbed values;
    -inf for empty slots).
    """
    V, eos = lm.vocab_size, lm.eos_id
    root_key, key = jax.random.split(key)
    first_B = jnp.arange(beam) == 0
    carry = (repeat_paths(root, beam), jnp.where(first_B, 0.0, -jnp.inf),
             jnp.where(first_B, jax.random.gumbel(root_key), -jnp.inf), jnp.zeros((beam,), bool),
             jnp.full((beam, max_new), -1, jnp.int32), jnp.zeros((beam, max_new), jnp.float32))

    def step(carry, xs):
        state, phi_B, g_B, done_B, tokens_BL, step_logp_BL = carry
        t, key_t = xs
        logp_BV = lm.next_logprobs(state)
        only_first_V = jnp.arange(V) == 0  # a finished path's one child: itself, in slot 0
        child_phi_BV = jnp.where(done_B[:, None], jnp.where(only_first_V, phi_B[:, None], -jnp.inf),
                                 phi_B[:, None] + logp_BV)
        child_g_BV = _conditioned(g_B, child_phi_BV + jax.random.gumbel(key_t, (beam, V)))
        child_g_BV = jnp.where(done_B[:, None], jnp.where(only_first_V, g_B[:, None], -jnp.inf), child_g_BV)
        g_B, flat_B = jax.lax.top_k(child_g_BV.reshape(-1), beam)
        parent_B, token_B = flat_B // V, (flat_B % V).astype(jnp.int32)
        finished_B = done_B[parent_B]
        tokens_BL = tokens_BL[parent_B].at[:, t].set(jnp.where(finished_B, -1, token_B))
        step_logp_BL = step_logp_BL[parent_B].at[:, t].set(jnp.where(finished_B, 0.0, logp_BV[parent_B, token_B]))
        state = lm.advance(take_paths(state, parent_B), jnp.where(finished_B, eos, token_B))
        carry = (state, child_phi_BV[parent_B, token_B], g_B, finished_B | (token_B == eos), tokens_BL, step_logp_BL)
        return carry, None

    (_, phi_B, g_B, _, tokens_BL, step_logp_BL), _ = jax.lax.scan(
        step, carry, (jnp.arange(max_new), jax.random.split(key, max_new)))
    return {"tokens": tokens_BL, "step_logp": step_logp_BL, "phi": phi_B, "g": g_B}


@dataclasses.dataclass(frozen=True)
class DistinctSample:
    """k distinct paths drawn without replacement, with their inclusion probabilities.

    ``logp`` float64[k] (host sum of float32 per-token log-probs), ``log_q`` float64[k]
    (log P(path i is in the sample | the others' values)), ``kappa`` the threshold
    (-inf when ``complete``: every path of positive probability is listed).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    logp: np.ndarray
    log_q: np.ndarray
    kappa: float
    complete: bool

    @property
    def ht_weights(self) -> np.ndarray:
        """p_i / q_i: the weight of each path in the unbiased estimators."""
        return np.exp(self.logp - self.log_q)


def sample_distinct(lm: LanguageModel, prompt: str | Sequence[int], k: int, max_new: int, *, key) -> DistinctSample:
    """``k`` distinct paths by stochastic beam search (fewer when fewer paths exist)."""
    if not isinstance(k, int) or k <= 0:
        raise PathprobError(f"swor needs a positive integer number of paths (n = k), got {k!r}")
    check_max_new(max_new)
    key, _, _ = as_key(key)
    prompt_P = encode_prompt(lm, prompt, room=max_new)
    root = frontier.start(lm, [prompt_P], max_new)[0]
    out = jax.device_get(_beam_search(lm, root, key, beam=frontier.bucket(k + 1), max_new=max_new))
    found = int(np.sum(out["g"] > -np.inf))
    kept = min(k, found)
    kappa = float(out["g"][k]) if found > k else -math.inf
    phi = np.asarray(out["phi"][:kept], np.float64)
    log_q = np.log(-np.expm1(-np.exp(phi - kappa))) if kappa > -math.inf else np.zeros(kept)
    tokens = out["tokens"][:kept]
    return DistinctSample(tokens=tokens, lengths=path_lengths(tokens),
                          logp=np.asarray(out["step_logp"][:kept], np.float64).sum(axis=1), log_q=log_q,
                          kappa=kappa, complete=found <= k)


def log_num_paths(vocab: int, max_new: int) -> float:
    """log of the number of paths: sum over t = 0..max_new of (V - 1)^t (EOS ends a path)."""
    return float(np.logaddexp.reduce(np.arange(max_new + 1) * math.log(max(vocab - 1, 1)))) if vocab > 2 else \
        math.log(max_new + 1)


def _interval(sample: DistinctSample, f: np.ndarray, f_scale: float, level: float) -> tuple[float, float, float, float]:
    """(value, stderr, lower, upper): the estimate and the union of its normal and Poisson-score intervals."""
    w, q = sample.ht_weights, np.exp(sample.log_q)
    value = float(np.sum(f * w))
    known = float(np.sum(f * np.exp(sample.logp)))
    unseen = max(value - known, 0.0)
    var = float(np.sum(f * f * w * w * (1 - q)))
    z = z_quantile(level)
    tau = var / unseen if unseen > 0 else math.exp(sample.kappa) * f_scale  # weight of one far-below-kappa path
    count = unseen / tau if tau > 0 else 0.0
    spread = z * math.sqrt(count + z * z / 4)
    lower = max(known, min(known + tau * (count + z * z / 2 - spread), value - z * math.sqrt(var)))
    upper = max(known + tau * (count + z * z / 2 + spread), value + z * math.sqrt(var))
    return value, math.sqrt(var), lower, upper


def _estimate(sample: DistinctSample, f: np.ndarray, f_scale: float, bounds: tuple[float, float], *, estimand: str,
              level: float, run: Run, max_new: int, hits: int | None = None) -> Estimate:
    value, stderr, lower, upper = _interval(sample, f, f_scale, level)
    interval = clip((lower, upper), *bounds)
    if not sample.complete:
        interval = widen(interval, max_new, absolute=estimand == "entropy")
    w = sample.ht_weights
    ess = float(np.sum(w) ** 2 / np.sum(w * w)) if w.size else 0.0
    return run.estimate("swor", min(max(value, bounds[0]), bounds[1]), interval, n=len(w), stderr=stderr, ess=ess,
                        exact=sample.complete, level=None if sample.complete else level,
                        hits=None if sample.complete else hits,
                        details={"estimand": estimand, "kappa": sample.kappa, "distinct_paths": len(w),
                                 "proven_lower": bounds[0], "proven_upper": bounds[1],
                                 "interval": "union of the normal interval (priority-sampling variance) and a "
                                             "Poisson score interval for the unsampled part, within the proven "
                                             "bounds"})


def swor_mass(lm: LanguageModel, prompt, pathset: PathSet, max_new: int, *, n: int, key, level: float = 0.95,
              chunk: int | None = None, on_chunk: OnChunk | None = None) -> Estimate:
    """P(set) from ``n`` distinct paths (sum over those in the set of p_i / q_i).

    The n paths are drawn as one batch (``chunk`` is not used); ``on_chunk`` hears of the end.
    """
    key, run = Run.start(key)
    sample = sample_distinct(lm, prompt, n, max_new, key=key)
    inside = contains(pathset, sample.tokens, sample.lengths, lm.tokenizer)
    p = np.exp(sample.logp)
    bounds = (float(np.sum(p[inside])), max(0.0, 1.0 - float(np.sum(p[~inside]))))
    if sample.complete:
        bounds = (bounds[0], bounds[0])
    return report_once(_estimate(sample, inside.astype(np.float64), 1.0, bounds, estimand="mass", level=level,
                                 run=run, max_new=max_new, hits=int(np.sum(inside))), on_chunk)


def swor_entropy(lm: LanguageModel, prompt, max_new: int, *, n: int, key, level: float = 0.95,
                 chunk: int | None = None, on_chunk: OnChunk | None = None) -> Estimate:
    """Path entropy (nats) from ``n`` distinct paths (sum of -log p_i · p_i / q_i), drawn as one batch.

    Proven bounds: the listed paths' own terms plus, for the unlisted mass r (no path
    of which exceeds r), at least r log(1/r) and at most r log(N / r), N paths in all.
    """
    key, run = Run.start(key)
    sample = sample_distinct(lm, prompt, n, max_new, key=key)
    listed = float(np.sum(-np.exp(sample.logp) * sample.logp))
    rest = 0.0 if sample.complete else max(0.0, -math.expm1(float(np.logaddexp.reduce(sample.logp))))
    log_rest = math.log(rest) if rest > 0 else 0.0
    bounds = (listed - rest * log_rest, listed + rest * (log_num_paths(lm.vocab_size, max_new) - log_rest))
    return report_once(_estimate(sample, -sample.logp, float(np.max(-sample.logp, initial=0.0)), bounds,
                                 estimand="entropy", level=level, run=run, max_new=max_new), on_chunk)


METHOD = Method("swor", "n distinct paths without replacement (n = k); proven bounds and a normal interval",
                mass=swor_mass, entropy=swor_entropy)
