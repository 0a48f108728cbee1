"""Intervals and reliability diagnostics against slow references, exact sums and frozen library outputs.

References: binomial tails summed term by term in float64 (Clopper-Pearson); the
betting capital multiplied out factor by factor on a grid of candidate means, and the
intervals of the confseq library (Waudby-Smith's implementation) on fixed data; the
k-hat of arviz's ``psislw`` on fixed data, and Pareto samples of known shape.

Statistical assertions and their false-failure probabilities (for a correct
implementation and random seeds):
- betting coverage: >= 186 of 200 replicates cover; at a true coverage of exactly 95%
  P(Binomial(200, 0.95) < 186) = 0.078, and the interval's coverage is at least 95%
  at every n, so this is an upper bound;
- k-hat of 20,000 Pareto draws: within 0.4 of the true shape, more than 4 standard
  deviations of the estimator (measured sd 0.05-0.09 over 100 seeds): < 1e-4 each.
"""

import math

import numpy as np
import pytest
from scipy import stats

from pathprob.paths import intervals
from pathprob.paths.diagnostics import Tail, pareto_khat, verdict
from pathprob.paths.intervals import betting_interval, clopper_pearson, plugin_bets, t_quantile, widen
from pathprob.paths.results import Estimate
from pathprob.paths.running import fold_chunks

PHI = (math.sqrt(5) - 1) / 2
_I = np.arange(1, 301)
DATA = {  # deterministic values in [0, 1]: low-discrepancy sequences, one skewed and zero-inflated, one small
    "uniform": ((_I * PHI) % 1.0)[:200],
    "skewed": ((_I * PHI) % 1.0) ** 4 * (_I % 3 == 0),
    "small": 0.05 * ((_I * math.sqrt(2)) % 1.0)[:256] ** 2,
}


def test_t_quantile_matches_printed_tables():
    """Two-sided 95% Student-t quantiles as printed in statistical tables (3 decimals)."""
    for df, quantile in [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042), (120, 1.980)]:
        assert abs(t_quantile(0.95, df) - quantile) < 5e-4
    assert abs(t_quantile(0.90, 4) - 2.132) < 5e-4


# ---------------------------------------------------------------- Clopper-Pearson


def _upper_tail(k_min: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= k_min), summed term by term in float64."""
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(k_min, n + 1))


@pytest.mark.parametrize("hits, n", [(0, 10), (1, 10), (5, 10), (10, 10), (0, 256), (3, 256), (128, 256)])
def test_clopper_pearson_ends_solve_the_binomial_tail_equations(hits, n):
    lower, upper = clopper_pearson(hits, n, 0.95)
    if hits == 0:
        assert lower == 0.0 and math.isclose(upper, 1 - 0.025 ** (1 / n), rel_tol=1e-12)
    else:
        assert abs(_upper_tail(hits, n, lower) - 0.025) < 1e-10
    if hits == n:
        assert upper == 1.0
    else:
        assert abs(1 - _upper_tail(hits + 1, n, upper) - 0.025) < 1e-10


def test_clopper_pearson_covers_every_proportion():
    """Exact coverage (a sum over all outcomes, no randomness) is >= 95% at every p of a grid, n = 20."""
    n = 20
    ends = [clopper_pearson(k, n, 0.95) for k in range(n + 1)]
    for p in np.linspace(0.001, 0.999, 999):
        covered = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k, (lo, hi) in enumerate(ends) if lo <= p <= hi)
        assert covered >= 0.95 - 1e-12, p


# ---------------------------------------------------------------- betting


def _grid_interval(x: np.ndarray, bets: tuple[np.ndarray, np.ndarray], level: float,
                   grid: np.ndarray) -> tuple[float, float]:
    """The grid points where neither hedged capital, multiplied out factor by factor, ever reached 2/α."""
    c = intervals.BET_TRUNCATION
    m = grid[:, None]
    above = np.cumprod(1 + np.minimum(bets[0], c / m) * (x - m), axis=1).max(axis=1)
    below = np.cumprod(1 - np.minimum(bets[1], c / (1 - m)) * (x - m), axis=1).max(axis=1)
    inside = grid[(above < 2 / (1 - level)) & (below < 2 / (1 - level))]
    return inside.min(), inside.max()


@pytest.mark.parametrize("name", list(DATA))
def test_betting_interval_matches_a_brute_force_grid(name):
    x = DATA[name]
    grid = np.linspace(1e-6, 1 - 1e-6, 20001)
    step = grid[1] - grid[0]
    bets = plugin_bets(x, 0.95), plugin_bets(x, 0.95, prior=intervals.WSR_PRIOR)
    grid_lower, grid_upper = _grid_interval(x, bets, 0.95, grid)
    lower, upper = betting_interval(x, 0.95)
    assert grid_lower - step <= lower <= grid_lower and grid_upper <= upper <= grid_upper + step
    assert lower < x.mean() < upper


def _paper_bets(x: np.ndarray, level: float) -> np.ndarray:
    """Waudby-Smith & Ramdas's fixed-n plug-in bets with their prior (mean 1/2, variance 1/4), as confseq has them."""
    t = np.arange(1, x.size + 1)
    mean = np.minimum((0.5 + np.cumsum(x)) / (t + 1), 1)
    var = (0.25 + np.cumsum((x - mean) ** 2)) / (t + 1)
    return np.sqrt(2 * math.log(2 / (1 - level)) / (x.size * np.concatenate([[0.25], var[:-1]])))


# confseq 0.0.11 (github.com/gostevehoward/confseq, src/confseq/betting.py): betting_cs(x, lambdas_fns_positive=
# lambdas_fns_negative=lambda x, m: lambda_predmix_eb(x, alpha=0.025, fixed_n=len(x)), alpha=0.05, breaks=10000,
# running_intersection=True, theta=0.5, trunc_scale=0.75, m_trunc=True), last element. Its grid puts each end
# one grid step (1e-4) outside the first and last grid points inside the interval.
CONFSEQ = {"uniform": (0.4464, 0.5546), "skewed": (0.044, 0.1027), "small": (0.0111, 0.0356)}


@pytest.mark.parametrize("name", list(DATA))
def test_betting_interval_matches_confseq(name):
    bets = _paper_bets(DATA[name], 0.95)
    np.testing.assert_allclose(plugin_bets(DATA[name], 0.95, prior=intervals.WSR_PRIOR), bets, rtol=1e-12)
    lower, upper = betting_interval(DATA[name], 0.95, bets=(bets, bets))
    reference_lower, reference_upper = CONFSEQ[name]
    assert 0 <= lower - reference_lower <= 1e-4 + 1e-12 and 0 <= reference_upper - upper <= 1e-4 + 1e-12


def test_plugin_bets_are_predictable_and_scale_with_the_data():
    x = DATA["skewed"]
    bets = plugin_bets(x, 0.95)
    changed = x.copy()
    changed[100:] = 1 - changed[100:]
    for prior in (None, intervals.WSR_PRIOR):  # bet t sees x_1..x_{t-1} only
        assert np.array_equal(plugin_bets(changed, 0.95, prior=prior)[:101], plugin_bets(x, 0.95, prior=prior)[:101])
    assert bets[0] == 0.0 and np.all(bets >= 0)
    np.testing.assert_allclose(plugin_bets(1e-3 * x, 0.95), 1e3 * bets, rtol=1e-12)
    # so the interval of values 1000 times smaller is (up to the [0, 1] bound's floor) the lower end / 1000
    assert math.isclose(betting_interval(1e-3 * x, 0.95)[0], 1e-3 * betting_interval(x, 0.95)[0], rel_tol=1e-6)


@pytest.mark.parametrize("name, draw, mean", [
    ("skewed small values", lambda rng: rng.beta(0.05, 20, 256), 0.05 / 20.05),
    ("rare indicators", lambda rng: (rng.uniform(size=256) < 2e-3).astype(float), 2e-3),
])
def test_betting_interval_covers_the_mean(name, draw, mean):
    rng = np.random.default_rng(11)
    ends = [betting_interval(draw(rng), 0.95) for _ in range(200)]
    covered = sum(lo <= mean <= hi for lo, hi in ends)
    assert covered >= 186, (name, covered)


def test_betting_interval_of_equal_values_has_positive_width():
    lower, upper = betting_interval(np.full(512, 0.3), 0.95)
    assert 0.29 < lower < 0.3 < upper < 0.33
    assert betting_interval(np.ones(64), 0.95)[1] == 1.0
    lower, upper = betting_interval(np.zeros(256), 0.95)
    assert lower == 0.0 and clopper_pearson(0, 256, 0.95)[1] < upper < math.log(40) / (0.75 * 256) * 1.05


def test_widen_covers_the_float32_rounding_seen_in_the_demo():
    """Issue 12: SMC printed [0.42354274, 0.42354274] where the exact engine computed 0.42354285."""
    printed, exact = 0.42354274, 0.42354285
    lower, upper = widen((printed, printed), 1)
    assert lower < printed and exact < upper and upper / lower < 1 + 1e-5
    assert widen((0.0, 0.0), 5) == (0.0, 0.0)
    assert widen((1.0, 2.0), 5, absolute=True) == (1 - 5 * intervals.LOGP_ROUNDING, 2 + 5 * intervals.LOGP_ROUNDING)


# ---------------------------------------------------------------- k-hat


def _pareto_log_quantiles(n: int, shape: float) -> np.ndarray:
    """log of the (i + 1/2)/n quantiles of a generalized Pareto(shape, scale 1)."""
    u = (np.arange(n) + 0.5) / n
    return np.log(((1 - u) ** (-shape) - 1) / shape)


# arviz 0.23.4: az.psislw(log_w)[1] on these log-weights.
ARVIZ_KHAT = [
    (_pareto_log_quantiles(1000, 0.3), 0.32356064382606897),
    (_pareto_log_quantiles(1000, 0.9), 0.8442664334030677),
    (_pareto_log_quantiles(256, 0.5), 0.4958705071272447),
    (1.5 * stats.norm.ppf((np.arange(4000) + 0.5) / 4000), 0.4424265045503294),  # log-normal weights
]


@pytest.mark.parametrize("case", range(len(ARVIZ_KHAT)))
def test_pareto_khat_matches_arviz(case):
    log_w, reference = ARVIZ_KHAT[case]
    assert abs(pareto_khat(log_w) - reference) < 1e-12


@pytest.mark.parametrize("shape", [0.2, 0.5, 0.8, 1.2])
def test_pareto_khat_recovers_the_shape_of_pareto_draws(shape):
    u = np.random.default_rng(int(shape * 10)).uniform(size=20000)
    assert abs(pareto_khat(np.log(((1 - u) ** (-shape) - 1) / shape)) - shape) < 0.4


def test_tail_keeps_what_khat_needs_from_a_stream():
    log_w = np.random.default_rng(3).standard_normal(5000) * 2
    tail = Tail(5000)
    for part in np.array_split(log_w, 9):
        tail = tail.plus(part)
    assert tail.n == 5000 and tail.khat == pareto_khat(log_w)


def test_verdict_names_every_reason():
    assert verdict(hits=3, ess=500.0, khats=(0.3,)) == (True, "")
    reliable, reason = verdict(hits=0, ess=42.0, khats=(0.2, 0.95))
    assert not reliable and reason == ("no sample hit the set; Pareto k-hat 0.95 > 0.7: the weights are too "
                                       "heavy-tailed; effective sample size 42 < 100")
    assert "undefined" in verdict(khats=(0.2, math.inf))[1]


def test_equal_weights_have_no_tail_and_are_not_flagged():
    """A proposal equal to the model gives every weight 1: bounded weights, nothing to distrust."""
    assert pareto_khat(np.zeros(256)) == -math.inf
    assert pareto_khat(np.r_[np.zeros(250), -np.arange(1.0, 7.0)]) == -math.inf  # the top M + 1 all equal
    assert verdict(hits=40, ess=256.0, khats=(-math.inf, 0.1)) == (True, "")


# ---------------------------------------------------------------- interruption


def _count_estimate(done: int) -> Estimate:
    return Estimate(value=float(done), lower=0.0, upper=float(done), method="mc", n=done)


def _chunks(interrupt_at: int):
    for i in range(5):
        if i == interrupt_at:
            raise KeyboardInterrupt
        yield [0] * 10


def test_fold_chunks_returns_what_was_folded_when_interrupted():
    fold = lambda done, chunk: done + len(chunk)
    seen = []
    est = fold_chunks(_chunks(3), fold, 0, _count_estimate, total=50, on_chunk=lambda *a: seen.append(a[:2]))
    assert est.interrupted and est.n == 30 and seen == [(10, 50), (20, 50), (30, 50)]
    assert not fold_chunks(_chunks(99), fold, 0, _count_estimate, total=50).interrupted
    with pytest.raises(KeyboardInterrupt):  # nothing drawn yet: nothing to return
        fold_chunks(_chunks(0), fold, 0, _count_estimate, total=50)
