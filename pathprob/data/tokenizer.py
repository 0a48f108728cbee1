"""Tokenizers: the protocol every engine relies on, and the character-level one.

A ``Tokenizer`` maps text to token ids and back. A path's text is made of its tokens'
bytes: ``token_bytes(i)`` is what token ``i`` contributes, and ``decode`` joins them.
Two implementations: ``CharTokenizer`` here (one character per token, plus specials),
and ``HFTokenizer`` (``pathprob.data.hf_tokenizer``, a Hugging Face ``tokenizer.json``).

``CharTokenizer``: ordinary tokens are single characters, specials (BOS, SEP, EOS)
may be any string. ``encode`` matches specials first, so the encoding of a string is
unique.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pathprob.errors import BadPromptError, PathprobError


class UnknownTokenizerError(PathprobError):
    """A stored tokenizer in a format this version cannot read."""


@runtime_checkable
class Tokenizer(Protocol):
    """What engines, path sets, the CLI and the plots rely on.

    - ``vocab_size``; ``eos_id`` and ``bos_id`` (either may be None);
    - ``prepend_bos``: whether a *text* prompt gets ``bos_id`` prepended when it does not
      already start with it;
    - ``encode(text)``: ids, no specials added (special-token text inside ``text`` maps to
      the special's id); ``decode(ids)``: text, negative ids (padding) skipped;
    - ``token_bytes(i)``: the bytes token ``i`` contributes to a decoded text;
    - ``tokens``: a display text per token (labels).
    """

    @property
    def tokens(self) -> tuple[str, ...]: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def prepend_bos(self) -> bool: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_bytes(self, i: int) -> bytes: ...


def token_pieces(ids: Sequence[int], pieces: Sequence) -> list:
    """``pieces[i]`` for each token id (negative ids, padding, skipped); a BadPromptError for an id out of range."""
    out = []
    for i in ids:
        i = int(i)
        if i < 0:
            continue
        if i >= len(pieces):
            raise BadPromptError(f"token id {i} is outside the vocabulary of size {len(pieces)}")
        out.append(pieces[i])
    return out


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """Maps text to token ids and back, one character per ordinary token.

    Attributes:
      tokens: the vocabulary; ``tokens[i]`` is the text of token id ``i``.
      bos, eos, sep: the texts of the special tokens (``sep`` and ``bos`` may be None).
    """

    tokens: tuple[str, ...]
    eos: str
    bos: str | None = None
    sep: str | None = None

    def __post_init__(self):
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("CharTokenizer.tokens: duplicate tokens")
        for name in ("eos", "bos", "sep"):
            text = getattr(self, name)
            if text is not None and text not in self.tokens:
                raise ValueError(f"CharTokenizer.{name}: {text!r} is not in tokens")
        for tok in self.tokens:
            if len(tok) != 1 and tok not in self._specials:
                raise ValueError(f"CharTokenizer.tokens: {tok!r} is not one character and not a special")

    @property
    def _specials(self) -> tuple[str, ...]:
        return tuple(t for t in (self.bos, self.sep, self.eos) if t is not None)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def eos_id(self) -> int:
        return self.tokens.index(self.eos)

    @property
    def bos_id(self) -> int | None:
        return None if self.bos is None else self.tokens.index(self.bos)

    @property
    def sep_id(self) -> int | None:
        return None if self.sep is None else self.tokens.index(self.sep)

    @property
    def prepend_bos(self) -> bool:
        return self.bos is not None

    def token_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes of token ``i``'s text (specials included)."""
        return self.tokens[i].encode("utf-8")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; raises BadPromptError naming unknown characters."""
        index = {t: i for i, t in enumerate(self.tokens)}
        specials = sorted((s for s in self._specials if len(s) > 1), key=len, reverse=True)
        ids, unknown, pos = [], [], 0
        while pos < len(text):
            special = next((s for s in specials if text.startswith(s, pos)), None)
            if special is not None:
                ids.append(index[special])
                pos += len(special)
                continue
            char = text[pos]
            if char in index:
                ids.append(index[char])
            elif char not in unknown:
                unknown.append(char)
            pos += 1
        if unknown:
            shown = ", ".join(repr(c) for c in unknown)
            raise BadPromptError(
                f"characters not in the vocabulary: {shown} (the vocabulary is {''.join(t for t in self.tokens if len(t) == 1)!r})"
            )
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids; negative ids (padding) are skipped."""
        return "".join(token_pieces(ids, self.tokens))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        fields = json.loads(text)
        fields["tokens"] = tuple(fields["tokens"])
        return cls(**fields)


def tokenizer_from_json(text: str) -> Tokenizer:
    """The tokenizer stored as ``text`` (what ``CharTokenizer.to_json`` wrote; checkpoints hold it)."""
    fields = json.loads(text)
    if not isinstance(fields, dict) or "tokens" not in fields:
        raise UnknownTokenizerError("the stored tokenizer is not a character tokenizer (no 'tokens' field)")
    return CharTokenizer.from_json(text)


def vocabulary_digest(tokenizer: Tokenizer) -> str:
    """SHA-256 (hex) of every token's bytes, in id order: equal digests, equal path texts."""
    digest = hashlib.sha256()
    for i in range(tokenizer.vocab_size):
        piece = tokenizer.token_bytes(i)
        digest.update(len(piece).to_bytes(4, "little") + piece)
    return digest.hexdigest()
