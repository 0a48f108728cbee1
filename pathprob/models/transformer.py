"""A decoder-only Transformer (Flax NNX) and its LanguageModel with a shared prompt cache.

Shapes: B paths, T sequence, P prompt, C suffix capacity, D model width, H heads, Hkv key/value
heads (G = H / Hkv query heads per kv head), Dh head width, F MLP width, V vocabulary.

One class covers the GPT-2, GPT-NeoX/Pythia and Llama-family layouts (``ModelConfig``); the
default configuration is the model pathprob trains, computed exactly as before those options.

The NNX module is used for initialisation and training. Decoding is functional:
``TransformerLM`` is a pytree holding ``graphdef`` (static) and ``params`` (leaves),
so engines pass it to their jitted steps as an argument. ``start`` runs R prompts at
once and stacks their KV caches in ``State.shared`` ([R, Hkv, P, Dh] per layer, with the
prompt lengths; Hkv = H unless the attention is grouped-query); each path holds the index of
its root prompt and its own suffix cache ``[B, Hkv, C, Dh]`` in ``State.paths``. Attention
while decoding reads the root's prompt cache and the path's suffix under one softmax, so the
result equals full causal attention over prompt + suffix without ever storing a prompt cache
per path.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pathprob.config import ModelConfig
from pathprob.data.tokenizer import Tokenizer
from pathprob.models import attention
from pathprob.models.base import State

_NEG = attention.NEG
_CPU_CHUNK_TOKENS = 1024  # tokens per sub-batch of an inference forward on the CPU (teacher_forced_logits)


def _rope_frequencies(cfg: ModelConfig) -> jax.Array:
    """float32[rotary_dim // 2]: the rope frequencies ``rope_theta ** (-2i / rotary_dim)``, Llama-3-scaled if asked."""
    half = cfg.rotary_dim // 2
    if cfg.rope_llama3_scaling is None:
        return cfg.rope_theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    # Llama 3: long wavelengths are slowed down by ``factor``, short ones kept, the band between
    # interpolated; computed once on the host from the static config.
    factor, low, high, original = cfg.rope_llama3_scaling
    freq = cfg.rope_theta ** (-np.arange(half, dtype=np.float64) / half)
    wavelength = 2 * np.pi / freq
    smooth = np.clip((original / wavelength - low) / (high - low), 0.0, 1.0)
    return jnp.asarray((1 - smooth) * freq / factor + smooth * freq, jnp.float32)


def _rope(x_BTHd: jax.Array, pos_BT: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Rotary position embedding (rotate-half form) of the first ``cfg.rotary_dim`` dimensions of each head."""
    rotary = cfg.rotary_dim
    half = rotary // 2
    angle = pos_BT[..., None, None].astype(jnp.float32) * _rope_frequencies(cfg)  # [B, T, 1, half]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x1, x2 = x_BTHd[..., :half].astype(jnp.float32), x_BTHd[..., half:rotary].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x_BTHd.dtype)
    if rotary < x_BTHd.shape[-1]:  # partial rotary (NeoX): the other dimensions pass through
        out = jnp.concatenate([out, x_BTHd[..., rotary:]], axis=-1)
    return out


def _dtypes(cfg: ModelConfig) -> dict:
    return {"dtype": jnp.dtype(cfg.dtype), "param_dtype": jnp.dtype(cfg.param_dtype)}


def _norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.norm == "rmsnorm":
        return nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, **_dtypes(cfg), rngs=rngs)
    return nnx.LayerNorm(cfg.d_model, epsilon=cfg.norm_eps, use_bias=cfg.use_bias, **_dtypes(cfg), rngs=rngs)


_ACTIVATIONS = {"gelu_tanh": jax.nn.gelu, "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False)}


class Block(nnx.Module):
    """Pre-norm attention + MLP. ``qkv`` is one fused projection D -> (H + 2 Hkv) Dh (q, then k, then v);
    for SwiGLU ``fc1`` is the fused gate and up projection D -> 2F (gate first)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        linear = lambda i, o, bias=cfg.use_bias: nnx.Linear(i, o, use_bias=bias, **_dtypes(cfg), rngs=rngs)
        self.cfg = cfg
        self.ln1 = _norm(cfg, rngs)
        self.qkv = linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim, cfg.has_qkv_bias)
        self.proj = linear(cfg.d_model, cfg.d_model)
        self.ln2 = _norm(cfg, rngs)
        self.fc1 = linear(cfg.d_model, 2 * cfg.d_ff if cfg.mlp == "swiglu" else cfg.d_ff)
        self.fc2 = linear(cfg.d_ff, cfg.d_model)

    def qkv_heads(self, x_BTD: jax.Array, pos_BT: jax.Array):
        """Query [B, T, H, Dh], key and value [B, T, Hkv, Dh] (rope applied to q and k)."""
        B, T, _ = x_BTD.shape
        cfg = self.cfg
        q_width, kv_width = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        q, k, v = jnp.split(self.qkv(self.ln1(x_BTD)), [q_width, q_width + kv_width], axis=-1)
        q = q.reshape(B, T, cfg.n_heads, cfg.head_dim)
        k, v = (a.reshape(B, T, cfg.kv_heads, cfg.head_dim) for a in (k, v))
        if cfg.positional == "rope":
            q, k = _rope(q, pos_BT, cfg), _rope(k, pos_BT, cfg)
        return q, k, v

    def mlp(self, x_BTD: jax.Array) -> jax.Array:
        """The MLP's write into the residual stream (``ln2`` applied inside)."""
        h = self.fc1(self.ln2(x_BTD))
        if self.cfg.mlp == "swiglu":
            gate, up = jnp.split(h, 2, axis=-1)
            return self.fc2(jax.nn.silu(gate) * up)
        return self.fc2(_ACTIVATIONS[self.cfg.mlp](h))

    def residual(self, x_BTD: jax.Array, attn_write_BTD: jax.Array) -> jax.Array:
        """The residual stream after this block, given its attention write: sequential, or parallel (NeoX)."""
        if self.cfg.parallel_residual:
            return x_BTD + attn_write_BTD + self.mlp(x_BTD)
        x_BTD = x_BTD + attn_write_BTD
        return x_BTD + self.mlp(x_BTD)

    def attend(self, x_BTD: jax.Array, pos_BT: jax.Array):
        """The attention write into the residual stream ([B, T, D], after ``proj``) and k, v as [B, Hkv, T, Dh]."""
        B, T, D = x_BTD.shape
        cfg = self.cfg
        # Heads-major [B, H, T, Dh] before the two batched products: the same values as
        # einsum over [B, T, H, Dh], about 6% faster for the whole forward on XLA:CPU.
        q, k, v = (a.transpose(0, 2, 1, 3) for a in self.qkv_heads(x_BTD, pos_BT))
        causal_TT = jnp.tril(jnp.ones((T, T), bool))
        scale = math.sqrt(cfg.head_dim)
        if cfg.kv_heads == cfg.n_heads:
            scores_BHTT = jnp.einsum("bhtd,bhsd->bhts", q, k).astype(jnp.float32) / scale
            weights = jax.nn.softmax(jnp.where(causal_TT, scores_BHTT, _NEG), axis=-1).astype(v.dtype)
            attn_BTD = jnp.einsum("bhts,bhsd->bhtd", weights, v).transpose(0, 2, 1, 3).reshape(B, T, D)
        else:  # grouped-query: query head h reads kv head h // G (G = H / Hkv consecutive heads per group)
            q_BKGTd = q.reshape(B, cfg.kv_heads, -1, T, cfg.head_dim)
            scores = jnp.einsum("bkgtd,bksd->bkgts", q_BKGTd, k).astype(jnp.float32) / scale
            weights = jax.nn.softmax(jnp.where(causal_TT, scores, _NEG), axis=-1).astype(v.dtype)
            attn_BTD = jnp.einsum("bkgts,bksd->btkgd", weights, v).reshape(B, T, D)
        return self.proj(attn_BTD), k, v

    def __call__(self, x_BTD: jax.Array, pos_BT: jax.Array):
        """Full causal self-attention block; also returns this layer's k, v as [B, Hkv, T, Dh]."""
        write_BTD, k, v = self.attend(x_BTD, pos_BT)
        return self.residual(x_BTD, write_BTD), k, v


class Transformer(nnx.Module):
    """Decoder-only Transformer; ``__call__`` maps int32[B, T] tokens to float32[B, T, V] logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, **_dtypes(cfg), rngs=rngs)
        if cfg.positional == "learned":
            self.pos_embed = nnx.Embed(cfg.max_len, cfg.d_model, **_dtypes(cfg), rngs=rngs)
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.ln_f = _norm(cfg, rngs)
        if not cfg.tie_embeddings:
            self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, **_dtypes(cfg), rngs=rngs)

    def embed_tokens(self, tokens_BT: jax.Array, pos_BT: jax.Array) -> jax.Array:
        x = self.embed(tokens_BT)
        if self.cfg.positional == "learned":
            x = x + self.pos_embed(pos_BT)
        return x

    def logits(self, x_BTD: jax.Array) -> jax.Array:
        """Final norm and unembedding; float32 logits (accumulated in float32 for bf16 weights too)."""
        h = self.ln_f(x_BTD)
        if self.cfg.dtype != "float32":
            unembed_DV = self.embed.embedding[...].T if self.cfg.tie_embeddings else self.head.kernel[...]
            return jnp.einsum("...d,dv->...v", h, unembed_DV.astype(h.dtype), preferred_element_type=jnp.float32)
        if self.cfg.tie_embeddings:
            return self.embed.attend(h).astype(jnp.float32)
        return self.head(h).astype(jnp.float32)

    def forward(self, tokens_BT: jax.Array):
        """Logits float32[B, T, V] and the per-layer k, v caches ([B, Hkv, T, Dh] each)."""
        B, T = tokens_BT.shape
        pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
        x = self.embed_tokens(tokens_BT, pos_BT)
        ks, vs = [], []
        for block in self.blocks:
            x, k, v = block(x, pos_BT)
            ks.append(k)
            vs.append(v)
        return self.logits(x), tuple(ks), tuple(vs)

    def __call__(self, tokens_BT: jax.Array) -> jax.Array:
        return self.forward(tokens_BT)[0]

    def teacher_forced_logits(self, tokens_BT: jax.Array) -> jax.Array:
        """Logits float32[B, T, V] of a long teacher-forced batch, for inference.

        On the CPU the batch runs as a sequence (``lax.map``) of sub-batches of about
        ``_CPU_CHUNK_TOKENS`` tokens, so that each sub-batch's activations stay in the
        caches: about 2x faster at d_model 512 (``scripts/bench_model.py``), the same
        values up to float32 rounding. Other platforms run the whole batch at once.
        Training calls the model directly: under ``grad`` the sequential sub-batches
        cost more in the backward pass than they save.
        """
        return _in_sub_batches(self, tokens_BT)

    def token_logprobs(self, tokens_BT: jax.Array) -> jax.Array:
        """float32[B, T - 1]: log p(tokens[:, t + 1] | tokens[:, :t + 1]), teacher-forced.

        Sub-batched like ``teacher_forced_logits``, and each sub-batch keeps only the
        log-probabilities of its next tokens, so no [B, T, V] array is ever made.
        """
        def picked(tokens_bT):
            logprobs = jax.nn.log_softmax(self(tokens_bT[:, :-1]))
            return jnp.take_along_axis(logprobs, tokens_bT[:, 1:, None], axis=-1)[..., 0]

        return _in_sub_batches(picked, tokens_BT)

    def decode(self, tokens_B, root_B, length_B, prompt, suffix_k, suffix_v):
        """One decoding step for B paths, each after prompt ``root_B`` of the stacked prompt caches.

        ``prompt``: ``k``/``v`` per layer [R, Hkv, P, Dh] (shared, right-padded) and ``length``
        int32[R]. ``suffix_k/v``: per layer [B, Hkv, C, Dh]; the new token's k, v are written at
        index ``length_B``. Returns float32[B, V] logits and the updated suffix caches.
        """
        prompt_len_B = prompt["length"][root_B]
        pos_B = prompt_len_B + length_B
        x_B1D = self.embed_tokens(tokens_B[:, None], pos_B[:, None])
        C = suffix_k[0].shape[2]
        visible_BC = jnp.arange(C)[None, :] <= length_B[:, None]
        write = jax.vmap(lambda cache_HCd, new_Hd, i: jax.lax.dynamic_update_slice_in_dim(
            cache_HCd, new_Hd[:, None, :], i, axis=1))
        new_k, new_v = [], []
        for block, pk, pv, sk, sv in zip(self.blocks, prompt["k"], prompt["v"], suffix_k, suffix_v):
            q, k, v = block.qkv_heads(x_B1D, pos_B[:, None])
            sk = write(sk, k[:, 0].astype(sk.dtype), length_B)
            sv = write(sv, v[:, 0].astype(sv.dtype), length_B)
            attn_BHd = self._decode_attention(q[:, 0], pk, pv, sk, sv, root_B, prompt_len_B, visible_BC)
            x_B1D = block.residual(x_B1D, block.proj(attn_BHd.astype(x_B1D.dtype).reshape(x_B1D.shape)))
            new_k.append(sk)
            new_v.append(sv)
        return self.logits(x_B1D)[:, 0], tuple(new_k), tuple(new_v)

    def _decode_attention(self, q_BHd, pk, pv, sk, sv, root_B, prompt_len_B, visible_BC):
        """One query per path over its root's prompt cache and its own suffix: float32[B, H, Dh].

        The two parts are computed apart and merged by their log-sum-exps (``attention.merge``: the same
        softmax over prompt + suffix), so the prompt part never copies a cache per path
        (``attention.prompt_part``). Queries are [B, Hkv, G, Dh]: G = H / Hkv query heads read each cached
        head (G = 1 without grouped-query attention).
        """
        B, H, Dh = q_BHd.shape
        q_BKGd = q_BHd.reshape(B, self.cfg.kv_heads, H // self.cfg.kv_heads, Dh)
        scale = 1.0 / math.sqrt(Dh)
        s_suffix = jnp.einsum("bkgd,bkcd->bkgc", q_BKGd, sk).astype(jnp.float32) * scale
        suffix = attention.softmax_part(jnp.where(visible_BC[:, None, None, :], s_suffix, _NEG), sv)
        prompt = attention.prompt_part(q_BKGd, pk, pv, root_B, prompt_len_B, scale)
        return attention.merge(prompt, suffix).reshape(B, H, Dh)


def _in_sub_batches(fn, tokens_BT: jax.Array) -> jax.Array:
    """``fn(tokens_BT)``; on the CPU as a ``lax.map`` over sub-batches of about ``_CPU_CHUNK_TOKENS`` tokens."""
    B, T = tokens_BT.shape
    rows = max(1, _CPU_CHUNK_TOKENS // T)
    if B <= rows:
        return fn(tokens_BT)

    def chunked(tokens_BT):
        padded = jnp.pad(tokens_BT, ((0, -B % rows), (0, 0)))
        out = jax.lax.map(fn, padded.reshape(-1, rows, T))
        return out.reshape(-1, *out.shape[2:])[:B]

    return jax.lax.platform_dependent(tokens_BT, cpu=chunked, default=fn)


def init_transformer(cfg: ModelConfig, seed: int) -> Transformer:
    return Transformer(cfg, rngs=nnx.Rngs(seed))


@flax.struct.dataclass
class TransformerLM:
    """A trained (or random) Transformer as a LanguageModel pytree."""

    params: nnx.State
    graphdef: nnx.GraphDef = flax.struct.field(pytree_node=False)
    config: ModelConfig = flax.struct.field(pytree_node=False)
    tokenizer: Tokenizer = flax.struct.field(pytree_node=False)

    @classmethod
    def from_module(cls, model: Transformer, tokenizer: Tokenizer) -> TransformerLM:
        graphdef, params = nnx.split(model)
        return cls(params=params, graphdef=graphdef, config=model.cfg, tokenizer=tokenizer)

    @property
    def module(self) -> Transformer:
        return nnx.merge(self.graphdef, self.params)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_len(self) -> int:
        return self.config.max_len

    def start(self, prompts_RP: jax.Array, lengths_R: jax.Array, capacity: int) -> State:
        """R prompts (right-padded to P; ``lengths_R`` real tokens each) as R paths, path r after prompt r.

        The prompts run through one causal forward (padding comes after every real token, so
        it changes nothing before it); their KV caches are stacked in ``State.shared`` and
        never copied per path.
        """
        prompts_RP = jnp.asarray(prompts_RP, jnp.int32)
        lengths_R = jnp.asarray(lengths_R, jnp.int32)
        R = prompts_RP.shape[0]
        logits_RPV, ks, vs = self.module.forward(prompts_RP)
        last_RV = jnp.take_along_axis(logits_RPV, (lengths_R - 1)[:, None, None], axis=1)[:, 0]
        cfg = self.config
        empty = jnp.zeros((R, cfg.kv_heads, capacity, cfg.head_dim), jnp.dtype(cfg.dtype))
        shared = {"k": ks, "v": vs, "length": lengths_R}
        paths = {
            "root": jnp.arange(R, dtype=jnp.int32),
            "k": (empty,) * cfg.n_layers,
            "v": (empty,) * cfg.n_layers,
            "length": jnp.zeros((R,), jnp.int32),
            "logprobs": jax.nn.log_softmax(last_RV),
        }
        return State(shared=shared, paths=paths)

    def next_logprobs(self, state: State) -> jax.Array:
        return state.paths["logprobs"]

    def token_logprobs(self, tokens_BT: jax.Array) -> jax.Array:
        """float32[B, T - 1]: each next token's log-probability, by one teacher-forced forward.

        Optional in the LanguageModel protocol: scoring uses it when the paths share few
        prefixes (``pathprob.paths.score``), where walking their trie would cost as many steps.
        """
        return self.module.token_logprobs(jnp.asarray(tokens_BT, jnp.int32))

    def advance(self, state: State, tokens_B: jax.Array) -> State:
        paths = state.paths
        logits_BV, ks, vs = self.module.decode(tokens_B.astype(jnp.int32), paths["root"], paths["length"],
                                               state.shared, paths["k"], paths["v"])
        paths = {**paths, "k": ks, "v": vs, "length": paths["length"] + 1, "logprobs": jax.nn.log_softmax(logits_BV)}
        return state.replace(paths=paths)
