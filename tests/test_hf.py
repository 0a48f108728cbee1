"""Pretrained Hugging Face directories: every family equals a float64 NumPy reference written here.

Each family's reference forward pass below reads the Hugging Face tensor names directly (GPT-2's
Conv1D ``[in, out]`` weights and fused ``c_attn``; NeoX's per-head interleaved ``query_key_value``,
partial rotary and parallel residual; Llama's separate q/k/v/o, RMSNorm, SwiGLU, grouped-query
attention and untied head; Qwen2's q/k/v biases), computed the way the Hugging Face modelling code
writes it (``rotate_half``, ``repeat_kv``), independently of pathprob's model code. Random weights
are saved with ``safetensors.numpy.save_file`` under those names, with a minimal ``config.json``,
into a temporary directory; the loaded model must give the reference's log-probabilities to 1e-4,
through the full forward and through the KV-cached ``start``/``advance`` path.
"""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from safetensors.numpy import save_file
from typer.testing import CliRunner

import pathprob as pp
from pathprob.cli import app
from pathprob.config import ConfigError, ModelConfig
from pathprob.data.tokenizer import CharTokenizer
from pathprob.errors import PathprobError, UnknownSpecError
from pathprob.models import hf
from pathprob.models.base import State
from pathprob.models.transformer import TransformerLM

V, EOS, BOS = 80, 79, 0
TOL = 1e-4  # log-probabilities, float32 model vs float64 reference (the tolerance)

# --- the NumPy reference (float64, Hugging Face names and formulas) --------------------------------------


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rms_norm(x, w, eps):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_exact(x):
    return 0.5 * x * (1.0 + scipy.special.erf(x / math.sqrt(2.0)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def log_softmax(x):
    return x - scipy.special.logsumexp(x, axis=-1, keepdims=True)


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def inv_frequencies(dim, theta, llama3=None):
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if llama3 is None:
        return inv_freq
    # transformers' _compute_llama3_parameters
    factor, low_freq_factor, high_freq_factor, old_context_len = llama3
    low_freq_wavelen, high_freq_wavelen = old_context_len / low_freq_factor, old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, inv_freq_llama)


def apply_rope(x_NTHd, dim, theta, llama3=None):
    """HF's apply_rotary_pos_emb on the first ``dim`` dimensions (emb = cat(freqs, freqs)), the rest passed."""
    T = x_NTHd.shape[1]
    freqs = np.arange(T, dtype=np.float64)[:, None] * inv_frequencies(dim, theta, llama3)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)[None, :, None, :]
    rot, rest = x_NTHd[..., :dim], x_NTHd[..., dim:]
    return np.concatenate([rot * np.cos(emb) + rotate_half(rot) * np.sin(emb), rest], axis=-1)


def attention(q_NTHd, k_NTKd, v_NTKd):
    """Causal softmax attention; kv heads repeated to the query heads as HF's repeat_kv does."""
    groups = q_NTHd.shape[2] // k_NTKd.shape[2]
    k, v = np.repeat(k_NTKd, groups, axis=2), np.repeat(v_NTKd, groups, axis=2)
    N, T, H, Dh = q_NTHd.shape
    scores = np.einsum("nthd,nshd->nhts", q_NTHd, k) / math.sqrt(Dh)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("nhts,nshd->nthd", weights, v).reshape(N, T, H * Dh)


def gpt2_reference(t, c, ids):
    """log-probs float64[N, T, V] of GPT2LMHeadModel (tensors ``t`` without the ``transformer.`` prefix)."""
    N, T = ids.shape
    D, H, eps = c["n_embd"], c["n_head"], c["layer_norm_epsilon"]
    act = gelu_exact if c.get("activation_function") == "gelu" else gelu_tanh
    x = t["wte.weight"][ids] + t["wpe.weight"][np.arange(T)][None]
    for i in range(c["n_layer"]):
        p = lambda n: t[f"h.{i}.{n}"]
        h = layer_norm(x, p("ln_1.weight"), p("ln_1.bias"), eps)
        qkv = h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = (a.reshape(N, T, H, D // H) for a in np.split(qkv, 3, axis=-1))
        x = x + attention(q, k, v) @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = layer_norm(x, p("ln_2.weight"), p("ln_2.bias"), eps)
        x = x + act(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias")) @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    x = layer_norm(x, t["ln_f.weight"], t["ln_f.bias"], eps)
    head = t["lm_head.weight"] if not c.get("tie_word_embeddings", True) else t["wte.weight"]
    return log_softmax(x @ head.T)


def neox_reference(t, c, ids):
    N, T = ids.shape
    D, H, eps = c["hidden_size"], c["num_attention_heads"], c["layer_norm_eps"]
    Dh = D // H
    rot = int(Dh * c["rotary_pct"])
    act = gelu_exact if c["hidden_act"] == "gelu" else gelu_tanh
    x = t["gpt_neox.embed_in.weight"][ids]
    for i in range(c["num_hidden_layers"]):
        p = lambda n: t[f"gpt_neox.layers.{i}.{n}"]
        h = layer_norm(x, p("input_layernorm.weight"), p("input_layernorm.bias"), eps)
        qkv = h @ p("attention.query_key_value.weight").T + p("attention.query_key_value.bias")
        qkv = qkv.reshape(N, T, H, 3 * Dh)  # per head: q, k, v
        q, k, v = qkv[..., :Dh], qkv[..., Dh:2 * Dh], qkv[..., 2 * Dh:]
        q, k = apply_rope(q, rot, c["rotary_emb_base"]), apply_rope(k, rot, c["rotary_emb_base"])
        attn = attention(q, k, v) @ p("attention.dense.weight").T + p("attention.dense.bias")
        mlp = lambda y: (act(y @ p("mlp.dense_h_to_4h.weight").T + p("mlp.dense_h_to_4h.bias"))
                         @ p("mlp.dense_4h_to_h.weight").T + p("mlp.dense_4h_to_h.bias"))
        post = lambda y: layer_norm(y, p("post_attention_layernorm.weight"), p("post_attention_layernorm.bias"), eps)
        if c["use_parallel_residual"]:
            x = mlp(post(x)) + attn + x
        else:
            x = x + attn
            x = x + mlp(post(x))
    x = layer_norm(x, t["gpt_neox.final_layer_norm.weight"], t["gpt_neox.final_layer_norm.bias"], eps)
    return log_softmax(x @ t["embed_out.weight"].T)


def llama_reference(t, c, ids):
    """LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM (Qwen2: q/k/v biases when stored)."""
    N, T = ids.shape
    D, H, eps = c["hidden_size"], c["num_attention_heads"], c["rms_norm_eps"]
    K, Dh = c.get("num_key_value_heads", H), D // H
    scaling = c.get("rope_scaling")
    llama3 = None if scaling is None else (scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"],
                                           scaling["original_max_position_embeddings"])
    x = t["model.embed_tokens.weight"][ids]
    for i in range(c["num_hidden_layers"]):
        p = lambda n: t[f"model.layers.{i}.{n}"]
        bias = lambda n: t.get(f"model.layers.{i}.self_attn.{n}_proj.bias", 0.0)
        h = rms_norm(x, p("input_layernorm.weight"), eps)
        q = (h @ p("self_attn.q_proj.weight").T + bias("q")).reshape(N, T, H, Dh)
        k = (h @ p("self_attn.k_proj.weight").T + bias("k")).reshape(N, T, K, Dh)
        v = (h @ p("self_attn.v_proj.weight").T + bias("v")).reshape(N, T, K, Dh)
        q, k = apply_rope(q, Dh, c["rope_theta"], llama3), apply_rope(k, Dh, c["rope_theta"], llama3)
        x = x + attention(q, k, v) @ p("self_attn.o_proj.weight").T
        h = rms_norm(x, p("post_attention_layernorm.weight"), eps)
        x = x + (silu(h @ p("mlp.gate_proj.weight").T) * (h @ p("mlp.up_proj.weight").T)) @ p("mlp.down_proj.weight").T
    x = rms_norm(x, t["model.norm.weight"], eps)
    head = t["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else t["lm_head.weight"]
    return log_softmax(x @ head.T)


# --- random weights in the Hugging Face layout -----------------------------------------------------------


def _normal(rng, *shape, scale=0.2):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _norm_weight(rng, n):
    return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)


def gpt2_tensors(c, rng):
    D, F, P = c["n_embd"], 4 * c["n_embd"], c["n_positions"]
    t = {"wte.weight": _normal(rng, V, D, scale=0.5), "wpe.weight": _normal(rng, P, D, scale=0.5),
         "ln_f.weight": _norm_weight(rng, D), "ln_f.bias": _normal(rng, D, scale=0.1)}
    for i in range(c["n_layer"]):
        t |= {f"h.{i}.ln_1.weight": _norm_weight(rng, D), f"h.{i}.ln_1.bias": _normal(rng, D, scale=0.1),
              f"h.{i}.attn.c_attn.weight": _normal(rng, D, 3 * D), f"h.{i}.attn.c_attn.bias": _normal(rng, 3 * D),
              f"h.{i}.attn.c_proj.weight": _normal(rng, D, D), f"h.{i}.attn.c_proj.bias": _normal(rng, D),
              f"h.{i}.ln_2.weight": _norm_weight(rng, D), f"h.{i}.ln_2.bias": _normal(rng, D, scale=0.1),
              f"h.{i}.mlp.c_fc.weight": _normal(rng, D, F), f"h.{i}.mlp.c_fc.bias": _normal(rng, F),
              f"h.{i}.mlp.c_proj.weight": _normal(rng, F, D), f"h.{i}.mlp.c_proj.bias": _normal(rng, D)}
    if not c.get("tie_word_embeddings", True):
        t["lm_head.weight"] = _normal(rng, V, D, scale=0.5)
    return t


def neox_tensors(c, rng):
    D, F = c["hidden_size"], c["intermediate_size"]
    t = {"gpt_neox.embed_in.weight": _normal(rng, V, D, scale=0.5), "embed_out.weight": _normal(rng, V, D, scale=0.5),
         "gpt_neox.final_layer_norm.weight": _norm_weight(rng, D),
         "gpt_neox.final_layer_norm.bias": _normal(rng, D, scale=0.1)}
    for i in range(c["num_hidden_layers"]):
        p = f"gpt_neox.layers.{i}."
        t |= {p + "input_layernorm.weight": _norm_weight(rng, D),
              p + "input_layernorm.bias": _normal(rng, D, scale=0.1),
              p + "post_attention_layernorm.weight": _norm_weight(rng, D),
              p + "post_attention_layernorm.bias": _normal(rng, D, scale=0.1),
              p + "attention.query_key_value.weight": _normal(rng, 3 * D, D),
              p + "attention.query_key_value.bias": _normal(rng, 3 * D),
              p + "attention.dense.weight": _normal(rng, D, D), p + "attention.dense.bias": _normal(rng, D),
              p + "mlp.dense_h_to_4h.weight": _normal(rng, F, D), p + "mlp.dense_h_to_4h.bias": _normal(rng, F),
              p + "mlp.dense_4h_to_h.weight": _normal(rng, D, F), p + "mlp.dense_4h_to_h.bias": _normal(rng, D)}
    return t


def llama_tensors(c, rng, *, qkv_bias=False):
    D, F, H = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
    K, Dh = c.get("num_key_value_heads", H), D // H
    t = {"model.embed_tokens.weight": _normal(rng, V, D, scale=0.5), "model.norm.weight": _norm_weight(rng, D)}
    if not c.get("tie_word_embeddings"):
        t["lm_head.weight"] = _normal(rng, V, D, scale=0.5)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": _norm_weight(rng, D),
              p + "post_attention_layernorm.weight": _norm_weight(rng, D),
              p + "self_attn.q_proj.weight": _normal(rng, H * Dh, D),
              p + "self_attn.k_proj.weight": _normal(rng, K * Dh, D),
              p + "self_attn.v_proj.weight": _normal(rng, K * Dh, D), p + "self_attn.o_proj.weight": _normal(rng, D, D),
              p + "mlp.gate_proj.weight": _normal(rng, F, D), p + "mlp.up_proj.weight": _normal(rng, F, D),
              p + "mlp.down_proj.weight": _normal(rng, D, F)}
        if qkv_bias:
            t |= {p + "self_attn.q_proj.bias": _normal(rng, H * Dh), p + "self_attn.k_proj.bias": _normal(rng, K * Dh),
                  p + "self_attn.v_proj.bias": _normal(rng, K * Dh)}
    return t


_SPECIALS = {"vocab_size": V, "bos_token_id": BOS, "eos_token_id": EOS}
_GPT2 = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 32, "layer_norm_epsilon": 1e-5,
         "activation_function": "gelu_new"}
_NEOX = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "max_position_embeddings": 32, "rotary_pct": 0.25, "rotary_emb_base": 10000, "layer_norm_eps": 1e-5,
         "use_parallel_residual": True, "hidden_act": "gelu", "tie_word_embeddings": False}
_LLAMA = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 48, "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "hidden_act": "silu", "tie_word_embeddings": False}

# name -> (architectures entry, config.json fields, random tensors, reference)
FAMILIES = {
    "gpt2": ("GPT2LMHeadModel", _GPT2, gpt2_tensors, gpt2_reference),
    "gpt2-untied-exact-gelu": ("GPT2LMHeadModel", _GPT2 | {"tie_word_embeddings": False,
                                                            "activation_function": "gelu"},
                               gpt2_tensors, gpt2_reference),
    "neox": ("GPTNeoXForCausalLM", _NEOX, neox_tensors, neox_reference),
    "neox-sequential": ("GPTNeoXForCausalLM", _NEOX | {"use_parallel_residual": False, "rotary_pct": 1.0,
                                                       "rotary_emb_base": 500, "hidden_act": "gelu_new"},
                        neox_tensors, neox_reference),
    "llama": ("LlamaForCausalLM", _LLAMA, llama_tensors, llama_reference),
    "llama3-tied-mqa": ("LlamaForCausalLM", _LLAMA | {"tie_word_embeddings": True, "num_key_value_heads": 1,
                                                      "rope_theta": 500000.0,
                                                      "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                                       "original_max_position_embeddings": 8}},
                        llama_tensors, llama_reference),
    "qwen2": ("Qwen2ForCausalLM", _LLAMA | {"tie_word_embeddings": True, "use_sliding_window": False,
                                            "sliding_window": 4}, lambda c, rng: llama_tensors(c, rng, qkv_bias=True),
              llama_reference),
    "mistral": ("MistralForCausalLM", _LLAMA | {"num_key_value_heads": 1}, llama_tensors, llama_reference),
}


def write_model(directory, name, *, seed=0, config=None):
    """A Hugging Face directory (config.json + model.safetensors) of family ``name``; returns (tensors, config)."""
    architecture, base, make, _ = FAMILIES[name]
    config = {"architectures": [architecture], **_SPECIALS, **base, **(config or {})}
    tensors = make(config, np.random.default_rng(seed))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "model.safetensors"))
    return tensors, config


def char_tokenizer(pretrained: hf.Pretrained) -> CharTokenizer:
    """A stand-in tokenizer over the model's ids (parity is tested on token ids; tokenizer.json is tested below)."""
    tokens = tuple(chr(0x4E00 + i) for i in range(pretrained.config.vocab_size))
    return CharTokenizer(tokens=tokens, eos=tokens[pretrained.eos_id], bos=tokens[pretrained.bos_id])


def load(directory, dtype=None) -> TransformerLM:
    pretrained, graphdef, params = hf.load_transformer(directory, dtype=dtype)
    return TransformerLM(params=params, graphdef=graphdef, config=pretrained.config,
                         tokenizer=char_tokenizer(pretrained))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, loaded model, reference log-probs function of int ids [N, T])."""
    name = request.param
    directory = tmp_path_factory.mktemp(name)
    tensors, config = write_model(directory, name)
    lm = load(directory)
    reference = lambda ids: FAMILIES[name][3](
        {k: v.astype(np.float64) for k, v in tensors.items()}, config, np.asarray(ids))
    return name, lm, reference


full_logprobs = jax.jit(lambda lm, ids: jax.nn.log_softmax(lm.module(ids)))
start = jax.jit(lambda lm, prompts, lengths: lm.start(prompts, lengths, 6))
advance = jax.jit(lambda lm, state, tokens: lm.advance(state, tokens))


def test_full_forward_equals_the_reference(family):
    name, lm, reference = family
    ids = np.random.default_rng(1).integers(0, V, (3, lm.max_len))
    got = np.asarray(full_logprobs(lm, jnp.asarray(ids, jnp.int32)), np.float64)
    np.testing.assert_allclose(got, reference(ids), rtol=0, atol=TOL)


def test_kv_cached_decoding_equals_the_reference(family):
    """Two prompts of different lengths share their caches; three paths (roots 0, 1, 1) decode 6 tokens each."""
    name, lm, reference = family
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, V, 5), rng.integers(0, V, 3)]
    padded = np.zeros((2, 8), np.int32)
    for row, p in zip(padded, prompts):
        row[: len(p)] = p
    state = start(lm, jnp.asarray(padded), jnp.asarray([5, 3], jnp.int32))
    roots = np.array([0, 1, 1])
    state = State(shared=state.shared, paths=jax.tree.map(lambda leaf: leaf[roots], state.paths))
    suffixes = rng.integers(0, V, (3, 6))
    for step in range(7):
        got = np.asarray(state.paths["logprobs"], np.float64)
        for b, root in enumerate(roots):
            ids = np.concatenate([prompts[root], suffixes[b, :step]])[None]
            np.testing.assert_allclose(got[b], reference(ids)[0, -1], rtol=0, atol=TOL, err_msg=f"path {b} step {step}")
            # and the model's own full forward, both float32 (as tests/test_transformer.py checks the default model)
            full = full_logprobs(lm, jnp.asarray(np.pad(ids, ((0, 0), (0, lm.max_len - ids.shape[1]))), jnp.int32))
            np.testing.assert_allclose(got[b], np.asarray(full)[0, ids.shape[1] - 1], rtol=0, atol=1e-5)
        if step < 6:
            state = advance(lm, state, jnp.asarray(suffixes[:, step], jnp.int32))


def test_score_equals_the_reference(family):
    """pp.score (the trie walk over the KV cache, summed in float64) against the reference's sums."""
    name, lm, reference = family
    rng = np.random.default_rng(3)
    prompt = [BOS, *rng.integers(1, V - 1, 4)]
    continuations = [list(rng.integers(0, V - 1, n)) + ([EOS] if n % 2 else []) for n in (1, 3, 5, 6)]
    got = pp.score(lm, prompt, continuations)
    want = []
    for c in continuations:
        ids = np.asarray(prompt + c)
        logprobs = reference(ids[None])[0]
        want.append(sum(logprobs[t - 1, ids[t]] for t in range(len(prompt), len(ids))))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL * 4)  # a sum of up to 7 terms, each within TOL


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bfloat16_weights(tmp_path, name):
    """--dtype bfloat16: the same weights rounded once to bf16, bf16 compute, float32 log-probabilities.

    The mapping is checked exactly: every bf16 parameter is its float32 parameter rounded to bf16.
    The computation is checked against the float64 reference run on those bf16-rounded weights, so
    what is left is bf16's rounding of the activations: 8 significant bits, a relative error up to
    2**-9 each time a value is stored. Logits here spread over ~15 nats, so a single rounding of a
    logit moves it by up to 0.03 nats, and the ~10 roundings per layer (norms, q/k/v, scores,
    attention, MLP, residual) compound in the tails; over these 8 families the measured worst case
    is 0.38 nats (total variation 0.05). The bounds, 0.5 nats and total variation 0.1, are loose by
    bf16's nature; a mis-mapped tensor gives a total variation near 1.
    """
    tensors, config = write_model(tmp_path, name)
    lm, lm32 = load(tmp_path, dtype="bfloat16"), load(tmp_path)
    assert lm.config.param_dtype == lm.config.dtype == "bfloat16"
    assert {x.dtype.name for x in jax.tree.leaves(lm.params)} == {"bfloat16"}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16))),
                 lm.params, lm32.params)
    ids = np.random.default_rng(1).integers(0, V, (4, 16))
    got = full_logprobs(lm, jnp.asarray(ids, jnp.int32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(jax.nn.logsumexp(got, axis=-1), 0.0, atol=1e-5)  # normalised in float32
    rounded = {k: v.astype(jnp.bfloat16).astype(np.float64) for k, v in tensors.items()}
    want = FAMILIES[name][3](rounded, config, ids)

    def check(got_NTV, positions):
        got_NTV, want_NTV = np.asarray(got_NTV, np.float64), want[:, positions]
        np.testing.assert_allclose(got_NTV, want_NTV, rtol=0, atol=0.5)
        assert (0.5 * np.abs(np.exp(got_NTV) - np.exp(want_NTV)).sum(-1)).max() <= 0.1

    check(got, slice(None))
    state = start(lm, jnp.asarray(ids[:, :8], jnp.int32), jnp.full((4,), 8, jnp.int32))
    assert state.shared["k"][0].dtype == jnp.bfloat16 and state.paths["logprobs"].dtype == jnp.float32
    decoded = [state.paths["logprobs"]]
    for t in range(8, 14):
        state = advance(lm, state, jnp.asarray(ids[:, t], jnp.int32))
        decoded.append(state.paths["logprobs"])
    check(jnp.stack(decoded, axis=1), slice(7, 14))  # the KV-cached path, after 8, ..., 14 tokens


def test_enumeration_sums_to_one_and_equals_brute_force(tmp_path):
    """Every path of up to 2 tokens after a prompt, enumerated exactly, against itertools.product + the reference."""
    tensors, config = write_model(tmp_path, "llama")
    lm = load(tmp_path)
    prompt = [BOS, 5, 17]
    table = pp.enumerate_paths(lm, prompt, 2)
    assert math.isclose(math.exp(table.log_covered), 1.0, abs_tol=1e-5) and table.log_remaining == -math.inf
    got = {tuple(int(t) for t in row[:n]): lp for row, n, lp in zip(table.tokens, table.lengths, table.logp)}
    tensors64 = {k: v.astype(np.float64) for k, v in tensors.items()}
    first = llama_reference(tensors64, config, np.asarray([prompt]))[0, -1]
    seconds = [(a, b) for a, b in itertools.product(range(V), repeat=2) if a != EOS]
    ids = np.asarray([prompt + [a] for a in range(V) if a != EOS])
    after = llama_reference(tensors64, config, ids)[:, -1]  # row j: after first token (the j-th non-EOS id)
    want = {(EOS,): first[EOS]}
    row_of = {a: j for j, a in enumerate(a for a in range(V) if a != EOS)}
    for a, b in seconds:
        want[(a, b)] = first[a] + after[row_of[a], b]
    assert set(got) == set(want) and len(want) == 1 + (V - 1) * V
    paths = sorted(want)
    np.testing.assert_allclose([got[p] for p in paths], [want[p] for p in paths], rtol=0, atol=TOL)
    assert math.isclose(math.fsum(np.exp([want[p] for p in paths])), 1.0, abs_tol=1e-9)


def test_sharded_weights_load_like_one_file(tmp_path):
    tensors, config = write_model(tmp_path / "one", "llama")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(config))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(sharded / file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: file for file, part in shards.items() for n in part}}))
    ids = jnp.asarray(np.random.default_rng(4).integers(0, V, (2, 12)), jnp.int32)
    np.testing.assert_array_equal(full_logprobs(load(sharded), ids), full_logprobs(load(tmp_path / "one"), ids))


def test_prefixed_names_and_buffers_are_accepted(tmp_path):
    """A GPT-2 saved by save_pretrained: 'transformer.' prefixes, causal-mask buffers, a tied lm_head copy."""
    P = _GPT2["n_positions"]
    buffers = {f"h.{i}.attn.bias": np.tril(np.ones((1, 1, P, P), np.float32)) for i in range(_GPT2["n_layer"])}
    tensors, _ = write_model(tmp_path / "plain", "gpt2")
    write_model(tmp_path / "saved", "gpt2")  # the same config and weights, stored as save_pretrained does:
    stored = {"transformer." + k: v for k, v in (tensors | buffers).items()} | {"lm_head.weight": tensors["wte.weight"]}
    save_file(stored, str(tmp_path / "saved" / "model.safetensors"))
    ids = jnp.asarray(np.random.default_rng(5).integers(0, V, (2, 12)), jnp.int32)
    np.testing.assert_array_equal(full_logprobs(load(tmp_path / "saved"), ids),
                                  full_logprobs(load(tmp_path / "plain"), ids))


def test_mistral_sliding_window_shortens_the_context(tmp_path):
    write_model(tmp_path, "mistral", config={"sliding_window": 16})
    pretrained = hf.read_pretrained(tmp_path)
    assert pretrained.config.max_len == 16 and "sliding_window 16" in pretrained.notes[0]


def test_llama3_lists_several_eos_ids_and_the_first_is_used(tmp_path):
    write_model(tmp_path, "llama", config={"eos_token_id": [EOS, 3, 4]})
    pretrained = hf.read_pretrained(tmp_path)
    assert pretrained.eos_id == EOS and "uses the first" in pretrained.notes[0]


# --- refusals: one line, naming what is wrong --------------------------------------------------------------


def _refusal(directory, *fragments):
    with pytest.raises(PathprobError) as caught:
        hf.load_transformer(directory)
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_refusals_are_one_line(tmp_path):
    _refusal(tmp_path / "nowhere", "no such directory")
    (tmp_path / "empty").mkdir()
    _refusal(tmp_path / "empty", "config.json")

    write_model(tmp_path / "noweights", "gpt2")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    _refusal(tmp_path / "noweights", "model.safetensors")

    write_model(tmp_path / "bert", "gpt2", config={"architectures": ["BertForMaskedLM"]})
    _refusal(tmp_path / "bert", "BertForMaskedLM", "GPT2LMHeadModel", "LlamaForCausalLM")

    tensors, config = write_model(tmp_path / "shape", "llama")
    bad = tensors | {"model.layers.1.self_attn.k_proj.weight": np.zeros((8, 32), np.float32)}
    save_file(bad, str(tmp_path / "shape" / "model.safetensors"))
    _refusal(tmp_path / "shape", "'model.layers.1.self_attn.k_proj.weight'", "(8, 32)", "(16, 32)")

    save_file({k: v for k, v in tensors.items() if k != "model.norm.weight"},
              str(tmp_path / "shape" / "model.safetensors"))
    _refusal(tmp_path / "shape", "'model.norm.weight'")

    save_file(tensors | {"model.layers.0.self_attn.q_norm.weight": np.ones(8, np.float32)},
              str(tmp_path / "shape" / "model.safetensors"))
    _refusal(tmp_path / "shape", "'model.layers.0.self_attn.q_norm.weight'", "does not use")

    write_model(tmp_path / "yarn", "llama", config={"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    _refusal(tmp_path / "yarn", "rope_scaling", "'yarn'")

    write_model(tmp_path / "noeos", "llama", config={"eos_token_id": None})
    _refusal(tmp_path / "noeos", "eos_token_id")

    write_model(tmp_path / "act", "llama", config={"hidden_act": "gelu"})
    _refusal(tmp_path / "act", "hidden_act")

    write_model(tmp_path / "index", "llama")
    (tmp_path / "index" / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}))
    _refusal(tmp_path / "index", "model-00002-of-00002.safetensors")


def test_open_model_needs_a_tokenizer_json(tmp_path):
    write_model(tmp_path, "gpt2")
    with pytest.raises(PathprobError, match="tokenizer.json"):
        pp.open_model(f"hf:{tmp_path}")


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(UnknownSpecError) as caught:
        pp.open_model("hugging:gpt2")
    assert "'hugging:'" in str(caught.value) and "hf:DIR" in str(caught.value) and "truth:LANGUAGE" in str(caught.value)


@pytest.mark.parametrize("field, value", [
    ("n_kv_heads", 3), ("norm", "batchnorm"), ("norm_eps", 0.0), ("mlp", "relu"), ("rotary_fraction", 1.5),
    ("rope_theta", -1.0), ("param_dtype", "float16"), ("parallel_residual", "yes"), ("use_bias", 1),
    ("qkv_bias", "no"), ("rope_llama3_scaling", (8.0, 4.0, 1.0, 8192)),
])
def test_model_config_names_the_bad_field(field, value):
    with pytest.raises(ConfigError, match=f"ModelConfig.{field}"):
        ModelConfig(vocab_size=V, max_len=8, d_model=32, n_heads=4, positional="rope", **{field: value})


# --- the command line --------------------------------------------------------------------------------------

runner = CliRunner()


def test_info_describes_a_directory_without_reading_its_weights(tmp_path):
    tensors, _ = write_model(tmp_path, "llama")
    count = sum(v.size for v in tensors.values())
    result = runner.invoke(app, ["info", f"hf:{tmp_path}", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["family"], info["parameters"], info["dtype"], info["weights_bytes"]) == (
        "LlamaForCausalLM", count, "float32", 4 * count)
    assert "weights only" in info["weights_memory"]
    result = runner.invoke(app, ["info", f"hf:{tmp_path}", "--json", "--dtype", "bfloat16"])
    assert result.exit_code == 0 and json.loads(result.stdout)["weights_bytes"] == 2 * count


@pytest.mark.parametrize("args, fragment", [
    (["info", "hugging:gpt2"], "unknown model spec scheme"),
    (["info", "hf:/no/such/dir"], "no such directory"),
    (["info", "truth:arith", "--dtype", "float16"], "float32 or bfloat16"),
])
def test_cli_refusals_exit_2_with_one_line(args, fragment):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


# --- end to end: a tiny byte-level BPE tokenizer.json with a tiny random model ---------------------------


def tiny_bpe_model(directory):
    """A Llama-family model with random weights over a trained 60-token byte-level BPE, in the HF layout.

    Returns (config, float64 tensors, number of tokens) for the NumPy reference.
    """
    from bpe_fixtures import BYTE_LEVEL_EOS, byte_level_bpe

    byte_level_bpe(directory, vocab_size=60, full_alphabet=False)
    vocab = json.loads((directory / "tokenizer.json").read_text())
    n_tokens = len(vocab["model"]["vocab"] | {t["content"]: t["id"] for t in vocab["added_tokens"]})
    architecture, base, make, _ = FAMILIES["llama"]
    config = {"architectures": [architecture], **base, "vocab_size": n_tokens, "bos_token_id": BYTE_LEVEL_EOS,
              "eos_token_id": BYTE_LEVEL_EOS}
    tensors = {k: v[:n_tokens] if k in ("model.embed_tokens.weight", "lm_head.weight") else v
               for k, v in make(config | {"vocab_size": V}, np.random.default_rng(7)).items()}
    (directory / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "model.safetensors"))
    return config, {k: v.astype(np.float64) for k, v in tensors.items()}, n_tokens


def brute_force_paths(reference, tensors64, config, ids, n_tokens, eos) -> dict[tuple[int, ...], float]:
    """log p of every path of up to 2 tokens after ``ids``, from the float64 reference."""
    first = reference(tensors64, config, np.asarray([ids]))[0, -1]
    firsts = [a for a in range(n_tokens) if a != eos]
    after = reference(tensors64, config, np.asarray([ids + [a] for a in firsts]))[:, -1]
    brute = {(eos,): first[eos]}
    brute |= {(a, b): first[a] + after[j, b] for j, a in enumerate(firsts) for b in range(n_tokens)}
    return brute


def test_every_engine_runs_on_a_tokenizer_json_model(tmp_path):
    """hf:DIR with a trained byte-level BPE: score, exact enumeration and sampling against the reference."""
    from bpe_fixtures import BYTE_LEVEL_EOS

    config, tensors64, n_tokens = tiny_bpe_model(tmp_path)
    reference = FAMILIES["llama"][3]
    lm = pp.open_model(f"hf:{tmp_path}")
    assert lm.vocab_size == lm.tokenizer.vocab_size == n_tokens and lm.eos_id == BYTE_LEVEL_EOS
    prompt = "the cat"
    ids = lm.tokenizer.encode(prompt)
    assert lm.tokenizer.decode(ids) == prompt and len(ids) < len(prompt)  # multi-character tokens

    continuations = [" sat", " on the mat", "€"]
    want = []
    for text in continuations:
        full = np.asarray(ids + lm.tokenizer.encode(text))
        logprobs = reference(tensors64, config, full[None])[0]
        want.append(sum(logprobs[t - 1, full[t]] for t in range(len(ids), len(full))))
    np.testing.assert_allclose(pp.score(lm, prompt, continuations), want, rtol=0, atol=TOL * 4)

    table = pp.enumerate_paths(lm, prompt, 2)
    assert math.isclose(math.exp(table.log_covered), 1.0, abs_tol=1e-5) and len(table) == 1 + (n_tokens - 1) * n_tokens
    brute = brute_force_paths(reference, tensors64, config, ids, n_tokens, BYTE_LEVEL_EOS)
    got = {tuple(int(t) for t in row[:n]): lp for row, n, lp in zip(table.tokens, table.lengths, table.logp)}
    assert set(got) == set(brute)
    paths = sorted(brute)
    np.testing.assert_allclose([got[p] for p in paths], [brute[p] for p in paths], rtol=0, atol=TOL)
    assert table.texts()[0] == lm.tokenizer.decode([t for t in table.tokens[0] if t >= 0])

    samples = pp.sample(lm, prompt, 64, 2, key=0)
    for row, lp in zip(samples.tokens, samples.logp):
        path = tuple(int(t) for t in row if t >= 0)
        assert math.isclose(lp, brute[path], abs_tol=TOL), path


def test_path_sets_over_bpe_tokens_equal_brute_force(tmp_path):
    """Exact mass of a regex over the BPE model (its token automaton prunes the walk), top-k and the exact
    entropy equal brute force over every path; DFA-guided SMC and plain MC cover the exact mass.

    A path is in the set when its decoded text matches, whichever tokens spell it (non-canonical
    tokenisations included): the brute force decodes every token sequence.
    """
    import re

    from bpe_fixtures import BYTE_LEVEL_EOS

    config, tensors64, n_tokens = tiny_bpe_model(tmp_path)
    lm = pp.open_model(f"hf:{tmp_path}")
    prompt = "the cat"
    ids = lm.tokenizer.encode(prompt)
    brute = brute_force_paths(FAMILIES["llama"][3], tensors64, config, ids, n_tokens, BYTE_LEVEL_EOS)
    pattern = " ?[a-z]+"
    text = lambda path: lm.tokenizer.decode([t for t in path if t != BYTE_LEVEL_EOS])
    inside = [p for p in brute if re.fullmatch(pattern, text(p), re.DOTALL)]
    assert 0 < len(inside) < len(brute) and any(len(p) == 2 and len(text(p)) > 2 for p in inside)
    exact = math.fsum(math.exp(brute[p]) for p in inside)

    est = pp.mass(lm, prompt, pp.Regex(pattern), 2)
    assert est.exact and est.value == pytest.approx(exact, rel=0, abs=1e-5)
    assert est.details["nodes"] < 1 + n_tokens  # the automaton kept the walk off dead first tokens

    best = sorted(brute, key=brute.get, reverse=True)[:5]
    top = pp.top_k(lm, prompt, 5, 2)
    assert [tuple(int(t) for t in row[:n]) for row, n in zip(top.tokens, top.lengths)] == best
    np.testing.assert_allclose(top.logp, [brute[p] for p in best], rtol=0, atol=TOL)

    entropy = -math.fsum(math.exp(lp) * lp for lp in brute.values())
    assert pp.entropy(lm, prompt, 2).value == pytest.approx(entropy, rel=0, abs=1e-4)

    for method in ("smc", "mc"):
        sampled = pp.mass(lm, prompt, pp.Regex(pattern), 2, method=method, n=4096, key=0)
        assert sampled.lower <= exact <= sampled.upper, (method, sampled)
