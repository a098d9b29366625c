r"""Partial labels: hide a seeded random fraction of a training split's known labels.

The partial-label setting of the multi-label literature (e.g. Durand et al., *Learning a
Deep ConvNet for Multi-label Classification with Partial Labels*, CVPR 2019) trains on
label matrices in which only some entries are known; the benchmarks simulate it on a
fully labelled dataset by removing a random fraction of the training labels.

Here an unknown entry is a ``False`` in the dataset's ``label_mask`` (the same mask that
marks VOC *difficult* objects): every loss of the library ignores it, and the label-graph
statistics count only pairs of known entries (:func:`pyg_mlic.graphs.cooccurrence` with
``mask=``). :func:`drop_labels` hides entries uniformly at random among the known ones
(positives and negatives alike, independently of their values: missing completely at
random), so

.. math::
    |\{(n, c) : K'_{nc}\}| = |\{(n, c) : K_{nc}\}| - \operatorname{round}(f\,
    |\{(n, c) : K_{nc}\}|)

with :math:`\mathbf{K}` the known-mask before and :math:`\mathbf{K}'` after; entries
unknown already stay unknown. ``pyg-mlic train --drop-labels F`` and
:func:`pyg_mlic.data.factory.build_splits` (``drop_labels=``) apply it to the training
split only: validation and test labels are never touched.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional

import numpy as np

from pyg_mlic.data.base import MultiLabelDataset, SubsetDataset

__all__ = ["drop_labels", "check_drop_fraction", "PARTIAL_LABELS_ATTR"]

#: the attribute of a dataset returned by :func:`drop_labels` that records what was hidden
#: (``fraction``, ``seed``, ``known_before``, ``hidden``, ``known_after``,
#: ``known_fraction``); :func:`pyg_mlic.engine.fit` writes it to ``metrics.json``
PARTIAL_LABELS_ATTR = "partial_labels"
#: attributes of the wrapped dataset the partial-label view carries over (the data config
#: runs record, the ROI sizes of a :class:`~pyg_mlic.detection.RegionDataset`)
_CARRIED = ("data_config", "roi_feature_dim", "max_instances")
# a stream of its own, so that the hidden entries do not depend on how else the run seed
# is used (e.g. the validation hold-out permutation draws from default_rng(seed))
_STREAM = 0x9A27


def check_drop_fraction(fraction: Any, name: str = "drop_labels") -> float:
    """``fraction`` as a float in :math:`[0, 1)`, else a one-line :class:`ValueError`."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) \
            or not math.isfinite(float(fraction)) or not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"{name} must be a fraction of the training labels to hide, "
                         f"0 <= f < 1 (1 would leave no label to train on), got {fraction!r}")
    return float(fraction)


def drop_labels(dataset: MultiLabelDataset, fraction: float, seed: int = 0
                ) -> MultiLabelDataset:
    r"""A view of ``dataset`` with a seeded random ``fraction`` of its known label entries
    made unknown (``label_mask`` False).

    Of the :math:`K` known entries (all :math:`N C` when ``label_mask`` is ``None``),
    :math:`\operatorname{round}(f K)` are chosen uniformly at random without replacement;
    entries unknown already stay unknown. The draw depends on ``seed`` only (a random
    stream of its own), so the same seed hides the same entries of the
    same dataset.

    The view is a :class:`~pyg_mlic.data.base.SubsetDataset` over all of ``dataset``
    (every part of the library that follows the base dataset — ROI caches, the image
    loader of the region backends, the evaluation view of the two-stage recipe — follows
    it), whose samples carry the new ``mask``; ``labels`` are unchanged (the hidden
    values stay there, unused). ``dataset`` itself is not modified.

    Args:
        dataset: any dataset of the :mod:`pyg_mlic.data` protocol (the **training** split).
        fraction (float): :math:`f \in [0, 1)`; ``0`` returns ``dataset`` itself.
        seed (int): the run's seed. (default: :obj:`0`)

    Returns:
        The view, with attribute ``partial_labels`` (:data:`PARTIAL_LABELS_ATTR`): a dict
        ``fraction``, ``seed``, ``known_before``, ``hidden``, ``known_after`` and
        ``known_fraction`` (of all :math:`N C` entries).

    Raises:
        ValueError: ``fraction`` outside :math:`[0, 1)`.
    """
    f = check_drop_fraction(fraction)
    if f == 0.0:
        return dataset
    labels = np.asarray(dataset.labels)
    old = getattr(dataset, "label_mask", None)
    known = np.ones(labels.shape, dtype=bool) if old is None else np.asarray(old, dtype=bool)
    flat = np.flatnonzero(known)
    n_hide = int(round(f * flat.size))
    rng = np.random.default_rng([int(seed), _STREAM])
    new = known.copy().reshape(-1)
    new[flat[rng.choice(flat.size, size=n_hide, replace=False)]] = False
    new = new.reshape(labels.shape)
    view = SubsetDataset(dataset, np.arange(len(dataset)), split=dataset.split)
    view.label_mask = new
    for attr in _CARRIED:
        if getattr(dataset, attr, None) is not None:
            setattr(view, attr, getattr(dataset, attr))
    info: Dict[str, Optional[float]] = {
        "fraction": f, "seed": int(seed), "known_before": int(flat.size), "hidden": n_hide,
        "known_after": int(flat.size - n_hide),
        "known_fraction": float((flat.size - n_hide) / max(labels.size, 1))}
    prev = getattr(dataset, PARTIAL_LABELS_ATTR, None)
    if prev:
        info["previous"] = prev  # type: ignore[assignment]
    setattr(view, PARTIAL_LABELS_ATTR, info)
    return view
