"""Training a Transformer on a language: AdamW, warm-up + cosine, clipping, orbax checkpoints.

The whole update is one jitted pure function of (params, opt_state, tokens).
Batches are a pure function of (seed, step), so a resumed run sees exactly the
batches an uninterrupted run would, and its losses are bit-identical.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pathprob import __version__
from pathprob.checkpoint import Checkpoints
from pathprob.config import TrainConfig, config_diff
from pathprob.data.languages import get_language
from pathprob.errors import CheckpointError, TrainingError
from pathprob.models.base import LanguageModel
from pathprob.models.transformer import Transformer, TransformerLM, init_transformer
from pathprob.paths.score import score_paths

_MAX_SKIPPED = 1_000_000  # apply_if_finite would apply a NaN update after this many; we stop long before


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=min(cfg.warmup_steps, cfg.steps),
        decay_steps=max(cfg.steps, cfg.warmup_steps + 1), end_value=cfg.learning_rate * 0.1,
    )
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adamw(schedule, weight_decay=cfg.weight_decay))
    return optax.apply_if_finite(tx, max_consecutive_errors=_MAX_SKIPPED)


def _schedule_value(cfg: TrainConfig, step: int) -> float:
    return float(optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=min(cfg.warmup_steps, cfg.steps),
        decay_steps=max(cfg.steps, cfg.warmup_steps + 1), end_value=cfg.learning_rate * 0.1,
    )(step))


def _loss(model: Transformer, tokens_BT: jax.Array) -> jax.Array:
    """Mean next-token negative log-likelihood (nats/token) over non-padding targets."""
    inputs, targets = tokens_BT[:, :-1], tokens_BT[:, 1:]
    logprobs = jax.nn.log_softmax(model(jnp.maximum(inputs, 0)))
    nll = -jnp.take_along_axis(logprobs, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    mask = targets >= 0
    return jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _make_steps(graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
    def loss_of_params(params, tokens_BT):
        return _loss(nnx.merge(graphdef, params), tokens_BT)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, tokens_BT):
        loss, grads = jax.value_and_grad(loss_of_params)(params, tokens_BT)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return train_step, jax.jit(loss_of_params)


def _batch(cfg: TrainConfig, language, step: int) -> np.ndarray:
    return language.sample(jax.random.fold_in(jax.random.key(cfg.seed), step), cfg.batch_size)


def _eval_docs(cfg: TrainConfig, language) -> np.ndarray:
    # A key no training step uses (steps fold in non-negative ints below 2**31 - 1).
    return language.sample(jax.random.fold_in(jax.random.key(cfg.seed), 2**31 - 1), cfg.eval_docs)


def cross_entropy(lm: LanguageModel, docs_NT: np.ndarray) -> float:
    """Mean nats/token of ``lm`` on documents (first token = the prompt), summed in float64.

    All documents of a language start with the same token (BOS): one prompt, and the rest
    of every document is a path scored by the trie walk (``score_paths``).
    """
    paths = docs_NT[:, 1:].astype(np.int32)
    logp = score_paths(lm, [docs_NT[0, :1]], np.zeros(paths.shape[0], np.int64), paths)
    return float(-logp.sum() / (paths >= 0).sum())


@dataclasses.dataclass
class TrainResult:
    out: Path
    step: int
    eval_loss: float
    truth_eval_loss: float | None


def _meta(cfg: TrainConfig, model_cfg, language, step: int) -> dict:
    return {
        "train_config": cfg.to_dict(), "model_config": model_cfg.to_dict(),
        "tokenizer": language.tokenizer.to_json(), "language": cfg.language, "seed": cfg.seed,
        "step": step, "version": __version__,
    }


def train(cfg: TrainConfig, *, progress: bool | None = None, until: int | None = None) -> TrainResult:
    """Train (or resume) the run in ``cfg.out``; returns the final step and eval losses.

    ``until`` stops early after that step (as if the process were killed right
    after its checkpoint); a later call resumes from the latest checkpoint.
    """
    language = get_language(cfg.language)
    model_cfg = cfg.model_config(vocab_size=language.tokenizer.vocab_size, max_len=language.max_len)
    out = Path(cfg.out)
    tx = make_optimizer(cfg)
    model = init_transformer(model_cfg, cfg.seed)
    graphdef, params = nnx.split(model)
    opt_state = tx.init(params)
    train_step, eval_loss_fn = _make_steps(graphdef, tx)

    eval_docs = _eval_docs(cfg, language)
    truth = language.truth()
    truth_loss = cross_entropy(truth, eval_docs) if truth is not None else None

    out.mkdir(parents=True, exist_ok=True)
    with Checkpoints(out / "checkpoints", keep=cfg.keep) as ckpts:
        start = ckpts.latest_step() or 0
        if start:
            # Fields a stored config lacks (older versions) had their defaults.
            stored = TrainConfig().to_dict() | ckpts.load_meta(step=start)["train_config"]
            diff = config_diff(stored, cfg.to_dict())
            if diff:
                raise CheckpointError(f"cannot resume {out}: the config differs from the stored one ({'; '.join(diff)})")
            restored = ckpts.load({"params": params, "opt_state": opt_state}, step=start)
            params, opt_state = restored["params"], restored["opt_state"]
        metrics_path = out / "metrics.jsonl"
        _truncate_metrics(metrics_path, start if start else -1)  # from scratch: the step-0 probe too
        prober = _Probes(cfg, language, truth, graphdef, model_cfg) if cfg.probe_every else None
        if prober is not None and start == 0:
            # The run-level probe facts and the probe of the initial parameters, as step 0.
            _append(metrics_path, {"step": 0, "probe_setup": prober.setup(), "probe": prober(params)})

        eval_loss = float(eval_loss_fn(params, eval_docs)) if start else float("nan")
        show = progress if progress is not None else os.isatty(2)
        last = min(cfg.steps, until) if until is not None else cfg.steps
        t0, tokens_seen, wall0 = time.perf_counter(), 0, time.perf_counter()
        with _progress(show, start, cfg.steps) as advance:
            for step in range(start + 1, last + 1):
                tokens = _batch(cfg, language, step - 1)
                params, opt_state, stats = train_step(params, opt_state, tokens)
                tokens_seen += int((tokens[:, 1:] >= 0).sum())
                skipped = int(opt_state.notfinite_count)
                if skipped >= cfg.max_nonfinite:
                    raise TrainingError(
                        f"loss or gradients were non-finite for {skipped} consecutive steps (at step {step}); "
                        f"the last good checkpoint in {out / 'checkpoints'} is kept; lower the learning rate"
                    )
                saving = (step % cfg.save_every == 0 or step == cfg.steps) and skipped == 0
                if step % cfg.eval_every == 0 or step == cfg.steps or saving:
                    eval_loss = float(eval_loss_fn(params, eval_docs))
                probing = prober is not None and (step % cfg.probe_every == 0 or step == cfg.steps)
                if step % cfg.log_every == 0 or step == cfg.steps or probing:
                    loss = float(stats["loss"])
                    now = time.perf_counter()
                    record = {
                        "step": step, "loss": loss, "eval_loss": eval_loss, "truth_eval_loss": truth_loss,
                        "lr": _schedule_value(cfg, step - 1), "grad_norm": float(stats["grad_norm"]),
                        "tokens_per_s": tokens_seen / max(now - t0, 1e-9), "wall_s": now - wall0,
                    }
                    if probing:
                        record["probe"] = prober(params)
                    _append(metrics_path, record)
                    t0, tokens_seen = time.perf_counter(), 0  # probe time is not training throughput
                if saving:
                    meta = _meta(cfg, model_cfg, language, step) | {"eval_loss": eval_loss, "truth_eval_loss": truth_loss}
                    ckpts.save(step, {"params": params, "opt_state": opt_state}, meta)
                advance(step, eval_loss)
    return TrainResult(out=out, step=last, eval_loss=eval_loss, truth_eval_loss=truth_loss)


class _Probes:
    """The run's Prober (truth side computed once) applied to the current parameters."""

    def __init__(self, cfg: TrainConfig, language, truth, graphdef, model_cfg):
        from pathprob.analysis.probes import make_prober  # analysis sits above training

        self.prober = make_prober(cfg, language, truth=truth)
        self.graphdef, self.model_cfg, self.tokenizer = graphdef, model_cfg, language.tokenizer

    def setup(self) -> dict:
        return self.prober.setup()

    def __call__(self, params) -> dict:
        # Parameters are a pytree argument of the engine's jitted functions: no recompilation per probe.
        return self.prober(TransformerLM(params=params, graphdef=self.graphdef, config=self.model_cfg,
                                         tokenizer=self.tokenizer))


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (they belong to work lost since the checkpoint).

    Probe records are metric lines with a ``probe`` field (step 0: also ``probe_setup``), so they
    are truncated with the rest and recomputed identically on resume.
    """
    if not path.exists():
        return
    lines = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(l + "\n" for l in lines))
    tmp.replace(path)


class _progress:
    """A rich progress bar on a terminal; nothing otherwise."""

    def __init__(self, show: bool, start: int, total: int):
        self.show, self.start, self.total = show, start, total

    def __enter__(self):
        if not self.show:
            return lambda step, eval_loss: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"))
        self.bar.__enter__()
        task = self.bar.add_task("train", total=self.total, completed=self.start, info="")
        return lambda step, eval_loss: self.bar.update(task, completed=step, info=f"eval {eval_loss:.4f}")

    def __exit__(self, *exc):
        if self.show:
            self.bar.__exit__(*exc)
        return False
