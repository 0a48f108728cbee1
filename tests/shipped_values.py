"""What the shipped checkpoints and two default-config models compute: logits, decoding, eval losses, init.

``python tests/shipped_values.py OUT_DIR`` writes ``concepts_logits.npz`` and ``values.json`` into
OUT_DIR. ``tests/data/shipped_*`` are its output from the code at git HEAD db7580d, before issue 14
made the Transformer configurable, run with ``JAX_PLATFORMS=cpu
XLA_FLAGS=--xla_backend_optimization_level=0`` (the flags of the test suite; XLA's code generation,
and so the last bits, depend on them). ``tests/test_shipped_checkpoints.py`` runs it again with the
same flags and asserts equality bit for bit.
"""

import hashlib
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import pathprob as pp
from pathprob import training
from pathprob.checkpoint import tree_digest
from pathprob.config import ModelConfig, TrainConfig
from pathprob.data.languages import get_language
from pathprob.loading import load_checkpoint
from pathprob.models.base import repeat_paths, start_one
from pathprob.models.transformer import init_transformer

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("concepts", "arith", "concepts-sparse")
INIT_CONFIGS = {
    "default": ModelConfig(vocab_size=15, max_len=62),
    "rope_untied": ModelConfig(vocab_size=6, max_len=24, d_model=32, n_layers=1, n_heads=2, d_ff=48,
                               positional="rope", tie_embeddings=False),
}


def record(out: Path) -> dict:
    lm = pp.open_model(ROOT / "checkpoints" / "concepts")
    rng = np.random.default_rng(14)
    tokens = rng.integers(0, lm.vocab_size, (4, lm.max_len)).astype(np.int32)
    logits = np.asarray(jax.jit(lambda lm, t: lm.module(t))(lm, jnp.asarray(tokens)))
    start = jax.jit(lambda lm, p: repeat_paths(start_one(lm, p, 8), 3))
    advance = jax.jit(lambda lm, s, t: lm.advance(s, t))
    state = start(lm, jnp.asarray(tokens[0, :9]))
    steps = rng.integers(0, lm.vocab_size, (6, 3)).astype(np.int32)
    decoded = [np.asarray(state.paths["logprobs"])]
    for t in steps:
        state = advance(lm, state, jnp.asarray(t))
        decoded.append(np.asarray(state.paths["logprobs"]))
    np.savez_compressed(out / "concepts_logits.npz", tokens=tokens, logits=logits, decode_tokens=steps,
                        decode_logprobs=np.stack(decoded))
    eval_loss = {}
    for name in SHIPPED:  # the trainer's own loss on its own eval documents
        ckpt, meta = load_checkpoint(ROOT / "checkpoints" / name / "checkpoints")
        cfg = TrainConfig.from_dict(meta["train_config"])
        _, loss_fn = training._make_steps(ckpt.graphdef, training.make_optimizer(cfg), cfg.max_nonfinite)
        eval_loss[name] = float(loss_fn(ckpt.params, training._eval_docs(cfg, get_language(cfg.language))))
    init = {}
    for name, cfg in INIT_CONFIGS.items():
        model = init_transformer(cfg, 0)
        toks = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (3, cfg.max_len)), jnp.int32)
        lg = np.asarray(jax.jit(lambda m, t: m(t))(model, toks))
        init[name] = {"params_sha256": tree_digest(nnx.split(model)[1]),
                      "logits_sha256": hashlib.sha256(lg.tobytes()).hexdigest()}
    values = {"eval_loss": eval_loss, "init": init}
    (out / "values.json").write_text(json.dumps(values, indent=1))
    return values


if __name__ == "__main__":
    print(json.dumps(record(Path(sys.argv[1]))))
