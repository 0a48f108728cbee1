"""Monte-Carlo estimates of a set's mass and of the path entropy, each with an interval and a verdict.

Entry points (``n`` samples, ``key`` = ``jax.random.key(seed)`` or an int seed):

- ``mass_mc(lm, prompt, pathset, max_new, method=..., n=..., key=...)``:
  ``mc`` plain Monte Carlo, hits/n with the exact (Clopper-Pearson) interval;
  ``is`` importance sampling from a warped model or another model: mean(w · 1_S),
  w = p/q, normal interval, the Pareto k-hat of the weights and the self-normalised
  form in ``details``; ``smc`` DFA-guided SIS / SMC with betting intervals
  (``smc.py``); ``swor`` without replacement (``swor.py``); ``hybrid`` exact head +
  sampled remainder (``hybrid.py``).
- ``entropy_mc(lm, prompt, max_new, method="mc" | "swor", n=..., key=..., estimator=...)``:
  ``plain`` mean of -log p(x); ``chain`` mean of sum_t H(p(. | x_<t)) (Rao-Blackwellised:
  same expectation, lower variance); normal intervals within [0, log #paths].

Every estimate records the seed and the key's data, and says whether to trust it
(``reliable``, ``reason``: no hits, ESS < 100 for weighted methods, k-hat > 0.7 for
``is``). docs/estimators.md lists each interval, what it is valid for, and its measured
coverage. All sampling streams chunk by chunk (``running.fold_chunks``): memory is
bounded by the chunk (``smc`` keeps one float64 per sample for its interval),
``on_chunk(done, total, running_estimate)`` can show progress, and Ctrl-C returns the
estimate of the chunks drawn so far, marked ``interrupted``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel
from pathprob.paths.ancestral import DEFAULT_CHUNK, stream
from pathprob.paths.diagnostics import Tail
from pathprob.paths.hybrid import hybrid_mass
from pathprob.paths.intervals import LogMoments, Moments, clip, clopper_pearson, normal_interval, widen
from pathprob.paths.proposal import Proposal
from pathprob.paths.results import Estimate
from pathprob.paths.running import OnChunk, Run, fold_chunks
from pathprob.paths.samples import contains
from pathprob.paths.sets import PathSet, as_path_set
from pathprob.paths.smc import smc_mass
from pathprob.paths.swor import log_num_paths, swor_entropy, swor_mass

MASS_METHODS = ("mc", "is", "smc", "swor", "hybrid")
ENTROPY_METHODS = ("mc", "swor")
ENTROPY_ESTIMATORS = ("chain", "plain")


def _methods_error(method: str, allowed: tuple[str, ...]) -> PathprobError:
    return PathprobError(f"unknown method {method!r}; choose one of {', '.join(allowed)}")


def _check_options(method: str, options: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise PathprobError(f"method {method!r} takes no option(s) {', '.join(unknown)}"
                            + (f"; its options: {', '.join(allowed)}" if allowed else ""))


def mass_mc(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    pathset: PathSet | str,
    max_new: int,
    *,
    method: str,
    n: int,
    key,
    level: float = 0.95,
    chunk: int = DEFAULT_CHUNK,
    on_chunk: OnChunk | None = None,
    **options,
) -> Estimate:
    """P(set | prompt) over paths of up to ``max_new`` tokens, by a Monte-Carlo ``method``.

    Options: ``is``: ``temperature``, ``top_k``, ``top_p``, ``proposal`` (another
    LanguageModel), ``proposal_prompt``; ``smc``: ``resample`` (ESS fraction; None =
    no resampling), ``particles``; ``hybrid``: ``min_prob``, ``budget``; ``swor``: none
    (``n`` is the number of distinct paths k).
    """
    pathset = as_path_set(pathset)
    if method == "mc":
        _check_options(method, options, ())
        return _mc_mass(lm, prompt, pathset, max_new, n=n, key=key, level=level, chunk=chunk, on_chunk=on_chunk)
    if method == "is":
        _check_options(method, options, ("temperature", "top_k", "top_p", "proposal", "proposal_prompt"))
        return _is_mass(lm, prompt, pathset, max_new, n=n, key=key, level=level, chunk=chunk, on_chunk=on_chunk,
                        **options)
    if method == "smc":
        _check_options(method, options, ("resample", "particles"))
        return smc_mass(lm, prompt, pathset, max_new, n=n, key=key, level=level, chunk=chunk, on_chunk=on_chunk,
                        **options)
    if method == "swor":
        _check_options(method, options, ())
        return _reported(swor_mass(lm, prompt, pathset, max_new, n=n, key=key, level=level), on_chunk)
    if method == "hybrid":
        _check_options(method, options, ("min_prob", "budget"))
        return hybrid_mass(lm, prompt, pathset, max_new, n=n, key=key, level=level, chunk=chunk, on_chunk=on_chunk,
                           **options)
    raise _methods_error(method, MASS_METHODS)


def _reported(estimate: Estimate, on_chunk: OnChunk | None) -> Estimate:
    """Methods that do not stream report once, at the end."""
    if on_chunk is not None:
        on_chunk(estimate.n, estimate.n, estimate)
    return estimate


def _in_set(pathset: PathSet, part) -> np.ndarray:
    accepted = part.extras.get("accepted")
    return accepted if accepted is not None else contains(pathset, part.tokens, part.lengths, part.tokenizer)


def _mc_mass(lm, prompt, pathset, max_new, *, n, key, level, chunk, on_chunk) -> Estimate:
    key, run = Run.start(key)

    def estimate(counts: tuple[int, int]) -> Estimate:
        hits, done = counts
        p = hits / done
        return run.estimate("mc", p, clopper_pearson(hits, done, level), n=done, level=level,
                            stderr=math.sqrt(p * (1 - p) / done), ess=float(done), hits=hits,
                            details={"hits": hits, "interval": "Clopper-Pearson (exact binomial)"})

    fold = lambda counts, part: (counts[0] + int(np.sum(_in_set(pathset, part))), counts[1] + len(part))
    parts = stream(lm, prompt, n, max_new, key=key, chunk=chunk, dfa=pathset.dfa(lm.tokenizer))
    return fold_chunks(parts, fold, (0, 0), estimate, total=n, on_chunk=on_chunk)


def _is_mass(lm, prompt, pathset, max_new, *, n, key, level, chunk, on_chunk, temperature=1.0, top_k=None,
             top_p=None, proposal=None, proposal_prompt=None) -> Estimate:
    """mean(w · 1_S) with its normal interval.

    Pareto k-hat is fitted to all weights w (is the proposal fit for the model?) and to
    the weights of the hits (is it fit for the set?); the larger one is judged.
    """
    key, run = Run.start(key)
    warp = Proposal(temperature=temperature, top_k=top_k, top_p=top_p)
    # (hits, moments of w · 1_S, moments of w, largest w, largest w of the hits), all as logs
    start = (0, LogMoments(), LogMoments(), Tail(n), Tail(n))

    def fold(state, part):
        hits, weighted, weights, tail, tail_in = state
        log_w = part.log_weights
        inside = _in_set(pathset, part)
        log_in = np.where(inside, log_w, -np.inf)
        return hits + int(np.sum(inside)), weighted.plus(log_in), weights.plus(log_w), tail.plus(log_w), \
            tail_in.plus(log_w[inside])

    def estimate(state) -> Estimate:
        hits, weighted, weights, tail, tail_in = state
        value, stderr = weighted.mean, weighted.stderr
        # Without a hit nothing bounds the mass below 1: the weights are unbounded.
        interval = clip(widen(normal_interval(value, stderr, level), 2 * max_new), 0.0, 1.0) if hits else (0.0, 1.0)
        khat, khat_in_set = tail.khat, tail_in.khat
        details = {"hits": hits, "interval": "normal: mean(w·1_S) ± z·sd/√n ([0, 1] with no hit)",
                   "khat": khat, "khat_in_set": khat_in_set,
                   "self_normalised": _self_normalised(weighted, weights, level),
                   "ess_in_set": weighted.ess, "log_value": weighted.log_mean,
                   "proposal": {"temperature": warp.temperature, "top_k": top_k, "top_p": top_p,
                                "other_model": proposal is not None}}
        if not warp.covers_support:
            details["warning"] = ("top-k/top-p proposals give probability 0 to some paths the model can emit; "
                                  "IS misses their mass (biased low unless the set lies inside the proposal's support)")
        return run.estimate("is", value, interval, n=weights.n, level=level, stderr=stderr, ess=weights.ess,
                            hits=hits, weighted_ess=True, khats=(khat, khat_in_set), details=details)

    parts = stream(lm, prompt, n, max_new, key=key, chunk=chunk, proposal=warp, proposal_lm=proposal,
                   proposal_prompt=proposal_prompt, dfa=pathset.dfa(lm.tokenizer))
    return fold_chunks(parts, fold, start, estimate, total=n, on_chunk=on_chunk)


def _self_normalised(weighted: LogMoments, weights: LogMoments, level: float) -> dict:
    """sum w·1_S / sum w with its delta-method interval: variance sum w² (1_S - mu)² / (sum w)²."""
    if weights.s1 == 0:
        return {"value": math.nan, "stderr": math.nan, "interval": [math.nan, math.nan]}
    scale = math.exp(weighted.shift - weights.shift) if weighted.s1 > 0 else 0.0
    mu = scale * weighted.s1 / weights.s1
    in_sq = weighted.s2 * scale * scale  # sum w² 1_S, in the units of ``weights``
    var = ((1 - mu) ** 2 * in_sq + mu * mu * max(weights.s2 - in_sq, 0.0)) / weights.s1**2
    stderr = math.sqrt(var)
    return {"value": mu, "stderr": stderr, "interval": list(clip(normal_interval(mu, stderr, level), 0.0, 1.0))}


def entropy_mc(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    max_new: int,
    *,
    method: str = "mc",
    n: int,
    key,
    estimator: str = "chain",
    level: float = 0.95,
    chunk: int = DEFAULT_CHUNK,
    on_chunk: OnChunk | None = None,
) -> Estimate:
    """Entropy (nats) of the path distribution: ``mc`` (``estimator`` chain or plain) or ``swor`` (n = k)."""
    if method == "swor":
        return _reported(swor_entropy(lm, prompt, max_new, n=n, key=key, level=level), on_chunk)
    if method != "mc":
        raise _methods_error(method, ENTROPY_METHODS)
    if estimator not in ENTROPY_ESTIMATORS:
        raise PathprobError(f"unknown entropy estimator {estimator!r}; choose one of {', '.join(ENTROPY_ESTIMATORS)}")
    key, run = Run.start(key)
    bounds = (0.0, log_num_paths(lm.vocab_size, max_new))

    def estimate(values: Moments) -> Estimate:
        interval = clip(widen(normal_interval(values.mean, values.stderr, level), max_new, absolute=True), *bounds)
        return run.estimate("mc", values.mean, interval, n=values.n, level=level, stderr=values.stderr,
                            ess=float(values.n), details={"estimator": estimator,
                                                          "interval": "normal: mean ± z·sd/√n, within [0, log #paths]"})

    track = ("entropy",) if estimator == "chain" else ()
    fold = lambda values, part: values.plus(part.extras["entropy"] if estimator == "chain" else -part.logp)
    parts = stream(lm, prompt, n, max_new, key=key, chunk=chunk, track=track)
    return fold_chunks(parts, fold, Moments(), estimate, total=n, on_chunk=on_chunk)
