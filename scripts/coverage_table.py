"""Coverage of each Monte-Carlo method's 95% interval on one set, against the exact value.

    python scripts/coverage_table.py checkpoints/concepts --prompt "^abkbk;" --regex ".*k.*k.*k.*" \
        --max-new 5 -n 256 --seeds 200 [--truth 1.854196964e-3] [--json out.json]

For each method, over seeds 0..seeds-1: the fraction of intervals that contain the exact
value (computed by enumeration unless ``--truth`` gives it), the median interval width
relative to the value, how many intervals had zero width or were [0, 0], how many
estimates were flagged unreliable and how many of those missed, and the median seconds.
docs/estimators.md quotes its output.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pathprob as pp
from pathprob.files import write_json

METHODS = {  # name: (method, options)
    "mc": ("mc", {}),
    "is-T1": ("is", {}),
    "is-T1.5": ("is", {"temperature": 1.5}),
    "smc": ("smc", {}),
    "smc-resample0.5": ("smc", {"resample": 0.5}),
    "swor": ("swor", {}),
    "hybrid": ("hybrid", {}),
}


def coverage_row(lm, prompt: str, pathset, max_new: int, n: int, seeds: int, truth: float, method: str,
                 options: dict) -> dict:
    covered = zero_width = empty = flagged = flagged_missed = 0
    widths, seconds = [], []
    for seed in range(seeds):
        t0 = time.perf_counter()
        est = pp.mass(lm, prompt, pathset, max_new, method=method, n=n, key=seed, **options)
        seconds.append(time.perf_counter() - t0)
        hit = est.lower <= truth <= est.upper
        covered += hit
        zero_width += est.upper == est.lower
        empty += est.upper == 0.0
        flagged += not est.reliable
        flagged_missed += not est.reliable and not hit
        widths.append((est.upper - est.lower) / truth)
    return {"coverage": covered / seeds, "median_relative_width": statistics.median(widths),
            "zero_width": zero_width, "zero_zero": empty, "unreliable": flagged, "unreliable_missed": flagged_missed,
            "median_seconds": statistics.median(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--regex", required=True)
    parser.add_argument("--max-new", type=int, required=True)
    parser.add_argument("-n", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--truth", type=float, default=None, help="the exact mass, if known (else enumerated)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated names from METHODS")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    lm = pp.open_model(args.model)
    pathset = pp.Regex(args.regex)
    truth = args.truth if args.truth is not None else pp.mass(lm, args.prompt, pathset, args.max_new).value
    print(f"{args.model} prompt {args.prompt!r} set {args.regex!r} max_new {args.max_new}: exact mass {truth:.6g}; "
          f"n = {args.n}, {args.seeds} seeds")
    print("| method | coverage | median width / value | zero-width | [0, 0] | unreliable (of which missed) | s |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for name in args.methods.split(","):
        method, options = METHODS[name]
        row = rows[name] = coverage_row(lm, args.prompt, pathset, args.max_new, args.n, args.seeds, truth, method,
                                        options)
        print(f"| {name} | {row['coverage']:.3f} | {row['median_relative_width']:.3g} | {row['zero_width']} | "
              f"{row['zero_zero']} | {row['unreliable']} ({row['unreliable_missed']}) | "
              f"{row['median_seconds']:.3f} |", flush=True)
    if args.json:
        write_json(args.json, {"model": args.model, "prompt": args.prompt, "regex": args.regex,
                               "max_new": args.max_new, "n": args.n, "seeds": args.seeds, "truth": truth,
                               "rows": rows})


if __name__ == "__main__":
    main()
