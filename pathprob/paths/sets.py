"""Sets of paths: regular expressions (as token-level DFAs), predicates, and their combinations.

A path's *text* is its decoded continuation without the EOS token: the concatenation of
its tokens' bytes (``Tokenizer.token_bytes``; specials other than EOS included) read as
UTF-8. ``Regex`` sets are full matches of a Python-syntax pattern with DOTALL semantics:
a path is in ``Regex(p)`` iff ``re.fullmatch(p, text, re.DOTALL)`` accepts its text. Over
a multi-character vocabulary its bytes must also be UTF-8 without U+10FFFF: bytes that are
not UTF-8 (a path cut inside a multi-byte character) are in no Regex set, though
``decode`` shows them as U+FFFD and ``Predicate`` sees that text; U+10FFFF is a
noncharacter the automaton builder reserves as a marker (``token_automaton``).

They compile once per tokenizer to a token DFA: ``transitions`` int32[S, V],
``accepting`` bool[S] and ``live`` bool[S] (acceptance still reachable). Two extra
states make EOS explicit: after EOS a path sits in ``accept_end`` if its text matched and
in ``dead`` otherwise, so a path of any length is in the set iff its final DFA state is
accepting. The table is plain data and runs inside jit (``transitions[state, token]``) as
well as on the host.

A ``CharTokenizer`` vocabulary compiles through interegular's character DFA, each token's
characters run through it. Any other vocabulary (BPE, tens of thousands of tokens)
compiles with outlines-core (``token_automaton``), cached on disk. outlines-core rather
than llguidance: its ``Index`` is exactly the (state, token) -> state table a TokenDFA
is, with explicit states, so ``live``, ``reach``, products and the disk cache work on it;
llguidance computes token masks lazily from a parser state it does not expose. Its regex
engine matches bytes of valid UTF-8 only, hence the rule above, and its syntax and
character classes differ from Python's, so the pattern is handed over rewritten with
Python's own meaning of every character (``regex_syntax``).

The mass of a Regex set counts every token sequence whose text matches, whatever its
tokenisation: that is the model's path mass, non-canonical tokenisations included
(``" 12"`` spelled as ``" 1", "2"`` or ``" ", "1", "2"`` are three paths of the set). A
canonical-tokenisation-only variant is not offered: outlines-core's Index admits every
spelling by construction and llguidance builds no automaton of canonical sequences either,
so it would take a hand-built, tokenizer-specific automaton intersected with this one.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from re import _constants as re_constants  # the stdlib regex parser: sizes a pattern before interegular expands it
from re import _parser as re_parser

import interegular
import numpy as np

from pathprob.data.tokenizer import CharTokenizer, Tokenizer
from pathprob.errors import PathprobError
from pathprob.paths.regex_syntax import UnsupportedSyntax
from pathprob.paths.token_automaton import AutomatonBuildError, can_match, token_automaton


class BadPathSetError(PathprobError):
    """A path set that cannot be built (e.g. an invalid regular expression)."""


@dataclasses.dataclass(frozen=True, eq=False)
class TokenDFA:
    """A complete DFA over token ids: every (state, token) has a successor."""

    transitions: np.ndarray  # int32[S, V]
    accepting: np.ndarray  # bool[S]
    initial: int

    @functools.cached_property
    def live(self) -> np.ndarray:
        """bool[S]: states from which an accepting state is reachable."""
        live = self.accepting.copy()
        while True:
            grown = live | live[self.transitions].any(axis=1)
            if (grown == live).all():
                return live
            live = grown

    def reach(self, max_new: int, eos: int) -> np.ndarray:
        """bool[max_new + 1, S]: whether a path in each state, with k tokens left, can still end accepted.

        It ends accepted at EOS (which moves to ``transitions[s, eos]``) or after its last token
        in an accepting state. Tighter than ``live``, which ignores the length limit.
        """
        return _reach(self, max_new, eos)

    @property
    def n_states(self) -> int:
        return int(self.transitions.shape[0])

    def final_states(self, tokens_NL: np.ndarray) -> np.ndarray:
        """int32[N]: the state after each row's tokens (padding -1 leaves the state unchanged)."""
        state = np.full(tokens_NL.shape[0], self.initial, np.int32)
        for column in tokens_NL.T:
            state = np.where(column >= 0, self.transitions[state, np.maximum(column, 0)], state)
        return state

    def accepts(self, tokens_NL: np.ndarray) -> np.ndarray:
        return self.accepting[self.final_states(tokens_NL)]


@functools.lru_cache(maxsize=64)
def _reach(dfa: TokenDFA, max_new: int, eos: int) -> np.ndarray:
    ends_now = dfa.accepting[dfa.transitions[:, eos]]
    non_eos = np.delete(dfa.transitions, eos, axis=1)
    rows = [dfa.accepting.copy()]
    for _ in range(max_new):
        rows.append(ends_now | rows[-1][non_eos].any(axis=1))
    table = np.stack(rows)
    table.flags.writeable = False  # cached and shared: never modified in place
    return table


class PathSet:
    """A set of continuation paths. Combine with ``&``, ``|`` and ``~``."""

    def contains(self, tokens_NL: np.ndarray, texts: list[str], tokenizer: Tokenizer) -> np.ndarray:
        """bool[N]: which of these paths (token rows padded with -1, and their texts) are in the set."""
        raise NotImplementedError

    def dfa(self, tokenizer: Tokenizer) -> TokenDFA | None:
        """The set as a token DFA, or None when it has none (a host-side predicate)."""
        return None

    def __and__(self, other: PathSet) -> PathSet:
        return Combined("and", (self, other))

    def __or__(self, other: PathSet) -> PathSet:
        return Combined("or", (self, other))

    def __invert__(self) -> PathSet:
        return Combined("not", (self,))


@dataclasses.dataclass(frozen=True)
class Regex(PathSet):
    """Paths whose text fully matches ``pattern`` (Python syntax, DOTALL)."""

    pattern: str

    def __post_init__(self):
        if not isinstance(self.pattern, str):
            raise BadPathSetError(f"a regular expression must be text, got {type(self.pattern).__name__}")
        try:
            size = _expanded_size(re_parser.parse(self.pattern))
        except re.error as err:
            raise BadPathSetError(f"invalid regular expression {self.pattern!r}: {err}") from None
        if size > MAX_REGEX_SIZE:
            raise BadPathSetError(f"regular expression {self.pattern!r} expands to about {size:,} characters "
                                  f"(more than {MAX_REGEX_SIZE:,}); its automaton would be too large")
        try:
            self._fsm  # noqa: B018 - validate eagerly so a bad pattern fails where it is written
        except interegular.patterns.Unsupported as err:
            raise BadPathSetError(f"regular expression {self.pattern!r} uses syntax a finite automaton cannot "
                                  f"express here (anchors, \\b, lookarounds, group references): {err}") from None
        except (interegular.patterns.InvalidSyntax, AttributeError, TypeError, ValueError, NotImplementedError) as err:
            # interegular fails on some valid syntax (comments) with internal errors
            raise BadPathSetError(f"regular expression {self.pattern!r} is not supported "
                                  f"({type(err).__name__}: {err})") from None

    @functools.cached_property
    def _fsm(self):
        return interegular.parse_pattern(f"(?s)(?:{self.pattern})").to_fsm()

    def contains(self, tokens_NL, texts, tokenizer):
        compiled = re.compile(self.pattern, re.DOTALL)
        matched = np.array([compiled.fullmatch(t) is not None for t in texts], bool)
        if isinstance(tokenizer, CharTokenizer):
            return matched
        eos = tokenizer.eos_id
        rows = (b"".join(tokenizer.token_bytes(t) for t in row if t >= 0 and t != eos) for row in tokens_NL.tolist())
        return matched & np.array([can_match(data) for data in rows], bool)

    def dfa(self, tokenizer: Tokenizer) -> TokenDFA:
        return _regex_dfa(self.pattern, tokenizer)

    def __str__(self) -> str:
        return f"Regex({self.pattern!r})"


MAX_REGEX_SIZE = 2000  # characters a pattern may expand to, counting repeats ({n} copies its body n times)


def _expanded_size(parsed) -> int:
    """How many characters ``parsed`` (``re._parser`` output) spells out with every bounded repeat expanded."""
    size = 0
    for op, arg in parsed:
        if op in (re_constants.MAX_REPEAT, re_constants.MIN_REPEAT, re_constants.POSSESSIVE_REPEAT):
            low, high, body = arg
            size += max(low, 1 if high == re_constants.MAXREPEAT else high) * _expanded_size(body)
        elif op == re_constants.SUBPATTERN:
            size += _expanded_size(arg[-1])
        elif op == re_constants.BRANCH:
            size += sum(_expanded_size(branch) for branch in arg[1])
        elif op in (re_constants.ASSERT, re_constants.ASSERT_NOT):
            size += _expanded_size(arg[1])
        else:
            size += 1
    return size


@functools.lru_cache(maxsize=64)
def _regex_dfa(pattern: str, tokenizer: Tokenizer) -> TokenDFA:
    if not isinstance(tokenizer, CharTokenizer):
        try:
            transitions, accepting, initial = token_automaton(pattern, tokenizer)
        except (UnsupportedSyntax, AutomatonBuildError) as err:
            raise BadPathSetError(f"regular expression {pattern!r} cannot be compiled over this "
                                  f"vocabulary: {err}") from None
        return TokenDFA(transitions=transitions, accepting=accepting, initial=initial)
    fsm = Regex(pattern)._fsm
    states = sorted(fsm.states)
    index = {s: i for i, s in enumerate(states)}
    dead, accept_end = len(states), len(states) + 1
    n_states, vocab = len(states) + 2, tokenizer.vocab_size
    transitions = np.full((n_states, vocab), dead, np.int32)
    accepting = np.zeros(n_states, bool)
    accepting[[index[s] for s in fsm.finals]] = True
    accepting[accept_end] = True
    eos = tokenizer.eos_id
    for s in states:
        for v, text in enumerate(tokenizer.tokens):
            if v == eos:
                transitions[index[s], v] = accept_end if s in fsm.finals else dead
                continue
            state = s
            for char in text:
                state = fsm.map[state].get(fsm.alphabet[char])
                if state is None:
                    break
            transitions[index[s], v] = dead if state is None else index[state]
    return TokenDFA(transitions=transitions, accepting=accepting, initial=index[fsm.initial])


@dataclasses.dataclass(frozen=True)
class Predicate(PathSet):
    """Paths whose text satisfies ``fn(text) -> bool`` (host-side; enumerated or sampled paths only)."""

    fn: Callable[[str], bool]
    name: str = "predicate"

    def contains(self, tokens_NL, texts, tokenizer):
        return np.array([bool(self.fn(t)) for t in texts], bool)


@dataclasses.dataclass(frozen=True)
class Combined(PathSet):
    """``and`` / ``or`` of two sets, or ``not`` of one; a DFA when every part has one."""

    op: str
    parts: tuple[PathSet, ...]

    def contains(self, tokens_NL, texts, tokenizer):
        values = [p.contains(tokens_NL, texts, tokenizer) for p in self.parts]
        if self.op == "not":
            return ~values[0]
        return values[0] & values[1] if self.op == "and" else values[0] | values[1]

    def dfa(self, tokenizer):
        dfas = [p.dfa(tokenizer) for p in self.parts]
        if any(d is None for d in dfas):
            return None
        if self.op == "not":
            d = dfas[0]
            return TokenDFA(transitions=d.transitions, accepting=~d.accepting, initial=d.initial)
        return _product(*dfas, both=self.op == "and")


def _product(a: TokenDFA, b: TokenDFA, *, both: bool) -> TokenDFA:
    """The product DFA over reachable state pairs (intersection or union)."""
    pairs = {(a.initial, b.initial): 0}
    order = [(a.initial, b.initial)]
    rows = []
    for sa, sb in order:  # grows while iterating: breadth-first over reachable pairs
        row = []
        for ta, tb in zip(a.transitions[sa], b.transitions[sb]):
            key = (int(ta), int(tb))
            if key not in pairs:
                pairs[key] = len(order)
                order.append(key)
            row.append(pairs[key])
        rows.append(row)
    acc_a = np.array([a.accepting[sa] for sa, _ in order])
    acc_b = np.array([b.accepting[sb] for _, sb in order])
    return TokenDFA(
        transitions=np.array(rows, np.int32), accepting=(acc_a & acc_b) if both else (acc_a | acc_b), initial=0
    )


def as_path_set(value: PathSet | str) -> PathSet:
    """A PathSet from a PathSet or a regex pattern string."""
    return value if isinstance(value, PathSet) else Regex(value)
