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
import heapq
import math
import time
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from pathprob.errors import BadPromptError, BudgetExceededError
from pathprob.models.base import LanguageModel, encode_prompt
from pathprob.paths import frontier
from pathprob.paths.results import PathTable, log1mexp, logsumexp64
from pathprob.paths.sets import TokenDFA


@dataclasses.dataclass(frozen=True)
class Budget:
    """Limits checked before an exact job runs (defaults fit a laptop)."""

    max_nodes: int = 1 << 22  # prefixes expanded (model evaluations)
    max_bytes: int = 2 << 30  # device path states + host tables


DEFAULT_BUDGET = Budget()
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
    if not isinstance(max_new, int) or max_new <= 0:
        raise BadPromptError(f"max_new must be a positive integer, got {max_new!r}")
    if not 0.0 <= min_prob < 1.0:
        raise BadPromptError(f"min_prob must be in [0, 1), got {min_prob!r}")
    if max_paths is not None and max_paths <= 0:
        raise BadPromptError(f"max_paths must be a positive integer, got {max_paths!r}")
    return encode_prompt(lm, prompt, room=max_new)


def _live_prefix_counts(dfa: TokenDFA, max_new: int, eos: int) -> list[float]:
    """Number of token sequences of each length < max_new that keep the DFA live (no EOS)."""
    extend = dfa.transitions.copy()
    extend[:, eos] = -1
    counts = np.zeros(dfa.n_states)
    counts[dfa.initial] = 1.0
    out = []
    for _ in range(max_new):
        out.append(float(counts[dfa.live].sum()))
        step = np.zeros(dfa.n_states)
        for s in np.nonzero(counts * dfa.live)[0]:
            targets = extend[s][extend[s] >= 0]
            np.add.at(step, targets, counts[s])
        counts = step
    return out


def estimate_work(lm: LanguageModel, max_new: int, *, min_prob: float, max_paths: int | None,
                  chunk: int, dfa: TokenDFA | None = None) -> tuple[int, int]:
    """Upper bounds on (prefixes expanded, bytes held at once) for an enumeration.

    At depth t at most min(V^t, 1/min_prob, max_paths) prefixes are expanded: at
    most 1/min_prob prefixes of one depth can each have probability >= min_prob;
    with a DFA, only the prefixes that keep it live.
    """
    V = lm.vocab_size
    width_cap = min(max_paths or math.inf, 1.0 / min_prob if min_prob > 0 else math.inf)
    widths = [min(float(V) ** t, width_cap) for t in range(max_new)]
    if dfa is not None:
        widths = [min(w, c) for w, c in zip(widths, _live_prefix_counts(dfa, max_new, lm.eos_id))]
    nodes = int(min(sum(widths), 2**62))
    widest = max(widths)
    per_path = frontier.path_state_bytes(lm, max_new)
    # Two frontiers alive (parents and children) plus chunk-sized buffers, and host tables of
    # children: log-probs float64, tokens, DFA states.
    device = 2 * frontier.bucket(int(min(widest, 2**40)), chunk) * per_path + 2 * chunk * per_path
    host = widest * V * (8 + 4 + 4) + widest * max_new * 4
    return nodes, int(min(device + host, 2**62))


def _check_budget(lm, max_new, min_prob, max_paths, chunk, budget: Budget, dfa=None) -> tuple[int, int]:
    nodes, nbytes = estimate_work(lm, max_new, min_prob=min_prob, max_paths=max_paths, chunk=chunk, dfa=dfa)
    if nodes > budget.max_nodes or nbytes > budget.max_bytes:
        raise BudgetExceededError(
            f"exact enumeration up to {max_new} tokens could expand {nodes:.3g} prefixes and hold "
            f"{nbytes / 2**20:.0f} MiB (budget: {budget.max_nodes:.3g} prefixes, {budget.max_bytes / 2**20:.0f} MiB); "
            "set min_prob (e.g. 1e-6) or max_paths, lower max_new, or use a Monte-Carlo method (mc, smc, hybrid)"
        )
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
    prompt_P = _check_request(lm, prompt, max_new, 0.0, None)
    per_path = frontier.path_state_bytes(lm, max_new)
    t0 = time.perf_counter()
    V, eos = lm.vocab_size, lm.eos_id
    chunk = frontier.bucket(chunk, 8)
    root, logprobs_1V = frontier.start(lm, jnp.asarray(prompt_P), max_new)
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
