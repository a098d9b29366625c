"""Debug checks: per-batch value checks inside models and layers, off by default."""
from __future__ import annotations

import os

__all__ = ["DEBUG_ENV", "debug_checks", "check_values"]

#: environment variable that turns on the per-batch value checks inside models and layers
DEBUG_ENV = "PYG_MLIC_DEBUG"


def debug_checks() -> bool:
    """Whether models and layers check their tensors' values on every batch
    (``PYG_MLIC_DEBUG=1``).

    Off by default: such a check turns a device tensor into a Python bool, which makes a
    GPU wait for every step. Inputs are checked at the data boundary instead
    (:func:`pyg_mlic.data.base.check_batch_finite`, called by the engine on the host), fixed
    tensors (label embeddings, label graphs) when a model is built, and a non-finite loss
    or gradient stops training (the engine's divergence guard)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_values(t) -> bool:
    """Whether a layer should check the values of tensor ``t`` now: always for a tensor in
    host memory (the check costs no device synchronisation there), on an accelerator only
    with :func:`debug_checks` on."""
    return debug_checks() or getattr(getattr(t, "device", None), "type", "cpu") == "cpu"
