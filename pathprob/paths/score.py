"""Scoring given continuations: the ``Scoring`` policy of the trie walk, each distinct prefix evaluated once.

The continuations of each prompt form a trie; walking it costs one model evaluation
per distinct proper prefix (teacher-forcing every path would evaluate a shared prefix
once per path), in the walk's power-of-two chunks. Per-token log-probabilities are
float32 from the model, summed per path on the host in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pathprob.errors import BadPromptError
from pathprob.models.base import LanguageModel, encode_prompt
from pathprob.paths.trie import DEFAULT_BUDGET, DEFAULT_CHUNK, Budget, Level, walk


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


def score_paths(lm: LanguageModel, prompts: Sequence[np.ndarray], root: np.ndarray, tokens: np.ndarray, *,
                chunk: int = DEFAULT_CHUNK, budget: Budget = DEFAULT_BUDGET, prompt_width: int | None = None,
                on_step=None) -> np.ndarray:
    """float64[M]: log P(tokens[i] | prompts[root[i]]) for encoded paths (int32[M, L], -1 padded), in one walk."""
    lengths = (tokens >= 0).sum(axis=1)
    policy = Scoring(root, tokens, lengths, on_step)
    if tokens.shape[0] and lengths.max() > 0:
        walk(lm, prompts, int(lengths.max()), policy, chunk=chunk, budget=budget, prompt_width=prompt_width)
    return policy.logp


def score(lm: LanguageModel, prompt: str | Sequence[int], continuations, *, budget: Budget = DEFAULT_BUDGET
          ) -> np.ndarray:
    """float64[N]: log P(continuation | prompt) for each continuation.

    Continuations are strings (encoded without BOS) or token-id sequences, of any
    lengths; they are scored by walking their trie (``Scoring``).
    """
    tokens_NL = encode_continuations(lm, continuations)
    if tokens_NL.shape[0] == 0:
        return np.zeros((0,), np.float64)
    prompt_P = encode_prompt(lm, prompt, room=int((tokens_NL >= 0).sum(axis=1).max()))
    return score_paths(lm, [prompt_P], np.zeros(tokens_NL.shape[0], np.int64), tokens_NL, budget=budget)
