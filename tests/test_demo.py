"""The demo (the README's main job), end to end in fast mode: same code path as the full run."""

import json
import math

import numpy as np
import pytest
from test_plots import check_links, check_png
from typer.testing import CliRunner

import pathprob as pp
from pathprob.cli import app
from pathprob.demo import NARROWING_SHOTS, find_checkpoints

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = runner.invoke(app, ["demo", "--fast", "--out", str(out), "--json", str(out / "summary.json")])
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads((out / "summary.json").read_text())


def test_demo_prints_a_summary_and_the_report_path(demo):
    out, output, summary = demo
    for title in ("In-context narrowing", "Top next examples", "Exact (proven bounds) vs Monte Carlo",
                  "arith, P(correct answer)", "report:"):
        assert title in output, title
    assert str(out / "report.html") in output.replace("\n", "")
    assert summary["report"] == str(out / "report.html")


def test_demo_report_is_complete_and_self_contained(demo):
    out, _, _ = demo
    html = (out / "report.html").read_text()
    check_links(html, out)
    for heading in ("In-context narrowing", "The most probable next examples", "Exact and Monte Carlo, side by side",
                    "Estimator convergence", "arith: the mass of the correct answers", "Training: "):
        assert heading in html, heading
    for png in ("narrowing", "tree", "dynamics_concepts"):
        check_png(out / f"{png}.png")
        assert (out / f"{png}.json").is_file()
    # One sample size in fast mode: the convergence figure is left out, and the report says why.
    assert not (out / "convergence.png").exists() and "No convergence figure" in html


def test_demo_numbers_agree_with_the_engines(demo):
    _, _, summary = demo
    curve = summary["narrowing"]
    assert curve["k"] == list(NARROWING_SHOTS)
    assert curve["truth_mean"][0] > curve["truth_mean"][-1]  # the Bayes-optimal narrowing
    rows = summary["exact_vs_mc"]
    exact = rows["P(repeat) exact"]
    model = pp.open_model(find_checkpoints() / "concepts")
    prompt = summary["top"]["prompt"]
    language = pp.get_language("concepts")
    fresh = pp.mass(model, prompt, language.path_set("repeat", prompt), language.example_len + 1)
    assert exact["exact"] and exact["value"] == pytest.approx(fresh.value, abs=1e-12)
    assert rows["P(repeat) smc"]["value"] == pytest.approx(exact["value"], rel=1e-5)  # zero variance for a DFA set
    assert rows["P(repeat) mc"]["lower"] <= exact["value"] <= rows["P(repeat) mc"]["upper"]
    assert rows["H exact"]["lower"] <= rows["H exact"]["upper"]
    np.testing.assert_allclose(summary["top"]["p_model"][0], math.exp(pp.top_k(model, prompt, 1, 6).logp[0]),
                               rtol=1e-6)
    for answer in summary["arith"]:
        assert 0.9 < answer["mass"]["lower"] <= answer["mass"]["upper"] <= 1.0  # the shipped model has learned arith


def test_demo_without_checkpoints_says_where_it_looked(tmp_path):
    result = runner.invoke(app, ["demo", "--checkpoints", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "no shipped checkpoints" in result.output
    assert not (tmp_path / "out").exists()  # nothing half-written
