"""What a model is built from: the standard context a training split provides.

Every model of the registry accepts these keyword arguments (the *context*); which of
them a model uses depends on the model (the baseline ignores ``train_labels``, the
label-graph methods read it, with ``train_label_mask``: unknown entries are left out of
their statistics). :func:`pyg_mlic.models.build_model` passes a model only
the context keys its constructor takes, and refuses every other unknown key.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from pyg_mlic.models.registry import CONTEXT_KEYS

__all__ = ["model_context", "fit_input_statistics"]


def model_context(train_set, *, label_embeddings: Optional[str] = None,
                  backbone: Optional[str] = None, backbone_weights: Optional[str] = None
                  ) -> Dict[str, Any]:
    """The standard keyword arguments :func:`~pyg_mlic.models.build_model` receives from a
    training split: ``classes``, ``input_kind``, ``train_labels`` (label statistics come
    from this split only), ``train_label_mask`` (the split's ``label_mask``, bool
    ``[N, C]``, False = unknown: VOC *difficult*, labels hidden by ``--drop-labels``; or
    ``None`` when every label is known), ``in_features`` (feature datasets),
    ``roi_feature_dim`` (region datasets), and the backbone / label embeddings when given.

    Args:
        train_set: the training split (any dataset of the :mod:`pyg_mlic.data` protocol).
        label_embeddings (str, optional): a spec of
            :func:`~pyg_mlic.embeddings.load_label_embeddings` (``onehot``, ``glove:PATH``
            ...), resolved here for the split's classes.
        backbone, backbone_weights (str, optional): image encoder name and local weights.
    """
    ctx: Dict[str, Any] = dict(classes=list(train_set.classes), input_kind=train_set.input_kind,
                               train_labels=train_set.labels,
                               train_label_mask=getattr(train_set, "label_mask", None))
    if train_set.input_kind == "features":
        ctx["in_features"] = int(train_set.feature_dim)
    if getattr(train_set, "roi_feature_dim", None):
        # a RegionDataset: region models size their ROI layers from it
        ctx["roi_feature_dim"] = int(train_set.roi_feature_dim)
    if backbone:
        ctx["backbone"] = backbone
    if backbone_weights:
        ctx["backbone_weights"] = backbone_weights
    if label_embeddings:
        from pyg_mlic.embeddings import load_label_embeddings

        ctx["label_embeddings"] = load_label_embeddings(label_embeddings, ctx["classes"])
        ctx["label_embeddings_spec"] = label_embeddings
    return ctx


def fit_input_statistics(model, train_set, *, force: bool = False,
                         apply: bool = True) -> Optional[Dict[str, Any]]:
    """Set the input standardisation of ``model``'s features encoder from ``train_set``.

    The encoder (:class:`~pyg_mlic.backbones.MLPEncoder` with ``standardize=True``, what
    :func:`~pyg_mlic.models.build_encoder` builds for ``input_kind="features"``) holds
    per-feature mean / standard deviation buffers, saved in every checkpoint, so that
    evaluation, prediction and export apply the training split's map. They come from the
    *training* split only (never the validation or test split), like the label statistics.
    :func:`~pyg_mlic.engine.fit` calls this before training.

    Args:
        model: a :class:`~pyg_mlic.models.MultiLabelModel`.
        train_set: the training split (a features dataset).
        force (bool): recompute statistics that are set already (a model loaded from a
            checkpoint keeps its own unless ``force``).
        apply (bool): ``False``: change nothing, only describe the statistics a run from
            this split uses (a resumed run reads them from its checkpoint).

    Returns:
        ``{"num_rows": N, "dim": D}`` when statistics were set, else ``None`` (no
        standardising features encoder, image data, or statistics set already).
    """
    import torch

    enc = getattr(model, "encoder", None)
    if getattr(train_set, "input_kind", None) != "features" or \
            not getattr(enc, "standardize", False) or not hasattr(enc, "fit_standardization"):
        return None
    described = {"num_rows": int(len(train_set)), "dim": int(enc.in_features),
                 "split": getattr(train_set, "split", None)}
    if not apply:
        return described
    unset = bool(torch.all(enc.input_mean == 0)) and bool(torch.all(enc.input_std == 1))
    if not (unset or force):
        return None
    from pyg_mlic.data.features import training_features

    X = training_features(train_set)
    enc.fit_standardization(X)
    return described
