"""Build the (train, validation, test) splits of a dataset by name.

This is what ``pyg-mlic train --dataset NAME`` calls. Validation: datasets with a
validation split of their own use it (synthetic scenes); otherwise
``val_fraction > 0`` holds out a seeded fraction of the training split, and
``val_fraction = 0`` trains on all of it (then the engine must evaluate the last
epoch: the test split is never used for selection).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from pyg_mlic.data.base import MultiLabelDataset, check_splits, holdout_split
from pyg_mlic.data.transforms import build_transforms

DATASETS = ("synthetic", "coco", "voc2007", "nuswide", "features", "folder")

Splits = Tuple[MultiLabelDataset, Optional[MultiLabelDataset], MultiLabelDataset]


def _need(value, flag: str, name: str):
    if value is None:
        raise ValueError(f"--dataset {name} needs {flag}")
    return value


def _first_existing(root: Path, *candidates: str) -> Path:
    for c in candidates:
        if (root / c).exists():
            return root / c
    raise FileNotFoundError(f"none of {list(candidates)} found under {root}")


def build_splits(name: str, *, root: Optional[str] = None, train_file: Optional[str] = None,
                 test_file: Optional[str] = None, val_file: Optional[str] = None,
                 image_size: int = 448, val_fraction: float = 0.0, seed: int = 0,
                 num_images: Optional[int] = None, augment: bool = True) -> Splits:
    """Return ``(train, val, test)`` for dataset ``name`` (one of :data:`DATASETS`).

    Args:
        name: dataset name.
        root: dataset folder (image datasets).
        train_file, test_file, val_file: annotation / list / features files; their
            meaning depends on the dataset (COCO: instances jsons; features: ``.npz``;
            folder: CSV files).
        image_size: side of the network input (448 in the papers).
        val_fraction: fraction of the training split held out for validation when
            the dataset has no validation split of its own.
        seed: seed of the hold-out split and of the synthetic scenes.
        num_images: synthetic scenes only: training-set size (val/test scale with it).
        augment: use the papers' random crop + flip on the training split.
    """
    train_tf = build_transforms(train=augment, size=image_size)
    test_tf = build_transforms(train=False, size=image_size)
    val = None
    if name == "synthetic":
        from pyg_mlic.data.synthetic import SyntheticScenes

        n_val = n_test = None
        if num_images:
            n_val, n_test = max(num_images // 4, 8), max(num_images // 2, 8)
        kw = dict(image_size=image_size, seed=seed)
        # small objects: a mild crop, so that no labelled object is cropped away
        syn_train_tf = build_transforms(train=True, size=image_size, scale=(0.85, 1.0)) \
            if augment else test_tf
        train = SyntheticScenes("train", num_images=num_images, transform=syn_train_tf, **kw)
        val = SyntheticScenes("val", num_images=n_val, transform=test_tf, **kw)
        test = SyntheticScenes("test", num_images=n_test, transform=test_tf, **kw)
        return train, val, test
    if name == "coco":
        from pyg_mlic.data.coco import COCODataset

        r = Path(_need(root, "--root", name))
        tr_ann = Path(train_file) if train_file else _first_existing(
            r, "annotations/instances_train2014.json", "annotations/instances_train2017.json")
        te_ann = Path(test_file) if test_file else _first_existing(
            r, "annotations/instances_val2014.json", "annotations/instances_val2017.json")
        train = COCODataset(r, tr_ann, split="train", transform=train_tf)
        test = COCODataset(r, te_ann, split="test", transform=test_tf, classes=train.classes)
        if val_file:
            val = COCODataset(r, val_file, split="val", transform=test_tf, classes=train.classes)
    elif name == "voc2007":
        from pyg_mlic.data.voc import VOCDataset

        r = Path(_need(root, "--root", name))
        if (r / "VOCdevkit" / "VOC2007").is_dir():
            r = r / "VOCdevkit" / "VOC2007"
        train = VOCDataset(r, split=train_file or "trainval", transform=train_tf)
        test = VOCDataset(r, split=test_file or "test", transform=test_tf)
        if val_file:
            val = VOCDataset(r, split=val_file, transform=test_tf)
    elif name == "nuswide":
        from pyg_mlic.data.nuswide import NUSWIDEDataset

        r = _need(root, "--root", name)
        train = NUSWIDEDataset(r, split="train", transform=train_tf)
        test = NUSWIDEDataset(r, split="test", transform=test_tf)
    elif name == "features":
        from pyg_mlic.data.features import FeaturesDataset

        train = FeaturesDataset(_need(train_file, "--train-file", name), split="train")
        test = FeaturesDataset(_need(test_file, "--test-file", name), split="test")
        if val_file:
            val = FeaturesDataset(val_file, split="val")
    elif name == "folder":
        from pyg_mlic.data.folder import FolderDataset

        r = _need(root, "--root", name)
        train = FolderDataset(r, _need(train_file, "--train-file", name), split="train",
                              transform=train_tf)
        test = FolderDataset(r, _need(test_file, "--test-file", name), split="test",
                             classes=train.classes, transform=test_tf)
        if val_file:
            val = FolderDataset(r, val_file, split="val", classes=train.classes, transform=test_tf)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")
    if val is None and val_fraction > 0:
        train, val = holdout_split(train, val_fraction, seed=seed, val_transform=test_tf)
    check_splits(train, val, test)  # classes, input kind, feature size: caught at load
    return train, val, test
