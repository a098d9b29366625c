r"""Multi-label classification losses beyond plain binary cross-entropy.

* :func:`asymmetric_loss` / :class:`AsymmetricLoss` — the Asymmetric Loss (ASL) of
  Ridnik et al., *Asymmetric Loss For Multi-Label Classification*, ICCV 2021, used by
  IML-GCN (Singh et al.) as its classification loss.
* :func:`class_weighted_bce` / :class:`ClassWeightedBCE` — the class-balanced
  cross-entropy of GM-MLIC (Wu et al., IJCAI 2021, Eq. 15), with
  :func:`positive_ratio` to measure the per-label ratios :math:`r^c` on a training split.

All losses take **logits** (before the sigmoid), work in fp32 whatever the input
dtype and accept a boolean ``mask`` ``[B, C]`` (``False`` = ignore the entry, e.g. VOC
"difficult" or a label unknown in the partial-label setting, ``--drop-labels``: the
entry's target value changes neither the loss nor its gradient). ``reduction="mean"`` averages over the unmasked entries exactly like
:meth:`pyg_mlic.models.base.MultiLabelModel.classification_loss`; ``"sum"`` adds them.

Reductions are not interchangeable under *coupled* weight decay (``torch.optim.Adam`` /
``SGD`` ``weight_decay`` adds :math:`\lambda w` to the gradient): dividing a summed loss
by the :math:`B C` entries of a batch divides the data gradient, not the decay term, so
it makes :math:`\lambda` :math:`B C` times stronger relative to the data (2560x on COCO
with batch 32). Adam's step is otherwise invariant to a constant scale of the whole
loss, so there the reduction acts through the decay (and Adam's :math:`\epsilon`) and
through the balance with any other loss term added to it. Each loss
keeps the reduction of its reference: ASL **sums** (the official code,
``-self.loss.sum()``); GM-MLIC's class-weighted BCE averages, like the rest of pyg_mlic.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "asymmetric_loss",
    "AsymmetricLoss",
    "class_weighted_bce",
    "ClassWeightedBCE",
    "positive_ratio",
]

_REDUCTIONS = ("mean", "sum", "none")


def _check_pair(logits: Tensor, target: Tensor, mask: Optional[Tensor], who: str) -> None:
    if logits.shape != target.shape:
        raise ValueError(f"{who}: logits {tuple(logits.shape)} and target "
                         f"{tuple(target.shape)} must have the same shape")
    if mask is not None and mask.shape != logits.shape:
        raise ValueError(f"{who}: mask {tuple(mask.shape)} must have the shape of the "
                         f"logits {tuple(logits.shape)}")
    if target.numel() and (target.min() < 0 or target.max() > 1):
        raise ValueError(f"{who}: target values must lie in [0, 1], got range "
                         f"[{float(target.min())}, {float(target.max())}]")


def _reduce(loss: Tensor, mask: Optional[Tensor], reduction: str) -> Tensor:
    """Masked reduction: masked entries contribute 0 and are not counted in the mean."""
    if mask is not None:
        m = mask.to(loss.dtype)
        loss = loss * m
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    denom = m.sum().clamp_min(1.0) if mask is not None else max(loss.numel(), 1)
    return loss.sum() / denom


def _safe_pow(base: Tensor, gamma: float) -> Tensor:
    """``base ** gamma`` for ``base >= 0`` with a finite gradient at ``base == 0``.

    ``0 ** gamma`` has an infinite derivative for ``0 < gamma < 1``; multiplied by the
    zero derivative of a clamp it would give NaN. The double-``where`` keeps the value
    exact (0 at 0, 1 for ``gamma == 0``) and the gradient at 0 equal to 0.
    """
    if gamma == 0:
        return torch.ones_like(base)
    pos = base > 0
    safe = torch.where(pos, base, torch.ones_like(base))
    return torch.where(pos, safe.pow(gamma), torch.zeros_like(base))


def asymmetric_loss(logits: Tensor, target: Tensor, gamma_pos: float = 0.0,
                    gamma_neg: float = 4.0, clip: float = 0.05,
                    mask: Optional[Tensor] = None, disable_focal_grad: bool = True,
                    reduction: str = "sum") -> Tensor:
    r"""Asymmetric Loss (ASL, Ridnik et al., ICCV 2021, Eqs. 1-7 there).

    With :math:`p = \sigma(z)` the predicted probability of a label and the shifted
    probability of the negatives

    .. math::
        p_m = \max(p - m, 0)

    (the *probability margin* ``clip`` :math:`= m`, which discards easy negatives
    with :math:`p < m` entirely), the per-entry loss is

    .. math::
        \mathcal{L} = -y\,\mathcal{L}_+ - (1 - y)\,\mathcal{L}_-, \qquad
        \mathcal{L}_+ = (1 - p)^{\gamma_+} \log p, \qquad
        \mathcal{L}_- = p_m^{\gamma_-} \log(1 - p_m).

    With :math:`\gamma_+ = \gamma_- = 0` and :math:`m = 0` this is exactly binary
    cross-entropy. IML-GCN (Singh et al.) uses ASL with the authors' defaults
    :math:`\gamma_+ = 0, \gamma_- = 4, m = 0.05`.

    Numerics: :math:`\log p` and :math:`\log(1 - p)` are computed with
    ``logsigmoid`` (exact and finite for any logit); with a margin,
    :math:`\log(1 - p_m) = \log\min(1 - p + m, 1) \ge \log m`, so no log argument
    reaches 0 and the gradients stay finite at extreme logits.

    Args:
        logits (Tensor): ``[B, C]`` (any shape) scores before the sigmoid.
        target (Tensor): same shape, values in :math:`\{0, 1\}` (soft values in
            :math:`[0, 1]` are accepted and interpolate the two terms).
        gamma_pos (float): focusing exponent :math:`\gamma_+ \ge 0` of the positives.
        gamma_neg (float): focusing exponent :math:`\gamma_- \ge 0` of the negatives.
        clip (float): probability margin :math:`m \in [0, 1)` (``0`` disables it).
        mask (Tensor, optional): bool, same shape; ``False`` entries are ignored.
        disable_focal_grad (bool): compute the focusing weights
            :math:`(1-p)^{\gamma_+}` and :math:`p_m^{\gamma_-}` without gradient (as the
            official implementation does by default), so they only re-weight the
            log-likelihood terms. (default: :obj:`True`)
        reduction (str): ``"sum"`` over the unmasked entries (the official code),
            ``"mean"`` over them, or ``"none"`` (per entry, masked entries set to 0).
            (default: ``"sum"``)

    Returns:
        Tensor: a scalar (``"mean"``/``"sum"``) or the per-entry losses.

    .. note::
        The default ``"sum"`` is the official ASL code's reduction (it returns
        ``-self.loss.sum()`` over the batch and the classes), which the recipes that use
        ASL (ASL's and IML-GCN's: Adam with *coupled* weight decay) are tuned with.
        ``"mean"`` equals ``"sum"`` divided by the number :math:`B C` of unmasked
        entries. Under Adam that is **not** a mere change of learning rate: Adam
        normalises the gradient's scale away, but ``weight_decay`` :math:`\lambda` is
        added to the gradient *before* that normalisation, so with ``"mean"`` the decay
        weighs :math:`B C` times more against the data term (480x at batch 32 and
        :math:`C = 15`, 2560x on COCO). To train with ``"mean"`` and the same balance,
        divide ``weight_decay`` by :math:`B C`.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    for name, g in (("gamma_pos", gamma_pos), ("gamma_neg", gamma_neg)):
        if not (math.isfinite(float(g)) and float(g) >= 0):
            raise ValueError(f"asymmetric_loss: {name} must be a finite number >= 0, got {g!r}")
    if not (0.0 <= float(clip) < 1.0):
        raise ValueError(f"asymmetric_loss: clip (probability margin) must be in [0, 1), "
                         f"got {clip!r}")
    _check_pair(logits, target, mask, "asymmetric_loss")
    z = logits.float()
    y = target.float()
    gamma_pos, gamma_neg, clip = float(gamma_pos), float(gamma_neg), float(clip)

    log_p = F.logsigmoid(z)                 # log p
    one_minus_p = torch.sigmoid(-z)         # 1 - p, accurate for large z
    if clip > 0:
        one_minus_pm = (one_minus_p + clip).clamp(max=1.0)   # 1 - p_m = min(1 - p + m, 1)
        log_one_minus_pm = torch.log(one_minus_pm)           # >= log(m): finite
    else:
        one_minus_pm = one_minus_p
        log_one_minus_pm = F.logsigmoid(-z)                  # log(1 - p)

    ctx = torch.no_grad() if disable_focal_grad else torch.enable_grad()
    with ctx:
        w_pos = _safe_pow(one_minus_p, gamma_pos)                       # (1 - p)^g+
        w_neg = _safe_pow((1.0 - one_minus_pm).clamp_min(0.0), gamma_neg)  # p_m^g-
    loss = -(y * w_pos * log_p + (1.0 - y) * w_neg * log_one_minus_pm)
    return _reduce(loss, mask, reduction)


class AsymmetricLoss(nn.Module):
    r"""Module form of :func:`asymmetric_loss` (Ridnik et al., ICCV 2021).

    .. math::
        \mathcal{L} = -y\,(1 - p)^{\gamma_+} \log p
                      - (1 - y)\,p_m^{\gamma_-} \log(1 - p_m),
        \qquad p_m = \max(p - m, 0)

    Args:
        gamma_pos (float): :math:`\gamma_+`. (default: :obj:`0.0`)
        gamma_neg (float): :math:`\gamma_-`. (default: :obj:`4.0`)
        clip (float): margin :math:`m`. (default: :obj:`0.05`)
        disable_focal_grad (bool): no gradient through the focusing weights.
            (default: :obj:`True`)
        reduction (str): ``"sum"`` | ``"mean"`` | ``"none"``. (default: ``"sum"``, the
            official code's; see :func:`asymmetric_loss` on why it matters with coupled
            weight decay)

    Shapes:
        - **input:** logits :math:`(B, C)`, target :math:`(B, C)`, optional mask
          :math:`(B, C)`
        - **output:** scalar, or :math:`(B, C)` with ``reduction="none"``
    """

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05,
                 disable_focal_grad: bool = True, reduction: str = "sum"):
        super().__init__()
        # validate once at construction (same rules as the function)
        asymmetric_loss(torch.zeros(1, 1), torch.zeros(1, 1), gamma_pos, gamma_neg, clip,
                        reduction=reduction)
        self.gamma_pos = float(gamma_pos)
        self.gamma_neg = float(gamma_neg)
        self.clip = float(clip)
        self.disable_focal_grad = bool(disable_focal_grad)
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return asymmetric_loss(logits, target, self.gamma_pos, self.gamma_neg, self.clip,
                               mask=mask, disable_focal_grad=self.disable_focal_grad,
                               reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, clip={self.clip}, "
                f"reduction={self.reduction!r}")


def _as_ratio(pos_ratio: Union[Tensor, Sequence[float]], num_classes: int) -> Tensor:
    r = torch.as_tensor(pos_ratio, dtype=torch.float32)
    if r.dim() != 1 or r.numel() != num_classes:
        raise ValueError(f"class_weighted_bce: pos_ratio must have shape [C] = [{num_classes}] "
                         f"(one ratio per label), got {tuple(r.shape)}")
    if not torch.isfinite(r).all() or r.min() < 0 or r.max() > 1:
        bad = [i for i, v in enumerate(r.tolist()) if not (0.0 <= v <= 1.0)]
        raise ValueError(f"class_weighted_bce: pos_ratio values must lie in [0, 1]; "
                         f"bad entries at label indices {bad[:10]}")
    return r


def class_weighted_bce(logits: Tensor, target: Tensor,
                       pos_ratio: Union[Tensor, Sequence[float]], beta: float = 0.4,
                       mask: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    r"""Class-balanced binary cross-entropy of GM-MLIC (Wu et al., IJCAI 2021, Eq. 15).

    .. math::
        \mathcal{L} = -\frac{1}{|\Omega|}\sum_{(i, c) \in \Omega} w_i^c
            \left[y_i^c \log p_i^c + (1 - y_i^c) \log(1 - p_i^c)\right],
        \qquad
        w_i^c = y_i^c\, e^{\beta (1 - r^c)} + (1 - y_i^c)\, e^{\beta r^c}

    where :math:`r^c` is the ratio of label :math:`c` in the training set (see
    :func:`positive_ratio`) and :math:`\Omega` the unmasked entries. Rare labels
    (small :math:`r^c`) get heavier positives and lighter negatives; :math:`\beta = 0`
    is plain BCE. The paper sets :math:`\beta = 0.4` on COCO / NUS-WIDE and 0 on VOC.
    (The paper writes a sum over the images and labels; we average, as ML-GCN's released
    code averages its BCE (``MultiLabelSoftMarginLoss``) under an SGD recipe like
    GM-MLIC's. The two differ by more than a rescaling: under SGD with coupled weight
    decay a sum multiplies the data gradient, hence the effective learning rate, by
    :math:`B C` and divides the decay's relative weight by :math:`B C`.)

    Args:
        logits (Tensor): ``[B, C]`` scores before the sigmoid (Eq. 14's max-pooled
            instance scores for GM-MLIC).
        target (Tensor): ``[B, C]`` in :math:`\{0, 1\}`.
        pos_ratio (Tensor or sequence): ``[C]`` values :math:`r^c \in [0, 1]`.
        beta (float): :math:`\beta \ge 0`. (default: :obj:`0.4`)
        mask (Tensor, optional): bool ``[B, C]``; ``False`` entries are ignored.
        reduction (str): ``"mean"`` (over unmasked entries), ``"sum"`` or ``"none"``.

    Returns:
        Tensor: scalar, or ``[B, C]`` with ``reduction="none"``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not (math.isfinite(float(beta)) and float(beta) >= 0):
        raise ValueError(f"class_weighted_bce: beta must be a finite number >= 0, got {beta!r}")
    _check_pair(logits, target, mask, "class_weighted_bce")
    if logits.dim() < 1:
        raise ValueError("class_weighted_bce: logits must have a class dimension [..., C]")
    r = _as_ratio(pos_ratio, logits.shape[-1]).to(logits.device)
    y = target.float()
    beta = float(beta)
    w = y * torch.exp(beta * (1.0 - r)) + (1.0 - y) * torch.exp(beta * r)
    bce = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
    return _reduce(w * bce, mask, reduction)


class ClassWeightedBCE(nn.Module):
    r"""Module form of :func:`class_weighted_bce` (GM-MLIC Eq. 15).

    Args:
        pos_ratio (Tensor or sequence): ``[C]`` label ratios :math:`r^c` of the training
            set (stored as a buffer, so it moves with the module and is checkpointed).
        beta (float): :math:`\beta \ge 0`. (default: :obj:`0.4`)
        reduction (str): ``"mean"`` | ``"sum"`` | ``"none"``.
    """

    def __init__(self, pos_ratio: Union[Tensor, Sequence[float]], beta: float = 0.4,
                 reduction: str = "mean"):
        super().__init__()
        r = torch.as_tensor(pos_ratio, dtype=torch.float32)
        _as_ratio(r, r.numel())
        class_weighted_bce(torch.zeros(1, r.numel()), torch.zeros(1, r.numel()), r, beta,
                           reduction=reduction)
        self.register_buffer("pos_ratio", r.clone())
        self.beta = float(beta)
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return class_weighted_bce(logits, target, self.pos_ratio, self.beta, mask=mask,
                                  reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"num_classes={self.pos_ratio.numel()}, beta={self.beta}"


def positive_ratio(targets: Union[Tensor, "object"], mask: Optional[Tensor] = None) -> Tensor:
    r"""Per-label ratio of positives :math:`r^c` on a (training) label matrix.

    .. math::
        r^c = \frac{\sum_i m_i^c\, y_i^c}{\sum_i m_i^c}

    Args:
        targets: ``[N, C]`` in :math:`\{0, 1\}` (tensor or numpy array).
        mask: optional bool ``[N, C]``; ``False`` entries are not counted.

    Returns:
        Tensor: float32 ``[C]`` in :math:`[0, 1]` (0 for a label with no counted entry).
    """
    y = torch.as_tensor(targets).float()
    if y.dim() != 2:
        raise ValueError(f"positive_ratio: targets must be [N, C], got shape {tuple(y.shape)}")
    m = torch.ones_like(y) if mask is None else torch.as_tensor(mask).to(y.dtype)
    if m.shape != y.shape:
        raise ValueError(f"positive_ratio: mask {tuple(m.shape)} must match targets "
                         f"{tuple(y.shape)}")
    return (y * m).sum(0) / m.sum(0).clamp_min(1.0)
