r"""Extract image-level features with a (frozen) backbone into the features ``.npz`` format.

The heads of the implemented papers can be trained on precomputed features instead of
images (``pyg-mlic train --dataset features``): for every image :math:`I_n` of a split
this module computes the pooled feature of ML-GCN Eq. 3,

.. math::
    \mathbf{x}_n = f_{pool}\big(f_{cnn}(I_n;\,\theta_{cnn})\big) \in \mathbb{R}^{D},

with the encoder in evaluation mode and without gradients, and stores
``features`` float32 ``[N, D]``, ``labels`` uint8 ``[N, C]``, ``classes`` and, when
the dataset has one (VOC *difficult*), ``mask`` bool ``[N, C]``, plus the source
``image`` of every row (see :mod:`pyg_mlic.data.features`).

Python::

    from pyg_mlic.backbones import ImageEncoder, build_backbone
    from pyg_mlic.data import VOCDataset, build_transforms, save_features
    from pyg_mlic.data.extract import extract_features

    ds = VOCDataset("bccd", split="test", classes=["WBC", "RBC", "Platelets"],
                    transform=build_transforms(train=False, size=224))
    enc = ImageEncoder(build_backbone("efficientnet_lite0", weights="imagenet"), pool="avg")
    X, Y, M = extract_features(ds, enc)
    save_features("bccd_test.npz", X, Y, ds.classes, mask=M)

Command line (one file per split)::

    pyg-mlic extract-features --dataset voc2007 --root bccd --split test \
        --classes WBC,RBC,Platelets --backbone efficientnet_lite0 \
        --backbone-weights imagenet --image-size 224 --out bccd_test.npz
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from pyg_mlic.data.base import MultiLabelDataset
from pyg_mlic.errors import DatasetError

PathLike = Union[str, os.PathLike]

__all__ = ["extract_features", "build_extraction_dataset", "EXTRACT_DATASETS"]

#: dataset names :func:`build_extraction_dataset` understands
EXTRACT_DATASETS = ("voc2007", "voc", "coco", "folder", "nuswide", "synthetic")


@torch.no_grad()
def extract_features(dataset: MultiLabelDataset, encoder: nn.Module, batch_size: int = 32,
                     progress: bool = True, device: Union[None, str, torch.device] = None,
                     num_workers: int = 0
                     ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    r"""Pooled features of every image of ``dataset`` (ML-GCN Eq. 3), in dataset order.

    .. math::
        \mathbf{X}_{n,:} = \mathrm{encoder}(I_n) \in \mathbb{R}^{D}

    The encoder runs in evaluation mode (BatchNorm statistics frozen, no dropout)
    under :func:`torch.no_grad`; its previous training/eval mode is restored
    afterwards. The dataset's own ``transform`` is used as is: give it the test-time
    transform (``build_transforms(train=False, size=...)``), otherwise the features
    carry random crops and flips.

    Args:
        dataset (MultiLabelDataset): an image dataset (``input_kind == "image"``) of the
            :mod:`pyg_mlic.data.base` protocol.
        encoder (nn.Module): maps images ``[B, 3, H, W]`` to ``[B, D]``, e.g.
            :class:`pyg_mlic.backbones.ImageEncoder` (backbone + global pooling).
        batch_size (int): images per forward pass. (default: :obj:`32`)
        progress (bool): show a tqdm progress bar. (default: :obj:`True`)
        device (str or torch.device, optional): where the encoder runs
            (default: the device of the encoder's parameters).
        num_workers (int): DataLoader workers. (default: :obj:`0`)

    Returns:
        (numpy.ndarray, numpy.ndarray, numpy.ndarray or None): ``features`` float32
        ``[N, D]``, ``labels`` uint8 ``[N, C]`` (the dataset's ``labels``) and ``mask``
        bool ``[N, C]`` (``False`` = ignored label) or :obj:`None` when the dataset
        ignores no label.

    Raises:
        ValueError: a feature dataset, a bad ``batch_size``, or an encoder output that
            is not ``[B, D]``.
        DatasetError: the encoder produced non-finite features (naming the image).
    """
    from pyg_mlic.data.loader import make_loader, to_device

    if getattr(dataset, "input_kind", "image") != "image":
        raise ValueError(f"extract_features: {type(dataset).__name__} holds precomputed "
                         f"features (input_kind={dataset.input_kind!r}), not images")
    if int(batch_size) < 1:
        raise ValueError(f"extract_features: batch_size must be >= 1, got {batch_size}")
    params = list(encoder.parameters()) + list(encoder.buffers())
    from pyg_mlic.utils.device import resolve_device

    dev = resolve_device(device) if device is not None else (
        params[0].device if params else torch.device("cpu"))
    was_training = encoder.training
    encoder.eval().to(dev)
    loader = make_loader(dataset, int(batch_size), train=False, num_workers=num_workers)
    it = loader
    if progress:
        try:
            from pyg_mlic.utils.progress import tqdm

            it = tqdm(loader, desc=f"features ({getattr(dataset, 'split', '?')})",
                      dynamic_ncols=True, leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass
    chunks, start = [], 0
    try:
        for batch in it:
            batch = to_device(batch, dev)
            x = encoder(batch["image"])
            if x.dim() != 2 or x.size(0) != batch["image"].size(0):
                raise ValueError(f"extract_features: the encoder must return [B, D] features, "
                                 f"got {tuple(x.shape)} for {tuple(batch['image'].shape)} "
                                 f"images (add global pooling, e.g. ImageEncoder)")
            x = x.float()
            bad = ~torch.isfinite(x).all(1)
            if bad.any():
                row = start + int(bad.nonzero()[0])
                name = _image_name(dataset, row)
                raise DatasetError(f"extract_features: non-finite features for sample {row}"
                                   f"{' (' + name + ')' if name else ''} of "
                                   f"{type(dataset).__name__}({getattr(dataset, 'split', '?')})")
            chunks.append(x.cpu().numpy())
            start += x.size(0)
    finally:
        encoder.train(was_training)
    features = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    labels = np.asarray(dataset.labels, dtype=np.uint8)
    mask = getattr(dataset, "label_mask", None)
    mask = None if mask is None or np.asarray(mask).all() else np.asarray(mask, dtype=bool)
    if len(features) != len(labels):  # pragma: no cover - guards a broken dataset
        raise DatasetError(f"extract_features: {len(features)} feature rows for "
                           f"{len(labels)} labelled samples")
    return features, labels, mask


def _image_name(dataset, index: int) -> str:
    files = getattr(dataset, "image_files", None)
    return str(files[index]) if files is not None and index < len(files) else ""


def build_extraction_dataset(name: str, *, root: Optional[PathLike] = None,
                             split: Optional[str] = None, image_size: int = 224,
                             classes: Union[None, str, Sequence[str]] = None,
                             mean: Optional[Sequence[float]] = None,
                             std: Optional[Sequence[float]] = None,
                             num_images: Optional[int] = None,
                             seed: int = 0) -> MultiLabelDataset:
    """One split of an image dataset with the *test-time* transform (resize to
    ``image_size`` and normalise), as feature extraction needs.

    Args:
        name (str): one of :data:`EXTRACT_DATASETS`. ``voc2007``/``voc`` read any
            VOC-format folder (BCCD included: pass its ``classes``).
        root (path): the dataset folder (not needed for ``synthetic``).
        split (str): ``voc``: the ``ImageSets/Main/<split>.txt`` name (default
            ``trainval``); ``coco``: an instances json (path, relative to ``root`` or
            absolute) or a split name such as ``train2014`` for
            ``root/annotations/instances_<split>.json``; ``folder``: the CSV file;
            ``nuswide``: ``train``/``test``; ``synthetic``: ``train``/``val``/``test``.
        image_size (int): side of the network input. (default: :obj:`224`)
        classes (None, "infer" or list of str): column names and order (VOC: default
            the 20 VOC classes; BCCD: ``["WBC", "RBC", "Platelets"]``; COCO: default
            all categories sorted by name).
        mean, std: normalisation (default: ImageNet statistics).
        num_images (int, optional): synthetic scenes only.
        seed (int): synthetic scenes only.

    Raises:
        ValueError: unknown dataset name or a missing ``root``/``split``.
        DatasetError: whatever the dataset class raises (missing files, bad classes).
    """
    from pyg_mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

    tf = build_transforms(train=False, size=int(image_size), mean=tuple(mean or IMAGENET_MEAN),
                          std=tuple(std or IMAGENET_STD))
    if isinstance(classes, str) and classes != "infer":
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if name not in EXTRACT_DATASETS:
        raise ValueError(f"unknown dataset {name!r} for feature extraction; choose from "
                         f"{list(EXTRACT_DATASETS)}")
    if name == "synthetic":
        from pyg_mlic.data.synthetic import SyntheticScenes

        return SyntheticScenes(split or "train", num_images=num_images, image_size=image_size,
                               seed=seed, transform=tf)
    if root is None:
        raise ValueError(f"--dataset {name} needs --root (the dataset folder)")
    r = Path(root)
    if name in ("voc2007", "voc"):
        from pyg_mlic.data.voc import VOCDataset

        return VOCDataset(r, split=split or "trainval", transform=tf, classes=classes)
    if name == "coco":
        from pyg_mlic.data.coco import COCODataset

        if not split:
            raise ValueError("--dataset coco needs --split: an instances json or a split "
                             "name such as train2014")
        ann = Path(split)
        if not (ann.suffix == ".json" or ann.exists() or (r / ann).exists()):
            ann = r / "annotations" / f"instances_{split}.json"
        return COCODataset(r, ann, split=ann.stem.replace("instances_", ""), transform=tf,
                           classes=None if classes == "infer" else classes)
    if name == "folder":
        from pyg_mlic.data.folder import FolderDataset

        if not split:
            raise ValueError("--dataset folder needs --split: the CSV file of the split")
        return FolderDataset(r, split, classes=None if classes == "infer" else classes,
                             transform=tf, split=Path(split).stem)
    from pyg_mlic.data.nuswide import NUSWIDEDataset

    return NUSWIDEDataset(r, split=split or "train", transform=tf,
                          classes=None if classes == "infer" else classes)
