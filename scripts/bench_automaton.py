"""Token-automaton build time over a GPT-2-sized vocabulary: cold (outlines-core) and warm (the disk cache).

Nothing is downloaded: a byte-level BPE ``tokenizer.json`` with 50,257 tokens (GPT-2's
count: 256 bytes, 50,000 merges, ``<|endoftext|>``) is trained in a temporary directory on a
generated corpus of pseudo-words, numbers and punctuation (a few seconds). Each pattern's
automaton is built with an empty cache directory (cold) and read back from it (warm); both
are the median of REPEATS runs of ``token_automaton`` itself, so the in-memory cache of
``Regex.dfa`` plays no part. Prints one markdown row per pattern.

    python scripts/bench_automaton.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pathprob.data.hf_tokenizer import HFTokenizer
from pathprob.paths import token_automaton

VOCAB = 50_257
PATTERNS = [r"[0-9]+", r"( [A-Z][a-z]+)+\.", r" ?[0-9]{1,4}(\.[0-9]+)?", r".*", r"Paris.{0,30}", r"\w+( \w+)*"]
REPEATS = 3
ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "ch",
          "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "str", "th", "tr"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "io", "ou", "é", "ü"]
CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "ck"]


def corpus(rng: np.random.Generator, n_lines: int = 30_000, n_words: int = 150_000):
    """Lines of 12 Zipf-distributed pseudo-words (a fifth capitalised), a tenth of them numbers, and a stop."""
    onset, vowel, coda = (rng.integers(0, len(parts), (n_words, 3)).tolist() for parts in (ONSETS, VOWELS, CODAS))
    syllables = rng.integers(1, 4, n_words).tolist()
    lexicon = ["".join(ONSETS[o[j]] + VOWELS[v[j]] + CODAS[c[j]] for j in range(k))
               for o, v, c, k in zip(onset, vowel, coda, syllables)]
    capital = rng.random(n_words) < 0.2
    lexicon = list(dict.fromkeys(w.capitalize() if up else w for w, up in zip(lexicon, capital.tolist())))
    weights = 1.0 / np.arange(1, len(lexicon) + 1) ** 0.8
    words = rng.choice(len(lexicon), (n_lines, 12), p=weights / weights.sum())
    numbers = rng.integers(0, 10_000, words.shape)
    is_number = rng.random(words.shape) < 0.1
    for w_row, n_row, k_row in zip(words.tolist(), numbers.tolist(), is_number.tolist()):
        yield " ".join(str(n) if k else lexicon[w] for w, n, k in zip(w_row, n_row, k_row)) + "."


def train(directory: Path) -> Path:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus(np.random.default_rng(0)), trainer)
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        path = train(tmp)
        trained = time.perf_counter() - start
        start = time.perf_counter()
        tok = HFTokenizer.from_file(path, bos_id=None, eos_id=0)
        loaded = time.perf_counter() - start
        mean_bytes = np.mean([len(tok.token_bytes(i)) for i in range(tok.vocab_size)])
        print(f"tokenizer: V = {tok.vocab_size:,}, mean token {mean_bytes:.1f} bytes; trained in {trained:.1f} s, "
              f"HFTokenizer.from_file {loaded:.2f} s; "
              f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
        print("| pattern | V | states | cold build (s) | warm, disk cache (s) | cache file (KiB) |")
        print("|---|---:|---:|---:|---:|---:|")
        for n, pattern in enumerate(PATTERNS):
            cold, warm = [], []
            for r in range(REPEATS):
                os.environ["PATHPROB_CACHE_DIR"] = str(tmp / f"cache-{n}-{r}")
                start = time.perf_counter()
                transitions, _, _ = token_automaton.token_automaton(pattern, tok)
                cold.append(time.perf_counter() - start)
                start = time.perf_counter()
                token_automaton.token_automaton(pattern, tok)
                warm.append(time.perf_counter() - start)
            size = sum(f.stat().st_size for f in (tmp / f"cache-{n}-0" / "automata").iterdir()) / 1024
            print(f"| `{pattern}` | {tok.vocab_size:,} | {transitions.shape[0]} | {statistics.median(cold):.3f} "
                  f"| {statistics.median(warm):.3f} | {size:,.0f} |")


if __name__ == "__main__":
    main()
