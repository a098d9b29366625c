"""The precomputed-features path: input standardisation from the training split (kept in
the checkpoint) and the features recipe (applied key by key under the user's options)."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pyg_mlic.backbones import MLPEncoder
from pyg_mlic.data.base import holdout_split
from pyg_mlic.data.features import FeaturesDataset, save_features, training_features
from pyg_mlic.engine import TrainConfig, fit, load_checkpoint, model_from_checkpoint, predict_dataset
from pyg_mlic.engine.context import fit_input_statistics, model_context
from pyg_mlic.engine.recipes import (FEATURES, FEATURES_MODEL, FEATURES_VAL_FRACTION,
                                     features_candidates, features_epochs,
                                     features_train_options)
from pyg_mlic.models import build_model


def _write(path: Path, n: int, shift: float, scale: np.ndarray, seed: int) -> Path:
    """Learnable features whose columns differ in scale by 10^3 and whose mean depends on
    the split (``shift``), so that statistics of the wrong split are visible."""
    rng = np.random.default_rng(seed)
    c, d = 3, scale.size
    labels = (rng.random((n, c)) < 0.4).astype(np.uint8)
    labels[labels.sum(1) == 0, 0] = 1
    proj = np.random.default_rng(7).normal(size=(c, d))
    x = (labels @ proj + 0.5 * rng.normal(size=(n, d)) + shift) * scale
    return save_features(path, x.astype(np.float32), labels, ["a", "b", "c"])


@pytest.fixture()
def splits(tmp_path):
    scale = np.geomspace(0.01, 10.0, 12)
    return {s: _write(tmp_path / f"{s}.npz", n, shift, scale, seed) for s, n, shift, seed in
            (("train", 160, 0.0, 0), ("val", 60, 3.0, 1), ("test", 60, -3.0, 2))}


QUICK = {"epochs": 3, "progress": False}


def test_statistics_come_from_the_training_split_and_reload_with_the_checkpoint(splits,
                                                                                 tmp_path):
    tr = FeaturesDataset(splits["train"], split="train")
    va = FeaturesDataset(splits["val"], split="val")
    te = FeaturesDataset(splits["test"], split="test")
    out = tmp_path / "run"
    m = fit("baseline", tr, va, te, train_options=QUICK, out_dir=out)
    assert m["selection"]["rule"] == "best_val"  # the recipe's rule
    ckpt_path = out / "best.pt"
    model = model_from_checkpoint(load_checkpoint(ckpt_path))
    enc = model.encoder
    x = tr.features.astype(np.float64)
    np.testing.assert_allclose(enc.input_mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.input_std.numpy(), x.std(0), rtol=1e-5)
    # the val / test splits have other means: their statistics were not used
    assert not np.allclose(enc.input_mean.numpy(), va.features.mean(0), atol=0.1)
    assert "encoder.input_mean" in load_checkpoint(ckpt_path)["state_dict"]
    # reloaded -> the same test predictions as the run's final evaluation
    p = predict_dataset(model, te)
    from pyg_mlic.metrics import multilabel_metrics

    assert multilabel_metrics(p["logits"], p["target"])["mAP"] == pytest.approx(m["mAP"])
    # and the standardisation is part of the forward pass (not of the data pipeline)
    raw = MLPEncoder(12, hidden=enc.hidden, out_features=enc.out_channels, dropout=0.0)
    raw.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("input")})
    raw.eval(), enc.eval()
    xt = torch.from_numpy(te.features[:5])
    z = ((xt - enc.input_mean) / enc.input_std).clamp(-enc.clip, enc.clip)  # the recipe's
    assert torch.allclose(enc(xt), raw(z), atol=1e-5)


def test_k_fold_selection_of_the_epoch_then_refit_on_all(splits, monkeypatch):
    monkeypatch.setitem(FEATURES, "cv_folds", 5)
    tr = FeaturesDataset(splits["train"], split="train")
    te = FeaturesDataset(splits["test"], split="test")
    m = fit("baseline", tr, None, te, train_options={**QUICK, "seed": 3})
    rec = m["settings"]["features_recipe"]
    k = FEATURES["cv_folds"]
    assert len(tr) <= FEATURES["cv_max_rows"]
    assert rec["val_holdout"] == {"folds": k, "seed": 3, "num_rows": len(tr)}
    # the epoch of the best fold-averaged validation mAP, then every training row is used
    refit = rec["refit"]
    curve = refit["held_out_history"]
    assert [r["epoch"] for r in curve] == list(range(QUICK["epochs"]))
    best = max(curve, key=lambda r: r["val_mAP"])
    assert refit["epochs"] == best["epoch"] + 1 == m["settings"]["train_config"]["epochs"]
    assert refit["held_out_best_mAP"] == pytest.approx(best["val_mAP"])
    assert refit["weights"] == "raw"
    assert m["settings"]["num_train"] == len(tr) and m["selection"]["rule"] == "last"
    assert m["settings"]["input_standardization"]["num_rows"] == len(tr)
    # the curve is the mean of the folds' own runs, each trained by hand
    from pyg_mlic.data.base import SubsetDataset
    from pyg_mlic.engine.recipes import cv_folds

    folds = cv_folds(len(tr), k, seed=3)
    one = [fit("baseline", SubsetDataset(tr, a, "a"), SubsetDataset(tr, b, "b"), None,
               train_options={**QUICK, "seed": 3})["history"] for a, b in folds]
    np.testing.assert_allclose([r["val_mAP"] for r in curve],
                               np.mean([[r["val_mAP"] for r in h] for h in one], 0))
    # the same seed -> the same folds and the same run
    again = fit("baseline", tr, None, te, train_options={**QUICK, "seed": 3})
    assert again["mAP"] == m["mAP"]
    # the user's select="last" holds nothing out
    m = fit("baseline", tr, None, te, train_options={**QUICK, "select": "last"})
    assert m["settings"]["features_recipe"]["val_holdout"] is None
    assert m["settings"]["num_train"] == len(tr) and m["selection"]["rule"] == "last"


@pytest.mark.parametrize("cv", ["off", "large"])
def test_no_validation_split_holds_out_a_seeded_fraction_then_refits_on_all(splits,
                                                                            monkeypatch, cv):
    tr = FeaturesDataset(splits["train"], split="train")
    te = FeaturesDataset(splits["test"], split="test")
    if cv == "off":  # the default recipe
        monkeypatch.setitem(FEATURES, "cv_folds", 0)
    else:  # k-fold is on, but the split has more rows than it is used for
        monkeypatch.setitem(FEATURES, "cv_folds", 5)
        monkeypatch.setitem(FEATURES, "cv_max_rows", len(tr) - 1)
    m = fit("baseline", tr, None, te, train_options={**QUICK, "seed": 3})
    rec = m["settings"]["features_recipe"]
    n_val = int(round(len(tr) * FEATURES_VAL_FRACTION))
    assert rec["val_holdout"] == {"fraction": FEATURES_VAL_FRACTION, "seed": 3,
                                  "num_val": n_val, "num_train": len(tr) - n_val}
    refit = rec["refit"]
    best = max(refit["held_out_history"], key=lambda r: r["val_mAP"])
    assert refit["epochs"] == best["epoch"] + 1 == m["settings"]["train_config"]["epochs"]
    assert m["settings"]["num_train"] == len(tr)
    # a built model: the hold-out chooses its weights (no refit of a model given built)
    monkeypatch.undo()
    part, _ = holdout_split(tr, FEATURES_VAL_FRACTION, seed=0)
    net = build_model("baseline", **model_context(tr))
    m = fit(net, tr, None, te, train_options=QUICK)
    assert m["selection"]["rule"] == "best_val" and m["settings"]["num_train"] == len(part)
    assert m["settings"]["features_recipe"]["val_holdout"]["num_val"] == len(tr) - len(part)


def test_ema_weights_win_or_lose_on_the_folds_and_the_refit_follows(splits):
    tr = FeaturesDataset(splits["train"], split="train")
    te = FeaturesDataset(splits["test"], split="test")
    for decay, expect in ((0.5, None), (0.999999, "raw")):
        m = fit("baseline", tr, None, te, train_options={**QUICK, "ema": decay, "seed": 0})
        refit = m["settings"]["features_recipe"]["refit"]
        curve = refit["held_out_history"]
        assert all("val_mAP_ema" in r for r in curve)
        best = max(((r[k], -r["epoch"], w) for r in curve
                    for k, w in (("val_mAP", "raw"), ("val_mAP_ema", "ema"))))
        assert refit["weights"] == best[2] and refit["epochs"] == 1 - best[1]
        if expect:  # an average that barely moves from the initialisation loses
            assert refit["weights"] == expect
        # the refit keeps the EMA only when it won
        ema = m["settings"]["train_config"]["ema"]
        assert (ema is not None) == (refit["weights"] == "ema") and refit["ema"] == decay
        assert m["selection"]["weights"] == refit["weights"]


def test_mean_validation_curve():
    from pyg_mlic.engine.fit import _mean_validation_curve

    h1 = [{"val_mAP": 0.5, "val_mAP_ema": 0.4}, {"val_mAP": 0.7, "val_mAP_ema": 0.8}]
    h2 = [{"val_mAP": 0.7, "val_mAP_ema": 0.6}, {"val_mAP": 0.5, "val_mAP_ema": 0.8},
          {"val_mAP": 0.9}]
    best, curve = _mean_validation_curve([h1, h2])
    assert len(curve) == 2  # the shortest history
    assert curve[1] == {"epoch": 1, "val_mAP": pytest.approx(0.6),
                        "val_mAP_ema": pytest.approx(0.8)}
    assert best == {"epoch": 1, "val_mAP": pytest.approx(0.8), "weights": "ema"}
    # ties: the earlier epoch, raw before EMA
    best, _ = _mean_validation_curve([[{"val_mAP": 0.5, "val_mAP_ema": 0.5},
                                       {"val_mAP": 0.5}]])
    assert best == {"epoch": 0, "val_mAP": 0.5, "weights": "raw"}
    # epochs without a validation score (eval_every) are skipped
    best, curve = _mean_validation_curve([[{"loss": 1.0}, {"val_mAP": 0.3}]])
    assert [r["epoch"] for r in curve] == [1] and best["epoch"] == 1
    with pytest.raises(RuntimeError, match="no epoch was evaluated"):
        _mean_validation_curve([[{"loss": 1.0}]])


def test_cv_folds():
    from pyg_mlic.engine.recipes import cv_folds

    folds = cv_folds(11, 5, seed=1)
    vals = np.concatenate([v for _, v in folds])
    assert sorted(vals.tolist()) == list(range(11))  # every row validated exactly once
    assert sorted(len(v) for _, v in folds) == [2, 2, 2, 2, 3]
    for t, v in folds:
        assert not set(t) & set(v) and len(t) + len(v) == 11
        assert list(t) == sorted(t) and list(v) == sorted(v)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, cv_folds(11, 5, seed=1)))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, cv_folds(11, 5, seed=2)))
    with pytest.raises(ValueError, match="k <= num_rows"):
        cv_folds(3, 5)


def test_graph_methods_get_their_own_learning_rate_and_mixup(splits):
    """FEATURES_MODEL_TRAIN: ML-GCN and A-GCN train at lr 3e-4 with mixup 0.4 on features,
    the baseline at the recipe's 1e-3 without mixup; the user's options win; the run
    records what was applied."""
    from pyg_mlic.engine.recipes import FEATURES_MODEL_TRAIN

    assert features_train_options(100)["lr"] == FEATURES["train"]["lr"] == 1e-3
    assert features_train_options(100, model="baseline")["lr"] == 1e-3
    assert "mixup" not in features_train_options(100, model="baseline")
    for name in ("ml_gcn", "a_gcn"):
        assert FEATURES_MODEL_TRAIN[name] == {"lr": 3e-4, "mixup": 0.4}
        assert features_train_options(100, model=name)["lr"] == 3e-4
        assert features_train_options(100, model=name)["mixup"] == 0.4
        assert features_train_options(100, {"lr": 0.05}, model=name)["lr"] == 0.05
        # mixup=0 turns the recipe's mixup off (None counts as not given)
        off = features_train_options(100, {"mixup": 0}, model=name)
        assert off["mixup"] == 0 and TrainConfig(**off).mixup is None
    tr = FeaturesDataset(splits["train"], split="train")
    va = FeaturesDataset(splits["val"], split="val")
    m = fit("ml_gcn", tr, va, None, label_embeddings="onehot",
            train_options={"epochs": 1, "progress": False})
    assert m["settings"]["train_config"]["lr"] == 3e-4
    assert m["settings"]["features_recipe"]["applied"]["lr"] == 3e-4
    assert m["settings"]["train_config"]["mixup"] == 0.4
    assert m["settings"]["features_recipe"]["applied"]["mixup"] == 0.4


def test_recipe_fills_only_what_the_user_did_not_give(splits):
    tr = FeaturesDataset(splits["train"], split="train")
    va = FeaturesDataset(splits["val"], split="val")
    m = fit("ml_gcn", tr, va, None, label_embeddings="onehot",
            train_options={"epochs": 2, "lr": 0.02, "optimizer": "adam", "progress": False})
    cfg = m["settings"]["train_config"]
    assert (cfg["epochs"], cfg["lr"], cfg["optimizer"]) == (2, 0.02, "adam")  # the user's
    rec = m["settings"]["features_recipe"]
    # the recipe's (or the one chosen on the validation split among its candidates)
    assert cfg["weight_decay"] == rec.get("chosen", FEATURES["train"])["weight_decay"]
    assert cfg["batch_size"] == FEATURES["train"]["batch_size"]
    assert cfg["select"] == "best_val" and cfg["lr_step"] is None
    # the recipe's model options: dropout in the features MLP
    assert m["settings"]["model_config"]["encoder_dropout"] == 0.5
    assert m["settings"]["model_config"]["input_dropout"] == 0.2
    assert m["settings"]["model_config"]["input_clip"] == FEATURES_MODEL["input_clip"] == 2.0
    applied = m["settings"]["features_recipe"]["applied"]
    assert not {"epochs", "lr", "optimizer"} & set(applied) and "weight_decay" in applied
    assert m["settings"]["features_recipe"]["val_holdout"] is None  # a val split was given
    # no option at all: the whole recipe, epochs from the training-set size
    assert features_train_options(len(tr))["epochs"] == features_epochs(len(tr))
    # a complete TrainConfig is used as is; the user's model option wins over the recipe's
    tc = TrainConfig(epochs=1, select="last", progress=False)
    m = fit("baseline", tr, va, None, train_options=tc,
            model_options={"encoder_dropout": 0.1, "input_clip": None})
    assert m["settings"]["train_config"]["optimizer"] == "sgd"
    assert "features_recipe" not in m["settings"]
    assert m["settings"]["model_config"]["encoder_dropout"] == 0.1
    assert m["settings"]["model_config"]["input_dropout"] == 0.2
    assert m["settings"]["model_config"]["input_clip"] is None  # clipping turned off


GRID = {"weight_decay": (1e-2, 1.0)}


def test_candidates_are_chosen_on_the_held_out_rows_never_on_test(splits, monkeypatch):
    monkeypatch.setitem(FEATURES, "choose", GRID)
    tr = FeaturesDataset(splits["train"], split="train")
    te = FeaturesDataset(splits["test"], split="test")
    m = fit("baseline", tr, None, te, train_options={**QUICK, "seed": 1})
    rec = m["settings"]["features_recipe"]
    cands = rec["candidates"]
    grid = FEATURES["choose"]["weight_decay"]
    assert [c["options"] for c in cands] == [{"weight_decay": w} for w in grid]
    assert rec["choose"] == {"weight_decay": list(grid)}
    # the best held-out mAP wins (ties: the first, the recipe's default)
    best = max(range(len(cands)), key=lambda i: (cands[i]["val_mAP"], -i))
    assert rec["chosen"] == cands[best]["options"]
    assert m["settings"]["train_config"]["weight_decay"] == rec["chosen"]["weight_decay"]
    # the refit uses the chosen candidate's epoch
    assert rec["refit"]["epochs"] == cands[best]["epoch"] + 1
    assert rec["refit"]["held_out_best_mAP"] == pytest.approx(cands[best]["val_mAP"])
    # the test split plays no part: other test rows, the same choice and training
    other = FeaturesDataset(splits["val"], split="test")
    m2 = fit("baseline", tr, None, other, train_options={**QUICK, "seed": 1})
    assert m2["settings"]["features_recipe"]["candidates"] == cands
    # the user's weight decay: nothing to choose
    m3 = fit("baseline", tr, None, te, train_options={**QUICK, "weight_decay": 0.1})
    rec3 = m3["settings"]["features_recipe"]
    assert "candidates" not in rec3 and "chosen" not in rec3
    assert m3["settings"]["train_config"]["weight_decay"] == 0.1
    # select="last": no validation rows, nothing chosen
    m4 = fit("baseline", tr, None, te, train_options={**QUICK, "select": "last"})
    assert "candidates" not in m4["settings"]["features_recipe"]


def test_features_candidates(monkeypatch):
    assert features_candidates({"weight_decay": 0.3}) == []
    monkeypatch.setitem(FEATURES, "choose", GRID)
    grid = FEATURES["choose"]["weight_decay"]
    assert grid[0] == FEATURES["train"]["weight_decay"]  # the default comes first
    assert features_candidates() == [{"weight_decay": w} for w in grid]
    assert features_candidates({"weight_decay": None}) == features_candidates()
    assert features_candidates({"weight_decay": 0.3}) == []
    assert features_candidates({"lr": 0.1}) == features_candidates()


def test_features_epochs():
    assert features_epochs(200) == 200          # 4 steps an epoch: capped at 200 epochs
    assert features_epochs(82_081) == 20        # COCO-size: the minimum, 25.7k steps
    assert features_epochs(6_400) == 40         # 100 steps an epoch -> 4000 steps
    assert features_epochs(6_400, batch_size=128) == 80
    with pytest.raises(ValueError, match="num_train"):
        features_epochs(0)


def test_encoder_standardization_edge_cases():
    enc = MLPEncoder(4, hidden=(8,), out_features=3, standardize=True)
    X = np.array([[1.0, 5.0, 0.0, 2.0], [3.0, 5.0, 0.0, 4.0]], dtype=np.float32)
    enc.fit_standardization(X)
    # constant columns keep std 1 (no division by ~0, no NaN)
    assert enc.input_std.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert torch.isfinite(enc(torch.from_numpy(X))).all()
    with pytest.raises(ValueError, match=r"features \[N >= 1, 4\]"):
        enc.fit_standardization(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="standardize=False"):
        MLPEncoder(4).fit_standardization(X)
    # a state dict written before the statistics existed loads as the identity
    old = MLPEncoder(4, hidden=(8,), out_features=3).state_dict()
    new = MLPEncoder(4, hidden=(8,), out_features=3, standardize=True)
    new.load_state_dict(old)
    assert new.input_mean.abs().sum() == 0 and (new.input_std == 1).all()


def test_encoder_standardization_floor():
    """std_floor alpha: no feature's sigma below alpha x the median sigma of the
    non-constant features (constant ones keep 1); 0 is plain standardisation."""
    rng = np.random.default_rng(0)
    scales = np.array([1e-3, 0.1, 1.0, 2.0, 10.0, 0.0])  # the last column is constant
    X = rng.normal(size=(500, 6)) * scales + 3.0
    sd = X.std(0)
    med = np.median(sd[:5])  # over the five varying features
    plain = MLPEncoder(6, hidden=(4,), out_features=2, standardize=True)
    plain.fit_standardization(X)
    np.testing.assert_allclose(plain.input_std.numpy(), np.append(sd[:5], 1.0), rtol=1e-5)
    for alpha in (0.5, 1.0, 3.0):
        enc = MLPEncoder(6, hidden=(4,), out_features=2, standardize=True, std_floor=alpha)
        enc.fit_standardization(X)
        want = np.append(np.maximum(sd[:5], alpha * med), 1.0)
        np.testing.assert_allclose(enc.input_std.numpy(), want, rtol=1e-5)
        assert f"std_floor={alpha}" in repr(enc)
    # scale-free: multiplying every feature by one constant gives the same map
    enc = MLPEncoder(6, hidden=(4,), out_features=2, standardize=True, std_floor=1.0)
    enc.fit_standardization(X * 1e3)
    np.testing.assert_allclose(enc.input_std.numpy()[:5], 1e3 * np.maximum(sd[:5], med),
                               rtol=1e-5)
    for bad in (-0.1, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="std_floor"):
            MLPEncoder(6, standardize=True, std_floor=bad)
    net = build_model("baseline", classes=["a", "b"], input_kind="features", in_features=6,
                      input_std_floor=1.0, input_clip=5.0)
    assert net.encoder.std_floor == 1.0 and net.encoder.clip == 5.0


def test_encoder_clip():
    """clip c: the standardised input is clipped to [-c, c] before the first layer (a spike
    counts as c standard deviations), in training and in evaluation alike."""
    enc = MLPEncoder(2, hidden=(), out_features=2, standardize=True, clip=2.0)
    enc.input_mean.copy_(torch.tensor([1.0, 0.0]))
    enc.input_std.copy_(torch.tensor([2.0, 0.5]))
    with torch.no_grad():
        enc.net[0].weight.copy_(torch.eye(2))
        enc.net[0].bias.zero_()
    x = torch.tensor([[3.0, 0.25], [11.0, -4.0], [1.0, 0.0]])
    want = torch.tensor([[1.0, 0.5], [2.0, -2.0], [0.0, 0.0]])
    for mode in (enc.train, enc.eval):
        mode()
        torch.testing.assert_close(enc(x), want)
    assert "clip=2.0" in repr(enc)
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="clip"):
            MLPEncoder(2, standardize=True, clip=bad)

def test_fit_input_statistics_keeps_set_statistics(splits):
    tr = FeaturesDataset(splits["train"], split="train")
    net = build_model("baseline", **model_context(tr))
    # a model built directly has no dropout (fit's features recipe adds it)
    assert net.encoder.standardize and net.encoder.input_dropout == 0.0
    assert fit_input_statistics(net, tr)["num_rows"] == len(tr)
    before = net.encoder.input_mean.clone()
    other = FeaturesDataset(splits["val"], split="val")
    assert fit_input_statistics(net, other) is None  # set already: kept
    assert torch.equal(net.encoder.input_mean, before)
    assert fit_input_statistics(net, other, force=True)["num_rows"] == len(other)
    part, _ = holdout_split(tr, 0.25, seed=0)
    np.testing.assert_array_equal(training_features(part), tr.features[part.indices])
    net = build_model("baseline", **model_context(tr), encoder_dropout=0.5, input_dropout=0.2)
    assert net.encoder.dropout == 0.5 and net.encoder.input_dropout == 0.2


BCCD = Path(os.environ.get("PYG_MLIC_CACHE", "/tmp/pyg_mlic_cache")) / \
    "bccd_efficientnet_lite0_224_avg"


@pytest.mark.heavy
@pytest.mark.skipif(not (BCCD / "trainval.npz").is_file(),
                    reason="BCCD features not extracted (benchmarks/compare_features.py does)")
def test_defaults_match_logistic_regression_on_real_bccd_features(tmp_path):
    """Real data: the baseline at library defaults (what ``pyg-mlic train --dataset
    features`` does with no flag), mean of three seeds, within 1 mAP point of a
    standardised logistic regression fitted on the same rows, and not below it by more
    than the 72 test images can tell (paired bootstrap: the 95 % interval of the gap
    reaches above 0)."""
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pyg_mlic.engine import model_from_checkpoint, predict_dataset
    from pyg_mlic.metrics import multilabel_metrics, paired_bootstrap_map

    tr = FeaturesDataset(BCCD / "trainval.npz", split="train")
    te = FeaturesDataset(BCCD / "test.npz", split="test")
    maps, logits = [], []
    for seed in (0, 1, 2):
        m = fit("baseline", tr, None, te, out_dir=tmp_path / str(seed),
                train_options={"progress": False, "seed": seed})
        maps.append(m["mAP"])
        p = predict_dataset(model_from_checkpoint(tmp_path / str(seed) / "last.pt"), te)
        assert multilabel_metrics(p["logits"], p["target"])["mAP"] == pytest.approx(m["mAP"])
        logits.append(p["logits"])
    lr = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(
        max_iter=5000))).fit(tr.features, tr.labels)
    prob = lr.predict_proba(te.features)
    ref = multilabel_metrics(prob, te.labels, scores_are="probabilities")["mAP"]
    assert np.mean(maps) >= ref - 0.01
    assert paired_bootstrap_map(logits, prob, te.labels, num_resamples=1000)["ci"][1] > 0
