"""The one trie engine: many prompts per walk with stacked prompt caches, sampling as counts down the trie,
scoring by distinct prefixes, and two walkers in lockstep — each against an independent reference.

Statistical assertions state their false-failure probability (the seeds are fixed, so a run is
deterministic; the probability says how unlucky the chosen seeds would have to be).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from test_exact import _full_logprobs, all_paths, brute_force, random_lm

import pathprob as pp
from pathprob.models.base import pad_prompts, start_one
from pathprob.paths import frontier, sample, trie
from pathprob.paths import score as score_module
from pathprob.paths.score import score_paths
from pathprob.paths.frontier import expand_children
from pathprob.paths.trie import Walker, walk

PROMPTS = [[0, 1, 2], [0], [0, 3, 3, 1, 4], [0, 2]]  # lengths 3, 1, 5, 2: padded to 8 in one start
FALSE_FAILURE = 1e-3  # per chi-square test


@pytest.fixture(scope="module")
def lm():
    return random_lm(0)


def test_stacked_prompt_caches_decode_like_one_prompt_each(lm):
    """R prompts started together (right-padded, each path reading its own root's cache) equal R separate starts."""
    prompts_RP, lengths_R = pad_prompts([np.asarray(p) for p in PROMPTS], lm.max_len)
    assert prompts_RP.shape == (4, 8)
    state = jax.jit(lambda lm, p, n: lm.start(p, n, 4))(lm, jnp.asarray(prompts_RP), jnp.asarray(lengths_R))
    tokens = jnp.asarray([1, 2, 3, 5], jnp.int32)
    advance = jax.jit(lambda lm, state, tokens: lm.advance(state, tokens))  # eager ops would compile one by one
    next_logprobs = jax.jit(lambda lm, state: lm.next_logprobs(state))
    stacked = next_logprobs(lm, advance(lm, state, tokens))
    for r, prompt in enumerate(PROMPTS):
        one = advance(lm, start_one(lm, jnp.asarray(prompt), 4), tokens[r : r + 1])
        np.testing.assert_allclose(stacked[r], next_logprobs(lm, one)[0], rtol=0, atol=1e-5)
    # Against the full forward: the next-token distribution after prompt + token.
    for r, prompt in enumerate(PROMPTS):
        ids = jnp.asarray([[*prompt, int(tokens[r])]], jnp.int32)
        np.testing.assert_allclose(stacked[r], _full_logprobs(lm, ids)[0, -1], rtol=0, atol=1e-5)


def test_many_prompts_equal_brute_force_per_prompt(lm):
    tables = pp.enumerate_many(lm, PROMPTS, 3)
    for prompt, table in zip(PROMPTS, tables):
        exact = brute_force(lm, prompt, 3)
        got = {tuple(r[:n].tolist()): lp for r, n, lp in zip(table.tokens, table.lengths, table.logp)}
        assert got.keys() == exact.keys()
        assert max(abs(got[k] - exact[k]) for k in exact) < 1e-5  # float32 per token, float64 sums
        assert abs(math.expm1(table.log_covered)) < 1e-6


def test_expansions_copy_only_suffixes(lm):
    """A path's state holds its root index and its own suffix cache: nothing of the prompt's length."""
    short = frontier.path_state_bytes(lm, 3)
    state, _ = frontier.start(lm, [np.arange(12) % 5], 3)
    cfg = lm.config
    suffix = 2 * cfg.n_layers * cfg.n_heads * 3 * cfg.head_dim * 4  # k and v, float32
    assert short == suffix + 4 + 4 + 4 * lm.vocab_size  # + root, length, next log-probs
    assert state.shared["k"][0].shape[2] == 16  # the prompt lives once, in the shared part


def test_score_walks_distinct_prefixes_and_equals_full_forward(lm):
    paths = [p for p in all_paths(6, 5, 3)][:150]
    tokens = np.full((len(paths), 3), -1, np.int32)
    for row, p in zip(tokens, paths):
        row[: len(p)] = p
    exact = brute_force(lm, PROMPTS[0], 3)
    got = pp.score(lm, PROMPTS[0], [list(p) for p in paths])
    np.testing.assert_allclose(got, [exact[p] for p in paths], rtol=0, atol=1e-5)
    # Several prompts in one walk: path i scored after prompt root[i].
    root = np.arange(len(paths)) % len(PROMPTS)
    many = score_paths(lm, [np.asarray(p) for p in PROMPTS], root, tokens)
    for r, prompt in enumerate(PROMPTS):
        mine = root == r
        np.testing.assert_allclose(many[mine], pp.score(lm, prompt, [list(p) for p in np.asarray(paths,
                                   dtype=object)[mine]]), rtol=0, atol=1e-5)


def test_scoring_unshared_paths_teacher_forced_equals_the_walk(lm, monkeypatch):
    """Paths that share few prefixes are scored by teacher-forced forwards: the same scores as the walk
    (float32 per token), and chosen only when they take fewer than twice as many positions as the walk steps."""
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 5, (40, 10)).astype(np.int32)  # random: shared prefixes of 2 or 3 tokens at most
    tokens[::3, 8:] = -1  # some shorter paths
    root = np.arange(40) % len(PROMPTS)
    prompts = [np.asarray(p) for p in PROMPTS]
    lengths = (tokens >= 0).sum(axis=1)
    walked = []
    monkeypatch.setattr(score_module, "walk", lambda *a, **k: walked.append(1) or walk(*a, **k))
    forced = score_paths(lm, prompts, root, tokens)
    steps = score_module.trie_evaluations(root, tokens, lengths)
    positions = (np.asarray([len(p) for p in PROMPTS])[root] + lengths).sum()
    assert positions < 2 * steps and not walked  # teacher-forced
    by_walk = score_paths(lm, prompts, root, tokens, on_step=lambda *args: None)  # per-step views need the walk
    assert walked
    np.testing.assert_allclose(forced, by_walk, rtol=0, atol=1e-5)
    for r, prompt in enumerate(PROMPTS):
        ids = [np.asarray([[*prompt, *row[:n]]]) for row, n in zip(tokens[root == r], lengths[root == r])]
        want = [float(np.asarray(_full_logprobs(lm, jnp.asarray(i)))[0, len(prompt) - 1:-1][np.arange(i.shape[1] - len(prompt)), i[0, len(prompt):]].sum()) for i in ids]
        np.testing.assert_allclose(forced[root == r], want, rtol=0, atol=1e-5)
    # Shared prefixes: the walk takes far fewer steps than the positions, and is used.
    shared = np.tile(tokens[1:2, :6], (40, 1))
    shared[:, -1] = np.arange(40) % 5
    assert score_module.trie_evaluations(np.zeros(40, np.int64), shared, (shared >= 0).sum(axis=1)) == 5  # prefixes of 1..5 tokens
    walked.clear()
    score_paths(lm, prompts[:1], np.zeros(40, np.int64), shared)
    assert walked


def _exact_path_probs(lm, prompt, max_new):
    table = pp.enumerate_paths(lm, prompt, max_new)
    return {tuple(r[:n].tolist()): math.exp(lp) for r, n, lp in zip(table.tokens, table.lengths, table.logp)}


def _chi_square_pvalue(counts: dict, probs: dict, n: int) -> float:
    keys = sorted(probs)
    expected = np.array([probs[k] for k in keys])
    expected *= n / expected.sum()  # the listed mass is 1 up to float32 rounding of the per-token terms
    observed = np.array([counts.get(k, 0) for k in keys])
    assert sum(counts.values()) == n and set(counts) <= set(probs)  # no impossible path was drawn
    big = expected >= 5
    observed_cells = np.r_[observed[big], observed[~big].sum()]
    expected_cells = np.r_[expected[big], expected[~big].sum()]
    return stats.chisquare(observed_cells, expected_cells).pvalue


@pytest.mark.parametrize("handoff", [True, False])
def test_counts_down_the_trie_have_the_law_of_iid_draws(lm, handoff, monkeypatch):
    """Chi-square of the drawn paths against exact enumeration (false failure 1e-3 per case)."""
    if not handoff:  # force the pure count walk, never the ancestral finish
        monkeypatch.setattr(sample.Counting.__init__, "__defaults__", (sample.MODEL, False))
    probs = _exact_path_probs(lm, PROMPTS[0], 3)
    drawn = sample.draw(lm, PROMPTS[0], 50_000, 3, key=11)
    assert len(drawn) == 50_000 and drawn.count.sum() == 50_000
    counts = {}
    for path, c, _ in drawn.counts():
        counts[path] = c
    assert _chi_square_pvalue(counts, probs, 50_000) > FALSE_FAILURE
    exact = brute_force(lm, PROMPTS[0], 3)
    got = {tuple(r[:n].tolist()): lp for r, n, lp in zip(drawn.tokens, drawn.lengths, drawn.logp)}
    assert max(abs(got[k] - exact[k]) for k in got) < 1e-5


def test_handoff_finishes_long_diverse_paths_with_the_same_law(lm):
    """Counts mostly ones trigger the ancestral finish: first-token and length laws still exact."""
    drawn = sample.draw(lm, PROMPTS[0], 4096, 6, key=5)
    assert len(drawn) == 4096 and (drawn.count == 1).mean() > 0.5  # the finish ran
    first = np.bincount(drawn.tokens[:, 0], weights=drawn.count, minlength=6)
    p_first = np.exp(np.asarray(lm.next_logprobs(start_one(lm, jnp.asarray(PROMPTS[0]), 6))[0], np.float64))
    assert stats.chisquare(first, p_first / p_first.sum() * first.sum()).pvalue > FALSE_FAILURE
    exact = pp.score(lm, PROMPTS[0], [list(r[:n]) for r, n in zip(drawn.tokens[:200], drawn.lengths[:200])])
    np.testing.assert_allclose(drawn.logp[:200], exact, rtol=0, atol=1e-5)


def test_a_level_over_the_budget_is_finished_by_the_ancestral_sampler(lm, monkeypatch):
    """Where the next level would not fit (large vocabularies: its host table is N x V float64), the draws
    are handed over instead of refused, and the law is the same: chi-square against exact enumeration."""
    per_path = frontier.path_state_bytes(lm, 3)
    small = pp.Budget(max_bytes=trie.level_bytes(4, lm.vocab_size, per_path, 1024))  # fits 4 prefixes, not 5
    expanded = []
    monkeypatch.setattr(trie.frontier, "expand_children",
                        lambda *a, **k: expanded.append(a[2].size) or expand_children(*a, **k))
    n = 20_000
    drawn = sample.draw(lm, PROMPTS[0], n, 3, key=7, budget=small)
    assert expanded == [] and len(drawn) == n  # the root's 5 children would not fit: handed over at once
    counts = {}
    for row, length, c in zip(drawn.tokens, drawn.lengths, drawn.count):
        counts[tuple(row[:length].tolist())] = counts.get(tuple(row[:length].tolist()), 0) + int(c)
    assert _chi_square_pvalue(counts, _exact_path_probs(lm, PROMPTS[0], 3), n) > FALSE_FAILURE


def test_sample_rows_are_the_counted_draws_in_random_order(lm):
    rows = pp.sample(lm, PROMPTS[0], 3000, 3, key=3)
    counted = pp.sample(lm, PROMPTS[0], 3000, 3, key=3, distinct=True)
    assert len(rows) == rows.tokens.shape[0] == 3000 and rows.count is None
    assert sorted(rows.counts()) == sorted(counted.counts())
    assert not np.array_equal(rows.tokens[:50], np.sort(rows.tokens[:50], axis=0))  # shuffled, not grouped


def test_a_billion_draws_cost_the_distinct_prefixes(lm):
    sharp = pp.open_model("truth:arith")
    drawn = sample.draw(sharp, "^1+2=", 10**9, 4, key=0)
    assert len(drawn) == 10**9 and drawn.tokens.shape[0] < 100  # a handful of distinct paths


def test_walkers_in_lockstep_give_the_chain_rule_kl(lm):
    """KL(a || b) from counts with the target walked alongside: its mean converges to the exact KL."""
    other = random_lm(1)
    table = pp.enumerate_paths(lm, PROMPTS[0], 3)
    paths = [list(r[:n]) for r, n in zip(table.tokens, table.lengths)]
    log_b = pp.score(other, PROMPTS[0], paths)
    exact = float(np.sum(np.exp(table.logp) * (table.logp - log_b)))
    drawn = sample.draw(lm, PROMPTS[0], 20_000, 3, key=2, target=other)
    w = drawn.count / len(drawn)
    chain, plain = np.sum(w * drawn.extras["kl"]), np.sum(w * (drawn.logq - drawn.logp))
    sd = math.sqrt(np.sum(w * (drawn.extras["kl"] - chain) ** 2) / len(drawn))
    assert abs(chain - exact) < 4.9 * sd  # false failure 1e-6
    np.testing.assert_allclose(drawn.logq, pp.score(lm, PROMPTS[0], [list(r[:n]) for r, n in
                               zip(drawn.tokens, drawn.lengths)]), rtol=0, atol=1e-5)
    assert abs(plain - exact) < 0.1


def test_walker_refuses_a_level_beyond_the_budget(lm):
    walker = Walker(lm, [np.asarray(PROMPTS[0])], 3, budget=pp.Budget(max_nodes=10))
    with pytest.raises(pp.BudgetExceededError, match="trie walk"):
        walker.expand(np.zeros(20, np.int64), np.arange(20) % 6)
