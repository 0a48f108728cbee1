"""The shipped checkpoints compute bit for bit what they computed before the Transformer became configurable.

``tests/shipped_values.py`` recorded, with the code at git HEAD db7580d, the concepts checkpoint's
logits on a fixed batch and along KV-cached decoding, the trainer's eval loss of every shipped
checkpoint, and the initial parameters and logits of two default-config models. It runs again here
in a subprocess with the flags it was recorded with, so the comparison is exact
(``assert_array_equal``, ``==``), not within a tolerance.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pathprob as pp

HERE = Path(__file__).resolve().parent
RECORDED = json.loads((HERE / "data" / "shipped_values.json").read_text())
FLAGS = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}


@pytest.fixture(scope="module")
def now(tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PATHPROB_CACHE_DIR")} | FLAGS
    done = subprocess.run([sys.executable, str(HERE / "shipped_values.py"), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "values.json").read_text()), np.load(out / "concepts_logits.npz")


def test_concepts_logits_are_bit_identical(now):
    """The forward is bit-identical. KV-cached decoding is not, on purpose: since the recording it merges the
    prompt and suffix parts of attention by their log-sum-exps (one softmax computed in two pieces), which
    moves the last bits. It stays within float32 rounding: 4e-6 on log-probabilities up to 18 in magnitude
    (a few ulps of 1.9e-6 at that size), the same -inf entries."""
    _, arrays = now
    recorded = np.load(HERE / "data" / "shipped_concepts_logits.npz")
    np.testing.assert_array_equal(arrays["tokens"], recorded["tokens"])
    np.testing.assert_array_equal(arrays["logits"], recorded["logits"])
    np.testing.assert_allclose(arrays["decode_logprobs"], recorded["decode_logprobs"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["concepts", "arith", "concepts-sparse"])
def test_eval_loss_equals_the_stored_one(now, name):
    """The trainer's loss on its eval documents equals the eval_loss stored at training time, exactly."""
    values, _ = now
    meta = json.loads(next((HERE.parent / "checkpoints" / name / "checkpoints").glob("*/meta/data.json")).read_text())
    assert values["eval_loss"][name] == meta["eval_loss"] == RECORDED["eval_loss"][name]


def test_default_config_initialises_and_computes_as_before(now):
    values, _ = now
    assert values["init"] == RECORDED["init"]


def test_stored_configs_keep_their_meaning():
    """A stored model_config (without the new fields) reads as a LayerNorm(1e-6)/biases/tanh-GELU/MHA model."""
    cfg = pp.ModelConfig.from_dict({"vocab_size": 15, "max_len": 62, "d_model": 128, "n_layers": 2, "n_heads": 4,
                                    "d_ff": 512, "positional": "learned", "tie_embeddings": True, "dtype": "float32"})
    assert (cfg.norm, cfg.norm_eps, cfg.use_bias, cfg.has_qkv_bias, cfg.mlp, cfg.kv_heads, cfg.parallel_residual,
            cfg.param_dtype) == ("layernorm", 1e-6, True, True, "gelu_tanh", 4, False, "float32")


def test_bfloat16_opens_a_shipped_checkpoint():
    """--dtype bfloat16 on a float32 checkpoint: bf16 weights, float32 log-probabilities close to float32's.

    0.05 nats: bf16 keeps 8 significant bits (relative rounding 2**-9 per weight and per activation);
    over 2 layers of width 128 that moves these log-probabilities by a few hundredths at most.
    """
    lm32 = pp.open_model(HERE.parent / "checkpoints" / "concepts")
    lm16 = pp.open_model(HERE.parent / "checkpoints" / "concepts", dtype="bfloat16")
    import jax

    assert {x.dtype.name for x in jax.tree.leaves(lm16.params)} == {"bfloat16"}
    continuations = ["a", "ab", "$"]
    prompt = "^"
    got, want = pp.score(lm16, prompt, continuations), pp.score(lm32, prompt, continuations)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=0.05)
