"""Model registry in the style of timm: ``@register_model``, ``build_model``, ``list_models``."""
from __future__ import annotations

from typing import Callable, Dict, List

_REGISTRY: Dict[str, Callable] = {}


def register_model(name: str) -> Callable:
    """Decorator registering a model builder (a class or function) under ``name``."""

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> List[str]:
    """Names of all registered models, in registration order."""
    return list(_REGISTRY)


def get_model_class(name: str) -> Callable:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {list_models()}")
    return _REGISTRY[name]


def build_model(name: str, **cfg):
    """Build a registered model.

    Standard keyword arguments every builder understands (unused ones are ignored):
    ``classes`` (list of class names, required), ``input_kind`` (``"image"`` or
    ``"features"``), ``in_features``, ``backbone``, ``backbone_weights``,
    ``train_labels`` (``[N, C]`` 0/1 training-split labels, for label graphs),
    ``label_embeddings`` (``[C, d]`` tensor). Model-specific options follow the
    paper's names (``tau``, ``p``, ...); see each model's docstring.
    """
    model = get_model_class(name)(**cfg)
    model.model_name = name
    return model


# ---------------------------------------------------------------- demo rows
_DEMO_ROWS: Dict[str, tuple] = {}


def register_demo_row(label: str, model: str, **cfg) -> None:
    """Add a row to ``pyg-mlic demo``'s table: ``label`` = model ``model`` built with ``cfg``."""
    _DEMO_ROWS[label] = (model, dict(cfg))


def demo_rows() -> Dict[str, tuple]:
    """``{row label: (model name, options)}`` in registration order."""
    return dict(_DEMO_ROWS)


_ABLATIONS: Dict[str, Dict[str, tuple]] = {}


def register_ablation(table: str, label: str, model: str, **cfg) -> None:
    """Add row ``label`` (model ``model`` with options ``cfg``) to the demo's ablation
    table ``table`` (e.g. ``"A-GCN variants (Table 1)"``); run with
    ``pyg-mlic demo --ablations``."""
    _ABLATIONS.setdefault(table, {})[label] = (model, dict(cfg))


def ablation_tables() -> Dict[str, Dict[str, tuple]]:
    """``{table: {row label: (model name, options)}}`` in registration order."""
    return {t: dict(rows) for t, rows in _ABLATIONS.items()}
