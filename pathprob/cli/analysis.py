"""Analyses: compare, narrow, walk, concept-test, ablate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

import pathprob as pp
from pathprob.paths.results import format_estimate
from pathprob.cli.common import (
    JsonOut,
    MaxNew,
    MinProb,
    Prompt,
    Samples,
    Seed,
    Spec,
    command,
    emit_json,
    err,
    int_list,
    out,
    plot_option,
    warn,
)


@command
def walk(spec: Spec, prompt: Prompt,
         continuation: Annotated[str | None, typer.Option(help="Decoding path (default: greedy).")] = None,
         max_steps: Annotated[int, typer.Option("--max-steps", min=1, help="Greedy steps at most.")] = 8,
         plot: Annotated[Path | None, plot_option("PCA walk figure (PNG); the logit lens goes to *_lens.png.")] = None,
         json_out: JsonOut = None):
    """The encoding and decoding walks through embedding space, with the logit lens per layer."""
    from pathprob.analysis.walk import walk as walk_fn

    result = walk_fn(pp.open_model(spec), prompt, continuation, max_steps=max_steps)
    if plot is not None:
        from pathprob.plots.embedding import lens_figure, walk_figure

        err.print(f"wrote {walk_figure([result], plot)} and "
                  f"{lens_figure(result, plot.with_name(plot.stem + '_lens' + (plot.suffix or '.png')))}")
    if emit_json(json_out, result.to_dict()) and str(json_out) == "-":
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



@command(name="concept-test")
def concept_test(spec: Spec,
                 k: Annotated[str, typer.Option("--k", help="In-context examples, comma-separated.")] = "0,5",
                 items: Annotated[int, typer.Option(min=2, help="Multiple-choice items per k.")] = 256,
                 source: Annotated[str | None, typer.Option(
                     help="Vector sources, comma-separated: embed and/or layer numbers (default: all).")] = None,
                 aggregator: Annotated[str, typer.Option(help="mean, weighted, last; comma-separated.")] =
                 "mean,weighted,last",
                 bootstrap: Annotated[int, typer.Option(min=1, help="Bootstrap resamples.")] = 10000,
                 seed: Seed = 0,
                 random_seed: Annotated[int, typer.Option("--random-seed", min=0,
                                                          help="Seed of the random-init control.")] = 0,
                 plot: Annotated[Path | None, plot_option("Figure (PNG): model vs controls.")] = None,
                 json_out: JsonOut = None):
    """Singh's concept-space tests (aggregated-context generation, concept similarity) with three controls."""
    from pathprob.analysis.concept_test import concept_test as run_test

    names = [] if source is None else [s.strip() for s in source.split(",") if s.strip()]
    if not all(s == "embed" or s.isdigit() for s in names):
        raise pp.PathprobError(f"--source takes embed and/or layer numbers, comma-separated; got {source!r}")
    result = run_test(pp.open_model(spec), ks=int_list(k, "--k"), n_items=items,
                      sources=[s if s == "embed" else int(s) for s in names] or None,
                      aggregators=[a.strip() for a in aggregator.split(",") if a.strip()], bootstrap=bootstrap,
                      seed=seed, random_seed=random_seed)
    if plot is not None:
        from pathprob.plots.embedding import concept_figure

        err.print(f"wrote {concept_figure(result, plot)}")
    if emit_json(json_out, result.to_dict()) and str(json_out) == "-":
        return
    ci = lambda v, c, sign="": f"{v:{sign}.3f} [{c[0]:{sign}.3f}, {c[1]:{sign}.3f}]"
    for kk in result.base:
        for family, family_verdict in result.verdicts[kk].items():
            rows = [r for r in result.rows if r.k == kk and r.condition.family == family]
            if not rows:
                continue
            note = "no context: not corrected, no verdict" if kk == 0 else \
                f"model - this at {100 * rows[0].verdict_level:.4g}% (Bonferroni over {len(rows)})"
            out.print(f"k = {kk}, {family}: {items} items ({result.drawn[kk]} drawn)")
            out.print(f"  {100 * result.level:g}% intervals; {note}")
            for r in rows:
                out.print(f"  {r.label}")
                out.print(f"    {result.scorers[0]:<14} {ci(r.accuracy[0], r.accuracy_ci[0])}   "
                          f"÷ base {ci(r.normalized, r.normalized_ci)}")
                for scorer, a, a_ci, d, d_ci in zip(result.scorers[1:], r.accuracy[1:], r.accuracy_ci[1:],
                                                    r.difference, r.difference_ci):
                    out.print(f"    {scorer:<14} {ci(a, a_ci)}   model - this {ci(d, d_ci, '+')}")
                if kk > 0:
                    out.print(f"    {r.verdict}; corrected against {r.best_control}: {ci(r.corrected, r.corrected_ci)}")
            counts = ", ".join(f"{sum(r.verdict == v for r in rows)} {v}" for v in sorted({r.verdict for r in rows}))
            out.print(f"verdict, k = {kk}, {family}: {family_verdict} (of {len(rows)} conditions: {counts})")


@command
def ablate(spec: Spec,
           mode: Annotated[str, typer.Option(help="uniform, cluster, none, or model (the identity)")] = "uniform",
           layer: Annotated[list[int] | None, typer.Option(help="Layer to ablate; repeat for several (default: all).")] = None,
           language: Annotated[str | None, typer.Option(help="Language of the eval documents and probes.")] = None,
           docs: Annotated[int, typer.Option("--docs", min=1, help="Eval documents.")] = 256,
           max_new: MaxNew = 6, min_prob: MinProb = 1e-4, json_out: JsonOut = None):
    """Replace attention and report the change in eval loss and KL(original || ablated) over paths."""
    from pathprob.analysis.ablate import ablate as run_ablation

    result = run_ablation(pp.open_model(spec), mode, layers=layer or None, language=language, n_docs=docs,
                          max_new=max_new, min_prob=min_prob)
    if emit_json(json_out, result.to_dict()) and str(json_out) == "-":
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
def compare(
    spec: Spec,
    prompt: Annotated[list[str], typer.Option("--prompt", help="Prompt text; repeat for several (at least one).")],
    max_new: MaxNew,
    truth: Annotated[str | None, typer.Option(help="Second model spec to compare with (e.g. truth:concepts).")] = None,
    regex: Annotated[str | None, typer.Option("--set", help="Full-match regex: report the set's mass.")] = None,
    method: Annotated[str, typer.Option(help="auto, exact or mc")] = "auto",
    min_prob: MinProb = 0.0, n: Samples = 4096, seed: Seed = 0,
    json_out: JsonOut = None,
    plot: Annotated[Path | None, plot_option("Write the coverage figure (PNG + JSON).")] = None,
):
    """Compare the path distributions after several prompts: entropy, supports, top paths, JS/KL, narrowing."""
    from pathprob.analysis.compare import LEVELS, format_count, format_support
    from pathprob.analysis.compare import compare as compare_prompts

    lm = pp.open_model(spec)
    result = compare_prompts(lm, prompt, max_new, pathset=None if regex is None else pp.Regex(regex), method=method,
                             truth=None if truth is None else pp.open_model(truth), min_prob=min_prob, n=n, key=seed)
    if plot is not None:
        from pathprob.plots.paths import coverage_curves

        curves = {f"{i}: {row.prompt[-24:]!r} ({row.method})": row.probs for i, row in enumerate(result.rows)}
        err.print(f"wrote {coverage_curves(curves, plot)}")
    if emit_json(json_out, result.to_dict()) and str(json_out) == "-":
        return
    for title, rows in (("model", result.rows), ("truth", result.truth_rows)):
        if rows is None:
            continue
        table = Table("#", "prompt", "H (nats)", "exp(H)", "support (p > 0)", *(f"n{round(100 * q)}" for q in LEVELS),
                      "top path", "set mass", "method", title=f"{title}: paths of up to {max_new} tokens; method "
                      "'bounded' = enumerated with pruning, some numbers are proven bounds", title_justify="left")
        for i, row in enumerate(rows):
            top = f"{row.top[0][0]!r} {row.top[0][1]:.3g}" if row.top else ""
            table.add_row(str(i), repr(row.prompt), format_estimate(row.entropy), f"{row.effective_paths[0]:.4g}",
                          format_support(row.support), *(format_count(row.coverage[str(q)]) for q in LEVELS), top,
                          "" if row.set_mass is None else format_estimate(row.set_mass), row.method)
        out.print(table)
    if result.pairs:
        levels = list(result.pairs[0].narrowing)
        table = Table("a", "b", "JS (nats)", "KL(a||b)", "KL(b||a)", *(f"P_b(top-{p} of a)" for p in levels),
                      "P_b(outside a's support)", title="pairs (a = shorter prompt)", title_justify="left")
        for pair in result.pairs:
            table.add_row(str(pair.a), str(pair.b), format_estimate(pair.js), format_estimate(pair.kl_ab),
                          format_estimate(pair.kl_ba),
                          *("n/a" if e is None else format_estimate(e) for e in pair.narrowing.values()),
                          "n/a" if pair.outside_support is None else format_estimate(pair.outside_support))
        out.print(table)
    if result.kl_truth_model is not None:
        out.print("KL(truth || model) per prompt: " + ", ".join(format_estimate(e) for e in result.kl_truth_model))
        out.print("model's mass outside the truth's support (paths the truth gives p = 0) per prompt: "
                  + ", ".join("n/a" if e is None else format_estimate(e) for e in result.outside_truth))
    reasons = {row.reason for row in result.rows if row.reason}
    for reason in reasons:
        out.print(f"Monte Carlo because: {reason}")
    estimates = [e for row in (*result.rows, *(result.truth_rows or ())) for e in (row.entropy, row.set_mass)]
    estimates += [e for pair in result.pairs for e in (pair.js, pair.kl_ab, pair.kl_ba, *pair.narrowing.values(),
                                                         pair.outside_support)]
    for reason in dict.fromkeys(e.reason for e in estimates if e is not None and not e.reliable):
        warn(f"an estimate marked (unreliable): {reason}")


@command
def narrow(
    spec: Spec,
    language: Annotated[str, typer.Option(help="A language with latent concepts (concepts).")] = "concepts",
    n_prompts: Annotated[int, typer.Option("--n-prompts", min=1,
                                           help="Prompts (documents) per point; intervals need at least 3.")] = 64,
    k: Annotated[str, typer.Option("--k", help="Numbers of in-context examples, comma-separated.")] = "0,1,2,4,8",
    method: Annotated[str, typer.Option(help="auto, exact or mc")] = "auto",
    min_prob: MinProb = 1e-4, seed: Seed = 0, json_out: JsonOut = None,
    plot: Annotated[Path | None, plot_option("Write the narrowing figure (PNG + JSON).")] = None,
):
    """The in-context narrowing curve: entropy, supports and their inclusion vs examples, model vs truth."""
    from pathprob.analysis.narrowing import narrowing_curve

    ks = int_list(k, "--k")
    lm = pp.open_model(spec)
    curve = narrowing_curve(lm, pp.get_language(language), ks, n_prompts, key=seed, method=method, min_prob=min_prob)
    if plot is not None:
        from pathprob.plots.paths import narrowing_curve as draw

        err.print(f"wrote {draw(curve.to_dict(), plot)}")
    if emit_json(json_out, curve.to_dict()) and str(json_out) == "-":
        return
    measures = curve.measures
    table = Table("k", "model H (nats)", "truth H (nats)", "P(true concept)", "method (model/truth)",
                  title=f"narrowing over {curve.n_prompts} prompts; intervals: {curve.interval}", title_justify="left")
    for i, kk in enumerate(curve.k):
        model = measures["model"]["entropy"].format(i) if "model" in measures else ""
        methods = "/".join(measures[who]["entropy"].method[i] for who in ("model", "truth") if who in measures)
        table.add_row(str(kk), model, measures["truth"]["entropy"].format(i),
                      measures["truth"]["posterior"].format(i), methods)
    out.print(table)
    table = Table("k", "", "support (p > 0)", "exp(H)", "n50", "n90", "n99", "P_k(top-90% set of previous k)",
                  "P_k(outside support)", title=f"supports over {curve.n_prompts} prompts ({curve.n_paths:,} paths "
                  "possible); outside: the truth's previous support (truth), the truth's support at k (model)",
                  title_justify="left")
    for i, kk in enumerate(curve.k):
        previous = f"_of_k{curve.k[i - 1]}" if i else None
        for who, m in measures.items():
            outside = m.get("outside_truth") if who == "model" else m.get(f"outside_support{previous}")
            inside = m.get(f"in_top90{previous}") if previous else None
            numbers = [m[name].format(i) for name in ("support", "effective_paths", "top_0.5", "top_0.9", "top_0.99")]
            table.add_row(str(kk), who, *numbers, *("n/a" if x is None else x.format(i) for x in (inside, outside)))
    out.print(table)
