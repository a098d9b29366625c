"""The dataset protocol every pyg_mlic dataset follows.

A dataset is a :class:`torch.utils.data.Dataset` whose items are ``dict`` samples:

=============  ==========================  ==============================================
key            value                       notes
=============  ==========================  ==============================================
``image``      float tensor ``[3, H, W]``  image datasets (``input_kind == "image"``)
``features``   float tensor ``[D]``        feature datasets (``input_kind == "features"``)
``target``     float tensor ``[C]``        1 = present, 0 = absent
``mask``       bool tensor ``[C]``         False = ignored (e.g. VOC *difficult*)
``boxes``      float tensor ``[M, 4]``     optional; xyxy in the (transformed) image's pixels
``box_labels`` long tensor ``[M]``         optional; class index of each box
``index``      int                         position of the sample in the dataset
=============  ==========================  ==============================================

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

_LIST_KEYS = ("boxes", "box_labels", "path")


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
