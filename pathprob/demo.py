"""``pathprob demo``: the main job on the embedded defaults (shipped checkpoints and probe records).

One run shows what pathprob is for, on the two shipped models and the exact truths of
their languages: in-context narrowing with 0..8 examples (model vs truth), the most
probable next examples, exact and Monte-Carlo results side by side with their intervals,
the mass of the correct answers in ``arith``, and how training reshaped the path
distribution (from the probe records written while the shipped models trained). It
prints a short summary and writes everything, figures and data, into one report page.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import pathprob as pp
from pathprob import report as sections
from pathprob.paths.montecarlo import MASS_METHODS
from pathprob.paths.results import format_estimate
from pathprob.plots.page import Report
from pathprob.errors import CheckpointError

NARROWING_SHOTS = (0, 1, 2, 4, 8)
ARITH_SHOTS = (0, 1, 3)

# The shipped runs (``scripts/make_checkpoints.py`` trains them into checkpoints/; ``--train`` into --out).
SHIPPED_RUNS = {
    "concepts": dict(language="concepts", steps=2000, batch_size=64, learning_rate=3e-3, warmup_steps=100,
                     save_every=2000, eval_every=250, log_every=50, keep=1, seed=0, probe_every=100),
    "arith": dict(language="arith", steps=1500, batch_size=64, learning_rate=3e-3, warmup_steps=100,
                  save_every=1500, eval_every=250, log_every=50, keep=1, seed=0, probe_every=100),
    # Each concept emits only its own letters, so the support of the next example shrinks with the examples.
    "concepts-sparse": dict(language="concepts-sparse", steps=2000, batch_size=64, learning_rate=3e-3,
                            warmup_steps=100, save_every=2000, eval_every=250, log_every=50, keep=1, seed=0,
                            probe_every=100, probe_sets=("seen",)),
}


@dataclasses.dataclass(frozen=True)
class DemoSizes:
    report: sections.Sizes
    n_samples: int  # Monte-Carlo samples of the side-by-side table
    entropy_methods: tuple[str, ...]  # Monte-Carlo entropy estimators beside the exact entropy
    train_steps: int | None  # --train: None = the shipped runs' steps


FULL = DemoSizes(sections.Sizes(top=10, min_prob=1e-4, methods=MASS_METHODS, ns=(256, 1024, 4096), n_prompts=16),
                 n_samples=4096, entropy_methods=("mc", "swor"), train_steps=None)
# Fast: one sample size everywhere, so the side-by-side table and the convergence plot share compiled programs.
FAST = DemoSizes(sections.Sizes(top=6, min_prob=1e-3, methods=("mc", "smc"), ns=(128,), n_prompts=2),
                 n_samples=128, entropy_methods=("mc",), train_steps=40)


def find_checkpoints(explicit: Path | None = None) -> Path:
    """The directory holding the shipped runs: --checkpoints, $PATHPROB_CHECKPOINTS, ./checkpoints, or the repo's."""
    candidates = [explicit] if explicit is not None else [
        Path(p) for p in (os.environ.get("PATHPROB_CHECKPOINTS"), "checkpoints") if p
    ] + [Path(pp.__file__).resolve().parent.parent / "checkpoints"]
    for path in candidates:
        if path is not None and (path / "concepts").is_dir() and (path / "arith").is_dir():
            return path
    raise CheckpointError(
        f"no shipped checkpoints found (looked in {', '.join(str(p) for p in candidates)}); "
        "run from the repository root, pass --checkpoints DIR, or retrain with --train"
    )


def train_runs(root: Path, *, steps: int | None = None, progress: bool | None = None) -> Path:
    """Train the shipped runs from scratch into ``root`` (``steps`` overrides their length, for tests)."""
    for name, fields in SHIPPED_RUNS.items():
        fields = dict(fields, out=str(root / name))
        if steps is not None:
            fields.update(steps=steps, save_every=steps, eval_every=steps, log_every=steps,
                          probe_every=max(1, steps // 2), warmup_steps=min(fields["warmup_steps"], steps))
        pp.train(pp.TrainConfig(**fields), progress=progress)
    return root


def run_demo(console: Console, checkpoints: Path | None = None, *, out_dir: Path = Path("pathprob-demo"),
             fast: bool = False, train: bool = False) -> dict:
    """Run the demo, print its summary and write ``out_dir/report.html``; returns the summary."""
    t0 = time.perf_counter()
    sizes = FAST if fast else FULL
    out_dir = Path(out_dir)
    root = train_runs(out_dir / "runs", steps=sizes.train_steps) if train else find_checkpoints(checkpoints)
    concepts, arith = pp.get_language("concepts"), pp.get_language("arith")
    model, arith_model = pp.open_model(root / "concepts"), pp.open_model(root / "arith")
    truth = concepts.truth()
    max_new = concepts.example_len + 1  # the next example and its separator
    page = Report("pathprob demo: a language model as a distribution over paths")
    page.add_text(
        f"Models from {root}. A path is what follows a prompt, up to {max_new} tokens (one example of the "
        "concepts language and its separator) or EOS. Exact numbers come with proven bounds; Monte-Carlo numbers "
        "with 95% intervals. The concepts language is a mixture of 8 hidden Markov 'concepts'; its exact truth is "
        "the Bayes-optimal predictor, so the model can be compared with it path by path.")

    curve = sections.narrowing_section(page, model, concepts, max_new, truth, out_dir, sizes.report,
                                       shots=NARROWING_SHOTS)
    prompt = concepts.prompts(2, n=1, seed=sizes.report.prompt_seed)[0]
    top = _top_paths(page, model, truth, prompt, max_new, sizes, out_dir)
    side_by_side = _exact_vs_mc(page, model, concepts, prompt, max_new, sizes, out_dir)
    answers = _arith_answers(page, arith_model, arith)
    dynamics = {name: sections.training_section(page, root / name, out_dir, f"dynamics_{name}")
                for name in ("concepts", "arith")}
    page.add_heading("Reproduce")
    page.add_commands([f"pathprob demo --out {shlex.quote(str(out_dir))}" + (" --fast" if fast else "")
                       + (" --train" if train else "")])
    report_path = page.write(out_dir)

    _print_narrowing(console, curve)
    _print_top(console, top)
    _print_side_by_side(console, side_by_side)
    _print_answers(console, answers)
    _print_dynamics(console, dynamics)
    seconds = time.perf_counter() - t0
    console.print(f"report: {report_path}  ({seconds:.0f} s)", soft_wrap=True)
    return {"checkpoints": str(root), "report": str(report_path), "seconds": seconds,
            "narrowing": curve.to_dict(), "top": top, "exact_vs_mc": side_by_side, "arith": answers}


def _top_paths(page, model, truth, prompt: str, max_new: int, sizes: DemoSizes, out_dir: Path) -> dict:
    """The model's most probable next examples after a 2-example prompt, each with the truth's probability."""
    table = pp.top_k(model, prompt, sizes.report.top, max_new)
    truth_logp = pp.score(truth, prompt, [row[:n].tolist() for row, n in zip(table.tokens, table.lengths)])
    rows = [[i, text, math.exp(lp), math.exp(tlp)]
            for i, (text, lp, tlp) in enumerate(zip(table.texts(with_eos=True), table.logp, truth_logp), 1)]
    page.add_heading("The most probable next examples")
    page.add_table(["#", "next example", "p model", "p truth"], rows,
                   caption=f"After {prompt!r}: the model's exact top {len(table)} (best-first search), with the "
                           "truth's probability of the same path.")
    enumerated = pp.enumerate_paths(model, prompt, max_new, min_prob=sizes.report.min_prob)
    png = sections.figures.path_tree(enumerated, out_dir / "tree.png", top=sizes.report.top, prompt=prompt,
                                     title=f"Top paths after {prompt!r}")
    page.add_figure(png, "Prefix tree of the model's top paths; edge width is the probability of the prefix.")
    return {"prompt": prompt, "paths": [r[1] for r in rows], "p_model": [r[2] for r in rows],
            "p_truth": [r[3] for r in rows]}


def _exact_vs_mc(page, model, language, prompt: str, max_new: int, sizes: DemoSizes, out_dir: Path) -> dict:
    """A set's mass and the path entropy, exact (proven bounds) beside each Monte-Carlo method (intervals)."""
    pattern = language.path_set("repeat", prompt)
    n, key = sizes.n_samples, sizes.report.seed
    rows = {"P(repeat) exact": pp.mass(model, prompt, pattern, max_new)}
    for method in sizes.report.methods:
        rows[f"P(repeat) {method}"] = pp.mass(model, prompt, pattern, max_new, method=method, n=n, key=key)
    rows["H exact"] = pp.entropy(model, prompt, max_new, min_prob=sizes.report.min_prob)
    for method in sizes.entropy_methods:
        rows[f"H {method}"] = pp.entropy(model, prompt, max_new, method=method, n=n, key=key)
    page.add_heading("Exact and Monte Carlo, side by side")
    page.add_table(["quantity", "value", "interval", "kind", "samples", "seconds"],
                   [[name, est.value, f"[{est.lower:.6g}, {est.upper:.6g}]",
                     _value_kind(est.exact, est.level), est.n, est.seconds]
                    for name, est in rows.items()],
                   caption=f"After {prompt!r}: P(the next example repeats the last one, {pattern!r}) and the path "
                           f"entropy (nats), with {n} samples per Monte-Carlo method.")
    sections.convergence_section(page, model, language, prompt, max_new, out_dir, sizes.report)
    return {name: est.to_dict() for name, est in rows.items()}


def _arith_answers(page, lm, language) -> list[dict]:
    """P(correct answer) after arith prompts with 0, 1 and 3 worked statements (exact; the truth's is 1)."""
    rows = []
    for shots in ARITH_SHOTS:
        prompt = language.prompts(shots, n=1, seed=0)[0]
        est = pp.mass(lm, prompt, language.path_set("correct", prompt), 2)
        rows.append({"shots": shots, "prompt": prompt, "mass": est.to_dict(), "text": format_estimate(est)})
    page.add_heading("arith: the mass of the correct answers")
    page.add_table(["statements before", "prompt", "P(correct) model", "P(correct) truth"],
                   [[r["shots"], r["prompt"], r["text"], 1.0] for r in rows],
                   caption="Exact: the set is the regex 'c.*' for the right digit c; the truth always answers right.")
    return rows


def _print_narrowing(console, curve) -> None:
    measures = curve.measures
    out = Table("examples", "H model (nats)", "H truth (nats)", "P(true concept)",
                title=f"In-context narrowing: entropy of the next example, mean of {curve.n_prompts} prompts; "
                      f"intervals: {curve.interval}", title_justify="left")
    for i, k in enumerate(curve.k):
        model = measures["model"]["entropy"].format(i, 4) if "model" in measures else "n/a"
        out.add_row(str(int(k)), model, measures["truth"]["entropy"].format(i, 4),
                    measures["truth"]["posterior"].format(i, 3))
    console.print(out)


def _print_top(console, top: dict) -> None:
    out = Table("#", "next example", "p model", "p truth", title=f"Top next examples after {top['prompt']!r}",
                title_justify="left")
    for i, (text, p_model, p_truth) in enumerate(zip(top["paths"], top["p_model"], top["p_truth"]), 1):
        out.add_row(str(i), text, f"{p_model:.4f}", f"{p_truth:.4f}")
    console.print(out)


def _value_kind(exact: bool, level: float | None) -> str:
    """What a value beside its bounds is (``Estimate.kind``, saying that between proven bounds it is their midpoint)."""
    if exact:
        return "exact"
    return "midpoint of proven bounds" if level is None else f"{100 * level:g}% interval"


def _print_side_by_side(console, rows: dict) -> None:
    out = Table("quantity", "value", "bounds", "the value is", "samples",
                title="Exact (proven bounds) vs Monte Carlo (95% intervals)", title_justify="left")
    for name, est in rows.items():
        out.add_row(name, f"{est['value']:.5f}", f"[{est['lower']:.5f}, {est['upper']:.5f}]",
                    _value_kind(est["exact"], est["level"]), str(est["n"]))
    console.print(out)


def _print_answers(console, answers: list[dict]) -> None:
    console.print("arith, P(correct answer) under the model: " + ", ".join(
        f"{a['shots']} statements before {a['text']}" for a in answers), soft_wrap=True)


def _print_dynamics(console, dynamics: dict) -> None:
    for name, result in dynamics.items():
        if result is None:
            console.print(f"{name}: no probe records, no training-dynamics panel")
            continue
        console.print(f"{name}: training dynamics over {len(result.steps)} probes (steps {result.steps[0]}-"
                      f"{result.steps[-1]}), panel in the report", soft_wrap=True)
