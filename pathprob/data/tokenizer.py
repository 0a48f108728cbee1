"""A character-level tokenizer with a few special tokens.

Every token is a string: ordinary tokens are single characters, specials
(BOS, SEP, EOS) may be any string. ``encode`` matches specials first, so the
encoding of a string is unique.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from pathprob.errors import BadPromptError


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """Maps text to token ids and back.

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
            raise ValueError("Tokenizer.tokens: duplicate tokens")
        for name in ("eos", "bos", "sep"):
            text = getattr(self, name)
            if text is not None and text not in self.tokens:
                raise ValueError(f"Tokenizer.{name}: {text!r} is not in tokens")
        for tok in self.tokens:
            if len(tok) != 1 and tok not in self._specials:
                raise ValueError(f"Tokenizer.tokens: {tok!r} is not one character and not a special")

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
        out = []
        for i in ids:
            i = int(i)
            if i < 0:
                continue
            if i >= len(self.tokens):
                raise BadPromptError(f"token id {i} is outside the vocabulary of size {len(self.tokens)}")
            out.append(self.tokens[i])
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        fields = json.loads(text)
        fields["tokens"] = tuple(fields["tokens"])
        return cls(**fields)
