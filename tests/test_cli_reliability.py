"""The command line under hostile input (issue 11): one-line errors, strict JSON, user text printed verbatim,
output paths checked before any work, progress with an ETA, Ctrl-C, and labels that say what a number is."""

import io
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

import pathprob as pp
from pathprob.cli import app, common
from pathprob.files import loads_strict
from pathprob.paths import sample
from pathprob.paths.results import format_estimate

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_error_line(result, *fragments, status=2):
    """Exit ``status``, nothing on stdout, exactly one line ``error: ...`` on stderr, no traceback."""
    assert result.exit_code == status, (result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def files_under(path: Path) -> set[Path]:
    return {p.relative_to(path) for p in path.rglob("*")}


# --- row 12: usage errors are one line with the real reason ---------------------------------------------------

ENUMERATE = ("enumerate", "truth:arith", "--prompt", "^")


@pytest.mark.parametrize("args, reason", [
    ((*ENUMERATE, "--max-new", "-1"), "'--max-new': Input should be greater than or equal to 1"),
    ((*ENUMERATE, "--max-new", "abc"), "'--max-new': Input should be a valid integer"),
    (("enumerate", "truth:arith", "--max-new", "2"), "Missing option '--prompt'"),
    ((*ENUMERATE, "--max-new", "2", "--bogus"), "No such option: --bogus"),
    ((*ENUMERATE, "--max-new", "2", "--min-prob", "nan"), "'--min-prob': must be a finite number, got 'nan'"),
    ((*ENUMERATE, "--max-new", "2", "--min-prob", "1.5"), "'--min-prob': must be in [0, 1], got 1.5"),
    ((*ENUMERATE, "--max-new", "2", "--min-prob", "x"), "'--min-prob': 'x' is not a number"),
    (("train", "--learning-rate", "inf"), "'--learning-rate': must be a finite number, got 'inf'"),
    (("sample", "truth:arith", "--prompt", "^", "--max-new", "1", "--temperature", "-inf"), "must be a finite number"),
    (("sample", "truth:arith", "--prompt", "^", "--max-new", "1", "--top-p", "NaN"), "must be a finite number"),
    (("frobnicate",), "No such command 'frobnicate'"),
    (("--bogus", "info", "truth:arith"), "No such option: --bogus"),
])
def test_usage_errors_are_one_line_with_the_reason(args, reason):
    assert_error_line(invoke(*args), reason)


def test_usage_error_from_a_real_process_is_one_line():
    """The console entry point, in its own process: no rich box, exit 2, one line on stderr."""
    cmd = [sys.executable, "-c", "from pathprob.cli import main; main()", *ENUMERATE, "--max-new", "-1"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    reason = "Input should be greater than or equal to 1"
    assert done.stderr.splitlines() == [f"error: Invalid value for '--max-new': {reason}"]


# --- row 6: output paths are checked while parsing, before any model is opened ------------------------------


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("keep me\n")
    return path


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, a_file):
    before = files_under(tmp_path)
    commands = [("demo", "--fast", "--out", a_file), ("train", "--language", "klingon", "--out", a_file),
                ("report", "truth:klingon", "--out", a_file), ("dynamics", tmp_path / "no-run", "--out", a_file),
                ("dynamics", tmp_path / "no-run", "--out", a_file / "sub")]
    for args in commands:
        line = assert_error_line(invoke(*args), "'--out'", str(a_file))
        assert "klingon" not in line and "no-run" not in line  # checked before the model or run is read
    assert files_under(tmp_path) == before and a_file.read_text() == "keep me\n"


def test_json_and_plot_files_are_checked_before_any_work(tmp_path, a_file):
    before = files_under(tmp_path)
    mass = ("mass", "truth:klingon", "--prompt", "^", "--regex", "1.*", "--max-new", 1)
    assert_error_line(invoke(*mass, "--json", "/proc/nope/x.json"), "'--json'", "/proc/nope/x.json", "/proc")
    assert_error_line(invoke(*mass, "--json", tmp_path), "'--json'", f"{tmp_path} is a directory")
    assert_error_line(invoke(*mass, "--json", a_file / "x.json"), "'--json'", f"{a_file} is not a directory")
    compare = ("compare", "truth:klingon", "--prompt", "^", "--max-new", 1)
    assert_error_line(invoke(*compare, "--plot", tmp_path), "'--plot'", f"{tmp_path} is a directory")
    assert_error_line(invoke("walk", "truth:klingon", "--prompt", "^", "--plot", a_file / "w.png"), "'--plot'")
    assert files_under(tmp_path) == before


def test_json_into_a_new_directory_is_written(tmp_path):
    target = tmp_path / "new" / "deeper" / "paths.json"
    result = invoke("enumerate", "truth:arith", "--prompt", "^1+2=", "--max-new", 1, "--json", target)
    assert result.exit_code == 0, result.output
    assert loads_strict(target.read_text())["paths"][0]["text"] == "3"
    assert result.stderr.splitlines() == [f"wrote {target}"]


# --- row 11: dynamics writes where it is run, not into the run directory -------------------------------------


def test_dynamics_never_writes_into_the_run_directory(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ROOT / "checkpoints" / "arith" / "metrics.jsonl", run)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    result = invoke("dynamics", run, "--json", "d.json")
    assert result.exit_code == 0, result.output
    assert files_under(run) == {Path("metrics.jsonl")}
    assert files_under(here) == {Path("dynamics.png"), Path("dynamics.json"), Path("d.json")}
    assert loads_strict((here / "d.json").read_text())["records"]
    assert loads_strict((here / "dynamics.json").read_text())["steps"]


# --- row 4: every JSON printed or written is strict ---------------------------------------------------------


def test_every_json_output_is_strict(tmp_path):
    result = invoke("info", "truth:arith", "--json")
    assert result.exit_code == 0 and loads_strict(result.stdout)["vocab_size"] > 0
    result = invoke("score", "truth:arith", "--prompt", "^1+2=", "--continuation", "3;", "--continuation", "4;",
                    "--json")
    assert result.exit_code == 0
    assert [row["logp"] for row in loads_strict(result.stdout)][1] == "-inf"  # log 0
    result = invoke("mass", "truth:arith", "--prompt", "^1+2=", "--regex", "3.*", "--max-new", 2, "--json", "-")
    assert result.exit_code == 0 and loads_strict(result.stdout)["ess"] is None  # NaN: undefined for exact
    result = invoke("kl", "truth:arith", "--prompt", "^1+2=", "--prompt-b", "^1+3=", "--max-new", 2, "--method", "mc",
                    "-n", 64, "--json", "-")
    assert result.exit_code == 0 and loads_strict(result.stdout)["value"] == "inf"  # b cannot emit '3;'
    result = invoke("compare", "truth:arith", "--prompt", "^1+2=", "--prompt", "^1+3=", "--max-new", 2,
                    "--json", tmp_path / "compare.json", "--plot", tmp_path / "coverage.png")
    assert result.exit_code == 0, result.output
    written = sorted(tmp_path.glob("*.json"))
    assert [p.name for p in written] == ["compare.json", "coverage.json"]
    for path in written:
        loads_strict(path.read_text())


# --- row 3: user text is never markup ---------------------------------------------------------------------


def test_user_text_prints_verbatim(tmp_path):
    for regex in ("a[bc]{4};", "[/a]b.*", "[bold]x:thumbs_up:"):
        result = invoke("mass", "truth:arith", "--prompt", "^1+2=", "--regex", regex, "--max-new", 1)
        assert result.exit_code == 0, result.output
        assert f"P({regex!r}) = 0 " in result.stdout
    target = tmp_path / "[bold]x [/a] :smile:.json"
    result = invoke("mass", "truth:arith", "--prompt", "^1+2=", "--regex", "3.*", "--max-new", 1, "--json", target)
    assert result.stderr.splitlines() == [f"wrote {target}"]
    assert_error_line(invoke("info", "[bold]x [/a] :smile:"), "'[bold]x [/a] :smile:'")
    assert_error_line(invoke("mass", "truth:arith", "--prompt", "^", "--regex", "[/a", "--max-new", 1), "'[/a'")


def test_progress_columns_print_user_text_verbatim(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=screen, force_terminal=True, width=200, markup=False,
                                               emoji=False, highlight=False))
    with common.Progress("[bold]x :smile:", 10) as progress:
        assert progress.bar is not None  # a terminal: the rich bar
        progress.update(5, "[/a]b.* a[bc]{4};")
        progress.bar.refresh()
    assert "[bold]x :smile:" in screen.getvalue() and "[/a]b.* a[bc]{4};" in screen.getvalue()


# --- row 10: progress with an ETA, Ctrl-C keeps the estimate so far -------------------------------------------


def test_progress_line_and_duration():
    assert common.progress_line("samples", 2500, 10_000, 5.0, "running estimate 0.5") == \
        "samples 2,500/10,000 (25.0%), 500/s, ETA 15s, elapsed 5s; running estimate 0.5"
    assert common.progress_line("depth", 3, 0, 2.0, "9 nodes") == "depth 3, elapsed 2s; 9 nodes"  # no ETA
    assert [common.duration(s) for s in (0.4, 59.6, 187, 7500)] == ["0s", "1m00s", "3m07s", "2h05m"]


def test_plain_progress_lines_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(common.Progress, "log_every_s", 0.0)
    result = invoke("mass", "truth:arith", "--prompt", "^1+2=", "--regex", "3.*", "--max-new", 2, "--method", "mc",
                    "-n", 5000)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["samples 4,096/5,000", "samples 5,000/5,000"]
    assert all("ETA" in line and "running estimate 1 [" in line for line in lines), lines
    result = invoke("sample", "truth:arith", "--prompt", "^1+2=", "--max-new", 2, "-n", 5000)
    assert result.exit_code == 0
    assert [line.split(" (")[0] for line in result.stderr.splitlines()] == ["samples 4,096/5,000",
                                                                           "samples 5,000/5,000"]


def interrupted_after(n: int):
    """pp.mass as the Monte-Carlo estimators answer Ctrl-C: the estimate of the chunks done, marked interrupted."""
    return lambda *args, **kwargs: pp.Estimate(value=0.25, lower=0.2, upper=0.3, method="mc", n=n, ess=float(n),
                                               level=0.95, seed=0, interrupted=True)


def test_ctrl_c_prints_and_writes_the_estimate_so_far(tmp_path, monkeypatch):
    monkeypatch.setattr(pp, "mass", interrupted_after(4096))
    target = tmp_path / "est.json"
    result = invoke("mass", "truth:arith", "--prompt", "^", "--regex", "1.*", "--max-new", 2, "--method", "mc",
                    "-n", 10_000, "--json", target)
    assert result.exit_code == 130
    expected = ("P('1.*') = 0.25 in [0.2, 0.3] (95% interval, mc, n = 4,096, ESS = 4096); "
                "interrupted after 4,096 of 10,000 samples")
    assert result.stdout.splitlines() == [expected]
    saved = loads_strict(target.read_text())
    assert saved["interrupted"] and saved["n"] == 4096
    result = invoke("mass", "truth:arith", "--prompt", "^", "--regex", "1.*", "--max-new", 2, "--method", "mc",
                    "-n", 10_000, "--json", "-")
    assert result.exit_code == 130 and loads_strict(result.stdout)["interrupted"]
    assert result.stderr.splitlines() == ["interrupted after 4,096 of 10,000 samples"]


def test_ctrl_c_between_chunks_of_a_real_run(monkeypatch):
    """Ctrl-C while the second block of draws is made: the estimator answers with the first block's estimate."""
    draw, blocks = sample.draw, []

    def ctrl_c_in_second_block(*args, **kwargs):
        blocks.append(len(blocks))
        if len(blocks) == 2:
            raise KeyboardInterrupt
        return draw(*args, **kwargs)

    monkeypatch.setattr(sample, "draw", ctrl_c_in_second_block)
    result = invoke("mass", "truth:arith", "--prompt", "^1+2=", "--regex", "3.*", "--max-new", 2, "--method", "mc",
                    "-n", 10_000, "--json", "-")
    assert result.exit_code == 130, result.output
    est = loads_strict(result.stdout)
    # Clopper-Pearson with 4096 hits of 4096: value 1, lower bound (0.025)^(1/4096) < 1.
    assert est["interrupted"] and est["n"] == 4096 and est["value"] == 1.0 and est["lower"] < 1.0
    assert result.stderr.splitlines() == ["interrupted after 4,096 of 10,000 samples"]


def test_ctrl_c_before_any_chunk_is_one_line(monkeypatch):
    def press_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pp, "mass", press_ctrl_c)
    result = invoke("mass", "truth:arith", "--prompt", "^", "--regex", "1.*", "--max-new", 2, "--method", "mc")
    assert result.exit_code == 130 and result.stdout == "" and result.stderr.splitlines() == ["interrupted"]


# --- labels that say what a number is ---------------------------------------------------------------------


def test_labels_say_exact_only_for_a_proof():
    exact = pp.Estimate(0.25, 0.25, 0.25, "exact", exact=True)
    bounds = pp.Estimate(0.25, 0.2, 0.3, "exact")
    degenerate = pp.Estimate(0.0, 0.0, 0.0, "exact")  # equal bounds, yet not marked as a proof
    interval = pp.Estimate(0.25, 0.2, 0.3, "smc", n=1000, ess=812.5, level=0.95)
    proven_by_a_sample = pp.Estimate(math.inf, math.inf, math.inf, "mc", n=64, exact=True)
    describe = common.describe_estimate
    assert describe(exact) == "0.25 (exact, enumeration)"
    assert describe(bounds, " nats") == "0.25 nats, the midpoint of proven bounds [0.2, 0.3] (enumeration)"
    assert describe(degenerate) == "0, the midpoint of proven bounds [0, 0] (enumeration)"
    assert describe(interval) == "0.25 in [0.2, 0.3] (95% interval, smc, n = 1,000, ESS = 812.5)"
    assert describe(proven_by_a_sample) == "inf (proven, mc, n = 64)"
    # A table cell: the value of a proof (or of bounds that meet), never a midpoint for proven bounds.
    assert [format_estimate(e) for e in (exact, bounds, degenerate)] == ["0.25", "bounded [0.2, 0.3]", "0"]


def test_printed_labels_of_real_runs():
    result = invoke("mass", "truth:arith", "--prompt", "^", "--regex", "1.*", "--max-new", 3, "--min-prob", 0.05)
    assert result.exit_code == 0 and "midpoint of proven bounds" in result.stdout and "exact" not in result.stdout
    result = invoke("kl", "truth:arith", "--prompt", "^1+2=", "--prompt-b", "^1+3=", "--max-new", 2, "--method", "mc",
                    "-n", 64)
    assert result.exit_code == 0 and result.stdout.startswith("KL(a || b) = inf nats (")
    assert "exact" not in result.stdout


def test_an_unreliable_estimate_warns_on_stderr(monkeypatch):
    monkeypatch.setattr(pp, "mass", lambda *a, **k: pp.Estimate(0.1, 0.0, 0.4, "is", n=100, ess=1.5, level=0.95,
                                                                reliable=False, reason="ESS 1.5 of 100 samples"))
    result = invoke("mass", "truth:arith", "--prompt", "^", "--regex", "1.*", "--max-new", 2, "--method", "is")
    assert result.exit_code == 0 and result.stdout.startswith("P('1.*') = 0.1 in [0, 0.4] (95% interval, is")
    assert result.stderr.splitlines() == ["warning: ESS 1.5 of 100 samples"]


# --- property: random text anywhere a user types fails with one line, never a traceback -------------------------

# Known gaps in paths/sets.py (not the CLI's): interegular raises Unsupported for anchors, \b, lookbehinds and
# backreferences, AttributeError for (?#...), and a big repeat count builds a DFA without a budget (minutes).
REGEXES_THE_DFA_CANNOT_EXPRESS = ["3$", "^3", "\\b3", "(3)\\1", "(?<=3);", "(?#note)3"]


@pytest.mark.parametrize("regex", REGEXES_THE_DFA_CANNOT_EXPRESS)
def test_regex_syntax_the_dfa_cannot_express_is_one_error_line(regex):
    assert_error_line(invoke("mass", "truth:arith", "--prompt", "^1+2=", "--regex", regex, "--max-new", 1), repr(regex))


def _dfa_can_express(pattern: str) -> bool:
    """Leaves out the known gaps above, so the property test finds new ones."""
    return not any(s in pattern for s in ("^", "$", "\\", "(?")) and re.search(r"\d\d\d", pattern) is None


_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=10)  # argv has no NUL
_near_valid = st.text("^$0123456789+=;.*[]()/{}|?: abk", max_size=8)  # text that often parses and runs
_markup = st.sampled_from(["a[bc]{4};", "[/a]b.*", "[bold]x", ":smile:", "\x1b[31m", "a\nb", "-x", "--", ""])
_words = st.one_of(_text, _near_valid, _markup)
_SLOTS = {"score": ("spec", "prompt", "continuation"), "enumerate": ("spec", "prompt"),
          "mass": ("spec", "prompt", "regex"), "topk": ("spec", "prompt"), "sample": ("spec", "prompt")}


def _command(name: str, values: dict) -> list[str]:
    args = [name, values.get("spec", "truth:arith"), "--prompt", values.get("prompt", "^1+2=")]
    if name == "score":
        return [*args, "--continuation", values.get("continuation", "3;")]
    args += ["--max-new", "2"]
    if name == "mass":
        args += ["--regex", values.get("regex", "3.*")]
    return [*args, "-k", "3"] if name == "topk" else [*args, "-n", "64"] if name == "sample" else args


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_text_is_a_result_or_one_error_line(data):
    name = data.draw(st.sampled_from(sorted(_SLOTS)))
    slots = data.draw(st.lists(st.sampled_from(_SLOTS[name]), min_size=1, unique=True))
    values = {slot: data.draw(_words.filter(_dfa_can_express) if slot == "regex" else _words, label=slot)
              for slot in slots}
    result = invoke(*_command(name, values))
    if result.exit_code != 0:
        assert_error_line(result)
