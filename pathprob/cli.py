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
from pathprob.analysis.compare import format_estimate
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
    probe_every: Annotated[int, typer.Option(min=0, help="Probe the path distribution every N steps (0: off).")] = 0,
    probe_prompt: Annotated[Optional[list[str]], typer.Option(help="Probe prompt; repeat (default: the language's).")] = None,
    probe_set: Annotated[Optional[list[str]], typer.Option(help="Probed path set: a set name or regex; repeat.")] = None,
    probe_max_new: Annotated[int, typer.Option(min=0, help="Probe path length (0: one example).")] = 0,
    probe_min_prob: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probe enumeration pruning.")] = 1e-4,
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
def report(
    target: Annotated[str, typer.Argument(help="A run directory (adds training), a checkpoint dir, or truth:LANGUAGE.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for report.html, its figures and their data.")],
    fast: Annotated[bool, typer.Option("--fast", help="Smaller sizes (for tests and a quick look).")] = False,
    json_out: JsonOut = None,
):
    """Write a self-contained HTML report (top paths, trees, coverage, estimator convergence) and print its path."""
    from pathprob.report import build_report

    page = build_report(target, out_dir, fast=fast)
    if _emit_json(json_out, {"report": str(page)}) and str(json_out) == "-":
        return
    print(page)


@command
def walk(spec: Spec, prompt: Prompt,
         continuation: Annotated[Optional[str], typer.Option(help="Decoding path (default: greedy).")] = None,
         max_steps: Annotated[int, typer.Option("--max-steps", min=1, help="Greedy steps at most.")] = 8,
         plot: Annotated[Optional[Path], typer.Option(help="PCA walk figure (PNG); the logit lens goes to *_lens.png.")] = None,
         json_out: JsonOut = None):
    """The encoding and decoding walks through embedding space, with the logit lens per layer."""
    from pathprob.analysis.walk import walk as walk_fn

    result = walk_fn(pp.open_model(spec), prompt, continuation, max_steps=max_steps)
    if plot is not None:
        from pathprob.plots.embedding import lens_figure, walk_figure

        err.print(f"wrote {walk_figure([result], plot)} and "
                  f"{lens_figure(result, plot.with_name(plot.stem + '_lens' + (plot.suffix or '.png')))}")
    if _emit_json(json_out, result.to_dict()) and str(json_out) == "-":
        return
    table = Table("step", "token", "entropy by layer (nats)", "KL to final", "rank by layer", "nearest (dot: p)",
                  "ρ(log p, cos)", title=repr(result), title_justify="left")
    for s in range(result.n_steps):
        near = " ".join(f"{result.tokens[int(v)]}:{p:.3f}" for v, p in zip(result.nearest_dot_SK[s], result.p_dot_SK[s]))
        table.add_row(str(s), repr(result.tokens[int(result.path[s])]),
                      " ".join(f"{x:.3f}" for x in result.lens_entropy_SN[s]),
                      " ".join(f"{x:.3f}" for x in result.lens_kl_SN[s]),
                      " ".join(str(int(x)) for x in result.lens_rank_SN[s]), near, f"{result.spearman_cos_S[s]:.3f}")
    out.print(table)
    share = result.attn_norm_N / (result.attn_norm_N + result.mlp_norm_N)
    out.print("attention / MLP write norms by layer: " + ", ".join(
        f"{a:.3f} / {m:.3f} (attention {s:.0%})" for a, m, s in zip(result.attn_norm_N, result.mlp_norm_N, share)))


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PathprobError(f"{option} must be comma-separated integers, got {text!r}") from None


@command(name="concept-test")
def concept_test(spec: Spec,
                 k: Annotated[str, typer.Option("--k", help="In-context examples, comma-separated.")] = "0,5",
                 items: Annotated[int, typer.Option(min=2, help="Multiple-choice items per k.")] = 256,
                 bootstrap: Annotated[int, typer.Option(min=1, help="Bootstrap resamples.")] = 1000,
                 seed: Seed = 0,
                 plot: Annotated[Optional[Path], typer.Option(help="Bar chart (PNG) of chance-corrected scores.")] = None,
                 json_out: JsonOut = None):
    """Singh's concept-space tests (aggregated-context generation, concept similarity) on the concepts language."""
    from pathprob.analysis.concept_test import concept_test as run_test

    result = run_test(pp.open_model(spec), ks=_int_list(k, "--k"), n_items=items, bootstrap=bootstrap, seed=seed)
    if plot is not None:
        from pathprob.plots.embedding import concept_figure

        err.print(f"wrote {concept_figure(result, plot)}")
    if _emit_json(json_out, result.to_dict()) and str(json_out) == "-":
        return
    table = Table("k", "condition", "accuracy", "÷ base", "chance-corrected", title=f"{items} items per k; "
                  f"{100 * result.level:g}% bootstrap intervals; chance 0.25", title_justify="left")
    for r in result.rows:
        ci = lambda v, c: f"{v:.3f} [{c[0]:.3f}, {c[1]:.3f}]"
        table.add_row(str(r.k), r.label, ci(r.accuracy, r.accuracy_ci), ci(r.normalized, r.normalized_ci),
                      ci(r.chance_corrected, r.chance_corrected_ci))
    out.print(table)


@command
def ablate(spec: Spec,
           mode: Annotated[str, typer.Option(help="uniform, cluster, none, or model (the identity)")] = "uniform",
           layer: Annotated[Optional[list[int]], typer.Option(help="Layer to ablate; repeat for several (default: all).")] = None,
           language: Annotated[Optional[str], typer.Option(help="Language of the eval documents and probes.")] = None,
           docs: Annotated[int, typer.Option("--docs", min=1, help="Eval documents.")] = 256,
           max_new: MaxNew = 6, min_prob: MinProb = 1e-4, json_out: JsonOut = None):
    """Replace attention and report the change in eval loss and KL(original || ablated) over paths."""
    from pathprob.analysis.ablate import ablate as run_ablation

    result = run_ablation(pp.open_model(spec), mode, layers=layer or None, language=language, n_docs=docs,
                          max_new=max_new, min_prob=min_prob)
    if _emit_json(json_out, result.to_dict()) and str(json_out) == "-":
        return
    out.print(f"{mode} attention in layers {list(result.layers)}: eval loss {result.loss:.4f} -> "
              f"{result.loss_ablated:.4f} nats/token ({result.loss_change:+.4f}) on {result.docs} documents")
    table = Table("prompt", "KL(original || ablated) nats", "paths listed", "unlisted mass (orig / ablated)",
                  title=f"paths of up to {max_new} tokens; KL is a lower bound unless exact", title_justify="left")
    for p, kl_value, exact, n, a, b in zip(result.prompts, result.kl, result.kl_exact, result.paths, result.rest_p,
                                            result.rest_q):
        table.add_row(repr(p), f"{kl_value:.4f}" + (" (exact)" if exact else ""), f"{n:,}", f"{a:.2e} / {b:.2e}")
    out.print(table)


@command
def dynamics(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory (metrics.jsonl, checkpoints/).")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Where to write dynamics.png/.json (default: RUN_DIR).")] = None,
    from_checkpoints: Annotated[bool, typer.Option("--from-checkpoints", help="Recompute the probes from the kept checkpoints.")] = False,
    json_out: JsonOut = None,
):
    """Training dynamics of the path distribution: set mass, entropy vs truth, KL, tracked paths over steps."""
    from pathprob.analysis.dynamics import summary_rows, training_dynamics
    from pathprob.plots.training import plot_dynamics

    with _Progress("checkpoints", 0) as progress:
        result = training_dynamics(run_dir, from_checkpoints=from_checkpoints,
                                   on_step=lambda step: progress.update(0, f"step {step}"))
    png = plot_dynamics(result.to_dict(), (out_dir or run_dir) / "dynamics.png")
    if _emit_json(json_out, result.to_dict()) and str(json_out) == "-":
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
def compare(
    spec: Spec,
    prompt: Annotated[list[str], typer.Option("--prompt", help="Prompt text; repeat for several (at least one).")],
    max_new: MaxNew,
    truth: Annotated[Optional[str], typer.Option(help="Second model spec to compare with (e.g. truth:concepts).")] = None,
    regex: Annotated[Optional[str], typer.Option("--set", help="Full-match regex: report the set's mass.")] = None,
    method: Annotated[str, typer.Option(help="auto, exact or mc")] = "auto",
    min_prob: MinProb = 0.0, n: Samples = 4096, seed: Seed = 0,
    json_out: JsonOut = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the coverage figure (PNG + JSON).")] = None,
):
    """Compare the path distributions after several prompts: entropy, coverage, top paths, JS/KL, narrowing."""
    from pathprob.analysis.compare import LEVELS, compare as compare_prompts, format_count

    lm = pp.open_model(spec)
    result = compare_prompts(lm, prompt, max_new, pathset=None if regex is None else pp.Regex(regex), method=method,
                             truth=None if truth is None else pp.open_model(truth), min_prob=min_prob, n=n, key=seed)
    if plot is not None:
        from pathprob.plots.paths import coverage_curves

        curves = {f"{i}: {row.prompt[-24:]!r} ({row.method})": row.probs for i, row in enumerate(result.rows)}
        err.print(f"wrote {coverage_curves(curves, plot)}")
    if _emit_json(json_out, result.to_dict()) and str(json_out) == "-":
        return
    for title, rows in (("model", result.rows), ("truth", result.truth_rows)):
        if rows is None:
            continue
        table = Table("#", "prompt", "H (nats)", "exp(H)", *(f"n{round(100 * q)}" for q in LEVELS), "top path",
                      "set mass", "method", title=f"{title}: paths of up to {max_new} tokens", title_justify="left")
        for i, row in enumerate(rows):
            top = f"{row.top[0][0]!r} {row.top[0][1]:.3g}" if row.top else ""
            table.add_row(str(i), repr(row.prompt), format_estimate(row.entropy), f"{row.effective_paths[0]:.4g}",
                          *(format_count(row.coverage[str(q)]) for q in LEVELS), top,
                          "" if row.set_mass is None else format_estimate(row.set_mass), row.method)
        out.print(table)
    if result.pairs:
        levels = list(result.pairs[0].narrowing)
        table = Table("a", "b", "JS (nats)", "KL(a||b)", "KL(b||a)", *(f"P_b(top-{p} of a)" for p in levels),
                      title="pairs (a = shorter prompt)", title_justify="left")
        for pair in result.pairs:
            table.add_row(str(pair.a), str(pair.b), format_estimate(pair.js), format_estimate(pair.kl_ab),
                          format_estimate(pair.kl_ba),
                          *("n/a" if e is None else format_estimate(e) for e in pair.narrowing.values()))
        out.print(table)
    if result.kl_truth_model is not None:
        out.print("KL(truth || model) per prompt: " + ", ".join(format_estimate(e) for e in result.kl_truth_model))
    reasons = {row.reason for row in result.rows if row.reason}
    for reason in reasons:
        out.print(f"Monte Carlo because: {reason}")


@command
def narrow(
    spec: Spec,
    language: Annotated[str, typer.Option(help="A language with latent concepts (concepts).")] = "concepts",
    n_prompts: Annotated[int, typer.Option("--n-prompts", min=2, help="Prompts (documents) per point.")] = 64,
    k: Annotated[str, typer.Option("--k", help="Numbers of in-context examples, comma-separated.")] = "0,1,2,4,8",
    method: Annotated[str, typer.Option(help="auto, exact or mc")] = "auto",
    min_prob: MinProb = 1e-4, seed: Seed = 0, json_out: JsonOut = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the narrowing figure (PNG + JSON).")] = None,
):
    """The in-context narrowing curve: entropy of the next example vs the number of examples, model vs truth."""
    from pathprob.analysis.narrowing import narrowing_curve

    ks = _int_list(k, "--k")
    lm = pp.open_model(spec)
    curve = narrowing_curve(lm, pp.get_language(language), ks, n_prompts, key=seed, method=method, min_prob=min_prob)
    if plot is not None:
        from pathprob.plots.paths import narrowing_curve as draw

        err.print(f"wrote {draw(curve.to_dict(), plot)}")
    if _emit_json(json_out, curve.to_dict()) and str(json_out) == "-":
        return
    table = Table("k", "model H (nats)", "truth H (nats)", "P(true concept)", "method (model/truth)",
                  title=f"narrowing over {curve.n_prompts} prompts ({100 * curve.level:g}% intervals over prompts)",
                  title_justify="left")
    for i, kk in enumerate(curve.k):
        model = "" if curve.model_mean is None else \
            f"{curve.model_mean[i]:.4f} [{curve.model_lower[i]:.4f}, {curve.model_upper[i]:.4f}]"
        methods = "/".join(curve.methods[name][i] for name in ("model", "truth") if name in curve.methods)
        table.add_row(str(kk), model, f"{curve.truth_mean[i]:.4f} [{curve.truth_lower[i]:.4f}, {curve.truth_upper[i]:.4f}]",
                      f"{curve.posterior_mean[i]:.4f}", methods)
    out.print(table)


@command
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for report.html, its figures and data.")] = Path("pathprob-demo"),
    checkpoints: Annotated[Optional[Path], typer.Option(help="Directory holding the shipped models.")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="Small sizes: the same steps in seconds (for tests).")] = False,
    train: Annotated[bool, typer.Option("--train", help="Retrain both models from scratch into OUT/runs first.")] = False,
    json_out: JsonOut = None,
):
    """The main job on the embedded defaults: narrowing, exact vs Monte Carlo, arith answers, training dynamics."""
    from pathprob.demo import run_demo

    summary = run_demo(err if json_out is not None and str(json_out) == "-" else out, checkpoints, out_dir=out_dir,
                       fast=fast, train=train)
    _emit_json(json_out, summary)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
