"""The Monte-Carlo engine against the exact engine, statistically, with fixed seeds.

Every statistical assertion states its false-failure probability: the chance that a
correct implementation fails it for a random seed (the seeds are fixed, so a run is
deterministic; the probability says how unlucky the chosen seeds would have to be).

- Coverage: 200 independent replicates of a 95% interval. The bounded methods (mc,
  smc with and without resampling, hybrid, swor) have intervals valid at every n; the
  test asks for >= 186 covering (0.93) on a moderate set (mass 0.14) and on a rare one
  (mass 1.0e-3). At a true coverage of exactly 95% the false-failure probability is
  P(Binomial(200, 0.95) < 186) = 0.078 (0.0011 at 97%; these intervals are
  conservative: docs/estimators.md lists the coverage measured). The CLT intervals
  (is, entropy, KL) are asked for >= 180 on the moderate set only:
  P(Binomial(200, 0.95) < 180) = 0.0012 (0.009 at a true 94%).
- Chi-square goodness of fit at the 1e-3 level (Wilson-Hilferty quantile).
- Slope of log RMSE against log n: the standard error of the fitted slope is about
  0.03 with 64 replicates per n; the test allows ±0.15 (5 standard errors, < 1e-6).
"""

import inspect
import itertools
import math
import re

import jax
import numpy as np
import pytest
from test_exact import CFG, TOKENIZER, _full_logprobs, random_lm

import pathprob as pp
from pathprob.errors import PathprobError
from pathprob.models.transformer import TransformerLM, init_transformer
from pathprob.paths import ancestral, hybrid, montecarlo, proposal, sample, smc, swor
from pathprob.paths.divergence import kl
from pathprob.paths.intervals import widen
from pathprob.paths.montecarlo import entropy_mc, mass_mc

PROMPT = [0, 1, 2]
MAX_NEW = 4  # 781 paths over V = 6
SET = pp.Regex("[ab]*")  # mass 0.14 under random_lm(0): several paths, varied weights
REPLICATES = 200


@pytest.fixture(scope="module")
def lm():
    return random_lm(0)


@pytest.fixture(scope="module")
def other_lm():
    return random_lm(1)


@pytest.fixture(scope="module")
def table(lm):
    return pp.enumerate_paths(lm, PROMPT, MAX_NEW)


def as_dict(table) -> dict:
    return {tuple(row[:n]): lp for row, n, lp in zip(table.tokens.tolist(), table.lengths.tolist(), table.logp)}


def chi2_quantile(df: int, tail: float) -> float:
    """Wilson-Hilferty approximation of the chi-square upper-``tail`` quantile."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - tail)
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Statistic and degrees of freedom, cells with expected count < 5 pooled into one."""
    expected = counts.sum() * probs
    big = expected >= 5
    observed_cells = [*counts[big], counts[~big].sum()]
    expected_cells = [*expected[big], expected[~big].sum()]
    stat = sum((o - e) ** 2 / e for o, e in zip(observed_cells, expected_cells) if e > 0)
    return stat, sum(e > 0 for e in expected_cells) - 1


def sharp_lm(seed: int, factor: float) -> TransformerLM:
    """A random model with its final logits multiplied by ``factor``: peaked, like a trained one."""
    model = init_transformer(CFG, seed)
    model.ln_f.scale[...] = model.ln_f.scale[...] * factor
    model.ln_f.bias[...] = model.ln_f.bias[...] * factor
    return TransformerLM.from_module(model, TOKENIZER)


# ---------------------------------------------------------------- sampling


def test_samples_follow_the_exact_distribution(lm, table):
    """Chi-square over all 781 paths at the 1e-3 level; every logp equals the exact engine's."""
    samples = pp_sample(lm, 1 << 16, key=0)
    exact = as_dict(table)
    index = {path: i for i, path in enumerate(exact)}
    counts = np.zeros(len(exact))
    for row, n in zip(samples.tokens.tolist(), samples.lengths.tolist()):
        counts[index[tuple(row[:n])]] += 1
    stat, df = chi_square(counts, np.exp(np.array(list(exact.values()))))
    assert stat < chi2_quantile(df, 1e-3), (stat, df)
    expected_logp = np.array([exact[tuple(r[:n])] for r, n in zip(samples.tokens.tolist(), samples.lengths.tolist())])
    np.testing.assert_allclose(samples.logp, expected_logp, atol=1e-5)  # float32 per token, different batch shapes
    assert np.array_equal(samples.logq, samples.logp)
    assert np.array_equal(samples.eos, (samples.tokens == lm.eos_id).any(axis=1))
    assert all((row[n:] == -1).all() and (row[:n] >= 0).all() for row, n in zip(samples.tokens, samples.lengths))


def pp_sample(lm, n, *, key, chunk=4096, **kwargs):
    return sample.sample(lm, PROMPT, n, MAX_NEW, key=key, chunk=chunk, **kwargs)


def test_same_key_n_same_samples_and_one_compile_per_chunk_shape(lm):
    a = pp_sample(lm, 300, key=jax.random.key(3), chunk=128)
    b = pp_sample(lm, 300, key=3, chunk=128)  # an int seed is jax.random.key(seed)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.logp, b.logp)
    assert b.seed == 3 and b.chunk == 128 and len(b) == 300
    c = pp_sample(lm, 300, key=4, chunk=128)
    assert not np.array_equal(a.tokens, c.tokens)
    # The draws are counts down the trie: the chunk size only batches the model calls.
    assert np.array_equal(pp_sample(lm, 300, key=3, chunk=64).tokens, a.tokens)
    assert "Samples(n=300" in repr(a) and '"paths"' in a.to_json()
    # The per-particle sampler compiles once per chunk shape: more chunks or new parameters add nothing.
    stream = lambda model, n, key: list(ancestral.stream(model, PROMPT, n, MAX_NEW, key=key, chunk=128))
    first = stream(lm, 300, 3)
    compiled = ancestral.sample_chunk._cache_size()
    stream(lm, 1000, 5)
    stream(random_lm(7), 200, 5)
    assert ancestral.sample_chunk._cache_size() == compiled
    # The first chunk of a longer run is the same chunk.
    assert np.array_equal(stream(lm, 128, 3)[0].tokens, first[0].tokens)


def _warp_reference(logp_V: np.ndarray, temperature, top_k, top_p) -> np.ndarray:
    """Host float64 temperature -> top-k -> top-p, renormalised."""
    x = logp_V / temperature
    if top_k is not None:
        x = np.where(x >= np.sort(x)[-top_k], x, -np.inf)
    if top_p is not None:
        order = np.argsort(-x, kind="stable")
        probs = np.exp(x[order] - np.logaddexp.reduce(x))
        keep = np.sum(np.cumsum(probs) - probs < top_p)
        x = np.where(x >= x[order][keep - 1], x, -np.inf)
    return x - np.logaddexp.reduce(x)


@pytest.mark.parametrize("warp", [dict(temperature=0.5), dict(top_k=2), dict(temperature=2.0, top_p=0.6)])
def test_warped_proposals_record_their_log_probs(lm, warp):
    """logq equals a float64 host reference of the warped distribution; first tokens follow it (chi-square, 1e-3)."""
    samples = pp_sample(lm, 4096, key=1, **warp)
    rows = 64
    ids = np.zeros((rows, lm.max_len), np.int32)
    for i in range(rows):
        ids[i, : len(PROMPT) + samples.lengths[i]] = [*PROMPT, *samples.tokens[i, : samples.lengths[i]]]
    full = np.asarray(_full_logprobs(lm, ids), np.float64)
    for i in range(rows):
        steps = [_warp_reference(full[i, len(PROMPT) - 1 + t], warp.get("temperature", 1.0), warp.get("top_k"),
                                 warp.get("top_p"))[samples.tokens[i, t]] for t in range(samples.lengths[i])]
        assert abs(sum(steps) - samples.logq[i]) < 1e-4
    first = _warp_reference(full[0, len(PROMPT) - 1], warp.get("temperature", 1.0), warp.get("top_k"),
                            warp.get("top_p"))
    counts = np.bincount(samples.tokens[:, 0], minlength=lm.vocab_size)
    assert counts[first == -np.inf].sum() == 0
    stat, df = chi_square(counts[first > -np.inf], np.exp(first[first > -np.inf]))
    assert stat < chi2_quantile(max(df, 1), 1e-3)


def test_proposal_model_samples_are_scored_under_the_target(lm, other_lm, table):
    samples = pp_sample(lm, 512, key=2, proposal=other_lm, proposal_prompt=[0, 3])
    proposal_table = as_dict(pp.enumerate_paths(other_lm, [0, 3], MAX_NEW))
    exact = as_dict(table)
    paths = [tuple(r[:n]) for r, n in zip(samples.tokens.tolist(), samples.lengths.tolist())]
    np.testing.assert_allclose(samples.logp, [exact[p] for p in paths], atol=1e-5)
    np.testing.assert_allclose(samples.logq, [proposal_table[p] for p in paths], atol=1e-5)


def test_dfa_reach_matches_brute_force():
    """reach[k, s]: some continuation of at most k tokens (ending at EOS or after exactly k) is accepted."""
    eos = TOKENIZER.eos_id
    for pattern in ["[ab]*", "c?d", "a.b", "(ab|ba)c?"]:
        dfa = pp.Regex(pattern).dfa(TOKENIZER)
        reach = dfa.reach(3, eos)
        for k in range(4):
            for s in range(dfa.n_states):
                ok = dfa.accepting[s] if k == 0 else False
                for m in range(1, k + 1):
                    for seq in itertools.product(range(TOKENIZER.vocab_size), repeat=m):
                        if eos in seq[:-1] or (m < k and seq[-1] != eos):
                            continue
                        state = s
                        for t in seq:
                            state = dfa.transitions[state, t]
                        ok |= bool(dfa.accepting[state])
                assert reach[k, s] == ok, (pattern, k, s)


def test_guided_samples_all_end_in_the_set(lm):
    dfa = pp.Regex("(ab|ba)c?").dfa(TOKENIZER)
    parts = list(sample.stream(lm, PROMPT, 512, MAX_NEW, key=0, proposal=proposal.Proposal(guided=True), dfa=dfa))
    accepted = np.concatenate([p.extras["accepted"] for p in parts])
    tokens = np.concatenate([p.tokens for p in parts])
    assert accepted.all() and dfa.accepts(tokens).all()


# ---------------------------------------------------------------- intervals cover the truth


RARE_SET = pp.Regex(".*d.*d.*d.*")  # at least three d's: mass 1.017e-3 under random_lm(0), like issue 12's .*k.*k.*k.*
BOUNDED = {  # the methods whose intervals are valid at every n; swor draws k = 32 of the 781 paths
    "mc": ("mc", 256, {}), "smc": ("smc", 256, {}), "smc-resampling": ("smc", 256, {"resample": 0.5}),
    "hybrid": ("hybrid", 256, {"min_prob": 0.01}), "swor": ("swor", 32, {}),
}


def _clt_cases(lm, other_lm):
    mass = lambda method, n, **kw: (lambda key: mass_mc(lm, PROMPT, SET, MAX_NEW, method=method, n=n, key=key, **kw))
    return {
        "is-tempered": ("mass", mass("is", 256, temperature=1.5)),
        "is-other-prompt": ("mass", mass("is", 256, proposal=lm, proposal_prompt=[0, 2, 2])),
        "entropy-chain": ("entropy", lambda key: entropy_mc(lm, PROMPT, MAX_NEW, n=256, key=key)),
        "entropy-plain": ("entropy", lambda key: entropy_mc(lm, PROMPT, MAX_NEW, n=256, key=key, estimator="plain")),
        "entropy-swor": ("entropy", lambda key: entropy_mc(lm, PROMPT, MAX_NEW, method="swor", n=32, key=key)),
        "kl-chain": ("kl", lambda key: kl(lm, PROMPT, other_lm, [0, 3], MAX_NEW, method="mc", n=256, key=key)),
        "kl-plain": ("kl", lambda key: kl(lm, PROMPT, other_lm, [0, 3], MAX_NEW, method="mc", n=256, key=key,
                                          estimator="plain")),
    }


CLT_NAMES = ["is-tempered", "is-other-prompt", "entropy-chain", "entropy-plain", "entropy-swor", "kl-chain",
             "kl-plain"]


@pytest.fixture(scope="module")
def truths(lm, other_lm):
    return {"mass": pp.mass(lm, PROMPT, SET, MAX_NEW).value, "rare": pp.mass(lm, PROMPT, RARE_SET, MAX_NEW).value,
            "entropy": pp.entropy(lm, PROMPT, MAX_NEW).value, "kl": kl(lm, PROMPT, other_lm, [0, 3], MAX_NEW).value}


def _covered(run, truth: float) -> int:
    estimates = [run(jax.random.key(1000 + r)) for r in range(REPLICATES)]
    assert all(e.level == 0.95 and e.n > 0 and e.lower <= e.value <= e.upper for e in estimates)
    assert all(e.upper > e.lower for e in estimates)  # a random estimate never gets a zero-width interval
    return sum(e.lower <= truth <= e.upper for e in estimates)


@pytest.mark.slow
@pytest.mark.parametrize("quantity", ["mass", "rare"])
@pytest.mark.parametrize("name", list(BOUNDED))
def test_bounded_intervals_cover_moderate_and_rare_sets(name, quantity, lm, truths):
    """>= 186 of 200 replicates cover (0.93); see the module docstring for the false-failure probability."""
    method, n, options = BOUNDED[name]
    pathset = SET if quantity == "mass" else RARE_SET
    assert (0.1 < truths[quantity] < 0.2) if quantity == "mass" else (5e-4 < truths[quantity] < 2e-3)
    run = lambda key: mass_mc(lm, PROMPT, pathset, MAX_NEW, method=method, n=n, key=key, **options)
    covered = _covered(run, truths[quantity])
    assert covered >= 186, f"{name} on {pathset}: {covered}/{REPLICATES} intervals cover {truths[quantity]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", CLT_NAMES)
def test_clt_intervals_cover_the_exact_value(name, lm, other_lm, truths):
    """>= 180 of 200 replicates cover (false failure 0.0012 at a true 95%)."""
    quantity, run = _clt_cases(lm, other_lm)[name]
    covered = _covered(run, truths[quantity])
    assert covered >= 180, f"{name}: {covered}/{REPLICATES} intervals cover {truths[quantity]}"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mc", "smc"])
def test_error_shrinks_like_one_over_sqrt_n(method, lm, truths):
    sizes = [64, 256, 1024, 4096]
    rmse = []
    for n in sizes:
        errors = [mass_mc(lm, PROMPT, SET, MAX_NEW, method=method, n=n, key=jax.random.key(r), chunk=4096).value
                  - truths["mass"] for r in range(64)]
        rmse.append(math.sqrt(np.mean(np.square(errors))))
    slope = np.polyfit(np.log(sizes), np.log(rmse), 1)[0]
    assert abs(slope + 0.5) < 0.15, (slope, rmse)


# ---------------------------------------------------------------- rare sets, zero hits, reliability


RARE = pp.Regex("[ad]{3}")


@pytest.fixture(scope="module")
def rare_lm():
    return sharp_lm(2, 4.0)


@pytest.mark.slow
def test_rare_regex(rare_lm):
    """Exact mass 3.2e-8: mc sees a hit in 10^4 draws with probability 3e-4; smc's relative sd is
    0.4-1.3% (SIS) and ~1% (resampling) over seeds, so 10% is more than 7 sd."""
    truth = pp.mass(rare_lm, PROMPT, RARE, MAX_NEW).value
    assert 0 < truth < 1e-6
    guided = mass_mc(rare_lm, PROMPT, RARE, MAX_NEW, method="smc", n=10_000, key=0)
    assert abs(guided.value / truth - 1) < 0.1 and guided.reliable
    # Only the bound [0, Z_1] is assumed: the lower end follows the weights, the upper end
    # cannot fall below about Z_1 · log(40) / (0.75 n).
    assert truth / 2 < guided.lower <= truth <= guided.upper <= guided.details["bound"] * 8 / 10_000
    resampled = mass_mc(rare_lm, PROMPT, RARE, MAX_NEW, method="smc", n=10_000, key=0, resample=0.5)
    assert abs(resampled.value / truth - 1) < 0.1 and resampled.lower <= truth <= resampled.upper


def test_zero_hits_give_a_flagged_interval_with_a_valid_upper_end(rare_lm):
    """No mc draw hits a set of mass 3.2e-8 (probability 3e-4 of a hit in 10^4): [0, 1 - 0.025^(1/n)], flagged."""
    truth = pp.mass(rare_lm, PROMPT, RARE, MAX_NEW).value
    plain = mass_mc(rare_lm, PROMPT, RARE, MAX_NEW, method="mc", n=10_000, key=0)
    assert plain.details["hits"] == 0 and plain.value == 0.0
    assert plain.lower == 0.0 <= truth and math.isclose(plain.upper, 1 - 0.025 ** (1 / 10_000), rel_tol=1e-12)
    assert not plain.reliable and plain.reason == "no sample hit the set"
    weighted = mass_mc(rare_lm, PROMPT, RARE, MAX_NEW, method="is", n=256, key=0, temperature=1.5)
    assert weighted.details["hits"] == 0 and (weighted.lower, weighted.upper) == (0.0, 1.0)
    assert not weighted.reliable and "no sample hit the set" in weighted.reason
    distinct = mass_mc(rare_lm, PROMPT, RARE, MAX_NEW, method="swor", n=8, key=0)
    assert distinct.value == 0.0 < distinct.upper and not distinct.reliable


def test_khat_flags_a_heavy_tailed_proposal(lm):
    """Tempering the model to T = 0.3 starves the tails: k-hat of the weights is 0.96 at this seed (> 0.7 by
    ~4 sd of the estimator at n = 1024); at T = 0.5 it is 0.37."""
    heavy = mass_mc(lm, PROMPT, SET, MAX_NEW, method="is", n=1024, key=1, temperature=0.3)
    assert heavy.details["khat"] > 0.7 and not heavy.reliable and "Pareto k-hat" in heavy.reason
    light = mass_mc(lm, PROMPT, SET, MAX_NEW, method="is", n=1024, key=1, temperature=0.5)
    assert light.details["khat"] < 0.7 and light.details["khat_in_set"] < 0.7
    assert light.reliable and light.reason == ""
    assert '"khat": ' in light.to_json() and math.isfinite(light.details["khat"])


def test_small_ess_flags_weighted_methods_only(lm):
    guided = mass_mc(lm, PROMPT, SET, MAX_NEW, method="smc", n=64, key=0)  # ESS <= n = 64 < 100
    assert not guided.reliable and guided.reason.startswith("effective sample size")
    plain = mass_mc(lm, PROMPT, SET, MAX_NEW, method="mc", n=64, key=0)
    assert plain.details["hits"] > 0 and plain.reliable


def test_smc_interval_when_only_the_first_step_is_restricted(lm):
    """Every weight equals Z_1 = P(set): zero variance, but the interval assumes only the bound [0, Z_1]."""
    truth = pp.mass(lm, PROMPT, "a.*", MAX_NEW).value
    for options in ({}, {"resample": 0.5}):
        est = mass_mc(lm, PROMPT, "a.*", MAX_NEW, method="smc", n=512, key=0, **options)
        assert est.stderr == 0.0 and abs(est.value - truth) < 1e-6 * truth
        assert abs(est.details["bound"] - truth) < 1e-6 * truth
        assert est.lower < truth < est.upper < truth * (1 + 1e-4)  # the upper end is Z_1 widened for float32
    assert est.lower < 0.99 * truth  # 8 replicates only


# ---------------------------------------------------------------- hybrid and swor


@pytest.mark.parametrize("pattern", ["a.*", "[ab]*", "c?d", ".*b", "(ab|ba)c?"])
def test_hybrid_never_leaves_the_exact_bounds(lm, pattern):
    truth = pp.mass(lm, PROMPT, pattern, MAX_NEW).value
    as_predicate = pp.Predicate(lambda text: re.fullmatch(pattern, text, re.DOTALL) is not None)
    for min_prob in (1e-3, 1e-2, 0.05):
        for pathset in (pp.Regex(pattern), as_predicate):
            bounds = pp.mass(lm, PROMPT, pathset, MAX_NEW, min_prob=min_prob)  # the exact engine, same set
            for seed in range(3):
                est = mass_mc(lm, PROMPT, pathset, MAX_NEW, method="hybrid", n=64, key=seed, min_prob=min_prob)
                slack = 1e-7  # float32 per-token log-probs in different batch shapes
                assert bounds.lower - slack <= est.details["proven_lower"] and est.lower <= est.value
                assert est.value <= est.upper and est.details["proven_upper"] <= bounds.upper + slack
                assert est.details["proven_lower"] - slack <= truth <= est.details["proven_upper"] + slack
                # The interval is the proven bounds' share, widened only for float32 rounding.
                low, high = widen((est.details["proven_lower"], est.details["proven_upper"]), MAX_NEW)
                assert low <= est.lower and est.upper <= high


def test_hybrid_frontier_accounts_for_all_mass(lm):
    head = hybrid.walk_head(lm, np.asarray(PROMPT, np.int32), pp.Regex("[ab]*"), MAX_NEW, min_prob=0.01, chunk=8,
                            budget=pp.Budget())
    total = np.logaddexp.reduce([head.log_in, head.log_out, *head.logp])
    assert abs(math.exp(total) - 1) < 1e-6
    exact = as_dict(pp.enumerate_paths(lm, PROMPT, MAX_NEW))
    for row, logp in zip(head.tokens, head.logp):
        prefix = tuple(row[row >= 0])
        below = [lp for path, lp in exact.items() if path[: len(prefix)] == prefix]
        assert abs(np.logaddexp.reduce(below) - logp) < 1e-5 and logp < math.log(0.01)


def test_swor_with_every_path_is_exact(lm, table):
    for pattern in ["[ab]*", "c?d"]:
        est = mass_mc(lm, PROMPT, pattern, MAX_NEW, method="swor", n=len(table), key=0)
        truth = pp.mass(lm, PROMPT, pattern, MAX_NEW).value
        assert est.exact and abs(est.value - truth) < 1e-6
    h = entropy_mc(lm, PROMPT, MAX_NEW, method="swor", n=len(table) + 5, key=1)
    assert h.exact and abs(h.value - pp.entropy(lm, PROMPT, MAX_NEW).value) < 1e-5


def test_swor_paths_are_distinct_and_exactly_scored(lm, table):
    drawn = swor.sample_distinct(lm, PROMPT, 100, MAX_NEW, key=3)
    paths = [tuple(r[:n]) for r, n in zip(drawn.tokens.tolist(), drawn.lengths.tolist())]
    exact = as_dict(table)
    assert len(set(paths)) == 100 and not drawn.complete
    np.testing.assert_allclose(drawn.logp, [exact[p] for p in paths], atol=1e-5)
    assert np.all(drawn.log_q <= 0) and np.isfinite(drawn.kappa)


# ---------------------------------------------------------------- KL and entropy


def test_kl_exact_matches_brute_force(lm, other_lm, table):
    a = as_dict(table)
    b = as_dict(pp.enumerate_paths(other_lm, [0, 3], MAX_NEW))
    reference = sum(math.exp(lp) * (lp - b[path]) for path, lp in a.items())
    est = kl(lm, PROMPT, other_lm, [0, 3], MAX_NEW)
    assert est.exact and abs(est.value - reference) < 1e-5
    assert kl(lm, PROMPT, lm, PROMPT, MAX_NEW).value == 0.0
    same = kl(lm, PROMPT, lm, PROMPT, MAX_NEW, method="mc", n=256, key=0)
    assert same.value == 0.0 and same.upper == 0.0


def test_kl_is_infinite_when_b_cannot_emit_what_a_does():
    lang = pp.get_language("arith")
    truth = lang.truth()
    model = random_lm(0, lang.tokenizer)
    prompt = lang.tokenizer.encode("^5+1=6;4+5=")
    est = kl(model, prompt, truth, prompt, 2, method="mc", n=64, key=0)
    assert est.value == math.inf and est.exact
    assert kl(model, prompt, truth, prompt, 2).value == math.inf
    assert math.isfinite(kl(truth, prompt, model, prompt, 2).value)


@pytest.mark.parametrize("method, done", [("mc", [256, 768, 1000]), ("is", [256, 512, 768, 1000])])
def test_running_estimates_stream_per_chunk(lm, method, done):
    """mc draws counts in blocks of chunk, 2 chunk, 4 chunk, ...; per-particle samplers stream chunk by chunk."""
    seen = []
    final = mass_mc(lm, PROMPT, SET, MAX_NEW, method=method, n=1000, key=0, chunk=256,
                    on_chunk=lambda done, total, est: seen.append((done, total, est.value)))
    assert [s[0] for s in seen] == done and all(s[1] == 1000 for s in seen)
    assert seen[-1][2] == final.value and final.n == 1000 and final.seed == 0


def _interrupt_after_two_chunks(done, total, running):
    if done >= 2 * 64:
        raise KeyboardInterrupt


INTERRUPTIBLE = {
    "mc": lambda lm, **kw: mass_mc(lm, PROMPT, SET, MAX_NEW, method="mc", **kw),
    "is": lambda lm, **kw: mass_mc(lm, PROMPT, SET, MAX_NEW, method="is", temperature=1.5, **kw),
    "smc": lambda lm, **kw: mass_mc(lm, PROMPT, SET, MAX_NEW, method="smc", **kw),
    "smc-resampling": lambda lm, **kw: mass_mc(lm, PROMPT, SET, MAX_NEW, method="smc", resample=0.5, particles=16,
                                               **kw),  # a chunk is a replicate of 16 particles
    "hybrid": lambda lm, **kw: mass_mc(lm, PROMPT, SET, MAX_NEW, method="hybrid", min_prob=0.01, **kw),
    "entropy": lambda lm, **kw: entropy_mc(lm, PROMPT, MAX_NEW, **kw),
}


@pytest.mark.parametrize("name", list(INTERRUPTIBLE))
def test_ctrl_c_returns_the_estimate_of_the_chunks_drawn(lm, name):
    """Ctrl-C (here: on_chunk raising after the second chunk) returns those chunks' estimate.

    Chunk i draws with fold_in(key, i), so they are the samples of a shorter run: the
    same value; the interval is the one of the run that was planned (n = 1024). Chunks
    hold 64 samples, except the count-based blocks of mc (64, then 128).
    """
    run = INTERRUPTIBLE[name]
    drawn = 192 if name in ("mc", "entropy") else 128
    stopped = run(lm, n=1024, key=5, chunk=64, on_chunk=_interrupt_after_two_chunks)
    short = run(lm, n=drawn, key=5, chunk=64)
    assert stopped.interrupted and not short.interrupted
    assert stopped.n == short.n == drawn and stopped.value == short.value
    assert stopped.lower <= stopped.value <= stopped.upper and stopped.level == 0.95
    assert stopped.seed == 5 and stopped.key_data == short.key_data


def test_every_estimate_records_its_key(lm):
    key = jax.random.fold_in(jax.random.key(7), 3)  # no integer seed describes this key
    raw = tuple(int(x) for x in np.asarray(jax.random.key_data(key)))
    for method, n in [("mc", 64), ("is", 64), ("smc", 64), ("swor", 8), ("hybrid", 64)]:
        est = mass_mc(lm, PROMPT, SET, MAX_NEW, method=method, n=n, key=key)
        assert est.seed is None and est.key_data == raw, method
        again = mass_mc(lm, PROMPT, SET, MAX_NEW, method=method, n=n, key=np.asarray(est.key_data, np.uint32))
        assert again.value == est.value and again.key_data == raw, method
    assert entropy_mc(lm, PROMPT, MAX_NEW, n=64, key=key).key_data == raw
    assert mass_mc(lm, PROMPT, SET, MAX_NEW, method="mc", n=64, key=9).key_data == sample.as_key(9)[2]


# ---------------------------------------------------------------- errors


def test_clear_errors(lm):
    with pytest.raises(PathprobError, match="unknown method"):
        mass_mc(lm, PROMPT, SET, MAX_NEW, method="magic", n=10, key=0)
    with pytest.raises(PathprobError, match="takes no option"):
        mass_mc(lm, PROMPT, SET, MAX_NEW, method="mc", n=10, key=0, temperature=2.0)
    with pytest.raises(PathprobError, match="DFA"):
        mass_mc(lm, PROMPT, pp.Predicate(lambda t: True), MAX_NEW, method="smc", n=10, key=0)
    with pytest.raises(PathprobError, match="positive integer"):
        mass_mc(lm, PROMPT, SET, MAX_NEW, method="mc", n=0, key=0)
    with pytest.raises(PathprobError, match="key"):
        mass_mc(lm, PROMPT, SET, MAX_NEW, method="mc", n=10, key=None)
    with pytest.raises(PathprobError, match="temperature"):
        sample.sample(lm, PROMPT, 10, MAX_NEW, key=0, temperature=0.0)
    with pytest.raises(PathprobError, match="estimator"):
        entropy_mc(lm, PROMPT, MAX_NEW, n=10, key=0, estimator="magic")
    assert set(montecarlo.MASS_METHODS) == {"mc", "is", "smc", "swor", "hybrid"}
    assert set(montecarlo.ENTROPY_METHODS) == {"mc", "swor"}
    assert smc.MIN_REPLICATES >= 2


def test_every_method_has_the_one_signature():
    """The registry's functions take the shared keywords plus exactly their declared options."""
    shared = {"n", "key", "level", "chunk", "on_chunk"}
    for name, method in montecarlo.METHODS.items():
        assert method.name == name and method.summary
        for fn, positional, options in [(method.mass, ["lm", "prompt", "pathset", "max_new"], method.options),
                                        (method.entropy, ["lm", "prompt", "max_new"], method.entropy_options)]:
            if fn is None:
                continue
            params = inspect.signature(fn).parameters
            assert [p for p in params if params[p].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD][:len(positional)] \
                == positional, name
            keywords = {p for p, v in params.items() if v.kind == inspect.Parameter.KEYWORD_ONLY}
            assert keywords == shared | set(options), (name, keywords ^ (shared | set(options)))
