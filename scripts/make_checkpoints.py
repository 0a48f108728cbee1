"""Train the shipped models in checkpoints/ (deterministic: fixed seeds and configs).

    python scripts/make_checkpoints.py [--only concepts|arith|concepts-sparse] [--out checkpoints]

Each run keeps only its final checkpoint (keep=1: parameters and optimizer state as separate
items, each with its sha256 digest) and its metrics.jsonl, which holds
the probe records (every 100 steps and step 0: path entropy, set mass, tracked paths,
KL to the truth, for the language's default probe prompts) shown by ``pathprob dynamics``.
Probes use no randomness and do not touch the parameters, so the runs train exactly as
without them. The configs are ``pathprob.demo.SHIPPED_RUNS`` (``pathprob demo --train`` retrains the
same runs). The printed summary (eval loss vs the truth's cross-entropy, wall time) is recorded
in docs/checkpoints.md.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pathprob as pp
from pathprob.demo import SHIPPED_RUNS
from pathprob.files import dumps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SHIPPED_RUNS))
    parser.add_argument("--out", type=Path, default=Path("checkpoints"))
    args = parser.parse_args()
    summary = {}
    for name, fields in SHIPPED_RUNS.items():
        if args.only and name != args.only:
            continue
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        result = pp.train(pp.TrainConfig(out=str(out), **fields), progress=False)
        summary[name] = {"steps": result.step, "eval_loss": result.eval_loss,
                         "truth_eval_loss": result.truth_eval_loss, "seconds": time.perf_counter() - t0}
        print(dumps({name: summary[name]}), flush=True)


if __name__ == "__main__":
    main()
