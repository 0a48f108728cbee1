"""Tiny Hugging Face ``tokenizer.json`` files, trained offline with the ``tokenizers`` library.

Each builder writes ``tokenizer.json`` into a given directory and returns its path. Training
is deterministic, so a test may rely on a file's vocabulary being the same on every run.
The corpus mixes ASCII words, digits and punctuation with accented letters and the euro
sign, so merges split and join multi-byte characters.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

CORPUS = (
    "The price is 12 € or 15 €.", "café au lait, 2024", "naïve déjà vu 42", "Paris is in France.",
    "the cat sat on the mat", "1 + 2 = 3; 10 + 20 = 30", "Déjà 99 cafés à Paris!",
) * 20

BYTE_LEVEL_EOS = 0  # "<|endoftext|>", the byte-level files' only special
SENTENCEPIECE_UNK, SENTENCEPIECE_BOS, SENTENCEPIECE_EOS = 0, 1, 2  # "<unk>", "<s>", "</s>"
SENTENCEPIECE_FIRST_BYTE = 3  # "<0x00>".."<0xFF>" are ids 3..258, as in Llama 2


def byte_level_bpe(directory: str | Path, *, vocab_size: int = 300, full_alphabet: bool = True) -> Path:
    """A GPT-2-style byte-level BPE: ByteLevel pre-tokenizer and decoder, ``<|endoftext|>`` as id 0.

    ``full_alphabet``: all 256 byte tokens (any text encodes), else only the bytes of the
    corpus (``vocab_size=60`` gives a vocabulary small enough to enumerate).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if full_alphabet else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet,
                                  show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    return _write(directory, tokenizer.to_str())


def sentencepiece_bpe(directory: str | Path, *, vocab_size: int = 120) -> Path:
    """A Llama-2-style BPE: Metaspace (``"▁"`` before the first word), byte fallback, template ``<s> $A``.

    Trained on the corpus, then the 256 ``<0xNN>`` byte tokens are put after the three
    specials, as in Llama 2's vocabulary (the trainer would make them special tokens).
    """
    specials = ["<unk>", "<s>", "</s>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                              show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", SENTENCEPIECE_BOS)])
    spec = json.loads(tokenizer.to_str())
    learned = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda item: item[1]) if t not in specials]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + learned
    spec["model"]["vocab"] = {piece: i for i, piece in enumerate(pieces)}
    for added in spec["added_tokens"]:  # the specials keep their ids (they come first), the rest move up
        assert added["id"] == pieces.index(added["content"])
    return _write(directory, json.dumps(spec, ensure_ascii=False))


def _write(directory: str | Path, text: str) -> Path:
    path = Path(directory) / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
