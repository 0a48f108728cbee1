"""Token proposals: how the sampler turns a model's next-token log-probabilities into a draw.

A ``Proposal`` warps the distribution (temperature, top-k, top-p) and may restrict it
with a ``Guide``, a token DFA on the device plus a look-ahead table, to the tokens after
which the path can still end inside the DFA's set. ``inverse_cdf`` draws one token per
row from one uniform. All functions are pure and batched over rows (B) and the
vocabulary (V); they run inside the samplers' ``lax.scan``.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp

from pathprob.errors import PathprobError
from pathprob.paths.sets import TokenDFA


@dataclasses.dataclass(frozen=True)
class Proposal:
    """How tokens are drawn from the sampling model's next-token log-probabilities.

    In order: divide by ``temperature``, keep the ``top_k`` most probable tokens, keep
    the smallest set of most probable tokens with mass >= ``top_p``, and with
    ``guided`` keep only tokens after which the path can still end inside the DFA's set;
    then renormalise. Hashable: a static argument of the jitted sampler.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guided: bool = False

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < math.inf):
            raise PathprobError(f"temperature must be a positive number, got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k <= 0):
            raise PathprobError(f"top_k must be a positive integer, got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise PathprobError(f"top_p must be in (0, 1], got {self.top_p!r}")
        object.__setattr__(self, "temperature", float(self.temperature))

    @property
    def covers_support(self) -> bool:
        """Whether every token the model can emit stays possible (top-k / top-p cut some)."""
        return self.top_k is None and (self.top_p is None or self.top_p == 1)


MODEL = Proposal()


@flax.struct.dataclass
class Guide:
    """A token DFA on the device, with what it takes to guide sampling into its set.

    ``reach_KS[k, s]``: a path in state ``s`` with ``k`` tokens left can still end
    accepted (ending at EOS, which moves to ``transitions[s, eos]``, or after its last
    token). Tighter than ``TokenDFA.live``, which ignores the length limit.
    """

    transitions_SV: jax.Array
    accepting_S: jax.Array
    reach_KS: jax.Array
    initial: jax.Array


def make_guide(dfa: TokenDFA, max_new: int, eos: int) -> Guide:
    return Guide(jnp.asarray(dfa.transitions, jnp.int32), jnp.asarray(dfa.accepting),
                 jnp.asarray(dfa.reach(max_new, eos)), jnp.int32(dfa.initial))


def normalise(x_BV: jax.Array) -> jax.Array:
    """Log-softmax that leaves an all ``-inf`` row at ``-inf`` (no NaN)."""
    total = jax.nn.logsumexp(x_BV, axis=-1, keepdims=True)
    return x_BV - jnp.where(jnp.isfinite(total), total, 0.0)


def warp(logp_BV: jax.Array, proposal: Proposal) -> jax.Array:
    """The proposal's normalised log-probabilities (temperature, top-k, top-p; not the DFA)."""
    if proposal.temperature == 1.0 and proposal.top_k is None and proposal.top_p is None:
        return logp_BV
    x_BV = logp_BV / proposal.temperature
    if proposal.top_k is not None and proposal.top_k < x_BV.shape[1]:
        kth_B1 = jax.lax.top_k(x_BV, proposal.top_k)[0][:, -1:]
        x_BV = jnp.where(x_BV >= kth_B1, x_BV, -jnp.inf)
    if proposal.top_p is not None and proposal.top_p < 1:
        sorted_BV = -jnp.sort(-x_BV, axis=-1)
        probs_BV = jnp.exp(normalise(sorted_BV))
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        keep_B1 = jnp.maximum(jnp.sum(before_BV < proposal.top_p, axis=-1, keepdims=True), 1)
        x_BV = jnp.where(x_BV >= jnp.take_along_axis(sorted_BV, keep_B1 - 1, axis=-1), x_BV, -jnp.inf)
    return normalise(x_BV)


def allowed_tokens(guide: Guide, dfa_B: jax.Array, left: jax.Array, eos: int) -> jax.Array:
    """bool[B, V]: the tokens after which a path can still end accepted.

    ``dfa_B``: each path's DFA state; ``left``: tokens that may follow this one.
    """
    next_BV = guide.transitions_SV[dfa_B]
    ok_BV = guide.reach_KS[left][next_BV]
    ends_BV = guide.accepting_S[next_BV]
    return jnp.where(jnp.arange(next_BV.shape[1]) == eos, ends_BV, ok_BV)


def restrict(logq_BV: jax.Array, allowed_BV: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``logq`` restricted to the allowed tokens and renormalised, and the log of the allowed mass [B].

    A row that loses no possible token stays bit-identical, with log mass exactly 0.
    """
    masked_BV = jnp.where(allowed_BV, logq_BV, -jnp.inf)
    log_mass_B1 = jax.nn.logsumexp(masked_BV, axis=-1, keepdims=True)
    untouched_B1 = jnp.all(allowed_BV | (logq_BV == -jnp.inf), axis=-1, keepdims=True)
    restricted_BV = masked_BV - jnp.where(jnp.isfinite(log_mass_B1), log_mass_B1, 0.0)
    return jnp.where(untouched_B1, logq_BV, restricted_BV), jnp.where(untouched_B1, 0.0, log_mass_B1)[:, 0]


def inverse_cdf(logq_BV: jax.Array, u_B: jax.Array) -> jax.Array:
    """int32[B]: one token per row with probability exp(logq), from one uniform per row.

    Picks the first token whose cumulative mass exceeds u · total; never a token of
    probability 0 (float32 rounding at the top end falls back to the last possible token).
    The float32 cumulative sum resolves probabilities down to about 6e-8 of the mass
    before a token in vocabulary order: exact enough for small vocabularies, but with
    tens of thousands of tokens a token rarer than that may never be drawn.
    """
    top_B1 = jnp.max(logq_BV, axis=-1, keepdims=True)
    q_BV = jnp.exp(logq_BV - jnp.where(jnp.isfinite(top_B1), top_B1, 0.0))
    cdf_BV = jnp.cumsum(q_BV, axis=-1)
    token_B = jnp.sum(cdf_BV <= u_B[:, None] * cdf_BV[:, -1:], axis=-1)
    V = logq_BV.shape[1]
    last_possible_B = V - 1 - jnp.argmax((q_BV > 0)[:, ::-1], axis=-1)
    return jnp.minimum(token_B, last_possible_B).astype(jnp.int32)


def pick(x_BV: jax.Array, token_B: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x_BV, token_B[:, None], axis=1)[:, 0]


def entropy_rows(logp_BV: jax.Array) -> jax.Array:
    """float32[B]: entropy (nats) of each row's distribution."""
    return -jnp.sum(jnp.where(logp_BV > -jnp.inf, jnp.exp(logp_BV) * logp_BV, 0.0), axis=-1)


def kl_rows(logq_BV: jax.Array, logp_BV: jax.Array) -> jax.Array:
    """float32[B]: KL(q || p) per row; +inf where q puts mass on a token p cannot emit."""
    return jnp.sum(jnp.where(logq_BV > -jnp.inf, jnp.exp(logq_BV) * (logq_BV - logp_BV), 0.0), axis=-1)
