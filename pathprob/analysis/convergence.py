"""Estimator convergence: each Monte-Carlo method at growing sample sizes against the exact value."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax

from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel
from pathprob.paths import frontier
from pathprob.paths.measure import mass
from pathprob.paths.montecarlo import MASS_METHODS
from pathprob.paths.samples import as_key
from pathprob.paths.sets import PathSet, as_path_set


def convergence(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    pathset: PathSet | str,
    max_new: int,
    *,
    methods: Sequence[str] = ("mc", "smc", "swor"),
    ns: Sequence[int] = (100, 300, 1000),
    key=0,
    level: float = 0.95,
    min_prob: float = 0.0,
) -> dict:
    """P(set | prompt) by each method in ``methods`` at each sample size in ``ns``, and exactly once.

    Every (method, n) run gets its own key, ``fold_in(fold_in(key, method index), n index)``,
    so no two runs share random numbers. ``key`` is ``jax.random.key(seed)`` or an int seed.
    Returns JSON-able data for ``pathprob.plots.paths.convergence``:
    ``{"exact": {value, lower, upper, exact}, "series": {method: {n, value, lower, upper,
    stderr, ess, seconds}}, "prompt", "pathset", "max_new", "level", "seed"}``. For ``swor``
    n is the number of distinct paths. ``min_prob`` > 0 prunes the exact enumeration (then
    ``exact`` holds proven bounds, ``exact["exact"]`` False) and sets ``hybrid``'s exact head.
    Sampling runs share one chunk size (the smallest n's power of two), so each method
    compiles once.
    """
    unknown = [m for m in methods if m not in MASS_METHODS]
    if unknown:
        raise PathprobError(f"unknown Monte-Carlo method(s) {', '.join(map(repr, unknown))}; "
                            f"choose from {', '.join(MASS_METHODS)}")
    if not ns or any(not isinstance(n, int) or n <= 0 for n in ns):
        raise PathprobError(f"ns must be positive integers, got {list(ns)!r}")
    ns = sorted(ns)
    pathset = as_path_set(pathset)
    base_key, seed, _ = as_key(key)
    exact = mass(lm, prompt, pathset, max_new, method="exact", min_prob=min_prob)
    chunk = frontier.bucket(ns[0])
    series = {}
    for i, method in enumerate(methods):
        method_key = jax.random.fold_in(base_key, i)
        runs = [mass(lm, prompt, pathset, max_new, method=method, n=n, key=jax.random.fold_in(method_key, j),
                     level=level, chunk=chunk, min_prob=min_prob) for j, n in enumerate(ns)]
        series[method] = {
            "n": [run.n or n for run, n in zip(runs, ns)], "requested_n": list(ns),
            **{field: [_finite(getattr(run, field)) for run in runs]
               for field in ("value", "lower", "upper", "stderr", "ess", "seconds")},
        }
    return {
        "prompt": prompt if isinstance(prompt, str) else list(prompt), "pathset": str(pathset),
        "max_new": max_new, "level": level, "seed": seed, "min_prob": min_prob,
        "exact": {"value": exact.value, "lower": exact.lower, "upper": exact.upper, "exact": exact.exact,
                  "seconds": exact.seconds},
        "series": series,
    }


def _finite(x: float) -> float | None:
    """JSON has no NaN or infinity: those become None."""
    x = float(x)
    return x if math.isfinite(x) else None
