"""What running on several devices and processes costs: sharding overhead, the cross-process combine, GPU throughput.

    python scripts/bench_scale.py [--rounds 5] [--chunk 512] [--skip-processes]

- ``weak``: weak scaling on 8 devices forced on the CPU (a subprocess): a fixed chunk per device,
  D chunks per step for D = 1, 2, 4, 8. For each D the same work (one trie level of D x chunk
  children, and D x chunk ancestral samples) runs on one device (D chunk steps, the one-device
  path) and on D devices (one step of D chunks: exchange, sharded model step, host gather),
  interleaved, median of ``rounds``. With 2 cores the forced devices share them: the ratio
  sharded / one-device is the overhead of sharding itself (or its gain from using both cores),
  not a speed-up from more hardware.
- ``processes``: the same exact enumeration and guided-SIS estimate on 8 devices in one process
  and in two processes of 4 on loopback (gloo): the ratio is the cost of the cross-process
  combine (per-step gathers of every chunk's log-probabilities to every host), and the two
  results must be identical.
- ``gpu`` (only when a GPU is present): the device's float32 and bf16 matmul peak measured here,
  and the engines' throughput at d_model 512 and 1024 (8 layers, V 4096): trie-walk nodes/s
  and ancestral sampled tokens/s, with the fraction of the matmul peak their model FLOPs reach.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _median_pair(first, second, rounds: int) -> tuple[float, float]:
    """Median seconds of two callables, interleaved A B A B ... after one warm-up call each."""
    first(), second()
    a, b = [], []
    for _ in range(rounds):
        for fn, times in ((first, a), (second, b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def _char(i: int) -> str:
    """Token i's character (CJK code points: one character each, for any vocabulary up to 20k)."""
    return chr(0x4E00 + i)


def _model(d_model: int, layers: int, vocab: int, max_len: int = 64, dtype: str = "float32"):
    from pathprob.config import ModelConfig
    from pathprob.data.tokenizer import CharTokenizer
    from pathprob.models.transformer import TransformerLM, init_transformer

    tokens = tuple(_char(i) for i in range(vocab - 2)) + ("^", "$")
    tokenizer = CharTokenizer(tokens=tokens, eos="$", bos="^")
    cfg = ModelConfig(vocab_size=vocab, max_len=max_len, d_model=d_model, n_layers=layers,
                      n_heads=max(1, d_model // 64), d_ff=4 * d_model, dtype=dtype, param_dtype=dtype)
    return TransformerLM.from_module(init_transformer(cfg, 0), tokenizer)


# --- weak scaling on forced CPU devices ---------------------------------------------------------------


def weak(rounds: int, chunk: int) -> list[dict]:
    import numpy as np

    import pathprob as pp
    from pathprob.paths import ancestral
    from pathprob.paths.trie import Walker

    lm = _model(128, 2, 64)
    prompt, max_new = np.asarray([62, 1, 2, 3], np.int32), 4
    rows = []
    for D in (1, 2, 4, 8):
        width = D * chunk

        def level(devices, width=width):
            with pp.devices.using(devices):
                walker = Walker(lm, [prompt], max_new, chunk=chunk)
                first = walker.expand(np.zeros(64, np.int64), np.arange(64))
            parent, token = np.arange(width) % 64, (np.arange(width) * 7) % 64

            def run():
                with pp.devices.using(devices):
                    walker.level = first
                    walker.expand(parent, token)
            return run

        def sampling(devices, width=width):
            def run():
                with pp.devices.using(devices):
                    for _ in ancestral.stream(lm, prompt, width, max_new, key=0, chunk=chunk):
                        pass
            return run

        one_level, many_level = _median_pair(level(1), level(D), rounds)
        one_sample, many_sample = _median_pair(sampling(1), sampling(D), rounds)
        rows.append({"devices": D, "rows_per_step": width, "level_s_one_device": one_level,
                     "level_s_sharded": many_level, "level_ratio": many_level / one_level,
                     "nodes_per_s_sharded": width / many_level, "sample_s_one_device": one_sample,
                     "sample_s_sharded": many_sample, "sample_ratio": many_sample / one_sample,
                     "tokens_per_s_sharded": width * max_new / many_sample})
    return rows


# --- two processes on loopback ------------------------------------------------------------------------


def _job(rounds: int) -> dict:
    """The timed job of ``processes``: exact enumeration (mass) and guided SIS; median seconds and results."""
    import pathprob as pp

    lm = _model(64, 2, 16)
    prompt, pathset = [14, 1, 2], pp.Regex(f"{_char(1)}.*")
    exact = lambda: pp.mass(lm, prompt, pathset, 5, chunk=1024)  # 4,369 prefixes expanded, 69,905 paths
    sis = lambda: pp.mass(lm, prompt, pathset, 5, method="smc", n=32768, key=1, chunk=1024)
    t_exact, t_sis = _median_pair(exact, sis, rounds)
    e, s = exact(), sis()
    return {"exact_s": t_exact, "sis_s": t_sis, "exact": [e.value, e.lower, e.upper],
            "sis": [s.value, s.lower, s.upper]}


def processes(rounds: int, repeats: int = 3) -> dict:
    """One process of 8 devices and two of 4, launched alternately ``repeats`` times (the machine is shared)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    parse = lambda text: json.loads([line for line in text.splitlines() if line.startswith("{")][-1])
    runs = []
    for _ in range(repeats):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        single = subprocess.run([sys.executable, str(HERE), "--worker", "one", "--rounds", str(rounds)], env=env,
                                capture_output=True, text=True, check=True)
        procs = [subprocess.Popen([sys.executable, str(HERE), "--worker", str(i), "--port", port, "--rounds",
                                   str(rounds)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
        runs.append((parse(single.stdout), [parse(p.communicate()[0]) for p in procs]))
    ratio = lambda name: [two[0][name] / one[name] for one, two in runs]
    return {"runs": [{"one_process_8_devices": one, "two_processes_4_devices": two} for one, two in runs],
            "exact_ratios": ratio("exact_s"), "sis_ratios": ratio("sis_s"),
            "exact_ratio": statistics.median(ratio("exact_s")), "sis_ratio": statistics.median(ratio("sis_s")),
            "identical": all(t["exact"] == one["exact"] and t["sis"] == one["sis"] for one, two in runs for t in two)}


def worker(which: str, port: str | None, rounds: int) -> None:
    import jax

    if which == "one":
        jax.config.update("jax_num_cpu_devices", 8)
    else:
        jax.config.update("jax_num_cpu_devices", 4)
        import pathprob as pp

        pp.distributed.initialize(f"127.0.0.1:{port}", 2, int(which), timeout_s=60)
    print(json.dumps(_job(rounds)), flush=True)


# --- GPU ----------------------------------------------------------------------------------------------


def gpu(rounds: int, *, n: int = 8192, d_models: tuple[int, ...] = (512, 1024), width: int = 16384,
        samples: int = 16384, chunk: int = 4096) -> dict:
    """Matmul peak and engine throughput (the defaults are for a GPU; smaller ones smoke-test it on a CPU).

    Walk: one trie level of ``width`` children expanded (``Walker.expand``: gather, model step,
    write, log-probabilities to the host), after a 32-token prompt; at d_model 1024 its two pools
    take 2 x 16,384 x 1 MiB of suffix caches. Sampling: ``samples`` paths
    of 16 tokens by the ancestral sampler. FLOPs per model evaluation: 2 x the weights
    (12 L D^2 + D V) plus attention over at most 64 positions, which is small beside them.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    import pathprob as pp
    from pathprob.paths import ancestral
    from pathprob.paths.trie import Walker

    roomy = pp.Budget(max_nodes=1 << 40, max_bytes=1 << 46)  # the device's memory is the limit here
    peak = {}
    for dtype in ("float32", "bfloat16"):
        a = jnp.ones((n, n), dtype)
        matmul = jax.jit(lambda x: x @ x)
        matmul(a).block_until_ready()
        t0 = time.perf_counter()
        for _ in range(10):
            out = matmul(a)
        out.block_until_ready()
        peak[dtype] = 10 * 2 * n**3 / (time.perf_counter() - t0)
    rows = []
    vocab, layers, max_new = 4096, 8, 16
    prompt = np.arange(1, 33, dtype=np.int32)
    parent, token = np.arange(width) % vocab, (np.arange(width) * 7) % vocab
    for d_model in d_models:
        lm = _model(d_model, layers, vocab, max_len=128)
        flops = 2 * (12 * layers * d_model**2 + d_model * vocab)
        walker = Walker(lm, [prompt], max_new, chunk=chunk, budget=roomy)
        first = walker.expand(np.zeros(vocab, np.int64), np.arange(vocab))

        def level(walker=walker, first=first):
            walker.level = first
            walker.expand(parent, token)

        sample = lambda lm=lm: [None for _ in ancestral.stream(lm, prompt, samples, max_new, key=0, chunk=chunk)]
        t_walk, t_sample = _median_pair(level, sample, rounds)
        tokens = samples * max_new
        rows.append({"d_model": d_model, "layers": layers, "vocab": vocab, "devices": len(jax.devices()),
                     "nodes_per_s": width / t_walk, "sampled_tokens_per_s": tokens / t_sample,
                     "walk_peak_fraction": width * flops / t_walk / peak["float32"],
                     "sample_peak_fraction": tokens * flops / t_sample / peak["float32"]})
    return {"device": str(jax.devices()[0].device_kind), "matmul_peak_flops": peak, "engines": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--skip-processes", action="store_true")
    parser.add_argument("--worker")
    parser.add_argument("--port")
    parser.add_argument("--section", choices=("weak", "processes", "gpu"))
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args.worker, args.port, args.rounds)
    if args.section == "weak":
        import jax

        jax.config.update("jax_num_cpu_devices", 8)
        print(json.dumps(weak(args.rounds, args.chunk)), flush=True)
        return
    if args.section == "processes":
        print(json.dumps(processes(args.rounds), indent=2), flush=True)
        return
    if args.section == "gpu":
        print(json.dumps(gpu(args.rounds)), flush=True)
        return
    report = {}
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        report["gpu"] = gpu(args.rounds)
    out = subprocess.run([sys.executable, str(HERE), "--section", "weak", "--rounds", str(args.rounds), "--chunk",
                          str(args.chunk)], capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    report["weak"] = json.loads(out.stdout.splitlines()[-1])
    if not args.skip_processes:
        report["processes"] = processes(args.rounds)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
