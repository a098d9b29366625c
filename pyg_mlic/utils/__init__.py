"""Low-level helpers shared by the whole library: atomic file writes (:mod:`.io`),
name registries (:mod:`.registry`) and the checked device (:mod:`.device`, imported on
its own: it needs torch).

This package imports nothing from the rest of :mod:`pyg_mlic`, so any module may use it
without creating an import cycle.
"""
from pyg_mlic.utils.io import (
    atomic_np_save,
    atomic_np_savez,
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    json_default,
)
from pyg_mlic.utils.registry import Registry

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "atomic_np_save",
    "atomic_np_savez",
    "json_default",
    "Registry",
]
