r"""Region proposals and ROI features: the detector side of IA-GCN and GM-MLIC.

IA-GCN (Sec. 3.4) extracts :math:`N` ROIs :math:`\mathbf{X} \in \mathbb{R}^{N \times D}`
per image with an RPN; GM-MLIC (Sec. 3.2, 4.2) takes the top-:math:`m` instances of a
Faster R-CNN R50-FPN, each with a feature :math:`f_i`, a box :math:`B_i`, a class and a
score. This package provides that step behind one protocol (:class:`RegionExtractor`:
images → :class:`Regions`; :class:`RegionFeatures` pads a batch to ``max_instances``
with a mask) and several backends:

================  ======================================  ===============================
backend           class                                   boxes / features
================  ======================================  ===============================
``torchvision``   :class:`TorchvisionRegionExtractor`     Faster R-CNN R50-FPN: RPN or
                                                          detections; box head (1024) or
                                                          RoIAlign (256)
``detectron2``    :class:`Detectron2RegionExtractor`      the same through detectron2
                                                          (optional dependency)
``precomputed``   :class:`PrecomputedRegionExtractor`     read from ``.npz``/``.npy``
``groundtruth``   :class:`GroundTruthRegionExtractor`     annotated boxes + RoIAlign on a
                                                          backbone (oracle ablation)
================  ======================================  ===============================

:func:`build_region_extractor` builds one by name (``"auto"``: detectron2 when
importable, else torchvision); given ``model=``, the model's region recipe fills the
options not given (:func:`model_region_options`: GM-MLIC takes the detector's
class-labelled detections ranked by confidence, ``mode="detections"``, as its paper;
IA-GCN the backends' default, RPN proposals). :class:`RegionCache` extracts a dataset
once into memory-mapped ``.npy`` files (resumable, keyed, checksummed) and :class:`RegionDataset`
adds ``roi_features``/``roi_boxes``/``roi_mask``/``roi_scores``/``roi_labels``/
``roi_image_size`` to every sample. :func:`pyg_mlic.graphs.instance_graph` turns them
into GM-MLIC's instance spatial graph.

Example::

    >>> from pyg_mlic.detection import build_region_extractor, RegionDataset
    >>> ex = build_region_extractor("torchvision", min_size=448, max_size=448)
    >>> ds = RegionDataset(coco_train, ex)                  # doctest: +SKIP
    >>> ds[0]["roi_features"].shape                        # doctest: +SKIP
    torch.Size([40, 1024])
"""
from pyg_mlic.detection.base import (
    ROI_KEYS,
    RegionExtractor,
    RegionFeatures,
    Regions,
    to_float_image,
)
from pyg_mlic.detection.cache import CacheReport, RegionCache, default_cache_root
from pyg_mlic.detection.dataset import RegionDataset
from pyg_mlic.detection.detectron2_backend import (
    Detectron2RegionExtractor,
    detectron2_available,
    detectron2_unavailable_reason,
)
from pyg_mlic.detection.groundtruth import GroundTruthRegionExtractor
from pyg_mlic.detection.precomputed import PrecomputedRegionExtractor, save_regions
from pyg_mlic.detection.registry import (
    build_region_extractor,
    list_region_backends,
    model_region_options,
    register_region_backend,
    resolve_backend,
)
from pyg_mlic.detection.sources import RegionSource, dataset_identity, region_source, sample_key
from pyg_mlic.detection.torchvision_backend import (
    TorchvisionRegionExtractor,
    build_fasterrcnn_resnet50_fpn,
)

__all__ = [
    "Regions",
    "RegionFeatures",
    "RegionExtractor",
    "ROI_KEYS",
    "to_float_image",
    "TorchvisionRegionExtractor",
    "build_fasterrcnn_resnet50_fpn",
    "Detectron2RegionExtractor",
    "detectron2_available",
    "detectron2_unavailable_reason",
    "PrecomputedRegionExtractor",
    "save_regions",
    "GroundTruthRegionExtractor",
    "build_region_extractor",
    "list_region_backends",
    "model_region_options",
    "register_region_backend",
    "resolve_backend",
    "RegionCache",
    "CacheReport",
    "default_cache_root",
    "RegionDataset",
    "RegionSource",
    "region_source",
    "sample_key",
    "dataset_identity",
]
