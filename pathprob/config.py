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
    """A decoder-only Transformer (pre-LayerNorm, GELU MLP, causal attention)."""

    vocab_size: int
    max_len: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 512
    positional: Literal["learned", "rope"] = "learned"
    tie_embeddings: bool = True
    dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self):
        _positive(self, "vocab_size", "max_len", "d_model", "n_layers", "n_heads", "d_ff")
        _one_of(self, "positional", ("learned", "rope"))
        _one_of(self, "dtype", ("float32", "bfloat16"))
        if self.d_model % self.n_heads:
            raise ConfigError(f"ModelConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.positional == "rope" and (self.d_model // self.n_heads) % 2:
            raise ConfigError("ModelConfig.n_heads: rope needs an even head dimension d_model // n_heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> ModelConfig:
        return cls(**fields)


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
    # Probes of the path distribution during training (pathprob.analysis.probes); 0 = off.
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
