"""Exact generative processes of the synthetic languages, as LanguageModels.

Both are pytrees (tables as leaves, tokenizer and sizes static) with the same
conventions: ``start`` runs the per-token update over each of R prompts with
``lax.scan`` (vmapped over the prompts; no shared part); the next-token log-probabilities are float32 with ``-inf`` for
impossible tokens; a path extended by an impossible token becomes *dead* (all
next log-probabilities ``-inf``, for ever); after EOS the only next token is EOS
again. No NaN ever appears. Shapes: B paths, P prompt, V vocabulary, K concepts,
H hidden states, S automaton states.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pathprob.data.tokenizer import CharTokenizer
from pathprob.models.base import State

if TYPE_CHECKING:
    from pathprob.data.concepts import HMMs


def _log(p: np.ndarray) -> jax.Array:
    """float32 log of probabilities, exactly ``-inf`` where p == 0."""
    with np.errstate(divide="ignore"):
        return jnp.asarray(np.log(p), jnp.float32)


def _normalise(logits: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """``logits - logsumexp(logits)``, staying ``-inf`` (not NaN) when everything is ``-inf``."""
    total = jax.nn.logsumexp(logits, axis=axis, keepdims=True)
    return logits - jnp.where(jnp.isfinite(total), total, 0.0)


def _run_prompts(step, initial, prompts_RP: jax.Array, lengths_R: jax.Array):
    """The per-path state after each prompt: ``step`` over its first ``lengths_R[r]`` tokens (padding skipped)."""
    prompts_RP = jnp.asarray(prompts_RP, jnp.int32)
    lengths_R = jnp.asarray(lengths_R, jnp.int32)

    def one(prompt_P, length):
        def body(path, xs):
            t, token = xs
            moved = step(path, token)
            return jax.tree.map(lambda new, old: jnp.where(t < length, new, old), moved, path), None

        return jax.lax.scan(body, initial, (jnp.arange(prompt_P.shape[0]), prompt_P))[0]

    return jax.vmap(one)(prompts_RP, lengths_R)


def _one_hot_log(index: int, size: int) -> jax.Array:
    return jnp.where(jnp.arange(size) == index, 0.0, -jnp.inf).astype(jnp.float32)


@flax.struct.dataclass
class ConceptsTruth:
    """The concepts language: a uniform mixture of HMMs, by the forward algorithm in log space.

    Per path (``State.paths``): ``log_belief`` float32[B, K, H], the normalised log
    joint posterior of the concept and the hidden state of the *next* letter;
    ``pos`` int32[B], letters read in the current example (``example_len`` means
    SEP comes next); ``done`` int32[B], completed examples (-1 before BOS,
    ``n_examples + 1`` after EOS); ``logprobs`` float32[B, V], the cached next-token
    log-probabilities.
    """

    log_init_KH: jax.Array
    log_trans_KHH: jax.Array
    log_emit_KHV: jax.Array  # -inf for every non-letter token
    tokenizer: CharTokenizer = flax.struct.field(pytree_node=False)
    example_len: int = flax.struct.field(pytree_node=False)
    n_examples: int = flax.struct.field(pytree_node=False)

    @classmethod
    def from_hmms(cls, hmms: HMMs, tokenizer: CharTokenizer, example_len: int, n_examples: int) -> ConceptsTruth:
        K, H, A = hmms.emit_KHA.shape
        emit_KHV = np.zeros((K, H, tokenizer.vocab_size))
        emit_KHV[:, :, :A] = hmms.emit_KHA  # the letters are the first A tokens
        return cls(_log(hmms.init_KH), _log(hmms.trans_KHH), _log(emit_KHV), tokenizer, example_len, n_examples)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_len(self) -> int:
        return 1 + self.n_examples * (self.example_len + 1) + 1

    def _prior_KH(self) -> jax.Array:
        return self.log_init_KH - jnp.log(jnp.float32(self.log_init_KH.shape[0]))

    def _next_logprobs(self, log_belief_KH: jax.Array, pos: jax.Array, done: jax.Array) -> jax.Array:
        """float32[V] for one path (not yet masked by deadness)."""
        tok, V = self.tokenizer, self.vocab_size
        letters_V = _normalise(jax.nn.logsumexp(log_belief_KH[:, :, None] + self.log_emit_KHV, axis=(0, 1)))
        in_document = (done >= 0) & (done < self.n_examples)
        return jnp.select(
            [done < 0, in_document & (pos < self.example_len), in_document],
            [_one_hot_log(tok.bos_id, V), letters_V, _one_hot_log(tok.sep_id, V)],
            _one_hot_log(tok.eos_id, V),
        )

    def _step(self, path: dict, token: jax.Array) -> dict:
        """One path extended by one token (int32 scalar)."""
        log_belief_KH, pos, done = path["log_belief"], path["pos"], path["done"]
        token = jnp.clip(token, 0, self.vocab_size - 1)
        possible = path["logprobs"][token] > -jnp.inf
        in_document = (done >= 0) & (done < self.n_examples)
        is_letter = in_document & (pos < self.example_len)
        is_sep = in_document & (pos == self.example_len)

        emitted_KH = log_belief_KH + self.log_emit_KHV[:, :, token]
        moved_KH = jax.nn.logsumexp(emitted_KH[:, :, None] + self.log_trans_KHH, axis=1)
        restarted_KH = jax.nn.logsumexp(emitted_KH, axis=1, keepdims=True) + self.log_init_KH
        after_letter_KH = jnp.where(pos + 1 == self.example_len, restarted_KH, moved_KH)
        log_belief_KH = jnp.where(done < 0, self._prior_KH(), jnp.where(is_letter, after_letter_KH, log_belief_KH))
        log_belief_KH = _normalise(jnp.where(possible, log_belief_KH, -jnp.inf))

        pos = jnp.where(is_letter, pos + 1, jnp.where(is_sep | (done < 0), 0, pos))
        done = jnp.where(is_sep | (done < 0) | (done == self.n_examples), done + 1, done)
        logprobs_V = jnp.where(possible, self._next_logprobs(log_belief_KH, pos, done), -jnp.inf)
        return {"log_belief": log_belief_KH, "pos": pos, "done": done, "logprobs": logprobs_V}

    def _initial_path(self) -> dict:
        pos, done = jnp.int32(0), jnp.int32(-1)
        log_belief_KH = self._prior_KH()
        logprobs_V = self._next_logprobs(log_belief_KH, pos, done)
        return {"log_belief": log_belief_KH, "pos": pos, "done": done, "logprobs": logprobs_V}

    def start(self, prompts_RP: jax.Array, lengths_R: jax.Array, capacity: int = 0) -> State:
        """R paths, path r after prompt r (its first ``lengths_R[r]`` tokens); ``capacity`` is not needed."""
        return State(shared=None, paths=_run_prompts(self._step, self._initial_path(), prompts_RP, lengths_R))

    def next_logprobs(self, state: State) -> jax.Array:
        return state.paths["logprobs"]

    def advance(self, state: State, tokens_B: jax.Array) -> State:
        return state.replace(paths=jax.vmap(self._step)(state.paths, jnp.asarray(tokens_B, jnp.int32)))

    def concept_posterior(self, state: State) -> jax.Array:
        """float32[B, K]: P(concept | tokens so far); all zeros for a dead path."""
        return jnp.exp(_normalise(jax.nn.logsumexp(state.paths["log_belief"], axis=2), axis=1))


@flax.struct.dataclass
class AutomatonTruth:
    """A probabilistic deterministic finite automaton.

    From state ``s`` the next token is ``v`` with log-probability
    ``logprobs_SV[s, v]`` and the automaton moves to ``next_state_SV[s, v]``.
    Impossible tokens (``-inf``) lead to ``dead_state``, whose row is all ``-inf``
    and which never leaves itself. Per path: ``state`` int32[B].
    """

    logprobs_SV: jax.Array
    next_state_SV: jax.Array
    tokenizer: CharTokenizer = flax.struct.field(pytree_node=False)
    max_len: int = flax.struct.field(pytree_node=False)
    start_state: int = flax.struct.field(pytree_node=False)
    dead_state: int = flax.struct.field(pytree_node=False)

    @classmethod
    def from_tables(cls, probs_SV: np.ndarray, next_state_SV: np.ndarray, tokenizer: CharTokenizer, *,
                    max_len: int, start_state: int, dead_state: int) -> AutomatonTruth:
        """Checks the tables (rows sum to 1 except the dead one; impossible tokens lead to it)."""
        live = np.arange(probs_SV.shape[0]) != dead_state
        if not np.allclose(probs_SV[live].sum(axis=1), 1.0) or probs_SV[dead_state].any():
            raise ValueError("AutomatonTruth: every live row must sum to 1 and the dead row to 0")
        if not np.all((probs_SV > 0) | (next_state_SV == dead_state)):
            raise ValueError("AutomatonTruth: impossible tokens must lead to the dead state")
        return cls(_log(probs_SV), jnp.asarray(next_state_SV, jnp.int32), tokenizer, max_len, start_state, dead_state)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    def _step(self, state: jax.Array, token: jax.Array) -> jax.Array:
        return self.next_state_SV[state, jnp.clip(token, 0, self.vocab_size - 1)]

    def start(self, prompts_RP: jax.Array, lengths_R: jax.Array, capacity: int = 0) -> State:
        """R paths, path r after prompt r (its first ``lengths_R[r]`` tokens); ``capacity`` is not needed."""
        return State(shared=None, paths={"state": _run_prompts(self._step, jnp.int32(self.start_state),
                                                               prompts_RP, lengths_R)})

    def next_logprobs(self, state: State) -> jax.Array:
        return self.logprobs_SV[state.paths["state"]]

    def advance(self, state: State, tokens_B: jax.Array) -> State:
        tokens_B = jnp.asarray(tokens_B, jnp.int32)
        return state.replace(paths={"state": jax.vmap(self._step)(state.paths["state"], tokens_B)})
