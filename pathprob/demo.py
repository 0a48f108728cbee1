"""``pathprob demo``: the main job on the embedded defaults (shipped checkpoints, no training)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

import pathprob as pp
from pathprob.errors import CheckpointError

SHOTS = (0, 2, 6)


def find_checkpoints(explicit: Path | None = None) -> Path:
    """The directory holding the shipped runs: --checkpoints, $PATHPROB_CHECKPOINTS, ./checkpoints, or the repo's."""
    candidates = [explicit] if explicit is not None else [
        Path(p) for p in (os.environ.get("PATHPROB_CHECKPOINTS"), "checkpoints") if p
    ] + [Path(pp.__file__).resolve().parent.parent / "checkpoints"]
    for path in candidates:
        if path is not None and (path / "concepts").is_dir():
            return path
    raise CheckpointError(
        f"no shipped checkpoints found (looked in {', '.join(str(p) for p in candidates)}); "
        "run from the repository root or pass --checkpoints DIR"
    )


def run_demo(console: Console, checkpoints: Path | None = None, *, top: int = 10) -> dict:
    """In-context narrowing on ``concepts``: the model's most probable next examples vs the truth's."""
    root = find_checkpoints(checkpoints)
    model = pp.open_model(root / "concepts")
    language = pp.get_language("concepts")
    truth = language.truth()
    max_new = language.example_len + 1  # the next example and its separator
    summary = {"checkpoints": str(root), "prompts": []}
    for shots in SHOTS:
        prompt = language.prompts(shots, n=1, seed=1)[0]
        table = pp.top_k(model, prompt, top, max_new)
        truth_logp = pp.score(truth, prompt, [row[:n].tolist() for row, n in zip(table.tokens, table.lengths)])
        h_model = pp.entropy(model, prompt, language.example_len, min_prob=1e-7)
        h_truth = pp.entropy(truth, prompt, language.example_len)
        out = Table(title=f"{shots} in-context examples: {prompt!r}", title_justify="left")
        out.add_column("#", justify="right")
        out.add_column("next example")
        out.add_column("p model", justify="right")
        out.add_column("p truth", justify="right")
        for i, (text, lp, tlp) in enumerate(zip(table.texts(with_eos=True), table.logp, truth_logp), 1):
            out.add_row(str(i), text, f"{math.exp(lp):.4f}", f"{math.exp(tlp):.4f}")
        console.print(out)
        # soft_wrap: one logical line whatever the terminal width (no hard breaks in pipes or logs).
        console.print(
            f"  top {top} cover {math.exp(table.log_covered):.3f} of the model's mass and "
            f"{sum(math.exp(t) for t in truth_logp):.3f} of the truth's; entropy of the next example: "
            f"model {h_model.value:.3f} nats (bounds [{h_model.lower:.3f}, {h_model.upper:.3f}]), "
            f"truth {h_truth.value:.3f} nats\n",
            soft_wrap=True,
        )
        summary["prompts"].append({"shots": shots, "prompt": prompt, "top": table.to_dict(),
                                   "truth_logp": truth_logp.tolist(), "entropy_model": h_model.to_dict(),
                                   "entropy_truth": h_truth.to_dict()})
    return summary
