"""Divergences between two path distributions (two prompts and/or two models): KL, exactly or by Monte Carlo."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel
from pathprob.paths.enumerate import DEFAULT_BUDGET, Budget, enumerate_paths
from pathprob.paths.intervals import Moments, clip, normal_interval
from pathprob.paths.montecarlo import ENTROPY_ESTIMATORS, OnChunk, _methods_error
from pathprob.paths.proposal import MODEL
from pathprob.paths.results import Estimate
from pathprob.paths.ancestral import DEFAULT_CHUNK, stream
from pathprob.paths.samples import as_key, check_compatible
from pathprob.paths.score import score


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

    ``exact``: enumerate every path of a, score each under both models, sum in float64
    (``inf`` when b cannot emit a path a can). ``mc``: sample x ~ a; ``estimator``
    ``plain`` averages log p_a(x) - log p_b(x); ``chain`` averages
    sum_t KL(p_a(. | x_<t) || p_b(. | x_<t)) (the chain rule: same expectation, lower
    variance). A sample that b cannot emit proves KL = inf.
    """
    check_compatible(lm_a, lm_b)
    t0 = time.perf_counter()
    if method == "exact":
        table = enumerate_paths(lm_a, prompt_a, max_new, budget=budget)
        paths = [row[:m].tolist() for row, m in zip(table.tokens, table.lengths)]
        log_a, log_b = score(lm_a, prompt_a, paths), score(lm_b, prompt_b, paths)
        p = np.exp(log_a)
        with np.errstate(invalid="ignore"):
            value = float(np.sum(np.where(p > 0, p * (log_a - log_b), 0.0)))
        return Estimate(value=value, lower=value, upper=value, method="exact", exact=True,
                        seconds=time.perf_counter() - t0, details={"paths": len(paths)})
    if method != "mc":
        raise _methods_error(method, ("exact", "mc"))
    if estimator not in ENTROPY_ESTIMATORS:
        raise PathprobError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(ENTROPY_ESTIMATORS)}")
    _, seed, _ = as_key(key)
    values = Moments()
    infinite = False

    def estimate() -> Estimate:
        if infinite:
            return Estimate(value=math.inf, lower=math.inf, upper=math.inf, method="mc", n=values.n, exact=True,
                            seconds=time.perf_counter() - t0, seed=seed,
                            details={"estimator": estimator, "reason": "a sampled path (or next token) has "
                                     "positive probability under a and zero under b"})
        lower, upper = clip(normal_interval(values.mean, values.stderr, level), 0.0, math.inf)
        return Estimate(value=values.mean, lower=lower, upper=upper, method="mc", n=values.n, stderr=values.stderr,
                        ess=float(values.n), seconds=time.perf_counter() - t0, level=level, seed=seed,
                        details={"estimator": estimator, "interval": "normal: mean ± z·sd/√n, KL >= 0"})

    # Draw from a (the proposal, unwarped), score under b (the target): logq = log p_a, logp = log p_b.
    for part in stream(lm_b, prompt_b, n, max_new, key=key, chunk=chunk, proposal=MODEL, proposal_lm=lm_a,
                       proposal_prompt=prompt_a, track=("kl",) if estimator == "chain" else ()):
        per_path = part.extras["kl"] if estimator == "chain" else part.logq - part.logp
        if not np.all(np.isfinite(per_path)):
            infinite = True
            break
        values.add(per_path)
        if on_chunk is not None:
            on_chunk(values.n, n, estimate())
    return estimate()
