"""A dataset wrapper that adds fixed-size ROI tensors to every sample."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import torch

from pyg_mlic.data.base import MultiLabelDataset, Sample
from pyg_mlic.detection.base import RegionExtractor, RegionFeatures
from pyg_mlic.detection.cache import RegionCache
from pyg_mlic.detection.sources import region_source

__all__ = ["RegionDataset"]


class RegionDataset(MultiLabelDataset):
    r"""Wrap a dataset so that its samples carry the regions of a backend.

    Each sample of ``dataset`` gets, for :math:`K` = ``extractor.max_instances`` and
    :math:`D` = ``extractor.feature_dim``:

    ==================  =====================  =========================================
    key                 value                  notes
    ==================  =====================  =========================================
    ``roi_features``    float32 ``[K, D]``     zero rows for padding
    ``roi_boxes``       float32 ``[K, 4]``     ``xyxy`` pixels of the *stored* image
    ``roi_mask``        bool ``[K]``           ``True`` for real regions
    ``roi_scores``      float32 ``[K]``        descending over the real rows
    ``roi_labels``      int64 ``[K]``          ``-1``: none / padding
    ``roi_image_size``  int64 ``[2]``          ``(H, W)`` of the stored image
    ==================  =====================  =========================================

    Fixed sizes, so the default stacking of :func:`pyg_mlic.data.base.collate` makes
    ``[B, K, D]`` batches (:meth:`RegionFeatures.from_batch` reads them back). Regions are
    computed on the stored image, not the augmented one (see
    :mod:`pyg_mlic.detection.sources`); :math:`\hat B` = ``roi_boxes`` divided by
    ``roi_image_size`` is invariant to the resize of the image transform.

    With ``cache=True`` (default) the regions come from a :class:`RegionCache`, built
    (or resumed, or repaired) at construction; with ``cache=False`` they are extracted
    in every ``__getitem__`` (the same tensors, at the detector's cost per sample).

    Args:
        dataset: the image dataset (see :func:`~pyg_mlic.detection.region_source`).
        extractor (RegionExtractor or str): the backend, or a name for
            :func:`~pyg_mlic.detection.build_region_extractor` (default arguments).
        cache (bool): read regions from the on-disk cache. (default: :obj:`True`)
        cache_dir (str, optional): the cache folder (see :class:`RegionCache`).
        build (bool): build the cache now; otherwise it must already be complete.
            (default: :obj:`True`)
        progress (bool): progress bar while building. (default: :obj:`True`)
        num_workers (int): image-decoding workers while building. (default: :obj:`0`)
        **cache_kwargs: ``root``, ``dtype``, ``chunk_size``, ``verify`` of :class:`RegionCache`.
    """

    def __init__(self, dataset: MultiLabelDataset, extractor: Union[RegionExtractor, str],
                 *, cache: bool = True, cache_dir: Optional[Union[str, os.PathLike]] = None,
                 build: bool = True, progress: bool = True, num_workers: int = 0,
                 **cache_kwargs: Any) -> None:
        if isinstance(extractor, str):
            from pyg_mlic.detection.registry import build_region_extractor

            extractor = build_region_extractor(extractor)
        if not isinstance(extractor, RegionExtractor):
            raise TypeError(f"RegionDataset: extractor must be a RegionExtractor or a backend "
                            f"name, got {type(extractor).__name__}")
        if getattr(dataset, "input_kind", "image") != "image":
            raise TypeError(f"RegionDataset: {type(dataset).__name__} holds "
                            f"{dataset.input_kind!r} inputs, not images")
        super().__init__(dataset.classes, dataset.labels, dataset.label_mask,
                         split=dataset.split)
        self.dataset, self.extractor = dataset, extractor
        self.max_instances, self.roi_feature_dim = extractor.max_instances, extractor.feature_dim
        self.cache: Optional[RegionCache] = None
        if cache:
            self.cache = RegionCache(extractor, dataset, cache_dir, **cache_kwargs)
            if build:
                self.cache.build(progress=progress, num_workers=num_workers)
        elif cache_kwargs or cache_dir is not None:
            raise TypeError("RegionDataset: cache_dir/cache options given with cache=False")

    def regions(self, index: int) -> Dict[str, torch.Tensor]:
        """The ``roi_*`` tensors of sample ``index`` (cached or freshly extracted)."""
        if self.cache is not None:
            return self.cache.get(index)
        src = region_source(self.dataset, index)
        img = src.load() if self.extractor.needs_image else None
        r = self.extractor([img] if img is not None else None, [src.annotation()])
        rf = RegionFeatures.from_regions(r, self.max_instances, self.roi_feature_dim)
        return {"roi_features": rf.features[0], "roi_boxes": rf.boxes[0],
                "roi_mask": rf.mask[0], "roi_scores": rf.scores[0],
                "roi_labels": rf.labels[0], "roi_image_size": rf.image_sizes[0]}

    def __getitem__(self, index: int) -> Sample:
        sample = dict(self.dataset[index])
        sample.update(self.regions(index))
        return sample

    def __repr__(self) -> str:
        where = f"cache={str(self.cache.path)!r}" if self.cache is not None else "cache=None"
        return (f"RegionDataset({type(self.dataset).__name__}(split={self.split!r}, "
                f"n={len(self)}), backend={self.extractor.backend!r}, "
                f"max_instances={self.max_instances}, feature_dim={self.roi_feature_dim}, "
                f"{where})")
