"""A training run's directory, apart from its checkpoints: the writer's lock and the metrics log.

    RUN/.lock           an OS file lock (``fcntl.flock``) held by the one process writing the run;
                        the file holds that process's pid, for the message that refuses a second one
    RUN/metrics.jsonl   one strict-JSON record per line (``pathprob.files.dumps``), in step order

``read_metrics`` is the one reader of ``metrics.jsonl`` (resume, dynamics, reports). A crash or a
full disk can cut the last write short: a final line without its newline that does not parse is
skipped with a warning. Any other malformed line is an error naming the file and the line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from pathprob.errors import PathprobError, TrainingError
from pathprob.files import dumps, jsonable, write_atomic

METRICS = "metrics.jsonl"
LOCK = ".lock"


class RunLockedError(TrainingError):
    """Another process is writing the same run directory."""


class MetricsError(PathprobError):
    """``metrics.jsonl`` is missing or malformed (the message names the file and line)."""


@contextlib.contextmanager
def locked(run_dir: str | Path) -> Iterator[None]:
    """Hold ``RUN/.lock`` for the block; refuse at once (``RunLockedError``) if another process holds it.

    The OS releases the lock when its holder exits, however it exits (exceptions, SIGKILL), so a
    stale lock file never blocks a later run; the file itself is left in place.
    """
    path = Path(run_dir) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            raise RunLockedError(
                f"run directory {run_dir} is being written by another process (pid {holder}); "
                "wait for it to finish or train into another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``RUN/metrics.jsonl`` in file order (``MetricsError`` if there is no such file).

    Blank lines are ignored; a torn final line (no newline, not JSON) is skipped with a warning.
    Files written before strict JSON may hold ``NaN``/``Infinity``: they read as null/"inf", as the
    project writes them now.
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise MetricsError(f"no {METRICS} in {run_dir} (is it a training run directory?)")
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_constant=lambda name: jsonable(float(name)))
        except json.JSONDecodeError as err:
            if number == len(lines):  # the last line, with no newline after it: a write cut short
                warnings.warn(f"{path}: skipped a torn final line {line[:40]!r} (an interrupted write)",
                              stacklevel=2)
                continue
            raise MetricsError(f"{path} line {number} is not valid JSON ({err.msg}); repair or remove that line"
                               ) from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise MetricsError(f"{path} line {number} is not a metric record (a JSON object with an integer step)")
        records.append(record)
    return records


def append_metrics(run_dir: str | Path, record: dict) -> None:
    """Append one record to ``RUN/metrics.jsonl`` as one strict-JSON line."""
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(dumps(record) + "\n")


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Keep only the records at or before ``step`` (the rest belong to work lost since that checkpoint).

    The file is replaced atomically; a torn final line goes with the rest. Keeping a prefix (not
    filtering) leaves no duplicate or out-of-order step even if the file held some.
    """
    if not (Path(run_dir) / METRICS).is_file():
        return
    kept = []
    for record in read_metrics(run_dir):
        if record["step"] > step or (kept and record["step"] <= kept[-1]["step"]):
            break
        kept.append(record)
    write_atomic(Path(run_dir) / METRICS, "".join(dumps(record) + "\n" for record in kept))
