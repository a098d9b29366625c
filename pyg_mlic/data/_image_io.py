"""Safe image loading and path handling shared by the image datasets.

Everything that touches an image file on disk goes through this module, so that a
missing, truncated or non-image file always surfaces as a
:class:`~pyg_mlic.errors.DatasetError` naming the file (in the main process or in a
DataLoader worker alike), never as a bare ``PIL`` / ``OSError`` traceback deep inside
a worker.

- :func:`load_image` — open, fully decode and convert one image to RGB.
- :func:`resolve_under` — turn a path read from an annotation file into a path under
  the dataset root, refusing absolute paths and ``..`` components.
- :func:`verify_images` / :class:`VerifyReport` — check that every file of a dataset
  exists and decodes, before a long training run.
- :class:`ImageDatasetMixin` — ``image_path`` / ``load_image`` / ``verify`` and the
  transform call for datasets that keep a list of image paths.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pyg_mlic.errors import DatasetError

PathLike = Union[str, os.PathLike]

__all__ = ["load_image", "resolve_under", "verify_images", "VerifyReport",
           "ImageDatasetMixin", "apply_transform"]

_DRIVE = re.compile(r"^[A-Za-z]:")


def _to_rgb(img: Image.Image) -> Tuple[Optional[Image.Image], str]:
    """``img`` as 8-bit RGB; ``(None, reason)`` when its values have no known scale.

    PIL's own ``convert("RGB")`` clips high-bit-depth greyscale to 255 instead of
    scaling it: a 16-bit PNG or TIFF (microscopy, medical, depth images) would become an
    almost white image. Here 16-bit modes (``I;16*``) and 32-bit integer images (``I``)
    with values in :math:`[0, 65535]` are scaled by :math:`255 / 65535`, float images
    (``F``) with values in :math:`[0, 1]` by 255; other value ranges are refused (no
    scale can be assumed: convert such files to 8 or 16 bits first)."""
    mode = img.mode
    if not (mode.startswith("I") or mode == "F"):
        return img.convert("RGB"), ""
    a = np.asarray(img, dtype=np.float64)
    if a.size and not np.isfinite(a).all():
        return None, f"mode {mode} image with non-finite pixel values"
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F":
        if lo < 0.0 or hi > 1.0:
            return None, (f"mode F (float) image with values in [{lo:.4g}, {hi:.4g}], not "
                          f"[0, 1]: its scale is unknown; save it as 8- or 16-bit")
        scale = 255.0
    else:
        if lo < 0.0 or hi > 65535.0:
            return None, (f"mode {mode} (integer) image with values in [{lo:.0f}, {hi:.0f}], "
                          f"outside the 16-bit range: its scale is unknown; save it as 8- "
                          f"or 16-bit")
        scale = 255.0 / 65535.0
    g = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(g, mode="L").convert("RGB"), ""


def _decode(path: Path) -> Tuple[Optional[Image.Image], str]:
    """Decode ``path`` to 8-bit RGB (:func:`_to_rgb`); return ``(image, "")`` or
    ``(None, reason)``."""
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except FileNotFoundError:
        return None, "image file not found"
    except IsADirectoryError:
        return None, "image path is a directory, not a file"
    except PermissionError as e:
        return None, f"image file not readable ({e.strerror})"
    except UnidentifiedImageError:
        return None, "not a recognised image file"
    except Image.DecompressionBombError as e:
        return None, f"image too large ({e})"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return None, f"cannot decode image ({type(e).__name__}: {e}; truncated or corrupt file?)"


def load_image(path: PathLike) -> Image.Image:
    """Open an image, decode it completely and return it in RGB mode.

    The pixel data is decoded here (``Image.load``), not lazily later, so a truncated
    or corrupt file fails at this call. ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is
    left at its default (``False``): a truncated JPEG is an error, not a grey patch.
    High-bit-depth greyscale (16-bit PNG / TIFF, ``I``, float ``F``) is scaled to 8 bits,
    not clipped (:func:`_to_rgb`). EXIF orientation is *not* applied, because box annotations (COCO, VOC) refer to
    the stored pixel grid.

    Args:
        path (str or os.PathLike): the image file.

    Returns:
        PIL.Image.Image: the decoded image, mode ``"RGB"``.

    Raises:
        DatasetError: the file does not exist, is not a file, cannot be identified as
            an image, or fails to decode; the message names the file.
    """
    img, reason = _decode(Path(path))
    if img is None:
        raise DatasetError(f"{reason}: {path}")
    return img


def resolve_under(root: PathLike, relpath: str, source: str = "annotation file") -> Path:
    """Join a path read from an annotation or list file to the dataset ``root``.

    The check is lexical: absolute paths, Windows drive paths and any ``..``
    component are refused, so a hostile or broken annotation file cannot make the
    dataset read outside ``root``. Backslashes are treated as separators (NUS-WIDE's
    lists are written with Windows separators). Symbolic links placed inside ``root``
    by the user are followed as usual.

    Args:
        root (str or os.PathLike): the dataset's image root.
        relpath (str): the path as written in the annotation file.
        source (str): what the path was read from (file name, row), for messages.

    Returns:
        pathlib.Path: ``root / relpath``.

    Raises:
        DatasetError: the path is empty, absolute or escapes ``root``.
    """
    if not isinstance(relpath, str):
        raise DatasetError(f"{source}: image path must be a string, got {relpath!r}")
    rel = relpath.strip().replace("\\", "/")
    if not rel:
        raise DatasetError(f"{source}: empty image path")
    if "\x00" in rel:
        raise DatasetError(f"{source}: image path {relpath!r} contains a NUL byte")
    p = PurePosixPath(rel)
    if p.is_absolute() or _DRIVE.match(rel) or ".." in p.parts:
        raise DatasetError(f"{source}: image path {relpath!r} is absolute or escapes the "
                           f"dataset root {root}; paths in annotation files must be "
                           f"relative to the root and must not contain '..'")
    return Path(root).joinpath(*p.parts)


@dataclass
class VerifyReport:
    """Result of :func:`verify_images`.

    Attributes:
        checked (int): number of files checked.
        problems (list of (str, str)): ``(path, reason)`` for every bad file.
    """

    checked: int = 0
    problems: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """``True`` when every checked file exists and decodes."""
        return not self.problems

    @property
    def bad_files(self) -> List[str]:
        return [p for p, _ in self.problems]

    def __str__(self) -> str:
        if self.ok:
            return f"all {self.checked} image files exist and decode"
        lines = [f"{len(self.problems)} of {self.checked} image files are missing or corrupt:"]
        lines += [f"  {p}: {r}" for p, r in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more")
        return "\n".join(lines)


def verify_images(paths: Sequence[PathLike], decode: bool = True, progress: bool = False,
                  desc: str = "verify images") -> VerifyReport:
    """Check that every file in ``paths`` exists and (with ``decode=True``) decodes.

    Args:
        paths (sequence of paths): the image files.
        decode (bool): fully decode each image with :func:`load_image`; otherwise only
            check that the file exists and its header identifies an image.
            (default: :obj:`True`)
        progress (bool): show a ``tqdm`` progress bar on stderr. (default: :obj:`False`)
        desc (str): progress bar label.

    Returns:
        VerifyReport: the number checked and the list of problems.
    """
    report = VerifyReport()
    it: Iterable = paths
    if progress:
        from pyg_mlic.utils.progress import tqdm
        it = tqdm(paths, desc=desc, file=sys.stderr, unit="img")
    for p in it:
        report.checked += 1
        if decode:
            img, reason = _decode(Path(p))
            if img is None:
                report.problems.append((str(p), reason))
        elif not os.path.isfile(p):
            report.problems.append((str(p), "image file not found"))
        else:
            try:
                with Image.open(p) as img:
                    img.verify()
            except Exception as e:  # noqa: BLE001 - any failure is a report line
                report.problems.append((str(p), f"not a readable image "
                                                f"({type(e).__name__}: {e})"))
    return report


def apply_transform(transform: Callable, img: Image.Image, boxes: Optional[torch.Tensor],
                    source: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Call a ``(PIL image, boxes) -> (tensor, boxes)`` transform and check its output."""
    out = transform(img, boxes)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"transform {transform!r} must return (image_tensor, boxes) "
                        f"(see pyg_mlic.data.transforms), got {type(out).__name__} for {source}")
    image, boxes = out
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise TypeError(f"transform {transform!r} must return a [3, H, W] tensor, got "
                        f"{type(image).__name__}"
                        f"{tuple(image.shape) if isinstance(image, torch.Tensor) else ''} "
                        f"for {source}")
    if boxes is not None and len(boxes):
        # float32 round-off of crop/scale arithmetic can leave a coordinate a few ulp
        # outside the image (e.g. 96.0000076 for a 96-pixel side): clamp to the output.
        h, w = image.shape[-2:]
        boxes = boxes.clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return image, boxes


class ImageDatasetMixin:
    """Shared behaviour of datasets backed by a list of image files.

    Subclasses set ``self.image_files`` (list of ``str``, one per sample, aligned with
    ``labels``), ``self.root`` and ``self.transform``.
    """

    image_files: List[str]
    root: Path
    transform: Callable

    def _check_index(self, index: int) -> int:
        n = len(self.image_files)
        if isinstance(index, torch.Tensor):
            index = int(index)
        if not -n <= index < n:
            raise IndexError(f"{type(self).__name__}: index {index} out of range for "
                             f"{n} samples")
        return index % n

    def image_path(self, index: int) -> Path:
        """Path of the image file of sample ``index`` (no I/O)."""
        return Path(self.image_files[self._check_index(index)])

    def load_image(self, index: int) -> Image.Image:
        """The untransformed RGB image of sample ``index`` (raises DatasetError)."""
        return load_image(self.image_path(index))

    def check_files_exist(self) -> None:
        """Refuse, before any training, a dataset whose image files are not all there
        (one ``os.path.isfile`` per image: about a second for COCO's 122k files; a
        missing file would otherwise stop the run at the batch that reads it).

        Raises:
            DatasetError: naming the count, the split and the first missing files.
        """
        missing = [f for f in self.image_files if not os.path.isfile(f)]
        if missing:
            shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise DatasetError(f"{type(self).__name__} (root {self.root}, split "
                               f"{self.split!r}): {len(missing)} of {len(self.image_files)} "
                               f"image files not found: {shown}")

    def verify(self, progress: bool = True, decode: bool = True,
               raise_on_error: bool = True) -> VerifyReport:
        """Check every image file of the dataset up front.

        Args:
            progress (bool): show a progress bar. (default: :obj:`True`)
            decode (bool): decode every image fully (slow but catches truncated
                files); otherwise only existence and header. (default: :obj:`True`)
            raise_on_error (bool): raise :class:`DatasetError` with the report when a
                file is bad; otherwise return the report. (default: :obj:`True`)

        Returns:
            VerifyReport
        """
        report = verify_images(self.image_files, decode=decode, progress=progress,
                               desc=f"verify {type(self).__name__}({self.split})")
        if raise_on_error and not report.ok:
            raise DatasetError(f"{type(self).__name__} (root {self.root}, split "
                               f"{self.split!r}): {report}")
        return report

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, num_samples={len(self)}, "
                f"num_classes={len(self.classes)}, root={str(self.root)!r})")
