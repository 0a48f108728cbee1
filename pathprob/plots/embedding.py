"""Embedding-space figures: walks in a PCA plane, the logit-lens heatmap, concept-test bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pathprob.plots.style import figure, save


def pca_basis(points_MD: np.ndarray, dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(mean float64[D], components float64[dims, D]) of the points, by SVD."""
    points = np.asarray(points_MD, np.float64)
    mean = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - mean, full_matrices=False)
    return mean, vt[:dims]


def walk_figure(walks: Sequence, path: str | Path) -> Path:
    """Token vectors (unembedding rows, labelled) and each walk as arrows in one PCA plane.

    The PCA is fitted on the token vectors and every context vector (the encoding
    walk after the final norm, then the decoding walk), so all live in the space
    where a dot product with a token vector is a logit.
    """
    tokens_VD = walks[0].token_vectors_VD
    walk_points = [np.concatenate([w.encoding_context_ND, w.context_SD]) for w in walks]
    mean, basis = pca_basis(np.concatenate([tokens_VD, *walk_points]))
    project = lambda x: (np.asarray(x, np.float64) - mean) @ basis.T
    fig, ax = figure(size=(7.0, 6.0))
    tok_2 = project(tokens_VD)
    ax.scatter(tok_2[:, 0], tok_2[:, 1], s=12, color="0.5")
    for (x, y), text in zip(tok_2, walks[0].tokens):
        ax.annotate(text, (x, y), fontsize=9, color="0.3")
    data = {"tokens": list(walks[0].tokens), "token_xy": tok_2.tolist(), "walks": []}
    for i, (w, pts) in enumerate(zip(walks, walk_points)):
        xy = project(pts)
        color = f"C{i % 10}"
        n_enc = w.encoding_context_ND.shape[0]
        for j in range(xy.shape[0] - 1):
            ax.annotate("", xy=xy[j + 1], xytext=xy[j], arrowprops={
                "arrowstyle": "->", "color": color, "lw": 1.0, "ls": "--" if j < n_enc - 1 else "-"})
        ax.plot(xy[:, 0], xy[:, 1], "o", ms=3, color=color, label=f"{w.text(w.prompt)!r} → {w.text(w.path)!r}")
        data["walks"].append({"prompt": w.text(w.prompt), "path": w.text(w.path), "xy": xy.tolist(),
                              "encoding_points": n_enc})
    ax.set_title("Walks in embedding space (PCA; dashed: encoding by layer, solid: decoding by step)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7, loc="best")
    return save(fig, path, data)


def lens_figure(walk, path: str | Path, step: int = 0, top: int = 8) -> Path:
    """Logit-lens heatmap for one decoding step: layers × the final layer's top tokens, probability."""
    logp_NV = walk.lens_logp_SNV[step]
    order = np.argsort(-logp_NV[-1], kind="stable")[:top]
    p_NK = np.exp(logp_NV[:, order])
    fig, ax = figure(size=(1.0 + 0.6 * len(order), 1.0 + 0.5 * p_NK.shape[0]))
    image = ax.imshow(p_NK, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.grid(False)
    ax.set_xticks(range(len(order)), [walk.tokens[int(v)] for v in order])
    ax.set_yticks(range(p_NK.shape[0]), ["embed", *(f"layer {i}" for i in range(1, p_NK.shape[0]))])
    ax.set_title(f"Logit lens after {walk.text(walk.prompt) + walk.text(walk.path[:step])!r}")
    ax.set_xlabel("token (final top tokens)")
    fig.colorbar(image, ax=ax, label="probability")
    data = {"step": step, "tokens": [walk.tokens[int(v)] for v in order], "probability": p_NK.tolist(),
            "entropy_nats": walk.lens_entropy_SN[step].tolist(), "kl_to_final_nats": walk.lens_kl_SN[step].tolist()}
    return save(fig, path, data)


def concept_figure(result, path: str | Path) -> Path:
    """Accuracy of the model and of its three controls for every condition, with bootstrap intervals,
    one panel per k. Tick labels end with the verdict (+ supports, - does not support, ? inconclusive)."""
    mark = {"supports": "+", "does not support": "-", "inconclusive": "?", "no context": ""}
    ks = list(result.base)
    widest = max(sum(r.k == k for r in result.rows) for k in ks)
    fig, axes = figure(nrows=len(ks), size=(max(8.0, 0.42 * widest), 3.4 * len(ks)), squeeze=False)
    data = {"scorers": list(result.scorers), "level": result.level, "panels": []}
    for ax, k in zip(axes[:, 0], ks):
        rows = [r for r in result.rows if r.k == k]
        x = np.arange(len(rows))
        for j, (scorer, color) in enumerate(zip(result.scorers, ("k", "C0", "C1", "C2"))):
            acc = np.array([r.accuracy[j] for r in rows])
            ci = np.array([r.accuracy_ci[j] for r in rows])
            ax.errorbar(x + (j - 1.5) * 0.18, acc, yerr=np.stack([acc - ci[:, 0], ci[:, 1] - acc]), fmt="o",
                        ms=3.5 if j else 4.5, color=color, capsize=1.5, lw=0.9, label=scorer)
        ax.axhline(result.base[k], color="0.4", ls="--", lw=0.8, label="base (full context)")
        ax.axhline(0.25, color="0.6", ls=":", lw=0.8, label="1 / 4")
        ax.set_xticks(x, [f"{r.label} {mark[r.verdict]}".strip() for r in rows], rotation=90, fontsize=6)
        ax.set_ylim(0.0, 1.02)
        ax.set_ylabel(f"accuracy ({100 * result.level:g}% interval)")
        verdicts = "no context: no verdict" if k == 0 else ", ".join(
            f"{family} {v}" for family, v in result.verdicts[k].items())
        ax.set_title(f"k = {k}: {verdicts}", fontsize=9)
        ax.legend(fontsize=6, ncols=3, loc="lower left")
        data["panels"].append({"k": k, "labels": [r.label for r in rows], "verdicts": [r.verdict for r in rows],
                               "accuracy": [list(r.accuracy) for r in rows],
                               "interval": [[list(c) for c in r.accuracy_ci] for r in rows],
                               "family_verdicts": result.verdicts[k]})
    return save(fig, path, data)
