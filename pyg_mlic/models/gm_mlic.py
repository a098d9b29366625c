r"""GM-MLIC (Wu et al., *GM-MLIC: Graph Matching based Multi-Label Image Classification*,
IJCAI 2021): multi-label classification as instance–label matching on an assignment
graph."""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence

import torch
from torch import Tensor, nn

from pyg_mlic.graphs.assignment_graph import label_edges
from pyg_mlic.graphs.instance_graph import DEFAULT_K
from pyg_mlic.losses import class_weighted_bce, positive_ratio
from pyg_mlic.models.base import Batch, ModelOutput, MultiLabelModel, build_encoder
from pyg_mlic.models.ml_gcn import resolve_label_embeddings
from pyg_mlic.models.regions import SOURCES, read_regions, region_feature_dim
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


@register_model("gm_mlic")
class GMMLIC(MultiLabelModel):
    r"""GM-MLIC: instance–label matching on an assignment graph (Sec. 3, Fig. 2).

    **Assignment graph** (Sec. 3.2, :mod:`pyg_mlic.graphs.assignment_graph`): the top
    :math:`m` instances of an image (ROI features :math:`f_i`, normalised boxes
    :math:`\hat B_i`; ``rois=`` source, see :func:`~pyg_mlic.models.regions.read_regions`)
    form the kNN instance graph :math:`G_o` (Eq. 1), the labels' word embeddings form
    the label graph :math:`G_l` (Eq. 2, complete by default), and every instance is joined
    to every label by a matching edge (Eq. 3).

    **Matching selection** (Sec. 3.3, :class:`~pyg_mlic.nn.GraphNetworkBlock`): encoder
    MLPs (Eq. 4), :math:`k` = ``len(conv_channels)`` node + edge convolution modules
    (Eqs. 5–12; widths 512 and 256 in the paper) and a decoder on the matching edges,
    :math:`\mathbf{S} = \sigma(\mathbf{Z}) \in [0, 1]^{M \times C}` (Eq. 13).

    **Prediction** (Eq. 14): :math:`p^c = \max_j s^c_j` over the real instances; the
    model returns the logits :math:`\max_j z^c_j = \sigma^{-1}(p^c)` (exact and finite,
    see :func:`cross_instance_max`). An image with no instance at all (empty detector
    output / no box) has no matching edge: its logits are a learned per-class vector
    ``empty_logits`` (initialised to 0, i.e. :math:`p = 0.5`; it learns the label
    log-odds of such images), finite in every case.

    **Loss** (Eq. 15): :meth:`classification_loss` is the class-weighted BCE
    :func:`~pyg_mlic.losses.class_weighted_bce`,
    :math:`w^c = y\,e^{\beta(1 - r^c)} + (1 - y)\,e^{\beta r^c}` with :math:`r^c` the ratio
    of label :math:`c` in ``train_labels`` and :math:`\beta` = ``beta`` (0.4 on COCO and
    NUS-WIDE, 0 on VOC 2007), averaged over the unmasked entries.

    **Ablations** (Table 4): ``use_label_graph=False`` ("w/o :math:`G_l`"),
    ``use_instance_graph=False`` ("w/o :math:`G_o`"), ``use_matching_edges=False`` ("w/o
    ILM edges": no matching-edge states or instance–label messages; each instance–label
    pair is scored by the decoder from the final node states of the two graphs).

    Args:
        classes (list[str]): class names.
        input_kind (str): ``"image"`` or ``"features"`` (feature input needs precomputed
            ROIs: :class:`~pyg_mlic.detection.RegionDataset`).
        backbone (str): image backbone (used for the ROI features with ``rois="boxes"``).
        train_labels: ``[N, C]`` 0/1 training labels: the ratios :math:`r^c` of Eq. 15.
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
            in the paper) or ``"boxes"`` (RoIAlign of the batch's boxes on the backbone's
            feature map). (default: :obj:`"auto"`)
        roi_output_size (int): RoIAlign size for ``rois="boxes"``. (default: :obj:`7`)
        roi_in_features (int, optional): :math:`D_r` (default: ``roi_feature_dim`` given by
            the training set, else the backbone's channel count).
        encoder_channels (int): width of the GNB encoders. (default: :obj:`512`)
        conv_channels (list[int]): widths of the :math:`k` convolution modules.
            (default: ``(512, 256)``)
        k (int): neighbours in :math:`G_o` (not given in the paper). (default: :obj:`5`)
        use_label_graph, use_instance_graph, use_matching_edges (bool): Table 4 ablations.

    Shapes:
        - **input:** batch with ``image`` :math:`(B, 3, H, W)` and ``boxes`` (or ``roi_*``
          keys), or ``features`` + ``roi_*``
        - **output:** :class:`ModelOutput` with ``logits`` :math:`(B, C)`; ``extras``:
          ``matching_logits`` :math:`(B, K, C)` (:math:`\mathbf{Z}`), ``roi_mask``
          :math:`(B, K)`, ``roi_boxes`` :math:`(B, K, 4)`, ``features`` :math:`(B, D)`
    """

    #: Sec. 4.2: SGD, momentum 0.9, weight decay 1e-4, lr 0.01 divided by 10 every 30
    #: epochs. Epochs, batch size and a backbone rate are not given (the paper's ROI
    #: features come from a separate Faster R-CNN); the backbone rate follows ML-GCN.
    default_train_config = dict(optimizer="sgd", lr=0.01, backbone_lr=0.001, momentum=0.9,
                                weight_decay=1e-4, lr_step=30, lr_gamma=0.1)

    def __init__(self, classes: Sequence[str], input_kind: str = "image",
                 backbone: str = "resnet101", backbone_weights: Optional[str] = None,
                 pool: str = "max", in_features: Optional[int] = None,
                 train_labels: Any = None, label_embeddings: Any = None,
                 label_graph: Any = None, beta: float = 0.4, pos_ratio: Any = None,
                 max_instances: int = 35, rois: str = "auto", roi_output_size: int = 7,
                 roi_in_features: Optional[int] = None, roi_feature_dim: Optional[int] = None,
                 encoder_channels: int = 512, conv_channels: Sequence[int] = (512, 256),
                 k: int = DEFAULT_K, use_label_graph: bool = True,
                 use_instance_graph: bool = True, use_matching_edges: bool = True,
                 label_edge_index: Optional[Tensor] = None,
                 encoder_hidden: Sequence[int] = (512,), encoder_out: int = 512):
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
        if input_kind == "features" and rois == "boxes":
            raise ValueError(f"{name}: rois='boxes' pools ROIs from the backbone's feature map "
                             "and needs input_kind='image'; feature datasets need ROIs from "
                             "pyg_mlic.detection.RegionDataset (rois='batch' or 'auto')")
        self.beta, self.rois = float(beta), rois
        self.max_instances, self.roi_output_size = int(max_instances), int(roi_output_size)
        self.encoder = build_encoder(input_kind, backbone=backbone,
                                     backbone_weights=backbone_weights, pool=pool,
                                     in_features=in_features, encoder_hidden=encoder_hidden,
                                     encoder_out=encoder_out)
        C = self.num_classes
        if pos_ratio is not None:
            r = torch.as_tensor(pos_ratio, dtype=torch.float32).reshape(-1)
        elif train_labels is not None:
            r = positive_ratio(train_labels)
        elif self.beta == 0:
            r = torch.zeros(C)                    # unused: beta = 0 is plain BCE
        else:
            raise ValueError(f"{name}: the class-weighted loss (Eq. 15, beta={beta}) needs the "
                             "label ratios of the training set: pass train_labels=[N, C] (or "
                             "pos_ratio=[C]), or beta=0")
        if r.numel() != C or not torch.isfinite(r).all() or (r < 0).any() or (r > 1).any():
            raise ValueError(f"{name}: label ratios r^c must be {C} values in [0, 1], got "
                             f"shape {tuple(r.shape)}")
        self.register_buffer("pos_ratio", r.float(), persistent=True)
        E = resolve_label_embeddings(self.classes, label_embeddings)
        self.register_buffer("label_embeddings", E, persistent=True)
        if label_edge_index is not None:
            lei = torch.as_tensor(label_edge_index).long()
        else:
            lei = label_edges(C, label_graph)
        self.register_buffer("label_edge_index", lei, persistent=True)
        dr = roi_in_features if roi_in_features is not None else roi_feature_dim
        self.roi_in_features = region_feature_dim(self.encoder, rois, dr)
        self.gnb = GraphNetworkBlock(self.roi_in_features, E.size(1), int(encoder_channels),
                                     [int(c) for c in conv_channels], int(k),
                                     use_instance_graph=use_instance_graph,
                                     use_label_graph=use_label_graph,
                                     use_matching_edges=use_matching_edges)
        #: logits of an image without any instance (see the class docstring)
        self.empty_logits = nn.Parameter(torch.zeros(C))
        self.record_resolved(
            beta=self.beta, pos_ratio=self.pos_ratio.clone(), max_instances=self.max_instances,
            roi_output_size=self.roi_output_size, roi_in_features=self.roi_in_features,
            encoder_channels=int(encoder_channels), conv_channels=[int(c) for c in conv_channels],
            k=int(k), label_edge_index=lei, encoder_hidden=[int(h) for h in encoder_hidden],
            encoder_out=int(encoder_out), label_embeddings=E)

    def forward(self, batch: Batch) -> ModelOutput:
        r = read_regions(self.encoder, batch, source=self.rois,
                         max_instances=self.max_instances, output_size=self.roi_output_size)
        if r.feature_dim != self.roi_in_features:
            raise ValueError(f"gm_mlic: the batch has {r.feature_dim}-d ROI features but the "
                             f"model was built for {self.roi_in_features}; build it with "
                             f"roi_in_features={r.feature_dim} (the region backend's size)")
        z = self.gnb.forward_dense(r.features, r.boxes, r.mask, self.label_embeddings,
                                   self.label_edge_index)                  # [B, K, C]
        logits = cross_instance_max(z, r.mask, self.empty_logits)
        return ModelOutput(logits, extras={"matching_logits": z, "roi_mask": r.mask,
                                           "roi_boxes": r.boxes,
                                           "features": r.image_features})

    def classification_loss(self, logits: Tensor, target: Tensor,
                            mask: Optional[Tensor] = None) -> Tensor:
        r"""Class-weighted BCE of Eq. 15 (:func:`~pyg_mlic.losses.class_weighted_bce`) on
        the pooled logits, averaged over the unmasked entries."""
        return class_weighted_bce(logits, target, self.pos_ratio, beta=self.beta, mask=mask)

    def extra_repr(self) -> str:
        g = self.gnb
        return (f"num_classes={self.num_classes}, beta={self.beta}, max_instances="
                f"{self.max_instances}, rois={self.rois!r}, instance_graph="
                f"{g.use_instance_graph}, label_graph={g.use_label_graph}, "
                f"matching_edges={g.use_matching_edges}")


register_demo_row("gm_mlic", "gm_mlic")
#: the demo's backbone has D = 128; the paper's widths (encoder 512, modules 512 and 256)
#: trained to 26 test mAP in the 5-epoch demo, widths scaled to D (64; 64 and 32) to 36,
#: five times faster (measured); GM-MLIC learns slowly here, see docs/methods/gm_mlic.rst
register_demo_row("gm_mlic (D-scaled)", "gm_mlic", encoder_channels=64, conv_channels=[64, 32])

_TABLE = "GM-MLIC ablations (Table 4)"
register_ablation(_TABLE, "Our w/o G_l", "gm_mlic", use_label_graph=False)
register_ablation(_TABLE, "Our w/o G_o", "gm_mlic", use_instance_graph=False)
register_ablation(_TABLE, "Our w/o ILM edges", "gm_mlic", use_matching_edges=False)
register_ablation(_TABLE, "Our GM-MLIC", "gm_mlic")

__all__: List[str] = ["GMMLIC", "cross_instance_max"]
