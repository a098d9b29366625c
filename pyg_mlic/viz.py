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
