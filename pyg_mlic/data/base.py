"""The dataset protocol every pyg_mlic dataset follows.

A dataset is a :class:`torch.utils.data.Dataset` whose items are ``dict`` samples:

=================  ==========================  ===================================================
key                value                       notes
=================  ==========================  ===================================================
``image``          float tensor ``[3, H, W]``  image datasets (``input_kind == "image"``)
``features``       float tensor ``[D]``        feature datasets (``input_kind == "features"``)
``target``         float tensor ``[C]``        1 = present, 0 = absent
``mask``           bool tensor ``[C]``         False = ignored (e.g. VOC *difficult*)
``boxes``          float tensor ``[M, 4]``     optional; xyxy in the (transformed) image's pixels
``box_labels``     long tensor ``[M]``         optional; class index of each box
``index``          int                         position of the sample in the dataset
=================  ==========================  ===================================================

and which exposes, without loading any image:

- ``classes`` — list of ``C`` class names (column order of ``target``);
- ``labels`` — ``numpy.uint8 [N, C]`` multi-hot matrix (the statistics label graphs
  are built from: pass the *training* dataset's ``labels``);
- ``label_mask`` — ``numpy.bool_ [N, C]`` or ``None`` (False = ignored);
- ``input_kind`` — ``"image"`` or ``"features"``; ``feature_dim`` for features;
- ``split`` — the name of the split the samples come from.

Use :func:`collate` as the DataLoader ``collate_fn``: it stacks tensors and keeps
variable-length ``boxes`` / ``box_labels`` as lists.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

Sample = Dict[str, Any]

_LIST_KEYS = ("boxes", "box_labels", "box_difficult", "path")


class MultiLabelDataset(Dataset):
    """Base class: stores ``classes``, ``labels``, ``label_mask`` and ``split``.

    Subclasses implement :meth:`__getitem__` (calling :meth:`_target` for the
    label part of the sample) and set ``input_kind``.
    """

    input_kind: str = "image"
    feature_dim: Optional[int] = None

    def __init__(self, classes: Sequence[str], labels: np.ndarray,
                 label_mask: Optional[np.ndarray] = None, split: str = "train") -> None:
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape[1] != len(classes):
            raise ValueError(f"labels must be [N, {len(classes)}], got {labels.shape}")
        if len(labels) == 0:
            from pyg_mlic.errors import DatasetError
            raise DatasetError(f"{type(self).__name__} ({split}): the dataset is empty")
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be 0/1")
        self.classes: List[str] = [str(c) for c in classes]
        self.labels: np.ndarray = labels.astype(np.uint8, copy=False)
        if label_mask is not None:
            label_mask = np.asarray(label_mask, dtype=bool)
            if label_mask.shape != labels.shape:
                raise ValueError(f"label_mask must be {labels.shape}, got {label_mask.shape}")
        self.label_mask: Optional[np.ndarray] = label_mask
        self.split = split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def _target(self, index: int) -> Sample:
        t = torch.from_numpy(self.labels[index].astype(np.float32))
        if self.label_mask is None:
            m = torch.ones(len(self.classes), dtype=torch.bool)
        else:
            m = torch.from_numpy(self.label_mask[index].copy())
        return {"target": t, "mask": m, "index": int(index)}


def collate(samples: List[Sample]) -> Sample:
    """Collate ``dict`` samples: stack tensors, keep ``boxes``/``box_labels``/``path`` as lists."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    out: Sample = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if key in _LIST_KEYS:
            out[key] = vals
        elif isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], (int, float, np.integer, np.floating)):
            out[key] = torch.as_tensor(vals)
        else:
            out[key] = vals
    return out


#: batch entries :func:`check_batch_finite` checks (the model inputs)
FINITE_KEYS = ("image", "features", "roi_features", "roi_boxes", "boxes")


def check_batch_finite(batch: Sample) -> None:
    """Refuse NaN/inf in a batch's model inputs (:data:`FINITE_KEYS`), naming the entry.

    The engine calls this on every collated batch while it is still on the host (before the
    transfer to the device), so it never forces a device synchronisation; models call it
    only with debug checks on (``PYG_MLIC_DEBUG=1``, see
    :func:`pyg_mlic.models.base.debug_checks`)."""
    for key in FINITE_KEYS:
        value = batch.get(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, torch.Tensor) and v.is_floating_point() and \
                    not bool(torch.isfinite(v).all()):
                raise ValueError(f"non-finite values in the input batch ({key!r}); check the "
                                 "dataset (NaN/inf features, boxes or a broken transform)")


def check_splits(train_set, val_set=None, test_set=None) -> None:
    """Refuse splits that cannot belong to one run, before any work: another class list,
    input kind, or feature size than the training split."""
    from pyg_mlic.errors import ClassMismatchError, check_same_classes

    for name, ds in (("training", train_set), ("validation", val_set), ("test", test_set)):
        if ds is None and name != "training":
            continue
        if not (hasattr(ds, "classes") and hasattr(ds, "__getitem__")
                and hasattr(ds, "__len__")):
            raise TypeError(f"the {name} split must be a dataset of this library (a "
                            f"MultiLabelDataset: e.g. FeaturesDataset(path) for a features "
                            f".npz, or the splits of pyg_mlic.data.build_splits), got "
                            f"{type(ds).__name__}")
    kind = getattr(train_set, "input_kind", "image")
    dim = getattr(train_set, "feature_dim", None)
    for name, ds in (("validation", val_set), ("test", test_set)):
        if ds is None:
            continue
        check_same_classes("training split", train_set.classes, f"{name} split", ds.classes)
        other = getattr(ds, "input_kind", "image")
        if other != kind:
            raise ClassMismatchError(f"the training split holds {kind} but the {name} split "
                                     f"holds {other}")
        if kind == "features" and getattr(ds, "feature_dim", None) != dim:
            raise ClassMismatchError(
                f"feature size differs between splits: training split {dim}, {name} split "
                f"{getattr(ds, 'feature_dim', None)} (were they extracted with the same "
                f"backbone and pooling?)")


class SubsetDataset(MultiLabelDataset):
    """A subset of a :class:`MultiLabelDataset` that keeps the protocol
    (``classes``, ``labels``, ``label_mask``, ``input_kind``); ``index`` in the
    samples is the position in the subset, and their ``mask`` is this subset's
    ``label_mask`` row (the base dataset's unless replaced, e.g. by
    :func:`pyg_mlic.data.partial.drop_labels`)."""

    def __init__(self, dataset: MultiLabelDataset, indices: Sequence[int], split: str):
        idx = np.asarray(indices, dtype=np.int64)
        mask = dataset.label_mask[idx] if dataset.label_mask is not None else None
        super().__init__(dataset.classes, dataset.labels[idx], mask, split=split)
        self.dataset, self.indices = dataset, idx
        self.input_kind = dataset.input_kind
        self.feature_dim = getattr(dataset, "feature_dim", None)

    def __getitem__(self, i: int) -> Sample:
        s = dict(self.dataset[int(self.indices[i])])
        s["index"] = int(i)
        if self.label_mask is not None:
            s["mask"] = torch.from_numpy(self.label_mask[int(i)].copy())
        return s


def holdout_split(dataset: MultiLabelDataset, fraction: float, seed: int = 0,
                  val_transform=None):
    """Split ``dataset`` into ``(train, val)`` subsets with ``fraction`` held out for
    validation (seeded; used when a dataset has no validation split of its own).

    ``val_transform`` replaces the dataset's ``transform`` for the validation subset
    (a shallow copy of the dataset is made), so that validation images are not
    augmented."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    n = len(dataset)
    n_val = int(round(n * fraction))
    if n_val < 1 or n_val >= n:
        raise ValueError(f"cannot hold out {fraction:.0%} of {n} samples for validation")
    perm = np.random.default_rng(seed).permutation(n)
    val_base = dataset
    if val_transform is not None and hasattr(dataset, "transform"):
        import copy

        val_base = copy.copy(dataset)
        val_base.transform = val_transform
    return (SubsetDataset(dataset, np.sort(perm[n_val:]), split=f"{dataset.split}-train"),
            SubsetDataset(val_base, np.sort(perm[:n_val]), split=f"{dataset.split}-val"))
