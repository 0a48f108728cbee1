"""Confidence intervals, running moments and effective sample sizes, on the host in float64.

Every Monte-Carlo estimator reports a two-sided interval at confidence ``level``:

- ``clopper_pearson``: the exact binomial interval (beta quantiles) for a proportion;
  valid at every n, [0, 1 - (α/2)^(1/n)] with zero hits.
- ``betting_interval``: the hedged-capital betting interval of Waudby-Smith & Ramdas
  (JRSS-B 2024) for the mean of i.i.d. values in [0, 1]; valid at every n whatever
  their distribution.
- ``normal_interval``: mean ± z·sd/√n for i.i.d. values (central limit theorem), for
  unbounded values (importance weights, entropies).
- ``t_interval``: mean ± t_{R-1}·sd/√R over R independent replicates.
- ``widen``: the allowance for float32 rounding of per-token log-probabilities, so an
  interval covers the value the exact engine computes, and is never of zero width.

Running moments merge chunk by chunk, so estimators that need no more than moments
never keep their samples. ``LogMoments`` holds non-negative values through their
logarithms, relative to the largest seen, so importance weights as small as
exp(-10^4) keep their digits.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize, stats

from pathprob.errors import PathprobError

BET_TRUNCATION = 0.75  # c: a bet against mean m is at most c/m (c/(1-m)), so capital never falls below (1-c)^n
LOGP_ROUNDING = 64 * 2.0**-24  # allowance per token on a float32 log-probability (see ``widen``)


def check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise PathprobError(f"level must be in (0, 1), got {level!r}")
    return level


def z_quantile(level: float) -> float:
    """The standard normal quantile for a two-sided interval at ``level`` (1.96 for 0.95)."""
    return float(stats.norm.ppf(0.5 + check_level(level) / 2))


def t_quantile(level: float, df: int) -> float:
    """Student-t quantile for a two-sided interval at ``level`` with ``df`` degrees of freedom."""
    if df < 1:
        raise PathprobError("a t interval needs at least 2 replicates")
    return float(stats.t.ppf(0.5 + check_level(level) / 2, df))


def clopper_pearson(hits: int, n: int, level: float) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval for a proportion with ``hits`` successes in ``n`` trials.

    Each end is the parameter at which the binomial tail beyond the observed count is
    α/2, so coverage is at least ``level`` for every n and proportion.
    """
    alpha = 1 - check_level(level)
    lower = 0.0 if hits == 0 else float(stats.beta.ppf(alpha / 2, hits, n - hits + 1))
    upper = 1.0 if hits == n else float(stats.beta.ppf(1 - alpha / 2, hits + 1, n - hits))
    return lower, upper


WSR_PRIOR = (0.5, 0.25)  # Waudby-Smith & Ramdas's pseudo-observation: mean 1/2, variance 1/4


def plugin_bets(x_N: np.ndarray, level: float, planned: int | None = None, *,
                prior: tuple[float, float] | None = None) -> np.ndarray:
    """float64[N]: predictable plug-in bets for a betting interval at ``planned`` samples (default N).

    Bet t is sqrt(2 log(2/α) / (planned · σ²_{t-1})) (Waudby-Smith & Ramdas, eq. 26),
    with σ²_{t-1} a regularised variance of x_1..x_{t-1} alone, so the bets are
    predictable and the capital is a non-negative martingale at the true mean whatever
    the regularisation. ``prior`` = (mean, variance) of one pseudo-observation, e.g.
    ``WSR_PRIOR``, the scale of values spread over [0, 1]. With ``prior=None`` the
    pseudo-observation's variance is mean² of the past values (a coefficient of
    variation of 1), so the bets scale with the data (bet t is 0 until a positive value
    has been seen): weights of order 1e-3 need bets of order 1e3, which WSR's prior
    keeps out of reach for ~1e5 samples.
    """
    n = x_N.size
    t_N = np.arange(1, n + 1)
    if prior is None:
        mean_N = np.cumsum(x_N) / t_N
        var_N = (mean_N**2 + np.cumsum((x_N - mean_N) ** 2)) / (t_N + 1)
        var_before_N = np.concatenate([[0.0], var_N[:-1]])
    else:
        mean_N = (prior[0] + np.cumsum(x_N)) / (t_N + 1)
        var_N = (prior[1] + np.cumsum((x_N - mean_N) ** 2)) / (t_N + 1)
        var_before_N = np.concatenate([[prior[1]], var_N[:-1]])
    with np.errstate(divide="ignore"):
        bets_N = np.sqrt(2 * math.log(2 / (1 - level)) / ((planned or n) * var_before_N))
    return np.where(var_before_N > 0, bets_N, 0.0)


def _log_capital(x_N: np.ndarray, bets_N: np.ndarray, m: float) -> float:
    """log max_t K_t(m): the largest capital reached betting that the mean of ``x_N`` exceeds ``m``.

    K_t(m) = prod_{i<=t} (1 + min(bet_i, c/m) (x_i - m)), non-increasing in m; every
    factor is >= 1 - c > 0.
    """
    bets_N = np.minimum(bets_N, BET_TRUNCATION / m) if m > 0 else bets_N
    return float(np.max(np.cumsum(np.log1p(bets_N * (x_N - m))), initial=0.0))


def _lowest_mean(x_N: np.ndarray, bets_N: np.ndarray, log_threshold: float) -> float:
    """inf {m in [0, 1]: the capital betting above m stays below the threshold}, to 1e-10 relative."""
    if _log_capital(x_N, bets_N, 0.0) < log_threshold:
        return 0.0
    excess = lambda log_m: _log_capital(x_N, bets_N, math.exp(log_m)) - log_threshold
    floor = math.log(np.finfo(np.float64).tiny)
    if excess(floor) < 0:
        return 0.0
    return math.exp(optimize.brentq(excess, floor, 0.0, xtol=1e-10, rtol=1e-12))


def betting_interval(x_N, level: float, *, planned: int | None = None,
                     bets: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float]:
    """The hedged-capital betting interval for the mean of i.i.d. ``x_N`` in [0, 1].

    Waudby-Smith & Ramdas (JRSS-B 2024, Thm 3 and sec. 4): for a candidate mean m,
    one gambler bets that the mean is above m, another that it is below, each with
    half the money and predictable ``bets`` (above, below) truncated to c/m and
    c/(1-m), c = 3/4. At the true mean each capital is a non-negative martingale, so
    by Ville's inequality it ever exceeds 2/α with probability at most α/2. The
    interval is the set of m at which neither capital ever reached 2/α; both capitals
    are monotone in m, so it is an interval whose ends are found by root-finding. As it
    holds at every t at once, it stays valid for a run stopped early (Ctrl-C). It is
    extended to the sample mean when it excludes it: a larger set is still valid.

    Default bets (``plugin_bets`` for a run of ``planned`` samples): above m, scaled
    with the data, since the lower end of small values needs bets of order 1/m; below
    m, WSR's prior, as the cap c/(1-m) ~ c binds whatever the data's scale. Only the
    bound [0, 1] is assumed, so the upper end is never below about log(2/α) / (c · N):
    N values of 0 cannot rule out a mean of 3/N carried by rare 1s.
    """
    x_N = np.asarray(x_N, np.float64).ravel()
    if x_N.size == 0:
        return 0.0, 1.0
    if np.any((x_N < 0) | (x_N > 1)):
        raise PathprobError("the betting interval needs values in [0, 1]")
    above_N, below_N = bets or (plugin_bets(x_N, level, planned), plugin_bets(x_N, level, planned, prior=WSR_PRIOR))
    log_threshold = math.log(2 / (1 - check_level(level)))
    lower = _lowest_mean(x_N, above_N, log_threshold)
    upper = 1 - _lowest_mean(1 - x_N, below_N, log_threshold)  # betting below m on x is betting above 1-m on 1-x
    mean = float(np.mean(x_N))  # a capital can peak early and exclude the final mean (~1 run in 200): keep it in
    return min(lower, mean), max(upper, mean)


def widen(interval: tuple[float, float], max_new: int, *, absolute: bool = False) -> tuple[float, float]:
    """An interval widened for the float32 rounding of ``max_new`` per-token log-probabilities.

    Each value behind an estimate (a path probability, an allowed mass Z_t, an
    inclusion probability) is exp of a sum of at most ``max_new`` float32
    log-probabilities, each within ``LOGP_ROUNDING`` (64 ulps at 1: a few roundings
    of logits up to |30|) of the exact one, so the estimate computed in exact
    arithmetic is within a factor exp(± max_new · LOGP_ROUNDING) of ours (a mass), or
    within ± max_new · LOGP_ROUNDING nats (an entropy, ``absolute``). Widening by as
    much makes the interval cover what the exact engine computes, and keeps it of
    positive width.
    """
    slack = max_new * LOGP_ROUNDING
    if absolute:
        return interval[0] - slack, interval[1] + slack
    return interval[0] * math.exp(-slack), interval[1] * math.exp(slack)


@dataclasses.dataclass
class Moments:
    """Running count, mean and sum of squared deviations (Chan et al. merge of chunks)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values, weights=None) -> None:
        """Add ``values``, each standing for ``weights`` (integer counts; default one) observations."""
        values = np.asarray(values, np.float64).ravel()
        if values.size == 0:
            return
        if weights is None:
            n, mean = values.size, float(np.mean(values))
            m2 = float(np.sum((values - mean) ** 2))
        else:
            weights = np.asarray(weights, np.int64).ravel()
            n = int(weights.sum())
            mean = float(np.dot(weights, values) / n)
            m2 = float(np.dot(weights, (values - mean) ** 2))
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def plus(self, values, weights=None) -> Moments:
        """A new running total with ``values`` added (this one unchanged)."""
        new = dataclasses.replace(self)
        new.add(values, weights)
        return new

    @property
    def sd(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else math.inf

    @property
    def stderr(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n > 1 else math.inf


@dataclasses.dataclass
class LogMoments:
    """Running sums of x and x² for x = exp(log_x) >= 0, stored relative to exp(shift)."""

    n: int = 0
    shift: float = -math.inf
    s1: float = 0.0  # sum of exp(log_x - shift)
    s2: float = 0.0  # sum of exp(2 (log_x - shift))

    def add(self, log_x) -> None:
        log_x = np.asarray(log_x, np.float64).ravel()
        self.n += log_x.size
        top = float(np.max(log_x, initial=-math.inf))
        if top == -math.inf:
            return
        if top > self.shift:
            scale = math.exp(self.shift - top)
            self.s1, self.s2, self.shift = self.s1 * scale, self.s2 * scale * scale, top
        x = np.exp(log_x - self.shift)
        self.s1 += float(np.sum(x))
        self.s2 += float(np.sum(x * x))

    def plus(self, log_x) -> LogMoments:
        """A new running total with ``log_x`` added (this one unchanged)."""
        new = dataclasses.replace(self)
        new.add(log_x)
        return new

    @property
    def log_mean(self) -> float:
        return self.shift + math.log(self.s1 / self.n) if self.s1 > 0 else -math.inf

    @property
    def mean(self) -> float:
        return math.exp(self.log_mean)

    @property
    def log_sd(self) -> float:
        """log of the sample standard deviation (-inf when every value is equal)."""
        if self.n < 2:
            return math.inf
        var = max(self.s2 - self.s1 * self.s1 / self.n, 0.0) / (self.n - 1)
        return self.shift + 0.5 * math.log(var) if var > 0 else -math.inf

    @property
    def stderr(self) -> float:
        return math.exp(self.log_sd) / math.sqrt(self.n)

    @property
    def ess(self) -> float:
        """Kish's effective sample size (sum x)² / sum x² (0 when every value is 0)."""
        return self.s1 * self.s1 / self.s2 if self.s2 > 0 else 0.0


def normal_interval(mean: float, stderr: float, level: float) -> tuple[float, float]:
    half = z_quantile(level) * stderr
    return mean - half, mean + half


def t_interval(mean: float, stderr: float, replicates: int, level: float) -> tuple[float, float]:
    half = t_quantile(level, replicates - 1) * stderr
    return mean - half, mean + half


def clip(interval: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    """An interval intersected with proven bounds [low, high]."""
    return min(max(interval[0], low), high), max(min(interval[1], high), low)
