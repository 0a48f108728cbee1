"""The Tokenizer protocol: the character tokenizer and tokenizer.json files (byte-level and SentencePiece BPE)."""

import json
import types

import numpy as np
import pytest
import tokenizers
from tokenizers import pre_tokenizers

import pathprob as pp
from bpe_fixtures import (
    BYTE_LEVEL_EOS,
    SENTENCEPIECE_BOS,
    SENTENCEPIECE_EOS,
    SENTENCEPIECE_FIRST_BYTE,
    byte_level_bpe,
    sentencepiece_bpe,
)
from pathprob.data.hf_tokenizer import HFTokenizer, TokenizerFileError, byte_level_alphabet
from pathprob.data.tokenizer import CharTokenizer, UnknownTokenizerError, tokenizer_from_json
from pathprob.errors import BadPromptError, PathprobError
from pathprob.models.base import encode_prompt

TEXTS = ["Paris is in France.", "the cat sat on 12 mats", "café, naïve, déjà", "12 € and 🙂 in 日本", ""]


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory):
    return HFTokenizer.from_file(byte_level_bpe(tmp_path_factory.mktemp("bl")), bos_id=None, eos_id=BYTE_LEVEL_EOS)


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    path = sentencepiece_bpe(tmp_path_factory.mktemp("sp"))
    return HFTokenizer.from_file(path, bos_id=SENTENCEPIECE_BOS, eos_id=SENTENCEPIECE_EOS)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_both_implementations_follow_the_protocol(byte_level, sentencepiece):
    char = CharTokenizer(tokens=("^", "a", "$"), eos="$", bos="^")
    for tok in (char, byte_level, sentencepiece):
        assert isinstance(tok, pp.Tokenizer)
    assert char.prepend_bos and char.token_bytes(1) == b"a"
    assert not CharTokenizer(tokens=("a", "$"), eos="$").prepend_bos


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_round_trips_and_its_bytes_are_the_texts_utf8(byte_level, text):
    ids = byte_level.encode(text)
    assert byte_level.decode(ids) == text
    assert b"".join(byte_level.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_a_character_split_across_byte_level_tokens_decodes_only_whole(byte_level):
    ids = byte_level.encode("🙂")  # four bytes, no merge in the corpus: four byte tokens
    assert len(ids) == 4 and not any(_is_utf8(byte_level.token_bytes(i)) for i in ids)
    assert byte_level.decode(ids) == "🙂"
    assert byte_level.decode(ids[:2]) == "\ufffd"  # a cut character: one replacement character
    assert byte_level.tokens[ids[0]] == "\\xf0"


def test_byte_level_alphabet_is_the_librarys(byte_level):
    assert set(byte_level_alphabet()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(byte_level_alphabet().values()) == list(range(256))


def test_byte_level_decode_is_the_librarys_without_specials(byte_level, tmp_path):
    backend = tokenizers.Tokenizer.from_file(str(byte_level_bpe(tmp_path)))
    rng = np.random.default_rng(0)
    for _ in range(2000):
        ids = rng.integers(1, byte_level.vocab_size, rng.integers(1, 6)).tolist()
        assert byte_level.decode(ids) == backend.decode(ids)


def test_specials_are_encoded_from_their_text_and_decoded_as_their_text(byte_level):
    ids = byte_level.encode("ab<|endoftext|>cd")
    assert BYTE_LEVEL_EOS in ids
    assert byte_level.token_bytes(BYTE_LEVEL_EOS) == b"<|endoftext|>"
    assert byte_level.decode(ids) == "ab<|endoftext|>cd"
    assert byte_level.decode([-1, *ids, -1]) == "ab<|endoftext|>cd"
    with pytest.raises(BadPromptError, match="outside the vocabulary"):
        byte_level.decode([byte_level.vocab_size])


@pytest.mark.parametrize("text", TEXTS[:-1])
def test_sentencepiece_round_trips_with_its_leading_space(sentencepiece, text):
    ids = sentencepiece.encode(text)
    assert SENTENCEPIECE_BOS not in ids  # encode adds no specials
    assert sentencepiece.decode(ids) == " " + text  # Metaspace marks the first word; decode strips nothing
    assert b"".join(sentencepiece.token_bytes(i) for i in ids) == (" " + text).encode("utf-8")


def test_sentencepiece_bytes_of_space_marks_and_byte_fallback(sentencepiece):
    for b in (0x00, 0x41, 0xE6, 0xFF):
        assert sentencepiece.token_bytes(SENTENCEPIECE_FIRST_BYTE + b) == bytes([b])
    marked = [i for i in range(sentencepiece.vocab_size) if sentencepiece.token_bytes(i).startswith(b" ")]
    assert marked and all(" " in sentencepiece.tokens[i] and "▁" not in sentencepiece.tokens[i] for i in marked)
    ids = sentencepiece.encode("日")  # not in the corpus: "▁" then its three bytes
    assert ids[1:] == [SENTENCEPIECE_FIRST_BYTE + b for b in "日".encode("utf-8")]
    assert sentencepiece.token_bytes(SENTENCEPIECE_BOS) == b"<s>"


def test_prepend_bos_comes_from_the_template_unless_given(sentencepiece, byte_level, tmp_path):
    assert sentencepiece.prepend_bos and not byte_level.prepend_bos
    path = sentencepiece_bpe(tmp_path)
    assert not HFTokenizer.from_file(path, bos_id=SENTENCEPIECE_BOS, eos_id=SENTENCEPIECE_EOS,
                                     prepend_bos=False).prepend_bos
    assert not HFTokenizer.from_file(path, bos_id=SENTENCEPIECE_EOS, eos_id=SENTENCEPIECE_EOS).prepend_bos
    with pytest.raises(TokenizerFileError, match="needs a bos_id"):
        HFTokenizer.from_file(path, bos_id=None, eos_id=SENTENCEPIECE_EOS, prepend_bos=True)
    with pytest.raises(TokenizerFileError, match="outside the vocabulary"):
        HFTokenizer.from_file(path, bos_id=None, eos_id=10**6)


def test_encode_prompt_prepends_bos_only_when_the_tokenizer_says_so(sentencepiece, byte_level, tmp_path):
    def lm(tok):
        return types.SimpleNamespace(tokenizer=tok, vocab_size=tok.vocab_size, max_len=64)

    ids = encode_prompt(lm(sentencepiece), "Paris")
    assert ids[0] == SENTENCEPIECE_BOS and sentencepiece.decode(ids[1:]) == " Paris"
    assert list(encode_prompt(lm(sentencepiece), "<s> Paris")).count(SENTENCEPIECE_BOS) == 1
    bare = HFTokenizer.from_file(sentencepiece_bpe(tmp_path), bos_id=SENTENCEPIECE_BOS, eos_id=SENTENCEPIECE_EOS,
                                 prepend_bos=False)
    assert SENTENCEPIECE_BOS not in encode_prompt(lm(bare), "Paris")
    assert byte_level.decode(encode_prompt(lm(byte_level), "Paris")) == "Paris"


def test_equal_files_give_equal_hashable_tokenizers(byte_level, tmp_path):
    path = byte_level_bpe(tmp_path)
    again = HFTokenizer.from_file(path, bos_id=None, eos_id=BYTE_LEVEL_EOS)
    assert again == byte_level and hash(again) == hash(byte_level) and len({again, byte_level}) == 1
    assert HFTokenizer.from_file(path, bos_id=None, eos_id=1) != byte_level
    smaller = HFTokenizer.from_file(byte_level_bpe(tmp_path / "small", vocab_size=280), bos_id=None, eos_id=0)
    assert smaller != byte_level


def test_missing_unreadable_and_unsupported_files_are_one_line_errors(tmp_path):
    missing = tmp_path / "nowhere" / "tokenizer.json"
    with pytest.raises(TokenizerFileError, match="does not exist") as info:
        HFTokenizer.from_file(missing, bos_id=None, eos_id=None)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(TokenizerFileError, match="cannot be read") as info:
        HFTokenizer.from_file(broken, bos_id=None, eos_id=None)
    assert str(broken) in str(info.value)
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(TokenizerFileError, match="not a tokenizer.json"):
        HFTokenizer.from_file(empty, bos_id=None, eos_id=None)
    spec = json.loads(byte_level_bpe(tmp_path).read_text())
    spec["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}
    wordpiece = tmp_path / "wordpiece.json"
    wordpiece.write_text(json.dumps(spec))
    with pytest.raises(TokenizerFileError, match="not supported"):
        HFTokenizer.from_file(wordpiece, bos_id=None, eos_id=None)
    assert issubclass(TokenizerFileError, PathprobError)


def test_char_tokenizer_json_loads_through_the_module_function():
    tok = CharTokenizer(tokens=("^", ";", "a", "b", "$"), eos="$", bos="^", sep=";")
    assert json.loads(tok.to_json()) == {"tokens": ["^", ";", "a", "b", "$"], "eos": "$", "bos": "^", "sep": ";"}
    assert tokenizer_from_json(tok.to_json()) == tok == CharTokenizer.from_json(tok.to_json())
    with pytest.raises(UnknownTokenizerError):
        tokenizer_from_json(json.dumps({"kind": "something else"}))


def test_a_larger_model_vocabulary_pads_with_ids_without_text(byte_level, tmp_path):
    path = byte_level_bpe(tmp_path)
    padded = HFTokenizer.from_file(path, bos_id=None, eos_id=BYTE_LEVEL_EOS, vocab_size=320)
    assert padded.vocab_size == 320 and padded.token_bytes(319) == b""
    ids = byte_level.encode("ab")
    assert padded.decode([ids[0], 319, *ids[1:]]) == "ab"
    with pytest.raises(TokenizerFileError, match="more than vocab_size"):
        HFTokenizer.from_file(path, bos_id=None, eos_id=BYTE_LEVEL_EOS, vocab_size=100)
