r"""Mixup of training batches (Zhang et al., *mixup: Beyond Empirical Risk Minimization*,
ICLR 2018), for multi-label targets and partial labels.

With ``TrainConfig(mixup=alpha)`` (``--mixup ALPHA``) every training batch of :math:`B`
samples is replaced by convex combinations of pairs of its samples:

.. math::
    \tilde{\mathbf{x}}_i = \lambda\,\mathbf{x}_i + (1 - \lambda)\,\mathbf{x}_{\pi(i)},
    \qquad
    \tilde{\mathbf{y}}_i = \lambda\,\mathbf{y}_i + (1 - \lambda)\,\mathbf{y}_{\pi(i)},
    \qquad
    \tilde{\mathbf{m}}_i = \mathbf{m}_i \wedge \mathbf{m}_{\pi(i)},

with one :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)` per batch and :math:`\pi` a
uniform random permutation of the batch. The multi-hot targets become soft targets in
:math:`[0, 1]`, which the binary cross-entropy of every model (ML-GCN Eq. 5) and the
asymmetric loss take as they are; a label entry unknown in either sample (partial labels,
mask ``False``) is unknown in the mix, so unknown entries stay out of every loss. A
label negative in both samples stays exactly 0 (unlike label smoothing, which moves
every negative of a rare class). Validation and test batches are never mixed.

The mixed input is the batch's ``"image"`` or ``"features"`` tensor. Per-sample regions
(``"boxes"``, ``"roi_*"``: ground-truth or detector boxes and ROI features) are left out
of the mixed batch: a blend of two images has no boxes of its own. The models that read
regions (IA-GCN, GM-MLIC: ``reads_regions``) are therefore refused with mixup, by
:func:`~pyg_mlic.engine.fit` and :class:`~pyg_mlic.engine.Trainer`, before training.

The random draws come from a generator seeded by ``(seed, epoch, rank)``
(:func:`mixup_generator`), not from the global random state: a run resumed at an epoch
boundary draws the same :math:`\lambda` and :math:`\pi` as an uninterrupted one, and
the data order and dropout are the same with and without mixup.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = ["MIXED_INPUTS", "check_mixup_alpha", "check_mixup_model", "is_region_key",
           "mixup_generator", "mixup_batch"]

#: the batch entries mixup blends (the model's input)
MIXED_INPUTS = ("image", "features")


def check_mixup_alpha(alpha: Any) -> float:
    """``alpha`` as a finite float >= 0 (0: no mixup), else a one-line :class:`ValueError`."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(alpha)) or float(alpha) < 0:
        raise ValueError(f"mixup must be the alpha > 0 of Beta(alpha, alpha), e.g. 0.4, or "
                         f"0 / None for no mixup; got {alpha!r}")
    return float(alpha)


def check_mixup_model(model: Any, mixup: Optional[float], name: Optional[str] = None) -> None:
    """Refuse mixup (an :class:`~pyg_mlic.errors.OptionError`, one line) for a model (class
    or instance) that reads detector regions (``reads_regions``)."""
    if mixup is not None and getattr(model, "reads_regions", False):
        from pyg_mlic.errors import OptionError

        name = name or getattr(model, "model_name", None) or getattr(model, "__name__", "?")
        raise OptionError(f"{name} reads detector regions of each image, which a mixup "
                          f"blend of two images does not have: train it without mixup")


def is_region_key(key: str) -> bool:
    """A per-sample region entry of a batch (``"boxes"``, ``"roi_*"``)."""
    return key == "boxes" or key.startswith("roi_")


def mixup_generator(seed: int, epoch: int, rank: int = 0) -> np.random.Generator:
    """The generator of one epoch's mixup draws on one process."""
    return np.random.default_rng([int(seed) % 2**32, int(epoch), int(rank)])


def mixup_batch(batch: Dict[str, Any], alpha: float, rng: np.random.Generator
                ) -> Dict[str, Any]:
    r"""``batch`` with its input, ``"target"`` and ``"mask"`` mixed (see the module
    docstring); a new dict, the input batch is not modified.

    Args:
        batch (dict): a training batch: ``"target"`` :math:`[B, C]`, the input
            ``"image"`` :math:`[B, 3, H, W]` or ``"features"`` :math:`[B, D]`, optional
            ``"mask"`` :math:`[B, C]` (``False`` = unknown label).
        alpha (float): :math:`\alpha` of :math:`\mathrm{Beta}(\alpha, \alpha)`.
        rng (numpy.random.Generator): source of :math:`\lambda` and :math:`\pi`.
    """
    alpha = check_mixup_alpha(alpha)
    if alpha == 0:
        return dict(batch)
    keys = [k for k in MIXED_INPUTS if k in batch]
    if not keys or "target" not in batch:
        raise ValueError(f"mixup needs a batch with 'target' and one of "
                         f"{', '.join(map(repr, MIXED_INPUTS))}; got keys {sorted(batch)}")
    target = batch["target"]
    n = len(target)
    if n < 2:
        return dict(batch)
    # a blend of two images has no regions of its own: they leave the batch
    out = {k: v for k, v in batch.items() if not is_region_key(k)}
    lam = float(rng.beta(alpha, alpha))
    perm = torch.as_tensor(rng.permutation(n), device=target.device)
    for k in keys:
        x = batch[k]
        if not torch.is_floating_point(x):
            raise ValueError(f"mixup: batch[{k!r}] must be a floating-point tensor, got "
                             f"{x.dtype}")
        out[k] = x * lam + x[perm] * (1.0 - lam)
    y = target.float()
    out["target"] = y * lam + y[perm] * (1.0 - lam)
    mask: Optional[torch.Tensor] = batch.get("mask")
    if mask is not None:
        m = mask.bool()
        out["mask"] = m & m[perm]
    return out
