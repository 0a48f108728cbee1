"""A self-contained HTML page: text, tables, figures (embedded and beside the page), exact commands.

``Report`` writes one file, ``report.html``, with inline CSS and every figure embedded as a
``data:`` URI; each figure's PNG and the JSON behind it also sit beside the page, linked by
relative name. Nothing refers to the network.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import platform
from collections.abc import Sequence
from pathlib import Path

from pathprob.files import write_atomic
from pathprob.paths.results import NO_VALUE

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre, td.mono { font-family: Menlo, Consolas, monospace; font-size: .88em; }
pre { background: #f6f6f6; padding: .7em; overflow-x: auto; white-space: pre-wrap; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; }
.small { font-size: .85em; color: #666; }
"""


def versions() -> dict:
    """The versions a result depends on, and when and where it was made."""
    import flax
    import jax
    import numpy

    import pathprob

    return {"pathprob": pathprob.__version__, "jax": jax.__version__, "flax": flax.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


class Report:
    """An HTML page built block by block; ``write(out_dir)`` writes it as ``out_dir/report.html``.

    All text is escaped. Figures are PNG files (with the JSON of their data beside
    them, as ``pathprob.plots.style.save`` writes them); a figure outside ``out_dir``
    is copied into it.
    """

    def __init__(self, title: str):
        self.title = title
        self._blocks: list[tuple[str, object]] = []

    def add_heading(self, text: str) -> None:
        self._blocks.append(("heading", str(text)))

    def add_text(self, text: str) -> None:
        self._blocks.append(("text", str(text)))

    def add_table(self, columns: Sequence[str], rows: Sequence[Sequence], caption: str | None = None) -> None:
        """A table; numbers are right-aligned (floats shown with 6 significant digits)."""
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(f"a table row has {len(row)} cells for {len(columns)} columns: {row!r}")
        self._blocks.append(("table", (list(columns), [list(row) for row in rows], caption)))

    def add_figure(self, png_path: str | Path, caption: str) -> None:
        self._blocks.append(("figure", (Path(png_path), str(caption))))

    def add_commands(self, commands: Sequence[str]) -> None:
        """Exact shell commands (shown verbatim) that reproduce the report's results."""
        self._blocks.append(("commands", list(commands)))

    def render(self, out_dir: str | Path) -> str:
        """The page's HTML; figures are read from (and must already be in) ``out_dir``."""
        out_dir = Path(out_dir)
        e = html.escape
        parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                 f"<title>{e(self.title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(self.title)}</h1>"]
        for kind, content in self._blocks:
            if kind == "heading":
                parts.append(f"<h2>{e(content)}</h2>")
            elif kind == "text":
                parts.append(f"<p>{e(content)}</p>")
            elif kind == "table":
                parts.append(_table_html(*content))
            elif kind == "figure":
                parts.append(_figure_html(out_dir / content[0].name, content[1]))
            elif kind == "commands":
                parts.append("<pre>" + "\n".join(e(c) for c in content) + "</pre>")
        parts.append("<h2>Versions</h2>")
        parts.append(_table_html(["package", "version"], list(versions().items()), None))
        parts.append("</body></html>\n")
        return "\n".join(parts)

    def write(self, out_dir: str | Path) -> Path:
        """Write ``out_dir/report.html`` atomically (copying figures from elsewhere into ``out_dir``)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for kind, content in self._blocks:
            if kind == "figure":
                _copy_beside(content[0], out_dir)
        return write_atomic(out_dir / "report.html", self.render(out_dir))


def _copy_beside(png: Path, out_dir: Path) -> None:
    if not png.is_file():
        raise FileNotFoundError(f"figure {png} does not exist")
    if png.resolve().parent == out_dir.resolve():
        return
    write_atomic(out_dir / png.name, png.read_bytes())
    data = png.with_suffix(".json")
    if data.is_file():
        write_atomic(out_dir / data.name, data.read_bytes())


def _cell(value) -> tuple[str, str]:
    """(HTML class, escaped text) of a table cell; None (no value) is shown as ``NO_VALUE``."""
    if value is None:
        return "", NO_VALUE
    if isinstance(value, bool):
        return "", html.escape(str(value))
    if isinstance(value, int):
        return "num", f"{value:,}"
    if isinstance(value, float):
        return "num", "nan" if math.isnan(value) else f"{value:.6g}"
    return "", html.escape(str(value))


def _table_html(columns: list, rows: list, caption: str | None) -> str:
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns) + "</tr>")
    for row in rows:
        cells = (_cell(v) for v in row)
        out.append("<tr>" + "".join(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"
                                    for cls, text in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _figure_html(png: Path, caption: str) -> str:
    encoded = base64.b64encode(png.read_bytes()).decode("ascii")
    links = [f'<a href="{html.escape(png.name)}">PNG</a>']
    if png.with_suffix(".json").is_file():
        links.append(f'<a href="{html.escape(png.with_suffix(".json").name)}">data (JSON)</a>')
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)} <span class=\"small\">[{' · '.join(links)}]</span>"
            f"</figcaption></figure>")
