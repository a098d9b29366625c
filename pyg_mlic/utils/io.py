r"""Atomic file writes: readers see the old file or the complete new one, never a
truncated one.

Every writer goes through :func:`atomic_write`: the content is written to a temporary
file *in the destination folder* (so the final rename never crosses a file system),
flushed and ``fsync``-ed, then moved over the destination with :func:`os.replace`
(atomic on POSIX and Windows). On any failure — an exception in the writer, a full
disk, ``KeyboardInterrupt`` — the temporary file is removed and the destination is left
as it was. The new file gets the permissions a plain ``open(path, "w")`` would give it
(``0o666`` minus the umask), not :func:`tempfile.mkstemp`'s ``0o600``.

>>> from pyg_mlic.utils.io import atomic_write_json
>>> atomic_write_json("runs/x/metrics.json", {"mAP": np.float32(0.5)})  # doctest: +SKIP

This module imports nothing from the rest of :mod:`pyg_mlic` (torch only when a torch
helper is called), so any module may use it.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path, PurePath
from typing import IO, Any, Callable, Mapping, Optional, Union

import numpy as np

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "atomic_torch_save", "atomic_np_save", "atomic_np_savez", "json_default"]

PathLike = Union[str, os.PathLike]

# read once at import (os.umask can only be read by setting it)
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: PathLike, write: Callable[[IO], Any], binary: bool = True, *,
                 encoding: str = "utf-8") -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, ``fsync`` it, then move it
    over ``path`` with :func:`os.replace`.

    Args:
        path (str or os.PathLike): destination; missing parent folders are created.
        write (callable): ``write(f)`` writes the whole content to the open file ``f``.
        binary (bool): open the temporary file in binary (``"wb"``) rather than text mode.
            (default: :obj:`True`)
        encoding (str): text-mode encoding. (default: :obj:`"utf-8"`)

    Returns:
        pathlib.Path: ``path``.

    Raises:
        whatever ``write`` raises; the temporary file is removed first and ``path`` is
        left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_UMASK)
        f = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding=encoding)
    except BaseException:
        os.close(fd)
        _remove(tmp)
        raise
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; best effort)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), binary=True)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text), binary=False, encoding=encoding)


def json_default(o: Any) -> Any:
    """``default=`` for :func:`json.dumps`: numpy scalars (``.item()``), numpy arrays and
    tensors (``.tolist()``) and paths (``str``); anything else raises :class:`TypeError`."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, PurePath):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_json(path: PathLike, obj: Any, *, indent: Optional[int] = 2,
                      default: Optional[Callable[[Any], Any]] = json_default,
                      **dumps_kwargs: Any) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically.

    The text is produced before the file is touched, so an object that cannot be
    serialised leaves ``path`` as it was.

    Args:
        path (str or os.PathLike): destination.
        obj: the value; numpy values, tensors and paths are converted by ``default``.
        indent (int, optional): as in :func:`json.dumps`. (default: ``2``)
        default (callable, optional): as in :func:`json.dumps`.
            (default: :func:`json_default`)
        **dumps_kwargs: more :func:`json.dumps` arguments (``sort_keys`` ...).
    """
    text = json.dumps(obj, indent=indent, default=default, **dumps_kwargs)
    return atomic_write_text(path, text + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """:func:`torch.save` ``obj`` to ``path`` atomically (note torch's argument order)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_np_save(path: PathLike, array: Any, allow_pickle: bool = False) -> Path:
    """:func:`numpy.save` ``array`` to ``path`` atomically (no ``.npy`` is appended;
    object arrays are refused unless ``allow_pickle``)."""
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=allow_pickle))


def atomic_np_savez(path: PathLike, arrays: Mapping[str, Any], compress: bool = False) -> Path:
    """:func:`numpy.savez` (or ``savez_compressed``) ``arrays`` to ``path`` atomically
    (no ``.npz`` is appended)."""
    save = np.savez_compressed if compress else np.savez
    return atomic_write(path, lambda f: save(f, **arrays))
