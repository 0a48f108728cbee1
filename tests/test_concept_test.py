"""The concept-space tests: matched items against a float64 HMM reference and bag-of-letters references,
the controls' plumbing against direct scoring, the verdict logic on constructed credit arrays."""

import json
from collections import Counter

import jax
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import pathprob as pp
from pathprob.analysis import internals
from pathprob.analysis.concept_items import OPTIONS, bag_scores, make_task
from pathprob.analysis.concept_test import (
    NO_CONTEXT,
    SCORERS,
    Condition,
    _aggregate,
    concept_test,
    context_free_logp,
    credit,
    family_verdict,
    generation_logp,
    random_init,
    resample_weights,
    score_row,
    similarity_scores,
    verdict,
)
from pathprob.config import ModelConfig
from pathprob.data.concepts import Concepts
from pathprob.files import dumps
from pathprob.models.transformer import TransformerLM, init_transformer
from pathprob.plots.embedding import concept_figure

LANG = Concepts()
CFG = ModelConfig(vocab_size=LANG.tokenizer.vocab_size, max_len=32, d_model=16, n_layers=2, n_heads=2, d_ff=32)


@pytest.fixture(scope="module")
def lm():
    return TransformerLM.from_module(init_transformer(CFG, 5), LANG.tokenizer)


@pytest.fixture(scope="module")
def task():
    return make_task(LANG, 2, 12, seed=1)


def _example_prob(hmms, c, letters):
    alpha = hmms.init_KH[c] * hmms.emit_KHA[c, :, letters[0]]
    for a in letters[1:]:
        alpha = (alpha @ hmms.trans_KHH[c]) * hmms.emit_KHA[c, :, a]
    return alpha.sum()


def _reference_bag(context, candidate):
    """(unigram log-probability with add-one smoothing, cosine) of letter counts, plain Python floats."""
    A = LANG.n_letters
    ctx = Counter(int(t) for t in context if t < A)
    cand = Counter(int(t) for t in candidate if t < A)
    total = sum(ctx.values())
    unigram = sum(n * np.log((ctx[a] + 1) / (total + A)) for a, n in cand.items())
    dot = sum(ctx[a] * n for a, n in cand.items())
    norms = np.sqrt(sum(v * v for v in ctx.values())) * np.sqrt(sum(v * v for v in cand.values()))
    return unigram, dot / norms if norms else 0.0


def _reference_bags(context_NT, candidates_NCL):
    """float64[N, C, 2]: ``_reference_bag`` of every candidate."""
    return np.array([[_reference_bag(ctx, c) for c in cands] for ctx, cands in zip(context_NT, candidates_NCL)])


def test_task_gold_is_the_bayes_answer(task):
    hmms, L = LANG.hmms, LANG.example_len
    assert task.context_NT.shape == (12, 1 + 2 * 6) and task.candidates_NCL.shape == (12, OPTIONS, 6)
    assert np.all(task.candidates_NCL[:, :, -1] == LANG.tokenizer.sep_id)
    for ctx, cands, gold in zip(task.context_NT, task.candidates_NCL, task.gold_N):
        assert len({tuple(c) for c in cands}) == OPTIONS  # distinct strings
        examples = ctx[1:].reshape(-1, L + 1)[:, :L]
        post = np.array([np.prod([_example_prob(hmms, c, e) for e in examples]) for c in range(8)])
        post /= post.sum()
        p_cand = np.array([sum(post[c] * _example_prob(hmms, c, cand[:L]) for c in range(8)) for cand in cands])
        assert gold == int(np.argmax(p_cand))
        # the distractors are less probable than the gold by the construction's margin (1e-3 nats)
        with np.errstate(divide="ignore"):  # a distractor may be impossible after this context
            assert np.all(np.log(p_cand[gold]) - np.log(np.delete(p_cand, gold)) > 1e-3 - 1e-6)


def test_bag_scores_against_reference(task):
    bag = bag_scores(task, LANG.n_letters)
    ref = _reference_bags(task.context_NT, task.candidates_NCL)
    np.testing.assert_allclose(bag[1], ref[..., 0], rtol=1e-12)
    np.testing.assert_allclose(bag[2], ref[..., 1], rtol=1e-12)


def test_bag_control_is_at_chance_on_matched_items():
    """The gold's rank under both bag scores (plain-Python reference) and under the truth's context-free
    probability (scored here) is the designed rank, and the design balances the ranks, so a chooser by any
    of these scores is right on exactly a quarter of the items: chance is exact, not a tendency, and the
    check has no false-failure probability."""
    n = 48
    task = make_task(LANG, 2, n, seed=3)
    gold, bos = task.gold_N, LANG.tokenizer.bos_id
    ref = _reference_bags(task.context_NT, task.candidates_NCL)
    prior = np.stack([pp.score(LANG.truth(), [bos], list(cands)) for cands in task.candidates_NCL])
    for matched in (ref[..., 0], ref[..., 1], prior):
        above_N = (matched > matched[np.arange(n), gold][:, None]).sum(axis=1)
        np.testing.assert_array_equal(above_N + 1, task.matched_rank_N)
        assert np.array_equal(credit(matched, gold), (task.matched_rank_N == 1).astype(float))
    np.testing.assert_array_equal(np.bincount(task.matched_rank_N), [0, n // 4, n // 4, n // 4, n // 4])
    # Unmatched, the same contexts against the true candidates of other items (other concepts, mostly):
    # letter overlap finds the gold above the 99.9% point of chance (0.46 here; measured 0.58).
    true_NL = task.candidates_NCL[np.arange(n), gold]
    rolled = np.stack([true_NL, *(np.roll(true_NL, s, axis=0) for s in (1, 2, 3))], axis=1)
    naive = _reference_bags(task.context_NT, rolled)[..., 1]
    assert credit(naive, np.zeros(n, int)).mean() > stats.binom.ppf(1 - 1e-3, n, 0.25) / n


def test_full_context_is_the_base(lm, task):
    full = generation_logp(lm, task, "full")
    direct = np.stack([pp.score(lm, list(c), list(cs)) for c, cs in zip(task.context_NT, task.candidates_NCL)])
    np.testing.assert_allclose(full, direct, rtol=0, atol=1e-4)  # full forward vs KV cache: float32 rounding
    assert np.array_equal(full.argmax(1), direct.argmax(1))
    # "last" of the input embeddings over the whole context is the SEP token itself: the prompt ^;
    last = generation_logp(lm, task, "context", "embed", "last")
    short = np.stack([pp.score(lm, [LANG.tokenizer.bos_id, LANG.tokenizer.sep_id], list(cs))
                      for cs in task.candidates_NCL])
    np.testing.assert_allclose(last, short, rtol=0, atol=1e-4)


def test_context_free_control_is_bos_alone(lm, task):
    """Against a brute-force score: the full forward on BOS + candidate, log-softmax and sum in float64."""
    free = context_free_logp(lm, task)
    bos = LANG.tokenizer.bos_id
    seqs = np.concatenate([np.full((*task.candidates_NCL.shape[:2], 1), bos), task.candidates_NCL], axis=2)
    logits = np.asarray(jax.jit(lambda m, t: m.module(t))(lm, seqs.reshape(-1, seqs.shape[-1]).astype(np.int32)),
                        np.float64)
    logp = logits - logsumexp(logits, axis=-1, keepdims=True)
    tokens = seqs.reshape(-1, seqs.shape[-1])[:, 1:]
    brute = np.take_along_axis(logp[:, :-1], tokens[..., None], axis=-1)[..., 0].sum(-1).reshape(free.shape)
    np.testing.assert_allclose(free, brute, rtol=0, atol=1e-4)


def test_random_init_control(lm, task):
    fresh = random_init(lm, 0)
    assert fresh.config == lm.config and fresh.tokenizer == lm.tokenizer
    for a, b in zip(_leaves(fresh), _leaves(TransformerLM.from_module(init_transformer(CFG, 0), LANG.tokenizer))):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(fresh), _leaves(lm)))
    assert not np.allclose(generation_logp(fresh, task, "full"), generation_logp(lm, task, "full"))


def _leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(model.params)]


def test_aggregators_and_similarity(lm, task):
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(_aggregate(x, "weighted"), np.einsum("s,nsd->nd", np.arange(1, 5) / 10, x), rtol=1e-6)
    np.testing.assert_array_equal(_aggregate(x, "last"), x[:, -1])
    embed = np.asarray(internals.input_embedding(lm), np.float64)
    ctx = embed[task.context_NT].mean(1)
    cand = embed[task.candidates_NCL].mean(2)
    np.testing.assert_allclose(similarity_scores(lm, task, "embed", "mean", "dot"),
                               np.einsum("nd,ncd->nc", ctx, cand), rtol=1e-5, atol=1e-6)
    cos = similarity_scores(lm, task, 1, "mean", "cos")
    assert np.all(np.abs(cos) <= 1 + 1e-12)


def test_credit_splits_ties():
    scores = np.array([[1.0, 2.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0], [0.0, 1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(credit(scores, np.array([1, 2, 0])), [0.5, 0.25, 0.0])


def _row(model, controls, k=1, base=None, level=0.95, bootstrap=2000):
    model = np.asarray(model, float)
    credit_SN = np.stack([model, *np.asarray(controls, float)])
    weights = resample_weights(len(model), bootstrap, 0)
    return score_row(Condition(2, "cos"), k, credit_SN, model if base is None else np.asarray(base, float), weights,
                     level, level)


def test_verdict_logic_on_constructed_credits():
    n = 64
    quarter = (np.arange(n) % 4 == 0).astype(float)  # accuracy 0.25
    half = (np.arange(n) % 2 == 0).astype(float)
    ones = np.ones(n)
    # Far above every control: supports.
    assert _row(ones, [quarter, quarter, half]).verdict == "supports"
    # Far below the best control: does not support (also when it beats the other two).
    assert _row(half, [quarter, ones, quarter]).verdict == "does not support"
    # Equal to the best control item by item: every resampled difference is 0, neither side holds.
    assert _row(half, [quarter, half, quarter]).verdict == "inconclusive"
    # Above two controls, within noise of the third (one item apart on 64): inconclusive.
    close = half.copy()
    close[1] = 1.0
    assert _row(close, [quarter, quarter, half]).verdict == "inconclusive"
    # k = 0: labelled, never corrected.
    row = _row(ones, [quarter, quarter, half], k=0)
    assert row.verdict == NO_CONTEXT and np.isnan(row.corrected) and np.isnan(row.corrected_ci[0])
    # The corrected score against the best control, by hand: (0.75 - 0.5) / (1 - 0.5).
    three = (np.arange(n) % 4 != 0).astype(float)
    row = _row(three, [quarter, half, quarter], base=ones)
    assert row.best_control == SCORERS[2] and row.corrected == 0.5 and row.normalized == 0.75
    assert row.accuracy == (0.75, 0.25, 0.5, 0.25) and row.difference == (0.5, 0.25, 0.5)
    assert verdict([(0.01, 0.2)] * 3, np.zeros(3)) == "supports"
    assert verdict([(0.1, 0.2), (-0.2, -0.01)], np.array([0.2, 0.4])) == "does not support"
    assert verdict([(0.1, 0.2), (-0.2, -0.01)], np.array([0.4, 0.2])) == "inconclusive"  # not the best control
    assert verdict([(0.0, 0.2), (0.1, 0.2)], np.array([0.2, 0.4])) == "inconclusive"  # 0 is not above 0
    assert family_verdict(["inconclusive", "supports"]) == "supports"
    assert family_verdict(["does not support"] * 2) == "does not support"
    assert family_verdict(["does not support", "inconclusive"]) == "inconclusive"
    assert family_verdict([]) == NO_CONTEXT


def test_concept_test_report(lm, task, tmp_path):
    result = concept_test(lm, ks=(0, 2), n_items=12, sources=("embed", 2), aggregators=("mean",), bootstrap=50,
                          seed=1)  # the shapes of the task fixture: nothing new to compile at k = 2
    rows = {k: [r for r in result.rows if r.k == k] for k in (0, 2)}
    assert len(rows[0]) == 1 + 2 * 2  # k = 0: nothing to aggregate in Test 1; Test 2: 2 similarities x 2 sources
    assert len(rows[2]) == 1 + 2 * 2 + 2 * 2
    assert all(r.verdict == NO_CONTEXT and np.isnan(r.corrected) for r in rows[0])
    assert all(r.accuracy[3] == 0.25 for r in rows[0])  # no letters in the context: every candidate ties
    assert set(result.verdicts[0].values()) == {NO_CONTEXT}
    full = rows[0][0]
    # with k = 0 the context is BOS alone: the context-free control is the base itself
    assert full.accuracy[0] == result.base[0] == full.accuracy[1]
    bag = bag_scores(task, LANG.n_letters)  # the fixture holds the items of k = 2, seed 1
    base_row = rows[2][0]
    assert base_row.accuracy[0] == credit(generation_logp(lm, task, "full"), task.gold_N).mean()
    assert base_row.accuracy[1] == credit(context_free_logp(lm, task), task.gold_N).mean()
    assert base_row.accuracy[2] == credit(generation_logp(random_init(lm, 0), task, "full"), task.gold_N).mean()
    for r in rows[2]:
        assert r.verdict in ("supports", "does not support", "inconclusive")
        assert r.verdict_level == (0.95 if r.condition.method == "full" else 1 - 0.05 / 4)
        assert r.accuracy[3] == credit(bag[r.condition.test], task.gold_N).mean() == 0.25
        assert r.accuracy_ci[3][0] <= 0.25 <= r.accuracy_ci[3][1]
    payload = json.loads(dumps(result.to_dict()))
    assert payload["random_init_seed"] == 0 and payload["rows"][0]["corrected"] is None
    png = concept_figure(result, tmp_path / "concepts.png")
    assert len(json.loads(png.with_suffix(".json").read_text())["panels"]) == 2
    with pytest.raises(pp.PathprobError, match="needs a Transformer"):
        concept_test(pp.open_model("truth:concepts"))
    with pytest.raises(pp.PathprobError, match="source"):
        concept_test(lm, sources=(7,))
    with pytest.raises(pp.PathprobError, match="aggregators"):
        concept_test(lm, aggregators=("median",))


def test_cli_concept_test_smoke(tmp_path):
    from typer.testing import CliRunner

    from pathprob.cli import app

    result = CliRunner().invoke(app, ["concept-test", "checkpoints/concepts", "--k", "0", "--items", "8",
                                      "--bootstrap", "20", "--source", "embed", "--aggregator", "mean",
                                      "--json", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "c.json").read_text())
    assert payload["items"] == 8
    assert payload["verdicts"]["0"] == dict.fromkeys(("base", "Test 1", "Test 2"), NO_CONTEXT)
    result = CliRunner().invoke(app, ["concept-test", "checkpoints/concepts", "--k", "x"])
    assert result.exit_code == 2 and "--k" in result.output
