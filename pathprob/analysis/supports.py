"""Supports of path distributions: how many paths are possible, how few hold the mass, what mass leaves a support.

"Context narrows the paths" can mean two things. The mass can concentrate on fewer
paths while every path stays possible: the entropy H, the effective support exp(H) and
the size of the smallest set holding 50/90/99% of the mass fall, the support does not.
Or paths become impossible: the support itself shrinks, and the support after more
context is a subset of the support after less. A softmax model gives every path p > 0,
so on it only the first can happen (its support is all ``path_count`` paths); an exact
truth can do both. Everything here is computed from enumerations (``PathTable``) with
proven bounds when they were pruned (``min_prob > 0``), the bounds equal (``exact``)
when nothing that matters was pruned:

- ``support_size``: the number of paths with p > 0. A complete listing (nothing pruned)
  lists exactly those paths: exact. Pruned: at least the listed paths plus enough
  unlisted ones to hold the certified remainder r (each unlisted path has p below
  ``unlisted_ceiling``, ``min_prob`` for a plain enumeration), at most every path of up
  to ``max_new`` tokens (``path_count``).
- ``top_set_size``: the size of the smallest set holding a fraction q of the mass. The
  listed paths are exactly the paths with p >= min_prob, hence the most probable ones:
  when they reach q the count is exact; otherwise it is at least the listed count plus
  enough unlisted paths for the missing mass, and at most the support's upper bound.
- ``mass_in_top_set``: P_b(T), T the smallest set of a's most probable paths holding q
  of a's mass (the narrowing test, for b the longer prompt). b's probabilities are
  looked up, or scored (exact), or bounded by the ceiling without scoring; when a's
  listing does not reach q, T holds unlisted paths too, and the bounds are
  [P_b(listed part of T), 1].
- ``mass_outside_support``: P_b({x : p_a(x) = 0}), the mass b puts on paths that a
  rules out (a the truth: the model's impossible mass; a an earlier prompt of the same
  truth: how far the support failed to shrink inside the earlier one). See its docstring.

Probabilities come from per-token float32 log-probabilities summed in float64, so sums
over complete listings equal 1 only to about 1e-6; an impossible token has log p exactly
-inf (the truths build their tables with ``log(0)``), so a zero is never a rounding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from pathprob.models.base import LanguageModel
from pathprob.paths.results import Estimate, PathTable
from pathprob.paths.score import score

LEVELS = (0.5, 0.9, 0.99)


def path_count(vocab_size: int, max_new: int) -> int:
    """The number of paths of up to ``max_new`` tokens: sum_{t=0}^{max_new} (V - 1)^t.

    A path ends at EOS (after t - 1 other tokens, t = 1..max_new: (V-1)^(t-1) of them)
    or has ``max_new`` tokens without EOS ((V-1)^max_new of them).
    """
    return sum((vocab_size - 1) ** t for t in range(max_new + 1))


def complete(table: PathTable) -> bool:
    """Whether ``table`` lists every path with p > 0 (nothing pruned: the certified remainder is exactly 0)."""
    return table.log_remaining == -math.inf


def unlisted_ceiling(table: PathTable) -> float:
    """An upper bound on the probability of any one path that ``table`` does not list.

    ``min_prob`` for a plain enumeration (every path with p >= min_prob is listed, since
    all its prefixes are at least as probable); the whole remainder otherwise (``max_paths``
    or DFA pruning, top-k tables).
    """
    stats, remainder = table.stats, math.exp(table.log_remaining)
    plain = stats.get("max_paths") is None and stats.get("log_remaining_dead", -math.inf) == -math.inf
    min_prob = stats.get("min_prob", 0.0)
    return min(min_prob, remainder) if plain and min_prob > 0 else remainder


def _more_paths(mass: float, table: PathTable) -> int:
    """At least how many unlisted paths hold ``mass`` > 0 of the remainder: each holds at most the ceiling."""
    return math.floor(mass / unlisted_ceiling(table)) + 1 if mass > 0 else 0


def support_size(table: PathTable) -> tuple[int, int]:
    """(lower, upper) on the number of paths with p > 0 (equal when ``table`` is complete).

    Pruned: the listed paths plus enough unlisted ones to hold the remainder, at least;
    every path of up to ``max_new`` tokens (``path_count``), at most.
    """
    if complete(table):
        return len(table), len(table)
    return (len(table) + _more_paths(math.exp(table.log_remaining), table),
            path_count(table.tokenizer.vocab_size, table.max_new))


def _listed_total(table: PathTable) -> tuple[np.ndarray, float]:
    """The cumulative listed mass float64[N] (most probable first) and the total: listed + certified remainder.

    The remainder is exactly 0 when nothing was pruned, whatever the rounding of the listed sum.
    """
    cumulative = np.cumsum(table.probs)
    listed = float(cumulative[-1]) if cumulative.size else 0.0
    return cumulative, listed + math.exp(table.log_remaining)


def top_set_count(table: PathTable, level: float) -> int | None:
    """How many of the listed paths (most probable first) hold ``level`` of the mass; None when they do not."""
    cumulative, total = _listed_total(table)
    reached = np.nonzero(cumulative >= level * total)[0]
    return int(reached[0]) + 1 if reached.size else None


def top_set_size(table: PathTable, level: float) -> tuple[int, int]:
    """(lower, upper) on the size of the smallest path set holding ``level`` of the mass.

    Not reached by the listing: all listed paths plus enough unlisted ones for the missing
    mass, at least; the support's upper bound, at most.
    """
    count = top_set_count(table, level)
    if count is not None:
        return count, count
    cumulative, total = _listed_total(table)
    listed = float(cumulative[-1]) if cumulative.size else 0.0
    lower = len(table) + _more_paths(level * total - listed, table)
    return lower, max(lower, support_size(table)[1])


def coverage_exact(table: PathTable, levels: Sequence[float] = LEVELS) -> dict:
    """``{str(level): {"n": paths needed, "bound": "exact" | "at_least"}}`` from one enumeration.

    ``at_least``: the listing does not reach the level, so at least ``n`` paths are needed (``top_set_size``).
    """
    out = {}
    for level in levels:
        lower, upper = top_set_size(table, level)
        out[str(level)] = {"n": lower, "bound": "exact" if lower == upper else "at_least"}
    return out


@dataclasses.dataclass
class Listing:
    """One prompt's path distribution as far as it was enumerated, able to give log p of any path exactly.

    ``logp_of`` maps a path (tuple of token ids) to its log-probability: the listed
    paths at first, and every path scored since (with ``score``). In a complete listing
    an unlisted path has p = 0, known without scoring.
    """

    lm: LanguageModel
    prompt: str | Sequence[int]
    table: PathTable
    logp_of: dict

    @classmethod
    def of(cls, lm: LanguageModel, prompt: str | Sequence[int], table: PathTable) -> Listing:
        return cls(lm, prompt, table, paths_logp(table))

    @property
    def complete(self) -> bool:
        return complete(self.table)

    def paths(self) -> list[tuple]:
        """The listed paths, most probable first."""
        return [tuple(row[:m].tolist()) for row, m in zip(self.table.tokens, self.table.lengths)]

    def logp(self, paths: Sequence[tuple], *, scoring: bool = True) -> np.ndarray:
        """float64[N]: log p of each path (token-id tuples): looked up, -inf when unlisted in a complete
        listing, scored (``scoring``) or NaN (unknown: pruned, so below ``unlisted_ceiling``)."""
        missing = [x for x in dict.fromkeys(paths) if x not in self.logp_of]
        if missing and (self.complete or scoring):
            scored = (np.full(len(missing), -np.inf) if self.complete
                      else score(self.lm, self.prompt, [list(x) for x in missing]))
            self.logp_of.update(zip(missing, scored.tolist()))
        return np.array([self.logp_of.get(x, math.nan) for x in paths], np.float64)

    def mass(self, paths: Sequence[tuple], *, scoring: bool = True) -> tuple[float, float]:
        """Proven bounds on the total probability of the distinct ``paths``: exact when each is known
        (``logp``); without scoring, each unknown path adds between 0 and ``unlisted_ceiling``, all of
        them together at most the remainder."""
        logp = self.logp(paths, scoring=scoring)
        unknown = np.isnan(logp)
        exact = _mass(logp[~unknown])
        return exact, exact + min(math.exp(self.table.log_remaining), unknown.sum() * unlisted_ceiling(self.table))


def paths_logp(table: PathTable) -> dict:
    """``{path tuple: log p}`` of the listed paths."""
    return {tuple(row[:m].tolist()): float(lp) for row, m, lp in zip(table.tokens, table.lengths, table.logp)}


def _mass(logp: np.ndarray) -> float:
    return float(np.sum(np.exp(logp))) if logp.size else 0.0


def mass_in_top_set(a: Listing, b: Listing, level: float, *, scoring: bool = True) -> Estimate:
    """P_b(T): b's mass on T, the smallest set of a's most probable paths holding ``level`` of a's mass.

    When a's listing reaches ``level``, T is known and b's mass on it is ``b.mass(T)``
    (exact with ``scoring``, else bounded). Otherwise T also holds paths a did not list,
    and the proven bounds are [P_b(a's listed paths), 1]. ``details``: the size of T
    (a lower bound when not reached) and the level.
    """
    count = top_set_count(a.table, level)
    members = a.paths()[: len(a.table) if count is None else count]
    lower, upper = b.mass(members, scoring=scoring)
    lower, upper = min(lower, 1.0), (min(upper, 1.0) if count is not None else 1.0)
    return Estimate(value=0.5 * (lower + upper), lower=lower, upper=upper, method="exact", exact=lower == upper,
                    details={"top_set_paths": len(members), "p": level})


def mass_outside_support(a: Listing, b: Listing, *, scoring: bool = True) -> Estimate:
    """P_b({x : p_a(x) = 0}): the mass b puts on paths that a gives probability 0, with proven bounds.

    b's listed paths get their p_a from ``a.logp`` (exact zeros: an impossible path has log p
    = -inf; unknown without ``scoring`` when a is pruned): those a rules out make the lower
    bound, the unknown ones may add to the upper. b's unlisted mass r_b may be outside too,
    except the part known inside a's support: with ``scoring``, a's listed paths that b did
    not list are scored under b and their mass taken off r_b. Exact when b's listing is
    complete and every p_a is known, or when a's listing is complete (its listed paths are
    then its whole support) and scored under b.
    """
    listed_b = b.paths()
    logp_a = a.logp(listed_b, scoring=scoring)
    logp_b = b.logp(listed_b)
    lower, unknown = _mass(logp_b[logp_a == -np.inf]), _mass(logp_b[np.isnan(logp_a)])
    inside_unlisted = 0.0
    if scoring and not b.complete:
        listed_set = set(listed_b)
        inside_unlisted = _mass(b.logp([x for x in a.paths() if x not in listed_set]))
    room = 0.0 if b.complete else max(0.0, math.exp(b.table.log_remaining) - inside_unlisted)
    upper = min(lower + unknown + room, 1.0)
    exact = (b.complete and unknown == 0) or (a.complete and scoring)
    lower = upper if exact else lower
    return Estimate(value=0.5 * (lower + upper), lower=lower, upper=upper, method="exact", exact=exact,
                    details={"listed_a": len(a.table), "listed_b": len(listed_b), "complete_a": a.complete,
                             "complete_b": b.complete, "scored": scoring})
