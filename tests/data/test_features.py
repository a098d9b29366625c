"""FeaturesDataset / save_features: the .npz features contract."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pyg_mlic.data._image_io import load_image
from pyg_mlic.data.base import collate
from pyg_mlic.data.features import FeaturesDataset, load_features, save_features
from pyg_mlic.data.voc import voc_labels
from pyg_mlic.errors import DatasetError

BCCD = ["WBC", "RBC", "Platelets"]


@pytest.fixture(scope="module")
def bccd_features(data_dir):
    """Real features: per-channel mean/std/min/max of 24 real BCCD images (80x60) + their labels."""
    root = data_dir / "images" / "bccd"
    if not root.is_dir():
        pytest.skip("BCCD not found")
    ids, Y, classes = voc_labels(root, "val", classes=BCCD)
    ids, Y = ids[:24], Y[:24]
    feats = []
    for i in ids:
        img = load_image(root / "JPEGImages" / f"{i}.jpg").resize((80, 60))
        a = np.asarray(img, dtype=np.float32).reshape(-1, 3) / 255
        feats.append(np.concatenate([a.mean(0), a.std(0), a.min(0), a.max(0)]))
    return np.stack(feats).astype(np.float32), (Y == 1).astype(np.uint8), classes, ids


def test_roundtrip_real_features(tmp_path, bccd_features):
    X, Y, classes, ids = bccd_features
    mask = np.ones_like(Y, dtype=bool)
    mask[3, 1] = False
    p = save_features(tmp_path / "bccd_val.npz", X, Y, classes, mask=mask, image=ids)
    assert sorted(os.listdir(tmp_path)) == ["bccd_val.npz"]          # no temp file left
    with np.load(p, allow_pickle=False) as z:                         # the contract
        assert z["features"].dtype == np.float32 and z["features"].shape == (24, 12)
        assert z["labels"].dtype == np.uint8 and z["mask"].dtype == np.bool_
        assert [str(c) for c in z["classes"]] == BCCD and z["classes"].dtype.kind == "U"
    ds = FeaturesDataset(p, split="val")
    assert ds.input_kind == "features" and ds.feature_dim == 12 and len(ds) == 24
    assert ds.classes == BCCD and ds.split == "val" and ds.images == ids
    np.testing.assert_array_equal(ds.labels, Y)
    np.testing.assert_array_equal(ds.label_mask, mask)
    s = ds[3]
    assert set(s) == {"features", "target", "mask", "index"}
    assert s["features"].dtype == torch.float32 and s["features"].shape == (12,)
    torch.testing.assert_close(s["features"], torch.from_numpy(X[3]))
    assert s["target"].tolist() == Y[3].astype(float).tolist()
    assert s["mask"].tolist() == [True, False, True] and s["index"] == 3
    batch = next(iter(DataLoader(ds, batch_size=5, num_workers=0, collate_fn=collate)))
    assert batch["features"].shape == (5, 12) and batch["target"].shape == (5, 3)
    assert batch["mask"].dtype == torch.bool and batch["index"].tolist() == [0, 1, 2, 3, 4]


def test_split_column_filters_rows(tmp_path, bccd_features):
    X, Y, classes, _ = bccd_features
    split = ["train"] * 16 + ["test"] * 8
    p = save_features(tmp_path / "f.npz", torch.from_numpy(X), torch.from_numpy(Y), classes,
                      split=split, compress=True)
    tr, te = FeaturesDataset(p, "train"), FeaturesDataset(p, "test")
    assert (len(tr), len(te)) == (16, 8)
    np.testing.assert_array_equal(te.features, X[16:])
    assert len(FeaturesDataset(p, split=None)) == 24
    with pytest.raises(DatasetError, match=r"f\.npz.*no row has split 'val'"):
        FeaturesDataset(p, "val")


def test_nan_features_name_file_and_row(tmp_path, bccd_features):
    X, Y, classes, _ = bccd_features
    X = X.copy()
    X[7, 2] = np.nan
    X[9, 0] = np.inf
    p = tmp_path / "nan.npz"
    np.savez(p, features=X, labels=Y, classes=np.array(classes))
    with pytest.raises(DatasetError, match=r"nan\.npz.*non-finite.*first bad row 7"):
        FeaturesDataset(p)
    with pytest.raises(DatasetError, match=r"non-finite.*row 7"):
        save_features(tmp_path / "out.npz", X, Y, classes)
    assert not (tmp_path / "out.npz").exists()
    assert sorted(os.listdir(tmp_path)) == ["nan.npz"]


def test_float64_beyond_float32_range_or_precision(tmp_path, bccd_features):
    """The models compute in float32: a float64 value beyond its range is refused (not
    reported as a NaN the file does not hold), and a column whose spread float32 cannot
    keep (a large offset) is named in a warning; an offset float32 keeps is silent."""
    X, Y, classes, _ = bccd_features
    big = X.astype(np.float64)
    big[5, 3] = 1e300
    p = tmp_path / "big.npz"
    np.savez(p, features=big, labels=Y, classes=np.array(classes))
    with pytest.raises(DatasetError, match=r"big\.npz.*1e\+300 \(row 5, column 3\).*float32 range"):
        FeaturesDataset(p)
    off = X.astype(np.float64) * 255
    off[:, 1] += 1e9  # float32 steps of 64 at 1e9: the column's spread (< 64) is lost
    off[:, 2] += 1e4  # steps of 1e-3: kept
    p = tmp_path / "offset.npz"
    np.savez(p, features=off, labels=Y, classes=np.array(classes))
    with pytest.warns(UserWarning, match=r"offset\.npz: 1 feature column\(s\) lose their "
                                         r"spread in float32.*column 1"):
        ds = FeaturesDataset(p)
    assert ds.features.dtype == np.float32
    np.testing.assert_allclose(ds.features[:, 2], off[:, 2], rtol=1e-7)
    np.savez(p, features=X.astype(np.float64) + 100, labels=Y, classes=np.array(classes))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FeaturesDataset(p)


def test_label_out_of_range(tmp_path, bccd_features):
    X, Y, classes, _ = bccd_features
    Y = Y.copy()
    Y[4, 2] = 2
    p = tmp_path / "lab.npz"
    np.savez(p, features=X, labels=Y, classes=np.array(classes))
    with pytest.raises(DatasetError, match=r"lab\.npz.*value 2 out of range at row 4, "
                                           r"column 2 \('Platelets'\)"):
        FeaturesDataset(p)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickled_arrays_are_never_unpickled(tmp_path, bccd_features):
    X, Y, _, _ = bccd_features
    sentinel = tmp_path / "pwned"
    p = tmp_path / "obj.npz"
    np.savez(p, features=X, labels=Y,
             classes=np.array([_Evil(sentinel), "b", "c"], dtype=object))
    with pytest.raises(DatasetError, match=r"obj\.npz.*'classes'.*pickled"):
        FeaturesDataset(p)
    assert not sentinel.exists()


def test_structural_errors(tmp_path, bccd_features):
    X, Y, classes, _ = bccd_features
    p = tmp_path / "bad.npz"
    np.savez(p, features=X, classes=np.array(classes))
    with pytest.raises(DatasetError, match=r"bad\.npz.*missing key.*'labels'"):
        FeaturesDataset(p)
    np.savez(p, features=X, labels=Y[:5], classes=np.array(classes))
    with pytest.raises(DatasetError, match=r"bad\.npz.*'labels' must be \[N, C\] = \[24, 3\]"):
        FeaturesDataset(p)
    np.savez(p, features=X[0], labels=Y, classes=np.array(classes))
    with pytest.raises(DatasetError, match=r"bad\.npz.*2-D"):
        FeaturesDataset(p)
    np.savez(p, features=X, labels=Y, classes=np.array(["a", "a", "b"]))
    with pytest.raises(DatasetError, match=r"bad\.npz.*duplicate"):
        FeaturesDataset(p)
    np.savez(p, features=X, labels=Y, classes=np.array(classes), mask=np.ones((24, 2)))
    with pytest.raises(DatasetError, match=r"bad\.npz.*'mask'"):
        FeaturesDataset(p)
    p.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DatasetError, match=r"bad\.npz.*not an \.npz"):
        FeaturesDataset(p)
    np.save(tmp_path / "single.npy", X)
    with pytest.raises(DatasetError, match=r"single\.npy.*single \.npy"):
        load_features(tmp_path / "single.npy")
    with pytest.raises(DatasetError, match=r"not found.*absent\.npz"):
        FeaturesDataset(tmp_path / "absent.npz")


def test_empty_dataset(tmp_path):
    p = save_features(tmp_path / "empty.npz", np.zeros((0, 4), np.float32),
                      np.zeros((0, 2), np.uint8), ["a", "b"])
    with pytest.raises(DatasetError, match=r"empty\.npz.*empty"):
        FeaturesDataset(p)


def test_atomic_overwrite_keeps_old_file_on_failure(tmp_path, bccd_features):
    X, Y, classes, _ = bccd_features
    p = save_features(tmp_path / "f.npz", X, Y, classes)
    before = p.read_bytes()
    with pytest.raises(DatasetError):
        save_features(p, X, Y * 3, classes)                  # invalid: nothing written
    assert p.read_bytes() == before
    save_features(p, X[:4], Y[:4], classes)                  # valid: replaced
    assert len(FeaturesDataset(p)) == 4
    assert sorted(os.listdir(tmp_path)) == ["f.npz"]


def test_index_out_of_range(tmp_path, bccd_features):
    X, Y, classes, _ = bccd_features
    ds = FeaturesDataset(save_features(tmp_path / "f.npz", X, Y, classes))
    assert ds[-1]["index"] == 23
    with pytest.raises(IndexError, match="24"):
        ds[24]
