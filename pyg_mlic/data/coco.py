"""MS-COCO multi-label classification from the official ``instances_*.json`` files.

Image-level labels are the set of categories of an image's annotations, as in
ML-GCN (Chen et al., CVPR 2019, Sec. 4.1) and A-GCN: COCO's category ids
(1 ... 90, with gaps) are mapped to contiguous columns whose default order is the
category *names* sorted alphabetically — the column order of the ML-GCN release
(``airplane, apple, backpack, ...``; the same as ``classes`` in the project's
``coco2014.npz``).

The JSON is parsed with :mod:`json` (so a malformed file gets a message with the
line and column) and indexed with :class:`pycocotools.coco.COCO`.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyg_mlic.data._image_io import ImageDatasetMixin, apply_transform, resolve_under
from pyg_mlic.data.base import MultiLabelDataset, Sample
from pyg_mlic.data.transforms import build_transforms
from pyg_mlic.errors import ClassMismatchError, DatasetError

PathLike = Union[str, os.PathLike]

__all__ = ["COCO_CLASSES", "coco_labels", "COCODataset"]

#: The 80 COCO object categories in category-id order (the column order of COCO-2014
#: multi-label papers).
COCO_CLASSES: Tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush")


@dataclass
class _COCOIndex:
    """Everything read from one annotation file (internal)."""

    path: Path
    image_ids: List[int]
    file_names: List[str]
    sizes: List[Tuple[Optional[int], Optional[int]]]
    labels: np.ndarray                      # uint8 [N, C]
    classes: List[str]
    boxes: List[np.ndarray]                 # float32 [M, 4] xyxy per image
    box_labels: List[np.ndarray]            # int64 [M]
    box_crowd: List[np.ndarray]             # bool [M]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"COCO annotation file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column "
                           f"{e.colno})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 JSON file ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: a COCO annotation file is a JSON object with keys "
                           f"'images', 'annotations', 'categories'; got a "
                           f"{type(data).__name__}")
    for key in ("images", "categories"):
        if key not in data:
            raise DatasetError(f"{path}: missing the {key!r} list (keys found: "
                               f"{sorted(data)}); is this a COCO instances file?")
    for key in ("images", "categories", "annotations"):
        if key in data and not isinstance(data[key], list):
            raise DatasetError(f"{path}: {key!r} must be a list, got "
                               f"{type(data[key]).__name__}")
    return data


def _check_records(path: Path, data: dict, need_boxes: bool) -> None:
    """Validate the fields pycocotools and this module rely on."""
    def need(rec, i, what, key, types):
        if not isinstance(rec, dict) or key not in rec:
            raise DatasetError(f"{path}: {what}[{i}] has no {key!r} field: {rec!r:.200}")
        if not isinstance(rec[key], types) or isinstance(rec[key], bool):
            raise DatasetError(f"{path}: {what}[{i}][{key!r}] = {rec[key]!r:.100} has the "
                               f"wrong type")
    for i, img in enumerate(data["images"]):
        need(img, i, "images", "id", int)
        need(img, i, "images", "file_name", str)
    for i, cat in enumerate(data["categories"]):
        need(cat, i, "categories", "id", int)
        need(cat, i, "categories", "name", str)
    for i, ann in enumerate(data.get("annotations", [])):
        need(ann, i, "annotations", "image_id", int)
        need(ann, i, "annotations", "category_id", int)
        if "id" not in ann:       # pycocotools indexes annotations by id
            ann["id"] = -(i + 1)
        if need_boxes:
            bb = ann.get("bbox")
            if (not isinstance(bb, (list, tuple)) or len(bb) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                               and math.isfinite(v) for v in bb)
                    or bb[2] < 0 or bb[3] < 0):
                raise DatasetError(f"{path}: annotation {ann['id']} (annotations[{i}]) has an "
                                   f"invalid 'bbox' {bb!r:.100}; expected [x, y, width, "
                                   f"height] with finite values and width, height >= 0")


def _index_coco(ann_file: PathLike, classes: Optional[Sequence[str]], keep_empty: bool,
                need_boxes: bool) -> _COCOIndex:
    from pycocotools.coco import COCO

    path = Path(ann_file)
    data = _read_json(path)
    _check_records(path, data, need_boxes)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):       # pycocotools prints progress
        coco.createIndex()

    # categories: id -> name, unique ids and names
    if len(coco.cats) != len(data["categories"]):
        raise DatasetError(f"{path}: duplicate category ids in 'categories'")
    cat_name = {cid: c["name"] for cid, c in coco.cats.items()}
    names = list(cat_name.values())
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"{path}: duplicate category names {dup}")
    if classes is None:
        classes = sorted(names)
    else:
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise DatasetError(f"classes given for {path} contain duplicates")
        unknown = [c for c in classes if c not in set(names)]
        if unknown:
            raise ClassMismatchError(f"{path}: classes {unknown} are not categories of this "
                                     f"file (its categories: {sorted(names)})")
    column = {c: j for j, c in enumerate(classes)}
    cat_col = {cid: column.get(n, -1) for cid, n in cat_name.items()}   # -1: not selected

    if len(coco.imgs) != len(data["images"]):
        raise DatasetError(f"{path}: duplicate image ids in 'images'")
    for ann in data.get("annotations", []):
        if ann["category_id"] not in cat_col:
            raise DatasetError(f"{path}: annotation {ann['id']} of image {ann['image_id']} has "
                               f"unknown category id {ann['category_id']} (not in "
                               f"'categories', ids {sorted(cat_col)[:5]}...)")
        if ann["image_id"] not in coco.imgs:
            raise DatasetError(f"{path}: annotation {ann['id']} refers to unknown image id "
                               f"{ann['image_id']} (not in 'images')")

    ids, files, sizes, rows, boxes, box_labels, crowd = [], [], [], [], [], [], []
    for img in data["images"]:                  # file order
        anns = coco.imgToAnns.get(img["id"], [])
        row = np.zeros(len(classes), dtype=np.uint8)
        b, bl, bc = [], [], []
        for ann in anns:
            j = cat_col[ann["category_id"]]
            if j < 0:
                continue
            row[j] = 1
            if need_boxes:
                x, y, w, h = (float(v) for v in ann["bbox"])
                b.append((x, y, x + w, y + h))
                bl.append(j)
                bc.append(bool(ann.get("iscrowd", 0)))
        if not keep_empty and not row.any():
            continue
        ids.append(int(img["id"]))
        files.append(img["file_name"])
        w, h = img.get("width"), img.get("height")
        sizes.append((w if isinstance(w, int) else None, h if isinstance(h, int) else None))
        rows.append(row)
        boxes.append(np.asarray(b, dtype=np.float32).reshape(-1, 4))
        box_labels.append(np.asarray(bl, dtype=np.int64))
        crowd.append(np.asarray(bc, dtype=bool))
    if not ids:
        why = "" if keep_empty else "; keep_empty=False drops images without labels"
        raise DatasetError(f"{path}: no image left (the file lists {len(data['images'])} "
                           f"images{why}) - empty dataset")
    labels = np.stack(rows)
    return _COCOIndex(path, ids, files, sizes, labels, list(classes), boxes, box_labels, crowd)


def coco_labels(ann_file: PathLike, classes: Optional[Sequence[str]] = None,
                keep_empty: bool = True) -> Tuple[List[int], np.ndarray, List[str]]:
    r"""Image-level multi-hot labels of a COCO instances file.

    .. math::
        Y_{ic} = \mathbb{1}\left[\exists\ \text{annotation of image } i
        \text{ with category } c\right]

    (crowd annotations count, as in the ML-GCN release).

    Args:
        ann_file (str or os.PathLike): ``instances_<split>.json``.
        classes (sequence of str, optional): category names giving the columns, in
            order; a subset is allowed (annotations of other categories are ignored).
            (default: all categories sorted by name, ML-GCN's order)
        keep_empty (bool): keep images without any (selected) annotation as all-negative
            rows. ``False`` drops them, which reproduces ML-GCN's image lists (82,081
            train2014 / 40,137 val2014 images). (default: :obj:`True`)

    Returns:
        (list of int, numpy.ndarray, list of str): image ids (file order), ``uint8
        [N, C]`` labels, class names.

    Raises:
        DatasetError: missing or malformed JSON, missing fields, an annotation with a
            category id not in ``categories`` or an unknown image id, empty result; the
            message names the file.
        ClassMismatchError: a name in ``classes`` is not a category of the file.
    """
    idx = _index_coco(ann_file, classes, keep_empty, need_boxes=False)
    return idx.image_ids, idx.labels, idx.classes


class COCODataset(ImageDatasetMixin, MultiLabelDataset):
    r"""MS-COCO (or any COCO-format instances file) for multi-label classification.

    Samples are ``{"image": float [3, H, W], "target": float [C], "mask": bool [C],
    "index": int, "path": str}`` plus, with ``with_boxes=True``, ``"boxes"`` float32
    ``[M, 4]`` (``xyxy`` in the transformed image's pixels, converted from COCO's
    ``xywh`` and clipped to the image before the transform) and ``"box_labels"`` int64
    ``[M]`` (column index of each box). Boxes go through the transform with the image,
    so they stay aligned (see :mod:`pyg_mlic.data.transforms`).

    Args:
        root (str or os.PathLike): dataset folder; image paths (``file_name`` in the
            JSON) are resolved under ``root / image_dir`` and may not leave ``root``.
        ann_file (str or os.PathLike): the instances JSON; a relative path is looked up
            under ``root`` when it does not exist as given.
        split (str): split name (``"train2014"``, ``"val"`` ...). It picks the default
            transform (training augmentation when it starts with ``"train"``) and the
            default ``image_dir``. (default: :obj:`"train"`)
        transform (callable, optional): ``(PIL image, boxes) -> (tensor, boxes)``.
            (default: ``build_transforms(train=split.startswith("train"), size=448)``)
        classes (sequence of str, optional): see :func:`coco_labels`.
        keep_empty (bool): see :func:`coco_labels`. (default: :obj:`True`)
        with_boxes (bool): return ``boxes`` / ``box_labels``. (default: :obj:`True`)
        image_dir (str, optional): image folder relative to ``root``. ``None`` picks the
            one of ``""``, ``split``, ``"images"``, ``"images/<split>"`` that holds
            most of the first 20 listed images (``root/train2014/...`` for the official
            layout), ``root`` itself if none does.
        crowd_boxes (bool): also return the boxes of ``iscrowd`` annotations (they still
            count for the image labels either way). (default: :obj:`False`)

    Raises:
        DatasetError: see :func:`coco_labels`; image paths escaping ``root``; at
            ``__getitem__``, a missing or corrupt image or one whose size differs from
            the JSON's ``width``/``height`` (naming the file).
    """

    def __init__(self, root: PathLike, ann_file: PathLike, split: str = "train",
                 transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None, keep_empty: bool = True,
                 with_boxes: bool = True, image_dir: Optional[str] = None,
                 crowd_boxes: bool = False) -> None:
        self.root = Path(root)
        ann = Path(ann_file)
        if not ann.is_absolute() and not ann.exists() and (self.root / ann).exists():
            ann = self.root / ann
        self.ann_file = ann
        idx = _index_coco(ann, classes, keep_empty, need_boxes=with_boxes)
        if image_dir is None:
            image_dir = self._guess_image_dir(idx.file_names, split)
        self.image_dir = image_dir
        base = resolve_under(self.root, image_dir, "image_dir") if image_dir else self.root
        self.image_files = [str(resolve_under(base, f, f"{ann} (image {iid})"))
                            for f, iid in zip(idx.file_names, idx.image_ids)]
        self.image_ids: List[int] = idx.image_ids
        self.image_sizes = idx.sizes
        self.with_boxes = with_boxes
        if with_boxes:
            keep = [np.ones(len(c), bool) if crowd_boxes else ~c for c in idx.box_crowd]
            self._boxes = [b[k] for b, k in zip(idx.boxes, keep)]
            self._box_labels = [bl[k] for bl, k in zip(idx.box_labels, keep)]
        super().__init__(idx.classes, idx.labels, None, split=split)
        self.transform = transform if transform is not None else build_transforms(
            train=split.startswith("train"), size=448)

    def _guess_image_dir(self, files: Sequence[str], split: str) -> str:
        """The candidate folder holding most of the first 20 listed images."""
        best, best_hits = "", 0
        for cand in ("", split, "images", f"images/{split}"):
            try:
                base = resolve_under(self.root, cand, "image_dir") if cand else self.root
                hits = sum(resolve_under(base, f, str(self.ann_file)).is_file()
                           for f in files[:20])
            except DatasetError:
                continue
            if hits > best_hits:
                best, best_hits = cand, hits
        return best

    def boxes(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Untransformed ``xyxy`` boxes ``float32 [M, 4]`` and their ``box_labels`` of
        sample ``index``, as in the annotation file (no image I/O)."""
        if not self.with_boxes:
            raise ValueError("COCODataset was built with with_boxes=False")
        index = self._check_index(index)
        return self._boxes[index].copy(), self._box_labels[index].copy()

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        path = self.image_files[index]
        img = self.load_image(index)
        w, h = img.size
        jw, jh = self.image_sizes[index]
        if (jw is not None and jw != w) or (jh is not None and jh != h):
            raise DatasetError(f"{path}: image is {w}x{h} but {self.ann_file} says "
                               f"{jw}x{jh} (image id {self.image_ids[index]}); the boxes "
                               f"would not match")
        boxes = None
        if self.with_boxes:
            boxes = torch.from_numpy(self._boxes[index].copy())
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        image, boxes = apply_transform(self.transform, img, boxes, path)
        sample: Sample = {"image": image}
        sample.update(self._target(index))
        if self.with_boxes:
            sample["boxes"] = boxes.to(torch.float32)
            sample["box_labels"] = torch.from_numpy(self._box_labels[index].copy())
        sample["path"] = path
        return sample
