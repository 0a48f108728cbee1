"""Attention as association bias: replace attention and measure what the model loses.

Singh (2023) argues attention adds a possibly redundant "association bias" on top
of data-independent filtering. :func:`ablate` replaces the attention write in
every layer (or chosen layers) by one of ``internals.ATTENTION_MODES`` (uniform
causal averaging, parameter-free soft clustering softmax(X Xᵀ) X, nothing, or the
model's own attention as a check) and reports

- the eval loss (mean nats/token over documents of the language) before and after;
- KL(original || ablated) between the path distributions after probe prompts.

KL over paths: the original's paths are enumerated exactly down to ``min_prob``
(``pp.enumerate_paths``); every listed path is scored under both the original and
the ablated model with one full-sequence forward each (the same code, so the
identity ablation gives exactly 0); all unlisted paths are lumped into one
remainder cell. KL of the coarse-grained distributions is a *lower bound* on the
path KL (data-processing inequality), and exact when nothing is left over
(``min_prob=0`` and the enumeration complete).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.analysis import internals
from pathprob.data.languages import get_language, language_with_tokenizer
from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel, encode_prompt
from pathprob.paths.budget import DEFAULT_BUDGET, Budget, estimate_work, listed_paths_bound
from pathprob.paths.divergence import listed_rest, lumped_kl
from pathprob.paths.enumerate import DEFAULT_CHUNK, enumerate_paths
from pathprob.paths.frontier import bucket

BATCH = 256  # sequences per full forward


def language_of(lm: LanguageModel, language: str | None):
    """The language named ``language``, or the built-in one whose tokenizer the model uses."""
    if language is not None:
        return get_language(language)
    found = language_with_tokenizer(lm.tokenizer)
    if found is None:
        raise PathprobError("cannot tell the model's language from its tokenizer; pass language= (e.g. text:PATH)")
    return found


@functools.partial(jax.jit, static_argnames=("attention",))
def _token_logp(lm, ids_BT: jax.Array, attention) -> jax.Array:
    """float32[B, T-1]: log p(ids[t+1] | ids[:t+1]) by one full forward (negative ids are read as 0)."""
    logp_BTV = jax.nn.log_softmax(internals.forward(lm, jnp.maximum(ids_BT, 0), attention=attention).logits_BTV)
    targets = jnp.maximum(ids_BT[:, 1:], 0)
    return jnp.take_along_axis(logp_BTV[:, :-1], targets[..., None], axis=-1)[..., 0]


def _batched_logp(lm, ids_NT: np.ndarray, attention, batch: int = BATCH) -> np.ndarray:
    """float64[N, T-1] per-token log-probabilities, in fixed-size (padded) batches: one compile per width."""
    out = []
    for i in range(0, ids_NT.shape[0], batch):
        chunk = ids_NT[i : i + batch]
        padded = np.zeros((bucket(chunk.shape[0]) if ids_NT.shape[0] < batch else batch, ids_NT.shape[1]), np.int32)
        padded[: chunk.shape[0]] = chunk
        out.append(np.asarray(_token_logp(lm, jnp.asarray(padded), attention), np.float64)[: chunk.shape[0]])
    return np.concatenate(out)


def eval_loss(lm, docs_NT: np.ndarray, attention=None) -> float:
    """Mean nats/token over the non-padding targets (ids >= 0) of ``docs_NT``, summed in float64."""
    logp = _batched_logp(lm, docs_NT, attention)
    mask = docs_NT[:, 1:] >= 0
    return float(-np.where(mask, logp, 0.0).sum() / max(mask.sum(), 1))


def path_logp(lm, prompt_P: np.ndarray, paths_NL: np.ndarray, attention=None) -> np.ndarray:
    """float64[N]: log P(path | prompt) of paths padded with -1, each by one full forward."""
    P, L = prompt_P.shape[0], paths_NL.shape[1]
    ids = np.concatenate([np.broadcast_to(prompt_P, (paths_NL.shape[0], P)), paths_NL], axis=1)
    logp = _batched_logp(lm, ids, attention)[:, P - 1 : P - 1 + L]
    return np.where(paths_NL >= 0, logp, 0.0).sum(axis=1)


def _forward_bytes(cfg, rows: int, T: int) -> int:
    """Bytes of one float32 full forward of ``rows`` sequences of ``T`` tokens: logits and log-softmax
    [rows, T, V], and one layer's activations at a time (residual, q, k, v, attention write [rows, T, D],
    MLP hidden [rows, T, d_ff], attention weights [rows, H, T, T])."""
    return 4 * rows * T * (2 * cfg.vocab_size + 5 * cfg.d_model + cfg.d_ff + cfg.n_heads * T)


def _check_kl_budget(lm, prompts_P: list[np.ndarray], max_new: int, min_prob: float, budget: Budget) -> None:
    """Refuse before any work when the KLs do not fit: per prompt, the enumeration down to ``min_prob``
    plus two full forwards (original, ablated) of every path it can list, one evaluation per position."""
    nodes, nbytes = estimate_work(lm, max_new, min_prob=min_prob, max_paths=None, chunk=DEFAULT_CHUNK)
    T = max(len(p) for p in prompts_P) + max_new
    forwards = 2 * listed_paths_bound(lm, max_new, min_prob=min_prob) * T
    budget.require(f"the ablation's KL over paths of up to {max_new} tokens after {len(prompts_P)} prompts needs up to",
                   len(prompts_P) * (nodes + forwards), nbytes + _forward_bytes(lm.config, BATCH, T),
                   "raise min_prob (e.g. 1e-3) or lower max_new")


@dataclasses.dataclass(frozen=True, repr=False)
class Ablation:
    """The effect of replacing attention by ``mode`` in ``layers``.

    ``loss`` / ``loss_ablated``: eval loss (nats/token) on ``docs`` documents.
    Per probe prompt: ``kl`` (nats; lower bound, exact where ``kl_exact``),
    ``paths`` listed, ``rest_p`` / ``rest_q`` the original's and the ablated
    model's mass outside the listed paths.
    """

    mode: str
    layers: tuple[int, ...]
    loss: float
    loss_ablated: float
    docs: int
    prompts: tuple[str, ...]
    kl: np.ndarray
    kl_exact: np.ndarray
    paths: np.ndarray
    rest_p: np.ndarray
    rest_q: np.ndarray
    max_new: int
    min_prob: float

    @property
    def loss_change(self) -> float:
        return self.loss_ablated - self.loss

    def __repr__(self) -> str:
        return (f"Ablation({self.mode} in layers {list(self.layers)}: eval loss {self.loss:.4f} -> "
                f"{self.loss_ablated:.4f} nats/token; KL over paths {np.round(self.kl, 4).tolist()} nats)")

    def to_dict(self) -> dict:
        return {
            "mode": self.mode, "layers": list(self.layers), "eval_loss": self.loss,
            "eval_loss_ablated": self.loss_ablated, "eval_loss_change": self.loss_change, "docs": self.docs,
            "max_new": self.max_new, "min_prob": self.min_prob,
            "kl_method": "enumerate original paths >= min_prob, full-forward scores, remainder lumped (lower bound)",
            "probes": [{"prompt": p, "kl": float(k), "exact": bool(e), "paths": int(n), "remainder_original": float(a),
                        "remainder_ablated": float(b)}
                       for p, k, e, n, a, b in zip(self.prompts, self.kl, self.kl_exact, self.paths, self.rest_p,
                                                   self.rest_q)],
        }


def ablate(lm: LanguageModel, mode: str, *, layers: Sequence[int] | None = None, language: str | None = None,
           prompts: Sequence[str] | None = None, docs: np.ndarray | None = None, n_docs: int = 256,
           max_new: int = 6, min_prob: float = 1e-4, seed: int = 0, budget: Budget = DEFAULT_BUDGET) -> Ablation:
    """Replace attention by ``mode`` (``uniform``, ``cluster``, ``none``, ``model``) and measure the damage.

    ``layers``: which layers (all when None). ``docs`` (int32[N, T], -1 padded)
    default to ``n_docs`` documents of the language drawn with the training run's
    eval key for ``seed``; ``prompts`` default to the language's
    ``prompts(n_examples=2, n=4)``. See the module docstring for the KL; it is refused
    before any work when it does not fit ``budget``.
    """
    lm = internals.require_transformer(lm, "ablate")
    if mode is None:
        raise PathprobError(f"choose an attention mode: {', '.join(internals.ATTENTION_MODES)}")
    attention = internals.attention_plan(lm.config.n_layers, mode, layers)
    if max_new < 1 or not 0 <= min_prob < 1:
        raise PathprobError(f"need max_new >= 1 and 0 <= min_prob < 1, got {max_new} and {min_prob}")
    if docs is None or prompts is None:
        lang = language_of(lm, language)
        if docs is None:
            docs = lang.sample(jax.random.fold_in(jax.random.key(seed), 2**31 - 1), n_docs)
        if prompts is None:
            prompts = lang.prompts(n_examples=2, n=4)
    docs = np.asarray(docs, np.int32)
    encoded = [encode_prompt(lm, prompt, room=max_new) for prompt in prompts]
    _check_kl_budget(lm, encoded, max_new, min_prob, budget)
    kls, exact, counts, rest_p, rest_q = [], [], [], [], []
    for prompt_P in encoded:
        table = enumerate_paths(lm, prompt_P, max_new, min_prob=min_prob, budget=budget)
        logp = path_logp(lm, prompt_P, table.tokens)
        logq = path_logp(lm, prompt_P, table.tokens, attention)
        complete = table.log_remaining == -math.inf
        rp, rq = 0.0 if complete else listed_rest(logp), listed_rest(logq)
        value = lumped_kl(logp, logq, rest_p=rp, rest_q=rq)
        kls.append(value)
        exact.append(complete)
        counts.append(len(table))
        rest_p.append(rp)
        rest_q.append(rq)
    return Ablation(
        mode=mode, layers=tuple(i for i, a in enumerate(attention) if a is not None),
        loss=eval_loss(lm, docs), loss_ablated=eval_loss(lm, docs, attention), docs=int(docs.shape[0]),
        prompts=tuple(p if isinstance(p, str) else lm.tokenizer.decode(list(p)) for p in prompts),
        kl=np.asarray(kls), kl_exact=np.asarray(exact), paths=np.asarray(counts), rest_p=np.asarray(rest_p),
        rest_q=np.asarray(rest_q), max_new=max_new, min_prob=min_prob,
    )
