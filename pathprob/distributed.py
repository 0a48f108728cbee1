"""Several processes (hosts) as one job: ``initialize`` wraps ``jax.distributed.initialize``.

After ``pp.distributed.initialize(...)`` in every process, ``jax.devices()`` lists the devices of
all processes and the engines run on one mesh over them (``pathprob.devices``): every process
runs the same Python program, each process's devices compute their share of every batch (chunk
``i`` of a level or of a stream on device ``i mod D``, keys folded by the global chunk index),
and the per-row float32 results are gathered to every host, where the float64 accumulation runs
in the same fixed order. So every process returns the same ``PathTable`` / ``Estimate``, equal to
a one-process run. Only process 0 writes files (``is_primary``; orbax coordinates checkpoint saves).

Addresses, counts and ids come from the arguments or from the environment:
``PATHPROB_COORDINATOR`` / ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
``PATHPROB_NUM_PROCESSES`` / ``JAX_NUM_PROCESSES`` and ``PATHPROB_PROCESS_ID`` / ``JAX_PROCESS_ID``;
with none of them (or ``PATHPROB_COORDINATOR=auto``) JAX's own cluster detection runs (SLURM, Open
MPI, TPU pods, ...). On the CPU the collectives are gloo's.
"""

from __future__ import annotations

import os
import socket
import time

import jax

from pathprob.errors import PathprobError

ENV_COORDINATOR = ("PATHPROB_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
ENV_NUM_PROCESSES = ("PATHPROB_NUM_PROCESSES", "JAX_NUM_PROCESSES")
ENV_PROCESS_ID = ("PATHPROB_PROCESS_ID", "JAX_PROCESS_ID")
DEFAULT_TIMEOUT_S = 300


def _env(names: tuple[str, ...]) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _env_int(names: tuple[str, ...]) -> int | None:
    value = _env(names)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise PathprobError(f"{names[0]} must be an integer, got {value!r}") from None


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise PathprobError(f"the coordinator address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _wait_for(address: str, timeout_s: float, process_id: int, num_processes: int) -> None:
    """Return once a TCP connection to ``address`` opens; a one-line PathprobError after ``timeout_s``.

    JAX's client aborts the whole process (a fatal log, no exception) when it cannot register
    with the coordinator, so a process other than 0 first checks that the coordinator listens.
    """
    host, port = _split_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise PathprobError(
                    f"could not reach the coordinator at {address} within {timeout_s:g} s (process {process_id} "
                    f"of {num_processes}: {err.strerror or err}); start process 0 first, or check the address "
                    f"({ENV_COORDINATOR[0]})") from None
            time.sleep(0.1)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
               local_device_ids: int | list[int] | None = None) -> None:
    """Join this process to a job of ``num_processes`` (``jax.distributed.initialize``); call it first.

    Must run before any JAX computation. Arguments default to the environment variables above.
    A process other than 0 waits at most ``timeout_s`` for the coordinator to listen, then fails with
    one line naming the address; process 0 waits as long for the others (JAX then stops it).
    A job of one process needs no call at all.
    """
    from jax._src import distributed as jax_distributed
    from jax._src import xla_bridge

    if jax_distributed.global_state.client is not None:
        raise PathprobError("pp.distributed.initialize was already called in this process")
    if xla_bridge.backends_are_initialized():
        raise PathprobError("pp.distributed.initialize must be called before any JAX computation in the process")
    address = coordinator_address or _env(ENV_COORDINATOR)
    if address == "auto":  # JAX's cluster detection (TPU pod slices, SLURM, Open MPI)
        address = None
    count = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    index = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if count is not None and count < 1:
        raise PathprobError(f"num_processes must be at least 1, got {count}")
    if count is not None and index is not None and not 0 <= index < count:
        raise PathprobError(f"process_id must be in [0, {count}), got {index}")
    if not timeout_s > 0:
        raise PathprobError(f"timeout_s must be positive, got {timeout_s!r}")
    if address is not None and index not in (None, 0):
        _wait_for(address, timeout_s, index, count or 0)
    # CPU collectives between processes (ignored by GPU and TPU clients); must be set before the backend starts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=index,
                                   local_device_ids=local_device_ids,
                                   initialization_timeout=max(1, round(timeout_s)))
    except (ValueError, RuntimeError) as err:
        detail = (str(err).strip().splitlines() or [""])[0]
        raise PathprobError(f"could not start the distributed job: {detail}") from err


def initialize_from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """``initialize()`` when the environment names a coordinator and this process has not joined yet.

    What the CLI calls first: ``PATHPROB_COORDINATOR=host:port PATHPROB_NUM_PROCESSES=2
    PATHPROB_PROCESS_ID=i pathprob mass ...`` makes that command one process of a job.
    """
    from jax._src import distributed as jax_distributed

    if _env(ENV_COORDINATOR) is None or jax_distributed.global_state.client is not None:
        return False
    initialize(timeout_s=timeout_s)
    return True


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes files (process 0; always True in a one-process job)."""
    return jax.process_index() == 0


def primary_only(path):
    """``path`` on process 0, None elsewhere: what a command writes, only process 0 writes."""
    return path if is_primary() else None
