"""Transforms (pyg_mlic.data.transforms): boxes follow the pixels through every training
transform (random-resized crop, A-GCN's resize + crop, RandAugment, Cutout, flips), the
normalisation is the backbone's, and cached ROI boxes follow the sample's transform
(pyg_mlic.detection.RegionDataset). Real JPEGs from ../shared/data/images."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyg_mlic.data.transforms import (GEOMETRIC_OPS, BoxRandAugment, RandomCropResizeTransform,
                                      ResizeRandomCropTransform, ResizeTransform,
                                      build_transforms)

BCCD = ["WBC", "RBC", "Platelets"]


@pytest.fixture(scope="module")
def photo(data_dir: Path) -> Image.Image:
    p = data_dir / "images" / "coco8" / "images" / "000000000009.jpg"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return Image.open(p).convert("RGB")


def _painted(img: Image.Image, box) -> Image.Image:
    """``img`` with the pixels of ``box`` (xyxy, integers) painted pure green and every
    other pixel's green channel capped, so that the box's pixels can be found again."""
    a = np.asarray(img).copy()
    a[..., 1] = np.minimum(a[..., 1], 100)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = (0, 255, 0)
    return Image.fromarray(a)


def _green_box(t: torch.Tensor, mean, std) -> torch.Tensor:
    """Bounding box (xyxy, pixel edges) of the pure-green pixels of a normalised tensor."""
    x = t * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    m = (x[1] > 0.8) & (x[0] < 0.3) & (x[2] < 0.3)
    ys, xs = torch.nonzero(m, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    lt, rb = torch.maximum(a[:2], b[:2]), torch.minimum(a[2:], b[2:])
    inter = (rb - lt).clamp_min(0).prod()
    area = lambda z: (z[2:] - z[:2]).prod()  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


class _GeometricRandAugment(BoxRandAugment):
    """RandAugment restricted to its geometric operations: the photometric ones repaint
    the marker pixels the test looks for (they never move boxes, tested separately)."""

    def op_space(self, width, height):
        return {k: v for k, v in super().op_space(width, height).items()
                if k in GEOMETRIC_OPS}


# ------------------------------------------------------------------ boxes follow pixels
@pytest.mark.parametrize("make", [
    lambda g: RandomCropResizeTransform(96, scale=(0.7, 1.0), generator=g),
    lambda g: ResizeRandomCropTransform(96, resize=110, generator=g),
    lambda g: ResizeRandomCropTransform(96, resize=96, flip_p=0.0, generator=g),
    lambda g: RandomCropResizeTransform(96, scale=(0.7, 1.0), generator=g,
                                        randaugment=_GeometricRandAugment(2, 9)),
    lambda g: ResizeRandomCropTransform(96, resize=110, generator=g,
                                        randaugment=_GeometricRandAugment(3, 12)),
], ids=["random_resized_crop", "resize_crop", "plain_resize", "rrc+geometric_randaugment",
        "resize_crop+geometric_randaugment"])
def test_boxes_follow_the_pixels(photo, make):
    """A painted box lands where the transform says its box is, over many random draws
    (crops, flips, RandAugment's shears/rotations/translations)."""
    src_box = (250, 150, 420, 330)                      # inside the 640 x 480 photo
    img = _painted(photo, src_box)
    tf = make(random.Random(0))
    ious = []
    for _ in range(40):
        t, b = tf(img, torch.tensor([src_box], dtype=torch.float32))
        assert t.shape == (3, 96, 96) and b.shape == (1, 4)
        if (b[0, 2:] - b[0, :2]).min() < 3:             # cut away, or a sliver: no pixels
            continue
        pix = _green_box(t, tf.mean, tf.std)
        # the object's pixels always lie inside its box (to the blur of a resampled edge)
        assert (pix[:2] >= b[0, :2] - 1.5).all() and (pix[2:] <= b[0, 2:] + 1.5).all()
        ious.append(_iou(b[0], pix))
    assert len(ious) >= 20
    # bilinear resampling blurs the painted edge by a pixel: IoU ~0.9 at 96 px; a shear or
    # rotation after another one encloses an enclosing box (looser, still containing)
    loose = tf.randaugment is not None
    assert min(ious) > (0.5 if loose else 0.75) and float(np.mean(ious)) > 0.85


def test_resize_crop_is_resize_then_crop(photo):
    """A-GCN's pipeline literally: resize to R x R, crop S x S at the drawn offset."""
    tf = ResizeRandomCropTransform(448, resize=512, flip_p=0.0, mean=(0, 0, 0), std=(1, 1, 1),
                                   generator=random.Random(3))
    t, b = tf(photo, torch.tensor([[0.0, 0.0, 640.0, 480.0]]))
    g = random.Random(3)
    ox, oy = g.randint(0, 64), g.randint(0, 64)
    ref = photo.resize((512, 512), Image.BILINEAR).crop((ox, oy, ox + 448, oy + 448))
    ref_t = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(t, ref_t)
    # the whole-image box becomes the crop window
    assert torch.allclose(b, torch.tensor([[0.0, 0.0, 448.0, 448.0]]))
    assert isinstance(tf.eval_transform(), ResizeTransform) and tf.eval_transform().size == 448
    with pytest.raises(ValueError, match="resize"):
        ResizeRandomCropTransform(448, resize=400)


def test_random_resized_crop_keeps_its_draws(photo):
    """The refactored random-resized crop draws crop then flip as before: its crop window
    and flip equal a by-hand replay of the same generator."""
    tf = RandomCropResizeTransform(64, generator=random.Random(5), mean=(0, 0, 0), std=(1, 1, 1))
    t, _ = tf(photo, None)
    g = random.Random(5)
    ref_tf = RandomCropResizeTransform(64, generator=g)
    x0, y0, cw, ch = ref_tf._crop_box(640, 480)
    ref = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((64, 64), Image.BILINEAR)
    if g.random() < 0.5:
        ref = ref.transpose(Image.FLIP_LEFT_RIGHT)
    ref_t = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(t, ref_t)


def test_degenerate_boxes_keep_their_rows(photo):
    tf = ResizeRandomCropTransform(64, resize=128, flip_p=0.0, generator=random.Random(0))
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [300.0, 200.0, 340.0, 260.0]])
    _, b = tf(photo, boxes)
    assert b.shape == (2, 4) and (b >= 0).all() and (b <= 64).all()


# ------------------------------------------------------------------ RandAugment
def test_randaugment_op_space_is_torchvisions():
    from torchvision.transforms import RandAugment

    ra = BoxRandAugment()
    tv = RandAugment()._augmentation_space(31, (96, 128))
    ours = ra.op_space(128, 96)
    assert list(ours) == list(tv) and len(ours) == 14
    assert set(GEOMETRIC_OPS) == {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}
    photometric = BoxRandAugment(geometric=False).op_space(128, 96)
    assert set(photometric) == set(tv) - set(GEOMETRIC_OPS) and len(photometric) == 9
    with pytest.raises(ValueError, match="magnitude"):
        BoxRandAugment(magnitude=31)


@pytest.mark.parametrize("op", GEOMETRIC_OPS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_randaugment_geometric_ops_move_boxes_like_pixels(op, sign):
    """Each geometric op at the largest magnitude: the mapped box is the tight box of
    the moved (rectangular) object, to a pixel."""
    w, h = 160, 120
    a = np.zeros((h, w, 3), np.uint8)
    box = (60, 40, 100, 70)
    a[box[1]:box[3], box[0]:box[2]] = 255
    ra = BoxRandAugment(num_ops=1, magnitude=30)
    mags, _ = ra.op_space(w, h)[op]
    mag = sign * float(mags[30])
    out, b = ra.apply(Image.fromarray(a), torch.tensor([box], dtype=torch.float32), [(op, mag)])
    m = np.asarray(out)[..., 0] > 127
    ys, xs = np.nonzero(m)
    pix = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    assert torch.allclose(b[0], pix, atol=1.5), (op, mag, b[0], pix)


def test_randaugment_photometric_ops_leave_boxes():
    img = Image.new("RGB", (64, 48), (90, 120, 30))
    boxes = torch.tensor([[3.0, 4.0, 20.0, 30.0]])
    ra = BoxRandAugment(num_ops=4, geometric=False)
    for seed in range(20):
        _, b = ra(img, boxes, rng=random.Random(seed))
        assert torch.equal(b, boxes)
    ops = BoxRandAugment(num_ops=2).sample(64, 48, rng=random.Random(0))
    assert len(ops) == 2 and all(isinstance(m, float) for _, m in ops)


def test_cutout_occludes_without_moving_boxes():
    img = Image.new("RGB", (80, 80), (255, 255, 255))
    boxes = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    tf = ResizeRandomCropTransform(80, resize=80, flip_p=0.0, cutout=0.5, mean=(0, 0, 0),
                                   std=(1, 1, 1), generator=random.Random(1))
    t, b = tf(img, boxes)
    assert torch.equal(b, boxes)
    changed = (t != 1.0).any(0)
    assert 0 < int(changed.sum()) <= 41 * 41          # one rectangle of at most half a side
    with pytest.raises(ValueError, match="cutout"):
        RandomCropResizeTransform(64, cutout=1.5)


def test_two_stage_eval_view_drops_every_augmentation():
    """IML-GCN's embedding pass (engine.two_stage.eval_view) replaces RandAugment and
    A-GCN's resize + crop alike by the test resize, keeping the normalisation."""
    from pyg_mlic.data import SyntheticScenes
    from pyg_mlic.engine.two_stage import eval_view

    for tf in (RandomCropResizeTransform(32, randaugment=True, mean=(0, 0, 0), std=(1, 1, 1)),
               ResizeRandomCropTransform(32, resize=40, mean=(0, 0, 0), std=(1, 1, 1))):
        v = eval_view(SyntheticScenes("train", num_images=4, image_size=32, transform=tf))
        assert type(v.transform) is ResizeTransform and v.transform.size == 32
        assert v.transform.mean == (0, 0, 0) and v.transform.std == (1, 1, 1)
        assert repr(tf.eval_transform()) == repr(v.transform)


# ------------------------------------------------------------------ normalisation
def test_normalisation_is_the_backbones(photo):
    """TResNet (timm's cfg: mean 0, std 1) gets [0, 1] pixels; ResNet ImageNet-normalised
    ones; the transforms of build_splits read the backbone's data config."""
    from pyg_mlic.backbones import data_config

    plain = ResizeTransform(32, mean=(0, 0, 0), std=(1, 1, 1))(photo)[0]
    assert 0.0 <= float(plain.min()) and float(plain.max()) <= 1.0
    cfg = data_config("resnet101")
    t = build_transforms(False, 32, mean=cfg["mean"], std=cfg["std"])(photo)[0]
    ref = (plain - torch.tensor(cfg["mean"])[:, None, None]) / torch.tensor(cfg["std"])[:, None,
                                                                                          None]
    assert torch.allclose(t, ref, atol=1e-6)
    with pytest.raises(ValueError, match="unknown training transform"):
        build_transforms(True, 32, kind="mosaic")


def test_build_splits_feeds_tresnet_unnormalised_pixels(data_dir):
    pytest.importorskip("timm")
    from pyg_mlic.data.factory import build_splits
    from pyg_mlic.models import get_model_class

    root = data_dir / "images" / "coco8"
    kw = dict(root=str(root), train_file=str(root / "instances_train.json"),
              test_file=str(root / "instances_val.json"), image_size=48)
    tr, _, te = build_splits("coco", model=get_model_class("iml_gcn"), **kw)
    assert tr.transform.mean == (0.0, 0.0, 0.0) and te.transform.std == (1.0, 1.0, 1.0)
    x = te[0]["image"]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert tr.transform.randaugment is not None         # IML-GCN's RandAugment
    assert tr.data_config["preprocessing"].startswith("timm pretrained_cfg tresnet_m")
    tr, _, te = build_splits("coco", model=get_model_class("ml_gcn"), **kw)
    assert te.transform.mean == (0.485, 0.456, 0.406) and float(te[0]["image"].min()) < 0


# ------------------------------------------------------------------ cached ROIs follow
@pytest.fixture(scope="module")
def bccd_regions(data_dir):
    from pyg_mlic.data import VOCDataset
    from pyg_mlic.data.base import SubsetDataset
    from pyg_mlic.detection.groundtruth import GroundTruthRegionExtractor

    root = data_dir / "images" / "bccd"
    if not root.is_dir():
        pytest.skip(f"{root} not found")

    def make(transform):
        ds = VOCDataset(root, "val", classes=BCCD, transform=transform)
        return SubsetDataset(ds, list(range(5)), split="val5")

    return make, GroundTruthRegionExtractor("small_cnn", image_size=48, max_instances=24)


def test_cached_roi_boxes_follow_crop_and_flip(bccd_regions, tmp_path):
    """Ground-truth regions are the annotated boxes: after the random crop + flip the
    cached ROI boxes equal the sample's transformed boxes (the same random draw), rows
    the crop cuts away are dropped to the padding, features are the cached ones."""
    from pyg_mlic.detection import RegionDataset

    make, gt = bccd_regions
    rd = RegionDataset(make(RandomCropResizeTransform(96, generator=random.Random(0))), gt,
                       cache_dir=tmp_path / "c", progress=False)
    assert rd.roi_augment == "follow"
    fixed = RegionDataset(make(RandomCropResizeTransform(96)), gt, cache_dir=tmp_path / "c",
                          progress=False, roi_augment="none")
    dropped = 0
    for i in range(len(rd)):
        s, c = rd[i], fixed[i]                   # c: the regions exactly as cached
        assert s["roi_image_size"].tolist() == [96, 96]
        assert c["roi_image_size"].tolist() == [480, 640]
        m = int(s["roi_mask"].sum())
        assert s["roi_mask"][:m].all() and not s["roi_mask"][m:].any()
        area = (s["boxes"][:, 2:] - s["boxes"][:, :2]).clamp_min(0).prod(1)
        visible = area > 0
        n = min(len(s["boxes"]), 24)
        assert m == int(visible[:n].sum())
        assert torch.allclose(s["roi_boxes"][:m], s["boxes"][:n][visible[:n]], atol=1e-4)
        # features / labels of the kept rows are the cached rows', in their order
        rows = torch.nonzero(visible[:n]).flatten()
        assert torch.equal(s["roi_features"][:m], c["roi_features"][rows])
        assert torch.equal(s["roi_labels"][:m], c["roi_labels"][rows])
        assert (s["roi_features"][m:] == 0).all() and (s["roi_labels"][m:] == -1).all()
        dropped += int(c["roi_mask"].sum()) - m
    assert dropped > 0                          # some crops do cut regions away


def test_deterministic_transform_keeps_the_cached_frame(bccd_regions, tmp_path):
    from pyg_mlic.detection import RegionDataset

    make, gt = bccd_regions
    rd = RegionDataset(make(ResizeTransform(64)), gt, cache_dir=tmp_path / "c", progress=False)
    assert rd.roi_augment == "none"
    s = rd[0]
    assert s["roi_image_size"].tolist() == [480, 640]
    follow = RegionDataset(make(ResizeTransform(64)), gt, cache_dir=tmp_path / "c",
                           progress=False, roi_augment="follow")[0]
    assert follow["roi_image_size"].tolist() == [64, 64]
    m = s["roi_mask"]
    norm = s["roi_boxes"][m] / torch.tensor([640.0, 480.0, 640.0, 480.0])
    assert torch.allclose(norm, follow["roi_boxes"][m] / 64.0, atol=1e-5)  # same geometry
    with pytest.raises(ValueError, match="roi_augment"):
        RegionDataset(make(ResizeTransform(64)), gt, cache=False, roi_augment="always")


def test_region_dataset_pickles_with_its_follow_copy(bccd_regions):
    import pickle

    from pyg_mlic.detection import RegionDataset

    make, gt = bccd_regions
    rd = RegionDataset(make(RandomCropResizeTransform(64, generator=random.Random(0))), gt,
                       cache=False)
    again = pickle.loads(pickle.dumps(rd))
    s = again[1]
    assert s["roi_image_size"].tolist() == [64, 64] and s["image"].shape == (3, 64, 64)
    # the user's dataset keeps its own transform (the wrapper lives in a private copy)
    assert isinstance(rd.dataset.dataset.transform, RandomCropResizeTransform)
