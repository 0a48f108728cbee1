"""Shared figure conventions: the Agg backend, readable defaults, and atomic PNG + JSON output."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: figures are files

import matplotlib.pyplot as plt

from pathprob.files import write_atomic, write_json

RC = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def figure(*, nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.2), **kwargs):
    """A new figure and its axes under the project's defaults (constrained layout: no overlapping labels)."""
    with plt.rc_context(RC):
        return plt.subplots(nrows, ncols, figsize=size, **{"layout": "constrained", **kwargs})


def save(fig, path: str | Path, data: dict) -> Path:
    """Write ``fig`` as ``path`` (PNG) and ``data`` as the same name with ``.json``; both atomically.

    Returns the PNG's path. The figure is closed (figures are not kept alive in long runs).
    """
    path = Path(path)
    buffer = io.BytesIO()
    with plt.rc_context(RC):
        fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    write_json(path.with_suffix(".json"), data, indent=1)
    return write_atomic(path, buffer.getvalue())
