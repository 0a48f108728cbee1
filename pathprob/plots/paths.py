"""Figures of path distributions: the prefix trie of the top paths, coverage, narrowing, estimator convergence.

Every function takes a result or plain JSON-able data, draws with ``style.figure()``
and writes ``path`` (PNG) and the JSON of the data behind it with ``style.save``;
it returns the PNG's path. The JSON holds what the figure shows, including the
computed geometry (e.g. the trie layout and its edge widths), so it can be checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pathprob.analysis.narrowing import MIN_PROMPTS
from pathprob.paths.results import PathTable
from pathprob.plots import style

MAX_EDGE_WIDTH = 14.0  # points: the width of an edge that carries all the drawn mass
GUIDES = (0.5, 0.9, 0.99)


# --- the prefix trie -------------------------------------------------------------------------------


def tree_layout(table: PathTable, top: int = 15) -> dict:
    """The prefix trie of ``table``'s ``top`` most probable paths, laid out left to right.

    Nodes are prefixes (the root is the empty prefix at depth 0); a node's ``mass``
    is the probability of its prefix, summed over *every* path the table lists (so
    it is the exact prefix mass when the table's remainder is 0, and a lower bound
    otherwise), not only over the drawn paths. Leaves are the drawn paths, one per
    row, in depth-first order with heavier subtrees first (so edges never cross and
    the most probable branch is on top); ``rank`` is a leaf's place among the drawn
    paths (1 = most probable). An inner node sits at the mean height of its children.
    Edge ``linewidth`` = ``scale`` · the child's prefix mass, with ``scale`` =
    MAX_EDGE_WIDTH / the largest edge mass: widths are proportional to prefix masses.
    """
    shown = table.top(top)
    drawn = [tuple(row[:n].tolist()) for row, n in zip(shown.tokens, shown.lengths)]
    prefixes = {path[:d] for path in drawn for d in range(len(path) + 1)}
    mass = dict.fromkeys(prefixes, 0.0)
    for row, n, lp in zip(table.tokens, table.lengths, table.logp):  # table order: fixed, most probable first
        path, p = tuple(row[:n].tolist()), math.exp(float(lp))
        for d in range(n + 1):
            if path[:d] in mass:
                mass[path[:d]] += p
    # y: leaves one per row in depth-first order, heavier children first; inner nodes at the mean of theirs.
    children: dict[tuple, list[tuple]] = {prefix: [] for prefix in prefixes}
    for prefix in sorted(prefixes, key=lambda prefix: (len(prefix), -mass[prefix], prefix)):
        if prefix:
            children[prefix[:-1]].append(prefix)
    leaves = set(drawn)
    y: dict[tuple, float] = {}

    def place(prefix: tuple) -> float:
        if prefix in leaves:
            y[prefix] = float(sum(1 for placed in y if placed in leaves))
        else:
            y[prefix] = float(np.mean([place(child) for child in children[prefix]]))
        return y[prefix]

    place(())
    order = sorted(prefixes, key=lambda prefix: (len(prefix), y[prefix]))
    index = {prefix: i for i, prefix in enumerate(order)}
    tok, eos_id = table.tokenizer, table.tokenizer.eos_id
    leaf_p = {path: math.exp(float(lp)) for path, lp in zip(drawn, shown.logp)}
    rank = {path: i for i, path in enumerate(drawn, 1)}
    nodes = [{"prefix": list(prefix), "depth": len(prefix), "y": y[prefix], "mass": mass[prefix],
              "leaf": prefix in leaves, "p": leaf_p.get(prefix), "rank": rank.get(prefix),
              "eos": bool(prefix) and prefix[-1] == eos_id}
             for prefix in order]
    edge_mass = [mass[prefix] for prefix in order if prefix]
    scale = MAX_EDGE_WIDTH / max(edge_mass) if edge_mass and max(edge_mass) > 0 else 0.0
    edges = [{"parent": index[prefix[:-1]], "child": index[prefix], "token": prefix[-1],
              "label": tok.decode([prefix[-1]]), "mass": mass[prefix], "linewidth": scale * mass[prefix]}
             for prefix in order if prefix]
    return {"nodes": nodes, "edges": edges, "scale": scale, "drawn_paths": len(drawn),
            "drawn_mass": float(np.sum(shown.probs)), "listed_mass": math.exp(table.log_covered),
            "remaining": table.remaining,
            # Exact when nothing was pruned (not "remaining == 0": float32 rounding leaves ~1e-7 either way).
            "prefix_mass_exact": table.log_remaining == -math.inf}


def path_tree(table: PathTable, path: str | Path, *, top: int = 15, title: str | None = None,
              prompt: str | None = None) -> Path:
    """The prefix trie of the ``top`` most probable paths, by depth left to right (see ``tree_layout``).

    Edge width ∝ prefix mass; edges are labelled with their token, inner nodes with
    their prefix mass and leaves with the path probability (``$`` marks EOS).
    """
    layout = tree_layout(table, top)
    nodes, edges = layout["nodes"], layout["edges"]
    depth = max((n["depth"] for n in nodes), default=0)
    leaves = max(layout["drawn_paths"], 1)
    fig, ax = style.figure(size=(2.0 + 1.25 * depth, 1.2 + 0.36 * leaves))
    for edge in edges:
        a, b = nodes[edge["parent"]], nodes[edge["child"]]
        xs, ys = (a["depth"], b["depth"]), (a["y"], b["y"])
        ax.plot(xs, ys, color="0.8", lw=0.6, zorder=1, solid_capstyle="butt")
        ax.plot(xs, ys, color="tab:blue", alpha=0.55, lw=edge["linewidth"], zorder=2, solid_capstyle="butt")
        ax.text(0.5 * (xs[0] + xs[1]), 0.5 * (ys[0] + ys[1]) - 0.12, edge["label"], ha="center", va="bottom",
                fontsize=9, family="monospace", zorder=4,
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    for node in nodes:
        ax.plot(node["depth"], node["y"], "o", ms=3, color="0.2", zorder=3)
        if node["leaf"]:
            ax.text(node["depth"] + 0.12, node["y"], f"{node['p']:.3g}  (#{node['rank']})", va="center", fontsize=8,
                    zorder=4)
        elif node["depth"] > 0:
            ax.text(node["depth"], node["y"] + 0.16, f"{node['mass']:.2g}", ha="center", va="top", fontsize=7,
                    color="0.3", zorder=4,
                    bbox={"boxstyle": "round,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.7})
    ax.set_xlim(-0.3, depth + 1.2)
    ax.set_ylim(leaves - 0.4, -0.6)  # row 0 on top
    ax.set_xlabel("depth (tokens after the prompt)")
    ax.set_yticks([])
    ax.grid(False)
    exact = "exact" if layout["prefix_mass_exact"] else f"lower bounds, remainder {layout['remaining']:.2g}"
    ax.set_title(title or f"top {layout['drawn_paths']} paths: {layout['drawn_mass']:.3g} of the probability; "
                          f"edge width ∝ prefix probability ({exact})", fontsize=9)
    data = {"figure": "path_tree", "prompt": prompt, "top": top, **layout, "paths": table.top(top).to_dict()["paths"]}
    return style.save(fig, path, data)


# --- coverage --------------------------------------------------------------------------------------


def paths_needed(probs_desc: Sequence[float], level: float) -> int | None:
    """How many of the most probable paths it takes to cover ``level`` of the mass (None: not reached)."""
    cumulative = np.cumsum(np.asarray(probs_desc, np.float64))
    reached = np.nonzero(cumulative >= level)[0]
    return int(reached[0]) + 1 if reached.size else None


def coverage_curves(curves: Mapping[str, Sequence[float]], path: str | Path, *, title: str | None = None) -> Path:
    """Cumulative probability of the n most probable paths against n (log x), one line per label.

    ``curves`` maps a label (e.g. a prompt) to path probabilities sorted in
    decreasing order. Guides at 0.5, 0.9 and 0.99; the JSON also says how many
    paths reach each guide.
    """
    fig, ax = style.figure()
    data = {"figure": "coverage_curves", "guides": list(GUIDES), "curves": {}}
    for label, probs in curves.items():
        probs = np.asarray(probs, np.float64)
        if probs.size and np.any(np.diff(probs) > 0):
            raise ValueError(f"coverage_curves: the probabilities of {label!r} are not sorted in decreasing order")
        cumulative = np.cumsum(probs)
        ax.step(np.arange(1, probs.size + 1), cumulative, where="post", label=label)
        data["curves"][label] = {"probs": probs.tolist(), "cumulative": cumulative.tolist(),
                                 "paths_needed": {str(g): paths_needed(probs, g) for g in GUIDES}}
    for guide in GUIDES:
        ax.axhline(guide, color="0.5", lw=0.8, ls="--")
        ax.text(1.0, guide, f" {guide:g}", va="bottom", ha="left", fontsize=8, color="0.4")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("number of most probable paths (log scale)")
    ax.set_ylabel("cumulative probability")
    ax.set_title(title or "How many paths carry the mass")
    if curves:
        ax.legend(fontsize=7, loc="lower right")
    return style.save(fig, path, data)


# --- narrowing -------------------------------------------------------------------------------------

# (panel, [(who, measure name, label, line style)], y label, log y): what the narrowing figure draws, top to bottom.
NARROWING_PANELS = (
    ("entropy", [("model", "entropy", "model", "-"), ("truth", "entropy", "truth", "-")],
     "entropy of the next\nexample (nats)", False),
    ("top_0.9", [("model", "top_0.9", "model: paths holding 90%", "-"),
                 ("truth", "top_0.9", "truth: paths holding 90%", "-"),
                 ("truth", "support", "truth: support (p > 0)", "--")],
     "number of paths", True),
    ("posterior", [("truth", "posterior", "truth", "-")], "posterior of the\ntrue concept", False),
)
NARROWING_STYLE = {"model": ("tab:blue", "o"), "truth": ("tab:green", "s")}


def measure_geometry(k: Sequence[float], measure: Mapping) -> dict:
    """What the narrowing figure draws for one measure (``Measure.to_dict()`` of ``analysis/narrowing.py``).

    Lists over the measured k (method not "n/a"), so every drawn number holds:
    ``points`` (k, value) where the value is exact or a Monte-Carlo estimate (a marker);
    ``ranges`` (k, lower, upper) where it is only bounded: the proven range of the mean over
    prompts, drawn as a bar with no midpoint; ``band`` (k, lower, upper) only where an
    interval exists, clipped to ``range``; ``no_interval``: the measured k without one.
    """
    low, high = measure["range"]
    band, points, ranges, no_interval = [], [], [], []
    for i, x in enumerate(k):
        method = measure["method"][i]
        if method == "n/a":
            continue
        lower, upper = _nan(measure["lower"][i]), _nan(measure["upper"][i])
        if math.isnan(lower) or math.isnan(upper):
            no_interval.append(x)
        else:
            band.append([x, min(max(lower, low), high), min(max(upper, low), high)])
        if method == "bounded":
            ranges.append([x, measure["proven_lower"][i], measure["proven_upper"][i]])
        else:
            points.append([x, measure["mean"][i], method])
    return {"band": band, "points": points, "ranges": ranges, "no_interval": no_interval, "range": [low, high]}


def narrowing_curve(data: Mapping, path: str | Path, *, title: str | None = None) -> Path:
    """The narrowing curve (``NarrowingCurve.to_dict()``) against the number of in-context examples, three panels.

    Top: the path entropy of the next example, model vs truth; middle (log y): how many
    paths hold 90% of the mass, and the truth's support; bottom: the truth's posterior of
    the true concept. Per measure (``measure_geometry``): exact values and Monte-Carlo
    estimates as markers on a line (hollow for Monte Carlo), bounded values as their proven
    range, the interval over prompts as a band clipped to the quantity's range, and where
    there is no interval (fewer than 3 prompts) no band and a note in the title. The JSON
    holds the data and, per panel, the drawn geometry.
    """
    measures = data.get("measures", {})
    if "k" not in data or "entropy" not in measures.get("truth", {}) or "posterior" not in measures["truth"]:
        raise ValueError("narrowing_curve: data needs k and measures (NarrowingCurve.to_dict()) with the truth's "
                         "entropy and posterior")
    k = [float(x) for x in data["k"]]
    fig, axes = style.figure(nrows=len(NARROWING_PANELS), size=(6.4, 8.2), sharex=True, height_ratios=(2, 2, 1))
    drawn, missing = {}, False
    for ax, (panel, series, ylabel, log) in zip(axes, NARROWING_PANELS):
        drawn[panel] = {}
        for who, name, label, line in series:
            if name not in measures.get(who, {}):
                continue
            geometry = measure_geometry(k, measures[who][name])
            _draw_measure(ax, geometry, *NARROWING_STYLE[who], label=label, line=line)
            drawn[panel][f"{who}/{name}"] = geometry
            missing |= bool(geometry["no_interval"])
        ax.set_ylabel(ylabel)
        if not drawn[panel]:
            ax.text(0.5, 0.5, "not measured (Monte Carlo)", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
            continue
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    axes[-1].set_ylim(0, 1.02)
    axes[-1].set_xlabel("number of in-context examples")
    axes[-1].set_xticks(k)
    n_prompts = data.get("n_prompts")
    if missing and n_prompts is not None and n_prompts < MIN_PROMPTS:
        intervals = f"no interval: {n_prompts} prompts, fewer than {MIN_PROMPTS}"
    elif missing:
        intervals = "no band: no interval there"
    else:
        intervals = f"bands: {100 * data.get('level', 0.95):g}% intervals over {n_prompts} prompts"
    bars = any(g["ranges"] for panel in drawn.values() for g in panel.values())
    axes[0].set_title((title or "In-context narrowing of the next example's paths") +
                      f"\nmean over prompts; {'bars: proven ranges; ' if bars else ''}{intervals}", fontsize=10)
    return style.save(fig, path, {"figure": "narrowing_curve", "drawn": drawn,
                                  **{key: _plain(value) for key, value in data.items()}})


def _draw_measure(ax, geometry: dict, color: str, marker: str, *, label: str, line: str) -> None:
    """One measure on ``ax``: the band (where an interval exists), a line through the proven values (both
    ends of a bounded range), markers on exact and Monte-Carlo points, bars over bounded ranges."""
    rows = sorted([(x, v, v) for x, v, _ in geometry["points"]] + [tuple(r) for r in geometry["ranges"]])
    if not rows:
        return
    x, lower, upper = (np.asarray(column, np.float64) for column in zip(*rows))
    if geometry["band"]:  # NaN where a measured k has no interval: the band stops there
        band = {bx: (blo, bhi) for bx, blo, bhi in geometry["band"]}
        blo, bhi = (np.array([band.get(bx, (math.nan, math.nan))[j] for bx in x]) for j in (0, 1))
        ax.fill_between(x, blo, bhi, color=color, alpha=0.18, lw=0)
    ax.plot(x, lower, line, color=color, lw=1.2, label=label)
    if np.any(upper > lower):
        ax.plot(x, upper, line, color=color, lw=1.2)
    for px, value, method in geometry["points"]:
        ax.plot(px, value, marker, color=color, ms=5, mfc="white" if method == "mc" else color)
    if geometry["ranges"]:
        rx, rlo, rhi = zip(*geometry["ranges"])
        ax.vlines(rx, rlo, rhi, color=color, lw=4, alpha=0.7)


def _nan(x) -> float:
    """JSON null (no value) as NaN."""
    return math.nan if x is None else float(x)


# --- estimator convergence -------------------------------------------------------------------------


MIN_SAMPLE_SIZES = 3  # fewest distinct sample sizes for a convergence figure (fewer show no trend)


def convergence(data: Mapping, path: str | Path, *, title: str | None = None) -> Path:
    """Monte-Carlo estimates and their intervals against the number of samples (log x), vs the exact value.

    ``data`` (what ``pathprob.analysis.convergence.convergence`` returns):
    ``exact`` {value, lower, upper}, ``series`` {method: {n, requested_n, value, lower, upper}}
    (lists over increasing n), optional ``prompt``, ``pathset``, ``level``. Needs
    ``MIN_SAMPLE_SIZES`` distinct requested n (``ValueError`` otherwise: one or two points
    show no convergence). The x ticks are the requested n; methods are spread by a few
    percent around them so their bars do not hide each other (swor: at its distinct paths).
    """
    requested = sorted({n for s in data["series"].values() for n in s.get("requested_n", s["n"])})
    if len(requested) < MIN_SAMPLE_SIZES:
        raise ValueError(f"convergence: {len(requested)} sample size(s) {requested}; a convergence figure needs "
                         f"at least {MIN_SAMPLE_SIZES}")
    fig, ax = style.figure(size=(6.8, 4.4))
    exact = data["exact"]
    ax.axhline(exact["value"], color="black", lw=1.2, label=f"exact {exact['value']:.6g}")
    if exact["upper"] > exact["lower"]:
        ax.axhspan(exact["lower"], exact["upper"], color="0.7", alpha=0.3, label="exact: proven bounds")
    methods = list(data["series"])
    for i, method in enumerate(methods):
        s = data["series"][method]
        n = np.asarray(s["n"], np.float64) * 1.06 ** (i - (len(methods) - 1) / 2)
        value, lower, upper = (np.asarray([math.nan if x is None else x for x in s[key]], np.float64)
                               for key in ("value", "lower", "upper"))
        ax.errorbar(n, value, yerr=[value - lower, upper - value], marker="o", ms=4, capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xticks(requested, [str(n) for n in requested])
    ax.minorticks_off()
    ax.set_xlabel("samples n (log scale; swor: distinct paths)")
    ax.set_ylabel("P(set) (probability)")
    what = f" of {data['pathset']}" if data.get("pathset") else ""
    level = f"{100 * data['level']:g}%" if data.get("level") else "their"
    ax.set_title(title or f"Estimator convergence: P(set){what} with {level} intervals", fontsize=10)
    ax.legend(fontsize=8)
    return style.save(fig, path, {"figure": "convergence", **{key: _plain(value) for key, value in data.items()}})


def _plain(value):
    """JSON-able copies of numpy arrays and scalars (lists, floats); other values unchanged."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
