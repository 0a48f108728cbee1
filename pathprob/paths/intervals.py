"""Confidence intervals, running moments and effective sample sizes, on the host in float64.

Every Monte-Carlo estimator reports a two-sided interval at confidence ``level``:

- ``wilson``: the Wilson score interval for a binomial proportion; unlike the normal
  interval it stays valid with zero (or all) hits.
- ``normal_interval``: mean ± z·sd/√n for i.i.d. values (central limit theorem).
- ``t_interval``: mean ± t_{R-1}·sd/√R over R independent replicates.

Running moments merge chunk by chunk, so estimators never keep their samples.
``LogMoments`` holds non-negative values through their logarithms, relative to the
largest seen, so importance weights as small as exp(-10^4) keep their digits.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np

from pathprob.errors import PathprobError


def check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise PathprobError(f"level must be in (0, 1), got {level!r}")
    return level


def z_quantile(level: float) -> float:
    """The standard normal quantile for a two-sided interval at ``level`` (1.96 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + check_level(level) / 2)


def t_quantile(level: float, df: int) -> float:
    """Student-t quantile for a two-sided interval at ``level`` with ``df`` degrees of freedom.

    Exact for df 1 and 2; the Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5) for
    df >= 3, within 0.3% of the exact value at df 3 and 1e-4 from df 8 on.
    """
    if df < 1:
        raise PathprobError("a t interval needs at least 2 replicates")
    p = 0.5 + check_level(level) / 2
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    x = NormalDist().inv_cdf(p)
    g1 = (x**3 + x) / 4
    g2 = (5 * x**5 + 16 * x**3 + 3 * x) / 96
    g3 = (3 * x**7 + 19 * x**5 + 17 * x**3 - 15 * x) / 384
    g4 = (79 * x**9 + 776 * x**7 + 1482 * x**5 - 1920 * x**3 - 945 * x) / 92160
    return x + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def wilson(hits: int, n: int, level: float) -> tuple[float, float]:
    """Wilson score interval for a proportion with ``hits`` successes in ``n`` trials."""
    z = z_quantile(level)
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 and n hits the bounds are exactly 0 and 1 (rounding would otherwise leave ~1e-17).
    return (0.0 if hits == 0 else max(0.0, centre - half)), (1.0 if hits == n else min(1.0, centre + half))


@dataclasses.dataclass
class Moments:
    """Running count, mean and sum of squared deviations (Chan et al. merge of chunks)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values) -> None:
        values = np.asarray(values, np.float64).ravel()
        if values.size == 0:
            return
        n, mean = values.size, float(np.mean(values))
        m2 = float(np.sum((values - mean) ** 2))
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

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
