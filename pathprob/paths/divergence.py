"""Divergences between two path distributions (two prompts and/or two models): KL, exactly or by Monte Carlo."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel, encode_prompt
from pathprob.paths.ancestral import DEFAULT_CHUNK, stream
from pathprob.paths.budget import DEFAULT_BUDGET, Budget, estimate_work, listed_paths_bound, monte_carlo
from pathprob.paths.enumerate import DEFAULT_CHUNK as ENUMERATE_CHUNK
from pathprob.paths.enumerate import check_request, enumerate_paths
from pathprob.paths.intervals import Moments, check_level, clip, normal_interval
from pathprob.paths.montecarlo import ENTROPY_ESTIMATORS, OnChunk, _methods_error
from pathprob.paths.proposal import MODEL
from pathprob.paths.results import Estimate
from pathprob.paths.samples import as_key, check_compatible
from pathprob.paths.score import score, scoring_cost


def kl(
    lm_a: LanguageModel,
    prompt_a: str | Sequence[int],
    lm_b: LanguageModel,
    prompt_b: str | Sequence[int],
    max_new: int,
    *,
    method: str = "exact",
    n: int = 4096,
    key=None,
    estimator: str = "chain",
    level: float = 0.95,
    chunk: int = DEFAULT_CHUNK,
    budget: Budget = DEFAULT_BUDGET,
    on_chunk: OnChunk | None = None,
) -> Estimate:
    """KL(a || b) in nats between the path distributions of (lm_a, prompt_a) and (lm_b, prompt_b).

    ``exact``: enumerate every path of a, score each under b (in chunks), sum in float64
    (``inf`` when b cannot emit a path a can); refused before any work, naming the
    Monte-Carlo command, when that does not fit ``budget``. ``mc``: sample x ~ a; ``estimator``
    ``plain`` averages log p_a(x) - log p_b(x); ``chain`` averages
    sum_t KL(p_a(. | x_<t) || p_b(. | x_<t)) (the chain rule: same expectation, lower
    variance). A sample that b cannot emit proves KL = inf.
    """
    if not isinstance(method, str) or method not in ("exact", "mc"):
        raise _methods_error(method, ("exact", "mc"))
    for name, lm in (("lm_a", lm_a), ("lm_b", lm_b)):
        if not isinstance(lm, LanguageModel):
            raise PathprobError(f"{name} must be a LanguageModel (pp.open_model(spec)), got {type(lm).__name__}")
    check_compatible(lm_a, lm_b)
    t0 = time.perf_counter()
    if method == "exact":
        return _kl_exact(lm_a, prompt_a, lm_b, prompt_b, max_new, budget, t0)
    if not isinstance(estimator, str) or estimator not in ENTROPY_ESTIMATORS:
        raise PathprobError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(ENTROPY_ESTIMATORS)}")
    check_level(level)
    _, seed, key_data = as_key(key)
    values = Moments()
    infinite, drawn = False, 0

    def estimate() -> Estimate:
        if infinite:
            return Estimate(value=math.inf, lower=math.inf, upper=math.inf, method="mc", n=drawn, exact=True,
                            seconds=time.perf_counter() - t0, seed=seed, key_data=key_data,
                            details={"estimator": estimator, "reason": "a sampled path (or next token) has "
                                     "positive probability under a and zero under b"})
        lower, upper = clip(normal_interval(values.mean, values.stderr, level), 0.0, math.inf)
        return Estimate(value=values.mean, lower=lower, upper=upper, method="mc", n=values.n, stderr=values.stderr,
                        ess=float(values.n), seconds=time.perf_counter() - t0, level=level, seed=seed, key_data=key_data,
                        details={"estimator": estimator, "interval": "normal: mean ± z·sd/√n, KL >= 0"})

    # Draw from a (the proposal, unwarped), score under b (the target): logq = log p_a, logp = log p_b.
    for part in stream(lm_b, prompt_b, n, max_new, key=key, chunk=chunk, proposal=MODEL, proposal_lm=lm_a,
                       proposal_prompt=prompt_a, track=("kl",) if estimator == "chain" else ()):
        per_path = part.extras["kl"] if estimator == "chain" else part.logq - part.logp
        drawn += len(part)
        if not np.all(np.isfinite(per_path)):
            infinite = True
            break
        values.add(per_path)
        if on_chunk is not None:
            on_chunk(values.n, n, estimate())
    return estimate()


def _kl_exact(lm_a: LanguageModel, prompt_a, lm_b: LanguageModel, prompt_b, max_new: int, budget: Budget,
              t0: float) -> Estimate:
    """Enumerate every path of a, score the listed paths under b in chunks, sum p_a (log p_a - log p_b) in float64.

    Refused before any work when the enumeration plus scoring every path it can list
    under b does not fit ``budget``. The same model and prompt on both sides is 0 exactly.
    """
    prompt_aP = check_request(lm_a, prompt_a, max_new, 0.0, None)
    prompt_bP = encode_prompt(lm_b, prompt_b, room=max_new)
    if lm_a is lm_b and np.array_equal(prompt_aP, prompt_bP):
        return Estimate(value=0.0, lower=0.0, upper=0.0, method="exact", exact=True,
                        seconds=time.perf_counter() - t0, details={"paths": 0, "reason": "the same distribution"})
    nodes, nbytes = estimate_work(lm_a, max_new, min_prob=0.0, max_paths=None, chunk=ENUMERATE_CHUNK)
    score_nodes, score_bytes = scoring_cost(lm_b, listed_paths_bound(lm_a, max_new), max_new, budget)
    budget.require(f"the exact KL over paths of up to {max_new} tokens needs up to", nodes + score_nodes,
                   nbytes + score_bytes, monte_carlo("kl"))
    table = enumerate_paths(lm_a, prompt_aP, max_new, budget=budget)
    log_a, log_b = table.logp, score(lm_b, prompt_bP, table.tokens, budget=budget)
    p_a = np.exp(log_a)
    with np.errstate(invalid="ignore"):  # p_a underflowing to 0 where b has -inf: 0 * inf, dropped
        value = float(np.sum(np.where(p_a > 0, p_a * (log_a - log_b), 0.0)))
    return Estimate(value=value, lower=value, upper=value, method="exact", exact=True,
                    seconds=time.perf_counter() - t0, details={"paths": len(table)})
