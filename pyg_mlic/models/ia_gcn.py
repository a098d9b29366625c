r"""IA-GCN (Wang et al., *Instance-Aware Graph Convolutional Network for Multi-Label
Classification*): ML-GCN with an image-dependent label graph built from ROI scores, a
variational ROI weighting and a region-based branch."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from pyg_mlic.models.base import Batch, ModelOutput, MultiLabelModel, build_encoder
from pyg_mlic.models.ml_gcn import resolve_label_embeddings, resolve_label_graph
from pyg_mlic.models.regions import SOURCES, RegionBatch, read_regions, region_feature_dim
from pyg_mlic.models.registry import register_ablation, register_demo_row, register_model
from pyg_mlic.nn.instance_aware_label_conv import (InstanceAwareLabelConv,
                                                   instance_aware_scaling, label_adjacency_csr)
from pyg_mlic.nn.variational_roi import VariationalROIWeighting

__all__ = ["IAGCN", "AUX_LOSS_NAME", "REGION_CONVS", "default_gcn_hidden",
           "default_region_hidden"]

#: name of the (weighted) KL term of Eq. 12 in :attr:`ModelOutput.aux_losses`
AUX_LOSS_NAME = "kl"

#: readings of Eq. 10 (see :class:`IAGCN`)
REGION_CONVS = ("roi_graph", "label_axis", "label_nodes")


def default_gcn_hidden(out_channels: int) -> List[int]:
    r"""Hidden widths of IA-GCN's label GCN for image features of size :math:`D`:
    ``[D // 4, D // 2]`` (the last layer has :math:`D`).

    The paper's 512 → 1024 → 2048 for ResNet-101 (Sec. 4.3, :math:`D = 2048`) is
    :math:`D/4 \to D/2 \to D`; scaling with :math:`D` keeps that shape on any backbone, as
    ML-GCN's :func:`~pyg_mlic.models.ml_gcn.default_gcn_hidden` does (fixed widths 4-8x
    a 128-d backbone multiply Adam's effective step on the classifiers).
    """
    D = int(out_channels)
    return [max(1, D // 4), max(1, D // 2)]


def default_region_hidden(out_channels: int) -> List[int]:
    r"""Widths of IA-GCN's region GCN (Eq. 10) for image features of size :math:`D`:
    ``[D // 8, D // 4, D // 2, D]``, the paper's 256, 512, 1024, 2048 at :math:`D = 2048`
    (Sec. 4.3)."""
    D = int(out_channels)
    return [max(1, D // 8), max(1, D // 4), max(1, D // 2), max(1, D)]


def _masked_max(h: Tensor, mask: Tensor) -> Tensor:
    """Max over the real rows of ``h`` ``[B, K, F]``; zeros for an image without rows."""
    filled = h.masked_fill(~mask[..., None], float("-inf"))
    out = filled.max(1).values
    return torch.where(mask.any(1, keepdim=True), out, torch.zeros_like(out))


@register_model("ia_gcn")
class IAGCN(MultiLabelModel):
    r"""IA-GCN: a global branch whose label GCN runs over an *image-dependent* label
    graph, and a region branch over the image's ROIs (Sec. 3, Fig. 2).

    **ROIs and their weights** (Sec. 3.4, Eqs. 7–9). The :math:`N` ROI features
    :math:`\mathbf{X} \in \mathbb{R}^{N \times D_r}` of an image (``rois=`` source, see
    :func:`~pyg_mlic.models.regions.read_regions`) are weighted by a variational factor,
    :math:`\mathbf{X}^w = \mathbf{z} \odot \mathbf{X}`
    (:class:`~pyg_mlic.nn.VariationalROIWeighting`; ``var_inf=False``:
    :math:`\mathbf{z} = \mathbf{1}`).

    **Image-dependent label graph** (Sec. 3.2, Eqs. 1–4). Rough scores of every ROI for
    every label and their column-wise max over the real ROIs,

    .. math::
        \mathbf{A}^w_I = \sigma\big(f_{CNN}(\mathbf{X}^w)\big) \in [0,1]^{N \times C},
        \qquad \mathbf{a}_I = \max_{r} (\mathbf{A}^w_I)_{r,:} \in [0, 1]^{C},

    mask the statistical matrix :math:`\mathbf{A}_S` (ML-GCN's re-weighted graph):
    :math:`\mathbf{A}_F = \mathbf{A}_S \odot \mathbf{a}_I \mathbf{a}_I^{\top}`, normalised
    per image as :math:`\hat{\mathbf{A}}_F = \mathbf{D}^{-1/2}\mathbf{A}_F\mathbf{D}^{-1/2}`
    (see :class:`~pyg_mlic.nn.InstanceAwareLabelConv` for the choice, and for the batched
    sparse form that never builds the :math:`B` matrices). :math:`f_{CNN}` is an MLP
    (``score_hidden``; a single linear map, i.e. a :math:`1\times 1` convolution, by
    default) since ROI features are vectors. The sigmoid makes :math:`\mathbf{a}_I`
    non-negative, so :math:`\mathbf{A}_F \ge 0` and its degrees are well defined.

    **Global branch** (Sec. 3.3, Eqs. 5–6). A GCN over :math:`\hat{\mathbf{A}}_F` (ReLU
    between layers, Sec. 4.3) maps the label embeddings (GloVe in the paper) to per-image
    classifiers :math:`\mathbf{M}_b \in \mathbb{R}^{C \times D}` applied to the pooled
    image feature: :math:`\hat{\mathbf{y}}_w = \mathbf{M}_b \mathbf{x}_b`. Widths
    ``gcn_hidden`` + the image feature size :math:`D`: by default :math:`D/4, D/2, D`
    (:func:`default_gcn_hidden`), the paper's 512, 1024, 2048 with ResNet-101
    (:math:`D = 2048`). ``id_lcm=False`` uses :math:`\mathbf{A}_S` as is (ML-GCN, shared
    classifiers).

    **Region branch** (Eq. 10), :math:`\hat{\mathbf{y}}_r = f_{FC}(f_{GCN}(\hat{\mathbf{A}}_F
    \mathbf{A}^w_I \mathbf{W}_I))`. As printed the product does not type-check
    (:math:`\hat{\mathbf{A}}_F` is :math:`C \times C`, :math:`\mathbf{A}^w_I` is
    :math:`N \times C`), and the text says "we view each region as a node … use
    :math:`\mathbf{A}_F` as the adjacent matrix and :math:`\mathbf{A}^w_I` as the initial
    node representations". An adjacency of :math:`C \times C` has labels as nodes, "each
    region as a node" ROIs. Three readings are implemented (``region_conv``):

    - ``"label_nodes"`` (default): the labels are the nodes, as the product of Eq. 10 and
      "use the :math:`\mathbf{A}_F` as the adjacent matrix" imply: the node of label
      :math:`j` starts from column :math:`j` of :math:`\mathbf{A}^w_I`, the scores of the
      :math:`N` ROI slots for that label (``max_instances`` slots, padding 0),

      .. math::
          \mathbf{H}^{(0)} = {\mathbf{A}^w_I}^{\top} \in \mathbb{R}^{C \times N},\quad
          \mathbf{H}^{(l+1)} = \mathrm{ReLU}(\hat{\mathbf{A}}_F \mathbf{H}^{(l)}
          \mathbf{W}^{(l)}),\quad (\hat{\mathbf{y}}_r)_j = \mathbf{w}_{FC}^{\top}
          \mathbf{h}^{(L)}_j + b_j

      (the first layer is Eq. 10's :math:`\hat{\mathbf{A}}_F{\mathbf{A}^w_I}^{\top}
      \mathbf{W}_I`; the layers are :class:`~pyg_mlic.nn.InstanceAwareLabelConv`; the
      fully connected layer to :math:`C` scores reads each label node with shared weights
      and a per-label bias). :math:`\mathbf{W}^{(0)}` weighs ROI *slots*, so the result
      depends on the ROI order (score order for detector regions, annotation order for
      ``rois="boxes"``). On the demo it trains best of the three (docs/methods/ia_gcn.rst).
    - ``"roi_graph"``: ROIs are the nodes and :math:`\hat{\mathbf{A}}_F` reaches them
      through their label scores, i.e. ROIs :math:`r, t` are connected as much as their
      score vectors are correlated under the label graph:

      .. math::
          \mathbf{A}_R = \mathbf{A}^w_I\,\hat{\mathbf{A}}_F\,{\mathbf{A}^w_I}^{\top}
          \in \mathbb{R}^{N \times N},\quad
          \mathbf{H}^{(l+1)} = \mathrm{ReLU}(\hat{\mathbf{A}}_R \mathbf{H}^{(l)}
          \mathbf{W}^{(l)}),\quad \mathbf{H}^{(0)} = \mathbf{A}^w_I,

      :math:`\hat{\mathbf{A}}_R` its symmetric degree normalisation over the real ROIs.
      The nodes are the regions, the result does not depend on the ROI order; with
      non-negative scores every layer averages the ROIs of the image.
    - ``"label_axis"``: :math:`\hat{\mathbf{A}}_F` acts once on the label axis of every
      ROI's score vector, :math:`\mathbf{H}^{(1)} = \mathrm{ReLU}(\mathbf{A}^w_I
      \hat{\mathbf{A}}_F^{\top}\mathbf{W}^{(0)})` (Eq. 10's first product, transposed),
      then per-ROI layers :math:`\mathbf{H}^{(l+1)} = \mathrm{ReLU}(\mathbf{H}^{(l)}
      \mathbf{W}^{(l)})` — only the first layer can use the label graph in this reading.

    ``roi_graph`` and ``label_axis`` use ``region_hidden`` widths (by default :math:`D/8, D/4,
    D/2, D`, :func:`default_region_hidden`: the paper's 256, 512, 1024, 2048 at
    :math:`D = 2048`), a max over the real ROIs and a fully connected layer to :math:`C`
    scores; ``label_nodes`` the same widths on the label nodes. The region layers have He
    initialisation (:meth:`reset_region_parameters`). An image without any real
    ROI gets :math:`\mathbf{a}_I = \mathbf{0}`, which falls back to the statistical
    :math:`\mathbf{A}_S` in the global branch (see
    :func:`~pyg_mlic.nn.instance_aware_label_conv.instance_aware_scaling`), and a zero
    region feature (so :math:`\hat{\mathbf{y}}_r` = the FC bias, ``region_bias`` for
    ``label_nodes``): logits stay finite.

    **Fusion and loss** (Eqs. 11–14).
    :math:`\hat{\mathbf{y}}_f = \lambda\hat{\mathbf{y}}_w + (1-\lambda)\hat{\mathbf{y}}_r`
    (``com_sco=False``: :math:`\hat{\mathbf{y}}_f = \hat{\mathbf{y}}_w`),
    :math:`\mathcal{L} = \mathcal{L}_{ML}(\hat{\mathbf{y}}_f) + \beta\,\mathcal{L}_{KL}`
    with the KL term returned as ``aux_losses["kl"]`` (already times :math:`\beta` =
    ``kl_weight``, 1 in Eq. 12): per image the mean over its ROIs (Eq. 14), averaged over
    the images like :math:`\mathcal{L}_{ML}`. Its gradient trains the variational maps,
    not the ROI features (``kl_feature_grad=False``, see
    :class:`~pyg_mlic.nn.VariationalROIWeighting`).
    With partial labels :math:`\mathcal{L}_{ML}` averages over the known entries only
    (``mask``); :math:`\mathcal{L}_{KL}` involves no label.

    ROIs are read only when a switch needs them (``id_lcm`` or ``com_sco``); with all
    three switches off the model is ML-GCN (Table 3's "Base").

    Args:
        classes (list[str]): class names.
        input_kind (str): ``"image"`` or ``"features"`` (feature datasets need ROIs in the
            batch: wrap them with :class:`~pyg_mlic.detection.RegionDataset`).
        backbone (str): image backbone. (default: :obj:`"resnet101"`)
        train_labels, train_label_mask, label_graph, tau, p, scheme, convention: the
            statistical graph :math:`\mathbf{A}_S` (see :class:`~pyg_mlic.models.ml_gcn.MLGCN`;
            unknown entries of ``train_label_mask`` are left out of the statistics).
        label_embeddings: ``[C, d]`` tensor, an embeddings spec, or ``None`` (one-hot).
        gcn_hidden (list[int]): hidden widths of the label GCN; the last layer has the
            image feature size :math:`D`. (default: ``[D // 4, D // 2]``, the paper's
            512, 1024 at :math:`D = 2048`, Sec. 4.3; :func:`default_gcn_hidden`)
        region_hidden (list[int]): widths of the region GCN. (default:
            ``[D // 8, D // 4, D // 2, D]``, the paper's 256, 512, 1024, 2048 at
            :math:`D = 2048`; :func:`default_region_hidden`)
        region_conv (str): ``"label_nodes"``, ``"roi_graph"`` or ``"label_axis"`` (readings
            of Eq. 10). (default: :obj:`"label_nodes"`)
        score_hidden (list[int]): hidden widths of :math:`f_{CNN}`. (default: :obj:`()`: one
            linear map :math:`D_r \to C`, no width to scale)
        negative_slope (float): slope of the activations (0 = ReLU, the paper's).
        fusion_weight (float): :math:`\lambda \in [0, 1]` of Eq. 11. (default: :obj:`0.8`)
        kl_weight (float): :math:`\beta \ge 0`. (default: :obj:`1.0`, Eq. 12)
        kl_feature_grad (bool): let the KL term's gradient reach the ROI features (with
            ``rois="boxes"``: the shared backbone). (default: :obj:`False`)
        id_lcm, var_inf, com_sco (bool): the modules of Tables 3–4 (default: all on).
        rois (str): ROI source of :func:`~pyg_mlic.models.regions.read_regions`:
            ``"auto"``, ``"batch"`` (a RegionDataset) or ``"boxes"`` (RoIAlign of the
            dataset's boxes on the backbone map). (default: :obj:`"auto"`)
        max_instances (int): :math:`N`, ROIs per image. (default: :obj:`40`)
        roi_output_size (int): RoIAlign size for ``rois="boxes"``. (default: :obj:`7`)
        roi_in_features (int, optional): :math:`D_r`; default: ``roi_feature_dim`` (set by
            the CLI from the RegionDataset), else the backbone's channels.
        bias (bool): a learnable per-class bias on :math:`\hat{\mathbf{y}}_w` (as
            ML-GCN's option). (default: :obj:`False`)

    Shapes:
        - **input:** batch with ``image`` :math:`(B, 3, H, W)` (+ ``boxes`` or ``roi_*``)
          or ``features`` :math:`(B, F)` + ``roi_*``
        - **output:** :class:`ModelOutput` with ``logits`` :math:`(B, C)`
    """

    #: it reads detector regions (no mixup: see MultiLabelModel.reads_regions)
    reads_regions = True
    #: Sec. 4.3: SGD (momentum 0.9, weight decay 1e-4), lr 0.001 for ResNet-101 and 0.01
    #: for the rest, divided by 10 every 30 epochs, 120 epochs.
    default_train_config = dict(optimizer="sgd", lr=0.01, backbone_lr=0.001, momentum=0.9,
                                weight_decay=1e-4, lr_step=30, lr_gamma=0.1, epochs=120)

    def __init__(self, classes: Sequence[str], input_kind: str = "image",
                 backbone: str = "resnet101", backbone_weights: Optional[str] = None,
                 pool: str = "max", in_features: Optional[int] = None,
                 train_labels: Any = None, label_graph: Any = None, label_embeddings: Any = None,
                 tau: float = 0.4, p: float = 0.2, scheme: str = "reweighted",
                 convention: str = "paper", gcn_hidden: Optional[Sequence[int]] = None,
                 region_hidden: Optional[Sequence[int]] = None,
                 region_conv: str = "label_nodes", score_hidden: Sequence[int] = (),
                 negative_slope: float = 0.0, fusion_weight: float = 0.8,
                 kl_weight: float = 1.0, kl_feature_grad: bool = False, id_lcm: bool = True,
                 var_inf: bool = True, com_sco: bool = True, rois: str = "auto",
                 max_instances: int = 40, roi_output_size: int = 7,
                 roi_in_features: Optional[int] = None, roi_feature_dim: Optional[int] = None,
                 bias: bool = False,
                 encoder_hidden: Sequence[int] = (512,), encoder_out: int = 512,
                 graph_edge_index: Optional[Tensor] = None,
                 graph_edge_weight: Optional[Tensor] = None, train_label_mask: Any = None):
        super().__init__(classes)
        name = "ia_gcn"
        for opt, val in (("fusion_weight", fusion_weight), ("kl_weight", kl_weight)):
            if isinstance(val, bool) or not isinstance(val, (int, float)) \
                    or not math.isfinite(val) or val < 0:
                raise ValueError(f"{name}: {opt} must be a finite number >= 0, got {val!r}")
        if fusion_weight > 1:
            raise ValueError(f"{name}: fusion_weight (lambda of Eq. 11) must be in [0, 1], "
                             f"got {fusion_weight!r}")
        if region_conv not in REGION_CONVS:
            raise ValueError(f"{name}: region_conv must be one of {list(REGION_CONVS)}, got "
                             f"{region_conv!r}")
        if rois not in SOURCES:
            raise ValueError(f"{name}: rois must be one of {list(SOURCES)}, got {rois!r}")
        if int(max_instances) < 1:
            raise ValueError(f"{name}: max_instances must be >= 1, got {max_instances!r}")
        if input_kind == "features" and rois == "boxes":
            raise ValueError(f"{name}: rois='boxes' pools ROIs from the backbone's feature map "
                             "and needs input_kind='image'; feature datasets need ROIs from "
                             "pyg_mlic.detection.RegionDataset (rois='batch' or 'auto')")
        self.id_lcm, self.var_inf, self.com_sco = bool(id_lcm), bool(var_inf), bool(com_sco)
        self.fusion_weight, self.kl_weight = float(fusion_weight), float(kl_weight)
        self.rois, self.max_instances = rois, int(max_instances)
        self.roi_output_size, self.region_conv = int(roi_output_size), region_conv
        self.encoder = build_encoder(input_kind, backbone=backbone,
                                     backbone_weights=backbone_weights, pool=pool,
                                     in_features=in_features, encoder_hidden=encoder_hidden,
                                     encoder_out=encoder_out)
        ei, ew = resolve_label_graph(self.classes, label_graph=label_graph,
                                     train_labels=train_labels, graph_edge_index=graph_edge_index,
                                     graph_edge_weight=graph_edge_weight, tau=tau, p=p,
                                     scheme=scheme, convention=convention,
                                     train_label_mask=train_label_mask)
        if (ew < 0).any() or not torch.isfinite(ew).all():
            raise ValueError(f"{name}: the statistical label graph A_S must have finite, "
                             "non-negative edge weights (A_F = A_S * a a^T is normalised by "
                             "its degrees)")
        E = resolve_label_embeddings(self.classes, label_embeddings)
        self.register_buffer("edge_index", ei, persistent=True)
        self.register_buffer("edge_weight", ew, persistent=True)
        self.register_buffer("label_embeddings", E, persistent=True)
        C, D = self.num_classes, self.encoder.out_channels
        if gcn_hidden is None:
            gcn_hidden = default_gcn_hidden(D)
        if region_hidden is None:
            region_hidden = default_region_hidden(D)
        self.act = nn.LeakyReLU(float(negative_slope)) if negative_slope else nn.ReLU()
        dims = [E.size(1), *[int(h) for h in gcn_hidden], D]
        self.gcn = nn.ModuleList(InstanceAwareLabelConv(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.bias = nn.Parameter(torch.zeros(C)) if bias else None

        self.uses_rois = self.id_lcm or self.com_sco
        self.roi_in_features: Optional[int] = None
        if self.uses_rois:
            dr = roi_in_features
            if dr is None and rois != "boxes":
                dr = roi_feature_dim          # the RegionDataset's (passed by the CLI)
            self.roi_in_features = region_feature_dim(self.encoder, rois, dr)
            self.var = (VariationalROIWeighting(self.roi_in_features,
                                                kl_input_grad=bool(kl_feature_grad))
                        if self.var_inf else None)
            sdims = [self.roi_in_features, *[int(h) for h in score_hidden]]
            layers: List[nn.Module] = []
            for a, b in zip(sdims[:-1], sdims[1:]):
                layers += [nn.Linear(a, b), nn.ReLU()]
            layers.append(nn.Linear(sdims[-1], C))
            self.f_cnn = nn.Sequential(*layers)              # rough ROI scores, Eq. 2
        if self.com_sco:
            if region_conv == "label_nodes":
                # the label nodes' features are the columns of A^w_I: N ROI slots
                rdims = [self.max_instances, *[int(h) for h in region_hidden]]
                self.region_layers = nn.ModuleList(
                    InstanceAwareLabelConv(a, b) for a, b in zip(rdims[:-1], rdims[1:]))
                self.region_fc = nn.Linear(rdims[-1], 1, bias=False)  # f_FC, per label node
                self.region_bias = nn.Parameter(torch.zeros(C))
            else:
                rdims = [C, *[int(h) for h in region_hidden]]
                self.region_layers = nn.ModuleList(nn.Linear(a, b, bias=False)
                                                   for a, b in zip(rdims[:-1], rdims[1:]))
                self.region_fc = nn.Linear(rdims[-1], C)          # f_FC of Eq. 10
        self.reset_region_parameters()
        self.record_resolved(
            gcn_hidden=[int(h) for h in gcn_hidden], region_hidden=[int(h) for h in region_hidden],
            score_hidden=[int(h) for h in score_hidden], negative_slope=float(negative_slope),
            fusion_weight=self.fusion_weight, kl_weight=self.kl_weight, id_lcm=self.id_lcm,
            var_inf=self.var_inf, com_sco=self.com_sco, max_instances=self.max_instances,
            roi_output_size=self.roi_output_size, roi_in_features=self.roi_in_features,
            encoder_hidden=[int(h) for h in encoder_hidden], encoder_out=int(encoder_out),
            graph_edge_index=ei, graph_edge_weight=ew, label_embeddings=E)

    def reset_region_parameters(self) -> None:
        r"""He (Kaiming) initialisation of the region GCN's linear maps (fan-in, gain
        :math:`\sqrt{2}` for the ReLU between them).

        The region GCN stacks four bias-free layers with ReLUs. With ``nn.Linear``'s default
        initialisation (variance :math:`1/(3 F_{in})`) every layer divides the variance of
        the signal by about 6 (by 3 from the weights, by 2 from the ReLU), so that four layers
        made :math:`\hat{\mathbf{y}}_r` constant at initialisation (its spread over images
        was :math:`2\cdot 10^{-4}`, measured with ``roi_graph`` at the demo's widths) and :math:`f_{CNN}`
        received no useful gradient from the region branch. He initialisation keeps the
        variance through the ReLUs."""
        if not self.com_sco:
            return
        for layer in self.region_layers:
            w = layer.lin.weight if isinstance(layer, InstanceAwareLabelConv) else layer.weight
            nn.init.kaiming_uniform_(w, nonlinearity="relu")

    # ------------------------------------------------------------------ pieces
    def _adjacency(self, dtype: torch.dtype) -> Tensor:
        r""":math:`\mathbf{A}_S` as PyG's sparse ``adj_t`` (shared by every propagation of a
        forward pass)."""
        return label_adjacency_csr(self.edge_index, self.edge_weight.to(dtype), self.num_classes)

    def propagate_af(self, h: Tensor, scaling: Tensor, adj: Optional[Tensor] = None) -> Tensor:
        r""":math:`\hat{\mathbf{A}}_F^{(b)}\mathbf{h}_b` for per-image signals ``h``
        ``[B, C, F]`` and node scalings ``[B, C]``: the propagation of the label GCN
        (:meth:`~pyg_mlic.nn.InstanceAwareLabelConv.propagate` over ``adj_t``, no weights)."""
        if adj is None:
            adj = self._adjacency(h.dtype)
        return self.gcn[0].propagate(adj, x=h, edge_weight=None, s=scaling.unsqueeze(-1))

    def classifiers(self, scaling: Optional[Tensor] = None,
                    adj: Optional[Tensor] = None) -> Tensor:
        r"""The classifiers :math:`\mathbf{M}`: ``[B, C, D]`` per image for node scalings
        ``[B, C]`` (:func:`~pyg_mlic.nn.instance_aware_label_conv.instance_aware_scaling`),
        ``[C, D]`` over :math:`\mathbf{A}_S` when ``scaling`` is ``None``."""
        h = self.label_embeddings
        if adj is None:
            adj = self._adjacency(h.dtype)
        for i, conv in enumerate(self.gcn):
            h = conv(h, adj, scaling=scaling)
            if i < len(self.gcn) - 1:
                h = self.act(h)
        return h

    def global_logits(self, x: Tensor, scaling: Tensor, adj: Optional[Tensor] = None) -> Tensor:
        r""":math:`\hat{\mathbf{y}}_w = \mathbf{M}_b\mathbf{x}_b` (Eq. 6) for image features
        ``x`` ``[B, D]`` and node scalings ``[B, C]``, without building the ``[B, C, D]``
        classifiers: the last layer is linear, so by associativity

        .. math::
            \mathbf{M}_b\mathbf{x}_b = \hat{\mathbf{A}}_F^{(b)}\,\mathbf{H}_b\,
            (\mathbf{W}_L \mathbf{x}_b)

        costs :math:`O(C F)` per image instead of the :math:`O(C F D)` of
        :math:`\mathbf{H}_b\mathbf{W}_L` (the largest product of the head): the last
        layer's propagation runs on the ``[B, C, 1]`` signal
        :math:`\mathbf{H}_b \mathbf{W}_L \mathbf{x}_b`. Equal to
        ``einsum("bcd,bd->bc", classifiers(scaling), x)``."""
        if adj is None:
            adj = self._adjacency(x.dtype)
        h = self.label_embeddings
        for conv in self.gcn[:-1]:
            h = self.act(conv(h, adj, scaling=scaling))
        last = self.gcn[-1]
        v = x @ last.lin.weight                                  # W_L x_b   [B, F]
        u = v @ h.t() if h.dim() == 2 else torch.einsum("bcf,bf->bc", h, v)
        return self.propagate_af(u.unsqueeze(-1), scaling, adj).squeeze(-1)  # (no bias)

    def _read(self, batch: Batch) -> RegionBatch:
        r = read_regions(self.encoder, batch, source=self.rois,
                         max_instances=self.max_instances, output_size=self.roi_output_size)
        if r.feature_dim != self.roi_in_features:
            raise ValueError(f"ia_gcn: ROI features have {r.feature_dim} channels but the model "
                             f"was built for {self.roi_in_features}; build it with "
                             f"roi_in_features={r.feature_dim} (the region backend's "
                             "feature_dim)")
        return r

    def _region_scores(self, S: Tensor, mask: Tensor, s: Tensor, adj: Tensor) -> Tensor:
        r""":math:`\hat{\mathbf{y}}_r` from ROI scores ``S`` ``[B, K, C]`` (padding rows 0) and
        the node scalings ``s`` ``[B, C]`` of :math:`\hat{\mathbf{A}}_F`."""
        if self.region_conv == "label_nodes":
            # labels are the nodes, H^(0) = S_b^T [C, N] (ROI slots padded to N), and every
            # layer is Â_F H W: Eq. 10's product Â_F (A^w_I)^T W_I as printed
            h = S.transpose(1, 2)
            if h.size(-1) < self.max_instances:
                h = nn.functional.pad(h, (0, self.max_instances - h.size(-1)))
            for conv in self.region_layers:
                h = self.act(conv(h, adj, scaling=s))
            return self.region_fc(h).squeeze(-1) + self.region_bias
        # Â_F S_b^T: the label graph applied to every ROI's score vector, [B, C, K]
        Q = self.propagate_af(S.transpose(1, 2), s, adj)
        if self.region_conv == "label_axis":
            # S Â_F^T: Â_F on each ROI's label axis
            h = self.act(self.region_layers[0](Q.transpose(1, 2)))
            for lin in self.region_layers[1:]:
                h = self.act(lin(h))
        else:
            A_R = torch.bmm(S, Q)                                  # S Â_F S^T  [B, K, K]
            A_R = A_R * (mask[:, :, None] & mask[:, None, :])
            d = A_R.sum(2)
            inv = torch.where(d > 1e-12, d.clamp_min(1e-12).rsqrt(), torch.zeros_like(d))
            A_R = inv[:, :, None] * A_R * inv[:, None, :]
            h = S
            for lin in self.region_layers:
                h = self.act(torch.bmm(A_R, lin(h)))
        h = h * mask[..., None]
        return self.region_fc(_masked_max(h, mask))

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> ModelOutput:
        extras: Dict[str, Any] = {}
        aux: Dict[str, Tensor] = {}
        if not self.uses_rois:                                    # Table 3's "Base"
            x = self.encode(batch)
            logits = x @ self.classifiers().t()
            if self.bias is not None:
                logits = logits + self.bias
            return ModelOutput(logits, extras={"features": x})
        r = self._read(batch)
        x, X, mask = r.image_features, r.features.to(r.image_features.dtype), r.mask
        if self.var is not None:
            v = self.var(X, mask)
            X = v.x
            extras["roi_weights"] = v.z
            extras["kl"] = v.kl
            if self.kl_weight > 0:
                aux[AUX_LOSS_NAME] = self.kl_weight * v.kl
        S = torch.sigmoid(self.f_cnn(X)) * mask[..., None]       # A^w_I, Eq. 2  [B, K, C]
        a = S.max(1).values if S.size(1) else S.new_zeros(S.size(0), self.num_classes)  # Eq. 3
        adj = self._adjacency(x.dtype)
        if self.id_lcm:
            s = instance_aware_scaling(a, adj)
            y_w = self.global_logits(x, s, adj)                   # Eq. 6, M_b x_b
        else:
            s = instance_aware_scaling(torch.ones_like(a), adj)
            y_w = x @ self.classifiers(None, adj).t()
        if self.bias is not None:
            y_w = y_w + self.bias
        logits = y_w
        if self.com_sco:
            y_r = self._region_scores(S, mask, s, adj)
            logits = self.fusion_weight * y_w + (1.0 - self.fusion_weight) * y_r  # Eq. 11
            extras["region_logits"] = y_r
        extras.update(features=x, global_logits=y_w, image_scores=a, roi_scores=S,
                      roi_mask=mask)
        return ModelOutput(logits, aux_losses=aux, extras=extras)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, id_lcm={self.id_lcm}, "
                f"var_inf={self.var_inf}, com_sco={self.com_sco}, rois={self.rois!r}, "
                f"max_instances={self.max_instances}, region_conv={self.region_conv!r}, "
                f"fusion_weight={self.fusion_weight}")


register_demo_row("ia_gcn", "ia_gcn")

#: Table 3 of the paper, cumulative: "Base" is ML-GCN (here with IA-GCN's label GCN), then
#: the modules are switched on one after the other
_TABLE = "IA-GCN modules (Table 3)"
register_ablation(_TABLE, "Base", "ia_gcn", id_lcm=False, var_inf=False, com_sco=False)
register_ablation(_TABLE, "Base+ID_LCM", "ia_gcn", var_inf=False, com_sco=False)
register_ablation(_TABLE, "Base+ID_LCM+Var_Inf", "ia_gcn", com_sco=False)
register_ablation(_TABLE, "Base+ID_LCM+Var_Inf+Com_Sco", "ia_gcn")

#: the readings of Eq. 10 (the region branch; all modules on)
_EQ10 = "IA-GCN region branch, readings of Eq. 10"
register_ablation(_EQ10, "labels as nodes (label_nodes, default)", "ia_gcn",
                  region_conv="label_nodes")
register_ablation(_EQ10, "regions as nodes (roi_graph)", "ia_gcn", region_conv="roi_graph")
register_ablation(_EQ10, "label axis, then per ROI (label_axis)", "ia_gcn",
                  region_conv="label_axis")
