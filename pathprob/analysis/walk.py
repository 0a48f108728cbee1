"""Walks through embedding space, the logit lens, and the geometry of context vs token vectors.

After Singh (2023), "Analyzing Transformer Dynamics as Movement through Embedding
Space" (arXiv:2308.10874): the model folds a context into a *context vector* (the
final hidden state after the final norm) whose dot product with a token's
unembedding row is that token's logit, so proximity to token vectors reflects
conditional probability.

- The *encoding walk*: the residual stream at the prompt's last position, after
  the embedding and after each block (N + 1 points for N layers).
- The *decoding walk*: the context vector at each step of a decoding path (a given
  continuation, or greedy), step s being the context that predicts token s.
- The *logit lens* at layer l: final norm + unembedding applied to the residual
  stream after layer l (layer 0 = the embedding); at the last layer it is the
  model's own next-token distribution.

Everything runs through :func:`pathprob.analysis.internals.forward`. Host
reductions are float64. Shapes: S steps, N + 1 layers (embedding included),
V vocabulary, D width, K nearest tokens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from scipy.stats import spearmanr

from pathprob.analysis import internals
from pathprob.errors import BadPromptError, PathprobError
from pathprob.models.base import LanguageModel, encode_prompt
from pathprob.paths.score import encode_continuations


def _log_softmax64(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def _cosine(x_ND: np.ndarray, rows_VD: np.ndarray) -> np.ndarray:
    x = x_ND / np.linalg.norm(x_ND, axis=-1, keepdims=True)
    r = rows_VD / np.linalg.norm(rows_VD, axis=-1, keepdims=True)
    return x @ r.T


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


@dataclasses.dataclass(frozen=True, repr=False)
class Walk:
    """One prompt's encoding walk and one path's decoding walk, with the logit lens at every step.

    ``encoding_ND``: residual stream at the prompt's last position per layer
    (unnormalised) and ``encoding_context_ND`` the same after the final norm.
    ``context_SD``: context vectors along the path. ``lens_logp_SNV``: logit-lens
    log-probabilities per step and layer (``[:, -1]`` is the model's own);
    ``lens_entropy_SN`` (nats); ``lens_kl_SN`` = KL(final || layer l) (nats);
    ``lens_rank_SN``: rank (1 = top) of the path's token at that step under layer
    l's distribution. ``nearest_dot_SK`` / ``nearest_cos_SK``: the K nearest
    tokens by dot product with the unembedding rows (= logit order) and by cosine
    with the input embedding rows, with the scores and the probabilities
    ``p_dot_SK`` / ``p_cos_SK``. ``spearman_dot_S`` / ``spearman_cos_S``: within
    each step, the rank correlation over the vocabulary between log p(v | context)
    and those two similarities. ``attn_norm_N`` / ``mlp_norm_N``: mean L2 norm of
    each layer's attention and MLP writes over all positions of prompt + path.
    ``token_vectors_VD``: the unembedding rows (for plotting; not in ``to_dict``).
    """

    prompt: np.ndarray
    path: np.ndarray
    tokens: tuple[str, ...]
    encoding_ND: np.ndarray
    encoding_context_ND: np.ndarray
    context_SD: np.ndarray
    lens_logp_SNV: np.ndarray
    lens_entropy_SN: np.ndarray
    lens_kl_SN: np.ndarray
    lens_rank_SN: np.ndarray
    nearest_dot_SK: np.ndarray
    dot_SK: np.ndarray
    p_dot_SK: np.ndarray
    nearest_cos_SK: np.ndarray
    cos_SK: np.ndarray
    p_cos_SK: np.ndarray
    spearman_dot_S: np.ndarray
    spearman_cos_S: np.ndarray
    attn_norm_N: np.ndarray
    mlp_norm_N: np.ndarray
    token_vectors_VD: np.ndarray
    greedy: bool

    @property
    def n_steps(self) -> int:
        return int(self.path.shape[0])

    def text(self, ids) -> str:
        return "".join(self.tokens[int(i)] for i in ids)

    def __repr__(self) -> str:
        return (f"Walk(prompt={self.text(self.prompt)!r}, path={self.text(self.path)!r}, layers={self.encoding_ND.shape[0]}, "
                f"final entropy={np.round(self.lens_entropy_SN[:, -1], 3).tolist()} nats)")

    def to_dict(self) -> dict:
        f = lambda a: np.asarray(a).tolist()
        steps = []
        for s in range(self.n_steps):
            steps.append({
                "token": self.tokens[int(self.path[s])],
                "lens_entropy": f(self.lens_entropy_SN[s]), "lens_kl_to_final": f(self.lens_kl_SN[s]),
                "lens_rank": f(self.lens_rank_SN[s]),
                "nearest_dot": [{"token": self.tokens[int(v)], "dot": float(d), "p": float(p)}
                                for v, d, p in zip(self.nearest_dot_SK[s], self.dot_SK[s], self.p_dot_SK[s])],
                "nearest_cos": [{"token": self.tokens[int(v)], "cos": float(c), "p": float(p)}
                                for v, c, p in zip(self.nearest_cos_SK[s], self.cos_SK[s], self.p_cos_SK[s])],
                "spearman_logp_dot": float(self.spearman_dot_S[s]),
                "spearman_logp_cos_input": float(self.spearman_cos_S[s]),
            })
        return {
            "prompt": self.text(self.prompt), "path": self.text(self.path), "greedy": self.greedy,
            "tokens": list(self.tokens), "encoding_walk": f(self.encoding_ND), "context_vectors": f(self.context_SD),
            "encoding_norms": f(np.linalg.norm(self.encoding_ND, axis=-1)),
            "attn_write_norm": f(self.attn_norm_N), "mlp_write_norm": f(self.mlp_norm_N),
            "lens_logp": f(self.lens_logp_SNV), "steps": steps,
        }


def _greedy_path(lm, prompt_P: np.ndarray, room: int) -> np.ndarray:
    """Greedy continuation (stops after EOS) by full forward passes over one fixed-size buffer."""
    P = prompt_P.shape[0]
    buffer = np.zeros((1, P + room), np.int32)
    buffer[0, :P] = prompt_P
    path = []
    for s in range(room):
        logits = internals.forward(lm, jnp.asarray(buffer)).logits_BTV
        token = int(np.argmax(np.asarray(logits[0, P - 1 + s])))
        buffer[0, P + s] = token
        path.append(token)
        if token == lm.eos_id:
            break
    return np.asarray(path, np.int32)


def walk(lm: LanguageModel, prompt: str | Sequence[int], continuation: str | Sequence[int] | None = None, *,
         max_steps: int = 8, top: int = 5) -> Walk:
    """The encoding walk of ``prompt`` and the decoding walk along ``continuation`` (greedy when None).

    Greedy decoding stops at EOS or after ``max_steps`` tokens (and at the model's
    context length). Needs a Transformer (``PathprobError`` otherwise).
    """
    lm = internals.require_transformer(lm, "walk")
    if max_steps < 1 or top < 1:
        raise PathprobError(f"max_steps and top must be positive, got {max_steps} and {top}")
    if continuation is None:
        prompt_P = encode_prompt(lm, prompt, room=1)
        path = _greedy_path(lm, prompt_P, min(max_steps, lm.max_len - prompt_P.shape[0]))
    else:
        row = encode_continuations(lm, [continuation])[0]
        path = row[row >= 0]
        if path.size == 0:
            raise BadPromptError("the continuation is empty; give at least one token (or none for greedy)")
        prompt_P = encode_prompt(lm, prompt, room=path.size)
    P, S = prompt_P.shape[0], path.shape[0]
    seq = np.concatenate([prompt_P, path])[None]
    trace = internals.forward(lm, jnp.asarray(seq), capture=True)
    resid_NTD = trace.resid_BNTD[0]
    steps = P - 1 + np.arange(S)  # position s predicts path[s]
    resid_SND = jnp.swapaxes(resid_NTD[:, steps], 0, 1)
    lens_logp_SNV = _log_softmax64(internals.lens_logits(lm, resid_SND))
    own_logp_SV = _log_softmax64(trace.logits_BTV[0, steps])
    p_SNV = np.exp(lens_logp_SNV)
    with np.errstate(invalid="ignore"):
        entropy_SN = -np.sum(np.where(p_SNV > 0, p_SNV * lens_logp_SNV, 0.0), axis=-1)
        final_SV = p_SNV[:, -1]
        kl_SN = np.sum(np.where(final_SV[:, None] > 0, final_SV[:, None] * (lens_logp_SNV[:, -1:] - lens_logp_SNV), 0.0),
                       axis=-1)
    chosen_SN1 = np.broadcast_to(path[:, None, None], (S, lens_logp_SNV.shape[1], 1))
    chosen_logp = np.take_along_axis(lens_logp_SNV, chosen_SN1, axis=-1)
    rank_SN = 1 + np.sum(lens_logp_SNV > chosen_logp, axis=-1)

    context_SD = np.asarray(internals.final_norm(lm, resid_NTD[-1, steps]), np.float64)
    encoding_ND = np.asarray(resid_NTD[:, P - 1], np.float64)
    unembed_VD = np.asarray(internals.unembedding(lm), np.float64)
    embed_VD = np.asarray(internals.input_embedding(lm), np.float64)
    dot_SV = context_SD @ unembed_VD.T
    cos_SV = _cosine(context_SD, embed_VD)
    K = min(top, lm.vocab_size)
    near_dot = np.argsort(-dot_SV, axis=-1, kind="stable")[:, :K]
    near_cos = np.argsort(-cos_SV, axis=-1, kind="stable")[:, :K]
    take = lambda a, i: np.take_along_axis(a, i, axis=-1)
    norms = lambda w: np.asarray(jnp.linalg.norm(w[0].astype(jnp.float32), axis=-1).mean(axis=-1), np.float64)
    return Walk(
        prompt=prompt_P, path=path, tokens=tuple(lm.tokenizer.tokens),
        encoding_ND=encoding_ND,
        encoding_context_ND=np.asarray(internals.final_norm(lm, resid_NTD[:, P - 1]), np.float64),
        context_SD=context_SD, lens_logp_SNV=lens_logp_SNV, lens_entropy_SN=entropy_SN, lens_kl_SN=kl_SN,
        lens_rank_SN=rank_SN, nearest_dot_SK=near_dot, dot_SK=take(dot_SV, near_dot),
        p_dot_SK=take(p_SNV[:, -1], near_dot), nearest_cos_SK=near_cos, cos_SK=take(cos_SV, near_cos),
        p_cos_SK=take(p_SNV[:, -1], near_cos),
        spearman_dot_S=np.array([_spearman(own_logp_SV[s], dot_SV[s]) for s in range(S)]),
        spearman_cos_S=np.array([_spearman(own_logp_SV[s], cos_SV[s]) for s in range(S)]),
        attn_norm_N=norms(trace.attn_BNTD), mlp_norm_N=norms(trace.mlp_BNTD),
        token_vectors_VD=unembed_VD, greedy=continuation is None,
    )


@dataclasses.dataclass(frozen=True, repr=False)
class Geometry:
    """How well proximity to token vectors tracks log p(v | context), over many contexts.

    ``within_dot`` / ``within_cos``: per context, Spearman's ρ over the vocabulary
    between log p(v | context) and (a) the dot product of the context vector with
    the unembedding row v (the logit, so ρ = 1 up to ties) and (b) the cosine with
    the input embedding row v (differs when embeddings are untied, and by row
    norms when tied); as float64[C] for C contexts. ``across_dot`` /
    ``across_cos``: one ρ over all (context, v) pairs pooled (contexts differ in
    their normaliser, so this is below 1). ``attn_norm_N`` / ``mlp_norm_N``: mean
    L2 norm of each layer's attention (aggregation) and MLP (filtering) write over
    every position; ``attn_share_N`` = attn / (attn + mlp).
    """

    within_dot: np.ndarray
    within_cos: np.ndarray
    across_dot: float
    across_cos: float
    attn_norm_N: np.ndarray
    mlp_norm_N: np.ndarray

    @property
    def attn_share_N(self) -> np.ndarray:
        return self.attn_norm_N / (self.attn_norm_N + self.mlp_norm_N)

    def __repr__(self) -> str:
        return (f"Geometry(contexts={self.within_dot.size}, within ρ dot={np.nanmean(self.within_dot):.4f}, "
                f"cos={np.nanmean(self.within_cos):.4f}, across ρ dot={self.across_dot:.4f}, "
                f"cos={self.across_cos:.4f}, attention share={np.round(self.attn_share_N, 3).tolist()})")

    def to_dict(self) -> dict:
        return {
            "contexts": int(self.within_dot.size),
            "within_spearman_dot_mean": float(np.nanmean(self.within_dot)),
            "within_spearman_dot_min": float(np.nanmin(self.within_dot)),
            "within_spearman_cos_mean": float(np.nanmean(self.within_cos)),
            "within_spearman_cos_min": float(np.nanmin(self.within_cos)),
            "across_spearman_dot": self.across_dot, "across_spearman_cos": self.across_cos,
            "attn_write_norm": self.attn_norm_N.tolist(), "mlp_write_norm": self.mlp_norm_N.tolist(),
            "attn_share": self.attn_share_N.tolist(),
        }


def geometry(lm: LanguageModel, prompts: Sequence[str | Sequence[int]]) -> Geometry:
    """Context-vs-token geometry over every position (context) of every prompt; see :class:`Geometry`."""
    lm = internals.require_transformer(lm, "geometry")
    rows = [encode_prompt(lm, p) for p in prompts]
    if not rows:
        raise PathprobError("geometry needs at least one prompt")
    width = max(r.shape[0] for r in rows)
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        ids[i, : r.shape[0]], mask[i, : r.shape[0]] = r, True  # right padding cannot reach earlier positions
    trace = internals.forward(lm, jnp.asarray(ids), capture=True)
    logp_CV = _log_softmax64(np.asarray(trace.logits_BTV)[mask])
    context_CD = np.asarray(internals.final_norm(lm, trace.resid_BNTD[:, -1]), np.float64)[mask]
    dot_CV = context_CD @ np.asarray(internals.unembedding(lm), np.float64).T
    cos_CV = _cosine(context_CD, np.asarray(internals.input_embedding(lm), np.float64))
    norms = lambda w_BNTD: np.asarray(jnp.linalg.norm(w_BNTD, axis=-1), np.float64).transpose(1, 0, 2)[:, mask].mean(-1)
    return Geometry(
        within_dot=np.array([_spearman(a, b) for a, b in zip(logp_CV, dot_CV)]),
        within_cos=np.array([_spearman(a, b) for a, b in zip(logp_CV, cos_CV)]),
        across_dot=_spearman(logp_CV.ravel(), dot_CV.ravel()),
        across_cos=_spearman(logp_CV.ravel(), cos_CV.ravel()),
        attn_norm_N=norms(trace.attn_BNTD), mlp_norm_N=norms(trace.mlp_BNTD),
    )
