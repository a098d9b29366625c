"""Fixtures shared by the region tests: real coco8 / BCCD datasets and one torchvision
extractor built once per session (Faster R-CNN R50-FPN, random weights, small inputs)."""
from pathlib import Path

import pytest

BCCD = ["WBC", "RBC", "Platelets"]


@pytest.fixture(scope="session")
def coco8(data_dir) -> Path:
    d = data_dir / "images" / "coco8"
    if not (d / "instances_val.json").is_file():
        pytest.skip(f"coco8 not found at {d}")
    return d


@pytest.fixture(scope="session")
def bccd(data_dir) -> Path:
    d = data_dir / "images" / "bccd"
    if not (d / "ImageSets" / "Main").is_dir():
        pytest.skip(f"BCCD not found at {d}")
    return d


@pytest.fixture(scope="session")
def coco_val(coco8):
    """4 real COCO images (landscape and portrait, 381x500 ... 640x488) with boxes."""
    from pyg_mlic.data import COCODataset

    return COCODataset(coco8, "instances_val.json", split="val")


@pytest.fixture(scope="session")
def bccd_test(bccd):
    """72 real 640x480 blood-smear images with VOC boxes."""
    from pyg_mlic.data import VOCDataset

    return VOCDataset(bccd, "test", classes=BCCD)


@pytest.fixture(scope="session")
def tv_rpn():
    """torchvision Faster R-CNN R50-FPN, RPN proposals + box-head features (1024-d)."""
    from pyg_mlic.detection import TorchvisionRegionExtractor

    return TorchvisionRegionExtractor(mode="rpn", feature="box_head", min_size=256,
                                      max_size=320, max_instances=16)
