"""What a training run shows while it runs: throughput between metric records, and progress on stderr."""

from __future__ import annotations

import sys
import time

import numpy as np


class Meter:
    """Training tokens per second between metric records, and the wall time since the loop began."""

    def __init__(self):
        self.tokens = 0
        self.wall0 = self.t0 = time.perf_counter()

    def count(self, tokens_BT: np.ndarray) -> None:
        self.tokens += int((tokens_BT[:, 1:] >= 0).sum())

    def take(self, tokens: int) -> dict:
        """Throughput of the first ``tokens`` counted since the last record; the rest start the next interval."""
        now = time.perf_counter()
        rate = tokens / max(now - self.t0, 1e-9)
        self.t0, self.tokens = now, self.tokens - tokens
        return {"tokens_per_s": rate, "wall_s": now - self.wall0}

    def restart(self) -> None:
        """Start the next interval now: the time since the last record was not spent training."""
        self.t0 = time.perf_counter()


class Progress:
    """Training progress on stderr: a rich bar (``show`` True, or None on a terminal), plain lines
    (``show`` None elsewhere: one per metric record, at most one every ``interval_s``, and the last
    step's), or nothing (False)."""

    interval_s = 5.0

    def __init__(self, show: bool | None, start: int, last: int, total: int):
        self.mode = ("bar" if sys.stderr.isatty() else "lines") if show is None else ("bar" if show else None)
        self.start, self.last, self.total = start, last, total
        self.t0 = time.perf_counter()
        self.printed = -np.inf

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"))
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def advance(self, step: int) -> None:
        if self.mode == "bar":
            self.bar.update(self.task, completed=step)

    def record(self, record: dict) -> None:
        """Show a metric record: the bar's eval loss, or a plain line."""
        eval_loss = "" if record["eval_loss"] is None else f"eval loss {record['eval_loss']:.4f}"
        if self.mode == "bar":
            self.bar.update(self.task, info=eval_loss)
            return
        now, step = time.perf_counter(), record["step"]
        if self.mode != "lines" or (now - self.printed < self.interval_s and step != self.last):
            return
        self.printed = now
        eta = (self.total - step) * (now - self.t0) / max(step - self.start, 1)
        parts = [f"train step {step}/{self.total}", f"loss {record['loss']:.4f}", eval_loss,
                 f"{record['tokens_per_s']:,.0f} tokens/s", f"ETA {_clock(eta)}"]
        print(", ".join(p for p in parts if p), file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> bool:
        if self.mode == "bar":
            self.bar.__exit__(*exc)
        return False


def _clock(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour)."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
