r"""On-disk ROI feature cache: extract once, read memory-mapped in every epoch.

A :class:`RegionCache` belongs to one ``(extractor, dataset)`` pair and lives in one
folder:

=====================  ====================  ============================================
file                   content               notes
=====================  ====================  ============================================
``index.json``         key, settings,        rewritten atomically after every chunk
                       finished chunks       (temp file + ``fsync`` + ``os.replace``)
``features.npy``       ``[N, K, D]``         float32 (or float16 with ``dtype``)
``boxes.npy``          float32 ``[N, K, 4]`` ``xyxy`` pixels of the stored image
``scores.npy``         float32 ``[N, K]``
``labels.npy``         int64 ``[N, K]``      ``-1`` = none / padding
``counts.npy``         int32 ``[N]``         real rows per image (``mask = j < count``)
``image_sizes.npy``    int64 ``[N, 2]``      ``(H, W)``
=====================  ====================  ============================================

**Key.** A SHA-256 over the extractor's :meth:`~RegionExtractor.config` (backend,
weights — content hash of a weights file or the random-init seed —, image size,
``max_instances``, mode, feature type, thresholds, library version) and the dataset's
identity (:func:`~pyg_mlic.detection.dataset_identity`: image file list and sizes,
annotated boxes for the ground-truth backend), plus the storage dtype. A folder whose
``index.json`` holds another key is *stale* and is rebuilt.

**Resume.** Images are extracted in chunks of ``chunk_size``; a chunk is written into
the pre-allocated ``.npy`` files, flushed, and only then recorded in ``index.json`` with
a CRC-32 of each array's bytes. An interrupted build leaves finished chunks recorded;
the next :meth:`RegionCache.build` extracts only the missing ones.

**Integrity.** Before use the cache checks that every file exists with the expected
header and byte size (catches truncation) and, with ``verify="checksum"`` (default),
that every chunk's CRC matches (catches corrupted bytes: one sequential read of the
cache). Bad chunks are re-extracted, an unreadable index or array file means a rebuild;
a damaged cache is never used as is.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyg_mlic.detection.base import RegionExtractor, Regions, config_hash
from pyg_mlic.detection.sources import dataset_identity, region_source
from pyg_mlic.utils.io import atomic_write_text

__all__ = ["RegionCache", "CacheReport", "default_cache_root"]

logger = logging.getLogger("pyg_mlic.detection")

PathLike = Union[str, os.PathLike]
FORMAT = "pyg_mlic-region-cache"
VERSION = 1
_INDEX = "index.json"
_LOCK = ".lock"
VERIFY = ("checksum", "size")


def default_cache_root() -> Path:
    """``$PYG_MLIC_CACHE/regions`` or ``~/.cache/pyg_mlic/regions``."""
    base = os.environ.get("PYG_MLIC_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "pyg_mlic") / "regions"


@dataclass
class CacheReport:
    """What :meth:`RegionCache.build` found and did.

    Attributes:
        status (str): state found: ``"complete"``, ``"partial"`` (resumed), ``"missing"``,
            ``"stale"`` (other key), ``"corrupt"`` (unreadable index/arrays or bad
            checksums).
        reason (str): details of a stale or corrupt cache.
        extracted (int): images extracted by this call.
        bad_chunks (list of int): chunks whose checksum failed and were re-extracted.
    """

    status: str
    reason: str = ""
    extracted: int = 0
    bad_chunks: List[int] = field(default_factory=list)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive lock on ``folder/.lock`` (POSIX ``flock``; a no-op elsewhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / _LOCK, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B")) & 0xFFFFFFFF


class RegionCache:
    r"""ROI features of every image of a dataset, extracted once, memory-mapped after.

    Args:
        extractor (RegionExtractor): the backend (its :meth:`config` enters the key).
        dataset: a dataset :func:`~pyg_mlic.detection.region_source` understands (COCO,
            VOC, folder, NUS-WIDE, synthetic scenes, subsets of them).
        path (str, optional): the cache folder. (default: ``root /
            "<dataset type>-<split>-<backend>-<key[:16]>"``)
        root (str, optional): where the default folder is made, so that several
            datasets/splits/backends can share one root. (default: :func:`default_cache_root`)
        dtype (str): storage type of the features, ``"float32"`` or ``"float16"``
            (half the disk; read back as float32). (default: :obj:`"float32"`)
        chunk_size (int): images per resumable chunk. (default: :obj:`64`)
        verify (str): ``"checksum"`` (sizes, headers and per-chunk CRC-32) or ``"size"``
            (sizes and headers only) before use. (default: :obj:`"checksum"`)

    Example::

        >>> cache = RegionCache(build_region_extractor("torchvision"), dataset).build()
        >>> cache.get(0)["roi_features"].shape           # doctest: +SKIP
        torch.Size([40, 1024])
    """

    def __init__(self, extractor: RegionExtractor, dataset, path: Optional[PathLike] = None,
                 *, root: Optional[PathLike] = None, dtype: str = "float32", chunk_size: int = 64,
                 verify: str = "checksum") -> None:
        if not isinstance(extractor, RegionExtractor):
            raise TypeError(f"RegionCache: extractor must be a RegionExtractor, got "
                            f"{type(extractor).__name__}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"RegionCache: dtype must be 'float32' or 'float16', got {dtype!r}")
        if verify not in VERIFY:
            raise ValueError(f"RegionCache: verify must be one of {VERIFY}, got {verify!r}")
        if int(chunk_size) < 1:
            raise ValueError(f"RegionCache: chunk_size must be >= 1, got {chunk_size}")
        self.extractor, self.dataset = extractor, dataset
        self.dtype, self.verify = dtype, verify
        self.chunk_size = int(chunk_size)
        self.n = len(dataset)
        self.k, self.d = extractor.max_instances, extractor.feature_dim
        self.settings: Dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "extractor": extractor.config(),
            "dataset": dataset_identity(dataset, with_boxes=extractor.needs_boxes),
            "dtype": dtype}
        self.key = config_hash(self.settings)
        if path is None:
            name = f"{type(dataset).__name__}-{getattr(dataset, 'split', '')}-" \
                   f"{extractor.backend}-{self.key[:16]}"
            path = (Path(root).expanduser() if root is not None else default_cache_root()) / name
        self.path = Path(path).expanduser()
        self._arrays: Optional[Dict[str, np.ndarray]] = None
        self._ready = False

    # -- layout --------------------------------------------------------------------------------
    def _specs(self) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
        n, k, d = self.n, self.k, self.d
        return {"features": ((n, k, d), np.dtype(self.dtype)),
                "boxes": ((n, k, 4), np.dtype(np.float32)),
                "scores": ((n, k), np.dtype(np.float32)),
                "labels": ((n, k), np.dtype(np.int64)),
                "counts": ((n,), np.dtype(np.int32)),
                "image_sizes": ((n, 2), np.dtype(np.int64))}

    def _chunks(self, chunk_size: int) -> List[Tuple[int, int]]:
        return [(a, min(a + chunk_size, self.n)) for a in range(0, self.n, chunk_size)]

    # -- index ---------------------------------------------------------------------------------
    def _read_index(self) -> Tuple[Optional[dict], str]:
        f = self.path / _INDEX
        if not f.is_file():
            return None, "missing"
        try:
            idx = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return None, f"corrupt: {f} is unreadable ({type(e).__name__}: {e})"
        if not isinstance(idx, dict) or idx.get("format") != FORMAT:
            return None, f"corrupt: {f} is not a {FORMAT} index"
        if idx.get("key") != self.key:
            return idx, (f"stale: {f} holds key {str(idx.get('key'))[:16]}..., expected "
                         f"{self.key[:16]}... (backend, weights, image size, max_instances, "
                         f"mode, features or dataset changed)")
        try:
            cs = int(idx["chunk_size"])
            chunks = {int(c): {str(a): int(v) for a, v in crc.items()}
                      for c, crc in idx["chunks"].items()}
            if cs < 1 or any(not 0 <= c < len(self._chunks(cs)) for c in chunks):
                raise ValueError("chunk ids out of range")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return None, f"corrupt: {f} has malformed chunk records ({e})"
        idx["chunk_size"], idx["chunks"] = cs, chunks
        return idx, "ok"

    def _write_index(self, chunk_size: int, chunks: Dict[int, Dict[str, int]]) -> None:
        done = len(chunks) == len(self._chunks(chunk_size))
        idx = {"format": FORMAT, "version": VERSION, "key": self.key,
               "settings": self.settings, "n": self.n, "max_instances": self.k,
               "feature_dim": self.d, "dtype": self.dtype, "chunk_size": chunk_size,
               "complete": done, "chunks": {str(c): v for c, v in sorted(chunks.items())}}
        atomic_write_text(self.path / _INDEX, json.dumps(idx, indent=1, default=str))

    def _open_arrays(self, mode: str = "r") -> Tuple[Optional[Dict[str, np.ndarray]], str]:
        """Memory-map every array; ``(None, reason)`` if one is missing or malformed."""
        out = {}
        for name, (shape, dt) in self._specs().items():
            f = self.path / f"{name}.npy"
            if not f.is_file():
                return None, f"{f} is missing"
            try:
                a = np.load(f, mmap_mode=mode, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                return None, f"{f} is unreadable or truncated ({type(e).__name__}: {e})"
            if a.shape != shape or a.dtype != dt:
                return None, f"{f} holds {a.dtype} {a.shape}, expected {dt} {shape}"
            expect = a.offset + a.nbytes
            if f.stat().st_size != expect:
                return None, f"{f} has {f.stat().st_size} bytes, expected {expect}"
            out[name] = a
        return out, "ok"

    def _create_arrays(self) -> Dict[str, np.ndarray]:
        out = {}
        for name, (shape, dt) in self._specs().items():
            f = self.path / f"{name}.npy"
            if f.exists():
                f.unlink()
            out[name] = np.lib.format.open_memmap(f, mode="w+", dtype=dt, shape=shape)
        return out

    def _chunk_crcs(self, arrays: Dict[str, np.ndarray], a: int, b: int) -> Dict[str, int]:
        return {name: _crc(arr[a:b]) for name, arr in arrays.items()}

    # -- state ---------------------------------------------------------------------------------
    def status(self) -> CacheReport:
        """Inspect the folder without changing it (sizes and headers only)."""
        idx, why = self._read_index()
        if idx is None:
            return CacheReport("missing" if why == "missing" else "corrupt", why)
        if why != "ok":
            return CacheReport("stale", why)
        arrays, why = self._open_arrays()
        if arrays is None:
            return CacheReport("corrupt", why)
        total = len(self._chunks(idx["chunk_size"]))
        return CacheReport("complete" if len(idx["chunks"]) == total else "partial")

    @property
    def is_complete(self) -> bool:
        return self.status().status == "complete"

    # -- build ---------------------------------------------------------------------------------
    def build(self, progress: bool = True, num_workers: int = 0) -> "RegionCache":
        """Make the cache complete and valid, extracting only what is missing or bad.

        Args:
            progress (bool): ``tqdm`` progress bar on stderr. (default: :obj:`True`)
            num_workers (int): DataLoader workers decoding images while the extractor
                runs. (default: :obj:`0`)

        Returns:
            RegionCache: ``self``, ready for :meth:`get`; :attr:`last_report` tells what
            was found and done.
        """
        with _locked(self.path):
            report = self._build_locked(progress, int(num_workers))
        self.last_report = report
        self._arrays = None
        self._ready = True
        return self

    def _build_locked(self, progress: bool, num_workers: int) -> CacheReport:
        idx, why = self._read_index()
        arrays = None
        if idx is None and why == "missing":
            report = CacheReport("missing")
        elif idx is None or why != "ok":
            report = CacheReport("stale" if why.startswith("stale") else "corrupt", why)
            logger.warning("region cache %s: %s; rebuilding", self.path, why)
            idx = None
        else:
            arrays, why = self._open_arrays("r+")
            if arrays is None:
                report = CacheReport("corrupt", why)
                logger.warning("region cache %s: %s; rebuilding", self.path, why)
                idx = None
            else:
                total = len(self._chunks(idx["chunk_size"]))
                report = CacheReport("complete" if len(idx["chunks"]) == total else "partial")
        if idx is None:
            chunk_size, done = self.chunk_size, {}
            self._write_index(chunk_size, done)          # forget old chunks first
            arrays = self._create_arrays()
        else:
            chunk_size, done = idx["chunk_size"], dict(idx["chunks"])
            if self.verify == "checksum":
                chunks = self._chunks(chunk_size)
                bad = [c for c, crc in sorted(done.items())
                       if self._chunk_crcs(arrays, *chunks[c]) != crc]
                if bad:
                    report.status = "corrupt"
                    report.reason = f"checksum mismatch in chunk(s) {bad} of {self.path}"
                    report.bad_chunks = bad
                    logger.warning("region cache %s: %s; re-extracting them", self.path,
                                   report.reason)
                    for c in bad:
                        done.pop(c)
                    self._write_index(chunk_size, done)
        todo = [c for c in range(len(self._chunks(chunk_size))) if c not in done]
        if todo:
            report.extracted = self._extract(arrays, chunk_size, done, todo, progress,
                                             num_workers)
        return report

    def _extract(self, arrays: Dict[str, np.ndarray], chunk_size: int,
                 done: Dict[int, Dict[str, int]], todo: Sequence[int], progress: bool,
                 num_workers: int) -> int:
        from pyg_mlic.utils.progress import tqdm

        chunks = self._chunks(chunk_size)
        n_done = sum(b - a for c, (a, b) in enumerate(chunks) if c in done)
        bar = tqdm(total=self.n, initial=n_done, disable=not progress, file=sys.stderr,
                   unit="img", desc=f"ROI cache ({self.extractor.backend})")
        extracted = 0
        try:
            for c in todo:
                a, b = chunks[c]
                block = self._extract_block(a, b, num_workers, bar)
                for name, arr in block.items():
                    arrays[name][a:b] = arr
                for arr in arrays.values():
                    arr.flush()
                done[c] = {name: _crc(arr) for name, arr in block.items()}
                self._write_index(chunk_size, done)
                extracted += b - a
        finally:
            bar.close()
        return extracted

    def _extract_block(self, a: int, b: int, num_workers: int, bar) -> Dict[str, np.ndarray]:
        m = b - a
        out = {name: np.zeros((m,) + shape[1:], dt) for name, (shape, dt) in self._specs().items()}
        out["labels"][:] = -1
        ex = self.extractor
        for j, (ann, image) in enumerate(_load_sources(self.dataset, range(a, b),
                                                       ex.needs_image, num_workers)):
            r = ex([image] if image is not None else None, [ann])[0]
            r.check_inside(f"{ex.backend} regions of image {ann['key']}")
            if r.image_size != tuple(ann["image_size"]):
                raise RuntimeError(f"{ex.backend}: regions of image {ann['key']} refer to "
                                   f"size {r.image_size}, the image is {ann['image_size']}")
            k = r.num_instances
            out["features"][j, :k] = r.features.numpy()
            out["boxes"][j, :k] = r.boxes.numpy()
            out["scores"][j, :k] = r.scores.numpy()
            out["labels"][j, :k] = r.labels.numpy()
            out["counts"][j] = k
            out["image_sizes"][j] = r.image_size
            bar.update(1)
        return out

    # -- read ----------------------------------------------------------------------------------
    def _ensure_open(self) -> Dict[str, np.ndarray]:
        if self._arrays is None:
            if not self._ready:
                rep = self.status()
                if rep.status != "complete":
                    raise RuntimeError(f"region cache {self.path} is {rep.status}"
                                       f"{': ' + rep.reason if rep.reason else ''}; call "
                                       f"build() first")
            arrays, why = self._open_arrays("r")
            if arrays is None:
                raise RuntimeError(f"region cache {self.path}: {why}; call build() to repair")
            self._arrays = arrays
        return self._arrays

    def __len__(self) -> int:
        return self.n

    def get(self, index: int) -> Dict[str, torch.Tensor]:
        """The padded regions of image ``index`` as the ``roi_*`` sample keys.

        Returns:
            dict: ``roi_features`` float32 ``[K, D]``, ``roi_boxes`` float32 ``[K, 4]``,
            ``roi_mask`` bool ``[K]``, ``roi_scores`` float32 ``[K]``, ``roi_labels``
            int64 ``[K]``, ``roi_image_size`` int64 ``[2]`` (``(H, W)``).
        """
        a = self._ensure_open()
        if not -self.n <= int(index) < self.n:
            raise IndexError(f"RegionCache: index {index} out of range for {self.n} images")
        i = int(index) % self.n
        count = int(a["counts"][i])
        return {
            "roi_features": torch.from_numpy(np.array(a["features"][i], dtype=np.float32)),
            "roi_boxes": torch.from_numpy(np.array(a["boxes"][i])),
            "roi_mask": torch.arange(self.k) < count,
            "roi_scores": torch.from_numpy(np.array(a["scores"][i])),
            "roi_labels": torch.from_numpy(np.array(a["labels"][i])),
            "roi_image_size": torch.from_numpy(np.array(a["image_sizes"][i])),
        }

    def regions(self, index: int) -> Regions:
        """Image ``index``'s regions without padding."""
        s = self.get(index)
        m = s["roi_mask"]
        return Regions(s["roi_boxes"][m], s["roi_features"][m], s["roi_scores"][m],
                       s["roi_labels"][m], tuple(int(v) for v in s["roi_image_size"]))

    def __getstate__(self) -> Dict[str, Any]:
        # memory maps are reopened in each DataLoader worker instead of being pickled
        # (pickling a memmap copies the whole array)
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def __repr__(self) -> str:
        return (f"RegionCache(path={str(self.path)!r}, backend={self.extractor.backend!r}, "
                f"n={self.n}, max_instances={self.k}, feature_dim={self.d}, "
                f"dtype={self.dtype!r})")


class _SourceImages(torch.utils.data.Dataset):
    """``(annotation, uint8 image [3, H, W] or None)`` per index (picklable items, so
    that DataLoader workers can decode images)."""

    def __init__(self, dataset, indices: Sequence[int], need_image: bool) -> None:
        self.dataset, self.indices, self.need_image = dataset, list(indices), need_image

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        src = region_source(self.dataset, self.indices[j])
        img = None
        if self.need_image:
            arr = np.asarray(src.load().convert("RGB"))
            img = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        return src.annotation(), img


def _identity(x):
    return x


def _load_sources(dataset, indices: Sequence[int], need_image: bool, num_workers: int):
    ds = _SourceImages(dataset, indices, need_image)
    if num_workers <= 0:
        for j in range(len(ds)):
            yield ds[j]
        return
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers,
                                         collate_fn=_identity)
    yield from loader
