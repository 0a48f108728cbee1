"""Every exact job inside its budget: refused before any work in one line naming what to do instead, or
run in chunks that fit; and top-k's peak memory, measured in a subprocess, stays under its budget."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from test_exact import brute_force, random_lm

import pathprob as pp
from pathprob.analysis import ablate as ablate_module
from pathprob import probes
from pathprob.probes import Prober, ProbeSpec
from pathprob.errors import BudgetExceededError
from pathprob.paths import divergence, frontier
from pathprob.paths import score as score_module
from pathprob.paths import trie as trie_module
from pathprob.paths.budget import listed_paths_bound
from pathprob.paths.score import score_paths, scoring_cost
from pathprob.paths.trie import DEFAULT_CHUNK, level_bytes

PROMPT = [0, 1, 2]


def refusal(excinfo) -> str:
    """The refusal's message, checked to be one line."""
    message = str(excinfo.value)
    assert "\n" not in message and "budget" in message
    return message


def must_not_run(*args, **kwargs):
    raise AssertionError("the job ran although its budget check should have refused it first")


@pytest.fixture(scope="module")
def lm():
    return random_lm(0)


def test_kl_exact_is_refused_before_any_work_naming_monte_carlo(lm, monkeypatch):
    monkeypatch.setattr(divergence, "enumerate_paths", must_not_run)
    other = random_lm(1)
    for budget in (pp.Budget(max_nodes=10_000), pp.Budget(max_bytes=1 << 20)):
        t0 = time.perf_counter()
        with pytest.raises(BudgetExceededError) as excinfo:
            pp.kl(lm, PROMPT, other, PROMPT, 6, budget=budget)
        assert time.perf_counter() - t0 < 5.0
        message = refusal(excinfo)
        assert "method='mc'" in message and "pathprob kl ... --method mc -n" in message


def test_score_walks_groups_that_fit_the_budget(lm, monkeypatch):
    truth = brute_force(lm, PROMPT, 2)
    paths = np.full((len(truth), 2), -1, np.int32)
    for row, path in zip(paths, truth):
        row[: len(path)] = path
    per_path = frontier.path_state_bytes(lm, 2)
    # 8 paths per walk, and the float64 result:
    budget = pp.Budget(max_bytes=level_bytes(8, lm.vocab_size, per_path, DEFAULT_CHUNK) + 8 * len(truth))
    assert score_module.group_rows(lm, 2, budget) == 8
    original, groups = score_module.walk, []

    def counted(lm, prompts, max_new, policy, **kwargs):
        groups.append(policy.tokens.shape[0])
        return original(lm, prompts, max_new, policy, **kwargs)

    monkeypatch.setattr(score_module, "walk", counted)
    small = pp.score(lm, PROMPT, paths, budget=budget)
    assert max(groups) == 8 and sum(groups) == len(truth) and len(groups) == -(-len(truth) // 8)
    np.testing.assert_allclose(small, list(truth.values()), atol=1e-5)  # float32 per token, float64 sums
    np.testing.assert_allclose(small, pp.score(lm, PROMPT, paths), atol=1e-6)
    # The same paths as lists of ids: the same scores.
    np.testing.assert_array_equal(pp.score(lm, PROMPT, [list(path) for path in truth]), pp.score(lm, PROMPT, paths))


def test_scoring_cost_says_whether_score_fits(lm):
    """``budget.allows(*scoring_cost(...))`` is exactly whether ``score`` runs or refuses."""
    paths = [[1, 2, 3], [4, 5], [2]] * 7
    nodes, nbytes = scoring_cost(lm, len(paths), 3)
    assert nodes == len(paths) * 3  # at most one evaluation per token of each path
    one_row = scoring_cost(lm, 1, 3)[1]
    for budget, fits in ((pp.Budget(max_nodes=nodes, max_bytes=nbytes), True), (pp.Budget(max_nodes=nodes - 1), False),
                         (pp.Budget(max_bytes=one_row - 1), False)):
        assert budget.allows(*scoring_cost(lm, len(paths), 3, budget)) is fits
        if fits:
            assert pp.score(lm, PROMPT, paths, budget=budget).shape == (len(paths),)
        else:
            with pytest.raises(BudgetExceededError) as excinfo:
                pp.score(lm, PROMPT, paths, budget=budget)
            refusal(excinfo)


def test_listed_paths_bound_holds(lm):
    """The bound behind the KL's and the ablation's checks is never below the paths actually listed."""
    for min_prob in (0.0, 0.05):
        table = pp.enumerate_paths(lm, PROMPT, 2, min_prob=min_prob)
        assert listed_paths_bound(lm, 2, min_prob=min_prob) >= len(table)


def test_top_k_is_refused_up_front_in_one_line(lm):
    t0 = time.perf_counter()
    with pytest.raises(BudgetExceededError) as excinfo:
        pp.top_k(lm, PROMPT, 10**9, 12)
    assert time.perf_counter() - t0 < 1.0
    message = refusal(excinfo)
    assert "at least" in message and "pathprob sample ... -n" in message


def test_probe_is_refused_before_it_runs(monkeypatch):
    language = pp.get_language("arith")
    model = random_lm(0, language.tokenizer)
    prompts = ("^3+6=", "^1+2=")
    prober = Prober(ProbeSpec(prompts=prompts, max_new=2, min_prob=0.0), language)
    root, tokens = prober._tracked
    nodes, _ = scoring_cost(model, tokens.shape[0], 2)
    rows = []
    monkeypatch.setattr(trie_module.frontier, "expand_children", _counting(trie_module.frontier.expand_children, rows))
    encoded = [model.tokenizer.encode(p) for p in prompts]
    score_paths(model, [np.asarray(e) for e in encoded], root, tokens)
    assert 0 < sum(rows) <= nodes  # the cost bounds every evaluation
    prober.budget = pp.Budget(max_nodes=int(nodes) - 1)
    monkeypatch.setattr(probes, "enumerate_many", must_not_run)
    with pytest.raises(BudgetExceededError) as excinfo:
        prober(model)
    assert "probing KL" in refusal(excinfo)


def _counting(expand_children, rows: list):
    def counted(lm, pool, parent, token, chunk, **kwargs):
        rows.append(int(parent.size))
        return expand_children(lm, pool, parent, token, chunk, **kwargs)

    return counted


def test_ablation_kl_is_refused_before_any_work(lm, monkeypatch):
    monkeypatch.setattr(ablate_module, "enumerate_paths", must_not_run)
    with pytest.raises(BudgetExceededError) as excinfo:
        pp.ablate(lm, "uniform", docs=np.array([[0, 1, 2, 5]], np.int32), prompts=["^a"], max_new=6, min_prob=0.0,
                  budget=pp.Budget(max_nodes=10_000))
    assert "min_prob" in refusal(excinfo)


# Peak memory of top-k, in a fresh process: a Transformer whose path states are large (8 layers,
# 30 tokens: 240 KiB each), so the pool dominates and a 256 MiB budget is reached after a few
# hundred expansions. Programs are compiled before the baseline, except the few that each new pool
# capacity needs (a gather, a write, a pad); their memory is outside the budget, which bounds the
# job's data (pool states, heap, tables), and leaves room for them here.
RSS_SCRIPT = """
import json, resource, time
import pathprob as pp
from pathprob.config import ModelConfig
from pathprob.models.transformer import TransformerLM, init_transformer

tokenizer = pp.get_language("concepts").tokenizer
cfg = ModelConfig(vocab_size=tokenizer.vocab_size, max_len=32, d_model=128, n_layers=8, n_heads=4, d_ff=64)
lm = TransformerLM.from_module(init_transformer(cfg, 0), tokenizer)
budget = pp.Budget(max_bytes=256 << 20)
pp.top_k(lm, "^", 1, 30)  # compiles the model's programs
out = []
for k in (10_000, 1_000_000):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        pp.top_k(lm, "^", k, 30, budget=budget)
        message = None
    except pp.BudgetExceededError as err:
        message = str(err)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.append({"k": k, "growth": (peak - before) * 1024, "seconds": time.perf_counter() - t0, "message": message})
print(json.dumps(out))
"""


@pytest.mark.slow
def test_top_k_peak_memory_stays_within_the_budget():
    done = subprocess.run([sys.executable, "-c", RSS_SCRIPT], capture_output=True, text=True, timeout=600, check=True)
    during, up_front = json.loads(done.stdout.splitlines()[-1])
    # k = 10,000 passes the up-front check and is refused during the search, before the pool outgrows the budget.
    assert during["message"] is not None and "reached" in during["message"] and "\n" not in during["message"]
    assert during["growth"] < 256 << 20
    # k = 1,000,000 cannot fit (at least k / V expansions of 240 KiB each): refused before any work.
    assert up_front["message"] is not None and "at least" in up_front["message"] and "\n" not in up_front["message"]
    assert up_front["seconds"] < 1.0 and up_front["growth"] < 8 << 20
