"""Pre-extracted image features stored in a ``.npz`` file (``--dataset features``).

File format (the project's public contract, see ``DESIGN.md``):

==============  =====================  ===============================================
key             array                  notes
==============  =====================  ===============================================
``features``    float32 ``[N, D]``     one feature vector per image (finite values)
``labels``      uint8 ``[N, C]``       multi-hot, values 0/1
``classes``     str ``[C]``            class names, column order of ``labels``
``mask``        bool ``[N, C]``        optional; ``False`` = label ignored
``split``       str ``[N]``            optional; split name of each row
``image``       str ``[N]``            optional; the image each row was extracted from
==============  =====================  ===============================================

Files are always read with ``np.load(path, allow_pickle=False)``: an ``.npz`` holding
object arrays (i.e. pickles) is refused, never unpickled. :func:`save_features`
writes the format atomically (temporary file in the same folder + :func:`os.replace`),
so a crash never leaves a half-written file under the final name.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from pyg_mlic.data.base import MultiLabelDataset, Sample
from pyg_mlic.errors import DatasetError
from pyg_mlic.utils.io import atomic_np_savez

PathLike = Union[str, os.PathLike]
ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]

__all__ = ["FeaturesDataset", "save_features", "load_features", "training_features"]

_REQUIRED = ("features", "labels", "classes")
_OPTIONAL = ("mask", "split", "image")


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_float32_cast(src: str, orig: np.ndarray, cast: np.ndarray) -> None:
    """The models compute in float32: refuse values beyond its range and warn about
    columns whose spread float32 cannot hold (a large offset: ``1e9 + x`` keeps steps of
    64). Non-finite values in ``orig`` itself are reported by the caller."""
    o = orig.astype(np.float64, copy=False)
    if not np.isfinite(o).all():
        return
    over = ~np.isfinite(cast)
    if over.any():
        r, c = (int(i[0]) for i in np.nonzero(over))
        raise DatasetError(f"{src}: 'features' value {o[r, c]:.6g} (row {r}, column {c}) is "
                           f"beyond the float32 range (|x| <= 3.4e38) the models compute in; "
                           f"rescale the features")
    if len(o) < 2:
        return
    sd, sd32 = o.std(0), cast.astype(np.float64).std(0)
    lost = np.flatnonzero((sd > 0) & (np.abs(sd32 - sd) > 1e-3 * sd))
    if len(lost):
        j = int(lost[0])
        warnings.warn(f"{src}: {len(lost)} feature column(s) lose their spread in float32, "
                      f"the precision the models compute in (column {j}: values about "
                      f"{o[:, j].mean():.6g} with a standard deviation of {sd[j]:.3g}); "
                      f"subtract each column's mean before saving", UserWarning, stacklevel=4)


def _validate(src: str, features: np.ndarray, labels: np.ndarray, classes: np.ndarray,
              mask: Optional[np.ndarray], split: Optional[np.ndarray],
              image: Optional[np.ndarray]) -> dict:
    """Check shapes, dtypes and values; return the arrays in their canonical dtypes."""
    if features.ndim != 2:
        raise DatasetError(f"{src}: 'features' must be a 2-D array [N, D], got shape "
                           f"{features.shape}")
    if not (np.issubdtype(features.dtype, np.floating)
            or np.issubdtype(features.dtype, np.integer)):
        raise DatasetError(f"{src}: 'features' must be a float array, got dtype "
                           f"{features.dtype}")
    n, d = features.shape
    if d == 0:
        raise DatasetError(f"{src}: 'features' has zero columns (D = 0)")
    if features.dtype != np.float32:
        with np.errstate(over="ignore"):  # values beyond float32: refused just below
            cast = features.astype(np.float32)
        _check_float32_cast(src, features, cast)
        features = cast
    finite = np.isfinite(features)
    if not finite.all():
        bad_row = int(np.flatnonzero(~finite.all(axis=1))[0])
        bad_col = int(np.flatnonzero(~finite[bad_row])[0])
        raise DatasetError(f"{src}: 'features' has non-finite values (NaN/inf); first bad "
                           f"row {bad_row} (column {bad_col}, value "
                           f"{features[bad_row, bad_col]})")

    if classes.ndim != 1:
        raise DatasetError(f"{src}: 'classes' must be a 1-D array of names, got shape "
                           f"{classes.shape}")
    if classes.dtype.kind not in "US":
        raise DatasetError(f"{src}: 'classes' must be a string array, got dtype "
                           f"{classes.dtype}")
    class_list = [c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist()]
    if len(set(class_list)) != len(class_list):
        dup = sorted({c for c in class_list if class_list.count(c) > 1})
        raise DatasetError(f"{src}: 'classes' has duplicate names {dup}")
    c = len(class_list)

    if labels.shape != (n, c):
        raise DatasetError(f"{src}: 'labels' must be [N, C] = [{n}, {c}] (N from 'features', "
                           f"C from 'classes'), got {labels.shape}")
    if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating):
            raise DatasetError(f"{src}: 'labels' must be an integer 0/1 array, got dtype "
                               f"{labels.dtype}")
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        r, col = (int(v) for v in np.argwhere(bad)[0])
        raise DatasetError(f"{src}: 'labels' must be 0/1; value {labels[r, col].item()!r} "
                           f"out of range at row {r}, column {col} ({class_list[col]!r})")
    labels = labels.astype(np.uint8)

    if mask is not None:
        if mask.shape != (n, c):
            raise DatasetError(f"{src}: 'mask' must be [N, C] = [{n}, {c}], got {mask.shape}")
        if mask.dtype != np.bool_:
            if not np.isin(mask, (0, 1)).all():
                raise DatasetError(f"{src}: 'mask' must be boolean (or 0/1), got dtype "
                                   f"{mask.dtype} with other values")
            mask = mask.astype(bool)
    for key, arr in (("split", split), ("image", image)):
        if arr is not None:
            if arr.shape != (n,) or arr.dtype.kind not in "US":
                raise DatasetError(f"{src}: optional '{key}' must be a string array [N] = "
                                   f"[{n}], got dtype {arr.dtype} shape {arr.shape}")
    return dict(features=features, labels=labels, classes=class_list, mask=mask,
                split=split, image=image)


def load_features(path: PathLike, labels_required: bool = True) -> dict:
    """Read and validate a features ``.npz`` file (never unpickles).

    Args:
        path (str or os.PathLike): the ``.npz`` file.
        labels_required (bool): ``False``: a file with ``features`` and neither
            ``labels`` nor ``classes`` (rows to predict, ``pyg-mlic predict``) loads with
            ``labels`` ``[N, 0]`` and ``classes`` ``[]``. (default: :obj:`True`)

    Returns:
        dict: ``features`` float32 [N, D], ``labels`` uint8 [N, C], ``classes`` (list of
        str), ``mask`` bool [N, C] or ``None``, ``split`` / ``image`` str [N] or ``None``.

    Raises:
        DatasetError: missing file, not an ``.npz``, object (pickled) arrays, missing
            keys, wrong shapes or dtypes, non-finite features or labels other than 0/1;
            the message names the file (and the first bad row where there is one).
    """
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise DatasetError(f"features file not found: {src}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise DatasetError(f"{src}: expected an .npz archive with keys {list(_REQUIRED)}, "
                           f"found a single .npy array")
    if not magic.startswith(b"PK"):
        raise DatasetError(f"{src}: not an .npz archive (unrecognised file header {magic!r})")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _REQUIRED if k not in z.files]
            unlabelled = not labels_required and set(missing) == {"labels", "classes"}
            if missing and not unlabelled:
                raise DatasetError(f"{src}: missing key(s) {missing}; the file has "
                                   f"{sorted(z.files)}, a features file needs "
                                   f"{list(_REQUIRED)} (+ optional {list(_OPTIONAL)})")
            arrays = {}
            for k in _REQUIRED + _OPTIONAL:
                if k not in z.files:
                    continue
                try:
                    arrays[k] = z[k]
                except ValueError as e:
                    if "allow_pickle" in str(e):
                        raise DatasetError(
                            f"{src}: array {k!r} is an object (pickled) array, which is never "
                            f"loaded (pickle is code execution); store strings as fixed-width "
                            f"unicode arrays") from None
                    raise
    except DatasetError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{src}: not a readable .npz file ({type(e).__name__}: {e})") \
            from None
    if "labels" not in arrays:  # labels_required=False, no labels / classes in the file
        arrays["labels"] = np.zeros((len(arrays["features"]), 0), np.uint8)
        arrays["classes"] = np.zeros(0, np.str_)
    return _validate(src, arrays["features"], arrays["labels"], arrays["classes"],
                     arrays.get("mask"), arrays.get("split"), arrays.get("image"))


def save_features(path: PathLike, features: ArrayLike, labels: ArrayLike,
                  classes: Sequence[str], mask: Optional[ArrayLike] = None,
                  split: Optional[Sequence[str]] = None,
                  image: Optional[Sequence[str]] = None, compress: bool = False) -> Path:
    """Write a features ``.npz`` file atomically.

    The arrays are validated exactly as :func:`load_features` validates them (so a
    file written here always loads), written to a temporary file in the destination
    folder, flushed to disk and moved over ``path`` with :func:`os.replace`.

    Args:
        path (str or os.PathLike): destination (``.npz`` is *not* appended).
        features (array [N, D]): finite feature vectors (stored as float32).
        labels (array [N, C]): 0/1 multi-hot labels (stored as uint8).
        classes (sequence of str): ``C`` unique class names.
        mask (array [N, C], optional): ``False`` = ignored label (stored as bool).
        split (sequence of str [N], optional): split name per row.
        image (sequence of str [N], optional): source image per row.
        compress (bool): use ``np.savez_compressed``. (default: :obj:`False`)

    Returns:
        pathlib.Path: ``path``.
    """
    path = Path(path)
    v = _validate(f"save_features({path})", _as_numpy(features), _as_numpy(labels),
                  np.asarray([str(c) for c in classes]),
                  None if mask is None else _as_numpy(mask),
                  None if split is None else np.asarray([str(s) for s in split]),
                  None if image is None else np.asarray([str(s) for s in image]))
    arrays = {"features": v["features"], "labels": v["labels"],
              "classes": np.asarray(v["classes"], dtype=np.str_)}
    for key in ("mask", "split", "image"):
        if v[key] is not None:
            arrays[key] = v[key] if key == "mask" else v[key].astype(np.str_)
    return atomic_np_savez(path, arrays, compress=compress)


class FeaturesDataset(MultiLabelDataset):
    r"""Multi-label dataset of pre-extracted feature vectors (``input_kind="features"``).

    Samples are ``{"features": float32 [D], "target": float32 [C], "mask": bool [C],
    "index": int}``. Use it to train the graph heads (ML-GCN's GCN classifier,
    Eq. 4: :math:`\hat{y} = \mathbf{W}\,\mathbf{x}` with :math:`\mathbf{W}` produced by
    the label GCN) on frozen backbone features.

    Args:
        path (str or os.PathLike): the ``.npz`` file (format in the module docstring).
        split (str, optional): split name. When the file has a ``split`` array, only
            rows whose split equals it are kept (``None`` keeps all rows); otherwise it
            is only recorded as the dataset's name. (default: :obj:`"train"`)

    Attributes:
        features (numpy.ndarray): float32 ``[N, D]``.
        feature_dim (int): ``D``.
        images (list of str or None): the ``image`` array, if the file has one.

    Raises:
        DatasetError: see :func:`load_features`; also when ``split`` selects no row.
    """

    input_kind = "features"

    def __init__(self, path: PathLike, split: Optional[str] = "train") -> None:
        self.path = Path(path)
        data = load_features(self.path)
        features, labels, mask = data["features"], data["labels"], data["mask"]
        images = data["image"]
        if data["split"] is not None and split is not None:
            keep = data["split"] == split
            if not keep.any():
                raise DatasetError(f"{self.path}: no row has split {split!r}; the file's "
                                   f"splits are {sorted(set(data['split'].tolist()))}")
            features, labels = features[keep], labels[keep]
            mask = None if mask is None else mask[keep]
            images = None if images is None else images[keep]
        if len(features) == 0:
            raise DatasetError(f"{self.path}: the features file holds no rows (empty dataset)")
        super().__init__(data["classes"], labels, mask, split=split if split else "all")
        self.features: np.ndarray = np.ascontiguousarray(features)
        self.feature_dim = int(features.shape[1])
        self.images = None if images is None else [str(s) for s in images.tolist()]

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if isinstance(index, torch.Tensor):
            index = int(index)
        if not -n <= index < n:
            raise IndexError(f"FeaturesDataset: index {index} out of range for {n} samples")
        index %= n
        sample = {"features": torch.from_numpy(self.features[index].copy())}
        sample.update(self._target(index))
        return sample

    def __repr__(self) -> str:
        return (f"FeaturesDataset(split={self.split!r}, num_samples={len(self)}, "
                f"feature_dim={self.feature_dim}, num_classes={self.num_classes}, "
                f"path={str(self.path)!r})")


def training_features(dataset) -> np.ndarray:
    """The feature matrix ``[N, D]`` (float32) of a features dataset, in its order: a
    :class:`FeaturesDataset`, a :class:`~pyg_mlic.data.base.SubsetDataset` of one (e.g. the
    training part of :func:`~pyg_mlic.data.base.holdout_split`), or any dataset whose
    samples carry ``"features"`` (read sample by sample).

    Raises:
        DatasetError: the dataset is not of ``input_kind="features"`` or is empty.
    """
    if getattr(dataset, "input_kind", None) != "features":
        raise DatasetError(f"training_features: {type(dataset).__name__} is not a features "
                           f"dataset (input_kind={getattr(dataset, 'input_kind', None)!r})")
    if len(dataset) == 0:
        raise DatasetError("training_features: empty dataset")
    if isinstance(getattr(dataset, "features", None), np.ndarray):
        return dataset.features
    base, idx = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
    if base is not None and idx is not None and getattr(base, "input_kind", None) == "features":
        return training_features(base)[np.asarray(idx)]
    return np.stack([np.asarray(dataset[i]["features"], dtype=np.float32)
                     for i in range(len(dataset))])
