"""Multiple-choice items for the concept-space tests, built so that no context-free cue solves them.

An *item* of the ``concepts`` language: BOS and ``k`` in-context examples of one
concept, then C = 4 candidate next examples (5 letters and SEP each): one more
example of that concept (the *true candidate*) and three *distractors*, distinct
strings sampled from the other concepts, in random order. The gold answer is the
candidate the exact truth finds most probable after the context; distractors are
only taken among strings the truth finds less probable than the true candidate
(by ``MARGIN`` nats), so the gold is always the true candidate.

Two model-free *bag-of-tokens* scores compare letter counts only:

- :func:`bag_unigram_logp` (the count analogue of Test 1, generation): the
  candidate's log-probability under the context's add-one-smoothed letter
  frequencies;
- :func:`bag_cosine` (the count analogue of Test 2, similarity): the cosine
  between the letter-count vectors of the context and the candidate.

Sampled naively, a distractor from another concept shares few letters with the
context, and either score finds the gold almost always (the cosine 0.97 at
k = 5); a typical example is also a priori more probable than a distractor, so
scoring without the context finds it too. Here each item gets a target rank r
in 1..4 and takes r - 1 distractors that lie strictly above the true candidate
in all three *matched scores* (the two bag scores and the truth's context-free
log-probability log P(candidate | BOS)) and 4 - r strictly below in all three,
each the nearest to the true candidate in cosine. The ranks are balanced (each
on a quarter of the items, in random order), so the gold's rank under every
matched score is uniform and independent of the context: a chooser that ranks
by one of them (letter counts, or the ideal context-free model) is right on
exactly a quarter of the items (within one item when 4 does not divide n).
Items whose pool has too few such strings are redrawn with the same r
(``Task.drawn`` counts the draws). With k = 0 the context has no letters and the
truth's answer *is* the context-free one: every candidate ties under both bag
scores, nothing is matched (``matched_rank_N`` 0) and the distractors are drawn
at random among the eligible strings.

Shapes: N items, C candidates, L example length (SEP included where noted), T
context length, U distinct strings, A letters (the first A token ids), B matched
scores, D items drawn.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pathprob.data.concepts import Concepts
from pathprob.errors import PathprobError
from pathprob.paths.score import score

OPTIONS = 4
MARGIN = 1e-3  # nats: distractors are this much less probable than the true candidate under the truth
_TIE = 1e-9  # bag scores closer than this count as tied (float rounding of equal count statistics)
_POOL_DOCS = 4096  # documents sampled for the pool of distractor strings (10 examples each)
_MAX_DRAWS = 64  # items drawn per item requested before giving up
_SHORTLIST = 16  # nearest strings per side scored by the truth


@dataclasses.dataclass(frozen=True)
class Task:
    """``context_NT`` int32 (BOS + k examples with SEPs), ``candidates_NCL`` int32 (letters + SEP),
    ``gold_N`` (the truth's most probable candidate: the true candidate), ``matched_rank_N`` (the gold's
    rank under every matched score, 1 = top; 0 at k = 0, where nothing is matched), ``drawn`` (items
    drawn to build these N)."""

    k: int
    example_len: int
    context_NT: np.ndarray
    candidates_NCL: np.ndarray
    gold_N: np.ndarray
    matched_rank_N: np.ndarray
    drawn: int


def letter_counts(ids: np.ndarray, n_letters: int) -> np.ndarray:
    """int64[..., A]: how often each letter occurs along the last axis (other tokens ignored)."""
    ids = np.asarray(ids)
    one_hot = ids[..., None] == np.arange(n_letters)
    return one_hot.sum(axis=-2).astype(np.int64)


def bag_cosine(ctx_counts_NA: np.ndarray, cand_counts_NCA: np.ndarray) -> np.ndarray:
    """float64[N, C]: cosine between letter-count vectors; 0 for a context without letters."""
    ctx = np.asarray(ctx_counts_NA, np.float64)
    cand = np.asarray(cand_counts_NCA, np.float64)
    norm_N = np.linalg.norm(ctx, axis=-1)
    dot_NC = np.einsum("na,nca->nc", ctx, cand)
    denom_NC = np.maximum(norm_N[:, None], 1.0) * np.linalg.norm(cand, axis=-1)
    return dot_NC / denom_NC


def bag_unigram_logp(ctx_counts_NA: np.ndarray, cand_counts_NCA: np.ndarray) -> np.ndarray:
    """float64[N, C]: log-probability of the candidates' letters under the context's letter frequencies
    with add-one smoothing, (count + 1) / (total + A); uniform for a context without letters."""
    ctx = np.asarray(ctx_counts_NA, np.float64)
    log_freq_NA = np.log(ctx + 1.0) - np.log(ctx.sum(axis=-1, keepdims=True) + ctx.shape[-1])
    return np.einsum("na,nca->nc", log_freq_NA, np.asarray(cand_counts_NCA, np.float64))


def bag_scores(task: Task, n_letters: int) -> dict[int, np.ndarray]:
    """float64[N, C] per test: Test 1's count analogue (unigram log-probability), Test 2's (cosine)."""
    ctx_NA = letter_counts(task.context_NT, n_letters)
    cand_NCA = letter_counts(task.candidates_NCL, n_letters)
    return {1: bag_unigram_logp(ctx_NA, cand_NCA), 2: bag_cosine(ctx_NA, cand_NCA)}


def _pool(language: Concepts, rng: np.random.Generator, n_docs: int,
          extra_DL1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct strings int32[U, L + 1] (letters and SEP) of sampled examples and of ``extra_DL1`` (the true
    candidates); bool[U, K]: from which concepts the sample drew each (none for a string only in extra);
    and where each extra string sits, int[D]."""
    concept_P, docs = language.sample_concepts(rng, n_docs)
    width = language.example_len + 1
    examples_ML1 = docs[:, 1 : 1 + language.n_examples * width].reshape(-1, width)
    strings_UL1, inverse = np.unique(np.concatenate([examples_ML1, extra_DL1]), axis=0, return_inverse=True)
    inverse, M = inverse.ravel(), examples_ML1.shape[0]
    from_UK = np.zeros((strings_UL1.shape[0], language.n_concepts), bool)
    from_UK[inverse[:M], np.repeat(concept_P, language.n_examples)] = True
    return strings_UL1, from_UK, inverse[M:]


def _matched_scores(context_T: np.ndarray, counts_UA: np.ndarray, marginal_U: np.ndarray) -> np.ndarray:
    """float64[U, 3]: what the items are matched on, per string: the two bag scores against the context
    (unigram, cosine) and the truth's context-free log-probability."""
    ctx_1A = letter_counts(context_T, counts_UA.shape[1])[None]
    bags = [f(ctx_1A, counts_UA[None])[0] for f in (bag_unigram_logp, bag_cosine)]
    return np.stack([*bags, marginal_U], axis=1)


def _balanced_ranks(rng: np.random.Generator, n: int) -> np.ndarray:
    """int64[n]: target ranks 1..4 in random order, each n // 4 times (the n % 4 left over drawn without
    replacement), so the gold is on top of the matched scores for n / 4 items, not just on average."""
    return rng.permutation(np.resize(rng.permutation(OPTIONS), n)) + 1


def _nearest(mask_U: np.ndarray, gap_U: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``count`` strings in ``mask_U``, smallest ``gap_U`` first (ties in random order)."""
    index = rng.permutation(np.flatnonzero(mask_U))
    return index[np.argsort(gap_U[index], kind="stable")[:count]]


def _sides(matched_UB: np.ndarray, true_B: np.ndarray, eligible_U: np.ndarray,
           rank: int) -> list[tuple[np.ndarray, int]]:
    """(mask, how many to take) per side: ``rank - 1`` strings strictly above the true candidate in every
    matched score and the rest strictly below; one side of all eligible strings when rank is 0."""
    if rank == 0:
        return [(eligible_U, OPTIONS - 1)]
    apart_B = np.array([_TIE, _TIE, MARGIN])
    above = eligible_U & np.all(matched_UB > true_B + apart_B, axis=1)
    below = eligible_U & np.all(matched_UB < true_B - apart_B, axis=1)
    return [(above, rank - 1), (below, OPTIONS - rank)]


def _item(truth, context_T: np.ndarray, true: int, strings_UL1: np.ndarray, matched_UB: np.ndarray,
          eligible_U: np.ndarray, rank: int, rng: np.random.Generator) -> tuple[np.ndarray, int] | None:
    """The candidates int32[C, L + 1] of one item and the truth's answer, or None when the pool falls short.

    Per side, the ``_SHORTLIST`` strings nearest in cosine are scored by the truth after the context and
    the nearest that are less probable than the true candidate by ``MARGIN`` are taken."""
    sides = _sides(matched_UB, matched_UB[true], eligible_U, rank)
    if any(mask.sum() < need for mask, need in sides):
        return None
    gap_U = np.abs(matched_UB[:, 1] - matched_UB[true, 1])
    sides = [(_nearest(mask, gap_U, _SHORTLIST, rng), need) for mask, need in sides]
    listed = np.concatenate([[true], *(index for index, _ in sides)]).astype(np.int64)
    padding = [strings_UL1[true]] * (2 * _SHORTLIST + 1 - len(listed))  # one shape per k: one compilation
    logp = dict(zip(listed.tolist(), score(truth, list(context_T), [*strings_UL1[listed], *padding])))
    chosen = [[i for i in index if logp[i] < logp[true] - MARGIN][:need] for index, need in sides]
    if any(len(c) < need for c, (_, need) in zip(chosen, sides)):
        return None
    options_C = rng.permutation(np.concatenate([[true], *chosen]).astype(np.int64))
    return strings_UL1[options_C], int(np.argmax([logp[i] for i in options_C]))


def make_task(language: Concepts, k: int, n: int, *, seed: int = 0) -> Task:
    """``n`` items with ``k`` in-context examples on which the matched scores are at chance (module
    docstring); deterministic in ``seed``. Raises PathprobError when the pool cannot supply the distractors."""
    if not 0 <= k < language.n_examples:
        raise PathprobError(f"k must be in [0, {language.n_examples - 1}] for concepts, got {k}")
    if language.n_concepts < 2:
        raise PathprobError("the concept test needs at least 2 concepts (the context's and others for distractors)")
    rng = np.random.default_rng([seed, k])
    width, tok = language.example_len + 1, language.tokenizer
    concept_D, docs = language.sample_concepts(rng, _MAX_DRAWS * n)
    strings_UL1, from_UK, true_D = _pool(language, rng, _POOL_DOCS, docs[:, 1 + k * width : 1 + (k + 1) * width])
    counts_UA = letter_counts(strings_UL1, language.n_letters)
    truth = language.truth()
    marginal_U = score(truth, [tok.bos_id], list(strings_UL1))
    rank_N = _balanced_ranks(rng, n) if k > 0 else np.zeros(n, np.int64)
    contexts, candidates, gold = [], [], []
    drawn = 0
    for concept, doc, true in zip(concept_D, docs, true_D):
        if len(contexts) == n:
            break
        drawn += 1
        context_T = doc[: 1 + k * width]
        eligible_U = from_UK[:, np.arange(language.n_concepts) != concept].any(axis=1)
        eligible_U[true] = False
        item = _item(truth, context_T, true, strings_UL1, _matched_scores(context_T, counts_UA, marginal_U),
                     eligible_U, int(rank_N[len(contexts)]), rng)
        if item is not None:
            contexts.append(context_T)
            candidates.append(item[0])
            gold.append(item[1])
    if len(contexts) < n:
        raise PathprobError(f"could build only {len(contexts)} of {n} matched items from {drawn} draws; "
                            "use fewer items or a smaller k")
    return Task(k=k, example_len=language.example_len, context_NT=np.asarray(contexts, np.int32),
                candidates_NCL=np.asarray(candidates, np.int32), gold_N=np.asarray(gold), matched_rank_N=rank_N,
                drawn=drawn)
