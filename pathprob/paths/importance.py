"""Importance sampling: mean(w · 1_S), w = p/q, from a warped model or another model.

The proposal q is the model warped by ``temperature`` / ``top_k`` / ``top_p``, or another
LanguageModel (``proposal``, after ``proposal_prompt``). The interval is normal; the
Pareto k-hat of the weights (and of the hits' weights) and the ESS say whether to trust
it, and ``details`` holds the self-normalised form. Draws stream per particle
(``ancestral.stream``), since every path has its own weight.
"""

from __future__ import annotations

import math

import numpy as np

from pathprob.paths.ancestral import stream
from pathprob.paths.diagnostics import Tail
from pathprob.paths.intervals import LogMoments, clip, normal_interval, widen
from pathprob.paths.proposal import Proposal
from pathprob.paths.results import Estimate
from pathprob.paths.running import Method, Run, fold_chunks
from pathprob.paths.samples import contains


def _in_set(pathset, part) -> np.ndarray:
    """bool[D]: which sampled rows are in the set (the sampler's DFA verdicts when it tracked them)."""
    accepted = part.extras.get("accepted")
    return accepted if accepted is not None else contains(pathset, part.tokens, part.lengths, part.tokenizer)


def is_mass(lm, prompt, pathset, max_new, *, n, key, level, chunk, on_chunk, temperature=1.0, top_k=None,
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


METHOD = Method("is", "importance sampling from a warped or another model; normal interval, Pareto k-hat",
                mass=is_mass, options=("temperature", "top_k", "top_p", "proposal", "proposal_prompt"))
