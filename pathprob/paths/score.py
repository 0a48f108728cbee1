"""Teacher-forced scoring of given continuations, through the protocol only."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.errors import BadPromptError
from pathprob.models.base import LanguageModel, encode_prompt, repeat_paths


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


def encode_continuations(lm: LanguageModel, continuations: Sequence[str] | Sequence[Sequence[int]]) -> np.ndarray:
    """int32[N, L] token ids padded with -1; a path may only end at EOS, not continue after it."""
    rows = [lm.tokenizer.encode(c) if isinstance(c, str) else [int(t) for t in c] for c in continuations]
    width = max((len(r) for r in rows), default=0)
    tokens = np.full((len(rows), max(width, 1)), -1, np.int32)
    for i, row in enumerate(rows):
        if any(not 0 <= t < lm.vocab_size for t in row):
            raise BadPromptError(f"continuation {i} has token ids outside the vocabulary of size {lm.vocab_size}")
        if lm.eos_id in row[:-1]:
            raise BadPromptError(f"continuation {i} goes on after EOS; a path ends at its EOS")
        tokens[i, : len(row)] = row
    return tokens


def score(lm: LanguageModel, prompt: str | Sequence[int], continuations) -> np.ndarray:
    """float64[N]: log P(continuation | prompt) for each continuation.

    Continuations are strings (encoded without BOS) or token-id sequences, of any
    lengths; each is scored token by token through ``start``/``advance``, and the
    per-token log-probabilities are summed on the host in float64.
    """
    tokens_NL = encode_continuations(lm, continuations)
    if tokens_NL.shape[0] == 0:
        return np.zeros((0,), np.float64)
    n, width = tokens_NL.shape
    prompt_P = encode_prompt(lm, prompt, room=width)
    # Power-of-two buckets: a handful of compiled shapes serve every call.
    padded = np.full((_bucket(n), min(_bucket(width), lm.max_len - len(prompt_P))), -1, np.int32)
    padded[:n, :width] = tokens_NL
    logprobs_NL = np.asarray(_token_logprobs(lm, prompt_P, padded, padded.shape[1]), np.float64)[:n, :width]
    return np.where(tokens_NL >= 0, logprobs_NL, 0.0).sum(axis=1)


def _bucket(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
