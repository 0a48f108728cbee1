"""Benchmark the Monte-Carlo engine: KV-cache sampling, small batches, sample efficiency, % of peak.

1. Sampling throughput, the jitted KV-cache chunk (``lax.scan`` over steps, prompt cache
   shared) against the naive loop that recomputes the whole prefix every step, run
   interleaved (a b a b ...), median of ``--rounds``; target >= 15x at max_new 64,
   prompt 32, d_model 128 / 2 layers, n 4096. Also n = 1 and 8 (the whole loop in one jit).
2. Sample efficiency for a rare regex: relative RMSE over seeds of mc / is / smc / hybrid
   at an equal number of model calls (rows advanced by one token), against the exact value.
3. d_model 512 / 4 layers: sampled tokens/s as a fraction of the float32 matmul peak
   measured in the same run (FLOPs per token as in ``bench_model.py``, target >= 70%), with
   the two floors that bound it: the same steps' matrix products alone, and reading every
   path's suffix KV cache once per step (``bench_peak``).

    python scripts/bench_sample.py [--rounds 3] [--peak-only] [--quick] [--json]

The full run takes about 15 minutes on a 2-core CPU, most of it the naive loop at n = 4096
(``--naive-rounds``); ``--quick`` runs tiny sizes to check that the script works.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import VOCAB, forward_flops_per_token, interleaved_rounds

import pathprob as pp
from pathprob.config import ModelConfig
from pathprob.data.tokenizer import CharTokenizer
from pathprob.models.transformer import TransformerLM, init_transformer
from pathprob.paths import frontier, proposal, sample
from pathprob.paths.montecarlo import mass_mc

TOKENIZER = CharTokenizer(tokens=tuple(chr(ord("A") + i) for i in range(VOCAB - 1)) + ("$",), eos="$")


def make_lm(d_model: int, n_layers: int, d_ff: int, max_len: int, seed: int = 0) -> TransformerLM:
    cfg = ModelConfig(vocab_size=VOCAB, max_len=max_len, d_model=d_model, n_layers=n_layers,
                      n_heads=max(d_model // 64, 2), d_ff=d_ff)
    return TransformerLM.from_module(init_transformer(cfg, seed), TOKENIZER)


def kv_sampler(lm, prompt_P: np.ndarray, batch: int, new: int):
    """The engine's chunk program, called as ``sample.stream`` calls it (device time only)."""
    root = frontier.start(lm, jnp.asarray(prompt_P), new)[0]

    def run(key):
        return sample._sample_chunk(lm, root, None, None, None, None, key, batch=batch, max_new=new,
                                    proposal=proposal.MODEL, track=())["tokens"]

    return run


def naive_sampler(lm, prompt_P: np.ndarray, batch: int, new: int):
    """Recompute the full forward over prompt + prefix at every step (one jitted step per length)."""

    @jax.jit
    def step(lm, tokens_BT, key):
        logprobs_BV = jax.nn.log_softmax(lm.module.teacher_forced_logits(tokens_BT)[:, -1])
        token_B = proposal.inverse_cdf(logprobs_BV, jax.random.uniform(key, (tokens_BT.shape[0],)))
        return jnp.concatenate([tokens_BT, token_B[:, None]], axis=1)

    def run(key):
        tokens = jnp.broadcast_to(jnp.asarray(prompt_P), (batch, prompt_P.shape[0]))
        for k in jax.random.split(key, new):
            tokens = step(lm, tokens, k)
        return tokens

    return run


def bench_throughput(*, d_model, n_layers, d_ff, prompt, new, batches, rounds, naive_rounds) -> list[dict]:
    lm = make_lm(d_model, n_layers, d_ff, prompt + new)
    prompt_P = np.random.default_rng(0).integers(0, VOCAB - 1, prompt).astype(np.int32)
    rows = []
    for batch in batches:
        variants = {"kv": kv_sampler(lm, prompt_P, batch, new), "naive": naive_sampler(lm, prompt_P, batch, new)}
        times, _ = interleaved_rounds(variants, rounds, limits={"naive": naive_rounds if batch >= 1024 else rounds})
        med = {name: statistics.median(ts) for name, ts in times.items()}
        rows.append({"d_model": d_model, "n_layers": n_layers, "n": batch, "prompt": prompt, "max_new": new,
                     "kv_tokens_per_s": batch * new / med["kv"], "naive_tokens_per_s": batch * new / med["naive"],
                     "kv_over_naive": med["naive"] / med["kv"], "seconds": med})
    return rows


def dense_floor(lm, batch: int, new: int):
    """The chunk's matrix products alone: ``new`` steps of every layer's qkv, proj and MLP
    and the unembedding for ``batch`` rows, without attention or sampling."""
    D = lm.config.d_model

    @jax.jit
    def run(lm, x_BD):
        model = lm.module

        def step(x_BD, _):
            h = x_BD[:, None]
            for block in model.blocks:
                h = h + block.proj(block.qkv(block.ln1(h))[..., :D])
                h = h + block.mlp(h)
            return h[:, 0], jnp.sum(model.logits(h))

        return jax.lax.scan(step, x_BD, None, length=new)

    x_BD = jnp.asarray(np.random.default_rng(2).standard_normal((batch, D)), jnp.float32)
    return lambda key: run(lm, x_BD)


def cache_read_floor(lm, batch: int, new: int):
    """``new`` steps that each read every layer's full suffix k and v caches once (capacity ``new``).

    Each step reduces every cache scaled by the running total, so no read can be hoisted
    out of the loop; of the formulations tried this was the fastest read on XLA:CPU.
    """
    cfg = lm.config
    caches = tuple(jnp.full((batch, cfg.n_heads, new, cfg.head_dim), 0.5, jnp.float32) for _ in range(2 * cfg.n_layers))

    @jax.jit
    def run(caches):
        def step(total, _):
            return total + 1e-12 * sum(jnp.sum(c * total) for c in caches), None

        return jax.lax.scan(step, jnp.float32(1.0), None, length=new)[0]

    return lambda key: run(caches)


def bench_peak(*, d_model, n_layers, d_ff, prompt, new, batch, rounds, peak_n) -> dict:
    """Sampled tokens/s at d_model 512 as a fraction of the matmul peak, and what bounds it.

    Every round times the engine's chunk between two matmul-peak samples (the higher one
    is the round's peak) and, interleaved, two floors: the same steps' matrix products
    alone, and reading every path's suffix KV cache once per step. Attention must read
    each path's filled cache every step (on average (new + 1) / (2 new) of the capacity),
    so no sampler can beat ``dense + filled share x read`` seconds on this machine.
    """
    lm = make_lm(d_model, n_layers, d_ff, prompt + new)
    prompt_P = np.random.default_rng(0).integers(0, VOCAB - 1, prompt).astype(np.int32)
    variants = {"kv": kv_sampler(lm, prompt_P, batch, new), "dense": dense_floor(lm, batch, new),
                "read": cache_read_floor(lm, batch, new)}
    flops = batch * new * forward_flops_per_token(lm.config, prompt + new // 2)
    filled = (new + 1) / (2 * new)
    times, peaks = interleaved_rounds(variants, rounds, peak_of="kv", peak_n=peak_n)
    fractions = [flops / t / 1e9 / peak for t, peak in zip(times["kv"], peaks)]
    bounds = [flops / (dense + filled * read) / 1e9 / peak
              for dense, read, peak in zip(times["dense"], times["read"], peaks)]
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {"d_model": d_model, "n_layers": n_layers, "n": batch, "prompt": prompt, "max_new": new,
            "tokens_per_s": batch * new / med["kv"], "gflops": flops / med["kv"] / 1e9, "seconds": med,
            "matmul_peaks_gflops": peaks, "fraction_of_peak": statistics.median(fractions),
            "dense_fraction_of_peak": statistics.median(
                [flops / t / 1e9 / p for t, p in zip(times["dense"], peaks)]),
            "bound_fraction_of_peak": statistics.median(bounds), "filled_share": filled}


def bench_efficiency(*, calls: int, seeds: int, min_prob: float) -> dict:
    """Relative RMSE of each method at ``calls`` rows advanced, rare regex on a d_model 128 model."""
    lm = make_lm(128, 2, 512, 16)
    prompt, max_new, pattern = [0, 1, 2, 3], 4, "[A-H]{3}"  # 3 of 8 letters then EOS: mass 1.8e-5
    # DFA pruning keeps the exact job tiny; the budget check does not know that (it assumes V^t prefixes).
    truth = pp.mass(lm, prompt, pattern, max_new, budget=pp.Budget(max_nodes=1 << 62, max_bytes=1 << 62))
    assert truth.exact
    n = calls // max_new
    methods = {
        "mc": lambda key: mass_mc(lm, prompt, pattern, max_new, method="mc", n=n, key=key),
        "is (T=2)": lambda key: mass_mc(lm, prompt, pattern, max_new, method="is", n=n, key=key, temperature=2.0),
        "smc": lambda key: mass_mc(lm, prompt, pattern, max_new, method="smc", n=n, key=key),
        "smc (resample 0.5)": lambda key: mass_mc(lm, prompt, pattern, max_new, method="smc", n=n, key=key,
                                                  resample=0.5),
    }
    rows = {}
    for name, run in methods.items():
        estimates = [run(jax.random.key(s)) for s in range(seeds)]
        rows[name] = _summary(estimates, truth.value, n * max_new)
    # Hybrid: the head's expansions are model calls too; the samples get what is left.
    head = mass_mc(lm, prompt, pattern, max_new, method="hybrid", n=1, key=0, min_prob=min_prob).details["nodes"]
    n_hybrid = max((calls - head) // max_new, 1)
    estimates = [mass_mc(lm, prompt, pattern, max_new, method="hybrid", n=n_hybrid, key=jax.random.key(s),
                         min_prob=min_prob) for s in range(seeds)]
    rows[f"hybrid (min_prob {min_prob:g})"] = _summary(estimates, truth.value, head + n_hybrid * max_new)
    return {"pattern": pattern, "max_new": max_new, "exact": truth.value, "calls": calls, "seeds": seeds, "rows": rows}


def _summary(estimates, truth: float, calls: int) -> dict:
    errors = np.array([e.value - truth for e in estimates])
    return {"relative_rmse": float(math.sqrt(np.mean(errors**2)) / truth), "model_calls": calls,
            "coverage": float(np.mean([e.lower <= truth <= e.upper for e in estimates])),
            "median_ess": float(np.median([e.ess for e in estimates])),
            "seconds": float(np.median([e.seconds for e in estimates]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--naive-rounds", type=int, default=2,
                        help="rounds of the naive loop at n >= 1024 (about 5 minutes each at n = 4096 on 2 cores)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    parser.add_argument("--peak-only", action="store_true", help="only part 3, the d_model 512 fraction of peak")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        sizes = dict(prompt=8, new=8, big_batch=64, rounds=1, calls=1 << 12, seeds=2, peak_batch=16,
                     small=(32, 1, 64), large=(64, 1, 128), peak_n=256)
    else:
        sizes = dict(prompt=32, new=64, big_batch=4096, rounds=args.rounds, calls=1 << 18, seeds=5, peak_batch=1024,
                     small=(128, 2, 512), large=(512, 4, 2048), peak_n=2048)
    d, layers, ff = sizes["small"]
    throughput = [] if args.peak_only else bench_throughput(
        d_model=d, n_layers=layers, d_ff=ff, prompt=sizes["prompt"], new=sizes["new"],
        batches=(sizes["big_batch"], 8, 1), rounds=sizes["rounds"], naive_rounds=min(args.naive_rounds, sizes["rounds"]))
    d, layers, ff = sizes["large"]
    at_peak = bench_peak(d_model=d, n_layers=layers, d_ff=ff, prompt=sizes["prompt"], new=sizes["new"],
                         batch=sizes["peak_batch"], rounds=sizes["rounds"], peak_n=sizes["peak_n"])
    efficiency = None if args.peak_only else bench_efficiency(calls=sizes["calls"], seeds=sizes["seeds"], min_prob=1e-4)
    result = {"throughput": throughput, "peak": at_peak, "efficiency": efficiency,
              "quick": args.quick, "devices": [str(d) for d in jax.devices()]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"median of {sizes['rounds']} interleaved rounds\n")
    if throughput:
        print("| d_model | layers | n | prompt | max_new | KV-cache tok/s | naive tok/s | KV / naive |")
        print("|---|---|---|---|---|---|---|---|")
        for r in throughput:
            print(f"| {r['d_model']} | {r['n_layers']} | {r['n']} | {r['prompt']} | {r['max_new']} | "
                  f"{r['kv_tokens_per_s']:,.0f} | {r['naive_tokens_per_s']:,.0f} | {r['kv_over_naive']:.1f}x |")
    p = at_peak
    print(f"\nd_model {p['d_model']} / {p['n_layers']} layers, n {p['n']}, prompt {p['prompt']}, max_new {p['max_new']}: "
          f"{p['tokens_per_s']:,.0f} sampled tok/s, {p['gflops']:.1f} GFLOP/s = {100 * p['fraction_of_peak']:.0f}% "
          f"of the matmul peak (peaks {min(p['matmul_peaks_gflops']):.0f}-{max(p['matmul_peaks_gflops']):.0f} GFLOP/s)")
    ms = {name: 1e3 * seconds / p["max_new"] for name, seconds in p["seconds"].items()}
    print(f"  per step: sampler {ms['kv']:.1f} ms; its matrix products alone {ms['dense']:.1f} ms (if attention "
          f"were free: {100 * p['dense_fraction_of_peak']:.0f}% of peak); reading the full suffix KV caches "
          f"{ms['read']:.1f} ms; products + reading the filled share ({p['filled_share']:.2f}) of the caches: "
          f"{100 * p['bound_fraction_of_peak']:.0f}% of peak\n")
    if efficiency is None:
        return
    e = efficiency
    print(f"Rare regex {e['pattern']!r} (max_new {e['max_new']}), exact mass {e['exact']:.4g}, "
          f"{e['calls']:,} model calls per estimate, {e['seeds']} seeds")
    print("| method | model calls | relative RMSE | 95% CI coverage | median ESS | seconds |")
    print("|---|---|---|---|---|---|")
    for name, r in e["rows"].items():
        print(f"| {name} | {r['model_calls']:,} | {r['relative_rmse']:.3g} | {r['coverage']:.2f} | "
              f"{r['median_ess']:,.0f} | {r['seconds']:.2f} |")


if __name__ == "__main__":
    main()
