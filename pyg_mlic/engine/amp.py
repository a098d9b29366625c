r"""Mixed precision for the engine (``TrainConfig(amp="bf16"|"fp16")``, ``--amp``).

- The **forward pass** runs under :func:`torch.autocast` with the chosen dtype; the
  **loss** is computed outside it on the logits and auxiliary terms cast to fp32; the
  weights, their gradients and the optimiser state stay fp32 (classic mixed precision).
- **Evaluation** runs the forward under the same autocast and computes every metric on
  fp32 logits (:func:`~pyg_mlic.engine.trainer.predict` casts them).
- ``"fp16"`` scales the loss with :class:`torch.amp.GradScaler` (its state is saved in
  the checkpoint and restored on resume). A step whose fp16 gradients overflowed is
  *skipped* by the scaler (weights, optimiser and EMA unchanged; the scale halves); the
  divergence guard judges the *unscaled* gradient (after ``scaler.unscale_``) and:

  * stops the run at once when the **loss** is not finite (no scale fixes that);
  * treats a non-finite gradient as a skipped step, and stops only after more than
    :data:`MAX_CONSECUTIVE_SKIPS` consecutive skips: the scale has then fallen from
    :math:`2^{16}` to :math:`2^{-8}`, so the gradient overflows fp16 even scaled down
    256-fold — the run has diverged.

  Without a scaler (``None`` / ``"bf16"``) a non-finite gradient stops the run at once.
- ``"bf16"`` needs no scaler (bfloat16 has fp32's exponent range). On CUDA it needs a GPU
  with bfloat16 support (Ampere or newer); on the CPU it is supported everywhere.
- ``"fp16"`` on the CPU is supported (CPU autocast and ``GradScaler("cpu")``), but slow:
  it exists to run and test the fp16 path without a GPU; use ``"bf16"`` on the CPU.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

__all__ = ["AMP_DTYPES", "MAX_CONSECUTIVE_SKIPS", "amp_dtype", "autocast", "check_amp",
           "grad_scaler"]

#: ``TrainConfig.amp`` value -> autocast dtype
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: fp16: this many consecutive steps skipped by the gradient scaler are tolerated; one
#: more stops the run with :class:`~pyg_mlic.errors.DivergenceError`
MAX_CONSECUTIVE_SKIPS = 24


def amp_dtype(amp: Optional[str]) -> Optional[torch.dtype]:
    """The autocast dtype of ``amp`` (``None``: full precision)."""
    if amp is None:
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    return AMP_DTYPES[amp]


def check_amp(amp: Optional[str], device: torch.device) -> None:
    """Refuse, before training, a precision the device cannot run (one-line ValueError)."""
    amp_dtype(amp)
    device = torch.device(device)
    if amp is None:
        return
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"amp={amp!r}: mixed precision is supported on 'cpu' and 'cuda' "
                         f"devices, not {device.type!r}; train with amp=None")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp='bf16': GPU {torch.cuda.get_device_name(device)} has no "
                         f"bfloat16 support (needs Ampere or newer); use amp='fp16'")


def autocast(device: torch.device, amp: Optional[str]) -> ContextManager:
    """:func:`torch.autocast` on ``device``'s type with ``amp``'s dtype; a no-op
    context for ``amp=None``."""
    dtype = amp_dtype(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(amp: Optional[str], device: torch.device) -> Optional["torch.amp.GradScaler"]:
    """A :class:`torch.amp.GradScaler` for ``amp="fp16"`` (PyTorch's defaults: initial
    scale :math:`2^{16}`, halved on overflow, doubled after 2000 good steps), else
    ``None``."""
    if amp != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)
