"""Probes of the path distribution while a model trains: entropy, set mass, tracked paths, KL to the truth.

A probe measures, for a few fixed prompts, the distribution over continuation paths of
up to ``max_new`` tokens of the *current* parameters, with the exact engine:

- the path entropy (nats) with proven bounds (enumeration pruned at ``min_prob``);
- the mass of each path set, with proven bounds from the same enumeration (listed paths
  in the set, plus the whole certified remainder as the upper bound);
- the log-probabilities of the tracked paths: the truth's ``track`` most probable paths,
  fixed once per run;
- KL(truth || model) over paths: the truth's paths are enumerated once per run (exactly,
  ``truth_min_prob`` = 0 by default) and scored under the model with the teacher-forced
  scorer; the sum of p_t (log p_t - log p_m) runs on the host in float64. When the truth's
  listing leaves a remainder, the remainder is lumped into one outcome (model side: one minus
  the model's mass on the listed paths), which gives the KL of a coarser partition: a *lower
  bound* on the path KL by the data-processing inequality (``kl_exact`` says which).

Everything on the truth's side is computed once, in ``Prober.__init__``; a probe only runs the
model. Probes use no randomness and never touch the parameters: a run with probes trains
exactly like one without.

Cost. The engine's jitted functions take the model as an argument (parameters are pytree
leaves), so programs compile once per shape; a probe keeps the shapes few and stable:

- all prompts are enumerated in one batched trie walk (``enumerate_many``) with a fixed
  ``prompt_room`` (the longest probe prompt), so prompts of any length share one program set
  (when the batch exceeds the memory budget, e.g. near-uniform initial parameters, the prompts
  are walked one at a time with the same ``prompt_room``);
- the truth's listed paths (the KL and tracked paths) are scored under the model by walking
  their trie (fixed per run) from each prompt's shared cache with the engine's ``start`` and
  ``expand``: every proper prefix is evaluated once (teacher-forcing every path evaluates a
  shared prefix once per path), and every level and every probe runs in the same shapes, so
  it compiles at the first probe only. Per-token log-probabilities are float32 from the
  model's ``start``/``advance``, summed on the host in float64, as ``score`` does.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from pathprob.config import TrainConfig
from pathprob.errors import BudgetExceededError, PathprobError
from pathprob.models.base import LanguageModel, encode_prompt
from pathprob.paths import frontier
from pathprob.paths.budget import DEFAULT_BUDGET, Budget
from pathprob.paths.many import enumerate_many
from pathprob.paths.measure import entropy_from_table, set_mass_from_table
from pathprob.paths.results import PathTable, log1mexp, logsumexp64
from pathprob.paths.sets import PathSet, Regex

DEFAULT_SHOTS = (0, 2, 6)  # in-context examples of the default probe prompts (as in the demo)
DEFAULT_PROMPT_SEED = 1
DEFAULT_SETS = {"arith": ("correct",), "concepts": ("seen",)}


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    """What to probe: prompts, path sets (a language's set names or regexes), path length, pruning."""

    prompts: tuple[str, ...]
    sets: tuple[str, ...] = ()
    max_new: int = 6
    min_prob: float = 1e-4
    track: int = 8
    truth_min_prob: float = 0.0
    chunk: int | None = 8  # engine chunk; 8 keeps one chunk shape, so few compiled shapes over a run

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def default_max_new(language) -> int:
    """The length of one example: ``concepts`` example_len + SEP; ``arith`` one statement; else 8."""
    if hasattr(language, "example_len"):
        return int(language.example_len) + 1
    if language.name == "arith":
        from pathprob.data.arith import STATEMENT_LEN

        return STATEMENT_LEN
    return 8


def default_prompts(language) -> tuple[str, ...]:
    """One prompt with 0, 2 and 6 in-context examples (fewer if the language's documents are shorter)."""
    limit = getattr(language, "n_examples", getattr(language, "n_statements", 7)) - 1
    shots = sorted({min(k, limit) for k in DEFAULT_SHOTS})
    return tuple(language.prompts(k, n=1, seed=DEFAULT_PROMPT_SEED)[0] for k in shots)


def probe_spec(cfg: TrainConfig, language) -> ProbeSpec:
    """The probes of a training config, with the language's defaults for the fields left empty.

    Defaults: ``default_prompts`` (0, 2, 6 examples), ``default_max_new`` (one example),
    the language's natural set (arith: ``correct``; concepts: ``seen``).
    """
    sets = cfg.probe_sets if cfg.probe_sets is not None else DEFAULT_SETS.get(language.name, ())
    return ProbeSpec(
        prompts=cfg.probe_prompts or default_prompts(language), sets=tuple(sets),
        max_new=cfg.probe_max_new or default_max_new(language), min_prob=cfg.probe_min_prob, track=cfg.probe_track,
    )


def _resolve_set(language, name: str, prompt: str) -> str | None:
    """The regex of set ``name`` after ``prompt`` (None where the language's set is undefined there)."""
    if name in getattr(language, "path_set_names", ()):
        try:
            return language.path_set(name, prompt)
        except PathprobError:
            return None  # e.g. concepts' "seen" after a prompt without examples
    return name


def _rows(table: PathTable) -> list[list[int]]:
    return [row[:n].tolist() for row, n in zip(table.tokens, table.lengths)]


def kl_over_paths(logp_truth: np.ndarray, logp_model: np.ndarray, log_remaining_truth: float = -math.inf) -> float:
    """KL(truth || model) in nats over listed paths (float64), the truth's remainder lumped as one outcome.

    ``logp_truth``/``logp_model``: float64[N] log-probabilities of the same N paths. With a
    remainder (``log_remaining_truth`` > -inf) the result is the KL of the coarser partition
    {listed paths..., the rest}: a lower bound on the KL over paths (data-processing inequality).
    Paths of truth probability 0 contribute nothing.
    """
    logp_truth = np.asarray(logp_truth, np.float64)
    logp_model = np.asarray(logp_model, np.float64)
    keep = np.isfinite(logp_truth)
    p_truth = np.exp(logp_truth[keep])
    total = float(np.sum(p_truth * (logp_truth[keep] - logp_model[keep])))
    if log_remaining_truth > -math.inf:
        log_rest_model = log1mexp(min(logsumexp64(logp_model[keep]), 0.0))
        if log_rest_model > -math.inf:
            total += math.exp(log_remaining_truth) * (log_remaining_truth - log_rest_model)
    return total


@dataclasses.dataclass(frozen=True)
class _TruthSide:
    """What a probe needs from the truth for one prompt, computed once per run."""

    paths: list[list[int]]  # the truth's listed paths (most probable first)
    logp: np.ndarray  # float64[N]
    log_remaining: float
    summary: dict


TRIE_CHUNK = 256  # paths per expansion in the truth-trie walk (fixed: one shape per prompt and run)


@dataclasses.dataclass(frozen=True)
class _Trie:
    """The truth's listed paths after one prompt as a trie, fixed per run, scored under a model by walking it.

    ``levels[d]`` = (paths, node, token, parent, child_token): the paths longer than ``d``, the
    index of each one's length-``d`` prefix among the level-``d`` nodes (level 0: the prompt), its
    token ``d``, and the level-``d + 1`` nodes to expand: (parent at level ``d``, token) of the
    prefixes of length ``d + 1`` that some path goes on from, in trie order. Every proper prefix is
    evaluated once (teacher-forcing each path evaluates a shared prefix once per path), and every
    level runs in the same shapes (``chunk`` paths per call into a pool of ``capacity``), so the
    walk compiles at the first probe only.
    """

    levels: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    n_paths: int
    chunk: int
    capacity: int

    @classmethod
    def build(cls, paths: Sequence[Sequence[int]], max_new: int) -> _Trie:
        lengths = np.asarray([len(r) for r in paths], np.int64)
        tokens = np.full((len(paths), max_new), -1, np.int64)
        for i, row in enumerate(paths):
            tokens[i, : len(row)] = row
        node, levels = np.zeros(len(paths), np.int64), []
        for d in range(max_new):
            at = np.nonzero(lengths > d)[0]
            if at.size == 0:
                break
            go = at[lengths[at] > d + 1]
            pairs, inverse = np.unique(np.stack([node[go], tokens[go, d]], axis=1).reshape(-1, 2), axis=0,
                                       return_inverse=True)
            levels.append((at, node[at], tokens[at, d], pairs[:, 0], pairs[:, 1]))
            node = np.full(len(paths), -1, np.int64)
            node[go] = inverse.reshape(-1)
        widest = max([lv[3].size for lv in levels] + [1])
        chunk = min(TRIE_CHUNK, frontier.bucket(widest, 8))
        return cls(levels=levels, n_paths=len(paths), chunk=chunk, capacity=frontier.bucket(widest, chunk))

    def cost(self, lm: LanguageModel, max_new: int) -> tuple[int, int]:
        """(model evaluations, bytes held at once) of ``score``: every trie node expanded in full chunks;
        two pools (parents and children) and a chunk's states, and the float64 log-probs of a level."""
        evaluations = 1 + sum(-(-lv[3].size // self.chunk) * self.chunk for lv in self.levels)
        per_path = frontier.path_state_bytes(lm, max_new)
        return evaluations, (2 * self.capacity + 2 * self.chunk) * per_path + 8 * self.capacity * lm.vocab_size

    def score(self, lm: LanguageModel, prompt_P: np.ndarray, max_new: int) -> np.ndarray:
        """float64[N]: log P(path | prompt) under ``lm`` of every path (as ``score``: float32 per token, float64 sums)."""
        pool, logprobs_1V = frontier.start(lm, jnp.asarray(prompt_P), max_new)
        next_logprobs = np.asarray(logprobs_1V, np.float64)
        logp = np.zeros(self.n_paths, np.float64)
        for depth, (at, node, token, parent, child_token) in enumerate(self.levels):
            logp[at] += next_logprobs[node, token]
            if parent.size == 0:
                break
            keep = self.levels[depth + 1][3].size > 0  # the next level expands from this pool
            pool, next_logprobs = self._expand(lm, pool, parent, child_token, keep=keep)
        return logp

    def _expand(self, lm: LanguageModel, pool, parent: np.ndarray, token: np.ndarray, keep: bool):
        """``frontier.expand_children`` in fixed shapes (full chunks, one pool capacity); ``keep``: build the new pool."""
        n, c = parent.size, self.chunk
        rows = -(-n // c) * c
        parent_n, token_n = np.zeros(rows, np.int32), np.zeros(rows, np.int32)
        parent_n[:n], token_n[:n] = parent, token
        new_pool, pending = None, []
        for lo in range(0, n, c):
            child, logprobs_cV = frontier.expand(lm, pool, jnp.asarray(parent_n[lo : lo + c]),
                                                 jnp.asarray(token_n[lo : lo + c]))
            if keep:
                if new_pool is None:
                    new_pool = frontier.empty_pool(child, self.capacity)
                new_pool = new_pool.replace(paths=frontier.write(new_pool.paths, child.paths, jnp.int32(lo)))
            pending.append(logprobs_cV)
        return new_pool, np.concatenate([np.asarray(x) for x in pending])[:n].astype(np.float64)


class Prober:
    """Computes probe records for ``spec`` on any model of ``language`` (see the module docstring).

    ``Prober(spec, language)`` enumerates the truth's paths once (when the language has a
    truth); ``prober(lm)`` returns the record of one probe: per prompt, the entropy with its
    bounds, set masses with bounds, tracked paths' log-probabilities and KL(truth || model).
    ``setup()`` is the run-level record: the prompts, resolved sets, tracked paths and the
    truth's own values.
    """

    def __init__(self, spec: ProbeSpec, language, *, truth: LanguageModel | None = None,
                 budget: Budget = DEFAULT_BUDGET):
        self.spec, self.language, self.budget = spec, language, budget
        self.truth = language.truth() if truth is None else truth
        self.sets = {name: [_resolve_set(language, name, p) for p in spec.prompts] for name in spec.sets}
        self._pathsets = {name: [None if r is None else Regex(r) for r in regexes]
                          for name, regexes in self.sets.items()}
        self._room: int | None = None  # prompt_room: the longest prompt's tokens after the first
        self._truth, self._tries = None, None
        if self.truth:
            tables = self._enumerate(self.truth, self._encoded(self.truth), self.spec.truth_min_prob)
            self._truth = [self._truth_side(i, table) for i, table in enumerate(tables)]
            self._tries = [_Trie.build(t.paths, spec.max_new) for t in self._truth]

    def _encoded(self, lm: LanguageModel) -> list[np.ndarray]:
        encoded = [encode_prompt(lm, p, room=self.spec.max_new) for p in self.spec.prompts]
        if self._room is None:
            self._room = max(len(ids) for ids in encoded) - 1
        return encoded

    def _enumerate(self, lm: LanguageModel, encoded: list[np.ndarray], min_prob: float) -> list[PathTable]:
        """``enumerate_paths`` of every prompt: one batched walk, or one walk per prompt beyond the budget."""
        kwargs = {"min_prob": min_prob, "chunk": self.spec.chunk, "prompt_room": self._room, "budget": self.budget}
        try:
            return enumerate_many(lm, encoded, self.spec.max_new, **kwargs)
        except BudgetExceededError:
            if len(encoded) == 1:
                raise
            return [enumerate_many(lm, [ids], self.spec.max_new, **kwargs)[0] for ids in encoded]

    def _truth_side(self, i: int, table: PathTable) -> _TruthSide:
        lower, upper = entropy_from_table(table)
        tracked = table.top(self.spec.track)
        summary = {
            "entropy": 0.5 * (lower + upper), "entropy_lower": lower, "entropy_upper": upper,
            "mass": self._masses(table, i), "paths": len(table), "log_remaining": table.log_remaining,
            "kl_exact": not table.log_remaining > -math.inf,
            "tracked": tracked.texts(with_eos=True), "tracked_tokens": _rows(tracked),
            "tracked_logp": tracked.logp.tolist(),
        }
        return _TruthSide(paths=_rows(table), logp=table.logp, log_remaining=table.log_remaining, summary=summary)

    def _masses(self, table: PathTable, i: int) -> dict:
        masses = {}
        for name, pathsets in self._pathsets.items():
            pathset: PathSet | None = pathsets[i]
            masses[name] = None if pathset is None else list(set_mass_from_table(table, pathset))
        return masses

    def setup(self) -> dict:
        """The run-level facts (JSON-able): spec, resolved sets, and the truth's values per prompt."""
        return {"spec": self.spec.to_dict(), "sets": self.sets, "language": self.language.name,
                "truth": None if self._truth is None else [t.summary for t in self._truth]}

    def __call__(self, lm: LanguageModel) -> dict:
        """One probe of ``lm`` (JSON-able): ``{"prompts": [per-prompt dict, ...], "seconds": s}``."""
        t0 = time.perf_counter()
        rows = []
        encoded = self._encoded(lm)
        self._check_budget(lm)
        tables = self._enumerate(lm, encoded, self.spec.min_prob)
        if self._tries is not None:
            scores = [trie.score(lm, ids, self.spec.max_new) for trie, ids in zip(self._tries, encoded)]
        for i, table in enumerate(tables):
            lower, upper = entropy_from_table(table)
            row = {"entropy": 0.5 * (lower + upper), "entropy_lower": lower, "entropy_upper": upper,
                   "mass": self._masses(table, i), "nodes": int(table.stats["nodes"])}
            if self._truth is not None:
                truth = self._truth[i]
                logp_model = scores[i]
                row["tracked_logp"] = logp_model[: self.spec.track].tolist()
                row["kl"] = kl_over_paths(truth.logp, logp_model, truth.log_remaining)
            rows.append(row)
        return {"prompts": rows, "seconds": time.perf_counter() - t0}

    def _check_budget(self, lm: LanguageModel) -> None:
        """Refuse a probe of ``lm`` before it runs when scoring the truth's paths under it does not fit
        (the enumeration checks its own budget). The tries are walked one after the other."""
        if self._tries is None:
            return
        costs = [trie.cost(lm, self.spec.max_new) for trie in self._tries]
        self.budget.require(
            f"probing KL(truth || model) over the truth's {sum(t.n_paths for t in self._tries):,} listed paths needs",
            sum(c[0] for c in costs), max(c[1] for c in costs),
            "list fewer truth paths (ProbeSpec.truth_min_prob > 0), lower the probes' max_new, or probe fewer prompts")


def make_prober(cfg: TrainConfig, language, *, truth: LanguageModel | None = None) -> Prober:
    """The Prober of a training config (language defaults filled in)."""
    return Prober(probe_spec(cfg, language), language, truth=truth)


def probe_values(records: Sequence[dict]) -> dict:
    """Arrays over probe records: ``steps`` int[S] and per-prompt float64[S] series (for plots and tests)."""
    steps = [r["step"] for r in records]
    n_prompts = len(records[0]["probe"]["prompts"]) if records else 0
    out = {"steps": np.asarray(steps, np.int64), "prompts": []}
    for i in range(n_prompts):
        rows = [r["probe"]["prompts"][i] for r in records]
        series = {k: np.asarray([row[k] for row in rows], np.float64)
                  for k in ("entropy", "entropy_lower", "entropy_upper", "kl") if k in rows[0]}
        if "tracked_logp" in rows[0]:
            series["tracked_logp"] = np.asarray([row["tracked_logp"] for row in rows], np.float64)
        series["mass"] = {name: np.asarray([[math.nan, math.nan] if row["mass"][name] is None else row["mass"][name]
                                            for row in rows], np.float64) for name in rows[0]["mass"]}
        out["prompts"].append(series)
    return out
