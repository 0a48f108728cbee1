"""The training-dynamics panel: set mass, path entropy vs the truth's, KL(truth || model), tracked paths."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pathprob.plots import style

_TINY = 1e-12  # floor for log axes (a mass or KL of exactly 0 still shows)


def _label(prompt: str, i: int) -> str:
    shown = prompt if len(prompt) <= 22 else "…" + prompt[-21:]
    return f"#{i} {shown!r}"


def dynamics_figure_data(d: dict) -> dict:
    """The plain data behind the panel (JSON-able), from ``Dynamics.to_dict()``."""
    steps = [r["step"] for r in d["records"]]
    prompts = d["setup"]["spec"]["prompts"]
    truth = d["setup"].get("truth")
    series = []
    for i, prompt in enumerate(prompts):
        rows = [r["probe"]["prompts"][i] for r in d["records"]]
        entry = {
            "prompt": prompt,
            "entropy": [row["entropy"] for row in rows],
            "entropy_lower": [row["entropy_lower"] for row in rows],
            "entropy_upper": [row["entropy_upper"] for row in rows],
            "mass": {name: [row["mass"][name] for row in rows] for name in rows[0]["mass"]},
            "kl": [row["kl"] for row in rows] if "kl" in rows[0] else None,
            "tracked_p": ([[math.exp(lp) for lp in row["tracked_logp"]] for row in rows]
                          if "tracked_logp" in rows[0] else None),
        }
        if truth is not None:
            entry["truth"] = {"entropy": truth[i]["entropy"], "mass": truth[i]["mass"],
                              "tracked": truth[i]["tracked"], "tracked_p": [math.exp(lp) for lp in truth[i]["tracked_logp"]]}
        series.append(entry)
    return {"run": d["run"], "source": d["source"], "steps": steps, "max_new": d["setup"]["spec"]["max_new"],
            "series": series}


def _mass_floor(series: list) -> float:
    """The bottom of the log mass axis: a tenth of the smallest positive bound or truth mass (``_TINY`` if none)."""
    values = [x for s in series for bounds in s["mass"].values() for b in bounds if b is not None for x in b]
    values += [x for s in series for m in s.get("truth", {}).get("mass", {}).values() if m is not None for x in m]
    positive = [x for x in values if x > 0]
    return max(_TINY, 0.1 * min(positive)) if positive else _TINY


def plot_dynamics(d: dict, path: str | Path, *, fan_prompt: int = -1) -> Path:
    """Write the 2x2 panel as ``path`` (PNG) and its data as the ``.json`` beside it; returns the PNG path.

    ``d`` is ``Dynamics.to_dict()``. Panels: the mass of each path set (proven bounds, log
    scale); the path entropy with its bounds against the truth's (dashed); KL(truth || model)
    over paths (log scale); the tracked paths' probabilities over steps for prompt
    ``fan_prompt`` (log scale; the truth's probabilities dashed in the same colour).
    """
    data = dynamics_figure_data(d)
    steps = np.asarray(data["steps"])
    fig, axes = style.figure(nrows=2, ncols=2, size=(11.5, 8.0))
    ax_mass, ax_entropy, ax_kl, ax_fan = axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]
    colors = [f"C{i % 10}" for i in range(len(data["series"]))]
    max_new = data["max_new"]

    floor = _mass_floor(data["series"])
    any_mass = False
    for i, (s, color) in enumerate(zip(data["series"], colors)):
        for j, (name, bounds) in enumerate(s["mass"].items()):
            if all(b is None for b in bounds):
                continue
            lower = np.asarray([np.nan if b is None else b[0] for b in bounds])
            upper = np.asarray([np.nan if b is None else max(b[1], floor) for b in bounds])
            style_ = ("-", "--", ":")[j % 3]
            # Both proven bounds, no midpoint; a lower bound of 0 has no place on a log axis: the band runs
            # down to the axis and the lower line stops.
            ax_mass.plot(steps, np.where(lower > 0, lower, np.nan), style_, color=color,
                         label=f"{_label(s['prompt'], i)} {name}")
            ax_mass.plot(steps, upper, style_, color=color, linewidth=0.8)
            ax_mass.fill_between(steps, np.maximum(lower, floor), upper, color=color, alpha=0.15, linewidth=0)
            truth_mass = s.get("truth", {}).get("mass", {}).get(name)
            if truth_mass is not None:
                ax_mass.axhline(max(truth_mass[0], floor), color=color, linestyle=style_ if j else "--", linewidth=1)
            any_mass = True
    ax_mass.set_title("mass of the path set (band: proven bounds; dashed: truth)")
    ax_mass.set_xlabel("training step")
    ax_mass.set_ylabel("probability")
    if any_mass:
        ax_mass.set_yscale("log")
        ax_mass.set_ylim(bottom=floor)
        ax_mass.legend(fontsize=7)
    else:
        ax_mass.text(0.5, 0.5, "no path set probed", ha="center", va="center", transform=ax_mass.transAxes)

    for i, (s, color) in enumerate(zip(data["series"], colors)):  # both proven bounds, no midpoint
        ax_entropy.plot(steps, s["entropy_lower"], color=color, label=_label(s["prompt"], i))
        ax_entropy.plot(steps, s["entropy_upper"], color=color, linewidth=0.8)
        ax_entropy.fill_between(steps, s["entropy_lower"], s["entropy_upper"], color=color, alpha=0.15, linewidth=0)
        if "truth" in s:
            ax_entropy.axhline(s["truth"]["entropy"], color=color, linestyle="--", linewidth=1)
    ax_entropy.set_title(f"path entropy ({max_new} tokens; band: proven bounds; dashed: truth)")
    ax_entropy.set_xlabel("training step")
    ax_entropy.set_ylabel("entropy (nats)")
    ax_entropy.legend(fontsize=7)

    has_kl = any(s["kl"] is not None for s in data["series"])
    for i, (s, color) in enumerate(zip(data["series"], colors)):
        if s["kl"] is not None:
            ax_kl.plot(steps, np.maximum(s["kl"], _TINY), color=color, label=_label(s["prompt"], i))
    ax_kl.set_title("KL(truth || model) over paths")
    ax_kl.set_xlabel("training step")
    ax_kl.set_ylabel("KL (nats)")
    if has_kl:
        ax_kl.set_yscale("log")
        ax_kl.legend(fontsize=7)
    else:
        ax_kl.text(0.5, 0.5, "no exact truth", ha="center", va="center", transform=ax_kl.transAxes)

    fan = data["series"][fan_prompt]
    if fan["tracked_p"] is not None:
        tracked_p = np.asarray(fan["tracked_p"])  # [steps, tracked]
        for k in range(tracked_p.shape[1]):
            color = f"C{k % 10}"
            text = fan["truth"]["tracked"][k]
            ax_fan.plot(steps, np.maximum(tracked_p[:, k], _TINY), color=color, label=repr(text))
            ax_fan.axhline(fan["truth"]["tracked_p"][k], color=color, linestyle="--", linewidth=0.8)
        ax_fan.set_yscale("log")
        ax_fan.legend(fontsize=6, ncol=2)
    else:
        ax_fan.text(0.5, 0.5, "no tracked paths", ha="center", va="center", transform=ax_fan.transAxes)
    index = fan_prompt % len(data["series"])
    ax_fan.set_title(f"tracked paths after {_label(fan['prompt'], index)} (dashed: truth)", fontsize=9)
    ax_fan.set_xlabel("training step")
    ax_fan.set_ylabel("path probability")
    fig.suptitle(f"training dynamics of the path distribution: {data['run']} ({data['source']})")
    return style.save(fig, path, data)
