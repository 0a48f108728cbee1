"""The report of a model or a run: ``build_report`` fills a ``Report`` page (``plots/page.py``).

The target is a model spec (checkpoint directory or ``truth:LANGUAGE``) or a run directory;
each section is one function.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from pathprob import loading
from pathprob.analysis.compare import LEVELS, compare, format_count
from pathprob.analysis.convergence import convergence
from pathprob.analysis.dynamics import NoProbesError, training_dynamics
from pathprob.analysis.narrowing import narrowing_curve
from pathprob.data.languages import get_language
from pathprob.errors import BudgetExceededError, UnknownSpecError
from pathprob.paths.enumerate import enumerate_paths
from pathprob.paths.montecarlo import MASS_METHODS
from pathprob.paths.results import NO_VALUE, format_estimate, format_interval
from pathprob.paths.sets import Regex
from pathprob.plots import paths as figures
from pathprob.plots.page import Report
from pathprob.plots.training import plot_dynamics
from pathprob.rundir import read_metrics

# --- the report of a model or a run ----------------------------------------------------------------

SHOTS = (0, 2, 6)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each section does; ``FAST`` for tests and the demo's fast mode."""

    top: int = 15  # paths in the trees and top-path tables
    min_prob: float = 1e-4  # enumeration floor (1e-5 on a d_model 128 Transformer exceeds the memory budget)
    methods: tuple[str, ...] = MASS_METHODS
    ns: tuple[int, ...] = (100, 300, 1000, 3000, 10000)
    n_prompts: int = 8  # prompts per number of examples (comparison and narrowing sections)
    seed: int = 0  # Monte-Carlo key
    prompt_seed: int = 1  # the prompts: the demo's (concepts: a document whose narrowing is gradual)


FULL = Sizes()
# Fast: three sample sizes, the fewest for a convergence figure (swor compiles once per n: ~4 s each).
FAST = Sizes(top=8, min_prob=1e-3, methods=("mc", "smc", "swor"), ns=(64, 128, 256), n_prompts=2)


def build_report(target: str | Path, out_dir: str | Path, *, fast: bool = False) -> Path:
    """Measure a model (or a run's latest model) and write ``out_dir/report.html``; returns its path.

    ``target`` is a model spec (``truth:LANGUAGE`` or a checkpoint directory) or a
    run directory (holding ``metrics.jsonl``: the training section is added). For the
    language's prompts with 0, 2 and 6 examples: the top paths and their prefix
    tree, coverage curves, estimator convergence on a named path set, the comparison
    across prompts, the narrowing curve (concepts) and the training dynamics (runs).
    """
    target = str(target)
    if not target.startswith("truth:") and not Path(target).exists():
        raise UnknownSpecError(f"no such model or run: {target!r} is neither a directory nor truth:LANGUAGE")
    out_dir = Path(out_dir)
    sizes = FAST if fast else FULL
    lm, language, facts = _open(target)
    max_new = _horizon(language)
    prompts = {shots: language.prompts(shots, n=1, seed=sizes.prompt_seed)[0] for shots in SHOTS}
    report = Report(f"pathprob report: {target}")
    report.add_text(
        f"The model as a distribution over paths: the token sequences of up to {max_new} tokens that follow a "
        f"prompt (ending at EOS inclusive). Language {language.name!r}; prompts with {', '.join(map(str, SHOTS))} "
        f"in-context examples. {'Fast mode (small sizes). ' if fast else ''}Probabilities are exact unless an "
        "interval is given.")
    model_section(report, facts)
    tables = top_paths_section(report, lm, prompts, max_new, out_dir, sizes)
    coverage_section(report, tables, out_dir)
    converged = convergence_section(report, lm, language, prompts[SHOTS[1]], max_new, out_dir, sizes)
    truth = None if target.startswith("truth:") else language.truth()
    comparison_section(report, lm, "truth" if target.startswith("truth:") else "model", prompts, max_new, truth,
                        sizes)
    narrowing_section(report, lm, language, max_new, truth, out_dir, sizes)
    run_dir = Path(target) if not target.startswith("truth:") and (Path(target) / "metrics.jsonl").is_file() else None
    if run_dir is not None:
        training_section(report, run_dir, out_dir)
    commands_section(report, target, out_dir, fast, prompts, max_new, sizes,
                     None if converged is None else converged["pattern"])
    return report.write(out_dir)


def _open(target: str):
    """(model, language, facts about the model) for a spec or a run directory."""
    if target.startswith("truth:"):
        lm = loading.open_model(target)
        return lm, get_language(target.removeprefix("truth:")), {"model": target, "kind": "exact truth"}
    lm, meta = loading.load_checkpoint(loading.checkpoint_dir(Path(target)))
    facts = {"model": target, "kind": "transformer", "language": meta["language"], "step": meta["step"],
             "parameters": loading.parameter_count(lm), "eval loss (nats/token)": meta.get("eval_loss"),
             "truth eval loss (nats/token)": meta.get("truth_eval_loss"), "seed": meta.get("seed")}
    return lm, get_language(meta["language"]), facts


def _horizon(language) -> int:
    """Path length: the rest of the example a prompt ends inside, then the next example and its separator."""
    return language.prompt_tail + language.example_tokens


def model_section(report: Report, facts: dict) -> None:
    report.add_heading("Model")
    report.add_table(["field", "value"], [[key, value] for key, value in facts.items()])


def top_paths_section(report: Report, lm, prompts: dict, max_new: int, out_dir: Path, sizes: Sizes) -> dict:
    """The most probable paths and their prefix tree for each prompt; returns the enumerations."""
    report.add_heading("Most probable paths")
    report.add_text(f"Every path with probability at least {sizes.min_prob:g} is enumerated exactly; the rest is the "
                    "certified remainder. Tree edges are as wide as the probability of the prefix they lead to "
                    "(summed over all enumerated paths).")
    tables = {}
    for shots, prompt in prompts.items():
        table = enumerate_paths(lm, prompt, max_new, min_prob=sizes.min_prob)
        tables[shots] = table
        shown = table.top(sizes.top)
        rows, cumulative = [], 0.0
        for i, (text, lp) in enumerate(zip(shown.texts(with_eos=True), shown.logp), 1):
            cumulative += math.exp(lp)
            rows.append([i, text, math.exp(lp), float(lp), cumulative])
        report.add_table(["#", "path", "p", "log p (nats)", "cumulative p"], rows,
                         caption=f"{shots} examples: prompt {prompt!r}; {len(table):,} paths listed, "
                                 f"remainder {table.remaining:.3g}")
        png = figures.path_tree(table, out_dir / f"tree_{shots}.png", top=sizes.top, prompt=prompt,
                        title=f"{shots} in-context examples: top {min(sizes.top, len(table))} paths")
        report.add_figure(png, f"Prefix tree of the top paths after {prompt!r} ({shots} examples).")
    return tables


def coverage_section(report: Report, tables: dict, out_dir: Path) -> None:
    report.add_heading("Coverage")
    curves = {f"{shots} examples": table.probs.tolist() for shots, table in tables.items()}
    png = figures.coverage_curves(curves, out_dir / "coverage.png")
    rows = [[label, *[_or_dash(figures.paths_needed(probs, g)) for g in figures.GUIDES]]
            for label, probs in curves.items()]
    report.add_table(["prompt", "paths for 50%", "paths for 90%", "paths for 99%"], rows,
                     caption="How many of the most probable paths carry each share of the mass ('-': not reached "
                             "above the enumeration floor).")
    report.add_figure(png, "Cumulative probability of the n most probable paths.")


def _or_dash(value):
    return "-" if value is None else value


def convergence_section(report: Report, lm, language, prompt: str, max_new: int, out_dir: Path,
                        sizes: Sizes) -> dict | None:
    """Each Monte-Carlo method at growing n against the exact mass of a named set; returns the figure's data
    (with ``set`` and ``pattern``), or None when the language names no set. The figure needs
    ``figures.MIN_SAMPLE_SIZES`` sample sizes; with fewer the table stands alone and the text says why."""
    names = [name for name in language.path_set_names if name != "any"]
    if not names:
        return None
    pattern = language.path_set(names[0], prompt)
    run = functools.partial(convergence, lm, prompt, Regex(pattern), max_new, methods=sizes.methods, ns=sizes.ns,
                            key=sizes.seed)
    try:
        data = run()
    except BudgetExceededError:  # checked before any work: fall back to proven bounds above the floor
        data = run(min_prob=sizes.min_prob)
    report.add_heading("Estimator convergence")
    report.add_text(f"P(set {names[0]!r} = {pattern!r}) after {prompt!r}: the exact value "
                    f"{data['exact']['value']:.6g} and each Monte-Carlo method's estimate with its "
                    f"{100 * data['level']:g}% interval, at each sample size (independent random keys).")
    rows = [[method, n, value, format_interval(lower, upper), seconds]
            for method, s in data["series"].items()
            for n, value, lower, upper, seconds in zip(s["n"], s["value"], s["lower"], s["upper"], s["seconds"])]
    report.add_table(["method", "n", "estimate", "interval", "seconds"], rows)
    ns = sorted(set(sizes.ns))
    if len(ns) < figures.MIN_SAMPLE_SIZES:
        report.add_text(f"No convergence figure: {len(ns)} sample size{'s' if len(ns) > 1 else ''} "
                        f"({', '.join(map(str, ns))}) in this mode, and a trend needs at least "
                        f"{figures.MIN_SAMPLE_SIZES}.")
    else:
        png = figures.convergence(data, out_dir / "convergence.png")
        report.add_figure(png, f"Estimates of P({names[0]!r}) against the number of samples; the line is the exact "
                               "value.")
    return data | {"set": names[0], "pattern": pattern}


def comparison_section(report: Report, lm, label: str, prompts: dict, max_new: int, truth, sizes: Sizes) -> None:
    """Entropy, coverage and divergences across the prompts (``pathprob.analysis.compare``); ``label`` names ``lm``."""
    shots = list(prompts)
    result = compare(lm, list(prompts.values()), max_new, truth=truth, min_prob=sizes.min_prob, key=sizes.seed,
                     n=max(sizes.ns))
    report.add_heading("Comparison across prompts")
    report.add_text("Path entropy H (nats) with its proven bounds ('bounded') or its interval, the effective number "
                    "of paths exp(H), and how many paths carry 50/90/99% of the mass ('>n': more than n, a lower bound "
                    "where the listing stops at the enumeration floor).")

    def rows_of(stats, who: str) -> list:
        return [[f"{k} examples", who, row.method, format_estimate(row.entropy),
                 format_estimate(dataclasses.replace(row.entropy, value=row.effective_paths[0],
                                                   lower=row.effective_paths[1], upper=row.effective_paths[2])),
                 *[format_count(row.coverage[str(level)]) for level in LEVELS],
                 f"{row.top[0][0]!r} ({row.top[0][1]:.3g})" if row.top else NO_VALUE]
                for k, row in zip(shots, stats)]

    rows = rows_of(result.rows, label) + rows_of(result.truth_rows or [], "truth")
    report.add_table(["prompt", "distribution", "method", "H (nats)", "exp(H)", "n50", "n90", "n99", "top path"], rows)
    if result.kl_truth_model:
        report.add_table(["prompt", "KL(truth || model) (nats)"],
                         [[f"{k} examples", format_estimate(est)] for k, est in zip(shots, result.kl_truth_model)])
    pair_rows = [[f"{shots[pair.a]} -> {shots[pair.b]} examples", format_estimate(pair.js), format_estimate(pair.kl_ab),
                  format_estimate(pair.kl_ba),
                  *[(NO_VALUE if est is None else format_estimate(est)) for est in pair.narrowing.values()]]
                 for pair in result.pairs]
    if result.pairs:
        levels = [f"P_b(top {p} of a)" for p in result.pairs[0].narrowing]
        report.add_table(["a -> b", "JS (nats)", "KL(a || b) (nats)", "KL(b || a) (nats)", *levels], pair_rows,
                         caption="Between prompts: the narrowing test is the mass b puts on the smallest set of "
                                 "a's most probable paths covering p.")


def narrowing_section(report: Report, lm, language, max_new: int, truth, out_dir: Path, sizes: Sizes,
                      shots: Sequence[int] = SHOTS):
    """Entropy, supports and the truth's posterior vs number of examples, model vs truth
    (``pathprob.analysis.narrowing``); returns the ``NarrowingCurve`` (None for a language without latent concepts)."""
    if not hasattr(language, "sample_concepts"):  # narrowing needs a latent concept to be right about
        return None
    curve = narrowing_curve(None if truth is None else lm, language, shots, sizes.n_prompts, max_new, sizes.seed,
                            truth, min_prob=sizes.min_prob)
    measures = curve.measures
    report.add_heading("In-context narrowing")
    report.add_text(f"Mean over {curve.n_prompts} prompts per number of examples. Intervals: {curve.interval}. "
                    "'bounded' gives the proven range of the mean (the enumeration was pruned), not a midpoint; "
                    "'mc' marks Monte-Carlo estimates. The lower panel is the truth's posterior probability of the "
                    "concept that generated the prompt.")
    who = [w for w in ("model", "truth") if w in measures]
    rows = [[int(k), *[_point_text(measures[w]["entropy"], i) for w in who],
             _point_text(measures["truth"]["posterior"], i)] for i, k in enumerate(curve.k)]
    report.add_table(["examples", *[f"H {w} (nats)" for w in who], "P(true concept)"], rows)
    report.add_text(_support_sentence(curve))
    rows = []
    for i, k in enumerate(curve.k):
        previous = f"_of_k{curve.k[i - 1]}" if i else None
        for w in who:
            m = measures[w]
            outside = m.get("outside_truth") if w == "model" else m.get(f"outside_support{previous}")
            inside = m.get(f"in_top90{previous}") if previous else None
            measured = [m.get(name) for name in ("support", "effective_paths", "top_0.9")] + [inside, outside]
            rows.append([int(k), w, *[NO_VALUE if x is None else _point_text(x, i) for x in measured]])
    report.add_table(["examples", "distribution", "support (p > 0)", "exp(H)", "paths holding 90%",
                      "mass on the previous top-90% set", "mass outside the (previous) support"], rows,
                     caption=f"{curve.n_paths:,} paths are possible. Outside: the truth's mass outside its own "
                             "support at the previous number of examples; the model's mass where the truth has "
                             "probability 0.")
    png = figures.narrowing_curve(curve.to_dict(), out_dir / "narrowing.png")
    report.add_figure(png, "Entropy of the next example, how many paths hold 90% of its mass (and the truth's "
                           "support), and the truth's posterior probability of the true concept, against the "
                           "number of in-context examples.")
    return curve


def _point_text(measure, i: int) -> str:
    """Point ``i`` of a narrowing ``Measure``: its value, or ``bounded [low, high]`` (the proven range of the mean,
    no midpoint), then its interval over prompts when there is one; ``n/a`` where it was not measured."""
    method = measure.method[i]
    if method == "n/a":
        return "n/a"
    low, high = (bound[i] for bound in measure.proven)
    text = f"bounded {format_interval(low, high, 4)}" if method == "bounded" else f"{measure.mean[i]:.4g}"
    if not math.isnan(measure.lower[i]):
        text += f", interval {format_interval(measure.lower[i], measure.upper[i], 4)}"
    return text + (" (mc)" if method == "mc" else "")


def _support_sentence(curve) -> str:
    """Whether the truth's support shrinks between the fewest and the most examples, by proven ranges."""
    support = curve.measures["truth"].get("support")
    measured = [] if support is None else [i for i, method in enumerate(support.method) if method != "n/a"]
    if len(measured) < 2:
        return "The truth's support was not measured (Monte Carlo): no claim about paths becoming impossible."
    low, high = support.proven
    first, last = measured[0], measured[-1]
    sizes = lambda i: f"{low[i]:.6g}" if low[i] == high[i] else f"[{low[i]:.6g}, {high[i]:.6g}]"
    facts = f"{sizes(first)} paths at {int(curve.k[first])} examples, {sizes(last)} at {int(curve.k[last])}"
    if high[last] < low[first]:
        return (f"The truth's support shrinks ({facts}; means over prompts): examples rule paths out. A softmax "
                "model gives every path p > 0, so for it narrowing can only be the mass concentrating.")
    verdict = "does not shrink" if low[first] == high[first] == low[last] == high[last] else "is not proven to shrink"
    return (f"The truth's support {verdict} ({facts}): here narrowing means the mass concentrating on fewer "
            "paths (exp(H) and the 90% set), not paths becoming impossible.")


def training_section(report: Report, run_dir: Path, out_dir: Path, name: str = "dynamics"):
    """The run's metrics, and the training-dynamics panel (``pathprob.analysis.dynamics``) when it has probes,
    written as ``out_dir/name.png``; returns the ``Dynamics`` (None without probes)."""
    records = read_metrics(run_dir)
    report.add_heading(f"Training: {run_dir}")
    steps = [r for r in records if "loss" in r]
    if steps:
        keys = [k for k in ("step", "loss", "eval_loss", "truth_eval_loss", "tokens_per_s") if k in steps[-1]]
        chosen = [steps[0], steps[len(steps) // 2], steps[-1]] if len(steps) > 2 else steps
        report.add_table(keys, [[r.get(k) for k in keys] for r in chosen],
                         caption=f"{len(steps)} logged steps ('{NO_VALUE}': not measured at that step, e.g. the "
                                 "eval loss before the first evaluation)")
    try:
        dynamics = training_dynamics(run_dir)
    except NoProbesError as exc:
        report.add_text(f"No training-dynamics panel: {exc}.")
        return None
    png = plot_dynamics(dynamics.to_dict(), out_dir / f"{name}.png")
    report.add_figure(png, f"Training dynamics over {len(dynamics.steps)} probed steps: set masses, path entropy "
                           "against the truth's, KL(truth || model), and tracked paths.")
    return dynamics


def commands_section(report: Report, target: str, out_dir: Path, fast: bool, prompts: dict, max_new: int,
                      sizes: Sizes, pattern: str | None) -> None:
    q = shlex.quote
    commands = [f"pathprob report {q(target)} --out {q(str(out_dir))}" + (" --fast" if fast else "")]
    commands += [f"pathprob enumerate {q(target)} --prompt {q(prompts[s])} --max-new {max_new} "
                 f"--min-prob {sizes.min_prob:g}" for s in SHOTS]
    if pattern is not None:
        commands.append(f"pathprob mass {q(target)} --prompt {q(prompts[SHOTS[1]])} --max-new {max_new} "
                        f"--regex {q(pattern)}")
    report.add_heading("Reproduce")
    report.add_text("The whole report (the first command), and each exact result on its own. Python "
                    f"{sys.version.split()[0]}.")
    report.add_commands(commands)
