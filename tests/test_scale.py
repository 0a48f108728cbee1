"""Every engine on several devices and processes gives the one-device result (docs/scaling.md).

The multi-device checks run in subprocesses (``scale_checks.py``): one with 8 devices forced on the
CPU, and two processes on loopback (gloo collectives, 4 forced devices each), so the rest of the
suite keeps its one device. Each subprocess runs many checks and prints one JSON line.

Tolerances. Each device computes whole chunks, exactly the chunks the one-device run computes, so
log-probabilities, remainders, top-k and Monte-Carlo estimates are required to be *identical*
(the float32 terms are the same bits and the host sums them in the same float64 order); the issue
allows float32 rounding per term for enumeration and 1e-9 on the remainder, which identity meets.
Training sums gradients across devices in another order: losses agree to float32 rounding,
rtol 2e-6 (about 16 float32 ulps, after a few steps of Adam on a tiny model; measured: 4e-7).
"""

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pathprob as pp
from pathprob.paths import budget, frontier

HERE = Path(__file__).parent
LOSS_RTOL = 2e-6


def _run(args: list[str]) -> subprocess.Popen:
    # No persistent compilation cache: the subprocesses' device topologies are their own, so they would
    # only write entries that nothing reads.
    env = {**os.environ, "PATHPROB_CACHE_DIR": "off"}
    return subprocess.Popen([sys.executable, str(HERE / "scale_checks.py"), *args], cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _result(proc: subprocess.Popen, timeout: float = 600) -> dict:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"scale_checks.py timed out:\n{output[-3000:]}")
    found = re.search(r"^SCALE_RESULT (.*)$", output, re.MULTILINE)
    assert proc.returncode == 0 and found, output[-3000:]
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    return _result(_run(["devices", str(tmp_path_factory.mktemp("eight"))]))


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [_run(["process", str(i), port, str(out)]) for i in range(2)]
    return [_result(p) for p in procs], out


def _identical(diff: dict) -> None:
    assert diff["same_paths"] and diff["max_abs"] == 0.0, diff
    assert diff["remaining"][0] == diff["remaining"][1] and diff["covered"][0] == diff["covered"][1], diff


def test_enumeration_on_eight_devices_is_identical(eight):
    assert eight["device_count"] == 8
    for by_devices in eight["enumerate"].values():
        for diff in by_devices.values():
            _identical(diff)
    assert eight["enumerate"]["pruned"]["every"]["remaining"][0] > 0.1  # pruning left a certified remainder


def test_many_prompt_walk_agrees_per_prompt(eight):
    assert len(eight["many"]) == 4
    for diff in eight["many"]:
        _identical(diff)


def test_top_k_on_eight_devices_is_identical_and_certified(eight):
    _identical(eight["top_k"])
    assert eight["top_k"]["certified"] == [True, True]


def test_monte_carlo_with_the_same_key_is_identical(eight):
    for name, runs in eight["estimates"].items():
        assert runs["one"] == runs["every"], name
    assert eight["sample"]["same"]


def test_cli_devices_option(eight):
    one, many = eight["cli"]["one"], eight["cli"]["eight"]
    assert "value" in one and "value" in many, eight["cli"]
    assert (one["value"], one["lower"], one["upper"], one["n"]) == (many["value"], many["lower"], many["upper"],
                                                                   many["n"])
    status, message = eight["cli"]["too_many"]
    assert status == 2 and "devices=9" in message and "\n" not in message


def test_training_on_three_devices_resumed_on_one(eight):
    """Data parallel on 3 devices (a batch of 8 padded to 9 rows), checkpointed, resumed on 1: the 1-device losses."""
    one = eight["train"]["one"]
    np.testing.assert_allclose(eight["train"]["moved"], one, rtol=LOSS_RTOL)
    assert len(one) == 4


def test_unreachable_coordinator_fails_in_one_line(eight):
    failure = eight["unreachable"]
    assert failure["type"] == "PathprobError" and "\n" not in failure["error"]
    assert "could not reach the coordinator" in failure["error"] and "127.0.0.1:" in failure["error"]
    assert failure["seconds"] < 5  # bounded by timeout_s=1, not JAX's abort


@pytest.mark.slow
def test_two_processes_return_the_one_process_result(two, eight):
    (first, second), out = two
    assert first["processes"] == second["processes"] == 2 and first["devices"] == 8
    reference = eight["reference"]
    for name in ("exact", "smc"):
        assert first[name] == second[name] == reference[name], name
    assert first["train"] == second["train"] and first["score"] == second["score"]
    assert all(math.isfinite(x) for x in first["score"])
    losses = [json.loads(line)["loss"] for line in (out / "two" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(losses, eight["train"]["one"], rtol=LOSS_RTOL)
    assert sorted(int(p.name) for p in (out / "two" / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]


def test_exchange_plan_delivers_every_requested_row():
    """``frontier.exchange_plan`` against a NumPy all_to_all: each device receives exactly the rows it asked for."""
    rng = np.random.default_rng(0)
    for D, c, rows_per_device in ((8, 64, 40), (3, 16, 5), (2, 8, 1)):
        pools = rng.normal(size=(D, rows_per_device))  # device k's block
        slots = rng.integers(0, rows_per_device, (D, c)) * D + rng.integers(0, D, (D, c))  # local * D + owner
        send, recv = frontier.exchange_plan(slots, D)
        assert send.shape[:2] == (D, D) and recv.shape == (D, c)
        sent = np.stack([pools[k][send[k]] for k in range(D)])  # [owner, requester, S]
        for j in range(D):
            received = sent[:, j].reshape(-1)  # what all_to_all gives device j: S rows from each owner
            np.testing.assert_array_equal(received[recv[j]], pools[slots[j] % D, slots[j] // D])


# --- the cost model of docs/scaling.md, checked against the budget code ------------------------------


def kv_bytes_per_path(cfg, max_new: int, vocab: int) -> int:
    """docs/scaling.md: 2 L Hkv max_new Dh b (suffix keys and values) + 4 V (next log-probs) + 8 (root, length)."""
    itemsize = np.dtype(cfg.dtype).itemsize
    return 2 * cfg.n_layers * cfg.kv_heads * max_new * cfg.head_dim * itemsize + 4 * vocab + 8


def level_width(vocab: int, depth: int, min_prob: float) -> float:
    """docs/scaling.md: prefixes expanded at depth t: min(V^t, 1 / min_prob)."""
    return min(float(vocab) ** depth, 1 / min_prob if min_prob > 0 else math.inf)


def test_cost_model_matches_the_budget_code():
    from test_exact import random_lm

    lm = random_lm(0)
    for max_new in (1, 3, 8):
        assert frontier.path_state_bytes(lm, max_new) == kv_bytes_per_path(lm.config, max_new, lm.vocab_size)
    for max_new, min_prob in ((3, 0.0), (6, 1e-3), (8, 1e-6)):
        nodes, nbytes = budget.estimate_work(lm, max_new, min_prob=min_prob, max_paths=None, chunk=1024)
        widths = [level_width(lm.vocab_size, t, min_prob) for t in range(max_new)]
        assert nodes == int(sum(widths))
        V = lm.vocab_size
        per_path, widest = kv_bytes_per_path(lm.config, max_new, V), max(widths)
        listed = min(sum(widths[:-1]) + widths[-1] * V, 1 / min_prob if min_prob else math.inf)
        device = 2 * frontier.bucket(int(widest), 1024) * per_path + 2 * 1024 * per_path
        host = widest * V * 16 + widest * max_new * 4 + 2 * listed * (4 * max_new + 17)
        assert nbytes == int(device + host)


def test_docs_fit_table_is_the_cost_model():
    """Each row of docs/scaling.md's table fits its memory, and half its min_prob would not (powers of two)."""
    text = (HERE.parent / "docs" / "scaling.md").read_text()
    rows = re.findall(r"^\| (\d+) GiB \| (\S+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| ([\d.e+-]+) \| "
                      r"([\d,]+) \| [\d.]+ MiB \| ([\d.,]+) GiB \|", text, re.MULTILINE)
    assert len(rows) >= 12
    for memory, model, d_model, layers, vocab, max_new, chunk, min_prob, widest, host in rows:
        cfg = pp.ModelConfig(vocab_size=int(vocab), max_len=int(max_new) + 64, d_model=int(d_model),
                             n_layers=int(layers), n_heads=int(d_model) // 64, d_ff=4 * int(d_model))
        V, per_path = int(vocab), kv_bytes_per_path(cfg, int(max_new), int(vocab))
        held, width = _device_bytes(V, int(max_new), float(min_prob), per_path, int(chunk))
        wider, _ = _device_bytes(V, int(max_new), float(min_prob) / 2, per_path, int(chunk))
        assert held <= int(memory) * 2**30 < wider, (memory, model, max_new)
        assert width == int(widest.replace(",", ""))
        assert abs(width * V * 16 / 2**30 - float(host.replace(",", ""))) < 0.06


def _device_bytes(vocab: int, max_new: int, min_prob: float, per_path: int, chunk: int) -> tuple[int, int]:
    """(bytes the widest level holds on the device: the walk's level bytes less its host tables, its width)."""
    from pathprob.paths.trie import level_bytes

    width = int(max(level_width(vocab, t, min_prob) for t in range(max_new)))
    return level_bytes(width, vocab, per_path, chunk) - width * vocab * 16, width
