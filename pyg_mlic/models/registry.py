"""Model registry in the style of timm: ``@register_model``, ``build_model``, ``list_models``."""
from __future__ import annotations

from typing import Any, Callable, Dict, List

from pyg_mlic.utils.registry import Registry

_REGISTRY: Registry[Callable] = Registry("model")

#: keyword arguments that come from the data (see
#: :func:`pyg_mlic.engine.context.model_context`), not from the user's model options
CONTEXT_KEYS = ("classes", "input_kind", "in_features", "train_labels", "train_label_mask",
                "label_embeddings",
                "label_embeddings_spec", "roi_feature_dim", "backbone", "backbone_weights")


def register_model(name: str) -> Callable:
    """Decorator registering a model builder (a class or function) under ``name``.

    A registered class gets ``model_name = name``, so that a model built directly
    (``MLGCN(classes, ...)``) is saved under its registry name and reloads from its
    checkpoint like one built with :func:`build_model`."""

    def deco(fn: Callable) -> Callable:
        _REGISTRY.register(name, fn)
        if isinstance(fn, type):
            fn.model_name = name
        return fn

    return deco


def list_models() -> List[str]:
    """Names of all registered models, in registration order."""
    return _REGISTRY.names(sort=False)


#: built-in models registered by a module of another name (``pyg_mlic/models/<module>.py``)
_BUILTIN_HOMES: Dict[str, str] = {"asl": "iml_gcn"}


def get_model_class(name: str) -> Callable:
    if name not in _REGISTRY and isinstance(name, str) and name.isidentifier():
        # a built-in model module not imported yet (pyg_mlic/models/<name>.py registers it)
        import importlib.util

        module = _BUILTIN_HOMES.get(name, name)
        if importlib.util.find_spec(f"pyg_mlic.models.{module}") is not None:
            importlib.import_module(f"pyg_mlic.models.{module}")
    return _REGISTRY.get(name)


def count_parameters(model) -> Dict[str, int]:
    """Parameter counts of a model: ``total``, ``backbone``, ``head`` and ``trainable``.

    ``backbone`` counts the parameters of ``model.encoder.backbone`` (the CNN; 0 for
    feature datasets, whose MLP encoder is counted in ``head``), ``head`` everything else
    (pooling, classifier, label GCN, graph modules ...). Buffers (label embeddings, the
    label graph's edges) are not parameters and are not counted. Shared parameters are
    counted once.
    """
    seen: Dict[int, Any] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    encoder = getattr(model, "encoder", None)
    bb = getattr(encoder, "backbone", None) if encoder is not None else None
    bb_ids = {id(p) for p in bb.parameters()} if bb is not None else set()
    total = sum(p.numel() for p in seen.values())
    backbone = sum(p.numel() for i, p in seen.items() if i in bb_ids)
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return {"total": int(total), "backbone": int(backbone), "head": int(total - backbone),
            "trainable": int(trainable)}


def model_option_names(name_or_builder) -> List[str]:
    """The keyword arguments a registered model (name or builder) takes: the parameters
    of its constructor and, where it forwards ``**kwargs`` to a parent class, of the
    parents' constructors."""
    import inspect

    fn = get_model_class(name_or_builder) if isinstance(name_or_builder, str) \
        else name_or_builder
    from pyg_mlic.models.base import MultiLabelModel

    targets = [c.__init__ for c in inspect.getmro(fn) if "__init__" in vars(c)
               and issubclass(c, MultiLabelModel) and c is not MultiLabelModel] \
        if isinstance(fn, type) else [fn]
    names: List[str] = []
    for target in targets:
        params = list(inspect.signature(target).parameters.values())
        for p in params:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name == "self":
                continue
            if p.name not in names:
                names.append(p.name)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break  # nothing is forwarded further up
    return names


def build_model(name: str, **cfg):
    """Build a registered model, refusing options it does not take.

    Standard keyword arguments (the *context*, :data:`CONTEXT_KEYS`,
    what :func:`~pyg_mlic.engine.context.model_context` makes from a training split):
    ``classes`` (list of class names, required), ``input_kind`` (``"image"`` or
    ``"features"``), ``in_features``, ``backbone``, ``backbone_weights``,
    ``train_labels`` (``[N, C]`` 0/1 training-split labels, for label graphs),
    ``train_label_mask`` (bool ``[N, C]`` or ``None``: False = unknown, left out of the
    label statistics),
    ``label_embeddings`` (``[C, d]`` tensor), ``roi_feature_dim``. A model receives the
    context keys its constructor takes; the others are dropped. Model-specific options
    follow the paper's names (``tau``, ``p``, ...; see each model's docstring).

    Raises:
        OptionError: an option that is neither a context key nor taken by the model,
            e.g. ``ml_gcn got an unknown option 'tua'; did you mean 'tau'?``.
    """
    from pyg_mlic.errors import check_options

    builder = get_model_class(name)
    valid = set(model_option_names(builder))
    check_options(name, [k for k in cfg if k not in CONTEXT_KEYS], valid)
    model = builder(**{k: v for k, v in cfg.items() if k in valid})
    model.model_name = name
    return model


# ---------------------------------------------------------------- demo rows
_DEMO_ROWS: Registry[tuple] = Registry("demo row")


def register_demo_row(label: str, model: str, **cfg) -> None:
    """Add a row to ``pyg-mlic demo``'s table: ``label`` = model ``model`` built with ``cfg``."""
    _DEMO_ROWS.register(label, (model, dict(cfg)), replace=True)


def demo_rows() -> Dict[str, tuple]:
    """``{row label: (model name, options)}`` in registration order."""
    return dict(_DEMO_ROWS.items())


_ABLATIONS: Registry[Dict[str, tuple]] = Registry("ablation table")


def register_ablation(table: str, label: str, model: str, **cfg) -> None:
    """Add row ``label`` (model ``model`` with options ``cfg``) to the demo's ablation
    table ``table`` (e.g. ``"A-GCN variants (Table 1)"``); run with
    ``pyg-mlic demo --ablations``."""
    if table not in _ABLATIONS:
        _ABLATIONS.register(table, {})
    _ABLATIONS.get(table)[label] = (model, dict(cfg))


def ablation_tables() -> Dict[str, Dict[str, tuple]]:
    """``{table: {row label: (model name, options)}}`` in registration order."""
    return {t: dict(rows) for t, rows in _ABLATIONS.items()}
