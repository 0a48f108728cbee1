"""The result of sampling: ``Samples`` (rows of paths with counts), and the key and set helpers samplers share."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pathprob.data.tokenizer import Tokenizer
from pathprob.errors import PathprobError
from pathprob.files import dumps
from pathprob.models.base import LanguageModel
from pathprob.paths import frontier
from pathprob.paths.sets import PathSet


@dataclasses.dataclass(frozen=True, repr=False)
class Samples:
    """Sampled continuation paths, host numpy: D rows, each standing for ``count`` draws.

    ``tokens`` int32[D, max_new] padded with -1, ``lengths`` int32[D], ``eos`` bool[D];
    ``logp`` float64[D] log-probability under the model, ``logq`` float64[D] under the
    proposal the tokens were drawn from (equal to ``logp`` for plain sampling).
    ``count`` int64[D] is how many of the n draws each row stands for (None: one each,
    the rows are the draws in order); ``len(samples)`` is n. ``extras`` holds per-row sums
    of tracked per-step quantities (``entropy``: the chain-rule sum of next-token
    entropies; ``kl``) and ``accepted`` (in the DFA's set). ``seed`` is the integer seed
    when one was given, ``key_data`` the key's raw data.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    eos: np.ndarray
    logp: np.ndarray
    logq: np.ndarray
    tokenizer: Tokenizer
    max_new: int
    seed: int | None = None
    key_data: tuple[int, ...] = ()
    chunk: int = 0
    proposal: dict = dataclasses.field(default_factory=dict)
    extras: dict = dataclasses.field(default_factory=dict)
    count: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.logp.shape[0]) if self.count is None else int(self.count.sum())

    @property
    def weights(self) -> np.ndarray:
        """int64[D]: the draws each row stands for."""
        return np.ones(self.logp.shape[0], np.int64) if self.count is None else self.count

    @property
    def log_weights(self) -> np.ndarray:
        """float64[D]: log importance weights log p - log q (0 for plain sampling)."""
        return self.logp - self.logq

    def texts(self, *, with_eos: bool = False) -> list[str]:
        eos_id = self.tokenizer.eos_id
        return [self.tokenizer.decode([t for t in row[:n] if with_eos or t != eos_id])
                for row, n in zip(self.tokens.tolist(), self.lengths.tolist())]

    def counts(self) -> list[tuple[tuple[int, ...], int, float]]:
        """Distinct paths as (tokens, count, logp), most frequent first (ties: most probable first)."""
        found: dict[tuple[int, ...], list] = {}
        for row, n, lp, c in zip(self.tokens.tolist(), self.lengths.tolist(), self.logp.tolist(),
                                 self.weights.tolist()):
            entry = found.setdefault(tuple(row[:n]), [0, lp])
            entry[0] += c
        return sorted(((path, c, lp) for path, (c, lp) in found.items()), key=lambda e: (-e[1], -e[2], e[0]))

    def draws(self, rng: np.random.Generator) -> Samples:
        """The n draws as rows (count None) in a random order from ``rng``."""
        index = np.repeat(np.arange(self.logp.shape[0]), self.weights)
        index = index[rng.permutation(index.size)]
        return self._take(index, count=None)

    def _take(self, index: np.ndarray, count: np.ndarray | None) -> Samples:
        return dataclasses.replace(self, tokens=np.take(self.tokens, index, axis=0), lengths=self.lengths[index],
                                   eos=self.eos[index],
                                   logp=self.logp[index], logq=self.logq[index],
                                   extras={k: v[index] for k, v in self.extras.items()}, count=count)

    @staticmethod
    def concatenate(parts: Sequence[Samples]) -> Samples:
        first = parts[0]
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])
        extras = {k: np.concatenate([p.extras[k] for p in parts]) for k in first.extras}
        count = None if all(p.count is None for p in parts) else np.concatenate([p.weights for p in parts])
        return dataclasses.replace(first, tokens=cat("tokens"), lengths=cat("lengths"), eos=cat("eos"),
                                   logp=cat("logp"), logq=cat("logq"), extras=extras, count=count)

    def to_dict(self) -> dict:
        decode = lambda path: self.tokenizer.decode([t for t in path if t != self.tokenizer.eos_id])
        return {
            "n": len(self), "max_new": self.max_new, "seed": self.seed, "key_data": list(self.key_data),
            "chunk": self.chunk, "proposal": self.proposal,
            "paths": [{"text": decode(path), "tokens": list(path), "count": c, "logp": lp, "p": math.exp(lp)}
                      for path, c, lp in self.counts()],
        }

    def to_json(self, **kwargs) -> str:
        return dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        counts = self.counts()
        lines = [f"Samples(n={len(self)}, max_new={self.max_new}, distinct={len(counts)}, seed={self.seed})",
                 f"  {'count':>8}  {'freq':>8}  {'p(model)':>10}  path"]
        for path, c, lp in counts[:10]:
            text = self.tokenizer.decode(list(path))
            lines.append(f"  {c:8d}  {c / max(len(self), 1):8.4f}  {math.exp(lp):10.6f}  {text!r}")
        if len(counts) > 10:
            lines.append(f"  ... {len(counts) - 10} more distinct paths")
        return "\n".join(lines)


def contains(pathset: PathSet, tokens_NL: np.ndarray, lengths_N: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """bool[N]: which paths are in the set (by its DFA when it has one, else by their texts)."""
    dfa = pathset.dfa(tokenizer)
    if dfa is not None:
        return dfa.accepts(tokens_NL)
    eos = tokenizer.eos_id
    rows = zip(tokens_NL.tolist(), lengths_N.tolist())
    texts = [tokenizer.decode([t for t in row[:n] if t != eos]) for row, n in rows]
    return pathset.contains(tokens_NL, texts, tokenizer)


def as_key(key) -> tuple[jax.Array, int | None, tuple[int, ...]]:
    """(typed key, integer seed or None, raw key data) from one key, its raw data, or an integer seed."""
    if key is None:
        raise PathprobError("sampling needs key=jax.random.key(seed) (or an integer seed)")
    seed = None
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer, jax.Array, np.ndarray)):
        raise PathprobError(f"key must be jax.random.key(seed) or an integer seed, got {type(key).__name__}")
    if isinstance(key, (int, np.integer)):
        if not -(2**63) <= key < 2**63:
            raise PathprobError(f"an integer seed must fit in 64 bits (signed), got {key}")
        seed, key = int(key), jax.random.key(int(key))
    elif not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        try:
            key = jax.random.wrap_key_data(key)
        except TypeError:
            raw = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
            raise PathprobError(f"key is neither a PRNG key nor its raw data ({raw.dtype}{list(raw.shape)}): got "
                                f"{key.dtype}{list(key.shape)}; pass jax.random.key(seed) or an integer seed") from None
    if key.shape != ():
        raise PathprobError(f"key must be one PRNG key, got an array of {key.shape} keys; pass key[0] or fold_in")
    return key, seed, tuple(int(x) for x in np.asarray(jax.random.key_data(key)).ravel())


def chunk_size(n: int, chunk: int) -> int:
    """The power-of-two batch every chunk of a run of ``n`` samples uses."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise PathprobError(f"n must be a positive integer, got {n!r}")
    if isinstance(chunk, (bool, np.bool_)) or not isinstance(chunk, (int, np.integer)) or chunk <= 0:
        raise PathprobError(f"chunk must be a positive integer, got {chunk!r}")
    return frontier.bucket(min(int(n), frontier.bucket(int(chunk))))


def check_compatible(lm: LanguageModel, other: LanguageModel) -> None:
    if other.vocab_size != lm.vocab_size or other.eos_id != lm.eos_id:
        raise PathprobError("the two models must share the vocabulary and the EOS token "
                            f"(vocab {lm.vocab_size} vs {other.vocab_size}, eos {lm.eos_id} vs {other.eos_id})")
