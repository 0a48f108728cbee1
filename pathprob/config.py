"""Frozen, validated configuration dataclasses, saved as JSON in every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any, Literal

from pathprob.errors import PathprobError


class ConfigError(PathprobError):
    """A configuration field has an invalid value (the message names the field)."""


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")


def _one_of(obj: Any, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ConfigError(f"{type(obj).__name__}.{name} must be one of {', '.join(allowed)}; got {value!r}")


def _finite(obj: Any, name: str, ok: Callable[[float], bool], expected: str) -> None:
    """``name`` must be a finite real number for which ``ok`` holds (``expected`` says which, for the message)."""
    value = getattr(obj, name)
    real = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and ok(value)):
        raise ConfigError(f"{type(obj).__name__}.{name} must be a finite number {expected}, got {value!r}")


def _str_tuple(obj: Any, name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{type(obj).__name__}.{name} must be a sequence of strings, got {value!r}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only Transformer: GPT-2, GPT-NeoX/Pythia and Llama-family layouts in one description.

    The defaults are the model pathprob trains (pre-LayerNorm with epsilon 1e-6, biases, tanh-GELU
    MLP, learned positions, tied unembedding, float32): a stored config without the newer fields
    means exactly what it meant before they existed.

    Fields (D = ``d_model``, H = ``n_heads``, Dh = D / H):
      positional: ``learned`` absolute position embeddings or ``rope`` (rotate-half rotary).
      rotary_fraction: the fraction of each head's Dh dimensions that rope rotates (NeoX
        ``rotary_pct``); the first ``rotary_dim`` dimensions are rotated, the rest pass through.
      rope_theta: the rope base (frequencies ``rope_theta ** (-2i / rotary_dim)``).
      rope_llama3_scaling: Llama-3 rope scaling as ``(factor, low_freq_factor, high_freq_factor,
        original_max_position_embeddings)``, or None for plain rope.
      parallel_residual: ``x + attn(ln1(x)) + mlp(ln2(x))`` (NeoX) instead of two sequential
        residual updates.
      norm, norm_eps: ``layernorm`` or ``rmsnorm`` and its epsilon.
      use_bias: biases on every linear layer (and the LayerNorms); qkv_bias overrides it for the
        q/k/v projection alone (Qwen2: q/k/v biases, no others); None follows use_bias.
      mlp: ``gelu_tanh`` (tanh approximation, ``jax.nn.gelu``'s default), ``gelu_exact`` (erf),
        or ``swiglu`` (``silu(gate) * up``, gate and up fused in one projection of width 2 * d_ff).
      n_kv_heads: key/value heads for grouped-query attention (None: ``n_heads``, plain multi-head).
      tie_embeddings: the unembedding is the token embedding transposed.
      dtype, param_dtype: the compute and the parameter dtypes; logits and log-softmax are float32
        in every case.
    """

    vocab_size: int
    max_len: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 512
    positional: Literal["learned", "rope"] = "learned"
    tie_embeddings: bool = True
    dtype: Literal["float32", "bfloat16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    rotary_fraction: float = 1.0
    rope_theta: float = 10000.0
    rope_llama3_scaling: tuple[float, float, float, int] | None = None
    parallel_residual: bool = False
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-6
    use_bias: bool = True
    qkv_bias: bool | None = None
    mlp: Literal["gelu_tanh", "gelu_exact", "swiglu"] = "gelu_tanh"
    n_kv_heads: int | None = None

    def __post_init__(self):
        _positive(self, "vocab_size", "max_len", "d_model", "n_layers", "n_heads", "d_ff")
        _one_of(self, "positional", ("learned", "rope"))
        _one_of(self, "dtype", ("float32", "bfloat16"))
        _one_of(self, "param_dtype", ("float32", "bfloat16"))
        _one_of(self, "norm", ("layernorm", "rmsnorm"))
        _one_of(self, "mlp", ("gelu_tanh", "gelu_exact", "swiglu"))
        for name in ("tie_embeddings", "parallel_residual", "use_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"ModelConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.qkv_bias is not None and not isinstance(self.qkv_bias, bool):
            raise ConfigError(f"ModelConfig.qkv_bias must be true, false or None, got {self.qkv_bias!r}")
        _finite(self, "rotary_fraction", lambda value: 0.0 < value <= 1.0, "in (0, 1]")
        _finite(self, "rope_theta", lambda value: value > 1.0, "> 1")
        _finite(self, "norm_eps", lambda value: 0.0 < value < 1.0, "in (0, 1)")
        if self.d_model % self.n_heads:
            raise ConfigError(f"ModelConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_kv_heads is not None:
            _positive(self, "n_kv_heads")
            if self.n_heads % self.n_kv_heads:
                raise ConfigError(f"ModelConfig.n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if self.positional == "rope" and (self.rotary_dim == 0 or self.rotary_dim % 2):
            raise ConfigError(f"ModelConfig.rotary_fraction: rope needs an even, positive number of rotated "
                              f"dimensions, got int({self.head_dim} * {self.rotary_fraction}) = {self.rotary_dim}")
        if self.rope_llama3_scaling is not None:
            object.__setattr__(self, "rope_llama3_scaling", _llama3_scaling(self.rope_llama3_scaling))
            if self.positional != "rope":
                raise ConfigError("ModelConfig.rope_llama3_scaling needs positional = 'rope'")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``n_kv_heads``, or ``n_heads`` when it is None."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def has_qkv_bias(self) -> bool:
        return self.use_bias if self.qkv_bias is None else self.qkv_bias

    @property
    def rotary_dim(self) -> int:
        """How many of each head's dimensions rope rotates (NeoX: ``int(head_dim * rotary_pct)``)."""
        return int(self.head_dim * self.rotary_fraction)

    def to_dict(self) -> dict:
        """JSON-shaped fields (the rope scaling tuple as a list)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, fields: dict) -> ModelConfig:
        """Missing fields (configs stored before they existed) take their defaults."""
        return cls(**fields)


def _llama3_scaling(value: Any) -> tuple[float, float, float, int]:
    """``(factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)`` checked, as a tuple."""
    try:
        factor, low, high, original = value
        ok = (all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
              and factor >= 1.0 and 0.0 < low < high and isinstance(original, int) and original > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError("ModelConfig.rope_llama3_scaling must be (factor >= 1, 0 < low_freq_factor < "
                          f"high_freq_factor, original_max_position_embeddings > 0), got {value!r}")
    return float(factor), float(low), float(high), int(original)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (together with the language's seed)."""

    language: str = "concepts"
    out: str = "runs/concepts"
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 50
    eval_every: int = 250
    save_every: int = 500
    keep: int = 2
    eval_docs: int = 512
    seed: int = 0
    max_nonfinite: int = 5
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 512
    positional: Literal["learned", "rope"] = "learned"
    tie_embeddings: bool = True
    dtype: Literal["float32", "bfloat16"] = "float32"
    # Probes of the path distribution during training (pathprob.probes); 0 = off.
    # Empty prompts / None sets / max_new 0 take the language's defaults (probes.probe_spec).
    probe_every: int = 0
    probe_prompts: tuple[str, ...] = ()
    probe_sets: tuple[str, ...] | None = None  # path-set names of the language, or regexes
    probe_max_new: int = 0
    probe_min_prob: float = 1e-4
    probe_track: int = 8

    def __post_init__(self):
        # JSON stores tuples as lists: take either, keep tuples (hashable, comparable).
        object.__setattr__(self, "probe_prompts", _str_tuple(self, "probe_prompts", self.probe_prompts))
        if self.probe_sets is not None:
            object.__setattr__(self, "probe_sets", _str_tuple(self, "probe_sets", self.probe_sets))
        for name in ("probe_every", "probe_max_new", "probe_track"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"TrainConfig.{name} must be a non-negative integer, got {value!r}")
        _finite(self, "probe_min_prob", lambda value: 0.0 <= value < 1.0, "in [0, 1)")
        _positive(self, "steps", "batch_size", "warmup_steps", "log_every", "eval_every", "save_every",
                  "keep", "eval_docs", "max_nonfinite")
        for name in ("learning_rate", "grad_clip"):
            _finite(self, name, lambda value: value > 0.0, "> 0")
        _finite(self, "weight_decay", lambda value: value >= 0.0, ">= 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"TrainConfig.seed must be a non-negative integer, got {self.seed!r}")
        # The model fields are validated by building a ModelConfig.
        self.model_config(vocab_size=1, max_len=1)

    def model_config(self, *, vocab_size: int, max_len: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size, max_len=max_len, d_model=self.d_model, n_layers=self.n_layers,
            n_heads=self.n_heads, d_ff=self.d_ff, positional=self.positional,
            tie_embeddings=self.tie_embeddings, dtype=self.dtype,
        )

    def to_dict(self) -> dict:
        """JSON-shaped fields (tuples as lists), so a stored and a requested config compare equal."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, fields: dict) -> TrainConfig:
        """Missing fields (configs stored by older versions) take their defaults."""
        return cls(**fields)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def config_diff(stored: dict, requested: dict, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """Names of the fields that differ, as ``name: stored -> requested`` (fields in ``ignore`` excepted)."""
    keys = sorted((set(stored) | set(requested)) - set(ignore))
    return [f"{k}: {stored.get(k)!r} -> {requested.get(k)!r}" for k in keys if stored.get(k) != requested.get(k)]
