"""A dataset wrapper that adds fixed-size ROI tensors to every sample."""
from __future__ import annotations

import copy
import os
import threading
from typing import Any, Dict, Optional, Tuple, Union

import torch

from pyg_mlic.data.base import MultiLabelDataset, Sample, SubsetDataset
from pyg_mlic.detection.base import RegionExtractor, RegionFeatures
from pyg_mlic.detection.cache import RegionCache
from pyg_mlic.detection.sources import region_source

__all__ = ["RegionDataset", "ROI_AUGMENT"]

#: accepted values of ``RegionDataset(roi_augment=...)``
ROI_AUGMENT = ("auto", "follow", "none")


class _WithROIBoxes:
    """A transform that also moves the pending ROI boxes of the current sample.

    The wrapped transform gets the sample's boxes with the ROI boxes appended, in the
    same call: one random draw moves both (crop, resize, flip, RandAugment's geometric
    operations), whatever the transform is, as long as it follows the ``(image, boxes)``
    protocol of :mod:`pyg_mlic.data.transforms`. Other attributes are the wrapped
    transform's."""

    def __init__(self, transform) -> None:
        self.transform = transform
        self._local = threading.local()

    def __getattr__(self, name: str):
        if name in ("transform", "_local"):      # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.transform, name)

    def __getstate__(self):
        return {"transform": self.transform}

    def __setstate__(self, state) -> None:
        self.transform = state["transform"]
        self._local = threading.local()

    def run(self, dataset, index: int, roi_boxes: torch.Tensor
            ) -> Tuple[Sample, Optional[torch.Tensor]]:
        """``dataset[index]`` (a dataset whose transform is this one) and the ROI boxes
        moved by its transform (:obj:`None` when the dataset did not call it)."""
        self._local.pending, self._local.moved = roi_boxes, None
        try:
            sample = dataset[index]
            return sample, self._local.moved
        finally:
            self._local.pending = self._local.moved = None

    def __call__(self, img, boxes=None):
        extra = getattr(self._local, "pending", None)
        if extra is None:
            return self.transform(img, boxes)
        n = 0 if boxes is None else len(boxes)
        both = extra if boxes is None else torch.cat([boxes.to(extra.dtype), extra])
        image, moved = self.transform(img, both)
        if moved is None:            # a transform that drops boxes: nothing to follow
            return image, None
        self._local.moved = moved[n:]
        return image, (None if boxes is None else moved[:n].to(boxes.dtype))

    def __repr__(self) -> str:
        return f"{self.transform!r} (moving the cached ROI boxes along)"


def _with_transform(dataset, wrapper_of):
    """A shallow copy of ``dataset`` (through :class:`SubsetDataset` wrappers) whose
    ``transform`` is ``wrapper_of(transform)``, and that wrapper; ``(None, None)`` when the
    dataset has no transform."""
    if isinstance(dataset, SubsetDataset):
        inner, wrapper = _with_transform(dataset.dataset, wrapper_of)
        if inner is None:
            return None, None
        view = copy.copy(dataset)
        view.dataset = inner
        return view, wrapper
    tf = getattr(dataset, "transform", None)
    if not callable(tf):
        return None, None
    view = copy.copy(dataset)
    view.transform = wrapper = wrapper_of(tf)
    return view, wrapper


def _base_transform(dataset):
    while isinstance(dataset, SubsetDataset):
        dataset = dataset.dataset
    return getattr(dataset, "transform", None)


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
    computed once on the stored image, not the augmented one (see
    :mod:`pyg_mlic.detection.sources`), so that the cache does not depend on one epoch's
    random augmentation; :math:`\hat B` = ``roi_boxes`` divided by ``roi_image_size`` is
    invariant to the resize of the image transform.

    **Augmentation** (``roi_augment``). A random training transform (crop, flip,
    RandAugment) changes the image the model sees but not the cached regions. With
    ``"follow"`` the cached *boxes* go through the sample's transform together with its
    annotated boxes, in the same call and with the same random draw: they are then
    ``xyxy`` pixels of the transformed image, ``roi_image_size`` is its ``(H, W)``, and a
    region the crop leaves with no area is dropped (``roi_mask`` ``False``; the kept rows
    stay first, in score order, with their features, scores and labels). This is exact
    for the box geometry (crop, resize, flip; RandAugment's shears and rotations give the
    enclosing box). The cached *features* are not recomputed: they describe the region of
    the un-augmented stored image (unflipped, uncropped; a region cut by the crop keeps
    the feature of its whole box). With ``"none"`` the regions are exactly as cached, in
    the stored image's frame, whatever the transform does. ``"auto"`` (default) follows
    a random transform (``transform.random`` true or absent) and leaves a deterministic
    one (:class:`~pyg_mlic.data.transforms.ResizeTransform`: a resize changes no
    normalised box) alone. The transform is the dataset's at construction (``"follow"``
    samples come from a shallow copy of the dataset whose transform also moves the ROI
    boxes; the dataset given is not modified).

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
        roi_augment (str): ``"auto"``, ``"follow"`` or ``"none"`` (see above).
            (default: :obj:`"auto"`)
        **cache_kwargs: ``root``, ``dtype``, ``chunk_size``, ``verify`` of :class:`RegionCache`.
    """

    def __init__(self, dataset: MultiLabelDataset, extractor: Union[RegionExtractor, str],
                 *, cache: bool = True, cache_dir: Optional[Union[str, os.PathLike]] = None,
                 build: bool = True, progress: bool = True, num_workers: int = 0,
                 roi_augment: str = "auto", **cache_kwargs: Any) -> None:
        if roi_augment not in ROI_AUGMENT:
            raise ValueError(f"RegionDataset: roi_augment must be one of {list(ROI_AUGMENT)}, "
                             f"got {roi_augment!r}")
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
        self.data_config = getattr(dataset, "data_config", None)
        follow = roi_augment == "follow" or (
            roi_augment == "auto" and getattr(_base_transform(dataset), "random", True))
        # a private copy of the dataset whose transform moves the ROI boxes along
        self._follow = _with_transform(dataset, _WithROIBoxes) if follow else (None, None)
        self.roi_augment = "follow" if self._follow[0] is not None else "none"
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
        regions = self.regions(index)
        view, wrapper = self._follow
        if view is None:
            sample = dict(self.dataset[index])
            sample.update(regions)
            return sample
        mask = regions["roi_mask"]
        sample, moved = wrapper.run(view, index, regions["roi_boxes"][mask])
        sample = dict(sample)
        if moved is not None:
            regions = _follow(regions, moved, tuple(sample["image"].shape[-2:]))
        sample.update(regions)
        return sample

    def __repr__(self) -> str:
        where = f"cache={str(self.cache.path)!r}" if self.cache is not None else "cache=None"
        return (f"RegionDataset({type(self.dataset).__name__}(split={self.split!r}, "
                f"n={len(self)}), backend={self.extractor.backend!r}, "
                f"max_instances={self.max_instances}, feature_dim={self.roi_feature_dim}, "
                f"roi_augment={self.roi_augment!r}, {where})")


def _follow(regions: Dict[str, torch.Tensor], moved: torch.Tensor,
            hw: Tuple[int, int]) -> Dict[str, torch.Tensor]:
    """``regions`` with the real rows' boxes replaced by ``moved`` (pixels of the
    transformed ``(H, W)`` image); rows left without area are dropped to the padding."""
    mask = regions["roi_mask"]
    rows = mask.nonzero().flatten()
    area = (moved[:, 2] - moved[:, 0]).clamp_min(0) * (moved[:, 3] - moved[:, 1]).clamp_min(0)
    kept = rows[area > 0]
    n = int(kept.numel())
    out = {}
    for key in ("roi_features", "roi_scores"):
        v = torch.zeros_like(regions[key])
        v[:n] = regions[key][kept]
        out[key] = v
    boxes = torch.zeros_like(regions["roi_boxes"])
    boxes[:n] = moved[area > 0].to(boxes.dtype)
    labels = torch.full_like(regions["roi_labels"], -1)
    labels[:n] = regions["roi_labels"][kept]
    new_mask = torch.zeros_like(mask)
    new_mask[:n] = True
    out.update(roi_boxes=boxes, roi_labels=labels, roi_mask=new_mask,
               roi_image_size=torch.tensor(hw, dtype=regions["roi_image_size"].dtype))
    return out
