"""Ground-truth regions (oracle ablation) on real coco8 / BCCD annotations."""
import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from pyg_mlic.detection import GroundTruthRegionExtractor, RegionFeatures, region_source
from pyg_mlic.detection.base import to_float_image


@pytest.fixture(scope="module")
def gt():
    return GroundTruthRegionExtractor("small_cnn", image_size=224, max_instances=40)


def _annotated(ds, i):
    """Boxes and labels straight from the dataset's annotation accessor, clipped."""
    src = region_source(ds, i)
    b, lab = ds.boxes(i)
    h, w = src.image_size
    b = b.copy()
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    return src, b, lab


@pytest.mark.parametrize("which,index", [("coco", 0), ("coco", 2), ("bccd", 3)])
def test_returns_the_annotated_boxes(gt, coco_val, bccd_test, which, index):
    ds = coco_val if which == "coco" else bccd_test
    src, boxes, labels = _annotated(ds, index)
    r = gt([src.load()], [src.annotation()])[0]
    assert r.image_size == src.image_size
    np.testing.assert_array_equal(r.boxes.numpy(), boxes[:40])      # same boxes, same order
    np.testing.assert_array_equal(r.labels.numpy(), labels[:40])
    assert r.features.shape == (min(len(boxes), 40), gt.feature_dim)
    assert torch.isfinite(r.features).all() and (r.scores == 1).all()


def test_default_backbone_resnet50(coco_val):
    ex = GroundTruthRegionExtractor(image_size=224)          # ResNet-50, D = 2048
    src, boxes, _ = _annotated(coco_val, 3)
    r = ex([src.load()], [src.annotation()])[0]
    assert ex.feature_dim == 2048 and r.features.shape == (len(boxes), 2048)
    np.testing.assert_array_equal(r.boxes.numpy(), boxes)


def test_features_are_roialign_on_the_backbone_map(gt, coco_val):
    src = region_source(coco_val, 1)
    img = to_float_image(src.load())
    r = gt([img], [src.annotation()])[0]
    # by hand: resize to 224 x 224, normalise, backbone, RoIAlign at the map's scale
    x = torch.nn.functional.interpolate(img[None], size=(224, 224), mode="bilinear",
                                        align_corners=False, antialias=True)
    with torch.no_grad():
        fmap = gt.backbone((x - gt.mean) / gt.std)
    h, w = src.image_size
    s = fmap.shape[-1]
    assert fmap.shape[-2:] == (s, s) and s == 224 // 16          # SmallCNN: stride 16
    rois = torch.cat([torch.zeros(len(r.boxes), 1),
                      r.boxes * torch.tensor([s / w, s / h, s / w, s / h])], 1)
    ref = roi_align(fmap, rois, output_size=7, sampling_ratio=2, aligned=True).mean((2, 3))
    assert torch.allclose(r.features, ref, rtol=1e-4, atol=1e-5)


def test_feature_of_a_box_does_not_depend_on_the_others(gt, bccd_test):
    src, boxes, labels = _annotated(bccd_test, 0)
    img = src.load()
    all_ = gt([img], [{"boxes": boxes, "labels": labels}])[0]
    last = gt([img], [{"boxes": boxes[-1:], "labels": labels[-1:]}])[0]
    assert torch.allclose(all_.features[-1], last.features[0], atol=1e-6)
    again = gt([img], [{"boxes": boxes, "labels": labels}])[0]
    assert torch.equal(all_.features, again.features)                 # deterministic


def test_no_annotation_means_no_region(gt, coco_val):
    src = region_source(coco_val, 0)
    r = gt([src.load()], [{"boxes": np.zeros((0, 4), np.float32)}])[0]
    assert r.num_instances == 0 and r.features.shape == (0, gt.feature_dim)
    rf = RegionFeatures.from_regions([r], 40, gt.feature_dim)
    assert not rf.mask.any() and rf.features.abs().sum() == 0
    with pytest.raises(ValueError, match="needs annotated boxes"):
        gt([src.load()], [{}])


def test_max_instances_keeps_annotation_order(bccd_test):
    ex = GroundTruthRegionExtractor("small_cnn", image_size=64, max_instances=3)
    src, boxes, _ = _annotated(bccd_test, 0)
    assert len(boxes) > 3
    r = ex([src.load()], [src.annotation()])[0]
    np.testing.assert_array_equal(r.boxes.numpy(), boxes[:3])
    assert ex.feature_dim == ex.backbone.out_channels
