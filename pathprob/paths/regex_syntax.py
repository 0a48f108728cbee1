"""A Python ``re`` pattern rewritten in the syntax of Rust's ``regex`` crate, with the same language.

Token automata over multi-character vocabularies are built by outlines-core, whose regex
engine (Rust's regex-automata) differs from Python's ``re`` in syntax (``[[:alpha:]]``,
``&&`` inside classes, ``\\u`` escapes) and in the meaning of single characters (``\\w``,
``\\s``, ``\\d`` and case folding follow other Unicode tables; ``.`` skips newlines). So a
pattern is never passed as written: Python's own parser reads it, every single-character
item (a literal, ``.``, a class, a category, under the flags in force there) becomes the
explicit set of code points that Python's ``re`` matches, found by running ``re`` itself
over every code point, and only grouping, alternation and counted repetition are spelled
in Rust syntax, where they mean the same. Surrogates never occur in decoded text and are
left out. Possessive repeats, atomic groups, anchors, lookarounds and group references are
refused: they are not plain regular operations.
"""

from __future__ import annotations

import functools
import re
from re import _compiler as re_compiler  # compiles one parsed item, under its flags, with Python's own rules
from re import _constants as re_constants
from re import _parser as re_parser

import numpy as np

_SURROGATES = range(0xD800, 0xE000)
_SINGLE = (re_constants.LITERAL, re_constants.NOT_LITERAL, re_constants.ANY, re_constants.IN)
_REPEATS = (re_constants.MAX_REPEAT, re_constants.MIN_REPEAT)  # lazy or greedy: the same set of full matches
_NOTHING = r"[^\x{0}-\x{10FFFF}]"
_UNIVERSE = 0x110000
_REFUSED = {re_constants.POSSESSIVE_REPEAT: "a possessive repeat", re_constants.ATOMIC_GROUP: "an atomic group",
            re_constants.ASSERT: "a lookaround", re_constants.ASSERT_NOT: "a negative lookaround",
            re_constants.AT: "an anchor", re_constants.GROUPREF: "a group reference",
            re_constants.GROUPREF_EXISTS: "a conditional group"}


class UnsupportedSyntax(ValueError):
    """A construct of the pattern that has no plain-regular Rust equivalent."""


def to_rust(pattern: str, *, without: int | None = None) -> str | None:
    """``pattern`` (Python syntax, DOTALL) in Rust syntax with the same full matches; None when it matches nothing.

    ``without``: a code point left out of every character set (texts holding it never match).
    """
    parsed = re_parser.parse(pattern, re.DOTALL)
    text, empty = _sequence(parsed.data, parsed.state.flags, without)
    return None if empty else text


def _sequence(items, flags: int, without: int | None) -> tuple[str, bool]:
    """(Rust text, whether it matches nothing) of a concatenation of parsed items."""
    parts = [_item(op, arg, flags, without) for op, arg in items]
    return "".join(text for text, _ in parts), any(empty for _, empty in parts)


def _item(op, arg, flags: int, without: int | None) -> tuple[str, bool]:
    if op in _SINGLE:
        mask = _code_points(op, arg, flags)
        if without is not None:
            mask[without] = False
        return _class(mask), not mask.any()
    if op == re_constants.SUBPATTERN:
        _group, add_flags, del_flags, body = arg
        text, empty = _sequence(body, re_compiler._combine_flags(flags, add_flags, del_flags), without)
        return f"(?:{text})", empty
    if op == re_constants.BRANCH:
        branches = [_sequence(branch, flags, without) for branch in arg[1]]
        return "(?:" + "|".join(text for text, _ in branches) + ")", all(empty for _, empty in branches)
    if op in _REPEATS:
        low, high, body = arg
        text, empty = _sequence(body, flags, without)
        bound = f"{{{low},}}" if high == re_constants.MAXREPEAT else f"{{{low},{high}}}"
        return f"(?:{text}){bound}", empty and low > 0
    raise UnsupportedSyntax(f"{_REFUSED.get(op, str(op).lower())} is not a plain regular operation")


def _class(mask: np.ndarray) -> str:
    """A Rust class of the code points in ``mask``, as ranges."""
    points = np.flatnonzero(mask)
    if points.size == 0:
        return _NOTHING
    breaks = np.flatnonzero(np.diff(points) != 1)
    starts, ends = points[np.r_[0, breaks + 1]], points[np.r_[breaks, points.size - 1]]
    return "[" + "".join(rf"\x{{{lo:X}}}" if lo == hi else rf"\x{{{lo:X}}}-\x{{{hi:X}}}"
                         for lo, hi in zip(starts.tolist(), ends.tolist())) + "]"


def _code_points(op, arg, flags: int) -> np.ndarray:
    """bool[0x110000]: the code points one single-character item matches under ``flags`` (never a surrogate)."""
    mask = np.zeros(_UNIVERSE, bool)
    plain = not flags & re.IGNORECASE
    if op == re_constants.NOT_LITERAL:
        mask = ~_code_points(re_constants.LITERAL, arg, flags)
    elif op == re_constants.IN and arg and arg[0][0] == re_constants.NEGATE:
        mask = ~_code_points(re_constants.IN, arg[1:], flags)
    elif op == re_constants.ANY:
        mask[:] = True
        mask[ord("\n")] = bool(flags & re.DOTALL)
    elif op == re_constants.LITERAL and plain:
        mask[arg] = True
    elif op == re_constants.IN and plain and all(kind in (re_constants.LITERAL, re_constants.RANGE) for kind, _ in arg):
        for kind, value in arg:
            low, high = (value, value) if kind == re_constants.LITERAL else value
            mask[low : high + 1] = True
    else:  # categories, case folding: ask Python's re
        for low, high in _scan((op, tuple(arg) if op == re_constants.IN else arg), flags):
            mask[low : high + 1] = True
    mask[_SURROGATES.start : _SURROGATES.stop] = False
    return mask


@functools.lru_cache(maxsize=1024)
def _scan(item, flags: int) -> tuple[tuple[int, int], ...]:
    """The code-point ranges Python's ``re`` matches with ``item`` (a parsed item, made hashable) under ``flags``."""
    state = re_parser.State()
    state.flags = flags
    matcher = re_compiler.compile(re_parser.SubPattern(state, [item]))
    index = np.array([m.start() for m in matcher.finditer(_every_code_point())], np.int64)
    points = np.where(index >= _SURROGATES.start, index + len(_SURROGATES), index)
    if points.size == 0:
        return ()
    breaks = np.flatnonzero(np.diff(points) != 1)
    starts, ends = points[np.r_[0, breaks + 1]], points[np.r_[breaks, points.size - 1]]
    return tuple(zip(starts.tolist(), ends.tolist()))


@functools.cache
def _every_code_point() -> str:
    """Every code point but the surrogates, in order (1,112,064 characters)."""
    return "".join(map(chr, range(_SURROGATES.start))) + "".join(map(chr, range(_SURROGATES.stop, _UNIVERSE)))
