"""A run directory: the one metrics reader (torn final line, malformed lines, truncation) and the writer's lock."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
from typer.testing import CliRunner

from pathprob.cli import app
from pathprob.files import loads_strict
from pathprob.rundir import MetricsError, RunLockedError, locked, read_metrics, truncate_metrics

RECORDS = [{"step": 0, "probe": {"prompts": []}}, {"step": 1, "loss": 2.5, "eval_loss": None},
           {"step": 2, "loss": 2.25, "eval_loss": 2.0}]


def write(run_dir, text: str):
    (run_dir / "metrics.jsonl").write_text(text)


def lines(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.mark.parametrize("torn", ['{"step": 100, "lo', "\0" * 24, "{"])
def test_a_torn_final_line_is_skipped_with_a_one_line_warning(tmp_path, torn):
    write(tmp_path, lines(RECORDS) + torn)
    with pytest.warns(UserWarning, match="torn final line") as caught:
        assert read_metrics(tmp_path) == RECORDS
    assert len(caught) == 1 and "\n" not in str(caught[0].message)


def test_complete_files_read_without_a_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write(tmp_path, lines(RECORDS))
        assert read_metrics(tmp_path) == RECORDS
        write(tmp_path, lines(RECORDS).rstrip("\n"))  # a complete last record whose newline was lost
        assert read_metrics(tmp_path) == RECORDS
        write(tmp_path, '{"step": 1, "loss": NaN, "x": Infinity, "y": -Infinity}\n')  # written before strict JSON
        assert read_metrics(tmp_path) == [{"step": 1, "loss": None, "x": "inf", "y": "-inf"}]


@pytest.mark.parametrize("bad, line", [('{"step": 1, "lo\n', 2), ("[1, 2]\n", 3), ('{"loss": 1.0}\n', 2),
                                       ('{"step": "3"}\n', 4)])
def test_a_malformed_line_elsewhere_is_an_error_naming_file_and_line(tmp_path, bad, line):
    body = lines(RECORDS).splitlines(keepends=True)
    body.insert(line - 1, bad)
    write(tmp_path, "".join(body))
    with pytest.raises(MetricsError, match=rf"^{re.escape(str(tmp_path / 'metrics.jsonl'))} line {line} "):
        read_metrics(tmp_path)


def test_missing_metrics_is_an_error(tmp_path):
    with pytest.raises(MetricsError, match="no metrics.jsonl in"):
        read_metrics(tmp_path)


def test_truncation_keeps_an_in_order_prefix_as_strict_json(tmp_path):
    # Twin writers once left steps 1, 2, 1, 3 (and a torn line): keep 0..2, never a duplicate or a step back.
    write(tmp_path, lines(RECORDS + [{"step": 1, "loss": float("nan")}, {"step": 3, "loss": 1.0}]) + '{"st')
    with pytest.warns(UserWarning, match="torn"):
        truncate_metrics(tmp_path, 3)
    text = (tmp_path / "metrics.jsonl").read_text()
    assert [loads_strict(line) for line in text.splitlines()] == RECORDS and text.endswith("\n")
    truncate_metrics(tmp_path, 1)
    assert read_metrics(tmp_path) == RECORDS[:2]
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.jsonl"], "no temporary file left"


def test_the_lock_is_released_on_exceptions(tmp_path):
    with pytest.raises(KeyError), locked(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
        raise KeyError("boom")
    with locked(tmp_path):  # flock conflicts between two opens in one process too: this proves the release
        pass


_HOLD_A_RUN = """
    import sys
    import pathprob as pp
    pp.train(pp.TrainConfig(language="arith", out=sys.argv[1], steps=100_000, batch_size=4, d_model=16, n_layers=1,
                            n_heads=2, d_ff=32, eval_docs=8, log_every=100_000, save_every=100_000), progress=False)
"""


@pytest.mark.slow
def test_a_second_writer_is_refused_at_once_naming_the_holders_pid(tmp_path):
    run_dir = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HOLD_A_RUN), str(run_dir)],
                             env={**os.environ, "JAX_PLATFORMS": "cpu"}, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / ".lock").is_file() or (run_dir / ".lock").read_text() != f"{child.pid}\n":
            assert child.poll() is None, child.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the child never took the lock"
            time.sleep(0.05)
        result = CliRunner().invoke(app, ["train", "--language", "arith", "--out", str(run_dir), "--no-progress"])
        assert result.exit_code == 2
        output = result.output.strip().splitlines()
        assert len(output) == 1 and f"{run_dir} is being written by another process (pid {child.pid})" in output[0]
        with pytest.raises(RunLockedError, match=rf"\(pid {child.pid}\)"), locked(run_dir):
            pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    with locked(run_dir):  # the OS released the killed holder's lock
        pass
