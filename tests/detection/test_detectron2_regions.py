"""detectron2 Faster R-CNN R50-FPN regions (pb1-detectron2, installed by the environment
``make test`` builds). Outside that environment the tests are skipped with the reason;
under ``make test`` (``PYG_MLIC_REQUIRE_DETECTRON2=1``) a missing detectron2 fails them."""
import os

import pytest
import torch

from pyg_mlic.detection import (
    RegionDataset,
    detectron2_available,
    detectron2_unavailable_reason,
    region_source,
)
from pyg_mlic.errors import CheckpointError

if os.environ.get("PYG_MLIC_REQUIRE_DETECTRON2") == "1" and not detectron2_available():
    raise RuntimeError(f"make test builds an environment with detectron2, but it does not "
                       f"import: {detectron2_unavailable_reason()}")

pytestmark = pytest.mark.skipif(
    not detectron2_available(),
    reason=f"detectron2 not importable ({detectron2_unavailable_reason()}); install "
           f"pb1-detectron2 with `make detectron2`")


@pytest.fixture(scope="module")
def d2_rpn():
    from pyg_mlic.detection import Detectron2RegionExtractor

    return Detectron2RegionExtractor(mode="rpn", feature="box_head", min_size=256,
                                     max_size=320, max_instances=16)


@pytest.fixture(scope="module")
def image(coco_val):
    src = region_source(coco_val, 2)          # portrait 381 x 500
    return src.load(), src.image_size, coco_val


def _inside(r, size):
    h, w = size
    b = r.boxes
    assert r.image_size == size
    assert (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    assert (b[:, 2:] >= b[:, :2]).all()
    assert torch.isfinite(r.features).all()
    assert (r.scores[:-1] >= r.scores[1:]).all()


def test_rpn_box_head(d2_rpn, image):
    img, size, _ = image
    r = d2_rpn([img])[0]
    assert d2_rpn.feature_dim == 1024 and r.features.shape == (r.num_instances, 1024)
    assert 0 < r.num_instances <= 16 and (r.labels == -1).all()
    _inside(r, size)
    again = d2_rpn([img])[0]
    assert torch.equal(again.features, r.features) and torch.equal(again.boxes, r.boxes)


def test_auto_picks_detectron2(capsys):
    from pyg_mlic.detection import resolve_backend

    assert resolve_backend("auto") == "detectron2"
    assert "detectron2" in capsys.readouterr().err


@pytest.mark.heavy
def test_detections_roialign_and_weights(tmp_path, d2_rpn, image):
    from pyg_mlic.detection import Detectron2RegionExtractor

    img, size, _ = image
    ex = Detectron2RegionExtractor(mode="detections", feature="roialign", min_size=256,
                                   max_size=320, max_instances=10, box_score_thresh=0.0,
                                   rpn_post_nms_top_n=100)
    r = ex([img])[0]
    assert ex.feature_dim == 256 and r.features.shape == (r.num_instances, 256)
    assert ((r.labels >= 0) & (r.labels < 80)).all()
    _inside(r, size)
    # weights from a local state dict file reproduce the model exactly
    f = tmp_path / "d2.pth"
    torch.save(d2_rpn.detector.state_dict(), f)
    loaded = Detectron2RegionExtractor(weights=str(f), seed=7, min_size=256, max_size=320,
                                       max_instances=16)
    a, b = loaded([img])[0], d2_rpn([img])[0]
    assert torch.equal(a.features, b.features)
    assert loaded.weights_id != d2_rpn.weights_id
    pkl = tmp_path / "model_final.pkl"
    pkl.write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickle"):
        Detectron2RegionExtractor(weights=str(pkl))
    # and through the dataset wrapper + cache: the same tensors as the direct call
    from pyg_mlic.data.base import SubsetDataset

    coco_val = image[2]
    ds = SubsetDataset(coco_val, [2], split="one")
    rd = RegionDataset(ds, d2_rpn, cache_dir=tmp_path / "cache", progress=False)
    s = rd[0]
    m = b.num_instances
    assert s["roi_mask"].sum() == m
    assert torch.equal(s["roi_features"][:m], b.features)
    assert torch.equal(s["roi_boxes"][:m], b.boxes)


def test_bccd_image(d2_rpn, bccd_test):
    src = region_source(bccd_test, 5)
    r = d2_rpn([src.load()])[0]
    _inside(r, src.image_size)
    assert r.features.shape == (r.num_instances, 1024) and r.num_instances > 0
