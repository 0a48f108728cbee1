"""What every sampled estimate shares: its run record, its verdict, and folding chunks that survive Ctrl-C.

An estimator is a pure ``fold(state, chunk) -> state`` over the chunks of samples (or
replicates) it draws, and an ``estimate(state) -> Estimate``. ``fold_chunks`` runs
the fold, reports running estimates, and on KeyboardInterrupt returns the estimate
of the chunks folded so far, marked ``interrupted``. The fold is pure and its result
is stored in one assignment, so an interrupt inside it leaves the state of the
previous chunk whole.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax

from pathprob.paths.diagnostics import verdict
from pathprob.paths.results import Estimate
from pathprob.paths.samples import as_key

OnChunk = Callable[[int, int, Estimate], None]


@dataclasses.dataclass(frozen=True)
class Method:
    """A Monte-Carlo method: what ``mass`` / ``entropy`` call, and the options each takes.

    ``mass(lm, prompt, pathset, max_new, *, n, key, level, chunk, on_chunk, **options)`` and
    ``entropy(lm, prompt, max_new, *, n, key, level, chunk, on_chunk, **entropy_options)``
    return an ``Estimate``; ``None`` when the method does not estimate that quantity.
    ``options`` named ``min_prob`` or ``budget`` are taken from the caller's exact-enumeration
    arguments (``pp.mass(..., min_prob=...)``). Each method's module defines its ``METHOD``;
    ``montecarlo.METHODS`` lists them.
    """

    name: str
    summary: str  # one line: what it draws and its interval
    mass: Callable[..., Estimate] | None
    entropy: Callable[..., Estimate] | None = None
    options: tuple[str, ...] = ()
    entropy_options: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Run:
    """The seed, the key's raw data and the start time that every sampled estimate records."""

    seed: int | None
    key_data: tuple[int, ...]
    t0: float

    @staticmethod
    def start(key) -> tuple[jax.Array, Run]:
        """(typed key, run record) from ``jax.random.key(seed)``, raw key data or an int seed."""
        key, seed, key_data = as_key(key)
        return key, Run(seed, key_data, time.perf_counter())

    def estimate(self, method: str, value: float, interval: tuple[float, float], *, n: int, level: float | None,
                 stderr: float, ess: float, details: dict, hits: int | None = None, weighted_ess: bool = False,
                 khats: tuple[float, ...] = (), exact: bool = False) -> Estimate:
        """An Estimate of this run with its reliability verdict (ESS checked only when ``weighted_ess``)."""
        reliable, reason = verdict(hits=hits, ess=ess if weighted_ess else None, khats=khats)
        return Estimate(value=value, lower=interval[0], upper=interval[1], method=method, n=n, stderr=stderr,
                        ess=ess, exact=exact, seconds=time.perf_counter() - self.t0, level=level, seed=self.seed,
                        key_data=self.key_data, reliable=reliable, reason=reason, details=details)


def fold_chunks(chunks: Iterable, fold: Callable[[Any, Any], Any], state: Any, estimate: Callable[[Any], Estimate], *,
                total: int, on_chunk: OnChunk | None = None, count: Callable[[Any], int] = len,
                refresh: float = 1.0) -> Estimate:
    """The estimate of ``state`` after folding every chunk (``count(chunk)`` samples each).

    ``on_chunk(done, total, running)`` is called after each chunk; ``running`` is
    recomputed once the sample count has grown by the factor ``refresh`` (> 1 for
    estimates whose cost grows with n), so ``running.n`` may lag ``done``.
    KeyboardInterrupt after at least one chunk returns the estimate of what was
    folded, ``interrupted=True``; before any chunk it propagates.
    """
    folded = (state, 0)  # (state, samples in it): replaced in one assignment per chunk
    running = None
    try:
        for chunk in chunks:
            folded = (fold(folded[0], chunk), folded[1] + count(chunk))
            if on_chunk is not None:
                if running is None or folded[1] >= refresh * running.n:
                    running = estimate(folded[0])
                on_chunk(folded[1], total, running)
    except KeyboardInterrupt:
        if folded[1] == 0:
            raise
        return dataclasses.replace(estimate(folded[0]), interrupted=True)
    if running is not None and running.n == folded[1]:
        return running
    return estimate(folded[0])


def report_once(estimate: Estimate, on_chunk: OnChunk | None) -> Estimate:
    """``estimate``, reported to ``on_chunk`` as one chunk: for methods that draw everything at once."""
    if on_chunk is not None:
        on_chunk(estimate.n, estimate.n, estimate)
    return estimate
