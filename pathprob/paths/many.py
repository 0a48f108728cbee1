"""Exact enumeration after many prompts at once: one batched trie walk with one root per prompt.

All prompts share their first tokens (BOS at least), so the model starts once on
their longest common prefix (the shared, unbatched prompt cache), then the rest
of every prompt is teacher-forced as a batch of paths in one jitted ``lax.scan``
over ``advance`` (prompts shorter than the longest keep their state once their
own tokens are consumed). That gives a frontier with one root per prompt, whose
suffix cache holds the prompt's remaining tokens plus ``max_new``. The trie is
then expanded level by level for all roots together with the chunked machinery
of ``frontier.py`` (power-of-two chunks: the compiled programs are reused by
every prompt and every later call with the same shapes), while the accounting
(listed paths, certified remainder, entropy bounds) is kept per root on the host
in float64, exactly as ``enumerate_paths`` keeps it for one prompt.

Attention over shared prefix + teacher-forced suffix under one softmax equals
attention over the whole prompt, so every root's table equals the per-prompt
enumeration up to float32 rounding of the per-token log-probabilities.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.errors import BadPromptError, BudgetExceededError
from pathprob.models.base import LanguageModel, State, repeat_paths
from pathprob.paths import frontier
from pathprob.paths.enumerate import (
    DEFAULT_BUDGET,
    DEFAULT_CHUNK,
    Budget,
    _check_budget,
    _check_request,
    _extend,
    _nonzero,
    _rank,
)
from pathprob.paths.results import PathTable, logsumexp64


@functools.partial(jax.jit, static_argnames=("capacity",))
def start_many(lm: LanguageModel, prefix_P: jax.Array, suffix_BR: jax.Array, suffix_len_B: jax.Array,
               capacity: int) -> tuple[State, jax.Array]:
    """Start on the shared ``prefix_P`` once, then teacher-force each row's suffix (-1 padded, ``suffix_len_B`` long).

    Returns the B root states and their next-token log-probabilities float32[B, V].
    A row's state stops changing after its own ``suffix_len_B`` tokens.
    """
    state = repeat_paths(lm.start(prefix_P, capacity), suffix_BR.shape[0])

    def step(state: State, xs):
        t, tokens_B = xs
        moved = lm.advance(state, jnp.maximum(tokens_B, 0))
        take_B = t < suffix_len_B
        keep = lambda new, old: jnp.where(take_B.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
        return state.replace(paths=jax.tree.map(keep, moved.paths, state.paths)), None

    steps = jnp.arange(suffix_BR.shape[1], dtype=jnp.int32)
    state, _ = jax.lax.scan(step, state, (steps, suffix_BR.T))
    return state, lm.next_logprobs(state)


def common_prefix_length(prompts: Sequence[np.ndarray]) -> int:
    """Length of the longest common prefix of the prompts (token ids)."""
    shortest = min(len(p) for p in prompts)
    n = 0
    while n < shortest and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def check_budget_each(lm: LanguageModel, max_new: int, *, min_prob: float, chunk: int, budget: Budget) -> tuple[int, int]:
    """(nodes, bytes) bounds for one prompt; raises BudgetExceededError beyond ``budget`` (as ``enumerate_paths``).

    A batch accepts exactly the prompts the per-prompt engine accepts: its work is
    the sum of theirs, and its memory is checked level by level against the actual
    frontier (``_check_level``), since the a-priori bound times the number of
    prompts is far above what peaked distributions need.
    """
    return _check_budget(lm, max_new, min_prob, None, chunk, budget)


def _check_level(width: int, vocab: int, per_path: int, chunk: int, depth: int, budget: Budget) -> None:
    """Refuse before expanding a frontier of ``width`` prefixes (all prompts) that would exceed ``budget``'s bytes."""
    nbytes = 2 * frontier.bucket(width, chunk) * per_path + 2 * chunk * per_path + width * vocab * 16
    if nbytes > budget.max_bytes:
        raise BudgetExceededError(
            f"the batched enumeration reached {width:,} prefixes at depth {depth} ({nbytes / 2**20:.0f} MiB, "
            f"budget {budget.max_bytes / 2**20:.0f} MiB); pass fewer prompts at once, raise min_prob, or use Monte Carlo"
        )


class _Remainders:
    """Per-root certified remainder: mass (log) and entropy bounds, accumulated in float64."""

    def __init__(self, n_roots: int, vocab: int):
        self.n, self.log_vocab = n_roots, math.log(vocab)
        self.roots, self.logps = [], []
        self.entropy_lower = np.zeros(n_roots)
        self.entropy_upper = np.zeros(n_roots)

    def add(self, root: np.ndarray, logp: np.ndarray, steps_left: int) -> None:
        if logp.size == 0:
            return
        self.roots.append(root)
        self.logps.append(logp)
        p = np.exp(logp)
        self.entropy_lower += np.bincount(root, weights=-p * logp, minlength=self.n)
        self.entropy_upper += np.bincount(root, weights=p * (steps_left * self.log_vocab - logp), minlength=self.n)

    def log_mass(self) -> np.ndarray:
        """float64[n_roots]: log of each root's remainder (-inf when nothing was pruned)."""
        out = np.full(self.n, -np.inf)
        if not self.roots:
            return out
        root, logp = np.concatenate(self.roots), np.concatenate(self.logps)
        order = np.argsort(root, kind="stable")  # fixed order: by root, then as found
        root, logp = root[order], logp[order]
        bounds = np.searchsorted(root, np.arange(self.n + 1))
        for r in range(self.n):
            out[r] = logsumexp64(logp[bounds[r]:bounds[r + 1]])
        return out


def enumerate_many(
    lm: LanguageModel,
    prompts: Sequence[str | Sequence[int]],
    max_new: int,
    *,
    min_prob: float = 0.0,
    chunk: int | None = None,
    budget: Budget = DEFAULT_BUDGET,
    prompt_room: int | None = None,
) -> list[PathTable]:
    """``enumerate_paths(lm, prompt, max_new, min_prob=min_prob)`` for every prompt, in one batched walk.

    Returns one ``PathTable`` per prompt (same order), each with its own listed
    paths, certified remainder and ``stats`` (``nodes`` expanded for that prompt;
    ``seconds`` is the whole batch's; ``batched`` the number of prompts walked
    together). Prompts without a common first token are walked in one batch per
    first token. ``max_paths`` is not supported here (use ``enumerate_paths``).

    ``prompt_room``: share only the first token and pad every prompt's remaining
    tokens to this many, so that calls with prompts of different lengths (up to
    ``1 + prompt_room`` tokens) reuse one set of compiled programs.
    """
    encoded = [_check_request(lm, p, max_new, min_prob, None) for p in prompts]
    if not encoded:
        return []
    if prompt_room is not None and max(len(p) for p in encoded) > 1 + prompt_room:
        raise BadPromptError(f"a prompt has more than 1 + prompt_room = {1 + prompt_room} tokens")
    chunk = frontier.bucket(chunk or DEFAULT_CHUNK)
    check_budget_each(lm, max_new, min_prob=min_prob, chunk=chunk, budget=budget)
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(int(ids[0]), []).append(i)
    tables: list[PathTable | None] = [None] * len(encoded)
    for members in groups.values():
        for i, table in zip(members, _walk(lm, [encoded[i] for i in members], max_new, min_prob, chunk, budget, prompt_room)):
            tables[i] = table
    return tables


def _roots(lm: LanguageModel, prompts: list[np.ndarray], max_new: int,
           prompt_room: int | None) -> tuple[State, np.ndarray]:
    """The root pool (one path per prompt, padded to a power of two) and the roots' next log-probs float64[n, V]."""
    n = len(prompts)
    shared = common_prefix_length(prompts) if prompt_room is None else 1
    suffix_len = np.array([len(p) - shared for p in prompts], np.int32)
    width = int(suffix_len.max()) if prompt_room is None else prompt_room
    rows = frontier.bucket(n)
    suffix_BR = np.full((rows, width), -1, np.int32)
    suffix_len_B = np.zeros(rows, np.int32)
    for i, ids in enumerate(prompts):
        suffix_BR[i, : suffix_len[i]] = ids[shared:]
        suffix_len_B[i] = suffix_len[i]
    pool, logprobs_BV = start_many(lm, jnp.asarray(prompts[0][:shared]), jnp.asarray(suffix_BR),
                                   jnp.asarray(suffix_len_B), width + max_new)
    return pool, np.asarray(logprobs_BV, np.float64)[:n]


def _walk(lm: LanguageModel, prompts: list[np.ndarray], max_new: int, min_prob: float, chunk: int,
          budget: Budget, prompt_room: int | None) -> list[PathTable]:
    t0 = time.perf_counter()
    per_path = frontier.path_state_bytes(lm, max(len(p) for p in prompts) + max_new)
    n_roots, V, eos = len(prompts), lm.vocab_size, lm.eos_id
    log_min = math.log(min_prob) if min_prob > 0 else -math.inf
    pool, prefix_next = _roots(lm, prompts, max_new, prompt_room)
    prefix_root = np.arange(n_roots)
    prefix_tokens = np.zeros((n_roots, 0), np.int32)
    prefix_logp = np.zeros(n_roots, np.float64)
    listed_root, listed_paths, listed_logp, listed_eos = [], [], [], []
    remainder = _Remainders(n_roots, V)
    nodes = np.ones(n_roots, np.int64)  # each prompt itself

    for depth in range(max_new):
        child_logp = prefix_logp[:, None] + prefix_next  # [N, V], float64
        possible = child_logp > -np.inf
        keep = possible if log_min == -np.inf else child_logp >= log_min
        steps_left = max_new - depth - 1
        complete = np.ones(V, bool) if steps_left == 0 else (np.arange(V) == eos)
        parent, token = _nonzero(keep & complete)
        listed_root.append(prefix_root[parent])
        listed_paths.append(_extend(prefix_tokens, parent, token, max_new))
        listed_logp.append(child_logp[parent, token])
        listed_eos.append(token == eos)
        parent, token = _nonzero(possible & ~keep & complete)
        remainder.add(prefix_root[parent], child_logp[parent, token], 0)
        if steps_left == 0:
            break
        parent, token = _nonzero(possible & ~keep & ~complete)
        remainder.add(prefix_root[parent], child_logp[parent, token], steps_left)
        parent, token = _nonzero(keep & ~complete)
        if parent.size == 0:
            break
        _check_level(parent.size, V, per_path, chunk, depth + 1, budget)
        pool, prefix_next = frontier.expand_children(lm, pool, parent, token, chunk)
        prefix_root = prefix_root[parent]
        nodes += np.bincount(prefix_root, minlength=n_roots)
        prefix_tokens = _extend(prefix_tokens, parent, token, depth + 1)
        prefix_logp = child_logp[parent, token]

    seconds = time.perf_counter() - t0
    root = np.concatenate(listed_root)
    tokens, logp, is_eos = np.concatenate(listed_paths), np.concatenate(listed_logp), np.concatenate(listed_eos)
    log_remaining = remainder.log_mass()
    tables = []
    for r in range(n_roots):
        mine = np.nonzero(root == r)[0]  # in the order found: by depth, then trie order, as enumerate_paths
        order = mine[_rank(logp[mine])]
        lengths = (tokens[order] >= 0).sum(axis=1).astype(np.int32)
        stats = {"nodes": int(nodes[r]), "seconds": seconds, "chunk": chunk, "min_prob": min_prob, "max_paths": None,
                 "batched": n_roots, "log_remaining_live": float(log_remaining[r]), "log_remaining_dead": -math.inf,
                 "remainder_entropy_lower": float(remainder.entropy_lower[r]),
                 "remainder_entropy_upper": float(remainder.entropy_upper[r])}
        tables.append(PathTable(tokens=tokens[order], lengths=lengths, logp=logp[order], eos=is_eos[order],
                                log_covered=logsumexp64(logp[order]), log_remaining=float(log_remaining[r]),
                                tokenizer=lm.tokenizer, max_new=max_new, stats=stats))
    return tables
