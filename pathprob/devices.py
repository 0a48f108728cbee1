"""Where the engines run: a one-axis mesh ("paths") over the chosen devices, and the seam that places a model.

``placement(devices)`` turns the user's ``devices=`` (None: every device of the job, ``jax.devices()``;
an int N: the first N, taken evenly from every process; or a list of devices) into a ``Placement``,
or into None when one device is in play: the engines then take their one-device code path, with no
mesh and no sharding. ``using(devices)`` scopes the choice (as ``jax.set_mesh`` scopes a mesh) and
``current()`` is what the engines read; outside any ``using`` it is every device.

With a Placement of D devices an engine sends the model batches of D chunks, one chunk per device:
each chunk is the chunk the one-device run would send (same rows, same size, same key), so each
device computes bit for bit what the one device computes, and the host accumulates the same float64
sums in the same order. Batches are sharded along the mesh axis (``NamedSharding(mesh, P("paths"))``);
the model's parameters and ``State.shared`` (the prompt caches) are replicated (``place_model``: the one
seam a model-axis sharding would replace).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import weakref
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pathprob.errors import PathprobError

AXIS = "paths"
ROWS = P(AXIS)  # a leading axis sharded over the mesh
REPLICATED = P()


@dataclasses.dataclass(frozen=True, eq=False)
class Placement:
    """A mesh of D >= 2 devices with one axis, ``"paths"``, and how host data goes on and off it."""

    mesh: Mesh

    @property
    def size(self) -> int:
        """D: the devices of the mesh (of every process)."""
        return self.mesh.devices.size

    @functools.cached_property
    def rows(self) -> NamedSharding:
        return NamedSharding(self.mesh, ROWS)

    @functools.cached_property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, REPLICATED)

    @functools.cached_property
    def multiprocess(self) -> bool:
        return len({d.process_index for d in self.mesh.devices.flat}) > 1

    def replicate(self, tree):
        """``tree``'s arrays copied to every device of the mesh (every process passes the same values)."""
        if not self.multiprocess:
            return jax.device_put(tree, self.replicated)
        return jax.tree.map(lambda x: _global(np.asarray(x), self.replicated), tree)

    def shard_rows(self, host: np.ndarray) -> jax.Array:
        """A host array whose leading axis (a multiple of D) is split in D blocks, block k on device k."""
        if not self.multiprocess:
            return jax.device_put(host, self.rows)
        return _global(host, self.rows)

    def host(self, x) -> np.ndarray:
        """A (global) array as one numpy array on this host: in several processes, gathered from all."""
        if not self.multiprocess or x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    def place_model(self, lm):
        """The model with every array replicated on the mesh: the seam for sharding it along a model axis.

        Cached per model object, so an engine call copies the parameters once.
        """
        key = id(lm)
        hit = self._placed.get(key)
        if hit is not None and hit[0]() is lm:
            return hit[1]
        placed = self.replicate(lm)
        try:
            self._placed[key] = (weakref.ref(lm), placed)
        except TypeError:  # not weak-referenceable: place it each time
            return placed
        for stale in [k for k, (ref, _) in self._placed.items() if ref() is None] + list(self._placed)[:-4]:
            self._placed.pop(stale, None)  # a few models at a time stay placed
        return placed

    @functools.cached_property
    def _placed(self) -> dict:
        return {}


def _global(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


@functools.lru_cache(maxsize=16)
def _placement(devices: tuple) -> Placement:
    mesh = jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Auto,), devices=list(devices))
    return Placement(mesh)


def choose(devices=None) -> list:
    """The devices ``devices=`` names: None = all of ``jax.devices()``; N = the first N (N / P of each
    of the P processes); or an explicit list."""
    every = jax.devices()
    processes = jax.process_count()
    if devices is None:
        return list(every)
    if isinstance(devices, (bool, np.bool_)):
        raise PathprobError(f"devices must be a device count or a list of devices, got {devices!r}")
    if isinstance(devices, (int, np.integer)):
        n = int(devices)
        if not 1 <= n <= len(every):
            raise PathprobError(f"devices={n}: this job has {len(every)} device(s); choose 1 to {len(every)}")
        if n % processes:
            raise PathprobError(f"devices={n} must be a multiple of the {processes} processes (each takes N / "
                                f"{processes} of its own devices)")
        per = n // processes
        chosen = []
        for p in range(processes):
            chosen += [d for d in every if d.process_index == p][:per]
        return chosen
    if isinstance(devices, Sequence) and devices and all(isinstance(d, jax.Device) for d in devices):
        chosen = list(dict.fromkeys(devices))
        missing = {d.process_index for d in every} - {d.process_index for d in chosen}
        if missing:
            raise PathprobError(f"the devices must include one of every process; none of process {min(missing)}")
        return chosen
    raise PathprobError(f"devices must be a device count or a list of jax devices, got {devices!r}")


def placement(devices=None) -> Placement | None:
    """The Placement of ``devices=`` (see ``choose``), or None when they are one device."""
    if isinstance(devices, Placement):
        return devices
    chosen = choose(devices)
    if len(chosen) == 1:
        return None
    return _placement(tuple(chosen))


_CURRENT: contextvars.ContextVar = contextvars.ContextVar("pathprob_devices", default=None)


@contextlib.contextmanager
def using(devices=None) -> Iterator[Placement | None]:
    """Run the engines called inside on ``devices``; yields the Placement (or None for one device).

    None keeps the enclosing choice (every device outside any ``using``), so an engine called by
    another with ``devices=None`` runs where its caller does. With one device that is not the
    default one, computations go to it (``jax.default_device``).
    """
    scoped = _CURRENT.get()
    if devices is None and scoped is not None:
        yield scoped[0]
        return
    chosen = placement(devices)
    single = None if chosen is not None else choose(devices)[0]
    token = _CURRENT.set((chosen,))
    try:
        # The default device is part of jit's cache key: set it only when it changes, so the
        # one-device path keeps its compiled programs.
        moved = single is not None and single != jax.devices()[0]
        with jax.default_device(single) if moved else contextlib.nullcontext():
            yield chosen
    finally:
        _CURRENT.reset(token)


def current() -> Placement | None:
    """The Placement the engines run on: the innermost ``using``'s, else every device of the job."""
    scoped = _CURRENT.get()
    if scoped is not None:
        return scoped[0]
    return placement(None)


def size(where: Placement | None) -> int:
    """D of a Placement; 1 for None (the one-device path)."""
    return 1 if where is None else where.size
