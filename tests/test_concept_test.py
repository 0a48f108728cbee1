"""The concept-space tests: task gold against a float64 HMM reference, Test 1/2 plumbing against direct scoring."""

import json

import numpy as np
import pytest

import pathprob as pp
from pathprob.analysis import internals
from pathprob.analysis.concept_test import (
    _aggregate, _bootstrap, concept_test, generation_logp, make_task, similarity_scores,
)
from pathprob.config import ModelConfig
from pathprob.data.concepts import Concepts
from pathprob.models.transformer import TransformerLM, init_transformer
from pathprob.plots.embedding import concept_figure

LANG = Concepts()


@pytest.fixture(scope="module")
def lm():
    cfg = ModelConfig(vocab_size=LANG.tokenizer.vocab_size, max_len=32, d_model=16, n_layers=2, n_heads=2, d_ff=32)
    return TransformerLM.from_module(init_transformer(cfg, 0), LANG.tokenizer)


@pytest.fixture(scope="module")
def task():
    return make_task(LANG, 2, 12, seed=1)


def _example_prob(hmms, c, letters):
    alpha = hmms.init_KH[c] * hmms.emit_KHA[c, :, letters[0]]
    for a in letters[1:]:
        alpha = (alpha @ hmms.trans_KHH[c]) * hmms.emit_KHA[c, :, a]
    return alpha.sum()


def test_task_gold_is_the_bayes_answer(task):
    hmms, L = LANG.hmms, LANG.example_len
    assert task.context_NT.shape == (12, 1 + 2 * 6) and task.candidates_NCL.shape == (12, 4, 6)
    assert np.all(task.candidates_NCL[:, :, -1] == LANG.tokenizer.sep_id)
    for ctx, cands, gold in zip(task.context_NT, task.candidates_NCL, task.gold_N):
        examples = ctx[1:].reshape(-1, L + 1)[:, :L]
        post = np.array([np.prod([_example_prob(hmms, c, e) for e in examples]) for c in range(8)])
        post /= post.sum()
        p_cand = [sum(post[c] * _example_prob(hmms, c, cand[:L]) for c in range(8)) for cand in cands]
        assert gold == int(np.argmax(p_cand))


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


def test_bootstrap_of_the_base_itself():
    correct = np.array([1, 0, 1, 1, 0, 1, 1, 1], float)
    index = np.random.default_rng(0).integers(8, size=(200, 8))
    (a, a_ci), (r, r_ci), (c, c_ci) = _bootstrap(correct, correct, index, 0.95)
    assert a == 0.75 and r == 1.0 and c == 1.0 and r_ci == (1.0, 1.0) and c_ci == (1.0, 1.0)
    assert a_ci[0] < 0.75 < a_ci[1]


def test_concept_test_report(lm, tmp_path):
    result = concept_test(lm, ks=(0, 1), n_items=8, sources=("embed", 2), aggregators=("mean",), bootstrap=50)
    rows = {k: [r for r in result.rows if r.k == k] for k in (0, 1)}
    assert len(rows[0]) == 1 + 2 * 2  # k = 0: nothing to aggregate in Test 1; Test 2: 2 similarities x 2 sources
    assert len(rows[1]) == 1 + 2 * 2 + 2 * 2
    for k in (0, 1):
        full = rows[k][0]
        assert full.method == "full" and full.accuracy == result.base[k]
        assert full.chance_corrected == 1.0 or result.base[k] == 0.25
    json.dumps(result.to_dict())
    png = concept_figure(result, tmp_path / "concepts.png")
    assert len(json.loads(png.with_suffix(".json").read_text())["panels"]) == 2
    with pytest.raises(pp.PathprobError, match="needs a Transformer"):
        concept_test(pp.open_model("truth:concepts"))
    with pytest.raises(pp.PathprobError, match="source"):
        concept_test(lm, sources=(7,))


def test_cli_concept_test(tmp_path):
    from typer.testing import CliRunner

    from pathprob.cli import app

    result = CliRunner().invoke(app, ["concept-test", "checkpoints/concepts", "--k", "1", "--items", "8",
                                      "--bootstrap", "20", "--json", str(tmp_path / "c.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "c.json").read_text())["items"] == 8
    result = CliRunner().invoke(app, ["concept-test", "checkpoints/concepts", "--k", "x"])
    assert result.exit_code == 2 and "--k" in result.output
