"""Divergences between two path distributions (two prompts and/or two models): KL and JS.

Every KL and JS formula of the package lives here: ``kl`` (exact by enumeration, or by
Monte Carlo from count-based draws), ``js_mc``, and the float64 sums over listed paths
that analyses use: ``kl_terms``, ``js_terms`` and ``lumped_kl`` (the KL of the partition
{listed paths, the rest}: a lower bound on the KL over paths by data processing).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import jax
import numpy as np

from pathprob.devices import using as on_devices
from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel, encode_prompt
from pathprob.paths.ancestral import DEFAULT_CHUNK
from pathprob.paths.budget import DEFAULT_BUDGET, Budget, estimate_work, listed_paths_bound, monte_carlo
from pathprob.paths.enumerate import DEFAULT_CHUNK as ENUMERATE_CHUNK
from pathprob.paths.enumerate import check_request, enumerate_paths
from pathprob.paths.intervals import Moments, check_level, clip, normal_interval
from pathprob.paths.mc import ENTROPY_ESTIMATORS
from pathprob.paths.montecarlo import methods_error
from pathprob.paths.results import Estimate
from pathprob.paths.running import OnChunk
from pathprob.paths.sample import draw_blocks
from pathprob.paths.samples import as_key, check_compatible
from pathprob.paths.score import score, scoring_cost

LOG2 = math.log(2.0)


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
    devices: int | Sequence | None = None,
) -> Estimate:
    """KL(a || b) in nats between the path distributions of (lm_a, prompt_a) and (lm_b, prompt_b).

    ``exact``: enumerate every path of a, score each under b (in chunks), sum in float64
    (``inf`` when b cannot emit a path a can); refused before any work, naming the
    Monte-Carlo command, when that does not fit ``budget``. ``mc``: sample x ~ a; ``estimator``
    ``plain`` averages log p_a(x) - log p_b(x); ``chain`` averages
    sum_t KL(p_a(. | x_<t) || p_b(. | x_<t)) (the chain rule: same expectation, lower
    variance). A sample that b cannot emit proves KL = inf. ``devices``: where the model steps run
    (None: every device; see ``pathprob.devices``); the estimate does not depend on it.
    """
    with on_devices(devices):
        return _kl(lm_a, prompt_a, lm_b, prompt_b, max_new, method=method, n=n, key=key, estimator=estimator,
                   level=level, budget=budget, on_chunk=on_chunk, chunk=chunk)


def _kl(lm_a, prompt_a, lm_b, prompt_b, max_new, *, method, n, key, estimator, level, chunk, budget,
        on_chunk) -> Estimate:
    if not isinstance(method, str) or method not in ("exact", "mc"):
        raise methods_error(method, ("exact", "mc"))
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

    # Draw from a as counts, scored under b in lockstep: logq = log p_a, logp = log p_b.
    for part in draw_blocks(lm_a, prompt_a, n, max_new, key=key, chunk=chunk, target=lm_b, target_prompt=prompt_b):
        per_path = part.extras["kl"] if estimator == "chain" else part.logq - part.logp
        drawn += len(part)
        if not np.all(np.isfinite(per_path)):
            infinite = True
            break
        values.add(per_path, part.weights)
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
    value = kl_terms(log_a, log_b)
    return Estimate(value=value, lower=value, upper=value, method="exact", exact=True,
                    seconds=time.perf_counter() - t0, details={"paths": len(table)})


def js_mc(lm_a, prompt_a, lm_b, prompt_b, max_new: int, *, n: int, key, level: float = 0.95,
          chunk: int = DEFAULT_CHUNK) -> Estimate:
    """JS(a, b) by Monte Carlo: n paths drawn (as counts) from each side, each scored under both.

    JS = 1/2 E_a[log(2 p_a / (p_a + p_b))] + 1/2 E_b[log(2 p_b / (p_a + p_b))]; the two
    means are independent, so the normal interval uses var_a/(4n) + var_b/(4n); it is
    clipped to [0, log 2].
    """
    t0 = time.perf_counter()
    key, seed, key_data = as_key(key)
    means, variances = [], []
    for side, (lm_x, prompt_x, lm_y, prompt_y) in enumerate([(lm_a, prompt_a, lm_b, prompt_b),
                                                              (lm_b, prompt_b, lm_a, prompt_a)]):
        values = Moments()
        # Draw from x, scored under y in lockstep: logq = log p_x, logp = log p_y.
        for part in draw_blocks(lm_x, prompt_x, n, max_new, key=jax.random.fold_in(key, side), chunk=chunk,
                                target=lm_y, target_prompt=prompt_y):
            values.add(LOG2 + part.logq - np.logaddexp(part.logq, part.logp), part.weights)
        means.append(values.mean)
        variances.append(values.stderr**2)
    value = 0.5 * (means[0] + means[1])
    stderr = 0.5 * math.sqrt(variances[0] + variances[1])
    lower, upper = clip(normal_interval(value, stderr, level), 0.0, LOG2)
    return Estimate(value=value, lower=lower, upper=upper, method="mc", n=2 * n, stderr=stderr, ess=float(2 * n),
                    seconds=time.perf_counter() - t0, level=level, seed=seed, key_data=key_data,
                    details={"interval": "normal: two independent means, within [0, log 2]"})


# --- sums over listed paths (float64) ---------------------------------------------------------------


def kl_terms(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """sum p (log p - log q) over the outcomes; outcomes with p = 0 add 0, and p > 0 = q makes it inf."""
    log_p, log_q = np.asarray(log_p, np.float64), np.asarray(log_q, np.float64)
    positive = log_p > -np.inf
    if np.any(positive & (log_q == -np.inf)):
        return math.inf
    return float(np.sum(np.exp(log_p[positive]) * (log_p[positive] - log_q[positive])))


def js_terms(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Per-outcome JS terms: p/2 log(2p/(p+q)) + q/2 log(2q/(p+q)) (each in [0, (p+q)/2 log 2])."""
    log_m = np.logaddexp(log_p, log_q) - LOG2
    with np.errstate(invalid="ignore"):
        term = lambda lp: np.where(lp > -np.inf, 0.5 * np.exp(lp) * (lp - log_m), 0.0)
        return term(log_p) + term(log_q)


def listed_rest(log_N: np.ndarray) -> float:
    """1 - the listed mass, clipped at 0 (float32 rounding can make the listed paths sum past 1)."""
    return max(0.0, 1.0 - float(np.sum(np.exp(np.asarray(log_N, np.float64)))))


def lumped_kl(log_p_N: np.ndarray, log_q_N: np.ndarray, *, rest_p: float, rest_q: float) -> float:
    """KL(p || q) of the partition {the N listed paths, the rest}, with the rests' masses given.

    A lower bound on the KL over paths (data processing), equal to it when ``rest_p`` is 0.
    When ``rest_q`` is 0 but ``rest_p`` is not (q's listed mass rounded up to 1), the rest's
    term is left out: it is positive, so the sum stays a lower bound.
    """
    value = kl_terms(log_p_N, log_q_N)
    if rest_p > 0 and rest_q > 0:
        value += rest_p * math.log(rest_p / rest_q)
    return value
