"""Benchmark a GPT-2-small-shaped pretrained model loaded from a Hugging Face directory (``hf:DIR``).

Nothing is downloaded: random weights are written in GPT-2's Hugging Face layout (``config.json`` +
``model.safetensors``, 124M parameters: vocabulary 50257, 12 layers, width 768, 1024 positions)
into a temporary directory, with a synthetic byte-level ``tokenizer.json`` of 50257 tokens (random
pieces over GPT-2's byte alphabet; no merges, so it stands in for the vocabulary only). Recorded:

- load time of ``pp.open_model("hf:DIR")`` (safetensors -> numpy -> the NNX Transformer);
- teacher-forced tokens/s (one full forward over B x T tokens, log-probabilities of the targets);
- sampled tokens/s at B = 1 and B = 64: ancestral sampling with the KV cache (``start`` once, then
  ``advance`` in a ``lax.scan``) vs without a cache (the whole prefix recomputed every step);
- the token-automaton build time of a regex over the 50257-token vocabulary, and its cached read;
- the exact, automaton-pruned mass of that set over two tokens, and its DFA-guided SMC estimate.

Each timing is the median of ``--rounds`` runs after one compile run. ``--quick``: a small
model (2 layers, width 128) with the same vocabulary, few tokens, to check the script runs.

    python scripts/bench_pretrained.py [--quick] [--rounds 3] [--dtype float32|bfloat16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB = 50257
REGEX = r" ?[0-9]+(\.[0-9]+)?"


def write_gpt2(directory: Path, *, d_model: int, n_layers: int, n_heads: int, n_positions: int) -> int:
    """Random GPT-2 weights in the Hugging Face layout; returns the parameter count."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    D = d_model
    normal = lambda *shape: (0.02 * rng.standard_normal(shape, dtype=np.float32))
    tensors = {"wte.weight": normal(VOCAB, D), "wpe.weight": normal(n_positions, D),
               "ln_f.weight": np.ones(D, np.float32), "ln_f.bias": np.zeros(D, np.float32)}
    for i in range(n_layers):
        p = f"h.{i}."
        tensors |= {p + "ln_1.weight": np.ones(D, np.float32), p + "ln_1.bias": np.zeros(D, np.float32),
                    p + "attn.c_attn.weight": normal(D, 3 * D), p + "attn.c_attn.bias": np.zeros(3 * D, np.float32),
                    p + "attn.c_proj.weight": normal(D, D), p + "attn.c_proj.bias": np.zeros(D, np.float32),
                    p + "ln_2.weight": np.ones(D, np.float32), p + "ln_2.bias": np.zeros(D, np.float32),
                    p + "mlp.c_fc.weight": normal(D, 4 * D), p + "mlp.c_fc.bias": np.zeros(4 * D, np.float32),
                    p + "mlp.c_proj.weight": normal(4 * D, D), p + "mlp.c_proj.bias": np.zeros(D, np.float32)}
    save_file(tensors, str(directory / "model.safetensors"))
    config = {"architectures": ["GPT2LMHeadModel"], "vocab_size": VOCAB, "n_embd": D, "n_layer": n_layers,
              "n_head": n_heads, "n_positions": n_positions, "layer_norm_epsilon": 1e-5,
              "activation_function": "gelu_new", "bos_token_id": VOCAB - 1, "eos_token_id": VOCAB - 1}
    (directory / "config.json").write_text(json.dumps(config))
    return sum(t.size for t in tensors.values())


def write_tokenizer(directory: Path) -> None:
    """A byte-level BPE tokenizer.json of VOCAB tokens: the 256 byte pieces, random longer pieces, <|endoftext|>."""
    from pathprob.data.hf_tokenizer import byte_level_alphabet

    alphabet = sorted(byte_level_alphabet(), key=byte_level_alphabet().get)
    letters = [c for c in alphabet if c.isalnum()]
    rng = np.random.default_rng(1)
    pieces = dict.fromkeys(alphabet)
    while len(pieces) < VOCAB - 1:
        word = "".join(rng.choice(letters, rng.integers(2, 9)))
        pieces["Ġ" + word if rng.random() < 0.5 else word] = None
    vocab = {piece: i for i, piece in enumerate(pieces)} | {"<|endoftext|>": VOCAB - 1}
    spec = {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": VOCAB - 1, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True}],
            "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                                  "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                                "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                      "merges": []}}
    (directory / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))


def median_seconds(run, rounds: int) -> float:
    import jax

    jax.block_until_ready(run(0))  # compile
    times = []
    for r in range(rounds):
        t = time.perf_counter()
        jax.block_until_ready(run(r + 1))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sampling_variants(lm, prompt_P: np.ndarray, batch: int, new: int):
    import jax
    import jax.numpy as jnp

    from pathprob.models.base import repeat_paths, start_one

    def sample(logprobs_BV, key):
        return jax.random.categorical(key, logprobs_BV).astype(jnp.int32)

    @jax.jit
    def with_cache(lm, key):
        state = repeat_paths(start_one(lm, jnp.asarray(prompt_P), new), batch)

        def step(state, key):
            tokens = sample(lm.next_logprobs(state), key)
            return lm.advance(state, tokens), tokens

        return jax.lax.scan(step, state, jax.random.split(key, new))[1].T

    @jax.jit
    def recompute_step(lm, tokens_BT, key):  # one compile per length, all in the compile run
        logprobs = jax.nn.log_softmax(lm.module(tokens_BT)[:, -1])
        return jnp.concatenate([tokens_BT, sample(logprobs, key)[:, None]], axis=1)

    def without_cache(lm, key):
        tokens = jnp.broadcast_to(jnp.asarray(prompt_P), (batch, prompt_P.shape[0]))
        for k in jax.random.split(key, new):
            tokens = recompute_step(lm, tokens, k)
        return tokens[:, prompt_P.shape[0]:]

    return {"kv_cache": lambda r: with_cache(lm, jax.random.key(r)),
            "no_cache": lambda r: without_cache(lm, jax.random.key(r))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model and few tokens, to check the script runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    shape = dict(d_model=768, n_layers=12, n_heads=12, n_positions=1024)
    tf_batch, tf_len, prompt_len, new = 8, 128, 32, 32
    if args.quick:
        shape = dict(d_model=128, n_layers=2, n_heads=2, n_positions=128)
        tf_batch, tf_len, prompt_len, new, args.rounds = 2, 32, 8, 8, 1

    with tempfile.TemporaryDirectory(prefix="bench-pretrained-") as tmp:
        tmp = Path(tmp)
        os.environ["PATHPROB_CACHE_DIR"] = str(tmp / "cache")  # a fresh automaton cache: the first build is timed
        import jax
        import jax.numpy as jnp

        import pathprob as pp

        model_dir = tmp / "gpt2"
        model_dir.mkdir()
        t = time.perf_counter()
        count = write_gpt2(model_dir, **shape)
        write_seconds = time.perf_counter() - t
        write_tokenizer(model_dir)
        result = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform, "dtype": args.dtype,
                  "parameters": count, **shape, "vocab": VOCAB, "write_s": write_seconds, "rounds": args.rounds}
        t = time.perf_counter()
        lm = pp.open_model(f"hf:{model_dir}", dtype=args.dtype)
        jax.block_until_ready(lm.params)
        result["load_s"] = time.perf_counter() - t

        rng = np.random.default_rng(2)
        docs = jnp.asarray(rng.integers(0, VOCAB - 1, (tf_batch, tf_len + 1)), jnp.int32)

        @jax.jit
        def teacher_forced(lm, docs):
            logprobs = jax.nn.log_softmax(lm.module.teacher_forced_logits(docs[:, :-1]))
            return jnp.take_along_axis(logprobs, docs[:, 1:, None], axis=-1)[..., 0].sum(-1)

        seconds = median_seconds(lambda r: teacher_forced(lm, docs), args.rounds)
        result["teacher_forced"] = {"batch": tf_batch, "length": tf_len, "tokens_per_s": tf_batch * tf_len / seconds}

        prompt_P = rng.integers(0, VOCAB - 1, prompt_len).astype(np.int32)
        result["sampling"] = []
        for batch in (1, 64):
            row = {"batch": batch, "prompt": prompt_len, "new": new}
            for name, run in sampling_variants(lm, prompt_P, batch, new).items():
                row[f"{name}_tokens_per_s"] = batch * new / median_seconds(run, args.rounds)
            row["kv_over_no_cache"] = row["kv_cache_tokens_per_s"] / row["no_cache_tokens_per_s"]
            result["sampling"].append(row)

        from pathprob.paths.token_automaton import token_automaton

        t = time.perf_counter()
        transitions, _, _ = token_automaton(REGEX, lm.tokenizer)
        built = time.perf_counter() - t
        t = time.perf_counter()
        token_automaton(REGEX, lm.tokenizer)
        result["automaton"] = {"regex": REGEX, "vocab": lm.tokenizer.vocab_size, "states": transitions.shape[0],
                               "build_s": built, "cached_read_s": time.perf_counter() - t}

        # The engines at V = 50k: the exact, automaton-pruned mass of a number over two tokens, and
        # DFA-guided SMC of the same set (first call compiles; the second is timed).
        prompt = lm.tokenizer.decode(prompt_P.tolist())
        engines = {"exact": lambda: pp.mass(lm, prompt, pp.Regex(REGEX), 2),
                   "smc": lambda: pp.mass(lm, prompt, pp.Regex(REGEX), 2, method="smc", n=256, key=0)}
        result["engines"] = {}
        for name, run in engines.items():
            run()
            t = time.perf_counter()
            est = run()
            result["engines"][name] = {"seconds": time.perf_counter() - t, "value": est.value, "lower": est.lower,
                                       "upper": est.upper, "nodes": est.details.get("nodes")}

    if args.json:
        print(json.dumps(result, indent=2))
        return
    r = result
    print(f"GPT-2-shaped model from hf:DIR, {r['parameters'] / 1e6:.1f}M parameters (d {r['d_model']}, "
          f"{r['n_layers']} layers, vocab {r['vocab']}), {r['dtype']} weights, on {r['platform']} "
          f"({r['device']}); medians of {r['rounds']} rounds after a compile run")
    print()
    print("| measurement | value |")
    print("|---|---|")
    print(f"| load time (`pp.open_model(\"hf:DIR\")`) | {r['load_s']:.2f} s |")
    tf = r["teacher_forced"]
    print(f"| teacher-forced, B {tf['batch']} x T {tf['length']} | {tf['tokens_per_s']:,.0f} tokens/s |")
    for row in r["sampling"]:
        print(f"| sampled, B {row['batch']}, KV cache (prompt {row['prompt']}, {row['new']} new) "
              f"| {row['kv_cache_tokens_per_s']:,.0f} tokens/s |")
        print(f"| sampled, B {row['batch']}, no cache (prefix recomputed) "
              f"| {row['no_cache_tokens_per_s']:,.0f} tokens/s (the KV cache is {row['kv_over_no_cache']:.1f}x faster) |")
    a = r["automaton"]
    print(f"| token automaton of `{a['regex']}`, V {a['vocab']:,} ({a['states']} states): build | "
          f"{a['build_s']:.2f} s |")
    print(f"| the same, read back from the disk cache | {a['cached_read_s']:.3f} s |")
    e = r["engines"]
    print(f"| exact mass of that set, max_new 2 ({e['exact']['nodes']:,} prefixes expanded) "
          f"| {e['exact']['seconds']:.2f} s: {e['exact']['value']:.4g} |")
    print(f"| DFA-guided SMC of the same mass, n = 256 | {e['smc']['seconds']:.2f} s: {e['smc']['value']:.4g} "
          f"[{e['smc']['lower']:.4g}, {e['smc']['upper']:.4g}] |")


if __name__ == "__main__":
    main()
