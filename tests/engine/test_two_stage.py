"""The two-stage IML-GCN recipe: stage markers, resume between stages, reuse of a
stage-1 checkpoint, and the eval view of an augmented training split."""
from __future__ import annotations

import json
import math

import pytest
import torch

from helpers_features import make_features_npz
from pyg_mlic.data.features import FeaturesDataset
from pyg_mlic.engine.two_stage import STAGES_FILE, eval_view, read_stages, run_two_stage

FAST = dict(epochs=2, batch_size=32, progress=False)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    d = tmp_path_factory.mktemp("two_stage")
    tr = FeaturesDataset(make_features_npz(d / "train.npz", n=120, d=12, c=4, seed=0), "train")
    te = FeaturesDataset(make_features_npz(d / "test.npz", n=60, d=12, c=4, seed=1), "test")
    return tr, te


def _run(splits, out, **kw):
    tr, te = splits
    return run_two_stage(tr, None, te, out_dir=out, train_overrides=FAST,
                         model_options={"encoder_hidden": [32], "encoder_out": 24}, **kw)


def test_resume_between_stages_matches_uninterrupted(splits, tmp_path):
    full = _run(splits, tmp_path / "full")
    assert full["two_stage"] == {"stage1": "trained", "stage2": "trained"}
    assert (tmp_path / "full" / "metrics.json").is_file()
    assert (tmp_path / "full" / "stage1" / "final.pt").is_file()
    st = read_stages(tmp_path / "full")
    assert st["stage1"] == "done" and st["stage2"] == "done"
    assert st["embeddings_info"]["n_components"] == 4          # PCA to C components
    written = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert written["settings"]["model"] == "iml_gcn"
    assert written["settings"]["train_config"]["lr_milestones"] == [10, 20, 30]

    out = tmp_path / "stopped"
    part = _run(splits, out, stop_after="stage1")
    assert part["stopped_after"] == "stage1"
    assert read_stages(out)["stage1"] == "done" and "stage2" not in read_stages(out)
    assert not (out / "metrics.json").exists()
    stamp = (out / "stage1" / "last.pt").stat().st_mtime_ns
    res = _run(splits, out, resume=True)
    assert res["two_stage"]["stage1"] == "loaded (finished earlier)"
    assert (out / "stage1" / "last.pt").stat().st_mtime_ns == stamp   # not retrained
    for k in ("mAP", "CF1", "OF1"):
        assert res[k] == full[k]
    assert res["stage1"]["mAP"] == full["stage1"]["mAP"]


def test_stop_after_embeddings_then_resume_uses_cache(splits, tmp_path):
    out = tmp_path / "r"
    _run(splits, out, stop_after="embeddings", pca=False)
    cached = list((out / "embeddings").glob("image_features_*.pt"))
    assert len(cached) == 1 and read_stages(out)["embeddings"] == "done"
    stamp = cached[0].stat().st_mtime_ns
    res = _run(splits, out, resume=True, pca=False)
    assert cached[0].stat().st_mtime_ns == stamp
    assert read_stages(out)["embeddings_info"]["n_components"] == 24   # F_I: d = 24
    assert 0.0 <= res["mAP"] <= 1.0 and res["two_stage"]["stage2"] == "trained"


def test_stage1_checkpoint_reused(splits, tmp_path):
    from pyg_mlic.engine import TrainConfig, Trainer
    from pyg_mlic.models import build_model

    tr, te = splits
    base = build_model("baseline", classes=tr.classes, input_kind="features",
                       in_features=tr.feature_dim, encoder_hidden=[32], encoder_out=24)
    Trainer(base, tr, None, te, TrainConfig(**FAST), out_dir=tmp_path / "b").fit()
    res = _run(splits, tmp_path / "iml", stage1_checkpoint=tmp_path / "b" / "last.pt",
               label_embeddings="onehot")
    assert res["two_stage"]["stage1"].startswith("given checkpoint")
    assert res["stage1"] is None and not (tmp_path / "iml" / "stage1").exists()
    assert read_stages(tmp_path / "iml")["embeddings_info"] == {"spec": "onehot"}


def test_bad_stop_point_and_encoder_mismatch(splits, tmp_path):
    with pytest.raises(ValueError, match="stop_after"):
        _run(splits, tmp_path / "x", stop_after="stage2")
    tr, te = splits
    with pytest.raises(ValueError, match="does not fit"):
        run_two_stage(tr, None, te, out_dir=tmp_path / "y", train_overrides=FAST,
                      model_options={"encoder_out": 24},
                      stage1_options={"encoder_out": 16})


def test_eval_view_replaces_random_transform():
    from pyg_mlic.data.base import SubsetDataset
    from pyg_mlic.data.synthetic import SyntheticScenes
    from pyg_mlic.data.transforms import (RandomCropResizeTransform, ResizeTransform,
                                          build_transforms)

    ds = SyntheticScenes("train", num_images=6, image_size=32,
                         transform=build_transforms(True, 32, scale=(0.85, 1.0)))
    v = eval_view(SubsetDataset(ds, [0, 2], split="s"))
    assert isinstance(v.dataset.transform, ResizeTransform) and v.dataset.transform.size == 32
    assert isinstance(ds.transform, RandomCropResizeTransform)       # original untouched
    assert torch.equal(v[0]["image"], v[0]["image"])                  # deterministic
    assert eval_view(v) is v
