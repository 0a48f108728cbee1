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

- all prompts are enumerated in one trie walk (``enumerate_many``), every prompt padded to the
  longest probe prompt, so prompts of any length share one program set (when the batch exceeds
  the memory budget, e.g. near-uniform initial parameters, the prompts are walked one at a time
  with the same padding);
- the truth's listed paths (the KL and tracked paths) of every prompt are scored under the
  model in one walk of their tries (``score_paths``, fixed per run): every proper prefix is
  evaluated once, and every level and every probe runs in the same shapes, so it compiles at
  the first probe only. Per-token log-probabilities are float32 from the model, summed on the
  host in float64, as ``score`` does.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import numpy as np

from pathprob.config import TrainConfig
from pathprob.errors import BudgetExceededError, PathprobError
from pathprob.models.base import LanguageModel, encode_prompt
from pathprob.paths.budget import DEFAULT_BUDGET, Budget
from pathprob.paths.divergence import listed_rest, lumped_kl
from pathprob.paths.enumerate import enumerate_many
from pathprob.paths.measure import entropy_from_table, set_mass_from_table
from pathprob.paths.results import PathTable
from pathprob.paths.score import score_paths, scoring_cost
from pathprob.paths.sets import PathSet, Regex

DEFAULT_SHOTS = (0, 2, 6)  # in-context examples of the default probe prompts (as in the demo)
DEFAULT_PROMPT_SEED = 1


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


def default_prompts(language) -> tuple[str, ...]:
    """One prompt with 0, 2 and 6 in-context examples (fewer if the language's documents are shorter)."""
    shots = sorted({min(k, language.max_examples) for k in DEFAULT_SHOTS})
    return tuple(language.prompts(k, n=1, seed=DEFAULT_PROMPT_SEED)[0] for k in shots)


def probe_spec(cfg: TrainConfig, language) -> ProbeSpec:
    """The probes of a training config, with the language's defaults for the fields left empty.

    Defaults: ``default_prompts`` (0, 2, 6 examples), one example (``language.example_tokens``),
    the language's natural sets (arith: ``correct``; concepts: ``seen``).
    """
    sets = cfg.probe_sets if cfg.probe_sets is not None else language.natural_sets
    return ProbeSpec(
        prompts=cfg.probe_prompts or default_prompts(language), sets=tuple(sets),
        max_new=cfg.probe_max_new or language.example_tokens, min_prob=cfg.probe_min_prob, track=cfg.probe_track,
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


@dataclasses.dataclass(frozen=True)
class _TruthSide:
    """What a probe needs from the truth for one prompt, computed once per run."""

    tokens: np.ndarray  # int32[N, max_new]: the truth's listed paths (most probable first), -1 padded
    logp: np.ndarray  # float64[N]
    log_remaining: float
    summary: dict


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
        self._width: int | None = None  # every prompt padded to the longest: one set of compiled shapes
        self._truth = None
        if self.truth:
            tables = self._enumerate(self.truth, self._encoded(self.truth), self.spec.truth_min_prob)
            self._truth = [self._truth_side(i, table) for i, table in enumerate(tables)]
            root = np.concatenate([np.full(len(t.tokens), i) for i, t in enumerate(self._truth)])
            self._tracked = (root, np.concatenate([t.tokens for t in self._truth]))

    def _encoded(self, lm: LanguageModel) -> list[np.ndarray]:
        encoded = [encode_prompt(lm, p, room=self.spec.max_new) for p in self.spec.prompts]
        if self._width is None:
            self._width = max(len(ids) for ids in encoded)
        return encoded

    def _enumerate(self, lm: LanguageModel, encoded: list[np.ndarray], min_prob: float) -> list[PathTable]:
        """``enumerate_paths`` of every prompt: one batched walk, or one walk per prompt beyond the budget."""
        kwargs = {"min_prob": min_prob, "chunk": self.spec.chunk, "prompt_width": self._width, "budget": self.budget}
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
        return _TruthSide(tokens=table.tokens, logp=table.logp, log_remaining=table.log_remaining, summary=summary)

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
        if self._truth is not None:
            # The truth's paths of every prompt scored under the model in one walk of their tries.
            root, tokens = self._tracked
            logp = score_paths(lm, encoded, root, tokens, chunk=self.spec.chunk, prompt_width=self._width,
                               budget=self.budget)
            scores = [logp[root == i] for i in range(len(encoded))]
        for i, table in enumerate(tables):
            lower, upper = entropy_from_table(table)
            row = {"entropy": 0.5 * (lower + upper), "entropy_lower": lower, "entropy_upper": upper,
                   "mass": self._masses(table, i), "nodes": int(table.stats["nodes"])}
            if self._truth is not None:
                truth = self._truth[i]
                logp_model = scores[i]
                row["tracked_logp"] = logp_model[: self.spec.track].tolist()
                row["kl"] = lumped_kl(truth.logp, logp_model, rest_p=math.exp(truth.log_remaining),
                                      rest_q=listed_rest(logp_model))
            rows.append(row)
        return {"prompts": rows, "seconds": time.perf_counter() - t0}

    def _check_budget(self, lm: LanguageModel) -> None:
        """Refuse a probe of ``lm`` before it runs when scoring the truth's paths under it does not fit
        (the enumeration checks its own budget)."""
        if self._truth is None:
            return
        n_paths = self._tracked[1].shape[0]
        self.budget.require(
            f"probing KL(truth || model) over the truth's {n_paths:,} listed paths needs",
            *scoring_cost(lm, n_paths, self.spec.max_new, self.budget),
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
