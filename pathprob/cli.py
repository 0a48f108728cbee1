"""The ``pathprob`` command line: each command is one API call plus printing.

Any ``PathprobError`` becomes one line on stderr and exit status 2; ``--verbose``
shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

import pathprob as pp
from pathprob.errors import PathprobError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0] if __doc__ else None)
out = Console()
err = Console(stderr=True)
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
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return app.command(name=name)(wrapper)


Spec = Annotated[str, typer.Argument(help="A run/checkpoint directory, or truth:LANGUAGE (e.g. truth:concepts).")]


@command
def train(
    language: Annotated[str, typer.Option(help="concepts, arith or text:PATH")] = "concepts",
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory (checkpoints, metrics.jsonl).")] = Path("runs/concepts"),
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 3e-3,
    d_model: Annotated[int, typer.Option(min=1)] = 128,
    n_layers: Annotated[int, typer.Option(min=1)] = 2,
    n_heads: Annotated[int, typer.Option(min=1)] = 4,
    d_ff: Annotated[int, typer.Option(min=1)] = 512,
    positional: Annotated[str, typer.Option(help="learned or rope")] = "learned",
    save_every: Annotated[int, typer.Option(min=1)] = 500,
    eval_every: Annotated[int, typer.Option(min=1)] = 250,
    log_every: Annotated[int, typer.Option(min=1)] = 50,
    keep: Annotated[int, typer.Option(min=1, help="Checkpoints to keep.")] = 2,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress")] = None,
):
    """Train a Transformer on a language (resumes from OUT if it holds checkpoints)."""
    cfg = pp.TrainConfig(
        language=language, out=str(out_dir), steps=steps, batch_size=batch_size, learning_rate=learning_rate,
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff, positional=positional,
        save_every=save_every, eval_every=eval_every, log_every=log_every, keep=keep, seed=seed,
    )
    result = pp.train(cfg, progress=progress)
    truth = "" if result.truth_eval_loss is None else f", truth {result.truth_eval_loss:.4f}"
    out.print(f"step {result.step}: eval loss {result.eval_loss:.4f} nats/token{truth}; run in {result.out}")


@command
def info(spec: Spec, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False):
    """Describe a model: config, step, parameter count, eval loss."""
    facts = pp.describe_model(spec)
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    table = Table(show_header=False, box=None)
    for key, value in facts.items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    out.print(table)


@command
def score(
    spec: Spec,
    prompt: Annotated[str, typer.Option(help="Prompt text (BOS is added when missing).")],
    continuation: Annotated[list[str], typer.Option(help="Continuation text; repeat for several.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """log P(continuation | prompt) for each continuation."""
    lm = pp.open_model(spec)
    logps = pp.score(lm, prompt, continuation)
    if as_json:
        print(json.dumps([{"continuation": c, "logp": float(lp)} for c, lp in zip(continuation, logps)], indent=2))
        return
    table = Table("continuation", "log p (nats)", "p")
    for c, lp in zip(continuation, logps):
        table.add_row(repr(c), f"{lp:.6f}", f"{math.exp(lp):.6g}")
    out.print(table)


JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Write the result as JSON to FILE ('-' = stdout).")]
Prompt = Annotated[str, typer.Option(help="Prompt text (BOS is added when missing).")]
MaxNew = Annotated[int, typer.Option("--max-new", min=1, help="Longest continuation, in tokens.")]
MinProb = Annotated[float, typer.Option("--min-prob", min=0.0, max=1.0, help="Do not expand prefixes below this.")]
MaxPaths = Annotated[Optional[int], typer.Option("--max-paths", min=1, help="Keep at most this many paths per depth.")]


def _emit_json(target: Path | None, payload: dict) -> bool:
    """Write ``payload`` to ``target`` ('-' = stdout); True when written."""
    if target is None:
        return False
    text = json.dumps(payload, indent=2)
    if str(target) == "-":
        print(text)
    else:
        from pathprob.files import write_atomic

        write_atomic(target, text + "\n")
        err.print(f"wrote {target}")
    return True


class _Progress:
    """A transient rich progress bar on stderr when it is a terminal; otherwise nothing.

    Called as ``progress(done, info)``; the callbacks below adapt the engines' reports.
    """

    def __init__(self, label: str, total: int):
        self.label, self.total, self.bar = label, total, None

    def __enter__(self):
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

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


class _LevelProgress(_Progress):
    """Progress over trie depths (``on_level`` of the exact engine)."""

    def __init__(self, total: int):
        super().__init__("depth", total)

    def __call__(self, depth: int, nodes: int, width: int) -> None:
        self.update(depth, f"{nodes:,} nodes, frontier {width:,}")


def _print_paths(table: pp.PathTable, title: str, limit: int | None = None) -> None:
    out_table = Table("#", "path", "p", "log p", "cumulative", title=title, title_justify="left")
    cumulative = 0.0
    shown = table if limit is None else table.top(limit)
    for i, (text, lp) in enumerate(zip(shown.texts(with_eos=True), shown.logp), 1):
        cumulative += math.exp(lp)
        out_table.add_row(str(i), repr(text), f"{math.exp(lp):.6g}", f"{lp:.4f}", f"{cumulative:.6f}")
    out.print(out_table)
    out.print(f"listed mass {math.exp(table.log_covered):.9f}; certified remainder {table.remaining:.3e} "
              f"(log {table.log_remaining:.4f}); {table.stats.get('nodes', 0):,} prefixes expanded")


def _print_estimate(name: str, est: pp.Estimate, unit: str = "") -> None:
    if est.exact:
        out.print(f"{name} = {est.value:.10g}{unit} (exact, {est.method})")
    else:
        kind = "proven bounds" if est.level is None else f"{100 * est.level:g}% interval"
        extra = f", n = {est.n:,}, ESS = {est.ess:.4g}" if est.n else ""
        out.print(f"{name} = {est.value:.6g}{unit} in [{est.lower:.6g}, {est.upper:.6g}] ({kind}, {est.method}{extra})")


@command(name="enumerate")
def enumerate_(
    spec: Spec, prompt: Prompt, max_new: MaxNew, min_prob: MinProb = 0.0, max_paths: MaxPaths = None,
    show: Annotated[int, typer.Option(min=0, help="Rows to print.")] = 30, json_out: JsonOut = None,
):
    """List every path above --min-prob with its exact probability, and the certified remainder."""
    lm = pp.open_model(spec)
    with _LevelProgress(max_new) as progress:
        table = pp.enumerate_paths(lm, prompt, max_new, min_prob=min_prob, max_paths=max_paths, on_level=progress)
    if _emit_json(json_out, table.to_dict()) and str(json_out) == "-":
        return
    _print_paths(table, f"{len(table):,} paths after {prompt!r}", show)


@command
def topk(spec: Spec, prompt: Prompt, max_new: MaxNew,
         k: Annotated[int, typer.Option("-k", min=1, help="How many paths.")] = 10, json_out: JsonOut = None):
    """The exact k most probable paths (best-first search with a certificate)."""
    lm = pp.open_model(spec)
    table = pp.top_k(lm, prompt, k, max_new)
    if _emit_json(json_out, table.to_dict()) and str(json_out) == "-":
        return
    _print_paths(table, f"top {k} paths after {prompt!r}")
    out.print(f"certificate: best unexpanded prefix p = {math.exp(table.stats['log_best_unexpanded']):.6g} "
              f"<= p of path {len(table)}")


Samples = Annotated[int, typer.Option("-n", min=1, help="Samples (Monte-Carlo methods; swor: distinct paths).")]
Seed = Annotated[int, typer.Option(min=0, help="Random seed (recorded in the result).")]


class _ChunkProgress(_Progress):
    """Progress over sample chunks with the running estimate (``on_chunk`` of the Monte-Carlo engine)."""

    def __init__(self, total: int):
        super().__init__("samples", total)

    def __call__(self, done: int, total: int, running: pp.Estimate) -> None:
        self.update(done, f"{running.value:.6g} [{running.lower:.4g}, {running.upper:.4g}]", total)


def _mc_options(method: str, n: int, seed: int, progress) -> dict:
    return {} if method == "exact" else {"n": n, "key": seed, "on_chunk": progress}


@command
def mass(spec: Spec, prompt: Prompt, max_new: MaxNew,
         regex: Annotated[str, typer.Option(help="Full-match regular expression over the continuation text.")],
         method: Annotated[str, typer.Option(help="exact, mc, is, smc, swor or hybrid")] = "exact",
         n: Samples = 10_000, seed: Seed = 0,
         min_prob: MinProb = 0.0, max_paths: MaxPaths = None, json_out: JsonOut = None):
    """P(continuation matches REGEX | prompt): exact with proven bounds, or Monte Carlo with an interval."""
    lm = pp.open_model(spec)
    pathset = pp.Regex(regex)
    with _ChunkProgress(n) as progress:
        est = pp.mass(lm, prompt, pathset, max_new, method=method, min_prob=min_prob, max_paths=max_paths,
                      **_mc_options(method, n, seed, progress))
    if _emit_json(json_out, est.to_dict()) and str(json_out) == "-":
        return
    _print_estimate(f"P({regex!r})", est)


@command
def entropy(spec: Spec, prompt: Prompt, max_new: MaxNew,
            method: Annotated[str, typer.Option(help="exact, mc or swor")] = "exact",
            n: Samples = 10_000, seed: Seed = 0,
            estimator: Annotated[str, typer.Option(help="mc: chain (Rao-Blackwellised) or plain")] = "chain",
            min_prob: MinProb = 0.0, max_paths: MaxPaths = None, json_out: JsonOut = None):
    """Entropy of the path distribution (nats): exact with proven bounds, or Monte Carlo with an interval."""
    lm = pp.open_model(spec)
    with _ChunkProgress(n) as progress:
        options = _mc_options(method, n, seed, progress)
        if method == "mc":
            options["estimator"] = estimator
        est = pp.entropy(lm, prompt, max_new, method=method, min_prob=min_prob, max_paths=max_paths, **options)
    if _emit_json(json_out, est.to_dict()) and str(json_out) == "-":
        return
    _print_estimate("H", est, " nats")
    out.print(f"effective number of paths exp(H) = {math.exp(est.value):.4g}")


@command
def sample(spec: Spec, prompt: Prompt, max_new: MaxNew, n: Samples = 1000, seed: Seed = 0,
           temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature.")] = 1.0,
           top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, help="Sample among the k best tokens.")] = None,
           top_p: Annotated[Optional[float], typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling.")] = None,
           show: Annotated[int, typer.Option(min=0, help="Distinct paths to print.")] = 20, json_out: JsonOut = None):
    """Sample paths; print the most frequent with counts and model probabilities."""
    lm = pp.open_model(spec)
    samples = pp.sample(lm, prompt, n, max_new, key=seed, temperature=temperature, top_k=top_k, top_p=top_p)
    if _emit_json(json_out, samples.to_dict()) and str(json_out) == "-":
        return
    table = Table("#", "path", "count", "frequency", "p model", title=f"{n:,} samples after {prompt!r} (seed {seed})",
                  title_justify="left")
    counts = samples.counts()
    for i, (path, count, lp) in enumerate(counts[:show], 1):
        table.add_row(str(i), repr(lm.tokenizer.decode(list(path))), f"{count:,}", f"{count / n:.4f}",
                      f"{math.exp(lp):.4g}")
    out.print(table)
    out.print(f"{len(counts):,} distinct paths")


@command
def kl(spec: Spec, prompt: Prompt, max_new: MaxNew,
       prompt_b: Annotated[Optional[str], typer.Option("--prompt-b", help="Prompt of b (default: --prompt).")] = None,
       model_b: Annotated[Optional[str], typer.Option("--model-b", help="Model spec of b (default: SPEC).")] = None,
       method: Annotated[str, typer.Option(help="exact or mc")] = "exact",
       n: Samples = 10_000, seed: Seed = 0, json_out: JsonOut = None):
    """KL(a || b) between two path distributions (two prompts and/or two models), in nats."""
    lm_a = pp.open_model(spec)
    lm_b = lm_a if model_b is None else pp.open_model(model_b)
    with _ChunkProgress(n) as progress:
        est = pp.kl(lm_a, prompt, lm_b, prompt if prompt_b is None else prompt_b, max_new, method=method,
                    **_mc_options(method, n, seed, progress))
    if _emit_json(json_out, est.to_dict()) and str(json_out) == "-":
        return
    _print_estimate("KL(a || b)", est, " nats")


@command
def demo(
    checkpoints: Annotated[Optional[Path], typer.Option(help="Directory holding the shipped models.")] = None,
):
    """The main job on the embedded defaults: in-context narrowing, model vs truth."""
    from pathprob.demo import run_demo

    run_demo(out, checkpoints)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
