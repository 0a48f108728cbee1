"""Figures, the convergence analysis and the HTML report: real PNGs, JSON that round-trips, correct geometry."""

import dataclasses
import itertools
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from typer.testing import CliRunner

import pathprob as pp
from pathprob.analysis.convergence import convergence
from pathprob.cli import app
from pathprob.config import ModelConfig
from pathprob.data.concepts import Concepts
from pathprob.data.tokenizer import CharTokenizer
from pathprob.demo import FAST as DEMO_FAST
from pathprob.models.transformer import TransformerLM, init_transformer
from pathprob.plots import paths as figures
from pathprob.plots import style
from pathprob.plots.paths import NARROWING_STYLE
from pathprob.paths.results import format_estimate, format_interval
from pathprob.report import FAST, Report, convergence_section

TOKENIZER = CharTokenizer(tokens=("^", "a", "b", "c", "$"), eos="$", bos="^")
CFG = ModelConfig(vocab_size=5, max_len=12, d_model=16, n_layers=1, n_heads=2, d_ff=32)
PROMPT = "^ab"
MAX_NEW = 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_CONCEPTS = Concepts(name="tiny", n_concepts=4, n_states=2, n_letters=4, example_len=2, n_examples=8,
                         family_size=2, p_letter=0.8, p_next=0.85, p_init=0.7)


@pytest.fixture(scope="module")
def lm():
    return TransformerLM.from_module(init_transformer(CFG, 3), TOKENIZER)


@pytest.fixture(scope="module")
def brute(lm):
    """{path: p} over every path (first EOS or MAX_NEW tokens), each scored on its own in float64."""
    paths = [seq for n in range(1, MAX_NEW + 1) for seq in itertools.product(range(lm.vocab_size), repeat=n)
             if lm.eos_id not in seq[:-1] and (n == MAX_NEW or seq[-1] == lm.eos_id)]
    logp = pp.score(lm, PROMPT, [list(seq) for seq in paths])
    return {seq: math.exp(lp) for seq, lp in zip(paths, logp)}


def check_png(path: Path, min_bytes: int = 5_000) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes, len(data)


def check_json(path: Path) -> dict:
    text = Path(path).with_suffix(".json").read_text()
    data = json.loads(text)
    assert json.loads(json.dumps(data)) == data
    return data


def test_path_tree_widths_are_proportional_to_brute_force_prefix_masses(lm, brute, tmp_path):
    table = pp.enumerate_paths(lm, PROMPT, MAX_NEW)
    assert len(table) == len(brute)  # nothing pruned: the table's prefix sums are exact prefix masses
    top = 7
    png = figures.path_tree(table, tmp_path / "tree.png", top=top, prompt=PROMPT)
    check_png(png)
    layout = check_json(png)
    assert layout["drawn_paths"] == top and layout["prefix_mass_exact"]
    nodes = layout["nodes"]
    # The drawn leaves are the top paths of the brute force, with their ranks, one row each.
    ranked = sorted(brute.items(), key=lambda item: -item[1])[:top]
    leaves = sorted((n for n in nodes if n["leaf"]), key=lambda n: n["rank"])
    assert [tuple(n["prefix"]) for n in leaves] == [path for path, _ in ranked]
    assert sorted(n["y"] for n in leaves) == list(range(top))
    for node, (_, p) in zip(leaves, ranked):
        assert node["p"] == pytest.approx(p, abs=1e-6)  # float32 per-token log-probs: ~1e-7 relative
    # Every node's mass is the brute-force prefix mass (sum over all paths, drawn or not).
    for node in nodes:
        prefix = tuple(node["prefix"])
        expected = sum(p for path, p in brute.items() if path[: len(prefix)] == prefix)
        assert node["mass"] == pytest.approx(expected, abs=1e-6), prefix
    assert nodes[0]["prefix"] == [] and nodes[0]["mass"] == pytest.approx(1.0, abs=1e-6)
    # Edge width = scale x the child's prefix mass; the widest edge has MAX_EDGE_WIDTH.
    edges = layout["edges"]
    assert len(edges) == len(nodes) - 1
    for edge in edges:
        child, parent = nodes[edge["child"]], nodes[edge["parent"]]
        assert edge["mass"] == child["mass"] and child["prefix"][:-1] == parent["prefix"]
        assert edge["linewidth"] == pytest.approx(layout["scale"] * child["mass"], rel=1e-12)
        assert edge["label"] == TOKENIZER.decode([edge["token"]])
    assert max(e["linewidth"] for e in edges) == pytest.approx(figures.MAX_EDGE_WIDTH, rel=1e-12)
    # An inner node sits between its children, the heavier child above; no two edges cross.
    for i, node in enumerate(nodes):
        kids = sorted((nodes[e["child"]] for e in edges if e["parent"] == i), key=lambda n: n["y"])
        if kids:
            assert node["y"] == pytest.approx(float(np.mean([k["y"] for k in kids])))
            assert [k["mass"] for k in kids] == sorted((k["mass"] for k in kids), reverse=True)
    for e1, e2 in itertools.combinations(edges, 2):
        (p1, c1), (p2, c2) = ((nodes[e["parent"]], nodes[e["child"]]) for e in (e1, e2))
        if p1["depth"] == p2["depth"] and p1["y"] < p2["y"]:
            assert c1["y"] < c2["y"]


def test_path_tree_of_a_pruned_table_says_its_masses_are_lower_bounds(lm, brute, tmp_path):
    table = pp.enumerate_paths(lm, PROMPT, MAX_NEW, min_prob=0.02)
    assert table.remaining > 0
    layout = check_json(figures.path_tree(table, tmp_path / "pruned.png", top=5))
    assert not layout["prefix_mass_exact"]
    for node in layout["nodes"]:
        prefix = tuple(node["prefix"])
        assert node["mass"] <= sum(p for path, p in brute.items() if path[: len(prefix)] == prefix) + 1e-6


def test_coverage_curves(tmp_path):
    curves = {"a": [0.5, 0.3, 0.15, 0.05], "<b>": [0.9, 0.05]}
    png = figures.coverage_curves(curves, tmp_path / "coverage.png")
    check_png(png)
    data = check_json(png)
    assert data["curves"]["a"]["paths_needed"] == {"0.5": 1, "0.9": 3, "0.99": 4}
    assert data["curves"]["<b>"]["paths_needed"] == {"0.5": 1, "0.9": 1, "0.99": None}
    assert data["curves"]["a"]["cumulative"] == pytest.approx([0.5, 0.8, 0.95, 1.0], abs=1e-15)
    with pytest.raises(ValueError, match="decreasing"):
        figures.coverage_curves({"x": [0.1, 0.2]}, tmp_path / "bad.png")


def captured(monkeypatch, module) -> list:
    """Every (figure, data) that ``module`` saves, kept (the figure still drawable) after it is written."""
    saved, real = [], style.save

    def save(fig, path, data):
        saved.append((fig, data))
        return real(fig, path, data)

    monkeypatch.setattr(module, "save", save)
    return saved


N_PATHS = 1000
# Per-prompt values [k, prompt] near the ends of each range: the truth's entropy near 0 but for one prompt (a
# t-interval over 3 prompts reaches below 0), its posterior near 1, the model's entropy and 90% set only bounded.
ENTROPY_KN = np.array([[4.0, 4.1, 4.2, 4.0], [0.01, 0.02, 3.0, 0.0], [0.0, 0.0, 2.5, 0.0]])
POSTERIOR_KN = np.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.9, 0.99, 0.2], [1.0, 1.0, 0.6, 1.0]])
TOP90_KN = np.array([[40.0, 50.0, 60.0, 50.0], [3.0, 2.0, 9.0, 1.0], [1.0, 1.0, 7.0, 1.0]])


def narrowing_data(n_prompts: int) -> dict:
    """``NarrowingCurve.to_dict()`` of ``narrowing_example``."""
    return narrowing_example(n_prompts).to_dict()


def narrowing_example(n_prompts: int):
    """A ``NarrowingCurve`` built from the per-prompt values above (the first ``n_prompts``)."""
    from pathprob.analysis.narrowing import NarrowingCurve, summarize

    cut = lambda a: np.ascontiguousarray(a[:, :n_prompts], np.float64)
    exact = ("enumeration",) * 3
    entropy_range, counts = (0.0, math.log(N_PATHS)), (1.0, float(N_PATHS))
    truth = {"entropy": summarize(cut(ENTROPY_KN), cut(ENTROPY_KN), exact, entropy_range, 0.95),
             "top_0.9": summarize(cut(TOP90_KN), cut(TOP90_KN), exact, counts, 0.95),
             "support": summarize(cut(TOP90_KN) * 10, cut(TOP90_KN) * 10, exact, counts, 0.95),
             "posterior": summarize(cut(POSTERIOR_KN), cut(POSTERIOR_KN), exact, (0.0, 1.0), 0.95)}
    model = {"entropy": summarize(cut(ENTROPY_KN) + 0.1, cut(ENTROPY_KN) + 0.4, exact, entropy_range, 0.95),
             "top_0.9": summarize(cut(TOP90_KN), np.full_like(cut(TOP90_KN), N_PATHS), exact, counts, 0.95)}
    return NarrowingCurve(k=np.array([0, 2, 6]), measures={"model": model, "truth": truth}, n_prompts=n_prompts,
                          max_new=3, n_paths=N_PATHS, concepts=np.zeros(n_prompts, int))


def text_of(html: str) -> str:
    """The page without its embedded images (base64 can spell anything, "nan" included)."""
    return re.sub(r'src="data:[^"]*"', 'src=""', html)


def redraw(fig):
    """The renderer of ``fig`` drawn again on an Agg canvas (``style.save`` closed it)."""
    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def bands(ax) -> list[np.ndarray]:
    """The vertices float64[M, 2] of every filled band (``fill_between``) on ``ax``."""
    return [path.vertices for c in ax.collections if isinstance(c, PolyCollection) for path in c.get_paths()]


def test_narrowing_bands_stay_in_range_and_need_three_prompts(tmp_path, monkeypatch):
    from scipy.stats import t as student

    saved = captured(monkeypatch, figures.style)
    # With 3 prompts the plain t-interval of the truth's entropy at k = 2 reaches below 0 (so clipping matters).
    values = ENTROPY_KN[1, :3]
    margin = student.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert values.mean() - margin < -1.0
    data = narrowing_data(3)
    png = figures.narrowing_curve(data, tmp_path / "narrowing.png")
    check_png(png)
    (fig, written), = saved
    assert check_json(png)["drawn"] == json.loads(json.dumps(written["drawn"]))
    ranges = [(0.0, math.log(N_PATHS)), (1.0, N_PATHS), (0.0, 1.0)]  # entropy, path counts, posterior
    for ax, (low, high) in zip(fig.axes, ranges):
        drawn = bands(ax)
        assert drawn, ax.get_ylabel()
        for vertices in drawn:
            assert low - 1e-12 <= vertices[:, 1].min() and vertices[:, 1].max() <= high + 1e-12, ax.get_ylabel()
    assert min(v[:, 1].min() for v in bands(fig.axes[0])) == 0.0  # the clipped end of the k = 2 interval
    # Bounded values are drawn as their proven range (a bar), never as a marker at a midpoint.
    model = written["drawn"]["entropy"]["model/entropy"]
    mean_K = ENTROPY_KN[:, :3].mean(axis=1)
    assert model["points"] == []
    np.testing.assert_allclose(model["ranges"], np.stack([[0.0, 2.0, 6.0], mean_K + 0.1, mean_K + 0.4], axis=1),
                               rtol=1e-12)
    markers = [line for line in fig.axes[0].lines if line.get_marker() not in ("None", None, "")
               and line.get_color() == NARROWING_STYLE["model"][0]]
    assert markers == []
    assert "no interval" not in fig.axes[0].get_title()


def test_narrowing_with_two_prompts_draws_no_band_and_says_so(tmp_path, monkeypatch):
    saved = captured(monkeypatch, figures.style)
    data = narrowing_data(2)
    assert all(math.isnan(x) for x in data["measures"]["truth"]["entropy"]["lower"])  # no interval from 2 prompts
    figures.narrowing_curve(data, tmp_path / "narrowing.png")
    (fig, written), = saved
    assert all(bands(ax) == [] for ax in fig.axes)
    assert "no interval: 2 prompts, fewer than 3" in fig.axes[0].get_title()
    for panel in written["drawn"].values():
        for geometry in panel.values():
            assert geometry["band"] == [] and geometry["no_interval"] == [0.0, 2.0, 6.0]
    truth_only = dict(data, measures={"truth": data["measures"]["truth"]})
    check_png(figures.narrowing_curve(truth_only, tmp_path / "truth_only.png"))
    with pytest.raises(ValueError, match="posterior"):
        figures.narrowing_curve(dict(data, measures={"truth": {"entropy": data["measures"]["truth"]["entropy"]}}),
                                tmp_path / "x.png")


@pytest.mark.parametrize("n_prompts", [2, 3])
def test_report_narrowing_section_prints_no_nan_and_no_midpoint(tmp_path, monkeypatch, n_prompts):
    """The section's tables from a known curve: values, proven ranges of bounded values, intervals only from 3
    prompts, and what the truth's support does."""
    from pathprob import report as sections

    curve = narrowing_example(n_prompts)
    monkeypatch.setattr(sections, "narrowing_curve", lambda *args, **kwargs: curve)
    report = Report("narrowing")
    sections.narrowing_section(report, None, TINY_CONCEPTS, 3, None, tmp_path, sections.Sizes(n_prompts=n_prompts))
    html = text_of(report.write(tmp_path).read_text())
    assert "nan" not in html.lower()
    entropy = table_rows(html, "H truth (nats)")  # examples, H model, H truth, P(true concept)
    mean_K = ENTROPY_KN[:, :n_prompts].mean(axis=1)
    for row, mean in zip(entropy[1:], mean_K):
        assert row[1].startswith(f"bounded [{mean + 0.1:.4g}, {mean + 0.4:.4g}]")  # a proven range, no midpoint
        assert row[2].startswith(f"{mean:.4g}")
        assert (", interval [" in row[2]) == (n_prompts >= 3)
    assert (", interval [0, " in entropy[2][2]) == (n_prompts >= 3)  # the clipped lower end (entropy >= 0)
    support = 10 * TOP90_KN[:, :n_prompts].mean(axis=1)
    assert f"support shrinks ({support[0]:.6g} paths at 0 examples, {support[-1]:.6g} at 6" in html


def test_convergence_data_and_figure(lm, brute, tmp_path):
    pathset = pp.Regex("a.*")
    data = convergence(lm, PROMPT, pathset, MAX_NEW, methods=("mc", "smc", "swor"), ns=(64, 256), key=7)
    exact = pp.mass(lm, PROMPT, pathset, MAX_NEW, method="exact")
    assert exact.exact and data["exact"]["value"] == exact.value and data["exact"]["exact"]
    assert exact.value == pytest.approx(sum(p for path, p in brute.items() if path[0] == 1), abs=1e-6)
    assert list(data["series"]) == ["mc", "smc", "swor"]
    for method, series in data["series"].items():
        assert series["requested_n"] == [64, 256]
        for lower, value, upper in zip(series["lower"], series["value"], series["upper"]):
            assert 0.0 <= lower <= value <= upper <= 1.0, method
            # Fixed seeds: 6 intervals at 95% (smc's is degenerate here, the set being decided by token 1).
            assert lower - 1e-6 <= exact.value <= upper + 1e-6, method
    assert data["series"]["mc"]["n"] == [64, 256]
    # Independent keys per (method, n) and determinism in the key.
    mc = data["series"]["mc"]
    assert mc["value"][0] != mc["value"][1] or mc["lower"][0] != mc["lower"][1]
    again = convergence(lm, PROMPT, pathset, MAX_NEW, methods=("mc",), ns=(64, 256), key=7)
    assert again["series"]["mc"]["value"] == mc["value"]
    assert json.loads(json.dumps(data)) == data
    with pytest.raises(ValueError, match="at least 3"):  # two sample sizes show no convergence
        figures.convergence(data, tmp_path / "convergence.png")
    with pytest.raises(pp.PathprobError, match="unknown Monte-Carlo method"):
        convergence(lm, PROMPT, pathset, MAX_NEW, methods=("exact",), ns=(8,))


def test_convergence_figure_ticks_are_the_sample_sizes(lm, tmp_path, monkeypatch):
    saved = captured(monkeypatch, figures.style)
    data = convergence(lm, PROMPT, pp.Regex("a.*"), MAX_NEW, methods=("mc", "smc"), ns=(32, 64, 128), key=3)
    png = figures.convergence(data, tmp_path / "convergence.png")
    check_png(png)
    assert check_json(png)["exact"]["value"] == data["exact"]["value"]
    (fig, _), = saved
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [32, 64, 128]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "64", "128"]
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))


STUB_LANGUAGE = SimpleNamespace(path_set_names=("any", "a-first"), path_set=lambda name, prompt: "a.*")


@pytest.mark.parametrize("sizes", [FAST, DEMO_FAST.report], ids=["report", "demo"])
def test_fast_convergence_has_three_sample_sizes_or_no_figure(lm, tmp_path, sizes):
    """Each fast mode's convergence section, on a tiny model: a figure only with at least 3 distinct n."""
    report = Report("convergence")
    convergence_section(report, lm, STUB_LANGUAGE, PROMPT, MAX_NEW, tmp_path, sizes)
    kinds = [kind for kind, _ in report._blocks]
    texts = " ".join(content for kind, content in report._blocks if kind == "text")
    if len(set(sizes.ns)) >= figures.MIN_SAMPLE_SIZES:
        assert "figure" in kinds and "No convergence figure" not in texts
    else:
        assert "figure" not in kinds and not (tmp_path / "convergence.png").exists()
        assert f"No convergence figure: {len(set(sizes.ns))} sample size" in texts
    assert len(set(FAST.ns)) >= figures.MIN_SAMPLE_SIZES  # the report's fast mode keeps its figure


def test_format_interval_never_prints_unequal_bounds_as_equal():
    # The float32 case of the issue: an SMC interval 1e-7 wide at 0.42; six digits would print it [0.423543, 0.423543].
    for lower, upper in [(0.42354274, 0.42354285), (1.0 - 1e-12, 1.0), (3.05448, 3.35911), (0.0, 5e-300)]:
        text = format_interval(lower, upper)
        low, high = (float(x) for x in text.strip("[]").split(", "))
        assert low < high and low == pytest.approx(lower, rel=1e-5) and high == pytest.approx(upper, rel=1e-5), text
    assert format_interval(0.5, 0.5) == "[0.5, 0.5]"
    assert format_interval(None, 0.5) == format_interval(math.nan, 0.5) == "—"
    # Report cells: a random estimate's interval keeps its width, proven bounds show no midpoint.
    smc = pp.Estimate(value=0.4235428, lower=0.42354274, upper=0.42354285, method="smc", level=0.95)
    assert format_estimate(smc) == "0.4235 [0.4235427, 0.4235429]"  # four digits would print [0.4235, 0.4235]
    assert format_estimate(dataclasses.replace(smc, reliable=False)).endswith(" (unreliable)")
    bounded = pp.Estimate(value=3.20679, lower=3.05448, upper=3.35911, method="exact")
    assert format_estimate(bounded) == "bounded [3.054, 3.359]"
    assert format_estimate(dataclasses.replace(bounded, lower=math.inf, upper=math.inf)) == "3.20679"
    assert format_estimate(dataclasses.replace(bounded, exact=True, lower=3.20679, upper=3.20679)) == "3.20679"


def test_walk_labels_are_few_and_never_overlap(lm, tmp_path, monkeypatch):
    """40 token vectors in a tight cluster (as a trained model's are, beside its far larger context vectors):
    labelling them all would overlap; the figure labels at most MAX_WALK_LABELS, none overlapping."""
    from pathprob.analysis.walk import walk
    from pathprob.plots import embedding

    saved = captured(monkeypatch, embedding)
    walks = [walk(lm, "^ab", "cb$"), walk(lm, "^b", "a$")]
    rng = np.random.default_rng(0)
    width = walks[0].token_vectors_VD.shape[1]
    cluster_VD = 0.05 * rng.normal(size=(40, width))
    tokens = TOKENIZER.tokens + tuple(f"t{i}" for i in range(40 - len(TOKENIZER.tokens)))
    walks = [dataclasses.replace(w, token_vectors_VD=cluster_VD, tokens=tokens) for w in walks]
    png = embedding.walk_figure(walks, tmp_path / "walks.png")
    check_png(png)
    (fig, data), = saved
    renderer = redraw(fig)
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_gid() == embedding.LABEL_GID]
    assert [t.get_text() for t in labels] == [label["text"] for label in check_json(png)["labels"]]
    assert 4 <= len(labels) <= embedding.MAX_WALK_LABELS
    assert {"#1 start 'b'", "#1 end → '$'", "#2 start 'b'", "#2 end → '$'"} <= {t.get_text() for t in labels}
    boxes = [t.get_window_extent(renderer) for t in labels]
    inside = ax.get_window_extent(renderer)
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    assert all(inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1 for b in boxes)
    # The candidates did collide: the 40 clustered tokens could not all be labelled without overlap.
    candidates = embedding.walk_labels(walks, [np.asarray(w["xy"]) for w in data["walks"]],
                                       np.asarray(data["token_xy"]))
    assert len(candidates) > len(labels)


def refs(html: str) -> list[str]:
    return re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)


def check_links(html: str, out_dir: Path) -> None:
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", html)
    for ref in refs(html):
        assert ref.startswith("data:image/png;base64,") or (out_dir / ref).is_file(), ref


def test_report_is_self_contained_and_escaped(tmp_path):
    figure = figures.coverage_curves({"x": [0.6, 0.4]}, tmp_path / "elsewhere" / "cov.png")
    report = Report("a <title> & more")
    report.add_heading("Section")
    report.add_text("prompt <script>alert(1)</script>")
    report.add_table(["prompt", "p"], [["^<script>x</script>", 0.25], ["y", 3]])
    report.add_figure(figure, "caption <b>bold</b>")
    report.add_commands(["pathprob topk truth:arith --prompt '<script>' --max-new 2"])
    out_dir = tmp_path / "out"
    page = report.write(out_dir)
    assert page == out_dir / "report.html"
    html = page.read_text()
    assert "<script" not in html and "&lt;script&gt;" in html and "&lt;b&gt;bold" in html
    assert "a &lt;title&gt; &amp; more" in html
    check_links(html, out_dir)
    assert (out_dir / "cov.png").read_bytes() == figure.read_bytes()  # copied beside the page
    assert 'href="cov.json"' in html and (out_dir / "cov.json").is_file()
    for package in ("pathprob", "jax", "flax", "numpy", "python", "platform", "date"):
        assert f"<td>{package}</td>" in html
    assert not list(out_dir.glob(".*.tmp"))  # atomic: no temporary files left
    with pytest.raises(ValueError, match="cells"):
        report.add_table(["a", "b"], [[1]])


def table_rows(html: str, caption_part: str) -> list[list[str]]:
    """The cells of the first table whose caption holds ``caption_part``, row by row (header first)."""
    table = next(t for t in re.findall(r"<table>.*?</table>", html, re.DOTALL) if caption_part in t)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.DOTALL)
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in rows]


def test_report_training_table_shows_a_dash_for_null_eval_loss(tmp_path):
    from pathprob.report import NO_VALUE, training_section

    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": s, "loss": 1.0 / s, "eval_loss": None if s < 30 else 0.5, "truth_eval_loss": 0.43}
               for s in (10, 20, 30, 40)]
    # A torn final line (an interrupted write): skipped with a warning, as pathprob.rundir.read_metrics does.
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 50, "lo')
    report = Report("run")
    with pytest.warns(UserWarning, match="torn final line"):
        training_section(report, run, tmp_path / "out")
    html = text_of(report.write(tmp_path / "out").read_text())
    rows = table_rows(html, "logged steps")
    assert rows[0] == ["step", "loss", "eval_loss", "truth_eval_loss"]
    # first, middle and last of the 4 complete records; null eval losses read as the dash, never nan or None
    assert rows[1:] == [["10", "0.1", NO_VALUE, "0.43"], ["30", "0.0333333", "0.5", "0.43"],
                        ["40", "0.025", "0.5", "0.43"]]
    assert "4 logged steps" in html and "nan" not in html.lower() and "None" not in html
    assert "No training-dynamics panel" in html  # no probe records in these metrics


runner = CliRunner()


def test_cli_report_on_a_truth(tmp_path):
    out_dir = tmp_path / "report"
    result = runner.invoke(app, ["report", "truth:arith", "--out", str(out_dir), "--fast"])
    assert result.exit_code == 0, result.output
    page = Path(result.output.strip().splitlines()[-1])
    assert page == out_dir / "report.html"
    html = page.read_text()
    check_links(html, out_dir)
    for section in ("Model", "Most probable paths", "Coverage", "Estimator convergence", "Comparison across prompts",
                    "Reproduce", "Versions"):
        assert f"<h2>{section}</h2>" in html
    for name in ("tree_0", "tree_2", "tree_6", "coverage", "convergence"):
        check_png(out_dir / f"{name}.png")
        check_json(out_dir / f"{name}.png")
    # The truth answers arith questions: the convergence set ('correct') has exact mass 1.
    assert check_json(out_dir / "convergence.png")["exact"]["value"] == pytest.approx(1.0, abs=1e-6)


def test_cli_report_missing_target_is_one_line(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "nope" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


