"""Plots: label graphs, training curves, per-class AP, samples with boxes; and the
analysis of ML-GCN Sec. 4.4-4.5: t-SNE of classifiers, k-NN image retrieval.

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


# ------------------------------------------------------------------ ML-GCN analysis (Sec. 4.4-4.5)
def _as_2d_float(x, what: str, fn: str) -> np.ndarray:
    """A finite float64 ``[N, D]`` numpy copy of a tensor / array (clear errors otherwise)."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().double().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ValueError(f"{fn}: `{what}` must be a numeric [N, D] array, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"{fn}: `{what}` must have shape [N, D], got {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{fn}: `{what}` is empty (shape {a.shape})")
    if not np.isfinite(a).all():
        row = int(np.flatnonzero(~np.isfinite(a).all(1))[0])
        raise ValueError(f"{fn}: `{what}` has non-finite values (first bad row {row})")
    return a


def plot_classifier_tsne(W, classes: Sequence[str], path: PathLike, perplexity: float = 30.0,
                         seed: int = 0, metric: str = "euclidean",
                         groups: Optional[Sequence[str]] = None, title: Optional[str] = None,
                         annotate: bool = True, max_iter: int = 1000) -> Path:
    r"""t-SNE map of the per-class classifiers (ML-GCN, Chen et al., CVPR 2019, Fig. 8).

    Each row :math:`\mathbf{w}_c` of the classifier matrix
    :math:`\mathbf{W} \in \mathbb{R}^{C \times D}` (ML-GCN's generated classifiers,
    :meth:`pyg_mlic.models.ml_gcn.MLGCN.classifiers`, or a baseline's ``fc.weight``)
    becomes a point :math:`\mathbf{y}_c \in \mathbb{R}^2` minimising
    :math:`\mathrm{KL}(P \,\|\, Q)` between the Gaussian neighbourhoods :math:`P` of the
    classifiers and the Student-t neighbourhoods :math:`Q` of the points
    (:class:`sklearn.manifold.TSNE`). Classifiers of correlated labels generated by
    the label GCN should land close to each other; a plain linear layer's do not
    need to (Fig. 8b).

    t-SNE needs ``perplexity < C``: a requested value :math:`\ge C` is replaced by
    :math:`\max(1, (C - 1)/3)` (the usual "three neighbourhoods per point" rule,
    strictly below :math:`C`); a smaller one is used as given. The value used is
    written in the title.

    Args:
        W (Tensor or ndarray): classifiers ``[C, D]`` (``C >= 3``), finite.
        classes (list[str]): the ``C`` class names (row order of ``W``).
        path: PNG to write.
        perplexity (float): requested perplexity (capped as above). (default: :obj:`30`)
        seed (int): t-SNE random state. (default: :obj:`0`)
        metric (str): distance between classifiers (``"euclidean"`` or ``"cosine"``).
        groups (list[str], optional): a group per class (e.g. COCO super-categories),
            used to colour the points.
        title (str, optional): figure title.
        annotate (bool): write the class names next to the points. (default: :obj:`True`)
        max_iter (int): t-SNE optimisation steps (>= 250). (default: :obj:`1000`)

    Returns:
        pathlib.Path: ``path``.

    Raises:
        ValueError: ``W`` not ``[C, D]``, non-finite, ``C < 3``, a bad ``perplexity``.
        ClassMismatchError: ``classes`` (or ``groups``) does not have ``C`` entries.
    """
    from sklearn.manifold import TSNE

    from pyg_mlic.errors import ClassMismatchError

    fn = "plot_classifier_tsne"
    A = _as_2d_float(W, "W", fn)
    C = A.shape[0]
    names = [str(c) for c in classes]
    if len(names) != C:
        raise ClassMismatchError(f"{fn}: W has {C} rows (classes) but {len(names)} class names "
                                 f"were given")
    if groups is not None and len(groups) != C:
        raise ClassMismatchError(f"{fn}: {len(groups)} groups for {C} classes")
    if C < 3:
        raise ValueError(f"{fn}: t-SNE of {C} classifiers is meaningless; need C >= 3")
    if not perplexity > 0:
        raise ValueError(f"{fn}: perplexity must be positive, got {perplexity}")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"{fn}: metric must be 'euclidean' or 'cosine', got {metric!r}")
    if metric == "cosine" and (np.linalg.norm(A, axis=1) == 0).any():
        raise ValueError(f"{fn}: a classifier is all zeros, its cosine distance is undefined")
    perp = float(perplexity) if perplexity < C else max(1.0, (C - 1) / 3.0)
    # exact gradients: C is a few hundred classes at most, where they are both faster and
    # more accurate than the Barnes-Hut approximation (meant for thousands of points)
    Y = TSNE(n_components=2, perplexity=perp, random_state=seed, init="pca", metric=metric,
             method="exact" if C <= 1000 else "barnes_hut", max_iter=int(max_iter),
             ).fit_transform(A)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    if groups is not None:
        uniq = list(dict.fromkeys(str(g) for g in groups))
        cmap = plt.get_cmap("tab20" if len(uniq) > 10 else "tab10")
        for k, g in enumerate(uniq):
            sel = np.array([str(x) == g for x in groups])
            ax.scatter(Y[sel, 0], Y[sel, 1], s=28, color=cmap(k % cmap.N), label=g)
        ax.legend(fontsize=7, loc="best", ncol=1 + len(uniq) // 12)
    else:
        ax.scatter(Y[:, 0], Y[:, 1], s=28, c=np.arange(C), cmap="viridis")
    if annotate:
        fs = 6 if C > 30 else 8
        for (x, y), n in zip(Y, names):
            ax.annotate(n, (x, y), fontsize=fs, xytext=(3, 2), textcoords="offset points")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {C} classifiers (D={A.shape[1]}, {metric}, "
                 f"perplexity {perp:g})")
    return _save(fig, path)


def knn_retrieval(features_query, features_gallery, k: int = 5, metric: str = "euclidean",
                  exclude_self: bool = False, return_distances: bool = False):
    r"""k-nearest-neighbour image retrieval on image features (ML-GCN Sec. 4.5, Fig. 7).

    For each query :math:`\mathbf{q}_i` the gallery indices sorted by ascending distance

    .. math::
        d(\mathbf{q}_i, \mathbf{g}_j) = \lVert \mathbf{q}_i - \mathbf{g}_j \rVert_2
        \quad\text{or}\quad
        1 - \frac{\mathbf{q}_i^{\top}\mathbf{g}_j}
                 {\lVert\mathbf{q}_i\rVert\,\lVert\mathbf{g}_j\rVert}
        \;(\text{cosine}),

    first :math:`k` kept; ties go to the lower gallery index (stable sort). Distances
    are computed in float64; Euclidean ones pairwise (no
    :math:`\lVert a\rVert^2 + \lVert b\rVert^2 - 2ab` expansion), so exact duplicates are
    at distance 0. Use the learned image features
    of a model (``ModelOutput.extras["features"]``, e.g. from
    :func:`pyg_mlic.engine.predict`).

    Args:
        features_query (Tensor or ndarray): ``[Q, D]``.
        features_gallery (Tensor or ndarray): ``[G, D]``.
        k (int): neighbours per query, ``1 <= k <= G`` (``G - 1`` with ``exclude_self``).
        metric (str): ``"euclidean"`` or ``"cosine"``. (default: :obj:`"euclidean"`)
        exclude_self (bool): query ``i`` is gallery item ``i`` (same set, ``Q == G``):
            never return it. (default: :obj:`False`)
        return_distances (bool): also return the distances ``[Q, k]``.

    Returns:
        torch.LongTensor ``[Q, k]`` gallery indices (and a float64 tensor ``[Q, k]`` of
        distances when ``return_distances``).

    Raises:
        ValueError: shapes, non-finite features, bad ``k`` or ``metric``, zero vectors
            with the cosine metric.
    """
    import torch

    fn = "knn_retrieval"
    q = torch.from_numpy(_as_2d_float(features_query, "features_query", fn))
    g = torch.from_numpy(_as_2d_float(features_gallery, "features_gallery", fn))
    if q.size(1) != g.size(1):
        raise ValueError(f"{fn}: query features have D={q.size(1)}, gallery features "
                         f"D={g.size(1)}")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"{fn}: metric must be 'euclidean' or 'cosine', got {metric!r}")
    if exclude_self and q.size(0) != g.size(0):
        raise ValueError(f"{fn}: exclude_self needs the query set to be the gallery "
                         f"(Q == G), got Q={q.size(0)}, G={g.size(0)}")
    avail = g.size(0) - int(exclude_self)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= avail:
        raise ValueError(f"{fn}: k must be an int in [1, {avail}] (gallery of {g.size(0)}"
                         f"{', query excluded' if exclude_self else ''}), got {k!r}")
    if metric == "cosine":
        nq, ng = q.norm(dim=1, keepdim=True), g.norm(dim=1, keepdim=True)
        if (nq == 0).any() or (ng == 0).any():
            raise ValueError(f"{fn}: zero feature vectors have no cosine distance")
        d = 1.0 - (q / nq) @ (g / ng).t()
    else:
        d = torch.cdist(q, g, compute_mode="donot_use_mm_for_euclid_dist")
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    dist, idx = torch.sort(d, dim=1, stable=True)
    idx, dist = idx[:, :k].contiguous(), dist[:, :k].contiguous()
    return (idx, dist) if return_distances else idx


def _display_image(dataset, index: int) -> np.ndarray:
    """An ``[H, W, 3]`` image in [0, 1] of sample ``index`` for plotting: the original
    file / rendering when the dataset has one, else the un-normalised sample tensor."""
    if hasattr(dataset, "load_image"):
        return np.asarray(dataset.load_image(index).convert("RGB"), dtype=np.float32) / 255.0
    if hasattr(dataset, "render"):
        return np.asarray(dataset.render(index)[0].convert("RGB"), dtype=np.float32) / 255.0
    from pyg_mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    s = dataset[index]
    if "image" not in s:
        raise ValueError(f"plot_retrieval: {type(dataset).__name__} has no images (a features "
                         f"dataset?); pass the image dataset the features came from")
    tf = getattr(dataset, "transform", None)
    mean = np.asarray(getattr(tf, "mean", IMAGENET_MEAN), dtype=np.float32)[:, None, None]
    std = np.asarray(getattr(tf, "std", IMAGENET_STD), dtype=np.float32)[:, None, None]
    return np.clip(s["image"].numpy() * std + mean, 0, 1).transpose(1, 2, 0)


def plot_retrieval(dataset_query, dataset_gallery, query_idx: Sequence[int], retrieved_idx,
                   path: PathLike, distances=None, max_queries: int = 8,
                   title: Optional[str] = None) -> Path:
    r"""Grid of k-NN retrieval results (ML-GCN Fig. 7): one row per query, the query
    image first, then its retrieved gallery images in ascending distance.

    Every image is titled with its labels; a retrieved image's title also gives the
    label overlap with the query, the Jaccard index
    :math:`|Y_q \cap Y_r| / |Y_q \cup Y_r|`, and is green when it shares at least one
    label with the query, red otherwise. The row label gives the mean Jaccard index of
    the row (the quantity Fig. 7 shows by eye).

    Args:
        dataset_query: image dataset of the queries (:mod:`pyg_mlic.data` protocol).
        dataset_gallery: image dataset the retrieved indices point into (same classes).
        query_idx (list[int]): ``Q`` indices into ``dataset_query``.
        retrieved_idx (Tensor or ndarray): ``[Q, k]`` indices into ``dataset_gallery``
            (e.g. from :func:`knn_retrieval`).
        path: PNG to write.
        distances (optional): ``[Q, k]`` distances, shown under the images.
        max_queries (int): draw at most this many rows. (default: :obj:`8`)
        title (str, optional): figure title.

    Returns:
        pathlib.Path: ``path``.

    Raises:
        ValueError: shapes or indices out of range.
        ClassMismatchError: the two datasets have different classes.
    """
    from pyg_mlic.errors import check_same_classes

    fn = "plot_retrieval"
    check_same_classes("query dataset", dataset_query.classes, "gallery dataset",
                       dataset_gallery.classes)
    qi = np.asarray(query_idx, dtype=np.int64).reshape(-1)
    try:
        import torch

        if isinstance(retrieved_idx, torch.Tensor):
            retrieved_idx = retrieved_idx.detach().cpu().numpy()
        if isinstance(distances, torch.Tensor):
            distances = distances.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    R = np.asarray(retrieved_idx)
    if R.ndim != 2 or R.shape[0] != len(qi) or R.shape[1] == 0:
        raise ValueError(f"{fn}: retrieved_idx must be [Q, k] with Q = {len(qi)} queries, "
                         f"got shape {R.shape}")
    if not np.issubdtype(R.dtype, np.integer):
        raise ValueError(f"{fn}: retrieved_idx must hold integer indices, got {R.dtype}")
    if distances is not None and np.asarray(distances).shape != R.shape:
        raise ValueError(f"{fn}: distances must be {R.shape}, got {np.asarray(distances).shape}")
    for what, idx, n in (("query_idx", qi, len(dataset_query)),
                         ("retrieved_idx", R, len(dataset_gallery))):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{fn}: {what} has indices outside [0, {n})")
    if len(qi) == 0:
        raise ValueError(f"{fn}: no query to draw")
    if max_queries < 1:
        raise ValueError(f"{fn}: max_queries must be >= 1, got {max_queries}")
    rows = min(len(qi), int(max_queries))
    k = R.shape[1]
    classes = list(dataset_query.classes)
    Lq, Lg = np.asarray(dataset_query.labels), np.asarray(dataset_gallery.labels)

    def label_text(y: np.ndarray) -> str:
        names = [classes[j] for j in np.flatnonzero(y)]
        text = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
        return text or "(no label)"

    plt = _plt()
    fig, axes = plt.subplots(rows, k + 1, figsize=(2.1 * (k + 1), 2.3 * rows), squeeze=False)
    for r in range(rows):
        q = int(qi[r])
        yq = Lq[q].astype(bool)
        ax = axes[r, 0]
        ax.imshow(_display_image(dataset_query, q))
        ax.set_title(f"query {q}\n{label_text(yq)}", fontsize=7, fontweight="bold")
        jac = []
        for c in range(k):
            gi = int(R[r, c])
            yg = Lg[gi].astype(bool)
            union = (yq | yg).sum()
            j = float((yq & yg).sum() / union) if union else 1.0
            jac.append(j)
            ax = axes[r, c + 1]
            ax.imshow(_display_image(dataset_gallery, gi))
            extra = f", d={float(np.asarray(distances)[r, c]):.3g}" if distances is not None else ""
            ax.set_title(f"#{c + 1} ({gi}) J={j:.2f}{extra}\n{label_text(yg)}", fontsize=6,
                         color="green" if (yq & yg).any() else "red")
        axes[r, 0].set_ylabel(f"mean J {np.mean(jac):.2f}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"k-NN retrieval (top-{k}, ascending distance)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def draw_predictions(image, labels: Sequence[str], scores: Optional[Dict[str, float]],
                     path: PathLike, max_labels: int = 8) -> Path:
    """Write a copy of ``image`` with the predicted labels (and their probabilities)
    drawn in a box at its top-left corner (PIL ``ImageDraw``; used by
    ``pyg-mlic predict --draw DIR``).

    Args:
        image: a PIL image or the path of an image file (read with the library's checked
            loader: an unreadable file raises :class:`~pyg_mlic.errors.DatasetError`
            naming it).
        labels (list[str]): the predicted labels, most probable first. An empty list
            writes ``"(no label above threshold)"``.
        scores (dict, optional): ``{label: probability}``; shown after each label.
        path: output file; the format follows its suffix (``.jpg``, ``.png`` ...).
        max_labels (int): at most this many labels are written (then ``+N more``).

    Returns:
        Path: ``path``.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not isinstance(image, Image.Image):
        from pyg_mlic.data._image_io import load_image

        image = load_image(Path(image))
    img = image.convert("RGB").copy()
    draw = ImageDraw.Draw(img)
    size = max(12, img.height // 28)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    lines = [f"{lab} {scores[lab]:.2f}" if scores and lab in scores else str(lab)
             for lab in list(labels)[:max_labels]]
    if len(labels) > max_labels:
        lines.append(f"+{len(labels) - max_labels} more")
    if not lines:
        lines = ["(no label above threshold)"]
    pad = max(2, size // 4)
    boxes = [draw.textbbox((0, 0), t, font=font) for t in lines]
    line_h = max(b[3] - b[1] for b in boxes) + pad
    width = max(b[2] - b[0] for b in boxes) + 2 * pad
    draw.rectangle([0, 0, width, line_h * len(lines) + pad], fill=(0, 0, 0))
    for i, t in enumerate(lines):
        draw.text((pad, pad + i * line_h), t, fill=(255, 255, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
