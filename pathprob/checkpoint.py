"""Checkpoints: the one module behind which orbax lives.

A run's checkpoint directory holds one sub-directory per saved step, with one orbax item per
PyTree the caller saves (a training run saves ``params`` and ``opt_state``) and two JSON items::

    DIR/<step>/params/     the model parameters: an orbax PyTree
    DIR/<step>/opt_state/  the optimizer state: an orbax PyTree
    DIR/<step>/meta/       a JSON dict (configs, tokenizer, seed, version, language, ...)
    DIR/<step>/digests/    per PyTree item, the sha256 of its leaves (``tree_digest``)

Items are read one by one, so opening a model for inference reads its parameters alone. Every
item read is checked against its digest: orbax decodes flipped bytes inside an array chunk
without complaint, and the digest turns them into a ``CheckpointError``.

All items are written by one orbax save into ``DIR/<step>.orbax-checkpoint-tmp`` and renamed
into place only when complete, so they appear together or not at all; a process killed mid-save
leaves only the tmp directory, which is never listed as a step (and is replaced when that step is
saved again).

Several devices and processes: a save of arrays sharded or replicated over a mesh writes each
array once (orbax coordinates the processes of a ``pp.distributed`` job, and every one of them
must call ``save``); a load restores onto the shardings of its abstract leaves, so a checkpoint
written on 8 devices loads onto 1, 3 or 16.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from orbax.checkpoint import v1 as ocp

from pathprob.errors import CheckpointError
from pathprob.files import dumps

PARAMS, OPT_STATE = "params", "opt_state"  # the items of a training checkpoint
_META, _DIGESTS = "meta", "digests"
_LEGACY_ITEM = "state"  # the single item (parameters and optimizer state together) of earlier checkpoints


class Checkpoints:
    """The checkpoints of one run, in ``directory``; use as a context manager.

    A checkpoint holds named PyTree items (``save(step, {"params": ..., "opt_state": ...}, meta)``),
    read back one by one (``load({"params": abstract}, step=...)``) and checked against their digests.
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

    def save(self, step: int, items: dict[str, Any], meta: dict) -> None:
        """Save ``items`` (name -> PyTree of arrays) and ``meta`` (a JSON-able dict) as ``step``.

        ``meta`` is stored as strict JSON (``pathprob.files.dumps``: NaN as null). Blocks until
        the checkpoint is complete on disk (so the caller may donate or overwrite the arrays right
        after), then deletes all but the newest ``keep`` steps.
        """
        step = int(step)
        if not isinstance(items, dict) or not items or not all(isinstance(name, str) for name in items):
            raise TypeError("checkpoint items must be a non-empty dict of name -> PyTree")
        if {_META, _DIGESTS} & set(items):
            raise ValueError(f"checkpoint item names {_META!r} and {_DIGESTS!r} are reserved")
        if not isinstance(meta, dict):
            raise TypeError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
        try:
            meta = json.loads(dumps(meta))
        except (TypeError, ValueError) as err:
            raise TypeError(f"checkpoint meta must be JSON-serialisable: {err}") from None
        orbax = self._open(create=True)
        if step in self.steps():
            raise CheckpointError(f"checkpoint step {step} already exists in {self.directory}")
        digests = {name: tree_digest(tree) for name, tree in items.items()}
        with _wrapped(f"could not save checkpoint step {step} in {self.directory}"):
            orbax.save_checkpointables(step, {**items, _META: meta, _DIGESTS: digests}, force=True)

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

    def load(self, abstract_items: dict[str, Any], *, step: int | None = None) -> dict[str, Any]:
        """The items named in ``abstract_items`` stored with ``step`` (default: the latest).

        ``abstract_items`` maps item names to PyTrees whose leaves have ``shape`` and ``dtype``:
        ``jax.ShapeDtypeStruct`` (e.g. from ``nnx.eval_shape`` + ``nnx.split``) or arrays. Only
        those items are read. Each result has its abstract tree's structure, with arrays on the
        leaves' sharding (default: the first device). Every stored leaf must match its abstract
        leaf exactly in shape and dtype (orbax would cast silently), and every item its stored
        digest; otherwise the one-line ``CheckpointError`` names the checkpoint (and the leaf).
        """
        step = self._resolve(step)
        where = f"checkpoint step {step} in {self.directory}"
        orbax = self._open(create=False)
        with _wrapped(f"{where} is corrupt or unreadable"):
            stored_items = orbax.checkpointables_metadata(step).metadata
        missing = sorted(set(abstract_items) - set(stored_items))
        if missing:
            legacy = ("; it was written before parameters were stored apart from the optimizer state: "
                      "re-save or retrain it") if _LEGACY_ITEM in stored_items else ""
            raise CheckpointError(
                f"{where} has no item {missing[0]!r} (it holds: {', '.join(sorted(stored_items))}){legacy}")
        requested = {}
        for name, tree in abstract_items.items():
            if stored_items[name] is None:  # orbax logs the reason and returns None
                raise CheckpointError(f"{where} is corrupt (the arrays of {name!r} are missing or unreadable)")
            requested[name] = _abstract_item(tree, name)
            _check_compatible(requested[name][0], _by_path(stored_items[name]), where, prefix=f"{name}/")
        abstract = {name: jax.tree.unflatten(treedef, list(wanted.values()))
                    for name, (wanted, treedef) in requested.items()}
        with _wrapped(f"{where} is corrupt or unreadable"):
            loaded = orbax.load_checkpointables(step, abstract | {_DIGESTS: None})
            # Rebuild the caller's tree types (orbax may hand back dicts/lists for custom nodes).
            restored = {name: _rebuild(loaded[name], wanted, treedef) for name, (wanted, treedef) in requested.items()}
            digests = dict(loaded[_DIGESTS])
        for name, tree in restored.items():
            if digests.get(name) != tree_digest(tree):
                raise CheckpointError(f"{where} is corrupt: the arrays of {name!r} do not match their stored "
                                      "sha256 digest; restore it from a copy or retrain")
        return restored

    def _open(self, *, create: bool) -> ocp.training.Checkpointer | None:
        """The orbax Checkpointer, opened on first use; ``None`` if reading a missing directory."""
        if self._closed:
            raise RuntimeError(f"Checkpoints({self.directory}) is closed")
        if self._orbax is None:
            if not create and not self.directory.is_dir():
                return None
            policies = ocp.training.preservation_policies
            registry = ocp.handlers.local_registry()
            # Without this, orbax would store the JSON dicts as PyTrees of scalars.
            for name in (_META, _DIGESTS):
                registry.add(ocp.handlers.JsonHandler, checkpointable_name=name)
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


def tree_digest(tree: Any) -> str:
    """sha256 (hex) of a PyTree of arrays: leaves in path-name order, each with its dtype and shape.

    Independent of the container types (an ``nnx.State`` and the dict it flattens like hash the
    same) and of where the arrays live; sensitive to every byte, dtype and shape.
    """
    digest = hashlib.sha256()
    for name, leaf in sorted(_by_path(tree).items()):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(json.dumps([name, array.dtype.name, list(array.shape)]).encode() + b"\n")
        digest.update(array.tobytes())
    return digest.hexdigest()


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


def _abstract_item(tree: Any, name: str) -> tuple[dict[str, jax.ShapeDtypeStruct], Any]:
    """The leaves of an abstract item by path name (with shardings), and its treedef."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    wanted = {_path_name(path): _abstract_leaf(leaf) for path, leaf in paths_leaves}
    if len(wanted) != len(paths_leaves):
        raise ValueError(f"abstract item {name!r} has two leaves with the same path name")
    return wanted, treedef


def _rebuild(tree: Any, wanted: dict[str, Any], treedef: Any) -> Any:
    """``tree``'s leaves, by path name, in the structure ``treedef`` whose leaves are named ``wanted``."""
    by_path = _by_path(tree)
    return jax.tree.unflatten(treedef, [by_path[name] for name in wanted])


def _abstract_leaf(leaf: Any) -> jax.ShapeDtypeStruct:
    """A ShapeDtypeStruct with a sharding (orbax warns without one).

    The leaf's own sharding when it has one (e.g. replicated over a training mesh: orbax then
    restores onto that mesh, whatever the device count at save), else this process's first
    device (under ``pp.distributed`` every process reads its own copy).
    """
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
        leaf = np.asarray(leaf)
    sharding = getattr(leaf, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding)


def _check_compatible(wanted: dict[str, jax.ShapeDtypeStruct], stored: dict[str, Any], where: str,
                      prefix: str = "") -> None:
    """Raise a CheckpointError naming the first leaf (as ``prefix + path``) whose presence, shape or dtype differs."""
    problems = [f"has no leaf {prefix + name!r}" for name in wanted if name not in stored]
    problems += [f"has leaf {prefix + name!r}, which the requested state lacks"
                 for name in stored if name not in wanted]
    for name, leaf in wanted.items():
        if name not in stored:
            continue
        have_shape, have_dtype = tuple(getattr(stored[name], "shape", ())), getattr(stored[name], "dtype", None)
        if have_dtype is None or np.dtype(have_dtype) != np.dtype(leaf.dtype):
            problems.append(f"stores leaf {prefix + name!r} as {have_dtype}, requested {leaf.dtype}")
        elif have_shape != tuple(leaf.shape):
            problems.append(f"stores leaf {prefix + name!r} with shape {have_shape}, requested {tuple(leaf.shape)}")
    if problems:
        more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise CheckpointError(f"{where} {problems[0]}{more}")
