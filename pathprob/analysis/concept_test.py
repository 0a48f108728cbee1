"""The concept-space experiments of Singh (2023), on a model of the ``concepts`` language, with controls.

The theory says aggregates of embedding vectors behave like concepts. The paper
tested it on HellaSwag; here the multiple-choice items come from the concepts
language, whose truth is exact (:mod:`pathprob.analysis.concept_items`: the gold
is the truth's answer, and the distractors are matched so that letter counts and
the truth's context-free preference are at chance).

- **Test 1**, generation from aggregated concepts: each context segment (the
  whole context after BOS, or one segment per example) is replaced by one vector,
  the mean / position-weighted mean / last of its token vectors, taken from the
  input embeddings (``"embed"``) or from the residual stream after layer l of the
  model run on the original context (l = 0 is the embedding with positions). The
  vectors are fed as input embeddings (the model adds positional embeddings at
  the new, contiguous positions), followed by the candidate's tokens; each
  candidate is scored by its log-probability. ``segment="full"`` keeps every
  token: it is the model's own full-context answer, the *base*.
- **Test 2**, concept similarity, no LM head: the dot product (or cosine) between
  the aggregated context vector (BOS and all examples) and the aggregated
  candidate vector (candidate tokens after BOS, run on their own).

Every condition is scored, on the same items, by the model and three controls:
``context-free`` (the model scoring the candidates after BOS alone),
``random init`` (the same condition on the same architecture at initialisation,
``init_transformer(config, random_seed)``), and ``bag of tokens`` (the letter-count
score of the same test, no model). A choice is credited 1 / (number of tied top
candidates) when the gold is among them. Intervals come from one paired bootstrap
over items (multinomial resampling weights) shared by every scorer and condition. The corrected score is
(acc - best control) / (base - best control), the best control being the most
accurate of the three (recomputed in every resample).

Verdict of a condition at k >= 1, with the m conditions of its test at that k
judged together (Bonferroni: paired intervals of model - control at level
1 - (1 - level) / m): ``supports`` when the lower end is above 0 for every
control; ``does not support`` when the upper end is below 0 for the most accurate
control; otherwise ``inconclusive``. A test supports at k when one of its
conditions does, does not support when all do not, and is inconclusive
otherwise. With k = 0 the context is BOS alone: rows are ``no context``, with no
correction and no verdict. Shapes: N items, C candidates, L candidate length,
Q prefix vectors, D width, S scorers, B bootstrap resamples.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.analysis import internals
from pathprob.analysis.concept_items import Task, bag_scores, make_task
from pathprob.data.concepts import Concepts
from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel
from pathprob.models.transformer import TransformerLM, init_transformer

AGGREGATORS = ("mean", "weighted", "last")
SEGMENTS = ("full", "context", "example")
SIMILARITIES = ("dot", "cos")
SCORERS = ("model", "context-free", "random init", "bag of tokens")
NO_CONTEXT = "no context"


def _aggregate(x_NSD: jax.Array, aggregator: str) -> jax.Array:
    """[N, D]: one vector for a segment of S token vectors."""
    S = x_NSD.shape[1]
    if aggregator == "mean":
        return x_NSD.mean(axis=1)
    if aggregator == "weighted":  # weights 1..S: later tokens count more
        w_S = jnp.arange(1, S + 1, dtype=x_NSD.dtype) / (S * (S + 1) / 2)
        return jnp.einsum("s,nsd->nd", w_S, x_NSD)
    if aggregator == "last":
        return x_NSD[:, -1]
    raise PathprobError(f"unknown aggregator {aggregator!r}; choose one of {', '.join(AGGREGATORS)}")


def _token_vectors(lm, ids_NT: np.ndarray, source: str | int) -> jax.Array:
    """float32[N, T, D]: the input embedding rows (``"embed"``) or the residual stream after layer ``source``."""
    if source == "embed":
        return internals.input_embedding(lm)[jnp.asarray(ids_NT)]
    trace = internals.forward(lm, jnp.asarray(ids_NT), capture=True)
    return trace.resid_BNTD[:, int(source)].astype(jnp.float32)


def _segments(task: Task, segment: str) -> list[slice]:
    """Position ranges of the context aggregated into one vector each (BOS stays a token)."""
    T, width = task.context_NT.shape[1], task.example_len + 1
    if segment == "full" or T == 1:
        return []
    if segment == "context":
        return [slice(1, T)]
    if segment == "example":
        return [slice(1 + j * width, 1 + (j + 1) * width) for j in range(task.k)]
    raise PathprobError(f"unknown segment {segment!r}; choose one of {', '.join(SEGMENTS)}")


def prefix_vectors(lm, task: Task, segment: str, source: str | int, aggregator: str) -> jax.Array:
    """float32[N, Q, D]: the context as input vectors, each segment replaced by its aggregate."""
    embed_NTD = internals.input_embedding(lm)[jnp.asarray(task.context_NT)]
    segments = _segments(task, segment)
    if not segments:
        return embed_NTD
    vectors_NTD = _token_vectors(lm, task.context_NT, source)
    parts = [embed_NTD[:, :1]] + [_aggregate(vectors_NTD[:, s], aggregator)[:, None] for s in segments]
    return jnp.concatenate(parts, axis=1)


@jax.jit
def _candidate_logp(lm, prefix_NQD: jax.Array, candidates_NCL: jax.Array) -> jax.Array:
    """float32[N, C]: log P(candidate | prefix vectors), the candidates' tokens fed as their embeddings."""
    N, Q, D = prefix_NQD.shape
    C, L = candidates_NCL.shape[1:]
    cand_NCLD = internals.input_embedding(lm)[candidates_NCL]
    embeds = jnp.concatenate([jnp.broadcast_to(prefix_NQD[:, None], (N, C, Q, D)), cand_NCLD], axis=2)
    logits = internals.forward(lm, embeds_BTD=embeds.reshape(N * C, Q + L, D)).logits_BTV
    logp_BLV = jax.nn.log_softmax(logits[:, Q - 1 : Q - 1 + L])
    picked = jnp.take_along_axis(logp_BLV, candidates_NCL.reshape(N * C, L)[..., None], axis=-1)[..., 0]
    return picked.sum(axis=-1).reshape(N, C)


def generation_logp(lm, task: Task, segment: str, source: str | int = "embed", aggregator: str = "mean",
                    batch: int = 64) -> np.ndarray:
    """float64[N, C]: Test 1 scores of every candidate (batched over items)."""
    prefix = prefix_vectors(lm, task, segment, source, aggregator)
    out = [np.asarray(_candidate_logp(lm, prefix[i : i + batch], jnp.asarray(task.candidates_NCL[i : i + batch])),
                      np.float64) for i in range(0, prefix.shape[0], batch)]
    return np.concatenate(out)


def context_free_logp(lm, task: Task) -> np.ndarray:
    """float64[N, C]: log P(candidate | BOS), the model scoring the options with the context cut to BOS."""
    return generation_logp(lm, dataclasses.replace(task, context_NT=task.context_NT[:, :1]), "full")


def similarity_scores(lm, task: Task, source: str | int, aggregator: str, similarity: str) -> np.ndarray:
    """float64[N, C]: Test 2 scores, similarity of aggregated context and candidate vectors."""
    if similarity not in SIMILARITIES:
        raise PathprobError(f"unknown similarity {similarity!r}; choose one of {', '.join(SIMILARITIES)}")
    N, C, L = task.candidates_NCL.shape
    ctx_ND = np.asarray(_aggregate(_token_vectors(lm, task.context_NT, source), aggregator), np.float64)
    bos = np.full((N * C, 1), task.context_NT[0, 0], np.int32)
    cand_ids = np.concatenate([bos, task.candidates_NCL.reshape(N * C, L)], axis=1)
    cand_MD = _aggregate(_token_vectors(lm, cand_ids, source)[:, 1:], aggregator)
    cand_NCD = np.asarray(cand_MD, np.float64).reshape(N, C, -1)
    if similarity == "cos":
        ctx_ND = ctx_ND / np.linalg.norm(ctx_ND, axis=-1, keepdims=True)
        cand_NCD = cand_NCD / np.linalg.norm(cand_NCD, axis=-1, keepdims=True)
    return np.einsum("nd,ncd->nc", ctx_ND, cand_NCD)


def random_init(lm: TransformerLM, seed: int) -> TransformerLM:
    """The same architecture and tokenizer at initialisation: ``init_transformer(lm.config, seed)``."""
    return TransformerLM.from_module(init_transformer(lm.config, seed), lm.tokenizer)


def credit(scores_NC: np.ndarray, gold_N: np.ndarray) -> np.ndarray:
    """float64[N]: 1 / (number of top-scoring candidates) when the gold is one of them, else 0."""
    top_NC = scores_NC == scores_NC.max(axis=1, keepdims=True)
    return top_NC[np.arange(len(gold_N)), gold_N] / top_NC.sum(axis=1)


@dataclasses.dataclass(frozen=True)
class Condition:
    """Test 1: ``method`` is the segment; Test 2: the similarity. ``aggregator`` "-" for the base."""

    test: int
    method: str
    source: str | int = "embed"
    aggregator: str = "-"

    @property
    def label(self) -> str:
        if self.method == "full":
            return "full context"
        return f"T{self.test} {self.method} {self.source} {self.aggregator}"

    @property
    def family(self) -> str:
        """The conditions judged together: the base alone, or every condition of one test."""
        return "base" if self.method == "full" else f"Test {self.test}"

    def scores(self, lm, task: Task) -> np.ndarray:
        """float64[N, C]: this condition's scores of every candidate under ``lm``."""
        if self.test == 1:
            return generation_logp(lm, task, self.method, self.source, self.aggregator)
        return similarity_scores(lm, task, self.source, self.aggregator, self.method)


def _quantiles(samples_B: np.ndarray, level: float) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples (a base equal to the best control)
        low, high = np.nanquantile(samples_B, [(1 - level) / 2, (1 + level) / 2], axis=-1)
    return float(low), float(high)


def verdict(difference_ci: Sequence[tuple[float, float]], control_accuracy_S: np.ndarray) -> str:
    """``supports`` / ``does not support`` / ``inconclusive`` from the intervals of model - control, one
    per control (the most accurate control decides "does not support"); see the module docstring."""
    if all(low > 0 for low, _ in difference_ci):
        return "supports"
    if difference_ci[int(np.argmax(control_accuracy_S))][1] < 0:
        return "does not support"
    return "inconclusive"


def family_verdict(verdicts: Sequence[str]) -> str:
    """A test at one k: supports when one condition does, does not support when all do not."""
    if not verdicts or NO_CONTEXT in verdicts:
        return NO_CONTEXT
    if "supports" in verdicts:
        return "supports"
    return "does not support" if all(v == "does not support" for v in verdicts) else "inconclusive"


@dataclasses.dataclass(frozen=True)
class Row:
    """One condition at one k. Per scorer (``SCORERS`` order): ``accuracy`` and ``accuracy_ci``;
    per control: ``difference`` (model - control) and ``difference_ci`` at ``verdict_level``.
    ``normalized`` is acc / base (the paper's number); ``corrected`` is against the best control (NaN at k = 0)."""

    condition: Condition
    k: int
    accuracy: tuple[float, ...]
    accuracy_ci: tuple[tuple[float, float], ...]
    difference: tuple[float, ...]
    difference_ci: tuple[tuple[float, float], ...]
    verdict_level: float
    best_control: str
    normalized: float
    normalized_ci: tuple[float, float]
    corrected: float
    corrected_ci: tuple[float, float]
    verdict: str

    @property
    def label(self) -> str:
        return self.condition.label

    def to_dict(self) -> dict:
        scorers = [{"scorer": s, "accuracy": a, "interval": ci} for s, a, ci in zip(SCORERS, self.accuracy,
                                                                                    self.accuracy_ci)]
        for entry, d, ci in zip(scorers[1:], self.difference, self.difference_ci):
            entry |= {"model_minus_control": d, "model_minus_control_interval": ci}
        return {"k": self.k, "label": self.label, "family": self.condition.family,
                **dataclasses.asdict(self.condition), "scorers": scorers, "verdict_level": self.verdict_level,
                "best_control": self.best_control, "normalized": self.normalized,
                "normalized_interval": self.normalized_ci, "corrected": self.corrected,
                "corrected_interval": self.corrected_ci, "verdict": self.verdict}


def resample_weights(n_items: int, bootstrap: int, seed: int) -> np.ndarray:
    """float64[B, N]: how often each item is drawn in each bootstrap resample, divided by N (a resample's
    mean of per-item values is one matrix product; every scorer and condition shares the resamples)."""
    counts_BN = np.random.default_rng(seed).multinomial(n_items, np.full(n_items, 1 / n_items), size=bootstrap)
    return counts_BN / n_items


def score_row(condition: Condition, k: int, credit_SN: np.ndarray, base_N: np.ndarray, weights_BN: np.ndarray,
              level: float, verdict_level: float) -> Row:
    """Accuracies, paired differences, normalised and corrected scores and the verdict of one condition.

    ``credit_SN``: per-item credit of the model and the three controls; ``weights_BN``: the shared resamples."""
    acc_S, base = credit_SN.mean(axis=1), base_N.mean()
    acc_SB, base_B = credit_SN @ weights_BN.T, weights_BN @ base_N
    diff_SB = acc_SB[0] - acc_SB[1:]
    best = int(np.argmax(acc_S[1:]))
    with np.errstate(divide="ignore", invalid="ignore"):  # base 0, or base equal to the best control: NaN
        normalized, normalized_B = acc_S[0] / base, acc_SB[0] / base_B
        best_B = acc_SB[1:].max(axis=0)
        corrected, corrected_B = (acc_S[0] - acc_S[1 + best]) / (base - acc_S[1 + best]), \
            (acc_SB[0] - best_B) / (base_B - best_B)
    difference_ci = tuple(_quantiles(d_B, verdict_level) for d_B in diff_SB)
    no_context = k == 0
    return Row(condition=condition, k=k, accuracy=tuple(float(a) for a in acc_S),
               accuracy_ci=tuple(_quantiles(a_B, level) for a_B in acc_SB),
               difference=tuple(float(d) for d in acc_S[0] - acc_S[1:]), difference_ci=difference_ci,
               verdict_level=verdict_level, best_control=SCORERS[1 + best], normalized=float(normalized),
               normalized_ci=_quantiles(normalized_B, level),
               corrected=float("nan") if no_context else float(corrected),
               corrected_ci=(float("nan"),) * 2 if no_context else _quantiles(corrected_B, level),
               verdict=NO_CONTEXT if no_context else verdict(difference_ci, acc_S[1:]))


@dataclasses.dataclass(frozen=True, repr=False)
class ConceptTest:
    """Every condition for every k: ``rows``; ``verdicts[k][family]`` (base, Test 1, Test 2); ``base``
    (full-context accuracy per k); ``drawn`` (items drawn per k to build the matched ones); the settings."""

    rows: tuple[Row, ...]
    verdicts: dict
    base: dict
    drawn: dict
    items: int
    bootstrap: int
    level: float
    seed: int
    random_seed: int

    @property
    def scorers(self) -> tuple[str, ...]:
        """The model and the controls, in the order of every row's accuracies."""
        return SCORERS

    def __repr__(self) -> str:
        return "ConceptTest(" + "; ".join(
            f"k={k}: base {self.base[k]:.3f}, " + ", ".join(f"{f} {v}" for f, v in self.verdicts[k].items())
            for k in self.base) + ")"

    def to_dict(self) -> dict:
        return {"items": self.items, "bootstrap": self.bootstrap, "level": self.level, "seed": self.seed,
                "random_init_seed": self.random_seed, "scorers": list(SCORERS),
                "base": {str(k): v for k, v in self.base.items()},
                "items_drawn": {str(k): v for k, v in self.drawn.items()},
                "verdicts": {str(k): v for k, v in self.verdicts.items()},
                "rows": [r.to_dict() for r in self.rows]}


def _conditions(task: Task, sources: Sequence[str | int], aggregators: Sequence[str]) -> list[Condition]:
    """The base, then Test 1 (segments; none when the context is BOS alone), then Test 2."""
    test1 = [Condition(1, seg, src, agg) for seg in ("context", "example") for src in sources for agg in aggregators]
    test2 = [Condition(2, sim, src, agg) for sim in SIMILARITIES for src in sources for agg in aggregators]
    return [Condition(1, "full"), *(test1 if _segments(task, "context") else []), *test2]


def concept_test(lm: LanguageModel, *, ks: Sequence[int] = (0, 5), n_items: int = 256,
                 sources: Sequence[str | int] | None = None, aggregators: Sequence[str] = AGGREGATORS,
                 bootstrap: int = 10000, level: float = 0.95, seed: int = 0, random_seed: int = 0) -> ConceptTest:
    """Test 1 and Test 2 with their controls for each k in ``ks``, every source (default: ``"embed"`` and
    every layer) and aggregator. ``seed`` draws the items and the resamples; ``random_seed`` initialises
    the random-init control (0 is the shipped checkpoints' own initialisation).

    The model must be a Transformer trained on the ``concepts`` language.
    """
    lm = internals.require_transformer(lm, "concept-test")
    language = Concepts()
    if lm.tokenizer != language.tokenizer:
        raise PathprobError("concept-test needs a model of the concepts language (its tokenizer differs)")
    if n_items < 2 or bootstrap < 1 or not 0 < level < 1:
        raise PathprobError(f"need n_items >= 2, bootstrap >= 1, 0 < level < 1; got {n_items}, {bootstrap}, {level}")
    sources = ("embed", *range(lm.config.n_layers + 1)) if sources is None else tuple(sources)
    unknown = sorted(set(aggregators) - set(AGGREGATORS))
    if unknown or not aggregators:
        raise PathprobError(f"unknown aggregators {unknown}; choose among {', '.join(AGGREGATORS)}")
    for s in sources:
        if s != "embed" and not (isinstance(s, int) and 0 <= s <= lm.config.n_layers):
            raise PathprobError(f"source {s!r} is neither 'embed' nor a layer in 0..{lm.config.n_layers}")
    random_lm = random_init(lm, random_seed)
    weights_BN = resample_weights(n_items, bootstrap, seed)
    rows, verdicts, base, drawn = [], {}, {}, {}
    for k in ks:
        task = make_task(language, k, n_items, seed=seed)
        bag, gold = bag_scores(task, language.n_letters), task.gold_N
        free_N = credit(context_free_logp(lm, task), gold)
        base_N = credit(generation_logp(lm, task, "full"), gold)
        base[k], drawn[k] = float(base_N.mean()), task.drawn
        chosen = _conditions(task, sources, aggregators)
        size = {c.family: sum(d.family == c.family for d in chosen) for c in chosen}
        for c in chosen:
            model_N = base_N if c.method == "full" else credit(c.scores(lm, task), gold)
            credit_SN = np.stack([model_N, free_N, credit(c.scores(random_lm, task), gold), credit(bag[c.test], gold)])
            rows.append(score_row(c, k, credit_SN, base_N, weights_BN, level, 1 - (1 - level) / size[c.family]))
        verdicts[k] = {f: family_verdict([r.verdict for r in rows if r.k == k and r.condition.family == f])
                       for f in ("base", "Test 1", "Test 2")}
    return ConceptTest(rows=tuple(rows), verdicts=verdicts, base=base, drawn=drawn, items=n_items,
                       bootstrap=bootstrap, level=level, seed=seed, random_seed=random_seed)
