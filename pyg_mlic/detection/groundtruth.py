r"""Ground-truth regions: the annotated boxes + RoIAlign on a backbone (oracle ablation).

Replaces the detector by the dataset's own boxes, so that a region-based model can be
evaluated with perfect localisation (an upper bound on what better proposals could
give). Features come from a classification backbone of :mod:`pyg_mlic.backbones`:

.. math::
    \mathbf{F} = f_{cnn}(\mathrm{resize}_{S \times S}(I)), \qquad
    \mathbf{f}_i = \mathrm{pool}\big(\mathrm{RoIAlign}(\mathbf{F}, s \cdot B_i)\big)
    \in \mathbb{R}^{D}

with :math:`s` the image-to-feature-map scale per axis and ``pool`` the average (or
maximum) over the :math:`r \times r` RoIAlign output (``aligned=True``: pixel centres
at half-integers).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyg_mlic.detection.base import (
    RegionExtractor,
    Regions,
    as_boxes,
    check_max_instances,
    image_size_of,
)
from pyg_mlic.detection.torchvision_backend import POOLS, state_dict_fingerprint

__all__ = ["GroundTruthRegionExtractor"]


class GroundTruthRegionExtractor(RegionExtractor):
    r"""Annotated boxes with RoIAlign features from a backbone feature map.

    Boxes, in annotation order, are kept (all scores are 1, so the top-:math:`K` are the
    first :math:`K` annotations); ``labels`` are the annotated classes when given.

    Args:
        backbone (str or nn.Module): a name for :func:`pyg_mlic.backbones.build_backbone`
            (``"resnet50"``, ``"resnet101"``, ``"efficientnet_lite0"``, ``"small_cnn"``,
            ``"timm:<name>"``) or a module mapping :math:`(B, 3, H, W) \to (B, D, h, w)`
            with ``out_channels``. (default: :obj:`"resnet50"`)
        weights: backbone weights (see :func:`~pyg_mlic.backbones.build_backbone`);
            ignored for a module. (default: :obj:`None`)
        image_size (int): the image is resized to :math:`S \times S` before the
            backbone (the papers' 448). (default: :obj:`448`)
        output_size (int): RoIAlign output :math:`r`. (default: :obj:`7`)
        pool (str): ``"avg"`` or ``"max"``. (default: :obj:`"avg"`)
        max_instances (int): :math:`K`. (default: :obj:`40`)
        seed (int): seed of a randomly initialised backbone. (default: :obj:`0`)
        mean, std (sequence, optional): normalisation (default: the backbone's
            ``default_cfg``, else ImageNet statistics).
    """

    backend = "groundtruth"
    needs_boxes = True

    def __init__(self, backbone: Union[str, nn.Module] = "resnet50",
                 weights: Union[None, str, os.PathLike, Mapping[str, Tensor]] = None, *,
                 image_size: int = 448, output_size: int = 7, pool: str = "avg",
                 max_instances: int = 40, seed: int = 0,
                 mean: Optional[Any] = None, std: Optional[Any] = None) -> None:
        check_max_instances(max_instances, "GroundTruthRegionExtractor")
        if pool not in POOLS:
            raise ValueError(f"GroundTruthRegionExtractor: pool must be one of {POOLS}, "
                             f"got {pool!r}")
        if int(image_size) < 16 or int(output_size) < 1:
            raise ValueError(f"GroundTruthRegionExtractor: need image_size >= 16 and "
                             f"output_size >= 1, got {image_size}, {output_size}")
        if isinstance(backbone, str):
            from pyg_mlic.backbones import build_backbone

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                module = build_backbone(backbone, weights=weights)
            name = backbone
        elif isinstance(backbone, nn.Module):
            module, name = backbone, type(backbone).__name__
        else:
            raise TypeError(f"GroundTruthRegionExtractor: backbone must be a name or an "
                            f"nn.Module, got {type(backbone).__name__}")
        # the exact weights in use, whatever their source (name, file, seed, module)
        wid = "sha256:" + state_dict_fingerprint(module.state_dict())
        dim = getattr(module, "out_channels", None)
        if not isinstance(dim, int):
            raise TypeError(f"GroundTruthRegionExtractor: backbone {name!r} has no integer "
                            f"'out_channels'")
        super().__init__(max_instances, dim)
        self.backbone = module.eval()
        self.backbone_name, self.weights_id = name, wid
        self.image_size, self.output_size, self.pool = int(image_size), int(output_size), pool
        cfg = getattr(module, "default_cfg", {}) or {}
        self.register_buffer("mean", torch.tensor(mean if mean is not None else
                                                  cfg.get("mean", (0.485, 0.456, 0.406)),
                                                  dtype=torch.float32).view(3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std if std is not None else
                                                 cfg.get("std", (0.229, 0.224, 0.225)),
                                                 dtype=torch.float32).view(3, 1, 1),
                             persistent=False)

    def train(self, mode: bool = True) -> "GroundTruthRegionExtractor":
        super().train(mode)
        self.backbone.eval()
        return self

    def config(self) -> Dict[str, Any]:
        return {"backend": self.backend, "backbone": self.backbone_name,
                "weights": self.weights_id, "image_size": self.image_size,
                "output_size": self.output_size, "pool": self.pool,
                "max_instances": self.max_instances, "feature_dim": self.feature_dim,
                "mean": [round(float(v), 6) for v in self.mean.flatten()],
                "std": [round(float(v), 6) for v in self.std.flatten()]}

    def _extract_one(self, image: Optional[Tensor], annotation: Mapping[str, Any]) -> Regions:
        from torchvision.ops import roi_align

        who = f"{type(self).__name__} image {annotation.get('key', '')}".strip()
        h, w = image_size_of(image, annotation, who)
        boxes = as_boxes(annotation["boxes"], who)[: self.max_instances]
        labels = annotation.get("labels")
        labels = (torch.as_tensor(labels).long().reshape(-1)[: self.max_instances]
                  if labels is not None else torch.full((len(boxes),), -1, dtype=torch.long))
        if len(labels) != len(boxes):
            raise ValueError(f"{who}: {len(boxes)} boxes but {len(labels)} labels")
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        if len(boxes) == 0:
            return Regions.empty(self.feature_dim, (h, w))
        dev = self.mean.device
        s = self.image_size
        x = F.interpolate(image.to(dev)[None], size=(s, s), mode="bilinear",
                          align_corners=False, antialias=True)
        fmap = self.backbone((x - self.mean) / self.std)                  # [1, D, h', w']
        fh, fw = fmap.shape[-2:]
        scale = boxes.new_tensor([fw / w, fh / h, fw / w, fh / h])
        rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes * scale], 1).to(fmap.dtype)
        pooled = roi_align(fmap, rois.to(dev), output_size=self.output_size,
                           spatial_scale=1.0, sampling_ratio=2, aligned=True)
        feats = pooled.mean((2, 3)) if self.pool == "avg" else pooled.amax((2, 3))
        return Regions(boxes, feats.cpu(), torch.ones(len(boxes)), labels, (h, w))
