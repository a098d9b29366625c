"""Training settings shared by every model."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class TrainConfig:
    """Everything the engine needs to train and evaluate a model.

    Defaults are ML-GCN's (Sec. 4.2): SGD, momentum 0.9, weight decay 1e-4, lr 0.01
    divided by 10 every 40 epochs, 100 epochs. Models carry their paper's defaults in
    ``default_train_config``; :meth:`for_model` merges them under user overrides.

    Args:
        epochs: number of epochs.
        batch_size: images per optimisation step over all processes (the global batch;
            each of :math:`W` DDP processes takes ``batch_size / W``).
        optimizer: ``"sgd"`` or ``"adam"``/``"adamw"``.
        lr: learning rate of the head (everything outside the backbone).
        backbone_lr: learning rate of the backbone (``None`` = ``lr``).
        momentum, weight_decay: optimiser settings.
        lr_step: divide the learning rates by ``1/lr_gamma`` every ``lr_step`` epochs
            (ignored when ``lr_milestones`` is given).
        lr_milestones: epochs at which the learning rates are multiplied by ``lr_gamma``.
        lr_gamma: decay factor.
        grad_clip: clip the gradient to this global L2 norm before each step
            (:func:`torch.nn.utils.clip_grad_norm_`; with ``amp="fp16"`` the unscaled
            gradient is clipped). ``None`` = no clipping.
        schedule: learning-rate schedule (see :mod:`pyg_mlic.engine.schedules`):
            ``"step"`` (default: ``lr_step`` / ``lr_milestones`` / ``lr_gamma``, per epoch),
            ``"cosine"`` (linear warm-up, then cosine to 0, per batch) or ``"onecycle"``
            (:class:`~torch.optim.lr_scheduler.OneCycleLR` with ASL's settings: ``max_lr``
            = the group learning rates, ``pct_start=0.2``, per batch).
        warmup_epochs: linear warm-up length in epochs (may be fractional; counted in
            batches) for ``"step"`` and ``"cosine"``; must be 0 for ``"onecycle"`` (it has
            its own warm-up) and below ``epochs``.
        amp: mixed precision (see :mod:`pyg_mlic.engine.amp`): ``None`` (fp32),
            ``"bf16"`` (autocast to bfloat16; CUDA with bf16 support, or CPU) or
            ``"fp16"`` (autocast to float16 with a :class:`torch.amp.GradScaler`; CUDA, or
            CPU for testing). The loss and every metric are computed in fp32; a step the
            scaler skips for an fp16 overflow is not a divergence (the run stops when the
            loss is not finite, or after more than
            :data:`~pyg_mlic.engine.amp.MAX_CONSECUTIVE_SKIPS` consecutive skips).
        ema: decay (in (0, 1)) of an exponential moving average of the weights
            updated after every optimiser step (:class:`~pyg_mlic.engine.ema.ModelEma`;
            ASL uses 0.9997), ``None`` = none. Each validation evaluates the raw and the
            EMA weights (``val_mAP`` and ``val_mAP_ema`` in the history); ``"best_val"``
            chooses the best of both over all epochs, ``"last"`` evaluates the final EMA
            weights; ``metrics.json`` records which (``selection.weights``).
        select: which weights the final (test) evaluation uses: ``"last"`` (the last
            epoch; its EMA weights when ``ema`` is set) or ``"best_val"`` (the epoch — and,
            with ``ema``, the raw or EMA weights — with the best *validation* mAP; needs a
            validation split). The test split is never used for selection.
        num_workers: DataLoader workers.
        seed: seed of every random generator the engine uses.
        device: ``"cpu"``, ``"cuda"``, ... (``None`` = cuda when available).
        eval_every: evaluate on the validation split every N epochs.
        progress: show tqdm progress bars.
        find_unused_parameters: multi-process (DDP) runs only: let DDP look for
            parameters that receive no gradient in a step (models with branches unused
            for some inputs need it; it costs one autograd-graph traversal per step).
            ``None`` = the model's ``ddp_find_unused_parameters`` attribute if it has
            one, else probe one training step (state restored afterwards) and enable
            it when any trainable parameter got no gradient.
        sync_bn: multi-process (DDP) runs only: convert every BatchNorm layer in training
            mode to a synchronised one, so that BatchNorm normalises with (and tracks) the
            statistics of the *global* batch, as one process with the same ``batch_size``
            does (PyTorch's :class:`~torch.nn.SyncBatchNorm` on CUDA/nccl,
            :class:`~pyg_mlic.engine.distributed.DistributedBatchNorm` on the CPU/gloo;
            see :func:`~pyg_mlic.engine.distributed.convert_sync_batchnorm`). It costs
            collectives in every BatchNorm layer's forward and backward pass. ``False``
            (default): each rank's BatchNorm layers use the statistics of its own
            ``batch_size / W`` samples and DDP copies rank 0's running statistics to the
            other ranks before every step. Ignored in one process.
    """

    epochs: int = 100
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    backbone_lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: Optional[int] = 40
    lr_milestones: Optional[List[int]] = None
    lr_gamma: float = 0.1
    grad_clip: Optional[float] = None
    select: str = "last"
    num_workers: int = 0
    seed: int = 0
    device: Optional[str] = None
    eval_every: int = 1
    progress: bool = True
    find_unused_parameters: Optional[bool] = None
    sync_bn: bool = False
    schedule: str = "step"
    warmup_epochs: float = 0
    amp: Optional[str] = None
    ema: Optional[float] = None
    mixup: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_workers", "seed", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                try:  # numpy integers and integral floats (e.g. from a JSON / YAML config)
                    ok = not isinstance(v, (bool, str)) and float(v) == int(v)
                except (TypeError, ValueError, OverflowError):
                    ok = False
                if not ok:
                    raise ValueError(f"{name} must be an integer, got {v!r}")
                setattr(self, name, int(v))
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name, lr in (("lr", self.lr), ("backbone_lr", self.backbone_lr)):
            if lr is None and name == "backbone_lr":
                continue
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) \
                    or not math.isfinite(lr) or lr < 0 or (lr == 0 and name == "lr"):
                need = "> 0" if name == "lr" else ">= 0 (0 freezes the backbone)"
                raise ValueError(f"{name} must be a finite learning rate {need}, got {lr!r}")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {self.optimizer!r}")
        if self.select not in ("last", "best_val"):
            raise ValueError(f"select must be 'last' or 'best_val', got {self.select!r}")
        from pyg_mlic.engine.amp import AMP_DTYPES
        from pyg_mlic.engine.ema import check_ema_decay
        from pyg_mlic.engine.schedules import SCHEDULES

        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got "
                             f"{self.schedule!r}")
        w = self.warmup_epochs
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < self.epochs:
            raise ValueError(f"warmup_epochs must be a number in [0, epochs={self.epochs}), "
                             f"got {w!r}")
        if self.schedule == "onecycle" and w:
            raise ValueError("schedule='onecycle' has its own warm-up (the first 20% of the "
                             f"steps, pct_start=0.2): leave warmup_epochs at 0, got {w!r}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {self.amp!r}")
        if self.ema is not None:
            check_ema_decay(self.ema)
        if self.mixup is not None:
            from pyg_mlic.engine.mixup import check_mixup_alpha

            self.mixup = check_mixup_alpha(self.mixup) or None  # 0: none
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool) or
                                           not self.grad_clip > 0):
            raise ValueError(f"grad_clip must be a positive gradient norm or None, got "
                             f"{self.grad_clip!r}")

    @classmethod
    def fields(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def for_model(cls, model_or_class, **overrides) -> "TrainConfig":
        """The model's paper defaults, overridden by the non-``None`` ``overrides``."""
        base = dict(getattr(model_or_class, "default_train_config", {}) or {})
        base.update({k: v for k, v in overrides.items() if v is not None})
        from pyg_mlic.errors import check_options

        owner = getattr(model_or_class, "model_name", None) or "TrainConfig"
        check_options(f"{owner} training", base, cls.fields(), kind="training option")
        return cls(**base)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
