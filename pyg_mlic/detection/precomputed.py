r"""Precomputed regions read from disk (bottom-up-attention style features).

Three layouts, all read with ``allow_pickle=False`` (a file holding Python objects is
refused, never unpickled):

1. **one file per dataset** — a ``.npz`` with

   =================  ==================  ===============================================
   key                value               notes
   =================  ==================  ===============================================
   ``image_ids``      ``[N]`` str or int  one id per image (unique)
   ``offsets``        int ``[N + 1]``     image :math:`n` owns rows
                                          ``offsets[n]:offsets[n+1]``; ``offsets[0] = 0``,
                                          non-decreasing, ``offsets[N] = T``
   ``boxes``          float ``[T, 4]``    ``xyxy`` pixels of the image
   ``features``       float ``[T, D]``
   ``scores``         float ``[T]``
   ``labels``         int ``[T]``         optional (``-1`` = none)
   ``image_sizes``    int ``[N, 2]``      optional ``(H, W)``
   =================  ==================  ===============================================

2. **the same arrays as** ``<key>.npy`` **files in a folder** (``offsets.npy`` marks
   it) — memory-mapped, for files larger than memory;
3. **one** ``<image_id>.npz`` **per image** in a folder, with ``boxes``, ``features``,
   ``scores`` and optional ``labels``, ``image_size``.

:func:`save_regions` writes all three from :class:`~pyg_mlic.detection.Regions`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from pyg_mlic.detection.base import RegionExtractor, Regions, file_fingerprint
from pyg_mlic.errors import DatasetError
from pyg_mlic.utils.io import atomic_np_save, atomic_np_savez

__all__ = ["PrecomputedRegionExtractor", "save_regions"]

PathLike = Union[str, os.PathLike]

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")
_ARRAYS = ("image_ids", "offsets", "boxes", "features", "scores", "labels", "image_sizes")


def _load_npz(path: Path) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DatasetError(f"{path}: holds Python objects (pickled arrays), which are "
                               f"not loaded; store strings as fixed-width unicode arrays") \
                from None
        raise DatasetError(f"{path}: not a readable .npz file ({e})") from None
    except (OSError, EOFError, KeyError) as e:
        raise DatasetError(f"{path}: not a readable .npz file ({type(e).__name__}: {e}; "
                           f"truncated or corrupt?)") from None


def _load_npy_dir(path: Path) -> Dict[str, np.ndarray]:
    out = {}
    for k in _ARRAYS:
        f = path / f"{k}.npy"
        if f.is_file():
            try:
                out[k] = np.load(f, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise DatasetError(f"{f}: not a plain .npy array ({e})") from None
            except (OSError, EOFError) as e:
                raise DatasetError(f"{f}: not readable ({e}; truncated or corrupt?)") from None
    return out


def _ids_as_str(ids: np.ndarray, src: str) -> List[str]:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise DatasetError(f"{src}: image_ids must be 1-D, got shape {ids.shape}")
    if ids.dtype.kind in "iu":
        out = [str(int(v)) for v in ids]
    elif ids.dtype.kind in "US":
        out = [v.decode() if isinstance(v, bytes) else str(v) for v in ids.tolist()]
    else:
        raise DatasetError(f"{src}: image_ids must be strings or integers, got {ids.dtype}")
    if len(set(out)) != len(out):
        dup = next(v for v in out if out.count(v) > 1)
        raise DatasetError(f"{src}: image id {dup!r} is listed twice")
    return out


class PrecomputedRegionExtractor(RegionExtractor):
    r"""Regions of each image read from disk by image id (``annotations[i]["key"]``).

    Nothing is computed: the boxes, features and scores are those stored (sorted by
    descending score and truncated to ``max_instances`` like every backend). Image ids
    of a dataset are given by :func:`pyg_mlic.detection.sample_key` (COCO: the image
    id; VOC: the file id; otherwise the file stem).

    Args:
        path (str): a ``.npz`` file, a folder of ``.npy`` arrays, or a folder of
            per-image ``.npz`` files (see the module docstring).
        max_instances (int): :math:`K`. (default: :obj:`40`)
        box_tolerance (float): boxes may leave the image by this many pixels (then they
            are clipped); more is an error. (default: :obj:`1.0`)

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DatasetError: malformed file (missing key, inconsistent shapes or offsets,
            duplicate ids, pickled objects), naming the file.
    """

    backend = "precomputed"
    needs_image = False
    needs_key = True

    def __init__(self, path: PathLike, *, max_instances: int = 40,
                 box_tolerance: float = 1.0) -> None:
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"precomputed regions not found: {p}")
        self.path = p
        self.box_tolerance = float(box_tolerance)
        self._arrays: Optional[Dict[str, np.ndarray]] = None
        self._row: Dict[str, int] = {}
        if p.is_file():
            self.layout = "npz"
            dim = self._open_packed(_load_npz(p), str(p))
        elif (p / "offsets.npy").is_file():
            self.layout = "npy_dir"
            dim = self._open_packed(_load_npy_dir(p), str(p))
        elif p.is_dir():
            self.layout = "per_image"
            files = sorted(f for f in p.glob("*.npz") if not f.name.startswith("."))
            if not files:
                raise DatasetError(f"{p}: no per-image .npz file (and no offsets.npy) in the "
                                   f"folder")
            first = _load_npz(files[0])
            if "features" not in first or np.ndim(first["features"]) != 2:
                raise DatasetError(f"{files[0]}: needs a 2-D 'features' array")
            dim = int(first["features"].shape[1])
            self._files = {f.stem: f for f in files}
        else:
            raise DatasetError(f"{p}: neither a file nor a folder")
        super().__init__(max_instances, dim)

    def _open_packed(self, a: Dict[str, np.ndarray], src: str) -> int:
        need = ("image_ids", "offsets", "boxes", "features", "scores")
        missing = [k for k in need if k not in a]
        if missing:
            raise DatasetError(f"{src}: missing array(s) {missing} (found {sorted(a)}); "
                               f"expected {list(need)} (+ optional labels, image_sizes)")
        ids = _ids_as_str(a["image_ids"], src)
        off = np.asarray(a["offsets"])
        n, t = len(ids), int(a["boxes"].shape[0]) if a["boxes"].ndim == 2 else -1
        if a["boxes"].ndim != 2 or a["boxes"].shape[1] != 4:
            raise DatasetError(f"{src}: boxes must be [T, 4], got {a['boxes'].shape}")
        if a["features"].ndim != 2 or a["features"].shape[0] != t:
            raise DatasetError(f"{src}: features must be [T={t}, D], got {a['features'].shape}")
        if a["scores"].shape != (t,):
            raise DatasetError(f"{src}: scores must be [T={t}], got {a['scores'].shape}")
        if "labels" in a and a["labels"].shape != (t,):
            raise DatasetError(f"{src}: labels must be [T={t}], got {a['labels'].shape}")
        if "image_sizes" in a and a["image_sizes"].shape != (n, 2):
            raise DatasetError(f"{src}: image_sizes must be [N={n}, 2], got "
                               f"{a['image_sizes'].shape}")
        if off.dtype.kind not in "iu" or off.shape != (n + 1,):
            raise DatasetError(f"{src}: offsets must be integers [N + 1 = {n + 1}], got "
                               f"{off.dtype} {off.shape}")
        if off[0] != 0 or off[-1] != t or (np.diff(off) < 0).any():
            raise DatasetError(f"{src}: offsets must start at 0, never decrease and end at "
                               f"T = {t} (got first {off[0]}, last {off[-1]})")
        self._arrays = a
        self._offsets = off.astype(np.int64)
        self._row = {k: i for i, k in enumerate(ids)}
        return int(a["features"].shape[1])

    @property
    def image_ids(self) -> List[str]:
        """Ids of the stored images."""
        return list(self._row) if self.layout != "per_image" else list(self._files)

    def __contains__(self, key: object) -> bool:
        key = str(key)
        return key in (self._row if self.layout != "per_image" else self._files)

    def config(self) -> Dict[str, Any]:
        if self.path.is_file():
            src = "file:" + file_fingerprint(self.path)
        else:
            # folder: names, sizes and mtimes of its files (content hashing would read all)
            parts = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                           for f in self.path.iterdir() if f.is_file())
            from pyg_mlic.detection.base import config_hash

            src = "dir:" + config_hash(parts)
        return {"backend": self.backend, "source": src, "layout": self.layout,
                "max_instances": self.max_instances, "feature_dim": self.feature_dim,
                "box_tolerance": self.box_tolerance}

    def _record(self, key: str) -> Tuple[Dict[str, np.ndarray], str]:
        if self.layout == "per_image":
            f = self._files.get(key)
            if f is None:
                raise DatasetError(f"{self.path}: no file for image id {key!r} "
                                   f"({len(self._files)} files, e.g. "
                                   f"{sorted(self._files)[:3]})")
            rec = _load_npz(f)
            for k in ("boxes", "features", "scores"):
                if k not in rec:
                    raise DatasetError(f"{f}: missing array {k!r} (found {sorted(rec)})")
            return rec, str(f)
        i = self._row.get(key)
        if i is None:
            raise DatasetError(f"{self.path}: image id {key!r} is not in the file "
                               f"({len(self._row)} ids, e.g. {list(self._row)[:3]})")
        a, lo, hi = self._arrays, int(self._offsets[i]), int(self._offsets[i + 1])
        rec = {k: np.asarray(a[k][lo:hi]) for k in ("boxes", "features", "scores", "labels")
               if k in a}
        if "image_sizes" in a:
            rec["image_size"] = np.asarray(a["image_sizes"][i])
        return rec, f"{self.path} (image id {key!r})"

    def _extract_one(self, image: Optional[Tensor], annotation: Mapping[str, Any]) -> Regions:
        key = str(annotation["key"])
        rec, src = self._record(key)
        boxes = np.asarray(rec["boxes"], dtype=np.float32).reshape(-1, 4)
        feats = np.asarray(rec["features"], dtype=np.float32)
        m = len(boxes)
        if feats.ndim != 2 or feats.shape != (m, self.feature_dim):
            raise DatasetError(f"{src}: features must be [{m}, {self.feature_dim}], got "
                               f"{feats.shape}")
        scores = np.asarray(rec["scores"], dtype=np.float32).reshape(-1)
        if scores.shape != (m,):
            raise DatasetError(f"{src}: scores must be [{m}], got {scores.shape}")
        labels = (np.asarray(rec["labels"]).astype(np.int64).reshape(-1) if "labels" in rec
                  else np.full(m, -1, np.int64))
        if labels.shape != (m,):
            raise DatasetError(f"{src}: labels must be [{m}], got {labels.shape}")
        if image is not None:
            size = (int(image.shape[-2]), int(image.shape[-1]))
        elif annotation.get("image_size") is not None:
            size = tuple(int(v) for v in annotation["image_size"])
        elif "image_size" in rec:
            size = tuple(int(v) for v in np.asarray(rec["image_size"]).reshape(2))
        else:
            raise DatasetError(f"{src}: the image size is unknown (store image_sizes / "
                               f"image_size, or pass the image or annotations['image_size'])")
        if "image_size" in rec and tuple(int(v) for v in np.asarray(
                rec["image_size"]).reshape(2)) != size:
            raise DatasetError(f"{src}: stored image size {tuple(rec['image_size'])} (H, W) "
                               f"differs from the image's {size}")
        # validated in numpy: tiny arrays, no thread-pool round trips per image
        if not (np.isfinite(boxes).all() and np.isfinite(feats).all()
                and np.isfinite(scores).all()):
            raise DatasetError(f"{src}: non-finite boxes, features or scores")
        h, w = size
        tol = self.box_tolerance
        bad = ((boxes[:, 0] < -tol) | (boxes[:, 1] < -tol) | (boxes[:, 2] > w + tol)
               | (boxes[:, 3] > h + tol) | (boxes[:, 2] < boxes[:, 0] - tol)
               | (boxes[:, 3] < boxes[:, 1] - tol))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"{src}: box {i} {boxes[i].tolist()} is not an xyxy box inside "
                               f"the {w}x{h} (WxH) image")
        if m > 1 and not (scores[:-1] >= scores[1:]).all():
            order = np.argsort(-scores, kind="stable")
            boxes, feats, scores, labels = boxes[order], feats[order], scores[order], labels[order]
        return Regions(torch.from_numpy(boxes.copy()), torch.from_numpy(feats.copy()),
                       torch.from_numpy(scores.copy()), torch.from_numpy(labels.copy()),
                       size).clip_()


def save_regions(path: PathLike, image_ids: Sequence[Union[str, int]],
                 regions: Sequence[Regions], layout: str = "npz") -> Path:
    """Write regions in a layout :class:`PrecomputedRegionExtractor` reads.

    Args:
        path (str): the ``.npz`` file (``layout="npz"``) or the folder.
        image_ids: one id per image (unique; for ``"per_image"`` plain file names:
            letters, digits, ``._-``).
        regions: one :class:`~pyg_mlic.detection.Regions` per image.
        layout (str): ``"npz"`` (one packed file), ``"npy_dir"`` (the packed arrays as
            ``.npy`` files in a folder, memory-mappable) or ``"per_image"``.
            (default: :obj:`"npz"`)

    Returns:
        pathlib.Path: ``path``.
    """
    layouts = ("npz", "npy_dir", "per_image")
    if layout not in layouts:
        raise ValueError(f"save_regions: layout must be one of {layouts}, got {layout!r}")
    ids = [str(i) for i in image_ids]
    if len(ids) != len(regions):
        raise ValueError(f"save_regions: {len(ids)} image ids but {len(regions)} regions")
    if len(set(ids)) != len(ids):
        raise ValueError("save_regions: image ids must be unique")
    p = Path(path)
    if layout == "per_image":
        bad = [i for i in ids if not _SAFE_ID.match(i)]
        if bad:
            raise ValueError(f"save_regions: ids {bad[:3]} are not plain file names")
        p.mkdir(parents=True, exist_ok=True)
        for i, r in zip(ids, regions):
            atomic_np_savez(p / f"{i}.npz", {
                "boxes": r.boxes.numpy().astype(np.float32),
                "features": r.features.numpy().astype(np.float32),
                "scores": r.scores.numpy().astype(np.float32),
                "labels": r.labels.numpy().astype(np.int64),
                "image_size": np.asarray(r.image_size, dtype=np.int64)})
        return p
    dims = {r.feature_dim for r in regions}
    if len(dims) > 1:
        raise ValueError(f"save_regions: images have different feature dimensions {dims}")
    d = dims.pop() if dims else 0
    counts = np.asarray([r.num_instances for r in regions], dtype=np.int64)

    def cat(xs, shape, dt):
        return np.concatenate(xs).astype(dt) if xs else np.zeros(shape, dt)

    arrays = {
        "image_ids": np.asarray(ids, dtype=str),
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "boxes": cat([r.boxes.numpy() for r in regions], (0, 4), np.float32),
        "features": cat([r.features.numpy() for r in regions], (0, d), np.float32),
        "scores": cat([r.scores.numpy() for r in regions], (0,), np.float32),
        "labels": cat([r.labels.numpy() for r in regions], (0,), np.int64),
        "image_sizes": np.asarray([r.image_size for r in regions],
                                  dtype=np.int64).reshape(-1, 2),
    }
    if layout == "npz":
        atomic_np_savez(p, arrays)
        return p
    p.mkdir(parents=True, exist_ok=True)
    for name in [k for k in arrays if k != "offsets"] + ["offsets"]:   # offsets.npy last
        atomic_np_save(p / f"{name}.npy", arrays[name])
    return p
