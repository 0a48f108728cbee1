"""Token automata of regexes over multi-character vocabularies, against brute force, and their disk cache.

The reference is Python's ``re`` on the decoded text: a token sequence is in ``Regex(p)`` iff
``re.fullmatch(p, text, re.DOTALL)`` accepts the text and its bytes are UTF-8 without U+10FFFF.
"""

import dataclasses
import itertools
import re

import numpy as np
import pytest

from bpe_fixtures import BYTE_LEVEL_EOS, byte_level_bpe
from pathprob.data.hf_tokenizer import HFTokenizer
from pathprob.paths import token_automaton
from pathprob.paths.sets import BadPathSetError, Regex

PATTERNS = [
    r"[0-9]+",  # digits
    r" ?(caf(é|e)|Paris|the cat)",  # alternation, a non-ASCII literal
    r"[^a-z ]*",  # a negated class, which also admits the multi-byte characters
    r"Pa.*",  # a `.*` tail
    r".*€",  # a `.*` head, a character made of several tokens
    r"(?i)THE\w*",  # case folding, a Unicode class
    r"",  # only the empty path
]
MAX_LEN = 3


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A byte-level BPE of 60 tokens whose bytes split é, à and € across tokens."""
    path = byte_level_bpe(tmp_path_factory.mktemp("bpe"), vocab_size=60, full_alphabet=False)
    return HFTokenizer.from_file(path, bos_id=None, eos_id=BYTE_LEVEL_EOS)


@pytest.fixture(scope="module")
def paths(small):
    """Every sequence of up to MAX_LEN non-EOS tokens: (int32[N, MAX_LEN + 1] padded with -1, lengths, texts,
    whether its bytes can be in a Regex set at all)."""
    ids = [i for i in range(small.vocab_size) if i != small.eos_id]
    seqs = [s for n in range(MAX_LEN + 1) for s in itertools.product(ids, repeat=n)]
    tokens = np.full((len(seqs), MAX_LEN + 1), -1, np.int32)
    for row, seq in zip(tokens, seqs):
        row[: len(seq)] = seq
    data = [b"".join(small.token_bytes(i) for i in seq) for seq in seqs]
    is_text = np.array([_can_match(d) for d in data])
    assert not is_text.all()  # the vocabulary can cut characters: the rule for invalid bytes is exercised
    return tokens, np.array([len(s) for s in seqs]), [small.decode(s) for s in seqs], is_text


def _can_match(data: bytes) -> bool:
    try:
        return "\U0010ffff" not in data.decode("utf-8")
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_automaton_accepts_exactly_the_sequences_whose_text_matches(small, paths, pattern):
    tokens, lengths, texts, is_text = paths
    compiled = re.compile(pattern, re.DOTALL)
    expected = np.array([compiled.fullmatch(t) is not None for t in texts]) & is_text
    assert expected.any()
    dfa = Regex(pattern).dfa(small)
    assert dfa.transitions.dtype == np.int32 and dfa.transitions.shape == (dfa.n_states, small.vocab_size)
    np.testing.assert_array_equal(dfa.accepts(tokens), expected)
    with_eos = tokens.copy()
    with_eos[np.arange(len(tokens)), lengths] = small.eos_id
    np.testing.assert_array_equal(dfa.accepts(with_eos), expected)
    np.testing.assert_array_equal(Regex(pattern).contains(with_eos, texts, small), expected)


def test_invalid_bytes_are_in_no_regex_set_and_in_its_complement(small, paths):
    tokens, _, texts, is_text = paths
    everything = Regex(".*").dfa(small)
    np.testing.assert_array_equal(everything.accepts(tokens), is_text)
    np.testing.assert_array_equal((~Regex(".*")).dfa(small).accepts(tokens), ~is_text)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_live_and_reach_agree_with_search(small, pattern):
    dfa = Regex(pattern).dfa(small)
    successors = [set(row.tolist()) for row in dfa.transitions]
    for s in range(dfa.n_states):  # live: an accepting state reachable by graph search
        seen, frontier = {s}, [s]
        while frontier:
            frontier = [t for u in frontier for t in successors[u] if t not in seen]
            seen.update(frontier)
        assert dfa.live[s] == any(dfa.accepting[t] for t in seen)
    eos, V = small.eos_id, small.vocab_size
    reach = dfa.reach(2, eos)
    for k in range(3):  # reach[k, s]: a path with k tokens left ends (at EOS, or after all k) accepted
        # the ways to end: k tokens none of them EOS, or j <= k tokens of which only the last is EOS
        endings = [seq for j in range(k + 1) for seq in itertools.product(range(V), repeat=j)
                   if (j == k and eos not in seq) or (j and seq[-1] == eos and eos not in seq[:-1])]
        ends = np.zeros(dfa.n_states, bool)
        for seq in endings:
            state = np.arange(dfa.n_states)
            for t in seq:
                state = dfa.transitions[state, t]
            ends |= dfa.accepting[state]
        np.testing.assert_array_equal(reach[k], ends)


@dataclasses.dataclass(frozen=True)
class PieceTokenizer:
    """A bare Tokenizer over given byte pieces (the protocol, nothing more): hand-picked characters."""

    pieces: tuple[bytes, ...]
    eos_id: int | None = None
    bos_id = None
    prepend_bos = False

    @property
    def vocab_size(self):
        return len(self.pieces)

    @property
    def tokens(self):
        return tuple(p.decode("utf-8", "backslashreplace") for p in self.pieces)

    def token_bytes(self, i):
        return self.pieces[i]

    def decode(self, ids):
        return b"".join(self.pieces[i] for i in ids if i >= 0).decode("utf-8", "replace")

    def encode(self, text):
        raise NotImplementedError


# Characters on which Python's re and Rust's regex disagree: \s has \x1c (Python), \w has ² and not the
# combining accent (Python), case folding of ſ, K (Kelvin) and İ, "[[:alpha:]]" is a plain class in Python.
CHARACTERS = ["\x1c", "\x85", "²", "\u0301", "ſ", "K", "K", "k", "s", "S", "İ", "i", "\n", ":", "a", "]", "٣", "é"]


@pytest.mark.parametrize("pattern", [r"\s", r"\w+", r"\d", r"(?i)k", r"(?i)s+", r"(?i:i)", r"[[:alpha:]]",
                                     r"[^\W\d]", r".", r"(?-s:.)", r"[a&&b]", r"(?i)[^k]", r"a|a]"])
def test_single_characters_mean_what_they_mean_in_python(pattern):
    pieces = tuple(c.encode("utf-8") for c in CHARACTERS) + (b"$",)
    tok = PieceTokenizer(pieces, eos_id=len(pieces) - 1)
    dfa = Regex(pattern).dfa(tok)
    compiled = re.compile(pattern, re.DOTALL)
    for seq in itertools.chain.from_iterable(itertools.product(range(len(CHARACTERS)), repeat=n) for n in range(3)):
        text = "".join(CHARACTERS[i] for i in seq)
        row = np.array([list(seq) + [-1] * (2 - len(seq))], np.int32)
        assert dfa.accepts(row)[0] == (compiled.fullmatch(text) is not None), (pattern, text)


def test_ids_without_bytes_leave_the_state_as_it_is():
    tok = PieceTokenizer((b"1", b"", b"a", b"$"), eos_id=3)
    dfa = Regex("1+a?").dfa(tok)
    before_end = np.arange(dfa.n_states - 1)  # accept_end is left only for dead
    np.testing.assert_array_equal(dfa.transitions[before_end, 1], before_end)
    assert dfa.accepts(np.array([[1, 0, 1, 1, 2, 1, 3]], np.int32))[0]


def test_texts_holding_the_marker_are_in_no_regex_set():
    tok = PieceTokenizer(("a".encode(), "\U0010ffff".encode(), "\U0010fffe".encode(), b"$"), eos_id=3)
    rows = np.array([[0, -1], [0, 1], [1, -1], [0, 2]], np.int32)
    texts = [tok.decode(row) for row in rows]
    for pattern in (".*", "a?.", "[^b]*"):
        expected = [re.fullmatch(pattern, t, re.DOTALL) is not None and "\U0010ffff" not in t for t in texts]
        np.testing.assert_array_equal(Regex(pattern).dfa(tok).accepts(rows), expected)
        np.testing.assert_array_equal(Regex(pattern).contains(rows, texts, tok), expected)


def test_a_bounded_repeat_after_a_prefix_builds_small(small):
    dfa = Regex(",.{0,30}").dfa(small)  # its unanchored DFA would track 2^30 sets of comma positions
    assert dfa.n_states < 200
    texts = [", Paris", "," + "a" * 30, "," + "a" * 31]
    encoded = [small.encode(t) for t in texts]
    rows = np.full((len(texts), max(map(len, encoded))), -1, np.int32)
    for row, ids in zip(rows, encoded):
        row[: len(ids)] = ids
    np.testing.assert_array_equal(dfa.accepts(rows), [True, True, False])


def test_a_table_over_the_budget_is_refused_before_it_is_built(small, monkeypatch):
    monkeypatch.setenv("PATHPROB_CACHE_DIR", "off")
    monkeypatch.setattr(token_automaton, "MAX_TABLE_BYTES", 100 * small.vocab_size * 4)
    token_automaton.token_automaton("[0-9]+", small)
    with pytest.raises(token_automaton.AutomatonBuildError, match="more than 98 states"):
        token_automaton.token_automaton(r"\w+( \w+)*", small)


def test_a_pattern_matching_nothing_is_all_dead(small):
    dfa = Regex(r"x[^\s\S]").dfa(small)
    assert not dfa.live[dfa.initial] and not dfa.accepting[:-1].any()


@pytest.mark.parametrize("pattern", [r"a*+", r"(?=a)a"])
def test_constructs_beyond_plain_regular_expressions_are_refused_over_bpe(small, pattern):
    with pytest.raises(BadPathSetError, match="cannot be compiled over this vocabulary"):
        Regex(pattern).dfa(small)


def test_a_second_build_reads_the_disk_cache(small, tmp_path, monkeypatch):
    monkeypatch.setenv("PATHPROB_CACHE_DIR", str(tmp_path))
    built = token_automaton.token_automaton("[0-9]+ ?", small)
    (stored,) = (tmp_path / "automata").iterdir()
    assert stored.suffix == ".npz"

    def refuse(*args):
        raise AssertionError("rebuilt instead of read")

    monkeypatch.setattr(token_automaton, "_build", refuse)
    _assert_same(token_automaton.token_automaton("[0-9]+ ?", small), built)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other vocabulary"])
def test_a_corrupt_cache_file_is_rebuilt_and_replaced(small, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("PATHPROB_CACHE_DIR", str(tmp_path))
    built = token_automaton.token_automaton("Pa.*", small)
    (stored,) = (tmp_path / "automata").iterdir()
    good = stored.read_bytes()
    if damage == "garbage":
        stored.write_bytes(b"not an npz file")
    elif damage == "truncated":
        stored.write_bytes(good[: len(good) // 2])
    else:
        transitions, accepting, initial = built
        token_automaton._write(stored, transitions[:, :-1], accepting, initial)
    _assert_same(token_automaton.token_automaton("Pa.*", small), built)
    _assert_same(token_automaton._read(stored, small.vocab_size), built)


def test_no_cache_file_when_the_cache_is_off(small, tmp_path, monkeypatch):
    monkeypatch.setenv("PATHPROB_CACHE_DIR", "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    token_automaton.token_automaton("[0-9]", small)
    assert not any(tmp_path.rglob("*.npz"))


def _assert_same(a, b):
    assert a is not None
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
