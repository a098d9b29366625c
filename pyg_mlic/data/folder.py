"""Custom data: a folder of images plus a CSV file of image-level labels.

Two CSV layouts are accepted, told apart by the header row:

*names* — an ``image`` column and a ``labels`` column holding the names of the
present classes separated by ``;`` (an empty cell = no label)::

    image,labels
    img/0001.jpg,cat;dog
    img/0002.jpg,dog

*columns* — an ``image`` column and one ``0``/``1`` column per class::

    image,cat,dog,person
    img/0001.jpg,1,1,0
    img/0002.jpg,0,1,0

In both layouts an optional ``split`` column assigns rows to splits (``train``,
``val``, ``test`` ...); the dataset keeps the rows of its ``split``. Image paths are
relative to the dataset root and may not leave it (no absolute paths, no ``..``).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from pyg_mlic.data._image_io import ImageDatasetMixin, apply_transform, resolve_under
from pyg_mlic.data.base import MultiLabelDataset, Sample
from pyg_mlic.data.transforms import build_transforms
from pyg_mlic.errors import ClassMismatchError, DatasetError

PathLike = Union[str, os.PathLike]

__all__ = ["FolderDataset", "read_label_csv"]

_IMAGE_COLS = ("image", "path", "file", "filename", "file_name")
_LABEL_COLS = ("labels", "label", "tags")
_SPLIT_COL = "split"


def _open_csv_rows(path: Path) -> Tuple[List[str], List[Tuple[int, List[str]]]]:
    """Header and ``(line_number, row)`` pairs of a CSV file (blank rows skipped)."""
    if not path.is_file():
        raise DatasetError(f"label CSV file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text CSV file ({e})") from None
    except csv.Error as e:
        raise DatasetError(f"{path}: malformed CSV ({e})") from None
    if not rows:
        raise DatasetError(f"{path}: the CSV file is empty (no header, no rows)")
    header = [h.strip() for h in rows[0][1]]
    return header, rows[1:]


def read_label_csv(path: PathLike, classes: Optional[Sequence[str]] = None,
                   split: Optional[str] = None, sep: str = ";"
                   ) -> Tuple[List[str], np.ndarray, List[str]]:
    """Read an image-level label CSV (either layout, see the module docstring).

    Args:
        path (str or os.PathLike): the CSV file.
        classes (sequence of str, optional): the class list and column order. If
            ``None``: in the *names* layout the sorted set of all names in the file
            (all rows, every split, so that splits agree); in the *columns* layout the
            header order. With explicit classes, a name (or a class column) that is not
            in the list is an error.
        split (str, optional): keep only rows whose ``split`` column equals it (ignored
            if the file has no ``split`` column; ``None`` keeps all rows).
        sep (str): separator of names in the ``labels`` cell. (default: :obj:`";"`)

    Returns:
        (list of str, numpy.ndarray, list of str): the image paths as written, the
        ``uint8 [N, C]`` multi-hot labels and the class names.

    Raises:
        DatasetError: missing file, no image column, unknown class name or bad 0/1
            value (naming the file, line and value), duplicate images, empty result.
    """
    path = Path(path)
    header, rows = _open_csv_rows(path)
    lower = [h.lower() for h in header]
    img_col = next((lower.index(c) for c in _IMAGE_COLS if c in lower), None)
    if img_col is None:
        raise DatasetError(f"{path}: the header {header} has no image column; expected a "
                           f"first row like 'image,labels' (names separated by {sep!r}) or "
                           f"'image,<class 1>,<class 2>,...' (one 0/1 column per class)")
    split_col = lower.index(_SPLIT_COL) if _SPLIT_COL in lower else None
    label_col = next((lower.index(c) for c in _LABEL_COLS if c in lower), None)
    class_cols = [i for i in range(len(header)) if i not in (img_col, split_col, label_col)]
    if label_col is not None and class_cols:
        raise DatasetError(f"{path}: the header {header} mixes a {header[label_col]!r} "
                           f"column with per-class columns; use one layout")
    for line, row in rows:
        if len(row) != len(header):
            raise DatasetError(f"{path}, line {line}: {len(row)} fields, the header has "
                               f"{len(header)} ({header})")

    if label_col is not None:                                    # names layout
        names_per_row = [[t.strip() for t in row[label_col].split(sep) if t.strip()]
                         for _, row in rows]
        if classes is None:
            classes = sorted({n for names in names_per_row for n in names})
            if not classes:
                raise DatasetError(f"{path}: no label name in any row, cannot infer classes; "
                                   f"name them with classes= (--classes), e.g. for unlabelled "
                                   f"images")
        classes = [str(c) for c in classes]
        _check_unique(classes, f"classes given for {path}")
        index = {c: i for i, c in enumerate(classes)}
        labels = np.zeros((len(rows), len(classes)), dtype=np.uint8)
        for r, ((line, _), names) in enumerate(zip(rows, names_per_row)):
            for n in names:
                j = index.get(n)
                if j is None:
                    raise DatasetError(f"{path}, line {line}: unknown label {n!r} (not one of "
                                       f"the {len(classes)} classes {_short(classes)})")
                labels[r, j] = 1
    else:                                                        # columns layout
        if not class_cols:
            raise DatasetError(f"{path}: the header {header} has no 'labels' column and no "
                               f"class columns")
        file_classes = [header[i] for i in class_cols]
        _check_unique(file_classes, f"class columns of {path}")
        if classes is None:
            classes = file_classes
        classes = [str(c) for c in classes]
        _check_unique(classes, f"classes given for {path}")
        unknown = [c for c in file_classes if c not in set(classes)]
        absent = [c for c in classes if c not in set(file_classes)]
        if unknown or absent:
            raise ClassMismatchError(
                f"{path}: class columns do not match the given classes"
                + (f"; unknown class column(s) {unknown}" if unknown else "")
                + (f"; no column for {absent}" if absent else ""))
        col_of = [class_cols[file_classes.index(c)] for c in classes]
        labels = np.zeros((len(rows), len(classes)), dtype=np.uint8)
        for r, (line, row) in enumerate(rows):
            for j, ci in enumerate(col_of):
                v = row[ci].strip()
                if v in ("1", "1.0"):
                    labels[r, j] = 1
                elif v not in ("0", "0.0"):
                    raise DatasetError(f"{path}, line {line}: value {v!r} in column "
                                       f"{header[ci]!r} out of range (must be 0 or 1)")

    images = [row[img_col].strip() for _, row in rows]
    seen = {}
    for (line, _), im in zip(rows, images):
        if not im:
            raise DatasetError(f"{path}, line {line}: empty image path")
        if im in seen:
            raise DatasetError(f"{path}, line {line}: image {im!r} already listed on line "
                               f"{seen[im]}")
        seen[im] = line
    if split_col is not None and split is not None:
        keep = np.array([row[split_col].strip() == split for _, row in rows], dtype=bool)
        if not keep.any():
            found = sorted({row[split_col].strip() for _, row in rows})
            raise DatasetError(f"{path}: no row has split {split!r} (splits in the file: "
                               f"{found})")
        images = [im for im, k in zip(images, keep) if k]
        labels = labels[keep]
    if not images:
        raise DatasetError(f"{path}: no image rows (empty dataset)")
    return images, labels, list(classes)


def _check_unique(names: Sequence[str], what: str) -> None:
    if len(set(names)) != len(names):
        dup = sorted({c for c in names if list(names).count(c) > 1})
        raise DatasetError(f"{what}: duplicate class names {dup}")


def _short(names: Sequence[str], k: int = 10) -> str:
    names = list(names)
    return str(names[:k])[:-1] + (", ...]" if len(names) > k else "]")


class FolderDataset(ImageDatasetMixin, MultiLabelDataset):
    r"""Your own multi-label data: images under ``root`` and a label CSV.

    Samples are ``{"image": float [3, H, W], "target": float [C], "mask": bool [C],
    "index": int, "path": str}`` (no boxes).

    Args:
        root (str or os.PathLike): folder the CSV's image paths are relative to.
        csv_file (str or os.PathLike): the label CSV (layouts in the module docstring);
            a relative path is looked up under ``root`` first.
        classes (sequence of str, optional): class list / column order (see
            :func:`read_label_csv`). Pass the training set's ``classes`` to the test set.
        transform (callable, optional): ``(PIL image, boxes) -> (tensor, boxes)``.
            (default: :func:`~pyg_mlic.data.transforms.build_transforms` with
            ``train=split.startswith("train")``, 448 pixels)
        split (str, optional): split name; filters rows if the CSV has a ``split``
            column (``None`` keeps all rows). (default: :obj:`"train"`)
        sep (str): separator of names in the ``labels`` cell. (default: :obj:`";"`)

    Raises:
        DatasetError: bad CSV (see :func:`read_label_csv`) or an image path escaping
            ``root``; at ``__getitem__``, a missing or corrupt image (naming the file).
    """

    def __init__(self, root: PathLike, csv_file: PathLike,
                 classes: Optional[Sequence[str]] = None,
                 transform: Optional[Callable] = None, split: Optional[str] = "train",
                 sep: str = ";") -> None:
        self.root = Path(root)
        csv_path = Path(csv_file)
        if not csv_path.is_absolute() and not csv_path.exists() and \
                (self.root / csv_path).exists():
            csv_path = self.root / csv_path
        self.csv_file = csv_path
        images, labels, classes = read_label_csv(csv_path, classes, split=split, sep=sep)
        self.image_files = [str(resolve_under(self.root, im, f"{csv_path} (image {im!r})"))
                            for im in images]
        super().__init__(classes, labels, None, split=split if split else "all")
        self.transform = transform if transform is not None else build_transforms(
            train=bool(split) and split.startswith("train"), size=448)

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        path = self.image_files[index]
        img = self.load_image(index)
        image, _ = apply_transform(self.transform, img, None, path)
        sample = {"image": image}
        sample.update(self._target(index))
        sample["path"] = path
        return sample

