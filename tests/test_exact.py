"""The exact engine against brute force: every path of a tiny model, scored in full and summed in float64."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pathprob as pp
from pathprob.config import ModelConfig
from pathprob.data.tokenizer import CharTokenizer
from pathprob.errors import BadPromptError, BudgetExceededError
from pathprob.models.transformer import TransformerLM, init_transformer
from pathprob.paths import frontier
from pathprob.paths.enumerate import Budget

TOKENIZER = CharTokenizer(tokens=("^", "a", "b", "c", "d", "$"), eos="$", bos="^")
CFG = ModelConfig(vocab_size=6, max_len=16, d_model=32, n_layers=2, n_heads=4, d_ff=64)
NO_EOS_TOKENIZER = CharTokenizer(tokens=("^", "a", "b", "c", "$"), eos="$", bos="^")


def random_lm(seed: int, tokenizer=TOKENIZER) -> TransformerLM:
    cfg = ModelConfig(**{**CFG.to_dict(), "vocab_size": tokenizer.vocab_size})
    return TransformerLM.from_module(init_transformer(cfg, seed), tokenizer)


@jax.jit
def _full_logprobs(lm, ids_NT):
    return jax.nn.log_softmax(lm.module(ids_NT))


def all_paths(vocab: int, eos: int, max_new: int):
    """Every path: sequences ending at their first EOS, or of length max_new."""
    for n in range(1, max_new + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if eos in seq[:-1] or (n < max_new and seq[-1] != eos):
                continue
            yield seq


def brute_force(lm, prompt_ids, max_new):
    """{path: log p} with each path scored by one full forward (Transformer) or teacher forcing (truth)."""
    paths = list(all_paths(lm.vocab_size, lm.eos_id, max_new))
    if isinstance(lm, TransformerLM):
        # One batched full forward; right padding cannot change earlier positions (causal attention).
        ids = np.zeros((len(paths), lm.max_len), np.int32)
        for row, seq in zip(ids, paths):
            row[: len(prompt_ids) + len(seq)] = [*prompt_ids, *seq]
        logprobs = np.asarray(_full_logprobs(lm, jnp.asarray(ids)), np.float64)
        start = len(prompt_ids) - 1
        return {seq: float(sum(logprobs[n, start + i, t] for i, t in enumerate(seq))) for n, seq in enumerate(paths)}
    return dict(zip(paths, pp.score(lm, list(prompt_ids), [list(p) for p in paths])))


def as_dict(table):
    return {tuple(row[:n].tolist()): float(lp) for row, n, lp in zip(table.tokens, table.lengths, table.logp)}


def check_table(table, truth: dict, min_prob: float = 0.0):
    listed = as_dict(table)
    for path, lp in listed.items():
        assert path in truth
        assert abs(lp - truth[path]) < 1e-5, path
    # Accounting: listed + remainder = 1, and the remainder is exactly the unlisted mass.
    assert abs(math.exp(table.log_covered) + math.exp(table.log_remaining) - 1.0) < 1e-6
    unlisted = sum(math.exp(lp) for path, lp in truth.items() if path not in listed)
    assert abs(math.exp(table.log_remaining) - unlisted) < 1e-6
    # Every path above min_prob (away from float32 rounding at the threshold) is listed.
    for path, lp in truth.items():
        if lp > math.log(min_prob) + 1e-4 if min_prob > 0 else lp > -np.inf:
            if table.stats.get("max_paths") is None:
                assert path in listed, path


@pytest.fixture(scope="module")
def lm():
    return random_lm(0)


@pytest.fixture(scope="module")
def truth_table(lm):
    return brute_force(lm, [0, 1, 2], 3)


def test_full_enumeration_matches_brute_force(lm, truth_table):
    table = pp.enumerate_paths(lm, [0, 1, 2], 3)
    assert len(table) == len(truth_table)
    check_table(table, truth_table)
    assert table.log_remaining == -math.inf
    assert table.stats["nodes"] == 1 + 5 + 25  # one model evaluation per internal trie node


@pytest.mark.parametrize("min_prob", [1e-3, 1e-2, 0.05])
def test_min_prob_remainder_is_the_unlisted_mass(lm, truth_table, min_prob):
    table = pp.enumerate_paths(lm, [0, 1, 2], 3, min_prob=min_prob)
    check_table(table, truth_table, min_prob)
    assert (table.probs >= min_prob * (1 - 1e-5)).all()


@pytest.mark.parametrize("max_paths", [1, 7, 40])
def test_max_paths_keeps_the_most_probable(lm, truth_table, max_paths):
    table = pp.enumerate_paths(lm, [0, 1, 2], 3, max_paths=max_paths)
    check_table(table, truth_table)
    assert len(table) <= max_paths


def test_paths_without_eos_and_tiny_vocab():
    lm = random_lm(4, NO_EOS_TOKENIZER)
    truth = brute_force(lm, [0], 4)
    check_table(pp.enumerate_paths(lm, [0], 4, chunk=8), truth)  # several chunks per level


def test_top_k_equals_brute_force_sort(lm, truth_table):
    ranked = sorted(truth_table.items(), key=lambda item: (-item[1], item[0]))
    for k in (1, 5, 33, len(ranked)):
        table = pp.top_k(lm, [0, 1, 2], k, 3)
        got = list(as_dict(table).items())
        assert len(got) == k
        np.testing.assert_allclose([lp for _, lp in got], [lp for _, lp in ranked[:k]], atol=1e-5)
        assert table.stats["certified"]
        assert table.stats["log_best_unexpanded"] <= table.logp[-1]
    top1 = pp.top_k(lm, [0, 1, 2], 1, 3)
    assert as_dict(top1) and next(iter(as_dict(top1))) == ranked[0][0]


def test_top_1_of_one_token_paths_is_the_argmax():
    """With max_new = 1 the most probable path is the argmax token."""
    lm = random_lm(2)
    table = pp.top_k(lm, [0, 3], 1, 1)
    logprobs = np.asarray(_full_logprobs(lm, jnp.asarray(np.r_[0, 3, np.zeros(14)].astype(np.int32))[None]))[0, 1]
    assert table.tokens[0, 0] == int(np.argmax(logprobs))


@pytest.mark.parametrize("pattern", ["a.*", "[ab]*", "c?d", ".*b", "(ab|ba)c?"])
def test_mass_exact_and_bounded(lm, truth_table, pattern):
    import re

    inside = sum(math.exp(lp) for path, lp in truth_table.items()
                 if re.fullmatch(pattern, TOKENIZER.decode([t for t in path if t != 5]), re.DOTALL))
    exact = pp.mass(lm, [0, 1, 2], pp.Regex(pattern), 3)
    assert exact.exact and abs(exact.value - inside) < 1e-6
    bounded = pp.mass(lm, [0, 1, 2], pp.Regex(pattern), 3, min_prob=0.02)
    assert bounded.lower - 1e-6 <= inside <= bounded.upper + 1e-6
    predicate = pp.mass(lm, [0, 1, 2], pp.Predicate(lambda t: re.fullmatch(pattern, t, re.DOTALL) is not None), 3,
                        min_prob=0.02)
    assert predicate.lower - 1e-6 <= inside <= predicate.upper + 1e-6
    assert predicate.upper >= bounded.upper - 1e-9  # the DFA proves more of the remainder outside


def test_dfa_pruning_expands_fewer_nodes(lm):
    full = pp.enumerate_paths(lm, [0, 1, 2], 3)
    narrow = pp.mass(lm, [0, 1, 2], pp.Regex("ab."), 3)
    assert narrow.exact
    assert narrow.details["nodes"] == 1 + 1 + 1 < full.stats["nodes"]


def test_combinators(lm, truth_table):
    a, b = pp.Regex("a.*"), pp.Regex(".*b")
    for combined in (a & b, a | b, ~a, ~(a | b)):
        dfa_mass = pp.mass(lm, [0, 1, 2], combined, 3)
        host = pp.mass(lm, [0, 1, 2], combined & pp.Predicate(lambda t: True), 3)
        assert dfa_mass.exact and host.exact
        # Same paths, but prefixes sit in different chunk rows: float32 rounding only (~1e-7 relative).
        assert abs(dfa_mass.value - host.value) <= 1e-6 * host.value


@pytest.mark.parametrize("min_prob", [0.0, 0.01])
def test_entropy_bounds_contain_brute_force(lm, truth_table, min_prob):
    h = -sum(math.exp(lp) * lp for lp in truth_table.values())
    est = pp.entropy(lm, [0, 1, 2], 3, min_prob=min_prob)
    assert est.lower - 1e-5 <= h <= est.upper + 1e-5
    if min_prob == 0:
        assert est.exact and abs(est.value - h) < 1e-5


@pytest.mark.parametrize("language", ["arith", "concepts"])
def test_truths_match_brute_force(language):
    lang = pp.get_language(language)
    truth = lang.truth()
    prompt = lang.tokenizer.encode(lang.prompts(1, n=1)[0])
    max_new = 3
    reference = {p: lp for p, lp in brute_force(truth, prompt, max_new).items() if lp > -np.inf}
    table = pp.enumerate_paths(truth, prompt, max_new)
    check_table(table, reference)
    check_table(pp.enumerate_paths(truth, prompt, max_new, min_prob=0.01), reference, 0.01)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), prompt=st.lists(st.integers(0, 5), min_size=2, max_size=2),
       min_prob=st.sampled_from([0.0, 1e-3, 3e-2]), max_paths=st.sampled_from([None, 3, 20]))
def test_accounting_property(seed, prompt, min_prob, max_paths):
    lm = random_lm(seed % 4)
    truth = brute_force(lm, prompt, 2)
    table = pp.enumerate_paths(lm, prompt, 2, min_prob=min_prob, max_paths=max_paths)
    check_table(table, truth, min_prob)


def test_chunks_compile_once_per_shape(lm):
    pp.enumerate_paths(lm, [0, 1, 2], 3, chunk=8)
    before = frontier.advance._cache_size()
    for prompt in ([0, 2, 2], [0, 3, 1], [0, 4, 4]):
        pp.enumerate_paths(lm, prompt, 3, chunk=8)
        pp.enumerate_paths(random_lm(7), prompt, 3, chunk=8)  # new parameters, same config
    assert frontier.advance._cache_size() == before


def test_budget_refuses_with_advice(lm):
    with pytest.raises(BudgetExceededError, match="min_prob"):
        pp.enumerate_paths(lm, [0], 12, budget=Budget(max_nodes=10_000))
    with pytest.raises(BadPromptError, match="context"):
        pp.enumerate_paths(lm, [0], 40)


def test_budget_counts_only_dfa_live_prefixes():
    lm = random_lm(0)
    with pytest.raises(BudgetExceededError):
        pp.mass(lm, [0], pp.Predicate(lambda t: t.startswith("ab")), 9, budget=Budget(max_nodes=50_000))
    narrow = pp.mass(lm, [0], pp.Regex("abcd.*"), 9, min_prob=1e-3, budget=Budget(max_nodes=50_000))
    assert narrow.lower <= narrow.upper
