"""One functional forward pass over the Transformer's pieces, with probes and overrides.

Every embedding-space analysis (walks, logit lens, concept-space tests, attention
ablations) runs the model through :func:`forward`; there is no second copy of
the forward pass. It reuses the module's own methods (``embed_tokens``,
``Block.attend``, ``Block.mlp``, ``logits``), so with nothing overridden it is
the model itself (a test checks equality with ``lm.module(tokens)``).

Options:

- ``embeds_BTD`` instead of ``tokens_BT``: vectors fed in place of the token
  embeddings (like ``inputs_embeds`` in other libraries); the model still adds
  its learned positional embedding at ``pos_BT`` (rope applies positions inside
  attention), so a row equal to ``embedding[token]`` behaves exactly as the token.
- ``attention``: one entry per layer, ``None`` (the model's own ``Block.attend``)
  or one of :data:`ATTENTION_MODES`:
  ``"model"`` the model's own attention again (the identity ablation, for checks);
  ``"uniform"`` the model's values and output projection with uniform causal
  weights (the average over the prefix: no data-dependent association);
  ``"cluster"`` the parameter-free soft clustering softmax(X Xᵀ) X over the
  layer input X (causal, no projection);
  ``"none"`` no attention write at all.
- ``capture``: also return the residual stream after the embedding and after
  each block, and each layer's attention and MLP writes.

Shapes: B batch, T positions, D model width, V vocabulary, N = n_layers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel
from pathprob.models.transformer import TransformerLM

ATTENTION_MODES = ("model", "uniform", "cluster", "none")
_NEG = -1e30


@flax.struct.dataclass
class Trace:
    """What one forward pass saw.

    ``logits_BTV`` float32; with ``capture``: ``resid_BNTD`` (N + 1 entries: after
    the embedding, then after each block), ``attn_BNTD`` and ``mlp_BNTD`` (the
    writes of each layer into the residual stream); otherwise those are None.
    """

    logits_BTV: jax.Array
    resid_BNTD: jax.Array | None = None
    attn_BNTD: jax.Array | None = None
    mlp_BNTD: jax.Array | None = None


def require_transformer(lm: LanguageModel, what: str) -> TransformerLM:
    """``lm`` itself when it is a Transformer; otherwise a PathprobError naming ``what``."""
    if not isinstance(lm, TransformerLM):
        raise PathprobError(f"{what} needs a Transformer checkpoint; {type(lm).__name__} has no embedding space "
                            "(e.g. truth:LANGUAGE is an exact process, not a network)")
    return lm


def attention_plan(n_layers: int, mode: str | None, layers: Sequence[int] | None = None) -> tuple[str | None, ...]:
    """Per-layer overrides: ``mode`` at ``layers`` (all layers when None), the model's own elsewhere."""
    if mode is not None and mode not in ATTENTION_MODES:
        raise PathprobError(f"unknown attention mode {mode!r}; choose one of {', '.join(ATTENTION_MODES)}")
    chosen = range(n_layers) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < n_layers]
    if bad:
        raise PathprobError(f"layers {bad} do not exist; the model has layers 0..{n_layers - 1}")
    return tuple(mode if i in chosen else None for i in range(n_layers))


def _attention_write(block, x_BTD: jax.Array, pos_BT: jax.Array, mode: str | None) -> jax.Array:
    if mode in (None, "model"):
        return block.attend(x_BTD, pos_BT)[0]
    B, T, D = x_BTD.shape
    causal_TT = jnp.tril(jnp.ones((T, T), bool))
    if mode == "none":
        return jnp.zeros_like(x_BTD)
    if mode == "uniform":
        _, _, v_BTKd = block.qkv_heads(x_BTD, pos_BT)
        v_BTHd = jnp.repeat(v_BTKd, block.cfg.n_heads // block.cfg.kv_heads, axis=2)  # grouped-query: shared heads
        weights_TT = (causal_TT / jnp.arange(1, T + 1)[:, None]).astype(v_BTHd.dtype)
        mixed_BTD = jnp.einsum("ts,bshd->bthd", weights_TT, v_BTHd).reshape(B, T, D)
        return block.proj(mixed_BTD)
    if mode == "cluster":
        x32 = x_BTD.astype(jnp.float32)
        scores_BTT = jnp.einsum("btd,bsd->bts", x32, x32)
        weights_BTT = jax.nn.softmax(jnp.where(causal_TT, scores_BTT, _NEG), axis=-1)
        return jnp.einsum("bts,bsd->btd", weights_BTT, x32).astype(x_BTD.dtype)
    raise PathprobError(f"unknown attention mode {mode!r}; choose one of {', '.join(ATTENTION_MODES)}")


@functools.partial(jax.jit, static_argnames=("attention", "capture"))
def forward(lm: TransformerLM, tokens_BT: jax.Array | None = None, *, embeds_BTD: jax.Array | None = None,
            pos_BT: jax.Array | None = None, attention: tuple[str | None, ...] | None = None,
            capture: bool = False) -> Trace:
    """The model on ``tokens_BT`` (int32[B, T]) or on ``embeds_BTD``; see the module docstring."""
    model = lm.module
    if (tokens_BT is None) == (embeds_BTD is None):
        raise PathprobError("forward needs exactly one of tokens_BT and embeds_BTD")
    B, T = tokens_BT.shape if tokens_BT is not None else embeds_BTD.shape[:2]
    if pos_BT is None:
        pos_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
    if tokens_BT is not None:
        x = model.embed_tokens(tokens_BT, pos_BT)
    else:
        x = embeds_BTD.astype(jnp.dtype(lm.config.dtype))
        if lm.config.positional == "learned":
            x = x + model.pos_embed(pos_BT)
    attention = attention or (None,) * lm.config.n_layers
    resid, attn, mlp = [x], [], []
    for block, mode in zip(model.blocks, attention, strict=True):
        write_BTD = _attention_write(block, x, pos_BT, mode)
        mlp_BTD = block.mlp(x if block.cfg.parallel_residual else x + write_BTD)  # as in Block.residual
        x = x + write_BTD + mlp_BTD
        resid.append(x)
        attn.append(write_BTD)
        mlp.append(mlp_BTD)
    logits_BTV = model.logits(x)
    if not capture:
        return Trace(logits_BTV=logits_BTV)
    stack = lambda xs: jnp.stack(xs, axis=1)
    return Trace(logits_BTV=logits_BTV, resid_BNTD=stack(resid), attn_BNTD=stack(attn), mlp_BNTD=stack(mlp))


@jax.jit
def lens_logits(lm: TransformerLM, x_ND: jax.Array) -> jax.Array:
    """The logit lens: final norm + unembedding applied to residual vectors ``[..., D]`` -> float32 ``[..., V]``."""
    return lm.module.logits(x_ND)


@jax.jit
def final_norm(lm: TransformerLM, x_ND: jax.Array) -> jax.Array:
    """The final LayerNorm: residual vectors -> context vectors (what the unembedding reads)."""
    return lm.module.ln_f(x_ND)


def unembedding(lm: TransformerLM) -> jax.Array:
    """float32[V, D]: the token vectors the context vector is dotted with (logits = ln_f(x) · row)."""
    model = lm.module
    if lm.config.tie_embeddings:
        return jnp.asarray(model.embed.embedding[...], jnp.float32)
    return jnp.asarray(model.head.kernel[...], jnp.float32).T


def input_embedding(lm: TransformerLM) -> jax.Array:
    """float32[V, D]: the input token embeddings (no positional part)."""
    return jnp.asarray(lm.module.embed.embedding[...], jnp.float32)
