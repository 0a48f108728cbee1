"""What every command shares: the app, consoles, the error wrapper, option types, progress and printing.

Any ``PathprobError`` becomes one line on stderr and exit status 2; ``--verbose``
shows the traceback instead. User text (prompts, regexes, paths) is never read as
rich markup: both consoles have markup off, and styling is applied with ``Text``.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

import pathprob as pp
from pathprob.errors import PathprobError
from pathprob.files import dumps, write_atomic

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="pathprob: a language model as a probability distribution over paths, measured.")
out = Console(markup=False, highlight=False)
err = Console(stderr=True, markup=False, highlight=False)
_verbose = {"on": False}


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", help="Show tracebacks on errors.")] = False):
    """pathprob: a language model as a probability distribution over paths, measured."""
    _verbose["on"] = verbose


def command(fn=None, *, name: str | None = None):
    """Register ``fn`` as a command whose PathprobErrors exit with status 2 and one line."""
    if fn is None:
        return functools.partial(command, name=name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PathprobError as exc:
            if _verbose["on"]:
                raise
            err.print(Text.assemble(("error:", "bold red"), " ", str(exc)), soft_wrap=True)
            raise typer.Exit(2) from None

    return app.command(name=name)(wrapper)


Spec = Annotated[str, typer.Argument(help="A run/checkpoint directory, or truth:LANGUAGE (e.g. truth:concepts).")]


JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Write the result as JSON to FILE ('-' = stdout).")]
Prompt = Annotated[str, typer.Option(help="Prompt text (BOS is added when missing).")]
MaxNew = Annotated[int, typer.Option("--max-new", min=1, help="Longest continuation, in tokens.")]
MinProb = Annotated[float, typer.Option("--min-prob", min=0.0, max=1.0, help="Do not expand prefixes below this.")]
MaxPaths = Annotated[Optional[int], typer.Option("--max-paths", min=1, help="Keep at most this many paths per depth.")]


def emit_json(target: Path | None, payload: dict) -> bool:
    """Write ``payload`` to ``target`` ('-' = stdout); True when written."""
    if target is None:
        return False
    text = dumps(payload, indent=2)
    if str(target) == "-":
        print(text)
    else:
        write_atomic(target, text + "\n")
        err.print(f"wrote {target}")
    return True


class Progress:
    """A transient rich progress bar on stderr when it is a terminal; otherwise nothing.

    Called as ``progress(done, info)``; the callbacks below adapt the engines' reports.
    """

    def __init__(self, label: str, total: int):
        self.label, self.total, self.bar = label, total, None

    def __enter__(self):
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
            )

            self.bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), console=err, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=self.total, info="")
        return self

    def update(self, done: int, info: str, total: int | None = None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total or self.total, info=info)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


class LevelProgress(Progress):
    """Progress over trie depths (``on_level`` of the exact engine)."""

    def __init__(self, total: int):
        super().__init__("depth", total)

    def __call__(self, depth: int, nodes: int, width: int) -> None:
        self.update(depth, f"{nodes:,} nodes, frontier {width:,}")


def print_paths(table: pp.PathTable, title: str, limit: int | None = None) -> None:
    out_table = Table("#", "path", "p", "log p", "cumulative", title=title, title_justify="left")
    cumulative = 0.0
    shown = table if limit is None else table.top(limit)
    for i, (text, lp) in enumerate(zip(shown.texts(with_eos=True), shown.logp), 1):
        cumulative += math.exp(lp)
        out_table.add_row(str(i), repr(text), f"{math.exp(lp):.6g}", f"{lp:.4f}", f"{cumulative:.6f}")
    out.print(out_table)
    out.print(f"listed mass {math.exp(table.log_covered):.9f}; certified remainder {table.remaining:.3e} "
              f"(log {table.log_remaining:.4f}); {table.stats.get('nodes', 0):,} prefixes expanded")


def print_estimate(name: str, est: pp.Estimate, unit: str = "") -> None:
    if est.exact:
        out.print(f"{name} = {est.value:.10g}{unit} (exact, {est.method})")
    else:
        kind = "proven bounds" if est.level is None else f"{100 * est.level:g}% interval"
        extra = f", n = {est.n:,}, ESS = {est.ess:.4g}" if est.n else ""
        out.print(f"{name} = {est.value:.6g}{unit} in [{est.lower:.6g}, {est.upper:.6g}] ({kind}, {est.method}{extra})")



Samples = Annotated[int, typer.Option("-n", min=1, help="Samples (Monte-Carlo methods; swor: distinct paths).")]
Seed = Annotated[int, typer.Option(min=0, help="Random seed (recorded in the result).")]


class ChunkProgress(Progress):
    """Progress over sample chunks with the running estimate (``on_chunk`` of the Monte-Carlo engine)."""

    def __init__(self, total: int):
        super().__init__("samples", total)

    def __call__(self, done: int, total: int, running: pp.Estimate) -> None:
        self.update(done, f"{running.value:.6g} [{running.lower:.4g}, {running.upper:.4g}]", total)


def mc_options(method: str, n: int, seed: int, progress) -> dict:
    return {} if method == "exact" else {"n": n, "key": seed, "on_chunk": progress}




def int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PathprobError(f"{option} must be comma-separated integers, got {text!r}") from None


