"""Trainer throughput with and without a host sync after every step, interleaved in one process.

    python scripts/bench_train.py [--steps 175] [--rounds 3]

Trains the default ``concepts`` config (only ``steps`` and ``out`` changed) twice per round,
alternating the order: once with the trainer as it is, and once with its step wrapped to wait for
the device and read ``opt_state.notfinite_count`` back after every step — what the trainer did
before it stopped syncing (revision dfacaa3: ``skipped = int(opt_state.notfinite_count)`` each step,
so the next batch was drawn only after the step had finished). Steps/s is measured between the
first and the last non-final logging step (records' ``wall_s``), so compilation, the truth's
cross-entropy and the final evaluation and save are outside the window. Prints the median of each,
their ratio, and whether both trained bit-identically (every logged loss, gradient norm and
learning rate, and the final parameters' digest).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile

import jax

import pathprob as pp
from pathprob import training
from pathprob.checkpoint import tree_digest
from pathprob.files import dumps
from pathprob.rundir import read_metrics


@contextlib.contextmanager
def per_step_sync():
    """The trainer with its step followed by a read-back of ``notfinite_count`` (the old behaviour)."""
    make_steps = training._make_steps

    def synced(*args, **kwargs):
        train_step, eval_loss = make_steps(*args, **kwargs)

        def step(*step_args):
            out = train_step(*step_args)
            int(out[1].notfinite_count)  # waits for the step, as the old loop did
            return out

        return step, eval_loss

    training._make_steps = synced
    try:
        yield
    finally:
        training._make_steps = make_steps


def one_run(cfg: pp.TrainConfig) -> dict:
    """Steps/s of one run inside its logging window, and what it trained (for the bit-identity check)."""
    training.train(cfg, progress=False)
    logged = [r for r in read_metrics(cfg.out) if "loss" in r]
    window = [r for r in logged if r["step"] < cfg.steps]
    first, last = window[0], window[-1]
    return {"steps_per_s": (last["step"] - first["step"]) / (last["wall_s"] - first["wall_s"]),
            "trained": [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in logged],
            "params": tree_digest(pp.open_model(cfg.out).params)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=175)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants = {"per-step sync": per_step_sync, "current": contextlib.nullcontext}
    runs = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = list(variants) if round_ % 2 == 0 else list(variants)[::-1]
            for name in order:
                cfg = pp.TrainConfig(out=f"{tmp}/{name.replace(' ', '-')}{round_}", steps=args.steps)
                with variants[name]():
                    runs[name].append(one_run(cfg))
                print(dumps({"round": round_, "trainer": name, "steps_per_s": runs[name][-1]["steps_per_s"]}),
                      flush=True)
    median = {name: statistics.median(r["steps_per_s"] for r in results) for name, results in runs.items()}
    first = runs["current"][0]
    identical = all(r["trained"] == first["trained"] and r["params"] == first["params"]
                    for results in runs.values() for r in results)
    print(json.dumps({"steps": args.steps, "rounds": args.rounds, "jax_devices": len(jax.devices()),
                      "median_steps_per_s": median, "ratio": median["current"] / median["per-step sync"],
                      "bit_identical": identical}))


if __name__ == "__main__":
    main()
