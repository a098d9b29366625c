r"""IML-GCN's image-feature label embeddings (Singh et al., *IML-GCN*, Eqs. 5-6).

A trained encoder (IML-GCN: TResNet-M + global average pooling, :math:`d = 2048`) is
run once over the :math:`N` training images; the embedding of label :math:`i` is the mean
of the GAP features of the images that contain it (Eq. 5),

.. math::
    (\mathbf{F}_i)_I = \operatorname{mean}(S_i) = \frac{1}{|S_i|}
        \sum_{k \in S_i} \mathbf{F}_{GAP}(I_k), \qquad
    S_i = \{k : y_k^i = 1 \wedge m_k^i\},\qquad
    \mathbf{F}_I = [(\mathbf{F}_1)_I, \dots, (\mathbf{F}_C)_I] \in \mathbb{R}^{C \times d}

(:math:`m_k^i` is the dataset's ``label_mask``: ignored labels, e.g. VOC *difficult*, do
not count), optionally reduced by PCA over the :math:`C` label vectors (Eq. 6),

.. math::
    \mathbf{F}_{PCA} = (\mathbf{F}_I - \bar{\mathbf{F}}_I)\,\mathbf{V}_n
        \in \mathbb{R}^{C \times n}

with :math:`\mathbf{V}_n` the top-:math:`n` principal directions (the paper uses
:math:`n = C`: 80 on COCO, 500 on VG-500). PCA over :math:`C` centred vectors has rank at
most :math:`C - 1`, so with :math:`n = C` the last column is (numerically) zero, as it
is in the paper's setting; :math:`n` can never exceed :math:`\min(C, d)`.

The pass over the training set is cached on disk, keyed by a hash of the encoder's
weights, the dataset's identity (its image files / generator settings / feature array)
and split, and the transform; an interrupted pass resumes from partial sums saved every
``checkpoint_every`` batches (written atomically). The cache stores :math:`\mathbf{F}_I`;
PCA is applied on top, so both variants share one pass.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from pyg_mlic.errors import DatasetError
from pyg_mlic.utils.io import atomic_torch_save

__all__ = ["image_feature_embeddings", "label_feature_means", "pca_embeddings",
           "encoder_fingerprint", "ON_MISSING"]

#: what to do with a label that no training image carries (see :func:`label_feature_means`)
ON_MISSING = ("error", "zeros", "mean")
CACHE_FORMAT = "pyg_mlic-image-feature-means-v1"


# --------------------------------------------------------------------------- identities
def encoder_fingerprint(encoder: nn.Module) -> str:
    """SHA-256 over the encoder's state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _dataset_key(dataset) -> Dict[str, Any]:
    """Identity of the images a dataset holds (reuses the ROI cache's identity)."""
    from pyg_mlic.data.base import SubsetDataset
    from pyg_mlic.detection.sources import dataset_identity

    if isinstance(dataset, SubsetDataset) and getattr(dataset.dataset, "features", None) is not None:
        return {"subset_of": _dataset_key(dataset.dataset),
                "indices": hashlib.sha256(np.asarray(dataset.indices, np.int64).tobytes())
                .hexdigest()}
    feats = getattr(dataset, "features", None)
    if isinstance(feats, np.ndarray):  # feature datasets: the array is the "image" content
        return {"type": type(dataset).__name__, "split": getattr(dataset, "split", None),
                "n": len(dataset),
                "features": hashlib.sha256(np.ascontiguousarray(feats).tobytes()).hexdigest()}
    try:
        return dataset_identity(dataset)
    except TypeError as e:
        raise DatasetError(f"image-feature embeddings: cannot identify the images of "
                           f"{type(dataset).__name__} for the cache ({e}); pass cache_dir=None"
                           ) from None


def _transform_of(dataset) -> Any:
    base = getattr(dataset, "dataset", dataset)
    return getattr(dataset, "transform", getattr(base, "transform", None))


def _cache_key(encoder: nn.Module, dataset, use_feature_map: bool) -> str:
    ident = {"encoder": encoder_fingerprint(encoder), "dataset": _dataset_key(dataset),
             "split": getattr(dataset, "split", None), "transform": repr(_transform_of(dataset)),
             "labels": hashlib.sha256(np.ascontiguousarray(dataset.labels).tobytes()).hexdigest(),
             "mask": None if dataset.label_mask is None else hashlib.sha256(
                 np.ascontiguousarray(dataset.label_mask).tobytes()).hexdigest(),
             "gap": use_feature_map, "format": CACHE_FORMAT}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- pass
def _image_features(encoder: nn.Module, batch: Dict[str, Any], use_feature_map: bool) -> Tensor:
    x = batch["features"] if "features" in batch else batch["image"]
    if use_feature_map:  # F_GAP of the backbone's map, whatever pooling the encoder uses
        return encoder.feature_map(x).float().mean(dim=(2, 3))
    if hasattr(encoder, "encode"):
        return encoder.encode(batch).float()
    return encoder(x).float()


@torch.no_grad()
def label_feature_means(encoder: nn.Module, dataset, *, batch_size: int = 32,
                        cache_dir: Optional[Union[str, Path]] = None, progress: bool = True,
                        num_workers: int = 0, checkpoint_every: int = 50,
                        device: Optional[Union[str, torch.device]] = None,
                        max_batches: Optional[int] = None) -> Dict[str, Any]:
    r"""Per-label sums and counts of the training images' features (Eq. 5's ingredients).

    Runs ``encoder`` once over ``dataset`` (eval mode, no gradient, batched, in dataset
    order) and accumulates :math:`\sum_{k \in S_i} \mathbf{F}_{GAP}(I_k)` and
    :math:`|S_i|` in float64.

    Args:
        encoder (nn.Module): the trained stage-1 encoder: an
            :class:`~pyg_mlic.backbones.ImageEncoder` (its backbone's feature map is
            average-pooled, :math:`\mathbf{F}_{GAP}`, even if the encoder itself max-pools),
            an :class:`~pyg_mlic.backbones.MLPEncoder` (feature datasets), a
            :class:`~pyg_mlic.models.MultiLabelModel` (its ``encoder`` is used), or any
            module mapping the batch input to ``[B, d]``.
        dataset: the **training** split, with evaluation transforms (random augmentation
            would make the features, and the cache, non-deterministic; a warning says so).
        batch_size (int): images per forward pass.
        cache_dir (str or Path, optional): folder of the cache (``None``: no cache, no
            resume).
        progress (bool): tqdm progress bar.
        num_workers (int): DataLoader workers.
        checkpoint_every (int): save the partial sums every this many batches (resume).
        device: where to run (default: the encoder's device).
        max_batches (int, optional): stop after this many batches of this call, leaving
            the partial sums on disk (simulates an interruption; used by tests).

    Returns:
        dict: ``sums`` float64 ``[C, d]``, ``counts`` int64 ``[C]``, ``global_sum``
        float64 ``[d]``, ``num_images`` (int), ``complete`` (bool), ``cache_file``
        (str or None), ``cache_hit`` (bool).
    """
    from pyg_mlic.data.base import SubsetDataset
    from pyg_mlic.data.loader import make_loader, to_device

    if batch_size < 1 or checkpoint_every < 1:
        raise ValueError("batch_size and checkpoint_every must be >= 1")
    if hasattr(encoder, "encoder") and isinstance(getattr(encoder, "encoder"), nn.Module) \
            and hasattr(encoder, "classes"):
        encoder = encoder.encoder  # a MultiLabelModel: its image encoder
    use_fmap = callable(getattr(encoder, "feature_map", None))
    tf = _transform_of(dataset)
    if tf is not None and type(tf).__name__.startswith("Random"):
        warnings.warn(f"image-feature embeddings: the dataset uses a random transform ({tf!r}); "
                      "the features are not deterministic — pass the training split with "
                      "evaluation transforms", stacklevel=2)
    if device is None:
        p = next(iter(encoder.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    C, N = len(dataset.classes), len(dataset)

    cache_file = partial_file = None
    state: Optional[Dict[str, Any]] = None
    if cache_dir is not None:
        key = _cache_key(encoder, dataset, use_fmap)
        cache_dir = Path(cache_dir).expanduser()
        cache_file = cache_dir / f"image_features_{key}.pt"
        partial_file = cache_dir / f"image_features_{key}.partial.pt"
        for f, complete in ((cache_file, True), (partial_file, False)):
            if f.is_file():
                try:
                    st = torch.load(f, map_location="cpu", weights_only=True)
                except Exception:  # noqa: BLE001 - a broken cache is recomputed
                    warnings.warn(f"ignoring unreadable image-feature cache {f}", stacklevel=2)
                    continue
                if st.get("format") == CACHE_FORMAT and st.get("classes") == list(dataset.classes) \
                        and st.get("num_total") == N:
                    if complete:
                        return {**{k: st[k] for k in ("sums", "counts", "global_sum")},
                                "num_images": N, "complete": True,
                                "cache_file": str(cache_file), "cache_hit": True}
                    state = st
                    break

    was_training = encoder.training
    encoder.eval().to(device)
    if state is None:
        state = {"format": CACHE_FORMAT, "classes": list(dataset.classes), "num_total": N,
                 "num_done": 0, "sums": None, "counts": torch.zeros(C, dtype=torch.int64),
                 "global_sum": None}
    start = int(state["num_done"])
    rest = dataset if start == 0 else SubsetDataset(dataset, np.arange(start, N),
                                                     split=getattr(dataset, "split", "train"))
    loader = make_loader(rest, batch_size, train=False, num_workers=num_workers)
    it = loader
    if progress:
        try:
            from pyg_mlic.utils.progress import tqdm

            it = tqdm(loader, desc="image-feature embeddings", initial=start // batch_size,
                      total=(N + batch_size - 1) // batch_size, leave=False, dynamic_ncols=True)
        except ImportError:  # pragma: no cover
            pass
    done_batches = 0
    try:
        for batch in it:
            batch = to_device(batch, device)
            f = _image_features(encoder, batch, use_fmap).double().cpu()
            if not torch.isfinite(f).all():
                raise ValueError("image-feature embeddings: the encoder produced non-finite "
                                 f"features for images {start}..{start + len(f) - 1}")
            y = batch["target"].cpu().double()
            if "mask" in batch:
                y = y * batch["mask"].cpu().double()
            if state["sums"] is None:
                state["sums"] = torch.zeros(C, f.size(1), dtype=torch.float64)
                state["global_sum"] = torch.zeros(f.size(1), dtype=torch.float64)
            state["sums"] += y.t() @ f
            state["counts"] += (y > 0).sum(0).to(torch.int64)
            state["global_sum"] += f.sum(0)
            start += len(f)
            state["num_done"] = start
            done_batches += 1
            if partial_file is not None and done_batches % checkpoint_every == 0:
                atomic_torch_save(state, partial_file)
            if max_batches is not None and done_batches >= max_batches and start < N:
                if partial_file is not None:
                    atomic_torch_save(state, partial_file)
                return {**{k: state[k] for k in ("sums", "counts", "global_sum")},
                        "num_images": start, "complete": False,
                        "cache_file": None, "cache_hit": False}
    finally:
        encoder.train(was_training)
    if cache_file is not None:
        atomic_torch_save(state, cache_file)
        if partial_file is not None and partial_file.exists():
            partial_file.unlink()
    return {**{k: state[k] for k in ("sums", "counts", "global_sum")}, "num_images": N,
            "complete": True, "cache_file": None if cache_file is None else str(cache_file),
            "cache_hit": False}


def pca_embeddings(F: Union[Tensor, np.ndarray], n_components: Optional[int] = None
                   ) -> Tensor:
    r"""PCA of the label embeddings to :math:`n` components (IML-GCN Eq. 6).

    Args:
        F: ``[C, d]`` label embeddings :math:`\mathbf{F}_I`.
        n_components (int, optional): :math:`n`; default :math:`C` (the paper). Capped
            at :math:`\min(C, d)` with a :class:`UserWarning` (PCA over :math:`C` vectors
            cannot give more components).

    Returns:
        Tensor: float32 ``[C, n]``, columns in decreasing order of explained variance
        (sklearn's ``PCA(svd_solver="full")``, deterministic signs).
    """
    from sklearn.decomposition import PCA

    X = np.asarray(F.detach().cpu().numpy() if isinstance(F, Tensor) else F, dtype=np.float64)
    C, d = X.shape
    n = C if n_components is None else int(n_components)
    if n < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    cap = min(C, d)
    if n > cap:
        warnings.warn(f"PCA of {C} label vectors of dimension {d} allows at most min(C, d) = "
                      f"{cap} components; using {cap} instead of {n}", stacklevel=2)
        n = cap
    Z = PCA(n_components=n, svd_solver="full").fit_transform(X)
    return torch.from_numpy(Z.astype(np.float32))


def image_feature_embeddings(encoder: nn.Module, dataset, *, n_components: Optional[int] = None,
                             pca: bool = True, batch_size: int = 32,
                             cache_dir: Optional[Union[str, Path]] = None, progress: bool = True,
                             on_missing: str = "error", num_workers: int = 0,
                             checkpoint_every: int = 50,
                             device: Optional[Union[str, torch.device]] = None,
                             classes: Optional[Sequence[str]] = None) -> Tensor:
    r"""IML-GCN label embeddings: per-label mean image features (Eq. 5), then PCA (Eq. 6).

    Args:
        encoder (nn.Module): the trained stage-1 encoder (see :func:`label_feature_means`).
        dataset: the training split (evaluation transforms).
        n_components (int, optional): PCA size :math:`n` (default :math:`C`, capped at
            :math:`\min(C, d)` with a warning). Ignored with ``pca=False``.
        pca (bool): apply Eq. 6 (:math:`\mathbf{F}_{PCA}`, ``[C, n]``); ``False`` returns
            :math:`\mathbf{F}_I` (``[C, d]``). (default: :obj:`True`)
        batch_size, cache_dir, progress, num_workers, checkpoint_every, device: see
            :func:`label_feature_means`.
        on_missing (str): a label with no (unmasked) training image: ``"error"`` raises a
            :class:`~pyg_mlic.errors.DatasetError` naming it; ``"zeros"`` gives it the zero
            vector; ``"mean"`` the mean feature of all training images (an uninformative
            prior). (default: :obj:`"error"`)
        classes (list[str], optional): the model's classes; must equal the dataset's.

    Returns:
        Tensor: float32 ``[C, n]`` (or ``[C, d]`` without PCA), rows in class order.
    """
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
    if classes is not None:
        from pyg_mlic.errors import check_same_classes

        check_same_classes("model", classes, "training set", dataset.classes)
    stats = label_feature_means(encoder, dataset, batch_size=batch_size, cache_dir=cache_dir,
                                progress=progress, num_workers=num_workers,
                                checkpoint_every=checkpoint_every, device=device)
    sums, counts = stats["sums"], stats["counts"]
    F = sums / counts.clamp_min(1).double().unsqueeze(1)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        names = [dataset.classes[i] for i in missing]
        if on_missing == "error":
            raise DatasetError(
                f"image-feature embeddings: {len(names)} label(s) have no training image "
                f"(split {getattr(dataset, 'split', '?')!r}): {names[:20]}"
                f"{' ...' if len(names) > 20 else ''}; Eq. 5 needs at least one image per "
                "label (choose on_missing='zeros' or 'mean' to fill them)")
        if on_missing == "mean":
            F[missing] = stats["global_sum"] / max(stats["num_images"], 1)
        else:
            F[missing] = 0.0
    F = F.float()
    return pca_embeddings(F, n_components) if pca else F
