"""Train the shipped models in checkpoints/ (deterministic: fixed seeds and configs).

    python scripts/make_checkpoints.py [--only concepts|arith] [--out checkpoints]

Each run keeps only its final checkpoint (keep=1) and its metrics.jsonl. The
printed summary (eval loss vs the truth's cross-entropy, wall time) is recorded
in docs/checkpoints.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pathprob as pp

RUNS = {
    "concepts": dict(language="concepts", steps=2000, batch_size=64, learning_rate=3e-3, warmup_steps=100,
                     save_every=2000, eval_every=250, log_every=50, keep=1, seed=0),
    "arith": dict(language="arith", steps=1500, batch_size=64, learning_rate=3e-3, warmup_steps=100,
                  save_every=1500, eval_every=250, log_every=50, keep=1, seed=0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(RUNS))
    parser.add_argument("--out", type=Path, default=Path("checkpoints"))
    args = parser.parse_args()
    summary = {}
    for name, fields in RUNS.items():
        if args.only and name != args.only:
            continue
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        result = pp.train(pp.TrainConfig(out=str(out), **fields), progress=False)
        summary[name] = {"steps": result.step, "eval_loss": result.eval_loss,
                         "truth_eval_loss": result.truth_eval_loss, "seconds": time.perf_counter() - t0}
        print(json.dumps({name: summary[name]}), flush=True)


if __name__ == "__main__":
    main()
