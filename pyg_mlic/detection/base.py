r"""The region protocol: images (+ optional annotations) → boxes, ROI features, scores.

Every backend of :mod:`pyg_mlic.detection` is a :class:`RegionExtractor`: an
:class:`torch.nn.Module` whose :meth:`~RegionExtractor.forward` maps a list of images
(and, for the backends that need them, per-image annotations) to one :class:`Regions`
per image:

==================  =====================  =================================================
field               value                  notes
==================  =====================  =================================================
``boxes``           float32 ``[M, 4]``     ``xyxy`` in the pixels of the image as given
``features``        float32 ``[M, D]``     one ROI feature per box (:math:`\mathbf{X}_j` of
                                           IA-GCN Sec. 3.4, :math:`f_i` of GM-MLIC Eq. 1)
``scores``          float32 ``[M]``        objectness / detection confidence, descending
``labels``          int64 ``[M]``          class id per box, ``-1`` when the backend has none
``image_size``      ``(H, W)``             size of the image the boxes refer to
==================  =====================  =================================================

Models want fixed-size tensors: :class:`RegionFeatures` pads a batch to
``max_instances`` (:math:`N` ROIs per image, IA-GCN uses 40) with a boolean ``mask``.
Padding rows are all zeros, and an image with no region at all is a row of zeros with
``mask`` all ``False``; it flows through every consumer (the instance graph of
:mod:`pyg_mlic.graphs.instance_graph` gives it zero nodes).

Images are ``PIL.Image`` objects, ``uint8`` tensors ``[3, H, W]`` or float tensors
``[3, H, W]`` with values in :math:`[0, 1]` (RGB, *not* normalised: each backend
normalises and resizes on its own).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image as PILImage

__all__ = [
    "Regions",
    "RegionFeatures",
    "RegionExtractor",
    "ImageLike",
    "to_float_image",
    "file_fingerprint",
    "ROI_KEYS",
]

logger = logging.getLogger("pyg_mlic.detection")

#: An image a region extractor accepts: PIL image, uint8 tensor/array, or float in [0, 1].
ImageLike = Union["PILImage", Tensor, np.ndarray]

#: The keys :class:`~pyg_mlic.detection.RegionDataset` adds to each sample.
ROI_KEYS: Tuple[str, ...] = ("roi_features", "roi_boxes", "roi_mask", "roi_scores",
                             "roi_labels", "roi_image_size")


# ----------------------------------------------------------------------------- images
def to_float_image(image: ImageLike, name: str = "image") -> Tensor:
    """Convert an image to a float32 RGB tensor ``[3, H, W]`` with values in ``[0, 1]``.

    Args:
        image: ``PIL.Image`` (any mode, converted to RGB), ``uint8`` tensor/array
            ``[3, H, W]`` (or an ``[H, W, 3]`` numpy array), or a float tensor
            ``[3, H, W]`` already in ``[0, 1]``.
        name (str): how to call the image in error messages.

    Raises:
        TypeError: unsupported type.
        ValueError: wrong shape, empty image, non-finite values or a float image outside
            ``[0, 1]`` (e.g. one already normalised with ImageNet statistics).
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL is a hard dependency of torchvision
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[-1] == 3 and arr.shape[0] != 3:
            arr = arr.transpose(2, 0, 1)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    elif isinstance(image, Tensor):
        t = image.detach()
    else:
        raise TypeError(f"{name}: expected a PIL image, a numpy array or a tensor, got "
                        f"{type(image).__name__}")
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"{name}: expected an RGB image [3, H, W], got shape {tuple(t.shape)}")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"{name}: empty image {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected uint8 or floating point pixels, got {t.dtype}")
    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: image has non-finite pixel values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{name}: float images must hold RGB values in [0, 1] (got range "
                         f"[{lo:.3g}, {hi:.3g}]); region extractors normalise images "
                         f"themselves, so pass the un-normalised image")
    return t.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- one image
@dataclass
class Regions:
    r"""The regions of one image (variable count :math:`M`).

    Attributes:
        boxes (Tensor): float32 ``[M, 4]`` ``xyxy`` in pixels of the image, inside
            ``[0, W] x [0, H]``.
        features (Tensor): float32 ``[M, D]`` ROI features.
        scores (Tensor): float32 ``[M]`` confidence of each box (sorted descending by
            every backend).
        labels (Tensor): int64 ``[M]`` class id of each box (``-1``: none).
        image_size (tuple of int): ``(H, W)`` of the image the boxes refer to.
    """

    boxes: Tensor
    features: Tensor
    scores: Tensor
    labels: Tensor
    image_size: Tuple[int, int]

    def __post_init__(self) -> None:
        b, f, s, lab = self.boxes, self.features, self.scores, self.labels
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"Regions: boxes must be [M, 4], got {tuple(b.shape)}")
        m = b.shape[0]
        if f.dim() != 2 or f.shape[0] != m:
            raise ValueError(f"Regions: features must be [M={m}, D], got {tuple(f.shape)}")
        if s.shape != (m,):
            raise ValueError(f"Regions: scores must be [M={m}], got {tuple(s.shape)}")
        if lab.shape != (m,):
            raise ValueError(f"Regions: labels must be [M={m}], got {tuple(lab.shape)}")
        h, w = (int(v) for v in self.image_size)
        if h <= 0 or w <= 0:
            raise ValueError(f"Regions: image_size must be positive (H, W), got {self.image_size}")
        self.image_size = (h, w)
        self.boxes = b.float()
        self.features = f.float()
        self.scores = s.float()
        self.labels = lab.long()

    @property
    def num_instances(self) -> int:
        """:math:`M`, the number of boxes."""
        return int(self.boxes.shape[0])

    @property
    def feature_dim(self) -> int:
        """:math:`D`."""
        return int(self.features.shape[1])

    @classmethod
    def empty(cls, feature_dim: int, image_size: Tuple[int, int]) -> "Regions":
        """An image with no region (``M = 0``)."""
        return cls(torch.zeros(0, 4), torch.zeros(0, int(feature_dim)), torch.zeros(0),
                   torch.zeros(0, dtype=torch.long), image_size)

    def sorted(self) -> "Regions":
        """The regions in descending score order (stable: ties keep their order)."""
        s = self.scores
        if s.numel() < 2 or bool((s[:-1] >= s[1:]).all()):
            return self
        order = torch.sort(s, descending=True, stable=True).indices
        return Regions(self.boxes[order], self.features[order], self.scores[order],
                       self.labels[order], self.image_size)

    def topk(self, k: int) -> "Regions":
        """The ``k`` highest-scoring regions (all of them when ``M <= k``), sorted."""
        r = self.sorted()
        k = max(0, int(k))
        if r.num_instances <= k:
            return r
        return Regions(r.boxes[:k], r.features[:k], r.scores[:k], r.labels[:k], r.image_size)

    def normalized_boxes(self) -> Tensor:
        r"""Boxes divided by the image size, :math:`\hat B = (x_1/W, y_1/H, x_2/W, y_2/H)`
        (GM-MLIC Eq. 1)."""
        h, w = self.image_size
        return self.boxes / self.boxes.new_tensor([w, h, w, h])

    def check_inside(self, source: str = "regions", tol: float = 1e-3) -> None:
        """Raise ``ValueError`` naming ``source`` when a box leaves the image, is
        inverted or a value is not finite."""
        h, w = self.image_size
        b = self.boxes
        if not (torch.isfinite(b).all() and torch.isfinite(self.features).all()
                and torch.isfinite(self.scores).all()):
            raise ValueError(f"{source}: non-finite boxes, features or scores")
        if b.numel():
            bad = ((b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > w + tol)
                   | (b[:, 3] > h + tol) | (b[:, 2] < b[:, 0] - tol) | (b[:, 3] < b[:, 1] - tol))
            if bad.any():
                i = int(bad.nonzero()[0])
                raise ValueError(f"{source}: box {i} {b[i].tolist()} is not an xyxy box inside "
                                 f"the {w}x{h} (WxH) image")

    def clip_(self) -> "Regions":
        """Clamp the boxes to the image in place (undoes float round-off); returns self."""
        h, w = self.image_size
        self.boxes[:, 0::2] = self.boxes[:, 0::2].clamp(0, w)
        self.boxes[:, 1::2] = self.boxes[:, 1::2].clamp(0, h)
        return self


# ----------------------------------------------------------------------------- padded batch
@dataclass
class RegionFeatures:
    r"""Regions of a batch of :math:`B` images, padded to :math:`K` = ``max_instances``.

    Row :math:`b` holds the first :math:`\min(M_b, K)` regions of image :math:`b` in
    descending score order, then zeros; ``mask[b, j]`` is ``True`` exactly for the
    real rows. An image without regions has ``mask[b]`` all ``False``.

    Attributes:
        features (Tensor): float ``[B, K, D]``.
        boxes (Tensor): float ``[B, K, 4]`` ``xyxy`` pixels.
        scores (Tensor): float ``[B, K]``.
        labels (Tensor): int64 ``[B, K]`` (``-1`` for padding and unknown classes).
        mask (Tensor): bool ``[B, K]``.
        image_sizes (Tensor): int64 ``[B, 2]`` ``(H, W)``.
    """

    features: Tensor
    boxes: Tensor
    scores: Tensor
    labels: Tensor
    mask: Tensor
    image_sizes: Tensor

    def __post_init__(self) -> None:
        if self.features.dim() != 3:
            raise ValueError(f"RegionFeatures: features must be [B, K, D], got "
                             f"{tuple(self.features.shape)}")
        b, k, _ = self.features.shape
        expect = {"boxes": (b, k, 4), "scores": (b, k), "labels": (b, k), "mask": (b, k),
                  "image_sizes": (b, 2)}
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"RegionFeatures: {name} must be {list(shape)}, got {list(got)}")
        if self.mask.dtype != torch.bool:
            raise ValueError(f"RegionFeatures: mask must be bool, got {self.mask.dtype}")

    @classmethod
    def from_regions(cls, regions: Sequence[Regions], max_instances: int,
                     feature_dim: Optional[int] = None) -> "RegionFeatures":
        """Pad a list of :class:`Regions` to ``max_instances`` rows each.

        Args:
            regions: one :class:`Regions` per image.
            max_instances (int): :math:`K`; images with more regions keep their top
                :math:`K` by score.
            feature_dim (int, optional): :math:`D`, required when every image is empty.
        """
        k = int(max_instances)
        if k < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        if feature_dim is None:
            dims = {r.feature_dim for r in regions}
            if not dims:
                raise ValueError("RegionFeatures.from_regions: no image given and no feature_dim")
            if len(dims) != 1:
                raise ValueError(f"RegionFeatures.from_regions: images have different feature "
                                 f"dimensions {sorted(dims)}")
            feature_dim = dims.pop()
        d, b = int(feature_dim), len(regions)
        feats = torch.zeros(b, k, d)
        boxes = torch.zeros(b, k, 4)
        scores = torch.zeros(b, k)
        labels = torch.full((b, k), -1, dtype=torch.long)
        mask = torch.zeros(b, k, dtype=torch.bool)
        sizes = torch.zeros(b, 2, dtype=torch.long)
        for i, r in enumerate(regions):
            if r.feature_dim != d:
                raise ValueError(f"RegionFeatures.from_regions: image {i} has feature dimension "
                                 f"{r.feature_dim}, expected {d}")
            r = r.topk(k)
            m = r.num_instances
            feats[i, :m], boxes[i, :m], scores[i, :m] = r.features, r.boxes, r.scores
            labels[i, :m] = r.labels
            mask[i, :m] = True
            sizes[i] = torch.tensor(r.image_size)
        return cls(feats, boxes, scores, labels, mask, sizes)

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any]) -> "RegionFeatures":
        """Read the ``roi_*`` keys of a collated batch (see
        :class:`~pyg_mlic.detection.RegionDataset`)."""
        missing = [k for k in ROI_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; wrap the dataset in "
                           f"pyg_mlic.detection.RegionDataset to get ROI features")
        return cls(batch["roi_features"], batch["roi_boxes"], batch["roi_scores"],
                   batch["roi_labels"], batch["roi_mask"], batch["roi_image_size"])

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def max_instances(self) -> int:
        return int(self.features.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[2])

    @property
    def num_instances(self) -> Tensor:
        """int64 ``[B]``: real regions per image."""
        return self.mask.sum(1)

    def normalized_boxes(self) -> Tensor:
        r"""``[B, K, 4]`` boxes divided by their image's size (GM-MLIC Eq. 1
        :math:`\hat B`); padding rows stay zero."""
        hw = self.image_sizes.to(self.boxes.dtype).clamp(min=1)
        scale = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], 1)[:, None, :]
        return self.boxes / scale * self.mask[..., None]

    def to(self, *args: Any, **kwargs: Any) -> "RegionFeatures":
        """Move every float tensor (and, for a device, every tensor) like ``Tensor.to``."""
        def mv(t: Tensor) -> Tensor:
            if t.is_floating_point():
                return t.to(*args, **kwargs)
            dev = next((a for a in args if isinstance(a, (str, torch.device))),
                       kwargs.get("device"))
            return t.to(dev) if dev is not None else t
        return RegionFeatures(mv(self.features), mv(self.boxes), mv(self.scores),
                              mv(self.labels), mv(self.mask), mv(self.image_sizes))

    def unbind(self) -> List[Regions]:
        """Back to one :class:`Regions` per image (padding removed)."""
        out = []
        for i in range(len(self)):
            m = self.mask[i]
            out.append(Regions(self.boxes[i][m], self.features[i][m], self.scores[i][m],
                               self.labels[i][m], tuple(int(v) for v in self.image_sizes[i])))
        return out


# ----------------------------------------------------------------------------- fingerprints
_FP_MEMO: Dict[Tuple[str, int, int], str] = {}


def file_fingerprint(path: Union[str, os.PathLike]) -> str:
    """SHA-256 of a file's content (memoised per process on path, size and mtime)."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    hit = _FP_MEMO.get(key)
    if hit is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        hit = _FP_MEMO[key] = h.hexdigest()
    return hit


def config_hash(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- extractor
class RegionExtractor(nn.Module):
    r"""Base class of the region backends.

    Subclasses set :attr:`backend`, :attr:`feature_dim` and :attr:`max_instances`,
    implement :meth:`_extract_one` (one image → :class:`Regions` in that image's
    pixels, any order) and :meth:`config` (everything that changes the output, for the
    cache key of :class:`~pyg_mlic.detection.RegionCache`).

    Images are processed one at a time, so the regions of an image never depend on
    which other images share its batch (padding to a common size would change the
    feature maps near the border); this is what makes a cached extraction equal to a
    fresh one. Extractors are frozen feature sources: :meth:`forward` runs under
    :func:`torch.no_grad` and the detectors stay in evaluation mode.

    Attributes:
        backend (str): registry name (``"torchvision"``, ``"detectron2"`` ...).
        feature_dim (int): :math:`D`.
        max_instances (int): :math:`K`, regions kept per image (top-:math:`K` by score).
        needs_image (bool): :meth:`forward` reads pixels.
        needs_boxes (bool): annotations must carry ``"boxes"`` (ground truth).
        needs_key (bool): annotations must carry ``"key"`` (an image id).
    """

    backend: str = "base"
    needs_image: bool = True
    needs_boxes: bool = False
    needs_key: bool = False

    def __init__(self, max_instances: int, feature_dim: int) -> None:
        super().__init__()
        self.max_instances = check_max_instances(max_instances, type(self).__name__)
        self.feature_dim = int(feature_dim)

    # -- to implement --------------------------------------------------------------------------
    def _extract_one(self, image: Optional[Tensor], annotation: Mapping[str, Any]) -> Regions:
        """Regions of one image (float ``[3, H, W]`` in ``[0, 1]``, or ``None`` when
        ``needs_image`` is ``False``) in that image's pixels."""
        raise NotImplementedError(f"{type(self).__name__} must implement _extract_one")

    def config(self) -> Dict[str, Any]:
        """JSON-able description of everything that determines the output."""
        return {"backend": self.backend, "max_instances": self.max_instances,
                "feature_dim": self.feature_dim}

    # -- public -------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, images: Optional[Sequence[Optional[ImageLike]]],
                annotations: Optional[Sequence[Mapping[str, Any]]] = None) -> List[Regions]:
        """Extract the regions of each image.

        Args:
            images: one image per sample (see :func:`to_float_image`); may be ``None``
                (or hold ``None``) for backends with ``needs_image = False``, which then
                need ``annotations[i]["image_size"]``.
            annotations: optional per-image dicts; keys read by the backends:
                ``"boxes"`` (float ``[M, 4]`` xyxy pixels; ground truth),
                ``"labels"`` (int ``[M]``), ``"key"`` (str image id; precomputed),
                ``"image_size"`` (``(H, W)``).

        Returns:
            list of :class:`Regions`, at most :attr:`max_instances` each, sorted by
            descending score, boxes clipped to the image.
        """
        n = len(images) if images is not None else (len(annotations) if annotations else 0)
        if images is None:
            images = [None] * n
        if annotations is None:
            annotations = [{} for _ in range(n)]
        if len(annotations) != len(images):
            raise ValueError(f"{type(self).__name__}: {len(images)} images but "
                             f"{len(annotations)} annotations")
        out = []
        for i, (img, ann) in enumerate(zip(images, annotations)):
            name = f"{type(self).__name__} image {ann.get('key', i)}"
            if img is None:
                if self.needs_image:
                    raise ValueError(f"{name}: this backend needs the image pixels")
                t = None
            else:
                t = to_float_image(img, name)
            if self.needs_boxes and ann.get("boxes") is None:
                raise ValueError(f"{name}: backend {self.backend!r} needs annotated boxes "
                                 f"(annotations[i]['boxes'])")
            if self.needs_key and ann.get("key") is None:
                raise ValueError(f"{name}: backend {self.backend!r} needs an image id "
                                 f"(annotations[i]['key'])")
            r = self._extract_one(t, ann).topk(self.max_instances)
            if r.feature_dim != self.feature_dim:
                raise RuntimeError(f"{name}: backend produced {r.feature_dim}-d features, "
                                   f"declared {self.feature_dim}")
            out.append(r.clip_())
        return out

    def extract(self, images: Optional[Sequence[Optional[ImageLike]]],
                annotations: Optional[Sequence[Mapping[str, Any]]] = None) -> RegionFeatures:
        """:meth:`forward` followed by padding to :attr:`max_instances`."""
        return RegionFeatures.from_regions(self(images, annotations), self.max_instances,
                                           self.feature_dim)

    def extra_repr(self) -> str:
        cfg = {k: v for k, v in self.config().items() if k != "backend"}
        return ", ".join(f"{k}={v!r}" for k, v in cfg.items())


def check_max_instances(max_instances: Any, who: str) -> int:
    """``max_instances`` as an int >= 1 (``ValueError`` naming ``who`` otherwise)."""
    if isinstance(max_instances, bool) or not isinstance(max_instances, (int, np.integer)) \
            or max_instances < 1:
        raise ValueError(f"{who}: max_instances must be an int >= 1, got {max_instances!r}")
    return int(max_instances)


def image_size_of(image: Optional[Tensor], annotation: Mapping[str, Any], who: str
                  ) -> Tuple[int, int]:
    """``(H, W)`` from the image tensor or ``annotation["image_size"]``."""
    if image is not None:
        return int(image.shape[-2]), int(image.shape[-1])
    size = annotation.get("image_size")
    if size is None:
        raise ValueError(f"{who}: give the image or annotations[i]['image_size'] = (H, W)")
    h, w = (int(v) for v in size)
    return h, w


def as_boxes(boxes: Any, who: str) -> Tensor:
    """``boxes`` as a float32 ``[M, 4]`` tensor; raises ``ValueError`` naming ``who``."""
    if isinstance(boxes, Tensor):
        t = boxes.detach().float()
    else:
        try:
            t = torch.from_numpy(np.asarray(boxes, dtype=np.float32))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{who}: boxes must be an [M, 4] array ({e})") from None
    if t.numel() == 0:
        return torch.zeros(0, 4)
    if t.dim() != 2 or t.shape[1] != 4:
        raise ValueError(f"{who}: boxes must be [M, 4], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{who}: boxes contain non-finite values")
    return t.contiguous()
