"""Training probes: record steps, resume, values vs a fresh computation and brute force, KL, dynamics, CLI."""

import itertools
import json
import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

import pathprob as pp
from pathprob.analysis.dynamics import training_dynamics
from pathprob.probes import Prober, ProbeSpec, probe_spec
from pathprob.paths.divergence import lumped_kl
from pathprob.paths.intervals import LOGP_ROUNDING
from pathprob.cli import app
from pathprob.config import ConfigError, config_diff
from pathprob.paths.measure import entropy_from_table, set_mass_from_table
from pathprob.plots.training import plot_dynamics

# Probes of 3 tokens, unpruned (min_prob 0): the model's entropy and masses are exact, so
# they can be checked against brute force over all 12^3 token sequences.
PROMPTS = ("^3+6=", "^3+6=2;5+1=")
TINY = dict(language="arith", batch_size=8, d_model=16, n_layers=1, n_heads=2, d_ff=32, eval_docs=16,
            warmup_steps=2, log_every=2, eval_every=5, steps=7, save_every=3, keep=3,
            probe_every=3, probe_prompts=PROMPTS, probe_max_new=3, probe_min_prob=0.0, probe_track=4)
TIMING = ("seconds", "wall_s", "tokens_per_s")


def tiny(out, **overrides) -> pp.TrainConfig:
    return pp.TrainConfig(**{**TINY, "out": str(out), **overrides})


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("probed")
    pp.train(tiny(out), progress=False)
    return out


def test_probe_records_at_every_n_steps_and_the_last(run):
    recs = records(run)
    assert [r["step"] for r in recs if "probe" in r] == [0, 3, 6, 7]
    assert [r["step"] for r in recs if "probe_setup" in r] == [0]
    # Probe steps that are not log steps still carry the training metrics (readers of "loss" keep working).
    assert all("loss" in r for r in recs if r["step"] > 0)
    assert [r["step"] for r in recs if r["step"] > 0] == [2, 3, 4, 6, 7]
    setup = recs[0]["probe_setup"]
    assert setup["spec"]["prompts"] == list(PROMPTS)
    assert setup["sets"] == {"correct": ["2.*", "6.*"]}
    for truth in setup["truth"]:  # after "a+b=": the answer, ';', then a uniform digit
        assert truth["paths"] == 7 and truth["kl_exact"]
        np.testing.assert_allclose(truth["entropy"], math.log(7), rtol=1e-6)


def test_probes_do_not_change_training_and_old_runs_resume(run, tmp_path, monkeypatch):
    """A probe-free run stored by a version without probe fields resumes, and trains bit-identically to the probed run."""
    from pathprob import training

    plain = tmp_path / "plain"
    cfg = pp.TrainConfig(**{k: v for k, v in TINY.items() if not k.startswith("probe_")}, out=str(plain))
    original_meta = training._meta
    monkeypatch.setattr(training, "_meta", lambda c, *a: {**original_meta(c, *a), "train_config": {
        k: v for k, v in c.to_dict().items() if not k.startswith("probe_")}})
    pp.train(cfg, progress=False, until=3)
    monkeypatch.setattr(training, "_meta", original_meta)
    pp.train(cfg, progress=False)
    probed = {r["step"]: r for r in records(run)}
    for r in records(plain):  # bit-identical: probes use no randomness and never touch the parameters
        assert "probe" not in r
        assert (r["loss"], r["eval_loss"], r["grad_norm"]) == tuple(probed[r["step"]][k] for k in ("loss", "eval_loss", "grad_norm"))


def _brute_force(lm, prompt, max_new):
    """Every path (ending at EOS or after max_new tokens) with its log-probability from a full forward pass, float64."""
    prompt_ids = lm.tokenizer.encode(prompt)
    others = [t for t in range(lm.vocab_size) if t != lm.eos_id]
    paths, logp = [], []
    for n in range(1, max_new + 1):  # one batched forward pass per path length
        rows = [list(p) + [lm.eos_id] for p in itertools.product(others, repeat=n - 1)]
        if n == max_new:
            rows += [list(p) for p in itertools.product(others, repeat=n)]
        tokens_NL = np.asarray(rows, np.int32)
        inputs = np.concatenate([np.tile(prompt_ids, (len(rows), 1)), tokens_NL[:, :-1]], axis=1)
        logits = np.asarray(lm.module(inputs), np.float64)[:, len(prompt_ids) - 1:]
        top = logits.max(-1, keepdims=True)
        logsm = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        logp.extend(np.take_along_axis(logsm, tokens_NL[..., None], -1)[..., 0].sum(1))
        paths += rows
    return paths, np.asarray(logp)


def test_probe_values_equal_a_fresh_computation_on_the_checkpoint(run):
    language = pp.get_language("arith")
    truth = pp.open_model("truth:arith")
    live = {r["step"]: r["probe"]["prompts"] for r in records(run) if "probe" in r}
    setup = records(run)[0]["probe_setup"]
    for step in (3, 6, 7):
        lm = pp.open_model(run, step=step)
        for i, prompt in enumerate(PROMPTS):
            got = live[step][i]
            # The engine, called afresh on the restored checkpoint (float32 per token, float64 sums: 1e-6).
            table = pp.enumerate_paths(lm, prompt, 3)
            lower, upper = entropy_from_table(table)
            assert lower == upper  # nothing pruned: exact
            assert got["entropy"] == pytest.approx(lower, abs=1e-6)
            assert got["entropy_lower"] == got["entropy_upper"]
            regex = language.path_set("correct", prompt)
            assert got["mass"]["correct"] == pytest.approx(list(set_mass_from_table(table, pp.Regex(regex))), abs=1e-6)
            truth_table = pp.enumerate_paths(truth, prompt, 3)
            rows = [r[:n].tolist() for r, n in zip(truth_table.tokens, truth_table.lengths)]
            logp_model = pp.score(lm, prompt, rows)
            # The probe pads every prompt to the longest probe prompt, ``pp.score`` does not: the masked
            # positions change float32 reduction orders, within the documented per-token allowance.
            assert got["tracked_logp"] == pytest.approx(list(logp_model[:4]), abs=3 * LOGP_ROUNDING)
            assert setup["truth"][i]["tracked_tokens"] == rows[:4]
            kl = float(np.sum(np.exp(truth_table.logp) * (truth_table.logp - logp_model)))
            assert got["kl"] == pytest.approx(kl, abs=3 * LOGP_ROUNDING)
            if step != 7:
                continue  # the engine is checked at every step; brute force once is enough
            # Brute force over all 1 + 11 + 121 + 1331 paths with a full forward pass in float64:
            # float32 logits give per-token errors ~1e-6, so 1e-5 on sums of a few tokens.
            paths, logp = _brute_force(lm, prompt, 3)
            p = np.exp(logp)
            assert p.sum() == pytest.approx(1.0, abs=1e-5)
            assert got["entropy"] == pytest.approx(float(-(p * logp).sum()), abs=1e-5)
            texts = [lm.tokenizer.decode([t for t in path if t != lm.eos_id]) for path in paths]
            in_set = np.asarray([re.fullmatch(regex, t, re.DOTALL) is not None for t in texts])
            assert got["mass"]["correct"][0] == pytest.approx(float(p[in_set].sum()), abs=1e-5)
            by_path = dict(zip(map(tuple, paths), logp))
            ref_kl = sum(math.exp(lt) * (lt - by_path[tuple(r)]) for r, lt in zip(rows, truth_table.logp))
            assert got["kl"] == pytest.approx(ref_kl, abs=1e-5)


def test_from_checkpoints_equals_the_live_records(run):
    live = training_dynamics(run)
    recomputed = training_dynamics(run, from_checkpoints=True)
    assert live.source == "metrics" and recomputed.source == "checkpoints"
    assert recomputed.steps == [3, 6, 7] and live.steps == [0, 3, 6, 7]
    assert without_timing(recomputed.setup) == without_timing(live.setup)
    by_step = {r["step"]: r for r in live.records}
    for rec in recomputed.records:
        for got, want in zip(rec["probe"]["prompts"], by_step[rec["step"]]["probe"]["prompts"]):
            for key in ("entropy", "entropy_lower", "entropy_upper", "kl"):
                assert got[key] == pytest.approx(want[key], abs=1e-6)
            assert got["tracked_logp"] == pytest.approx(want["tracked_logp"], abs=1e-6)
            assert got["mass"]["correct"] == pytest.approx(want["mass"]["correct"], abs=1e-6)


def test_resume_truncates_and_recomputes_probe_records_identically(run, tmp_path):
    resumed = tmp_path / "resumed"
    pp.train(tiny(resumed), progress=False, until=2)  # killed before any checkpoint: starts afresh
    pp.train(tiny(resumed), progress=False, until=4)  # killed after step 4: its checkpoint is step 3
    with open(resumed / "metrics.jsonl", "a") as f:  # work lost after the checkpoint: must go
        f.write(json.dumps({"step": 5, "loss": 0.0, "probe": {"prompts": []}}) + "\n")
    pp.train(tiny(resumed), progress=False)
    assert without_timing(records(resumed)) == without_timing(records(run))


def test_kl_of_the_truth_with_itself_is_zero():
    language = pp.get_language("arith")
    truth = language.truth()
    prober = Prober(ProbeSpec(prompts=PROMPTS, sets=("correct",), max_new=3, min_prob=0.0, track=4), language)
    got = prober(truth)
    for row, want in zip(got["prompts"], prober.setup()["truth"]):
        assert row["kl"] == 0.0
        assert row["entropy"] == pytest.approx(want["entropy"], abs=1e-12)
        assert row["tracked_logp"] == want["tracked_logp"]
        assert row["mass"]["correct"] == want["mass"]["correct"]


def test_kl_with_a_lumped_remainder_is_the_coarse_kl_and_a_lower_bound():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    q = np.array([0.25, 0.25, 0.05, 0.45])
    full = float(np.sum(p * np.log(p / q)))
    assert lumped_kl(np.log(p), np.log(q), rest_p=0.0, rest_q=0.0) == pytest.approx(full, rel=1e-14)
    rest_p, rest_q = p[2:].sum(), q[2:].sum()
    coarse = lumped_kl(np.log(p[:2]), np.log(q[:2]), rest_p=rest_p, rest_q=rest_q)
    assert coarse == pytest.approx(float(np.sum(p[:2] * np.log(p[:2] / q[:2])) + rest_p * math.log(rest_p / rest_q)),
                                   rel=1e-14)
    assert coarse < full


def test_config_round_trip_defaults_and_old_configs():
    cfg = pp.TrainConfig(language="arith", probe_every=50, probe_prompts=["^1+2="], probe_sets=["correct", "1.*"])
    assert isinstance(cfg.probe_prompts, tuple) and isinstance(cfg.probe_sets, tuple)
    stored = json.loads(json.dumps(cfg.to_dict()))
    assert pp.TrainConfig.from_dict(stored) == cfg and config_diff(stored, cfg.to_dict()) == []
    old = {k: v for k, v in pp.TrainConfig().to_dict().items() if not k.startswith("probe_")}
    assert pp.TrainConfig.from_dict(old) == pp.TrainConfig()  # configs stored before probes load
    assert config_diff(old, cfg.to_dict())  # and differences are still named
    with pytest.raises(ConfigError, match="probe_every"):
        pp.TrainConfig(probe_every=-1)
    with pytest.raises(ConfigError, match="probe_min_prob"):
        pp.TrainConfig(probe_min_prob=1.0)
    with pytest.raises(ConfigError, match="probe_prompts"):
        pp.TrainConfig(probe_prompts="^1+2=")
    spec = probe_spec(pp.TrainConfig(language="concepts", probe_every=100), pp.get_language("concepts"))
    assert spec.max_new == 6 and spec.sets == ("seen",) and len(spec.prompts) == 3
    assert [p.count(";") for p in spec.prompts] == [0, 2, 6]


def test_dynamics_figure_is_written(run, tmp_path):
    png = plot_dynamics(training_dynamics(run).to_dict(), tmp_path / "dynamics.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    data = json.loads(png.with_suffix(".json").read_text())
    assert data["steps"] == [0, 3, 6, 7] and len(data["series"]) == 2
    assert len(data["series"][0]["tracked_p"][0]) == 4


def test_cli_dynamics_writes_figure_and_json(run, tmp_path):
    result = CliRunner().invoke(app, ["dynamics", str(run), "--out", str(tmp_path), "--json", str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dynamics.png").stat().st_size > 0
    payload = json.loads((tmp_path / "d.json").read_text())
    assert [r["step"] for r in payload["records"]] == [0, 3, 6, 7]


@pytest.mark.parametrize("case, message", [
    ("missing", "no such run directory"),
    ("no_metrics", "no metrics.jsonl"),
    ("no_probes", "no probe records"),
    ("no_checkpoints", "no checkpoints"),
])
def test_cli_dynamics_errors_are_one_line(tmp_path, case, message):
    run_dir = tmp_path / "run"
    if case != "missing":
        run_dir.mkdir()
    if case in ("no_probes", "no_checkpoints"):
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    args = ["dynamics", str(run_dir)] + (["--from-checkpoints"] if case == "no_checkpoints" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
