"""NUS-WIDE (Chua et al., CIVR 2009): 81 concepts, Flickr images.

Three ways to point at the data, tried in this order:

1. **CSV** (``csv_file=``): ``image,labels`` with ``;``-separated concept names, or
   ``image,<concept>,...`` with 0/1 columns (see :func:`pyg_mlic.data.folder.read_label_csv`).
2. **List files** (``image_list=`` and ``label_file=``): an image list (one path per
   line), a label matrix (one row per image, whitespace-separated 0/1 for every
   concept) and a concepts file (one name per line) or ``classes=``.
3. **The official distribution** (default), as unpacked from ``NUS-WIDE.zip`` and
   ``ImageList.zip`` with the images in ``Flickr/``::

       root/ImageList/TrainImagelist.txt, TestImagelist.txt
           one image per line: actor\\0001_2124494179.jpg
           (or C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg)
       root/Concepts81.txt  or  root/ConceptsList/Concepts81.txt
       root/Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt, ..._Test.txt
           one 0/1 per line, in image-list order
       root/Flickr/<concept folder>/<file>.jpg

   giving the official 161,789 / 107,859 train / test images.

Image paths from list files are relative to ``root/image_dir`` (``Flickr`` when that
folder exists); Windows separators are accepted, and an absolute path as written by
some copies of the release (``C:\\ImageData\\Flickr\\actor\\...``) is cut after ``Flickr``.
No path may leave the root.

Many NUS-WIDE images can no longer be downloaded; ``skip_missing=True`` drops list
entries whose file does not exist (recorded in ``dataset.missing``), and
``keep_empty=False`` drops images without any concept, as many papers do.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from pyg_mlic.data._image_io import ImageDatasetMixin, apply_transform, resolve_under
from pyg_mlic.data.base import MultiLabelDataset, Sample
from pyg_mlic.data.folder import read_label_csv
from pyg_mlic.data.transforms import build_transforms
from pyg_mlic.errors import ClassMismatchError, DatasetError

PathLike = Union[str, os.PathLike]

__all__ = ["NUSWIDEDataset", "nuswide_labels", "read_concepts", "read_image_list",
           "read_label_matrix"]


def _find(root: Path, candidates: Sequence[str], what: str) -> Path:
    for c in candidates:
        if (root / c).is_file():
            return root / c
    raise DatasetError(f"NUS-WIDE {what} not found under {root}: tried "
                       f"{[str(root / c) for c in candidates]}")


def _rel_file(root: Path, f: PathLike) -> Path:
    p = Path(f)
    if not p.is_absolute() and not p.exists() and (root / p).exists():
        return root / p
    return p


def _read_lines(path: Path, what: str) -> List[str]:
    if not path.is_file():
        raise DatasetError(f"NUS-WIDE {what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file ({e})") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def read_concepts(path: PathLike) -> List[str]:
    """Concept names, one per line (``Concepts81.txt``); duplicates are an error."""
    path = Path(path)
    names = _read_lines(path, "concepts file")
    if not names:
        raise DatasetError(f"{path}: the concepts file is empty")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"{path}: duplicate concept names {dup}")
    return names


def _normalise(entry: str, anchor: str) -> str:
    p = entry.strip().replace("\\", "/")
    parts = [q for q in p.split("/") if q]
    absolute = p.startswith("/") or (len(p) > 1 and p[1] == ":")
    if absolute and anchor:
        low = [q.lower() for q in parts]
        if anchor.lower() in low:                      # C:\ImageData\Flickr\actor\x.jpg
            k = len(low) - 1 - low[::-1].index(anchor.lower())
            return "/".join(parts[k + 1:])
    return p


def read_image_list(path: PathLike, anchor: str = "Flickr") -> List[str]:
    """Image paths, one per line, with ``/`` separators.

    Args:
        path (str or os.PathLike): the list file (``TrainImagelist.txt``).
        anchor (str): for absolute entries, the folder name after which the relative
            path starts (the original ``Imagelist.txt`` has ``C:\\ImageData\\Flickr\\...``).
            (default: :obj:`"Flickr"`)
    """
    path = Path(path)
    items = [_normalise(e, anchor) for e in _read_lines(path, "image list")]
    if not items:
        raise DatasetError(f"{path}: the image list is empty (empty dataset)")
    return items


def _parse_01(tokens: List[bytes], path: Path, ncols: int) -> np.ndarray:
    arr = np.array(tokens, dtype="S3")
    ok = (arr == b"0") | (arr == b"1")
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        raise DatasetError(f"{path}: row {k // ncols + 1}"
                           f"{f', column {k % ncols + 1}' if ncols > 1 else ''}: label value "
                           f"{tokens[k].decode(errors='replace')!r} out of range (must be 0 "
                           f"or 1)")
    return (arr == b"1").astype(np.uint8)


def read_label_matrix(path: PathLike, num_rows: Optional[int] = None,
                      num_cols: Optional[int] = None) -> np.ndarray:
    """A whitespace-separated 0/1 matrix, one row per image.

    A file with one value per line (``Labels_<concept>_Train.txt``) is a one-column
    matrix.

    Args:
        path (str or os.PathLike): the label file.
        num_rows (int, optional): expected number of rows (images).
        num_cols (int, optional): expected number of columns (concepts).

    Returns:
        numpy.ndarray: ``uint8 [N, C]``.

    Raises:
        DatasetError: missing file, ragged rows, wrong row/column count or a value
            other than 0/1, naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"NUS-WIDE label file not found: {path}")
    lines = [ln for ln in path.read_bytes().splitlines() if ln.strip()]
    if not lines:
        raise DatasetError(f"{path}: the label file is empty")
    ncols = len(lines[0].split())
    tokens = b" ".join(lines).split()
    if len(tokens) != ncols * len(lines):
        k = next(i for i, ln in enumerate(lines) if len(ln.split()) != ncols)
        raise DatasetError(f"{path}: row {k + 1} has {len(lines[k].split())} values, the "
                           f"first row has {ncols}")
    if num_cols is not None and ncols != num_cols:
        raise DatasetError(f"{path}: {ncols} label columns, expected {num_cols} (one per "
                           f"concept)")
    if num_rows is not None and len(lines) != num_rows:
        raise DatasetError(f"{path}: {len(lines)} label rows, but the image list has "
                           f"{num_rows} images")
    return _parse_01(tokens, path, ncols).reshape(len(lines), ncols)


def _official_split(split: str) -> str:
    s = split.lower()
    if s not in ("train", "test"):
        raise DatasetError(f"NUS-WIDE's official lists have splits 'train' and 'test', got "
                           f"{split!r}; use image_list=/label_file= (or csv_file=) for "
                           f"other splits")
    return s.capitalize()


def _select(classes_file: List[str], classes: Optional[Sequence[str]], labels: np.ndarray,
            src: str) -> Tuple[np.ndarray, List[str]]:
    if classes is None:
        return labels, classes_file
    classes = [str(c) for c in classes]
    unknown = [c for c in classes if c not in set(classes_file)]
    if unknown:
        raise ClassMismatchError(f"{src}: classes {unknown} are not concepts of the dataset "
                                 f"({len(classes_file)} concepts: {classes_file[:10]}...)")
    if len(set(classes)) != len(classes):
        raise DatasetError(f"classes given for {src} contain duplicates")
    return labels[:, [classes_file.index(c) for c in classes]], classes


def nuswide_labels(root: PathLike, split: str = "train",
                   image_list: Optional[PathLike] = None,
                   label_file: Optional[PathLike] = None,
                   concepts_file: Optional[PathLike] = None,
                   csv_file: Optional[PathLike] = None,
                   classes: Optional[Sequence[str]] = None
                   ) -> Tuple[List[str], np.ndarray, List[str]]:
    """Image paths (relative, as listed), ``uint8 [N, C]`` labels and class names.

    Arguments as in :class:`NUSWIDEDataset`. With ``classes``, the columns are those
    concepts in that order (a subset is allowed).
    """
    images, labels, names, _ = _nuswide(Path(root), split, image_list, label_file,
                                        concepts_file, csv_file, classes)
    return images, labels, names


def _nuswide(root: Path, split: str, image_list, label_file, concepts_file, csv_file,
             classes) -> Tuple[List[str], np.ndarray, List[str], Path]:
    """:func:`nuswide_labels` plus the file the image paths were read from."""
    if csv_file is not None:
        csv_path = _rel_file(root, csv_file)
        return (*read_label_csv(csv_path, classes, split=split), csv_path)
    if (image_list is None) != (label_file is None):
        raise ValueError("image_list and label_file must be given together")
    if image_list is not None:
        ilist, lfile = _rel_file(root, image_list), _rel_file(root, label_file)
        images = read_image_list(ilist)
        if concepts_file is not None:
            concepts = read_concepts(_rel_file(root, concepts_file))
        elif classes is not None:
            concepts = [str(c) for c in classes]
        else:
            concepts = read_concepts(_find(root, ("Concepts81.txt",
                                                  "ConceptsList/Concepts81.txt"),
                                           "concepts file (or pass classes=)"))
        labels = read_label_matrix(lfile, num_rows=len(images), num_cols=len(concepts))
        labels, names = _select(concepts, classes, labels, str(lfile))
        return images, labels, names, ilist
    # official distribution
    s = _official_split(split)
    ilist = _find(root, (f"ImageList/{s}Imagelist.txt", f"ImageList/{s}ImageList.txt",
                         f"{s}Imagelist.txt"), f"{s.lower()} image list")
    images = read_image_list(ilist)
    concepts = (read_concepts(_rel_file(root, concepts_file)) if concepts_file is not None
                else read_concepts(_find(root, ("Concepts81.txt", "ConceptsList/Concepts81.txt"),
                                         "concepts file")))
    wanted = concepts if classes is None else [str(c) for c in classes]
    unknown = [c for c in wanted if c not in set(concepts)]
    if unknown:
        raise ClassMismatchError(f"classes {unknown} are not NUS-WIDE concepts (from the "
                                 f"concepts file under {root})")
    gt = root / "Groundtruth" / "TrainTestLabels"
    cols = [read_label_matrix(gt / f"Labels_{c}_{s}.txt", num_rows=len(images), num_cols=1)
            for c in wanted]
    return images, np.concatenate(cols, axis=1), list(wanted), ilist


class NUSWIDEDataset(ImageDatasetMixin, MultiLabelDataset):
    r"""NUS-WIDE multi-label dataset (81 concepts by default).

    Samples are ``{"image", "target", "mask", "index", "path"}`` (no boxes: NUS-WIDE
    has image-level labels only).

    Args:
        root (str or os.PathLike): the dataset folder.
        split (str): ``"train"`` or ``"test"`` for the official lists; any name with
            list / CSV files (filters a CSV ``split`` column). (default: :obj:`"train"`)
        transform (callable, optional): ``(PIL image, boxes) -> (tensor, boxes)``.
            (default: ``build_transforms(train=split.startswith("train"), size=448)``)
        image_dir (str, optional): image folder relative to ``root``. (default:
            ``"Flickr"`` if ``root/Flickr`` exists, else ``root`` itself)
        image_list, label_file, concepts_file (str or os.PathLike, optional): the
            list-file layout (relative paths are looked up under ``root``).
        csv_file (str or os.PathLike, optional): the CSV layout.
        classes (sequence of str, optional): columns (subset / order) by name.
        keep_empty (bool): keep images with no concept. (default: :obj:`True`)
        skip_missing (bool): drop entries whose image file does not exist (a warning
            says how many) instead of failing when they are loaded. (default:
            :obj:`False`)

    Raises:
        DatasetError: missing or malformed list / label / concepts files (naming the
            file and line), row-count mismatch, labels other than 0/1, paths escaping
            ``root``, empty dataset; at ``__getitem__`` a missing or corrupt image.
    """

    def __init__(self, root: PathLike, split: str = "train",
                 transform: Optional[Callable] = None, image_dir: Optional[str] = None,
                 image_list: Optional[PathLike] = None, label_file: Optional[PathLike] = None,
                 concepts_file: Optional[PathLike] = None, csv_file: Optional[PathLike] = None,
                 classes: Optional[Sequence[str]] = None, keep_empty: bool = True,
                 skip_missing: bool = False) -> None:
        self.root = Path(root)
        images, labels, names, src = _nuswide(self.root, split, image_list, label_file,
                                              concepts_file, csv_file, classes)
        if image_dir is None:
            image_dir = "Flickr" if (self.root / "Flickr").is_dir() else ""
        self.image_dir = image_dir
        base = resolve_under(self.root, image_dir, "image_dir") if image_dir else self.root
        files = [str(resolve_under(base, im, f"{src} (image {im!r})")) for im in images]
        keep = np.ones(len(files), dtype=bool)
        self.missing: List[str] = []
        if skip_missing:
            exists = np.array([os.path.isfile(f) for f in files], dtype=bool)
            self.missing = [f for f, e in zip(files, exists) if not e]
            if self.missing:
                warnings.warn(f"NUSWIDEDataset({split!r}): {len(self.missing)} of {len(files)} "
                              f"listed images are missing under {base} and were skipped "
                              f"(first: {self.missing[0]})", stacklevel=2)
            keep &= exists
        if not keep_empty:
            keep &= labels.any(axis=1)
        if not keep.any():
            raise DatasetError(f"NUSWIDEDataset({split!r}) from {src}: no image left "
                               f"({len(files)} listed; skip_missing={skip_missing}, "
                               f"keep_empty={keep_empty}) - empty dataset")
        self.image_files = [f for f, k in zip(files, keep) if k]
        super().__init__(names, labels[keep], None, split=split)
        self.transform = transform if transform is not None else build_transforms(
            train=split.startswith("train"), size=448)

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        path = self.image_files[index]
        img = self.load_image(index)
        image, _ = apply_transform(self.transform, img, None, path)
        sample: Sample = {"image": image}
        sample.update(self._target(index))
        sample["path"] = path
        return sample
