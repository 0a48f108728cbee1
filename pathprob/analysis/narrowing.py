"""The in-context narrowing curve: entropy of the next example against the number of examples.

For the concepts language: ``n_prompts`` documents, each from a random concept
(drawn from ``key``); for every k in ``n_examples`` the prompt is BOS and the
document's first k examples (so prompts with fewer examples are prefixes of
those with more), and the paths are the next example (``example_len`` letters and
SEP). Per k: the mean path entropy under the model and under the truth (the
Bayes-optimal narrowing), each with a 95% t-interval over prompts, and the mean
posterior probability of the prompt's true concept under the truth.

Per-prompt entropies come from the batched exact engine (``enumerate_many``, one
batch per k: all prompts of one k have the same length) with proven bounds
[lo_i, hi_i], or from Monte Carlo when the budget does not allow enumeration. The
interval propagates the bounds: for any true values h_i in [lo_i, hi_i], mean(h) is
in [mean(lo), mean(hi)] and sd(h) <= sd(mid) + sqrt(sum w_i^2 / (n - 1)) (w the
half-widths, triangle inequality), so [mean(lo) - t s / sqrt(n), mean(hi) + t s /
sqrt(n)] with that s contains the t-interval of the true values. Unbiased Monte-Carlo
per-prompt estimates need no extra term: their noise is part of the spread.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.data.base import numpy_rng
from pathprob.errors import BudgetExceededError, PathprobError
from pathprob.files import dumps
from pathprob.models.base import LanguageModel
from pathprob.paths.enumerate import DEFAULT_BUDGET, Budget
from pathprob.paths.intervals import t_quantile
from pathprob.paths.enumerate import check_budget, enumerate_many
from pathprob.paths.measure import entropy, entropy_from_table
from pathprob.paths.samples import as_key


@dataclasses.dataclass(frozen=True, repr=False)
class NarrowingCurve:
    """Per k (``k`` int[n]): mean entropy (nats) of the next example with its interval, model and truth,
    and the truth's mean posterior of the true concept; ``method`` per k and model (exact or mc)."""

    k: np.ndarray
    model_mean: np.ndarray | None
    model_lower: np.ndarray | None
    model_upper: np.ndarray | None
    truth_mean: np.ndarray
    truth_lower: np.ndarray
    truth_upper: np.ndarray
    posterior_mean: np.ndarray
    posterior_lower: np.ndarray
    posterior_upper: np.ndarray
    n_prompts: int
    max_new: int
    methods: dict
    level: float = 0.95
    seed: int | None = None
    seconds: float = 0.0
    per_prompt: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        """The figure's data (``pathprob.plots.paths.narrowing_curve``) and the run's facts, JSON-able."""
        arrays = ("k", "model_mean", "model_lower", "model_upper", "truth_mean", "truth_lower", "truth_upper",
                  "posterior_mean", "posterior_lower", "posterior_upper")
        out = {name: getattr(self, name).tolist() for name in arrays if getattr(self, name) is not None}
        return {**out, "n_prompts": self.n_prompts, "max_new": self.max_new, "methods": self.methods,
                "level": self.level, "seed": self.seed, "seconds": self.seconds}

    def to_json(self, **kwargs) -> str:
        return dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        lines = [f"NarrowingCurve({self.n_prompts} prompts, max_new={self.max_new}, {100 * self.level:g}% intervals)",
                 f"  {'k':>3} {'model H (nats)':>26} {'truth H (nats)':>26} {'P(true concept)':>16}"]
        for i, k in enumerate(self.k):
            model = "" if self.model_mean is None else \
                f"{self.model_mean[i]:.4f} [{self.model_lower[i]:.4f}, {self.model_upper[i]:.4f}]"
            truth = f"{self.truth_mean[i]:.4f} [{self.truth_lower[i]:.4f}, {self.truth_upper[i]:.4f}]"
            lines.append(f"  {k:>3} {model:>26} {truth:>26} {self.posterior_mean[i]:16.4f}")
        return "\n".join(lines)


def mean_interval(lower: np.ndarray, upper: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper): a t-interval for the mean of values known to lie in [lower_i, upper_i].

    Equal bounds give the ordinary t-interval; see the module docstring for the propagation.
    """
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    n = lower.size
    mid, half = 0.5 * (lower + upper), 0.5 * (upper - lower)
    if n < 2:
        return float(mid.mean()), float(lower.mean()), float(upper.mean())
    spread = float(np.std(mid, ddof=1) + math.sqrt(np.sum(half**2) / (n - 1)))
    margin = t_quantile(level, n - 1) * spread / math.sqrt(n)
    return float(mid.mean()), float(lower.mean() - margin), float(upper.mean() + margin)


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


def prompt_entropies(lm: LanguageModel, prompts_NP: np.ndarray, max_new: int, *, method: str, min_prob: float,
                     budget: Budget, n: int, key, prompt_width: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-prompt path entropy bounds (lower, upper) float64[N] and the method used ("exact" or "mc")."""
    prompts = [row.tolist() for row in prompts_NP]
    if method in ("auto", "exact"):
        try:
            check_budget(lm, max_new, min_prob=min_prob, max_paths=None, chunk=1024, budget=budget)
            tables = enumerate_many(lm, prompts, max_new, min_prob=min_prob, budget=budget, prompt_width=prompt_width)
            bounds = np.array([entropy_from_table(t) for t in tables], np.float64)
            return bounds[:, 0], bounds[:, 1], "exact"
        except BudgetExceededError:
            if method == "exact":
                raise
    values = np.array([entropy(lm, p, max_new, method="mc", n=n, key=jax.random.fold_in(key, i)).value
                       for i, p in enumerate(prompts)])
    return values, values, "mc"


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
    truth_min_prob: float = 1e-6,
    n: int = 1024,
    level: float = 0.95,
    budget: Budget = DEFAULT_BUDGET,
) -> NarrowingCurve:
    """The narrowing curve of ``lm`` (None: truth only) on ``language`` (a concepts Language or its name).

    ``max_new`` defaults to one example and its SEP. ``truth`` defaults to the
    language's exact process. ``method``: auto (exact with ``min_prob`` /
    ``truth_min_prob`` when the budget allows, else Monte Carlo with ``n`` samples
    per prompt), exact or mc.
    """
    t0 = time.perf_counter()
    if isinstance(language, str):
        from pathprob.data.languages import get_language

        language = get_language(language)
    if not hasattr(language, "sample_concepts") or not hasattr(language, "example_len"):
        raise PathprobError(f"narrowing_curve needs a language with latent concepts (concepts), "
                            f"not {getattr(language, 'name', language)!r}")
    if method not in ("auto", "exact", "mc"):
        raise PathprobError(f"unknown method {method!r}; choose one of auto, exact, mc")
    if not isinstance(n_prompts, int) or n_prompts < 2:
        raise PathprobError(f"n_prompts must be an integer >= 2 (an interval needs two), got {n_prompts!r}")
    n_examples = sorted(set(int(k) for k in n_examples))
    if not n_examples:
        raise PathprobError("give at least one number of in-context examples")
    max_new = max_new or language.example_len + 1
    truth = truth or language.truth()
    if not hasattr(truth, "concept_posterior"):
        raise PathprobError("the truth must expose concept_posterior (the concepts truth does)")
    key, seed, _ = as_key(key)
    concepts, prompts = concept_prompts(language, n_examples, n_prompts, key)
    stats = {name: {"mean": [], "lower": [], "upper": []} for name in ("model", "truth", "posterior")}
    methods = {"model": [], "truth": []}
    per_prompt = {"concepts": concepts.tolist()}
    room = prompts[n_examples[-1]].shape[1]  # one set of compiled shapes for every k
    for i, k in enumerate(n_examples):
        prompts_NP = prompts[k]
        for name, model, floor in (("model", lm, min_prob), ("truth", truth, truth_min_prob)):
            if model is None:
                continue
            low, high, used = prompt_entropies(model, prompts_NP, max_new, method=method, min_prob=floor,
                                               budget=budget, n=n, key=jax.random.fold_in(key, 2 * i + (name == "truth")),
                                               prompt_width=room)
            methods[name].append(used)
            per_prompt[f"{name}_{k}"] = {"lower": low.tolist(), "upper": high.tolist()}
            for part, value in zip(("mean", "lower", "upper"), mean_interval(low, high, level)):
                stats[name][part].append(value)
        posterior_N = np.asarray(_posteriors(truth, jnp.asarray(prompts_NP)), np.float64)[np.arange(n_prompts), concepts]
        for part, value in zip(("mean", "lower", "upper"), mean_interval(posterior_N, posterior_N, level)):
            stats["posterior"][part].append(min(max(value, 0.0), 1.0))  # a probability
    arr = lambda name, part: None if not stats[name][part] else np.array(stats[name][part])
    return NarrowingCurve(
        k=np.array(n_examples), model_mean=arr("model", "mean"), model_lower=arr("model", "lower"),
        model_upper=arr("model", "upper"), truth_mean=arr("truth", "mean"), truth_lower=arr("truth", "lower"),
        truth_upper=arr("truth", "upper"), posterior_mean=arr("posterior", "mean"),
        posterior_lower=arr("posterior", "lower"), posterior_upper=arr("posterior", "upper"),
        n_prompts=n_prompts, max_new=max_new, methods={k: v for k, v in methods.items() if v}, level=level,
        seed=seed, seconds=time.perf_counter() - t0, per_prompt=per_prompt,
    )
