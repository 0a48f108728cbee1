"""A set's mass and the path entropy: exact with proven bounds, or by Monte Carlo with intervals."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from pathprob.devices import using as on_devices
from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel
from pathprob.paths.enumerate import DEFAULT_BUDGET, Budget, enumerate_paths
from pathprob.paths.montecarlo import ENTROPY_METHODS, MASS_METHODS, METHODS, entropy_mc, mass_mc, methods_error
from pathprob.paths.results import Estimate, PathTable, logsumexp64
from pathprob.paths.samples import contains
from pathprob.paths.sets import PathSet, as_path_set

EXACT_METHODS = ("exact",)


def _need_n(method: str, n: int | None) -> int:
    if n is None:
        raise PathprobError(f"method {method!r} samples: give the number of samples n")
    return n


def _check_method(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise methods_error(method, allowed)


def enumeration_options(method: str, *, min_prob: float, budget: Budget) -> dict:
    """The exact-enumeration arguments a Monte-Carlo ``method`` also takes (hybrid's exact head)."""
    options = METHODS[method].options
    return {**({"min_prob": min_prob} if "min_prob" in options and min_prob > 0 else {}),
            **({"budget": budget} if "budget" in options else {})}


def set_mass_from_table(table: PathTable, pathset: PathSet) -> tuple[float, float]:
    """Proven bounds on P(set) from an enumeration: (listed mass in the set, + remainder that may be in it)."""
    inside = contains(pathset, table.tokens, table.lengths, table.tokenizer)  # by its DFA when it has one
    log_lower = logsumexp64(table.logp[inside])
    log_live = table.stats.get("log_remaining_live", table.log_remaining)
    lower = math.exp(log_lower)
    return lower, min(lower + math.exp(log_live), 1.0)


def mass(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    pathset: PathSet | str,
    max_new: int,
    *,
    method: str = "exact",
    min_prob: float = 0.0,
    max_paths: int | None = None,
    budget: Budget = DEFAULT_BUDGET,
    n: int | None = None,
    key=None,
    devices: int | Sequence | None = None,
    **kwargs,
) -> Estimate:
    """P(set | prompt) over paths of up to ``max_new`` tokens.

    ``exact``: enumerate with DFA pruning (a prefix that can no longer reach the
    set is proven outside it and never expanded); ``[lower, upper]`` are proven
    bounds, equal (``exact=True``) when nothing that could be in the set was pruned.
    ``mc``, ``is``, ``smc``, ``swor``, ``hybrid``: Monte Carlo with ``n`` samples and
    ``key`` (see ``montecarlo.mass_mc`` for each method's options and interval).
    ``devices``: where the model steps run (None: every device; see ``pathprob.devices``); the
    estimate does not depend on it.
    """
    with on_devices(devices):
        return _mass(lm, prompt, pathset, max_new, method=method, min_prob=min_prob, max_paths=max_paths,
                     budget=budget, n=n, key=key, **kwargs)


def _mass(lm, prompt, pathset, max_new, *, method, min_prob, max_paths, budget, n, key, **kwargs) -> Estimate:
    _check_method(method, EXACT_METHODS + MASS_METHODS)
    pathset = as_path_set(pathset)
    if method in MASS_METHODS:
        kwargs.update(enumeration_options(method, min_prob=min_prob, budget=budget))
        return mass_mc(lm, prompt, pathset, max_new, method=method, n=_need_n(method, n), key=key, **kwargs)
    t0 = time.perf_counter()
    table = enumerate_paths(lm, prompt, max_new, min_prob=min_prob, max_paths=max_paths,
                            dfa=pathset.dfa(lm.tokenizer), budget=budget, **kwargs)
    lower, upper = set_mass_from_table(table, pathset)
    return Estimate(
        value=0.5 * (lower + upper), lower=lower, upper=upper, method="exact", exact=lower == upper,
        seconds=time.perf_counter() - t0, details={"nodes": table.stats["nodes"], "listed_paths": len(table)},
    )


def entropy_from_table(table: PathTable) -> tuple[float, float]:
    """Proven bounds (nats) on the path entropy from an enumeration and its remainder."""
    listed = float(np.sum(-np.exp(table.logp) * table.logp))
    lower = listed + table.stats.get("remainder_entropy_lower", 0.0)
    upper = listed + table.stats.get("remainder_entropy_upper", 0.0)
    return lower, upper


def entropy(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    max_new: int,
    *,
    method: str = "exact",
    min_prob: float = 0.0,
    max_paths: int | None = None,
    budget: Budget = DEFAULT_BUDGET,
    n: int | None = None,
    key=None,
    devices: int | Sequence | None = None,
    **kwargs,
) -> Estimate:
    """Entropy (nats) of the distribution over paths of up to ``max_new`` tokens.

    ``exact``: enumeration, with proven bounds when pruned. ``mc`` (``estimator``
    ``chain`` or ``plain``) and ``swor``: Monte Carlo with ``n`` samples and ``key``.
    ``devices``: as for ``mass``.
    """
    with on_devices(devices):
        return _entropy(lm, prompt, max_new, method=method, min_prob=min_prob, max_paths=max_paths, budget=budget,
                        n=n, key=key, **kwargs)


def _entropy(lm, prompt, max_new, *, method, min_prob, max_paths, budget, n, key, **kwargs) -> Estimate:
    _check_method(method, EXACT_METHODS + ENTROPY_METHODS)
    if method in ENTROPY_METHODS:
        return entropy_mc(lm, prompt, max_new, method=method, n=_need_n(method, n), key=key, **kwargs)
    t0 = time.perf_counter()
    table = enumerate_paths(lm, prompt, max_new, min_prob=min_prob, max_paths=max_paths, budget=budget, **kwargs)
    lower, upper = entropy_from_table(table)
    return Estimate(
        value=0.5 * (lower + upper), lower=lower, upper=upper, method="exact", exact=lower == upper,
        seconds=time.perf_counter() - t0, details={"nodes": table.stats["nodes"], "listed_paths": len(table)},
    )
