"""Mixup of training batches (:mod:`pyg_mlic.engine.mixup`) and its use by the engine."""
import json

import numpy as np
import pytest
import torch

from helpers_features import make_features_npz
from pyg_mlic.data.features import FeaturesDataset
from pyg_mlic.engine import TrainConfig, Trainer, fit, load_checkpoint, seed_everything
from pyg_mlic.engine import trainer as trainer_mod
from pyg_mlic.engine.mixup import check_mixup_alpha, mixup_batch, mixup_generator
from pyg_mlic.errors import CheckpointError, OptionError
from pyg_mlic.models import build_model

TIMING = ("eval_time_s", "train_time_s")


@pytest.fixture
def sets(tmp_path):
    tr = FeaturesDataset(make_features_npz(tmp_path / "tr.npz", n=200, seed=0,
                                           with_mask=True), split="train")
    va = FeaturesDataset(make_features_npz(tmp_path / "va.npz", n=60, seed=1), split="val")
    te = FeaturesDataset(make_features_npz(tmp_path / "te.npz", n=80, seed=2), split="test")
    return tr, va, te


def _model(tr, seed=0):
    seed_everything(seed)
    return build_model("baseline", classes=tr.classes, input_kind="features",
                       in_features=tr.feature_dim, encoder_hidden=[32], encoder_out=32,
                       encoder_dropout=0.2)


def _cfg(**kw):
    base = dict(epochs=3, batch_size=32, optimizer="adam", lr=1e-2, lr_step=None,
                progress=False, device="cpu", select="best_val")
    base.update(kw)
    return TrainConfig(**base)


def test_mixup_batch_is_the_convex_combination_with_the_permuted_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g)
    y = (torch.rand(6, 3, generator=g) < 0.5).float()
    mask = torch.rand(6, 3, generator=g) > 0.3
    batch = {"features": x, "target": y, "mask": mask, "index": torch.arange(6)}
    out = mixup_batch(batch, 0.4, mixup_generator(7, 2))
    # the same draws, in the documented order: lambda, then the permutation
    rng = mixup_generator(7, 2)
    lam, perm = rng.beta(0.4, 0.4), torch.as_tensor(rng.permutation(6))
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(out["features"], lam * x + (1 - lam) * x[perm])
    torch.testing.assert_close(out["target"], lam * y + (1 - lam) * y[perm])
    assert torch.equal(out["mask"], mask & mask[perm])  # unknown in either: unknown
    assert torch.equal(out["index"], batch["index"])  # metadata untouched
    assert out["target"].min() >= 0 and out["target"].max() <= 1
    # a label negative in both samples stays exactly 0, positive in both exactly 1
    both_neg = (y == 0) & (y[perm] == 0)
    both_pos = (y == 1) & (y[perm] == 1)
    assert (out["target"][both_neg] == 0).all() and (out["target"][both_pos] == 1).all()
    assert batch["features"] is x and torch.equal(batch["target"], y)  # input not modified


def test_mixup_draws_depend_on_seed_epoch_and_rank_only():
    draw = lambda *a: (mixup_generator(*a).beta(1, 1), tuple(mixup_generator(*a).permutation(9)))
    assert draw(0, 1, 0) == draw(0, 1, 0)
    assert len({draw(0, 1, 0), draw(0, 2, 0), draw(1, 1, 0), draw(0, 1, 1)}) == 4


@pytest.mark.parametrize("alpha", [-1.0, float("nan"), float("inf"), True, "0.4", None])
def test_bad_alpha_is_a_one_line_error(alpha):
    with pytest.raises(ValueError, match="mixup must be the alpha") as e:
        check_mixup_alpha(alpha)
    assert "\n" not in str(e.value)
    if alpha is not None:
        with pytest.raises(ValueError, match="mixup must be the alpha"):
            TrainConfig(mixup=alpha)


def test_alpha_zero_means_no_mixup():
    assert TrainConfig(mixup=0).mixup is None and TrainConfig(mixup=0.0).mixup is None
    assert TrainConfig(mixup=1).mixup == 1.0
    batch = {"features": torch.randn(4, 3), "target": torch.ones(4, 2)}
    out = mixup_batch(batch, 0, mixup_generator(0, 0))
    assert all(out[k] is batch[k] for k in batch)


def test_regions_leave_the_mixed_batch_and_region_models_are_refused(sets):
    batch = {"image": torch.rand(3, 3, 8, 8), "target": torch.zeros(3, 2),
             "boxes": [torch.zeros(1, 4)] * 3, "roi_boxes": torch.zeros(3, 4, 4),
             "roi_mask": torch.ones(3, 4, dtype=torch.bool)}
    out = mixup_batch(batch, 0.4, mixup_generator(0, 0))
    assert sorted(out) == ["image", "target"]  # a blend of two images has no boxes
    with pytest.raises(ValueError, match="needs a batch with 'target'"):
        mixup_batch({"target": torch.zeros(2, 3)}, 0.4, mixup_generator(0, 0))
    tr, va, te = sets
    for model in ("ia_gcn", "gm_mlic"):
        with pytest.raises(OptionError, match=f"{model} reads detector regions"):
            fit(model, tr, va, te, train_options={"mixup": 0.4})
    region_model = _model(tr)
    region_model.reads_regions = True  # e.g. a user's own model that reads ROIs
    with pytest.raises(ValueError, match="reads detector regions"):
        Trainer(region_model, tr, va, te, _cfg(mixup=0.4))


def test_training_sees_mixed_batches_and_evaluation_does_not(sets, monkeypatch):
    tr, va, te = sets
    seen = []
    real = trainer_mod.mixup_batch

    def spy(batch, alpha, rng):
        out = real(batch, alpha, rng)
        seen.append((batch["target"].clone(), out["target"].clone()))
        return out

    monkeypatch.setattr(trainer_mod, "mixup_batch", spy)
    m = Trainer(_model(tr), tr, va, te, _cfg(epochs=2, mixup=0.4)).fit()
    assert len(seen) == 2 * 7  # every training step of both epochs, nothing else
    soft = torch.cat([t for _, t in seen])
    assert ((soft > 0) & (soft < 1)).any()  # soft targets reached the loss
    assert np.isfinite(m["mAP"]) and m["settings"]["train_config"]["mixup"] == 0.4


def test_mixup_changes_training_but_not_the_data_order_or_global_random_state(sets):
    tr, va, te = sets
    plain = Trainer(_model(tr), tr, va, te, _cfg()).fit()
    mixed = Trainer(_model(tr), tr, va, te, _cfg(mixup=0.4)).fit()
    again = Trainer(_model(tr), tr, va, te, _cfg(mixup=0.4)).fit()
    assert mixed["mAP"] != plain["mAP"]
    assert {k: v for k, v in mixed.items() if k not in TIMING} == \
        {k: v for k, v in again.items() if k not in TIMING}  # seeded: reproducible


def test_resume_with_mixup_equals_the_uninterrupted_run(sets, tmp_path):
    tr, va, te = sets
    full = Trainer(_model(tr, 3), tr, va, te, _cfg(seed=4, mixup=0.4),
                   out_dir=tmp_path / "a").fit()
    Trainer(_model(tr, 3), tr, va, te, _cfg(epochs=2, seed=4, mixup=0.4),
            out_dir=tmp_path / "b").fit()
    resumed = Trainer(_model(tr, 77), tr, va, te, _cfg(seed=4, mixup=0.4),
                      out_dir=tmp_path / "b").fit(resume=True)
    strip = lambda m: {k: v for k, v in m.items() if k not in TIMING}
    assert strip(resumed) == strip(full)
    a, b = (load_checkpoint(tmp_path / d / "last.pt")["state_dict"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "a" / "history.json").read_text()) == \
        json.loads((tmp_path / "b" / "history.json").read_text())
    with pytest.raises(CheckpointError, match="mixup was 0.4, now 1.0"):
        Trainer(_model(tr), tr, va, te, _cfg(epochs=4, seed=4, mixup=1.0),
                out_dir=tmp_path / "b").fit(resume=True)


def test_cli_mixup_flag(tmp_path, capsys):
    from pyg_mlic.cli import main

    make_features_npz(tmp_path / "tr.npz", n=96, seed=0)
    make_features_npz(tmp_path / "te.npz", n=48, seed=2)
    argv = ["train", "--dataset", "features", "--train-file", str(tmp_path / "tr.npz"),
            "--test-file", str(tmp_path / "te.npz"), "--model", "baseline", "--set",
            "encoder_hidden=[16]", "encoder_out=16", "--epochs", "2", "--no-progress",
            "--device", "cpu", "--out", str(tmp_path / "run"), "--mixup", "0.2"]
    assert main(argv) == 0
    cfg = json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]["train_config"]
    assert cfg["mixup"] == 0.2
    capsys.readouterr()
    assert main(argv[:-1] + ["-1"] + ["--out", str(tmp_path / "bad")]) != 0
    err = capsys.readouterr().err.strip()
    assert "mixup must be the alpha > 0" in err and "\n" not in err


def test_image_batches_with_boxes_train_with_mixup(monkeypatch):
    """Synthetic scenes carry ground-truth boxes: an image model (which reads none) mixes
    the images and trains; the boxes leave the mixed batch."""
    from pyg_mlic.data.synthetic import SyntheticScenes

    tr = SyntheticScenes("train", num_images=24, image_size=32)
    te = SyntheticScenes("test", num_images=12, image_size=32)
    seen = []
    real = trainer_mod.mixup_batch

    def spy(batch, alpha, rng):
        out = real(batch, alpha, rng)
        seen.append((sorted(batch), sorted(out), batch["image"], out["image"]))
        return out

    monkeypatch.setattr(trainer_mod, "mixup_batch", spy)
    m = fit("baseline", tr, None, te, model_options={"backbone": "small_cnn"},
            train_options={"epochs": 1, "batch_size": 12, "mixup": 1.0, "progress": False,
                           "device": "cpu"})
    assert np.isfinite(m["mAP"]) and len(seen) == 2
    before, after, x, mixed = seen[0]
    assert "boxes" in before and "boxes" not in after and "image" in after
    assert mixed.shape == x.shape and not torch.equal(mixed, x)
