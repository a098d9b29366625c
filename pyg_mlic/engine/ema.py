r"""Exponential moving average (EMA) of a model's weights.

The engine keeps, beside the trained ("raw") weights :math:`\theta_t`, an average
:math:`\bar\theta_t` updated after every optimiser step that was taken:

.. math::
    \bar\theta_0 = \theta_0, \qquad
    \bar\theta_t = d\,\bar\theta_{t-1} + (1 - d)\,\theta_t,

with the decay :math:`d \in (0, 1)` (``TrainConfig(ema=d)``, ``--ema D``). The average
forgets a weight with a half-life of :math:`\ln 2 / (-\ln d)` steps (:math:`d = 0.9997`,
ASL's setting: about 2300 steps), so a short run needs a smaller decay (0.99–0.999).
ASL (Ridnik et al., ICCV 2021) and the TResNet-based multi-label methods evaluate the
EMA weights.

Modelled on timm's ``ModelEmaV3`` (timm is an optional dependency, not used here):

- floating-point parameters **and** floating-point buffers (BatchNorm running mean and
  variance) are averaged — the EMA weights are then normalised by statistics averaged in
  the same way, which is timm's default;
- integer and bool buffers (BatchNorm's 0-d ``num_batches_tracked``, a label graph's
  ``edge_index``) are *copied*: an average of counters or indices means nothing.
  (:class:`torch.optim.swa_utils.AveragedModel` with ``use_buffers=True`` lerps those
  too, and leaves ``num_batches_tracked`` wrong; without it, BatchNorm statistics are
  copied from the raw model, i.e. they belong to other weights.)
- tensors are matched by name, so an averaged copy stays valid when the trained model's
  BatchNorm layers are converted to synchronised ones (``sync_bn``; same names).

Under DDP the average is of the unwrapped model; every rank holds the same one (the
weights are equal on every rank after each step; the engine broadcasts rank 0's EMA
buffers at the end of each epoch, as it does for the model's).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List

import torch
from torch import nn

__all__ = ["ModelEma", "check_ema_decay"]


def check_ema_decay(decay: Any) -> float:
    """``decay`` as a float in the open interval (0, 1), else a one-line :class:`ValueError`."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) \
            or not 0.0 < float(decay) < 1.0:
        raise ValueError(f"ema must be a decay in (0, 1), e.g. 0.9997 (ASL) or 0.999 for short "
                         f"runs, or None for no EMA; got {decay!r}")
    return float(decay)


class ModelEma(nn.Module):
    r"""An exponential moving average of ``model``'s weights (see the module docstring).

    Args:
        model (torch.nn.Module): the trained model; the average starts as a copy of its
            current weights (same device and dtype) and is kept in ``eval()`` mode with
            ``requires_grad=False``.
        decay (float): :math:`d \in (0, 1)`.

    Attributes:
        module (torch.nn.Module): the averaged copy; evaluate or save it like the model
            (a :class:`~pyg_mlic.models.MultiLabelModel` copy keeps ``model_name``,
            ``classes`` and ``build_kwargs``).
        updates (int): number of :meth:`update` calls so far.

    Example:
        >>> ema = ModelEma(model, decay=0.999)
        >>> loss.backward(); optimizer.step(); ema.update(model)
        >>> metrics = evaluate(ema.module, val_set)
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = check_ema_decay(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def train(self, mode: bool = True) -> "ModelEma":
        """The average is never trained: it stays in ``eval()`` mode."""
        return super().train(False)

    def _pairs(self, model: nn.Module):
        """``(averaged, copied)``: lists of ``(ema_tensor, model_tensor)`` matched by name."""
        mine = dict(self.module.named_parameters())
        mine.update(self.module.named_buffers())
        theirs = dict(model.named_parameters())
        theirs.update(model.named_buffers())
        if mine.keys() != theirs.keys():
            missing = sorted(set(mine) ^ set(theirs))[:5]
            raise ValueError(f"ModelEma.update: the model's parameters/buffers differ from the "
                             f"averaged copy's (e.g. {missing}); build the EMA from this model")
        averaged: List[Any] = []
        copied: List[Any] = []
        for name, e in mine.items():
            m = theirs[name]
            if m is None or e is None:
                continue
            (averaged if e.is_floating_point() else copied).append((e, m.detach()))
        return averaged, copied

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        r""":math:`\bar\theta \leftarrow d\,\bar\theta + (1 - d)\,\theta` for floating
        tensors (one fused ``lerp`` per device and dtype), a copy for the others."""
        averaged, copied = self._pairs(model)
        groups: Dict[Any, List[Any]] = {}
        for e, m in averaged:
            groups.setdefault((e.device, e.dtype), []).append((e, m.to(e.device, e.dtype)))
        w = 1.0 - self.decay
        for pairs in groups.values():
            torch._foreach_lerp_([e for e, _ in pairs], [m for _, m in pairs], w)
        for e, m in copied:
            e.copy_(m)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights and buffers into ``model`` (e.g. for evaluation)."""
        model.load_state_dict(self.module.state_dict())

    def state_dict(self, *args, **kwargs) -> Dict[str, Any]:  # type: ignore[override]
        """``{"decay", "updates", "module"}``: plain values and tensors only (a checkpoint
        loads it with ``torch.load(weights_only=True)``)."""
        return {"decay": self.decay, "updates": self.updates,
                "module": self.module.state_dict()}

    def load_state_dict(self, state: Dict[str, Any], strict: bool = True,  # type: ignore[override]
                        assign: bool = False):
        """Restore :meth:`state_dict`; a different decay is refused (the average would not
        continue the same run)."""
        if not isinstance(state, dict) or "module" not in state:
            raise ValueError("ModelEma.load_state_dict: expected a dict with 'decay', "
                             "'updates' and 'module' (ModelEma.state_dict())")
        if float(state.get("decay", self.decay)) != self.decay:
            raise ValueError(f"ModelEma.load_state_dict: the saved average has decay "
                             f"{state['decay']}, this one {self.decay}")
        self.updates = int(state.get("updates", 0))
        return self.module.load_state_dict(state["module"], strict=strict)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, updates={self.updates}"
