"""Exact enumeration of continuation paths with a certified remainder, for one prompt or many.

Both entry points are the ``Listing`` policy of the one trie walk (``trie.py``):
``enumerate_many`` walks the tries of all its prompts together (each prompt's cache
stored once), and ``enumerate_paths`` is its one-prompt case. Log-probabilities come
from the device in float32 per token; path log-probabilities and every total are
accumulated on the host in float64, in a fixed order, per prompt.

Accounting (ALGORITHMS.md, "Certified remainder"): a prefix that is not expanded
(below ``min_prob``, beyond ``max_paths``, or whose DFA state can no longer reach
acceptance in the tokens left) puts its whole probability p(u) into its prompt's
remainder, so listed mass + remainder = 1. Each remainder prefix u also bounds the
entropy of its extensions: p(u) log(1/p(u)) <= their contribution <= p(u) log(V^k /
p(u)), k = tokens left after u.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from pathprob.devices import using as on_devices
from pathprob.errors import BadPromptError
from pathprob.models.base import LanguageModel, check_max_new, encode_prompt, is_count
from pathprob.paths import frontier
from pathprob.paths.budget import DEFAULT_BUDGET, Budget, estimate_work, monte_carlo
from pathprob.paths.results import PathTable, logsumexp64
from pathprob.paths.sets import TokenDFA
from pathprob.paths.trie import DEFAULT_CHUNK, Level, nonzero, walk

__all__ = ["Budget", "DEFAULT_BUDGET", "DEFAULT_CHUNK", "Listing", "check_budget", "enumerate_many",
           "enumerate_paths"]


class Remainders:
    """Per-root certified remainder: log mass split into a part that may still be in a DFA set and a part
    that cannot, and entropy bounds, accumulated in float64 (summed in a fixed order: by root, as found)."""

    def __init__(self, n_roots: int, vocab: int):
        self.n, self.log_vocab = n_roots, math.log(vocab)
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (root, logp, live)
        self.entropy_lower = np.zeros(n_roots)
        self.entropy_upper = np.zeros(n_roots)

    def add(self, root: np.ndarray, logp: np.ndarray, steps_left: int, live: np.ndarray | None = None) -> None:
        if logp.size == 0:
            return
        self.parts.append((root, logp, np.ones(logp.shape, bool) if live is None else live))
        p = np.exp(logp)
        self.entropy_lower += np.bincount(root, weights=-p * logp, minlength=self.n)
        self.entropy_upper += np.bincount(root, weights=p * (steps_left * self.log_vocab - logp), minlength=self.n)

    def log_mass(self) -> tuple[np.ndarray, np.ndarray]:
        """float64[n_roots] twice: log of each root's live and dead remainder (-inf when empty)."""
        live_out, dead_out = np.full(self.n, -np.inf), np.full(self.n, -np.inf)
        if not self.parts:
            return live_out, dead_out
        root, logp, live = (np.concatenate(a) for a in zip(*self.parts))
        order = np.argsort(root, kind="stable")
        root, logp, live = root[order], logp[order], live[order]
        bounds = np.searchsorted(root, np.arange(self.n + 1))
        for r in range(self.n):
            mine = slice(bounds[r], bounds[r + 1])
            live_out[r] = logsumexp64(logp[mine][live[mine]])
            dead_out[r] = logsumexp64(logp[mine][~live[mine]])
        return live_out, dead_out


@dataclasses.dataclass
class Pruned:
    """Live prefixes below ``min_prob`` that a walk did not expand (kept with ``Listing(keep_pruned=True)``)."""

    root: list = dataclasses.field(default_factory=list)
    tokens: list = dataclasses.field(default_factory=list)  # int32[M, max_new] padded with -1
    logp: list = dataclasses.field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.logp:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.int32), np.zeros(0)
        return np.concatenate(self.root), np.concatenate(self.tokens), np.concatenate(self.logp)


class Listing:
    """The enumeration policy: list complete paths, expand live prefixes, certify everything else.

    A child of a level is *complete* when it is EOS or the walk's last token. Complete
    children at or above ``min_prob`` (all of them with ``list_all_complete``) are listed;
    the others join the remainder (exactly known: no tokens left). Live children are
    expanded unless below ``min_prob``, DFA-dead (cannot end accepted in the tokens left),
    or beyond the ``max_paths`` most probable of their root at that depth; those join the
    remainder, split into live / dead, and with ``keep_pruned`` the live ones below
    ``min_prob`` are kept in ``pruned`` (the hybrid estimator samples from them).
    """

    def __init__(self, n_roots: int, vocab: int, eos: int, max_new: int, *, min_prob: float = 0.0,
                 max_paths: int | None = None, dfa: TokenDFA | None = None, keep_pruned: bool = False,
                 list_all_complete: bool = False):
        self.vocab, self.eos, self.max_new, self.n_roots = vocab, eos, max_new, n_roots
        self.log_min = math.log(min_prob) if min_prob > 0 else -math.inf
        self.max_paths, self.dfa = max_paths, dfa
        self.reach = None if dfa is None else dfa.reach(max_new, eos)
        self.state = None if dfa is None else np.full(n_roots, dfa.initial, np.int32)
        self.keep_pruned, self.list_all_complete = keep_pruned, list_all_complete
        self.listed: list[tuple] = []  # (root, tokens, logp, eos, lengths) per level
        self.remainder = Remainders(n_roots, vocab)
        self.pruned = Pruned()
        self.nodes = np.ones(n_roots, np.int64)  # each prompt itself

    def visit(self, level: Level) -> tuple[np.ndarray, np.ndarray]:
        V, steps_left = self.vocab, self.max_new - level.depth - 1
        child_logp = level.child_logp()
        possible = child_logp > -np.inf
        keep = possible if self.log_min == -np.inf else child_logp >= self.log_min
        child_state = None if self.dfa is None else self.dfa.transitions[self.state[:, None], np.arange(V)[None, :]]
        complete = np.ones(V, bool) if steps_left == 0 else np.arange(V) == self.eos
        listed = (possible if self.list_all_complete else keep) & complete
        parent, token = nonzero(listed)
        self.listed.append((level.root[parent], level.child_tokens(parent, token, self.max_new),
                            child_logp[parent, token], token == self.eos,
                            np.full(parent.size, level.depth + 1, np.int32)))
        parent, token = nonzero(possible & ~listed & complete)
        self._prune(level, child_logp, child_state, parent, token, steps_left=0)
        if steps_left == 0:
            return parent[:0], token[:0]
        parent, token = nonzero(possible & ~keep & ~complete)
        self._prune(level, child_logp, child_state, parent, token, steps_left)
        parent, token = nonzero(keep & ~complete)
        if self.dfa is not None:
            dead = ~self.reach[steps_left][child_state[parent, token]]
            self.remainder.add(level.root[parent[dead]], child_logp[parent[dead], token[dead]], steps_left,
                               np.zeros(int(dead.sum()), bool))
            parent, token = parent[~dead], token[~dead]
        if self.max_paths is not None:
            parent, token = self._cap(level, child_logp, child_state, parent, token, steps_left)
        self.nodes += np.bincount(level.root[parent], minlength=self.n_roots)
        if self.dfa is not None:
            self.state = child_state[parent, token]
        return parent, token

    def _prune(self, level: Level, child_logp, child_state, parent, token, steps_left: int) -> None:
        """Children ``(parent, token)`` join the remainder (and, when live and kept, ``pruned``)."""
        root, logp = level.root[parent], child_logp[parent, token]
        live = None if self.dfa is None else self.reach[steps_left][child_state[parent, token]]
        self.remainder.add(root, logp, steps_left, live)
        if self.keep_pruned and steps_left > 0:
            mine = slice(None) if live is None else live
            self.pruned.root.append(root[mine])
            self.pruned.tokens.append(level.child_tokens(parent[mine], token[mine], self.max_new))
            self.pruned.logp.append(logp[mine])

    def _cap(self, level: Level, child_logp, child_state, parent, token, steps_left: int):
        """Keep the ``max_paths`` most probable children of each root (ties in trie order); prune the rest."""
        logp, root = child_logp[parent, token], level.root[parent]
        order = np.lexsort((token, parent, -logp, root))
        first = np.searchsorted(root[order], root[order], side="left")
        rank = np.arange(order.size) - first
        cut, kept = order[rank >= self.max_paths], np.sort(order[rank < self.max_paths])
        self._prune(level, child_logp, child_state, parent[cut], token[cut], steps_left)
        return parent[kept], token[kept]

    def tables(self, tokenizer, stats: dict) -> list[PathTable]:
        """One PathTable per root: its listed paths, most probable first, and its certified remainder."""
        root, tokens, logp, is_eos, lengths = (np.concatenate(a) for a in zip(*self.listed))
        if self.n_roots == 1:
            mine_by_root = [np.arange(root.size)]
        else:
            order = np.argsort(root, kind="stable")  # by root; within a root, by depth then trie order
            bounds = np.searchsorted(root[order], np.arange(self.n_roots + 1))
            mine_by_root = [order[bounds[r]:bounds[r + 1]] for r in range(self.n_roots)]
        if self.max_paths is not None:  # the table keeps each root's max_paths most probable paths
            for r, mine in enumerate(mine_by_root):
                ranked = mine[rank(logp[mine])]
                cut = ranked[self.max_paths:]
                live = None if self.dfa is None else self.dfa.accepts(np.take(tokens, cut, axis=0))
                self.remainder.add(root[cut], logp[cut], 0, live)
                mine_by_root[r] = np.sort(ranked[: self.max_paths])
        log_live, log_dead = self.remainder.log_mass()
        out = []
        for r, mine in enumerate(mine_by_root):
            mine = mine[rank(logp[mine])]
            root_stats = {**stats, "nodes": int(self.nodes[r]), "log_remaining_live": float(log_live[r]),
                          "log_remaining_dead": float(log_dead[r]),
                          "remainder_entropy_lower": float(self.remainder.entropy_lower[r]),
                          "remainder_entropy_upper": float(self.remainder.entropy_upper[r])}
            out.append(PathTable(
                tokens=np.take(tokens, mine, axis=0), lengths=lengths[mine], logp=logp[mine],
                eos=is_eos[mine], log_covered=logsumexp64(logp[mine]),
                log_remaining=logsumexp64([log_live[r], log_dead[r]]), tokenizer=tokenizer, max_new=self.max_new,
                stats=root_stats))
        return out


def rank(logp: np.ndarray) -> np.ndarray:
    """Most probable first. Equal log-probabilities keep the order found (trie order, per depth)."""
    order = np.argsort(-logp)  # quicksort: several times faster than a stable sort on large tables
    ranked = logp[order]
    equal = ranked[1:] == ranked[:-1]
    if equal.any():  # put each run of ties back in the order found (ties are common in exact truths)
        in_tie = np.r_[equal, False] | np.r_[False, equal]
        run = np.cumsum(np.r_[True, ~equal])
        pos = np.nonzero(in_tie)[0]
        order[pos] = order[pos][np.lexsort((order[pos], run[pos]))]
    return order


def check_request(lm: LanguageModel, prompt, max_new: int, min_prob: float, max_paths: int | None) -> np.ndarray:
    """The encoded prompt, after checking the enumeration's arguments (one-line BadPromptErrors)."""
    check_max_new(max_new)
    if not (isinstance(min_prob, (int, float, np.integer, np.floating)) and not isinstance(min_prob, bool)
            and 0.0 <= min_prob < 1.0):
        raise BadPromptError(f"min_prob must be a number in [0, 1), got {min_prob!r}")
    if max_paths is not None and not is_count(max_paths):
        raise BadPromptError(f"max_paths must be a positive integer, got {max_paths!r}")
    return encode_prompt(lm, prompt, room=max_new)


def check_budget(lm: LanguageModel, max_new: int, *, min_prob: float, max_paths: int | None, chunk: int,
                 budget: Budget, dfa: TokenDFA | None = None) -> tuple[int, int]:
    """``estimate_work`` for one prompt; a one-line BudgetExceededError naming what to do when it does not fit."""
    nodes, nbytes = estimate_work(lm, max_new, min_prob=min_prob, max_paths=max_paths, chunk=chunk, dfa=dfa)
    budget.require(f"exact enumeration of paths of up to {max_new} tokens needs up to", nodes, nbytes,
                   "set min_prob (e.g. 1e-6) or max_paths, lower max_new, or estimate by Monte Carlo: "
                   + monte_carlo("entropy"))
    return nodes, nbytes


def enumerate_many(
    lm: LanguageModel,
    prompts: Sequence[str | Sequence[int]],
    max_new: int,
    *,
    min_prob: float = 0.0,
    max_paths: int | None = None,
    chunk: int | None = None,
    dfa: TokenDFA | None = None,
    budget: Budget = DEFAULT_BUDGET,
    prompt_width: int | None = None,
    on_level: Callable[[int, int, int], None] | None = None,
    devices: int | Sequence | None = None,
) -> list[PathTable]:
    """``enumerate_paths`` for every prompt, in one trie walk; one ``PathTable`` per prompt, in order.

    Each table has its own listed paths, certified remainder and ``stats`` (``nodes``
    expanded for that prompt; ``seconds`` is the whole walk's; ``batched`` the number of
    prompts walked together). The a-priori budget check is the one-prompt bound (a batch
    accepts the prompts the one-prompt engine accepts); memory is then checked level by
    level against the actual frontier of all prompts together. ``prompt_width`` pads every
    prompt to that many tokens, so that calls with prompts of different lengths reuse one
    set of compiled programs. ``devices``: where the model steps run (None: every device, int N: the
    first N, or a list; see ``pathprob.devices``); the tables do not depend on it.
    """
    encoded = [check_request(lm, p, max_new, min_prob, max_paths) for p in prompts]
    if not encoded:
        return []
    chunk = frontier.bucket(chunk or DEFAULT_CHUNK)
    check_budget(lm, max_new, min_prob=min_prob, max_paths=max_paths, chunk=chunk, budget=budget, dfa=dfa)
    t0 = time.perf_counter()
    policy = Listing(len(encoded), lm.vocab_size, lm.eos_id, max_new, min_prob=min_prob, max_paths=max_paths,
                     dfa=dfa)
    with on_devices(devices):
        walk(lm, encoded, max_new, policy, chunk=chunk, budget=budget, prompt_width=prompt_width, on_level=on_level)
    stats = {"seconds": time.perf_counter() - t0, "chunk": chunk, "min_prob": min_prob, "max_paths": max_paths,
             "batched": len(encoded)}
    return policy.tables(lm.tokenizer, stats)


def enumerate_paths(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    max_new: int,
    *,
    min_prob: float = 0.0,
    max_paths: int | None = None,
    chunk: int | None = None,
    dfa: TokenDFA | None = None,
    budget: Budget = DEFAULT_BUDGET,
    on_level: Callable[[int, int, int], None] | None = None,
    devices: int | Sequence | None = None,
) -> PathTable:
    """Every continuation path with probability >= ``min_prob``, exactly, and the certified remainder.

    Paths end at EOS (inclusive) or after ``max_new`` tokens. Prefixes below
    ``min_prob`` are not expanded; at each depth at most ``max_paths`` live
    prefixes (the most probable) are expanded, and the table keeps the
    ``max_paths`` most probable paths. With ``dfa``, prefixes whose DFA state can
    no longer reach acceptance are not expanded either (``stats`` then splits the
    remainder into the part that may still be in the set and the part that cannot).
    ``on_level(depth, nodes_so_far, frontier_size)`` reports progress. ``devices``: see ``enumerate_many``.
    """
    return enumerate_many(lm, [prompt], max_new, min_prob=min_prob, max_paths=max_paths, chunk=chunk, dfa=dfa,
                          budget=budget, on_level=on_level, devices=devices)[0]
