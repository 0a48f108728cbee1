"""Teacher-forced scoring of given continuations, through the protocol only, in chunks that fit the budget."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.errors import BadPromptError
from pathprob.models.base import LanguageModel, encode_prompt, repeat_paths, token_ids
from pathprob.paths import frontier
from pathprob.paths.budget import DEFAULT_BUDGET, Budget

SCORE_ROWS = 1024  # most continuations per teacher-forced chunk (a power of two: few compiled shapes)


@functools.partial(jax.jit, static_argnames=("capacity",))
def _token_logprobs(lm: LanguageModel, prompt_P: jax.Array, tokens_NL: jax.Array, capacity: int) -> jax.Array:
    """float32[N, L]: log p(token_t | prompt, tokens_<t) for every position (padding included)."""
    state = repeat_paths(lm.start(prompt_P, capacity), tokens_NL.shape[0])

    def step(state, tokens_N):
        tokens_N = jnp.maximum(tokens_N, 0)  # padding: any valid id, its score is dropped on the host
        logprob_N = jnp.take_along_axis(lm.next_logprobs(state), tokens_N[:, None], axis=1)[:, 0]
        return lm.advance(state, tokens_N), logprob_N

    _, logprobs_LN = jax.lax.scan(step, state, tokens_NL.T)
    return logprobs_LN.T


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


def _row_bytes(lm: LanguageModel, capacity: int) -> int:
    """Bytes per continuation in a chunk: its path state three times (carry in, out and the gathered
    copy), next-token log-probs twice, and its tokens and per-token log-probs."""
    return 3 * frontier.path_state_bytes(lm, capacity) + 2 * 4 * lm.vocab_size + 8 * capacity


def _chunk_rows(lm: LanguageModel, n_paths: int, capacity: int, budget: Budget) -> int:
    """Rows per chunk: a power of two, at most ``SCORE_ROWS`` and ``n_paths``, whose memory fits ``budget``;
    one row when even that does not fit (the caller's check then refuses)."""
    fit = max(budget.max_bytes // _row_bytes(lm, capacity), 1)
    return min(frontier.bucket(n_paths), SCORE_ROWS, 1 << (fit.bit_length() - 1))


def scoring_cost(lm: LanguageModel, n_paths: float, length: int,
                 budget: Budget = DEFAULT_BUDGET) -> tuple[float, float]:
    """(model evaluations, bytes held at once) for ``score`` on ``n_paths`` continuations of up to ``length`` tokens.

    Would it fit: ``budget.allows(*scoring_cost(lm, n_paths, length, budget))``. Every
    continuation is teacher-forced over the padded width, one evaluation per token; the
    bytes are those of one chunk (sized to the budget) plus the float64[n_paths] result.
    ``n_paths`` may be a float bound (``inf`` included).
    """
    capacity = frontier.bucket(max(int(length), 1))
    rows = _chunk_rows(lm, int(min(n_paths, SCORE_ROWS)), capacity, budget)
    return n_paths * capacity, rows * _row_bytes(lm, capacity) + 8 * n_paths


def score(lm: LanguageModel, prompt: str | Sequence[int], continuations, *,
          budget: Budget = DEFAULT_BUDGET) -> np.ndarray:
    """float64[N]: log P(continuation | prompt) for each continuation.

    Continuations are strings (encoded without BOS) or token-id sequences, of any
    lengths, or an int[N, L] array padded with -1; each is scored token by token
    through ``start``/``advance`` in chunks whose memory fits ``budget`` (refused when
    not even one continuation fits), and the per-token log-probabilities are summed
    on the host in float64.
    """
    tokens_NL = encode_continuations(lm, continuations)
    n, width = tokens_NL.shape
    if n == 0:
        return np.zeros((0,), np.float64)
    prompt_P = encode_prompt(lm, prompt, room=width)
    # Power-of-two shapes: a handful of compiled programs serve every call.
    capacity = min(frontier.bucket(width), lm.max_len - len(prompt_P))
    rows = _chunk_rows(lm, n, capacity, budget)
    budget.require(f"scoring {n:,} continuations of up to {width} tokens needs", n * capacity,
                   rows * _row_bytes(lm, capacity) + 8 * n, "score fewer or shorter continuations at once")
    prompt_P = jnp.asarray(prompt_P)
    logp = np.empty(n, np.float64)

    def launch(lo: int) -> jax.Array:
        padded = np.full((rows, capacity), -1, np.int32)
        part = tokens_NL[lo : lo + rows]
        padded[: part.shape[0], :width] = part
        return _token_logprobs(lm, prompt_P, jnp.asarray(padded), capacity)

    pending = launch(0)
    for lo in range(0, n, rows):
        out, pending = pending, (launch(lo + rows) if lo + rows < n else None)  # keep the device busy
        part = tokens_NL[lo : lo + rows]
        logprobs = np.asarray(out, np.float64)[: part.shape[0], :width]
        logp[lo : lo + part.shape[0]] = np.where(part >= 0, logprobs, 0.0).sum(axis=1)
    return logp
