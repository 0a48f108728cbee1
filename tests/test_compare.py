"""compare / narrowing_curve / the batched multi-prompt engine against brute force and the single-prompt engines."""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pathprob as pp
from pathprob.analysis.compare import compare, divergences_exact, js_mc, narrowing_exact
from pathprob.analysis.narrowing import mean_interval, narrowing_curve
from pathprob.config import ModelConfig
from pathprob.data.tokenizer import Tokenizer
from pathprob.models.transformer import TransformerLM, init_transformer
from pathprob.paths import frontier
from pathprob.paths.enumerate import Budget
from pathprob.paths.intervals import t_quantile
from pathprob.paths.enumerate import enumerate_many
from test_cli import assert_one_line_error, invoke

TOKENIZER = Tokenizer(tokens=("^", "a", "b", "c", "d", "$"), eos="$", bos="^")
CFG = ModelConfig(vocab_size=6, max_len=16, d_model=16, n_layers=1, n_heads=2, d_ff=32)  # small: compiles fast
PROMPTS = ["^ab", "^abcd", "^c", "^a"]  # shared BOS, different lengths, one a prefix of another
MAX_NEW = 3


@pytest.fixture(scope="module")
def lm():
    return TransformerLM.from_module(init_transformer(CFG, 3), TOKENIZER)


@pytest.fixture(scope="module")
def truth():
    return pp.open_model("truth:concepts")


@jax.jit
def _full_logprobs(lm, ids_NT):
    return jax.nn.log_softmax(lm.module(ids_NT))


def brute_force(lm, prompt: str, max_new: int) -> dict:
    """{path: log p} of every path, each scored by one full causal forward pass, summed in float64."""
    ids = [TOKENIZER.bos_id, *TOKENIZER.encode(prompt[1:])]
    eos = lm.eos_id
    paths = [seq for n in range(1, max_new + 1) for seq in itertools.product(range(lm.vocab_size), repeat=n)
             if eos not in seq[:-1] and (n == max_new or seq[-1] == eos)]
    batch = np.zeros((len(paths), lm.max_len), np.int32)
    for row, seq in zip(batch, paths):
        row[: len(ids) + len(seq)] = [*ids, *seq]
    logprobs = np.asarray(_full_logprobs(lm, jnp.asarray(batch)), np.float64)
    start = len(ids) - 1
    return {seq: float(sum(logprobs[i, start + t, tok] for t, tok in enumerate(seq))) for i, seq in enumerate(paths)}


def as_dict(table) -> dict:
    return {tuple(row[:m].tolist()): float(lp) for row, m, lp in zip(table.tokens, table.lengths, table.logp)}


# --- the batched engine ----------------------------------------------------------------------------


@pytest.mark.parametrize("min_prob", [0.0, 2e-3])
def test_batched_equals_per_prompt(lm, min_prob):
    tables = enumerate_many(lm, PROMPTS, MAX_NEW, min_prob=min_prob)
    for prompt, table in zip(PROMPTS, tables):
        ref = pp.enumerate_paths(lm, prompt, MAX_NEW, min_prob=min_prob)
        got, want = as_dict(table), as_dict(ref)
        assert got.keys() == want.keys()
        # Same model, same per-token float32 log-probs up to rounding (shared prefix + suffix softmax).
        assert max(abs(got[x] - want[x]) for x in want) <= 1e-5
        assert [tuple(r) for r in table.tokens[:5].tolist()] == [tuple(r) for r in ref.tokens[:5].tolist()]
        assert table.stats["nodes"] == ref.stats["nodes"]
        assert abs(math.exp(table.log_remaining) - math.exp(ref.log_remaining)) <= 1e-6
        for key in ("remainder_entropy_lower", "remainder_entropy_upper"):
            assert abs(table.stats[key] - ref.stats[key]) <= 1e-5


def test_batched_equals_per_prompt_on_the_truth(truth):
    prompts = pp.get_language("concepts").prompts(1, n=2, seed=4) + ["^"]
    tables = enumerate_many(truth, prompts, 4, min_prob=1e-4)
    for prompt, table in zip(prompts, tables):
        ref = pp.enumerate_paths(truth, prompt, 4, min_prob=1e-4)
        got, want = as_dict(table), as_dict(ref)
        assert got.keys() == want.keys()
        assert max(abs(got[x] - want[x]) for x in want) <= 1e-5


def test_prompt_width_gives_the_same_tables_and_one_compile(lm):
    padded = enumerate_many(lm, PROMPTS, MAX_NEW, prompt_width=6)
    for a, b in zip(padded, enumerate_many(lm, PROMPTS, MAX_NEW)):
        got, want = as_dict(a), as_dict(b)
        assert got.keys() == want.keys() and max(abs(got[x] - want[x]) for x in want) <= 1e-5
    # Other prompts (other lengths) with the same room: no new program anywhere.
    before = (frontier._start._cache_size(), frontier._expand_into._cache_size())
    enumerate_many(lm, ["^dd", "^bcd", "^d", "^cc"], MAX_NEW, prompt_width=6)
    assert (frontier._start._cache_size(), frontier._expand_into._cache_size()) == before


def test_second_batch_of_the_same_length_triggers_no_trace(lm):
    enumerate_many(lm, ["^ab", "^cd"], MAX_NEW)
    before = (frontier._start._cache_size(), frontier._expand_into._cache_size())
    enumerate_many(lm, ["^ba", "^dc"], MAX_NEW)
    assert (frontier._start._cache_size(), frontier._expand_into._cache_size()) == before


# --- compare against the engines and brute force ---------------------------------------------------


def test_compare_matches_engines_and_brute_force(lm):
    regex = "a.*"
    prompts = ["^ab", "^cd", "^ba"]  # one length: the single-prompt references compile once
    result = compare(lm, prompts, MAX_NEW, pathset=pp.Regex(regex), method="exact")
    truths = [brute_force(lm, p, MAX_NEW) for p in prompts]
    for prompt, row, truth in zip(prompts, result.rows, truths):
        assert row.method == "exact" and row.entropy.exact
        # Per-path log p agree to 1e-5 with the single-prompt engine (float32 rounding), so do these sums.
        assert abs(row.entropy.value - pp.entropy(lm, prompt, MAX_NEW).value) <= 1e-5
        assert abs(row.set_mass.value - pp.mass(lm, prompt, regex, MAX_NEW).value) <= 1e-5
        probs = np.sort(np.exp(np.array(list(truth.values()))))[::-1]
        h = float(-np.sum(probs * np.log(probs)))
        assert abs(row.entropy.value - h) <= 1e-5  # float32 per-token log-probs
        assert abs(row.effective_paths[0] - math.exp(h)) <= 1e-4 * math.exp(h)
        cumulative = np.cumsum(probs)
        for level in (0.5, 0.9, 0.99):
            need = int(np.searchsorted(cumulative, level)) + 1
            assert row.coverage[str(level)] == {"n": need, "bound": "exact"}
        best = max(truth, key=truth.get)
        assert row.top[0][0] == TOKENIZER.decode(list(best)) and abs(row.top[0][1] - math.exp(truth[best])) < 1e-6
    for pair in result.pairs:
        pa, pb = truths[pair.a], truths[pair.b]
        kl_ab = sum(math.exp(pa[x]) * (pa[x] - pb[x]) for x in pa)
        kl_ba = sum(math.exp(pb[x]) * (pb[x] - pa[x]) for x in pb)
        js = 0.0
        for x in pa:
            p, q = math.exp(pa[x]), math.exp(pb[x])
            m = 0.5 * (p + q)
            js += 0.5 * p * math.log(p / m) + 0.5 * q * math.log(q / m)
        assert pair.kl_ab.exact and abs(pair.kl_ab.value - kl_ab) <= 1e-5
        assert abs(pair.kl_ba.value - kl_ba) <= 1e-5
        assert pair.js.exact and abs(pair.js.value - js) <= 1e-5
        # The narrowing test: b's mass on a's smallest top-0.9 set, by brute force.
        order = sorted(pa, key=lambda x: -pa[x])
        cumulative = np.cumsum([math.exp(pa[x]) for x in order])
        support = order[: int(np.searchsorted(cumulative, 0.9)) + 1]
        assert abs(pair.narrowing["0.9"].value - sum(math.exp(pb[x]) for x in support)) <= 1e-5


def test_pruned_divergences_are_proven_bounds(lm):
    a, b = "^ab", "^ba"
    pa, pb = brute_force(lm, a, MAX_NEW), brute_force(lm, b, MAX_NEW)
    kl_ab = sum(math.exp(pa[x]) * (pa[x] - pb[x]) for x in pa)
    js = sum(0.5 * math.exp(pa[x]) * math.log(2 * math.exp(pa[x]) / (math.exp(pa[x]) + math.exp(pb[x])))
             + 0.5 * math.exp(pb[x]) * math.log(2 * math.exp(pb[x]) / (math.exp(pa[x]) + math.exp(pb[x]))) for x in pa)
    ta, tb = enumerate_many(lm, [a, b], MAX_NEW, min_prob=0.02)
    assert ta.remaining > 0.05  # pruning matters here
    div = divergences_exact(lm, a, ta, lm, b, tb)
    assert not div["kl_ab"].exact and div["kl_ab"].lower <= kl_ab + 1e-6 and div["kl_ab"].upper == math.inf
    assert div["js"].lower <= js + 1e-6 <= div["js"].upper + 2e-6
    assert div["js"].lower < div["js"].upper
    # Entropy and coverage from the pruned listing: bounds and lower-bound counts.
    result = compare(lm, [a], MAX_NEW, method="exact", min_prob=0.02)
    row = result.rows[0]
    h = -sum(math.exp(lp) * lp for lp in pa.values())
    assert row.entropy.lower - 1e-6 <= h <= row.entropy.upper + 1e-6
    need = int(np.searchsorted(np.cumsum(sorted(np.exp(list(pa.values())), reverse=True)), 0.99)) + 1
    assert row.coverage["0.99"]["bound"] == "at_least" and row.coverage["0.99"]["n"] <= need


def test_narrowing_of_a_prompt_with_itself_is_one(lm):
    (table,) = enumerate_many(lm, ["^ab"], MAX_NEW)
    est = narrowing_exact(table, lm, "^ab", 1.0)
    assert est.exact and abs(est.value - 1.0) <= 1e-5  # sum of float32-rounded probabilities
    result = compare(lm, ["^ab", "^ab"], MAX_NEW, method="exact", narrowing_p=(1.0, 0.9))
    pair = result.pairs[0]
    assert abs(pair.narrowing["1.0"].value - 1.0) <= 1e-5
    assert abs(pair.narrowing["0.9"].value - pair.narrowing["0.9"].details["p"]) <= 0.2  # mass of its own top-0.9
    assert pair.kl_ab.value <= 1e-9 and pair.js.value <= 1e-9


def test_auto_picks_exact_when_enumerable_and_mc_otherwise(lm):
    prompts = ["^ab", "^cd"]
    exact = compare(lm, prompts, MAX_NEW, method="auto")
    assert [r.method for r in exact.rows] == ["exact", "exact"] and all(p.js.exact for p in exact.pairs)
    tiny = Budget(max_nodes=5)
    mc = compare(lm, prompts, MAX_NEW, method="auto", budget=tiny, n=256, key=1)
    assert [r.method for r in mc.rows] == ["mc", "mc"]
    assert all("budget" in r.reason for r in mc.rows)
    assert mc.rows[0].entropy.method == "mc" and mc.rows[0].entropy.n == 256
    assert mc.pairs[0].js.method == "mc" and mc.pairs[0].narrowing["0.9"] is None
    with pytest.raises(pp.BudgetExceededError):
        compare(lm, prompts, MAX_NEW, method="exact", budget=tiny)
    text = repr(mc)
    assert "mc" in text and "JS" in text
    json.loads(mc.to_json())


def test_js_mc_interval_covers_the_exact_value(lm):
    a, b = "^ab", "^ba"
    exact = divergences_exact(lm, a, *enumerate_many(lm, [a], MAX_NEW), lm, b, *enumerate_many(lm, [b], MAX_NEW))["js"]
    # 95% intervals from 5 seeds: all miss with probability 0.05^5 if the estimator were right; require >= 4 hits
    # (false-failure probability about 2e-5).
    hits = 0
    for seed in range(5):
        est = js_mc(lm, a, lm, b, MAX_NEW, n=2048, key=seed)
        hits += est.lower <= exact.value <= est.upper
    assert hits >= 4


def test_compare_with_truth_gives_kl_truth_model(truth):
    lang = pp.get_language("concepts")
    prompts = [lang.prompts(1, n=1, seed=2)[0], lang.prompts(2, n=1, seed=2)[0]]
    result = compare(truth, prompts, 3, truth=truth, method="exact")
    assert len(result.truth_rows) == 2
    for row, trow, kl in zip(result.rows, result.truth_rows, result.kl_truth_model):
        assert abs(row.entropy.value - trow.entropy.value) <= 1e-12
        assert kl.exact and abs(kl.value) <= 1e-9
    direct = pp.kl(truth, prompts[0], truth, prompts[1], 3)
    assert abs(result.pairs[0].kl_ab.value - direct.value) <= 1e-6


# --- the narrowing curve ---------------------------------------------------------------------------


def test_truth_narrowing_curve_decreases_with_examples():
    curve = narrowing_curve(None, "concepts", n_examples=(0, 1, 2, 4), n_prompts=16, key=0, truth_min_prob=1e-5)
    assert curve.model_mean is None and curve.methods == {"truth": ["exact"] * 4}
    assert np.all(np.diff(curve.truth_mean) < 0)
    assert abs(curve.posterior_mean[0] - 1 / 8) <= 1e-6  # uniform prior over 8 concepts
    assert np.all(np.diff(curve.posterior_mean) > 0)
    assert np.all(curve.truth_lower <= curve.truth_mean) and np.all(curve.truth_mean <= curve.truth_upper)
    data = curve.to_dict()
    for key in ("k", "truth_mean", "truth_lower", "truth_upper", "posterior_mean"):
        assert len(data[key]) == 4
    # k = 0: every prompt is BOS alone, so every prompt has the same bounds, and the interval holds them.
    bounds = curve.per_prompt["truth_0"]
    # (equal up to float32 rounding: rows in chunks of different compiled sizes may round differently)
    assert np.ptp(bounds["lower"]) <= 1e-5 and np.ptp(bounds["upper"]) <= 1e-5
    assert curve.truth_lower[0] <= min(bounds["lower"]) and max(bounds["upper"]) <= curve.truth_upper[0]


def test_narrowing_curve_with_a_model_and_prefix_consistent_prompts(truth):
    curve = narrowing_curve(truth, "concepts", n_examples=(0, 2), n_prompts=4, key=3, max_new=3, min_prob=1e-6)
    assert np.allclose(curve.model_mean, curve.truth_mean)
    assert curve.methods["model"] == ["exact", "exact"]


def test_mean_interval_equal_bounds_is_the_t_interval_and_bounds_widen_it():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20)
    mean, lo, hi = mean_interval(x, x)
    margin = t_quantile(0.95, 19) * np.std(x, ddof=1) / math.sqrt(20)
    assert abs(mean - x.mean()) <= 1e-12 and abs(lo - (x.mean() - margin)) <= 1e-12
    assert abs(hi - (x.mean() + margin)) <= 1e-12
    w = rng.uniform(0, 0.3, size=20)
    _, lo2, hi2 = mean_interval(x - w, x + w)
    # Any true values inside the boxes give a t-interval inside the propagated one.
    for _ in range(200):
        h = x + w * rng.uniform(-1, 1, size=20)
        _, a, b = mean_interval(h, h)
        assert lo2 <= a and b <= hi2


# --- command line ----------------------------------------------------------------------------------

def test_cli_compare_and_narrow(tmp_path):
    result = invoke("compare", "truth:concepts", "--prompt", "^abcde;", "--prompt", "^", "--max-new", 3,
                    "--truth", "truth:concepts", "--set", "a.*", "--json", tmp_path / "c.json")
    assert result.exit_code == 0, result.output
    assert "exp(H)" in result.output and "JS" in result.output and "KL(truth || model)" in result.output
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["pairs"][0]["a"] == 1 and len(data["rows"]) == 2
    result = invoke("narrow", "truth:concepts", "--language", "concepts", "--n-prompts", 4, "--k", "0,1",
                    "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["k"] == [0, 1]


def test_cli_bad_input_is_one_line():
    assert_one_line_error(invoke("compare", "truth:concepts", "--prompt", "^xyz!", "--max-new", 3), "vocabulary")
    assert_one_line_error(invoke("compare", "truth:concepts", "--prompt", "^a", "--max-new", 3, "--method", "magic"),
                          "method")
    assert_one_line_error(invoke("narrow", "truth:concepts", "--language", "arith", "--n-prompts", 4), "concepts")
    assert_one_line_error(invoke("narrow", "truth:concepts", "--k", "0,x", "--n-prompts", 4), "--k")
    result = invoke("compare", "truth:concepts", "--max-new", 3)  # no --prompt at all
    assert result.exit_code == 2
