"""Character-level text from a UTF-8 file: ``text:PATH``.

Tokens are BOS ``\\x02``, EOS ``\\x03`` and the sorted distinct characters of the
file. A training document is BOS followed by a random window of ``max_len - 1``
characters (the whole file and EOS, padded with -1, when the file is shorter).
There is no exact truth.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import ClassVar

import jax
import numpy as np

from pathprob.data.base import ANY_PATH, numpy_rng, unknown_path_set
from pathprob.data.tokenizer import CharTokenizer
from pathprob.errors import PathprobError

BOS, EOS = "\x02", "\x03"


class TextFileError(PathprobError):
    """The text file is missing, unreadable, not UTF-8, empty, or holds the BOS/EOS characters."""


def read_text(path: str | Path) -> str:
    """The file's text, or TextFileError with a one-line reason."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise TextFileError(f"text file {str(path)!r} does not exist") from None
    except UnicodeDecodeError as err:
        raise TextFileError(f"text file {str(path)!r} is not UTF-8 (byte {err.start})") from None
    except OSError as err:
        raise TextFileError(f"text file {str(path)!r} cannot be read ({err.strerror or err})") from None
    if not text:
        raise TextFileError(f"text file {str(path)!r} is empty")
    for char, label in ((BOS, "BOS"), (EOS, "EOS")):
        if char in text:
            raise TextFileError(f"text file {str(path)!r} contains {char!r}, the {label} token of text languages")
    return text


@dataclasses.dataclass(frozen=True)
class Text:
    """The ``text:PATH`` language; the file is read once, on construction."""

    path: str
    max_len: int = 64
    text: str = dataclasses.field(init=False, repr=False, compare=False)
    path_set_names: ClassVar[tuple[str, ...]] = ("any",)
    natural_sets: ClassVar[tuple[str, ...]] = ()
    example_tokens: ClassVar[int] = 8  # text has no examples: eight characters
    prompt_tail: ClassVar[int] = 0
    max_examples: ClassVar[int] = 6  # ``prompts`` ignores the number of examples

    def __post_init__(self):
        if self.max_len < 2:
            raise PathprobError(f"Text.max_len must be at least 2, got {self.max_len}")
        object.__setattr__(self, "text", read_text(self.path))  # a bad file fails here, not at the first sample

    @property
    def name(self) -> str:
        return f"text:{self.path}"

    @functools.cached_property
    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer(tokens=(BOS, EOS, *sorted(set(self.text))), eos=EOS, bos=BOS)

    @functools.cached_property
    def ids(self) -> np.ndarray:
        """int32[N]: the whole file as token ids."""
        index = {char: i for i, char in enumerate(self.tokenizer.tokens)}
        return np.fromiter((index[c] for c in self.text), np.int32, len(self.text))

    def sample(self, key: jax.Array, n: int) -> np.ndarray:
        """int32[n, max_len]: BOS and a random window per document, deterministic in ``key``."""
        return self._windows(numpy_rng(key), n, self.max_len - 1)

    def _windows(self, rng: np.random.Generator, n: int, width: int) -> np.ndarray:
        tok, ids = self.tokenizer, self.ids
        docs = np.full((n, 1 + width), -1, np.int32)
        docs[:, 0] = tok.bos_id
        if ids.shape[0] < width:
            docs[:, 1 : 1 + ids.shape[0]] = ids
            docs[:, 1 + ids.shape[0]] = tok.eos_id
            return docs
        starts_N = rng.integers(ids.shape[0] - width + 1, size=n)
        docs[:, 1:] = ids[starts_N[:, None] + np.arange(width)]
        return docs

    def truth(self) -> None:
        return None

    def prompts(self, n_examples: int = 2, n: int = 4, seed: int = 0) -> list[str]:
        """``n`` prompts: BOS and a window of up to ``max_len // 2`` characters (``n_examples`` is ignored)."""
        docs = self._windows(np.random.default_rng(seed), n, self.max_len // 2)
        return [self.tokenizer.decode(doc[doc != self.tokenizer.eos_id]) for doc in docs]

    def path_set(self, name: str, prompt: str) -> str:
        """``any``: every continuation."""
        if name != "any":
            raise unknown_path_set(self.name, name, self.path_set_names)
        return ANY_PATH
