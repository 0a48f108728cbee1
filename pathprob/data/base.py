"""What every language has: the ``Language`` protocol and a numpy generator from a JAX key.

A language is a small frozen dataclass. Documents are int32[N, max_len] token
ids padded with -1; ``max_len`` is the document length, the context a model of
the language should have. Path sets are Python regex patterns over the
*continuation text* (full match, DOTALL, the EOS token not part of the text).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import jax
import numpy as np

from pathprob.data.tokenizer import Tokenizer
from pathprob.errors import UnknownSpecError

if TYPE_CHECKING:
    from pathprob.models.base import LanguageModel

ANY_PATH = ".*"  # the set of all continuations


@runtime_checkable
class Language(Protocol):
    name: str
    tokenizer: Tokenizer
    max_len: int
    path_set_names: tuple[str, ...]
    natural_sets: tuple[str, ...]  # the named sets an analysis measures by default (e.g. training probes)
    example_tokens: int  # tokens of one example, its separator included: the default path length
    prompt_tail: int  # tokens of the example a ``prompts()`` prompt ends inside that are still to come
    max_examples: int  # the most in-context examples a ``prompts()`` prompt can hold

    def sample(self, key: jax.Array, n: int) -> np.ndarray:
        """int32[n, max_len]: n training documents padded with -1, deterministic in ``key``."""
        ...

    def truth(self) -> LanguageModel | None:
        """The exact generative process as a LanguageModel, or None when there is none."""
        ...

    def prompts(self, n_examples: int = 2, n: int = 4, seed: int = 0) -> list[str]:
        """``n`` probe prompts (starting with BOS) holding ``n_examples`` in-context examples."""
        ...

    def path_set(self, name: str, prompt: str) -> str:
        """The named set of continuations of ``prompt`` as a regex pattern (full match, DOTALL)."""
        ...


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A numpy Generator determined by a JAX key (typed ``jax.random.key`` or raw uint32[2])."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def unknown_path_set(language: str, name: str, names: tuple[str, ...]) -> UnknownSpecError:
    return UnknownSpecError(f"language {language!r} has no path set {name!r}; valid names: {', '.join(names)}")


def categorical(rng: np.random.Generator, probs_SC: np.ndarray, rows_M: np.ndarray) -> np.ndarray:
    """int64[M]: one draw from each row ``probs_SC[rows_M[i]]`` (a categorical per row).

    Vectorised inverse-CDF sampling without an [M, C] temporary: row ``s``'s
    cumulative probabilities are shifted by ``s`` so one ``searchsorted`` over the
    flattened table serves every row. Zero-probability categories are never drawn.
    """
    n_rows, n_cats = probs_SC.shape
    cdf_SC = np.cumsum(probs_SC, axis=1, dtype=np.float64)
    cdf_SC[:, -1] = 1.0  # u < 1 always lands inside its own row
    shifted = (cdf_SC + np.arange(n_rows)[:, None]).ravel()
    u_M = rng.random(rows_M.shape[0])
    drawn_M = np.searchsorted(shifted, u_M + rows_M, side="right") - rows_M * n_cats
    # u + s may round up to s + 1 when u is within an ulp of 1: stay on a possible category.
    last_possible_S = n_cats - 1 - np.argmax(probs_SC[:, ::-1] > 0, axis=1)
    return np.minimum(drawn_M, last_possible_S[rows_M])
