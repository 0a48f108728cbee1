"""Opening a model from a spec: a run/checkpoint directory, ``truth:LANGUAGE`` or ``hf:DIR``.

A spec is ``SCHEME:REST`` for a registered scheme, or else a run/checkpoint directory. Each scheme
is one ``Scheme`` in ``SCHEMES`` (``register_scheme``): a function that opens the model and one that
describes it; ``open_model`` and ``describe_model`` only dispatch.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from pathprob.checkpoint import PARAMS, Checkpoints
from pathprob.config import ModelConfig
from pathprob.data.languages import get_language
from pathprob.data.tokenizer import tokenizer_from_json
from pathprob.errors import CheckpointError, PathprobError, UnknownSpecError
from pathprob.models import hf
from pathprob.models.base import LanguageModel
from pathprob.models.transformer import Transformer, TransformerLM


@dataclasses.dataclass(frozen=True)
class Scheme:
    """The models of one spec scheme: ``open(rest, dtype=, step=)`` and ``describe(rest, dtype=)``."""

    open: Callable[..., LanguageModel]
    describe: Callable[..., dict]
    help: str


SCHEMES: dict[str, Scheme] = {}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9_+.-]*):(.*)", re.DOTALL)


def register_scheme(name: str, scheme: Scheme) -> None:
    """Make ``NAME:REST`` specs open with ``scheme``."""
    SCHEMES[name] = scheme


def known_specs() -> str:
    return ", ".join([*(s.help for s in SCHEMES.values()), "or a run/checkpoint directory"])


def checkpoint_dir(path: str | Path) -> Path:
    """The orbax directory of a run (``RUN/checkpoints``) or the directory itself."""
    path = Path(path)
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def _resolve(spec: str | Path) -> tuple[Scheme | None, str]:
    """The scheme of ``spec`` and the rest (None: a directory); an UnknownSpecError for an unknown scheme."""
    spec = str(spec)
    match = _SCHEME.fullmatch(spec)
    if match and match.group(1) in SCHEMES:
        return SCHEMES[match.group(1)], match.group(2)
    if match and not Path(spec).exists():
        scheme = match.group(1) + ":"
        raise UnknownSpecError(f"unknown model spec scheme {scheme!r} in {spec!r}; known: {known_specs()}")
    return None, spec


def open_model(spec: str | Path, *, step: int | None = None, dtype: str | None = None) -> LanguageModel:
    """A LanguageModel from a spec (see ``known_specs``); a checkpoint's latest step by default.

    ``dtype`` (``float32`` or ``bfloat16``) is the weight and compute dtype of a Transformer
    (None: as stored, float32 for ``hf:``); logits and log-probabilities are float32 either way.
    """
    if dtype is not None and dtype not in hf.DTYPES:
        raise PathprobError(f"dtype must be one of {', '.join(hf.DTYPES)}, got {dtype!r}")
    scheme, rest = _resolve(spec)
    if scheme is not None:
        return scheme.open(rest, dtype=dtype, step=step)
    path = Path(rest)
    if not path.exists():
        raise UnknownSpecError(f"no such model: {rest!r} is not a directory; known specs: {known_specs()}")
    lm = load_checkpoint(checkpoint_dir(path), step=step)[0]
    return lm if dtype is None else cast(lm, dtype)


def cast(lm: TransformerLM, dtype: str) -> TransformerLM:
    """``lm`` with its parameters and computations in ``dtype`` (the same parameter tree)."""
    cfg = hf.with_dtype(lm.config, dtype)
    if cfg == lm.config:
        return lm
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    params = jax.tree.map(lambda x: x.astype(cfg.param_dtype), lm.params)
    return TransformerLM(params=params, graphdef=graphdef, config=cfg, tokenizer=lm.tokenizer)


def load_checkpoint(directory: Path, *, step: int | None = None) -> tuple[TransformerLM, dict]:
    """The Transformer stored at ``directory`` (latest or given step) and its metadata.

    Reads the parameters alone (no optimizer state), checked against their stored digest.
    """
    with Checkpoints(directory) as ckpts:
        meta = ckpts.load_meta(step=step)
        try:
            model_cfg = ModelConfig.from_dict(meta["model_config"])
            tokenizer = tokenizer_from_json(meta["tokenizer"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {directory} has unreadable metadata ({err})") from None
        abstract_model = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
        graphdef, abstract_params = nnx.split(abstract_model)
        params = ckpts.load({PARAMS: abstract_params}, step=meta["step"])[PARAMS]
    lm = TransformerLM(params=params, graphdef=graphdef, config=model_cfg, tokenizer=tokenizer)
    return lm, meta


def parameter_count(lm: TransformerLM) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(lm.params)))


def _weights(lm: TransformerLM) -> dict:
    size = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(lm.params))
    return {"dtype": lm.config.param_dtype, "weights_bytes": int(size)}


def describe_model(spec: str | Path, *, dtype: str | None = None) -> dict:
    """A JSON-able summary of a model spec: its kind, vocabulary, and what the scheme knows (config, size, ...)."""
    scheme, rest = _resolve(spec)
    if scheme is not None:
        return {"spec": str(spec), **scheme.describe(rest, dtype=dtype)}
    lm = open_model(rest, dtype=dtype)
    with Checkpoints(checkpoint_dir(rest)) as ckpts:
        meta, steps = ckpts.load_meta(), ckpts.steps()
    return {
        "kind": "transformer", "spec": str(spec), "vocab_size": lm.vocab_size, "max_len": lm.max_len,
        "tokens": "".join(lm.tokenizer.tokens), "language": meta["language"], "step": meta["step"],
        "stored_steps": steps, "parameters": parameter_count(lm), **_weights(lm),
        "model_config": meta["model_config"], "eval_loss": meta.get("eval_loss"),
        "truth_eval_loss": meta.get("truth_eval_loss"), "seed": meta["seed"], "version": meta["version"],
    }


# --- the schemes ------------------------------------------------------------------------------------------


def _open_truth(name: str, *, dtype: str | None, step: int | None) -> LanguageModel:
    if step is not None or dtype is not None:
        raise UnknownSpecError(f"truth:{name} is an exact process: it has no steps and no weight dtype")
    truth = get_language(name).truth()
    if truth is None:
        raise UnknownSpecError(f"language {name!r} has no exact truth; use a checkpoint directory instead")
    return truth


def _describe_truth(name: str, *, dtype: str | None) -> dict:
    lm = _open_truth(name, dtype=dtype, step=None)
    return {"kind": "exact truth", "vocab_size": lm.vocab_size, "max_len": lm.max_len,
            "tokens": "".join(lm.tokenizer.tokens)}


def _open_hf(directory: str, *, dtype: str | None, step: int | None) -> LanguageModel:
    if step is not None:
        raise UnknownSpecError(f"hf:{directory} is a pretrained model: it has no training steps")
    return hf.open_pretrained(directory, dtype=dtype)


register_scheme("truth", Scheme(_open_truth, _describe_truth, "truth:LANGUAGE (the exact process)"))
register_scheme("hf", Scheme(_open_hf, hf.describe_pretrained, "hf:DIR (a local Hugging Face model directory)"))
