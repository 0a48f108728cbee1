"""Time the enumerations of a 5-point narrowing curve (k = 0, 1, 2, 4, 8) on checkpoints/concepts, model + truth.

Batched vs per-prompt: per k and model, ``enumerate_many`` walks all ``--n-prompts``
prompts at once (every prompt padded to the longest, k = 8); the loop enumerates
``--loop-prompts`` of the same prompts one at a time with ``enumerate_paths``. Both
are timed warm (second pass, every shape compiled) as a time per prompt; the ratio
loop / batched is the speed-up of the batched walk. Then the whole curve
(``narrowing_curve``, which also measures supports) twice: compile + run, then run.

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
    options = {"key": 0, "truth": truth, "min_prob": args.min_prob, "truth_min_prob": args.truth_min_prob}

    max_new = lang.example_len + 1
    _, prompts = concept_prompts(lang, K, args.n_prompts, 0)
    width = prompts[K[-1]].shape[1]

    def batched() -> list:
        return [t for k in K for model, floor in ((lm, args.min_prob), (truth, args.truth_min_prob))
                for t in pp.enumerate_many(model, [r.tolist() for r in prompts[k]], max_new, min_prob=floor,
                                           prompt_width=width)]

    loop_prompts = {k: rows[: args.loop_prompts] for k, rows in prompts.items()}
    timings = {}
    for name, run in (("batched", batched),
                      ("loop", lambda: per_prompt_loop(lm, truth, loop_prompts, max_new, args.min_prob,
                                                       args.truth_min_prob))):
        t0 = time.perf_counter()
        run()
        timings[f"{name}_first"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run()
        timings[name] = time.perf_counter() - t0
    per_prompt = {"batched": timings["batched"] / (len(K) * args.n_prompts),
                  "loop": timings["loop"] / (len(K) * args.loop_prompts)}
    tables = batched()
    assert np.allclose([entropy_from_table(t) for t in tables[: args.loop_prompts]],
                       [entropy_from_table(pp.enumerate_paths(lm, r.tolist(), max_new, min_prob=args.min_prob))
                        for r in prompts[K[0]][: args.loop_prompts]], atol=1e-6)

    t0 = time.perf_counter()
    narrowing_curve(lm, lang, K, args.n_prompts, **options)
    curve_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    narrowing_curve(lm, lang, K, args.n_prompts, **options)
    curve_second = time.perf_counter() - t0
    print("| prompts x k | batched first pass s | batched warm s/prompt | loop warm s/prompt "
          "| batched speed-up (warm) | curve first call s | curve second call s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.n_prompts} x 5 (model {args.min_prob:g}, truth {args.truth_min_prob:g}) "
          f"| {timings['batched_first']:.1f} | {per_prompt['batched'] * 1e3:.1f} ms "
          f"| {per_prompt['loop'] * 1e3:.1f} ms ({args.loop_prompts} prompts/k) "
          f"| {per_prompt['loop'] / per_prompt['batched']:.2f}x | {curve_first:.1f} | {curve_second:.1f} |")


if __name__ == "__main__":
    main()
