"""Comparing the path distributions after several prompts: entropy, supports, coverage, divergences, narrowing.

``compare(lm, prompts, max_new)`` measures, per prompt, the path entropy, the
effective number of paths exp(H), the support size (paths with p > 0), how many
paths cover 50/90/99% of the mass, the top paths and (optionally) a set's mass;
between prompts, the Jensen-Shannon divergence, both KLs and the *narrowing tests*
(b's mass on a's top-p set, b's mass outside a's support); against a ``truth`` model,
the same per-prompt numbers for the truth, KL(truth || model), and the model's mass
outside the truth's support (on paths the truth gives probability 0) per prompt.

Exact rows come from one batched enumeration of all prompts (``enumerate_many``).
With pruning (``min_prob``) every exact number carries a proven bound, and a row's
``method`` is "bounded" instead of "exact" when its entropy, support or coverage
bounds differ:

- entropy: ``[listed + r log(1/r) terms, listed + r log(V^k / r) terms]`` (``entropy_from_table``);
- support size, coverage counts, the narrowing tests: ``analysis/supports.py`` (counts
  exact or bounded, masses exact or between proven bounds);
- divergences: the outcomes are the union L of both listings (each path scored exactly
  under both sides) plus one lumped outcome "not in L". A divergence of this coarser
  pair of distributions is a proven *lower* bound on the true one (data-processing
  inequality, for KL and JS alike); JS also gets an upper bound, each lumped path adding
  at most (p + q)/2 · log 2. With complete listings (no remainder) they are exact.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import jax
import numpy as np

from pathprob.analysis.supports import (
    LEVELS,
    Listing,
    coverage_exact,
    mass_in_top_set,
    mass_outside_support,
    support_size,
)
from pathprob.errors import BudgetExceededError, PathprobError
from pathprob.files import dumps
from pathprob.models.base import LanguageModel, encode_prompt
from pathprob.paths.divergence import LOG2, js_mc, js_terms, kl, listed_rest, lumped_kl
from pathprob.paths.enumerate import DEFAULT_BUDGET, DEFAULT_CHUNK, Budget, check_budget, enumerate_many
from pathprob.paths.measure import entropy, entropy_from_table, mass, set_mass_from_table
from pathprob.paths.results import Estimate, PathTable, format_estimate
from pathprob.paths.sample import sample
from pathprob.paths.samples import as_key, check_compatible
from pathprob.paths.sets import PathSet, as_path_set

METHODS = ("auto", "exact", "mc")
NARROWING_P = (0.9, 0.99)
TOP = 5
MAX_PROBS = 1000


@dataclasses.dataclass(frozen=True)
class PromptStats:
    """One prompt's path distribution.

    ``coverage[str(level)]`` = ``{"n": paths needed or None, "bound": "exact" | "at_least"
    | "at_most" | "unknown"}`` (exact listings give exact counts or lower bounds; Monte-Carlo
    rows count distinct sampled paths, an upper bound when they reach the level).
    ``top``: ``[(text, p)]``, most probable first. ``remaining``: the unlisted mass (exact rows).
    ``probs``: the probabilities of the (up to ``MAX_PROBS``) most probable listed or sampled
    paths, decreasing (for coverage curves). ``support``: (lower, upper) on the number of
    paths with p > 0, equal when the enumeration was complete (None for Monte-Carlo rows).
    ``method``: "exact", "bounded" (enumerated, some bounds differ) or "mc".
    """

    prompt: str
    method: str
    entropy: Estimate
    effective_paths: tuple[float, float, float]  # exp(H): value, lower, upper
    coverage: dict
    top: list
    set_mass: Estimate | None = None
    remaining: float | None = None
    reason: str = ""
    probs: list = dataclasses.field(default_factory=list)
    support: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "method": self.method, "entropy": self.entropy.to_dict(),
                "effective_paths": dict(zip(("value", "lower", "upper"), self.effective_paths)),
                "support": None if self.support is None else dict(zip(("lower", "upper"), self.support)),
                "coverage": self.coverage, "top": [{"text": t, "p": p} for t, p in self.top],
                "set_mass": None if self.set_mass is None else self.set_mass.to_dict(),
                "remaining": self.remaining, "reason": self.reason, "probs": self.probs}


@dataclasses.dataclass(frozen=True)
class PairStats:
    """Prompts ``a`` (shorter context) and ``b`` (longer), by index: divergences and the narrowing test.

    ``narrowing[str(p)]``: the mass of b's distribution inside the top-p support of a's
    (smallest set of a's most probable paths covering p), an Estimate with proven bounds;
    ``outside_support``: b's mass on paths a gives probability 0 (0 when b's support is
    inside a's), with proven bounds. Both None when a's or b's distribution was not enumerated.
    """

    a: int
    b: int
    js: Estimate
    kl_ab: Estimate
    kl_ba: Estimate
    narrowing: dict
    outside_support: Estimate | None = None

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "js": self.js.to_dict(), "kl_ab": self.kl_ab.to_dict(),
                "kl_ba": self.kl_ba.to_dict(),
                "narrowing": {p: None if e is None else e.to_dict() for p, e in self.narrowing.items()},
                "outside_support": None if self.outside_support is None else self.outside_support.to_dict()}


@dataclasses.dataclass(frozen=True, repr=False)
class Comparison:
    """The result of ``compare``: per-prompt rows, pairwise rows, and against the truth: its rows,
    KL(truth || model) and ``outside_truth``, the model's mass on paths the truth gives probability 0
    (None per prompt where either was not enumerated)."""

    prompts: list
    max_new: int
    rows: list
    pairs: list
    truth_rows: list | None = None
    kl_truth_model: list | None = None
    pathset: str | None = None
    seconds: float = 0.0
    outside_truth: list | None = None

    def to_dict(self) -> dict:
        estimates = lambda items: None if items is None else [None if e is None else e.to_dict() for e in items]
        return {"prompts": self.prompts, "max_new": self.max_new, "pathset": self.pathset, "seconds": self.seconds,
                "rows": [r.to_dict() for r in self.rows], "pairs": [p.to_dict() for p in self.pairs],
                "truth_rows": None if self.truth_rows is None else [r.to_dict() for r in self.truth_rows],
                "kl_truth_model": estimates(self.kl_truth_model), "outside_truth": estimates(self.outside_truth)}

    def to_json(self, **kwargs) -> str:
        return dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        header = (f"  {'#':>2} {'method':7} {'H (nats)':>24} {'exp(H)':>9} {'support':>14} {'n50':>6} {'n90':>6} "
                  f"{'n99':>6}  top path")
        lines = [f"Comparison({len(self.prompts)} prompts, max_new={self.max_new})", header]
        for i, row in enumerate(self.rows):
            lines.append(f"  {i:>2} {row.method:7} {format_estimate(row.entropy):>24} {row.effective_paths[0]:9.4g} "
                         f"{format_support(row.support):>14} "
                         + " ".join(f"{format_count(row.coverage[str(q)]):>6}" for q in LEVELS)
                         + (f"  {row.top[0][0]!r} {row.top[0][1]:.3g}" if row.top else ""))
        for pair in self.pairs:
            level, narrow = next(iter(pair.narrowing.items()), (None, None))
            lines.append(f"  {pair.a}->{pair.b}: JS {format_estimate(pair.js)}, KL(a||b) {format_estimate(pair.kl_ab)}, "
                         f"KL(b||a) {format_estimate(pair.kl_ba)}"
                         + ("" if narrow is None else f", P_b(top-{level} of a) {format_estimate(narrow)}")
                         + ("" if pair.outside_support is None else
                            f", P_b(outside a's support) {format_estimate(pair.outside_support)}"))
        for i, (est, outside) in enumerate(zip(self.kl_truth_model or [], self.outside_truth or [])):
            lines.append(f"  {i:>2} KL(truth || model) {format_estimate(est)}" + (
                "" if outside is None else f", P_model(outside the truth's support) {format_estimate(outside)}"))
        return "\n".join(lines)


def format_count(entry: dict) -> str:
    n, bound = entry["n"], entry["bound"]
    if n is None:
        return "?"
    return {"exact": f"{n}", "at_least": f">{n - 1}", "at_most": f"<={n}"}.get(bound, "?")


def format_support(support: tuple[int, int] | None) -> str:
    """``n`` when exact, ``lower..upper (bounded)`` when pruned, ``n/a`` for Monte-Carlo rows."""
    if support is None:
        return "n/a"
    return f"{support[0]}" if support[0] == support[1] else f"{support[0]}..{support[1]:.3g} (bounded)"


# --- per prompt ------------------------------------------------------------------------------------


def _exact_row(prompt: str, table: PathTable, pathset: PathSet | None) -> PromptStats:
    lower, upper = entropy_from_table(table)
    est = Estimate(value=0.5 * (lower + upper), lower=lower, upper=upper, method="exact", exact=lower == upper,
                   seconds=table.stats["seconds"], details={"nodes": table.stats["nodes"], "listed_paths": len(table)})
    set_est = None
    if pathset is not None:
        lo, hi = set_mass_from_table(table, pathset)
        set_est = Estimate(value=0.5 * (lo + hi), lower=lo, upper=hi, method="exact", exact=lo == hi)
    top = list(zip(table.texts(with_eos=True)[:TOP], table.probs[:TOP].tolist()))
    coverage, support = coverage_exact(table), support_size(table)
    exact = est.exact and support[0] == support[1] and all(c["bound"] == "exact" for c in coverage.values())
    return PromptStats(prompt=prompt, method="exact" if exact else "bounded", entropy=est,
                       effective_paths=(math.exp(est.value), math.exp(lower), math.exp(upper)),
                       coverage=coverage, top=top, set_mass=set_est, remaining=table.remaining,
                       probs=table.probs[:MAX_PROBS].tolist(), support=support)


def _mc_row(lm, prompt: str, max_new: int, pathset: PathSet | None, n: int, key, reason: str) -> PromptStats:
    est = entropy(lm, prompt, max_new, method="mc", n=n, key=jax.random.fold_in(key, 0))
    drawn = sample(lm, prompt, min(n, 1024), max_new, key=jax.random.fold_in(key, 1))
    distinct = sorted(drawn.counts(), key=lambda e: -e[2])  # by exact probability
    probs = np.exp([lp for _, _, lp in distinct])
    cumulative = np.cumsum(probs)
    coverage = {}
    for level in LEVELS:
        reached = np.nonzero(cumulative >= level)[0]
        coverage[str(level)] = ({"n": int(reached[0]) + 1, "bound": "at_most"} if reached.size
                                else {"n": None, "bound": "unknown"})
    decode = lambda path: lm.tokenizer.decode(list(path))
    top = [(decode(path), float(math.exp(lp))) for path, _, lp in distinct[:TOP]]
    set_est = None
    if pathset is not None:
        set_est = mass(lm, prompt, pathset, max_new, method="mc", n=n, key=jax.random.fold_in(key, 2))
    return PromptStats(prompt=prompt, method="mc", entropy=est,
                       effective_paths=(math.exp(est.value), math.exp(est.lower), math.exp(est.upper)),
                       coverage=coverage, top=top, set_mass=set_est, reason=reason,
                       probs=probs[:MAX_PROBS].tolist())


def _plan(lm, prompts, max_new, method, min_prob, chunk, budget) -> list[str]:
    """'exact' or the reason for Monte Carlo, per prompt (all prompts share the same a-priori bound)."""
    if method == "mc":
        return ["method mc requested"] * len(prompts)
    try:
        check_budget(lm, max_new, min_prob=min_prob, max_paths=None, chunk=chunk, budget=budget)
        return ["exact"] * len(prompts)
    except BudgetExceededError as exc:
        if method == "exact":
            raise
        return [f"not enumerable within the budget ({exc})"] * len(prompts)


def _rows(lm, prompts, max_new, pathset, method, min_prob, chunk, budget, n, key) -> tuple[list, list]:
    """Per-prompt rows and the ``Listing``s behind the enumerated ones (None for Monte-Carlo rows)."""
    plan = _plan(lm, prompts, max_new, method, min_prob, chunk, budget)
    exact = [i for i, p in enumerate(plan) if p == "exact"]
    tables: list = [None] * len(prompts)
    if exact:
        try:
            for i, table in zip(exact, enumerate_many(lm, [prompts[i] for i in exact], max_new, min_prob=min_prob,
                                                      chunk=chunk, budget=budget)):
                tables[i] = table
        except BudgetExceededError as exc:
            if method == "exact":
                raise
            plan = [f"the batched enumeration ran over the budget ({exc})"] * len(prompts)
            tables = [None] * len(prompts)
    rows = [_exact_row(p, t, pathset) if t is not None else
            _mc_row(lm, p, max_new, pathset, n, jax.random.fold_in(key, i), plan[i])
            for i, (p, t) in enumerate(zip(prompts, tables))]
    return rows, [None if t is None else Listing.of(lm, p, t) for p, t in zip(prompts, tables)]


# --- between two distributions ---------------------------------------------------------------------


def divergences_exact(a: Listing, b: Listing) -> dict:
    """KL(a || b), KL(b || a) and JS(a, b) from two enumerations (proven bounds; see the module docstring).

    Paths listed on one side only are scored exactly on the other side (``Listing.logp``).
    """
    union = list(dict.fromkeys(a.paths() + b.paths()))
    log_a, log_b = a.logp(union), b.logp(union)
    # The lumped outcome "not in L"; exactly 0 when a listing is complete (not 1 - sum: rounding).
    rest_a = 0.0 if a.complete else listed_rest(log_a)
    rest_b = 0.0 if b.complete else listed_rest(log_b)
    exact = a.complete and b.complete
    kl_ab = lumped_kl(log_a, log_b, rest_p=rest_a, rest_q=rest_b)
    kl_ba = lumped_kl(log_b, log_a, rest_p=rest_b, rest_q=rest_a)
    log_rest = lambda rest: math.log(rest) if rest > 0 else -math.inf
    terms = js_terms(np.append(log_a, log_rest(rest_a)), np.append(log_b, log_rest(rest_b)))
    js_low = float(np.sum(terms))
    js_high = min(LOG2, float(np.sum(terms[:-1])) + 0.5 * (rest_a + rest_b) * LOG2)
    details = {"paths": len(union), "lumped_a": rest_a, "lumped_b": rest_b,
               "bound": "exact" if exact else "lower bound (data-processing inequality; remainder lumped)"}

    def kl_est(value):
        value = max(value, 0.0)
        return Estimate(value=value, lower=value, upper=value if exact else math.inf, method="exact", exact=exact,
                        details=details)

    js = Estimate(value=max(js_low, 0.0) if exact else 0.5 * (max(js_low, 0.0) + js_high), lower=max(js_low, 0.0),
                  upper=max(js_low, 0.0) if exact else js_high, method="exact", exact=exact, details=details)
    return {"kl_ab": kl_est(kl_ab), "kl_ba": kl_est(kl_ba), "js": js}


# --- the entry point -------------------------------------------------------------------------------


def compare(
    lm: LanguageModel,
    prompts: Sequence[str],
    max_new: int,
    *,
    pathset: PathSet | str | None = None,
    method: str = "auto",
    truth: LanguageModel | None = None,
    min_prob: float = 0.0,
    n: int = 4096,
    key=0,
    chunk: int = DEFAULT_CHUNK,
    budget: Budget = DEFAULT_BUDGET,
    narrowing_p: Sequence[float] = NARROWING_P,
) -> Comparison:
    """Compare the path distributions after ``prompts`` (see the module docstring for every number).

    ``method``: ``exact`` (batched enumeration with ``min_prob``; proven bounds),
    ``mc`` (``n`` samples per quantity, ``key``), or ``auto``: exact when the budget
    allows, else Monte Carlo; each row's ``method`` (and ``reason``) says which.
    Pairs (a, b) are ordered so that a has the shorter prompt. Pairwise numbers are
    exact only when both rows are. With ``truth`` (a LanguageModel on the same
    vocabulary): the truth's rows and KL(truth || model) per prompt. ``narrowing_p``:
    the coverage levels of the narrowing test (default 0.9 and 0.99).
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise PathprobError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    prompts = list(prompts)
    if not prompts:
        raise PathprobError("compare needs at least one prompt")
    for prompt in prompts:
        encode_prompt(lm, prompt, room=max_new)  # bad characters or too long: one clear error, before any work
    if truth is not None:
        check_compatible(lm, truth)
    key, _, _ = as_key(key)
    pathset = None if pathset is None else as_path_set(pathset)
    rows, listings = _rows(lm, prompts, max_new, pathset, method, min_prob, chunk, budget, n,
                           jax.random.fold_in(key, 0))
    sizes = [len(encode_prompt(lm, p)) for p in prompts]
    pairs = []
    for i in range(len(prompts)):
        for j in range(i + 1, len(prompts)):
            a, b = (i, j) if sizes[i] <= sizes[j] else (j, i)
            pair_key = jax.random.fold_in(jax.random.fold_in(key, 1), a * len(prompts) + b)
            pairs.append(_pair(lm, prompts, listings, a, b, max_new, n, pair_key, tuple(narrowing_p)))
    truth_rows = kl_truth = outside_truth = None
    if truth is not None:
        truth_rows, truth_listings = _rows(truth, prompts, max_new, pathset, method, min_prob, chunk, budget, n,
                                           jax.random.fold_in(key, 2))
        kl_truth, outside_truth = [], []
        for i, (prompt, of_truth, of_model) in enumerate(zip(prompts, truth_listings, listings)):
            if of_truth is not None and of_model is not None:
                kl_truth.append(divergences_exact(of_truth, of_model)["kl_ab"])
                outside_truth.append(mass_outside_support(of_truth, of_model))
            else:
                kl_truth.append(kl(truth, prompt, lm, prompt, max_new, method="mc", n=n,
                                   key=jax.random.fold_in(jax.random.fold_in(key, 3), i)))
                outside_truth.append(None)
    return Comparison(prompts=prompts, max_new=max_new, rows=rows, pairs=pairs, truth_rows=truth_rows,
                      kl_truth_model=kl_truth, pathset=None if pathset is None else repr(pathset),
                      seconds=time.perf_counter() - t0, outside_truth=outside_truth)


def _pair(lm, prompts, listings, a: int, b: int, max_new: int, n: int, key, levels: tuple) -> PairStats:
    if listings[a] is not None and listings[b] is not None:
        return PairStats(a=a, b=b, **divergences_exact(listings[a], listings[b]),
                         narrowing={str(p): mass_in_top_set(listings[a], listings[b], p) for p in levels},
                         outside_support=mass_outside_support(listings[a], listings[b]))
    mc = {"n": n, "method": "mc"}
    return PairStats(a=a, b=b, narrowing=dict.fromkeys(map(str, levels)),
                     kl_ab=kl(lm, prompts[a], lm, prompts[b], max_new, key=jax.random.fold_in(key, 0), **mc),
                     kl_ba=kl(lm, prompts[b], lm, prompts[a], max_new, key=jax.random.fold_in(key, 1), **mc),
                     js=js_mc(lm, prompts[a], lm, prompts[b], max_new, n=n, key=jax.random.fold_in(key, 2)))
