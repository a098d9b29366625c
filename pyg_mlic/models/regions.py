r"""Per-image regions (ROIs) for the region-based models (IA-GCN, GM-MLIC).

:func:`read_regions` turns a collated batch into a :class:`RegionBatch`: the global
image features :math:`\mathbf{x}` of the model's encoder plus a padded set of
:math:`K` ROI features :math:`\mathbf{X} \in \mathbb{R}^{K \times D_r}` per image
(IA-GCN Sec. 3.4, GM-MLIC Eq. 1), their boxes normalised to :math:`[0, 1]` and a mask.

Two sources of ROIs:

``"batch"``
    Precomputed regions of a :class:`~pyg_mlic.detection.RegionDataset` (keys
    ``roi_features`` ``[B, K, D_r]``, ``roi_boxes`` ``[B, K, 4]`` in pixels of the stored
    image, ``roi_mask`` ``[B, K]``, ``roi_image_size`` ``[B, 2]`` = ``(H, W)``). Works for
    image and feature inputs; the encoder only produces the global features.
``"boxes"``
    Image input only. The backbone runs **once**:
    :math:`\mathbf{F} = f_{cnn}(I)`, :math:`\mathbf{x} = f_{pool}(\mathbf{F})` and, for
    each box :math:`B_i` of ``batch["boxes"]`` (xyxy pixels of the transformed image, as
    :func:`pyg_mlic.data.base.collate` keeps them),

    .. math::
        \mathbf{X}_i = \frac{1}{r^2} \sum_{u,v=1}^{r}
        \mathrm{RoIAlign}_{r \times r}(\mathbf{F}, s \cdot B_i)_{:,u,v}
        \in \mathbb{R}^{D}

    with :math:`s = (w/W, h/H)` the feature-map-to-image scale per axis (equal to
    torchvision's ``spatial_scale`` = map width / image width when both axes have the same
    stride), ``aligned=True``, ``sampling_ratio=2``. :math:`D_r` is the backbone's channel
    count. Gradients reach the backbone through both :math:`\mathbf{x}` and
    :math:`\mathbf{X}`. The first ``max_instances`` boxes of each image are kept (the
    datasets list them in annotation order; no score exists to rank them), and the batch
    is padded to :math:`K` = the largest number of kept boxes of its images (at least 1),
    not to ``max_instances``: padding costs compute in every consumer.

``"auto"`` picks ``"batch"`` when the batch has ``roi_features``, else ``"boxes"`` for
image input; feature input without ``roi_features`` raises.

Padding rows (and images without a region: ``mask`` all ``False``) are zeros.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

import torch
from torch import Tensor, nn

from pyg_mlic.models.base import debug_checks

__all__ = ["RegionBatch", "read_regions", "region_feature_dim", "SOURCES"]

#: accepted values of ``source``
SOURCES = ("auto", "batch", "boxes")

_WRAP_HINT = ("wrap the dataset with pyg_mlic.detection.RegionDataset (CLI: pass "
              "`--regions BACKEND`, e.g. `--regions torchvision`)")


@dataclass
class RegionBatch:
    r"""Global features and padded ROIs of a batch of :math:`B` images.

    Attributes:
        image_features (Tensor): ``[B, D]`` global (pooled) features of the encoder.
        features (Tensor): ``[B, K, D_r]`` ROI features, zero rows for padding.
        boxes (Tensor): ``[B, K, 4]`` xyxy boxes divided by the image's
            :math:`(W, H, W, H)` (values in :math:`[0, 1]`), zero rows for padding.
        mask (Tensor): ``[B, K]`` bool, ``True`` = real ROI.
    """

    image_features: Tensor
    features: Tensor
    boxes: Tensor
    mask: Tensor

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
    """The concrete source (``"batch"`` or ``"boxes"``) ``read_regions`` uses for ``batch``."""
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
    if source == "boxes":
        if key != "image":
            raise ValueError("read_regions(source='boxes') needs image input (it pools ROIs "
                             "from the backbone's feature map); feature batches need "
                             "precomputed ROIs: " + _WRAP_HINT)
        if "boxes" not in batch:
            raise ValueError("read_regions(source='boxes'): the batch has no 'boxes' (the "
                             "dataset provides no box annotations); " + _WRAP_HINT)
    return source


def _from_batch(encoder: nn.Module, batch: Mapping[str, Any], max_instances: int) -> RegionBatch:
    key, x = _encoder_input(batch)
    _check_finite(x, key)
    g = encoder(x)
    for k in ("roi_features", "roi_mask", "roi_boxes", "roi_image_size"):
        if k not in batch:
            raise ValueError(f"read_regions(source='batch'): the batch lacks {k!r}; "
                             + _WRAP_HINT)
    feats = batch["roi_features"]
    mask = batch["roi_mask"]
    boxes = batch["roi_boxes"]
    size = batch["roi_image_size"]
    B = g.shape[0]
    if feats.dim() != 3 or feats.shape[0] != B:
        raise ValueError(f"read_regions: roi_features must be [B={B}, K, D_r], got "
                         f"{tuple(feats.shape)}")
    K = feats.shape[1]
    if tuple(mask.shape) != (B, K) or tuple(boxes.shape) != (B, K, 4) \
            or tuple(size.shape) != (B, 2):
        raise ValueError(f"read_regions: inconsistent ROI shapes: roi_features "
                         f"{tuple(feats.shape)}, roi_mask {tuple(mask.shape)}, roi_boxes "
                         f"{tuple(boxes.shape)}, roi_image_size {tuple(size.shape)}")
    mask = mask.bool()
    feats = feats.to(g.dtype)
    if debug_checks() and not torch.isfinite(feats).all():
        raise ValueError("read_regions: non-finite ROI features in the batch ('roi_features'); "
                         "check the region backend / its cache")
    if debug_checks() and not torch.isfinite(boxes).all():
        raise ValueError("read_regions: non-finite ROI boxes in the batch ('roi_boxes')")
    hw = size.to(boxes.dtype).clamp_min(1)
    scale = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], 1)[:, None, :]
    m = mask[..., None]
    nboxes = (boxes / scale).clamp(0.0, 1.0).to(g.dtype) * m
    feats = feats * m                                   # padding rows are zero
    k = min(K, int(max_instances))                      # rows are sorted by score
    return RegionBatch(g, feats[:, :k], nboxes[:, :k], mask[:, :k])


def _from_boxes(encoder: nn.Module, batch: Mapping[str, Any], max_instances: int,
                output_size: int) -> RegionBatch:
    from torchvision.ops import roi_align

    x = batch["image"]
    _check_finite(x, "image")
    if not (hasattr(encoder, "feature_map") and hasattr(encoder, "pool")):
        raise ValueError(f"read_regions(source='boxes'): encoder {type(encoder).__name__} has "
                         "no feature_map/pool (not an ImageEncoder)")
    fmap = encoder.feature_map(x)                       # [B, D, h, w], computed once
    g = encoder.pool(fmap)
    B, D, h, w = fmap.shape
    H, W = x.shape[-2:]
    box_list: List[Tensor] = list(batch["boxes"])
    if len(box_list) != B:
        raise ValueError(f"read_regions: batch['boxes'] has {len(box_list)} entries for "
                         f"{B} images")
    kept, counts = [], []
    for i, b in enumerate(box_list):
        b = torch.as_tensor(b, dtype=fmap.dtype, device=fmap.device).reshape(-1, 4)
        b = b[:int(max_instances)]
        if debug_checks() and not torch.isfinite(b).all():
            raise ValueError(f"read_regions: non-finite boxes for image {i} of the batch")
        b = torch.stack([b[:, 0].clamp(0, W), b[:, 1].clamp(0, H),
                         b[:, 2].clamp(0, W), b[:, 3].clamp(0, H)], 1)
        kept.append(b)
        counts.append(b.shape[0])
    K = max(1, max(counts, default=0))                  # pad to the batch's largest count
    feats = fmap.new_zeros(B, K, D)
    nboxes = fmap.new_zeros(B, K, 4)
    mask = torch.zeros(B, K, dtype=torch.bool, device=fmap.device)
    n = sum(counts)
    if n:
        allb = torch.cat(kept, 0)
        idx = torch.cat([torch.full((c, 1), i, dtype=fmap.dtype, device=fmap.device)
                         for i, c in enumerate(counts)], 0)
        s = allb.new_tensor([w / W, h / H, w / W, h / H])
        rois = torch.cat([idx, allb * s], 1)
        pooled = roi_align(fmap, rois, output_size=int(output_size), spatial_scale=1.0,
                           sampling_ratio=2, aligned=True).mean((2, 3))     # [n, D]
        if debug_checks() and not torch.isfinite(pooled).all():
            raise ValueError("read_regions: non-finite ROI features (RoIAlign on the "
                             "backbone's feature map)")
        rows = torch.cat([torch.arange(c, device=fmap.device) for c in counts])
        imgs = torch.cat([torch.full((c,), i, dtype=torch.long, device=fmap.device)
                          for i, c in enumerate(counts)])
        feats = feats.index_put((imgs, rows), pooled)
        nboxes = nboxes.index_put((imgs, rows), allb / allb.new_tensor([W, H, W, H]))
        mask[imgs, rows] = True
    return RegionBatch(g, feats, nboxes, mask)


def read_regions(encoder: nn.Module, batch: Mapping[str, Any], *, source: str = "auto",
                 max_instances: int = 40, output_size: int = 7) -> RegionBatch:
    r"""Global features and padded ROIs of a batch (see the module docstring).

    Args:
        encoder (nn.Module): the model's encoder (an
            :class:`~pyg_mlic.backbones.ImageEncoder` for ``"boxes"``; any encoder for
            ``"batch"``).
        batch (dict): a collated batch.
        source (str): ``"auto"``, ``"batch"`` or ``"boxes"``. (default: :obj:`"auto"`)
        max_instances (int): :math:`K`, ROIs kept per image (IA-GCN's :math:`N = 40`).
            ``"batch"``: the first :math:`\min(K, K_{batch})` rows (already sorted by score
            by the region backend); ``"boxes"``: the first :math:`K` boxes of each image,
            padded to the largest count in the batch. (default: :obj:`40`)
        output_size (int): RoIAlign output :math:`r` for ``"boxes"``. (default: :obj:`7`)

    Returns:
        :class:`RegionBatch`.

    Raises:
        ValueError: unknown source, a batch without the ROIs the source needs (the message
            says how to add them), non-finite inputs or ROI features.
    """
    if int(max_instances) < 1:
        raise ValueError(f"read_regions: max_instances must be >= 1, got {max_instances}")
    src = resolve_source(batch, source)
    if src == "batch":
        return _from_batch(encoder, batch, max_instances)
    return _from_boxes(encoder, batch, max_instances, output_size)


def region_feature_dim(encoder: nn.Module, source: str = "auto",
                       roi_feature_dim: Optional[int] = None) -> int:
    r""":math:`D_r`, the size of the ROI features a model will receive.

    ``roi_feature_dim`` (the region backend's dimension, e.g. a
    :class:`~pyg_mlic.detection.RegionDataset`'s ``roi_feature_dim``) wins when given;
    otherwise ``"boxes"`` and ``"auto"`` with an image encoder give the backbone's
    channel count (``encoder.out_channels``).

    Raises:
        ValueError: ``"batch"`` (or ``"auto"`` with a feature encoder) without
            ``roi_feature_dim``.
    """
    _check_source(source)
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
