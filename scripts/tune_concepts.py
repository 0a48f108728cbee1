"""Exact statistics of the concepts language, to choose its default parameters.

    python scripts/tune_concepts.py [--sweep]

For the defaults (or a small deterministic sweep) prints: the entropy (nats) of
the next example with no in-context example (H0) and after 6 examples (H6, mean
over ``prompts(6, n=256)``), their ratio, the floor E_k H(example | concept), the
truth's cross-entropy per token on 4096 sampled documents (all tokens after BOS)
and the accuracy of the MAP concept after 1 and 3 examples. Everything is exact
numpy in float64: P(example | concept) for all letters^L strings by the forward
algorithm, examples being independent given the concept.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from pathprob.data.concepts import Concepts


def example_probs(lang: Concepts) -> np.ndarray:
    """float64[A^L, K]: P(example | concept), examples indexed as base-A numbers."""
    hmms, L, A = lang.hmms, lang.example_len, lang.n_letters
    strings_XL = np.array(list(itertools.product(range(A), repeat=L)))
    alpha_XKH = hmms.init_KH[None] * hmms.emit_KHA[:, :, strings_XL[:, 0]].transpose(2, 0, 1)
    for t in range(1, L):
        alpha_XKH = np.einsum("xkh,khg->xkg", alpha_XKH, hmms.trans_KHH)
        alpha_XKH *= hmms.emit_KHA[:, :, strings_XL[:, t]].transpose(2, 0, 1)
    return alpha_XKH.sum(axis=2)


def entropy(p_X: np.ndarray) -> float:
    p = p_X[p_X > 0]
    return float(-(p * np.log(p)).sum())


def statistics(lang: Concepts) -> dict[str, float]:
    probs_XK = example_probs(lang)
    K, L, A = lang.n_concepts, lang.example_len, lang.n_letters
    concepts_N, docs = lang.sample_concepts(np.random.default_rng(1), 4096)
    letters_NEL = docs[:, 1:-1].reshape(docs.shape[0], lang.n_examples, L + 1)[:, :, :L]
    index_NE = (letters_NEL * A ** np.arange(L - 1, -1, -1)).sum(axis=2)
    with np.errstate(divide="ignore"):
        log_lik_NEK = np.log(probs_XK[index_NE])
    # log P(concept | first j examples), j = 0..n_examples-1
    log_post_NEK = np.concatenate([np.zeros_like(log_lik_NEK[:, :1]), np.cumsum(log_lik_NEK, axis=1)[:, :-1]], 1)
    log_post_NEK -= np.logaddexp.reduce(log_post_NEK, axis=2, keepdims=True)
    log_pred_NE = np.logaddexp.reduce(log_post_NEK + log_lik_NEK, axis=2)

    prompts = [lang.tokenizer.encode(p)[1:] for p in lang.prompts(6, n=256)]
    index_P6 = np.array([[sum(c * A ** (L - 1 - i) for i, c in enumerate(p[e * (L + 1): e * (L + 1) + L]))
                          for e in range(6)] for p in prompts])
    with np.errstate(divide="ignore"):
        log_lik_P6K = np.log(probs_XK[index_P6])
    curve = []  # mean entropy of the next example after j = 0..6 examples
    for j in range(7):
        log_post_PK = log_lik_P6K[:, :j].sum(axis=1)
        post_PK = np.exp(log_post_PK - np.logaddexp.reduce(log_post_PK, axis=1, keepdims=True))
        curve.append(np.mean([entropy(probs_XK @ post_K) for post_K in post_PK]))
    print("  mean entropy after j = 0..6 examples:", " ".join(f"{h:.3f}" for h in curve))
    return {
        "H0": curve[0], "H6": curve[6], "ratio": curve[0] / curve[6],
        "floor": np.mean([entropy(probs_XK[:, k]) for k in range(K)]),
        "ce_per_token": float(-log_pred_NE.sum(axis=1).mean() / (lang.max_len - 1)),
        "map_acc_1": float((log_post_NEK[:, 1].argmax(axis=1) == concepts_N).mean()),
        "map_acc_3": float((log_post_NEK[:, 3].argmax(axis=1) == concepts_N).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also try a few settings around the defaults")
    args = parser.parse_args()
    settings = [Concepts()]
    if args.sweep:
        settings += [Concepts(p_letter=p, p_next=p, p_init=p, n_concepts=k, family_size=f)
                     for p in (0.85, 0.9, 0.95) for k, f in [(8, 2), (12, 2), (12, 3)]]
    for lang in settings:
        stats = statistics(lang)
        print(f"K={lang.n_concepts} F={lang.family_size} H={lang.n_states} A={lang.n_letters} L={lang.example_len} "
              f"p=({lang.p_letter}, {lang.p_next}, {lang.p_init}): "
              + "  ".join(f"{k}={v:.3f}" for k, v in stats.items()))


if __name__ == "__main__":
    main()
