"""Exact enumeration of continuation paths with a certified remainder, and exact top-k.

Both walk the prefix trie through the LanguageModel protocol: each expanded
prefix costs one ``advance`` of a chunk, reuses its parent's state (KV cache),
and all share the prompt cache. Log-probabilities come from the device in
float32 per token; path log-probabilities and every total are accumulated on the
host in float64, in a fixed order.

Accounting (ALGORITHMS.md, "Certified remainder"): a prefix that is not expanded
(below ``min_prob``, beyond ``max_paths``, or whose DFA state can no longer reach
acceptance) puts its whole probability p(u) into the remainder, so listed mass +
remainder = 1. Each remainder prefix u also bounds the entropy of its
extensions: p(u) log(1/p(u)) <= their contribution <= p(u) log(V^k / p(u)),
k = tokens left after u.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import math
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.errors import BadPromptError
from pathprob.models.base import LanguageModel, State, check_max_new, encode_prompt, is_count, take_paths
from pathprob.paths import frontier
from pathprob.paths.budget import DEFAULT_BUDGET, Budget, estimate_work, listed_paths_bound, monte_carlo
from pathprob.paths.results import PathTable, log1mexp, logsumexp64
from pathprob.paths.sets import TokenDFA

DEFAULT_CHUNK = 1024


@dataclasses.dataclass
class _Remainder:
    """Mass of the paths not listed, split by whether they can still be in a DFA set."""

    log_live: list = dataclasses.field(default_factory=list)
    log_dead: list = dataclasses.field(default_factory=list)
    entropy_lower: float = 0.0
    entropy_upper: float = 0.0

    def add(self, logp: np.ndarray, steps_left: int, vocab: int, live: np.ndarray | None = None) -> None:
        if logp.size == 0:
            return
        live = np.ones(logp.shape, bool) if live is None else live
        self.log_live.append(logsumexp64(logp[live]))
        self.log_dead.append(logsumexp64(logp[~live]))
        p = np.exp(logp)
        self.entropy_lower += float(np.sum(-p * logp))
        self.entropy_upper += float(np.sum(p * (steps_left * math.log(vocab) - logp)))

    def summary(self) -> dict:
        live, dead = logsumexp64(self.log_live), logsumexp64(self.log_dead)
        return {"log_remaining_live": live, "log_remaining_dead": dead,
                "remainder_entropy_lower": self.entropy_lower, "remainder_entropy_upper": self.entropy_upper}


def _check_request(lm: LanguageModel, prompt, max_new: int, min_prob: float, max_paths: int | None) -> np.ndarray:
    check_max_new(max_new)
    if not (isinstance(min_prob, (int, float, np.integer, np.floating)) and not isinstance(min_prob, bool)
            and 0.0 <= min_prob < 1.0):
        raise BadPromptError(f"min_prob must be a number in [0, 1), got {min_prob!r}")
    if max_paths is not None and not is_count(max_paths):
        raise BadPromptError(f"max_paths must be a positive integer, got {max_paths!r}")
    return encode_prompt(lm, prompt, room=max_new)


def _check_budget(lm, max_new, min_prob, max_paths, chunk, budget: Budget, dfa=None) -> tuple[int, int]:
    nodes, nbytes = estimate_work(lm, max_new, min_prob=min_prob, max_paths=max_paths, chunk=chunk, dfa=dfa)
    budget.require(f"exact enumeration of paths of up to {max_new} tokens needs up to", nodes, nbytes,
                   "set min_prob (e.g. 1e-6) or max_paths, lower max_new, or estimate by Monte Carlo: "
                   + monte_carlo("entropy"))
    return nodes, nbytes


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
) -> PathTable:
    """Every continuation path with probability >= ``min_prob``, exactly, and the certified remainder.

    Paths end at EOS (inclusive) or after ``max_new`` tokens. Prefixes below
    ``min_prob`` are not expanded; at each depth at most ``max_paths`` live
    prefixes (the most probable) are expanded, and the table keeps the
    ``max_paths`` most probable paths. With ``dfa``, prefixes whose DFA state can
    no longer reach acceptance are not expanded either (``stats`` then splits the
    remainder into the part that may still be in the set and the part that cannot).
    ``on_level(depth, nodes_so_far, frontier_size)`` reports progress.
    """
    prompt_P = _check_request(lm, prompt, max_new, min_prob, max_paths)
    chunk = frontier.bucket(chunk or DEFAULT_CHUNK)
    _check_budget(lm, max_new, min_prob, max_paths, chunk, budget, dfa)
    t0 = time.perf_counter()
    V, eos = lm.vocab_size, lm.eos_id
    log_min = math.log(min_prob) if min_prob > 0 else -math.inf
    live_states = dfa.live if dfa is not None else None

    root, logprobs_1V = frontier.start(lm, jnp.asarray(prompt_P), max_new)
    pool = root
    prefix_tokens = np.zeros((1, 0), np.int32)
    prefix_logp = np.zeros(1, np.float64)
    prefix_dfa = np.full(1, dfa.initial if dfa is not None else 0, np.int32)
    prefix_next = np.asarray(logprobs_1V, np.float64)
    listed_paths, listed_logp, listed_eos = [], [], []
    remainder = _Remainder()
    nodes = 1  # the prompt itself

    for depth in range(max_new):
        child_logp = prefix_logp[:, None] + prefix_next  # [N, V], float64
        possible = child_logp > -np.inf
        keep = possible if log_min == -np.inf else child_logp >= log_min
        child_dfa = dfa.transitions[prefix_dfa[:, None], np.arange(V)[None, :]] if dfa is not None else None
        steps_left = max_new - depth - 1
        # Complete children (EOS, or any token at the last depth): listed when kept; below min_prob
        # they join the remainder, exactly known (no tokens left).
        if steps_left == 0:
            complete = np.ones(V, bool)
        else:
            complete = np.zeros(V, bool)
            complete[eos] = True
        listed = keep & complete
        low = possible & ~keep & complete
        parent, token = _nonzero(listed)
        listed_paths.append(_extend(prefix_tokens, parent, token, max_new))
        listed_logp.append(child_logp[parent, token])
        listed_eos.append(token == eos)
        remainder.add(child_logp[low], 0, V, None if dfa is None else dfa.accepting[child_dfa[low]])
        if steps_left == 0:
            break
        # Live children: expanded unless below min_prob, DFA-dead, or beyond max_paths.
        growing = possible & ~complete
        alive = keep & ~complete
        pruned = growing & ~keep
        remainder.add(child_logp[pruned], steps_left, V, None if dfa is None else live_states[child_dfa[pruned]])
        if dfa is not None:
            dead = alive & ~live_states[child_dfa]
            remainder.add(child_logp[dead], steps_left, V, np.zeros(int(dead.sum()), bool))
            alive &= ~dead
        parent, token = _nonzero(alive)
        logp = child_logp[parent, token]
        if max_paths is not None and logp.size > max_paths:
            order = np.lexsort((token, parent, -logp))  # most probable first, ties in trie order
            cut = order[max_paths:]
            remainder.add(logp[cut], steps_left, V,
                          None if dfa is None else live_states[child_dfa[parent[cut], token[cut]]])
            kept = np.sort(order[:max_paths])
            parent, token, logp = parent[kept], token[kept], logp[kept]
        if parent.size == 0:
            break
        pool, next_logprobs = frontier.expand_children(lm, pool, parent, token, chunk)
        nodes += parent.size
        prefix_tokens = _extend(prefix_tokens, parent, token, depth + 1)
        prefix_logp = logp
        prefix_dfa = child_dfa[parent, token] if dfa is not None else prefix_dfa[parent]
        prefix_next = next_logprobs
        if on_level is not None:
            on_level(depth + 1, nodes, parent.size)

    tokens = np.concatenate(listed_paths)
    logp = np.concatenate(listed_logp)
    is_eos = np.concatenate(listed_eos)
    order = _rank(logp)
    tokens, logp, is_eos = tokens[order], logp[order], is_eos[order]
    if max_paths is not None and logp.size > max_paths:
        cut = slice(max_paths, None)
        remainder.add(logp[cut], 0, V, None if dfa is None else dfa.accepts(tokens[cut]))
        tokens, logp, is_eos = tokens[:max_paths], logp[:max_paths], is_eos[:max_paths]
    lengths = (tokens >= 0).sum(axis=1).astype(np.int32)
    log_covered = logsumexp64(logp)
    stats = {"nodes": nodes, "seconds": time.perf_counter() - t0, "chunk": chunk,
             "min_prob": min_prob, "max_paths": max_paths, **remainder.summary()}
    return PathTable(
        tokens=tokens, lengths=lengths, logp=logp, eos=is_eos, log_covered=log_covered,
        log_remaining=logsumexp64([stats["log_remaining_live"], stats["log_remaining_dead"]]),
        tokenizer=lm.tokenizer, max_new=max_new, stats=stats,
    )


def _nonzero(mask_NV: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(parent, token) of the True entries in row-major (trie) order; fast when all are True."""
    if mask_NV.all():
        n, v = mask_NV.shape
        return np.repeat(np.arange(n), v), np.tile(np.arange(v), n)
    return np.nonzero(mask_NV)


def _extend(prefix_NT: np.ndarray, parent: np.ndarray, token: np.ndarray, width: int) -> np.ndarray:
    """int32[M, width]: prefixes ``parent`` extended by ``token``, padded with -1."""
    depth = prefix_NT.shape[1]
    out = np.full((parent.size, width), -1, np.int32)
    out[:, :depth] = prefix_NT[parent]
    out[:, depth] = token
    return out


def _rank(logp: np.ndarray) -> np.ndarray:
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


_gather = jax.jit(take_paths)


@functools.partial(jax.jit, static_argnames=("capacity",))
def _grow(pool: State, capacity: int) -> State:
    """The pool with ``capacity`` slots, existing paths kept in theirs (one program per capacity)."""
    pad = lambda x: jnp.pad(x, [(0, capacity - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    return pool.replace(paths=jax.tree.map(pad, pool.paths))


class _Node:
    """A prefix or path of the top-k search, stored by parent pointer: the same few bytes at any depth.

    ``slot``: the pool slot of its state once expanded. Nodes compare by token sequence, which
    orders heap entries of equal probability and kind as tuples of their tokens would.
    """

    __slots__ = ("depth", "parent", "slot", "token")

    def __init__(self, parent: _Node | None, token: int):
        self.parent, self.token, self.slot = parent, token, -1
        self.depth = 0 if parent is None else parent.depth + 1

    def tokens(self) -> list[int]:
        out, node = [], self
        while node.parent is not None:
            out.append(node.token)
            node = node.parent
        return out[::-1]

    def __lt__(self, other: _Node) -> bool:
        return self.tokens() < other.tokens()


# Host bytes of one entry, an upper bound: a heap entry or a result (tuple, float, node, token int, list slot
# with room for over-allocation), or an expanded node (less: its entry is gone).
_ENTRY_BYTES = (sys.getsizeof((0.0, 0, None)) + sys.getsizeof(0.0) + sys.getsizeof(_Node(None, 0))
                + sys.getsizeof(1 << 20) + 16)
_TOP_K_INSTEAD = ("lower k or max_new, or find the most probable paths by sampling: "
                  + monte_carlo("sample", "pp.sample(lm, prompt, n, max_new, key=0)", "-n 20000"))


def _top_k_bytes(k: int, entries: int, max_new: int) -> int:
    """Host bytes of a top-k search holding ``entries`` heap entries, results and expanded nodes, and of
    its final table of at most min(k, entries) paths (tokens, log-prob, EOS flag)."""
    return entries * _ENTRY_BYTES + min(k, entries) * (4 * max_new + 8 + 1)


def top_k(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    k: int,
    max_new: int,
    *,
    chunk: int = 64,
    budget: Budget = DEFAULT_BUDGET,
) -> PathTable:
    """The exact ``k`` most probable complete paths, by best-first search with batched expansion.

    A prefix's probability bounds every extension, so a complete path popped
    when no pending prefix is at least as probable is the next most probable
    path (ties: live prefixes are expanded first, then paths come in token
    order). ``stats["log_best_unexpanded"]`` is the certificate: the best
    prefix never expanded is no more probable than the k-th path.

    Budget: refused up front when even the fewest expansions that can yield k
    paths (k / V, each holding a pool slot; every token possible, as in a
    Transformer) do not fit; during the search, every batch is checked before it
    runs against the pool it needs (old and new pool while it grows) and the host
    bytes of the heap, the results and the expanded nodes it will then hold.
    """
    if not is_count(k):
        raise BadPromptError(f"k must be a positive integer, got {k!r}")
    prompt_P = _check_request(lm, prompt, max_new, 0.0, None)
    k = int(k)
    V, eos = lm.vocab_size, lm.eos_id
    per_path = frontier.path_state_bytes(lm, max_new)
    found = min(k, listed_paths_bound(lm, max_new))  # the paths it returns when every token is possible
    least = -(-found // V)
    budget.require(f"the exact top-{k} search over paths of up to {max_new} tokens needs at least", least,
                   (1 + least) * per_path + _top_k_bytes(k, found + least, max_new), _TOP_K_INSTEAD)
    t0 = time.perf_counter()
    chunk = frontier.bucket(chunk, 8)
    root_state, logprobs_1V = frontier.start(lm, jnp.asarray(prompt_P), max_new)
    pool = _grow(root_state, chunk)  # slot 0 holds the root
    root = _Node(None, -1)
    root.slot = 0
    used = 1
    identity_c = jnp.arange(chunk, dtype=jnp.int32)
    heap: list = []  # entries (-logp, kind, node); kind 0 = live prefix, 1 = complete path

    def push_children(parent: _Node, logp: float, next_logprobs_V: np.ndarray) -> None:
        child_logp_V = logp + next_logprobs_V
        last = parent.depth + 1 == max_new
        for v in np.nonzero(next_logprobs_V > -np.inf)[0].tolist():
            heapq.heappush(heap, (-float(child_logp_V[v]), int(last or v == eos), _Node(parent, v)))

    push_children(root, 0.0, np.asarray(logprobs_1V[0], np.float64))
    results: list[tuple[float, int, _Node]] = []
    nodes = 1
    while heap and len(results) < k:
        batch = []
        while heap and len(batch) < chunk:
            if heap[0][1]:
                if batch:
                    break  # pending prefixes may extend to paths at least this probable
                results.append(heapq.heappop(heap))
                if len(results) == k:
                    break
                continue
            batch.append(heapq.heappop(heap))
        if not batch:
            continue
        capacity = pool.batch_size  # a chunk is written whole at ``used``: room for all of it, so it never clips
        grown = capacity if used + chunk <= capacity else frontier.bucket(used + chunk)
        device = (grown + (capacity if grown > capacity else 0) + 2 * chunk) * per_path
        host = _top_k_bytes(k, len(heap) + len(results) + nodes + len(batch) * (V + 1), max_new) + chunk * V * 8
        budget.require(f"the exact top-{k} search reached {nodes:,} expanded prefixes; going on needs",
                       nodes + len(batch), device + host, _TOP_K_INSTEAD)
        if grown > capacity:
            pool = _grow(pool, grown)
        parent_c = np.zeros(chunk, np.int32)
        token_c = np.zeros(chunk, np.int32)
        for i, (_, _, node) in enumerate(batch):
            parent_c[i], token_c[i] = node.parent.slot, node.token
            node.slot = used + i
        # Gather the parents first: then the model step compiles once per chunk shape, and only the
        # gather (a small program) once per pool capacity.
        parents = _gather(pool, jnp.asarray(parent_c))
        child, logprobs_cV = frontier.expand(lm, parents, identity_c, jnp.asarray(token_c))
        pool = pool.replace(paths=frontier.write(pool.paths, child.paths, jnp.int32(used)))
        logprobs_cV = np.asarray(logprobs_cV, np.float64)
        for i, (neg_logp, _, node) in enumerate(batch):
            push_children(node, -neg_logp, logprobs_cV[i])
        used += len(batch)  # the chunk's unused rows are overwritten by the next chunk
        nodes += len(batch)

    best_unexpanded = max((-e[0] for e in heap if not e[1]), default=-math.inf)
    logp = np.array([-neg_logp for neg_logp, _, _ in results], np.float64)
    tokens = np.full((len(results), max_new), -1, np.int32)
    for i, (_, _, node) in enumerate(results):
        seq = node.tokens()
        tokens[i, : len(seq)] = seq
    lengths = (tokens >= 0).sum(axis=1).astype(np.int32)
    is_eos = tokens[np.arange(len(results)), np.maximum(lengths - 1, 0)] == eos
    log_covered = logsumexp64(logp)
    stats = {"nodes": nodes, "seconds": time.perf_counter() - t0, "k": k,
             "log_best_unexpanded": best_unexpanded,
             "certified": bool(len(results) < k or logp.size == 0 or best_unexpanded <= logp[-1])}
    return PathTable(tokens=tokens, lengths=lengths, logp=logp, eos=is_eos, log_covered=log_covered,
                     log_remaining=log1mexp(log_covered), tokenizer=lm.tokenizer, max_new=max_new, stats=stats)
