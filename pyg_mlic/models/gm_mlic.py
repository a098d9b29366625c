r"""GM-MLIC (Wu et al., *GM-MLIC: Graph Matching based Multi-Label Image Classification*,
IJCAI 2021): multi-label classification as instance–label matching on an assignment
graph."""
from __future__ import annotations

import math
import warnings
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from pyg_mlic.graphs.assignment_graph import label_edges
from pyg_mlic.graphs.instance_graph import DEFAULT_K
from pyg_mlic.losses import class_weighted_bce, positive_ratio
from pyg_mlic.models.base import Batch, ModelOutput, MultiLabelModel, build_encoder
from pyg_mlic.models.ml_gcn import resolve_label_embeddings
from pyg_mlic.models.regions import ALIGN_SOURCES, SOURCES, read_regions, region_feature_dim
from pyg_mlic.models.registry import register_ablation, register_demo_row, register_model
from pyg_mlic.nn.graph_network_block import GraphNetworkBlock

def cross_instance_max(z: Tensor, mask: Tensor, empty: Tensor) -> Tensor:
    r"""Cross-instance max pooling (GM-MLIC Eq. 14) in logit space.

    .. math::
        p^c = \max_j s^c_j = \sigma\big(\max_j z^c_j\big)

    since the sigmoid is increasing, so the pooled *logit* is the max of the instance
    logits over the real instances (exact, finite, and BCE-with-logits on it is Eq. 15's
    cross-entropy on :math:`p`). Padding rows never win. An image without any instance
    gets ``empty`` (see :class:`GMMLIC`).

    Args:
        z (Tensor): matching logits ``[B, K, C]``.
        mask (Tensor): bool ``[B, K]``.
        empty (Tensor): ``[C]`` logits for images without instances.

    Returns:
        Tensor: ``[B, C]``.
    """
    filled = z.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    pooled = filled.max(1).values if z.size(1) else z.new_full((z.size(0), z.size(2)),
                                                                float("-inf"))
    has = mask.any(1, keepdim=True) if mask.numel() else torch.zeros(
        z.size(0), 1, dtype=torch.bool, device=z.device)
    return torch.where(has, pooled, empty.to(z.dtype).expand_as(pooled))


def default_gnb_widths(in_features: int) -> Tuple[int, List[int]]:
    r"""Widths of GM-MLIC's graph network block for :math:`D_r`-dimensional instance
    features: ``(encoder_channels, conv_channels)`` =
    :math:`(\max(64, D_r/4),\ [\max(64, D_r/4), \max(32, D_r/8)])`.

    The paper uses an encoder of 512 and :math:`k = 2` modules of 512 and 256 (Sec. 4.2) on
    2048-d features (ResNet's :math:`D`): exactly these widths at :math:`D_r = 2048`.
    Scaling with :math:`D_r` keeps that shape on smaller backbones, as
    :func:`~pyg_mlic.models.ml_gcn.default_gcn_hidden` does for ML-GCN: the paper's
    512-wide block behind the demo's 128-d backbone trains more slowly and five times more
    expensively. The floor keeps very small backbones from an even narrower block: at
    :math:`D_r = 128` the plain :math:`D_r/4` rule (32; 32 and 16) learned more slowly than
    64; 64 and 32 (measured, ``docs/methods/gm_mlic.rst``).
    """
    D = int(in_features)
    if D < 1:
        raise ValueError(f"default_gnb_widths: in_features must be >= 1, got {in_features}")
    return max(64, D // 4), [max(64, D // 4), max(32, D // 8)]


def prior_logits(pos_ratio: Tensor, beta: float = 0.0, eps: float = 1e-3) -> Tensor:
    r"""The constant logits that minimise Eq. 15 for labels of training ratios
    :math:`r^c`:

    .. math::
        z^c_\star = \log \frac{r^c\,w^c_+}{(1 - r^c)\,w^c_-}
        = \operatorname{logit}(r^c) + \beta\,(1 - 2 r^c),
        \qquad w^c_+ = e^{\beta (1 - r^c)},\; w^c_- = e^{\beta r^c}

    (:math:`r^c` clamped to :math:`[\epsilon, 1 - \epsilon]`; :math:`\beta = 0`: the label
    log-odds)."""
    r = pos_ratio.float().clamp(eps, 1 - eps)
    return torch.log(r) - torch.log1p(-r) + float(beta) * (1 - 2 * r)


#: values of ``GMMLIC(loss_reduction=...)``
LOSS_REDUCTIONS = ("mean", "sum")


@register_model("gm_mlic")
class GMMLIC(MultiLabelModel):
    r"""GM-MLIC: instance–label matching on an assignment graph (Sec. 3, Fig. 2).

    **Assignment graph** (Sec. 3.2, :mod:`pyg_mlic.graphs.assignment_graph`): the top
    :math:`m` instances of an image (ROI features :math:`f_i`, normalised boxes
    :math:`\hat B_i`; ``rois=`` source, see :func:`~pyg_mlic.models.regions.read_regions`)
    form the kNN instance graph :math:`G_o` (Eq. 1, neighbours searched on the normalised
    box centres), the labels' word embeddings form the label graph :math:`G_l` (Eq. 2,
    complete by default), and every instance is joined to every label by a matching edge
    (Eq. 3). Boxes with no area (a crop can leave such rows) are not instances.

    **Matching selection** (Sec. 3.3, :class:`~pyg_mlic.nn.GraphNetworkBlock`): encoder
    MLPs (Eq. 4), :math:`k` = ``len(conv_channels)`` node + edge convolution modules
    (Eqs. 5–12; widths 512 and 256 in the paper, :func:`default_gnb_widths` by default)
    and a decoder on the matching edges,
    :math:`\mathbf{S} = \sigma(\mathbf{Z}) \in [0, 1]^{M \times C}` (Eq. 13), with
    :math:`z_{ic} = \phi_{dec}(e^m_{ic}) + b_c`: the decoder's output bias is per label
    (``label_bias``; a function of the matching edge's label end, which :math:`e^m_{ic}`
    carries), initialised to the prior :func:`prior_logits` of the training labels.

    **Input scale** (``roi_norm``, ``label_norm``). The block's MLPs are initialised for
    inputs of unit mean square per coordinate (:class:`~pyg_mlic.nn.SplitMLP`). The model
    brings its inputs there: a LayerNorm on each ROI feature (ReLU features are
    non-negative, with a large component common to all ROIs) and the label embeddings
    scaled by one constant to unit mean square (a one-hot vector has :math:`1/C`, which
    left the label part of every matching edge :math:`\sqrt{C}` times too weak at
    initialisation, so that the scores hardly depended on the label or the instance: the
    slow start measured in ``docs/methods/gm_mlic.rst``).

    **Prediction** (Eq. 14): :math:`p^c = \max_j s^c_j` over the real instances; the
    model returns the logits :math:`\max_j z^c_j = \sigma^{-1}(p^c)` (exact and finite,
    see :func:`cross_instance_max`). An image with no instance at all (empty detector
    output / no box) has no matching edge: its logits are a learned per-class vector
    ``empty_logits`` (initialised to the prior), finite in every case.

    **Loss** (Eq. 15): :meth:`classification_loss` is the class-weighted BCE
    :func:`~pyg_mlic.losses.class_weighted_bce`,
    :math:`w^c = y\,e^{\beta(1 - r^c)} + (1 - y)\,e^{\beta r^c}` with :math:`r^c` the ratio
    of label :math:`c` in ``train_labels`` and :math:`\beta` = ``beta`` (0.4 on COCO and
    NUS-WIDE, 0 on VOC 2007), averaged over the unmasked entries (``loss_reduction=
    "mean"``, the reduction the paper's SGD recipe, lr 0.01, trains with; ``"sum"`` is
    Eq. 15 as printed, see ``docs/methods/gm_mlic.rst``).

    **Regions.** The paper's instances are a Faster R-CNN's detections ranked by
    confidence: :attr:`default_region_options` asks the region backends for
    ``mode="detections"`` (:func:`pyg_mlic.detection.build_region_extractor` with
    ``model=``); the model warns once when every ROI it reads has label ``-1``
    (class-agnostic proposals, e.g. ``mode="rpn"``). With precomputed ROI features
    (``rois="batch"``, or ``"auto"`` with ``roi_feature_dim`` from a
    :class:`~pyg_mlic.detection.RegionDataset`) the model reads only the ROIs: no image
    encoder is built or run. ``rois="region_boxes"`` pools the model's own trainable
    backbone at the cached detector boxes instead (:math:`D_r = D`).

    **Ablations** (Table 4): ``use_label_graph=False`` ("w/o :math:`G_l`"),
    ``use_instance_graph=False`` ("w/o :math:`G_o`"), ``use_matching_edges=False`` ("w/o
    ILM edges": no matching-edge states or instance–label messages; each instance–label
    pair is scored by the decoder from the final node states of the two graphs).

    Args:
        classes (list[str]): class names.
        input_kind (str): ``"image"`` or ``"features"`` (feature input needs precomputed
            ROIs: :class:`~pyg_mlic.detection.RegionDataset`).
        backbone (str): image backbone (the ROI features of the RoIAlign sources).
        train_labels: ``[N, C]`` 0/1 training labels: the ratios :math:`r^c` of Eq. 15.
        train_label_mask: bool ``[N, C]`` known-mask of ``train_labels`` (False =
            unknown): :math:`r^c` counts known entries only
            (:func:`~pyg_mlic.losses.positive_ratio`), so the class weights and the prior
            bias follow the known labels. (default: :obj:`None`, all known)
        label_embeddings: ``[C, d]`` tensor, an embeddings spec, or ``None`` (one-hot). The
            paper uses 300-d GloVe.
        label_graph: restrict :math:`G_l` to this graph's support (a
            :class:`~pyg_mlic.graphs.LabelGraph`, its ``Data`` or an ``edge_index``).
            (default: complete without self-loops)
        beta (float): :math:`\beta` of Eq. 15, :math:`\ge 0`. (default: :obj:`0.4`; use 0
            on VOC 2007)
        max_instances (int): :math:`m`, instances kept per image (top-:math:`m` by detector
            score; with ``rois="boxes"`` the first :math:`m` boxes). Fig. 4(a): 35 on COCO
            and NUS-WIDE, 10 on VOC 2007. (default: :obj:`35`)
        rois (str): ROI source: ``"auto"``, ``"batch"`` (precomputed, e.g. Faster R-CNN as
            in the paper), ``"boxes"`` (RoIAlign of the batch's annotated boxes on the
            backbone's feature map) or ``"region_boxes"`` (RoIAlign of the cached detector
            boxes on the backbone's map). (default: :obj:`"auto"`: ``"batch"`` for feature
            input or when ``roi_feature_dim`` is given, i.e. a RegionDataset trains the
            model; else ``"boxes"``, or ``"batch"`` for a batch that carries
            ``roi_features``)
        roi_output_size (int): RoIAlign size of the RoIAlign sources. (default: :obj:`7`)
        roi_in_features (int, optional): :math:`D_r` (default: ``roi_feature_dim`` given by
            the training set for precomputed ROIs, else the backbone's channel count).
        encoder_channels (int, optional): width of the GNB encoders. (default: the first
            of ``conv_channels`` when those are given, else from
            :func:`default_gnb_widths`; 512 at :math:`D_r = 2048`)
        conv_channels (list[int], optional): widths of the :math:`k` convolution modules.
            (default: from :func:`default_gnb_widths`; ``[512, 256]`` at :math:`D_r = 2048`)
        k (int): neighbours in :math:`G_o` (not given in the paper). (default: :obj:`5`)
        use_label_graph, use_instance_graph, use_matching_edges (bool): Table 4 ablations.
        roi_norm (bool): LayerNorm on the ROI features. (default: :obj:`True`)
        label_norm (bool): scale the label embeddings to unit mean square.
            (default: :obj:`True`)
        class_prior (bool): initialise ``label_bias`` and ``empty_logits`` to
            :func:`prior_logits` (else 0). (default: :obj:`True`)
        loss_reduction (str): ``"mean"`` or ``"sum"`` of Eq. 15. (default: :obj:`"mean"`)

    Shapes:
        - **input:** batch with ``image`` :math:`(B, 3, H, W)` and ``boxes`` (or ``roi_*``
          keys), or ``features`` + ``roi_*``
        - **output:** :class:`ModelOutput` with ``logits`` :math:`(B, C)`; ``extras``:
          ``matching_logits`` :math:`(B, K, C)` (:math:`\mathbf{Z}`), ``roi_mask``
          :math:`(B, K)`, ``roi_boxes`` :math:`(B, K, 4)`, ``roi_index`` :math:`(B, K)`
          and, when the model computes them (the RoIAlign sources), ``features``
          :math:`(B, D)`
    """

    #: it reads detector regions (no mixup: see MultiLabelModel.reads_regions)
    reads_regions = True
    #: Sec. 4.2: SGD, momentum 0.9, weight decay 1e-4, lr 0.01 divided by 10 every 30
    #: epochs, with Eq. 15 averaged (``loss_reduction="mean"``; a sum at this rate diverges,
    #: measured). Epochs, batch size and a backbone rate are not given (the paper's ROI
    #: features come from a separate Faster R-CNN); the backbone rate follows ML-GCN.
    default_train_config = dict(optimizer="sgd", lr=0.01, backbone_lr=0.001, momentum=0.9,
                                weight_decay=1e-4, lr_step=30, lr_gamma=0.1)
    #: the region-backend recipe (read by ``build_region_extractor(..., model=)``): the
    #: detector's class-labelled detections ranked by confidence (Sec. 4.2), not RPN
    #: proposals
    default_region_options = dict(mode="detections")

    def __init__(self, classes: Sequence[str], input_kind: str = "image",
                 backbone: str = "resnet101", backbone_weights: Optional[str] = None,
                 pool: str = "max", in_features: Optional[int] = None,
                 train_labels: Any = None, label_embeddings: Any = None,
                 label_graph: Any = None, beta: float = 0.4, pos_ratio: Any = None,
                 max_instances: int = 35, rois: str = "auto", roi_output_size: int = 7,
                 roi_in_features: Optional[int] = None, roi_feature_dim: Optional[int] = None,
                 encoder_channels: Optional[int] = None,
                 conv_channels: Optional[Sequence[int]] = None,
                 k: int = DEFAULT_K, use_label_graph: bool = True,
                 use_instance_graph: bool = True, use_matching_edges: bool = True,
                 label_edge_index: Optional[Tensor] = None,
                 encoder_hidden: Sequence[int] = (512,), encoder_out: int = 512,
                 roi_norm: bool = True, label_norm: bool = True, class_prior: bool = True,
                 loss_reduction: str = "mean", train_label_mask: Any = None):
        super().__init__(classes)
        name = "gm_mlic"
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) \
                or not math.isfinite(beta) or beta < 0:
            raise ValueError(f"{name}: beta (Eq. 15) must be a finite number >= 0, got {beta!r}")
        if rois not in SOURCES:
            raise ValueError(f"{name}: rois must be one of {list(SOURCES)}, got {rois!r}")
        if isinstance(max_instances, bool) or int(max_instances) != max_instances \
                or max_instances < 1:
            raise ValueError(f"{name}: max_instances must be an int >= 1, got {max_instances!r}")
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"{name}: k (kNN neighbours) must be an int >= 1, got {k!r}")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"{name}: loss_reduction must be one of {list(LOSS_REDUCTIONS)}, "
                             f"got {loss_reduction!r}")
        if input_kind == "features" and rois in ALIGN_SOURCES:
            raise ValueError(f"{name}: rois={rois!r} pools ROIs from the backbone's feature "
                             "map and needs input_kind='image'; feature datasets need ROIs "
                             "from pyg_mlic.detection.RegionDataset (rois='batch' or 'auto')")
        self.beta, self.rois = float(beta), rois
        self.loss_reduction = loss_reduction
        self.max_instances, self.roi_output_size = int(max_instances), int(roi_output_size)
        dr = roi_in_features if roi_in_features is not None else roi_feature_dim
        #: the model reads only precomputed ROIs: no image encoder (no backbone forward,
        #: no parameter without a gradient)
        self.reads_precomputed = rois == "batch" or (
            rois == "auto" and (input_kind == "features" or roi_feature_dim is not None))
        self.encoder = None if self.reads_precomputed else build_encoder(
            input_kind, backbone=backbone, backbone_weights=backbone_weights, pool=pool,
            in_features=in_features, encoder_hidden=encoder_hidden, encoder_out=encoder_out)
        C = self.num_classes
        known_ratio = True
        if pos_ratio is not None:
            r = torch.as_tensor(pos_ratio, dtype=torch.float32).reshape(-1)
        elif train_labels is not None:
            r = positive_ratio(train_labels, mask=train_label_mask)
        elif self.beta == 0:
            r, known_ratio = torch.zeros(C), False   # unused: beta = 0 is plain BCE
        else:
            raise ValueError(f"{name}: the class-weighted loss (Eq. 15, beta={beta}) needs the "
                             "label ratios of the training set: pass train_labels=[N, C] (or "
                             "pos_ratio=[C]), or beta=0")
        if r.numel() != C or not torch.isfinite(r).all() or (r < 0).any() or (r > 1).any():
            raise ValueError(f"{name}: label ratios r^c must be {C} values in [0, 1], got "
                             f"shape {tuple(r.shape)}")
        self.register_buffer("pos_ratio", r.float(), persistent=True)
        E = resolve_label_embeddings(self.classes, label_embeddings)
        self.label_norm = bool(label_norm)
        En = E / E.pow(2).mean().sqrt().clamp_min(1e-12) if self.label_norm else E
        self.register_buffer("label_embeddings", En, persistent=True)
        if label_edge_index is not None:
            lei = torch.as_tensor(label_edge_index).long()
        else:
            lei = label_edges(C, label_graph)
        self.register_buffer("label_edge_index", lei, persistent=True)
        src = "batch" if self.reads_precomputed else rois
        self.roi_in_features = region_feature_dim(self.encoder, src, dr)
        widths = default_gnb_widths(self.roi_in_features)
        conv_c = [int(c) for c in conv_channels] if conv_channels is not None else widths[1]
        if not conv_c:
            raise ValueError(f"{name}: conv_channels needs at least one module")
        # the encoder feeds the first module: as wide as it unless given
        enc_c = int(encoder_channels) if encoder_channels is not None else (
            conv_c[0] if conv_channels is not None else widths[0])
        self.roi_norm = nn.LayerNorm(self.roi_in_features) if roi_norm else None
        self.gnb = GraphNetworkBlock(self.roi_in_features, E.size(1), enc_c, conv_c, int(k),
                                     use_instance_graph=use_instance_graph,
                                     use_label_graph=use_label_graph,
                                     use_matching_edges=use_matching_edges)
        prior = prior_logits(self.pos_ratio, self.beta) if class_prior and known_ratio \
            else torch.zeros(C)
        #: per-label output bias of the decoder (the matching logits), from the prior
        self.label_bias = nn.Parameter(prior.clone())
        #: logits of an image without any instance (see the class docstring)
        self.empty_logits = nn.Parameter(prior.clone())
        self._checked_roi_labels = False
        self.record_resolved(
            rois="batch" if self.reads_precomputed else rois,
            beta=self.beta, pos_ratio=self.pos_ratio.clone(), max_instances=self.max_instances,
            roi_output_size=self.roi_output_size, roi_in_features=self.roi_in_features,
            encoder_channels=enc_c, conv_channels=conv_c,
            k=int(k), label_edge_index=lei, encoder_hidden=[int(h) for h in encoder_hidden],
            encoder_out=int(encoder_out), label_embeddings=E)

    def _check_roi_labels(self, batch: Batch) -> None:
        """Warn once when no ROI of the batch carries a class (all ``roi_labels`` -1)."""
        self._checked_roi_labels = True
        labels, mask = batch.get("roi_labels"), batch.get("roi_mask")
        if labels is None or mask is None:
            return
        real = labels[mask.bool()]
        if real.numel() and bool((real < 0).all()):
            warnings.warn(
                "gm_mlic: every ROI of the batch has label -1: the regions are "
                "class-agnostic proposals (e.g. a region backend with mode='rpn'), not the "
                "detector's class-labelled detections ranked by confidence that GM-MLIC "
                "matches labels against (Sec. 4.2): the instances carry no detected class. "
                "Build the regions with mode='detections' (--region-opt mode=detections, or "
                "build_region_extractor(..., model=GMMLIC)) and detector weights trained "
                "for the task.", UserWarning, stacklevel=3)

    def forward(self, batch: Batch) -> ModelOutput:
        if not self._checked_roi_labels:
            self._check_roi_labels(batch)
        r = read_regions(self.encoder, batch,
                         source="batch" if self.reads_precomputed else self.rois,
                         max_instances=self.max_instances, output_size=self.roi_output_size,
                         image_features=False)
        if r.feature_dim != self.roi_in_features:
            raise ValueError(f"gm_mlic: the batch has {r.feature_dim}-d ROI features but the "
                             f"model was built for {self.roi_in_features}; build it with "
                             f"roi_in_features={r.feature_dim} (the region backend's size)")
        f = r.features
        if self.roi_norm is not None:
            f = self.roi_norm(f) * r.mask.unsqueeze(-1).to(f.dtype)   # padding stays zero
        z = self.gnb.forward_dense(f, r.boxes, r.mask, self.label_embeddings,
                                   self.label_edge_index)                  # [B, K, C]
        z = z + self.label_bias.to(z.dtype)
        logits = cross_instance_max(z, r.mask, self.empty_logits)
        extras = {"matching_logits": z, "roi_mask": r.mask, "roi_boxes": r.boxes}
        if r.index is not None:
            extras["roi_index"] = r.index
        if r.image_features is not None:
            extras["features"] = r.image_features
        return ModelOutput(logits, extras=extras)

    def classification_loss(self, logits: Tensor, target: Tensor,
                            mask: Optional[Tensor] = None) -> Tensor:
        r"""Class-weighted BCE of Eq. 15 (:func:`~pyg_mlic.losses.class_weighted_bce`) on
        the pooled logits: averaged over the unmasked entries, or summed
        (``loss_reduction``)."""
        return class_weighted_bce(logits, target, self.pos_ratio, beta=self.beta, mask=mask,
                                  reduction=self.loss_reduction)

    def extra_repr(self) -> str:
        g = self.gnb
        return (f"num_classes={self.num_classes}, beta={self.beta}, max_instances="
                f"{self.max_instances}, rois={self.rois!r}, instance_graph="
                f"{g.use_instance_graph}, label_graph={g.use_label_graph}, "
                f"matching_edges={g.use_matching_edges}, loss_reduction="
                f"{self.loss_reduction!r}")


#: the defaults (widths from D, normalised inputs, prior-initialised label bias) train in
#: the demo's budget; measured numbers in docs/methods/gm_mlic.rst
register_demo_row("gm_mlic", "gm_mlic")

_TABLE = "GM-MLIC ablations (Table 4)"
register_ablation(_TABLE, "Our w/o G_l", "gm_mlic", use_label_graph=False)
register_ablation(_TABLE, "Our w/o G_o", "gm_mlic", use_instance_graph=False)
register_ablation(_TABLE, "Our w/o ILM edges", "gm_mlic", use_matching_edges=False)
register_ablation(_TABLE, "Our GM-MLIC", "gm_mlic")

__all__: List[str] = ["GMMLIC", "cross_instance_max", "default_gnb_widths", "prior_logits"]
