"""What a model is built from: the standard context a training split provides.

Every model of the registry accepts these keyword arguments (the *context*); which of
them a model uses depends on the model (the baseline ignores ``train_labels``, the
label-graph methods read it). :func:`pyg_mlic.models.build_model` passes a model only
the context keys its constructor takes, and refuses every other unknown key.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from pyg_mlic.models.registry import CONTEXT_KEYS

__all__ = ["model_context"]


def model_context(train_set, *, label_embeddings: Optional[str] = None,
                  backbone: Optional[str] = None, backbone_weights: Optional[str] = None
                  ) -> Dict[str, Any]:
    """The standard keyword arguments :func:`~pyg_mlic.models.build_model` receives from a
    training split: ``classes``, ``input_kind``, ``train_labels`` (label statistics come
    from this split only), ``in_features`` (feature datasets), ``roi_feature_dim``
    (region datasets), and the backbone / label embeddings when given.

    Args:
        train_set: the training split (any dataset of the :mod:`pyg_mlic.data` protocol).
        label_embeddings (str, optional): a spec of
            :func:`~pyg_mlic.embeddings.load_label_embeddings` (``onehot``, ``glove:PATH``
            ...), resolved here for the split's classes.
        backbone, backbone_weights (str, optional): image encoder name and local weights.
    """
    ctx: Dict[str, Any] = dict(classes=list(train_set.classes), input_kind=train_set.input_kind,
                               train_labels=train_set.labels)
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
