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
samples.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


@functools.partial(jax.jit, static_argnames=("steps", "proposal", "track"))
def sample_chunk(lm, pool: State, rows_B: jax.Array, target, target_pool, guide: Guide | None, dfa_B, prefix_BL,
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
    if proposal_lm is not None:
        check_compatible(lm, proposal_lm)
        proposal_P = encode_prompt(proposal_lm, prompt if proposal_prompt is None else proposal_prompt, room=max_new)
        target, target_root = lm, frontier.start(lm, [prompt_P], max_new)[0]
        lm, prompt_P = proposal_lm, proposal_P
    root = frontier.start(lm, [prompt_P], max_new)[0]
    guide = None if dfa is None else make_guide(dfa, max_new, lm.eos_id)
    dfa_B = None if dfa is None else jnp.full((size,), dfa.initial, jnp.int32)
    rows_B = jnp.zeros((size,), jnp.int32)
    meta = {"tokenizer": tokenizer, "max_new": max_new, "seed": seed, "key_data": key_data, "chunk": size,
            "proposal": {**dataclasses.asdict(proposal), "other_model": proposal_lm is not None}}
    track = tuple(sorted(track))

    def launch(index: int):
        prefix_BL = None
        if prefixes is not None:
            prefix_BL = np.full((size, max_new), -1, np.int32)
            rows = min(size, n - index * size)
            prefix_BL[:rows] = prefixes(index, rows)
            prefix_BL = jnp.asarray(prefix_BL)
        return sample_chunk(lm, root, rows_B, target, target_root, guide, dfa_B, prefix_BL,
                            jax.random.fold_in(key, index), steps=max_new, proposal=proposal, track=track)

    n_chunks = -(-n // size)
    pending = launch(0)
    for index in range(n_chunks):
        out, pending = pending, (launch(index + 1) if index + 1 < n_chunks else None)  # keep the device busy
        yield to_samples(out, min(size, n - index * size), lm.eos_id, track, meta)


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
