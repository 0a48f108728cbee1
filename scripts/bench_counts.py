"""Sampling as counts down the trie: the cost follows the distinct prefixes, not n.

On ``checkpoints/concepts`` after ``^`` with max_new 6, ``pp.sample`` draws n paths as
multinomial counts at each distinct prefix (one model evaluation per distinct prefix).
Timed warm, interleaved (n = 2^10, 2^16, then the big n), median of ``--rounds``; the
target is time(2^16) <= 4 x time(2^10). The big n (default 10^9) is drawn with
``distinct=True`` (distinct rows and their counts; n rows would not fit in memory).

    python scripts/bench_counts.py [--rounds 3] [--big 1000000000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pathprob as pp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/concepts")
    parser.add_argument("--prompt", default="^")
    parser.add_argument("--max-new", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big", type=int, default=10**9)
    args = parser.parse_args()
    lm = pp.open_model(args.model)
    sizes = (2**10, 2**16, args.big)
    times, distinct = {n: [] for n in sizes}, {}
    for seed in range(args.rounds + 1):  # round 0 compiles
        for n in sizes:
            t0 = time.perf_counter()
            drawn = pp.sample(lm, args.prompt, n, args.max_new, key=seed, distinct=n == args.big)
            if seed:
                times[n].append(time.perf_counter() - t0)
            distinct[n] = len(set(map(tuple, drawn.tokens.tolist())))
    median = {n: statistics.median(t) for n, t in times.items()}
    print("| n | distinct paths | median s (warm) | / time(2^10) |")
    print("|---|---|---|---|")
    for n in sizes:
        print(f"| {n:,} | {distinct[n]:,} | {median[n]:.3f} | {median[n] / median[sizes[0]]:.2f}x |")


if __name__ == "__main__":
    main()
