"""Device-side batches of path states, in power-of-two shapes, for the exact engines.

A *pool* is the per-path part of a ``State`` with a power-of-two leading axis;
the shared part (the prompt cache) is stored once. Every jitted function here
takes the model as an argument and compiles once per (model config, shapes):
model steps run a power of two of at least 64 rows (``step_rows``, at most the chunk) and pool
capacities are powers of two, so a run compiles a handful of programs however many
nodes it visits. On a mesh of several devices the ``*_on`` twins at the end of the module
run D such chunks at once, one per device, in sharded pools.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pathprob.devices import AXIS
from pathprob.models.base import LanguageModel, State, pad_prompts


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return 1 << (max(n, minimum) - 1).bit_length()


SMALLEST_STEP = 64  # rows of the smallest model step: below it a step costs about the same (dispatch, weights)


def step_rows(n: int, chunk: int) -> int:
    """Rows of the model step that advances ``n`` paths: a power of two, at least 64, at most ``chunk``.

    Small levels share one step size, so a walk compiles (and, with the persistent cache,
    traces) few model steps: a level of 9 paths pads to 64 rows, which costs about what 16
    would. Above 64 the padding stays under 2x: for a large model a step's cost grows with
    its rows.
    """
    return min(bucket(n, SMALLEST_STEP), chunk)


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


# --- Pools over a mesh: one chunk per device --------------------------------------------------------
#
# With a Placement of D devices (``pathprob.devices``) a model step advances D chunks at once, one
# per device, each the very chunk (rows, size, padding) the one-device walk would advance, so each
# device computes bit for bit what one device computes. A *sharded pool* has per-path leaves with a
# leading axis of D x capacity rows, sharded over the mesh: block k is device k's own pool, holding
# the rows device k computed. A row is named by its *slot* ``local * D + k``, which stays valid when
# the pool grows. Parents are brought to the device of their child by ``gather_on``: the host plans,
# for each (owner, requester) pair, the distinct rows to send, and one ``all_to_all`` moves them.


def start_on(where, lm: LanguageModel, prompts: Sequence[np.ndarray], capacity: int, *,
             width: int | None = None) -> tuple[State, jax.Array]:
    """``start`` on every device of ``where`` (``lm`` placed there): the same roots, replicated."""
    prompts = list(prompts)
    padded = prompts + [prompts[0]] * (bucket(len(prompts)) - len(prompts))
    prompts_RP, lengths_R = pad_prompts(padded, lm.max_len, width)
    return _start(lm, where.replicate(prompts_RP), where.replicate(lengths_R), capacity)


@functools.lru_cache(maxsize=16)
def _tile_on(mesh):
    return jax.jit(jax.shard_map(lambda x: x, mesh=mesh, in_specs=P(), out_specs=P(AXIS), check_vma=False))


def root_pool_on(where, roots: State) -> tuple[State, np.ndarray]:
    """Replicated root states as a sharded pool (each block holds every root) and the roots' slots (device 0's)."""
    rows = jax.tree.leaves(roots.paths)[0].shape[0]
    return roots.replace(paths=_tile_on(where.mesh)(roots.paths)), np.arange(rows, dtype=np.int64) * where.size


@functools.lru_cache(maxsize=16)
def _zeros_on(mesh):
    def zeros(like_paths, capacity: int):
        return jax.tree.map(lambda x: jnp.zeros((mesh.size * capacity, *x.shape[1:]), x.dtype), like_paths)

    return jax.jit(zeros, static_argnums=1, out_shardings=NamedSharding(mesh, P(AXIS)))


def local_capacity(where, pool: State) -> int:
    """Rows of each device's block of a sharded pool."""
    return jax.tree.leaves(pool.paths)[0].shape[0] // where.size


def exchange_plan(slots_DC: np.ndarray, devices: int) -> tuple[np.ndarray, np.ndarray]:
    """What ``gather_on`` moves: (send int32[D, D, S], recv int32[D, c]) for requested slots int[D, c].

    ``send[k, j]``: the local rows device k sends to device j (the distinct rows j asks of k, padded;
    S a power of two, at least 8, so few programs compile). ``recv[j, i]``: where request i of
    device j lands in the [D x S] rows j receives (S from each owner, in owner order).
    """
    D, c = slots_DC.shape
    owner, local = slots_DC % devices, slots_DC // devices
    span = int(local.max()) + 1
    code = (np.repeat(np.arange(D), c) * D + owner.ravel()) * span + local.ravel()
    unique, inverse = np.unique(code, return_inverse=True)
    pair, row = unique // span, unique % span  # pair = requester * D + owner, sorted
    position = np.arange(unique.size) - np.searchsorted(pair, pair, side="left")
    S = bucket(int(position.max()) + 1, 8)
    send = np.zeros((D, D, S), np.int32)
    send[pair % D, pair // D, position] = row
    recv = ((pair % D) * S + position)[inverse.ravel()].reshape(D, c).astype(np.int32)
    return send, recv


@functools.lru_cache(maxsize=16)
def _exchange_on(mesh):
    def body(pool_paths, send_1DS, recv_1c):
        def one(x):
            sent = x[send_1DS[0]]  # [D, S, ...]: the rows each device asked of this one
            wire = sent.astype(jnp.uint8) if sent.dtype == jnp.bool_ else sent
            got = jax.lax.all_to_all(wire, AXIS, 0, 0, tiled=True)  # [D, S, ...]: block j came from device j
            return got.reshape(-1, *x.shape[1:])[recv_1c[0]].astype(x.dtype)

        return jax.tree.map(one, pool_paths)

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P(AXIS)), out_specs=P(AXIS)))


def gather_on(where, pool_paths, slots_DC: np.ndarray):
    """The per-path states of slots int[D, c] of a sharded pool, as a batch of D x c rows (row block k on device k)."""
    send, recv = exchange_plan(slots_DC, where.size)
    return _exchange_on(where.mesh)(pool_paths, where.shard_rows(send), where.shard_rows(recv))


@functools.lru_cache(maxsize=16)
def _advance_on(mesh):
    def body(lm, shared, paths, tokens_c):
        child = lm.advance(State(shared=shared, paths=paths), tokens_c)
        return child.paths, lm.next_logprobs(child)

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P(AXIS), P(AXIS)),
                                 out_specs=(P(AXIS), P(AXIS)), check_vma=False))


def advance_on(where, lm: LanguageModel, shared, batch_paths, tokens_DC: np.ndarray):
    """``advance`` of a D x c batch, each device its own chunk of c: (child per-path states, log-probs [D x c, V])."""
    return _advance_on(where.mesh)(lm, shared, batch_paths, where.shard_rows(tokens_DC.reshape(-1)))


@functools.lru_cache(maxsize=16)
def _write_on(mesh):
    def body(pool_paths, chunk_paths, offset):
        return jax.tree.map(lambda p, c: jax.lax.dynamic_update_slice_in_dim(p, c, offset, axis=0),
                            pool_paths, chunk_paths)

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P()), out_specs=P(AXIS)),
                   donate_argnums=(0,))


def write_on(where, pool_paths, chunk_paths, offset: int):
    """Write each device's block of a sharded batch into its block of the pool at local row ``offset`` (donated)."""
    return _write_on(where.mesh)(pool_paths, chunk_paths, np.int32(offset))


def grow_on(where, pool: State, capacity: int) -> State:
    """The sharded pool with ``capacity`` local rows per device; slots keep naming the same rows."""
    bigger = _zeros_on(where.mesh)(pool.paths, capacity)
    return pool.replace(paths=write_on(where, bigger, pool.paths, 0))


def super_steps(n: int, chunk: int, devices: int) -> list[list[tuple[int, int]]]:
    """The one-device walk's chunks of ``n`` rows, ``(lo, size)``, grouped into steps of up to ``devices`` equal sizes."""
    c = step_rows(n, chunk)
    chunks = [(lo, step_rows(n - lo, c)) for lo in range(0, n, c)]
    steps: list[list[tuple[int, int]]] = []
    for lo, size in chunks:
        if steps and len(steps[-1]) < devices and steps[-1][0][1] == size:
            steps[-1].append((lo, size))
        else:
            steps.append([(lo, size)])
    return steps


def expand_children_on(where, lm: LanguageModel, pool: State, slots: np.ndarray, parent: np.ndarray,
                       token: np.ndarray, chunk: int, *, states: bool = True
                       ) -> tuple[State | None, np.ndarray | None, np.ndarray]:
    """``expand_children`` on a mesh: the children as a sharded pool, their slots, and log-probs float64[n, V].

    ``lm`` is placed (``Placement.place_model``); ``pool`` is sharded, ``slots`` int[N] names the
    current level's rows in it. Chunk i of the one-device walk runs on device i mod D (padded as
    there: with the level's row 0 and token 0), so the log-probabilities are bit for bit the same.
    """
    D, n = where.size, parent.size
    steps = super_steps(n, chunk, D)
    capacity = bucket(sum(group[0][1] for group in steps))
    parent_slots, pad_slot = slots[parent], slots[0]
    child_slots = np.empty(n, np.int64)
    new_paths = _zeros_on(where.mesh)(pool.paths, capacity) if states else None
    pending, base = [], 0
    for group in steps:
        size = group[0][1]
        wanted = np.full((D, size), pad_slot, np.int64)
        tokens = np.zeros((D, size), np.int32)
        for k, (lo, _) in enumerate(group):
            m = min(size, n - lo)
            wanted[k, :m], tokens[k, :m] = parent_slots[lo : lo + m], token[lo : lo + m]
            child_slots[lo : lo + m] = (base + np.arange(m)) * D + k
        child, logprobs = advance_on(where, lm, pool.shared, gather_on(where, pool.paths, wanted), tokens)
        if states:
            new_paths = write_on(where, new_paths, child, base)
        pending.append((group, size, logprobs))
        base += size
    out = np.empty((n, lm.vocab_size), np.float64)
    for group, size, logprobs in pending:  # every step was dispatched before any is read
        rows = where.host(logprobs).reshape(D, size, -1)
        for k, (lo, _) in enumerate(group):
            m = min(size, n - lo)
            out[lo : lo + m] = rows[k, :m]
    if not states:
        return None, None, out
    return pool.replace(paths=new_paths), child_slots, out
