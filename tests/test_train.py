"""Training: metrics, checkpoints, bit-identical resume, non-finite guard, config mismatch."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

import pathprob as pp
import pathprob.training as train_module
from pathprob.errors import CheckpointError, TrainingError

TINY = dict(language="arith", batch_size=8, d_model=32, n_layers=1, n_heads=2, d_ff=64, eval_docs=16,
            warmup_steps=2, log_every=1, eval_every=5)


def tiny(tmp_path, **overrides) -> pp.TrainConfig:
    return pp.TrainConfig(**{**TINY, "out": str(tmp_path), "steps": 10, "save_every": 5, **overrides})


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = pp.train(pp.TrainConfig(**{**TINY, "out": str(out), "steps": 10, "save_every": 5}), progress=False)
    return out, result


def test_train_writes_metrics_and_checkpoints(run):
    out, result = run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))
    for key in ("loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "wall_s", "truth_eval_loss"):
        assert all(math.isfinite(r[key]) for r in records[4:]), key
    assert records[-1]["eval_loss"] < records[0]["loss"]  # it learns something in 10 steps
    assert result.truth_eval_loss < result.eval_loss  # the truth is the floor
    info = pp.describe_model(out)
    assert info["step"] == 10 and info["stored_steps"] == [5, 10] and info["parameters"] > 0


def test_open_model_scores_like_the_trained_module(run):
    out, _ = run
    lm = pp.open_model(out)
    got = pp.score(lm, "^1+2=", ["3;", "4;"])
    assert np.isfinite(got).all() and got.shape == (2,)
    earlier = pp.score(pp.open_model(out, step=5), "^1+2=", ["3;", "4;"])
    assert not np.allclose(earlier, got)  # step 5 is a different, older model


def test_resume_is_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    pp.train(tiny(straight), progress=False)
    resumed = tmp_path / "resumed"
    pp.train(tiny(resumed), progress=False, until=5)  # as if killed after the checkpoint at step 5
    assert len(losses(resumed)) == 5
    pp.train(tiny(resumed), progress=False)
    assert losses(resumed) == losses(straight)


def test_resume_with_a_different_config_names_the_fields(run):
    out, _ = run
    with pytest.raises(CheckpointError, match=r"d_model: 32 -> 64"):
        pp.train(pp.TrainConfig(**{**TINY, "out": str(out), "steps": 10, "save_every": 5, "d_model": 64}))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    pp.train(tiny(tmp_path), progress=False, until=5)
    good = pp.open_model(tmp_path)
    finite_loss = train_module._loss
    monkeypatch.setattr(train_module, "_loss", lambda model, tokens: finite_loss(model, tokens) * jnp.nan)
    with pytest.raises(TrainingError, match="non-finite"):
        pp.train(tiny(tmp_path), progress=False)
    kept = pp.open_model(tmp_path)
    assert pp.describe_model(tmp_path)["step"] == 5
    np.testing.assert_array_equal(pp.score(kept, "^1+2=", ["3;"]), pp.score(good, "^1+2=", ["3;"]))


def test_config_validation_names_the_field():
    with pytest.raises(pp.PathprobError, match="TrainConfig.steps"):
        pp.TrainConfig(steps=0)
    with pytest.raises(pp.PathprobError, match="d_model"):
        pp.TrainConfig(d_model=30, n_heads=4)
