"""GINC-style concepts: documents from a mixture of HMMs (Xie, Raghunathan, Liang & Ma 2022).

A document is BOS ``^``, then ``n_examples`` examples, each ``example_len``
letters followed by SEP ``;``, then EOS ``$``. All examples of a document come
from one latent concept (uniform over ``n_concepts``) and each starts afresh from
that concept's initial state distribution, so examples are independent given the
concept and the Bayes posterior over the concept sharpens with every example.
Each concept is an HMM with ``n_states`` hidden states over the shared letters,
with a sparse initial distribution (one main state with probability ``p_init``),
sparse transitions (each state moves to its main successor along a cycle, and in
half the cases to a second state with probability ``1 - p_next``) and sparse
emissions (each state emits its own letter with probability ``p_letter`` and one
or two others with the rest). Concepts come in families of ``family_size`` that
share the main structure (main initial state, cycle, dominant letters) and differ
in the secondary letters and successors: one example usually tells the family,
telling the twins apart takes a few more, so narrowing is gradual.

Defaults: ``SEED`` = 2022, K = 8 concepts in 4 families of 2, H = 3 hidden states,
12 letters ``a``..``l``, L = 5 letters per example, N_EX = 10 examples,
p_letter = p_next = p_init = 0.9, so ``max_len`` = 1 + 10 * 6 + 1 = 62 tokens.

Measured with the exact truth (``scripts/tune_concepts.py``): the entropy of the
next example is 4.089 nats after 0 examples and 2.566, 2.486, 2.460, 2.440,
2.422, 2.418 after 1..6 (mean over ``prompts(6, n=256)``), a 0..6 ratio of 1.69;
the MAP concept is right for 72% of documents after 1 example, 91% after 3. The
truth's cross-entropy is 0.434 nats/token (4096 sampled documents, all tokens
after BOS). A 2-layer, d_model 128 Transformer (the TrainConfig defaults) reached
0.435 against the truth's 0.431 on the same 2048 documents after 1840 steps,
about 6 minutes on 2 CPU cores.

``concepts-sparse`` (``Concepts(sparse=True)``, ``make_sparse_hmms``) has the same sizes
and document format but sparse emissions: the 4 families own disjoint dominant letters,
the twins of a family share its initial distribution and transitions, and every state
emits its dominant letter (0.9) or one secondary letter that its twin never emits (0.1). Each
concept can emit only some examples, so examples rule concepts out and the support of
the next example shrinks: with the exact truth, over ``narrowing_curve``'s 16 documents
(key 0), the support holds 6150 paths after 0 examples and 1528, 1431, 1047, 948 on
average after 1, 2, 4, 8 (each support inside the earlier ones), the entropy falls
4.517, 3.144, 3.109, 3.020, 2.967 nats, and the posterior of the true concept rises
0.125, 0.69, 0.75, 0.91, 1.0. The shipped run (``checkpoints/concepts-sparse``, the same
Transformer and schedule as ``concepts``) reached an eval loss of 0.4971 nats/token against
the truth's 0.4948 after 2000 steps. (``concepts`` narrows its support too, as any mixture of
HMMs with zeros does, but by accident of its random secondary letters: 5483, 1087, 1001,
791, 455 paths on the same documents, and not at all after the first example on some.)
"""

from __future__ import annotations

import dataclasses
import functools
import re
import string
from typing import ClassVar

import jax
import numpy as np

from pathprob.data.base import ANY_PATH, categorical, numpy_rng, unknown_path_set
from pathprob.data.tokenizer import CharTokenizer
from pathprob.errors import PathprobError
from pathprob.models.truth import ConceptsTruth  # a language sits above the model of its exact truth


SEED = 2022


@dataclasses.dataclass(frozen=True)
class HMMs:
    """One HMM per concept (K concepts, H hidden states, A letters), probabilities in float64."""

    init_KH: np.ndarray
    trans_KHH: np.ndarray  # trans_KHH[k, h, h2] = P(next state h2 | state h, concept k)
    emit_KHA: np.ndarray  # emit_KHA[k, h, a] = P(letter a | state h, concept k)


def make_hmms(seed: int, n_concepts: int, n_states: int, n_letters: int, *, family_size: int, p_letter: float,
              p_next: float, p_init: float) -> HMMs:
    """Sparse, peaked HMMs for every concept, determined by ``seed``.

    Concepts ``k`` with the same ``k // family_size`` form a family: they share
    their dominant structure (main initial state, main successors along a cycle,
    dominant letters) and differ in their secondary letters and successors.
    ``p_letter``: emission probability of a state's own letter; ``p_next``:
    probability of a state's main successor when it has two; ``p_init``:
    probability of a concept's main initial state.
    """
    rng = np.random.default_rng(seed)
    K, H, A = n_concepts, n_states, n_letters
    init, trans, emit = np.zeros((K, H)), np.zeros((K, H, H)), np.zeros((K, H, A))
    for k in range(K):
        if k % family_size == 0:
            main_init, cycle, dominant_letters = rng.integers(H), rng.permutation(H), rng.choice(A, H, replace=False)
        init[k] = (1 - p_init) / max(H - 1, 1)
        init[k, main_init] = p_init if H > 1 else 1.0
        for i, h in enumerate(cycle):
            main_next = cycle[(i + 1) % H]
            others = [s for s in range(H) if s != main_next]
            if rng.random() < 0.5 and others:
                trans[k, h, main_next] = p_next
                trans[k, h, rng.choice(others)] = 1 - p_next
            else:
                trans[k, h, main_next] = 1.0
            letter = dominant_letters[h]
            extra = rng.choice([a for a in range(A) if a != letter], rng.integers(1, 3), replace=False)
            emit[k, h, letter] = p_letter
            emit[k, h, extra] = (1 - p_letter) * rng.dirichlet(np.ones(len(extra)))
    return HMMs(init_KH=init, trans_KHH=trans, emit_KHA=emit)


def make_sparse_hmms(seed: int, n_concepts: int, n_states: int, n_letters: int, *, family_size: int,
                     p_letter: float, p_next: float, p_init: float) -> HMMs:
    """HMMs whose concepts each emit only their own few letters (``concepts-sparse``), determined by ``seed``.

    Each family gets ``n_states`` dominant letters of its own (disjoint across
    families) and one initial distribution and transition table shared by its
    members, built as in ``make_hmms``. Every state of every concept emits exactly
    two letters: its family's dominant letter with probability ``p_letter`` and,
    with the rest, a secondary letter that belongs to this concept alone within its
    family. So a concept's support (the examples it can emit) is a strict subset of
    its family's, an example with a secondary letter rules out the other members of
    the family, and the support of the next example shrinks as examples accumulate.
    """
    rng = np.random.default_rng(seed)
    K, H, A = n_concepts, n_states, n_letters
    n_families = -(-K // family_size)
    dominant_FH = rng.permutation(A)[: n_families * H].reshape(n_families, H)
    init, trans, emit = np.zeros((K, H)), np.zeros((K, H, H)), np.zeros((K, H, A))
    for f in range(n_families):
        members = range(f * family_size, min((f + 1) * family_size, K))
        init_H, trans_HH = np.full(H, (1 - p_init) / max(H - 1, 1)), np.zeros((H, H))
        init_H[rng.integers(H)] = p_init if H > 1 else 1.0
        cycle = rng.permutation(H)
        for i, h in enumerate(cycle):
            main_next = cycle[(i + 1) % H]
            others = [s for s in range(H) if s != main_next]
            trans_HH[h, main_next] = p_next if others and rng.random() < 0.5 else 1.0
            if trans_HH[h, main_next] < 1.0:
                trans_HH[h, rng.choice(others)] = 1 - p_next
        foreign = rng.permutation(np.setdiff1d(np.arange(A), dominant_FH[f]))
        for j, k in enumerate(members):
            init[k], trans[k] = init_H, trans_HH
            emit[k, np.arange(H), dominant_FH[f]] = p_letter
            emit[k, np.arange(H), foreign[j * H : (j + 1) * H]] = 1 - p_letter
    return HMMs(init_KH=init, trans_KHH=trans, emit_KHA=emit)


@dataclasses.dataclass(frozen=True)
class Concepts:
    """The concepts language (see the module docstring); ``name`` is ``"concepts"``.

    ``sparse``: the HMMs of ``make_sparse_hmms`` (each concept emits only its own
    letters), the language ``concepts-sparse``.
    """

    n_concepts: int = 8
    n_states: int = 3
    n_letters: int = 12
    example_len: int = 5
    n_examples: int = 10
    family_size: int = 2
    p_letter: float = 0.9
    p_next: float = 0.9
    p_init: float = 0.9
    seed: int = SEED
    sparse: bool = False
    name: str = "concepts"
    path_set_names: ClassVar[tuple[str, ...]] = ("any", "repeat", "seen")
    natural_sets: ClassVar[tuple[str, ...]] = ("seen",)
    prompt_tail: ClassVar[int] = 0  # prompts end after a separator

    @property
    def example_tokens(self) -> int:
        return self.example_len + 1

    @property
    def max_examples(self) -> int:
        return self.n_examples - 1

    def __post_init__(self):
        for field in ("n_concepts", "n_states", "n_letters", "example_len", "n_examples", "family_size"):
            if getattr(self, field) < 1:
                raise PathprobError(f"Concepts.{field} must be positive, got {getattr(self, field)}")
        for field in ("p_letter", "p_next", "p_init"):
            if not 0 < getattr(self, field) <= 1:
                raise PathprobError(f"Concepts.{field} must be in (0, 1], got {getattr(self, field)}")
        if self.n_letters > 26 or self.n_states > self.n_letters:
            raise PathprobError(f"Concepts.n_letters must be in [n_states, 26], got {self.n_letters}")
        n_families = -(-self.n_concepts // self.family_size)
        if self.sparse and self.n_letters < max(n_families, self.family_size + 1) * self.n_states:
            raise PathprobError(f"sparse Concepts.n_letters must be at least n_states x max(families, family_size + 1)"
                                f" = {max(n_families, self.family_size + 1) * self.n_states}, got {self.n_letters}")

    @property
    def letters(self) -> str:
        return string.ascii_lowercase[: self.n_letters]

    @property
    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer(tokens=(*self.letters, ";", "^", "$"), eos="$", bos="^", sep=";")

    @property
    def max_len(self) -> int:
        return 1 + self.n_examples * (self.example_len + 1) + 1

    @functools.cached_property
    def hmms(self) -> HMMs:
        make = make_sparse_hmms if self.sparse else make_hmms
        return make(self.seed, self.n_concepts, self.n_states, self.n_letters, family_size=self.family_size,
                    p_letter=self.p_letter, p_next=self.p_next, p_init=self.p_init)

    def sample_concepts(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Concepts int64[n] and documents int32[n, max_len] (no padding: all have max_len tokens)."""
        K, H, A = self.n_concepts, self.n_states, self.n_letters
        hmms, tok = self.hmms, self.tokenizer
        concept_N = rng.integers(K, size=n)
        concept_M = np.repeat(concept_N, self.n_examples)  # M = n * n_examples examples
        state_M = categorical(rng, hmms.init_KH, concept_M)
        letters_ML = np.empty((concept_M.shape[0], self.example_len), np.int32)
        for t in range(self.example_len):
            row_M = concept_M * H + state_M
            letters_ML[:, t] = categorical(rng, hmms.emit_KHA.reshape(K * H, A), row_M)
            state_M = categorical(rng, hmms.trans_KHH.reshape(K * H, H), row_M)
        examples = np.concatenate([letters_ML, np.full((concept_M.shape[0], 1), tok.sep_id, np.int32)], axis=1)
        body = examples.reshape(n, -1)
        docs = np.concatenate(
            [np.full((n, 1), tok.bos_id, np.int32), body, np.full((n, 1), tok.eos_id, np.int32)], axis=1
        )
        return concept_N, docs

    def sample(self, key: jax.Array, n: int) -> np.ndarray:
        """int32[n, max_len]: n documents, deterministic in ``key``."""
        return self.sample_concepts(numpy_rng(key), n)[1]

    def truth(self) -> ConceptsTruth:
        """The exact mixture of HMMs (forward algorithm over concept x hidden state)."""

        return ConceptsTruth.from_hmms(self.hmms, self.tokenizer, self.example_len, self.n_examples)

    def prompts(self, n_examples: int = 2, n: int = 4, seed: int = 0) -> list[str]:
        """``n`` prompts: BOS and the first ``n_examples`` examples (with their SEPs) of sampled documents.

        For one ``seed`` the prompts with fewer examples are prefixes of those with more.
        """
        if not 0 <= n_examples < self.n_examples:
            raise PathprobError(f"n_examples must be in [0, {self.n_examples - 1}] for concepts, got {n_examples}")
        docs = self.sample_concepts(np.random.default_rng(seed), n)[1]
        cut = 1 + n_examples * (self.example_len + 1)
        return [self.tokenizer.decode(doc[:cut]) for doc in docs]

    def path_set(self, name: str, prompt: str) -> str:
        """Regex over the continuation of ``prompt``.

        ``any``: every continuation; ``repeat``: the next example repeats the
        prompt's last example; ``seen``: the next example equals one of the
        prompt's examples. The last two need a prompt made of complete examples.
        """
        if name == "any":
            return ANY_PATH
        if name not in self.path_set_names:
            raise unknown_path_set(self.name, name, self.path_set_names)
        examples = self._examples(prompt)
        if not examples:
            raise PathprobError(f"path set {name!r} needs a prompt with at least one complete example")
        chosen = examples[-1:] if name == "repeat" else sorted(set(examples))
        return "(?:" + "|".join(re.escape(e) for e in chosen) + ").*"

    def _examples(self, prompt: str) -> list[str]:
        """The complete examples of a prompt that ends where the next example begins."""
        body = prompt.removeprefix("^")
        pattern = f"(?:[{self.letters}]{{{self.example_len}}};){{0,{self.n_examples - 1}}}"
        if not prompt.startswith("^") or re.fullmatch(pattern, body) is None:
            raise PathprobError(
                f"the prompt {prompt!r} is not BOS followed by complete examples "
                f"({self.example_len} letters of {self.letters!r} and ';' each)"
            )
        return body.split(";")[:-1]
