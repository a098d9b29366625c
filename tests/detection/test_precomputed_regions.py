"""Precomputed regions from disk: the three layouts, lookup by dataset image id, errors."""
import numpy as np
import pytest
import torch

from pyg_mlic.detection import (
    GroundTruthRegionExtractor,
    PrecomputedRegionExtractor,
    RegionDataset,
    Regions,
    region_source,
    sample_key,
    save_regions,
)
from pyg_mlic.errors import DatasetError


@pytest.fixture(scope="module")
def stored(coco_val):
    """Real regions of the 4 coco8 val images (annotated boxes + SmallCNN RoIAlign
    features), with real-valued scores so that sorting is exercised, plus their ids."""
    ex = GroundTruthRegionExtractor("small_cnn", image_size=128)
    out = []
    for i in range(len(coco_val)):
        src = region_source(coco_val, i)
        r = ex([src.load()], [src.annotation()])[0]
        m = r.num_instances
        r.scores = torch.linspace(0.2, 0.9, m)[torch.randperm(m, generator=torch.Generator()
                                                              .manual_seed(i))]
        out.append(r)
    return [sample_key(coco_val, i) for i in range(len(coco_val))], out


@pytest.mark.parametrize("layout", ["npz", "npy_dir", "per_image"])
def test_roundtrip_all_layouts(tmp_path, coco_val, stored, layout):
    ids, regions = stored
    assert ids == [str(i) for i in coco_val.image_ids]      # COCO image ids are the keys
    path = tmp_path / ("r.npz" if layout == "npz" else "r")
    save_regions(path, ids, regions, layout=layout)
    ex = PrecomputedRegionExtractor(path, max_instances=40)
    assert ex.layout == layout and ex.feature_dim == regions[0].feature_dim
    assert sorted(ex.image_ids) == sorted(ids) and ids[0] in ex
    got = ex(None, [{"key": k} for k in ids])              # no pixels needed
    for r, g in zip(regions, got):
        ref = r.sorted()
        assert g.image_size == r.image_size
        assert torch.equal(g.boxes, ref.boxes) and torch.equal(g.features, ref.features)
        assert torch.equal(g.scores, ref.scores) and torch.equal(g.labels, ref.labels)
        g.check_inside("precomputed")


def test_dataset_wrapper_and_truncation(tmp_path, coco_val, stored):
    ids, regions = stored
    f = save_regions(tmp_path / "coco.npz", ids, regions)
    ex = PrecomputedRegionExtractor(f, max_instances=3)
    ds = RegionDataset(coco_val, ex, cache=False)
    for i in range(len(coco_val)):
        s = ds[i]
        ref = regions[i].topk(3)
        m = ref.num_instances
        assert s["roi_features"].shape == (3, ex.feature_dim)
        assert s["roi_mask"].tolist() == [True] * m + [False] * (3 - m)
        assert torch.equal(s["roi_boxes"][:m], ref.boxes)
        assert torch.equal(s["roi_scores"][:m], ref.scores)
        assert (s["roi_scores"][:m][:-1] >= s["roi_scores"][:m][1:]).all()
        assert s["roi_image_size"].tolist() == list(regions[i].image_size)


def test_image_without_regions(tmp_path):
    r = [Regions.empty(4, (10, 20)), Regions(torch.tensor([[1.0, 1, 5, 5]]), torch.ones(1, 4),
                                             torch.ones(1), torch.zeros(1), (10, 20))]
    f = save_regions(tmp_path / "x.npz", ["a", "b"], r)
    ex = PrecomputedRegionExtractor(f, max_instances=2)
    rf = ex.extract(None, [{"key": "a"}, {"key": "b"}])
    assert rf.mask.tolist() == [[False, False], [True, False]]
    assert rf.features[0].abs().sum() == 0


def _packed(**over):
    a = {"image_ids": np.array(["x", "y"]), "offsets": np.array([0, 1, 2]),
         "boxes": np.array([[0, 0, 4, 4], [1, 1, 2, 2]], np.float32),
         "features": np.ones((2, 3), np.float32), "scores": np.ones(2, np.float32),
         "image_sizes": np.array([[10, 10], [10, 10]])}
    a.update(over)
    return {k: v for k, v in a.items() if v is not None}


@pytest.mark.parametrize("over,match", [
    ({"offsets": np.array([0, 2, 1])}, "offsets"),
    ({"offsets": np.array([0, 1])}, "offsets"),
    ({"features": np.ones((3, 3), np.float32)}, "features must be"),
    ({"image_ids": np.array(["x", "x"])}, "listed twice"),
    ({"scores": None}, "missing array"),
    ({"image_ids": np.array([{"x": 1}, 2], dtype=object)}, "pickle"),
])
def test_malformed_files_are_refused(tmp_path, over, match):
    f = tmp_path / "bad.npz"
    np.savez(f, **_packed(**over))
    with pytest.raises(DatasetError, match=match):
        PrecomputedRegionExtractor(f)


def test_lookup_errors(tmp_path):
    f = tmp_path / "ok.npz"
    np.savez(f, **_packed(boxes=np.array([[0, 0, 4, 4], [1, 1, 12, 2]], np.float32)))
    ex = PrecomputedRegionExtractor(f)
    with pytest.raises(DatasetError, match="'z' is not in the file"):
        ex(None, [{"key": "z"}])
    with pytest.raises(DatasetError, match="not an xyxy box inside"):
        ex(None, [{"key": "y"}])                      # x2 = 12 > W = 10
    with pytest.raises(DatasetError, match="differs"):
        ex(None, [{"key": "x", "image_size": (20, 10)}])
    with pytest.raises(ValueError, match="needs an image id"):
        ex(None, [{"image_size": (10, 10)}])
    with pytest.raises(FileNotFoundError):
        PrecomputedRegionExtractor(tmp_path / "nope.npz")
