r"""Per-image regions (ROIs) for the region-based models (IA-GCN, GM-MLIC).

:func:`read_regions` turns a collated batch into a :class:`RegionBatch`: the global
image features :math:`\mathbf{x}` of the model's encoder (when asked for) plus a padded
set of :math:`K` ROI features :math:`\mathbf{X} \in \mathbb{R}^{K \times D_r}` per image
(IA-GCN Sec. 3.4, GM-MLIC Eq. 1), their boxes normalised to :math:`[0, 1]` and a mask.

Three sources of ROIs:

``"batch"``
    Precomputed regions of a :class:`~pyg_mlic.detection.RegionDataset` (keys
    ``roi_features`` ``[B, K, D_r]``, ``roi_boxes`` ``[B, K, 4]`` in pixels of the image
    of size ``roi_image_size`` ``[B, 2]`` = ``(H, W)``, ``roi_mask`` ``[B, K]``). Works for
    image and feature inputs; the encoder only produces the global features, and is not
    run at all with ``image_features=False`` (a model that reads only the ROIs, such as
    GM-MLIC, then costs no backbone forward and leaves no encoder parameter without a
    gradient).
``"boxes"``
    Image input only: RoIAlign of the batch's annotated ``boxes`` (xyxy pixels of the
    transformed image, as :func:`pyg_mlic.data.base.collate` keeps them) on the
    backbone's own feature map. The first ``max_instances`` boxes of each image are kept
    (the datasets list them in annotation order; no score exists to rank them).
``"region_boxes"``
    Image input only: RoIAlign of the *cached detector boxes* of a
    :class:`~pyg_mlic.detection.RegionDataset` (``roi_boxes`` / ``roi_mask``, already in
    descending score order; the top ``max_instances`` kept) on the backbone's own,
    trainable feature map; the cached ROI features are not read. The ROI features then
    have the global feature's dimension :math:`D` and are trained with the model. Boxes
    are mapped from the ``roi_image_size`` frame to the network input by the per-axis
    ratio of the two sizes (exact for a resize and for boxes that followed the sample's
    transform, ``RegionDataset(roi_augment="follow")``, the default for a random
    transform).

For ``"boxes"`` and ``"region_boxes"`` the backbone runs **once**:
:math:`\mathbf{F} = f_{cnn}(I)`, :math:`\mathbf{x} = f_{pool}(\mathbf{F})` and, for each
box :math:`B_i` in input pixels,

.. math::
    \mathbf{X}_i = \frac{1}{r^2} \sum_{u,v=1}^{r}
    \mathrm{RoIAlign}_{r \times r}(\mathbf{F}, s \cdot B_i)_{:,u,v}
    \in \mathbb{R}^{D}

with :math:`s = (w/W, h/H)` the feature-map-to-image scale per axis (equal to
torchvision's ``spatial_scale`` = map width / image width when both axes have the same
stride), ``aligned=True``, ``sampling_ratio=2``. :math:`D_r` is the backbone's channel
count. Gradients reach the backbone through both :math:`\mathbf{x}` and
:math:`\mathbf{X}`. The batch is padded to :math:`K` = the largest number of kept boxes
of its images (at least 1), not to ``max_instances``: padding costs compute in every
consumer.

**Degenerate boxes.** A box with no area inside the image (:math:`x_2 \le x_1` or
:math:`y_2 \le y_1` after clipping to the image: a random crop leaves such rows in
``boxes`` so that indices stay aligned with ``box_labels``, see
:class:`~pyg_mlic.data.transforms.RandomCropResizeTransform`) is not a region: it is
masked out in every source before the top ``max_instances`` are taken, so it never
takes the slot of a real region and is never fed to a model as an ROI. The kept rows
come first, in their original order; :attr:`RegionBatch.index` gives each row's
position in the source list (``boxes[b]`` or the ``roi_*`` rows).

``"auto"`` picks ``"batch"`` when the batch has ``roi_features``, else ``"boxes"`` for
image input; feature input without ``roi_features`` raises.

Padding rows (and images without a region: ``mask`` all ``False``) are zeros.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from pyg_mlic.models.base import debug_checks

__all__ = ["RegionBatch", "read_regions", "region_feature_dim", "resolve_source",
           "positive_area", "SOURCES", "ALIGN_SOURCES"]

#: accepted values of ``source``
SOURCES = ("auto", "batch", "boxes", "region_boxes")

#: the sources that pool ROIs from the model's own feature map
ALIGN_SOURCES = ("boxes", "region_boxes")

_WRAP_HINT = ("wrap the dataset with pyg_mlic.detection.RegionDataset (CLI: pass "
              "`--regions BACKEND`, e.g. `--regions torchvision`)")

_ROI_KEYS = ("roi_mask", "roi_boxes", "roi_image_size")


@dataclass
class RegionBatch:
    r"""Global features and padded ROIs of a batch of :math:`B` images.

    Attributes:
        image_features (Tensor or None): ``[B, D]`` global (pooled) features of the
            encoder; :obj:`None` when :func:`read_regions` was asked not to compute them
            (``image_features=False`` with precomputed ROIs).
        features (Tensor): ``[B, K, D_r]`` ROI features, zero rows for padding.
        boxes (Tensor): ``[B, K, 4]`` xyxy boxes divided by the image's
            :math:`(W, H, W, H)` (values in :math:`[0, 1]`), zero rows for padding.
        mask (Tensor): ``[B, K]`` bool, ``True`` = real ROI (a box with positive area).
        index (Tensor, optional): int64 ``[B, K]``: position of each row in the source
            list of its image (``batch["boxes"][b]`` or the ``roi_*`` rows), ``-1`` for
            padding.
    """

    image_features: Optional[Tensor]
    features: Tensor
    boxes: Tensor
    mask: Tensor
    index: Optional[Tensor] = None

    @property
    def num_instances(self) -> Tensor:
        """int64 ``[B]``: real ROIs per image."""
        return self.mask.sum(1)

    @property
    def max_instances(self) -> int:
        """:math:`K`."""
        return int(self.features.shape[1])

    @property
    def feature_dim(self) -> int:
        """:math:`D_r`."""
        return int(self.features.shape[2])


def positive_area(boxes: Tensor) -> Tensor:
    r"""bool ``[...]``: :math:`x_2 > x_1` and :math:`y_2 > y_1` for xyxy boxes ``[..., 4]``
    (a box with no area is not a region)."""
    return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"read_regions: source must be one of {list(SOURCES)}, got {source!r}")


def _encoder_input(batch: Mapping[str, Any]) -> tuple:
    if "features" in batch:
        return "features", batch["features"]
    if "image" in batch:
        return "image", batch["image"]
    raise ValueError(f"read_regions: the batch has neither 'image' nor 'features' (keys: "
                     f"{sorted(batch)})")


def _check_finite(x: Tensor, key: str) -> None:
    # the same check as MultiLabelModel.encode: only with debug checks on (the engine
    # checks every batch on the host, before it reaches the device)
    if debug_checks() and not torch.isfinite(x).all():
        raise ValueError(f"non-finite values in the input batch ({key!r}); "
                         "check the dataset (NaN/inf features or a broken transform)")


def resolve_source(batch: Mapping[str, Any], source: str = "auto") -> str:
    """The concrete source (``"batch"``, ``"boxes"`` or ``"region_boxes"``)
    ``read_regions`` uses for ``batch``."""
    _check_source(source)
    key, _ = _encoder_input(batch)
    if source == "auto":
        if "roi_features" in batch:
            return "batch"
        if key == "image":
            if "boxes" not in batch:
                raise ValueError("read_regions: the image batch has neither 'roi_features' nor "
                                 "'boxes' (the dataset provides no box annotations); "
                                 + _WRAP_HINT)
            return "boxes"
        raise ValueError("read_regions: a feature batch carries no ROIs (no 'roi_features'); "
                         + _WRAP_HINT)
    if source == "batch" and "roi_features" not in batch:
        raise ValueError("read_regions(source='batch'): the batch has no 'roi_features'; "
                         + _WRAP_HINT)
    if source in ALIGN_SOURCES and key != "image":
        raise ValueError(f"read_regions(source={source!r}) needs image input (it pools ROIs "
                         "from the backbone's feature map); feature batches need "
                         "precomputed ROIs: " + _WRAP_HINT)
    if source == "boxes" and "boxes" not in batch:
        raise ValueError("read_regions(source='boxes'): the batch has no 'boxes' (the "
                         "dataset provides no box annotations); " + _WRAP_HINT)
    if source == "region_boxes":
        missing = [k for k in _ROI_KEYS if k not in batch]
        if missing:
            raise ValueError(f"read_regions(source='region_boxes'): the batch lacks {missing} "
                             "(the cached detector boxes); " + _WRAP_HINT)
    return source


def _compact(keep: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """``(order, mask)`` ``[B, k']``: per row the positions of the kept entries first (in
    their order), then the others; ``k' = min(k, K)`` columns."""
    K = keep.shape[1]
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :min(k, K)]
    return order, keep.gather(1, order)


def _from_batch(encoder: Optional[nn.Module], batch: Mapping[str, Any], max_instances: int,
                image_features: bool) -> RegionBatch:
    key, x = _encoder_input(batch)
    for k in ("roi_features",) + _ROI_KEYS:
        if k not in batch:
            raise ValueError(f"read_regions(source='batch'): the batch lacks {k!r}; "
                             + _WRAP_HINT)
    feats = batch["roi_features"]
    mask = batch["roi_mask"]
    boxes = batch["roi_boxes"]
    size = batch["roi_image_size"]
    g = None
    if image_features:
        if encoder is None:
            raise ValueError("read_regions: image_features=True needs an encoder")
        _check_finite(x, key)
        g = encoder(x)
    B = feats.shape[0] if feats.dim() == 3 else -1
    if feats.dim() != 3 or (g is not None and B != g.shape[0]) or B != len(x):
        raise ValueError(f"read_regions: roi_features must be [B={len(x)}, K, D_r], got "
                         f"{tuple(feats.shape)}")
    K = feats.shape[1]
    if tuple(mask.shape) != (B, K) or tuple(boxes.shape) != (B, K, 4) \
            or tuple(size.shape) != (B, 2):
        raise ValueError(f"read_regions: inconsistent ROI shapes: roi_features "
                         f"{tuple(feats.shape)}, roi_mask {tuple(mask.shape)}, roi_boxes "
                         f"{tuple(boxes.shape)}, roi_image_size {tuple(size.shape)}")
    dtype = g.dtype if g is not None else (feats.dtype if feats.is_floating_point()
                                           else torch.float32)
    feats = feats.to(dtype)
    if debug_checks() and not torch.isfinite(feats).all():
        raise ValueError("read_regions: non-finite ROI features in the batch ('roi_features'); "
                         "check the region backend / its cache")
    if debug_checks() and not torch.isfinite(boxes).all():
        raise ValueError("read_regions: non-finite ROI boxes in the batch ('roi_boxes')")
    hw = size.to(boxes.dtype).clamp_min(1)
    scale = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], 1)[:, None, :]
    nb = (boxes / scale).clamp(0.0, 1.0)
    # rows with no area inside the image are not regions; the kept rows come first in
    # their (score) order, then the top max_instances are taken
    keep = mask.bool() & positive_area(nb)
    order, mask = _compact(keep, int(max_instances))
    m = mask[..., None]
    rows = order[..., None]
    feats = feats.gather(1, rows.expand(-1, -1, feats.shape[2])) * m.to(dtype)
    nboxes = nb.gather(1, rows.expand(-1, -1, 4)).to(dtype) * m.to(dtype)
    index = torch.where(mask, order, torch.full_like(order, -1))
    return RegionBatch(g, feats, nboxes, mask, index)


def _roi_box_lists(batch: Mapping[str, Any], H: int, W: int) -> List[Tensor]:
    """The real cached detector boxes of each image (score order), in pixels of the
    ``H x W`` network input."""
    boxes, mask, size = batch["roi_boxes"], batch["roi_mask"].bool(), batch["roi_image_size"]
    if boxes.dim() != 3 or tuple(mask.shape) != tuple(boxes.shape[:2]) \
            or tuple(size.shape) != (boxes.shape[0], 2):
        raise ValueError(f"read_regions: inconsistent ROI shapes: roi_boxes "
                         f"{tuple(boxes.shape)}, roi_mask {tuple(mask.shape)}, "
                         f"roi_image_size {tuple(size.shape)}")
    hw = size.to(torch.float64).clamp_min(1)
    out = []
    for b in range(boxes.shape[0]):
        s = boxes.new_tensor([W / float(hw[b, 1]), H / float(hw[b, 0])] * 2)
        out.append(boxes[b][mask[b]] * s)
    return out


def _from_align(encoder: nn.Module, batch: Mapping[str, Any], box_list: Sequence[Tensor],
                max_instances: int, output_size: int, pool: str = "avg") -> RegionBatch:
    from torchvision.ops import roi_align

    x = batch["image"]
    _check_finite(x, "image")
    if not (hasattr(encoder, "feature_map") and hasattr(encoder, "pool")):
        raise ValueError(f"read_regions: encoder {type(encoder).__name__} has no "
                         "feature_map/pool (not an ImageEncoder)")
    fmap = encoder.feature_map(x)                       # [B, D, h, w], computed once
    g = encoder.pool(fmap)
    B, D, h, w = fmap.shape
    H, W = x.shape[-2:]
    if len(box_list) != B:
        raise ValueError(f"read_regions: {len(box_list)} box lists for {B} images")
    kept, counts, where = [], [], []
    for i, b in enumerate(box_list):
        b = torch.as_tensor(b, dtype=fmap.dtype, device=fmap.device).reshape(-1, 4)
        if debug_checks() and not torch.isfinite(b).all():
            raise ValueError(f"read_regions: non-finite boxes for image {i} of the batch")
        b = torch.stack([b[:, 0].clamp(0, W), b[:, 1].clamp(0, H),
                         b[:, 2].clamp(0, W), b[:, 3].clamp(0, H)], 1)
        pos = positive_area(b).nonzero().flatten()[:int(max_instances)]   # no degenerate ROI
        kept.append(b[pos])
        where.append(pos)
        counts.append(int(pos.numel()))
    K = max(1, max(counts, default=0))                  # pad to the batch's largest count
    feats = fmap.new_zeros(B, K, D)
    nboxes = fmap.new_zeros(B, K, 4)
    mask = torch.zeros(B, K, dtype=torch.bool, device=fmap.device)
    index = torch.full((B, K), -1, dtype=torch.long, device=fmap.device)
    n = sum(counts)
    if n:
        allb = torch.cat(kept, 0)
        idx = torch.cat([torch.full((c, 1), i, dtype=fmap.dtype, device=fmap.device)
                         for i, c in enumerate(counts)], 0)
        s = allb.new_tensor([w / W, h / H, w / W, h / H])
        rois = torch.cat([idx, allb * s], 1)
        pooled = roi_align(fmap, rois, output_size=int(output_size), spatial_scale=1.0,
                           sampling_ratio=2, aligned=True)
        pooled = pooled.amax((2, 3)) if pool == "max" else pooled.mean((2, 3))   # [n, D]
        if debug_checks() and not torch.isfinite(pooled).all():
            raise ValueError("read_regions: non-finite ROI features (RoIAlign on the "
                             "backbone's feature map)")
        rows = torch.cat([torch.arange(c, device=fmap.device) for c in counts])
        imgs = torch.cat([torch.full((c,), i, dtype=torch.long, device=fmap.device)
                          for i, c in enumerate(counts)])
        feats = feats.index_put((imgs, rows), pooled)
        nboxes = nboxes.index_put((imgs, rows), allb / allb.new_tensor([W, H, W, H]))
        mask[imgs, rows] = True
        index[imgs, rows] = torch.cat(where).to(fmap.device)
    return RegionBatch(g, feats, nboxes, mask, index)


def read_regions(encoder: Optional[nn.Module], batch: Mapping[str, Any], *,
                 source: str = "auto", max_instances: int = 40, output_size: int = 7,
                 image_features: bool = True, pool: str = "avg") -> RegionBatch:
    r"""Global features and padded ROIs of a batch (see the module docstring).

    Args:
        encoder (nn.Module or None): the model's encoder (an
            :class:`~pyg_mlic.backbones.ImageEncoder` for ``"boxes"`` and
            ``"region_boxes"``; any encoder for ``"batch"``, or :obj:`None` there with
            ``image_features=False``).
        batch (dict): a collated batch.
        source (str): ``"auto"``, ``"batch"``, ``"boxes"`` or ``"region_boxes"``.
            (default: :obj:`"auto"`)
        max_instances (int): :math:`K`, ROIs kept per image (IA-GCN's :math:`N = 40`):
            the first :math:`K` real rows with positive area (``"batch"`` and
            ``"region_boxes"``: already sorted by score by the region backend;
            ``"boxes"``: annotation order). (default: :obj:`40`)
        output_size (int): RoIAlign output :math:`r`. (default: :obj:`7`)
        image_features (bool): compute the global features :math:`\mathbf{x}`. With
            ``"batch"`` and :obj:`False` the encoder is not run
            (:attr:`RegionBatch.image_features` is :obj:`None`); the RoIAlign sources
            pool them from the map they compute anyway. (default: :obj:`True`)
        pool (str): how the RoIAlign sources pool the :math:`r \times r` output:
            ``"avg"`` (the formula above) or ``"max"``. (default: :obj:`"avg"`)

    Returns:
        :class:`RegionBatch`.

    Raises:
        ValueError: unknown source, a batch without the ROIs the source needs (the message
            says how to add them), non-finite inputs or ROI features.
    """
    if int(max_instances) < 1:
        raise ValueError(f"read_regions: max_instances must be >= 1, got {max_instances}")
    if pool not in ("avg", "max"):
        raise ValueError(f"read_regions: pool must be 'avg' or 'max', got {pool!r}")
    src = resolve_source(batch, source)
    if src == "batch":
        return _from_batch(encoder, batch, max_instances, image_features)
    if encoder is None:
        raise ValueError(f"read_regions(source={src!r}) needs the model's image encoder")
    H, W = batch["image"].shape[-2:]
    if src == "region_boxes":
        box_list = _roi_box_lists(batch, int(H), int(W))
    else:
        box_list = list(batch["boxes"])
        if len(box_list) != batch["image"].shape[0]:
            raise ValueError(f"read_regions: batch['boxes'] has {len(box_list)} entries for "
                             f"{batch['image'].shape[0]} images")
    return _from_align(encoder, batch, box_list, max_instances, output_size, pool)


def region_feature_dim(encoder: Optional[nn.Module], source: str = "auto",
                       roi_feature_dim: Optional[int] = None) -> int:
    r""":math:`D_r`, the size of the ROI features a model will receive.

    ``"boxes"`` and ``"region_boxes"`` pool the backbone's map: the backbone's channel
    count (``encoder.out_channels``). Otherwise ``roi_feature_dim`` (the region backend's
    dimension, e.g. a :class:`~pyg_mlic.detection.RegionDataset`'s ``roi_feature_dim``)
    when given, else (``"auto"`` with an image encoder) the backbone's channel count.

    Raises:
        ValueError: ``"batch"`` (or ``"auto"`` with a feature encoder) without
            ``roi_feature_dim``; a RoIAlign source without an image encoder.
    """
    _check_source(source)
    if source in ALIGN_SOURCES:
        if not hasattr(encoder, "feature_map"):
            raise ValueError(f"region_feature_dim: source={source!r} pools the backbone's "
                             f"feature map; a {type(encoder).__name__} has none")
        return int(encoder.out_channels)
    if roi_feature_dim is not None:
        d = int(roi_feature_dim)
        if d < 1:
            raise ValueError(f"region_feature_dim: roi_feature_dim must be >= 1, got "
                             f"{roi_feature_dim}")
        return d
    if source != "batch" and hasattr(encoder, "feature_map"):
        return int(encoder.out_channels)
    raise ValueError(f"region_feature_dim: source={source!r} with a "
                     f"{type(encoder).__name__} needs the ROI feature size of the region "
                     f"backend (roi_feature_dim / roi_in_features); " + _WRAP_HINT)
