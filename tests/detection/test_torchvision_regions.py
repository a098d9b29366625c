"""torchvision Faster R-CNN R50-FPN regions on real coco8 / BCCD images (random weights:
real proposals of a real forward pass with untrained scores)."""
import pytest
import torch

from pyg_mlic.detection import (
    RegionFeatures,
    TorchvisionRegionExtractor,
    build_fasterrcnn_resnet50_fpn,
    build_region_extractor,
    region_source,
    to_float_image,
)
from pyg_mlic.errors import CheckpointError


def _check(r, size, d, k):
    h, w = size
    assert r.image_size == (h, w)
    assert r.features.shape == (r.num_instances, d) and r.features.dtype == torch.float32
    assert 0 < r.num_instances <= k
    b = r.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    assert torch.isfinite(r.features).all() and torch.isfinite(r.scores).all()
    assert (r.scores[:-1] >= r.scores[1:]).all()


@pytest.fixture(scope="module")
def images(coco_val, bccd_test):
    """Two COCO images (one portrait, 381x500 is index 2) and one BCCD image, as PIL."""
    srcs = [region_source(coco_val, 0), region_source(coco_val, 2), region_source(bccd_test, 0)]
    return [(s.load(), s.image_size) for s in srcs]


@pytest.fixture(scope="module")
def rpn_out(tv_rpn, images):
    return tv_rpn([img for img, _ in images])


def test_rpn_box_head_regions(tv_rpn, images, rpn_out):
    assert tv_rpn.feature_dim == 1024 and tv_rpn.max_instances == 16
    for (img, size), r in zip(images, rpn_out):
        _check(r, size, 1024, 16)
        assert (r.labels == -1).all()                    # proposals carry no class
        assert ((r.scores >= 0) & (r.scores <= 1)).all()  # sigmoid(objectness)
    assert images[1][1] == (500, 381)                    # the portrait image: H > W


def test_rpn_is_deterministic_and_batch_invariant(tv_rpn, images, rpn_out):
    again = tv_rpn([images[2][0]])[0]                    # alone, not in the batch of 3
    assert torch.equal(again.boxes, rpn_out[2].boxes)
    assert torch.equal(again.features, rpn_out[2].features)
    assert torch.equal(again.scores, rpn_out[2].scores)


def test_padded_extract(tv_rpn, images, rpn_out):
    rf = tv_rpn.extract([img for img, _ in images[:1]])
    assert isinstance(rf, RegionFeatures) and rf.features.shape == (1, 16, 1024)
    m = rpn_out[0].num_instances
    assert rf.mask[0].sum() == m and torch.equal(rf.features[0, :m], rpn_out[0].features)


@pytest.mark.heavy
def test_detections_roialign_regions(images):
    ex = TorchvisionRegionExtractor(mode="detections", feature="roialign", min_size=256,
                                    max_size=320, max_instances=12, box_score_thresh=0.0,
                                    rpn_post_nms_top_n=100)
    assert ex.feature_dim == 256                          # FPN width
    img, size = images[0]
    r = ex([img])[0]
    _check(r, size, 256, 12)
    assert ((r.labels >= 1) & (r.labels < ex.num_classes)).all()   # COCO ids, no background
    # RoIAlign features are pooled maps of the FPN: recompute one by hand
    det = ex.detector
    images_, _ = det.transform([to_float_image(img)])
    with torch.no_grad():
        feats = det.backbone(images_.tensors)
        from torchvision.models.detection.transform import resize_boxes

        boxes_resized = resize_boxes(r.boxes, [size[0], size[1]], list(images_.image_sizes[0]))
        pooled = det.roi_heads.box_roi_pool(feats, [boxes_resized], images_.image_sizes)
    assert torch.allclose(pooled.mean((2, 3)), r.features, rtol=1e-3, atol=1e-3)


@pytest.mark.heavy
def test_zero_proposals_flow_through(images):
    # objectness probabilities never reach 1.01: a real forward pass with no proposal left
    ex = TorchvisionRegionExtractor(min_size=256, max_size=320, max_instances=8,
                                    rpn_score_thresh=1.01)
    r = ex([images[2][0]])[0]
    assert r.num_instances == 0 and r.features.shape == (0, 1024)
    rf = RegionFeatures.from_regions([r], 8, ex.feature_dim)
    assert rf.features.shape == (1, 8, 1024) and not rf.mask.any()
    assert rf.features.abs().sum() == 0
    from pyg_mlic.graphs.instance_graph import instance_graphs_from_regions

    g = instance_graphs_from_regions(rf, k=3)
    assert g.num_nodes == 0 and g.edge_index.shape == (2, 0)


@pytest.mark.heavy
def test_weights_file_roundtrip(tmp_path, tv_rpn, images, rpn_out):
    f = tmp_path / "frcnn.pth"
    torch.save(tv_rpn.detector.state_dict(), f)
    ex = build_region_extractor("torchvision", weights=str(f), seed=123, min_size=256,
                                max_size=320, max_instances=16)
    assert ex.weights_id == build_region_extractor(
        "torchvision", weights=tv_rpn.detector.state_dict(), min_size=256, max_size=320,
        max_instances=16).weights_id != tv_rpn.weights_id     # content hash vs random(seed)
    r = ex([images[2][0]])[0]
    assert torch.equal(r.features, rpn_out[2].features)       # seed ignored: weights loaded
    assert torch.equal(r.boxes, rpn_out[2].boxes)
    # a state dict of torchvision's own builder loads as is
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    sd = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    model = build_fasterrcnn_resnet50_fpn(sd)
    assert torch.equal(model.roi_heads.box_head.fc6.weight, sd["roi_heads.box_head.fc6.weight"])
    # foreign weights are refused with the reason
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, bad)
    with pytest.raises(CheckpointError, match="cls_score"):
        TorchvisionRegionExtractor(weights=str(bad))
    with pytest.raises(FileNotFoundError):
        TorchvisionRegionExtractor(weights=str(tmp_path / "missing.pth"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        TorchvisionRegionExtractor(mode="proposals")
    with pytest.raises(ValueError, match="feature"):
        TorchvisionRegionExtractor(feature="fc7")
    with pytest.raises(ValueError, match="max_instances"):
        TorchvisionRegionExtractor(max_instances=0)
