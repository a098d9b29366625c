"""What a region extractor needs from a dataset: the raw image, its boxes, an id.

Region extraction runs on the image as stored on disk (or as rendered, for
:class:`~pyg_mlic.data.SyntheticScenes`), not on the dataset's transformed sample:
detectors resize and normalise on their own, and cached regions must not depend on the
random augmentation of one epoch. Boxes of :class:`Regions` are therefore in the pixels
of the stored image; ``roi_image_size`` carries its ``(H, W)`` so that consumers can
normalise them (GM-MLIC Eq. 1).

- :func:`region_source` — a lazy :class:`RegionSource` for sample ``i``;
- :func:`sample_key` — the image id used by precomputed files;
- :func:`dataset_identity` — what identifies the dataset in a cache key.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

__all__ = ["RegionSource", "region_source", "sample_key", "dataset_identity"]


@dataclass
class RegionSource:
    """One image of a dataset, as region extractors see it.

    Attributes:
        key (str): image id (see :func:`sample_key`).
        image_size (tuple): ``(H, W)`` of the stored image.
        load (callable): returns the RGB ``PIL.Image`` (decoded on demand).
        boxes (numpy.ndarray, optional): float32 ``[M, 4]`` annotated ``xyxy`` boxes in the
            stored image's pixels, clipped to it.
        labels (numpy.ndarray, optional): int64 ``[M]`` class index of each box.
    """

    key: str
    image_size: Tuple[int, int]
    load: Callable[[], Any] = field(repr=False)
    boxes: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None

    def annotation(self) -> Dict[str, Any]:
        """The annotation dict :meth:`RegionExtractor.forward` reads."""
        ann: Dict[str, Any] = {"key": self.key, "image_size": self.image_size}
        if self.boxes is not None:
            ann["boxes"] = self.boxes
            ann["labels"] = self.labels
        return ann


def _unwrap(dataset, index: int):
    """Follow :class:`~pyg_mlic.data.base.SubsetDataset` wrappers to the base dataset."""
    from pyg_mlic.data.base import SubsetDataset

    n = len(dataset)
    if not -n <= int(index) < n:
        raise IndexError(f"{type(dataset).__name__}: index {index} out of range for {n} samples")
    index = int(index) % n
    while isinstance(dataset, SubsetDataset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    return dataset, index


def sample_key(dataset, index: int) -> str:
    """The image id of sample ``index``: COCO image id, VOC file id, the image file's
    stem, or the index itself (synthetic scenes and other datasets)."""
    base, i = _unwrap(dataset, index)
    if hasattr(base, "image_ids") and isinstance(getattr(base, "image_ids"), list):
        return str(base.image_ids[i])
    if hasattr(base, "ids") and isinstance(getattr(base, "ids"), list):
        return str(base.ids[i])
    if hasattr(base, "image_files"):
        return Path(base.image_files[i]).stem
    return str(i)


def _clip(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    return b


def region_source(dataset, index: int) -> RegionSource:
    """The :class:`RegionSource` of sample ``index`` (no pixel decoding yet).

    Supports the image-file datasets (``load_image``/``image_path``: COCO, VOC, folder,
    NUS-WIDE), :class:`~pyg_mlic.data.SyntheticScenes` (``render``) and
    :class:`~pyg_mlic.data.base.SubsetDataset` of either.

    Raises:
        TypeError: the dataset has no raw images (e.g. a features dataset).
        DatasetError: the image file is missing or unreadable (naming it).
    """
    base, i = _unwrap(dataset, index)
    key = sample_key(dataset, index)
    if hasattr(base, "image_path") and hasattr(base, "load_image"):
        from PIL import Image, UnidentifiedImageError

        from pyg_mlic.errors import DatasetError

        path = base.image_path(i)
        try:
            with Image.open(path) as im:          # header only
                w, h = im.size
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetError(f"cannot read image {path}: {e}") from None
        boxes = labels = None
        if callable(getattr(base, "boxes", None)) and getattr(base, "with_boxes", True):
            boxes, labels = base.boxes(i)
            boxes = _clip(boxes, h, w)
            labels = np.asarray(labels, dtype=np.int64)
        return RegionSource(key, (h, w), lambda: base.load_image(i), boxes, labels)
    if callable(getattr(base, "render_array", None)):
        s = int(base.image_size)
        arr_boxes = base.render_array(i)
        return RegionSource(key, (s, s), lambda: base.render(i)[0],
                            _clip(arr_boxes[1], s, s), np.asarray(arr_boxes[2], np.int64))
    raise TypeError(f"{type(base).__name__} has no raw images (it needs load_image(i) and "
                    f"image_path(i), or render(i)); region extraction cannot run on it")


def dataset_identity(dataset, with_boxes: bool = False) -> Dict[str, Any]:
    """A JSON-able description of which images (in which order) a dataset holds.

    Image datasets: class name, split, number of samples and a SHA-256 over every image
    file's path relative to the root and its size; synthetic scenes: their generator
    settings; subsets: the base's identity plus the indices. With ``with_boxes`` the
    annotated boxes and labels enter the hash too (ground-truth regions depend on them).
    """
    from pyg_mlic.data.base import SubsetDataset

    if isinstance(dataset, SubsetDataset):
        idx = np.asarray(dataset.indices, dtype=np.int64)
        return {"subset_of": dataset_identity(dataset.dataset, with_boxes),
                "indices": hashlib.sha256(idx.tobytes()).hexdigest()}
    out: Dict[str, Any] = {"type": type(dataset).__name__,
                           "split": getattr(dataset, "split", None), "n": len(dataset)}
    h = hashlib.sha256()
    if hasattr(dataset, "image_files"):
        root = str(getattr(dataset, "root", ""))
        for f in dataset.image_files:
            rel = os.path.relpath(f, root) if root else str(f)
            try:
                size = os.stat(f).st_size
            except OSError:
                size = -1
            h.update(f"{rel}\0{size}\n".encode())
        out["files"] = h.hexdigest()
    elif callable(getattr(dataset, "render_array", None)):
        out.update({k: getattr(dataset, k, None)
                    for k in ("seed", "image_size", "max_objects")})
    else:
        raise TypeError(f"{type(dataset).__name__}: cannot identify its images for a cache key")
    if with_boxes and callable(getattr(dataset, "boxes", None)) \
            and getattr(dataset, "with_boxes", True):
        # synthetic scenes: the boxes follow from (seed, split, index), already above
        hb = hashlib.sha256()
        for i in range(len(dataset)):
            b, lab = dataset.boxes(i)
            hb.update(np.ascontiguousarray(b, np.float32).tobytes())
            hb.update(np.ascontiguousarray(lab, np.int64).tobytes())
            hb.update(b"|")
        out["boxes"] = hb.hexdigest()
    return out
