"""What every command shares: the app, consoles, error lines, option types, progress and printing.

Every error a user can cause is one line ``error: ...`` on stderr and exit status 2:
a ``PathprobError`` raised by a command, and a usage error found while parsing (a bad
option value, a missing or unknown option, an output path that cannot be written),
which typer would otherwise draw as a box; ``--verbose`` shows a command's traceback
instead. User text (prompts, regexes, paths) is never read as rich markup or emoji
codes: both consoles have markup and emoji off, and styling is applied with ``Text``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer._click.exceptions import NoArgsIsHelpError  # typer vendors click; the help it prints is no error
from typer.core import TyperGroup

import pathprob as pp
from pathprob.compile_cache import enable_compile_cache
from pathprob.errors import PathprobError
from pathprob.files import dumps, write_atomic

INTERRUPTED = 130  # the exit status of a job stopped by Ctrl-C (128 + SIGINT)

out = Console(markup=False, emoji=False, highlight=False)
err = Console(stderr=True, markup=False, emoji=False, highlight=False)
_verbose = {"on": False}


def one_line(message: str) -> str:
    """``message`` with line breaks and other control characters escaped, so it prints as one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def fail(message: str, status: int = 2) -> typer.Exit:
    """Print ``error: message`` as one line on stderr; the ``typer.Exit`` to raise."""
    err.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), soft_wrap=True)
    return typer.Exit(status)


def warn(message: str) -> None:
    """One visible line ``warning: message`` on stderr."""
    err.print(Text.assemble(("warning:", "bold yellow"), " ", one_line(message)), soft_wrap=True)


class _OneLineUsageErrors(TyperGroup):
    """Usage errors (bad option values, missing or unknown options or commands) as one ``error:`` line.

    Both parsing steps are covered: the group's own (``make_context``) and the
    command's, which runs inside the group's ``invoke``.
    """

    def make_context(self, *args, **kwargs):
        with _usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors():
            return super().invoke(ctx)


@contextlib.contextmanager
def _usage_errors():
    try:
        yield
    except NoArgsIsHelpError:
        raise
    except typer.TyperException as exc:
        raise fail(exc.format_message(), exc.exit_code) from None


app = typer.Typer(cls=_OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                  help="pathprob: a language model as a probability distribution over paths, measured.")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", help="Show tracebacks on errors.")] = False):
    """pathprob: a language model as a probability distribution over paths, measured."""
    _verbose["on"] = verbose
    enable_compile_cache()  # later calls read their programs back instead of compiling (PATHPROB_CACHE_DIR=off)


def command(fn=None, *, name: str | None = None):
    """Register ``fn`` as a command whose PathprobErrors exit with status 2 and one line (130 on Ctrl-C)."""
    if fn is None:
        return functools.partial(command, name=name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PathprobError as exc:
            if _verbose["on"]:
                raise
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(INTERRUPTED) from None

    return app.command(name=name)(wrapper)


# --- option values, checked while parsing: before any model is opened or any work is done ----------------


def finite(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """The parser of a float option: a finite number, within [low, high] where given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise typer.BadParameter(f"must be a finite number, got {text!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low:g}" if high is None else f"<= {high:g}" if low is None else f"in [{low:g}, {high:g}]"
            raise typer.BadParameter(f"must be {bounds}, got {value:g}")
        return value

    return parse


def _unwritable(target: Path, directory: Path) -> str | None:
    """Why ``target`` cannot be written in ``directory`` (existing, or to be created); None when it can.

    The nearest existing ancestor must be a directory in which a file can be created:
    an anonymous temporary file proves it (``os.access`` says yes to root even in /proc).
    """
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot write {target}: {existing} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"cannot write {target}: cannot create files in {existing} ({exc.strerror or exc})"
    return None


def _checked(path: Path, problem: Callable[[Path], str | None]) -> Path:
    """``path`` when ``problem(path)`` finds none; else the usage error that names it."""
    try:
        found = problem(path)
    except (OSError, ValueError) as exc:  # e.g. a name too long for the file system
        found = f"{path!r} is not a usable path ({exc})"
    if found is not None:
        raise typer.BadParameter(found)
    return path


def output_file(path: Path | None) -> Path | None:
    """Callback of a FILE option to write (``--json``, ``--plot``): not a directory, in a writable place."""
    if path is None or str(path) == "-":
        return path
    return _checked(path, lambda p: f"{p} is a directory; name a file" if p.is_dir() else _unwritable(p, p.parent))


def output_dir(path: Path | None) -> Path | None:
    """Callback of an ``--out DIR`` option: an existing directory, or one that can be created."""
    if path is None:
        return path
    return _checked(path, lambda p: f"{p} exists and is not a directory" if p.exists() and not p.is_dir()
                    else _unwritable(p, p))


def out_dir_option(help: str):
    """The ``--out DIR`` option of a command that writes a directory of results."""
    return typer.Option("--out", callback=output_dir, help=help)


def plot_option(help: str):
    """The ``--plot FILE`` option of a command that draws a figure."""
    return typer.Option("--plot", callback=output_file, help=help)


Spec = Annotated[str, typer.Argument(help="A run/checkpoint directory, truth:LANGUAGE (e.g. truth:concepts), or "
                                          "hf:DIR (a local Hugging Face model directory).")]


def _dtype(text: str) -> str:
    if text not in ("float32", "bfloat16"):
        raise typer.BadParameter(f"must be float32 or bfloat16, got {text!r}")
    return text


Dtype = Annotated[str | None, typer.Option("--dtype", parser=_dtype, help="Weight dtype of a Transformer: float32 or "
                                           "bfloat16 (default: as stored; float32 for hf:DIR). Log-probabilities "
                                           "stay float32.")]
JsonOut = Annotated[Path | None, typer.Option("--json", callback=output_file,
                                                 help="Write the result as JSON to FILE ('-' = stdout).")]
Prompt = Annotated[str, typer.Option(help="Prompt text (BOS is added when missing).")]
MaxNew = Annotated[int, typer.Option("--max-new", min=1, help="Longest continuation, in tokens.")]
MinProb = Annotated[float, typer.Option("--min-prob", parser=finite(0.0, 1.0),
                                        help="Do not expand prefixes below this.")]
MaxPaths = Annotated[int | None, typer.Option("--max-paths", min=1, help="Keep at most this many paths per depth.")]
Samples = Annotated[int, typer.Option("-n", min=1, help="Samples (Monte-Carlo methods; swor: distinct paths).")]
Seed = Annotated[int, typer.Option(min=0, help="Random seed (recorded in the result).")]
Devices = Annotated[int | None, typer.Option("--devices", min=1, help="Run on the first N devices (default: every "
                                             "device; with PATHPROB_COORDINATOR set, of every process). The result "
                                             "does not depend on N.")]


def int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PathprobError(f"{option} must be comma-separated integers, got {text!r}") from None


# --- progress ------------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A short human duration: 42s, 3m07s, 2h05m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(label: str, done: int, total: int, elapsed: float, info: str = "") -> str:
    """One plain progress line: done/total with the rate and time remaining (total 0: done only), and ``info``."""
    suffix = f", elapsed {duration(elapsed)}" + (f"; {info}" if info else "")
    if not total:
        return f"{label} {done:,}{suffix}"
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = f", ETA {duration((total - done) / rate)}" if rate > 0 else ""
    return f"{label} {done:,}/{total:,} ({100 * done / total:.1f}%), {rate:,.0f}/s{eta}{suffix}"


class Progress:
    """Progress on stderr: a transient rich bar on a terminal; otherwise a plain line every ``log_every_s``.

    ``update(done, info, total)`` reports; the subclasses adapt the engines' callbacks.
    ``eta`` says whether done/total grows evenly enough for a time-remaining estimate.
    """

    log_every_s = 5.0

    def __init__(self, label: str, total: int, *, eta: bool = True):
        self.label, self.total, self.eta, self.bar = label, total, eta, None
        self.started = self.logged = time.monotonic()

    def __enter__(self):
        if err.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = [TextColumn(self.label, markup=False), BarColumn(), MofNCompleteColumn()]
            columns += [TimeRemainingColumn()] if self.eta else []
            self.bar = Progress(*columns, TextColumn("{task.fields[info]}", markup=False), console=err, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=self.total, info="")
        return self

    def update(self, done: int, info: str, total: int | None = None) -> None:
        total = total or self.total
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total, info=info)
            return
        now = time.monotonic()
        if now - self.logged >= self.log_every_s:
            self.logged = now
            err.print(progress_line(self.label, done, total if self.eta else 0, now - self.started, info),
                      soft_wrap=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


class LevelProgress(Progress):
    """Progress over trie depths (``on_level`` of the exact engine); levels grow unevenly, so no ETA."""

    def __init__(self, total: int):
        super().__init__("depth", total, eta=False)

    def __call__(self, depth: int, nodes: int, width: int) -> None:
        self.update(depth, f"{nodes:,} nodes, frontier {width:,}")


class ChunkProgress(Progress):
    """Progress over sample chunks with the running estimate (``on_chunk`` of the Monte-Carlo engines)."""

    def __init__(self, total: int):
        super().__init__("samples", total)

    def __call__(self, done: int, total: int, running: pp.Estimate) -> None:
        self.update(done, f"running estimate {running.value:.6g} [{running.lower:.4g}, {running.upper:.4g}]", total)


def mc_options(method: str, n: int, seed: int, progress) -> dict:
    return {} if method == "exact" else {"n": n, "key": seed, "on_chunk": progress}


# --- printing ------------------------------------------------------------------------------------------


def emit_json(target: Path | None, payload: dict) -> bool:
    """Write ``payload`` as strict JSON to ``target`` ('-' = stdout); True when written."""
    if target is None:
        return False
    text = dumps(payload, indent=2)
    if str(target) == "-":
        print(text)
    else:
        write_atomic(target, text + "\n")
        err.print(f"wrote {target}", soft_wrap=True)
    return True


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


def describe_estimate(est: pp.Estimate, unit: str = "") -> str:
    """The value and what it is: exact, the midpoint of proven bounds, or a point estimate with its interval.

    "exact" is said only when ``est.exact`` holds; a value proven by a sample (a
    Monte-Carlo KL of inf: b cannot emit a path a can) is "proven", not "exact".
    """
    how = "enumeration" if est.method == "exact" else est.method
    sampled = (f", n = {est.n:,}" + ("" if math.isnan(est.ess) else f", ESS = {est.ess:.4g}")) if est.n else ""
    if est.exact:
        return f"{est.value:.10g}{unit} ({'exact' if est.method == 'exact' else 'proven'}, {how}{sampled})"
    bounds = f"[{est.lower:.6g}, {est.upper:.6g}]"
    if est.level is None:
        return f"{est.value:.6g}{unit}, the midpoint of proven bounds {bounds} ({how}{sampled})"
    return f"{est.value:.6g}{unit} in {bounds} ({est.kind}, {how}{sampled})"


def print_estimate(name: str, est: pp.Estimate, unit: str = "", *, requested: int | None = None) -> None:
    """``name = value ...`` on stdout, with "interrupted after N of M samples" when it was stopped early."""
    stopped = f"; interrupted after {est.n:,} of {requested:,} samples" if est.interrupted and requested else ""
    out.print(f"{name} = {describe_estimate(est, unit)}{stopped}", soft_wrap=True)


def finish_estimate(name: str, est: pp.Estimate, json_out: Path | None, *, requested: int = 0, unit: str = "",
                    note: str = "") -> None:
    """Print ``est`` and ``note`` (or write JSON); warn when it is unreliable; exit 130 when it was interrupted."""
    if not (emit_json(json_out, est.to_dict()) and str(json_out) == "-"):
        print_estimate(name, est, unit, requested=requested)
        if note:
            out.print(note, soft_wrap=True)
    elif est.interrupted:
        err.print(f"interrupted after {est.n:,} of {requested:,} samples", soft_wrap=True)
    if not est.reliable:
        warn(est.reason or "the interval is not to be trusted")
    if est.interrupted:
        raise typer.Exit(INTERRUPTED)
