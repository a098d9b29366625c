r"""Faster R-CNN R50-FPN regions through detectron2 (optional backend).

The same two box sources and two feature kinds as
:class:`~pyg_mlic.detection.TorchvisionRegionExtractor`, computed by detectron2's
``GeneralizedRCNN`` built with :func:`detectron2.modeling.build_model` from a config:

- ``mode="rpn"``: ``model.proposal_generator`` proposals (after its NMS), top-:math:`K`
  by :math:`\sigma(\text{objectness logit})`; ``labels`` ``-1``;
- ``mode="detections"``: ``model.roi_heads`` detections (class-wise NMS), top-:math:`K` by
  score; ``labels`` are detectron2's contiguous class ids (``0 ... C-1``);
- ``feature="box_head"``: ``roi_heads.box_head`` (``FastRCNNConvFCHead``, two FC
  layers, :math:`D = 1024`) on ``roi_heads.box_pooler`` (multi-level RoIAlign,
  :math:`7 \times 7`); ``feature="roialign"``: that pooled map averaged (or maxed)
  over space, :math:`D = 256`.

Images are resized as detectron2's ``DefaultPredictor`` does
(``ResizeShortestEdge(min_size, max_size)``, PIL bilinear) and fed as BGR 0-255
(``cfg.INPUT.FORMAT``); boxes are mapped back to the input image.

**Installing.** detectron2 is not on the package index. ``pb1-detectron2`` (0.6) carries
its Python sources without the C++/CUDA ops (no ``csrc`` folder, so its ``setup.py``
must be told to build no extension), and a few of its sources predate Pillow 10. The
Makefile's optional step installs it; at import time this module

- registers a placeholder ``detectron2._C`` when the compiled extension is absent
  (only deformable convolutions and rotated boxes need it; Faster R-CNN R50-FPN uses
  torchvision's ``roi_align``/``nms``); touching one of its ops raises an
  ``AttributeError`` that says so;
- aliases ``PIL.Image.LINEAR`` to ``PIL.Image.BILINEAR`` when Pillow no longer has it
  (detectron2 0.6 uses the old name as a default argument at import time).

**Weights** are never downloaded and never unpickled: pass a local state dict file
(``torch.load(weights_only=True)`` or safetensors; detectron2 training checkpoints
``{"model": state_dict, ...}`` are unwrapped). The model zoo's ``.pkl`` files are
pickles: convert them once in a trusted environment
(``torch.save(model.state_dict(), "r50fpn.pth")`` after loading them with
``DetectionCheckpointer``).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

from pyg_mlic.detection.base import (
    RegionExtractor,
    Regions,
    check_max_instances,
    image_size_of,
)
from pyg_mlic.detection.torchvision_backend import FEATURES, MODES, POOLS, weights_id
from pyg_mlic.errors import CheckpointError

__all__ = ["Detectron2RegionExtractor", "detectron2_available", "import_detectron2",
           "detectron2_unavailable_reason", "faster_rcnn_r50_fpn_cfg"]

WeightsArg = Union[None, str, os.PathLike, Mapping[str, Tensor]]

_IMPORT_ERROR: Optional[str] = None


class _MissingCOps(types.ModuleType):
    """Stands in for detectron2's compiled ``_C`` extension when it was not built."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"detectron2's compiled op {name!r} is not available: this detectron2 was "
            f"installed without its C++ extension (pb1-detectron2 ships none). Faster R-CNN "
            f"R50-FPN does not need it; deformable convolutions and rotated boxes do.")


def import_detectron2() -> types.ModuleType:
    """Import detectron2 (with the two compatibility fixes of the module docstring).

    Raises:
        ImportError: detectron2 is not installed, or fails to import; the message says
            how to install it.
    """
    global _IMPORT_ERROR
    if importlib.util.find_spec("detectron2") is None:
        _IMPORT_ERROR = "detectron2 is not installed"
        raise ImportError("detectron2 is not installed; it is optional. Install "
                          "pb1-detectron2 with the optional step of the Makefile "
                          "(`make detectron2`), or use backend='torchvision'")
    try:
        import PIL.Image

        if not hasattr(PIL.Image, "LINEAR"):
            PIL.Image.LINEAR = PIL.Image.BILINEAR  # removed in Pillow 10; used by d2 0.6
        d2 = importlib.import_module("detectron2")
        if "detectron2._C" not in sys.modules and \
                importlib.util.find_spec("detectron2._C") is None:
            stub = _MissingCOps("detectron2._C")
            sys.modules["detectron2._C"] = stub
            d2._C = stub
        importlib.import_module("detectron2.config")
        importlib.import_module("detectron2.modeling")
        importlib.import_module("detectron2.data.transforms")
    except Exception as e:  # noqa: BLE001 - any import failure means "unavailable"
        _IMPORT_ERROR = f"detectron2 failed to import ({type(e).__name__}: {e})"
        raise ImportError(f"{_IMPORT_ERROR}; use backend='torchvision'") from e
    _IMPORT_ERROR = None
    return d2


def detectron2_available() -> bool:
    """``True`` when detectron2 imports and can build models here."""
    try:
        import_detectron2()
    except ImportError:
        return False
    return True


def detectron2_unavailable_reason() -> Optional[str]:
    """Why :func:`detectron2_available` returned ``False`` (``None`` if it is available)."""
    return None if detectron2_available() else _IMPORT_ERROR


def faster_rcnn_r50_fpn_cfg(config_file: Optional[Union[str, os.PathLike]] = None, *,
                            num_classes: int = 80, min_size: int = 800, max_size: int = 1333,
                            max_instances: int = 100, mode: str = "rpn",
                            score_thresh: float = 0.05, rpn_nms_thresh: float = 0.7,
                            box_nms_thresh: float = 0.5, rpn_pre_nms_top_n: int = 1000,
                            rpn_post_nms_top_n: int = 1000, device: str = "cpu"):
    """A detectron2 ``CfgNode`` for Faster R-CNN R50-FPN inference.

    Without ``config_file`` the settings are those of detectron2's
    ``COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml`` (``Base-RCNN-FPN.yaml``: ResNet-50
    ``res2``-``res5`` → FPN ``p2``-``p6``, anchors 32-512 with ratios 0.5/1/2,
    ``StandardROIHeads`` with a two-FC box head on :math:`7 \\times 7` RoIAlign,
    ``MASK_ON`` off), set in code because pb1-detectron2 does not install the model-zoo
    YAML files. A ``config_file`` is merged with ``allow_unsafe=False`` (plain YAML).
    The keyword arguments are applied last.
    """
    import_detectron2()
    from detectron2.config import get_cfg

    cfg = get_cfg()
    m = cfg.MODEL
    m.META_ARCHITECTURE = "GeneralizedRCNN"
    m.BACKBONE.NAME = "build_resnet_fpn_backbone"
    m.RESNETS.DEPTH = 50
    m.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    m.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    m.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    m.RPN.PRE_NMS_TOPK_TRAIN, m.RPN.POST_NMS_TOPK_TRAIN = 2000, 1000
    m.ROI_HEADS.NAME = "StandardROIHeads"
    m.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    m.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    m.ROI_BOX_HEAD.NUM_FC = 2
    m.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    m.MASK_ON = False
    m.WEIGHTS = ""
    if config_file is not None:
        cfg.merge_from_file(str(config_file), allow_unsafe=False)
    m.DEVICE = device
    m.ROI_HEADS.NUM_CLASSES = int(num_classes)
    m.RPN.PRE_NMS_TOPK_TEST = int(rpn_pre_nms_top_n)
    m.RPN.POST_NMS_TOPK_TEST = int(max_instances if mode == "rpn" else rpn_post_nms_top_n)
    m.RPN.NMS_THRESH = float(rpn_nms_thresh)
    m.ROI_HEADS.SCORE_THRESH_TEST = float(score_thresh)
    m.ROI_HEADS.NMS_THRESH_TEST = float(box_nms_thresh)
    cfg.TEST.DETECTIONS_PER_IMAGE = int(max_instances)
    cfg.INPUT.MIN_SIZE_TEST = int(min_size)
    cfg.INPUT.MAX_SIZE_TEST = int(max_size)
    return cfg


class Detectron2RegionExtractor(RegionExtractor):
    r"""Regions from detectron2's Faster R-CNN R50-FPN (RPN proposals or detections).

    .. math::
        \{B_i, s_i\}_{i=1}^{K} = \operatorname{top-}K_{s}\big(\mathrm{NMS}(
        \mathrm{RPN}(\mathrm{FPN}(I)))\big), \qquad
        \mathbf{f}_i = h\big(\mathrm{ROIPooler}(\{\mathbf{P}_l\}, B_i)\big)

    (see the module docstring for the modes, features and installation).

    Args:
        weights: :obj:`None` (random init from ``seed``), a local state dict file of a
            detectron2 ``GeneralizedRCNN``, or a state dict. (default: :obj:`None`)
        mode (str): ``"rpn"`` or ``"detections"``. (default: :obj:`"rpn"`)
        feature (str): ``"box_head"`` or ``"roialign"``. (default: :obj:`"box_head"`)
        max_instances (int): :math:`K`. (default: :obj:`40`)
        min_size (int): ``INPUT.MIN_SIZE_TEST``. (default: :obj:`800`)
        max_size (int): ``INPUT.MAX_SIZE_TEST``. (default: :obj:`1333`)
        num_classes (int): ``ROI_HEADS.NUM_CLASSES`` (without background).
            (default: :obj:`80`)
        config_file (str, optional): a detectron2 YAML config merged before the
            arguments above (see :func:`faster_rcnn_r50_fpn_cfg`).
        box_score_thresh (float): ``ROI_HEADS.SCORE_THRESH_TEST``. (default: :obj:`0.05`)
        rpn_nms_thresh, box_nms_thresh, rpn_pre_nms_top_n, rpn_post_nms_top_n: as in
            :class:`~pyg_mlic.detection.TorchvisionRegionExtractor`.
        pool (str): pooling of ``feature="roialign"``. (default: :obj:`"avg"`)
        seed (int): seed of the random initialisation. (default: :obj:`0`)

    Raises:
        ImportError: detectron2 is not importable.
    """

    backend = "detectron2"

    def __init__(self, weights: WeightsArg = None, *, mode: str = "rpn",
                 feature: str = "box_head", max_instances: int = 40, min_size: int = 800,
                 max_size: int = 1333, num_classes: int = 80,
                 config_file: Optional[Union[str, os.PathLike]] = None,
                 box_score_thresh: float = 0.05, rpn_nms_thresh: float = 0.7,
                 box_nms_thresh: float = 0.5, rpn_pre_nms_top_n: int = 1000,
                 rpn_post_nms_top_n: int = 1000, pool: str = "avg", seed: int = 0) -> None:
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
        import_detectron2()
        import detectron2
        from detectron2.modeling import build_model

        cfg = faster_rcnn_r50_fpn_cfg(
            config_file, num_classes=num_classes, min_size=min_size, max_size=max_size,
            max_instances=max_instances, mode=mode, score_thresh=box_score_thresh,
            rpn_nms_thresh=rpn_nms_thresh, box_nms_thresh=box_nms_thresh,
            rpn_pre_nms_top_n=rpn_pre_nms_top_n, rpn_post_nms_top_n=rpn_post_nms_top_n)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = build_model(cfg)
        state = _read_weights(weights)
        if state is not None:
            _load_weights(model, state, "(state dict)" if isinstance(weights, Mapping)
                          else str(weights))
        model.eval()
        heads = model.roi_heads
        dim = (int(heads.box_head.output_shape.channels) if feature == "box_head"
               else int(model.backbone.output_shape()[heads.box_in_features[0]].channels))
        super().__init__(max_instances, dim)
        self.detector = model
        self.cfg = cfg
        self.mode, self.feature, self.pool = mode, feature, pool
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.num_classes = int(num_classes)
        self.input_format = cfg.INPUT.FORMAT
        self.weights_id = weights_id(state, seed)
        self._cfg_text = cfg.dump()
        self._d2_version = getattr(detectron2, "__version__", "?")

    def train(self, mode: bool = True) -> "Detectron2RegionExtractor":
        super().train(mode)
        self.detector.eval()
        return self

    def config(self) -> Dict[str, Any]:
        from pyg_mlic.detection.base import config_hash

        return {"backend": self.backend, "arch": "faster_rcnn_R_50_FPN",
                "weights": self.weights_id, "mode": self.mode, "feature": self.feature,
                "pool": self.pool if self.feature == "roialign" else None,
                "min_size": self.min_size, "max_size": self.max_size,
                "max_instances": self.max_instances, "feature_dim": self.feature_dim,
                "num_classes": self.num_classes, "cfg": config_hash(self._cfg_text),
                "detectron2": self._d2_version}

    def _extract_one(self, image: Optional[Tensor], annotation: Mapping[str, Any]) -> Regions:
        from detectron2.data import transforms as T
        from detectron2.structures import Boxes

        h, w = image_size_of(image, annotation, type(self).__name__)
        arr = (image.permute(1, 2, 0).mul(255.0).round().clamp(0, 255)
               .to(torch.uint8).numpy())                                  # RGB HWC uint8
        resized = T.ResizeShortestEdge(self.min_size, self.max_size).get_transform(arr) \
            .apply_image(arr)
        if self.input_format == "BGR":
            resized = resized[:, :, ::-1]
        nh, nw = resized.shape[:2]
        model = self.detector
        t = torch.as_tensor(np.ascontiguousarray(resized).transpose(2, 0, 1)).float()
        images = model.preprocess_image([{"image": t}])
        features = model.backbone(images.tensor)
        with warnings.catch_warnings():   # detectron2 0.6's anchor generator, harmless
            warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
            proposals, _ = model.proposal_generator(images, features, None)
        p = proposals[0]
        boxes, scores = p.proposal_boxes.tensor, torch.sigmoid(p.objectness_logits)
        labels = torch.full((boxes.shape[0],), -1, dtype=torch.long, device=boxes.device)
        if self.mode == "detections":
            inst, _ = model.roi_heads(images, features, proposals, None)
            d = inst[0]
            boxes, scores, labels = d.pred_boxes.tensor, d.scores, d.pred_classes
        order = torch.sort(scores, descending=True, stable=True).indices[: self.max_instances]
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        heads = model.roi_heads
        pooled = heads.box_pooler([features[f] for f in heads.box_in_features], [Boxes(boxes)])
        if self.feature == "box_head":
            feats = heads.box_head(pooled)
        else:
            feats = pooled.mean((2, 3)) if self.pool == "avg" else pooled.amax((2, 3))
        boxes = boxes * boxes.new_tensor([w / nw, h / nh, w / nw, h / nh])
        return Regions(boxes.cpu(), feats.reshape(len(boxes), -1).cpu(), scores.cpu(),
                       labels.cpu(), (h, w)).clip_()


def _read_weights(weights: WeightsArg) -> Optional[Dict[str, Tensor]]:
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        return dict(weights)
    p = Path(weights).expanduser()
    if p.suffix == ".pkl":
        raise CheckpointError(
            f"{p}: detectron2 model-zoo .pkl files are pickles and are not loaded (pickle "
            f"runs code). Convert it once in a trusted environment: load it with "
            f"detectron2's DetectionCheckpointer, then torch.save(model.state_dict(), "
            f"'weights.pth'), and pass that file")
    from pyg_mlic.backbones import load_state_dict_file

    return load_state_dict_file(p)


def _load_weights(model: torch.nn.Module, state: Mapping[str, Tensor], src: str) -> None:
    state = {k: torch.as_tensor(v) for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"detectron2 weights {src} do not fit Faster R-CNN R50-FPN: "
                              f"{str(e)[:500]}") from None
    if missing or unexpected:
        raise CheckpointError(f"detectron2 weights {src} do not fit Faster R-CNN R50-FPN: "
                              f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
