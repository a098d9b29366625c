"""ROI feature cache: same tensors as a fresh extraction, resume, stale / corrupt / truncated
files rebuilt, memory-mapped reads, DataLoader batching."""
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pyg_mlic.data.base import SubsetDataset, collate
from pyg_mlic.detection import (
    GroundTruthRegionExtractor,
    RegionCache,
    RegionDataset,
    RegionFeatures,
    RegionExtractor,
)


@pytest.fixture(scope="module")
def gt():
    return GroundTruthRegionExtractor("small_cnn", image_size=96, max_instances=6)


@pytest.fixture(scope="module")
def bccd8(bccd_test):
    return SubsetDataset(bccd_test, list(range(8)), split="test8")


def _fresh(ds, ex, i):
    return RegionDataset(ds, ex, cache=False).regions(i)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


class _Interrupting(RegionExtractor):
    """A real extractor that is interrupted (KeyboardInterrupt) after ``n`` images,
    as a user pressing Ctrl-C during a long build."""

    def __init__(self, inner, n):
        super().__init__(inner.max_instances, inner.feature_dim)
        self.inner, self.n, self.calls = inner, n, 0
        self.backend, self.needs_boxes = inner.backend, inner.needs_boxes

    def config(self):
        return self.inner.config()

    def _extract_one(self, image, annotation):
        if self.calls >= self.n:
            raise KeyboardInterrupt
        self.calls += 1
        return self.inner._extract_one(image, annotation)


@pytest.mark.heavy
def test_torchvision_cache_equals_fresh_extraction(tmp_path, coco_val, tv_rpn):
    ds = SubsetDataset(coco_val, [2], split="val1")
    rd = RegionDataset(ds, tv_rpn, cache_dir=tmp_path / "c", progress=False)
    assert rd.cache.last_report.status == "missing" and rd.cache.last_report.extracted == 1
    for i in range(len(ds)):
        _assert_same(rd.regions(i), _fresh(ds, tv_rpn, i))
        s = rd[i]
        assert s["roi_features"].shape == (16, 1024) and s["roi_mask"].any()
        assert s["image"].shape == (3, 448, 448)            # the dataset's own sample is kept
    again = RegionDataset(ds, tv_rpn, cache_dir=tmp_path / "c", progress=False)
    assert again.cache.last_report.status == "complete" and again.cache.last_report.extracted == 0


def test_cache_equals_fresh_and_is_memory_mapped(tmp_path, bccd8, gt):
    cache = RegionCache(gt, bccd8, tmp_path / "c", chunk_size=3).build(progress=False)
    assert cache.last_report.status == "missing" and cache.last_report.extracted == 8
    for i in range(8):
        _assert_same(cache.get(i), _fresh(bccd8, gt, i))
    arrays = cache._ensure_open()
    assert isinstance(arrays["features"], np.memmap)
    assert arrays["features"].shape == (8, 6, gt.feature_dim)
    idx = json.loads((tmp_path / "c" / "index.json").read_text())
    assert idx["complete"] and len(idx["chunks"]) == 3 and idx["key"] == cache.key
    rd = RegionDataset(bccd8, gt, cache_dir=tmp_path / "c", progress=False)
    assert rd.cache.last_report.status == "complete"
    batch = next(iter(DataLoader(rd, batch_size=4, collate_fn=collate, num_workers=2)))
    rf = RegionFeatures.from_batch(batch)
    assert rf.features.shape == (4, 6, gt.feature_dim)
    for j in range(4):
        assert torch.equal(rf.features[j], cache.get(j)["roi_features"])
        assert torch.equal(rf.mask[j], cache.get(j)["roi_mask"])


def test_resume_after_interruption(tmp_path, bccd8, gt):
    path = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        RegionCache(_Interrupting(gt, 5), bccd8, path, chunk_size=2).build(progress=False)
    cache = RegionCache(gt, bccd8, path, chunk_size=2)
    assert cache.status().status == "partial"
    with pytest.raises(RuntimeError, match="partial.*build"):
        cache.get(0)
    cache.build(progress=False)
    rep = cache.last_report
    assert rep.status == "partial" and rep.extracted == 4       # chunks 0, 1 were kept
    for i in range(8):
        _assert_same(cache.get(i), _fresh(bccd8, gt, i))


def test_corrupt_bytes_are_detected_and_reextracted(tmp_path, bccd8, gt):
    path = tmp_path / "c"
    cache = RegionCache(gt, bccd8, path, chunk_size=4).build(progress=False)
    ref = [cache.get(i) for i in range(8)]
    f = path / "features.npy"
    raw = bytearray(f.read_bytes())
    row = (len(raw) - 8 * 6 * gt.feature_dim * 4) + 5 * 6 * gt.feature_dim * 4   # image 5
    raw[row:row + 16] = b"\xff" * 16                                   # same size, bad bytes
    f.write_bytes(bytes(raw))
    cache = RegionCache(gt, bccd8, path, chunk_size=4)
    assert cache.status().status == "complete"          # sizes are fine: only the CRC sees it
    cache.build(progress=False)
    assert cache.last_report.status == "corrupt" and cache.last_report.bad_chunks == [1]
    assert cache.last_report.extracted == 4
    for i in range(8):
        _assert_same(cache.get(i), ref[i])


@pytest.mark.parametrize("damage", ["truncate", "index", "delete"])
def test_truncated_or_broken_files_are_rebuilt(tmp_path, bccd8, gt, damage):
    path = tmp_path / "c"
    RegionCache(gt, bccd8, path).build(progress=False)
    if damage == "truncate":
        f = path / "boxes.npy"
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "index":
        (path / "index.json").write_text('{"format": "pyg_mlic-region-cache", "key": ')
    else:
        (path / "counts.npy").unlink()
    cache = RegionCache(gt, bccd8, path)
    assert cache.status().status == "corrupt"
    with pytest.raises(RuntimeError, match="corrupt"):
        cache.get(0)
    cache.build(progress=False)
    assert cache.last_report.status == "corrupt" and cache.last_report.extracted == 8
    for i in (0, 7):
        _assert_same(cache.get(i), _fresh(bccd8, gt, i))


def test_stale_key_is_rebuilt(tmp_path, bccd8, gt):
    path = tmp_path / "c"
    RegionCache(gt, bccd8, path).build(progress=False)
    other = GroundTruthRegionExtractor("small_cnn", image_size=96, max_instances=4)
    cache = RegionCache(other, bccd8, path)
    assert cache.key != RegionCache(gt, bccd8, path).key
    assert cache.status().status == "stale"
    cache.build(progress=False)
    assert cache.last_report.status == "stale" and "max_instances" in cache.last_report.reason
    assert cache.get(0)["roi_features"].shape == (4, other.feature_dim)
    _assert_same(cache.get(3), _fresh(bccd8, other, 3))


def test_key_covers_weights_size_dataset_and_dtype(bccd8, bccd_test, gt):
    key = RegionCache(gt, bccd8).key
    reseeded = GroundTruthRegionExtractor("small_cnn", image_size=96, max_instances=6, seed=1)
    resized = GroundTruthRegionExtractor("small_cnn", image_size=128, max_instances=6)
    same = GroundTruthRegionExtractor("small_cnn", image_size=96, max_instances=6)
    assert RegionCache(same, bccd8).key == key
    assert RegionCache(reseeded, bccd8).key != key                 # other weights
    assert RegionCache(resized, bccd8).key != key                  # other image size
    assert RegionCache(gt, SubsetDataset(bccd_test, list(range(1, 9)), "x")).key != key
    assert RegionCache(gt, bccd8, dtype="float16").key != key


def test_float16_storage(tmp_path, bccd8, gt):
    cache = RegionCache(gt, bccd8, tmp_path / "c", dtype="float16").build(progress=False)
    s, f = cache.get(2), _fresh(bccd8, gt, 2)
    assert s["roi_features"].dtype == torch.float32
    assert torch.allclose(s["roi_features"], f["roi_features"], rtol=1e-3, atol=1e-3)
    assert torch.equal(s["roi_boxes"], f["roi_boxes"])


def test_bad_arguments(bccd8, gt):
    with pytest.raises(ValueError, match="dtype"):
        RegionCache(gt, bccd8, dtype="int8")
    with pytest.raises(ValueError, match="verify"):
        RegionCache(gt, bccd8, verify="never")
    with pytest.raises(TypeError, match="RegionExtractor"):
        RegionCache(object(), bccd8)


def test_verify_size_skips_the_checksum_pass(tmp_path, bccd8, gt):
    path = tmp_path / "c"
    RegionCache(gt, bccd8, path).build(progress=False)
    f = path / "scores.npy"
    raw = bytearray(f.read_bytes())
    raw[-4:] = b"\x00\x00\xc0\x7f"                     # a NaN in image 7's last score
    f.write_bytes(bytes(raw))
    fast = RegionCache(gt, bccd8, path, verify="size").build(progress=False)
    assert fast.last_report.status == "complete" and fast.last_report.extracted == 0
    full = RegionCache(gt, bccd8, path).build(progress=False)   # default: checksums
    assert full.last_report.bad_chunks == [0] and full.last_report.extracted == 8
    assert torch.isfinite(full.get(7)["roi_scores"]).all()
