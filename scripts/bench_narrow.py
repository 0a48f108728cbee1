"""Time a 5-point narrowing curve (k = 0, 1, 2, 4, 8) on checkpoints/concepts, model + truth.

Compile vs run: the curve is computed twice in one process; the first call pays
compilation and running, the second only running (every shape is already
compiled). Batched vs per-prompt: the same per-prompt entropies through a Python
loop over ``enumerate_paths`` (one prompt at a time), on ``--loop-prompts``
prompts per k, timed warm (second pass) and as a time per prompt.

    /work/venv/bin/python scripts/bench_narrow.py [--n-prompts 64] [--loop-prompts 16]

Prints a markdown table row.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import pathprob as pp
from pathprob.analysis.narrowing import concept_prompts, narrowing_curve
from pathprob.paths.measure import entropy_from_table

K = (0, 1, 2, 4, 8)


def per_prompt_loop(lm, truth, prompts: dict, max_new: int, min_prob: float, truth_min_prob: float) -> list:
    values = []
    for k in K:
        for row in prompts[k]:
            for model, floor in ((lm, min_prob), (truth, truth_min_prob)):
                values.append(entropy_from_table(pp.enumerate_paths(model, row.tolist(), max_new, min_prob=floor)))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/concepts")
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--loop-prompts", type=int, default=16)
    parser.add_argument("--min-prob", type=float, default=1e-4)
    parser.add_argument("--truth-min-prob", type=float, default=1e-6)
    args = parser.parse_args()
    lm, lang = pp.open_model(args.model), pp.get_language("concepts")
    truth = lang.truth()
    options = dict(key=0, truth=truth, min_prob=args.min_prob, truth_min_prob=args.truth_min_prob)

    t0 = time.perf_counter()
    curve = narrowing_curve(lm, lang, K, args.n_prompts, **options)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = narrowing_curve(lm, lang, K, args.n_prompts, **options)
    second = time.perf_counter() - t0
    assert np.allclose(curve.model_mean, again.model_mean) and np.allclose(curve.truth_mean, again.truth_mean)

    _, prompts = concept_prompts(lang, K, args.loop_prompts, 0)
    max_new = lang.example_len + 1
    t0 = time.perf_counter()
    per_prompt_loop(lm, truth, prompts, max_new, args.min_prob, args.truth_min_prob)
    loop_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_prompt_loop(lm, truth, prompts, max_new, args.min_prob, args.truth_min_prob)
    loop_warm = time.perf_counter() - t0

    batched_per_prompt = second / (len(K) * args.n_prompts)
    loop_per_prompt = loop_warm / (len(K) * args.loop_prompts)
    print(curve)
    print("| curve | prompts x k | first call (compile + run) s | second call (run) s | compile s (diff) "
          "| batched run s/prompt | loop run s/prompt | loop first pass s | batched speed-up (run) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| narrowing k=0,1,2,4,8 model+truth (min_prob {args.min_prob:g}/{args.truth_min_prob:g}) "
          f"| {args.n_prompts} x 5 | {first:.1f} | {second:.1f} | {first - second:.1f} "
          f"| {batched_per_prompt * 1e3:.1f} ms | {loop_per_prompt * 1e3:.1f} ms ({args.loop_prompts} prompts/k) "
          f"| {loop_first:.1f} | {loop_per_prompt / batched_per_prompt:.1f}x |")


if __name__ == "__main__":
    main()
