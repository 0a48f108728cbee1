"""Exact top-k: the k most probable complete paths, by best-first search with batched expansion."""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from pathprob.errors import BadPromptError, BudgetExceededError
from pathprob.models.base import LanguageModel
from pathprob.paths import frontier
from pathprob.paths.enumerate import check_request
from pathprob.paths.results import PathTable, log1mexp, logsumexp64
from pathprob.paths.trie import DEFAULT_BUDGET, Budget


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
    """
    if not isinstance(k, int) or k <= 0:
        raise BadPromptError(f"k must be a positive integer, got {k!r}")
    prompt_P = check_request(lm, prompt, max_new, 0.0, None)
    per_path = frontier.path_state_bytes(lm, max_new)
    t0 = time.perf_counter()
    eos = lm.eos_id
    chunk = frontier.bucket(chunk, 8)
    root, logprobs_1V = frontier.start(lm, [prompt_P], max_new)
    pool = frontier.grow(root, chunk)  # slot 0 holds the root
    used = 1
    # Heap entries: (-logp, kind, tokens, parent_slot); kind 0 = live prefix, 1 = complete path.
    heap: list = []

    def push_children(slot: int, tokens: tuple, logp: float, next_logprobs: np.ndarray) -> None:
        for v in np.nonzero(next_logprobs > -np.inf)[0]:
            child_logp = logp + float(next_logprobs[v])
            child = (*tokens, int(v))
            done = v == eos or len(child) == max_new
            heapq.heappush(heap, (-child_logp, int(done), child, slot))

    push_children(0, (), 0.0, np.asarray(logprobs_1V[0], np.float64))
    results: list[tuple[float, tuple]] = []
    nodes = 1
    while heap and len(results) < k:
        batch = []
        while heap and len(batch) < chunk:
            neg_logp, done, tokens, slot = heap[0]
            if done:
                if batch:
                    break  # pending prefixes may extend to paths at least this probable
                heapq.heappop(heap)
                results.append((-neg_logp, tokens))
                if len(results) == k:
                    break
                continue
            batch.append(heapq.heappop(heap))
        if not batch:
            continue
        if nodes + len(batch) > budget.max_nodes or (used + chunk) * per_path > budget.max_bytes:
            raise BudgetExceededError(
                f"top-{k} search expanded {nodes} prefixes and would exceed its budget "
                f"({budget.max_nodes:.3g} prefixes, {budget.max_bytes / 2**20:.0f} MiB); lower k or max_new"
            )
        capacity = pool.batch_size
        if used + chunk > capacity:
            pool = frontier.grow(pool, frontier.bucket(used + chunk))
        parent_c = np.zeros(chunk, np.int32)
        token_c = np.zeros(chunk, np.int32)
        for i, (_, _, tokens, slot) in enumerate(batch):
            parent_c[i], token_c[i] = slot, tokens[-1]
        child, logprobs_cV = frontier.expand(lm, pool, jnp.asarray(parent_c), jnp.asarray(token_c))
        pool = pool.replace(paths=frontier.write(pool.paths, child.paths, jnp.int32(used)))
        logprobs_cV = np.asarray(logprobs_cV, np.float64)
        for i, (neg_logp, _, tokens, _) in enumerate(batch):
            push_children(used + i, tokens, -neg_logp, logprobs_cV[i])
        used += chunk
        nodes += len(batch)

    best_unexpanded = max((-e[0] for e in heap if not e[1]), default=-math.inf)
    logp = np.array([lp for lp, _ in results], np.float64)
    tokens = np.full((len(results), max_new), -1, np.int32)
    for i, (_, seq) in enumerate(results):
        tokens[i, : len(seq)] = seq
    lengths = (tokens >= 0).sum(axis=1).astype(np.int32)
    is_eos = np.array([seq[-1] == eos for _, seq in results], bool)
    log_covered = logsumexp64(logp)
    stats = {"nodes": nodes, "seconds": time.perf_counter() - t0, "k": k,
             "log_best_unexpanded": best_unexpanded,
             "certified": bool(len(results) < k or logp.size == 0 or best_unexpanded <= logp[-1])}
    return PathTable(tokens=tokens, lengths=lengths, logp=logp, eos=is_eos, log_covered=log_covered,
                     log_remaining=log1mexp(log_covered), tokenizer=lm.tokenizer, max_new=max_new, stats=stats)
