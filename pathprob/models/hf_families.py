"""The Hugging Face architectures pathprob loads: config.json -> ModelConfig, and the recipe of every parameter.

Each supported ``architectures`` entry of ``config.json`` is one registered ``Family``: a function
from ``config.json`` (``Fields``) to a ``ModelConfig``, refusing what the Transformer cannot express,
and a function from that config to the recipe of every parameter (which Hugging Face tensors, of
which shapes, and how they are rearranged: ``Take``). ``pathprob.models.hf`` reads a directory and
applies them. Families (D model width, H heads, Dh head width):

- ``GPT2LMHeadModel``: learned positions, LayerNorm, tanh-GELU; the Conv1D weights are already
  ``[in, out]``; the fused ``c_attn`` is (q, k, v) as pathprob stores it.
- ``GPTNeoXForCausalLM`` (Pythia): partial rotary (``rotary_pct``), parallel residual, exact GELU,
  untied ``embed_out``; the fused ``query_key_value`` is interleaved per head (``[H, 3, Dh]`` rows)
  and is permuted at load time to (q, k, v).
- ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``: RMSNorm, SwiGLU, rope
  (optionally Llama-3 scaled), grouped-query attention, no biases (Qwen2: q/k/v biases); separate
  q/k/v and gate/up projections are fused at load time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pathprob.config import ModelConfig
from pathprob.errors import CheckpointError


class PretrainedError(CheckpointError):
    """A pretrained model directory lacks a file or tensor, or holds something pathprob cannot load."""


@dataclasses.dataclass(frozen=True)
class Take:
    """One parameter: the Hugging Face tensors it comes from (name, expected shape) and how they combine."""

    sources: tuple[tuple[str, tuple[int, ...]], ...]
    build: Callable[..., np.ndarray] = lambda x: x


def _one(name: str, shape: tuple[int, ...], build: Callable[[np.ndarray], np.ndarray] = lambda x: x) -> Take:
    return Take(((name, tuple(shape)),), build)


def _transposed(name: str, shape: tuple[int, ...]) -> Take:
    """A torch ``Linear`` weight ``[out, in]`` as a kernel ``[in, out]``."""
    return _one(name, shape, lambda w: w.T)


def _fused(names_shapes: list[tuple[str, tuple[int, ...]]], *, transpose: bool) -> Take:
    """Several tensors concatenated along their first axis (torch ``[out, in]`` weights, or biases)."""
    concat = lambda *ws: np.concatenate(ws, axis=0)
    return Take(tuple((n, tuple(s)) for n, s in names_shapes), (lambda *ws: concat(*ws).T) if transpose else concat)


@dataclasses.dataclass(frozen=True)
class Family:
    """How one ``architectures`` entry maps: config.json -> ModelConfig, and ModelConfig -> parameter recipes.

    ``strip``: name prefixes some saves put on every tensor (removed before matching);
    ``ignore``: a regex of stored tensors that are not parameters (buffers such as causal masks).
    """

    name: str
    config: Callable[[Fields], ModelConfig]
    tensors: Callable[[ModelConfig], dict[str, Take]]
    strip: tuple[str, ...] = ()
    ignore: str = r"$^"


ARCHITECTURES: dict[str, Family] = {}


def register_architecture(architecture: str, family: Family) -> None:
    """Make ``hf:DIR`` load directories whose config.json names ``architecture``."""
    ARCHITECTURES[architecture] = family


class Fields:
    """config.json's fields, read with one-line errors that name the file and the field."""

    def __init__(self, fields: dict, where: Path):
        self.fields, self.where = fields, where
        self.notes: list[str] = []

    def get(self, *names: str, default=None, required: bool = False):
        for name in names:
            if self.fields.get(name) is not None:
                return self.fields[name]
        if required:
            raise PretrainedError(f"{self.where} has no {' or '.join(map(repr, names))}")
        return default

    def refuse(self, what: str) -> PretrainedError:
        return PretrainedError(f"{self.where}: {what} is not supported by pathprob's Transformer")

    def activation(self, *names: str, default: str) -> str:
        act = self.get(*names, default=default)
        mapped = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                  "gelu": "gelu_exact"}.get(act)
        if mapped is None:
            raise self.refuse(f"activation {act!r} (supported: gelu, gelu_new, gelu_fast, gelu_pytorch_tanh)")
        return mapped

    def rope(self) -> dict:
        """``rope_theta`` and ``rope_llama3_scaling`` (older and newer config.json spellings)."""
        params = self.get("rope_parameters", default={}) or {}
        theta = params.get("rope_theta") or self.get("rope_theta", "rotary_emb_base", default=10000.0)
        scaling = self.get("rope_scaling", default=None) or (params if params.get("rope_type") not in
                                                                (None, "default") else None)
        if not scaling:
            return {"rope_theta": float(theta)}
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind == "default":
            return {"rope_theta": float(theta)}
        if kind != "llama3":
            raise self.refuse(f"rope_scaling type {kind!r} (implemented: llama3)")
        try:
            llama3 = (scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"],
                      scaling["original_max_position_embeddings"])
        except KeyError as err:
            raise PretrainedError(f"{self.where}: llama3 rope_scaling has no {err.args[0]!r}") from None
        return {"rope_theta": float(theta), "rope_llama3_scaling": llama3}

    def special(self, name: str) -> int | None:
        value = self.get(name)
        if isinstance(value, list):
            if not value:
                return None
            if len(value) > 1:
                self.notes.append(f"{name} lists {value}; pathprob uses the first, {value[0]}")
            value = value[0]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise PretrainedError(f"{self.where}: {name} must be an integer token id, got {value!r}")
        return value


# --- the families ---------------------------------------------------------------------------------------


def _gpt2_config(f: Fields) -> ModelConfig:
    d_model = f.get("n_embd", "hidden_size", required=True)
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if f.get(flag, default=False):
            raise f.refuse(f"{flag} = true")
    if not f.get("scale_attn_weights", default=True):
        raise f.refuse("scale_attn_weights = false")
    return ModelConfig(
        vocab_size=f.get("vocab_size", required=True), max_len=f.get("n_positions", "n_ctx", required=True),
        d_model=d_model, n_layers=f.get("n_layer", "num_hidden_layers", required=True),
        n_heads=f.get("n_head", "num_attention_heads", required=True), d_ff=f.get("n_inner", default=4 * d_model),
        positional="learned", norm_eps=float(f.get("layer_norm_epsilon", default=1e-5)),
        mlp=f.activation("activation_function", default="gelu_new"),
        tie_embeddings=bool(f.get("tie_word_embeddings", default=True)),
    )


def _gpt2_tensors(cfg: ModelConfig) -> dict[str, Take]:
    D, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
    take = {"embed/embedding": _one("wte.weight", (V, D)), "pos_embed/embedding": _one("wpe.weight", (cfg.max_len, D)),
            "ln_f/scale": _one("ln_f.weight", (D,)), "ln_f/bias": _one("ln_f.bias", (D,))}
    for i in range(cfg.n_layers):
        hf, ours = f"h.{i}.", f"blocks/{i}/"
        take |= {
            ours + "ln1/scale": _one(hf + "ln_1.weight", (D,)), ours + "ln1/bias": _one(hf + "ln_1.bias", (D,)),
            # Conv1D weights are [in, out] already; c_attn's output is q, k, v with heads contiguous.
            ours + "qkv/kernel": _one(hf + "attn.c_attn.weight", (D, 3 * D)),
            ours + "qkv/bias": _one(hf + "attn.c_attn.bias", (3 * D,)),
            ours + "proj/kernel": _one(hf + "attn.c_proj.weight", (D, D)),
            ours + "proj/bias": _one(hf + "attn.c_proj.bias", (D,)),
            ours + "ln2/scale": _one(hf + "ln_2.weight", (D,)), ours + "ln2/bias": _one(hf + "ln_2.bias", (D,)),
            ours + "fc1/kernel": _one(hf + "mlp.c_fc.weight", (D, F)),
            ours + "fc1/bias": _one(hf + "mlp.c_fc.bias", (F,)),
            ours + "fc2/kernel": _one(hf + "mlp.c_proj.weight", (F, D)),
            ours + "fc2/bias": _one(hf + "mlp.c_proj.bias", (D,)),
        }
    if not cfg.tie_embeddings:
        take["head/kernel"] = _transposed("lm_head.weight", (V, D))
    return take


def _neox_config(f: Fields) -> ModelConfig:
    if not f.get("attention_bias", default=True):
        raise f.refuse("attention_bias = false")
    return ModelConfig(
        vocab_size=f.get("vocab_size", required=True), max_len=f.get("max_position_embeddings", required=True),
        d_model=f.get("hidden_size", required=True), n_layers=f.get("num_hidden_layers", required=True),
        n_heads=f.get("num_attention_heads", required=True), d_ff=f.get("intermediate_size", required=True),
        positional="rope", **f.rope(),
        rotary_fraction=float(f.get("rotary_pct", "partial_rotary_factor", default=None)
                              or (f.get("rope_parameters", default={}) or {}).get("partial_rotary_factor", 0.25)),
        parallel_residual=bool(f.get("use_parallel_residual", default=True)),
        norm_eps=float(f.get("layer_norm_eps", default=1e-5)), mlp=f.activation("hidden_act", default="gelu"),
        tie_embeddings=bool(f.get("tie_word_embeddings", default=False)),
    )


def _neox_tensors(cfg: ModelConfig) -> dict[str, Take]:
    D, F, V, H, Dh = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_heads, cfg.head_dim
    # query_key_value's rows are [H, 3, Dh] (each head's q, k, v together): reorder to [3, H, Dh].
    qkv_weight = lambda w: w.reshape(H, 3, Dh, D).transpose(1, 0, 2, 3).reshape(3 * D, D).T
    qkv_bias = lambda b: b.reshape(H, 3, Dh).transpose(1, 0, 2).reshape(3 * D)
    take = {"embed/embedding": _one("gpt_neox.embed_in.weight", (V, D)),
            "ln_f/scale": _one("gpt_neox.final_layer_norm.weight", (D,)),
            "ln_f/bias": _one("gpt_neox.final_layer_norm.bias", (D,))}
    for i in range(cfg.n_layers):
        hf, ours = f"gpt_neox.layers.{i}.", f"blocks/{i}/"
        take |= {
            ours + "ln1/scale": _one(hf + "input_layernorm.weight", (D,)),
            ours + "ln1/bias": _one(hf + "input_layernorm.bias", (D,)),
            ours + "qkv/kernel": _one(hf + "attention.query_key_value.weight", (3 * D, D), qkv_weight),
            ours + "qkv/bias": _one(hf + "attention.query_key_value.bias", (3 * D,), qkv_bias),
            ours + "proj/kernel": _transposed(hf + "attention.dense.weight", (D, D)),
            ours + "proj/bias": _one(hf + "attention.dense.bias", (D,)),
            ours + "ln2/scale": _one(hf + "post_attention_layernorm.weight", (D,)),
            ours + "ln2/bias": _one(hf + "post_attention_layernorm.bias", (D,)),
            ours + "fc1/kernel": _transposed(hf + "mlp.dense_h_to_4h.weight", (F, D)),
            ours + "fc1/bias": _one(hf + "mlp.dense_h_to_4h.bias", (F,)),
            ours + "fc2/kernel": _transposed(hf + "mlp.dense_4h_to_h.weight", (D, F)),
            ours + "fc2/bias": _one(hf + "mlp.dense_4h_to_h.bias", (D,)),
        }
    if not cfg.tie_embeddings:
        take["head/kernel"] = _transposed("embed_out.weight", (V, D))
    return take


def _llama_config(f: Fields, *, qkv_bias: bool | None = None) -> ModelConfig:
    d_model, n_heads = f.get("hidden_size", required=True), f.get("num_attention_heads", required=True)
    if f.get("hidden_act", default="silu") != "silu":
        raise f.refuse(f"hidden_act {f.get('hidden_act')!r} (a Llama-family MLP is SwiGLU with silu)")
    head_dim = f.get("head_dim")
    if head_dim is not None and head_dim * n_heads != d_model:
        raise f.refuse(f"head_dim {head_dim} with hidden_size {d_model} and {n_heads} heads (needs head_dim * heads = "
                       "hidden_size)")
    attention_bias, mlp_bias = bool(f.get("attention_bias", default=False)), bool(f.get("mlp_bias", default=False))
    if attention_bias != mlp_bias:
        raise f.refuse(f"attention_bias = {str(attention_bias).lower()} with mlp_bias = {str(mlp_bias).lower()}")
    max_len = f.get("max_position_embeddings", required=True)
    window = f.get("sliding_window") if f.get("use_sliding_window", default=True) else None
    if window is not None and window < max_len:
        # Within the window, sliding-window attention is full causal attention: use the model there only.
        f.notes.append(f"sliding_window {window} < max_position_embeddings {max_len}: max_len is {window}")
        max_len = window
    return ModelConfig(
        vocab_size=f.get("vocab_size", required=True), max_len=max_len, d_model=d_model,
        n_layers=f.get("num_hidden_layers", required=True), n_heads=n_heads,
        n_kv_heads=f.get("num_key_value_heads", default=n_heads), d_ff=f.get("intermediate_size", required=True),
        positional="rope", **f.rope(), norm="rmsnorm", norm_eps=float(f.get("rms_norm_eps", default=1e-6)),
        mlp="swiglu", use_bias=attention_bias, qkv_bias=qkv_bias,
        tie_embeddings=bool(f.get("tie_word_embeddings", default=False)),
    )


def _qwen2_config(f: Fields) -> ModelConfig:
    return _llama_config(f, qkv_bias=True)  # Qwen2: biases on q, k, v only


def _llama_tensors(cfg: ModelConfig) -> dict[str, Take]:
    D, F, V, Dh = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.head_dim
    q, kv = (cfg.n_heads * Dh, D), (cfg.kv_heads * Dh, D)
    take = {"embed/embedding": _one("model.embed_tokens.weight", (V, D)), "ln_f/scale": _one("model.norm.weight", (D,))}
    for i in range(cfg.n_layers):
        hf, ours = f"model.layers.{i}.", f"blocks/{i}/"
        attn, mlp = hf + "self_attn.", hf + "mlp."
        take |= {
            ours + "ln1/scale": _one(hf + "input_layernorm.weight", (D,)),
            ours + "qkv/kernel": _fused([(attn + "q_proj.weight", q), (attn + "k_proj.weight", kv),
                                         (attn + "v_proj.weight", kv)], transpose=True),
            ours + "proj/kernel": _transposed(attn + "o_proj.weight", (D, D)),
            ours + "ln2/scale": _one(hf + "post_attention_layernorm.weight", (D,)),
            ours + "fc1/kernel": _fused([(mlp + "gate_proj.weight", (F, D)), (mlp + "up_proj.weight", (F, D))],
                                        transpose=True),
            ours + "fc2/kernel": _transposed(mlp + "down_proj.weight", (D, F)),
        }
        if cfg.has_qkv_bias:
            take[ours + "qkv/bias"] = _fused([(attn + "q_proj.bias", q[:1]), (attn + "k_proj.bias", kv[:1]),
                                              (attn + "v_proj.bias", kv[:1])], transpose=False)
        if cfg.use_bias:
            take |= {ours + "proj/bias": _one(attn + "o_proj.bias", (D,)),
                     ours + "fc1/bias": _fused([(mlp + "gate_proj.bias", (F,)), (mlp + "up_proj.bias", (F,))],
                                               transpose=False),
                     ours + "fc2/bias": _one(mlp + "down_proj.bias", (D,))}
    if not cfg.tie_embeddings:
        take["head/kernel"] = _transposed("lm_head.weight", (V, D))
    return take


_GPT2 = Family("gpt2", _gpt2_config, _gpt2_tensors, strip=("transformer.",),
               ignore=r"h\.\d+\.attn\.(bias|masked_bias)")
_NEOX = Family("gpt_neox", _neox_config, _neox_tensors,
               ignore=r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)")
_LLAMA_IGNORE = r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"
register_architecture("GPT2LMHeadModel", _GPT2)
register_architecture("GPTNeoXForCausalLM", _NEOX)
register_architecture("LlamaForCausalLM", Family("llama", _llama_config, _llama_tensors, ignore=_LLAMA_IGNORE))
register_architecture("MistralForCausalLM", Family("mistral", _llama_config, _llama_tensors, ignore=_LLAMA_IGNORE))
register_architecture("Qwen2ForCausalLM", Family("qwen2", _qwen2_config, _llama_tensors, ignore=_LLAMA_IGNORE))
