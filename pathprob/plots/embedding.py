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


MAX_WALK_LABELS = 10  # labels in the walk figure: more than this crowd the plane
LABEL_GID = "walk-label"  # the gid of every label the walk figure places (tests find them by it)
_OFFSETS = ((5, 4), (5, -4), (-5, 4), (-5, -4), (0, 9), (0, -9), (12, 0), (-12, 0), (14, 12), (-14, -12))


def walk_figure(walks: Sequence, path: str | Path) -> Path:
    """Token vectors (unembedding rows) and each walk as arrows in one PCA plane, with a few readable labels.

    The PCA is fitted on the token vectors and every context vector (the encoding
    walk after the final norm, then the decoding walk), so all live in the space
    where a dot product with a token vector is a logit. Labels, in order of priority:
    each walk's start (the prompt's last token embedded) and end, the token vectors
    of the walks' paths, each decoding step (the token it predicts), then the token
    vectors farthest apart; at most ``MAX_WALK_LABELS``, each placed where its box
    overlaps no other label and stays inside the axes, or left out (``walk_labels``).
    """
    tokens_VD = walks[0].token_vectors_VD
    walk_points = [np.concatenate([w.encoding_context_ND, w.context_SD]) for w in walks]
    mean, basis = pca_basis(np.concatenate([tokens_VD, *walk_points]))
    project = lambda x: (np.asarray(x, np.float64) - mean) @ basis.T
    fig, ax = figure(size=(7.0, 6.0))
    tok_2 = project(tokens_VD)
    ax.scatter(tok_2[:, 0], tok_2[:, 1], s=12, color="0.5", label="token vectors (unembedding rows)")
    data = {"tokens": list(walks[0].tokens), "token_xy": tok_2.tolist(), "walks": []}
    walks_xy = []
    for i, (w, pts) in enumerate(zip(walks, walk_points)):
        xy = project(pts)
        walks_xy.append(xy)
        color = f"C{i % 10}"
        n_enc = w.encoding_context_ND.shape[0]
        for j in range(xy.shape[0] - 1):
            ax.annotate("", xy=xy[j + 1], xytext=xy[j], arrowprops={
                "arrowstyle": "->", "color": color, "lw": 1.0, "ls": "--" if j < n_enc - 1 else "-"})
        ax.plot(xy[:, 0], xy[:, 1], "o", ms=3, color=color, label=f"{w.text(w.prompt)!r} → {w.text(w.path)!r}")
        data["walks"].append({"prompt": w.text(w.prompt), "path": w.text(w.path), "xy": xy.tolist(),
                              "encoding_points": n_enc})
    ax.set_title("Walks in embedding space (PCA; dashed: encoding by layer, solid: decoding by step)", fontsize=10)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.legend(fontsize=7, loc="outside lower center", ncols=2)
    fig.canvas.draw()  # the final layout, so the labels' boxes are measured where they will be drawn
    data["labels"] = place_labels(ax, walk_labels(walks, walks_xy, tok_2), MAX_WALK_LABELS)
    return save(fig, path, data)


def walk_labels(walks: Sequence, walks_xy: Sequence[np.ndarray], token_xy: np.ndarray) -> list[tuple[str, tuple]]:
    """Candidate labels (text, (x, y)) of the walk figure, most important first (``walk_figure``)."""
    several = len(walks) > 1
    first = []
    for i, (w, xy) in enumerate(zip(walks, walks_xy)):
        tag = f"#{i + 1} " if several else ""
        first += [(f"{tag}start {w.tokens[int(w.prompt[-1])]!r}", tuple(xy[0])),
                  (f"{tag}end → {w.tokens[int(w.path[-1])]!r}", tuple(xy[-1]))]
    path_tokens = dict.fromkeys(int(v) for w in walks for v in w.path)
    tokens = [(walks[0].tokens[v], tuple(token_xy[v])) for v in path_tokens]
    steps = [(f"→ {w.tokens[int(v)]!r}", tuple(xy[w.encoding_context_ND.shape[0] + s]))
             for w, xy in zip(walks, walks_xy) for s, v in enumerate(w.path[:-1])]
    spread = [(walks[0].tokens[v], tuple(token_xy[v])) for v in _farthest_apart(token_xy) if v not in path_tokens]
    return first + tokens + steps + spread


def _farthest_apart(xy_N2: np.ndarray) -> list[int]:
    """Indices in farthest-point order: the point farthest from the centroid, then each next the farthest from
    all chosen so far."""
    if len(xy_N2) == 0:
        return []
    order = [int(np.argmax(np.linalg.norm(xy_N2 - xy_N2.mean(axis=0), axis=1)))]
    distance = np.linalg.norm(xy_N2 - xy_N2[order[0]], axis=1)
    for _ in range(len(xy_N2) - 1):
        order.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(xy_N2 - xy_N2[order[-1]], axis=1))
    return order


def place_labels(ax, candidates: Sequence[tuple[str, tuple]], limit: int, pad: float = 2.0) -> list[dict]:
    """Annotate ``ax`` with at most ``limit`` of ``candidates`` (text, (x, y)), in order, each at the first offset
    where its box (grown by ``pad`` pixels) overlaps no placed label and lies inside the axes; the others are
    left out. The figure's layout must be final (``fig.canvas.draw()``). Returns the placed labels."""
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    boxes, placed = [], []
    for text, (x, y) in candidates:
        if len(placed) == limit:
            break
        for dx, dy in _OFFSETS:
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                                color="0.15", ha="left" if dx > 0 else "right" if dx < 0 else "center",
                                va="bottom" if dy > 0 else "top" if dy < 0 else "center", zorder=5,
                                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75})
            box = label.get_window_extent(renderer).padded(pad)
            if inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1) and not any(
                    box.overlaps(other) for other in boxes):
                label.set_gid(LABEL_GID)
                label.set_in_layout(False)
                boxes.append(box)
                placed.append({"text": text, "xy": [float(x), float(y)], "offset_points": [dx, dy]})
                break
            label.remove()
    return placed


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
