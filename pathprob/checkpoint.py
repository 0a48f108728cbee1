"""Checkpoints: the one module behind which orbax lives.

A run's checkpoint directory holds one sub-directory per saved step::

    DIR/<step>/state/   the arrays (model parameters, optimizer state): an orbax PyTree
    DIR/<step>/meta/    a JSON dict (configs, tokenizer, seed, version, language, ...)

Both are written by one orbax save into ``DIR/<step>.orbax-checkpoint-tmp`` and renamed into
place only when complete, so the arrays and their metadata appear together or not at all; a
process killed mid-save leaves only the tmp directory, which is never listed as a step (and is
replaced when that step is saved again).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from orbax.checkpoint import v1 as ocp

from pathprob.errors import CheckpointError

_STATE = "state"
_META = "meta"


class Checkpoints:
    """The checkpoints of one run, in ``directory``; use as a context manager.

    ``keep`` is how many of the most recent steps survive a save (``None``: all). Every ``save``
    writes a checkpoint: deciding *when* is the trainer's business. Reading from a directory that
    does not exist (yet) lists no steps and never creates it; the first ``save`` does.
    Leaving the ``with`` block closes orbax, so nothing it started is lost at exit.
    """

    def __init__(self, directory: str | Path, *, keep: int | None = None):
        if keep is not None and keep < 1:
            raise CheckpointError(f"keep must be at least 1 (or None for all), got {keep}")
        # orbax (tensorstore's OCDBT driver) needs an absolute path.
        self.directory = Path(directory).expanduser().absolute()
        self.keep = keep
        self._orbax: ocp.training.Checkpointer | None = None
        self._closed = False

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Wait for anything orbax still has in flight, then release it."""
        self._closed = True
        orbax, self._orbax = self._orbax, None
        if orbax is not None:
            with _wrapped(f"could not finish writing checkpoints in {self.directory}"):
                orbax.close()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save ``state`` (a PyTree of arrays) and ``meta`` (a JSON-able dict) as ``step``.

        Blocks until the checkpoint is complete on disk (so the caller may donate or overwrite
        the arrays right after), then deletes all but the newest ``keep`` steps.
        """
        step = int(step)
        if not isinstance(meta, dict):
            raise TypeError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as err:
            raise TypeError(f"checkpoint meta must be JSON-serialisable: {err}") from None
        orbax = self._open(create=True)
        if step in self.steps():
            raise CheckpointError(f"checkpoint step {step} already exists in {self.directory}")
        with _wrapped(f"could not save checkpoint step {step} in {self.directory}"):
            orbax.save_checkpointables(step, {_STATE: state, _META: meta}, force=True)

    def steps(self) -> list[int]:
        """The complete, stored steps in increasing order (unfinished saves are not steps)."""
        orbax = self._open(create=False)
        return [] if orbax is None else [int(c.step) for c in orbax.checkpoints]

    def latest_step(self) -> int | None:
        """The newest complete step, or ``None`` if there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def load_meta(self, *, step: int | None = None) -> dict:
        """The metadata dict stored with ``step`` (default: the latest step); no arrays are read."""
        step = self._resolve(step)
        with _wrapped(f"checkpoint step {step} in {self.directory} is corrupt or unreadable"):
            meta = self._open(create=False).load_checkpointables(step, {_META: None})[_META]
        if not isinstance(meta, dict):
            raise CheckpointError(f"checkpoint step {step} in {self.directory} has corrupt metadata (not a dict)")
        return meta

    def load(self, abstract_state: Any, *, step: int | None = None) -> Any:
        """The state stored with ``step`` (default: the latest), shaped like ``abstract_state``.

        ``abstract_state`` is a PyTree whose leaves have ``shape`` and ``dtype``:
        ``jax.ShapeDtypeStruct`` (e.g. from ``nnx.eval_shape`` + ``nnx.split``) or arrays. The
        result has the same tree structure, with arrays on the leaves' sharding (default: the
        first device). Every stored leaf must match its abstract leaf exactly in shape and dtype
        (orbax would cast silently); otherwise the ``CheckpointError`` names the leaf.
        """
        step = self._resolve(step)
        where = f"checkpoint step {step} in {self.directory}"
        orbax = self._open(create=False)
        with _wrapped(f"{where} is corrupt or unreadable"):
            stored_tree = orbax.metadata(step).metadata
        if stored_tree is None:  # orbax logs the reason and returns None
            raise CheckpointError(f"{where} is corrupt (its arrays are missing or unreadable)")
        stored = _by_path(stored_tree)
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
        wanted = {_path_name(path): _abstract_leaf(leaf) for path, leaf in paths_leaves}
        if len(wanted) != len(paths_leaves):
            raise ValueError("abstract_state has two leaves with the same path name")
        _check_compatible(wanted, stored, where)
        abstract = jax.tree.unflatten(treedef, list(wanted.values()))
        with _wrapped(f"{where} is corrupt or unreadable"):
            restored = orbax.load(step, abstract)
        # Rebuild the caller's tree type (orbax may hand back dicts/lists for custom nodes).
        restored_by_path = _by_path(restored)
        with _wrapped(f"{where} is corrupt or unreadable"):
            return jax.tree.unflatten(treedef, [restored_by_path[name] for name in wanted])

    def _open(self, *, create: bool) -> ocp.training.Checkpointer | None:
        """The orbax Checkpointer, opened on first use; ``None`` if reading a missing directory."""
        if self._closed:
            raise RuntimeError(f"Checkpoints({self.directory}) is closed")
        if self._orbax is None:
            if not create and not self.directory.is_dir():
                return None
            policies = ocp.training.preservation_policies
            registry = ocp.handlers.local_registry()
            # Without this, orbax would store the meta dict as a PyTree of scalars.
            registry.add(ocp.handlers.JsonHandler, checkpointable_name=_META)
            context = ocp.Context()
            context.checkpointables.registry = registry
            with _wrapped(f"cannot open checkpoint directory {self.directory}"):
                self._orbax = ocp.training.Checkpointer(
                    self.directory,
                    context=context,
                    preservation_policy=policies.PreserveAll() if self.keep is None else policies.LatestN(self.keep),
                )
        return self._orbax

    def _resolve(self, step: int | None) -> int:
        """``step`` if it is stored (default: the latest), else a CheckpointError naming the directory."""
        if not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory at {self.directory}")
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoints in {self.directory}")
        if step is None:
            return steps[-1]
        if int(step) not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (stored: {', '.join(map(str, steps))})"
            )
        return int(step)


def read_meta(directory: str | Path, step: int | None = None) -> dict:
    """The metadata dict stored with ``step`` (default: latest) in ``directory``, without loading arrays."""
    with Checkpoints(directory) as checkpoints:
        return checkpoints.load_meta(step=step)


@contextlib.contextmanager
def _wrapped(message: str) -> Iterator[None]:
    """Turn any exception from orbax into a one-line CheckpointError starting with ``message``."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:
        detail = (str(err).strip().strip('"').splitlines() or [""])[0]
        if len(detail) > 160:
            detail = detail[:160] + "..."
        raise CheckpointError(f"{message} ({type(err).__name__}: {detail})") from err


def _path_name(path: tuple) -> str:
    """A key path as orbax names it on disk: dict keys, attribute names and indices, joined by '/'."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _by_path(tree: Any) -> dict[str, Any]:
    return {_path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _abstract_leaf(leaf: Any) -> jax.ShapeDtypeStruct:
    """A ShapeDtypeStruct with a sharding (orbax warns without one)."""
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
        leaf = np.asarray(leaf)
    sharding = getattr(leaf, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding)


def _check_compatible(wanted: dict[str, jax.ShapeDtypeStruct], stored: dict[str, Any], where: str) -> None:
    """Raise a CheckpointError naming the first leaf whose presence, shape or dtype differs."""
    problems = [f"has no leaf {name!r}" for name in wanted if name not in stored]
    problems += [f"has leaf {name!r}, which the requested state lacks" for name in stored if name not in wanted]
    for name, leaf in wanted.items():
        if name not in stored:
            continue
        have_shape, have_dtype = tuple(getattr(stored[name], "shape", ())), getattr(stored[name], "dtype", None)
        if have_dtype is None or np.dtype(have_dtype) != np.dtype(leaf.dtype):
            problems.append(f"stores leaf {name!r} as {have_dtype}, requested {leaf.dtype}")
        elif have_shape != tuple(leaf.shape):
            problems.append(f"stores leaf {name!r} with shape {have_shape}, requested {tuple(leaf.shape)}")
    if problems:
        more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise CheckpointError(f"{where} {problems[0]}{more}")
