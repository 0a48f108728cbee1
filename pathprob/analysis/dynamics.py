"""Training dynamics of the path distribution: probe records of a run, read or recomputed.

``training_dynamics(run_dir)`` reads the probe records the trainer wrote into
``RUN/metrics.jsonl`` (``TrainConfig.probe_every`` > 0); with ``from_checkpoints=True`` it
recomputes them from the checkpoints kept in ``RUN/checkpoints`` instead (for runs trained
without probes), with the run's probe settings or the language's defaults. Either way the
result holds the same records, so figures and tests treat both alike.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from pathprob.probes import Prober, probe_spec
from pathprob.checkpoint import Checkpoints
from pathprob.config import TrainConfig
from pathprob.data.languages import get_language
from pathprob.errors import CheckpointError, PathprobError
from pathprob.files import jsonable
from pathprob.rundir import METRICS, read_metrics


class NoProbesError(PathprobError):
    """A run directory whose metrics hold no probe records."""


@dataclasses.dataclass(frozen=True)
class Dynamics:
    """Probe records of one run over training steps.

    ``setup``: the run-level facts (``spec``: prompts, sets, max_new, min_prob; ``sets``: each
    set's regex per prompt; ``truth``: per prompt the truth's entropy, set masses, tracked paths
    and their log-probabilities, or None). ``records``: ``{"step": s, "probe": {"prompts": [...]}}``
    in increasing step order, each prompt's entry with ``entropy``/``entropy_lower``/
    ``entropy_upper`` (nats), ``mass`` (set name -> [lower, upper] or None), and with a truth
    ``tracked_logp`` and ``kl`` (KL(truth || model) over paths, nats). ``losses``: the run's
    metric records (step, loss, eval_loss), when there are any.
    """

    run: str
    source: str  # "metrics" or "checkpoints"
    setup: dict
    records: list
    losses: list = dataclasses.field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        return [r["step"] for r in self.records]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _losses(metrics: list[dict]) -> list[dict]:
    return [{"step": m["step"], "loss": m["loss"], "eval_loss": m.get("eval_loss")} for m in metrics if "loss" in m]


def training_dynamics(run_dir: str | Path, *, from_checkpoints: bool = False, on_step=None) -> Dynamics:
    """The probe records of the run in ``run_dir`` (see ``Dynamics``).

    ``from_checkpoints``: recompute them from every checkpoint kept in ``RUN/checkpoints``
    (``on_step(step)`` is called before each). Raises a one-line ``PathprobError`` when there
    are no metrics, no probe records, or no checkpoints.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NoProbesError(f"no such run directory: {run_dir}")
    if from_checkpoints:
        return _from_checkpoints(run_dir, on_step)
    metrics = read_metrics(run_dir)
    setups = [m["probe_setup"] for m in metrics if "probe_setup" in m]
    records = [{"step": m["step"], "probe": m["probe"]} for m in metrics if "probe" in m]
    if not records or not setups:
        raise NoProbesError(f"{run_dir / METRICS} has no probe records; train with probe_every > 0 "
                            "or recompute them from the checkpoints (--from-checkpoints)")
    return Dynamics(run=str(run_dir), source="metrics", setup=setups[0], records=records, losses=_losses(metrics))


def _from_checkpoints(run_dir: Path, on_step) -> Dynamics:
    from pathprob.loading import checkpoint_dir, load_checkpoint  # loading sits beside training

    directory = checkpoint_dir(run_dir)
    with Checkpoints(directory) as ckpts:
        steps = ckpts.steps()
        if not steps:
            raise CheckpointError(f"no checkpoints in {directory}")
        meta = ckpts.load_meta(step=steps[-1])
    cfg = TrainConfig.from_dict(meta["train_config"])
    language = get_language(cfg.language)
    prober = Prober(probe_spec(cfg, language), language)
    records = []
    for step in steps:
        if on_step is not None:
            on_step(step)
        lm, _ = load_checkpoint(directory, step=step)
        records.append({"step": step, "probe": prober(lm)})
    losses = _losses(read_metrics(run_dir)) if (run_dir / METRICS).is_file() else []
    # As the trainer writes them into metrics.jsonl (strict JSON: -inf as "-inf"), so both sources compare equal.
    return Dynamics(run=str(run_dir), source="checkpoints", setup=jsonable(prober.setup()), records=jsonable(records),
                    losses=losses)


def summary_rows(dynamics: Dynamics) -> list[dict]:
    """Per prompt, the first and last probed values (for printing)."""
    first, last = dynamics.records[0]["probe"]["prompts"], dynamics.records[-1]["probe"]["prompts"]
    truth = dynamics.setup.get("truth")
    rows = []
    for i, prompt in enumerate(dynamics.setup["spec"]["prompts"]):
        rows.append({
            "prompt": prompt, "entropy_first": first[i]["entropy"], "entropy_last": last[i]["entropy"],
            "entropy_truth": None if truth is None else truth[i]["entropy"],
            "kl_first": first[i].get("kl", math.nan), "kl_last": last[i].get("kl", math.nan),
            "mass_last": {k: v for k, v in last[i]["mass"].items()},
        })
    return rows
