"""Internals, walks, logit lens and geometry against direct computations on tiny random Transformers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

import pathprob as pp
from pathprob.analysis import internals
from pathprob.analysis.walk import geometry, walk
from pathprob.cli import app
from pathprob.config import ModelConfig
from pathprob.data.tokenizer import CharTokenizer
from pathprob.models.base import start_one
from pathprob.models.transformer import TransformerLM, init_transformer
from pathprob.plots.embedding import lens_figure, walk_figure

TOKENIZER = CharTokenizer(tokens=("^", "a", "b", "c", "d", "$"), eos="$", bos="^")


def random_lm(seed=0, **overrides) -> TransformerLM:
    cfg = ModelConfig(**{"vocab_size": 6, "max_len": 16, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64,
                         **overrides})
    return TransformerLM.from_module(init_transformer(cfg, seed), TOKENIZER)


CONFIGS = [{}, {"positional": "rope", "tie_embeddings": False},
           # GPT-NeoX: partial rotary, parallel residual; Llama: RMSNorm, SwiGLU, grouped-query, no biases
           {"positional": "rope", "rotary_fraction": 0.25, "parallel_residual": True, "mlp": "gelu_exact"},
           {"positional": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_heads": 2, "use_bias": False}]
TOKENS = jax.random.randint(jax.random.key(1), (3, 9), 0, 6)


@pytest.mark.parametrize("overrides", CONFIGS)
def test_forward_is_the_model(overrides):
    lm = random_lm(**overrides)
    reference = jax.jit(lambda lm, t: lm.module(t))(lm, TOKENS)
    trace = internals.forward(lm, TOKENS, capture=True)
    assert np.array_equal(trace.logits_BTV, reference)
    # embedding rows fed as input vectors are the tokens themselves
    from_rows = internals.forward(lm, embeds_BTD=internals.input_embedding(lm)[TOKENS])
    assert np.array_equal(from_rows.logits_BTV, reference)
    assert np.array_equal(internals.forward(lm, TOKENS, attention=("model", "model")).logits_BTV, reference)
    # the residual stream is the running sum of the writes, and its last entry is what the head reads
    assert trace.resid_BNTD.shape == (3, 3, 9, 32) and trace.attn_BNTD.shape == trace.mlp_BNTD.shape == (3, 2, 9, 32)
    for layer in range(2):
        step = (trace.resid_BNTD[:, layer] + trace.attn_BNTD[:, layer]) + trace.mlp_BNTD[:, layer]
        assert np.array_equal(step, trace.resid_BNTD[:, layer + 1])
    assert np.array_equal(internals.lens_logits(lm, trace.resid_BNTD[:, -1]), reference)


def test_overrides_against_references():
    lm = random_lm()
    trace = internals.forward(lm, TOKENS, attention=("cluster", "none"), capture=True)
    assert np.all(np.asarray(trace.attn_BNTD[:, 1]) == 0)
    x = np.asarray(trace.resid_BNTD[:, 0], np.float64)  # layer 0's input
    scores = np.einsum("btd,bsd->bts", x, x) + np.where(np.tril(np.ones((9, 9))) > 0, 0.0, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(trace.attn_BNTD[:, 0], weights @ x, rtol=1e-5, atol=1e-5)
    with pytest.raises(pp.PathprobError, match="unknown attention mode"):
        internals.attention_plan(2, "mean")
    with pytest.raises(pp.PathprobError, match="layers \\[5\\]"):
        internals.attention_plan(2, "none", [5])


@pytest.mark.parametrize("overrides", [CONFIGS[0], CONFIGS[3]])  # heads of their own, and grouped-query
def test_uniform_attention_is_the_model_with_zero_queries(overrides):
    """With zero queries every causal score is 0: the model's softmax is uniform, so "uniform" equals it."""
    lm = random_lm(**overrides)
    params = jax.tree.map(lambda a: a, lm.params)
    for block in range(2):
        kernel = params["blocks"][block]["qkv"]["kernel"]
        kernel[...] = kernel[...].at[:, :32].set(0.0)  # the query columns (n_heads x head_dim = 32)
        if "bias" in params["blocks"][block]["qkv"]:
            bias = params["blocks"][block]["qkv"]["bias"]
            bias[...] = bias[...].at[:32].set(0.0)
    flat = lm.replace(params=params)
    np.testing.assert_allclose(internals.forward(flat, TOKENS, attention=("uniform", "uniform")).logits_BTV,
                               internals.forward(flat, TOKENS).logits_BTV, rtol=0, atol=2e-5)


def _kv_logprobs(lm, prompt, path):
    """Next-token log-probs after prompt + path[:s] for every s, through the KV-cache protocol."""
    state = start_one(lm, jnp.asarray(prompt), len(path))
    rows = []
    for token in path:
        rows.append(np.asarray(lm.next_logprobs(state)[0], np.float64))
        state = lm.advance(state, jnp.asarray([token], jnp.int32))
    return np.stack(rows)


@pytest.mark.parametrize("overrides", CONFIGS)
def test_walk_shapes_and_lens(overrides):
    lm = random_lm(**overrides)
    w = walk(lm, "^abca", "bd$", top=3)
    S, N, V, D = 3, 3, 6, 32
    assert w.path.tolist() == [2, 4, 5] and w.n_steps == S
    assert w.encoding_ND.shape == w.encoding_context_ND.shape == (N, D) and w.context_SD.shape == (S, D)
    assert w.lens_logp_SNV.shape == (S, N, V)
    assert w.lens_entropy_SN.shape == w.lens_kl_SN.shape == w.lens_rank_SN.shape == (S, N)
    assert w.nearest_dot_SK.shape == w.nearest_cos_SK.shape == w.p_dot_SK.shape == (S, 3)
    assert w.attn_norm_N.shape == w.mlp_norm_N.shape == (2,)
    # the lens at the last layer is the model's own next-token distribution (KV-cache decoding: float32 rounding)
    np.testing.assert_allclose(w.lens_logp_SNV[:, -1], _kv_logprobs(lm, w.prompt, w.path), rtol=0, atol=1e-5)
    assert np.all(w.lens_kl_SN[:, -1] == 0)
    p = np.exp(w.lens_logp_SNV)
    np.testing.assert_allclose(w.lens_entropy_SN, -(p * w.lens_logp_SNV).sum(-1), rtol=1e-12)
    # the encoding walk's first point is the last prompt token's input vector
    trace = internals.forward(lm, jnp.asarray(np.concatenate([w.prompt, w.path])[None]), capture=True)
    np.testing.assert_array_equal(w.encoding_ND, np.asarray(trace.resid_BNTD[0, :, len(w.prompt) - 1], np.float64))
    np.testing.assert_array_equal(w.encoding_ND[0], internals.input_embedding(lm)[1] + lm.module.pos_embed.embedding[4]
                                  if lm.config.positional == "learned" else internals.input_embedding(lm)[1])
    # within a context, log p and the dot product with the unembedding rows (the logit) rank alike
    np.testing.assert_allclose(w.spearman_dot_S, 1.0, rtol=0, atol=1e-12)
    assert np.array_equal(w.nearest_dot_SK[:, 0], np.argmax(w.lens_logp_SNV[:, -1], axis=-1))
    ranks = [1 + int(np.sum(row > row[t])) for row, t in zip(w.lens_logp_SNV[:, 0], w.path)]
    assert w.lens_rank_SN[:, 0].tolist() == ranks
    json.dumps(w.to_dict())


def test_greedy_walk_and_errors():
    lm = random_lm(3)
    w = walk(lm, "^ab", max_steps=4)
    assert w.greedy and 1 <= w.n_steps <= 4
    assert np.all(w.lens_rank_SN[:, -1] == 1)  # greedy picks the final layer's top token at every step
    assert w.n_steps == 4 or w.path[-1] == lm.eos_id
    with pytest.raises(pp.PathprobError, match="needs a Transformer"):
        walk(pp.open_model("truth:concepts"), "^")
    with pytest.raises(pp.BadPromptError):
        walk(lm, "^ab", "")


def test_geometry_within_and_across():
    lm = random_lm(2, tie_embeddings=False)
    prompts = ["^abc", "^dd", "^a"]
    g = geometry(lm, prompts)
    assert g.within_dot.size == 4 + 3 + 2
    np.testing.assert_allclose(g.within_dot, 1.0, rtol=0, atol=1e-12)
    # cosine with the input rows: recompute one context by hand (untied: a different matrix from the head)
    from scipy.stats import spearmanr

    trace = internals.forward(lm, jnp.asarray([[0, 1, 2, 3]]), capture=True)
    ctx = np.asarray(internals.final_norm(lm, trace.resid_BNTD[0, -1, -1]), np.float64)
    embed = np.asarray(internals.input_embedding(lm), np.float64)
    cos = embed @ ctx / np.linalg.norm(embed, axis=1) / np.linalg.norm(ctx)
    logp = np.asarray(jax.nn.log_softmax(trace.logits_BTV[0, -1]), np.float64)
    assert g.within_cos[3] == pytest.approx(spearmanr(logp, cos).statistic, abs=1e-12)
    assert np.all(np.isclose(g.attn_share_N, g.attn_norm_N / (g.attn_norm_N + g.mlp_norm_N)))
    assert -1 <= g.across_dot < 1  # contexts differ in their normaliser


def test_figures(tmp_path):
    lm = random_lm()
    walks = [walk(lm, "^ab", "c$"), walk(lm, "^d", max_steps=3)]
    png = walk_figure(walks, tmp_path / "walks.png")
    data = json.loads(png.with_suffix(".json").read_text())
    assert png.stat().st_size > 0 and len(data["walks"]) == 2 and len(data["token_xy"]) == 6
    assert len(data["walks"][0]["xy"]) == 3 + 2  # three encoding points, two decoding steps
    lens = lens_figure(walks[0], tmp_path / "lens.png", top=4)
    assert np.array(json.loads(lens.with_suffix(".json").read_text())["probability"]).shape == (3, 4)


def test_cli_walk(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["walk", "checkpoints/concepts", "--prompt", "^abcab;", "--continuation", "bkabk;",
                                 "--json", str(tmp_path / "w.json"), "--plot", str(tmp_path / "w.png")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "w.json").read_text())
    assert data["path"] == "bkabk;" and len(data["steps"]) == 6
    assert (tmp_path / "w.png").exists() and (tmp_path / "w_lens.png").exists()
    result = runner.invoke(app, ["walk", "truth:concepts", "--prompt", "^"])
    assert result.exit_code == 2 and "needs a Transformer" in result.output and "Traceback" not in result.output
