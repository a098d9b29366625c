"""The device a run computes on, checked once where a user names it."""
from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["resolve_device"]


def resolve_device(spec: Optional[Union[str, torch.device]] = None) -> torch.device:
    """The :class:`torch.device` that ``spec`` names (``None`` or ``""``: ``cuda`` when
    a GPU is available, else ``cpu``).

    Raises:
        ValueError: (one line) ``spec`` is not a device name torch knows, or names a
            device this machine does not have (``cuda`` without CUDA, ``cuda:3`` on a
            machine with two GPUs, ``mps`` without Metal).
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec.strip() if isinstance(spec, str) else spec)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {spec!r} is not a torch device; use 'cpu', 'cuda', "
                         f"'cuda:N' or 'mps'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(spec)!r}: CUDA is not available on this machine "
                             f"(torch.cuda.is_available() is False); use 'cpu'")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {str(spec)!r}: this machine has {n} CUDA device(s) "
                             f"(cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(spec)!r}: Metal (MPS) is not available on this "
                         f"machine; use 'cpu'")
    return dev
