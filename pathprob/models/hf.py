"""Pretrained models from a local Hugging Face directory, mapped into pathprob's own Transformer.

A directory holds ``config.json``, the weights as ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) and ``tokenizer.json``. Nothing is downloaded: the files are the
user's own copy. Weights are read with ``safetensors`` into numpy (no torch) and mapped, tensor by
tensor, into the parameters of ``pathprob.models.transformer.Transformer`` (one model class, so
every engine runs on the result unchanged).

Each supported ``architectures`` entry of ``config.json`` is one registered ``Family``: a function
from ``config.json`` to a ``ModelConfig`` (refusing what the Transformer cannot express) and a
function from that config to the recipe of every parameter (which Hugging Face tensors, of which
shapes, and how they are rearranged). Families (D model width, H heads, Dh head width):

- ``GPT2LMHeadModel``: learned positions, LayerNorm, tanh-GELU; the Conv1D weights are already
  ``[in, out]``; the fused ``c_attn`` is (q, k, v) as pathprob stores it.
- ``GPTNeoXForCausalLM`` (Pythia): partial rotary (``rotary_pct``), parallel residual, exact GELU,
  untied ``embed_out``; the fused ``query_key_value`` is interleaved per head (``[H, 3, Dh]`` rows)
  and is permuted at load time to (q, k, v).
- ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``: RMSNorm, SwiGLU, rope
  (optionally Llama-3 scaled), grouped-query attention, no biases (Qwen2: q/k/v biases); separate
  q/k/v and gate/up projections are fused at load time.

Any refusal is one line naming what is wrong: a missing file or tensor, an unknown architecture, a
tensor whose shape differs from what ``config.json`` implies, a config option not implemented.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401 (registers bfloat16 with numpy, so safetensors can hand back bf16 tensors)
import numpy as np
from flax import nnx

from pathprob.config import ModelConfig
from pathprob.errors import CheckpointError, PathprobError
from pathprob.models.transformer import Transformer, TransformerLM

CONFIG, WEIGHTS, INDEX, TOKENIZER = "config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json"
DTYPES = ("float32", "bfloat16")


class PretrainedError(CheckpointError):
    """A pretrained model directory lacks a file or tensor, or holds something pathprob cannot load."""


@dataclasses.dataclass(frozen=True)
class _Take:
    """One parameter: the Hugging Face tensors it comes from (name, expected shape) and how they combine."""

    sources: tuple[tuple[str, tuple[int, ...]], ...]
    build: Callable[..., np.ndarray] = lambda x: x


def _one(name: str, shape: tuple[int, ...], build: Callable[[np.ndarray], np.ndarray] = lambda x: x) -> _Take:
    return _Take(((name, tuple(shape)),), build)


def _transposed(name: str, shape: tuple[int, ...]) -> _Take:
    """A torch ``Linear`` weight ``[out, in]`` as a kernel ``[in, out]``."""
    return _one(name, shape, lambda w: w.T)


def _fused(names_shapes: list[tuple[str, tuple[int, ...]]], *, transpose: bool) -> _Take:
    """Several tensors concatenated along their first axis (torch ``[out, in]`` weights, or biases)."""
    concat = lambda *ws: np.concatenate(ws, axis=0)
    return _Take(tuple((n, tuple(s)) for n, s in names_shapes), (lambda *ws: concat(*ws).T) if transpose else concat)


@dataclasses.dataclass(frozen=True)
class Family:
    """How one ``architectures`` entry maps: config.json -> ModelConfig, and ModelConfig -> parameter recipes.

    ``strip``: name prefixes some saves put on every tensor (removed before matching);
    ``ignore``: a regex of stored tensors that are not parameters (buffers such as causal masks).
    """

    name: str
    config: Callable[[_Fields], ModelConfig]
    tensors: Callable[[ModelConfig], dict[str, _Take]]
    strip: tuple[str, ...] = ()
    ignore: str = r"$^"


ARCHITECTURES: dict[str, Family] = {}


def register_architecture(architecture: str, family: Family) -> None:
    """Make ``hf:DIR`` load directories whose config.json names ``architecture``."""
    ARCHITECTURES[architecture] = family


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A directory's config.json, read and mapped (no weights read yet).

    ``eos_id``/``bos_id`` come from ``eos_token_id``/``bos_token_id``; where config.json gives a
    list (Llama 3 lists several EOS ids), the first is used and ``notes`` says so.
    """

    directory: Path
    architecture: str
    family: Family
    config: ModelConfig
    eos_id: int
    bos_id: int | None
    notes: tuple[str, ...] = ()


class _Fields:
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


def _gpt2_config(f: _Fields) -> ModelConfig:
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


def _gpt2_tensors(cfg: ModelConfig) -> dict[str, _Take]:
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


def _neox_config(f: _Fields) -> ModelConfig:
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


def _neox_tensors(cfg: ModelConfig) -> dict[str, _Take]:
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


def _llama_config(f: _Fields, *, qkv_bias: bool | None = None) -> ModelConfig:
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


def _qwen2_config(f: _Fields) -> ModelConfig:
    return _llama_config(f, qkv_bias=True)  # Qwen2: biases on q, k, v only


def _llama_tensors(cfg: ModelConfig) -> dict[str, _Take]:
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


# --- reading a directory --------------------------------------------------------------------------------


def read_pretrained(directory: str | Path) -> Pretrained:
    """The directory's config.json, mapped to a family and a (float32) ModelConfig; no weights are read."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PretrainedError(f"no such directory: {directory} (hf:DIR needs a local Hugging Face model directory)")
    where = directory / CONFIG
    if not where.is_file():
        raise PretrainedError(f"{directory} has no {CONFIG}")
    try:
        fields = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PretrainedError(f"{where} is not readable JSON ({err})") from None
    if not isinstance(fields, dict):
        raise PretrainedError(f"{where} is not a JSON object")
    architectures = fields.get("architectures") or []
    known = [a for a in architectures if a in ARCHITECTURES]
    if not known:
        named = ", ".join(map(str, architectures)) or "(none given)"
        raise PretrainedError(f"{where}: unsupported architecture {named} (supported: {', '.join(ARCHITECTURES)})")
    f = _Fields(fields, where)
    family = ARCHITECTURES[known[0]]
    try:
        config = family.config(f)
    except PretrainedError:
        raise
    except PathprobError as err:  # a ModelConfig field out of range: name the file it came from
        raise PretrainedError(f"{where} maps to an invalid model ({err})") from None
    except (TypeError, ValueError) as err:
        raise PretrainedError(f"{where} has a field of the wrong type ({err})") from None
    eos_id, bos_id = f.special("eos_token_id"), f.special("bos_token_id")
    if eos_id is None:
        raise PretrainedError(f"{where} has no eos_token_id: pathprob's engines end every path at EOS")
    for name, value in (("eos_token_id", eos_id), ("bos_token_id", bos_id)):
        if value is not None and not 0 <= value < config.vocab_size:
            raise PretrainedError(f"{where}: {name} {value} is outside the vocabulary of size {config.vocab_size}")
    return Pretrained(directory, known[0], family, config, eos_id, bos_id, tuple(f.notes))


def _weight_files(directory: Path) -> list[Path]:
    index = directory / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise PretrainedError(f"{index} is not a readable safetensors index "
                                  f"({type(err).__name__}: {err})") from None
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
    elif (directory / WEIGHTS).is_file():
        files = [directory / WEIGHTS]
    else:
        raise PretrainedError(f"{directory} has no {WEIGHTS} (nor {INDEX} for sharded weights)")
    for file in files:
        if not file.is_file():
            raise PretrainedError(f"{directory} has no {file.name} (listed in {INDEX})")
    return files


class _Tensors:
    """The stored tensors of a directory by (prefix-stripped) name: shapes from the headers, data on demand."""

    def __init__(self, pretrained: Pretrained):
        from safetensors import SafetensorError, safe_open

        self.files = _weight_files(pretrained.directory)
        self.where: dict[str, tuple[Path, str]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._open, self._handles = safe_open, {}
        for file in self.files:
            try:
                with safe_open(file, framework="numpy") as handle:
                    for stored in handle.keys():
                        name = _strip(stored, pretrained.family.strip)
                        self.where[name] = (file, stored)
                        self.shapes[name] = tuple(handle.get_slice(stored).get_shape())
            except (SafetensorError, OSError) as err:
                raise PretrainedError(f"{file} is not a readable safetensors file ({err})") from None

    def read(self, name: str) -> np.ndarray:
        file, stored = self.where[name]
        if file not in self._handles:
            self._handles[file] = self._open(file, framework="numpy")
        return self._handles[file].get_tensor(stored)


def _strip(name: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _plan(pretrained: Pretrained, tensors: _Tensors) -> dict[str, _Take]:
    """The recipe of every parameter, checked against the stored tensors' names and shapes."""
    plan = pretrained.family.tensors(pretrained.config)
    used = {name for take in plan.values() for name, _ in take.sources}
    where = pretrained.directory
    for take in plan.values():
        for name, shape in take.sources:
            if name not in tensors.shapes:
                raise PretrainedError(f"{where} has no tensor {name!r} (the {pretrained.architecture} layout "
                                      f"of {CONFIG} needs it)")
            if tensors.shapes[name] != shape:
                raise PretrainedError(f"tensor {name!r} in {where} has shape {tensors.shapes[name]}, but {CONFIG} "
                                      f"implies {shape}")
    ignore = re.compile(pretrained.family.ignore)
    tied_head = {"lm_head.weight", "embed_out.weight"} if pretrained.config.tie_embeddings else set()
    extra = sorted(n for n in tensors.shapes if n not in used and n not in tied_head and not ignore.fullmatch(n))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise PretrainedError(f"{where} holds tensor {extra[0]!r}{more}, which the {pretrained.architecture} mapping "
                              "does not use: a variant pathprob does not support")
    return plan


def _abstract(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def _param_name(path: tuple) -> str:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    return name.removesuffix("/value")


def with_dtype(cfg: ModelConfig, dtype: str | None) -> ModelConfig:
    """``cfg`` with compute and parameter dtype ``dtype`` (None: unchanged)."""
    if dtype is None:
        return cfg
    if dtype not in DTYPES:
        raise PathprobError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dataclasses.replace(cfg, dtype=dtype, param_dtype=dtype)


def load_transformer(directory: str | Path, *, dtype: str | None = None) -> tuple[Pretrained, nnx.GraphDef, nnx.State]:
    """The directory's mapping, and its Transformer's graphdef and parameters (``dtype``: default float32)."""
    pretrained = read_pretrained(directory)
    cfg = with_dtype(pretrained.config, dtype or "float32")
    pretrained = dataclasses.replace(pretrained, config=cfg)
    tensors = _Tensors(pretrained)
    plan = _plan(pretrained, tensors)
    graphdef, abstract = _abstract(cfg)

    def leaf(path, abstract_leaf):
        name = _param_name(path)
        take = plan[name]
        # Transposes and concatenations are exact in the stored dtype; one rounding at most, to the target dtype.
        array = np.asarray(take.build(*(tensors.read(source) for source, _ in take.sources)), abstract_leaf.dtype)
        if array.shape != tuple(abstract_leaf.shape):  # a recipe bug, not the user's: say so plainly
            raise AssertionError(f"{name}: built {array.shape}, the Transformer has {abstract_leaf.shape}")
        return jnp.asarray(array)

    missing = sorted(set(map(_param_name, (p for p, _ in jax.tree_util.tree_flatten_with_path(abstract)[0])))
                     - set(plan))
    if missing:
        raise AssertionError(f"the {pretrained.architecture} mapping lacks parameters {missing}")
    params = jax.tree_util.tree_map_with_path(leaf, abstract)
    return pretrained, graphdef, params


def open_pretrained(directory: str | Path, *, dtype: str | None = None) -> TransformerLM:
    """The model of a local Hugging Face directory as a LanguageModel (weights as ``dtype``, default float32).

    The tokenizer is ``tokenizer.json`` (``pathprob.data.hf_tokenizer``), with BOS/EOS from config.json;
    whether a text prompt gets BOS follows the file's post-processor template.
    """
    directory = Path(directory)
    if not (directory / TOKENIZER).is_file() and directory.is_dir():
        raise PretrainedError(f"{directory} has no {TOKENIZER}")
    pretrained, graphdef, params = load_transformer(directory, dtype=dtype)
    from pathprob.data.hf_tokenizer import HFTokenizer  # the tokenizers library is needed only here

    # A model may have more rows than the tokenizer has tokens (Pythia pads to a multiple of 128): the
    # tokenizer then covers the model's vocabulary, those ids with no bytes (no text decodes to them), so
    # token automata are as wide as the model's log-probabilities. More tokens than rows is refused.
    tokenizer = HFTokenizer.from_file(directory / TOKENIZER, bos_id=pretrained.bos_id, eos_id=pretrained.eos_id,
                                      vocab_size=pretrained.config.vocab_size)
    return TransformerLM(params=params, graphdef=graphdef, config=pretrained.config, tokenizer=tokenizer)


def describe_pretrained(directory: str | Path, *, dtype: str | None = None) -> dict:
    """A JSON-able summary from config.json and the safetensors headers (no weights are read)."""
    pretrained = read_pretrained(directory)
    cfg = with_dtype(pretrained.config, dtype or "float32")
    _plan(dataclasses.replace(pretrained, config=cfg), _Tensors(pretrained))
    _, abstract = _abstract(cfg)
    notes = list(pretrained.notes)
    if not (pretrained.directory / TOKENIZER).is_file():
        notes.append(f"no {TOKENIZER}: the model cannot be opened until it is there")
    leaves = jax.tree.leaves(abstract)
    count = sum(math.prod(leaf.shape) for leaf in leaves)
    weight_bytes = sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in leaves)
    return {
        "kind": "pretrained (Hugging Face directory)", "family": pretrained.architecture,
        "vocab_size": cfg.vocab_size, "max_len": cfg.max_len, "parameters": int(count), "dtype": cfg.param_dtype,
        "weights_bytes": int(weight_bytes),
        "weights_memory": f"{_size(weight_bytes)} for the weights only (the prompt and path KV caches and the "
                          "activations come on top)",
        "eos_id": pretrained.eos_id, "bos_id": pretrained.bos_id, "notes": notes,
        "model_config": cfg.to_dict(),
    }


def _size(n_bytes: int) -> str:
    """A byte count in binary units: 512 B, 87.0 KiB, 474.6 MiB, 4.60 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{n_bytes} B"
