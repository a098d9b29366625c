r"""IML-GCN (Singh et al., *IML-GCN: Improved Multi-Label Graph Convolutional Network for
Efficient yet Precise Image Classification*, AAAI-W 2022) and the ASL (TResNet) baseline.

IML-GCN = a direct network (TResNet-M + global average pooling, :math:`d = 2048`) whose
image feature is classified by :math:`C` classifiers that ML-GCN's label GCN generates
from **image-feature label embeddings** (Eqs. 5-6, see
:mod:`pyg_mlic.embeddings.image_features`) over ML-GCN's re-weighted correlation graph
(:math:`\tau = 0.1`), trained with the Asymmetric Loss (:func:`pyg_mlic.losses.asymmetric_loss`).

The embeddings need a trained encoder, so the method is a two-stage recipe
(:func:`pyg_mlic.engine.two_stage.run_two_stage`, ``pyg-mlic train --model iml_gcn``):

1. train the backbone with a linear head (model ``asl`` here: TResNet-M, GAP, ASL — the
   "ASL (TResNetM)" row of Table 1);
2. embed the labels with the stage-1 encoder, build ``iml_gcn`` with those embeddings,
   initialise its encoder with the stage-1 weights and train it.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from pyg_mlic.losses import asymmetric_loss
from pyg_mlic.models.baseline import Baseline
from pyg_mlic.models.ml_gcn import MLGCN
from pyg_mlic.models.registry import register_ablation, register_demo_row, register_model

#: the paper's training recipe (Implementation details): Adam, lr 1e-3, weight decay 5e-4,
#: multi-step decay x0.1 at epochs 10, 20, 30, 40 epochs. One learning rate for all
#: parameters (the paper gives no separate backbone rate).
IML_GCN_TRAIN_CONFIG = dict(optimizer="adam", lr=1e-3, backbone_lr=None, weight_decay=5e-4,
                            lr_step=None, lr_milestones=[10, 20, 30], lr_gamma=0.1, epochs=40)


#: valid values of the ``asl_reduction`` option
ASL_REDUCTIONS = ("sum", "mean")


class _ASLMixin:
    """Classification loss = ASL with the model's ``asl_*`` options."""

    asl_gamma_pos: float
    asl_gamma_neg: float
    asl_clip: float
    asl_disable_focal_grad: bool
    asl_reduction: str

    def _init_asl(self, gamma_pos: float, gamma_neg: float, clip: float,
                  disable_focal_grad: bool, reduction: str) -> None:
        if reduction not in ASL_REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: asl_reduction must be one of "
                             f"{list(ASL_REDUCTIONS)}, got {reduction!r}")
        # validates the options (ValueError naming the bad one)
        asymmetric_loss(torch.zeros(1, 1), torch.zeros(1, 1), gamma_pos, gamma_neg, clip)
        self.asl_gamma_pos, self.asl_gamma_neg = float(gamma_pos), float(gamma_neg)
        self.asl_clip, self.asl_disable_focal_grad = float(clip), bool(disable_focal_grad)
        self.asl_reduction = reduction
        self.record_resolved(asl_gamma_pos=self.asl_gamma_pos, asl_gamma_neg=self.asl_gamma_neg,
                             asl_clip=self.asl_clip,
                             asl_disable_focal_grad=self.asl_disable_focal_grad,
                             asl_reduction=self.asl_reduction)

    def classification_loss(self, logits: Tensor, target: Tensor,
                            mask: Optional[Tensor] = None) -> Tensor:
        r"""Asymmetric Loss (Ridnik et al., ICCV 2021),
        :math:`-y(1-p)^{\gamma_+}\log p - (1-y)p_m^{\gamma_-}\log(1-p_m)`,
        :math:`p_m = \max(p - m, 0)`, **summed** over the unmasked entries of the batch
        (``asl_reduction="sum"``, the official code's) or averaged over them
        (``"mean"`` = the sum / :math:`B C`). With the recipe's Adam and its coupled
        ``weight_decay`` the choice sets how strongly the decay weighs against the data:
        ``"mean"`` makes it :math:`B C` times stronger (see
        :func:`pyg_mlic.losses.asymmetric_loss`)."""
        return asymmetric_loss(logits, target, self.asl_gamma_pos, self.asl_gamma_neg,
                               self.asl_clip, mask=mask,
                               disable_focal_grad=self.asl_disable_focal_grad,
                               reduction=self.asl_reduction)


@register_model("asl")
class ASLBaseline(_ASLMixin, Baseline):
    r"""ASL baseline (Ridnik et al., ICCV 2021): backbone, global average pooling, a linear
    classifier, trained with the Asymmetric Loss. The "ASL (TResNetM)" row of IML-GCN's
    Tables 1-2 and the stage 1 of the IML-GCN recipe.

    .. math::
        \hat{y} = W\, f_{GAP}(f_{cnn}(I)) + b

    Args:
        classes (list[str]): class names.
        backbone (str): (default: :obj:`"tresnet_m"`, needs timm)
        pool (str): (default: :obj:`"avg"`, :math:`f_{GAP}`)
        asl_gamma_pos, asl_gamma_neg, asl_clip (float): ASL's :math:`\gamma_+`,
            :math:`\gamma_-`, margin :math:`m`. (default: 0, 4, 0.05)
        asl_disable_focal_grad (bool): no gradient through the focusing weights.
        asl_reduction (str): ``"sum"`` over the batch and classes (the official ASL
            code's; the recipe's Adam weight decay is tuned with it) or ``"mean"`` (makes
            the coupled weight decay :math:`B C` times stronger). (default: ``"sum"``)
        **kwargs: see :class:`~pyg_mlic.models.baseline.Baseline`.
    """

    default_train_config = dict(IML_GCN_TRAIN_CONFIG)
    #: "the same RandAugment technique as the baseline (ASL)": torchvision's RandAugment (2
    #: ops, magnitude 9) in the training transform; read by
    #: pyg_mlic.data.factory.resolve_data_config on real datasets
    default_data_config = dict(randaugment=dict(num_ops=2, magnitude=9))

    def __init__(self, classes: Sequence[str], input_kind: str = "image",
                 backbone: str = "tresnet_m", pool: str = "avg", asl_gamma_pos: float = 0.0,
                 asl_gamma_neg: float = 4.0, asl_clip: float = 0.05,
                 asl_disable_focal_grad: bool = True, asl_reduction: str = "sum",
                 **kwargs: Any):
        super().__init__(classes, input_kind=input_kind, backbone=backbone, pool=pool, **kwargs)
        self._init_asl(asl_gamma_pos, asl_gamma_neg, asl_clip, asl_disable_focal_grad,
                       asl_reduction)


@register_model("iml_gcn")
class IMLGCN(_ASLMixin, MLGCN):
    r"""IML-GCN: TResNet-M + GAP, classifiers from ML-GCN's label GCN over image-feature
    label embeddings, Asymmetric Loss (Singh et al., Fig. 2, Eqs. 1-6).

    .. math::
        \mathbf{x} = f_{GAP}(f_{\text{TResNet-M}}(I)) \in \mathbb{R}^{2048},\qquad
        \mathbf{W} = \mathrm{GCN}(\mathbf{F}_{PCA}, \hat{\mathbf{A}}') \in
            \mathbb{R}^{C \times 2048},\qquad
        \hat{\mathbf{y}} = \mathbf{W}\mathbf{x}

    where :math:`\hat{\mathbf{A}}'` is ML-GCN's re-weighted correlation matrix
    (Eqs. 3-4, :math:`\tau = 0.1`, :math:`p = 0.2`) and :math:`\mathbf{F}_{PCA}`
    (:math:`C \times n`, Eq. 6) or :math:`\mathbf{F}_I` (:math:`C \times d`, Eq. 5) the
    image-feature embeddings. The GCN is ML-GCN's (:class:`~pyg_mlic.models.ml_gcn.MLGCN`
    is reused as is: two layers, :math:`d_{in} \to 1024 \to 2048`, LeakyReLU 0.2).

    Build it through the two-stage recipe
    (:func:`pyg_mlic.engine.two_stage.run_two_stage`), which computes the embeddings
    with the stage-1 encoder and initialises this model's encoder with it; or pass the
    ``[C, n]`` tensor yourself (``label_embeddings=``).

    Args:
        classes (list[str]): class names.
        input_kind (str): ``"image"`` or ``"features"`` (an MLP encoder).
        backbone (str): (default: :obj:`"tresnet_m"`; any registered backbone works)
        pool (str): (default: :obj:`"avg"`, the paper's :math:`F_{GAP}`)
        label_embeddings: ``[C, d]`` image-feature embeddings (a tensor), or a spec /
            tensor of other embeddings for the ablation (Table 3: word embeddings).
            :obj:`None` falls back to one-hot with a warning.
        tau (float): correlation threshold (Eq. 3). (default: :obj:`0.1`)
        p (float): re-weighting (Eq. 4). (default: :obj:`0.2`, ML-GCN's)
        asl_gamma_pos, asl_gamma_neg, asl_clip (float): ASL options. (default: 0, 4, 0.05)
        asl_disable_focal_grad (bool): no gradient through ASL's focusing weights.
        asl_reduction (str): ``"sum"`` (default, the official ASL code's) or ``"mean"``;
            see :class:`ASLBaseline`.
        **kwargs: every other :class:`~pyg_mlic.models.ml_gcn.MLGCN` option
            (``gcn_hidden``, ``scheme``, ``convention``, ``conv`` ...).

    Shapes:
        - **input:** batch with ``image`` :math:`(B, 3, H, W)` or ``features``
          :math:`(B, F)`
        - **output:** :class:`~pyg_mlic.models.ModelOutput` with ``logits`` :math:`(B, C)`
    """

    default_train_config = dict(IML_GCN_TRAIN_CONFIG)
    #: "the same RandAugment technique as the baseline (ASL)": torchvision's RandAugment (2
    #: ops, magnitude 9) in the training transform; read by
    #: pyg_mlic.data.factory.resolve_data_config on real datasets
    default_data_config = dict(randaugment=dict(num_ops=2, magnitude=9))
    #: the CLI and the demo train this model with the two-stage recipe
    two_stage = True

    def __init__(self, classes: Sequence[str], input_kind: str = "image",
                 backbone: str = "tresnet_m", pool: str = "avg", label_embeddings: Any = None,
                 tau: float = 0.1, p: float = 0.2, asl_gamma_pos: float = 0.0,
                 asl_gamma_neg: float = 4.0, asl_clip: float = 0.05,
                 asl_disable_focal_grad: bool = True, asl_reduction: str = "sum",
                 **kwargs: Any):
        if isinstance(label_embeddings, str) and \
                label_embeddings.strip().lower().startswith("image-features"):
            raise ValueError("iml_gcn: label_embeddings='image-features' needs the trained "
                             "stage-1 encoder; train with pyg_mlic.engine.two_stage.run_two_stage "
                             "(pyg-mlic train --model iml_gcn) or pass the [C, n] tensor from "
                             "pyg_mlic.embeddings.image_features.image_feature_embeddings")
        if label_embeddings is None:
            warnings.warn("iml_gcn built without label embeddings: using one-hot vectors, not "
                          "IML-GCN's image-feature embeddings (build it with "
                          "pyg_mlic.engine.two_stage.run_two_stage)", UserWarning, stacklevel=3)
        super().__init__(classes, input_kind=input_kind, backbone=backbone, pool=pool,
                         label_embeddings=label_embeddings, tau=tau, p=p, **kwargs)
        self._init_asl(asl_gamma_pos, asl_gamma_neg, asl_clip, asl_disable_focal_grad,
                       asl_reduction)

    @classmethod
    def paper_context(cls, classes: Sequence[str]) -> dict:
        """Context giving the paper's shapes without data (``pyg-mlic info``):
        :math:`\\mathbf{F}_{PCA}` with :math:`n = C` components."""
        return {"label_embeddings": torch.zeros(len(classes), len(classes))}


# The demo's row: the two-stage recipe at demo settings (small_cnn; the trained
# ``baseline`` row is reused as stage 1 when present, see pyg_mlic.demo).
register_demo_row("iml_gcn", "iml_gcn")

# Table 3 (impact of the GCN input features) on the synthetic scenes; every row starts
# from the same stage-1 encoder.
_TABLE = "IML-GCN input embeddings (Table 3)"
register_ablation(_TABLE, "one-hot", "iml_gcn", label_embeddings="onehot")
register_ablation(_TABLE, "image features F_I", "iml_gcn", label_embeddings="image-features",
                  pca=False)
register_ablation(_TABLE, "image features + PCA F_PCA", "iml_gcn",
                  label_embeddings="image-features", pca=True)
