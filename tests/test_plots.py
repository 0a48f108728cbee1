"""Figures, the convergence analysis and the HTML report: real PNGs, JSON that round-trips, correct geometry."""

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import pathprob as pp
from pathprob.analysis.convergence import convergence
from pathprob.cli import app
from pathprob.config import ModelConfig
from pathprob.data.tokenizer import Tokenizer
from pathprob.models.transformer import TransformerLM, init_transformer
from pathprob.plots import paths as figures
from pathprob.report import Report

TOKENIZER = Tokenizer(tokens=("^", "a", "b", "c", "$"), eos="$", bos="^")
CFG = ModelConfig(vocab_size=5, max_len=12, d_model=16, n_layers=1, n_heads=2, d_ff=32)
PROMPT = "^ab"
MAX_NEW = 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


NARROWING = {"k": [0, 2, 6], "model_mean": [4.1, 2.6, 2.5], "model_lower": [4.0, 2.5, 2.4],
             "model_upper": [4.2, 2.7, 2.6], "truth_mean": [4.09, 2.49, 2.42], "truth_lower": [4.09, 2.49, 2.42],
             "truth_upper": [4.09, 2.49, 2.42], "posterior_mean": [0.125, 0.6, 0.9], "n_prompts": 8}


def test_narrowing_curve(tmp_path):
    png = figures.narrowing_curve(NARROWING, tmp_path / "narrowing.png")
    check_png(png)
    assert check_json(png) == {"figure": "narrowing_curve", **NARROWING}
    truth_only = {k: v for k, v in NARROWING.items() if not k.startswith("model_")}
    check_png(figures.narrowing_curve(truth_only, tmp_path / "truth_only.png"))
    with pytest.raises(ValueError, match="posterior_mean"):
        figures.narrowing_curve({k: v for k, v in NARROWING.items() if k != "posterior_mean"}, tmp_path / "x.png")


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
    png = figures.convergence(data, tmp_path / "convergence.png")
    check_png(png)
    assert check_json(png)["exact"]["value"] == exact.value
    with pytest.raises(pp.PathprobError, match="unknown Monte-Carlo method"):
        convergence(lm, PROMPT, pathset, MAX_NEW, methods=("exact",), ns=(8,))


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


def test_report_training_section_reads_metrics(tmp_path):
    from pathprob.report import training_section

    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "loss": 1.0 / s, "eval_loss": math.nan, "truth_eval_loss": 0.43} for s in (10, 20, 30, 40)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    report = Report("run")
    training_section(report, run, tmp_path / "out")
    html = report.write(tmp_path / "out").read_text()
    assert "<h2>Training: " in html and "4 logged steps" in html and "0.025" in html
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


