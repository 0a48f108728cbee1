"""Trainer throughput against a baseline revision of pathprob/training.py, interleaved in one process.

    python scripts/bench_train.py [--baseline dfacaa3] [--steps 175] [--rounds 3]

Trains the default ``concepts`` config (only ``steps`` and ``out`` changed) with the baseline trainer
(``git show REV:pathprob/training.py``, loaded as a module beside the current package) and the
current one, alternating A/B then B/A each round. Steps/s is measured between the first and the
last non-final logging step (records' ``wall_s``), so compilation, the truth's cross-entropy and the
final evaluation and save are outside the window. Prints the median of each, their ratio, and
whether both trained bit-identically (every logged loss, gradient norm and learning rate, and the
final parameters' digest).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pathprob as pp
from pathprob import training
from pathprob.checkpoint import tree_digest
from pathprob.files import dumps
from pathprob.rundir import read_metrics

REPO = Path(__file__).resolve().parents[1]


def load_baseline(rev: str, directory: Path):
    """The trainer module of revision ``rev``, importable as ``baseline_training``."""
    source = subprocess.run(["git", "show", f"{rev}:pathprob/training.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = directory / "baseline_training.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_training", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def one_run(trainer, cfg: pp.TrainConfig) -> dict:
    """Steps/s of one run inside its logging window, and what it trained (for the bit-identity check)."""
    trainer.train(cfg, progress=False)
    logged = [r for r in read_metrics(cfg.out) if "loss" in r]
    window = [r for r in logged if r["step"] < cfg.steps]
    first, last = window[0], window[-1]
    return {"steps_per_s": (last["step"] - first["step"]) / (last["wall_s"] - first["wall_s"]),
            "trained": [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in logged],
            "params": tree_digest(pp.open_model(cfg.out).params)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="dfacaa3", help="git revision of the baseline trainer")
    parser.add_argument("--steps", type=int, default=175)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {"baseline": load_baseline(args.baseline, Path(tmp)), "current": training}
        runs = {name: [] for name in trainers}
        for round_ in range(args.rounds):
            order = list(trainers) if round_ % 2 == 0 else list(trainers)[::-1]
            for name in order:
                cfg = pp.TrainConfig(out=f"{tmp}/{name}{round_}", steps=args.steps)
                runs[name].append(one_run(trainers[name], cfg))
                print(dumps({"round": round_, "trainer": name, "steps_per_s": runs[name][-1]["steps_per_s"]}),
                      flush=True)
    median = {name: statistics.median(r["steps_per_s"] for r in results) for name, results in runs.items()}
    identical = all(r["trained"] == runs["baseline"][0]["trained"] and r["params"] == runs["baseline"][0]["params"]
                    for results in runs.values() for r in results)
    print(json.dumps({"baseline": args.baseline, "steps": args.steps, "rounds": args.rounds,
                      "median_steps_per_s": median, "ratio": median["current"] / median["baseline"],
                      "bit_identical": identical}))


if __name__ == "__main__":
    main()
