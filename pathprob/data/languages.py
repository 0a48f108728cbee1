"""The languages by name: ``concepts``, ``concepts-sparse``, ``arith`` and ``text:PATH``."""

from __future__ import annotations

from pathprob.data.arith import Arith
from pathprob.data.base import Language
from pathprob.data.concepts import Concepts
from pathprob.data.text import Text, TextFileError
from pathprob.errors import UnknownSpecError

LANGUAGE_NAMES = ("concepts", "concepts-sparse", "arith", "text:PATH")

__all__ = ["LANGUAGE_NAMES", "Arith", "Concepts", "Language", "Text", "TextFileError", "get_language",
           "language_with_tokenizer"]


def get_language(name: str) -> Concepts | Arith | Text:
    """The language called ``name`` with its default parameters."""
    if name == "concepts":
        return Concepts()
    if name == "concepts-sparse":
        return Concepts(sparse=True, name="concepts-sparse")
    if name == "arith":
        return Arith()
    if name.startswith("text:") and len(name) > len("text:"):
        return Text(name.removeprefix("text:"))
    raise UnknownSpecError(f"unknown language {name!r}; valid names: {', '.join(LANGUAGE_NAMES)}")


def language_with_tokenizer(tokenizer) -> Language | None:
    """The first built-in language (without a file) whose tokenizer is ``tokenizer``, or None."""
    return next((get_language(name) for name in LANGUAGE_NAMES if not name.endswith(":PATH")
                 and get_language(name).tokenizer == tokenizer), None)
