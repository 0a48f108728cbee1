"""The LanguageModel protocol every path algorithm is written against.

A model is a *pytree*: its arrays (parameters, HMM tables) are leaves and its
static description (config, tokenizer) is auxiliary data. Engines therefore pass
the model itself as an argument of their jitted steps, which compile once per
model configuration and never bake parameters into the program as constants.

Protocol (all pure and jit-friendly; R = prompts, B = paths, P = prompt length, V = vocab):

- ``start(prompts_RP, lengths_R, capacity) -> State`` consumes R prompts (right-padded
  to P, ``lengths_R`` real tokens each) once and returns R paths, path r after prompt
  r; ``capacity`` (static) is the most tokens any path will be extended by.
- ``next_logprobs(state) -> float32[B, V]`` normalised log-probabilities of the
  next token (``-inf`` for impossible tokens).
- ``advance(state, tokens_B) -> State`` extends every path by one token.

``State.shared`` holds what paths have in common (the R prompts' KV caches, stored
once each), ``State.paths`` the per-path part, every leaf with a leading B axis
(for a Transformer it includes each path's root prompt index), so engines repeat,
gather and shard paths with ``jax.tree.map`` over ``State.paths`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pathprob.data.tokenizer import Tokenizer
from pathprob.errors import BadPromptError


@flax.struct.dataclass
class State:
    """A batch of paths: ``shared`` is common to all, ``paths`` has a leading B axis."""

    shared: Any
    paths: Any

    @property
    def batch_size(self) -> int:
        return jax.tree.leaves(self.paths)[0].shape[0]


@runtime_checkable
class LanguageModel(Protocol):
    tokenizer: Tokenizer
    max_len: int

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def start(self, prompts_RP: jax.Array, lengths_R: jax.Array, capacity: int) -> State: ...

    def next_logprobs(self, state: State) -> jax.Array: ...

    def advance(self, state: State, tokens_B: jax.Array) -> State: ...


def pad_prompts(prompts: Sequence[np.ndarray], max_len: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(int32[R, P] right-padded with 0, int32[R] lengths) for encoded prompts.

    P is ``width`` when given (at least the longest prompt), else the longest prompt
    rounded up to a power of two; at most ``max_len``. Calls with prompts of similar
    lengths (or the same ``width``) share their compiled programs.
    """
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    longest = int(lengths.max())
    width = min(max(width or 1 << (longest - 1).bit_length(), longest), max(max_len, longest))
    out = np.zeros((len(prompts), width), np.int32)
    for row, ids in zip(out, prompts):
        row[: len(ids)] = ids
    return out, lengths


def start_one(lm: LanguageModel, prompt_P: jax.Array, capacity: int) -> State:
    """The state of one path after one prompt (``lm.start`` with R = 1)."""
    prompt_P = jnp.asarray(prompt_P, jnp.int32)
    return lm.start(prompt_P[None], jnp.full((1,), prompt_P.shape[0], jnp.int32), capacity)


def take_paths(state: State, index_B: jax.Array) -> State:
    """The paths ``index_B`` of ``state`` (gather or repeat; the shared part is untouched)."""
    return state.replace(paths=jax.tree.map(lambda leaf: leaf[index_B], state.paths))


def repeat_paths(state: State, n: int) -> State:
    """``n`` copies of a one-path state."""
    return take_paths(state, jnp.zeros((n,), jnp.int32))


def is_count(value) -> bool:
    """Whether ``value`` is a positive integer (Python or numpy; not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value > 0


def check_max_new(max_new) -> int:
    """``max_new`` as an int, or a BadPromptError when it is not a positive integer."""
    if not is_count(max_new):
        raise BadPromptError(f"max_new must be a positive integer, got {max_new!r}")
    return int(max_new)


def token_ids(seq, what: str = "the prompt") -> list[int]:
    """``seq`` as a list of token ids: a 1-D sequence or array of integers (not bools, floats or bytes).

    Anything else is a BadPromptError naming ``what`` and the problem; the ids' range is
    the caller's to check against its model.
    """
    if isinstance(seq, (bytes, bytearray, memoryview)):
        raise BadPromptError(f"{what} is bytes; pass text (decode the bytes first) or a sequence of token ids")
    if not isinstance(seq, (Sequence, np.ndarray, jax.Array)) or isinstance(seq, str):
        raise BadPromptError(f"{what} must be text or a 1-D sequence of integer token ids, got {type(seq).__name__}")
    if isinstance(seq, (np.ndarray, jax.Array)) and seq.ndim != 1:
        raise BadPromptError(f"{what} must be a 1-D sequence of token ids, got {seq.ndim} dimensions")
    if len(seq) == 0:
        return []
    try:
        ids = np.asarray(seq)
    except (ValueError, TypeError):
        ids = np.asarray(seq, dtype=object)  # ragged nesting: reported below
    if ids.ndim != 1:
        raise BadPromptError(f"{what} must be a 1-D sequence of token ids, got {ids.ndim} dimensions")
    if ids.dtype.kind == "O" and all(isinstance(i, int) and not isinstance(i, bool) for i in ids.tolist()):
        return [int(i) for i in ids.tolist()]  # Python ints too large for int64: out of range for the caller
    if ids.dtype.kind == "b" or (isinstance(seq, Sequence) and any(isinstance(i, (bool, np.bool_)) for i in seq)):
        raise BadPromptError(f"{what} must hold integer token ids, but holds booleans")
    if ids.dtype.kind not in "iu":
        kind = {"f": "floats", "c": "complex numbers", "U": "strings", "S": "bytes"}.get(
            ids.dtype.kind, "other objects (None, nested sequences or mixed types)")
        raise BadPromptError(f"{what} must hold integer token ids, but holds {kind}")
    return [int(i) for i in ids.tolist()]


def encode_prompt(lm: LanguageModel, prompt: str | Sequence[int], *, room: int = 0) -> np.ndarray:
    """The prompt as int32[P] token ids, checked against the model.

    A string is encoded with the model's tokenizer, and when ``tokenizer.prepend_bos``
    its BOS is prepended if the text does not already start with it. A 1-D sequence or
    array of integer ids is taken as it is; anything else (bytes, floats, bools, nesting,
    None) is a BadPromptError. ``room`` is the number of tokens that must still fit
    after the prompt within ``lm.max_len``.
    """
    tok = lm.tokenizer
    if isinstance(prompt, str):
        ids = tok.encode(prompt)
        if tok.prepend_bos and (not ids or ids[0] != tok.bos_id):
            ids = [tok.bos_id, *ids]
    else:
        ids = token_ids(prompt)
        bad = [i for i in ids if not 0 <= i < lm.vocab_size]
        if bad:
            raise BadPromptError(f"prompt token ids {bad[:5]} are outside the vocabulary of size {lm.vocab_size}")
    if not ids:
        raise BadPromptError("the prompt is empty: give at least one token id, or text for a model with a BOS token")
    if len(ids) + room > lm.max_len:
        raise BadPromptError(
            f"the prompt has {len(ids)} tokens; with {room} new tokens that exceeds the model's "
            f"context of {lm.max_len} tokens"
        )
    return np.asarray(ids, np.int32)
