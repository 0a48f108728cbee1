"""Training: metrics, checkpoints, bit-identical resume (also after a torn metrics line and a move), the
non-finite guard (refused hyper-parameters, divergence read back late but stopped in time), progress lines."""

import json
import math
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pathprob as pp
import pathprob.training as train_module
from pathprob.checkpoint import Checkpoints, tree_digest
from pathprob.errors import CheckpointError, TrainingError
from pathprob.files import loads_strict
from pathprob.rundir import locked, read_metrics

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


TIMING = ("tokens_per_s", "wall_s")


def records_without_timing(run_dir) -> list[dict]:
    """The metric records, parsed as strictly as JavaScript would, without the wall-clock fields."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in loads_strict(line).items() if k not in TIMING} for line in lines]


def params_digest(run_dir) -> str:
    return tree_digest(pp.open_model(run_dir).params)


def test_eval_loss_is_null_until_the_first_evaluation(run):
    out, _ = run
    assert [r["eval_loss"] is None for r in records_without_timing(out)] == [True] * 4 + [False] * 6  # eval_every=5


def test_resume_after_a_torn_metrics_line_and_a_move_is_bit_identical(tmp_path, run):
    first, moved = tmp_path / "first", tmp_path / "elsewhere" / "moved"
    pp.train(tiny(first), progress=False, until=7)  # its checkpoint is step 5; steps 6, 7 are logged
    with open(first / "metrics.jsonl", "a") as f:
        f.write('{"step": 100, "lo')  # the disk filled up mid-write
    moved.parent.mkdir()
    shutil.move(first, moved)  # where a run lives is not part of what it is
    with pytest.warns(UserWarning, match="torn final line"):
        pp.train(tiny(moved), progress=False)
    straight, _ = run  # the same config, uninterrupted
    assert records_without_timing(moved) == records_without_timing(straight)
    assert params_digest(moved) == params_digest(straight)
    with Checkpoints(moved / "checkpoints") as ckpts:  # the metadata says where it was last trained
        assert ckpts.steps() == [5, 10] and ckpts.load_meta()["train_config"]["out"] == str(moved)


@pytest.mark.parametrize("field, value", [("learning_rate", math.inf), ("learning_rate", math.nan),
                                          ("weight_decay", math.nan), ("grad_clip", math.inf),
                                          ("probe_min_prob", math.nan), ("learning_rate", -1e-3)])
def test_non_finite_hyper_parameters_are_refused_naming_the_field(field, value):
    with pytest.raises(pp.PathprobError, match=rf"^TrainConfig\.{field} must be a finite number"):
        pp.TrainConfig(**{field: value})


def test_divergence_read_back_at_a_logging_step_stops_naming_the_step(tmp_path, monkeypatch):
    # Every step is non-finite: with max_nonfinite 2 the run diverges at step 2. Values are read back only
    # at logging steps (every 4th), once the next step is in flight: step 4's, while step 5 runs.
    finite_loss = train_module._loss
    monkeypatch.setattr(train_module, "_loss", lambda model, tokens: finite_loss(model, tokens) * jnp.nan)
    cfg = tiny(tmp_path, log_every=4, eval_every=4, max_nonfinite=2, steps=12, save_every=6)
    diverged = r"^training diverged at step 2: .* non-finite for 2 consecutive steps"
    with pytest.raises(TrainingError, match=diverged) as raised:
        pp.train(cfg, progress=False)
    assert "\n" not in str(raised.value)
    # No record (step 4's values were read after the divergence), no checkpoint, no NaN anywhere.
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()
    with locked(tmp_path):  # released although training raised
        pass


def test_batch_keys_computed_up_front_are_the_folded_step_keys():
    def folded(step):
        return np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(3), step)))

    cfg = pp.TrainConfig(seed=3)
    np.testing.assert_array_equal(train_module._batch_keys(cfg, 5, 9), np.stack([folded(s) for s in range(5, 9)]))
    np.testing.assert_array_equal(train_module._batch_keys(cfg, 2**31 - 2, 2**31 - 1)[0], folded(2**31 - 2))


def test_smoke_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    result = pp.train(tiny(tmp_path, steps=4, eval_every=2, save_every=4))  # progress=None; capsys: not a terminal
    lines = capsys.readouterr().err.strip().splitlines()
    number = r"\d+\.\d{4}"
    pattern = re.compile(rf"^train step \d/4, loss {number}(, eval loss {number})?, [\d,]+ tokens/s, ETA \d+:\d\d$")
    assert lines and all(pattern.match(line) for line in lines), lines
    assert lines[-1].startswith("train step 4/4") and f"eval loss {result.eval_loss:.4f}" in lines[-1]
    assert read_metrics(tmp_path)[-1]["step"] == 4
