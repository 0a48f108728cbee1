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
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.errors import BadPromptError, BudgetExceededError
from pathprob.models.base import LanguageModel, encode_prompt
from pathprob.paths import frontier
from pathprob.paths.budget import DEFAULT_BUDGET, Budget, estimate_work
from pathprob.paths.intervals import clip, clopper_pearson, widen
from pathprob.paths.proposal import reach_table
from pathprob.paths.results import Estimate, logsumexp64
from pathprob.paths.running import OnChunk, Run, fold_chunks
from pathprob.paths.sample import DEFAULT_CHUNK, contains, stream
from pathprob.paths.sets import PathSet


@dataclasses.dataclass
class Frontier:
    """The result of the walk: exact head, proven-out mass, and the pruned live prefixes.

    ``levels[j]`` = (parent index into level j - 1, token) of the prefixes of length j
    that were expanded (level 0 is the prompt). Frontier prefix i is ``levels[depth[i]]``'s
    prefix ``parent[i]`` followed by ``token[i]``, with log-probability ``logp[i]``.
    """

    max_new: int
    levels: list = dataclasses.field(default_factory=list)
    depth: list = dataclasses.field(default_factory=list)
    parent: list = dataclasses.field(default_factory=list)
    token: list = dataclasses.field(default_factory=list)
    logp: list = dataclasses.field(default_factory=list)
    log_in: list = dataclasses.field(default_factory=list)  # complete paths in the set
    log_out: list = dataclasses.field(default_factory=list)  # complete paths outside, or DFA-dead prefixes
    nodes: int = 1

    @functools.cached_property
    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(depth, parent, token, logp) of every frontier prefix, once the walk is over."""
        return tuple(np.concatenate(a) for a in (self.depth, self.parent, self.token, self.logp))

    def prefixes(self, index: np.ndarray) -> np.ndarray:
        """int32[len(index), max_new]: tokens of frontier prefixes ``index``, padded with -1."""
        depth, parent, token, _ = (a[index] for a in self.items)
        return self.children(depth, parent, token)

    def children(self, depth: np.ndarray, parent: np.ndarray, token: np.ndarray) -> np.ndarray:
        """int32[N, max_new]: tokens of the children (prefix ``parent`` of level ``depth``) + ``token``."""
        out = np.full((parent.size, self.max_new), -1, np.int32)
        rows = np.arange(parent.size)
        out[rows, depth] = token
        node = parent.copy()
        for level in range(int(depth.max(initial=0)), 0, -1):
            here = depth >= level
            level_parent, level_token = self.levels[level]
            out[rows[here], level - 1] = level_token[node[here]]
            node[here] = level_parent[node[here]]
        return out


def walk(lm: LanguageModel, prompt_P: np.ndarray, pathset: PathSet, max_new: int, *, min_prob: float, chunk: int,
         budget: Budget) -> Frontier:
    """Expand every live prefix with probability >= ``min_prob``; classify all other mass (see module doc)."""
    V, eos = lm.vocab_size, lm.eos_id
    log_min = math.log(min_prob) if min_prob > 0 else -math.inf
    dfa = pathset.dfa(lm.tokenizer)
    reach = None if dfa is None else reach_table(dfa, max_new, eos)
    result = Frontier(max_new=max_new, levels=[(np.zeros(1, np.int32), np.zeros(1, np.int32))])
    pool, logprobs_1V = frontier.start(lm, jnp.asarray(prompt_P), max_new)
    logp = np.zeros(1)
    next_logp = np.asarray(logprobs_1V, np.float64)
    state = np.full(1, dfa.initial if dfa is not None else 0, np.int32)
    for depth in range(max_new):
        child_logp = logp[:, None] + next_logp
        possible = child_logp > -np.inf
        complete = possible & ((np.arange(V) == eos)[None, :] | (depth + 1 == max_new))
        parent, token = np.nonzero(complete)
        if dfa is not None:
            inside = dfa.accepting[dfa.transitions[state[parent], token]]
        else:
            tokens = result.children(np.full(parent.size, depth), parent, token)
            inside = contains(pathset, tokens, (tokens >= 0).sum(axis=1), lm.tokenizer)
        result.log_in.append(logsumexp64(child_logp[parent[inside], token[inside]]))
        result.log_out.append(logsumexp64(child_logp[parent[~inside], token[~inside]]))
        growing = possible & ~complete
        if dfa is not None:
            child_state = dfa.transitions[state[:, None], np.arange(V)[None, :]]
            dead = growing & ~reach[max_new - depth - 1][child_state]
            result.log_out.append(logsumexp64(child_logp[dead]))
            growing &= ~dead
        parent, token = np.nonzero(growing & (child_logp < log_min))
        result.depth.append(np.full(parent.size, depth, np.int32))
        result.parent.append(parent.astype(np.int32))
        result.token.append(token.astype(np.int32))
        result.logp.append(child_logp[parent, token])
        parent, token = np.nonzero(growing & (child_logp >= log_min))
        if parent.size == 0:
            break
        if result.nodes + parent.size > budget.max_nodes:
            raise BudgetExceededError(f"the hybrid head would expand more than {budget.max_nodes:.3g} prefixes; "
                                      "raise min_prob or use method 'smc' or 'mc'")
        pool, next_logp = frontier.expand_children(lm, pool, parent, token, chunk)
        result.nodes += parent.size
        result.levels.append((parent.astype(np.int32), token.astype(np.int32)))
        logp = child_logp[parent, token]
        state = child_state[parent, token] if dfa is not None else state[parent]
    return result


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
    if nodes > budget.max_nodes or nbytes > budget.max_bytes:
        raise BudgetExceededError(
            f"the hybrid head could expand {nodes:.3g} prefixes and hold {nbytes / 2**20:.0f} MiB "
            f"(budget {budget.max_nodes:.3g}, {budget.max_bytes / 2**20:.0f} MiB); raise min_prob")
    result = walk(lm, prompt_P, pathset, max_new, min_prob=min_prob, chunk=frontier.bucket(min(chunk, 1024)),
                  budget=budget)
    head = math.exp(logsumexp64(result.log_in))
    frontier_logp = result.items[3]
    rest = math.exp(logsumexp64(frontier_logp))
    proven = (head, min(head + rest, 1.0))
    details = {"head": head, "remainder": rest, "proven_lower": proven[0], "proven_upper": proven[1],
               "proven_outside": math.exp(logsumexp64(result.log_out)), "nodes": result.nodes,
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
        return result.prefixes(np.minimum(np.searchsorted(cdf, u, side="right"), cdf.size - 1))

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
