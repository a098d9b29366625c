import json

import numpy as np
import pytest
import torch

from helpers_features import make_features_npz
from pyg_mlic.data.features import FeaturesDataset
from pyg_mlic.engine import (TrainConfig, Trainer, evaluate, load_checkpoint,
                             model_from_checkpoint, seed_everything)
from pyg_mlic.errors import CheckpointError, ClassMismatchError
from pyg_mlic.models import build_model


@pytest.fixture
def feature_sets(tmp_path):
    tr = FeaturesDataset(make_features_npz(tmp_path / "tr.npz", seed=0), split="train")
    va = FeaturesDataset(make_features_npz(tmp_path / "va.npz", n=80, seed=1), split="val")
    te = FeaturesDataset(make_features_npz(tmp_path / "te.npz", n=120, seed=2), split="test")
    return tr, va, te


def _model(tr, seed=0):
    seed_everything(seed)  # initialisation is part of the run: seed it, as the CLI does
    return build_model("baseline", classes=tr.classes, input_kind="features",
                       in_features=tr.feature_dim, encoder_hidden=[32], encoder_out=32)


def _cfg(**kw):
    base = dict(epochs=4, batch_size=32, optimizer="adam", lr=1e-2, lr_step=None, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_training_learns_and_writes_outputs(feature_sets, tmp_path):
    tr, va, te = feature_sets
    model = _model(tr)
    before = evaluate(model, te)["mAP"]
    out = tmp_path / "run"
    m = Trainer(model, tr, va, te, _cfg(), out_dir=out).fit()
    assert m["mAP"] > before + 0.1 and m["mAP"] > 0.8
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mAP"] == pytest.approx(m["mAP"])
    assert saved["selection"]["rule"] == "last" and saved["selection"]["evaluated_split"] == "test"
    assert saved["settings"]["model"] == "baseline"
    assert len(json.loads((out / "history.json").read_text())) == 4
    assert (out / "last.pt").exists()


def test_same_seed_same_metrics(feature_sets, tmp_path):
    """CPU determinism: same seed and settings -> bit-identical weights, history and
    metrics (with a random layer, dropout, in the model); another seed -> another run."""
    tr, va, te = feature_sets

    def run(seed, name):
        seed_everything(seed)
        model = build_model("baseline", classes=tr.classes, input_kind="features",
                            in_features=tr.feature_dim, encoder_hidden=[32], encoder_out=32,
                            dropout=0.3)
        m = Trainer(model, tr, va, te, _cfg(seed=seed), out_dir=tmp_path / name).fit()
        return m, model.state_dict(), json.loads((tmp_path / name / "history.json").read_text())

    a, wa, ha = run(3, "a")
    b, wb, hb = run(3, "b")
    c, wc, _ = run(4, "c")
    timing = ("eval_time_s", "train_time_s")
    assert {k: v for k, v in a.items() if k not in timing} == \
        {k: v for k, v in b.items() if k not in timing}
    assert ha == hb
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert not torch.equal(wa["fc.weight"], wc["fc.weight"]) and c["AP"] != a["AP"]


def test_resume_gives_identical_metrics(feature_sets, tmp_path):
    tr, va, te = feature_sets
    full = Trainer(_model(tr, 5), tr, va, te, _cfg(epochs=4, seed=5), out_dir=tmp_path / "a").fit()
    # interrupted run: 2 epochs, then a restart that resumes to 4 from a differently
    # initialised model (the checkpoint must restore everything)
    Trainer(_model(tr, 5), tr, va, te, _cfg(epochs=2, seed=5), out_dir=tmp_path / "b").fit()
    resumed = Trainer(_model(tr, 99), tr, va, te, _cfg(epochs=4, seed=5),
                      out_dir=tmp_path / "b").fit(resume=True)
    assert resumed["mAP"] == full["mAP"]
    assert resumed["AP"] == full["AP"]


def test_best_val_selection_never_uses_test(feature_sets, tmp_path):
    tr, va, te = feature_sets
    m = Trainer(_model(tr), tr, va, te, _cfg(select="best_val"), out_dir=tmp_path).fit()
    hist = json.loads((tmp_path / "history.json").read_text())
    best_epoch = int(np.argmax([h["val_mAP"] for h in hist]))
    assert m["selection"]["epoch"] == best_epoch
    assert m["selection"]["best_val_mAP"] == pytest.approx(hist[best_epoch]["val_mAP"])
    with pytest.raises(ValueError, match="validation"):
        Trainer(_model(tr), tr, None, te, _cfg(select="best_val"))


def test_checkpoint_roundtrip_and_refusals(feature_sets, tmp_path):
    tr, va, te = feature_sets
    model = _model(tr)
    Trainer(model, tr, va, te, _cfg(epochs=1), out_dir=tmp_path).fit()
    rebuilt = model_from_checkpoint(tmp_path / "last.pt")
    batch = {"features": torch.from_numpy(np.load(tmp_path / "tr.npz")["features"][:7])}
    model.eval()
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(batch).logits, model(batch).logits)
    with pytest.raises(CheckpointError, match="class list"):
        load_checkpoint(tmp_path / "last.pt", expect_classes=["a", "b"])
    with pytest.raises(CheckpointError, match="holds model"):
        load_checkpoint(tmp_path / "last.pt", expect_model="ml_gcn")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes((tmp_path / "last.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_checkpoint(trunc)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a pyg_mlic checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_malicious_pickle_is_refused(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"format": "pyg_mlic-checkpoint", "x": Evil()}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    assert not marker.exists()


def test_class_mismatch_between_splits(feature_sets, tmp_path):
    tr, va, te = feature_sets
    other = FeaturesDataset(make_features_npz(tmp_path / "o.npz", c=4), split="test")
    with pytest.raises(ClassMismatchError, match="test set"):
        Trainer(_model(tr), tr, va, other, _cfg())


def test_nan_features_rejected_at_the_boundary(feature_sets, monkeypatch):
    from pyg_mlic.engine.trainer import _to_device
    from pyg_mlic.models.base import DEBUG_ENV

    tr, _, _ = feature_sets
    model = _model(tr)
    bad = {"features": torch.full((2, tr.feature_dim), float("nan"))}
    with pytest.raises(ValueError, match="non-finite"):  # the engine, on the host
        _to_device(bad, torch.device("cpu"))
    model(bad)  # no per-batch check inside the model by default (no device sync)
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="non-finite"):
        model(bad)


def test_no_test_split_marks_the_final_number_selection_biased(feature_sets, tmp_path):
    """Without a test split the final evaluation falls back to the validation split; when
    that split also chose the weights (select='best_val') metrics.json says so, a warning
    is given and the printed table stars the row."""
    from pyg_mlic.metrics import format_table

    tr, va, te = feature_sets
    with pytest.warns(UserWarning, match="selection-biased"):
        m = Trainer(_model(tr), tr, va, None, _cfg(epochs=2, select="best_val"),
                    out_dir=tmp_path / "b").fit()
    assert m["selection_biased"] is True and m["selection"]["evaluated_split"] == "val"
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert saved["selection_biased"] is True
    table = format_table([("baseline", m)])
    assert "baseline*" in table and "SELECTION-BIASED" in table
    # a test split, or no selection at all (the last epoch), is not biased
    m2 = Trainer(_model(tr), tr, va, te, _cfg(epochs=2, select="best_val")).fit()
    m3 = Trainer(_model(tr), tr, va, None, _cfg(epochs=2, select="last")).fit()
    assert m2["selection_biased"] is False and m3["selection_biased"] is False
    assert "SELECTION-BIASED" not in format_table([("a", m2), ("b", m3)])
    assert "top-3 label counts only if" in m2["protocol"]["topk_rule"]



def test_training_split_that_cannot_teach_a_class_is_named_before_training(tmp_path):
    """A class with no known positive (its only positive masked) or no known negative,
    and features equal on every row, are warned about by name when the Trainer is built;
    a split with both kinds of label for every class is silent."""
    import warnings

    from pyg_mlic.engine.trainer import warn_unlearnable

    path = make_features_npz(tmp_path / "tr.npz", n=60, seed=0)
    with np.load(path) as z:
        a = dict(z)
    assert warn_unlearnable(FeaturesDataset(path)) == []
    a["labels"][:, 1] = 0
    a["labels"][3, 1] = 1
    a["mask"] = np.ones_like(a["labels"], dtype=bool)
    a["mask"][3, 1] = False  # the one positive of class_1 is unknown
    a["labels"][:, 4] = 1  # class_4: no negative
    np.savez(tmp_path / "bad.npz", **a)
    bad = FeaturesDataset(tmp_path / "bad.npz")
    with pytest.warns(UserWarning) as rec:
        Trainer(_model(bad), bad, None, None, _cfg(epochs=1))
    texts = [str(w.message) for w in rec if "training split" in str(w.message)]
    assert len(texts) == 2
    assert "1 of 5 class(es) have no known positive label" in texts[0] and "'class_1'" in texts[0]
    assert "no known negative label" in texts[1] and "'class_4'" in texts[1]
    a = {k: v for k, v in a.items() if k != "mask"}
    a["features"] = np.ones_like(a["features"])
    np.savez(tmp_path / "flat.npz", **a)
    with pytest.warns(UserWarning, match="every feature column is constant"):
        texts = warn_unlearnable(FeaturesDataset(tmp_path / "flat.npz"))
    (text,) = [t for t in texts if "feature" in t]
    assert "every feature column is constant" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr = FeaturesDataset(path)
        Trainer(_model(tr), tr, None, None, _cfg(epochs=1))
