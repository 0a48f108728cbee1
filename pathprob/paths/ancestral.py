"""Per-particle ancestral sampling with the KV cache, in fixed-size chunks (one ``lax.scan`` per chunk).

Used where every particle carries its own weight (importance sampling from a warped model
or another model, DFA-guided SIS, the hybrid estimator's remainder, SMC) and to finish
paths that the count-based sampler (``sample.py``) hands over once its counts are
mostly ones. Plain Monte Carlo draws as counts down the trie instead.

One jitted program per chunk shape: ``lax.scan`` over the steps, batched over the chunk's
B paths, which all read the prompt caches computed once by ``start`` (the per-path part
is gathered from a pool of start states). Each row draws one uniform per step and picks
its token by inverse CDF (PERF_NOTES: several times cheaper than
``jax.random.categorical`` on CPU). A row that has emitted EOS keeps advancing with a
dummy token (shapes are static) but records nothing more. Per-step log-probabilities come
back as float32 and are summed per path on the host in float64.

Tokens may be drawn from a *proposal* instead of the model: the model tempered,
truncated to its top-k / top-p tokens, restricted by a DFA to tokens after which the
path can still end in a set (``guided``), or another LanguageModel with its own prompt.
Every sample records ``logp`` (the target model) and ``logq`` (the proposal actually
used), so importance weights are exp(logp - logq).

Chunk i uses ``jax.random.fold_in(key, i)``: the same key, n and chunk give the same
samples. Chunk sizes are powers of two (the last chunk is padded), so a run compiles
once. ``stream`` yields chunk after chunk, so estimators accumulate without keeping
samples. On D devices (``devices.current()``) chunks i, ..., i + D - 1 run at once, chunk
i + k on device k with its own key: each device computes what one device computes for that
chunk, so the samples are identical however many devices (or processes) share the work.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from pathprob import devices
from pathprob.devices import AXIS
from pathprob.errors import PathprobError
from pathprob.models.base import LanguageModel, State, check_max_new, encode_prompt, take_paths
from pathprob.paths import frontier
from pathprob.paths.proposal import (
    MODEL,
    Guide,
    Proposal,
    allowed_tokens,
    entropy_rows,
    inverse_cdf,
    kl_rows,
    make_guide,
    pick,
    restrict,
    warp,
)
from pathprob.paths.results import path_lengths
from pathprob.paths.samples import Samples, as_key, check_compatible, chunk_size
from pathprob.paths.sets import TokenDFA

DEFAULT_CHUNK = 4096
TRACKS = ("entropy", "kl")


def _sample_chunk(lm, pool: State, rows_B: jax.Array, target, target_pool, guide: Guide | None, dfa_B, prefix_BL,
                  key, *, steps: int, proposal: Proposal, track: tuple[str, ...]) -> dict:
    """Continue paths ``rows_B`` of ``pool`` by ``steps`` tokens from ``lm`` warped by ``proposal``.

    Scores them under ``target`` (default ``lm``; its states are ``target_pool``'s rows
    ``rows_B``). ``dfa_B`` int32[B] (with a guide) is each row's DFA state, ``prefix_BL``
    (or None) forces tokens where it is >= 0. Returns per-step [steps, B] arrays
    (``tokens`` -1 after the end, ``logp``, ``logq`` and the tracked per-step quantities,
    0 after the end) and, with a guide, ``accepted`` bool[B].
    """
    eos, batch = lm.eos_id, rows_B.shape[0]
    carry = (take_paths(pool, rows_B), None if target is None else take_paths(target_pool, rows_B), dfa_B,
             jnp.zeros((batch,), bool))

    def step(carry, xs):
        state, target_state, dfa_B, done_B = carry
        t, key_t, prefix_B = xs
        model_BV = lm.next_logprobs(state)
        logp_BV = model_BV if target is None else target.next_logprobs(target_state)
        logq_BV = warp(model_BV, proposal)
        if proposal.guided:
            logq_BV, _ = restrict(logq_BV, allowed_tokens(guide, dfa_B, steps - 1 - t, eos))
        token_B = inverse_cdf(logq_BV, jax.random.uniform(key_t, (batch,)))
        if prefix_B is not None:
            token_B = jnp.where(prefix_B >= 0, prefix_B, token_B)
        live_B = ~done_B
        # No possible token (a guide whose allowed tokens the model cannot emit): weight 0, not inf/inf.
        stuck_B = ~jnp.isfinite(jnp.max(logq_BV, axis=-1))
        out = {"tokens": jnp.where(live_B, token_B, -1),
               "logp": jnp.where(live_B, jnp.where(stuck_B, -jnp.inf, pick(logp_BV, token_B)), 0.0),
               "logq": jnp.where(live_B & ~stuck_B, pick(logq_BV, token_B), 0.0)}
        if "entropy" in track:
            out["entropy"] = jnp.where(live_B, entropy_rows(logp_BV), 0.0)
        if "kl" in track:
            out["kl"] = jnp.where(live_B, kl_rows(logq_BV, logp_BV), 0.0)
        moved_B = jnp.where(live_B, token_B, eos)  # finished rows advance with a dummy token
        if dfa_B is not None:
            dfa_B = jnp.where(live_B, guide.transitions_SV[dfa_B, token_B], dfa_B)
        state = lm.advance(state, moved_B)
        if target_state is not None:
            target_state = target.advance(target_state, moved_B)
        return (state, target_state, dfa_B, done_B | (token_B == eos)), out

    xs = (jnp.arange(steps), jax.random.split(key, steps), None if prefix_BL is None else prefix_BL.T)
    (_, _, dfa_B, _), out_L = jax.lax.scan(step, carry, xs)
    if guide is not None:
        out_L["accepted"] = guide.accepting_S[dfa_B]
    return out_L


sample_chunk = jax.jit(_sample_chunk, static_argnames=("steps", "proposal", "track"))


@functools.lru_cache(maxsize=64)
def _sample_chunks_on(mesh, impl, pools_sharded: bool, guided: bool, *, steps: int, proposal: Proposal,
                      track: tuple[str, ...]):
    """``sample_chunk`` of D chunks at once, chunk k on device k with key data row k.

    The pools are replicated (the root, every row reading it), or with ``pools_sharded`` already
    gathered per device (``frontier.gather_on``); rows, DFA states, prefixes and keys are sharded.
    """
    pool_spec = P(AXIS) if pools_sharded else P()

    def body(lm, pool, rows_B, target, target_pool, guide, dfa_B, prefix_BL, key_data):
        key = jax.random.wrap_key_data(key_data[0], impl=impl)
        return _sample_chunk(lm, pool, rows_B, target, target_pool, guide, dfa_B, prefix_BL, key, steps=steps,
                             proposal=proposal, track=track)

    out_specs = {name: P(None, AXIS) for name in ("tokens", "logp", "logq", *track)}
    if guided:
        out_specs["accepted"] = P(AXIS)
    in_specs = (P(), pool_spec, P(AXIS), P(), pool_spec, P(), P(AXIS), P(AXIS), P(AXIS))
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False))


def sample_chunks_on(where, lm, pool, rows_B: np.ndarray, target, target_pool, guide, dfa_B, prefix_BL, keys, *,
                     steps: int, proposal: Proposal, track: tuple[str, ...], pools_sharded: bool = False) -> dict:
    """D chunks of ``sample_chunk`` on the mesh of ``where``: host arrays int/float [D x B] in, device dict out.

    ``keys`` holds D typed keys (one per chunk); ``rows_B``, ``dfa_B`` (or None) and ``prefix_BL``
    (or None) are the chunks' host arrays stacked along their leading axis. The models and a
    guide must already be placed (``Placement.place_model``).
    """
    fn = _sample_chunks_on(where.mesh, jax.random.key_impl(keys), pools_sharded, guide is not None, steps=steps,
                           proposal=proposal, track=track)
    shard = lambda x: None if x is None else where.shard_rows(np.asarray(x))
    return fn(lm, pool, shard(rows_B), target, target_pool, guide, shard(dfa_B), shard(prefix_BL),
              shard(np.asarray(jax.random.key_data(keys))))


def chunk_of(out_host: dict, k: int, size: int) -> dict:
    """Chunk k of a host copy of ``sample_chunks_on``'s result: a ``sample_chunk`` result of ``size`` rows."""
    return {name: value[..., k * size : (k + 1) * size] for name, value in out_host.items()}


def chunk_keys(key, indices) -> jax.Array:
    """The keys ``fold_in(key, i)`` of chunks ``indices`` (typed, stacked)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices, jnp.uint32))


def stream(
    lm: LanguageModel,
    prompt: str | Sequence[int],
    n: int,
    max_new: int,
    *,
    key,
    chunk: int = DEFAULT_CHUNK,
    proposal: Proposal = MODEL,
    proposal_lm: LanguageModel | None = None,
    proposal_prompt: str | Sequence[int] | None = None,
    dfa: TokenDFA | None = None,
    prefixes: Callable[[int, int], np.ndarray] | None = None,
    track: tuple[str, ...] = (),
) -> Iterator[Samples]:
    """Samples, chunk by chunk (``Samples`` of at most ``chunk`` paths each, in order).

    Paths are drawn from ``proposal_lm`` (default ``lm``) with ``proposal_prompt``
    (default ``prompt``), warped by ``proposal``, and scored under ``lm``. With ``dfa``
    each chunk's ``extras["accepted"]`` says which paths are in its set (needed for
    ``proposal.guided``). ``prefixes(chunk_index, rows)`` -> int32[rows, max_new] forces tokens where >= 0.
    ``track``: per-path sums of per-step ``entropy`` (of ``lm``'s next-token
    distribution) and ``kl`` (KL(proposal || lm) per step).
    """
    check_max_new(max_new)
    unknown = set(track) - set(TRACKS)
    if unknown:
        raise PathprobError(f"unknown tracked quantities {sorted(unknown)}; choose from {TRACKS}")
    if proposal.guided and dfa is None:
        raise PathprobError("guided sampling needs a set with a DFA (a Regex or a combination of Regex sets)")
    key, seed, key_data = as_key(key)
    size = chunk_size(n, chunk)
    prompt_P = encode_prompt(lm, prompt, room=max_new)
    target = target_root = None
    tokenizer = lm.tokenizer
    where = devices.current()

    def start(model, ids):  # (the model, its root): on a mesh both replicated
        if where is None:
            return model, frontier.start(model, [ids], max_new)[0]
        model = where.place_model(model)
        return model, frontier.start_on(where, model, [ids], max_new)[0]

    if proposal_lm is not None:
        check_compatible(lm, proposal_lm)
        proposal_P = encode_prompt(proposal_lm, prompt if proposal_prompt is None else proposal_prompt, room=max_new)
        target, target_root = start(lm, prompt_P)
        lm, prompt_P = proposal_lm, proposal_P
    lm, root = start(lm, prompt_P)
    guide = None if dfa is None else make_guide(dfa, max_new, lm.eos_id)
    dfa_B = None if dfa is None else jnp.full((size,), dfa.initial, jnp.int32)
    rows_B = jnp.zeros((size,), jnp.int32)
    meta = {"tokenizer": tokenizer, "max_new": max_new, "seed": seed, "key_data": key_data, "chunk": size,
            "proposal": {**dataclasses.asdict(proposal), "other_model": proposal_lm is not None}}
    track = tuple(sorted(track))

    n_chunks = -(-n // size)
    if where is not None:
        yield from _stream_on(where, lm, root, target, target_root, guide, dfa, prefixes, key, n=n, size=size,
                              n_chunks=n_chunks, max_new=max_new, proposal=proposal, track=track, meta=meta)
        return

    def launch(index: int):
        prefix_BL = None
        if prefixes is not None:
            prefix_BL = jnp.asarray(_prefix_rows(prefixes, index, size, n, max_new))
        return sample_chunk(lm, root, rows_B, target, target_root, guide, dfa_B, prefix_BL,
                            jax.random.fold_in(key, index), steps=max_new, proposal=proposal, track=track)

    pending = launch(0)
    for index in range(n_chunks):
        out, pending = pending, (launch(index + 1) if index + 1 < n_chunks else None)  # keep the device busy
        yield to_samples(out, min(size, n - index * size), lm.eos_id, track, meta)


def _prefix_rows(prefixes: Callable[[int, int], np.ndarray], index: int, size: int, n: int, max_new: int) -> np.ndarray:
    """int32[size, max_new]: chunk ``index``'s forced tokens (-1: free; rows past n, and chunks past the end, pad)."""
    prefix_BL = np.full((size, max_new), -1, np.int32)
    rows = min(size, n - index * size)
    if rows > 0:
        prefix_BL[:rows] = prefixes(index, rows)
    return prefix_BL


def _stream_on(where, lm, root, target, target_root, guide, dfa, prefixes, key, *, n, size, n_chunks, max_new,
               proposal, track, meta) -> Iterator[Samples]:
    """``stream``'s chunks, D at a time on the mesh (chunk i on device i mod D, with ``fold_in(key, i)``)."""
    D = where.size
    guide = None if guide is None else where.replicate(guide)
    rows_B = np.zeros(D * size, np.int32)
    dfa_B = None if dfa is None else np.full(D * size, dfa.initial, np.int32)

    def launch(group: int):
        indices = range(group * D, (group + 1) * D)  # past n_chunks: padding chunks, never read
        prefix_BL = None
        if prefixes is not None:
            prefix_BL = np.concatenate([_prefix_rows(prefixes, i, size, n, max_new) for i in indices])
        return sample_chunks_on(where, lm, root, rows_B, target, target_root, guide, dfa_B, prefix_BL,
                                chunk_keys(key, indices), steps=max_new, proposal=proposal, track=track)

    groups = -(-n_chunks // D)
    pending = launch(0)
    for group in range(groups):
        out, pending = pending, (launch(group + 1) if group + 1 < groups else None)
        out = {name: where.host(value) for name, value in out.items()}
        for k in range(D):
            index = group * D + k
            if index < n_chunks:
                yield to_samples(chunk_of(out, k, size), min(size, n - index * size), lm.eos_id, track, meta)


def to_samples(out: dict, count: int, eos: int, track: tuple[str, ...], meta: dict) -> Samples:
    """The first ``count`` rows of a ``sample_chunk`` result as host Samples (float64 sums per path)."""
    rows = lambda name: np.asarray(out[name]).T[:count]
    tokens = rows("tokens").astype(np.int32)
    lengths = path_lengths(tokens)
    total = lambda name: rows(name).astype(np.float64).sum(axis=1)
    extras = {name: total(name) for name in track}
    if "accepted" in out:
        extras["accepted"] = np.asarray(out["accepted"])[:count]
    return Samples(tokens=tokens, lengths=lengths, eos=(tokens == eos).any(axis=1), logp=total("logp"),
                   logq=total("logq"), extras=extras, **meta)
