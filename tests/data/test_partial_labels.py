"""Partial labels in the data layer: ``drop_labels`` / ``build_splits(drop_labels=)`` /
``pyg-mlic train --drop-labels``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers_features import make_features_npz
from pyg_mlic.data import SubsetDataset, build_splits, collate, drop_labels
from pyg_mlic.data.features import FeaturesDataset
from pyg_mlic.data.partial import check_drop_fraction


@pytest.fixture()
def features(tmp_path):
    return make_features_npz(tmp_path / "f.npz", n=120, c=5, with_mask=True)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.37])
def test_hides_the_fraction_asked_of_the_known_entries(features, fraction):
    ds = FeaturesDataset(features, split="train")
    before = ds.label_mask.copy()
    view = drop_labels(ds, fraction, seed=3)
    known = int(before.sum())
    after = view.label_mask
    assert abs(int(after.sum()) - (known - fraction * known)) <= 1
    assert not (after & ~before).any()           # unknown entries stay unknown
    np.testing.assert_array_equal(view.labels, ds.labels)   # the values are kept
    np.testing.assert_array_equal(ds.label_mask, before)    # the dataset is not modified
    info = view.partial_labels
    assert info["fraction"] == fraction and info["seed"] == 3
    assert info["known_before"] == known and info["known_after"] == int(after.sum())
    assert info["hidden"] == known - int(after.sum())
    # the samples (and so the batches the losses see) carry the new mask
    batch = collate([view[i] for i in range(len(view))])
    assert torch.equal(batch["mask"], torch.from_numpy(after))
    assert torch.equal(batch["target"], torch.from_numpy(ds.labels.astype(np.float32)))


def test_deterministic_per_seed_and_without_a_mask():
    from pyg_mlic.data.synthetic import SyntheticScenes

    ds = SyntheticScenes("train", num_images=40, image_size=32, seed=0)
    assert ds.label_mask is None
    a, b = drop_labels(ds, 0.5, seed=1), drop_labels(ds, 0.5, seed=1)
    c = drop_labels(ds, 0.5, seed=2)
    np.testing.assert_array_equal(a.label_mask, b.label_mask)
    assert not np.array_equal(a.label_mask, c.label_mask)
    assert int(a.label_mask.sum()) == ds.labels.size // 2
    assert drop_labels(ds, 0.0) is ds
    # positives and negatives are hidden alike (uniform over the entries)
    pos = ds.labels.astype(bool)
    assert abs((~a.label_mask[pos]).mean() - 0.5) < 0.15
    assert abs((~a.label_mask[~pos]).mean() - 0.5) < 0.15
    s = a[0]
    assert torch.equal(s["mask"], torch.from_numpy(a.label_mask[0])) and "image" in s


def test_a_subset_keeps_its_own_mask(features):
    ds = FeaturesDataset(features, split="train")
    sub = SubsetDataset(ds, [5, 2, 9], split="x")
    sub.label_mask = np.zeros_like(sub.label_mask)
    assert not sub[1]["mask"].any() and ds[2]["mask"].equal(torch.from_numpy(ds.label_mask[2]))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.5", None])
def test_bad_fraction_is_a_one_line_error(bad):
    with pytest.raises(ValueError, match=r"0 <= f < 1") as e:
        check_drop_fraction(bad)
    assert "\n" not in str(e.value)


def test_build_splits_drops_training_labels_only(features, tmp_path):
    test_file = make_features_npz(tmp_path / "t.npz", n=60, c=5, seed=1, with_mask=True)
    kw = dict(train_file=str(features), test_file=str(test_file), val_fraction=0.25, seed=4)
    full = build_splits("features", **kw)
    tr, va, te = build_splits("features", drop_labels=0.5, **kw)
    # validation (held out of the training file) and test: untouched
    np.testing.assert_array_equal(va.label_mask, full[1].label_mask)
    np.testing.assert_array_equal(te.label_mask, full[2].label_mask)
    assert torch.equal(collate([va[i] for i in range(len(va))])["mask"],
                       torch.from_numpy(full[1].label_mask))
    known = int(full[0].label_mask.sum())
    assert abs(int(tr.label_mask.sum()) - known / 2) <= 1
    assert tr.partial_labels["seed"] == 4
    again = build_splits("features", drop_labels=0.5, **kw)[0]
    np.testing.assert_array_equal(again.label_mask, tr.label_mask)
    with pytest.raises(ValueError, match="drop_labels must be"):
        build_splits("features", drop_labels=1.0, **kw)


def test_build_splits_synthetic_records_the_data_config():
    tr, va, te = build_splits("synthetic", num_images=16, image_size=32, seed=0,
                              drop_labels=0.3)
    assert va.label_mask is None and te.label_mask is None
    assert tr.data_config == va.data_config and tr.split == "train"
    assert abs(int((~tr.label_mask).sum()) - 0.3 * tr.labels.size) <= 1


def test_cli_rejects_a_bad_fraction(capsys):
    from pyg_mlic.cli import main

    assert main(["train", "--dataset", "synthetic", "--model", "baseline", "--num-images",
                 "16", "--image-size", "32", "--epochs", "1", "--drop-labels", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--drop-labels must be" in err


def _models():
    from pyg_mlic.models import list_models

    slow = {"ia_gcn", "gm_mlic", "iml_gcn"}
    return [pytest.param(m, marks=pytest.mark.heavy) if m in slow else m
            for m in list_models()]


@pytest.mark.parametrize("model", _models())
def test_drop_labels_trains_every_model(model, tmp_path):
    """``pyg-mlic train --drop-labels 0.5`` trains every registered model (tiny run)."""
    from pyg_mlic.cli import main

    out = tmp_path / model
    args = ["train", "--dataset", "synthetic", "--model", model, "--num-images", "64",
            "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--no-progress",
            "--drop-labels", "0.5", "--out", str(out)]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    info = m["settings"]["partial_labels"]
    assert m["settings"]["drop_labels"] == 0.5 and info["fraction"] == 0.5
    assert info["known_after"] == info["known_before"] - info["hidden"]
    assert abs(info["hidden"] - 0.5 * info["known_before"]) <= 1
    assert 0.0 <= m["mAP"] <= 1.0


def test_regions_share_the_roi_cache_and_hide_the_same_entries(tmp_path):
    """``--regions`` + ``--drop-labels``: the ROI cache of complete-label runs is reused
    (no second extraction) and the hidden entries are those of ``build_splits``."""
    from pyg_mlic.cli import _splits, build_parser

    common = ["train", "--model", "gm_mlic", "--dataset", "synthetic", "--num-images", "16",
              "--image-size", "32", "--regions", "groundtruth", "--region-opt",
              "backbone=small_cnn", "--region-opt", "image_size=32", "--max-instances", "4",
              "--region-cache", str(tmp_path / "cache"), "--seed", "3"]
    full = _splits(build_parser().parse_args(common))
    stamp = {p: (p / "index.json").stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    tr, va, te = _splits(build_parser().parse_args(common + ["--drop-labels", "0.5"]))
    assert stamp == {p: (p / "index.json").stat().st_mtime_ns
                     for p in (tmp_path / "cache").iterdir()}
    ref = build_splits("synthetic", num_images=16, image_size=32, seed=3, drop_labels=0.5)[0]
    np.testing.assert_array_equal(tr.label_mask, ref.label_mask)
    assert tr.roi_feature_dim == full[0].roi_feature_dim and va.label_mask is None
    s = tr[0]
    assert "roi_features" in s and torch.equal(s["mask"], torch.from_numpy(ref.label_mask[0]))
    assert tr.partial_labels["seed"] == 3
