"""Benchmark the Transformer: teacher-forced scoring, KV-cache decoding, naive decoding.

Variants run interleaved (a b c a b c ...) in one process and the median over
rounds is reported, with ratios, because absolute times on shared machines move
by 20-30% from minute to minute. The float32 matmul peak (best of numpy and
jax.jit(jnp.dot) on square matrices) is sampled right before and right after the
teacher-forced run of every round, and each round's fraction of peak uses the
higher of its two samples.

    python scripts/bench_model.py [--rounds 5] [--batch 1024] [--sizes 128,512] [--teacher-forced-only] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.config import ModelConfig
from pathprob.data.tokenizer import CharTokenizer
from pathprob.models.base import repeat_paths
from pathprob.models.transformer import TransformerLM, init_transformer

VOCAB = 64


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Best float32 GFLOP/s of numpy and jax.jit(jnp.dot) on n x n matrices."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    dot = jax.jit(jnp.dot)
    ja = jnp.asarray(a)
    dot(ja, ja).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter(); a @ a; best = min(best, time.perf_counter() - t)
        t = time.perf_counter(); dot(ja, ja).block_until_ready(); best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def timed(run) -> float:
    """Seconds until ``run()``'s result is ready."""
    t = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - t


def timed_between_peaks(run, peak_n: int) -> tuple[float, float]:
    """(seconds of ``run()``, the higher of the matmul peaks sampled right before and right after it).

    The shared host's matmul rate moves from minute to minute, so a fraction of peak
    compares a run with the peak of the same minute; taking the higher sample keeps
    the fraction conservative.
    """
    before = matmul_peak(peak_n)
    seconds = timed(run)
    return seconds, max(before, matmul_peak(peak_n))


def interleaved_rounds(variants: dict, rounds: int, *, limits: dict | None = None, peak_of: str | None = None,
                       peak_n: int = 2048) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per variant and round, run interleaved (a b c a b c ...) after one compile run each.

    ``variants[name](key)`` runs one variant. ``limits[name]`` caps the rounds of a slow
    variant (it still runs interleaved with the others). The variant ``peak_of`` is timed
    between two matmul-peak samples (``timed_between_peaks``); the second value returned
    holds each round's peak.
    """
    key = jax.random.key(0)
    for run in variants.values():
        jax.block_until_ready(run(key))
    times, peaks = {name: [] for name in variants}, []
    for r in range(rounds):
        for name, run in variants.items():
            if r >= (limits or {}).get(name, rounds):
                continue
            call = lambda: run(jax.random.fold_in(key, r + 1))
            if name == peak_of:
                seconds, peak = timed_between_peaks(call, peak_n)
                peaks.append(peak)
            else:
                seconds = timed(call)
            times[name].append(seconds)
    return times, peaks


def forward_flops_per_token(cfg: ModelConfig, context: int) -> float:
    """Matmul FLOPs of one token's forward pass attending over ``context`` positions."""
    D, F = cfg.d_model, cfg.d_ff
    per_layer = 2 * D * 3 * D + 2 * D * D + 2 * 2 * D * F + 2 * 2 * context * D
    return cfg.n_layers * per_layer + 2 * D * cfg.vocab_size


def _sample(logprobs_BV: jax.Array, key: jax.Array) -> jax.Array:
    """Inverse-CDF sampling: one uniform per row (cheaper than jax.random.categorical on CPU)."""
    u = jax.random.uniform(key, (logprobs_BV.shape[0], 1))
    cdf = jnp.cumsum(jnp.exp(logprobs_BV), axis=-1)
    return jnp.minimum(jnp.sum(cdf < u * cdf[:, -1:], axis=-1), logprobs_BV.shape[1] - 1).astype(jnp.int32)


def make_variants(lm: TransformerLM, prompt_P: np.ndarray, batch: int, new: int):
    P = prompt_P.shape[0]

    @jax.jit
    def teacher_forced(lm, tokens_BT):
        return jax.nn.log_softmax(lm.module.teacher_forced_logits(tokens_BT))

    @jax.jit
    def kv_decode(lm, key):
        state = repeat_paths(lm.start(jnp.asarray(prompt_P), new), batch)

        def step(state, key):
            tokens = _sample(lm.next_logprobs(state), key)
            return lm.advance(state, tokens), tokens

        _, tokens_LB = jax.lax.scan(step, state, jax.random.split(key, new))
        return tokens_LB.T

    @jax.jit
    def naive_step(lm, tokens_BT, key):
        logprobs = jax.nn.log_softmax(lm.module.teacher_forced_logits(tokens_BT)[:, -1])
        return jnp.concatenate([tokens_BT, _sample(logprobs, key)[:, None]], axis=1)

    def naive_decode(lm, key):
        tokens = jnp.broadcast_to(jnp.asarray(prompt_P), (batch, P))
        for k in jax.random.split(key, new):
            tokens = naive_step(lm, tokens, k)
        return tokens[:, P:]

    docs = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (batch, P + new)), jnp.int32)
    return {
        "teacher_forced": lambda key: teacher_forced(lm, docs),
        "kv_cache_decode": lambda key: kv_decode(lm, key),
        "naive_decode": lambda key: naive_decode(lm, key),
    }


def bench(cfg: ModelConfig, *, batch: int, prompt: int, new: int, rounds: int, peak_n: int,
          naive_rounds: int | None = None, only_teacher_forced: bool = False) -> dict:
    tokenizer = CharTokenizer(tokens=tuple(chr(ord("A") + i) for i in range(VOCAB - 1)) + ("$",), eos="$")
    lm = TransformerLM.from_module(init_transformer(cfg, 0), tokenizer)
    prompt_P = np.random.default_rng(0).integers(0, VOCAB, prompt).astype(np.int32)
    variants = make_variants(lm, prompt_P, batch, new)
    if only_teacher_forced:
        variants = {"teacher_forced": variants["teacher_forced"]}
    # The naive loop is ~30x slower: fewer rounds of it keep the script under 15 minutes.
    limits = {"naive_decode": naive_rounds} if naive_rounds is not None else None
    times, peaks = interleaved_rounds(variants, rounds, limits=limits, peak_of="teacher_forced", peak_n=peak_n)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    T = prompt + new
    flops = batch * T * forward_flops_per_token(cfg, T)
    fractions = [flops / t / 1e9 / peak for t, peak in zip(times["teacher_forced"], peaks)]
    row = {
        "d_model": cfg.d_model, "n_layers": cfg.n_layers, "batch": batch, "prompt": prompt, "new": new,
        "tokens_per_s": {"teacher_forced": batch * T / med["teacher_forced"]},
        "seconds": med,
        "teacher_forced_gflops": flops / med["teacher_forced"] / 1e9,
        "matmul_peaks_gflops": peaks,
        "teacher_forced_fraction_of_peak": statistics.median(fractions),
    }
    if not only_teacher_forced:
        row["tokens_per_s"] |= {"kv_cache_decode": batch * new / med["kv_cache_decode"],
                                "naive_decode": batch * new / med["naive_decode"]}
        row["kv_over_naive"] = med["naive_decode"] / med["kv_cache_decode"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--naive-rounds-large", type=int, default=1,
                        help="rounds of the naive loop at d_model 512 (each takes minutes)")
    parser.add_argument("--sizes", help="comma-separated d_model values to run (default: 128,512)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    parser.add_argument("--teacher-forced-only", action="store_true", help="only the teacher-forced scoring row")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [(128, 2, 512), (512, 4, 2048)]
    if args.quick:
        args.batch, args.rounds, args.new, sizes = 16, 1, 4, [(32, 1, 64)]
    if args.sizes:
        sizes = [size for size in sizes if str(size[0]) in args.sizes.split(",")]
    peak_n = 256 if args.quick else 2048
    rows = []
    for d_model, n_layers, d_ff in sizes:
        cfg = ModelConfig(vocab_size=VOCAB, max_len=args.prompt + args.new, d_model=d_model, n_layers=n_layers,
                          n_heads=max(d_model // 64, 2), d_ff=d_ff)
        rows.append(bench(cfg, batch=args.batch, prompt=args.prompt, new=args.new, rounds=args.rounds, peak_n=peak_n,
                          naive_rounds=args.naive_rounds_large if d_model >= 512 else None,
                          only_teacher_forced=args.teacher_forced_only))
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
        return
    print(f"batch {args.batch}, prompt {args.prompt}, {args.new} new tokens, median of {args.rounds} interleaved rounds "
          f"({args.naive_rounds_large} of the naive loop at d_model 512); % of peak: median over rounds of the "
          "round's teacher-forced GFLOP/s over the higher of the matmul peaks sampled just before and after it")
    print("| d_model | layers | teacher-forced tok/s | KV-cache decode tok/s | naive decode tok/s "
          "| KV / naive | teacher-forced GFLOP/s | matmul peaks GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["tokens_per_s"]
        kv = f"{t['kv_cache_decode']:,.0f} | {t['naive_decode']:,.0f} | {r['kv_over_naive']:.1f}x" if "kv_over_naive" in r \
            else "- | - | -"
        print(f"| {r['d_model']} | {r['n_layers']} | {t['teacher_forced']:,.0f} | {kv} | {r['teacher_forced_gflops']:.1f} "
              f"| {min(r['matmul_peaks_gflops']):.0f}-{max(r['matmul_peaks_gflops']):.0f} "
              f"| {100 * r['teacher_forced_fraction_of_peak']:.0f}% |")


if __name__ == "__main__":
    main()
