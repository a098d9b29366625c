"""Tests of the synthetic scenes dataset (pyg_mlic.data.synthetic)."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pyg_mlic.data.base import MultiLabelDataset, collate
from pyg_mlic.data.synthetic import CLASSES, DEFAULT_SIZES, SCENES, SyntheticScenes
from pyg_mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ResizeTransform
from pyg_mlic.errors import DatasetError

N = 24  # small splits keep the tests fast


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("image", "target", "mask", "boxes",
                                                 "box_labels")) and a["index"] == b["index"]


def test_sample_protocol():
    ds = SyntheticScenes("train", num_images=N)
    assert isinstance(ds, MultiLabelDataset)
    assert ds.classes == list(CLASSES) == list(SyntheticScenes.CLASSES)
    assert 10 <= len(CLASSES) <= 16 and len(set(CLASSES)) == len(CLASSES)
    assert ds.input_kind == "image" and ds.split == "train" and ds.label_mask is None
    assert len(ds) == N and ds.labels.shape == (N, len(CLASSES)) and ds.labels.dtype == np.uint8
    s = ds[3]
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert s["target"].shape == (len(CLASSES),) and s["target"].dtype == torch.float32
    assert s["mask"].dtype == torch.bool and bool(s["mask"].all())
    assert s["boxes"].dtype == torch.float32 and s["boxes"].shape[1] == 4
    assert s["box_labels"].dtype == torch.long and len(s["box_labels"]) == len(s["boxes"])
    assert s["index"] == 3
    assert torch.equal(s["target"], torch.from_numpy(ds.labels[3]).float())
    # default transform = ResizeTransform(image_size): ImageNet normalisation of the render
    img, _, _ = ds.render(3)
    raw = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(s["image"], (raw - mean) / std)
    assert ds[-1]["index"] == N - 1
    with pytest.raises(IndexError):
        ds[N]


def test_default_sizes_and_override():
    for split, n in DEFAULT_SIZES.items():
        assert len(SyntheticScenes(split)) == n
    assert len(SyntheticScenes("val", num_images=7)) == 7


def test_deterministic_across_objects_and_calls():
    a = SyntheticScenes("train", num_images=N, seed=3)
    b = SyntheticScenes("train", num_images=N, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.scenes, b.scenes)
    for i in (0, 5, N - 1):
        assert _same(a[i], b[i])
        assert _same(a[i], a[i])  # repeated calls
    c = SyntheticScenes("train", num_images=N, seed=4)
    assert not np.array_equal(a.labels, c.labels)
    assert not torch.equal(a[0]["image"], c[0]["image"])


def test_prefix_stable_and_labels_independent_of_image_size():
    small = SyntheticScenes("train", num_images=10)
    full = SyntheticScenes("train", num_images=300)  # crosses a label block boundary
    np.testing.assert_array_equal(small.labels, full.labels[:10])
    np.testing.assert_array_equal(full.labels, SyntheticScenes("train").labels[:300])
    assert _same(small[7], full[7])
    big = SyntheticScenes("train", num_images=10, image_size=96)
    np.testing.assert_array_equal(big.labels, small.labels)
    assert big[0]["image"].shape == (3, 96, 96)


def test_splits_differ():
    tr = SyntheticScenes("train", num_images=100)
    va = SyntheticScenes("val", num_images=100)
    te = SyntheticScenes("test", num_images=100)
    assert not np.array_equal(tr.labels, va.labels)
    assert not np.array_equal(va.labels, te.labels)
    assert not np.array_equal(tr.labels, te.labels)
    assert not torch.equal(tr[0]["image"], va[0]["image"])
    assert not torch.equal(va[0]["image"], te[0]["image"])


@pytest.mark.parametrize("image_size", [32, 64])
def test_boxes_match_labels_and_lie_inside(image_size):
    ds = SyntheticScenes("val", num_images=60, image_size=image_size)
    for i in range(len(ds)):
        s = ds[i]
        present = set(torch.nonzero(s["target"]).flatten().tolist())
        assert present, f"image {i} has no label"
        assert set(s["box_labels"].tolist()) == present  # class in target iff it has a box
        b = s["boxes"]
        assert 1 <= len(b) <= ds.max_objects
        assert bool((b >= 0).all()) and bool((b <= image_size).all())
        assert bool((b[:, 2] - b[:, 0] >= 1).all()) and bool((b[:, 3] - b[:, 1] >= 1).all())


def test_every_image_labelled_and_max_objects():
    for mo in (1, 2, 6):
        ds = SyntheticScenes("train", num_images=300, max_objects=mo)
        k = ds.labels.sum(1)
        assert k.min() >= 1 and k.max() <= mo
    ds = SyntheticScenes("train", num_images=20, max_objects=2)
    assert all(1 <= len(ds[i]["boxes"]) <= 2 for i in range(len(ds)))


def test_cooccurrence_structure_is_real():
    ds = SyntheticScenes("train")
    y = ds.labels.astype(np.int64)
    m = y.T @ y
    n = np.diag(m).astype(float)
    assert (n > 0).all(), "every class occurs in the training split"
    assert (y.mean(0) < 0.7).all(), "no class is (almost) everywhere"
    p = m / n[:, None]  # p[i, j] = P(L_j | L_i)
    np.fill_diagonal(p, 0)
    assert (p >= 0.4).sum() >= 10  # an ML-GCN graph at tau = 0.4 has real edges
    # P(j|i) high while P(i|j) low (person | surfboard, person | traffic light, ...)
    assert ((p >= 0.55) & (p.T <= 0.2)).sum() >= 5
    # rare classes that nearly always come with a partner that often appears without them
    assert ((p >= 0.9) & (p.T <= 0.7)).sum() >= 3
    c = {name: k for k, name in enumerate(CLASSES)}
    assert p[c["surfboard"], c["person"]] >= 0.85 and p[c["person"], c["surfboard"]] <= 0.2
    assert p[c["mouse"], c["laptop"]] >= 0.85 and p[c["laptop"], c["mouse"]] <= 0.8
    assert p[c["traffic light"], c["car"]] >= 0.85
    # scene-exclusive classes never meet (e.g. kitchen oven vs beach surfboard)
    assert m[c["oven"], c["surfboard"]] == 0
    np.testing.assert_allclose(ds.conditional_probabilities(), p)
    # labels are not independent: co-occurrence far above the product of marginals
    f = y.mean(0)
    assert m[c["laptop"], c["mouse"]] / len(y) > 3 * f[c["laptop"]] * f[c["mouse"]]


def test_hard_classes_are_small():
    ds = SyntheticScenes("train", num_images=80)
    area = {k: [] for k in range(len(CLASSES))}
    for i in range(len(ds)):
        _, b, lab = ds.render_array(i)
        for box, k in zip(b, lab):
            area[int(k)].append(float((box[2] - box[0]) * (box[3] - box[1])))
    mean = {CLASSES[k]: np.mean(v) for k, v in area.items() if v}
    assert mean["mouse"] < mean["laptop"] / 4
    assert mean["traffic light"] < mean["car"] / 4


def test_cache_gives_same_tensors():
    a = SyntheticScenes("test", num_images=N, cache=True)
    b = SyntheticScenes("test", num_images=N)
    for i in range(N):
        assert _same(a[i], b[i])
    assert len(a._cache) == N
    assert _same(a[2], b[2])  # from the cache
    c = SyntheticScenes("test", num_images=N).warm_cache()
    assert c.cache and len(c._cache) == N and _same(c[5], b[5])


def test_custom_transform_scales_boxes():
    a = SyntheticScenes("train", num_images=4)
    b = SyntheticScenes("train", num_images=4, transform=ResizeTransform(32))
    sa, sb = a[1], b[1]
    assert sb["image"].shape == (3, 32, 32)
    torch.testing.assert_close(sb["boxes"], sa["boxes"] / 2)
    bad = SyntheticScenes("train", num_images=4, transform=lambda img, boxes: img)
    with pytest.raises(DatasetError, match="transform"):
        bad[0]


def test_dataloader_workers_match_main_process():
    ds = SyntheticScenes("train", num_images=12)
    batches = []
    for workers in (0, 2):
        dl = DataLoader(ds, batch_size=5, num_workers=workers, collate_fn=collate)
        batches.append(list(dl))
    for b0, b2 in zip(*batches):
        assert torch.equal(b0["image"], b2["image"]) and torch.equal(b0["target"], b2["target"])
        assert torch.equal(b0["index"], b2["index"])
        assert len(b0["boxes"]) == len(b2["boxes"])
        for x, y in zip(b0["boxes"], b2["boxes"]):
            assert torch.equal(x, y)
        for x, y in zip(b0["box_labels"], b2["box_labels"]):
            assert torch.equal(x, y)


def test_scenes_and_describe():
    ds = SyntheticScenes("train", num_images=200)
    assert ds.scenes.shape == (200,) and set(np.unique(ds.scenes)) <= set(range(len(SCENES)))
    assert len(np.unique(ds.scenes)) == len(SCENES)
    assert ds.scene_of(0) == SCENES[ds.scenes[0]]
    kitchen = ds.labels[ds.scenes == SCENES.index("kitchen")]
    assert kitchen[:, CLASSES.index("surfboard")].sum() == 0
    text = ds.describe()
    assert all(c in text for c in CLASSES) and "labels per image" in text
    assert f"{ds.labels.sum(1).mean():.2f}" in text


def test_save_grid(tmp_path):
    from PIL import Image

    ds = SyntheticScenes("val", num_images=5)
    path = ds.save_grid(tmp_path / "grid.png", n=5)
    with Image.open(path) as im:
        assert im.size == (3 * 66 + 2, 2 * 66 + 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "trainval"}, "split"),
    ({"num_images": 0}, "num_images"),
    ({"num_images": 2.5}, "num_images"),
    ({"image_size": 8}, "image_size"),
    ({"seed": -1}, "seed"),
    ({"max_objects": 0}, "max_objects"),
    ({"transform": 3}, "transform"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(DatasetError, match=match):
        SyntheticScenes(**kwargs)


def test_render_scene_checks_labels():
    from pyg_mlic.data.synthetic import render_scene

    with pytest.raises(DatasetError, match="labels"):
        render_scene([1, 0, 1], np.random.default_rng(0))
    row = np.zeros(len(CLASSES), dtype=np.uint8)
    row[CLASSES.index("oven")] = 1
    img, boxes, labels = render_scene(row, np.random.default_rng(0), image_size=48)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert labels.tolist() == [CLASSES.index("oven")] * len(labels) and len(boxes) >= 1
