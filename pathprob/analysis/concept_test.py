"""The concept-space experiments of Singh (2023), on a model of the ``concepts`` language.

The theory says aggregates of embedding vectors behave like concepts. The paper
tested it on HellaSwag; here the task is built from the concepts language, whose
truth is exact:

- An *item*: BOS and ``k`` in-context examples of one concept, then four
  candidate next examples (each 5 letters and SEP): one more example of that
  concept and one each of three other concepts, in random order. The gold answer
  is the candidate the exact truth finds most probable.
- **Test 1**, generation from aggregated concepts: each context segment (the
  whole context after BOS, or one segment per example) is replaced by one vector,
  the mean / position-weighted mean / last of its token vectors, taken from the
  input embeddings (``"embed"``) or from the residual stream after layer l of the
  model run on the original context (l = 0 is the embedding with positions). The
  vectors are fed as input embeddings (the model adds positional embeddings at
  the new, contiguous positions), followed by the candidate's tokens; each
  candidate is scored by its log-probability. ``segment="full"`` keeps every
  token: it is the model's own full-context answer (the base).
- **Test 2**, concept similarity, no LM head: the dot product (or cosine) between
  the aggregated context vector (BOS and all examples) and the aggregated
  candidate vector (candidate tokens after BOS, run on their own).

Reported per condition: accuracy against gold, accuracy / base accuracy, and the
chance-corrected (acc - 1/4) / (base - 1/4), each with a paired bootstrap interval
over items. With k = 0 the context is BOS alone: there is nothing to aggregate
(Test 1 equals the base) and Test 2's context vector is the same for every item.
Shapes: N items, C = 4 candidates, L candidate length, Q prefix vectors, D width.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.analysis import internals
from pathprob.data.concepts import Concepts
from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel
from pathprob.paths.score import score

CHANCE = 0.25
AGGREGATORS = ("mean", "weighted", "last")
SEGMENTS = ("full", "context", "example")
SIMILARITIES = ("dot", "cos")


@dataclasses.dataclass(frozen=True)
class Task:
    """``context_NT`` int32 (BOS + k examples with SEPs), ``candidates_NCL`` int32 (letters + SEP),
    ``gold_N`` (the truth's most probable candidate), ``concept_N`` (the candidate from the context's concept)."""

    k: int
    example_len: int
    context_NT: np.ndarray
    candidates_NCL: np.ndarray
    gold_N: np.ndarray
    concept_N: np.ndarray


def make_task(language: Concepts, k: int, n: int, *, seed: int = 0) -> Task:
    """``n`` items with ``k`` in-context examples; deterministic in ``seed``."""
    if not 0 <= k < language.n_examples:
        raise PathprobError(f"k must be in [0, {language.n_examples - 1}] for concepts, got {k}")
    if language.n_concepts < 4:
        raise PathprobError("the concept test needs at least 4 concepts (one right answer, three others)")
    rng = np.random.default_rng([seed, k])
    width = language.example_len + 1
    concept_M, docs = language.sample_concepts(rng, n)
    pool_concepts, pool_docs = language.sample_concepts(rng, 8 * n + 64)
    pools = {c: list(pool_docs[pool_concepts == c, 1 : 1 + width]) for c in range(language.n_concepts)}
    context = docs[:, : 1 + k * width]
    candidates = np.empty((n, 4, width), np.int32)
    concept_N = np.empty(n, np.int64)
    for i in range(n):
        others = rng.choice([c for c in range(language.n_concepts) if c != concept_M[i]], 3, replace=False)
        if any(not pools[c] for c in others):
            raise PathprobError("ran out of sampled distractor examples; use fewer items")
        options = [docs[i, 1 + k * width : 1 + (k + 1) * width], *(pools[c].pop() for c in others)]
        order = rng.permutation(4)
        candidates[i] = np.asarray(options)[order]
        concept_N[i] = int(np.argmin(order))  # where option 0 (the context's concept) went
    truth = language.truth()
    gold = np.array([int(np.argmax(score(truth, list(ctx), list(cands)))) for ctx, cands in zip(context, candidates)])
    return Task(k=k, example_len=language.example_len, context_NT=context.astype(np.int32),
                candidates_NCL=candidates, gold_N=gold, concept_N=concept_N)


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


@dataclasses.dataclass(frozen=True)
class Row:
    """One condition: ``value`` and ``interval`` for accuracy, normalised, chance-corrected."""

    test: int
    k: int
    method: str  # Test 1: the segment; Test 2: the similarity
    source: str
    aggregator: str
    accuracy: float
    accuracy_ci: tuple[float, float]
    normalized: float
    normalized_ci: tuple[float, float]
    chance_corrected: float
    chance_corrected_ci: tuple[float, float]

    @property
    def label(self) -> str:
        if self.method == "full":
            return "full context"
        return f"T{self.test} {self.method} {self.source} {self.aggregator}"


@dataclasses.dataclass(frozen=True, repr=False)
class ConceptTest:
    """All conditions for every k: ``rows``, ``base`` (full-context accuracy per k), ``agree`` (how
    often gold is the context concept's candidate, per k), ``items`` per k, the bootstrap size."""

    rows: tuple[Row, ...]
    base: dict
    agree: dict
    items: int
    bootstrap: int
    level: float

    def __repr__(self) -> str:
        best = {k: max((r for r in self.rows if r.k == k and r.method != "full"), key=lambda r: r.accuracy)
                for k in self.base}
        return "ConceptTest(" + "; ".join(
            f"k={k}: base {self.base[k]:.3f}, best {best[k].label} {best[k].accuracy:.3f}" for k in self.base) + ")"

    def to_dict(self) -> dict:
        return {"items": self.items, "bootstrap": self.bootstrap, "level": self.level, "chance": CHANCE,
                "base": {str(k): v for k, v in self.base.items()},
                "gold_is_context_concept": {str(k): v for k, v in self.agree.items()},
                "rows": [dataclasses.asdict(r) | {"label": r.label} for r in self.rows]}


def _bootstrap(correct_N: np.ndarray, base_N: np.ndarray, index_BN: np.ndarray, level: float) -> list:
    """(value, interval) for accuracy, accuracy / base, and chance-corrected; paired resampling of items."""
    acc, base = correct_N.mean(), base_N.mean()
    acc_B, base_B = correct_N[index_BN].mean(axis=1), base_N[index_BN].mean(axis=1)
    q = [(1 - level) / 2, (1 + level) / 2]
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a base of 0 or 1/4 makes a ratio NaN: reported as such
        stats = [(acc, acc_B), (acc / base, acc_B / base_B), ((acc - CHANCE) / (base - CHANCE),
                                                               (acc_B - CHANCE) / (base_B - CHANCE))]
        return [(float(v), tuple(float(x) for x in np.nanquantile(b, q))) for v, b in stats]


def concept_test(lm: LanguageModel, *, ks: Sequence[int] = (0, 5), n_items: int = 256,
                 sources: Sequence[str | int] | None = None, aggregators: Sequence[str] = AGGREGATORS,
                 bootstrap: int = 1000, level: float = 0.95, seed: int = 0) -> ConceptTest:
    """Test 1 and Test 2 for each k in ``ks``, every source (default: ``"embed"`` and every layer) and aggregator.

    The model must be a Transformer trained on the ``concepts`` language.
    """
    lm = internals.require_transformer(lm, "concept-test")
    language = Concepts()
    if lm.tokenizer != language.tokenizer:
        raise PathprobError("concept-test needs a model of the concepts language (its tokenizer differs)")
    if n_items < 2 or bootstrap < 1 or not 0 < level < 1:
        raise PathprobError(f"need n_items >= 2, bootstrap >= 1, 0 < level < 1; got {n_items}, {bootstrap}, {level}")
    sources = ("embed", *range(lm.config.n_layers + 1)) if sources is None else tuple(sources)
    for s in sources:
        if s != "embed" and not (isinstance(s, int) and 0 <= s <= lm.config.n_layers):
            raise PathprobError(f"source {s!r} is neither 'embed' nor a layer in 0..{lm.config.n_layers}")
    rows, base, agree = [], {}, {}
    rng = np.random.default_rng(seed)
    index_BN = rng.integers(n_items, size=(bootstrap, n_items))
    for k in ks:
        task = make_task(language, k, n_items, seed=seed)
        base_N = np.argmax(generation_logp(lm, task, "full"), axis=1) == task.gold_N
        base[k], agree[k] = float(base_N.mean()), float(np.mean(task.gold_N == task.concept_N))
        conditions = [(1, "full", "embed", "-")]
        if _segments(task, "context"):
            conditions += [(1, seg, src, agg) for seg in ("context", "example") for src in sources for agg in aggregators]
        conditions += [(2, sim, src, agg) for sim in SIMILARITIES for src in sources for agg in aggregators]
        for test, method, source, aggregator in conditions:
            if method == "full":
                correct = base_N
            elif test == 1:
                correct = np.argmax(generation_logp(lm, task, method, source, aggregator), axis=1) == task.gold_N
            else:
                correct = np.argmax(similarity_scores(lm, task, source, aggregator, method), axis=1) == task.gold_N
            (a, a_ci), (r, r_ci), (c, c_ci) = _bootstrap(correct.astype(np.float64), base_N.astype(np.float64),
                                                         index_BN, level)
            rows.append(Row(test, k, method, str(source), aggregator, a, a_ci, r, r_ci, c, c_ci))
    return ConceptTest(rows=tuple(rows), base=base, agree=agree, items=n_items, bootstrap=bootstrap, level=level)
