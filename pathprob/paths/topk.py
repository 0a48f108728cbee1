"""Exact top-k: the k most probable complete paths after one prompt, by best-first search.

Unlike the level-by-level walk of ``trie.py``, the search expands prefixes in order of
probability across depths (a heap), in batches that reuse their parents' states.

On D devices the search stays one global heap on the host; only the model step is sharded: a
batch holds up to D x ``chunk`` of the most probable pending prefixes, ``chunk`` per device, in
a sharded pool (``frontier``). Each path's log-probability is the same float64 sum of the same
float32 terms as on one device, and best-first order makes the result exact at any batch size,
so the k paths, their log-probabilities and the certificate's validity do not depend on D (the
number of prefixes expanded, and so ``log_best_unexpanded``, may: larger batches look ahead).
"""

from __future__ import annotations

import heapq
import math
import sys
import time
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from pathprob.devices import size as device_count
from pathprob.devices import using as on_devices
from pathprob.errors import BadPromptError
from pathprob.models.base import LanguageModel, is_count
from pathprob.paths import frontier
from pathprob.paths.budget import DEFAULT_BUDGET, Budget, listed_paths_bound, monte_carlo
from pathprob.paths.enumerate import check_request
from pathprob.paths.results import PathTable, log1mexp, logsumexp64, path_lengths


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
    devices: int | Sequence | None = None,
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

    ``devices``: the devices the model steps run on (None: every device; see ``pathprob.devices``).
    """
    with on_devices(devices) as where:
        return _top_k(lm, prompt, k, max_new, chunk=chunk, budget=budget, where=where)


def _top_k(lm, prompt, k, max_new, *, chunk: int, budget: Budget, where) -> PathTable:
    if not is_count(k):
        raise BadPromptError(f"k must be a positive integer, got {k!r}")
    prompt_P = check_request(lm, prompt, max_new, 0.0, None)
    k = int(k)
    V, eos = lm.vocab_size, lm.eos_id
    per_path = frontier.path_state_bytes(lm, max_new)
    found = min(k, listed_paths_bound(lm, max_new))  # the paths it returns when every token is possible
    least = -(-found // V)
    budget.require(f"the exact top-{k} search over paths of up to {max_new} tokens needs at least", least,
                   (1 + least) * per_path + _top_k_bytes(k, found + least, max_new), _TOP_K_INSTEAD)
    t0 = time.perf_counter()
    chunk = frontier.bucket(chunk, 8)
    D = device_count(where)
    rows = D * chunk  # prefixes expanded per batch: ``chunk`` per device
    root = _Node(None, -1)
    if where is None:
        root_state, logprobs_1V = frontier.start(lm, [prompt_P], max_new)
        pool = frontier.grow(root_state, chunk)  # slot 0 holds the root
        root.slot = 0
    else:  # a sharded pool; slots name (local row, device), see ``frontier``
        lm = where.place_model(lm)
        root_state, logprobs_1V = frontier.start_on(where, lm, [prompt_P], max_new)
        pool, root_slots = frontier.root_pool_on(where, root_state)
        pool, logprobs_1V, root.slot = frontier.grow_on(where, pool, chunk), where.host(logprobs_1V), int(root_slots[0])
    used = 1  # rows of each device's pool in use
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
        while heap and len(batch) < rows:
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
        # a chunk is written whole at ``used`` (on every device): room for all of it, so it never clips
        capacity = pool.batch_size if where is None else frontier.local_capacity(where, pool)
        grown = capacity if used + chunk <= capacity else frontier.bucket(used + chunk)
        device = D * (grown + (capacity if grown > capacity else 0) + 2 * chunk) * per_path
        host = _top_k_bytes(k, len(heap) + len(results) + nodes + len(batch) * (V + 1), max_new) + rows * V * 8
        budget.require(f"the exact top-{k} search reached {nodes:,} expanded prefixes; going on needs",
                       nodes + len(batch), device + host, _TOP_K_INSTEAD)
        if where is None:
            if grown > capacity:
                pool = frontier.grow(pool, grown)
            parent_c = np.zeros(chunk, np.int32)
            token_c = np.zeros(chunk, np.int32)
            for i, (_, _, node) in enumerate(batch):
                parent_c[i], token_c[i] = node.parent.slot, node.token
                node.slot = used + i
            parents = pool.replace(paths=frontier.gather(pool.paths, jnp.asarray(parent_c)))
            child, logprobs_cV = frontier.advance(lm, parents, jnp.asarray(token_c))
            pool = pool.replace(paths=frontier.write(pool.paths, child.paths, jnp.int32(used)))
            logprobs_cV = np.asarray(logprobs_cV, np.float64)
        else:  # prefix i of the batch is row i % chunk of device i // chunk's chunk (padded as on one device)
            if grown > capacity:
                pool = frontier.grow_on(where, pool, grown)
            wanted = np.full((D, chunk), root.slot, np.int64)
            token_c = np.zeros((D, chunk), np.int32)
            for i, (_, _, node) in enumerate(batch):
                on, j = divmod(i, chunk)
                wanted[on, j], token_c[on, j] = node.parent.slot, node.token
                node.slot = (used + j) * D + on
            child, logprobs_cV = frontier.advance_on(where, lm, pool.shared,
                                                     frontier.gather_on(where, pool.paths, wanted), token_c)
            pool = pool.replace(paths=frontier.write_on(where, pool.paths, child, used))
            logprobs_cV = where.host(logprobs_cV).astype(np.float64)
        for i, (neg_logp, _, node) in enumerate(batch):
            push_children(node, -neg_logp, logprobs_cV[i])
        used += min(chunk, len(batch))  # each chunk's unused rows are overwritten by the next batch
        nodes += len(batch)

    best_unexpanded = max((-e[0] for e in heap if not e[1]), default=-math.inf)
    logp = np.array([-neg_logp for neg_logp, _, _ in results], np.float64)
    tokens = np.full((len(results), max_new), -1, np.int32)
    for i, (_, _, node) in enumerate(results):
        seq = node.tokens()
        tokens[i, : len(seq)] = seq
    lengths = path_lengths(tokens)
    is_eos = tokens[np.arange(len(results)), np.maximum(lengths - 1, 0)] == eos
    log_covered = logsumexp64(logp)
    stats = {"nodes": nodes, "seconds": time.perf_counter() - t0, "k": k,
             "log_best_unexpanded": best_unexpanded,
             "certified": bool(len(results) < k or logp.size == 0 or best_unexpanded <= logp[-1])}
    return PathTable(tokens=tokens, lengths=lengths, logp=logp, eos=is_eos, log_covered=log_covered,
                     log_remaining=log1mexp(log_covered), tokenizer=lm.tokenizer, max_new=max_new, stats=stats)
