"""Benchmark pathprob against a PyTorch eager peer of the same Transformer, side by side.

The peer (``TorchPeer``) is pathprob's architecture written the way a PyTorch user would:
pre-LayerNorm blocks, a fused qkv Linear, heads-major ``scaled_dot_product_attention``,
a tanh-approximated GELU MLP (what ``jax.nn.gelu`` computes by default), learned or
rotary positions and a tied or untied unembedding, run on the *same* float32 weights
(numpy copies of ``lm.params``). Before timing anything, the script checks that both
give the same teacher-forced and KV-cached decoding log-probabilities (max abs
difference <= 1e-4) on the shipped ``checkpoints/concepts`` and on random d_model 512
models (learned + tied, rope + untied), and that the log-probabilities pathprob's
samplers return for their paths are the peer's.

Timed, interleaved in one process (pytorch, pathprob, ... per round), the median over
``--rounds`` of the per-round ratio pathprob speed / PyTorch speed (> 1: pathprob faster):

1. teacher-forced scoring of a batch of 64-token continuations (d_model 512, 4 layers):
   pathprob's jitted ``teacher_forced_logits`` forward, and its trie scoring ``score_paths``;
2. sampling 64 new tokens at B = 1, 8, 256, 1024 after a 32-token and a 512-token prompt
   shared by all paths. PyTorch: the prompt forward once, its KV cache expanded to B rows,
   one eager decode step and ``torch.multinomial`` per token, under ``inference_mode``.
   pathprob: the per-particle ancestral sampler (``ancestral.stream``, one chunk of B
   paths), and ``pp.sample`` (counts down the trie) as an extra row. On a random model
   the paths are all distinct: the per-particle regime;
3. the raw float32 matmul rate of each framework (``jax.jit(jnp.dot)`` vs ``torch.matmul``,
   2048 x 2048 squares and 16 rows): the bound for dense work on this CPU.

    python scripts/bench_peer.py [--rounds 3] [--quick] [--json]

Needs the ``bench`` extra (``pip install -e .[bench]``: PyTorch); pathprob itself never imports torch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("bench_peer.py needs PyTorch: pip install -e '.[bench]'")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import VOCAB, interleaved_rounds

import pathprob as pp
from pathprob.config import ModelConfig
from pathprob.data.tokenizer import CharTokenizer
from pathprob.files import dumps
from pathprob.models.base import repeat_paths, start_one
from pathprob.models.transformer import TransformerLM, init_transformer
from pathprob.paths import ancestral, sample
from pathprob.paths.samples import Samples
from pathprob.paths.score import score_paths
from pathprob.paths.trie import Budget

TOL = 1e-4
LN_EPS = 1e-6  # flax nnx.LayerNorm's default epsilon
TOKENIZER = CharTokenizer(tokens=tuple(chr(ord("A") + i) for i in range(VOCAB - 1)) + ("$",), eos="$")


def log(*args) -> None:
    """Progress on stderr (stdout holds the table or the JSON)."""
    print(*args, file=sys.stderr, flush=True)


def random_lm(d_model: int, n_layers: int, d_ff: int, max_len: int, **config) -> TransformerLM:
    cfg = ModelConfig(vocab_size=VOCAB, max_len=max_len, d_model=d_model, n_layers=n_layers,
                      n_heads=max(d_model // 64, 2), d_ff=d_ff, **config)
    return TransformerLM.from_module(init_transformer(cfg, 0), TOKENIZER)


def _rope(x_BHTd: torch.Tensor, pos_T: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in pathprob's rotate-half form (``transformer._rope``)."""
    half = x_BHTd.shape[-1] // 2
    freq = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
    angle = pos_T[:, None].float() * freq
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x_BHTd[..., :half], x_BHTd[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class TorchPeer:
    """pathprob's Transformer in PyTorch eager on the same float32 weights, with a KV cache for decoding."""

    def __init__(self, lm: TransformerLM):
        cfg = self.cfg = lm.config
        if cfg.dtype != "float32":
            sys.exit("the PyTorch peer runs float32 models only")
        p = jax.tree.map(lambda x: torch.from_numpy(np.array(x, np.float32)), nnx.to_pure_dict(lm.params))
        linear = lambda d: (d["kernel"].T.contiguous(), d["bias"])  # flax kernels are [in, out]
        norm = lambda d: (d["scale"], d["bias"])
        self.blocks = [{"ln1": norm(b["ln1"]), "qkv": linear(b["qkv"]), "proj": linear(b["proj"]),
                        "ln2": norm(b["ln2"]), "fc1": linear(b["fc1"]), "fc2": linear(b["fc2"])}
                       for b in (p["blocks"][i] for i in range(cfg.n_layers))]
        self.embed = p["embed"]["embedding"]
        self.pos_embed = p["pos_embed"]["embedding"] if cfg.positional == "learned" else None
        self.ln_f = norm(p["ln_f"])
        self.head = self.embed if cfg.tie_embeddings else p["head"]["kernel"].T.contiguous()

    def _norm(self, x, weights):
        return F.layer_norm(x, (self.cfg.d_model,), *weights, eps=LN_EPS)

    def _embed(self, tokens_BT, pos_T):
        x = F.embedding(tokens_BT, self.embed)
        return x if self.pos_embed is None else x + self.pos_embed[pos_T]

    def _heads(self, block, x_BTD, pos_T):
        """q, k, v as [B, H, T, Dh] (rope applied to q and k)."""
        B, T, D = x_BTD.shape
        qkv = F.linear(self._norm(x_BTD, block["ln1"]), *block["qkv"]).split(D, dim=-1)
        q, k, v = (a.view(B, T, self.cfg.n_heads, self.cfg.head_dim).transpose(1, 2) for a in qkv)
        if self.pos_embed is None:
            q, k = _rope(q, pos_T), _rope(k, pos_T)
        return q, k, v

    def _residual(self, block, x_BTD, attn_BHTd):
        B, T, D = x_BTD.shape
        x_BTD = x_BTD + F.linear(attn_BHTd.transpose(1, 2).reshape(B, T, D), *block["proj"])
        hidden = F.gelu(F.linear(self._norm(x_BTD, block["ln2"]), *block["fc1"]), approximate="tanh")
        return x_BTD + F.linear(hidden, *block["fc2"])

    def _logits(self, x):
        return F.linear(self._norm(x, self.ln_f), self.head)

    def forward(self, tokens_BT):
        """Logits [B, T, V] of a causal forward and each layer's (k, v) [B, H, T, Dh]."""
        pos_T = torch.arange(tokens_BT.shape[1])
        x = self._embed(tokens_BT, pos_T)
        caches = []
        for block in self.blocks:
            q, k, v = self._heads(block, x, pos_T)
            x = self._residual(block, x, F.scaled_dot_product_attention(q, k, v, is_causal=True))
            caches.append((k, v))
        return self._logits(x), caches

    def decode(self, tokens_B, pos: int, caches):
        """Logits [B, V] after one token per row at position ``pos``; its k, v are written into ``caches``."""
        pos_T = torch.tensor([pos])
        x = self._embed(tokens_B[:, None], pos_T)
        for block, (cache_k, cache_v) in zip(self.blocks, caches):
            q, k, v = self._heads(block, x, pos_T)
            cache_k[:, :, pos : pos + 1] = k
            cache_v[:, :, pos : pos + 1] = v
            attn = F.scaled_dot_product_attention(q, cache_k[:, :, : pos + 1], cache_v[:, :, : pos + 1])
            x = self._residual(block, x, attn)
        return self._logits(x)[:, 0]


@torch.inference_mode()
def torch_score(peer: TorchPeer, tokens_BT: torch.Tensor) -> torch.Tensor:
    """float64[B]: log P(tokens[:, 1:] | tokens[:, 0]) by one teacher-forced forward (float32 terms)."""
    logp_BTV = torch.log_softmax(peer.forward(tokens_BT[:, :-1])[0], dim=-1)
    return logp_BTV.gather(-1, tokens_BT[:, 1:, None])[..., 0].double().sum(-1)


@torch.inference_mode()
def torch_generate(peer: TorchPeer, prompt_P: np.ndarray, batch: int, new: int, pick) -> torch.Tensor:
    """``new`` tokens for ``batch`` rows after one prompt: the eager loop a PyTorch user writes.

    The prompt runs forward once; its KV cache is copied into a per-row cache of
    ``batch`` rows; then one decode step per token. ``pick(logp_BV, t)`` chooses the
    t-th tokens from the next-token log-probabilities.
    """
    P = prompt_P.shape[0]
    logits_1PV, prompt_caches = peer.forward(torch.as_tensor(prompt_P, dtype=torch.long)[None])
    caches = []
    for k, v in prompt_caches:
        cache_k, cache_v = (a.new_empty(batch, a.shape[1], P + new, a.shape[3]) for a in (k, v))
        cache_k[:, :, :P], cache_v[:, :, :P] = k, v
        caches.append((cache_k, cache_v))
    logp_BV = torch.log_softmax(logits_1PV[:, -1], dim=-1).expand(batch, -1)
    tokens = []
    for t in range(new):
        tokens.append(pick(logp_BV, t))
        if t + 1 < new:
            logp_BV = torch.log_softmax(peer.decode(tokens[-1], P + t, caches), dim=-1)
    return torch.stack(tokens, dim=1)


def torch_sampler(peer: TorchPeer, prompt_P: np.ndarray, batch: int, new: int):
    """Sampling with ``torch.multinomial`` per step; returns the tokens and each path's log-probability."""
    generator = torch.Generator().manual_seed(0)

    def run(key):
        total_B = torch.zeros(batch)

        def pick(logp_BV, t):
            nonlocal total_B
            token_B1 = torch.multinomial(logp_BV.exp(), 1, generator=generator)
            total_B = total_B + logp_BV.gather(1, token_B1)[:, 0]
            return token_B1[:, 0]

        return torch_generate(peer, prompt_P, batch, new, pick), total_B

    return run


def torch_forced(peer: TorchPeer, prompt_P: np.ndarray, tokens_BL: np.ndarray) -> np.ndarray:
    """float32[L, B, V]: the peer's next-token log-probabilities before each given token (KV-cached)."""
    forced, steps = torch.as_tensor(tokens_BL, dtype=torch.long), []

    def pick(logp_BV, t):
        steps.append(logp_BV.clone())
        return forced[:, t]

    torch_generate(peer, prompt_P, *tokens_BL.shape, pick)
    return torch.stack(steps).numpy()


@jax.jit
def pathprob_forced(lm: TransformerLM, prompt_P: jax.Array, tokens_BL: jax.Array) -> jax.Array:
    """float32[L, B, V]: pathprob's next-token log-probabilities before each given token (start + advance)."""
    B, L = tokens_BL.shape
    state = repeat_paths(start_one(lm, prompt_P, L), B)
    step = lambda state, token_B: (lm.advance(state, token_B), lm.next_logprobs(state))
    return jax.lax.scan(step, state, tokens_BL.T)[1]


@jax.jit
def pathprob_teacher_forced(lm: TransformerLM, tokens_BT: jax.Array) -> jax.Array:
    """float32[B, T, V]: log-softmax of the jitted teacher-forced forward."""
    return jax.nn.log_softmax(lm.module.teacher_forced_logits(tokens_BT))


@jax.jit
def pathprob_score(lm: TransformerLM, tokens_BT: jax.Array) -> jax.Array:
    """float32[B]: log P(tokens[:, 1:] | tokens[:, 0]) by the jitted teacher-forced forward."""
    logp_BTV = pathprob_teacher_forced(lm, tokens_BT[:, :-1])
    return jnp.take_along_axis(logp_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0].sum(-1)


# The walk's memory check counts a full chunk of 1024 paths however few it expands (``trie.level_bytes``):
# 4 GiB at d_model 512 and 64 tokens, over the default 2 GiB budget even for 4 paths, so ``score_paths``
# and ``pp.sample`` (which takes no budget) refuse these workloads with the default; the walks get more.
WALK_BUDGET = Budget(max_bytes=8 << 30)


def trie_score(lm: TransformerLM, tokens_BT: np.ndarray) -> np.ndarray:
    """float64[B]: the same scores by pathprob's trie walk (every row starts with the same prompt token)."""
    return score_paths(lm, [tokens_BT[0, :1]], np.zeros(tokens_BT.shape[0], np.int64), tokens_BT[:, 1:],
                       budget=WALK_BUDGET)


def replay_logp(peer: TorchPeer, prompt_P: np.ndarray, samples: Samples, eos: int) -> np.ndarray:
    """float64[N]: the peer's log-probability of each sampled path (-1 padding after EOS skipped)."""
    tokens_BL = samples.tokens
    logp_LBV = torch_forced(peer, prompt_P, np.where(tokens_BL >= 0, tokens_BL, eos))
    picked_LB = np.take_along_axis(logp_LBV, np.maximum(tokens_BL.T, 0)[..., None], axis=-1)[..., 0]
    return np.where(tokens_BL.T >= 0, picked_LB.astype(np.float64), 0.0).sum(axis=0)


def parity(lm: TransformerLM, *, batch: int, length: int, prompts: tuple[int, ...], new: int) -> dict[str, float]:
    """Max abs differences between pathprob and the peer; raises when one exceeds ``TOL``.

    Teacher-forced log-probabilities over ``length`` positions (all V per position) and
    ``score_paths``; then, after each prompt length, KV-cached decoding of ``new`` forced
    tokens (all V per step) and the log-probabilities pathprob's two samplers report for
    their paths.
    """
    peer, eos = TorchPeer(lm), lm.eos_id
    rng = np.random.default_rng(1)
    allowed = np.array([t for t in range(lm.vocab_size) if t != eos])
    tokens_BT = rng.choice(allowed, (batch, length + 1)).astype(np.int32)
    tokens_BT[:, 0] = tokens_BT[0, 0]
    with torch.inference_mode():
        peer_tf = torch.log_softmax(peer.forward(torch.as_tensor(tokens_BT[:, :-1], dtype=torch.long))[0], -1).numpy()
    diffs = {"teacher-forced": np.abs(np.asarray(pathprob_teacher_forced(lm, tokens_BT[:, :-1])) - peer_tf).max(),
             "score_paths": np.abs(trie_score(lm, tokens_BT)
                                   - torch_score(peer, torch.as_tensor(tokens_BT, dtype=torch.long)).numpy()).max()}
    for P in prompts:
        prompt_P = tokens_BT[0, :P] if P <= length else rng.choice(allowed, P).astype(np.int32)
        forced_BL = rng.choice(allowed, (batch, new)).astype(np.int32)
        ours = np.asarray(pathprob_forced(lm, jnp.asarray(prompt_P, jnp.int32), jnp.asarray(forced_BL, jnp.int32)))
        diffs[f"KV decode, prompt {P}"] = np.abs(ours - torch_forced(peer, prompt_P, forced_BL)).max()
        for name, samples in {"ancestral": Samples.concatenate(list(ancestral.stream(lm, prompt_P, batch, new, key=2))),
                              "pp.sample": trie_sample(lm, prompt_P, batch, new, jax.random.key(3))}.items():
            diffs[f"{name} path logp, prompt {P}"] = np.abs(samples.logp - replay_logp(peer, prompt_P, samples, eos)).max()
    diffs = {name: float(d) for name, d in diffs.items()}
    worst = max(diffs, key=diffs.get)
    if not diffs[worst] <= TOL:
        raise AssertionError(f"pathprob and the PyTorch peer differ by {diffs[worst]:.3g} > {TOL} ({worst})")
    return diffs


def matmul_variants(rows: int, n: int, reps: int) -> dict:
    """``reps`` float32 [rows, n] x [n, n] products per call in each framework."""
    a, b = (np.random.default_rng(i).standard_normal(shape, dtype=np.float32) for i, shape in
            enumerate([(rows, n), (n, n)]))
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    dot = jax.jit(jnp.dot)

    def jax_run(key):
        return [dot(ja, jb) for _ in range(reps)][-1]

    @torch.inference_mode()
    def torch_run(key):
        return [torch.matmul(ta, tb) for _ in range(reps)][-1]

    return {"pytorch": torch_run, "jax.jit(jnp.dot)": jax_run}


def sampling_variants(lm: TransformerLM, peer: TorchPeer, prompt_P: np.ndarray, batch: int, new: int) -> dict:
    return {"pytorch": torch_sampler(peer, prompt_P, batch, new),
            "pathprob ancestral.stream": lambda key: list(ancestral.stream(lm, prompt_P, batch, new, key=key,
                                                                           chunk=batch)),
            "pp.sample (trie counts)": lambda key: trie_sample(lm, prompt_P, batch, new, key)}


def trie_sample(lm: TransformerLM, prompt_P: np.ndarray, n: int, new: int, key) -> Samples:
    """What ``pp.sample`` does (counts down the trie, then the n draws in a random order), with ``WALK_BUDGET``."""
    return sample.draw(lm, prompt_P, n, new, key=key, budget=WALK_BUDGET).draws(np.random.default_rng(0))


def scoring_variants(lm: TransformerLM, peer: TorchPeer, batch: int, length: int) -> dict:
    tokens_BT = np.random.default_rng(3).integers(0, VOCAB - 1, (batch, length + 1)).astype(np.int32)
    tokens_BT[:, 0] = 0
    on_device, on_torch = jnp.asarray(tokens_BT), torch.as_tensor(tokens_BT, dtype=torch.long)
    return {"pytorch": lambda key: torch_score(peer, on_torch),
            "pathprob jit teacher_forced_logits": lambda key: pathprob_score(lm, on_device),
            "pathprob score_paths (trie)": lambda key: trie_score(lm, tokens_BT)}


def target(workload: str, batch: int, prompt: int, long_prompt: int) -> float | None:
    """The issue's speed target (x PyTorch) for a pathprob row, or None."""
    if workload == "teacher-forced" or batch <= 8:
        return 1.0
    if prompt == long_prompt and batch >= 16:
        return 2.0
    return 0.9 if batch >= 256 else None


def measure(variants: dict, rounds: int, work: float, **row) -> list[dict]:
    """One row per variant: median seconds, ``work`` units per second, median per-round ratio to PyTorch."""
    times, _ = interleaved_rounds(variants, rounds)
    base = times["pytorch"]
    rows = [{**row, "variant": name, "seconds": statistics.median(ts), "per_second": work / statistics.median(ts),
             "x_pytorch": statistics.median(b / t for b, t in zip(base, ts))} for name, ts in times.items()]
    for r in rows:
        log(f"  {r['variant']}: {r['seconds']:.4f} s, {r['x_pytorch']:.2f}x PyTorch")
    return rows


SIZES = {
    "full": {"model": (512, 4, 2048), "tf": (256, 64), "prompts": (32, 512), "new": 64, "batches": (1, 8, 256, 1024),
             "matmul": 2048, "parity": {"batch": 4, "length": 64, "new": 64}},
    "quick": {"model": (64, 1, 256), "tf": (8, 16), "prompts": (8, 32), "new": 8, "batches": (1, 8, 32),
              "matmul": 256, "parity": {"batch": 2, "length": 16, "new": 8}},
}
CONCEPTS = Path(__file__).resolve().parents[1] / "checkpoints" / "concepts"


def check_parity(sizes: dict) -> dict[str, dict[str, float]]:
    """``parity`` on the shipped concepts model and on random d_model 512 models of both position/unembedding kinds."""
    max_len = max(sizes["prompts"]) + sizes["new"]
    parities = {"checkpoints/concepts": parity(pp.open_model(CONCEPTS), batch=sizes["parity"]["batch"], length=48,
                                               prompts=(8,), new=8)}
    for name, config in {"learned, tied": {}, "rope, untied": {"positional": "rope", "tie_embeddings": False}}.items():
        parities[f"random d512 ({name})"] = parity(random_lm(512, 4, 2048, max_len, **config), prompts=sizes["prompts"],
                                                   **sizes["parity"])
    return parities


def benchmark(sizes: dict, rounds: int) -> list[dict]:
    """Every timed row: teacher-forced scoring, sampling after each prompt at each B, the matmul rates."""
    new, long_prompt = sizes["new"], max(sizes["prompts"])
    lm = random_lm(*sizes["model"], long_prompt + new)
    peer, rows = TorchPeer(lm), []
    batch, length = sizes["tf"]
    log(f"teacher-forced, batch {batch} x {length}")
    rows += measure(scoring_variants(lm, peer, batch, length), rounds, batch * length,
                    workload="teacher-forced", B=batch, prompt=1, unit="tokens/s")
    for prompt in sizes["prompts"]:
        prompt_P = np.random.default_rng(4).integers(0, VOCAB - 1, prompt).astype(np.int32)
        for batch in sizes["batches"]:
            log(f"sampling {new} tokens, prompt {prompt}, B {batch}")
            rows += measure(sampling_variants(lm, peer, prompt_P, batch, new), rounds, batch * new,
                            workload="sampling", B=batch, prompt=prompt, unit="tokens/s")
    n = sizes["matmul"]
    for m, reps in ((n, 3), (16, 64)):
        rows += measure(matmul_variants(m, n, reps), rounds, 2 * m * n * n * reps / 1e9,
                        workload=f"matmul {m}x{n}x{n}", B=m, prompt=0, unit="GFLOP/s")
    for row in rows:
        main_row = row["variant"].startswith("pathprob")
        row["target"] = target(row["workload"], row["B"], row["prompt"], long_prompt) if main_row else None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes, rounds = SIZES["quick" if args.quick else "full"], 1 if args.quick else args.rounds
    parities = check_parity(sizes)
    log("parity (max abs difference of log-probabilities):", dumps(parities, indent=1))
    rows = benchmark(sizes, rounds)
    result = {"model": dict(zip(("d_model", "n_layers", "d_ff"), sizes["model"])), "new": sizes["new"],
              "rounds": rounds, "quick": args.quick, "torch_threads": torch.get_num_threads(),
              "devices": [str(d) for d in jax.devices()], "parity": parities, "rows": rows}
    print(dumps(result, indent=2) if args.json else table(result))


def table(result: dict) -> str:
    """The results as a markdown table, with a one-line header."""
    model = result["model"]
    header = (f"d_model {model['d_model']}, {model['n_layers']} layers; {result['new']} new tokens; median of "
              f"{result['rounds']} interleaved rounds; x PyTorch = median per-round (PyTorch seconds / variant "
              f"seconds); torch threads {result['torch_threads']}")
    lines = [header, "", "| workload | B | prompt | variant | seconds | rate | x PyTorch | target |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        goal = "-" if r["target"] is None else f">= {r['target']:.1f}x ({'met' if r['x_pytorch'] >= r['target'] else 'not met'})"
        lines.append(f"| {r['workload']} | {r['B']} | {r['prompt'] or '-'} | {r['variant']} | {r['seconds']:.4f} | "
                     f"{r['per_second']:,.0f} {r['unit']} | {r['x_pytorch']:.2f}x | {goal} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
