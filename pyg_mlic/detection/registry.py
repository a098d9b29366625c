"""Backend registry: :func:`build_region_extractor` and :func:`list_region_backends`."""
from __future__ import annotations

import importlib
import inspect
import logging
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional

from pyg_mlic.detection.base import RegionExtractor
from pyg_mlic.utils.registry import Registry

__all__ = ["build_region_extractor", "list_region_backends", "register_region_backend",
           "resolve_backend", "model_region_options"]

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


#: the extractor class behind each built-in backend (its constructor's arguments are the
#: backend's options)
_BUILTIN_CLASSES = {
    "torchvision": ("pyg_mlic.detection.torchvision_backend", "TorchvisionRegionExtractor"),
    "detectron2": ("pyg_mlic.detection.detectron2_backend", "Detectron2RegionExtractor"),
    "precomputed": ("pyg_mlic.detection.precomputed", "PrecomputedRegionExtractor"),
    "groundtruth": ("pyg_mlic.detection.groundtruth", "GroundTruthRegionExtractor"),
}


def _backend_params(key: str) -> Optional[Dict[str, inspect.Parameter]]:
    """The keyword parameters of backend ``key``'s constructor (``None``: anything,
    ``**kwargs``; ``{}``: an unknown backend)."""
    if key in _BUILTIN_CLASSES:
        mod, name = _BUILTIN_CLASSES[key]
        fn: Callable = getattr(importlib.import_module(mod), name).__init__
    elif key in _BACKENDS:
        fn = _BACKENDS.get(key)
    else:
        return {}
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return {n: p for n, p in params.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"}


def _backend_options(key: str) -> Optional[set]:
    """Keyword arguments the backend ``key`` takes (``None``: anything, ``**kwargs``)."""
    params = _backend_params(key)
    return None if params is None else set(params)


def model_region_options(model: Any, backend: str = "auto",
                         options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The region-backend arguments for training ``model``: the model's recipe
    (``default_region_options`` of its class, e.g. GM-MLIC's ``{"mode": "detections"}``:
    the detector's class-labelled detections ranked by confidence, the paper's setting)
    restricted to the options ``backend`` takes, under the given ``options`` (which win).

    Args:
        model: a model class or a built model (``None``: no recipe); a registered name
            is resolved by the caller (:func:`pyg_mlic.models.get_model_class`), since the
            detection layer does not import the models.
        backend (str): the backend name (``"auto"`` is resolved silently).
        options (dict): the user's backend arguments (e.g. ``--region-opt``).
    """
    opts = dict(options or {})
    if model is None:
        return opts
    if isinstance(model, str):
        # the detection layer sits below the models (models read regions): it takes the
        # model's class, resolved by the caller, not a registry name
        raise TypeError(f"model_region_options: pass the model class or a built model, not "
                        f"the name {model!r} (e.g. pyg_mlic.models.get_model_class({model!r}))")
    recipe = dict(getattr(model, "default_region_options", None) or {})
    if not recipe:
        return opts
    accepted = _backend_options(resolve_backend(backend, verbose=False))
    for k, v in recipe.items():
        if k not in opts and (accepted is None or k in accepted):
            opts[k] = v
    return opts


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


def build_region_extractor(backend: str = "auto", verbose: bool = True, *,
                           model: Any = None, **kwargs: Any) -> RegionExtractor:
    """Build a region extractor by backend name.

    Args:
        backend (str): ``"auto"`` (detectron2 when importable, else torchvision; the
            choice is logged and, with ``verbose``, printed), ``"torchvision"``,
            ``"detectron2"``, ``"precomputed"``, ``"groundtruth"`` or a registered name.
        verbose (bool): print the choice ``"auto"`` made. (default: :obj:`True`)
        model: the model the regions are for (class or instance, not a name): its
            region recipe fills the arguments not given (see
            :func:`model_region_options`; GM-MLIC: ``mode="detections"``). (default:
            :obj:`None`, the backend's own defaults)
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
    _check_backend_arguments(key, kwargs)  # the user's typos, before the model's recipe
    if model is not None:
        kwargs = model_region_options(model, key, kwargs)
        if kwargs:
            logger.info("pyg_mlic.detection: %s regions with %s", key, kwargs)
    _check_backend_arguments(key, kwargs, missing=True)
    return _BACKENDS.get(key)(**kwargs)


def _check_backend_arguments(key: str, kwargs: Dict[str, Any], missing: bool = False) -> None:
    """A misspelt backend argument (or, with ``missing``, a required one not given) is an
    :class:`~pyg_mlic.errors.OptionError` naming the valid ones (``--region-opt
    KEY=VALUE``), not a ``TypeError`` from the constructor."""
    from pyg_mlic.errors import OptionError, check_options

    params = _backend_params(key)
    if params is None:
        return
    if not missing:
        check_options(f"region backend {key!r}", kwargs, params, kind="argument")
        return
    absent = [n for n, p in params.items() if p.default is p.empty and n not in kwargs]
    if absent:
        raise OptionError(f"region backend {key!r} needs the argument(s) "
                          f"{', '.join(map(repr, absent))} (--region-opt "
                          f"{absent[0]}=...)")
