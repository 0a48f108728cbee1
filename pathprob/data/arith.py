"""Modular addition: documents of statements ``a+b=c;`` with c = (a + b) mod m.

A document is BOS ``^``, then ``n_statements`` statements with a and b uniform
over the digits ``0``..``m-1`` and c their sum modulo m, then EOS ``$``. Defaults:
m = 7, 10 statements, so ``max_len`` = 1 + 10 * 6 + 1 = 62 tokens. The truth is a
deterministic finite automaton: only the answers depend on the past, and only on
the statement's a and b.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

import jax
import numpy as np

from pathprob.data.base import ANY_PATH, numpy_rng, unknown_path_set
from pathprob.data.tokenizer import CharTokenizer
from pathprob.errors import PathprobError
from pathprob.models.truth import AutomatonTruth  # a language sits above the model of its exact truth


STATEMENT_LEN = 6  # a + b = c ;


@dataclasses.dataclass(frozen=True)
class Arith:
    """The arith language (see the module docstring); ``name`` is ``"arith"``."""

    modulus: int = 7
    n_statements: int = 10
    name: str = "arith"
    path_set_names: ClassVar[tuple[str, ...]] = ("any", "correct")
    natural_sets: ClassVar[tuple[str, ...]] = ("correct",)
    example_tokens: ClassVar[int] = STATEMENT_LEN
    prompt_tail: ClassVar[int] = 2  # prompts end in ``a+b=``: the answer and ';' are to come

    @property
    def max_examples(self) -> int:
        return self.n_statements - 1

    def __post_init__(self):
        if not 2 <= self.modulus <= 10:
            raise PathprobError(f"Arith.modulus must be in [2, 10] (one digit per token), got {self.modulus}")
        if self.n_statements < 1:
            raise PathprobError(f"Arith.n_statements must be positive, got {self.n_statements}")

    @property
    def digits(self) -> str:
        return "0123456789"[: self.modulus]

    @property
    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer(tokens=(*self.digits, "+", "=", ";", "^", "$"), eos="$", bos="^", sep=";")

    @property
    def max_len(self) -> int:
        return 1 + self.n_statements * STATEMENT_LEN + 1

    def sample(self, key: jax.Array, n: int) -> np.ndarray:
        """int32[n, max_len]: n documents, deterministic in ``key``."""
        return self._documents(numpy_rng(key), n)

    def _documents(self, rng: np.random.Generator, n: int) -> np.ndarray:
        tok, m = self.tokenizer, self.modulus
        a_NS, b_NS = rng.integers(m, size=(2, n, self.n_statements))
        plus, equals = tok.tokens.index("+"), tok.tokens.index("=")
        statements = np.stack(
            [a_NS, np.full_like(a_NS, plus), b_NS, np.full_like(a_NS, equals), (a_NS + b_NS) % m,
             np.full_like(a_NS, tok.sep_id)], axis=2,
        ).reshape(n, -1)
        bos, eos = np.full((n, 1), tok.bos_id), np.full((n, 1), tok.eos_id)
        return np.concatenate([bos, statements, eos], axis=1).astype(np.int32)

    def truth(self) -> AutomatonTruth:
        """The exact process as an automaton (uniform a and b, every other token determined)."""

        probs_SV, next_state_SV, start, dead = self._automaton()
        return AutomatonTruth.from_tables(probs_SV, next_state_SV, self.tokenizer, max_len=self.max_len,
                                          start_state=start, dead_state=dead)

    def _automaton(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Tables float64[S, V] and int32[S, V], the start state and the dead state.

        States: 0 before BOS, 1 dead, 2 after EOS, 3 expecting EOS, then per
        statement i: expecting a, '+' (knowing a), b (knowing a), '=' (knowing the
        sum), c (knowing the sum), ';'.
        """
        tok, m, V = self.tokenizer, self.modulus, self.tokenizer.vocab_size
        plus, equals = tok.tokens.index("+"), tok.tokens.index("=")
        start, dead, finished, expect_eos = 0, 1, 2, 3
        per_statement = 2 + 4 * m

        def state(i: int, part: str, value: int = 0) -> int:
            if i == self.n_statements:
                return expect_eos
            offset = {"a": 0, "+": 1, "b": 1 + m, "=": 1 + 2 * m, "c": 1 + 3 * m, ";": 1 + 4 * m}[part]
            return 4 + i * per_statement + offset + value

        n_states = 4 + self.n_statements * per_statement
        probs = np.zeros((n_states, V))
        nxt = np.full((n_states, V), dead, np.int32)

        def allow(s: int, token: int, to: int, p: float = 1.0):
            probs[s, token], nxt[s, token] = p, to

        allow(start, tok.bos_id, state(0, "a"))
        allow(expect_eos, tok.eos_id, finished)
        allow(finished, tok.eos_id, finished)
        for i in range(self.n_statements):
            for a in range(m):
                allow(state(i, "a"), a, state(i, "+", a), 1 / m)
                allow(state(i, "+", a), plus, state(i, "b", a))
                for b in range(m):
                    allow(state(i, "b", a), b, state(i, "=", (a + b) % m), 1 / m)
                allow(state(i, "=", a), equals, state(i, "c", a))
                allow(state(i, "c", a), a, state(i, ";"))
            allow(state(i, ";"), tok.sep_id, state(i + 1, "a"))
        return probs, nxt, start, dead

    def prompts(self, n_examples: int = 2, n: int = 4, seed: int = 0) -> list[str]:
        """``n`` prompts: BOS, ``n_examples`` full statements, then a new ``a+b=`` to answer."""
        if not 0 <= n_examples < self.n_statements:
            raise PathprobError(f"n_examples must be in [0, {self.n_statements - 1}] for arith, got {n_examples}")
        docs = self._documents(np.random.default_rng(seed), n)
        cut = 1 + n_examples * STATEMENT_LEN + 4
        return [self.tokenizer.decode(doc[:cut]) for doc in docs]

    def path_set(self, name: str, prompt: str) -> str:
        """``any``: every continuation; ``correct``: those starting with the right answer."""
        if name == "any":
            return ANY_PATH
        if name != "correct":
            raise unknown_path_set(self.name, name, self.path_set_names)
        question = re.search(f"([{self.digits}])\\+([{self.digits}])=$", prompt)
        if question is None:
            raise PathprobError(f"path set 'correct' needs a prompt ending in a+b=, got {prompt[-12:]!r}")
        return f"{(int(question[1]) + int(question[2])) % self.modulus}.*"
