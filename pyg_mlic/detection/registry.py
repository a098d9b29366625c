"""Backend registry: :func:`build_region_extractor` and :func:`list_region_backends`."""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable, List

from pyg_mlic.detection.base import RegionExtractor
from pyg_mlic.utils.registry import Registry

__all__ = ["build_region_extractor", "list_region_backends", "register_region_backend",
           "resolve_backend"]

logger = logging.getLogger("pyg_mlic.detection")

_BACKENDS: Registry[Callable[..., RegionExtractor]] = Registry(
    "region backend", normalize=lambda name: name.strip().lower())


def register_region_backend(name: str) -> Callable:
    """Register ``builder(**kwargs) -> RegionExtractor`` under ``name``."""
    if not isinstance(name, str) or name.strip().lower() in ("", "auto"):
        raise ValueError(f"invalid backend name {name!r}")
    return _BACKENDS.register(name)


def list_region_backends() -> List[str]:
    """Registered backend names (``"auto"`` is accepted as well)."""
    return _BACKENDS.names()


@register_region_backend("torchvision")
def _torchvision(**kw: Any) -> RegionExtractor:
    from pyg_mlic.detection.torchvision_backend import TorchvisionRegionExtractor

    return TorchvisionRegionExtractor(**kw)


@register_region_backend("detectron2")
def _detectron2(**kw: Any) -> RegionExtractor:
    from pyg_mlic.detection.detectron2_backend import Detectron2RegionExtractor

    return Detectron2RegionExtractor(**kw)


@register_region_backend("precomputed")
def _precomputed(**kw: Any) -> RegionExtractor:
    from pyg_mlic.detection.precomputed import PrecomputedRegionExtractor

    return PrecomputedRegionExtractor(**kw)


@register_region_backend("groundtruth")
def _groundtruth(**kw: Any) -> RegionExtractor:
    from pyg_mlic.detection.groundtruth import GroundTruthRegionExtractor

    return GroundTruthRegionExtractor(**kw)


def resolve_backend(backend: str = "auto", verbose: bool = True) -> str:
    """The backend ``"auto"`` stands for: ``"detectron2"`` when detectron2 imports,
    else ``"torchvision"`` (logged, and printed to stderr with ``verbose``)."""
    key = str(backend).strip().lower()
    if key != "auto":
        return key
    from pyg_mlic.detection.detectron2_backend import (
        detectron2_available,
        detectron2_unavailable_reason,
    )

    if detectron2_available():
        import detectron2

        key = "detectron2"
        why = f"detectron2 {getattr(detectron2, '__version__', '')} is importable"
    else:
        key = "torchvision"
        why = f"{detectron2_unavailable_reason()}"
    msg = f"pyg_mlic.detection: backend 'auto' -> {key!r} ({why})"
    logger.info(msg)
    if verbose:
        print(msg, file=sys.stderr)
    return key


def build_region_extractor(backend: str = "auto", verbose: bool = True,
                           **kwargs: Any) -> RegionExtractor:
    """Build a region extractor by backend name.

    Args:
        backend (str): ``"auto"`` (detectron2 when importable, else torchvision; the
            choice is logged and, with ``verbose``, printed), ``"torchvision"``,
            ``"detectron2"``, ``"precomputed"``, ``"groundtruth"`` or a registered name.
        verbose (bool): print the choice ``"auto"`` made. (default: :obj:`True`)
        **kwargs: the backend's arguments (the Faster R-CNN backends share ``weights``,
            ``mode``, ``feature``, ``max_instances``, ``min_size``, ``max_size``,
            ``box_score_thresh``, ``pool``, ``seed``).

    Returns:
        RegionExtractor

    Raises:
        ValueError: unknown backend (the message lists the valid names).
        ImportError: ``backend="detectron2"`` without detectron2.
    """
    key = resolve_backend(backend, verbose=verbose)
    if key not in _BACKENDS:
        raise _BACKENDS.unknown(backend, valid=["auto"] + list_region_backends())
    return _BACKENDS.get(key)(**kwargs)
