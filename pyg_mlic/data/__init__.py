"""Datasets (all follow the protocol of :mod:`pyg_mlic.data.base`).

- :class:`COCODataset` — MS-COCO instances json (pycocotools);
- :class:`VOCDataset` — PASCAL VOC XML + ImageSets (difficult → mask);
- :class:`NUSWIDEDataset` — NUS-WIDE list files;
- :class:`FeaturesDataset` — precomputed features ``.npz``;
- :class:`FolderDataset` — a folder of images + CSV;
- :class:`SyntheticScenes` — procedural scenes of the embedded default.

:func:`build_splits` builds the (train, val, test) splits of any of them by name;
:func:`drop_labels` hides a seeded fraction of a training split's labels (partial labels).
"""
from pyg_mlic.data._image_io import VerifyReport, load_image, verify_images
from pyg_mlic.data.base import MultiLabelDataset, SubsetDataset, collate, holdout_split
from pyg_mlic.data.coco import COCODataset, coco_labels
from pyg_mlic.data.factory import DATASETS, build_splits
from pyg_mlic.data.features import FeaturesDataset, load_features, save_features
from pyg_mlic.data.folder import FolderDataset, read_label_csv
from pyg_mlic.data.nuswide import NUSWIDEDataset, nuswide_labels
from pyg_mlic.data.partial import drop_labels
from pyg_mlic.data.synthetic import SCENES, SyntheticScenes
from pyg_mlic.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from pyg_mlic.data.transforms import RandomCropResizeTransform, ResizeTransform, build_transforms
from pyg_mlic.data.voc import VOC_CLASSES, VOCAnnotation, VOCDataset, parse_voc_xml, voc_labels

__all__ = [
    "MultiLabelDataset", "SubsetDataset", "collate", "holdout_split", "COCODataset",
    "coco_labels", "VOCDataset", "voc_labels", "VOC_CLASSES", "VOCAnnotation", "parse_voc_xml",
    "NUSWIDEDataset", "nuswide_labels", "FeaturesDataset", "load_features", "save_features",
    "FolderDataset", "read_label_csv", "SyntheticScenes", "SCENES", "SYNTHETIC_CLASSES", "build_splits", "DATASETS",
    "drop_labels",
    "build_transforms", "ResizeTransform", "RandomCropResizeTransform", "load_image",
    "verify_images", "VerifyReport",
]
