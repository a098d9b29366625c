r"""PASCAL VOC (and any VOC-format data, e.g. BCCD) for multi-label classification.

Layout (``root`` is the ``VOC2007`` folder, or a folder holding ``VOC<year>`` or
``VOCdevkit/VOC<year>``)::

    root/ImageSets/Main/<split>.txt     one image id per line
    root/Annotations/<id>.xml           objects: name, difficult, bndbox
    root/JPEGImages/<id>.jpg

Image-level labels follow the VOC classification convention (the same as the
``voc2007.npz`` label file and the VOC devkit's ``<class>_<split>.txt`` files):

.. math::
    Y_{ic} = \begin{cases}
      1 & \text{image } i \text{ has a non-difficult object of class } c\\
      0 & \text{its objects of class } c \text{ are all difficult}\\
     -1 & \text{no object of class } c
    \end{cases}

ML-GCN (Chen et al., CVPR 2019, Sec. 4.2) trains and evaluates on :math:`Y = 1`
versus :math:`Y = -1`, ignoring the difficult entries (:math:`Y = 0`) in both loss
and mAP; that is :class:`VOCDataset`'s default (``difficult="ignore"``).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyg_mlic.data._image_io import ImageDatasetMixin, apply_transform, resolve_under
from pyg_mlic.data.base import MultiLabelDataset, Sample
from pyg_mlic.data.transforms import build_transforms
from pyg_mlic.errors import DatasetError

PathLike = Union[str, os.PathLike]

__all__ = ["VOC_CLASSES", "VOCAnnotation", "parse_voc_xml", "voc_labels", "VOCDataset"]

#: The 20 PASCAL VOC classes in the official (devkit / VOC07) order.
VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor")


@dataclass
class VOCAnnotation:
    """The objects of one VOC XML file.

    Attributes:
        names (list of str): object class names (stripped).
        boxes (numpy.ndarray): float32 ``[M, 4]`` ``xmin, ymin, xmax, ymax`` as written
            (VOC's 1-based pixel convention is kept, as in ``torchvision``).
        difficult (numpy.ndarray): bool ``[M]``.
        size (tuple or None): ``(width, height)`` from ``<size>``, if present.
    """

    names: List[str]
    boxes: np.ndarray
    difficult: np.ndarray
    size: Optional[Tuple[int, int]]


def parse_voc_xml(path: PathLike) -> VOCAnnotation:
    """Parse one VOC annotation file with :mod:`xml.etree.ElementTree`.

    Raises:
        DatasetError: the file is missing, not well-formed XML, not an
            ``<annotation>``, or has an object without a name or with a bad box; the
            message names the file (and the object).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"VOC annotation file not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{path}: malformed XML ({e})") from None
    if root.tag != "annotation":
        raise DatasetError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    size = None
    s = root.find("size")
    if s is not None:
        try:
            size = (int(float(s.findtext("width"))), int(float(s.findtext("height"))))
        except (TypeError, ValueError):
            size = None
    names, boxes, difficult = [], [], []
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"{path}: object {k} has no <name>")
        d = (obj.findtext("difficult") or "0").strip()
        if d not in ("0", "1"):
            raise DatasetError(f"{path}: object {k} ({name}) has <difficult>{d}</difficult>, "
                               f"expected 0 or 1")
        bb = obj.find("bndbox")
        if bb is None:
            raise DatasetError(f"{path}: object {k} ({name}) has no <bndbox>")
        try:
            box = [float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: object {k} ({name}) has a missing or non-numeric "
                               f"<bndbox> coordinate") from None
        if not all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]:
            raise DatasetError(f"{path}: object {k} ({name}) has an invalid box {box} "
                               f"(need xmin <= xmax, ymin <= ymax)")
        names.append(name)
        boxes.append(box)
        difficult.append(d == "1")
    return VOCAnnotation(names, np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                         np.asarray(difficult, dtype=bool), size)


def _voc_root(root: PathLike, year: Optional[str]) -> Path:
    root = Path(root)
    cands = [root]
    if year:
        cands += [root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"]
    for c in cands:
        if (c / "ImageSets" / "Main").is_dir():
            return c
    raise DatasetError(f"no VOC-format dataset under {root}: none of "
                       f"{[str(c / 'ImageSets' / 'Main') for c in cands]} is a folder")


def _read_split(root: Path, split: str) -> List[str]:
    f = root / "ImageSets" / "Main" / f"{split}.txt"
    if not f.is_file():
        avail = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt")
                       if "_" not in p.stem)
        raise DatasetError(f"VOC split file not found: {f} (splits available: {avail})")
    ids = [line.split()[0] for line in f.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{f}: the split lists no image (empty dataset)")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"{f}: image id {dup!r} is listed twice")
    for i in ids:
        if "/" in i or "\\" in i or i in (".", ".."):
            raise DatasetError(f"{f}: image id {i!r} is not a plain file name")
    return ids


def _load_voc(root: PathLike, split: str, classes: Union[None, str, Sequence[str]],
              year: Optional[str]):
    vroot = _voc_root(root, year)
    ids = _read_split(vroot, split)
    anns = [parse_voc_xml(vroot / "Annotations" / f"{i}.xml") for i in ids]
    if isinstance(classes, str):
        if classes != "infer":
            raise ValueError(f"classes must be None, 'infer' or a list of names, got "
                             f"{classes!r}")
        # infer from every annotation file so that all splits get the same columns
        names = set()
        for f in sorted((vroot / "Annotations").glob("*.xml")):
            names.update(parse_voc_xml(f).names)
        classes = sorted(names)
        if not classes:
            raise DatasetError(f"{vroot / 'Annotations'}: no object in any annotation, "
                               f"cannot infer classes")
    elif classes is None:
        classes = list(VOC_CLASSES)
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise DatasetError(f"classes given for {vroot} contain duplicates: {classes}")
    col = {c: j for j, c in enumerate(classes)}
    labels = np.full((len(ids), len(classes)), -1, dtype=np.int8)
    for r, (i, a) in enumerate(zip(ids, anns)):
        for name, diff in zip(a.names, a.difficult):
            j = col.get(name)
            if j is None:
                raise DatasetError(f"{vroot / 'Annotations' / (i + '.xml')}: unknown class "
                                   f"name {name!r} (classes: {classes}); pass the dataset's "
                                   f"classes (classes=[...], --classes A,B,...) or infer "
                                   f"them from the annotations (classes='infer', "
                                   f"--classes infer)")
            if not diff:
                labels[r, j] = 1
            elif labels[r, j] < 0:
                labels[r, j] = 0
    return vroot, ids, labels, classes, anns


def voc_labels(root: PathLike, split: str, classes: Union[None, str, Sequence[str]] = None,
               year: Optional[str] = "2007") -> Tuple[List[str], np.ndarray, List[str]]:
    """VOC-convention image labels (1 present / 0 difficult only / -1 absent).

    Args:
        root (str or os.PathLike): the ``VOC<year>`` folder (or a parent holding
            ``VOC<year>`` or ``VOCdevkit/VOC<year>``), or any VOC-format folder.
        split (str): name of ``ImageSets/Main/<split>.txt`` (``trainval``, ``test`` ...).
        classes (None, "infer" or sequence of str): the columns. ``None``: the 20 VOC
            classes (:data:`VOC_CLASSES`); ``"infer"``: the sorted names found in all of
            ``Annotations/*.xml``; a list (e.g. ``["WBC", "RBC", "Platelets"]`` for BCCD)
            fixes names and order. (default: :obj:`None`)
        year (str, optional): used to find ``VOC<year>`` under ``root``.

    Returns:
        (list of str, numpy.ndarray, list of str): image ids (split-file order),
        ``int8 [N, C]`` labels, class names.

    Raises:
        DatasetError: missing split file / annotation, malformed XML, an object whose
            class is not in ``classes`` (unless inferred), empty split; naming the file.
    """
    _, ids, labels, classes, _ = _load_voc(root, split, classes, year)
    return ids, labels, classes


class VOCDataset(ImageDatasetMixin, MultiLabelDataset):
    r"""PASCAL VOC / VOC-format dataset for multi-label classification.

    ``labels`` (the multi-hot matrix label graphs are built from) is
    :math:`\mathbb{1}[Y = 1]`, i.e. positives only, difficult excluded — the
    statistics of the ML-GCN release. The raw VOC matrix is kept as ``voc_labels``.

    Samples are ``{"image", "target", "mask", "index", "path", "boxes", "box_labels"}``
    with ``boxes`` float32 ``[M, 4]`` ``xyxy`` in the transformed image's pixels.

    Args:
        root (str or os.PathLike): see :func:`voc_labels`.
        split (str): ``ImageSets/Main/<split>.txt``. (default: :obj:`"trainval"`)
        transform (callable, optional): ``(PIL image, boxes) -> (tensor, boxes)``.
            (default: ``build_transforms(train=split.startswith("train"), size=448)``)
        classes (None, "infer" or sequence of str): see :func:`voc_labels`.
        year (str): see :func:`voc_labels`. (default: :obj:`"2007"`)
        difficult (str): how ``Y = 0`` (difficult-only) entries are treated:
            ``"ignore"`` — target 0 and ``mask`` False (left out of loss and metrics);
            ``"positive"`` — target 1; ``"negative"`` — target 0 (both unmasked).
            (default: :obj:`"ignore"`)
        difficult_boxes (bool): also return the boxes of difficult objects; their flags
            are in ``annotations[i].difficult`` (same order). (default: :obj:`True`)
        image_ext (str): image file extension in ``JPEGImages``. (default: :obj:`".jpg"`)

    Raises:
        DatasetError: see :func:`voc_labels`; at ``__getitem__``, a missing or corrupt
            image (naming the file).
    """

    def __init__(self, root: PathLike, split: str = "trainval",
                 transform: Optional[Callable] = None,
                 classes: Union[None, str, Sequence[str]] = None, year: str = "2007",
                 difficult: str = "ignore", difficult_boxes: bool = True,
                 image_ext: str = ".jpg") -> None:
        if difficult not in ("ignore", "positive", "negative"):
            raise ValueError(f"difficult must be 'ignore', 'positive' or 'negative', got "
                             f"{difficult!r}")
        vroot, ids, raw, classes, anns = _load_voc(root, split, classes, year)
        self.root = vroot
        self.ids: List[str] = ids
        self.voc_labels: np.ndarray = raw
        self.annotations: List[VOCAnnotation] = anns
        self.difficult = difficult
        self.difficult_boxes = difficult_boxes
        self.image_files = [str(resolve_under(vroot, f"JPEGImages/{i}{image_ext}",
                                              f"ImageSets/Main/{split}.txt"))
                            for i in ids]
        col = {c: j for j, c in enumerate(classes)}
        self._boxes, self._box_labels = [], []
        for a in anns:
            keep = np.ones(len(a.names), bool) if difficult_boxes else ~a.difficult
            self._boxes.append(a.boxes[keep])
            self._box_labels.append(np.asarray([col[n] for n, k in zip(a.names, keep) if k],
                                               dtype=np.int64))
        target = raw >= 0 if difficult == "positive" else raw == 1
        mask = (raw != 0) if difficult == "ignore" else None
        if mask is not None and mask.all():
            mask = None
        super().__init__(classes, target.astype(np.uint8), mask, split=split)
        self.transform = transform if transform is not None else build_transforms(
            train=split.startswith("train"), size=448)

    def boxes(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Untransformed boxes ``float32 [M, 4]`` and ``box_labels`` of sample
        ``index`` (no image I/O)."""
        index = self._check_index(index)
        return self._boxes[index].copy(), self._box_labels[index].copy()

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        path = self.image_files[index]
        img = self.load_image(index)
        w, h = img.size
        boxes = torch.from_numpy(self._boxes[index].copy())
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        image, boxes = apply_transform(self.transform, img, boxes, path)
        sample: Sample = {"image": image}
        sample.update(self._target(index))
        sample["boxes"] = boxes.to(torch.float32)
        sample["box_labels"] = torch.from_numpy(self._box_labels[index].copy())
        sample["path"] = path
        return sample
