"""The in-context narrowing curve: how the next example's path distribution narrows with the number of examples.

For a concepts language: ``n_prompts`` documents, each from a random concept
(drawn from ``key``); for every k in ``n_examples`` the prompt is BOS and the
document's first k examples (so prompts with fewer examples are prefixes of
those with more), and the paths are the next example (``example_len`` letters and
SEP). "Narrowing" can mean the mass concentrating while every path stays possible,
or the support itself shrinking; per k, for the model and for the truth (the
Bayes-optimal narrowing), the curve holds the mean over prompts, with an interval, of:

- ``entropy``: the path entropy H (nats), in [0, log #paths];
- ``effective_paths``: exp(H), the effective support, in [1, #paths];
- ``support``: the number of paths with p > 0, exact from a complete enumeration and
  [listed, #paths] otherwise; a softmax model gives every path p > 0, so only the
  truth's support can shrink (#paths: ``supports.path_count``);
- ``top_0.5``, ``top_0.9``, ``top_0.99``: the size of the smallest path set holding that
  share of the mass;
- ``in_top90_of_k{j}`` for every j < k: the mass the k-example distribution puts on the
  same model's top-90% set after the first j examples of the same document (near 1 when
  more examples only move mass within the paths that were already likely);
- truth ``outside_support_of_k{j}`` for every j < k: the truth's mass at k on paths it
  rules out after j examples, exactly 0 when the support at k is inside the support at j
  (for a mixture of HMMs it always is: a concept ruled out stays ruled out);
- model ``outside_truth``: the model's mass on paths the truth gives probability 0 after
  the same k examples (the truth's supports nest, so this also bounds the model's mass
  outside every earlier support of the truth);
- truth ``posterior``: the posterior probability of the document's true concept.

Per-prompt numbers come from the batched exact engine (``enumerate_many``, one walk per
k and model; identical prompts, e.g. all k = 0 prompts, enumerated once), as exact values
or proven bounds (``analysis/supports.py``; the truth is enumerated completely by
default, ``truth_min_prob`` 0), or for the entropy from Monte Carlo when the budget does
not allow enumeration (the other measures are then "n/a"). ``Measure.method`` says which
per k: "exact" only when lower == upper for every prompt, "bounded", "mc" or "n/a".
Nothing is scored beyond the enumerations (that would cost about one more enumeration
per prompt): a path a pruned listing does not hold is bounded by ``min_prob``, and the
pruned mass by the certified remainder, so the model's ``outside_truth`` lies between its
listed mass on paths the truth rules out and that plus its remainder (``compare``, on a
few prompts, scores those paths and is exact).

Intervals over prompts propagate the bounds: for any true values h_i in [lo_i, hi_i],
mean(h) is in [mean(lo), mean(hi)] and sd(h) <= sd(mid) + sqrt(sum w_i^2 / (n - 1)) (w the
half-widths, triangle inequality), so [mean(lo) - t s / sqrt(n), mean(hi) + t s / sqrt(n)]
with that s contains the t-interval of the true values. Unbiased Monte-Carlo per-prompt
estimates need no extra term: their noise is part of the spread. The interval is then
clipped to the quantity's range (the mean of values in [a, b] lies in [a, b], so the
clipped interval covers whenever the unclipped one does). With fewer than
``MIN_PROMPTS`` = 3 prompts there is no interval (NaN bounds; ``interval`` says so): with
2 prompts the t quantile has one degree of freedom (12.7 at 95%) and says nothing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.analysis.supports import (
    LEVELS,
    Listing,
    mass_in_top_set,
    mass_outside_support,
    path_count,
    support_size,
    top_set_size,
)
from pathprob.data.base import numpy_rng
from pathprob.errors import BudgetExceededError, PathprobError
from pathprob.files import dumps
from pathprob.models.base import LanguageModel
from pathprob.paths.enumerate import DEFAULT_BUDGET, Budget, check_budget, enumerate_many
from pathprob.paths.intervals import t_quantile
from pathprob.paths.measure import entropy, entropy_from_table
from pathprob.paths.samples import as_key

MIN_PROMPTS = 3  # fewest prompts for an interval over prompts (see the module docstring)
INCLUSION_LEVEL = 0.9  # the measures ``in_top90_of_k{j}``
WHO = ("model", "truth")


@dataclasses.dataclass(frozen=True)
class Measure:
    """One quantity against the number of examples: the mean over prompts, its interval, and each prompt's bounds.

    ``mean``, ``lower``, ``upper``: float64[n_k]; ``lower``/``upper`` are NaN where there
    is no interval (fewer than ``MIN_PROMPTS`` prompts), all three where the quantity was
    not measured. ``method``: per k, "exact", "bounded", "mc" or "n/a" (module docstring).
    ``prompt_lower``/``prompt_upper``: float64[n_k, n_prompts], each prompt's bounds
    (equal when exact). ``value_range``: the values the quantity can take.
    """

    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    method: tuple
    prompt_lower: np.ndarray
    prompt_upper: np.ndarray
    value_range: tuple[float, float]

    @property
    def proven(self) -> tuple[np.ndarray, np.ndarray]:
        """float64[n_k] twice: proven bounds on the mean over these prompts (the means of the per-prompt bounds)."""
        return self.prompt_lower.mean(axis=1), self.prompt_upper.mean(axis=1)

    def to_dict(self) -> dict:
        """The summary per k (not the per-prompt bounds), JSON-able (NaN -> null through ``pathprob.files``)."""
        low, high = self.proven
        return {"mean": self.mean.tolist(), "lower": self.lower.tolist(), "upper": self.upper.tolist(),
                "method": list(self.method), "proven_lower": low.tolist(), "proven_upper": high.tolist(),
                "range": list(self.value_range)}

    def format(self, i: int, digits: int = 4) -> str:
        """Point ``i``: ``mean [interval]`` (exact or mc), ``bounded [proven range of the mean], interval [...]``
        (no midpoint: it can be far from the truth when a bound is loose), or ``n/a``."""
        if self.method[i] == "n/a":
            return "n/a"
        g = lambda x: f"{x:.{digits}g}"
        interval = "(no interval)" if math.isnan(self.lower[i]) else f"[{g(self.lower[i])}, {g(self.upper[i])}]"
        if self.method[i] == "bounded":
            low, high = (b[i] for b in self.proven)
            return f"bounded [{g(low)}, {g(high)}], interval {interval}"
        return f"{g(self.mean[i])} {interval}" + (" (mc)" if self.method[i] == "mc" else "")


def _view(who: str, name: str, part: str) -> property:
    """A read-only property: ``measures[who][name].<part>``, None when that measure is absent."""
    return property(lambda self: getattr(self.measures.get(who, {}).get(name), part, None))


@dataclasses.dataclass(frozen=True, repr=False)
class NarrowingCurve:
    """Per k (``k`` int[n_k]): every measure of the module docstring for the model (absent for a truth-only
    curve) and the truth, ``measures[who][name]``; ``concepts`` int[n_prompts], each document's true concept;
    ``n_paths``, the number of possible paths (the upper end of the counts' ranges)."""

    k: np.ndarray
    measures: dict
    n_prompts: int
    max_new: int
    n_paths: int
    concepts: np.ndarray
    level: float = 0.95
    seed: int | None = None
    seconds: float = 0.0

    # The entropy and posterior curves as flat float64[n_k] arrays (None without a model), as the figures read them.
    model_mean, model_lower, model_upper = (_view("model", "entropy", part) for part in ("mean", "lower", "upper"))
    truth_mean, truth_lower, truth_upper = (_view("truth", "entropy", part) for part in ("mean", "lower", "upper"))
    posterior_mean, posterior_lower, posterior_upper = (_view("truth", "posterior", part)
                                                        for part in ("mean", "lower", "upper"))

    @property
    def methods(self) -> dict:
        """The entropy's method per k, per model: "exact", "bounded" or "mc"."""
        return {who: list(m["entropy"].method) for who, m in self.measures.items()}

    @property
    def interval(self) -> str:
        """What ``lower``/``upper`` are, or why there are none."""
        if self.n_prompts < MIN_PROMPTS:
            return f"none: {self.n_prompts} prompts (an interval over prompts needs at least {MIN_PROMPTS})"
        return f"{100 * self.level:g}% t-interval over {self.n_prompts} prompts, within the quantity's range"

    def to_dict(self) -> dict:
        """The figure's data (``pathprob.plots.paths.narrowing_curve``), every measure's summary and the run's facts."""
        arrays = ("model_mean", "model_lower", "model_upper", "truth_mean", "truth_lower", "truth_upper",
                  "posterior_mean", "posterior_lower", "posterior_upper")
        out = {name: getattr(self, name).tolist() for name in arrays if getattr(self, name) is not None}
        return {"k": self.k.tolist(), **out, "n_prompts": self.n_prompts, "max_new": self.max_new,
                "n_paths": self.n_paths, "methods": self.methods, "level": self.level, "interval": self.interval,
                "seed": self.seed, "seconds": self.seconds,
                "measures": {who: {name: m.to_dict() for name, m in ms.items()} for who, ms in self.measures.items()}}

    def to_json(self, **kwargs) -> str:
        return dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        lines = [f"NarrowingCurve({self.n_prompts} prompts, max_new={self.max_new}, {self.n_paths:,} possible paths; "
                 f"intervals: {self.interval})"]
        for who, measures in self.measures.items():
            lines.append(f"  {who}:")
            for name, measure in measures.items():
                points = ", ".join(f"k={k}: {measure.format(i)}" for i, k in enumerate(self.k)
                                   if measure.method[i] != "n/a")
                lines.append(f"    {name}: {points}")
        return "\n".join(lines)


def mean_interval(lower: np.ndarray, upper: np.ndarray, level: float = 0.95,
                  value_range: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float, float]:
    """(mean, lower, upper): a t-interval for the mean of values known to lie in [lower_i, upper_i].

    Equal bounds give the ordinary t-interval; see the module docstring for the
    propagation and the clipping to ``value_range``. Fewer than ``MIN_PROMPTS`` values:
    the mean of the midpoints and NaN bounds (no interval).
    """
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    n = lower.size
    mid, half = 0.5 * (lower + upper), 0.5 * (upper - lower)
    if n < MIN_PROMPTS:
        return float(mid.mean()) if n else math.nan, math.nan, math.nan
    spread = float(np.std(mid, ddof=1) + math.sqrt(np.sum(half**2) / (n - 1)))
    margin = t_quantile(level, n - 1) * spread / math.sqrt(n)
    low, high = value_range
    return (float(mid.mean()), float(np.clip(lower.mean() - margin, low, high)),
            float(np.clip(upper.mean() + margin, low, high)))


def summarize(lower_KN: np.ndarray, upper_KN: np.ndarray, methods: Sequence[str], value_range: tuple[float, float],
              level: float) -> Measure:
    """A ``Measure`` from per-prompt bounds float64[n_k, n_prompts] (NaN rows: not measured at that k).

    ``methods``: per k, "mc" for Monte-Carlo rows, anything else for bounds from enumeration
    (labelled "exact" when every prompt's bounds are equal, else "bounded").
    """
    summary = np.full((3, lower_KN.shape[0]), np.nan)
    labels = []
    for i, (low, high) in enumerate(zip(lower_KN, upper_KN)):
        if np.isnan(low).any():
            labels.append("n/a")
            continue
        summary[:, i] = mean_interval(low, high, level, value_range)
        labels.append("mc" if methods[i] == "mc" else "exact" if np.array_equal(low, high) else "bounded")
    return Measure(mean=summary[0], lower=summary[1], upper=summary[2], method=tuple(labels), prompt_lower=lower_KN,
                   prompt_upper=upper_KN, value_range=value_range)


def concept_prompts(language, n_examples: Sequence[int], n_prompts: int, key) -> tuple[np.ndarray, dict]:
    """The true concepts int[n_prompts] and, per k, the prompts int32[n_prompts, 1 + k (L + 1)]."""
    if not hasattr(language, "sample_concepts") or not hasattr(language, "example_len"):
        raise PathprobError(f"narrowing_curve needs a language with latent concepts (concepts), "
                            f"not {getattr(language, 'name', language)!r}")
    for k in n_examples:
        if not 0 <= k < language.n_examples:
            raise PathprobError(f"numbers of examples must be in [0, {language.n_examples - 1}], got {k}")
    key, _, _ = as_key(key)
    concepts, docs = language.sample_concepts(numpy_rng(key), n_prompts)
    return concepts, {k: docs[:, : 1 + k * (language.example_len + 1)] for k in n_examples}


@jax.jit
def _posteriors(truth, prompts_NP: jax.Array) -> jax.Array:
    """float32[N, K]: the truth's posterior over concepts after each prompt."""
    lengths_N = jnp.full(prompts_NP.shape[0], prompts_NP.shape[1], jnp.int32)
    return truth.concept_posterior(truth.start(prompts_NP, lengths_N))


def prompt_listings(lm: LanguageModel, prompts_NP: np.ndarray, max_new: int, *, method: str, min_prob: float,
                    budget: Budget, prompt_width: int | None = None) -> list[Listing] | None:
    """One enumeration per prompt as a ``Listing`` (identical prompts share one), or None where Monte Carlo
    must serve: ``method`` "mc", or "auto" beyond the budget."""
    if method == "mc":
        return None
    unique_UP, index_N = np.unique(prompts_NP, axis=0, return_inverse=True)
    prompts = [row.tolist() for row in unique_UP]
    try:
        check_budget(lm, max_new, min_prob=min_prob, max_paths=None, chunk=1024, budget=budget)
        tables = enumerate_many(lm, prompts, max_new, min_prob=min_prob, budget=budget, prompt_width=prompt_width)
    except BudgetExceededError:
        if method == "exact":
            raise
        return None
    listings = [Listing.of(lm, prompt, table) for prompt, table in zip(prompts, tables)]
    return [listings[u] for u in index_N.ravel()]


def _mc_entropies(lm: LanguageModel, prompts_NP: np.ndarray, max_new: int, n: int, key) -> np.ndarray:
    """float64[N]: chain-rule Monte-Carlo entropy estimates, one key per prompt."""
    return np.array([entropy(lm, p.tolist(), max_new, method="mc", n=n, key=jax.random.fold_in(key, i)).value
                     for i, p in enumerate(prompts_NP)])


def _estimates_2N(estimates) -> np.ndarray:
    """float64[2, N]: the (lower, upper) of each Estimate."""
    return np.array([(est.lower, est.upper) for est in estimates], np.float64).T


def _prompt_bounds(listings: list | None, mc_N: np.ndarray | None, history: list, *, is_truth: bool,
                   truth: list | None) -> dict:
    """Per-prompt bounds float64[2, N] (lower, upper) of every measure at one k, for one model.

    ``listings``: this k's ``Listing`` per prompt (None: Monte Carlo, ``mc_N`` holds the
    entropies); ``history``: (j, the same model's listings after j examples) for every
    earlier j (None where Monte Carlo); ``truth``: the truth's listings at this k, for the model.
    """
    if listings is None:
        return {"entropy": np.stack([mc_N, mc_N])}
    tables = [x.table for x in listings]
    entropy_N2 = np.array([entropy_from_table(t) for t in tables])
    out = {"entropy": entropy_N2.T, "effective_paths": np.exp(entropy_N2).T,
           "support": np.array([support_size(t) for t in tables], np.float64).T}
    for q in LEVELS:
        out[f"top_{q}"] = np.array([top_set_size(t, q) for t in tables], np.float64).T
    for j, earlier in (entry for entry in history if entry[1] is not None):
        out[f"in_top90_of_k{j}"] = _estimates_2N(mass_in_top_set(a, b, INCLUSION_LEVEL, scoring=False)
                                                 for a, b in zip(earlier, listings))
        if is_truth:  # how much of the truth's mass left its earlier support
            out[f"outside_support_of_k{j}"] = _estimates_2N(mass_outside_support(a, b, scoring=False)
                                                            for a, b in zip(earlier, listings))
    if truth is not None:
        out["outside_truth"] = _estimates_2N(mass_outside_support(a, b, scoring=False) for a, b in zip(truth, listings))
    return out


def narrowing_curve(
    lm: LanguageModel | None,
    language,
    n_examples: Sequence[int] = (0, 1, 2, 4, 8),
    n_prompts: int = 64,
    max_new: int | None = None,
    key=0,
    truth: LanguageModel | None = None,
    *,
    method: str = "auto",
    min_prob: float = 1e-4,
    truth_min_prob: float = 0.0,
    n: int = 1024,
    level: float = 0.95,
    budget: Budget = DEFAULT_BUDGET,
) -> NarrowingCurve:
    """The narrowing curve of ``lm`` (None: truth only) on ``language`` (a concepts Language or its name).

    ``max_new`` defaults to one example and its SEP. ``truth`` defaults to the
    language's exact process. ``method``: auto (exact with ``min_prob`` /
    ``truth_min_prob`` when the budget allows, else Monte Carlo with ``n`` samples
    per prompt), exact or mc. ``n_prompts`` >= 1; intervals need ``MIN_PROMPTS``.
    """
    t0 = time.perf_counter()
    if isinstance(language, str):
        from pathprob.data.languages import get_language

        language = get_language(language)
    if method not in ("auto", "exact", "mc"):
        raise PathprobError(f"unknown method {method!r}; choose one of auto, exact, mc")
    if not isinstance(n_prompts, int) or n_prompts < 1:
        raise PathprobError(f"n_prompts must be a positive integer, got {n_prompts!r}")
    n_examples = sorted({int(k) for k in n_examples})
    if not n_examples:
        raise PathprobError("give at least one number of in-context examples")
    key, seed, _ = as_key(key)
    concepts, prompts = concept_prompts(language, n_examples, n_prompts, key)
    max_new = max_new or language.example_len + 1
    truth = truth or language.truth()
    if not hasattr(truth, "concept_posterior"):
        raise PathprobError("the truth must expose concept_posterior (the concepts truth does)")
    width = prompts[n_examples[-1]].shape[1]  # every prompt padded to the longest: one set of compiled shapes
    listings = {who: [] for who in WHO}
    bounds = {who: [] for who in WHO}
    methods = {who: [] for who in WHO}
    for i, k in enumerate(n_examples):
        for who, model, floor in (("truth", truth, truth_min_prob), ("model", lm, min_prob)):
            if model is None:
                continue
            here = prompt_listings(model, prompts[k], max_new, method=method, min_prob=floor, budget=budget,
                                   prompt_width=width)
            mc_N = None if here is not None else _mc_entropies(model, prompts[k], max_new, n,
                                                               jax.random.fold_in(key, 2 * i + (who == "truth")))
            bounds[who].append(_prompt_bounds(here, mc_N, list(zip(n_examples, listings[who])), is_truth=who == "truth",
                                              truth=None if who == "truth" else listings["truth"][i]))
            listings[who].append(here)
            methods[who].append("mc" if here is None else "enumeration")
        posterior_NK = np.asarray(_posteriors(truth, jnp.asarray(prompts[k])), np.float64)
        posterior_N = posterior_NK[np.arange(n_prompts), concepts]
        bounds["truth"][-1]["posterior"] = np.stack([posterior_N, posterior_N])
    n_paths = path_count(truth.vocab_size, max_new)
    measures = {who: _measures(bounds[who], methods[who], n_paths, level) for who in WHO if bounds[who]}
    return NarrowingCurve(k=np.array(n_examples), measures=measures, n_prompts=n_prompts, max_new=max_new,
                          n_paths=n_paths, concepts=concepts, level=level, seed=seed, seconds=time.perf_counter() - t0)


def _measures(bounds: list[dict], methods: list[str], n_paths: int, level: float) -> dict:
    """``{name: Measure}`` from per-k dicts of per-prompt bounds float64[2, N] (a name missing at a k: "n/a")."""
    counts = (1.0, float(n_paths))
    ranges = {"entropy": (0.0, math.log(n_paths)), "effective_paths": counts, "support": counts,
              **{f"top_{q}": counts for q in LEVELS}}  # every other measure is a probability
    n_prompts = next(iter(bounds[0].values())).shape[1]
    out = {}
    for name in dict.fromkeys(name for per_k in bounds for name in per_k):
        stacked_K2N = np.stack([per_k.get(name, np.full((2, n_prompts), np.nan)) for per_k in bounds])
        out[name] = summarize(stacked_K2N[:, 0], stacked_K2N[:, 1], methods, ranges.get(name, (0.0, 1.0)), level)
    return out
