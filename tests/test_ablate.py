"""Attention ablations: the identity changes nothing; KL over paths against brute-force enumeration."""

import itertools
import json
import math

import numpy as np
import pytest

import pathprob as pp
from pathprob.analysis.ablate import ablate, eval_loss, path_logp
from pathprob.paths.divergence import listed_rest, lumped_kl
from pathprob.config import ModelConfig
from pathprob.data.tokenizer import CharTokenizer
from pathprob.models.transformer import TransformerLM, init_transformer
from pathprob.training import cross_entropy

TOKENIZER = CharTokenizer(tokens=("^", "a", "b", "c", "$"), eos="$", bos="^")
DOCS = np.array([[0, 1, 2, 3, 4, -1], [0, 3, 3, 1, 2, 4], [0, 2, 4, -1, -1, -1]], np.int32)


@pytest.fixture(scope="module")
def lm():
    cfg = ModelConfig(vocab_size=5, max_len=12, d_model=16, n_layers=2, n_heads=2, d_ff=32)
    return TransformerLM.from_module(init_transformer(cfg, 4), TOKENIZER)


def test_identity_ablation_changes_nothing(lm):
    result = ablate(lm, "model", docs=DOCS, prompts=["^a", "^bc"], max_new=2, min_prob=0.0)
    assert result.loss_change == 0.0 and np.all(result.kl == 0.0) and np.all(result.kl_exact)
    # the eval loss is the model's cross-entropy computed through the KV-cache protocol
    assert result.loss == pytest.approx(cross_entropy(lm, DOCS), abs=1e-5)
    json.dumps(result.to_dict())


def _brute_force_kl(lm, prompt, max_new, attention):
    paths = [seq for n in range(1, max_new + 1) for seq in itertools.product(range(5), repeat=n)
             if 4 not in seq[:-1] and (n == max_new or seq[-1] == 4)]
    padded = np.full((len(paths), max_new), -1, np.int32)
    for row, seq in zip(padded, paths):
        row[: len(seq)] = seq
    logp = path_logp(lm, np.array(prompt, np.int32), padded)
    logq = path_logp(lm, np.array(prompt, np.int32), padded, attention)
    assert math.fsum(np.exp(logp)) == pytest.approx(1.0, abs=1e-5)
    return math.fsum(np.exp(logp) * (logp - logq))


@pytest.mark.parametrize("mode", ["uniform", "cluster", "none"])
def test_kl_over_paths_against_brute_force(lm, mode):
    exact = ablate(lm, mode, layers=[1], docs=DOCS, prompts=["^ab"], max_new=3, min_prob=0.0)
    reference = _brute_force_kl(lm, [0, 1, 2], 3, (None, mode))
    assert exact.kl_exact[0] and exact.kl[0] == pytest.approx(reference, rel=1e-4, abs=1e-6)
    assert exact.layers == (1,)
    assert exact.loss_ablated == pytest.approx(eval_loss(lm, DOCS, (None, mode)), abs=0)
    pruned = ablate(lm, mode, layers=[1], docs=DOCS, prompts=["^ab"], max_new=3, min_prob=0.02)
    assert not pruned.kl_exact[0] and pruned.kl[0] <= reference + 1e-6  # a lower bound by data processing


def test_lumped_kl():
    logp = np.log([0.5, 0.3])
    logq = np.log([0.25, 0.25])
    rest_p, rest_q = listed_rest(logp), listed_rest(logq)
    value = lumped_kl(logp, logq, rest_p=rest_p, rest_q=rest_q)
    expected = 0.5 * math.log(2) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    assert value == pytest.approx(expected, rel=1e-12) and rest_p == pytest.approx(0.2) and rest_q == 0.5


def test_errors(lm):
    with pytest.raises(pp.PathprobError, match="needs a Transformer"):
        ablate(pp.open_model("truth:concepts"), "none")
    with pytest.raises(pp.PathprobError, match="unknown attention mode"):
        ablate(lm, "mean", docs=DOCS, prompts=["^a"])
    with pytest.raises(pp.PathprobError, match="language"):
        ablate(lm, "none")  # the tokenizer belongs to no built-in language


def test_cli_ablate(tmp_path):
    from typer.testing import CliRunner

    from pathprob.cli import app

    result = CliRunner().invoke(app, ["ablate", "checkpoints/concepts", "--mode", "none", "--layer", "1",
                                      "--docs", "16", "--max-new", "2", "--json", str(tmp_path / "a.json")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["layers"] == [1] and data["eval_loss_ablated"] > data["eval_loss"]
    result = CliRunner().invoke(app, ["ablate", "checkpoints/concepts", "--mode", "bogus"])
    assert result.exit_code == 2 and "unknown attention mode" in result.output
