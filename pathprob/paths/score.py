"""Scoring given continuations: the ``Scoring`` policy of the trie walk, each distinct prefix evaluated once.

The continuations of each prompt form a trie; walking it costs one model evaluation
per distinct proper prefix (teacher-forcing every path would evaluate a shared prefix
once per path), in the walk's power-of-two chunks. Per-token log-probabilities are
float32 from the model, summed per path on the host in float64. The paths are walked
in groups whose widest level fits the budget (sorted, so that a group's paths share
prefixes); the number of evaluations is at most paths × tokens.

Paths that share few prefixes gain nothing from the trie: a walk step per token costs more
than a position of a teacher-forced forward (each step copies the paths' caches). A model
that offers ``token_logprobs`` (the Transformer) scores those by teacher-forced forwards of
prompt + path instead, when they take fewer than twice as many positions as the walk takes
steps (``trie_evaluations``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.errors import BadPromptError
from pathprob.models.base import LanguageModel, encode_prompt, token_ids
from pathprob.paths import frontier
from pathprob.paths.budget import DEFAULT_BUDGET, Budget
from pathprob.paths.results import path_lengths
from pathprob.paths.trie import DEFAULT_CHUNK, Level, level_bytes, walk


class Scoring:
    """The policy that expands exactly the proper prefixes of given paths and sums their log-probabilities.

    ``root`` int[M] is each path's prompt, ``tokens`` int32[M, L] its tokens (-1 after its
    ``lengths``); ``logp`` float64[M] holds the scores once the walk is over. ``next_logp``
    (optional) receives, for each path and position, the next-token log-probabilities the
    model gave before that token: the caller passes a function of (path index, position,
    float64[V]) when it needs them (e.g. per-step divergences).
    """

    def __init__(self, root: np.ndarray, tokens: np.ndarray, lengths: np.ndarray, on_step=None):
        self.tokens, self.lengths = tokens, lengths
        self.node = np.asarray(root, np.int64).copy()  # each path's prefix node at the current level
        self.logp = np.zeros(tokens.shape[0], np.float64)
        self.on_step = on_step

    def visit(self, level: Level) -> tuple[np.ndarray, np.ndarray]:
        d = level.depth
        at = np.nonzero(self.lengths > d)[0]
        self.logp[at] += level.next_logp[self.node[at], self.tokens[at, d]]
        if self.on_step is not None:
            self.on_step(at, d, level.next_logp[self.node[at]])
        go = at[self.lengths[at] > d + 1]
        pairs, inverse = np.unique(np.stack([self.node[go], self.tokens[go, d]], axis=1), axis=0, return_inverse=True)
        self.node = np.full(self.node.shape, -1, np.int64)
        self.node[go] = inverse.reshape(-1)
        return pairs[:, 0], pairs[:, 1]


def encode_continuations(lm: LanguageModel, continuations) -> np.ndarray:
    """int32[N, L] token ids padded with -1; a path may only end at EOS, not continue after it.

    ``continuations``: a list of strings (encoded without BOS) or token-id sequences, or an
    integer array int[N, L] already padded with -1 (e.g. a ``PathTable``'s ``tokens``).
    """
    if isinstance(continuations, (np.ndarray, jax.Array)) and np.ndim(continuations) == 2:
        return _check_padded(lm, np.asarray(continuations))
    if isinstance(continuations, (str, bytes)) or not isinstance(continuations, (Sequence, np.ndarray, jax.Array)):
        raise BadPromptError("continuations must be a list of strings or of token-id sequences "
                             f"(wrap a single one in a list), got {type(continuations).__name__}")
    rows = [lm.tokenizer.encode(c) if isinstance(c, str) else token_ids(c, f"continuation {i}")
            for i, c in enumerate(continuations)]
    tokens = np.full((len(rows), max((len(r) for r in rows), default=1) or 1), -1, np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return _check_padded(lm, tokens)


def _check_padded(lm: LanguageModel, tokens_NL: np.ndarray) -> np.ndarray:
    """``tokens_NL`` as int32 after checking ids, -1 padding only at the end, and nothing after EOS."""
    if tokens_NL.dtype.kind not in "iu":
        raise BadPromptError(f"continuation token ids must be integers, got an array of {tokens_NL.dtype}")
    bad = np.nonzero(((tokens_NL < -1) | (tokens_NL >= lm.vocab_size)).any(axis=1))[0]
    if bad.size:
        raise BadPromptError(f"continuation {bad[0]} has token ids outside the vocabulary of size {lm.vocab_size}")
    pad = tokens_NL < 0
    after_eos = (tokens_NL[:, :-1] == lm.eos_id) & ~pad[:, 1:]
    gap = pad[:, :-1] & ~pad[:, 1:]
    for rows, problem in ((after_eos, "goes on after EOS; a path ends at its EOS"),
                          (gap, "has -1 padding before a token; pad only at the end")):
        bad = np.nonzero(rows.any(axis=1))[0]
        if bad.size:
            raise BadPromptError(f"continuation {bad[0]} {problem}")
    return tokens_NL.astype(np.int32)


def group_rows(lm: LanguageModel, length: int, budget: Budget, chunk: int = DEFAULT_CHUNK) -> int:
    """Most paths of up to ``length`` tokens walked together: a power of two whose widest level fits ``budget``
    (at least 1: a caller's budget check refuses what even one path does not fit)."""
    per_path = frontier.path_state_bytes(lm, max(length, 1))
    rows = 1
    while rows < 1 << 40 and level_bytes(2 * rows, lm.vocab_size, per_path, chunk) <= budget.max_bytes:
        rows *= 2
    return rows


def scoring_cost(lm: LanguageModel, n_paths: float, length: int,
                 budget: Budget = DEFAULT_BUDGET) -> tuple[float, float]:
    """(model evaluations, bytes held at once) bounds for ``score`` on ``n_paths`` paths of up to ``length`` tokens.

    Would it fit: ``budget.allows(*scoring_cost(lm, n_paths, length, budget))``. Each path
    costs at most one evaluation per token (fewer when paths share prefixes); the bytes
    are those of one group's widest level plus the float64[n_paths] result. ``n_paths``
    may be a float bound (``inf`` included).
    """
    rows = min(group_rows(lm, length, budget), frontier.bucket(int(min(n_paths, 1 << 40))))
    per_path = frontier.path_state_bytes(lm, max(length, 1))
    return n_paths * length, level_bytes(rows, lm.vocab_size, per_path, DEFAULT_CHUNK) + 8 * n_paths


def score_paths(lm: LanguageModel, prompts: Sequence[np.ndarray], root: np.ndarray, tokens: np.ndarray, *,
                chunk: int = DEFAULT_CHUNK, budget: Budget = DEFAULT_BUDGET, prompt_width: int | None = None,
                on_step=None) -> np.ndarray:
    """float64[M]: log P(tokens[i] | prompts[root[i]]) for encoded paths (int32[M, L], -1 padded).

    One walk per group of ``group_rows`` paths (all of them, usually); ``on_step(index, depth,
    next_logp)`` receives, for the paths ``index`` that have a token at ``depth``, the model's
    next-token log-probabilities before it.
    """
    root = np.asarray(root, np.int64)
    lengths = path_lengths(tokens)
    logp = np.zeros(tokens.shape[0], np.float64)
    if tokens.shape[0] == 0 or lengths.max() == 0:
        return logp
    if on_step is None and hasattr(lm, "token_logprobs"):
        positions = np.asarray([len(p) for p in prompts])[root] + lengths
        if positions.sum() < 2 * trie_evaluations(root, tokens, lengths):
            return teacher_forced(lm, prompts, root, tokens, lengths)
    length = int(lengths.max())
    rows = group_rows(lm, length, budget, chunk)
    order = np.lexsort((*tokens[:, ::-1].T, root)) if tokens.shape[0] > rows else np.arange(tokens.shape[0])
    for lo in range(0, order.size, rows):
        index = order[lo : lo + rows]
        step = None if on_step is None else (lambda at, d, next_logp, index=index: on_step(index[at], d, next_logp))
        policy = Scoring(root[index], tokens[index], lengths[index], step)
        walk(lm, prompts, int(lengths[index].max()), policy, chunk=chunk, budget=budget, prompt_width=prompt_width)
        logp[index] = policy.logp
    return logp


def trie_evaluations(root: np.ndarray, tokens: np.ndarray, lengths: np.ndarray) -> int:
    """How many model steps walking the paths' trie takes: one per distinct proper prefix (roots excluded).

    In sorted order a path adds the prefixes longer than the part it shares with the path before it.
    """
    order = np.lexsort((*tokens[:, ::-1].T, root))
    sorted_tokens, sorted_root = np.take(tokens, order, axis=0), root[order]
    shared = np.zeros(order.size, np.int64)  # tokens shared with the previous path (same root)
    if order.size > 1:
        same = sorted_tokens[1:] == sorted_tokens[:-1]
        run = np.where(same.all(axis=1), tokens.shape[1], np.argmin(same, axis=1))
        shared[1:] = np.where(sorted_root[1:] == sorted_root[:-1], run, 0)
    return int(np.maximum(lengths[order] - 1 - shared, 0).sum())


TEACHER_FORCED_TOKENS = 1 << 16  # tokens per teacher-forced call (the model sub-batches them further)


def teacher_forced(lm: LanguageModel, prompts: Sequence[np.ndarray], root: np.ndarray, tokens: np.ndarray,
                   lengths: np.ndarray) -> np.ndarray:
    """float64[M]: the scores of ``score_paths`` by teacher-forced forwards of prompt + path (``lm.token_logprobs``).

    For paths that share few prefixes: the trie would take about one step per token anyway,
    and a step costs more than a position of one forward over the whole sequence. Rows are
    padded to one of eight widths per power of two (at most the model's context) and go in
    groups of a power of two, so calls compile a handful of programs. Per-token log-probabilities are
    float32, summed per path on the host in float64.
    """
    prompt_len = np.asarray([len(p) for p in prompts], np.int64)[root]
    total = prompt_len + lengths
    longest = int(total.max())
    step = max(1, frontier.bucket(longest) // 8)  # 8 widths per octave: under 1.25x padding, few programs
    width = max(min(-(-longest // step) * step, lm.max_len), longest)
    rows = np.zeros((tokens.shape[0], width), np.int32)
    for r, prompt in enumerate(prompts):
        rows[root == r, : len(prompt)] = prompt
    at = np.arange(tokens.shape[1])
    inside = at[None, :] < lengths[:, None]
    cols = prompt_len[:, None] + at[None, :]
    rows[np.nonzero(inside)[0], cols[inside]] = tokens[inside]
    targets = (np.arange(width - 1)[None, :] >= prompt_len[:, None] - 1) & \
              (np.arange(width - 1)[None, :] < total[:, None] - 1)
    group = frontier.bucket(min(tokens.shape[0], max(1, TEACHER_FORCED_TOKENS // width)))
    out = np.zeros(tokens.shape[0], np.float64)
    for lo in range(0, tokens.shape[0], group):
        chunk = np.zeros((group, width), np.int32)
        chunk[: min(group, rows.shape[0] - lo)] = rows[lo : lo + group]
        logp = np.asarray(_token_logprobs(lm, jnp.asarray(chunk)), np.float64)[: rows.shape[0] - lo]
        out[lo : lo + group] = np.where(targets[lo : lo + group], logp, 0.0).sum(axis=1)
    return out


@jax.jit
def _token_logprobs(lm, tokens_BT):
    return lm.token_logprobs(tokens_BT)


def score(lm: LanguageModel, prompt: str | Sequence[int], continuations, *,
          budget: Budget = DEFAULT_BUDGET) -> np.ndarray:
    """float64[N]: log P(continuation | prompt) for each continuation.

    Continuations are strings (encoded without BOS) or token-id sequences, of any
    lengths, or an int[N, L] array padded with -1 (e.g. a ``PathTable``'s ``tokens``);
    they are scored by walking their trie (``Scoring``), refused up front when the
    walk does not fit ``budget``.
    """
    tokens_NL = encode_continuations(lm, continuations)
    n = tokens_NL.shape[0]
    if n == 0:
        return np.zeros((0,), np.float64)
    length = int((tokens_NL >= 0).sum(axis=1).max())
    prompt_P = encode_prompt(lm, prompt, room=length)
    budget.require(f"scoring {n:,} continuations of up to {length} tokens needs", *scoring_cost(lm, n, length, budget),
                   "score fewer or shorter continuations at once")
    return score_paths(lm, [prompt_P], np.zeros(n, np.int64), tokens_NL, budget=budget)
