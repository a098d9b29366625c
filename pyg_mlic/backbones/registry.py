"""Backbone registry (:func:`build_backbone`, :func:`list_backbones`) and weight loading.

A *backbone* maps images ``[B, 3, H, W]`` to feature maps ``[B, D, h, w]`` and carries
``out_channels = D`` and a ``default_cfg`` dict (input size, normalisation mean/std,
where its weights come from). Pooling (:mod:`.pooling`) turns the map into the image
feature of ML-GCN Eq. 3.

Preprocessing belongs to the weights: every registered name states the input its weights
expect, readable *without building the network* through :func:`data_config` (as
torchvision weight enums carry ``transforms()`` and timm models a ``pretrained_cfg``).
The data pipeline (:func:`pyg_mlic.data.factory.build_splits`, ``pyg-mlic predict`` /
``extract-features``) normalises with it:

>>> data_config("resnet101")["mean"]          # torchvision's ImageNet weights
(0.485, 0.456, 0.406)
>>> data_config("tresnet_m")["std"]           # doctest: +SKIP
(1.0, 1.0, 1.0)

Weights are never downloaded by this module: ``weights`` is :obj:`None` (random
initialisation), a local file (``.pth``/``.pt`` loaded with ``torch.load(...,
weights_only=True)``, or ``.safetensors``), an in-memory state dict, or a name the
backbone documents (``"imagenet"``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import torch
from torch import nn

from pyg_mlic.errors import CheckpointError
from pyg_mlic.utils.registry import Registry

WeightsArg = Union[None, str, Path, Mapping[str, torch.Tensor]]
BackboneBuilder = Callable[..., nn.Module]
#: a backbone's preprocessing, or a callable returning it (called on demand, so that a
#: family's metadata library, e.g. timm, is imported only when it is asked for)
DataConfigArg = Union[None, Mapping[str, Any], Callable[[], Mapping[str, Any]]]

#: the ImageNet statistics of torchvision's and most of timm's weights; the preprocessing
#: of a backbone registered without a ``data_config`` (see :func:`data_config`)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the keys :func:`data_config` returns
DATA_CONFIG_KEYS = ("mean", "std", "input_size", "interpolation", "source")


def _backbone_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


_BACKBONES: Registry[BackboneBuilder] = Registry("backbone", normalize=_backbone_key)
#: ``prefix -> builder(model_name, weights=None, **kw)`` for ``"<prefix>:<model name>"``
#: (``"timm"``, registered by :mod:`.timm_backbone`)
_FAMILIES: Registry[BackboneBuilder] = Registry("backbone family", normalize=_backbone_key)
#: ``name -> data config`` (or a callable giving it) of the registered names
_DATA_CONFIGS: Dict[str, DataConfigArg] = {}
#: ``prefix -> callable(model_name) -> data config`` of the families
_FAMILY_DATA_CONFIGS: Dict[str, Callable[[str], Mapping[str, Any]]] = {}


def register_backbone(name: str, data_config: DataConfigArg = None
                      ) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register ``builder(weights=None, **kw) -> nn.Module`` under ``name`` (timm style).

    The module must map ``[B, 3, H, W]`` to ``[B, D, h, w]`` and expose ``out_channels``.
    Names are case-insensitive and ``-`` equals ``_``.

    Args:
        name (str): the backbone's name.
        data_config (dict or callable, optional): the preprocessing its weights expect
            (``mean``, ``std``, ``input_size`` ``(3, H, W)``, optionally
            ``interpolation`` and ``source``), or a zero-argument callable returning it
            (evaluated when :func:`data_config` asks). (default: ImageNet statistics)
    """
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise ValueError(f"backbone name must be non-empty without ':' (got {name!r})")
    deco = _BACKBONES.register(name)

    def register(builder: BackboneBuilder) -> BackboneBuilder:
        out = deco(builder)
        _DATA_CONFIGS[_BACKBONES.key(name)] = data_config
        return out

    return register


def register_backbone_family(prefix: str,
                             data_config: Optional[Callable[[str], Mapping[str, Any]]] = None
                             ) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register ``builder(model_name, weights=None, **kw) -> nn.Module`` for the names
    ``"<prefix>:<model name>"`` (as :mod:`.timm_backbone` does for ``"timm:"``).

    ``data_config(model_name)`` returns the preprocessing of one model of the family
    (see :func:`register_backbone`); without it the family's models get ImageNet
    statistics."""
    if not isinstance(prefix, str) or not prefix.strip() or ":" in prefix:
        raise ValueError(f"backbone family prefix must be non-empty without ':' "
                         f"(got {prefix!r})")
    deco = _FAMILIES.register(prefix)

    def register(builder: BackboneBuilder) -> BackboneBuilder:
        out = deco(builder)
        if data_config is not None:
            _FAMILY_DATA_CONFIGS[_FAMILIES.key(prefix)] = data_config
        return out

    return register


def _check_data_config(cfg: Mapping[str, Any], where: str) -> Dict[str, Any]:
    out = dict(cfg)
    for key in ("mean", "std"):
        if key not in out:
            raise ValueError(f"data config of backbone {where} lacks {key!r}")
        out[key] = tuple(float(v) for v in out[key])
    if len(out["mean"]) != len(out["std"]) or any(s <= 0 for s in out["std"]):
        raise ValueError(f"data config of backbone {where}: mean {out['mean']} and std "
                         f"{out['std']} must have one entry per channel, std > 0")
    size = out.get("input_size") or (len(out["mean"]), 224, 224)
    out["input_size"] = tuple(int(v) for v in size)
    out.setdefault("interpolation", "bilinear")
    out.setdefault("source", where)
    return {k: out[k] for k in DATA_CONFIG_KEYS}


def data_config(name: str) -> Dict[str, Any]:
    """The preprocessing the weights of backbone ``name`` expect, without building it.

    Like timm's ``pretrained_cfg`` / ``resolve_data_config`` and torchvision's
    ``Weights.transforms()``: the transforms of :mod:`pyg_mlic.data.transforms` normalise
    with ``mean`` / ``std``, and ``input_size`` is the backbone's default input (the
    papers' 448 px for the ResNets; the weights' own resolution for timm models and
    EfficientNet-Lite0). The training recipes choose the network input themselves
    (``--image-size``, 448 in every paper), so ``input_size`` is a default only where
    no recipe says (``pyg-mlic extract-features``).

    Args:
        name (str): a registered name (:func:`list_backbones`) or ``"<family>:<model>"``
            (``"timm:tresnet_m"``: timm's ``pretrained_cfg`` of that model, read without
            creating it).

    Returns:
        dict: ``mean`` and ``std`` (tuples of floats, per channel, applied to images in
        :math:`[0, 1]`), ``input_size`` ``(C, H, W)``, ``interpolation`` (the weights'
        resize filter; recorded: the transforms resize bilinearly) and ``source`` (where
        the values come from). A backbone registered without a data config gets
        ImageNet statistics (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`), the convention
        of torchvision's and most of timm's weights, with ``source`` saying so.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"backbone name must be a string, got {type(name).__name__}")
    prefix, sep, model_name = name.strip().partition(":")
    default = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (3, 224, 224)}
    if sep:
        if prefix not in _FAMILIES:
            raise _FAMILIES.unknown(prefix, valid=[f"{p}:" for p in _FAMILIES.names()],
                                    also=f" (in backbone name {name!r})")
        fn = _FAMILY_DATA_CONFIGS.get(_FAMILIES.key(prefix))
        if fn is None:
            return _check_data_config({**default, "source": f"{name}: no data config "
                                       "registered, ImageNet statistics"}, repr(name))
        return _check_data_config(fn(model_name), repr(name))
    if name not in _BACKBONES:
        families = "".join(f" or '{p}:<model name>'" for p in _FAMILIES.names())
        raise _BACKBONES.unknown(name, also=families)
    cfg = _DATA_CONFIGS.get(_BACKBONES.key(name))
    if cfg is None:
        return _check_data_config({**default, "source": f"{_BACKBONES.key(name)}: no data "
                                   "config registered, ImageNet statistics"}, repr(name))
    return _check_data_config(cfg() if callable(cfg) else cfg, repr(name))


def list_backbones() -> List[str]:
    """Registered backbone names (sorted). Any CNN of ``timm`` is also reachable as
    ``"timm:<model name>"`` when timm is installed."""
    return _BACKBONES.names()


def build_backbone(name: str, weights: WeightsArg = None, **kwargs: Any) -> nn.Module:
    """Build a backbone by name.

    Args:
        name (str): one of :func:`list_backbones` (``resnet50``, ``resnet101``,
            ``efficientnet_lite0``, ``small_cnn``) or ``"timm:<model>"``.
        weights: :obj:`None` (random init), a local weights file, a state dict, or a
            name the backbone knows (``"imagenet"``).
        **kwargs: passed to the backbone's constructor.

    Returns:
        nn.Module: maps :math:`(B, 3, H, W) \\to (B, D, h, w)`, with attribute
        ``out_channels`` (:math:`D`).

    Raises:
        ValueError: unknown name (the message lists the valid ones).
        FileNotFoundError: ``weights`` names a file that does not exist.
        CheckpointError: the weights do not fit the architecture.
    """
    if not isinstance(name, str):
        raise TypeError(f"backbone name must be a string, got {type(name).__name__}")
    prefix, sep, model_name = name.strip().partition(":")
    if sep:
        builder = _FAMILIES.get(prefix, None)
        if builder is None:
            raise _FAMILIES.unknown(prefix, valid=[f"{p}:" for p in _FAMILIES.names()],
                                    also=f" (in backbone name {name!r})")
        return builder(model_name, weights=weights, **kwargs)
    if name not in _BACKBONES:
        families = "".join(f" or '{p}:<model name>'" for p in _FAMILIES.names())
        raise _BACKBONES.unknown(name, also=families)
    key = _BACKBONES.key(name)
    module = _BACKBONES.get(name)(weights=weights, **kwargs)
    if not isinstance(getattr(module, "out_channels", None), int):
        raise TypeError(f"backbone {key!r} built a module without an integer 'out_channels'")
    return module


# --------------------------------------------------------------------------- weights
def is_weights_file(weights: WeightsArg, names: Iterable[str] = ()) -> bool:
    """True when ``weights`` should be read as a path (i.e. it is not a known name)."""
    if weights is None or isinstance(weights, Mapping):
        return False
    if isinstance(weights, Path):
        return True
    return str(weights).lower() not in {n.lower() for n in names}


def load_state_dict_file(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``path`` without unpickling code.

    ``.safetensors`` files are read with :mod:`safetensors`; anything else with
    ``torch.load(path, map_location="cpu", weights_only=True)``. A dict wrapping the state
    dict under ``state_dict``/``model``/``model_state_dict`` is unwrapped, and a
    ``module.`` prefix (DDP) is stripped.

    Raises:
        FileNotFoundError: no file at ``path`` (named).
        CheckpointError: the file cannot be read safely or holds no tensor dict.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {p}")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError(f"reading {p} needs safetensors: pip install safetensors") from e
        obj: Any = load_file(str(p), device="cpu")
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors, truncated zip, foreign objects
            raise CheckpointError(f"cannot read backbone weights {p} with "
                                  f"torch.load(weights_only=True): {e}") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"backbone weights {p}: expected a state dict (name -> tensor), "
                              f"got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"backbone weights {p}: entries {bad[:5]} are not tensors")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_weights_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
                      ignore_prefixes: Iterable[str] = ()) -> None:
    """Load ``state_dict`` into ``module`` requiring an exact fit, except for keys starting
    with one of ``ignore_prefixes`` (a classifier head the backbone drops) which may be
    present or absent.

    Raises:
        CheckpointError: missing/unexpected keys or shape mismatches, naming ``source``.
    """
    prefixes = tuple(ignore_prefixes)
    sd = {k: v for k, v in state_dict.items() if not (prefixes and k.startswith(prefixes))}
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"weights {source} do not fit {type(module).__name__}: {e}") from None
    missing = [k for k in missing if not (prefixes and k.startswith(prefixes))]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) {list(unexpected)[:5]}")
        raise CheckpointError(f"weights {source} do not fit {type(module).__name__}: "
                              + "; ".join(parts))


def resolve_weights(weights: WeightsArg, names: Iterable[str] = ()
                    ) -> Optional[Union[str, Dict[str, torch.Tensor]]]:
    """Normalise ``weights``: :obj:`None`, a known name (returned lower-cased), or a state
    dict (read from the file or given)."""
    names = list(names)
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        return dict(weights)
    if not is_weights_file(weights, names):
        return str(weights).lower()
    p = Path(weights).expanduser()
    if not p.exists():
        hint = f" (known weight names: {names})" if names else ""
        raise FileNotFoundError(f"backbone weights file not found: {p}{hint}")
    return load_state_dict_file(p)
