"""The Monte-Carlo methods: one module each, listed here, called through ``mass_mc`` and ``entropy_mc``.

Every method's module defines a ``METHOD`` (``running.Method``): its name, a one-line
summary, its ``mass`` and (optionally) ``entropy`` functions, which all share one
signature, and the options each takes. ``pp.mass``, ``pp.entropy``, the CLI, the demo
and the convergence study read ``METHODS``; a new method is one module and one line here.

- ``mc`` (``mc.py``): i.i.d. draws, made as counts down the trie; hits/n with the exact
  binomial interval, and the entropy (chain-rule or plain) with a normal interval.
- ``is`` (``importance.py``): importance sampling from a warped model or another model.
- ``smc`` (``smc.py``): DFA-guided SIS / SMC with betting intervals.
- ``swor`` (``swor.py``): n distinct paths without replacement, with proven bounds.
- ``hybrid`` (``hybrid.py``): an exact head and a sampled remainder.

Every estimate records the seed and the key's data, and says whether to trust it
(``reliable``, ``reason``). docs/estimators.md lists each interval, what it is valid for,
and its measured coverage. Methods that stream report ``on_chunk(done, total, running)``
per chunk and return the estimate so far, marked ``interrupted``, on Ctrl-C.
"""

from __future__ import annotations

from collections.abc import Sequence

from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel
from pathprob.paths import hybrid, importance, mc, smc, swor
from pathprob.paths.ancestral import DEFAULT_CHUNK
from pathprob.paths.results import Estimate
from pathprob.paths.running import Method, OnChunk
from pathprob.paths.sets import PathSet, as_path_set

METHODS: dict[str, Method] = {m.name: m for m in (mc.METHOD, importance.METHOD, smc.METHOD, swor.METHOD,
                                                   hybrid.METHOD)}
MASS_METHODS = tuple(name for name, m in METHODS.items() if m.mass is not None)
ENTROPY_METHODS = tuple(name for name, m in METHODS.items() if m.entropy is not None)
ENTROPY_ESTIMATORS = mc.ENTROPY_ESTIMATORS


def methods_error(method, allowed: Sequence[str]) -> PathprobError:
    return PathprobError(f"unknown method {method!r}; choose one of {', '.join(allowed)}")


def _check_options(method: str, options: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise PathprobError(f"method {method!r} takes no option(s) {', '.join(unknown)}"
                            + (f"; its options: {', '.join(allowed)}" if allowed else ""))


def mass_mc(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    pathset: PathSet | str,
    max_new: int,
    *,
    method: str,
    n: int,
    key,
    level: float = 0.95,
    chunk: int = DEFAULT_CHUNK,
    on_chunk: OnChunk | None = None,
    **options,
) -> Estimate:
    """P(set | prompt) over paths of up to ``max_new`` tokens by the Monte-Carlo ``method``.

    ``options`` are the method's own (``METHODS[method].options``): ``is``: ``temperature``,
    ``top_k``, ``top_p``, ``proposal`` (another LanguageModel), ``proposal_prompt``; ``smc``:
    ``resample`` (ESS fraction; None = no resampling), ``particles``; ``hybrid``:
    ``min_prob``, ``budget``. For ``swor``, ``n`` is the number of distinct paths.
    """
    if method not in MASS_METHODS:
        raise methods_error(method, MASS_METHODS)
    chosen = METHODS[method]
    _check_options(method, options, chosen.options)
    return chosen.mass(lm, prompt, as_path_set(pathset), max_new, n=n, key=key, level=level, chunk=chunk,
                       on_chunk=on_chunk, **options)


def entropy_mc(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    max_new: int,
    *,
    method: str = "mc",
    n: int,
    key,
    level: float = 0.95,
    chunk: int = DEFAULT_CHUNK,
    on_chunk: OnChunk | None = None,
    **options,
) -> Estimate:
    """Entropy (nats) of the path distribution by the Monte-Carlo ``method`` (``mc``: ``estimator`` chain or plain)."""
    if method not in ENTROPY_METHODS:
        raise methods_error(method, ENTROPY_METHODS)
    chosen = METHODS[method]
    _check_options(method, options, chosen.entropy_options)
    return chosen.entropy(lm, prompt, max_new, n=n, key=key, level=level, chunk=chunk, on_chunk=on_chunk, **options)
