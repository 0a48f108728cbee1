"""Cost of training probes at the default settings: N steps without a probe vs N steps + one probe, interleaved.

    python scripts/bench_probes.py [--language concepts] [--steps 100] [--rounds 3] [--run checkpoints/concepts]

One training state (the default TrainConfig, probe_every = --steps) is advanced in rounds
A B A B ...: A = ``steps`` train steps, B = ``steps`` train steps and one probe. The first probe
(compilation of the engine's shapes) runs before the rounds and is reported on its own. Printed:
the median A and B times and their ratio (the steady-state slow-down), and, with ``--run``, the
whole-run overhead of a real probed run from its metrics.jsonl (probe seconds / training seconds,
compilation included). Every probe's seconds spent compiling (JAX's ``/jax/core/compile/*`` events)
are printed too: the first probe after step 0 used to recompile for 10-15 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
from flax import nnx

import pathprob as pp
from pathprob.models.transformer import init_transformer
from pathprob.rundir import read_metrics
from pathprob.training import _batch, _make_steps, _new_watch, _Probes, make_optimizer

COMPILING = {"s": 0.0}


def _count_compiles(event: str, seconds: float, **kwargs) -> None:
    if event.startswith("/jax/core/compile/"):
        COMPILING["s"] += seconds


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def run_overhead(run_dir: Path) -> dict:
    """Probe seconds vs training seconds of a probed run (its step-0 probe included)."""
    records = read_metrics(run_dir)
    probe_s = sum(r["probe"]["seconds"] for r in records if "probe" in r)
    wall_s = max(r.get("wall_s", 0.0) for r in records)  # excludes the step-0 probe and setup
    first = next((r["probe"]["seconds"] for r in records if r["step"] == 0 and "probe" in r), 0.0)
    probes = sum(1 for r in records if "probe" in r)
    train_s = wall_s - (probe_s - first)
    return {"run": str(run_dir), "probes": probes, "probe_s": probe_s, "train_s": train_s,
            "overhead": probe_s / train_s, "overhead_without_first": (probe_s - first) / train_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--language", default="concepts")
    parser.add_argument("--steps", type=int, default=100, help="train steps per round (= probe_every)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run", type=Path, help="a probed run directory to report the whole-run overhead of")
    args = parser.parse_args()

    cfg = pp.TrainConfig(language=args.language, probe_every=args.steps)
    language = pp.get_language(cfg.language)
    model_cfg = cfg.model_config(vocab_size=language.tokenizer.vocab_size, max_len=language.max_len)
    tx = make_optimizer(cfg)
    graphdef, params = nnx.split(init_transformer(model_cfg, cfg.seed))
    opt_state = tx.init(params)
    train_step, _ = _make_steps(graphdef, tx, cfg.max_nonfinite)
    watch = _new_watch(0)
    t0 = time.perf_counter()
    probes = _Probes(cfg, language, language.truth(), graphdef, model_cfg)
    setup_s = time.perf_counter() - t0
    compile_s = []

    def probe() -> None:
        before = COMPILING["s"]
        probes(params)
        compile_s.append(COMPILING["s"] - before)

    t0 = time.perf_counter()
    probe()
    first_s = time.perf_counter() - t0

    step = 0

    def advance(n: int) -> None:
        nonlocal params, opt_state, watch, step
        for _ in range(n):
            params, opt_state, watch, _ = train_step(params, opt_state, watch, _batch(cfg, language, step))
            step += 1
        jax.block_until_ready(params)

    advance(2)  # compile the train step
    plain, probed = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        advance(args.steps)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        advance(args.steps)
        probe()
        probed.append(time.perf_counter() - t0)
    a, b = statistics.median(plain), statistics.median(probed)
    result = {"language": cfg.language, "steps_per_round": args.steps, "rounds": args.rounds,
              "truth_setup_s": setup_s, "first_probe_s": first_s, "median_plain_s": a, "median_probed_s": b,
              "ratio": b / a, "plain_s": plain, "probed_s": probed, "probe_compile_s": compile_s}
    if args.run is not None:
        result["whole_run"] = run_overhead(args.run)
    print(json.dumps(result, indent=1))
    print(f"| {cfg.language} | probe every {args.steps} | {a:.1f} s | {b:.1f} s | {b / a:.3f} | "
          f"first probe {first_s:.1f} s, truth setup {setup_s:.1f} s; compiling per probe "
          f"{', '.join(f'{c:.2f}' for c in compile_s)} s |")


if __name__ == "__main__":
    main()
