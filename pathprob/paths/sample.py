"""Sampling continuation paths: n draws as counts down the trie, and the ``Samples`` they make.

A trained model repeats itself: 65,536 samples of 6 tokens after ``^`` from the shipped
concepts model hold only 1,487 distinct paths. So n independent draws are made as
*counts* down the prefix trie (the ``Counting`` policy of the trie walk): at the root the
children's counts are multinomial(n, q(.)); at each prefix with count c they are
multinomial(c, q(. | prefix)). The multiset of paths has exactly the law of n i.i.d.
ancestral draws, and each distinct prefix costs one model evaluation, so the cost
follows the number of distinct prefixes, not n. When a level's counts are mostly ones
(long, diverse paths), the remaining draws are finished by the per-particle ancestral
sampler (``ancestral.py``) from the states the walk reached: the same law, without a
host round trip per token.

Counts are drawn on the host in float64 from the model's float32 log-probabilities (a
numpy generator seeded from the key), by inverse CDF for prefixes with few draws and by
numpy's multinomial for prefixes with many.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.data.base import categorical, numpy_rng
from pathprob.devices import using as on_devices
from pathprob.errors import BadPromptError
from pathprob.models.base import LanguageModel, check_max_new, encode_prompt
from pathprob.paths import frontier
from pathprob.paths.ancestral import chunk_keys, chunk_of, sample_chunk, sample_chunks_on, stream, to_samples
from pathprob.paths.budget import DEFAULT_BUDGET, Budget
from pathprob.paths.proposal import MODEL, Proposal, warp
from pathprob.paths.results import path_lengths
from pathprob.paths.samples import Samples, as_key, check_compatible, chunk_size
from pathprob.paths.trie import Level, Walker

DEFAULT_CHUNK = 4096


def split_counts(rng: np.random.Generator, count_N: np.ndarray, logq_NV: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parent, token, count) of the nonzero entries of one multinomial(count_N[i], q_i) draw per row, in trie order.

    q_i = softmax(logq_NV[i]) in float64. Rows with at most V draws draw them one by one
    (inverse CDF, no [N, V] table of counts); rows with more use numpy's multinomial.
    """
    N, V = logq_NV.shape
    top_N = logq_NV.max(axis=1, keepdims=True)
    if np.any(np.isneginf(top_N[:, 0]) & (count_N > 0)):
        raise BadPromptError("no continuation has probability > 0 here: the prompt is impossible under the model")
    q_NV = np.exp(logq_NV - top_N)
    q_NV /= q_NV.sum(axis=1, keepdims=True)
    few = count_N <= V
    rows = np.repeat(np.nonzero(few)[0], count_N[few])
    cells, count = np.unique(rows * V + categorical(rng, q_NV, rows), return_counts=True)
    many = np.nonzero(~few)[0]
    if many.size:  # rows apart from the few-draw rows: their cells never coincide
        drawn = rng.multinomial(count_N[many], q_NV[many])
        row, token = np.nonzero(drawn)
        cells = np.concatenate([cells, many[row] * V + token])
        count = np.concatenate([count, drawn[row, token]])
        order = np.argsort(cells, kind="stable")
        cells, count = cells[order], count[order]
    return cells // V, cells % V, count.astype(np.int64)


def entropy_rows64(logp_NV: np.ndarray) -> np.ndarray:
    """float64[N]: entropy (nats) of each row's distribution."""
    with np.errstate(invalid="ignore"):
        return -np.sum(np.where(logp_NV > -np.inf, np.exp(logp_NV) * logp_NV, 0.0), axis=1)


_warp = jax.jit(warp, static_argnums=1)


def kl_rows64(logq_NV: np.ndarray, logp_NV: np.ndarray) -> np.ndarray:
    """float64[N]: KL(q || p) per row; +inf where q puts mass on a token p cannot emit."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(np.where(logq_NV > -np.inf, np.exp(logq_NV) * (logq_NV - logp_NV), 0.0), axis=1)


class Counting:
    """The sampling policy: n draws from the proposal as counts down the trie.

    Per prefix it keeps the number of draws through it, log q(prefix) and the chain-rule
    sums so far: the entropy of the scoring model's next-token distributions (the drawing
    model's, or the ``target``'s when ``visit`` also gets the target's level of the same
    prefixes from a second walker in lockstep) and, with a target, KL(q || target) per step. Complete children (EOS or the last token) with
    draws are recorded in ``done``. With ``handoff``, a level whose children would mostly
    hold one draw each, or would not fit (``fits(width)`` False: at V = 50k the host table of
    a few thousand prefixes' next-token log-probabilities is gigabytes), is handed over
    (``self.handoff``: the (parent, token, count) of its children with draws) instead of
    expanded, for the ancestral sampler to finish with its fixed memory per chunk.
    """

    def __init__(self, n: int, rng: np.random.Generator, vocab: int, eos: int, max_new: int, *,
                 proposal: Proposal = MODEL, handoff: bool = True, fits: Callable[[int], bool] = lambda width: True):
        self.rng, self.vocab, self.eos, self.max_new = rng, vocab, eos, max_new
        self.proposal, self.may_handoff, self.fits = proposal, handoff, fits
        self.count = np.array([n], np.int64)
        self.logq = np.zeros(1)
        self.sums = {"entropy": np.zeros(1), "kl": np.zeros(1)}
        self.done: list[dict] = []
        self.handoff: tuple | None = None

    def visit(self, level: Level, target: Level | None = None) -> tuple[np.ndarray, np.ndarray]:
        logp_NV = level.next_logp
        logq_NV = logp_NV if self.proposal == MODEL else \
            np.asarray(_warp(jnp.asarray(logp_NV, jnp.float32), self.proposal), np.float64)
        parent, token, count = split_counts(self.rng, self.count, logq_NV)
        scored = level if target is None else target
        sums = {"entropy": self.sums["entropy"] + entropy_rows64(scored.next_logp)}
        if target is not None:
            sums["kl"] = self.sums["kl"] + kl_rows64(logq_NV, target.next_logp)
        steps_left = self.max_new - level.depth - 1
        complete = (token == self.eos) | (steps_left == 0)
        p, t = parent[complete], token[complete]
        self.done.append({"tokens": level.child_tokens(p, t, self.max_new), "count": count[complete],
                          "logp": scored.logp[p] + scored.next_logp[p, t], "logq": self.logq[p] + logq_NV[p, t],
                          **{name: v[p] for name, v in sums.items()}})
        parent, token, count = parent[~complete], token[~complete], count[~complete]
        mostly_ones = steps_left >= 2 and 2 * parent.size > count.sum()
        if self.may_handoff and parent.size and (mostly_ones or not self.fits(parent.size)):
            self.handoff = (parent, token, count)
            return parent[:0], token[:0]
        self.logq = self.logq[parent] + logq_NV[parent, token]
        self.count, self.sums = count, {name: v[parent] for name, v in sums.items()}
        return parent, token


def draw(lm: LanguageModel, prompt: str | Sequence[int], n: int, max_new: int, *, key,
         proposal: Proposal = MODEL, target: LanguageModel | None = None,
         target_prompt: str | Sequence[int] | None = None, chunk: int = DEFAULT_CHUNK,
         budget: Budget = DEFAULT_BUDGET) -> Samples:
    """n draws from ``lm`` (warped by ``proposal``) as distinct rows with counts (``Samples.count``).

    ``logq`` is the log-probability under what was drawn from; ``logp`` under ``target``
    (with ``target_prompt``, default ``prompt``) when given, else under ``lm``.
    ``extras["entropy"]``: each row's chain-rule entropy sum under the scoring model (the
    target, else ``lm``); with a target, ``extras["kl"]``: the chain-rule sum of
    KL(q || target) per step. The target walks the
    same trie in lockstep (one evaluation per distinct prefix for each model).
    """
    check_max_new(max_new)
    key, seed, key_data = as_key(key)
    chunk_size(n, chunk)  # validates n and chunk
    prompt_P = encode_prompt(lm, prompt, room=max_new)
    walk_key, finish_key = jax.random.split(key)
    walkers = [Walker(lm, [prompt_P], max_new, chunk=min(chunk, 1024), budget=budget)]
    if target is not None:
        check_compatible(lm, target)
        target_P = encode_prompt(target, prompt if target_prompt is None else target_prompt, room=max_new)
        walkers.append(Walker(target, [target_P], max_new, chunk=min(chunk, 1024), budget=budget))
    policy = Counting(int(n), numpy_rng(walk_key), lm.vocab_size, lm.eos_id, max_new, proposal=proposal,
                      fits=lambda width: all(w.fits(width) for w in walkers))
    for depth in range(max_new):
        parent, token = policy.visit(*(w.level for w in walkers))
        if parent.size == 0 or depth + 1 == max_new:
            break
        for w in walkers:
            w.expand(parent, token, states=depth + 2 < max_new)
    meta = {"tokenizer": lm.tokenizer, "max_new": max_new, "seed": seed, "key_data": key_data, "chunk": chunk,
            "proposal": {**dataclasses.asdict(proposal), "other_model": False}}
    done = {name: np.concatenate([d[name] for d in policy.done]) for name in policy.done[0]}
    tokens, count, logp, logq = (done.pop(name) for name in ("tokens", "count", "logp", "logq"))
    parts = [Samples(tokens=tokens, lengths=path_lengths(tokens),
                     eos=(tokens == lm.eos_id).any(axis=1), logp=logp, logq=logq, extras=done, count=count, **meta)]
    if policy.handoff is not None:
        parts += _finish(walkers, policy, proposal, finish_key, chunk, meta)
    return Samples.concatenate(parts)


def draw_blocks(lm: LanguageModel, prompt: str | Sequence[int], n: int, max_new: int, *, key,
                chunk: int = DEFAULT_CHUNK, **options) -> Iterator[Samples]:
    """The n draws of ``draw`` as independent count-based blocks of ``chunk``, 2 ``chunk``, 4 ``chunk``, ... draws.

    Block i draws with ``fold_in(key, i)``; their union has the law of n i.i.d. draws. The
    sizes double, so 10^9 draws take about 20 walks (each costs the distinct prefixes of its
    own draws, not its size), and since they do not depend on n, the first blocks of a
    run are a whole shorter run: a caller folding them reports progress and stops between
    blocks (Ctrl-C) with the estimate of such a run.
    """
    key = as_key(key)[0]
    chunk_size(n, chunk)  # validates n and chunk
    done, size, index = 0, int(chunk), 0
    while done < n:
        block = min(size, n - done)
        yield draw(lm, prompt, block, max_new, key=jax.random.fold_in(key, index), chunk=chunk, **options)
        done, size, index = done + block, 2 * size, index + 1


def _finish(walkers: list[Walker], policy: Counting, proposal: Proposal, key, chunk: int, meta: dict
            ) -> list[Samples]:
    """The handed-over draws, each continued by the ancestral sampler from its prefix's state (one row per draw).

    On a mesh, chunks i, ..., i + D - 1 run at once (chunk i + k on device k, its rows' states
    gathered there from the sharded pools, with ``fold_in(key, i + k)``): the same draws.
    """
    parent, token, count = policy.handoff
    level = walkers[0].level
    target, target_level = (walkers[1].lm, walkers[1].level) if len(walkers) > 1 else (None, None)
    scored = walkers[-1].level
    track = ("entropy",) if target is None else ("entropy", "kl")
    rows, first = np.repeat(parent, count), np.repeat(token, count)
    steps = policy.max_new - level.depth
    size = chunk_size(rows.size, chunk)
    where = walkers[0].where
    n_chunks = -(-rows.size // size)
    D = 1 if where is None else where.size

    def inputs(index: int) -> tuple[np.ndarray, np.ndarray]:  # chunk ``index``: pool rows (0 past the end), prefixes
        lo = index * size
        m = max(0, min(size, rows.size - lo))
        rows_B, prefix_BL = np.zeros(size, np.int32), np.full((size, steps), -1, np.int32)
        rows_B[:m], prefix_BL[:m, 0] = rows[lo : lo + m], first[lo : lo + m]
        return rows_B, prefix_BL

    outs = []
    for group in range(0, n_chunks, D):
        if where is None:
            rows_B, prefix_BL = inputs(group)
            outs.append(sample_chunk(walkers[0].lm, level.pool, jnp.asarray(rows_B), target,
                                     None if target is None else target_level.pool, None, None, jnp.asarray(prefix_BL),
                                     jax.random.fold_in(key, group), steps=steps, proposal=proposal, track=track))
            continue
        indices = range(group, group + D)
        rows_DB, prefix_DBL = (np.stack(a) for a in zip(*(inputs(i) for i in indices)))
        states = frontier.gather_on(where, level.pool.paths, level.slots[rows_DB])
        pool = level.pool.replace(paths=states)
        target_pool = None if target is None else target_level.pool.replace(
            paths=frontier.gather_on(where, target_level.pool.paths, target_level.slots[rows_DB]))
        out = sample_chunks_on(where, walkers[0].lm, pool, np.tile(np.arange(size, dtype=np.int32), D), target,
                               target_pool, None, None, prefix_DBL.reshape(D * size, steps),
                               chunk_keys(key, indices), steps=steps, proposal=proposal, track=track,
                               pools_sharded=True)
        out = {name: where.host(value) for name, value in out.items()}
        outs += [chunk_of(out, k, size) for k in range(min(D, n_chunks - group))]
    parts = []
    for index, out in enumerate(outs):
        lo = index * size
        m = min(size, rows.size - lo)
        tail = to_samples(out, m, policy.eos, track, meta)
        mine = rows[lo : lo + m]
        tokens = np.concatenate([level.tokens[mine], tail.tokens], axis=1)
        extras = {name: policy.sums[name][mine] + tail.extras[name] for name in track}
        parts.append(dataclasses.replace(
            tail, tokens=tokens, lengths=path_lengths(tokens),
            logp=scored.logp[mine] + tail.logp, logq=policy.logq[mine] + tail.logq, extras=extras,
            count=np.ones(m, np.int64)))
    return parts


def sample(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    n: int,
    max_new: int,
    *,
    key,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    chunk: int = DEFAULT_CHUNK,
    proposal: LanguageModel | None = None,
    proposal_prompt: str | Sequence[int] | None = None,
    distinct: bool = False,
    devices: int | Sequence | None = None,
) -> Samples:
    """``n`` continuation paths of up to ``max_new`` tokens, i.i.d.

    Tokens come from ``lm`` (or from ``proposal`` with ``proposal_prompt``, default
    the same prompt) with ``temperature`` / ``top_k`` / ``top_p`` applied;
    ``Samples.logp`` is the log-probability under ``lm``, ``Samples.logq`` under what
    the tokens were actually drawn from. ``key``: ``jax.random.key(seed)`` or an int seed.
    From ``lm`` itself the draws are made as counts down the trie (``draw``): the result
    holds the n draws as rows in a random order, or with ``distinct`` the distinct rows
    and their counts (``Samples.count``), which is what makes n = 10^9 practical.
    ``devices``: where the model steps run (None: every device; see ``pathprob.devices``); the
    samples do not depend on it.
    """
    with on_devices(devices):
        return _sample(lm, prompt, n, max_new, key=key, temperature=temperature, top_k=top_k, top_p=top_p,
                       chunk=chunk, proposal=proposal, proposal_prompt=proposal_prompt, distinct=distinct)


def _sample(lm, prompt, n, max_new, *, key, temperature, top_k, top_p, chunk, proposal, proposal_prompt,
            distinct) -> Samples:
    drawn = Proposal(temperature=temperature, top_k=top_k, top_p=top_p)
    if proposal is not None:
        return Samples.concatenate(list(stream(lm, prompt, n, max_new, key=key, chunk=chunk, proposal=drawn,
                                               proposal_lm=proposal, proposal_prompt=proposal_prompt)))
    counted = draw(lm, prompt, n, max_new, key=key, proposal=drawn, chunk=chunk)
    if distinct:
        return counted
    return counted.draws(numpy_rng(jax.random.fold_in(as_key(key)[0], 2)))
