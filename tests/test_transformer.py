"""The Transformer LM: incremental decoding with a shared prompt cache equals the full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathprob.config import ModelConfig
from pathprob.data.tokenizer import CharTokenizer
from pathprob.models.base import repeat_paths, start_one, take_paths

start = jax.jit(lambda lm, prompt, capacity: start_one(lm, prompt, capacity), static_argnames="capacity")
advance = jax.jit(lambda lm, state, tokens: lm.advance(state, tokens))
next_logprobs = jax.jit(lambda lm, state: lm.next_logprobs(state))
from pathprob.models.transformer import TransformerLM, init_transformer
from pathprob.paths.score import score

TOKENIZER = CharTokenizer(tokens=("^", "a", "b", "c", "d", "$"), eos="$", bos="^")
V = TOKENIZER.vocab_size

CONFIGS = [
    ModelConfig(vocab_size=V, max_len=24, d_model=32, n_layers=2, n_heads=4, d_ff=64),
    ModelConfig(vocab_size=V, max_len=24, d_model=32, n_layers=1, n_heads=2, d_ff=48,
                positional="rope", tie_embeddings=False),
]


def random_lm(cfg_index: int, seed: int) -> TransformerLM:
    return TransformerLM.from_module(init_transformer(CONFIGS[cfg_index], seed), TOKENIZER)


@jax.jit
def _full_logprobs(lm: TransformerLM, ids_T: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(lm.module(ids_T[None])[0])


def full_forward_score(lm: TransformerLM, prompt: list[int], continuation: list[int]) -> float:
    """Reference: one full causal forward over prompt + continuation, summed in float64.

    The ids are right-padded to the context length (causal attention: padding
    after a position cannot change it), so the reference compiles once per config.
    """
    ids = np.asarray(prompt + continuation, np.int32)
    padded = np.zeros(lm.max_len, np.int32)
    padded[: len(ids)] = ids
    logprobs = np.asarray(_full_logprobs(lm, jnp.asarray(padded)), np.float64)
    return float(sum(logprobs[t - 1, ids[t]] for t in range(len(prompt), len(ids))))


@settings(max_examples=25, deadline=None)
@given(
    cfg_index=st.integers(0, len(CONFIGS) - 1),
    seed=st.integers(0, 2**16),
    # Prompt lengths from a few values: each new length compiles the decoder once.
    prompt=st.sampled_from([1, 3, 8]).flatmap(lambda n: st.lists(st.integers(0, V - 1), min_size=n, max_size=n)),
    continuations=st.lists(st.lists(st.integers(0, V - 2), min_size=0, max_size=7), min_size=1, max_size=4),
    end_with_eos=st.booleans(),
)
def test_incremental_score_equals_full_forward(cfg_index, seed, prompt, continuations, end_with_eos):
    lm = random_lm(cfg_index, seed)
    if end_with_eos:
        continuations = [c + [lm.eos_id] for c in continuations]
    got = score(lm, prompt, continuations)
    want = np.array([full_forward_score(lm, prompt, c) for c in continuations])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cfg_index", range(len(CONFIGS)))
def test_next_logprobs_normalised_along_a_path(cfg_index):
    lm = random_lm(cfg_index, 0)
    state = repeat_paths(start(lm, jnp.array([0, 1, 2]), 6), 3)
    for t in range(6):
        logprobs = next_logprobs(lm, state)
        np.testing.assert_allclose(jax.nn.logsumexp(logprobs, axis=-1), 0.0, atol=1e-5)
        state = advance(lm, state, jnp.array([1, 2, 3]) + t % 2)


def test_batch_of_one_equals_batch_of_n():
    lm = random_lm(0, 1)
    continuations = [[1, 2, 3], [4, 4, 1, 5], [2], [3, 3, 3, 3, 3]]
    batched = score(lm, [0, 3], continuations)
    single = np.array([score(lm, [0, 3], [c])[0] for c in continuations])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5)


def test_gathered_paths_decode_like_fresh_ones():
    """take_paths on the per-path state must behave like decoding those paths from scratch."""
    lm = random_lm(1, 2)
    state = repeat_paths(start(lm, jnp.array([0, 2]), 4), 3)
    state = advance(lm, state, jnp.array([1, 2, 3]))
    picked = advance(lm, take_paths(state, jnp.array([2, 0])), jnp.array([4, 4]))
    fresh = repeat_paths(start(lm, jnp.array([0, 2]), 4), 2)
    fresh = advance(lm, advance(lm, fresh, jnp.array([3, 1])), jnp.array([4, 4]))
    np.testing.assert_allclose(next_logprobs(lm, picked), next_logprobs(lm, fresh), atol=1e-5)


def test_advance_compiles_once_per_batch_size():
    traces = []

    @jax.jit
    def counted_advance(lm, state, tokens):
        traces.append(tokens.shape)
        return lm.advance(state, tokens)

    for seed in range(3):  # new parameter values, same config: no retrace
        lm = random_lm(0, seed)
        for batch in (4, 8):
            state = repeat_paths(start(lm, jnp.array([0, 1]), 5), batch)
            for t in range(4):
                state = counted_advance(lm, state, jnp.full((batch,), 1 + t % 3, jnp.int32))
    assert sorted(traces) == [(4,), (8,)]


@pytest.mark.parametrize("batch", [1, 50, 64])
def test_cpu_chunked_forward_equals_whole_batch(batch):
    """A long teacher-forced batch runs in sub-batches on the CPU (padding the last): same logits."""
    from pathprob.models import transformer

    lm = random_lm(0, 3)
    T = 20  # 1024 // 20 = 51 rows per sub-batch: batch 64 pads to 102 rows, batch 50 is one sub-batch
    tokens = jnp.asarray(np.random.default_rng(batch).integers(0, V, (batch, T)), jnp.int32)
    chunked = jax.jit(lambda lm, t: lm.module.teacher_forced_logits(t))(lm, tokens)
    whole = jax.jit(lambda lm, t: lm.module(t))(lm, tokens)
    assert transformer._CPU_CHUNK_TOKENS // T == 51
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=0, atol=1e-5)
