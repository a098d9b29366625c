r"""Learning-rate schedules of the engine (``TrainConfig.schedule``, ``--schedule``).

Let :math:`S` be the optimisation steps per epoch, :math:`E` the epochs,
:math:`T = E S` the steps of the run, :math:`W = \mathrm{round}(w S)` the warm-up steps
(``warmup_epochs`` :math:`= w`) and :math:`\eta` a parameter group's learning rate
(``lr`` / ``backbone_lr``). Step :math:`t = 0, \dots, T-1` uses :math:`\eta\,f(t)`:

- ``"step"`` (default, the papers' schedule): :math:`f = \gamma^{k}` with :math:`k` the
  number of decays so far — every ``lr_step`` epochs, or at each of ``lr_milestones``
  (``lr_gamma`` :math:`= \gamma`); constant when neither is set. Without warm-up it is
  :class:`~torch.optim.lr_scheduler.StepLR` / ``MultiStepLR`` stepped once per epoch
  (unchanged from earlier versions); with warm-up it is stepped per batch and the
  factor below multiplies it.
- ``"cosine"``: linear warm-up, then a half cosine to 0 at the end of the run,
  stepped per batch:

  .. math::
      f(t) = \begin{cases} \dfrac{t + 1}{W} & t < W \\[4pt]
      \tfrac12\left(1 + \cos\dfrac{\pi\,(t - W)}{T - W}\right) & t \ge W \end{cases}

- ``"onecycle"``: :class:`torch.optim.lr_scheduler.OneCycleLR` with ASL's settings
  (Ridnik et al., ICCV 2021, official ``train.py``): ``max_lr`` = each group's learning
  rate, ``pct_start=0.2`` (the first 20 % of the steps warm up from ``max_lr / 25``;
  runs under 8 steps: :func:`onecycle_pct_start`),
  cosine annealing to ``max_lr / 25e4``, and momentum (SGD) / Adam's :math:`\beta_1`
  cycled between 0.95 and 0.85 (not cycled for SGD without momentum); stepped per
  batch. It has its own warm-up: ``warmup_epochs`` must be 0.

Per-batch schedules count *batches*, including steps the fp16 gradient scaler skipped,
so the schedule has a fixed length and a resumed run follows it exactly. Their length
is the run's: ``--resume`` with another ``epochs`` is refused for ``"cosine"`` and
``"onecycle"`` (``"step"`` may be extended).
"""
from __future__ import annotations

import bisect
import math
from typing import Optional, Tuple

import torch

__all__ = ["SCHEDULES", "build_scheduler", "onecycle_pct_start", "per_step"]

#: valid ``TrainConfig.schedule`` values
SCHEDULES = ("step", "cosine", "onecycle")


def per_step(config) -> bool:
    """Whether ``config``'s schedule is stepped after every batch (else once per epoch)."""
    return config.schedule != "step" or bool(config.warmup_epochs)


def _decays(config, epoch: int) -> int:
    """Number of ``"step"`` decays before ``epoch`` (as StepLR / MultiStepLR count)."""
    if config.lr_milestones:
        return bisect.bisect_right(sorted(config.lr_milestones), epoch)
    if config.lr_step:
        return epoch // config.lr_step
    return 0


def onecycle_pct_start(total_steps: int) -> float:
    r"""``pct_start`` of ``"onecycle"`` for a run of :math:`T` steps: ASL's 0.2, raised to
    :math:`\min(1.5 / T, 0.75)` for :math:`T < 8`. OneCycleLR's warm-up ends at step
    :math:`0.2\,T - 1`, which is 0 for :math:`T = 5` (a division by zero inside torch) and
    negative below (no warm-up at all); with this value it ends half a step or more after
    the first: every short run (a debug run, a tiny split) builds and steps, and from
    3 steps on it warms up before it anneals."""
    return max(0.2, min(1.5 / max(int(total_steps), 1), 0.75))


def build_scheduler(optimizer: torch.optim.Optimizer, config,
                    steps_per_epoch: Optional[int] = None
                    ) -> Tuple[torch.optim.lr_scheduler.LRScheduler, bool]:
    """The scheduler of ``config`` over ``optimizer`` and whether it is stepped per batch.

    Args:
        optimizer: the optimiser, its groups at their base learning rates.
        config (TrainConfig): ``schedule``, ``warmup_epochs``, ``epochs``, ``lr_step`` /
            ``lr_milestones`` / ``lr_gamma``.
        steps_per_epoch (int): batches per epoch (each rank's, under DDP); needed by the
            per-batch schedules.
    """
    c = config
    if not per_step(c):
        if c.lr_milestones:
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(c.lr_milestones),
                                                        c.lr_gamma), False
        if c.lr_step:
            return torch.optim.lr_scheduler.StepLR(optimizer, c.lr_step, c.lr_gamma), False
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0), False
    if not steps_per_epoch or steps_per_epoch < 1:
        raise ValueError(f"schedule={c.schedule!r} (warmup_epochs={c.warmup_epochs}) is "
                         f"stepped per batch and needs steps_per_epoch >= 1, got "
                         f"{steps_per_epoch!r}")
    total = c.epochs * steps_per_epoch
    if c.schedule == "onecycle":
        cycle = c.optimizer != "sgd" or c.momentum > 0
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=onecycle_pct_start(total), cycle_momentum=cycle), True
    warm = min(int(round(c.warmup_epochs * steps_per_epoch)), total - 1)

    def warmup(t: int) -> float:
        return (t + 1) / warm if t < warm else 1.0

    if c.schedule == "cosine":
        def factor(t: int) -> float:
            if t < warm:
                return warmup(t)
            return 0.5 * (1.0 + math.cos(math.pi * (t - warm) / (total - warm)))
    else:  # "step" with a warm-up
        def factor(t: int) -> float:
            return warmup(t) * c.lr_gamma ** _decays(c, t // steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True
