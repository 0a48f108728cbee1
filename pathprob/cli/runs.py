"""Runs and pages: train, dynamics, report, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

import pathprob as pp
from pathprob.cli.common import Devices, JsonOut, Progress, command, emit_json, err, finite, out, out_dir_option


@command
def train(
    language: Annotated[str, typer.Option(help="concepts, arith or text:PATH")] = "concepts",
    out_dir: Annotated[Path, out_dir_option("Run directory (checkpoints, metrics.jsonl).")] = Path("runs/concepts"),
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    learning_rate: Annotated[float, typer.Option(parser=finite(0.0))] = 3e-3,
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
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
    probe_every: Annotated[int, typer.Option(min=0, help="Probe the path distribution every N steps (0: off).")] = 0,
    probe_prompt: Annotated[list[str] | None, typer.Option(help="Probe prompt; repeat (default: the language's).")] = None,
    probe_set: Annotated[list[str] | None, typer.Option(help="Probed path set: a set name or regex; repeat.")] = None,
    probe_max_new: Annotated[int, typer.Option(min=0, help="Probe path length (0: one example).")] = 0,
    probe_min_prob: Annotated[float, typer.Option(parser=finite(0.0, 1.0), help="Probe enumeration pruning.")] = 1e-4,
    devices: Devices = None,
):
    """Train a Transformer on a language (resumes from OUT if it holds checkpoints)."""
    cfg = pp.TrainConfig(
        language=language, out=str(out_dir), steps=steps, batch_size=batch_size, learning_rate=learning_rate,
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff, positional=positional,
        save_every=save_every, eval_every=eval_every, log_every=log_every, keep=keep, seed=seed,
        probe_every=probe_every, probe_prompts=tuple(probe_prompt or ()),
        probe_sets=None if probe_set is None else tuple(probe_set), probe_max_new=probe_max_new,
        probe_min_prob=probe_min_prob,
    )
    result = pp.train(cfg, progress=progress, devices=devices)
    truth = "" if result.truth_eval_loss is None else f", truth {result.truth_eval_loss:.4f}"
    out.print(f"step {result.step}: eval loss {result.eval_loss:.4f} nats/token{truth}; run in {result.out}")



@command
def report(
    target: Annotated[str, typer.Argument(help="A run directory (adds training), a checkpoint dir, or truth:LANGUAGE.")],
    out_dir: Annotated[Path, out_dir_option("Directory for report.html, its figures and their data.")],
    fast: Annotated[bool, typer.Option("--fast", help="Smaller sizes (for tests and a quick look).")] = False,
    json_out: JsonOut = None,
):
    """Write a self-contained HTML report (top paths, trees, coverage, estimator convergence) and print its path."""
    from pathprob.report import build_report

    page = build_report(target, out_dir, fast=fast)
    if emit_json(json_out, {"report": str(page)}) and str(json_out) == "-":
        return
    print(page)



@command
def dynamics(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory (metrics.jsonl, checkpoints/).")],
    out_dir: Annotated[Path, out_dir_option("Where to write dynamics.png/.json (default: the current directory).")] = Path("."),
    from_checkpoints: Annotated[bool, typer.Option("--from-checkpoints", help="Recompute the probes from the kept checkpoints.")] = False,
    json_out: JsonOut = None,
):
    """Training dynamics of the path distribution: set mass, entropy vs truth, KL, tracked paths over steps."""
    from pathprob.analysis.dynamics import summary_rows, training_dynamics
    from pathprob.plots.training import plot_dynamics

    with Progress("checkpoints", 0) as progress:
        result = training_dynamics(run_dir, from_checkpoints=from_checkpoints,
                                   on_step=lambda step: progress.update(0, f"step {step}"))
    png = plot_dynamics(result.to_dict(), out_dir / "dynamics.png")
    if emit_json(json_out, result.to_dict()) and str(json_out) == "-":
        return
    table = Table("prompt", "H first", "H last", "H truth", "KL first", "KL last", "set mass last",
                  title=f"{len(result.records)} probes of {run_dir} ({result.source}), steps {result.steps[0]}-{result.steps[-1]}",
                  title_justify="left")
    for row in summary_rows(result):
        masses = ", ".join(f"{k} [{v[0]:.4g}, {v[1]:.4g}]" for k, v in row["mass_last"].items() if v is not None)
        table.add_row(repr(row["prompt"]), f"{row['entropy_first']:.4f}", f"{row['entropy_last']:.4f}",
                      "" if row["entropy_truth"] is None else f"{row['entropy_truth']:.4f}",
                      f"{row['kl_first']:.4g}", f"{row['kl_last']:.4g}", masses)
    out.print(table)
    out.print(f"wrote {png} and {png.with_suffix('.json')}")



@command
def demo(
    out_dir: Annotated[Path, out_dir_option("Directory for report.html, its figures and data.")] = Path("pathprob-demo"),
    checkpoints: Annotated[Path | None, typer.Option(help="Directory holding the shipped models.")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="Small sizes: the same steps in seconds (for tests).")] = False,
    train: Annotated[bool, typer.Option("--train", help="Retrain both models from scratch into OUT/runs first.")] = False,
    json_out: JsonOut = None,
):
    """The main job on the embedded defaults: narrowing, exact vs Monte Carlo, arith answers, training dynamics."""
    from pathprob.demo import run_demo

    summary = run_demo(err if json_out is not None and str(json_out) == "-" else out, checkpoints, out_dir=out_dir,
                       fast=fast, train=train)
    emit_json(json_out, summary)
