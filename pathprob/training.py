"""Training a Transformer on a language: AdamW, warm-up + cosine, clipping, orbax checkpoints.

The whole update is one jitted pure function of (params, opt_state, watch, tokens). Batches are a
pure function of (seed, step), so a resumed run sees exactly the batches an uninterrupted run
would, and its losses are bit-identical.

The loop never waits for the device on a plain step. A step's batch is drawn on the host while
the previous step runs, and a logging step's values (loss, gradient norm, the divergence watch)
are read back only once the next step has been dispatched. Evaluations, probes and saves read
the parameters, so they wait for their step.

A step whose loss or gradients are non-finite leaves the parameters unchanged
(``optax.apply_if_finite``). The *watch*, carried on the device, records the first step at which
``max_nonfinite`` consecutive steps were skipped; the next read-back stops the run with a
``TrainingError`` naming that step, before any NaN reaches the parameters, a checkpoint or
``metrics.jsonl``.

On several devices (``devices=``, default every device; ``pathprob.devices``) training is data
parallel on the engines' mesh: each step's batch is split along its rows over the devices (padded
with empty rows, which the loss mask ignores, to a multiple of their number), parameters and
optimizer state are replicated, and XLA sums the gradients across devices. Losses equal the
one-device run's to float32 rounding (the sums run in another order); one device takes the
one-device program. Under ``pp.distributed`` every process runs the same loop on the same
batches; process 0 alone writes metrics and holds the run's lock, and orbax coordinates the
checkpoint saves. Checkpoints restore onto any number of devices (orbax reshards to the target).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pathprob import distributed
from pathprob.checkpoint import OPT_STATE, PARAMS, Checkpoints
from pathprob.config import TrainConfig, config_diff
from pathprob.data.languages import get_language
from pathprob.devices import Placement
from pathprob.devices import current as current_devices
from pathprob.devices import using as on_devices
from pathprob.errors import CheckpointError, TrainingError
from pathprob.models.base import LanguageModel
from pathprob.models.transformer import Transformer, TransformerLM, init_transformer
from pathprob.paths.score import score_paths
from pathprob.probes import make_prober
from pathprob.rundir import append_metrics, locked, truncate_metrics
from pathprob.train_progress import Meter, Progress

# Fields of a TrainConfig that say where a run lives, not what it is: a moved run resumes.
_LOCATION_FIELDS = ("out",)


def _schedule(cfg: TrainConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=min(cfg.warmup_steps, cfg.steps),
        decay_steps=max(cfg.steps, cfg.warmup_steps + 1), end_value=cfg.learning_rate * 0.1,
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(_schedule(cfg), weight_decay=cfg.weight_decay))
    # apply_if_finite would apply a NaN update after max_consecutive_errors skips: more than the run has
    # steps, so that never happens; the trainer's watch stops the run after max_nonfinite skips instead.
    return optax.apply_if_finite(tx, max_consecutive_errors=cfg.steps + 1)


def _loss(model: Transformer, tokens_BT: jax.Array) -> jax.Array:
    """Mean next-token negative log-likelihood (nats/token) over non-padding targets."""
    inputs, targets = tokens_BT[:, :-1], tokens_BT[:, 1:]
    logprobs = jax.nn.log_softmax(model(jnp.maximum(inputs, 0)))
    nll = -jnp.take_along_axis(logprobs, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    mask = targets >= 0
    return jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _new_watch(step: int) -> dict:
    """The divergence watch at ``step``: int32 scalars ``step``, ``streak`` and ``diverged_at`` (0: never)."""
    return {"step": jnp.int32(step), "streak": jnp.int32(0), "diverged_at": jnp.int32(0)}


def _update_watch(watch: dict, streak: jax.Array, max_nonfinite: int) -> dict:
    """The watch one step later; ``streak`` is the number of consecutive skipped (non-finite) steps."""
    step = watch["step"] + 1
    reached = (watch["diverged_at"] == 0) & (streak >= max_nonfinite)
    return {"step": step, "streak": streak, "diverged_at": jnp.where(reached, step, watch["diverged_at"])}


def _make_steps(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, max_nonfinite: int,
                where: Placement | None = None):
    """The jitted (train_step, eval loss); on a mesh, batch rows sharded and everything else replicated."""

    def loss_of_params(params, tokens_BT):
        return _loss(nnx.merge(graphdef, params), tokens_BT)

    def train_step(params, opt_state, watch, tokens_BT):
        loss, grads = jax.value_and_grad(loss_of_params)(params, tokens_BT)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        watch = _update_watch(watch, opt_state.notfinite_count, max_nonfinite)
        return params, opt_state, watch, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    if where is None:
        return jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(loss_of_params)
    same, rows = where.replicated, where.rows
    return (jax.jit(train_step, donate_argnums=(0, 1), in_shardings=(same, same, same, rows), out_shardings=same),
            jax.jit(loss_of_params, in_shardings=(same, rows), out_shardings=same))


def _batch_on(where: Placement | None, tokens_BT: np.ndarray):
    """A batch as the step takes it: as it is on one device; on a mesh padded with -1 rows (no targets) to a
    multiple of the devices and split along its rows."""
    if where is None:
        return tokens_BT
    pad = -tokens_BT.shape[0] % where.size
    if pad:
        tokens_BT = np.concatenate([tokens_BT, np.full((pad, tokens_BT.shape[1]), -1, tokens_BT.dtype)])
    return where.shard_rows(np.asarray(tokens_BT))


def _batch_keys(cfg: TrainConfig, start: int, stop: int) -> np.ndarray:
    """uint32[stop - start, 2]: the key data of steps start..stop-1, computed up front in one call.

    Drawing a batch from them needs no device op, which would queue behind the running step.
    """
    fold = jax.vmap(lambda step: jax.random.key_data(jax.random.fold_in(jax.random.key(cfg.seed), step)))
    return np.asarray(fold(jnp.arange(start, stop, dtype=jnp.uint32)))


def _batch(cfg: TrainConfig, language, step: int) -> np.ndarray:
    return language.sample(_batch_keys(cfg, step, step + 1)[0], cfg.batch_size)


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
    eval_loss: float | None  # None only when no step ran and there was nothing to evaluate
    truth_eval_loss: float | None


def _meta(cfg: TrainConfig, model_cfg, language, step: int) -> dict:
    return {
        "train_config": cfg.to_dict(), "model_config": model_cfg.to_dict(),
        "tokenizer": language.tokenizer.to_json(), "language": cfg.language, "seed": cfg.seed,
        "step": step, "version": importlib.metadata.version("pathprob"),
    }


def train(cfg: TrainConfig, *, progress: bool | None = None, until: int | None = None,
          devices: int | list | None = None) -> TrainResult:
    """Train (or resume) the run in ``cfg.out``; returns the final step and eval losses.

    ``until`` stops early after that step (as if the process were killed right after its
    checkpoint); a later call resumes from the latest checkpoint, wherever the run directory has
    been moved since. One process at a time writes a run: a second is refused at once
    (``pathprob.rundir.RunLockedError``). ``progress``: a bar (True), nothing (False), or by default a bar
    when stderr is a terminal and plain progress lines otherwise. ``devices``: data parallel over these
    (None: every device; see the module docstring); under ``pp.distributed`` only process 0 writes.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    primary = distributed.is_primary()
    with on_devices(devices), (locked(out) if primary else contextlib.nullcontext()):
        return _train(cfg, out, progress if primary else False, until)


def _train(cfg: TrainConfig, out: Path, progress: bool | None, until: int | None) -> TrainResult:
    language = get_language(cfg.language)
    model_cfg = cfg.model_config(vocab_size=language.tokenizer.vocab_size, max_len=language.max_len)
    tx = make_optimizer(cfg)
    graphdef, params = nnx.split(init_transformer(model_cfg, cfg.seed))
    opt_state = tx.init(params)
    where = current_devices()
    place = (lambda tree: tree) if where is None else where.replicate
    params, opt_state = place(params), place(opt_state)
    train_step, eval_loss_fn = _make_steps(graphdef, tx, cfg.max_nonfinite, where)
    eval_docs = _eval_docs(cfg, language)
    eval_batch = _batch_on(where, eval_docs)
    writes = distributed.is_primary()  # the metrics file is process 0's
    append = append_metrics if writes else (lambda *args: None)
    truth = language.truth()
    truth_loss = cross_entropy(truth, eval_docs) if truth is not None else None
    last = cfg.steps if until is None else min(cfg.steps, until)

    with Checkpoints(out / "checkpoints", keep=cfg.keep) as ckpts:
        start = ckpts.latest_step() or 0
        if start:
            params, opt_state = _restore(cfg, ckpts, start, params, opt_state)
        if writes:
            truncate_metrics(out, start if start else -1)  # from scratch: the step-0 probe too
        prober = _Probes(cfg, language, truth, graphdef, model_cfg) if cfg.probe_every else None
        if prober is not None and start == 0:
            # The run-level probe facts and the probe of the initial parameters, as step 0.
            append(out, {"step": 0, "probe_setup": prober.setup(), "probe": prober(params)})

        eval_loss = float(eval_loss_fn(params, eval_batch)) if start else None
        watch, pending = place(_new_watch(start)), None
        keys = _batch_keys(cfg, start, last)
        tokens = language.sample(keys[0], cfg.batch_size) if last > start else None
        meter = Meter()
        with Progress(progress, start, last, cfg.steps) as bar:

            def emit(logged: _Logged, probe: dict | None = None) -> None:
                record = logged.read(cfg, meter, where=ckpts.directory)
                if probe is not None:
                    record["probe"] = probe
                    meter.restart()  # probe time is not training throughput
                append(out, record)
                bar.record(record)

            for step in range(start + 1, last + 1):
                final = step == cfg.steps
                probing = prober is not None and (step % cfg.probe_every == 0 or final)
                logging = step % cfg.log_every == 0 or final or probing
                lr = _schedule(cfg)(step - 1) if logging else None  # dispatched ahead of the step: ready when read
                params, opt_state, watch, stats = train_step(params, opt_state, watch, _batch_on(where, tokens))
                meter.count(tokens)
                if pending is not None:  # that step is done by now, and this one is running
                    emit(pending)
                    pending = None
                if step < last:
                    tokens = language.sample(keys[step - start], cfg.batch_size)  # drawn while the step runs
                saving = step % cfg.save_every == 0 or final
                if saving:  # never right after a skipped step, nor after a divergence (that raises)
                    saving = _read_watch(watch, cfg, ckpts.directory)["streak"] == 0
                if step % cfg.eval_every == 0 or final or saving:
                    eval_loss = float(eval_loss_fn(params, eval_batch))
                if logging:
                    logged = _Logged(step, stats, watch, lr, eval_loss, truth_loss, meter.tokens)
                    if probing or saving:  # the record goes before its checkpoint, so a resume never lacks it
                        emit(logged, prober(params) if probing else None)
                    else:
                        pending = logged
                if saving:
                    meta = _meta(cfg, model_cfg, language, step) | {"eval_loss": eval_loss,
                                                                    "truth_eval_loss": truth_loss}
                    ckpts.save(step, {PARAMS: params, OPT_STATE: opt_state}, meta)
                bar.advance(step)
            if pending is not None:
                emit(pending)
    return TrainResult(out=out, step=last, eval_loss=eval_loss, truth_eval_loss=truth_loss)


def _restore(cfg: TrainConfig, ckpts: Checkpoints, step: int, params, opt_state):
    """The parameters and optimizer state saved at ``step``, after checking that the run is the same."""
    # Fields a stored config lacks (older versions) had their defaults.
    stored = TrainConfig().to_dict() | ckpts.load_meta(step=step)["train_config"]
    diff = config_diff(stored, cfg.to_dict(), ignore=_LOCATION_FIELDS)
    if diff:
        raise CheckpointError(f"cannot resume {cfg.out}: the config differs from the stored one ({'; '.join(diff)})")
    restored = ckpts.load({PARAMS: params, OPT_STATE: opt_state}, step=step)
    return restored[PARAMS], restored[OPT_STATE]


def _read_watch(watch: dict, cfg: TrainConfig, where: Path) -> dict:
    """The watch on the host; a TrainingError if the run has diverged (nothing after that step is kept)."""
    host = {name: int(value) for name, value in jax.device_get(watch).items()}
    if host["diverged_at"]:
        raise TrainingError(
            f"training diverged at step {host['diverged_at']}: the loss or gradients were non-finite for "
            f"{cfg.max_nonfinite} consecutive steps; the last good checkpoint in {where} is kept; "
            "lower the learning rate"
        )
    return host


@dataclasses.dataclass
class _Logged:
    """A logging step's values, possibly still being computed on the device."""

    step: int
    stats: dict
    watch: dict
    lr: jax.Array
    eval_loss: float | None
    truth_eval_loss: float | None
    tokens: int  # training tokens counted by the meter up to this step

    def read(self, cfg: TrainConfig, meter: Meter, *, where: Path) -> dict:
        """The metric record (waits for the step; raises TrainingError if the run diverged by then)."""
        _read_watch(self.watch, cfg, where)
        stats = jax.device_get(self.stats)
        return {"step": self.step, "loss": float(stats["loss"]), "eval_loss": self.eval_loss,
                "truth_eval_loss": self.truth_eval_loss, "lr": float(self.lr), "grad_norm": float(stats["grad_norm"]),
                **meter.take(self.tokens)}


class _Probes:
    """The run's Prober (truth side computed once) applied to the current parameters."""

    def __init__(self, cfg: TrainConfig, language, truth, graphdef, model_cfg):
        self.prober = make_prober(cfg, language, truth=truth)
        self.graphdef, self.model_cfg, self.tokenizer = graphdef, model_cfg, language.tokenizer

    def setup(self) -> dict:
        return self.prober.setup()

    def __call__(self, params) -> dict:
        # Parameters are a pytree argument of the engine's jitted functions: no recompilation per probe.
        return self.prober(TransformerLM(params=params, graphdef=self.graphdef, config=self.model_cfg,
                                         tokenizer=self.tokenizer))
