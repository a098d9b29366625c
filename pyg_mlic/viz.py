"""Plots: label graphs, training curves, per-class AP, samples with boxes.

Every function writes a PNG and returns its path; matplotlib runs headless (Agg).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, os.PathLike]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_label_graph(graph, path: PathLike, max_labels: int = 80, title: Optional[str] = None,
                     ax=None) -> Path:
    """Heatmap of a label graph's propagation operator ``P`` (row i aggregates from
    column j), with class names on the axes."""
    plt = _plt()
    P = graph.propagation().detach().cpu().numpy()
    names = list(graph.classes)[:max_labels]
    P = P[: len(names), : len(names)]
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.18 * len(names)),) * 2)
    im = ax.imshow(P, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6 if len(names) > 30 else 8)
    ax.set_yticks(range(len(names)), names, fontsize=6 if len(names) > 30 else 8)
    ax.set_xlabel("source label j")
    ax.set_ylabel("target label i (aggregates from j)")
    d = graph.data
    ax.set_title(title or f"{getattr(d, 'scheme', '')} label graph, tau={getattr(d, 'tau', '')}, "
                 f"p={getattr(d, 'p', '')}, {getattr(d, 'convention', '')}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_histories(histories: Dict[str, list], path: PathLike, key: str = "val_mAP") -> Path:
    """Validation mAP (or ``key``) per epoch, one line per run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, hist in histories.items():
        pts = [(h["epoch"] + 1, h[key]) for h in hist if key in h]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_per_class_ap(results: Dict[str, dict], classes: Sequence[str], path: PathLike) -> Path:
    """Grouped bars of per-class AP for each run."""
    plt = _plt()
    names = list(results)
    C = len(classes)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * C * max(1, len(names)) ** 0.5), 4))
    for k, n in enumerate(names):
        ap = [a if a is not None else 0.0 for a in results[n]["AP"]]
        ax.bar(np.arange(C) + k * width, ap, width, label=n)
    ax.set_xticks(np.arange(C) + 0.4 - width / 2, list(classes), rotation=60, ha="right")
    ax.set_ylabel("AP")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_samples(dataset, path: PathLike, n: int = 8) -> Path:
    """A grid of ``n`` samples with their boxes and labels (images are un-normalised
    with the ImageNet statistics of :mod:`pyg_mlic.data.transforms`)."""
    from pyg_mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    plt = _plt()
    n = min(n, len(dataset))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        s = dataset[i]
        img = np.clip(s["image"].numpy() * std + mean, 0, 1).transpose(1, 2, 0)
        ax.imshow(img)
        for b, lab in zip(s.get("boxes", []), s.get("box_labels", [])):
            x0, y0, x1, y1 = [float(v) for v in b]
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", lw=1))
            ax.text(x0, y0, dataset.classes[int(lab)], color="yellow", fontsize=6, va="bottom")
        names = [dataset.classes[j] for j in s["target"].nonzero().flatten().tolist()]
        ax.set_title(", ".join(names), fontsize=7)
    return _save(fig, path)


def plot_learned_graph(learned, statistical, classes: Sequence[str], path: PathLike,
                       max_labels: int = 80, titles: Optional[Sequence[str]] = None) -> Path:
    r"""Heatmaps of a learned label graph (A-GCN's :math:`\hat{\mathbf{A}}`) next to the
    statistical one (ML-GCN's operator), row :math:`i` aggregating from column :math:`j`
    in both.

    Args:
        learned (Tensor): dense ``[C, C]`` learned operator (e.g.
            :meth:`pyg_mlic.models.a_gcn.AGCN.learned_graph`).
        statistical: a :class:`~pyg_mlic.graphs.LabelGraph` (its
            :meth:`~pyg_mlic.graphs.LabelGraph.propagation` is drawn) or a dense
            ``[C, C]`` tensor/array.
        classes (list[str]): the ``C`` label names (checked against a LabelGraph's).
        path: PNG to write.
        max_labels (int): draw only the first ``max_labels`` labels.
        titles (list[str], optional): the two panel titles.
    """
    import torch

    from pyg_mlic.errors import ClassMismatchError, check_same_classes

    def dense(m, what: str) -> np.ndarray:
        if hasattr(m, "propagation"):
            check_same_classes("classes", classes, f"{what} graph", m.classes)
            m = m.propagation()
        if isinstance(m, torch.Tensor):
            a = m.detach().cpu().float().numpy()
        else:
            a = np.asarray(m, dtype=float)
        if a.shape != (len(classes), len(classes)):
            raise ClassMismatchError(f"plot_learned_graph: {what} graph has shape {a.shape}, "
                                     f"expected [{len(classes)}, {len(classes)}] for "
                                     f"{len(classes)} classes")
        if not np.isfinite(a).all():
            raise ValueError(f"plot_learned_graph: {what} graph has non-finite entries")
        return a

    A, S = dense(learned, "learned"), dense(statistical, "statistical")
    names = [str(c) for c in classes][:max_labels]
    k = len(names)
    plt = _plt()
    side = min(12, 2 + 0.16 * k)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 2, side), constrained_layout=True)
    titles = list(titles or ["learned (A-GCN, Eq. 4)", "statistical (ML-GCN)"])
    fs = 6 if k > 30 else 8
    for ax, M, title in zip(axes, (A[:k, :k], S[:k, :k]), titles):
        im = ax.imshow(M, cmap="viridis")
        ax.set_xticks(range(k), names, rotation=90, fontsize=fs)
        ax.set_yticks(range(k), names, fontsize=fs)
        ax.set_xlabel("source label j")
        if ax is axes[0]:
            ax.set_ylabel("target label i (aggregates from j)")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)
