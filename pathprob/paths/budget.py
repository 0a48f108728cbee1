"""What an exact job may cost, checked before it runs, and the one-line refusal when it does not fit.

Every exact job (enumeration, top-k, scoring listed paths, the exact KL, probes, ablation)
bounds its work a priori — model evaluations and bytes held at once (device path states
plus host tables) — and calls ``Budget.require`` before doing any of it, so a job either
runs within its budget or is refused at once with the Monte-Carlo command to use instead.
``Budget.allows`` is the same test without raising, for callers that fall back to Monte
Carlo themselves. The a-priori bounds of an enumeration (``estimate_work``,
``listed_paths_bound``) live here too: the checks of the jobs built on one (exact KL,
top-k, ablation) add their own work to them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from pathprob.errors import BudgetExceededError, PathprobError
from pathprob.models.base import LanguageModel
from pathprob.paths import frontier
from pathprob.paths.sets import TokenDFA

MIB = 2**20


@dataclasses.dataclass(frozen=True)
class Budget:
    """Limits checked before an exact job runs (defaults fit a laptop).

    ``max_nodes``: model evaluations (a prefix expanded, or one teacher-forced token);
    ``max_bytes``: device path states plus host tables held at once.
    """

    max_nodes: int = 1 << 22
    max_bytes: int = 2 << 30

    def __post_init__(self):
        for name in ("max_nodes", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise PathprobError(f"Budget.{name} must be a positive integer, got {value!r}")

    def allows(self, nodes: float, nbytes: float) -> bool:
        """Whether a job of ``nodes`` model evaluations holding ``nbytes`` at once fits."""
        return nodes <= self.max_nodes and nbytes <= self.max_bytes

    def require(self, job: str, nodes: float, nbytes: float, instead: str) -> None:
        """Raise a one-line BudgetExceededError unless ``job`` (e.g. "exact KL ... needs up to") fits.

        ``instead`` says what to do: usually ``monte_carlo(...)``'s advice.
        """
        if not self.allows(nodes, nbytes):
            raise BudgetExceededError(
                f"{job} {nodes:.3g} model evaluations and {nbytes / MIB:,.0f} MiB, over the budget "
                f"({self.max_nodes:.3g} evaluations, {self.max_bytes / MIB:,.0f} MiB); {instead}"
            )


DEFAULT_BUDGET = Budget()


def monte_carlo(command: str, api: str = "method='mc'", options: str = "--method mc -n 20000") -> str:
    """Advice naming the Monte-Carlo alternative in API and CLI form, e.g. for ``command="kl"``:
    "use method='mc' (pathprob kl ... --method mc -n 20000)"."""
    return f"use {api} (pathprob {command} ... {options})"


# --- work bounds of an exact enumeration ------------------------------------------------------------


def _live_prefix_counts(dfa: TokenDFA, max_new: int, eos: int) -> list[float]:
    """Number of token sequences of each length < max_new that can still end accepted (no EOS)."""
    extend = dfa.transitions.copy()
    extend[:, eos] = -1
    reach = dfa.reach(max_new, eos)
    counts = np.zeros(dfa.n_states)
    counts[dfa.initial] = 1.0
    out = []
    for depth in range(max_new):
        out.append(float(counts[reach[max_new - depth]].sum()))
        step = np.zeros(dfa.n_states)
        for s in np.nonzero(counts * reach[max_new - depth])[0]:
            targets = extend[s][extend[s] >= 0]
            np.add.at(step, targets, counts[s])
        counts = step
    return out


def _level_widths(lm: LanguageModel, max_new: int, min_prob: float, max_paths: int | None,
                  dfa: TokenDFA | None) -> list[float]:
    """Upper bounds on the prefixes expanded at each depth t < max_new: min(V^t, 1/min_prob, max_paths).

    At most 1/min_prob prefixes of one depth can each have probability >= min_prob;
    with a DFA, only the prefixes that keep it live are expanded.
    """
    V = lm.vocab_size
    width_cap = min(max_paths or math.inf, 1.0 / min_prob if min_prob > 0 else math.inf)
    widths = [min(float(V) ** t if t * math.log(V) < 700 else math.inf, width_cap) for t in range(max_new)]
    if dfa is not None:
        widths = [min(w, c) for w, c in zip(widths, _live_prefix_counts(dfa, max_new, lm.eos_id))]
    return widths


def _listed_bound(widths: list[float], vocab: int, min_prob: float) -> float:
    """At most how many paths a walk with these level widths lists: the EOS child of each expanded
    prefix and every child at the last depth, and at most 1/min_prob (each listed path has p >= min_prob)."""
    bound = sum(widths[:-1]) + widths[-1] * vocab
    return min(bound, 1.0 / min_prob) if min_prob > 0 else bound


def listed_paths_bound(lm: LanguageModel, max_new: int, *, min_prob: float = 0.0, max_paths: int | None = None,
                       dfa: TokenDFA | None = None) -> float:
    """An upper bound on the paths ``enumerate_paths`` lists (before its final ``max_paths`` cut)."""
    return _listed_bound(_level_widths(lm, max_new, min_prob, max_paths, dfa), lm.vocab_size, min_prob)


def estimate_work(lm: LanguageModel, max_new: int, *, min_prob: float, max_paths: int | None,
                  chunk: int, dfa: TokenDFA | None = None) -> tuple[int, int]:
    """Upper bounds on (prefixes expanded, bytes held at once) for an enumeration (widths: ``_level_widths``)."""
    V = lm.vocab_size
    widths = _level_widths(lm, max_new, min_prob, max_paths, dfa)
    nodes = int(min(sum(widths), 2**62))
    widest = max(widths)
    per_path = frontier.path_state_bytes(lm, max_new)
    # Two frontiers alive (parents and children) plus chunk-sized buffers; on the host, the children of a
    # level (log-probs float64, tokens, DFA states), and the listed paths (tokens, log-prob, EOS flag, rank
    # index) twice while they are ranked.
    device = 2 * frontier.bucket(int(min(widest, 2**40)), chunk) * per_path + 2 * chunk * per_path
    listed = _listed_bound(widths, V, min_prob)
    host = widest * V * (8 + 4 + 4) + widest * max_new * 4 + 2 * listed * (4 * max_new + 8 + 1 + 8)
    return nodes, int(min(device + host, 2**62))
