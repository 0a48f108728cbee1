"""When not to trust a Monte-Carlo estimate: the Pareto k-hat of its weights, its ESS, its hits.

- ``pareto_khat``: the Pareto-smoothed importance-sampling diagnostic (Vehtari, Simpson,
  Gelman, Yao & Gabry, JMLR 2024). A generalized Pareto distribution is fitted to the
  M = ceil(min(n/5, 3√n)) largest weights by the Zhang & Stephens (2009) posterior-mean
  estimator, with PSIS's weakly informative prior on the shape. The shape k is the
  tail index: the weights have finite variance only for k < 1/2, and for k > 0.7 the
  importance-sampling estimate converges too slowly to be used at any practical n.
- ``Tail``: the largest weights of a stream, so k-hat needs no more than M of them.
- ``verdict``: reliable or not, and why (k-hat > 0.7, ESS < 100, no hits).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

KHAT_MAX = 0.7
ESS_MIN = 100.0
_SHAPE_PRIOR = (10, 0.5)  # PSIS: 10 pseudo-observations of the shape at 1/2


def tail_size(n: int) -> int:
    """M, the number of largest weights the Pareto fit uses for n weights."""
    return math.ceil(min(n / 5, 3 * math.sqrt(n)))


def gpd_shape(excess_M: np.ndarray) -> float:
    """The shape of a generalized Pareto fitted to sorted exceedances (> 0) by Zhang & Stephens (2009).

    The profile log-likelihood l(θ) = M (log(-θ / k(θ)) - k(θ) - 1), with
    k(θ) = mean log(1 - θ x), is averaged over their grid of θ with weights
    exp(l(θ)); k at the posterior-mean θ is then shrunk towards 1/2 by PSIS's prior.
    """
    m = excess_M.size
    grid = 30 + int(math.sqrt(m))
    quartile = excess_M[int(m / 4 + 0.5) - 1]
    theta_G = 1 / excess_M[-1] + (1 - np.sqrt(grid / (np.arange(1, grid + 1) - 0.5))) / (3 * quartile)
    shape_G = np.mean(np.log1p(-theta_G[:, None] * excess_M[None, :]), axis=1)
    loglik_G = m * (np.log(-theta_G / shape_G) - shape_G - 1)
    weights_G = np.exp(loglik_G - np.max(loglik_G))
    theta = float(np.sum(weights_G * theta_G) / np.sum(weights_G))
    shape = float(np.mean(np.log1p(-theta * excess_M)))
    prior_n, prior_shape = _SHAPE_PRIOR
    return (m * shape + prior_n * prior_shape) / (m + prior_n)


def pareto_khat(log_w, n: int | None = None) -> float:
    """PSIS k-hat of weights exp(``log_w``): the fitted Pareto shape of their M largest.

    ``log_w`` holds the weights, or at least their M + 1 largest when ``n`` says how
    many there are in all. The threshold is the (M+1)-th largest weight; inf when
    fewer than 5 weights lie above it (too few to fit a tail), -inf when none does
    (the weights are bounded by their maximum, e.g. all equal: a proposal equal to the model).
    """
    log_w = np.sort(np.asarray(log_w, np.float64).ravel())
    n = log_w.size if n is None else n
    m = tail_size(n)
    if log_w.size < m + 1 or not np.isfinite(log_w[-1]):
        return math.inf
    shifted = log_w[-(m + 1):] - log_w[-1]
    if shifted[0] == 0.0:
        return -math.inf  # the largest weight is reached M + 1 times: the weights are bounded, there is no tail
    log_cutoff = max(shifted[0], math.log(np.finfo(np.float64).tiny))
    excess = np.exp(shifted[shifted > log_cutoff]) - math.exp(log_cutoff)
    return gpd_shape(excess) if excess.size > 4 else math.inf


@dataclasses.dataclass(frozen=True)
class Tail:
    """The M + 1 largest of the log-values seen so far (M for ``planned`` values), and their count."""

    planned: int
    log_top: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))
    n: int = 0

    def plus(self, log_x) -> Tail:
        keep = tail_size(self.planned) + 1
        both = np.concatenate([self.log_top, np.asarray(log_x, np.float64).ravel()])
        if both.size > keep:
            both = np.partition(both, both.size - keep)[-keep:]
        return Tail(self.planned, both, self.n + np.size(log_x))

    @property
    def khat(self) -> float:
        return pareto_khat(self.log_top, self.n)


def verdict(*, hits: int | None = None, ess: float | None = None, khats: tuple[float, ...] = ()) -> tuple[bool, str]:
    """(reliable, reason): False with the reasons when there are no hits, ESS < 100 or a k-hat > 0.7 (or undefined)."""
    reasons = []
    if hits == 0:
        reasons.append("no sample hit the set")
    finite = [k for k in khats if k != math.inf]  # -inf: no tail at all
    if any(k > KHAT_MAX for k in finite):
        reasons.append(f"Pareto k-hat {max(finite):.2f} > {KHAT_MAX}: the weights are too heavy-tailed")
    elif len(finite) < len(khats):
        reasons.append("Pareto k-hat undefined: too few distinct weights (< 5 in the tail) to judge their tail")
    if ess is not None and ess < ESS_MIN:
        reasons.append(f"effective sample size {ess:.3g} < {ESS_MIN:g}")
    return not reasons, "; ".join(reasons)
