"""Hybrid exact + Monte-Carlo mass of a set: the head exactly, only the remainder by sampling.

Design. The trie is walked level by level exactly as ``enumerate_paths(min_prob=...)``
does (one ``advance`` per expanded prefix, chunked, sharing the prompt cache), with one
difference: the *pruned frontier* is kept. Every prefix probability mass ends in one of

- complete paths (ending at EOS or at ``max_new``) whose parent was expanded, whatever
  their probability: known exactly, and so is their membership in the set (the listed
  head of ``enumerate_paths`` plus its complete paths below ``min_prob``);
- prefixes the DFA proves can no longer end in the set (with the number of tokens
  left): known to be outside;
- the frontier: live prefixes u below ``min_prob``, with total mass r known exactly.

So P(S) = head + r · P(S | frontier), with proven bounds [head, head + r] (at least as
tight as the exact engine's at the same ``min_prob``). The fraction is estimated from n
paths drawn from p restricted to the frontier: a frontier prefix u with probability
p(u) / r (host float64, 53-bit uniforms from the key), then continued ancestrally with
the KV cache (the sampler forces u's tokens and samples the rest). Every draw lands in
the remainder, unlike rejection sampling from the model, which would keep a fraction r
of its draws. The hits are binomial: the exact (Clopper-Pearson) interval on the
fraction, mapped through head + r · fraction, never leaves the proven bounds; it is
then widened for float32 rounding (``intervals.widen``). The estimate is flagged
unreliable when neither the head nor any draw met the set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.errors import BadPromptError
from pathprob.models.base import LanguageModel, encode_prompt
from pathprob.paths import frontier, trie
from pathprob.paths.ancestral import DEFAULT_CHUNK, stream
from pathprob.paths.budget import DEFAULT_BUDGET, Budget, estimate_work
from pathprob.paths.enumerate import Listing
from pathprob.paths.intervals import clip, clopper_pearson, widen
from pathprob.paths.results import Estimate, logsumexp64
from pathprob.paths.running import Method, OnChunk, Run, fold_chunks
from pathprob.paths.samples import contains
from pathprob.paths.sets import PathSet


@dataclasses.dataclass(frozen=True)
class Head:
    """The exact part of the hybrid: the listed mass in and out of the set, and the pruned live prefixes.

    ``tokens`` int32[M, max_new] (-1 padded) and ``logp`` float64[M] are the live prefixes
    below ``min_prob`` that the walk did not expand; ``log_in`` / ``log_out`` the log mass of
    the complete paths (any probability) in and out of the set, plus the prefixes the DFA
    proves cannot end in it (``log_out``).
    """

    log_in: float
    log_out: float
    tokens: np.ndarray
    logp: np.ndarray
    nodes: int


def walk_head(lm: LanguageModel, prompt_P: np.ndarray, pathset: PathSet, max_new: int, *, min_prob: float,
              chunk: int, budget: Budget) -> Head:
    """Expand every live prefix with probability >= ``min_prob``; classify all other mass (see module doc)."""
    dfa = pathset.dfa(lm.tokenizer)
    policy = Listing(1, lm.vocab_size, lm.eos_id, max_new, min_prob=min_prob, dfa=dfa, keep_pruned=True,
                     list_all_complete=True)
    trie.walk(lm, [prompt_P], max_new, policy, chunk=chunk, budget=budget)
    table = policy.tables(lm.tokenizer, {})[0]
    inside = contains(pathset, table.tokens, table.lengths, lm.tokenizer)
    _, tokens, logp = policy.pruned.arrays()
    return Head(log_in=logsumexp64(table.logp[inside]),
                log_out=logsumexp64([logsumexp64(table.logp[~inside]), table.stats["log_remaining_dead"]]),
                tokens=tokens, logp=logp, nodes=int(policy.nodes[0]))


def _uniforms(key: jax.Array, n: int) -> np.ndarray:
    """float64[n] uniforms in [0, 1) with 53 random bits each."""
    bits = np.asarray(jax.random.bits(key, (n, 2), jnp.uint32)).astype(np.uint64)
    return ((bits[:, 0] >> np.uint64(5)) * np.uint64(1 << 26) + (bits[:, 1] >> np.uint64(6))) / float(1 << 53)


def hybrid_mass(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    pathset: PathSet,
    max_new: int,
    *,
    n: int,
    key,
    min_prob: float = 1e-4,
    chunk: int = DEFAULT_CHUNK,
    level: float = 0.95,
    budget: Budget = DEFAULT_BUDGET,
    on_chunk: OnChunk | None = None,
) -> Estimate:
    """P(set): exact over prefixes above ``min_prob``, ``n`` samples for the pruned remainder."""
    if not 0 < min_prob < 1:
        raise BadPromptError(f"hybrid needs min_prob in (0, 1), got {min_prob!r}")
    key, run = Run.start(key)
    prompt_P = encode_prompt(lm, prompt, room=max_new)
    nodes, nbytes = estimate_work(lm, max_new, min_prob=min_prob, max_paths=None, chunk=frontier.bucket(chunk))
    budget.require(f"the hybrid's exact head (prefixes above min_prob {min_prob:g}) needs up to", nodes, nbytes,
                   "raise min_prob")
    result = walk_head(lm, prompt_P, pathset, max_new, min_prob=min_prob, chunk=min(chunk, 1024), budget=budget)
    head = math.exp(result.log_in)
    frontier_logp = result.logp
    rest = math.exp(logsumexp64(frontier_logp))
    proven = (head, min(head + rest, 1.0))
    details = {"head": head, "remainder": rest, "proven_lower": proven[0], "proven_upper": proven[1],
               "proven_outside": math.exp(result.log_out), "nodes": result.nodes,
               "frontier_prefixes": int(frontier_logp.size), "min_prob": min_prob,
               "interval": "Clopper-Pearson on the remainder's fraction in the set, head + remainder · [lower, upper]"}
    if rest == 0.0:
        return run.estimate("hybrid", head, (head, head), n=0, level=None, stderr=0.0, ess=math.nan,
                            details=details, exact=True)
    weights = np.exp(frontier_logp - frontier_logp.max())
    cdf = np.cumsum(weights) / np.sum(weights)
    pick_key, sample_key = jax.random.split(key)

    def prefixes(index: int, rows: int) -> np.ndarray:  # chunk by chunk: memory stays bounded by the chunk
        u = _uniforms(jax.random.fold_in(pick_key, index), rows)
        return result.tokens[np.minimum(np.searchsorted(cdf, u, side="right"), cdf.size - 1)]

    def estimate(counts: tuple[int, int]) -> Estimate:
        hits, done = counts
        fraction = hits / done
        low, high = clopper_pearson(hits, done, level)
        interval = widen(clip((head + rest * low, head + rest * high), *proven), max_new)
        return run.estimate("hybrid", head + rest * fraction, interval, n=done, level=level,
                            stderr=rest * math.sqrt(fraction * (1 - fraction) / done), ess=float(done),
                            hits=hits if head == 0 else None, details={**details, "hits": hits})

    def fold(counts: tuple[int, int], part) -> tuple[int, int]:
        inside = part.extras.get("accepted")
        if inside is None:
            inside = contains(pathset, part.tokens, part.lengths, lm.tokenizer)
        return counts[0] + int(np.sum(inside)), counts[1] + len(part)

    parts = stream(lm, prompt_P, n, max_new, key=sample_key, chunk=chunk, prefixes=prefixes,
                   dfa=pathset.dfa(lm.tokenizer))
    return fold_chunks(parts, fold, (0, 0), estimate, total=n, on_chunk=on_chunk)


METHOD = Method("hybrid", "exact over prefixes above min_prob, sampled remainder; Clopper-Pearson on the remainder",
                mass=hybrid_mass, options=("min_prob", "budget"))
