"""One trie walk for every exact job: many prompts at once, level by level, with small policies.

The continuations of R prompts form R tries. ``walk`` expands them together, level by
level: level d holds N prefixes of d tokens (any mix of roots), their float64
log-probabilities and next-token log-probabilities on the host, and their states on
the device (a pool of power-of-two size; the R prompt caches are stored once, in
``State.shared``, and each path carries only its root index and its own suffix).
Expanding a level costs one ``advance`` per chosen child, in power-of-two chunks, so a
walk compiles a handful of programs however many prompts and nodes it visits.

What to expand is the *policy*'s decision. ``policy.visit(level)`` sees every child of
the level's prefixes (through ``level.child_logp()``), accounts for them (lists complete
paths, adds pruned mass to a certified remainder, scores fixed paths, splits sample
counts, ...) and returns the (parent, token) pairs to expand, in the order the next
level will hold them. Policies keep any per-prefix data of their own aligned with that
order. The engines are the policies: ``enumerate.Listing`` (enumeration, exact mass and
entropy, the hybrid head), ``score.Scoring`` (scoring fixed paths, each distinct prefix
once), ``sample.Counting`` (n samples drawn as counts down the trie).

On several devices (``devices.current()``) the walk is the same on the host; only its model steps
change: the level's chunks go D at a time, one per device (``frontier.expand_children_on``), and
the pool is sharded, its rows named by ``Level.slots``. The log-probabilities, hence every listed
path, remainder and policy decision, are bit for bit those of one device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from pathprob import devices
from pathprob.models.base import LanguageModel, State
from pathprob.paths import frontier
from pathprob.paths.budget import DEFAULT_BUDGET, Budget, monte_carlo

DEFAULT_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class Level:
    """N prefixes of ``depth`` tokens: host arrays and their device states.

    ``root`` int64[N] is each prefix's prompt, ``tokens`` int32[N, depth] its tokens,
    ``logp`` float64[N] log p(prefix | prompt), ``next_logp`` float64[N, V] the
    next-token log-probabilities; ``pool`` holds the N states (leading axis >= N), or is None
    on a level that is never expanded. On a mesh the pool is sharded and ``slots`` int64[N] names
    row i's place in it (``frontier``'s sharded pools); on one device ``slots`` is None (row i is
    pool row i).
    """

    depth: int
    root: np.ndarray
    tokens: np.ndarray
    logp: np.ndarray
    next_logp: np.ndarray
    pool: State | None
    slots: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.root.shape[0])

    def child_logp(self) -> np.ndarray:
        """float64[N, V]: log p(prefix + v | prompt) for every child."""
        return self.logp[:, None] + self.next_logp

    def child_tokens(self, parent: np.ndarray, token: np.ndarray, width: int) -> np.ndarray:
        """int32[M, width]: the tokens of children ``(parent, token)``, padded with -1."""
        out = np.full((parent.size, width), -1, np.int32)
        out[:, : self.depth] = np.take(self.tokens, parent, axis=0)  # np.take: far faster than tokens[parent]
        out[:, self.depth] = token
        return out


class Policy(Protocol):
    def visit(self, level: Level) -> tuple[np.ndarray, np.ndarray]:
        """Account for every child of ``level``; return (parent, token) int arrays of the children to expand."""
        ...


def nonzero(mask_NV: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(parent, token) of the True entries in row-major (trie) order; fast when all are True."""
    if mask_NV.all():
        n, v = mask_NV.shape
        return np.repeat(np.arange(n), v), np.tile(np.arange(v), n)
    return np.nonzero(mask_NV)


def level_bytes(width: int, vocab: int, per_path: int, chunk: int) -> int:
    """Bytes held while a level of ``width`` prefixes is expanded: two pools, chunk buffers, host tables."""
    return 2 * frontier.bucket(width, chunk) * per_path + 2 * chunk * per_path + width * vocab * 16


class Walker:
    """A trie walk driven from outside: ``level`` is the current level, ``expand(parent, token)`` moves down.

    ``walk`` drives one with a policy; two walkers driven with the same expansions walk the
    same trie under two models (or two prompts) in lockstep, level by level. Its model steps run on
    ``devices.current()``, kept as ``where`` (None: one device; else ``lm`` is placed on its mesh).
    """

    def __init__(self, lm: LanguageModel, prompts: Sequence[np.ndarray], max_new: int, *,
                 chunk: int = DEFAULT_CHUNK, budget: Budget = DEFAULT_BUDGET, prompt_width: int | None = None):
        self.where = devices.current()
        self.max_new, self.budget = max_new, budget
        self.chunk = frontier.bucket(chunk)
        n_roots = len(prompts)
        slots = None
        if self.where is None:
            self.lm = lm
            pool, logprobs_RV = frontier.start(lm, prompts, max_new, width=prompt_width)
        else:
            self.lm = self.where.place_model(lm)
            roots, logprobs_RV = frontier.start_on(self.where, self.lm, prompts, max_new, width=prompt_width)
            pool, slots = frontier.root_pool_on(self.where, roots)
            logprobs_RV = self.where.host(logprobs_RV)
        self.level = Level(depth=0, root=np.arange(n_roots), tokens=np.zeros((n_roots, 0), np.int32),
                           logp=np.zeros(n_roots), next_logp=np.asarray(logprobs_RV, np.float64)[:n_roots],
                           pool=pool, slots=slots)
        self.per_path = frontier.path_state_bytes(lm, max_new)
        self.nodes = n_roots

    def fits(self, width: int) -> bool:
        """Whether a next level of ``width`` prefixes fits the budget (``expand`` refuses one that does not)."""
        return self.budget.allows(self.nodes + width, level_bytes(width, self.lm.vocab_size, self.per_path,
                                                                  self.chunk))

    def expand(self, parent: np.ndarray, token: np.ndarray, *, states: bool = True) -> Level:
        """The next level: children ``(parent[i], token[i])`` of the current one, in that order.

        ``states=False`` when that level will not be expanded in turn (the walk's last): its
        pool is then None, and only its next-token log-probabilities are computed.
        """
        level, depth = self.level, self.level.depth
        nbytes = level_bytes(parent.size, self.lm.vocab_size, self.per_path, self.chunk)
        self.budget.require(f"the trie walk reached {parent.size:,} prefixes at depth {depth + 1}; going on needs",
                            self.nodes + parent.size, nbytes,
                            "raise min_prob, pass fewer prompts at once, or " + monte_carlo("entropy"))
        if self.where is None:
            pool, next_logp = frontier.expand_children(self.lm, level.pool, parent, token, self.chunk, states=states)
            slots = None
        else:
            pool, slots, next_logp = frontier.expand_children_on(self.where, self.lm, level.pool, level.slots, parent,
                                                                 token, self.chunk, states=states)
        self.level = Level(depth=depth + 1, root=level.root[parent], tokens=level.child_tokens(parent, token, depth + 1),
                           logp=level.logp[parent] + level.next_logp[parent, token], next_logp=next_logp, pool=pool,
                           slots=slots)
        self.nodes += parent.size
        return self.level


def walk(lm: LanguageModel, prompts: Sequence[np.ndarray], max_new: int, policy: Policy, *,
         chunk: int = DEFAULT_CHUNK, budget: Budget = DEFAULT_BUDGET, prompt_width: int | None = None,
         on_level: Callable[[int, int, int], None] | None = None) -> Level:
    """Walk the tries of ``prompts``' continuations (up to ``max_new`` tokens) under ``policy``.

    ``prompts`` are encoded (int arrays); root r of the walk is ``prompts[r]``. Before each
    expansion the level's memory is checked against ``budget`` (a ``BudgetExceededError``
    names the size reached). ``prompt_width`` pads every prompt to that many tokens (see
    ``frontier.start``). ``on_level(depth, nodes, width)`` reports progress. Returns the
    last level visited (its prefixes were accounted for by the policy, not expanded).
    """
    walker = Walker(lm, prompts, max_new, chunk=chunk, budget=budget, prompt_width=prompt_width)
    for depth in range(max_new):
        parent, token = policy.visit(walker.level)
        if parent.size == 0 or depth + 1 == max_new:
            break
        walker.expand(parent, token, states=depth + 2 < max_new)
        if on_level is not None:
            on_level(depth + 1, walker.nodes, parent.size)
    return walker.level
