"""The command line: one API call plus printing; bad input is one line and exit status 2."""

import shutil

import pytest
from typer.testing import CliRunner

from pathprob.cli import app
from pathprob.files import loads_strict

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("train", "--language", "arith", "--steps", 4, "--batch-size", 4, "--d-model", 16, "--n-layers", 1,
                    "--n-heads", 2, "--d-ff", 32, "--save-every", 2, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "eval loss" in result.output
    return out


def test_info_and_score(run_dir):
    result = invoke("info", run_dir, "--json")
    assert result.exit_code == 0, result.output
    info = loads_strict(result.stdout)
    assert info["step"] == 4 and info["language"] == "arith"
    result = invoke("score", "truth:arith", "--prompt", "^1+2=", "--continuation", "3;", "--continuation", "4;",
                    "--json")
    assert result.exit_code == 0, result.output
    scores = loads_strict(result.stdout)
    assert scores[0]["logp"] == pytest.approx(0.0, abs=1e-6) and scores[1]["logp"] == "-inf"


def test_engine_commands(run_dir, tmp_path):
    out_file = tmp_path / "paths.json"
    result = invoke("enumerate", "truth:arith", "--prompt", "^1+2=3;", "--max-new", 3, "--json", out_file)
    assert result.exit_code == 0, result.output
    data = loads_strict(out_file.read_text())
    assert abs(sum(p["p"] for p in data["paths"]) - 1) < 1e-6 and len(data["paths"]) == 49
    result = invoke("enumerate", run_dir, "--prompt", "^1+2=", "--max-new", 2, "--min-prob", 0.01)
    assert result.exit_code == 0 and "certified remainder" in result.output
    result = invoke("topk", "truth:arith", "--prompt", "^", "-k", 3, "--max-new", 4)
    assert result.exit_code == 0 and "certificate" in result.output
    result = invoke("mass", "truth:arith", "--prompt", "^1+2=", "--regex", "3.*", "--max-new", 2, "--json", "-")
    assert result.exit_code == 0 and loads_strict(result.stdout)["exact"]
    result = invoke("entropy", "truth:arith", "--prompt", "^", "--max-new", 4)
    assert result.exit_code == 0 and "nats" in result.output


def test_bad_inputs(run_dir, tmp_path):
    assert_one_line_error(invoke("train", "--language", "klingon", "--out", tmp_path / "x"), "unknown language")
    assert_one_line_error(invoke("info", "truth:klingon"), "klingon")
    assert_one_line_error(invoke("info", tmp_path / "missing"), "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(invoke("info", empty), "checkpoint")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(run_dir, corrupt)
    for f in (corrupt / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"garbage")
    assert_one_line_error(invoke("score", corrupt, "--prompt", "^1", "--continuation", "+"), "checkpoint")
    assert_one_line_error(invoke("score", "truth:arith", "--prompt", "^1+x", "--continuation", "1"), "'x'")
    assert_one_line_error(invoke("score", "truth:arith", "--prompt", "^" + "1+1=2;" * 20, "--continuation", "1"),
                          "context")
    assert_one_line_error(invoke("enumerate", "truth:arith", "--prompt", "^", "--max-new", 99), "context")
    assert_one_line_error(invoke("mass", "truth:arith", "--prompt", "^", "--regex", "(", "--max-new", 2), "regular")
    assert_one_line_error(invoke("enumerate", "truth:concepts", "--prompt", "^", "--max-new", 40), "budget")
    assert invoke("train", "--steps", 0).exit_code == 2
    result = invoke("train", "--language", "arith", "--steps", 4, "--batch-size", 4, "--d-model", 32,
                    "--n-layers", 1, "--n-heads", 2, "--d-ff", 32, "--save-every", 2, "--out", run_dir, "--no-progress")
    assert_one_line_error(result, "d_model: 16 -> 32")


def test_monte_carlo_commands():
    result = invoke("sample", "truth:arith", "--prompt", "^1+2=", "--max-new", 2, "-n", 64, "--seed", 3)
    assert result.exit_code == 0, result.output
    assert "'3;'" in result.output and "64" in result.output
    for method in ("mc", "smc", "hybrid"):
        result = invoke("mass", "truth:concepts", "--prompt", "^", "--regex", "ab.*", "--max-new", 3,
                        "--method", method, "-n", 256, "--json", "-")
        assert result.exit_code == 0, result.output
        est = loads_strict(result.stdout)
        assert est["method"] == method and est["lower"] <= est["value"] <= est["upper"]
    result = invoke("entropy", "truth:arith", "--prompt", "^", "--max-new", 4, "--method", "mc", "-n", 256)
    assert result.exit_code == 0 and "95% interval" in result.output
    result = invoke("kl", "truth:concepts", "--prompt", "^abkbk;", "--prompt-b", "^", "--max-new", 3)
    assert result.exit_code == 0 and "KL(a || b)" in result.output
    assert_one_line_error(invoke("mass", "truth:arith", "--prompt", "^", "--regex", "1.*", "--max-new", 2,
                                 "--method", "magic"), "unknown method")
