"""read_regions: ROIs from synthetic-scene boxes (RoIAlign on the encoder's map) and from a
RegionDataset batch (ground-truth backend)."""
import pytest
import torch
from torchvision.ops import roi_align

from pyg_mlic.data import SyntheticScenes
from pyg_mlic.data.base import check_batch_finite, collate
from pyg_mlic.models import build_encoder
from pyg_mlic.models.base import DEBUG_ENV
from pyg_mlic.models.regions import RegionBatch, read_regions, region_feature_dim


@pytest.fixture(scope="module")
def scenes():
    return SyntheticScenes("train", num_images=6, image_size=48)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder("image", backbone="small_cnn").eval()


def test_boxes_source_on_real_scenes(scenes, encoder):
    batch = collate([scenes[i] for i in range(4)])
    with torch.no_grad():
        r = read_regions(encoder, batch, max_instances=5)
        x = encoder(batch["image"])
    assert isinstance(r, RegionBatch)
    assert r.image_features.shape == (4, 128) and torch.allclose(r.image_features, x, atol=1e-6)
    n = [min(len(b), 5) for b in batch["boxes"]]
    K = max(n)                                            # padded to the batch's largest count
    assert r.features.shape == (4, K, 128) and r.boxes.shape == (4, K, 4)
    assert r.num_instances.tolist() == n and r.max_instances == K and r.feature_dim == 128
    assert max(len(b) for b in batch["boxes"]) > 1
    for i, k in enumerate(n):
        assert r.mask[i, :k].all() and not r.mask[i, k:].any()
        assert (r.features[i, k:] == 0).all() and (r.boxes[i, k:] == 0).all()
        assert torch.allclose(r.boxes[i, :k], batch["boxes"][i][:k] / 48.0)
    assert ((r.boxes >= 0) & (r.boxes <= 1)).all() and torch.isfinite(r.features).all()


def test_roi_feature_equals_a_direct_crop_computation(scenes, encoder):
    batch = collate([scenes[i] for i in range(2)])
    with torch.no_grad():
        r = read_regions(encoder, batch, output_size=7)
        fmap = encoder.feature_map(batch["image"])
    box = batch["boxes"][1][0]
    s = fmap.shape[-1] / 48.0                              # 3 / 48: stride 16
    ref = roi_align(fmap[1:2], [box[None] * s], output_size=7, sampling_ratio=2,
                    aligned=True).mean((2, 3))[0]
    assert torch.allclose(r.features[1, 0], ref, atol=1e-6)
    # by hand: bilinear samples of the map at 2x2 points per bin, averaged (RoIAlign)
    x1, y1, x2, y2 = (box * s - 0.5).tolist()
    bw, bh = (x2 - x1) / 7, (y2 - y1) / 7
    h, w = fmap.shape[-2:]

    def bilinear(y, x):
        if y < -1 or y > h or x < -1 or x > w:
            return torch.zeros(fmap.shape[1])
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
        y1_, x1_ = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
        y, x = (y0 if y0 >= h - 1 else y), (x0 if x0 >= w - 1 else x)
        ly, lx = y - y0, x - x0
        f = fmap[1]
        return ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1_]
                + ly * (1 - lx) * f[:, y1_, x0] + ly * lx * f[:, y1_, x1_])

    acc = torch.zeros(fmap.shape[1])
    for py in range(7):
        for px in range(7):
            for iy in range(2):
                for ix in range(2):
                    acc += bilinear(y1 + py * bh + (iy + 0.5) * bh / 2,
                                    x1 + px * bw + (ix + 0.5) * bw / 2)
    assert torch.allclose(r.features[1, 0], acc / (49 * 4), atol=1e-5)


def test_backbone_runs_once_and_gradients_flow(scenes):
    torch.manual_seed(0)
    enc = build_encoder("image", backbone="small_cnn")
    calls = []
    enc.backbone.register_forward_hook(lambda *a: calls.append(1))
    batch = collate([scenes[i] for i in range(2)])
    r = read_regions(enc, batch, source="boxes")
    assert len(calls) == 1
    (r.features.sum() + r.image_features.sum()).backward()
    assert all(p.grad is not None for p in enc.backbone.parameters() if p.requires_grad)


def test_zero_boxes_gives_an_all_false_mask(scenes, encoder):
    batch = collate([scenes[0], scenes[1]])
    batch["boxes"] = [torch.zeros(0, 4), batch["boxes"][1]]
    r = read_regions(encoder, batch, max_instances=4)
    assert not r.mask[0].any() and (r.features[0] == 0).all() and r.mask[1].any()
    batch["boxes"] = [torch.zeros(0, 4), torch.zeros(0, 4)]
    r = read_regions(encoder, batch, max_instances=4)
    assert not r.mask.any() and torch.isfinite(r.features).all()
    assert r.features.shape == (2, 1, 128) and (r.features == 0).all()


def test_batch_source_from_a_groundtruth_region_dataset(scenes, encoder):
    from pyg_mlic.detection import GroundTruthRegionExtractor, RegionDataset

    ex = GroundTruthRegionExtractor("small_cnn", image_size=48, max_instances=8)
    rd = RegionDataset(scenes, ex, cache=False)
    batch = collate([rd[i] for i in range(3)])
    with torch.no_grad():
        r = read_regions(encoder, batch, max_instances=40)       # auto -> batch
        r3 = read_regions(encoder, batch, source="batch", max_instances=3)
    assert r.features.shape == (3, 8, ex.feature_dim)
    assert torch.equal(r.mask, batch["roi_mask"])
    assert torch.equal(r.features, batch["roi_features"])
    hw = batch["roi_image_size"][0].tolist()
    assert hw == [48, 48]
    m = batch["roi_mask"][..., None]
    assert torch.allclose(r.boxes, batch["roi_boxes"] / 48.0 * m)
    assert torch.allclose(r.image_features, encoder(batch["image"]))
    assert r3.features.shape == (3, 3, ex.feature_dim)
    assert torch.equal(r3.features, r.features[:, :3])
    # feature input with ROIs from the batch
    fb = {"features": torch.randn(3, 10), **{k: batch[k] for k in batch if k.startswith("roi")}}
    fenc = build_encoder("features", in_features=10, encoder_hidden=(), encoder_out=6)
    rf = read_regions(fenc, fb)
    assert rf.image_features.shape == (3, 6) and torch.equal(rf.features, r.features)
    bad = dict(batch, roi_features=batch["roi_features"].clone())
    bad["roi_features"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite values in the input batch"):
        check_batch_finite(bad)  # what the engine checks on the host for every batch
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DEBUG_ENV, "1")
        with pytest.raises(ValueError, match="non-finite ROI features"):
            read_regions(encoder, bad)


def test_errors_and_feature_dims(encoder):
    fenc = build_encoder("features", in_features=10, encoder_hidden=(), encoder_out=6)
    with pytest.raises(ValueError, match="RegionDataset"):
        read_regions(fenc, {"features": torch.randn(2, 10)})
    with pytest.raises(ValueError, match="--regions"):
        read_regions(encoder, {"image": torch.randn(1, 3, 48, 48)}, source="batch")
    with pytest.raises(ValueError, match="boxes"):
        read_regions(encoder, {"image": torch.randn(1, 3, 48, 48)})
    with pytest.raises(ValueError, match="source"):
        read_regions(encoder, {"image": torch.randn(1, 3, 48, 48)}, source="rpn")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DEBUG_ENV, "1")
        with pytest.raises(ValueError, match="non-finite"):
            read_regions(encoder, {"image": torch.full((1, 3, 48, 48), float("nan")),
                                   "boxes": [torch.zeros(0, 4)]})
    assert region_feature_dim(encoder, "boxes") == 128
    assert region_feature_dim(encoder, "auto") == 128
    assert region_feature_dim(encoder, "batch", 256) == 256
    assert region_feature_dim(fenc, "auto", 33) == 33
    with pytest.raises(ValueError, match="roi_feature_dim"):
        region_feature_dim(fenc, "auto")
    with pytest.raises(ValueError, match="roi_feature_dim"):
        region_feature_dim(encoder, "batch")


# ------------------------------------------------------------------ degenerate boxes
def test_zero_area_boxes_from_a_crop_are_masked_not_fed(scenes, encoder):
    """A random crop keeps boxes it pushed out of the image as zero-area rows (so that
    indices stay aligned with box_labels); they are not ROIs: masked before the first
    max_instances are taken, the next real box takes the slot."""
    from pyg_mlic.data.transforms import _clip_boxes

    batch = collate([scenes[0], scenes[1]])
    real = batch["boxes"][0][:2]
    # what RandomCropResizeTransform does to a box outside its crop: clipped to the
    # crop's edge (then scaled), no area left, row kept
    gone = _clip_boxes(torch.tensor([[50.0, 10.0, 60.0, 20.0], [5.0, -9.0, 9.0, -1.0]]),
                       48, 48)
    assert ((gone[:, 2] - gone[:, 0]) * (gone[:, 3] - gone[:, 1]) == 0).all()
    batch["boxes"] = [torch.stack([real[0], gone[0], gone[1], real[1]]), gone[:1]]
    with torch.no_grad():
        r = read_regions(encoder, batch, max_instances=2)
        ref = read_regions(encoder, dict(batch, boxes=[real, torch.zeros(0, 4)]),
                           max_instances=2)
    assert r.mask.tolist() == [[True, True], [False, False]]
    assert r.index.tolist() == [[0, 3], [-1, -1]]          # rows 1, 2 were not regions
    torch.testing.assert_close(r.features, ref.features)
    torch.testing.assert_close(r.boxes, ref.boxes)
    assert (r.features[1] == 0).all()
    # an image whose only box has no area: no ROI at all (not a zero-area ROI)
    with torch.no_grad():
        only = read_regions(encoder, dict(batch, boxes=[gone[:1], gone[1:]]))
    assert not only.mask.any() and (only.features == 0).all()


def test_zero_area_rows_of_precomputed_regions_are_masked(encoder):
    feats = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    boxes = torch.tensor([[[0, 0, 10, 10], [5, 5, 5, 9], [2, 2, 8, 8], [0, 0, 0, 0]],
                          [[3, 3, 3, 3], [1, 1, 4, 4], [0, 0, 0, 0], [0, 0, 0, 0]]]).float()
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    batch = {"features": torch.randn(2, 10), "roi_features": feats, "roi_boxes": boxes,
             "roi_mask": mask, "roi_image_size": torch.tensor([[20, 20], [20, 20]])}
    r = read_regions(None, batch, source="batch", image_features=False, max_instances=2)
    assert r.image_features is None
    assert r.mask.tolist() == [[True, True], [True, False]]
    assert r.index.tolist() == [[0, 2], [1, -1]]
    assert torch.equal(r.features[0], feats[0, [0, 2]])
    assert torch.equal(r.features[1, 0], feats[1, 1]) and (r.features[1, 1] == 0).all()
    torch.testing.assert_close(r.boxes[0, 1], boxes[0, 2] / 20)


# ------------------------------------------------------------------ sources
def test_precomputed_rois_without_image_features_skip_the_encoder(scenes):
    from pyg_mlic.detection import GroundTruthRegionExtractor, RegionDataset

    ex = GroundTruthRegionExtractor("small_cnn", image_size=48, max_instances=6)
    batch = collate([RegionDataset(scenes, ex, cache=False)[i] for i in range(2)])
    enc = build_encoder("image", backbone="small_cnn")
    calls = []
    enc.register_forward_hook(lambda *a: calls.append(1))
    r = read_regions(enc, batch, source="batch", image_features=False)
    assert calls == [] and r.image_features is None
    assert torch.equal(r.features, batch["roi_features"] * batch["roi_mask"][..., None])
    read_regions(enc, batch, source="batch")
    assert calls == [1]


def test_region_boxes_pool_the_trainable_backbone_at_the_cached_boxes(scenes):
    """rois='region_boxes': RoIAlign of the RegionDataset's (detector) boxes on the
    model's own map, mapped from the roi_image_size frame to the network input."""
    torch.manual_seed(0)
    enc = build_encoder("image", backbone="small_cnn")
    batch = collate([scenes[i] for i in range(2)])
    K = 5
    stored = torch.tensor([[96, 96], [96, 96]])             # regions of a 2x larger image
    boxes = torch.zeros(2, K, 4)
    mask = torch.zeros(2, K, dtype=torch.bool)
    for i, b in enumerate(batch["boxes"]):
        n = min(len(b), K)
        boxes[i, :n], mask[i, :n] = b[:n] * 2, True
    boxes[0, 1] = torch.tensor([20.0, 20.0, 20.0, 30.0])   # a zero-area cached row
    batch.update(roi_boxes=boxes, roi_mask=mask, roi_image_size=stored,
                 roi_features=torch.randn(2, K, 1024))       # not read by this source
    r = read_regions(enc, batch, source="region_boxes", max_instances=3)
    keep = [[j for j in range(K) if mask[i, j] and not (i == 0 and j == 1)][:3]
            for i in range(2)]
    ref = read_regions(enc, dict(batch, boxes=[boxes[i, keep[i]] / 2 for i in range(2)]),
                       source="boxes", max_instances=3)
    assert r.feature_dim == enc.out_channels == 128
    assert r.index.tolist() == [k + [-1] * (r.max_instances - len(k)) for k in keep]
    torch.testing.assert_close(r.features, ref.features)
    torch.testing.assert_close(r.boxes, ref.boxes)
    r.features.sum().backward()
    assert all(p.grad is not None for p in enc.backbone.parameters() if p.requires_grad)
    assert region_feature_dim(enc, "region_boxes", 1024) == 128     # the backbone's D
    with torch.no_grad():                           # max over the r x r bins >= their mean
        mx = read_regions(enc, batch, source="region_boxes", max_instances=3, pool="max")
    assert (mx.features >= r.features.detach() - 1e-6).all() and torch.equal(mx.mask, r.mask)
    with pytest.raises(ValueError, match="pool"):
        read_regions(enc, batch, source="region_boxes", pool="sum")
    with pytest.raises(ValueError, match="region_boxes"):
        read_regions(enc, {"image": batch["image"]}, source="region_boxes")
