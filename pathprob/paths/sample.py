"""Ancestral sampling of continuation paths with the KV cache, in fixed-size chunks.

One jitted program per chunk shape: ``lax.scan`` over the ``max_new`` steps, batched over
the chunk's B paths, which all read the prompt cache computed once by ``start`` (the
per-path part is repeated with ``repeat_paths``). Each row draws one uniform per step and
picks its token by inverse CDF (PERF_NOTES: several times cheaper than
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
samples; ``sample`` keeps them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.data.tokenizer import Tokenizer
from pathprob.errors import PathprobError
from pathprob.files import dumps
from pathprob.models.base import LanguageModel, State, check_max_new, encode_prompt, repeat_paths
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
from pathprob.paths.sets import PathSet, TokenDFA

DEFAULT_CHUNK = 4096
TRACKS = ("entropy", "kl")


@functools.partial(jax.jit, static_argnames=("batch", "max_new", "proposal", "track"))
def _sample_chunk(lm, root: State, target, target_root, guide: Guide | None, prefix_BL, key, *,
                  batch: int, max_new: int, proposal: Proposal, track: tuple[str, ...]) -> dict:
    """Draw ``batch`` paths from ``lm`` warped by ``proposal``; score them under ``target`` (default ``lm``).

    ``prefix_BL`` (or None) forces tokens where it is >= 0. Returns per-step [L, B]
    arrays (``tokens`` -1 after the end, ``logp``, ``logq`` and the tracked per-step
    quantities, 0 after the end) and, with a guide, ``accepted`` bool[B].
    """
    eos = lm.eos_id
    carry = (repeat_paths(root, batch), None if target is None else repeat_paths(target_root, batch),
             None if guide is None else jnp.full((batch,), guide.initial, jnp.int32), jnp.zeros((batch,), bool))

    def step(carry, xs):
        state, target_state, dfa_B, done_B = carry
        t, key_t, prefix_B = xs
        model_BV = lm.next_logprobs(state)
        logp_BV = model_BV if target is None else target.next_logprobs(target_state)
        logq_BV = warp(model_BV, proposal)
        if proposal.guided:
            logq_BV, _ = restrict(logq_BV, allowed_tokens(guide, dfa_B, max_new - 1 - t, eos))
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

    xs = (jnp.arange(max_new), jax.random.split(key, max_new), None if prefix_BL is None else prefix_BL.T)
    (_, _, dfa_B, _), out_L = jax.lax.scan(step, carry, xs)
    if guide is not None:
        out_L["accepted"] = guide.accepting_S[dfa_B]
    return out_L


@dataclasses.dataclass(frozen=True, repr=False)
class Samples:
    """Sampled continuation paths, host numpy.

    ``tokens`` int32[n, max_new] padded with -1, ``lengths`` int32[n], ``eos`` bool[n];
    ``logp`` float64[n] log-probability under the model, ``logq`` float64[n] under the
    proposal the tokens were drawn from (equal to ``logp`` for plain sampling).
    ``extras`` holds per-path sums of tracked per-step quantities (``entropy``: the
    chain-rule sum of next-token entropies; ``kl``) and ``accepted`` (in the DFA's set).
    ``seed`` is the integer seed when one was given, ``key_data`` the key's raw data.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    eos: np.ndarray
    logp: np.ndarray
    logq: np.ndarray
    tokenizer: Tokenizer
    max_new: int
    seed: int | None = None
    key_data: tuple[int, ...] = ()
    chunk: int = 0
    proposal: dict = dataclasses.field(default_factory=dict)
    extras: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.logp.shape[0])

    @property
    def log_weights(self) -> np.ndarray:
        """float64[n]: log importance weights log p - log q (0 for plain sampling)."""
        return self.logp - self.logq

    def texts(self, *, with_eos: bool = False) -> list[str]:
        eos_id = self.tokenizer.eos_id
        return [self.tokenizer.decode([t for t in row[:n] if with_eos or t != eos_id])
                for row, n in zip(self.tokens.tolist(), self.lengths.tolist())]

    def counts(self) -> list[tuple[tuple[int, ...], int, float]]:
        """Distinct paths as (tokens, count, logp), most frequent first (ties: most probable first)."""
        found: dict[tuple[int, ...], list] = {}
        for row, n, lp in zip(self.tokens.tolist(), self.lengths.tolist(), self.logp.tolist()):
            entry = found.setdefault(tuple(row[:n]), [0, lp])
            entry[0] += 1
        return sorted(((path, c, lp) for path, (c, lp) in found.items()), key=lambda e: (-e[1], -e[2], e[0]))

    @staticmethod
    def concatenate(parts: Sequence[Samples]) -> Samples:
        first = parts[0]
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])
        extras = {k: np.concatenate([p.extras[k] for p in parts]) for k in first.extras}
        return dataclasses.replace(first, tokens=cat("tokens"), lengths=cat("lengths"), eos=cat("eos"),
                                   logp=cat("logp"), logq=cat("logq"), extras=extras)

    def to_dict(self) -> dict:
        decode = lambda path: self.tokenizer.decode([t for t in path if t != self.tokenizer.eos_id])
        return {
            "n": len(self), "max_new": self.max_new, "seed": self.seed, "key_data": list(self.key_data),
            "chunk": self.chunk, "proposal": self.proposal,
            "paths": [{"text": decode(path), "tokens": list(path), "count": c, "logp": lp, "p": math.exp(lp)}
                      for path, c, lp in self.counts()],
        }

    def to_json(self, **kwargs) -> str:
        return dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        counts = self.counts()
        lines = [f"Samples(n={len(self)}, max_new={self.max_new}, distinct={len(counts)}, seed={self.seed})",
                 f"  {'count':>8}  {'freq':>8}  {'p(model)':>10}  path"]
        for path, c, lp in counts[:10]:
            text = self.tokenizer.decode(list(path))
            lines.append(f"  {c:8d}  {c / max(len(self), 1):8.4f}  {math.exp(lp):10.6f}  {text!r}")
        if len(counts) > 10:
            lines.append(f"  ... {len(counts) - 10} more distinct paths")
        return "\n".join(lines)


def contains(pathset: PathSet, tokens_NL: np.ndarray, lengths_N: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """bool[N]: which paths are in the set (by its DFA when it has one, else by their texts)."""
    dfa = pathset.dfa(tokenizer)
    if dfa is not None:
        return dfa.accepts(tokens_NL)
    eos = tokenizer.eos_id
    rows = zip(tokens_NL.tolist(), lengths_N.tolist())
    texts = [tokenizer.decode([t for t in row[:n] if t != eos]) for row, n in rows]
    return pathset.contains(tokens_NL, texts, tokenizer)


def as_key(key) -> tuple[jax.Array, int | None, tuple[int, ...]]:
    """(typed key, integer seed or None, raw key data) from one key, its raw data, or an integer seed."""
    if key is None:
        raise PathprobError("sampling needs key=jax.random.key(seed) (or an integer seed)")
    seed = None
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer, jax.Array, np.ndarray)):
        raise PathprobError(f"key must be jax.random.key(seed) or an integer seed, got {type(key).__name__}")
    if isinstance(key, (int, np.integer)):
        if not -(2**63) <= key < 2**63:
            raise PathprobError(f"an integer seed must fit in 64 bits (signed), got {key}")
        seed, key = int(key), jax.random.key(int(key))
    elif not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        try:
            key = jax.random.wrap_key_data(key)
        except TypeError:
            raw = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
            raise PathprobError(f"key is neither a PRNG key nor its raw data ({raw.dtype}{list(raw.shape)}): got "
                                f"{key.dtype}{list(key.shape)}; pass jax.random.key(seed) or an integer seed") from None
    if key.shape != ():
        raise PathprobError(f"key must be one PRNG key, got an array of {key.shape} keys; pass key[0] or fold_in")
    return key, seed, tuple(int(x) for x in np.asarray(jax.random.key_data(key)).ravel())


def chunk_size(n: int, chunk: int) -> int:
    """The power-of-two batch every chunk of a run of ``n`` samples uses."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise PathprobError(f"n must be a positive integer, got {n!r}")
    if isinstance(chunk, (bool, np.bool_)) or not isinstance(chunk, (int, np.integer)) or chunk <= 0:
        raise PathprobError(f"chunk must be a positive integer, got {chunk!r}")
    return frontier.bucket(min(int(n), frontier.bucket(int(chunk))))


def check_compatible(lm: LanguageModel, other: LanguageModel) -> None:
    if other.vocab_size != lm.vocab_size or other.eos_id != lm.eos_id:
        raise PathprobError("the two models must share the vocabulary and the EOS token "
                            f"(vocab {lm.vocab_size} vs {other.vocab_size}, eos {lm.eos_id} vs {other.eos_id})")


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
        target, target_root = lm, frontier.start(lm, jnp.asarray(prompt_P), max_new)[0]
        lm, prompt_P = proposal_lm, proposal_P
    root = frontier.start(lm, jnp.asarray(prompt_P), max_new)[0]
    guide = None if dfa is None else make_guide(dfa, max_new, lm.eos_id)
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
        return _sample_chunk(lm, root, target, target_root, guide, prefix_BL, jax.random.fold_in(key, index),
                             batch=size, max_new=max_new, proposal=proposal, track=track)

    n_chunks = -(-n // size)
    pending = launch(0)
    for index in range(n_chunks):
        out, pending = pending, (launch(index + 1) if index + 1 < n_chunks else None)  # keep the device busy
        yield _to_host(out, min(size, n - index * size), lm.eos_id, track, meta)


def _to_host(out: dict, count: int, eos: int, track: tuple[str, ...], meta: dict) -> Samples:
    rows = lambda name: np.asarray(out[name]).T[:count]
    tokens = rows("tokens").astype(np.int32)
    lengths = (tokens >= 0).sum(axis=1).astype(np.int32)
    total = lambda name: rows(name).astype(np.float64).sum(axis=1)
    extras = {name: total(name) for name in track}
    if "accepted" in out:
        extras["accepted"] = np.asarray(out["accepted"])[:count]
    return Samples(tokens=tokens, lengths=lengths, eos=(tokens == eos).any(axis=1), logp=total("logp"),
                   logq=total("logq"), extras=extras, **meta)


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
) -> Samples:
    """``n`` continuation paths of up to ``max_new`` tokens, drawn ancestrally.

    Tokens come from ``lm`` (or from ``proposal`` with ``proposal_prompt``, default
    the same prompt) with ``temperature`` / ``top_k`` / ``top_p`` applied;
    ``Samples.logp`` is the log-probability under ``lm``, ``Samples.logq`` under what
    the tokens were actually drawn from. ``key``: ``jax.random.key(seed)`` or an int seed.
    """
    drawn = Proposal(temperature=temperature, top_k=top_k, top_p=top_p)
    return Samples.concatenate(list(stream(lm, prompt, n, max_new, key=key, chunk=chunk, proposal=drawn,
                                           proposal_lm=proposal, proposal_prompt=proposal_prompt)))
