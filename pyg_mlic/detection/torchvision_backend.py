r"""Faster R-CNN R50-FPN regions from torchvision.

The detector of GM-MLIC (Wu et al., IJCAI 2021, Sec. 4.2: "Faster R-CNN
(resnet50-fpn) ... we only select the instances with the top-m confidence score") and
the RPN of IA-GCN (Sec. 3.4: "We extract N ROIs :math:`X \in \mathbb{R}^{N \times D}`
from each image by RPN").

Two sources of boxes (``mode``):

- ``"rpn"`` — the region proposal network's proposals after its NMS, top-:math:`K` by
  objectness :math:`\sigma(o)`; ``labels`` are ``-1``.
- ``"detections"`` — the final detections of the box head (class-wise NMS), top-:math:`K`
  by class probability; ``labels`` are the detector's class ids (torchvision's COCO
  models use COCO category ids 1 ... 90).

Two kinds of features (``feature``):

- ``"box_head"`` — the 1024-d output of the box head (``TwoMLPHead``:
  two FC layers on the :math:`7 \times 7` RoIAlign of the FPN level chosen for the box),
  :math:`\mathbf{f}_i = \mathrm{MLP}(\mathrm{RoIAlign}(\mathbf{P}_{l(i)}, B_i))`;
- ``"roialign"`` — the same multi-scale RoIAlign, average- (or max-) pooled to the
  FPN width: :math:`\mathbf{f}_i = \frac{1}{49}\sum_{u,v}
  \mathrm{RoIAlign}(\mathbf{P}_{l(i)}, B_i)_{:,u,v} \in \mathbb{R}^{256}`.

Weights are never downloaded: ``weights`` is :obj:`None` (random initialisation from
``seed``: real proposals of a real forward pass, with untrained scores) or a local
state dict file of :func:`torchvision.models.detection.fasterrcnn_resnet50_fpn` (read
with ``torch.load(weights_only=True)`` or safetensors).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import Tensor

from pyg_mlic.detection.base import (
    RegionExtractor,
    check_max_instances,
    Regions,
    image_size_of,
)
from pyg_mlic.errors import CheckpointError

__all__ = ["TorchvisionRegionExtractor", "build_fasterrcnn_resnet50_fpn", "state_dict_fingerprint",
           "weights_id", "load_weights_arg"]

WeightsArg = Union[None, str, os.PathLike, Mapping[str, Tensor]]

MODES = ("rpn", "detections")
FEATURES = ("box_head", "roialign")
POOLS = ("avg", "max")


def state_dict_fingerprint(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over the names, shapes and bytes of a state dict."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def weights_id(state: Optional[Mapping[str, Tensor]], seed: int) -> str:
    """Identity of detector weights for cache keys: the content hash of the state dict
    (the same whether it came from a file or from memory), or the random-init seed."""
    if state is None:
        return f"random(seed={int(seed)})"
    return "sha256:" + state_dict_fingerprint(state)


def load_weights_arg(weights: WeightsArg) -> Optional[Dict[str, Tensor]]:
    """:obj:`None`, or the state dict given or read from a local file (no pickle)."""
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        return dict(weights)
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be None, a file path or a state dict, got "
                        f"{type(weights).__name__}")
    from pyg_mlic.backbones import load_state_dict_file

    return load_state_dict_file(Path(weights))


def build_fasterrcnn_resnet50_fpn(weights: WeightsArg = None, num_classes: Optional[int] = None,
                                  seed: int = 0, **kwargs: Any) -> torch.nn.Module:
    """torchvision's Faster R-CNN R50-FPN (v1), from a local state dict or random.

    The architecture is that of :func:`torchvision.models.detection.fasterrcnn_resnet50_fpn`
    with frozen batch norm (as torchvision builds it whenever weights are used; in
    evaluation mode it computes the same function as ``BatchNorm2d``), so a state dict
    saved from ``fasterrcnn_resnet50_fpn`` loads as is.

    Args:
        weights: :obj:`None` (random init), a local ``.pth``/``.safetensors`` file, or a
            state dict.
        num_classes (int, optional): classes including background; inferred from the
            weights (``roi_heads.box_predictor.cls_score.weight``), else 91 (COCO).
        seed (int): seed of the random initialisation (the global RNG is left untouched).
        **kwargs: passed to :class:`torchvision.models.detection.FasterRCNN`
            (``min_size``, ``max_size``, ``rpn_*``, ``box_*``).

    Raises:
        FileNotFoundError: missing weights file.
        CheckpointError: the weights do not fit the architecture.
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    state = load_weights_arg(weights)
    if state is not None:
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        key = "roi_heads.box_predictor.cls_score.weight"
        if key not in state:
            src = "(state dict)" if isinstance(weights, Mapping) else str(weights)
            raise CheckpointError(f"Faster R-CNN weights {src}: no {key!r}; expected a state "
                                  f"dict of torchvision.models.detection."
                                  f"fasterrcnn_resnet50_fpn")
        inferred = int(state[key].shape[0])
        if num_classes is not None and int(num_classes) != inferred:
            raise CheckpointError(f"Faster R-CNN weights have {inferred} classes, "
                                  f"num_classes={num_classes} was given")
        num_classes = inferred
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                       norm_layer=FrozenBatchNorm2d, trainable_layers=0)
        model = FasterRCNN(backbone, num_classes=91 if num_classes is None else int(num_classes),
                           **kwargs)
    if state is not None:
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"Faster R-CNN weights do not fit fasterrcnn_resnet50_fpn: "
                                  f"{str(e)[:500]}") from None
        if missing or unexpected:
            raise CheckpointError(f"Faster R-CNN weights do not fit fasterrcnn_resnet50_fpn: "
                                  f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    return model.eval()


class TorchvisionRegionExtractor(RegionExtractor):
    r"""Regions from torchvision's Faster R-CNN R50-FPN (RPN proposals or detections).

    Per image :math:`I` (resized by the detector so that its shorter side is
    ``min_size`` and its longer side at most ``max_size``):

    .. math::
        \{B_i, s_i\}_{i=1}^{K} = \operatorname{top-}K_{s}\big(\mathrm{NMS}(
        \mathrm{RPN}(\mathrm{FPN}(I)))\big), \qquad
        \mathbf{f}_i = h\big(\mathrm{RoIAlign}(\mathbf{P}_{l(B_i)}, B_i)\big)

    with :math:`h` the box head (``feature="box_head"``, :math:`D = 1024`) or spatial
    pooling (``feature="roialign"``, :math:`D = 256`); boxes are mapped back to the
    input image's pixels.

    Args:
        weights: :obj:`None` (random init from ``seed``), a local state dict file of
            ``fasterrcnn_resnet50_fpn`` or a state dict. (default: :obj:`None`)
        mode (str): ``"rpn"`` or ``"detections"``. (default: :obj:`"rpn"`)
        feature (str): ``"box_head"`` or ``"roialign"``. (default: :obj:`"box_head"`)
        max_instances (int): :math:`K` regions kept per image (IA-GCN: 40).
            (default: :obj:`40`)
        min_size (int): shorter side after the detector's resize. (default: :obj:`800`)
        max_size (int): cap of the longer side. (default: :obj:`1333`)
        num_classes (int, optional): detector classes incl. background (see
            :func:`build_fasterrcnn_resnet50_fpn`).
        box_score_thresh (float): minimum class probability of a detection (``mode=
            "detections"``). (default: :obj:`0.05`)
        rpn_score_thresh (float): minimum objectness probability of a proposal.
            (default: :obj:`0.0`)
        rpn_nms_thresh (float): IoU threshold of the RPN's NMS. (default: :obj:`0.7`)
        box_nms_thresh (float): IoU threshold of the class-wise NMS. (default: :obj:`0.5`)
        rpn_pre_nms_top_n (int): proposals per FPN level before NMS. (default: :obj:`1000`)
        rpn_post_nms_top_n (int): proposals after NMS that the box head scores in
            ``"detections"`` mode (``"rpn"`` mode keeps ``max_instances``).
            (default: :obj:`1000`)
        pool (str): spatial pooling of ``feature="roialign"``: ``"avg"`` or ``"max"``.
        seed (int): seed of the random initialisation. (default: :obj:`0`)

    Shapes:
        - **input:** list of :math:`B` images :math:`(3, H_b, W_b)`
        - **output:** list of :math:`B` :class:`Regions` with :math:`M_b \le K` boxes
          :math:`(M_b, 4)` and features :math:`(M_b, D)`
    """

    backend = "torchvision"

    def __init__(self, weights: WeightsArg = None, *, mode: str = "rpn",
                 feature: str = "box_head", max_instances: int = 40, min_size: int = 800,
                 max_size: int = 1333, num_classes: Optional[int] = None,
                 box_score_thresh: float = 0.05, rpn_score_thresh: float = 0.0,
                 rpn_nms_thresh: float = 0.7, box_nms_thresh: float = 0.5,
                 rpn_pre_nms_top_n: int = 1000, rpn_post_nms_top_n: int = 1000,
                 pool: str = "avg", seed: int = 0) -> None:
        name = type(self).__name__
        check_max_instances(max_instances, name)
        if mode not in MODES:
            raise ValueError(f"{name}: mode must be one of {MODES}, got {mode!r}")
        if feature not in FEATURES:
            raise ValueError(f"{name}: feature must be one of {FEATURES}, got {feature!r}")
        if pool not in POOLS:
            raise ValueError(f"{name}: pool must be one of {POOLS}, got {pool!r}")
        if int(min_size) < 32 or int(max_size) < int(min_size):
            raise ValueError(f"{name}: need 32 <= min_size <= max_size, got min_size={min_size}, "
                             f"max_size={max_size}")
        post = int(max_instances) if mode == "rpn" else int(rpn_post_nms_top_n)
        state = load_weights_arg(weights)
        model = build_fasterrcnn_resnet50_fpn(
            state, num_classes=num_classes, seed=seed, min_size=int(min_size),
            max_size=int(max_size), rpn_pre_nms_top_n_test=int(rpn_pre_nms_top_n),
            rpn_post_nms_top_n_test=max(1, post), rpn_nms_thresh=float(rpn_nms_thresh),
            rpn_score_thresh=float(rpn_score_thresh), box_score_thresh=float(box_score_thresh),
            box_nms_thresh=float(box_nms_thresh), box_detections_per_img=int(max_instances))
        dim = (model.roi_heads.box_head.fc7.out_features if feature == "box_head"
               else model.backbone.out_channels)
        super().__init__(max_instances, dim)
        self.detector = model
        self.mode, self.feature, self.pool = mode, feature, pool
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.num_classes = int(model.roi_heads.box_predictor.cls_score.out_features)
        self._thresholds = {"box_score_thresh": float(box_score_thresh),
                            "rpn_score_thresh": float(rpn_score_thresh),
                            "rpn_nms_thresh": float(rpn_nms_thresh),
                            "box_nms_thresh": float(box_nms_thresh),
                            "rpn_pre_nms_top_n": int(rpn_pre_nms_top_n),
                            "rpn_post_nms_top_n": post}
        self.weights_id = weights_id(state, seed)
        self.weights_source = None if weights is None or isinstance(weights, Mapping) \
            else str(weights)

    def train(self, mode: bool = True) -> "TorchvisionRegionExtractor":
        # the detector is an inference-only component: keep it in eval mode
        super().train(mode)
        self.detector.eval()
        return self

    def config(self) -> Dict[str, Any]:
        import torchvision

        return {"backend": self.backend, "arch": "fasterrcnn_resnet50_fpn",
                "weights": self.weights_id, "mode": self.mode, "feature": self.feature,
                "pool": self.pool if self.feature == "roialign" else None,
                "min_size": self.min_size, "max_size": self.max_size,
                "max_instances": self.max_instances, "feature_dim": self.feature_dim,
                "num_classes": self.num_classes, **self._thresholds,
                "torchvision": ".".join(torchvision.__version__.split("+")[0].split(".")[:2])}

    # -- pieces ------------------------------------------------------------------------------------
    def _proposals(self, images, features):
        """RPN proposals with their objectness probabilities (torchvision's
        ``RegionProposalNetwork.forward`` in eval mode, keeping the scores it drops)."""
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        rpn = self.detector.rpn
        feats = list(features.values())
        objectness, deltas = rpn.head(feats)
        anchors = rpn.anchor_generator(images, feats)
        per_level = [int(o[0].numel()) for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, scores = rpn.filter_proposals(proposals, objectness, images.image_sizes, per_level)
        return boxes[0], scores[0]

    def _roi_features(self, features, boxes: Tensor, image_size) -> Tensor:
        heads = self.detector.roi_heads
        pooled = heads.box_roi_pool(features, [boxes], [image_size])     # [M, 256, 7, 7]
        if self.feature == "box_head":
            return heads.box_head(pooled)                                 # [M, 1024]
        return pooled.mean((2, 3)) if self.pool == "avg" else pooled.amax((2, 3))

    def _extract_one(self, image: Optional[Tensor], annotation: Mapping[str, Any]) -> Regions:
        from torchvision.models.detection.transform import resize_boxes

        h, w = image_size_of(image, annotation, type(self).__name__)
        dev = next(self.detector.parameters()).device
        images, _ = self.detector.transform([image.to(dev)])
        features = self.detector.backbone(images.tensors)
        boxes, scores = self._proposals(images, features)
        labels = torch.full((boxes.shape[0],), -1, dtype=torch.long, device=dev)
        if self.mode == "detections":
            det, _ = self.detector.roi_heads(features, [boxes], images.image_sizes)
            boxes, scores, labels = det[0]["boxes"], det[0]["scores"], det[0]["labels"]
        order = torch.sort(scores, descending=True, stable=True).indices[: self.max_instances]
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        feats = self._roi_features(features, boxes, images.image_sizes[0])
        boxes = resize_boxes(boxes, list(images.image_sizes[0]), [h, w])
        return Regions(boxes.cpu(), feats.cpu(), scores.cpu(), labels.cpu(), (h, w)).clip_()
