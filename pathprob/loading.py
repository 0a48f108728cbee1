"""Opening a model from a spec: a checkpoint directory or ``truth:LANGUAGE``."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx

from pathprob.checkpoint import PARAMS, Checkpoints
from pathprob.config import ModelConfig
from pathprob.data.languages import get_language
from pathprob.data.tokenizer import Tokenizer
from pathprob.errors import CheckpointError, UnknownSpecError
from pathprob.models.base import LanguageModel
from pathprob.models.transformer import Transformer, TransformerLM


def checkpoint_dir(path: str | Path) -> Path:
    """The orbax directory of a run (``RUN/checkpoints``) or the directory itself."""
    path = Path(path)
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def open_model(spec: str | Path, *, step: int | None = None) -> LanguageModel:
    """A LanguageModel from ``truth:LANGUAGE`` or a run/checkpoint directory (latest step by default)."""
    spec = str(spec)
    if spec.startswith("truth:"):
        name = spec.removeprefix("truth:")
        truth = get_language(name).truth()
        if truth is None:
            raise UnknownSpecError(f"language {name!r} has no exact truth; use a checkpoint directory instead")
        return truth
    path = Path(spec)
    if not path.exists():
        raise UnknownSpecError(f"no such model: {spec!r} is neither a directory nor truth:LANGUAGE")
    return load_checkpoint(checkpoint_dir(path), step=step)[0]


def load_checkpoint(directory: Path, *, step: int | None = None) -> tuple[TransformerLM, dict]:
    """The Transformer stored at ``directory`` (latest or given step) and its metadata.

    Reads the parameters alone (no optimizer state), checked against their stored digest.
    """
    with Checkpoints(directory) as ckpts:
        meta = ckpts.load_meta(step=step)
        try:
            model_cfg = ModelConfig.from_dict(meta["model_config"])
            tokenizer = Tokenizer.from_json(meta["tokenizer"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {directory} has unreadable metadata ({err})") from None
        abstract_model = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
        graphdef, abstract_params = nnx.split(abstract_model)
        params = ckpts.load({PARAMS: abstract_params}, step=meta["step"])[PARAMS]
    lm = TransformerLM(params=params, graphdef=graphdef, config=model_cfg, tokenizer=tokenizer)
    return lm, meta


def parameter_count(lm: TransformerLM) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(lm.params)))


def describe_model(spec: str | Path) -> dict:
    """A JSON-able summary of a model spec: kind, vocabulary, config, step, eval loss."""
    lm = open_model(spec)
    facts = {"spec": str(spec), "vocab_size": lm.vocab_size, "max_len": lm.max_len,
             "tokens": "".join(lm.tokenizer.tokens)}
    if not isinstance(lm, TransformerLM):
        return {"kind": "exact truth", **facts}
    with Checkpoints(checkpoint_dir(spec)) as ckpts:
        meta, steps = ckpts.load_meta(), ckpts.steps()
    return {
        "kind": "transformer", **facts, "language": meta["language"], "step": meta["step"],
        "stored_steps": steps, "parameters": parameter_count(lm), "model_config": meta["model_config"],
        "eval_loss": meta.get("eval_loss"), "truth_eval_loss": meta.get("truth_eval_loss"),
        "seed": meta["seed"], "version": meta["version"],
    }
