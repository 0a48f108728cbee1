"""Device-side batches of path states, in power-of-two shapes, for the exact engines.

A *pool* is the per-path part of a ``State`` with a power-of-two leading axis;
the shared part (the prompt cache) is stored once. Every jitted function here
takes the model as an argument and compiles once per (model config, shapes):
model steps run 64, 512 or 4096 rows (``step_rows``, at most the chunk) and pool
capacities are powers of two, so a run compiles a handful of programs however many
nodes it visits.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.models.base import LanguageModel, State, pad_prompts


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return 1 << (max(n, minimum) - 1).bit_length()


SMALLEST_STEP = 64  # rows of the smallest model step: below it a step costs about the same (dispatch, weights)


def step_rows(n: int, chunk: int) -> int:
    """Rows of the model step that advances ``n`` paths: 64, 512, 4096, ... (x8), at most ``chunk``.

    Few sizes, so a walk compiles (and, with the persistent cache, traces) few model steps:
    a level of 9 paths pads to 64 rows, which costs about what 16 would.
    """
    rows = SMALLEST_STEP
    while rows < n and rows < chunk:
        rows *= 8
    return min(rows, chunk)


@functools.partial(jax.jit, static_argnames=("capacity",))
def _start(lm: LanguageModel, prompts_RP: jax.Array, lengths_R: jax.Array, capacity: int) -> tuple[State, jax.Array]:
    state = lm.start(prompts_RP, lengths_R, capacity)
    return state, lm.next_logprobs(state)


def start(lm: LanguageModel, prompts: Sequence[np.ndarray], capacity: int, *,
          width: int | None = None) -> tuple[State, jax.Array]:
    """The root states of encoded ``prompts`` (one path per prompt, in order) and their next log-probs.

    Prompts are padded to a power-of-two length (or to ``width``) and their number to a
    power of two (copies of the first prompt fill the extra roots, which no caller reads),
    so calls with similar prompts reuse one compiled program. Returns the State of ``bucket(R)`` paths and
    float32[bucket(R), V].
    """
    prompts = list(prompts)
    padded = prompts + [prompts[0]] * (bucket(len(prompts)) - len(prompts))
    prompts_RP, lengths_R = pad_prompts(padded, lm.max_len, width)
    return _start(lm, jnp.asarray(prompts_RP), jnp.asarray(lengths_R), capacity)


@jax.jit
def gather(pool_paths, parent_c: jax.Array):
    """The per-path states of pool rows ``parent_c``: a cheap program per (pool capacity, c)."""
    return jax.tree.map(lambda x: x[parent_c], pool_paths)


@jax.jit
def advance(lm: LanguageModel, state_c: State, tokens_c: jax.Array) -> tuple[State, jax.Array]:
    """c paths extended by one token each: their states and next-token log-probs [c, V].

    The model's decoding step, the one expensive program of a walk, sees only the chunk
    (and the shared prompt caches), never a pool: it compiles once per chunk size c,
    however the frontier's size changes from level to level or from run to run.
    """
    child = lm.advance(state_c, tokens_c)
    return child, lm.next_logprobs(child)


@functools.partial(jax.jit, donate_argnums=(0,))
def write(pool_paths, chunk_paths, offset: jax.Array):
    """Write a chunk of per-path states into the pool at ``offset`` (in place: the pool is donated)."""
    return jax.tree.map(lambda p, c: jax.lax.dynamic_update_slice_in_dim(p, c, offset, axis=0), pool_paths, chunk_paths)


@functools.partial(jax.jit, static_argnums=1)
def _zeros(like_paths, capacity: int):
    """Zeros shaped like ``like_paths`` with a leading axis of ``capacity``: one program, not one op per leaf."""
    return jax.tree.map(lambda x: jnp.zeros((capacity, *x.shape[1:]), x.dtype), like_paths)


def empty_pool(like: State, capacity: int) -> State:
    """A pool of ``capacity`` paths shaped like ``like``'s per-path part (zeros)."""
    return like.replace(paths=_zeros(like.paths, capacity))


def grow(pool: State, capacity: int) -> State:
    """The pool with a larger capacity, existing paths kept in their slots."""
    bigger = empty_pool(pool, capacity)
    return bigger.replace(paths=write(bigger.paths, pool.paths, jnp.int32(0)))


def path_state_bytes(lm: LanguageModel, capacity: int) -> int:
    """Bytes of one path's per-path state (computed abstractly: nothing runs)."""
    return _path_state_bytes(jax.tree.structure(lm), tuple(_shape_dtype(x) for x in jax.tree.leaves(lm)), capacity)


def _shape_dtype(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


@functools.lru_cache(maxsize=64)
def _path_state_bytes(treedef, leaves: tuple, capacity: int) -> int:
    """Cached per model configuration: tracing ``start`` costs milliseconds."""
    lm = jax.tree.unflatten(treedef, leaves)
    ones = jnp.ones((1, 1), jnp.int32)
    state, _ = jax.eval_shape(lambda lm: _start(lm, ones, ones[0], capacity), lm)
    return int(sum(np.prod(x.shape[1:]) * x.dtype.itemsize for x in jax.tree.leaves(state.paths)))


def expand_children(lm: LanguageModel, pool: State, parent: np.ndarray, token: np.ndarray, chunk: int, *,
                    states: bool = True) -> tuple[State | None, np.ndarray]:
    """The children (parent[i], token[i]) of pool paths as a new pool, and their next log-probs float64[n, V].

    With ``states=False`` only the log-probabilities are computed and the pool is None: for
    the last level of a walk, whose children are never expanded.
    """
    n = parent.size
    c = step_rows(n, chunk)
    capacity = bucket(n, c)
    parent_n = np.zeros(capacity, np.int32)
    token_n = np.zeros(capacity, np.int32)
    parent_n[:n], token_n[:n] = parent, token
    new_paths = _zeros(pool.paths, capacity) if states else None
    pending = []
    # Dispatch every chunk before reading any result back: the device works while the host queues.
    for lo in range(0, n, c):
        size = step_rows(n - lo, c)  # the last chunk shrinks to the next step size
        parents = pool.replace(paths=gather(pool.paths, jnp.asarray(parent_n[lo : lo + size])))
        child, logprobs_cV = advance(lm, parents, jnp.asarray(token_n[lo : lo + size]))
        if states:
            new_paths = write(new_paths, child.paths, jnp.int32(lo))
        pending.append(logprobs_cV)
    logprobs = np.concatenate([np.asarray(x) for x in pending])[:n].astype(np.float64)  # [n, V]
    return (pool.replace(paths=new_paths) if states else None), logprobs
