"""A Hugging Face ``tokenizer.json`` as a pathprob ``Tokenizer`` (the ``tokenizers`` library encodes).

The text of a path is the UTF-8 decoding (``errors="replace"``) of the concatenation of
its tokens' bytes: no cleanup, no leading-space stripping, no dropped specials. ``decode``
computes exactly that, so the text a regex sees is made of the bytes a token automaton
walks (``pathprob.paths.sets``). Each token's bytes come from its piece in the file:

- byte-level BPE (GPT-2, GPT-NeoX, Qwen, Llama 3; a ``ByteLevel`` decoder): every
  character of the piece stands for one byte (GPT-2's byte-to-unicode alphabet);
- SentencePiece style (Llama 2; a ``Replace`` or ``Metaspace`` decoder): ``"▁"`` is a
  space, ``<0xNN>`` is the byte NN when the model has byte fallback, every other
  character is its UTF-8; the decoder's ``Strip`` of a leading space is not applied;
- added tokens (specials included): the UTF-8 of their content.

``encode`` leaves specials to the caller (``add_special_tokens=False``) but maps special
text inside the input to its id, and applies the file's normalizer; a text prompt gets
BOS when ``prepend_bos`` (by default: when the file's post-processor template starts
with BOS). Two tokenizers are equal when their vocabulary bytes and special ids are.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path

import tokenizers

from pathprob.data.tokenizer import token_pieces, vocabulary_digest
from pathprob.errors import BadPromptError, PathprobError

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenizerFileError(PathprobError):
    """A tokenizer.json that is missing, unreadable, or of a kind pathprob cannot read."""


class HFTokenizer:
    """A ``tokenizer.json`` read by the ``tokenizers`` library; see the module doc for the bytes of a token."""

    def __init__(self, backend: tokenizers.Tokenizer, token_bytes: tuple[bytes, ...], *, bos_id: int | None,
                 eos_id: int | None, prepend_bos: bool, source: str = "tokenizer.json"):
        if prepend_bos and bos_id is None:
            raise TokenizerFileError(f"{source}: prepend_bos needs a bos_id")
        for name, i in (("bos_id", bos_id), ("eos_id", eos_id)):
            if i is not None and not 0 <= i < len(token_bytes):
                raise TokenizerFileError(f"{source}: {name} {i} is outside the vocabulary of size {len(token_bytes)}")
        self._backend = backend
        self._bytes = token_bytes
        self._bos_id, self._eos_id, self._prepend_bos = bos_id, eos_id, bool(prepend_bos)
        self._source = source
        self._key = (vocabulary_digest(self), bos_id, eos_id, self._prepend_bos)

    @classmethod
    def from_file(cls, path: str | Path, *, bos_id: int | None, eos_id: int | None,
                  prepend_bos: bool | None = None, vocab_size: int | None = None) -> HFTokenizer:
        """The tokenizer in ``path``; ``prepend_bos=None`` reads it from the post-processor template.

        ``vocab_size``: the model's, when its embedding has more rows than the file has
        tokens (Pythia, Qwen); the extra ids have no bytes (they add no text).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            spec = json.loads(text)
        except FileNotFoundError:
            raise TokenizerFileError(f"tokenizer file {path} does not exist") from None
        except (OSError, ValueError) as err:  # ValueError: not UTF-8, not JSON
            raise TokenizerFileError(f"tokenizer file {path} cannot be read ({err})") from None
        try:
            backend = tokenizers.Tokenizer.from_str(text)
        except Exception as err:  # the library raises a bare Exception for any malformed file
            raise TokenizerFileError(f"tokenizer file {path} is not a tokenizer.json ({err})") from None
        piece_bytes = _piece_decoder(spec, path)
        added = {i: t.content for i, t in backend.get_added_tokens_decoder().items()}
        pieces = {i: piece for piece, i in backend.get_vocab(with_added_tokens=True).items()}
        size = max(pieces, default=-1) + 1
        if vocab_size is not None:
            if vocab_size < size:
                raise TokenizerFileError(f"tokenizer file {path} has {size} tokens, more than vocab_size {vocab_size}")
            size = vocab_size
        token_bytes = tuple(added[i].encode("utf-8") if i in added else piece_bytes(pieces[i]) if i in pieces else b""
                            for i in range(size))
        if prepend_bos is None:
            prepend_bos = bos_id is not None and _template_bos(spec) == bos_id
        return cls(backend, token_bytes, bos_id=bos_id, eos_id=eos_id, prepend_bos=prepend_bos, source=str(path))

    @property
    def vocab_size(self) -> int:
        return len(self._bytes)

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def prepend_bos(self) -> bool:
        return self._prepend_bos

    @functools.cached_property
    def tokens(self) -> tuple[str, ...]:
        """Display texts: each token's bytes as UTF-8, undecodable bytes shown as ``\\xNN``."""
        return tuple(b.decode("utf-8", "backslashreplace") for b in self._bytes)

    def token_bytes(self, i: int) -> bytes:
        return self._bytes[i]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (the file's normalizer and pre-tokenizer applied, no specials added)."""
        if not isinstance(text, str):
            raise BadPromptError(f"can only encode text, got {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """The UTF-8 text (errors replaced) of the ids' bytes; negative ids (padding) are skipped."""
        return b"".join(token_pieces(ids, self._bytes)).decode("utf-8", "replace")

    def __eq__(self, other) -> bool:
        return isinstance(other, HFTokenizer) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return (f"HFTokenizer({self._source!r}, vocab_size={self.vocab_size}, bos_id={self._bos_id}, "
                f"eos_id={self._eos_id}, prepend_bos={self._prepend_bos})")


@functools.cache
def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-unicode map, inverted: the byte each character of a byte-level piece stands for."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    shifted = (b for b in range(256) if b not in printable)
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(shifted)}


def _piece_decoder(spec: dict, path: Path):
    """A function from a vocabulary piece to its bytes, chosen by the file's decoder."""
    decoder = spec.get("decoder") or {}
    steps = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
    kinds = [step.get("type") for step in steps]
    if "ByteLevel" in kinds:
        alphabet = byte_level_alphabet()

        def byte_level(piece: str) -> bytes:
            try:
                return bytes(alphabet[c] for c in piece)
            except KeyError:
                raise TokenizerFileError(f"tokenizer file {path}: piece {piece!r} is not byte-level text") from None

        return byte_level
    replacements = [(step["replacement"], " ") for step in steps if step.get("type") == "Metaspace"]
    replacements += [(step["pattern"]["String"], step["content"]) for step in steps
                     if step.get("type") == "Replace" and "String" in step.get("pattern", {})]
    if not replacements:
        raise TokenizerFileError(f"tokenizer file {path}: decoder {kinds} is not supported (pathprob reads "
                                 f"byte-level BPE and SentencePiece-style tokenizers)")
    byte_fallback = bool((spec.get("model") or {}).get("byte_fallback")) or "ByteFallback" in kinds

    def sentencepiece(piece: str) -> bytes:
        fallback = _BYTE_FALLBACK.fullmatch(piece) if byte_fallback else None
        if fallback:
            return bytes([int(fallback[1], 16)])
        for old, new in replacements:
            piece = piece.replace(old, new)
        return piece.encode("utf-8")

    return sentencepiece


def _template_bos(spec: dict) -> int | None:
    """The id of the special token a single-sequence post-processor template starts with, if any."""
    post = spec.get("post_processor") or {}
    for step in post.get("processors", []) if post.get("type") == "Sequence" else [post]:
        if step.get("type") == "TemplateProcessing" and step.get("single"):
            first = step["single"][0].get("SpecialToken")
            if first is not None:
                ids = step["special_tokens"][first["id"]]["ids"]
                return ids[0] if ids else None
    return None
