"""Checks that need several devices or processes, run by tests/test_scale.py in subprocesses; prints one JSON line.

``python scale_checks.py devices OUT``: 8 devices forced on the CPU; the engines on one device
(``devices=1``) and on all of them (enumeration on 3 too), the unreachable-coordinator error, the
CLI's ``--devices``, training and a resume across device counts (3 devices, then 1).

``python scale_checks.py process ID PORT OUT``: one of two processes on loopback with 4 forced
devices each (``pp.distributed``): exact and SMC mass, a training run on the 8 devices of both,
and the trained checkpoint opened again by both.

Results are reported, not judged: the test file states the tolerances. Log-probabilities are
compared as raw float64 bits (``max_abs``: largest absolute difference, 0.0 when identical).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

MODE = sys.argv[1]
if MODE == "devices":
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax

if MODE == "process":
    jax.config.update("jax_num_cpu_devices", 4)

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np

import pathprob as pp

TRAIN = {"language": "arith", "batch_size": 8, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
         "eval_docs": 16, "warmup_steps": 2, "log_every": 1, "eval_every": 2, "steps": 4, "save_every": 2}
SET = pp.Regex("a.*")
PROMPT = [0, 1, 2]
PROMPTS = [[0, 1, 2], [0], [0, 3, 3, 1, 4], [0, 2]]
MAX_NEW = 4  # one suffix-cache size everywhere: the engines share their compiled programs


# The jobs the two-process run repeats; devices=None: every device.
def exact_mass(lm, devices):
    return pp.mass(lm, PROMPT, SET, MAX_NEW, devices=devices)


def smc_mass(lm, devices):
    return pp.mass(lm, PROMPT, SET, MAX_NEW, method="smc", n=1024, key=3, resample=0.5, particles=64, devices=devices)




def tiny_lm():
    from test_exact import TOKENIZER

    from pathprob.config import ModelConfig
    from pathprob.models.transformer import TransformerLM, init_transformer

    cfg = ModelConfig(vocab_size=TOKENIZER.vocab_size, max_len=16, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    return TransformerLM.from_module(init_transformer(cfg, 0), TOKENIZER)


def estimate(e: pp.Estimate) -> list:
    return [e.value, e.lower, e.upper, e.n, e.stderr]


def table(t: pp.PathTable) -> dict:
    return {"tokens": t.tokens.tolist(), "logp": t.logp.tolist(), "log_remaining": t.log_remaining,
            "log_covered": t.log_covered, "certified": t.stats.get("certified")}


def same_table(a: pp.PathTable, b: pp.PathTable) -> dict:
    """How b differs from a: whether the paths are the same, the largest log-prob difference, the remainders."""
    same_paths = a.tokens.shape == b.tokens.shape and bool(np.array_equal(a.tokens, b.tokens))
    return {"same_paths": same_paths,
            "max_abs": float(np.max(np.abs(a.logp - b.logp), initial=0.0)) if same_paths else None,
            "remaining": [a.remaining, b.remaining], "covered": [a.log_covered, b.log_covered],
            "certified": [a.stats.get("certified"), b.stats.get("certified")]}


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def unreachable() -> dict:
    """pp.distributed.initialize against a port nothing listens on: a one-line PathprobError, in bounded time."""
    with socket.socket() as s:  # a free port, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    try:
        pp.distributed.initialize(f"127.0.0.1:{port}", 2, 1, timeout_s=1.0)
    except pp.PathprobError as err:
        return {"error": str(err), "type": type(err).__name__, "seconds": time.perf_counter() - t0}
    return {"error": None, "seconds": time.perf_counter() - t0}


def devices_mode(out: Path) -> dict:
    clock = [time.perf_counter()]
    seconds = {}

    def lap(name: str) -> None:
        now = time.perf_counter()
        seconds[name], clock[0] = now - clock[0], now

    result = {"unreachable": unreachable(), "device_count": len(jax.devices()), "seconds": seconds}
    lm = tiny_lm()
    one, every, three = 1, None, 3

    # Chunks of 64 rows: a level of up to 216 prefixes is several chunks, spread over the devices.
    full = pp.enumerate_paths(lm, PROMPT, MAX_NEW, chunk=64, devices=one)
    pruned = pp.enumerate_paths(lm, PROMPT, MAX_NEW, chunk=64, min_prob=2e-3, max_paths=60, devices=one)
    result["enumerate"] = {
        "full": {"every": same_table(full, pp.enumerate_paths(lm, PROMPT, MAX_NEW, chunk=64, devices=every)),
                 "three": same_table(full, pp.enumerate_paths(lm, PROMPT, MAX_NEW, chunk=64, devices=three))},
        "pruned": {"every": same_table(pruned, pp.enumerate_paths(lm, PROMPT, MAX_NEW, chunk=64, min_prob=2e-3,
                                                                  max_paths=60, devices=every))}}
    lap("enumerate")
    reference = pp.enumerate_many(lm, PROMPTS, MAX_NEW, chunk=64, devices=one)
    sharded = pp.enumerate_many(lm, PROMPTS, MAX_NEW, chunk=64)
    result["many"] = [same_table(a, b) for a, b in zip(reference, sharded)]
    # Batches of 8 prefixes per device: 64 at once on 8 devices, so the search looks further ahead there.
    result["top_k"] = same_table(pp.top_k(lm, PROMPT, 40, MAX_NEW, chunk=8, devices=one),
                                 pp.top_k(lm, PROMPT, 40, MAX_NEW, chunk=8))
    lap("many, top_k")

    runs = {
        "mc_mass": lambda d: pp.mass(lm, PROMPT, SET, MAX_NEW, method="mc", n=5000, key=3, devices=d),
        "mc_entropy": lambda d: pp.entropy(lm, PROMPT, MAX_NEW, method="mc", n=5000, key=3, devices=d),
        "is": lambda d: pp.mass(lm, PROMPT, SET, MAX_NEW, method="is", n=1500, key=1, chunk=256, temperature=1.5,
                                devices=d),
        "sis": lambda d: pp.mass(lm, PROMPT, SET, MAX_NEW, method="smc", n=1500, key=1, chunk=256, devices=d),
        "smc": lambda d: smc_mass(lm, d),
        "hybrid": lambda d: pp.mass(lm, PROMPT, SET, MAX_NEW, method="hybrid", n=1500, key=1, chunk=256, min_prob=1e-2,
                                    devices=d),
        "kl_mc": lambda d: pp.kl(lm, PROMPT, lm, [0, 2], MAX_NEW, method="mc", n=3000, key=2, devices=d),
    }
    result["estimates"] = {name: {"one": estimate(run(one)), "every": estimate(run(every))}
                           for name, run in runs.items()}
    lap("estimates")
    # 40 draws over 36 prefixes at depth 2: the count sampler hands them over to the per-particle sampler.
    a, b = (pp.sample(lm, PROMPT, 40, MAX_NEW, key=4, devices=d) for d in (one, every))
    result["sample"] = {"same": bool(np.array_equal(a.tokens, b.tokens) and np.array_equal(a.logp, b.logp))}
    result["reference"] = {  # one device, for the two-process checks
        "exact": estimate(exact_mass(lm, one)), "smc": result["estimates"]["smc"]["one"]}

    lap("sample, reference")
    from typer.testing import CliRunner

    from pathprob.cli import app

    cli = {}
    for d in ("1", "8"):
        got = CliRunner().invoke(app, ["mass", "truth:arith", "--prompt", "^1+", "--max-new", "3", "--regex", "2.*",
                                       "--method", "mc", "-n", "2000", "--json", "-", "--devices", d])
        cli[d] = json.loads(got.stdout) if got.exit_code == 0 else {"exit": got.exit_code, "output": got.output}
    bad = CliRunner().invoke(app, ["mass", "truth:arith", "--prompt", "^1+", "--max-new", "3", "--regex", "2.*",
                                   "--devices", "9"])
    result["cli"] = {"one": cli["1"], "eight": cli["8"], "too_many": [bad.exit_code, bad.output.strip()]}

    lap("cli")
    config = lambda name: pp.TrainConfig(**TRAIN, out=str(out / name))
    # (8 devices train in the two-process run)
    pp.train(config("one"), progress=False, devices=one)
    pp.train(config("moved"), progress=False, until=2, devices=three)  # 3 devices up to the step-2 checkpoint,
    pp.train(config("moved"), progress=False, devices=one)  # then resumed on one
    result["train"] = {name: losses(out / name) for name in ("one", "moved")}
    lap("train")
    return result


def process_mode(process_id: int, port: int, out: Path) -> dict:
    pp.distributed.initialize(f"127.0.0.1:{port}", 2, process_id, timeout_s=60)
    lm = tiny_lm()
    result = {"process": jax.process_index(), "processes": jax.process_count(), "devices": len(jax.devices())}
    result["exact"] = estimate(exact_mass(lm, None))
    result["smc"] = estimate(smc_mass(lm, None))
    trained = pp.train(pp.TrainConfig(**TRAIN, out=str(out / "two")), progress=False)
    result["train"] = {"step": trained.step, "eval_loss": trained.eval_loss}
    reopened = pp.open_model(out / "two")  # every process reads the checkpoint written by both
    result["score"] = pp.score(reopened, "^1+2=", ["3;", "4;", "12;"]).tolist()
    return result


if __name__ == "__main__":
    if MODE == "devices":
        report = devices_mode(Path(sys.argv[2]))
    else:
        report = process_mode(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    print("SCALE_RESULT " + json.dumps(report), flush=True)
