"""Languages and their exact truths: normalisation, brute-force references, sampling statistics."""

import dataclasses
import functools
import hashlib
import itertools
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chi2  # scipy is a dependency of jax

from pathprob.data.concepts import Concepts
from pathprob.data.languages import LANGUAGE_NAMES, Language, get_language
from pathprob.data.text import TextFileError
from pathprob.errors import BadPromptError, PathprobError, UnknownSpecError
from pathprob.models.base import LanguageModel, State, start_one, take_paths
from pathprob.paths.enumerate import enumerate_many

CONCEPTS = get_language("concepts")
SPARSE = get_language("concepts-sparse")
ARITH = get_language("arith")
FALSE_FAILURE = 1e-4  # per chi-square test


start = jax.jit(lambda lm, prompt_P: start_one(lm, prompt_P, 0))
advance = jax.jit(lambda lm, state, tokens_B: lm.advance(state, tokens_B))
next_logprobs = jax.jit(lambda lm, state: lm.next_logprobs(state))
concept_posterior = jax.jit(lambda lm, state: lm.concept_posterior(state))


@jax.jit
def start_many(lm, prompts_NP):
    """One path per prompt (all of one length P)."""
    return lm.start(prompts_NP, jnp.full(prompts_NP.shape[0], prompts_NP.shape[1], jnp.int32), 0)


@functools.partial(jax.jit, static_argnames=("prompt_len",))
def document_logprobs(lm, docs_NT, prompt_len=1):
    """float32[N, T - prompt_len] log p(token_t | tokens_<t), and the logsumexp of every next-token row."""
    state = start_many(lm, docs_NT[:, :prompt_len])

    def step(state, tokens_N):
        logprobs_NV = lm.next_logprobs(state)
        picked_N = jnp.take_along_axis(logprobs_NV, tokens_N[:, None], axis=1)[:, 0]
        return lm.advance(state, tokens_N), (picked_N, jax.nn.logsumexp(logprobs_NV, axis=1))

    _, (picked_TN, total_TN) = jax.lax.scan(step, state, docs_NT[:, prompt_len:].T)
    return picked_TN.T, total_TN.T


@jax.jit
def next_example_logprobs(lm, state):
    """float32[B, A^L]: log P(next example's letters | path), examples indexed as base-A numbers.

    Expands the trie of the next ``example_len`` letters level by level.
    """
    n_letters, B = CONCEPTS.n_letters, state.batch_size
    logp_BX = jnp.zeros((B, 1))
    for t in range(CONCEPTS.example_len):
        X = logp_BX.shape[1]
        logp_BX = (logp_BX[:, :, None] + lm.next_logprobs(state).reshape(B, X, -1)[:, :, :n_letters]).reshape(B, -1)
        if t + 1 < CONCEPTS.example_len:
            state = lm.advance(take_paths(state, jnp.repeat(jnp.arange(B * X), n_letters)),
                               jnp.tile(jnp.arange(n_letters), B * X))
    return logp_BX


def reach(truth, ids: Sequence[int]) -> State:
    """The one-path state after ``ids``, by ``start`` on the first token and ``advance`` on the rest.

    Each compiles once per model, where ``start`` would compile once per prompt length.
    """
    state = start(truth, jnp.asarray(ids[:1], jnp.int32))
    for token in ids[1:]:
        state = advance(truth, state, jnp.asarray([token], jnp.int32))
    return state


def encode(language, text: str) -> jnp.ndarray:
    return jnp.asarray(language.tokenizer.encode(text), jnp.int32)


def entropy(logp_BX: jax.Array) -> np.ndarray:
    """float64[B]: entropy (nats) of each row of log-probabilities, checked to be normalised."""
    logp_BX = np.asarray(logp_BX, np.float64)
    np.testing.assert_allclose(np.exp(logp_BX).sum(axis=1), 1.0, atol=1e-5)
    return -np.sum(np.exp(logp_BX) * np.where(np.isfinite(logp_BX), logp_BX, 0.0), axis=1)


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Pearson's statistic after pooling cells expected < 5 times, and its 1 - FALSE_FAILURE quantile."""
    expected = probs * counts.sum()
    rare = expected < 5
    if rare.any():
        counts = np.append(counts[~rare], counts[rare].sum())
        expected = np.append(expected[~rare], expected[rare].sum())
    statistic = np.sum((counts - expected) ** 2 / expected)
    return statistic, chi2.ppf(1 - FALSE_FAILURE, df=len(counts) - 1)


# --- every truth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", [CONCEPTS, SPARSE, ARITH], ids=["concepts", "concepts-sparse", "arith"])
def test_truth_is_normalised_and_scores_documents_finitely(language):
    truth = language.truth()
    assert isinstance(language, Language) and isinstance(truth, LanguageModel)
    docs = language.sample(jax.random.key(0), 64)
    assert docs.shape == (64, language.max_len) and docs.dtype == np.int32 and language.max_len <= 64
    picked, totals = map(np.asarray, document_logprobs(truth, jnp.asarray(docs)))
    np.testing.assert_allclose(totals, 0.0, atol=1e-5)  # every row, EOS included
    assert np.all(np.isfinite(picked))


@pytest.mark.parametrize("language", [CONCEPTS, ARITH], ids=["concepts", "arith"])
def test_start_equals_advancing_token_by_token(language):
    truth = language.truth()
    doc = language.sample(jax.random.key(1), 1)[0]
    states = [start(truth, jnp.asarray(doc[:1]))]
    for token in doc[1:]:
        states.append(advance(truth, states[-1], jnp.asarray([token])))
    for cut in (15, language.max_len):  # within the third example (statement), after EOS
        np.testing.assert_allclose(next_logprobs(truth, start(truth, jnp.asarray(doc[:cut]))),
                                   next_logprobs(truth, states[cut - 1]), atol=1e-6)


CONCEPTS_DOC = CONCEPTS.tokenizer.decode(CONCEPTS.sample(jax.random.key(8), 1)[0])


@pytest.mark.parametrize(
    "language, prefix, impossible",
    [
        (CONCEPTS, "", "a"),  # a letter before BOS
        (CONCEPTS, CONCEPTS_DOC[:3], ";"),  # SEP in the middle of an example
        (CONCEPTS, CONCEPTS_DOC[:6], "a"),  # one letter too many
        (CONCEPTS, CONCEPTS_DOC[:4], "^"),  # BOS again
        (CONCEPTS, CONCEPTS_DOC[:4], "$"),  # EOS in the middle of the document
        (CONCEPTS, CONCEPTS_DOC[:-1], "a"),  # a letter after the last example
        (ARITH, "^1+2=", "4"),  # a wrong answer
        (ARITH, "^1+", "+"),
        (ARITH, "^" + "1+1=2;" * 10, "3"),
    ],
)
def test_impossible_tokens_give_dead_paths_without_nan(language, prefix, impossible):
    truth = language.truth()
    state = reach(truth, language.tokenizer.encode(prefix)) if prefix else start(truth, jnp.zeros((0,), jnp.int32))
    token = language.tokenizer.encode(impossible)[0]
    logprobs = np.asarray(next_logprobs(truth, state))[0]
    assert float(jax.nn.logsumexp(logprobs)) == pytest.approx(0.0, abs=1e-5)  # the prefix is possible
    assert logprobs[token] == -np.inf
    for _ in range(3):  # dead paths stay dead, whatever comes next
        state = advance(truth, state, jnp.asarray([token]))
        logprobs = np.asarray(next_logprobs(truth, state))
        assert np.all(logprobs == -np.inf)
        token = language.tokenizer.eos_id
    if language is CONCEPTS:
        assert np.all(np.asarray(concept_posterior(truth, state)) == 0)


@pytest.mark.parametrize("language", [CONCEPTS, ARITH], ids=["concepts", "arith"])
def test_after_eos_only_eos_and_no_nan(language):
    truth = language.truth()
    doc = language.sample(jax.random.key(2), 1)[0]
    state = reach(truth, doc)
    for _ in range(3):
        logprobs = np.asarray(next_logprobs(truth, state))[0]
        assert logprobs[language.tokenizer.eos_id] == 0 and not np.isnan(logprobs).any()
        state = advance(truth, state, jnp.asarray([language.tokenizer.eos_id]))


# --- concepts ---------------------------------------------------------------------------------------


def brute_force_logprob(text: str, language=CONCEPTS) -> float:
    """log P(document prefix) in float64: sum over concepts and over every hidden path of every example."""
    hmms = language.hmms
    assert text.startswith("^")
    examples = text[1:].split(";")
    total = 0.0
    for k in range(language.n_concepts):
        p_concept = 1 / language.n_concepts
        for example in examples:
            letters = [language.letters.index(c) for c in example]
            p_example = 0.0
            for hidden in itertools.product(range(language.n_states), repeat=len(letters)):
                p = hmms.init_KH[k, hidden[0]] if letters else 1.0
                for t, (h, a) in enumerate(zip(hidden, letters)):
                    p *= hmms.emit_KHA[k, h, a] * (hmms.trans_KHH[k, hidden[t - 1], h] if t else 1.0)
                p_example += p
            p_concept *= p_example
        total += p_concept
    return float(np.log(total))


@pytest.mark.parametrize("language", [CONCEPTS, SPARSE], ids=["concepts", "concepts-sparse"])
def test_concepts_truth_matches_brute_force(language):
    docs = language.sample(jax.random.key(3), 6)
    for i, cut in enumerate([1, 3, 7, 9, 14, 20]):  # whole examples and cuts in the middle of one
        prefix = docs[i, :cut]
        picked, _ = document_logprobs(language.truth(), jnp.asarray(docs[i : i + 1]))
        got = float(np.sum(np.asarray(picked, np.float64)[0, : cut - 1]))
        want = brute_force_logprob(language.tokenizer.decode(prefix), language)
        # float32 log-probabilities of < 20 tokens, each accurate to ~1e-6
        assert got == pytest.approx(want, abs=1e-4)


def test_concepts_sample_frequencies_match_truth():
    docs = CONCEPTS.sample(jax.random.key(4), 100_000)
    L, A = CONCEPTS.example_len, CONCEPTS.n_letters
    index_N = (docs[:, 1 : 1 + L] * A ** np.arange(L - 1, -1, -1)).sum(axis=1)
    counts = np.bincount(index_N, minlength=A**L)
    state = start(CONCEPTS.truth(), encode(CONCEPTS, "^"))
    probs = np.exp(np.asarray(next_example_logprobs(CONCEPTS.truth(), state), np.float64))[0]
    statistic, threshold = chi_square(counts, probs / probs.sum())
    assert statistic < threshold
    assert np.all(docs[:, L + 1 :: L + 1][:, :-1] == CONCEPTS.tokenizer.sep_id)


def example_boundary_states(truth, docs_NT: np.ndarray, n_examples: int) -> list:
    """States of the documents' paths after BOS and after each of their first ``n_examples`` examples."""
    width, last = CONCEPTS.example_len + 1, 1 + n_examples * (CONCEPTS.example_len + 1)
    state, states = start_many(truth, jnp.asarray(docs_NT[:, :1])), []
    for t in range(1, last + 1):  # ``state`` has read docs_NT[:, :t]
        if (t - 1) % width == 0:
            states.append(state)
        if t < last:
            state = advance(truth, state, jnp.asarray(docs_NT[:, t]))
    return states


N_PROBES = 16  # prompts(6, n=16, seed=0): the mean entropies below fall by >= 0.02 nats per example


@pytest.fixture(scope="module")
def probes():
    """Concepts int64[N], the prompts of 6 examples, and the truth's states after 0..6 of them."""
    concepts_N, docs = CONCEPTS.sample_concepts(np.random.default_rng(0), N_PROBES)
    prompts = CONCEPTS.prompts(6, n=N_PROBES, seed=0)
    assert prompts == [CONCEPTS.tokenizer.decode(doc[: len(prompts[0])]) for doc in docs]  # same sampler
    return concepts_N, prompts, example_boundary_states(CONCEPTS.truth(), docs, 6)


def test_entropy_of_next_example_narrows_with_examples(probes):
    # E[H(next example | j examples)] cannot grow with j (conditioning on exchangeable examples).
    _, prompts, states = probes
    width = CONCEPTS.example_len + 1
    for j in range(6):
        assert CONCEPTS.prompts(j, n=N_PROBES, seed=0) == [p[: 1 + j * width] for p in prompts]
    states = [take_paths(states[0], jnp.zeros((1,), jnp.int32)), *states[1:]]  # no example yet: all are "^"
    curve = [entropy(next_example_logprobs(CONCEPTS.truth(), state)).mean() for state in states]
    assert all(later < earlier for earlier, later in zip(curve, curve[1:])), curve
    assert curve[0] / curve[6] >= 1.5, curve


def test_concept_posterior_sharpens_on_the_true_concept(probes):
    concepts_N, _, states = probes
    means = []
    for state in states:
        posterior = np.asarray(concept_posterior(CONCEPTS.truth(), state), np.float64)
        np.testing.assert_allclose(posterior.sum(axis=1), 1.0, atol=1e-5)
        means.append(posterior[np.arange(N_PROBES), concepts_N].mean())
    assert means[0] == pytest.approx(1 / CONCEPTS.n_concepts)
    assert all(later > earlier for earlier, later in zip(means, means[1:])), means


def test_concepts_prompts_and_path_sets():
    truth = CONCEPTS.truth()
    L = CONCEPTS.example_len
    prompts = CONCEPTS.prompts(3, n=5, seed=7)
    assert len(prompts) == 5 and prompts != CONCEPTS.prompts(3, n=5, seed=8)
    for prompt in prompts:
        assert re.fullmatch(f"\\^(?:[{CONCEPTS.letters}]{{{L}}};){{3}}", prompt)
        logprobs = np.asarray(next_logprobs(truth, reach(truth, CONCEPTS.tokenizer.encode(prompt))))[0]
        assert np.exp(logprobs[: CONCEPTS.n_letters]).sum() == pytest.approx(1.0, abs=1e-5)  # an example begins
        examples = prompt[1:].split(";")[:3]
        assert re.fullmatch(CONCEPTS.path_set("repeat", prompt), examples[-1] + ";abcde;", re.DOTALL)
        for example in examples:
            assert re.fullmatch(CONCEPTS.path_set("seen", prompt), example + ";", re.DOTALL)
        unseen = next(c * L for c in CONCEPTS.letters if c * L not in examples)
        assert not re.fullmatch(CONCEPTS.path_set("seen", prompt), unseen + ";", re.DOTALL)
        assert re.fullmatch(CONCEPTS.path_set("any", prompt), "ab;\n", re.DOTALL)
    with pytest.raises(UnknownSpecError, match="repeat"):
        CONCEPTS.path_set("nope", prompts[0])
    with pytest.raises(PathprobError, match="complete examples"):
        CONCEPTS.path_set("seen", prompts[0] + "ab")
    with pytest.raises(PathprobError):
        CONCEPTS.prompts(CONCEPTS.n_examples)


# --- concepts-sparse --------------------------------------------------------------------------------


def test_concepts_is_bit_identical():
    # The shipped checkpoint and its data were made from these tables and samples: concepts-sparse must not move them.
    digest = hashlib.sha256()
    for array in (*dataclasses.astuple(CONCEPTS.hmms), CONCEPTS.sample(jax.random.key(0), 256)):
        digest.update(np.ascontiguousarray(array).tobytes())
    assert digest.hexdigest() == "ad83ed005d63dc2506534be6e2226a1e6307bbdba7416521f70500362f8b3a7d"


def test_sparse_concepts_emit_their_own_letters():
    hmms, H, size = SPARSE.hmms, SPARSE.n_states, SPARSE.family_size
    np.testing.assert_allclose(hmms.emit_KHA.sum(axis=2), 1.0)
    np.testing.assert_allclose(hmms.trans_KHH.sum(axis=2), 1.0)
    np.testing.assert_allclose(hmms.init_KH.sum(axis=1), 1.0)
    letters_KH2 = np.sort(np.argsort(-hmms.emit_KHA, axis=2)[:, :, :2], axis=2)
    assert np.all((hmms.emit_KHA > 0).sum(axis=2) == 2)  # each state: its dominant letter and one secondary
    for family in range(SPARSE.n_concepts // size):
        members = slice(family * size, (family + 1) * size)
        assert np.all(hmms.init_KH[members] == hmms.init_KH[family * size])
        assert np.all(hmms.trans_KHH[members] == hmms.trans_KHH[family * size])
        own = [set(letters_KH2[k].ravel()) for k in range(family * size, (family + 1) * size)]
        assert own[0] != own[1] and len(own[0] & own[1]) == H  # the twins share only the family's dominant letters
    with pytest.raises(PathprobError, match="sparse Concepts.n_letters"):
        Concepts(sparse=True, n_letters=9)


def hmm_example_probs(language) -> np.ndarray:
    """float64[K, A^L]: P(example | concept) of every example (its letters as base-A digits), from the HMM tables
    by the forward algorithm over all examples at once."""
    hmms, L = language.hmms, language.example_len
    K, H, A = hmms.emit_KHA.shape
    p_KX = np.zeros((K, A**L))
    for c in range(K):
        alpha_XH = hmms.init_KH[c][None]
        for _ in range(L):
            emitted_XHA = alpha_XH[:, :, None] * hmms.emit_KHA[c][None]
            alpha_XH = np.einsum("xha,hg->xag", emitted_XHA, hmms.trans_KHH[c]).reshape(-1, H)
        p_KX[c] = emitted_XHA.sum(axis=1).reshape(-1)
    return p_KX


def hmm_posterior(language, prompt: str, p_KX: np.ndarray) -> np.ndarray:
    """float64[K]: P(concept | the prompt's complete examples), uniform prior; ``p_KX`` from ``hmm_example_probs``."""
    posterior_K = np.full(language.n_concepts, 1.0 / language.n_concepts)
    for example in prompt[1:].split(";")[:-1]:
        index = np.ravel_multi_index([language.letters.index(c) for c in example], (language.n_letters,) * len(example))
        posterior_K = posterior_K * p_KX[:, index]
    return posterior_K / posterior_K.sum()


def test_sparse_supports_nest_exactly_and_shrink():
    """The support of the next example after k examples is inside the support after any j < k, and smaller at least
    once after the first example, exactly: the truth's complete enumerations equal the float64 HMM supports."""
    truth, L, A, sep = SPARSE.truth(), SPARSE.example_len, SPARSE.n_letters, SPARSE.tokenizer.sep_id
    p_KX = hmm_example_probs(SPARSE)
    assert np.all((p_KX > 0).sum(axis=1) < (p_KX > 0).any(axis=0).sum())  # each concept: a strictly smaller support
    ks, docs = (0, 1, 2, 4, 8), SPARSE.prompts(8, n=6, seed=3)
    prompts = [doc[: 1 + k * (L + 1)] for doc in docs for k in ks]
    tables = enumerate_many(truth, prompts, L + 1)
    shrank_later = 0
    for d in range(len(docs)):
        supports = []
        for prompt, table in zip(prompts[d * len(ks):], tables[d * len(ks):(d + 1) * len(ks)]):
            assert table.log_remaining == -np.inf and np.all(table.tokens[:, L] == sep)  # complete; L letters, SEP
            listed = {int(np.ravel_multi_index(row[:L], (A,) * L)) for row in table.tokens}
            assert listed == set(np.nonzero(hmm_posterior(SPARSE, prompt, p_KX) @ p_KX > 0)[0].tolist())
            supports.append(listed)
        assert all(later <= earlier for j, earlier in enumerate(supports) for later in supports[j + 1:])
        assert len(supports[1]) < len(supports[0])
        shrank_later += len(supports[-1]) < len(supports[1])
    assert shrank_later >= 2, shrank_later  # on 2 of 6 documents at least, the support keeps shrinking after k = 1


# --- arith ------------------------------------------------------------------------------------------


def test_arith_sample_frequencies_match_truth():
    truth, tok, m = ARITH.truth(), ARITH.tokenizer, ARITH.modulus
    docs = ARITH.sample(jax.random.key(6), 20_000)
    assert np.all((docs[:, 1::6][:, :-1] + docs[:, 3::6]) % m == docs[:, 5::6])
    counts = np.bincount(docs[:, 1] * m + docs[:, 3], minlength=m * m)
    pairs = [f"{a}+{b}=" for a in range(m) for b in range(m)]
    tokens = np.array([tok.encode(p) for p in pairs], np.int32)
    logp = np.asarray(document_logprobs(truth, jnp.asarray(np.c_[np.full(len(pairs), tok.bos_id), tokens]))[0])
    statistic, threshold = chi_square(counts, np.exp(logp.astype(np.float64).sum(axis=1)))
    assert statistic < threshold


def test_arith_prompts_and_correct_set():
    truth = ARITH.truth()
    for prompt in ARITH.prompts(4, n=6, seed=3):
        assert re.fullmatch(r"\^(?:\d\+\d=\d;){4}\d\+\d=", prompt)
        logprobs = np.asarray(next_logprobs(truth, reach(truth, ARITH.tokenizer.encode(prompt))))[0]
        answer = ARITH.tokenizer.tokens[int(np.argmax(logprobs))]
        assert logprobs.max() == 0
        pattern = ARITH.path_set("correct", prompt)
        assert re.fullmatch(pattern, answer + ";1+1=2;", re.DOTALL)
        assert not any(re.fullmatch(pattern, d + ";", re.DOTALL) for d in ARITH.digits if d != answer)
    with pytest.raises(PathprobError, match="a\\+b="):
        ARITH.path_set("correct", "^1+2=3;")
    with pytest.raises(UnknownSpecError, match="correct"):
        ARITH.path_set("wrong", "^1+2=")


# --- text and names ---------------------------------------------------------------------------------


def test_text_language(tmp_path):
    text = "the cat sat on the mat.\nthe dog sat on the log.\n" * 3
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    language = get_language(f"text:{path}")
    tok = language.tokenizer
    assert isinstance(language, Language) and language.name == f"text:{path}"
    assert language.truth() is None and language.max_len == 64
    assert tok.decode(tok.encode(text)) == text
    docs = language.sample(jax.random.key(0), 50)
    assert docs.shape == (50, 64) and np.all(docs[:, 0] == tok.bos_id)
    assert np.array_equal(docs, language.sample(jax.random.key(0), 50))
    assert not np.array_equal(docs, language.sample(jax.random.key(1), 50))
    for doc in docs:
        assert tok.decode(doc[1:]) in text
    for prompt in language.prompts(n=3):
        assert prompt.startswith("\x02") and prompt[1:] in text
    assert language.path_set("any", "\x02the") == ".*"
    with pytest.raises(BadPromptError, match="'Z'"):
        tok.encode("the Zebra")

    short = tmp_path / "short.txt"
    short.write_text("abc", encoding="utf-8")
    docs = get_language(f"text:{short}").sample(jax.random.key(0), 2)
    assert get_language(f"text:{short}").tokenizer.decode(docs[0]) == "\x02abc\x03"


@pytest.mark.parametrize(
    "content, reason",
    [(None, "does not exist"), ("directory", "cannot be read"), (b"", "empty"), (b"caf\xe9", "not UTF-8"),
     (b"a\x02b", "BOS")],
)
def test_text_bad_files(tmp_path, content, reason):
    path = tmp_path / "bad.txt"
    if content == "directory":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(TextFileError, match=reason):
        get_language(f"text:{path}")


def test_unknown_language():
    with pytest.raises(UnknownSpecError) as err:
        get_language("klingon")
    assert all(name in str(err.value) for name in LANGUAGE_NAMES) and "\n" not in str(err.value)
    with pytest.raises(UnknownSpecError):
        get_language("text:")


@pytest.mark.parametrize("language", [CONCEPTS, ARITH], ids=["concepts", "arith"])
def test_sample_is_deterministic_in_the_key(language):
    first = language.sample(jax.random.key(9), 100)
    assert np.array_equal(first, language.sample(jax.random.key(9), 100))
    assert not np.array_equal(first, language.sample(jax.random.key(10), 100))
    assert np.array_equal(first, language.sample(jax.random.PRNGKey(9), 100))  # raw uint32[2] keys too
