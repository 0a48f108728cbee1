"""The token automaton of a regex over a multi-character vocabulary: built by outlines-core, kept on disk.

outlines-core's ``Index`` walks every token's bytes through the byte-level DFA of a
pattern (Rust's regex-automata) and returns the (state, token) -> state map; this module
turns it into a complete table with pathprob's two EOS states (see ``sets``). What the
library is given, and why:

- the pattern rewritten in Rust syntax with Python's meaning of every character
  (``regex_syntax.to_rust``);
- a trailing ``$``: regex-automata's DFA follows leftmost-first priorities and drops
  lower-priority alternatives once a higher one has matched (``a|ab`` would refuse
  ``ab``, ``a*?`` all but the empty text); behind ``$`` nothing matches before the end of
  the text, so nothing is dropped;
- a leading MARKER, the noncharacter U+10FFFF, left out of every character set and
  consumed by a marker token before the first real token. It gives the library the
  start state it lacks for a pattern ending in ``$`` that matches the empty text, and it
  keeps the library's eager *unanchored* DFA (built, never used) as small as the anchored
  one: without it, ``,.{0,20}`` tracks every comma of the last 20 characters (2^20
  states). The price: a text holding U+10FFFF is in no Regex set;
- one extra token per byte value, so that every byte string can be spelled and every
  state has a way on (the library refuses a vocabulary that cannot continue a state);
  their columns, and the states only they reach, are dropped afterwards.

A table over more than MAX_TABLE_BYTES is refused before it is built (a byte-only index
counts its states first). Built once per (pattern, vocabulary bytes, EOS id) and stored as
``.npz`` in ``compile_cache.automata_dir()``; an unreadable or inconsistent file is rebuilt
and replaced (written atomically), an unwritable directory only costs the build.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import unicodedata
import zipfile
import zlib
from pathlib import Path

import numpy as np
import outlines_core

from pathprob.compile_cache import automata_dir
from pathprob.data.tokenizer import Tokenizer, vocabulary_digest
from pathprob.files import write_atomic
from pathprob.paths.regex_syntax import to_rust

FORMAT = 1  # bump when the meaning of a stored table changes
MARKER = "\U0010ffff"
MAX_TABLE_BYTES = 1 << 30  # int32[S, V]: 1 GiB is about 5,300 states over 50,257 tokens


class AutomatonBuildError(ValueError):
    """outlines-core refused the pattern, or its table would be too large."""


def token_automaton(pattern: str, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray, int]:
    """(int32[S, V] transitions, bool[S] accepting, initial state) of ``pattern``, from the disk cache when stored.

    The last two states are ``dead`` and ``accept_end`` (EOS from an accepting state); EOS
    leads to one of them, and their rows lead to ``dead``.
    """
    path = _cache_path(pattern, tokenizer)
    stored = None if path is None else _read(path, tokenizer.vocab_size)
    if stored is not None:
        return stored
    built = _build(pattern, [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)], tokenizer.eos_id)
    if path is not None:
        _write(path, *built)
    return built


def can_match(data: bytes) -> bool:
    """Whether a path with these bytes can be in a Regex set at all: UTF-8 text without MARKER."""
    try:
        return MARKER not in data.decode("utf-8")
    except UnicodeDecodeError:
        return False


def _build(pattern: str, vocab: list[bytes], eos: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    V = len(vocab)
    rust = to_rust(pattern, without=ord(MARKER))
    if rust is None:  # the pattern matches nothing: every path is dead
        return _complete([], np.zeros(0, bool), V, eos)
    library_pattern = rf"\x{{{ord(MARKER):X}}}(?:{rust})$"
    marker, no_eos = V + 256, V + 257  # ids of the marker token, and of EOS when there is none
    spelling = {bytes([b]): [V + b] for b in range(256)} | {MARKER.encode(): [marker]}
    most = MAX_TABLE_BYTES // (4 * V) - 2
    if _count_states(_index(library_pattern, spelling, no_eos), marker, most) > most:
        raise AutomatonBuildError(f"its token table would pass {MAX_TABLE_BYTES / 2**30:g} GiB "
                                  f"(more than {most:,} states x {V:,} tokens)")
    ids: dict[bytes, list[int]] = {}
    for i, piece in enumerate(vocab):
        if i != eos:
            ids.setdefault(piece, []).append(i)
    for piece, extra in spelling.items():
        ids.setdefault(piece, []).extend(extra)
    index = _index(library_pattern, ids, no_eos if eos is None else eos)
    start = index.get_next_state(index.get_initial_state(), marker)  # a state: the language is not empty
    transitions, finals = index.get_transitions(), index.get_final_states()
    order, queue, rows = {start: 0}, [start], []
    for state in queue:  # grows while iterating: breadth-first over the states real tokens reach
        out = transitions.get(state, {})
        tokens = np.fromiter(out.keys(), np.int64, len(out))
        targets = np.fromiter(out.values(), np.int64, len(out))
        real = tokens < V  # the spelling tokens' columns go; EOS's is overwritten in _complete
        distinct, inverse = np.unique(targets[real], return_inverse=True)
        for s in distinct.tolist():
            if s not in order:
                order[s] = len(order)
                queue.append(s)
        rows.append((tokens[real], np.array([order[s] for s in distinct.tolist()], np.int64)[inverse]))
    return _complete(rows, np.array([s in finals for s in queue], bool), V, eos)


def _count_states(index: outlines_core.Index, marker: int, most: int) -> int:
    """The states reachable after the marker token, counted up to ``most + 1``."""
    start = index.get_next_state(index.get_initial_state(), marker)
    seen, queue = {start}, [start]
    for state in queue:  # grows while iterating
        for token in index.get_allowed_tokens(state) or ():
            successor = index.get_next_state(state, token)
            if successor is not None and successor not in seen:
                seen.add(successor)
                queue.append(successor)
                if len(seen) > most:
                    return len(seen)
    return len(seen)


def _index(pattern: str, ids: dict[bytes, list[int]], eos: int) -> outlines_core.Index:
    try:
        return outlines_core.Index(pattern, outlines_core.Vocabulary(eos, ids))
    except ValueError as err:
        raise AutomatonBuildError(str(err)) from None


def _complete(rows: list, accepting: np.ndarray, V: int, eos: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """The complete table from state 0: listed moves, the rest to ``dead``, EOS to ``accept_end`` or ``dead``.

    ``rows[s]`` = (token ids, successor states) of state s; ``accepting`` bool[len(rows)].
    """
    n = len(rows)
    dead, accept_end = n, n + 1
    transitions = np.full((n + 2, V), dead, np.int32)
    for s, (tokens, targets) in enumerate(rows):
        transitions[s, tokens] = targets
    if eos is not None:
        transitions[:n, eos] = np.where(accepting, accept_end, dead)
    return transitions, np.concatenate([accepting, [False, True]]), 0


def _cache_path(pattern: str, tokenizer: Tokenizer) -> Path | None:
    where = automata_dir()
    if where is None:
        return None
    facts = [FORMAT, importlib.metadata.version("outlines-core"), unicodedata.unidata_version, pattern,
             tokenizer.eos_id, vocabulary_digest(tokenizer)]
    return where / f"{hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:40]}.npz"


def _read(path: Path, V: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The stored table, or None when the file is missing, unreadable or not a table over V tokens."""
    try:
        with np.load(path) as stored:
            transitions, accepting, initial = stored["transitions"], stored["accepting"], int(stored["initial"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    S = accepting.shape[0] if accepting.ndim == 1 else -1
    consistent = (transitions.dtype == np.int32 and accepting.dtype == bool and transitions.shape == (S, V)
                  and 0 <= initial < S and 0 <= transitions.min() and transitions.max() < S)
    return (transitions, accepting, initial) if consistent else None


def _write(path: Path, transitions: np.ndarray, accepting: np.ndarray, initial: int) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, transitions=transitions, accepting=accepting, initial=np.int64(initial))
    try:
        write_atomic(path, buffer.getvalue())
    except OSError:
        pass  # an unwritable cache only costs the next build
