"""Calibrated thresholds and the long-tail report of the engine's final evaluation:
chosen on the validation split with the evaluated weights (never the test split), stored
in the checkpoint those weights came from, used by ``pyg-mlic eval/predict --threshold
calibrated``; absent (with the reason) without a validation split."""
import json
import warnings

import numpy as np
import pytest
import torch

from pyg_mlic.cli import main
from pyg_mlic.data.factory import build_splits
from pyg_mlic.engine import fit, load_checkpoint, model_from_checkpoint, predict_dataset
from pyg_mlic.engine.checkpoint import checkpoint_thresholds, update_checkpoint
from pyg_mlic.errors import CheckpointError
from pyg_mlic.metrics import (UndefinedAPWarning, calibrate_thresholds, long_tail_map,
                              multilabel_metrics)

NUM_IMAGES, SIZE = 48, 32  # the scenes eval rebuilds from the same flags (seed 0)
TINY = dict(epochs=1, batch_size=16, optimizer="adam", lr=2e-3, lr_step=None, progress=False)
NAMES = ("CP", "CR", "CF1", "OP", "OR", "OF1")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs of the image baseline on synthetic scenes: select="last" with a
    validation split, select="best_val" (2 epochs), and no validation split."""
    tr, va, te = build_splits("synthetic", image_size=SIZE, num_images=NUM_IMAGES, seed=0,
                              backbone="small_cnn")
    assert va is not None and va.split == "val"
    out = {"splits": (tr, va, te)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, val, opts in (("last", va, {}), ("best", va, dict(epochs=2, select="best_val")),
                                ("noval", None, {})):
            d = tmp_path_factory.mktemp(name)
            m = fit("baseline", tr, val, te, model_options=dict(backbone="small_cnn"),
                    train_options={**TINY, **opts}, out_dir=d,
                    run_info={"image_size": SIZE})
            out[name] = (d, m)
    return out


def _pred(ckpt_path, ds):
    model = model_from_checkpoint(load_checkpoint(ckpt_path))
    return predict_dataset(model, ds, batch_size=16)


def test_thresholds_come_from_the_validation_split_and_are_stored(runs):
    tr, va, te = runs["splits"]
    d, m = runs["last"]
    ckpt = load_checkpoint(d / "last.pt")
    stored = ckpt["thresholds"]
    val, test = _pred(d / "last.pt", va), _pred(d / "last.pt", te)
    on_val = calibrate_thresholds(val["logits"], val["target"], val["mask"], scores_are="logits")
    on_test = calibrate_thresholds(test["logits"], test["target"], test["mask"],
                                   scores_are="logits")
    assert stored["per_class"] == pytest.approx(on_val["per_class"], abs=1e-6)
    assert stored["global"] == pytest.approx(on_val["global"], abs=1e-6)
    assert stored["per_class"] != pytest.approx(on_test["per_class"], abs=1e-6)  # not test
    assert stored["split"] == "val" and stored["epoch"] == 0
    assert stored["num_samples"] == len(va)
    saved = json.loads((d / "metrics.json").read_text())
    cal = saved["calibrated"]
    assert cal["thresholds"]["per_class"] == pytest.approx(stored["per_class"])
    assert cal["split"] == "val" and cal["evaluated_split"] == "test"
    assert cal["checkpoint"] == "last.pt" and cal["selection_biased"] is False
    # the test metrics at the calibrated thresholds, and the 0.5 ones at the top level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAPWarning)
        per = multilabel_metrics(test["logits"], test["target"], test["mask"],
                                 threshold=stored["per_class"], scores_are="logits")
        glob = multilabel_metrics(test["logits"], test["target"], test["mask"],
                                  threshold=stored["global"], scores_are="logits")
        half = multilabel_metrics(test["logits"], test["target"], test["mask"],
                                  scores_are="logits")
    for key in NAMES + tuple(f"{k}_top3" for k in NAMES):
        assert cal["per_class"][key] == pytest.approx(per[key], abs=1e-6), key
        assert cal["global"][key] == pytest.approx(glob[key], abs=1e-6), key
        assert saved[key] == pytest.approx(half[key], abs=1e-6), key
    assert saved["protocol"]["threshold"] == 0.5
    assert cal["per_class"]["CP"] != pytest.approx(saved["CP"])  # the thresholds matter here


def test_long_tail_uses_the_training_counts(runs):
    tr, _, _ = runs["splits"]
    d, m = runs["last"]
    saved = json.loads((d / "metrics.json").read_text())
    counts = (np.asarray(tr.labels) == 1).sum(0)
    assert saved["long_tail"] == json.loads(json.dumps(long_tail_map(saved["AP"], counts)))
    lt = saved["long_tail"]
    n_eval = sum(a is not None for a in saved["AP"])
    assert sum(lt["num_classes"].values()) == n_eval
    assert sum(lt["num_undefined"].values()) == len(saved["AP"]) - n_eval


def test_best_val_stores_the_thresholds_with_the_selected_weights(runs):
    _, va, _ = runs["splits"]
    d, m = runs["best"]
    best = load_checkpoint(d / "best.pt")
    assert "thresholds" not in load_checkpoint(d / "last.pt")
    val = _pred(d / "best.pt", va)
    on_val = calibrate_thresholds(val["logits"], val["target"], val["mask"], scores_are="logits")
    assert best["thresholds"]["per_class"] == pytest.approx(on_val["per_class"], abs=1e-6)
    assert best["thresholds"]["epoch"] == m["selection"]["epoch"] == best["epoch"]
    assert m["calibrated"]["checkpoint"] == "best.pt"
    with pytest.raises(CheckpointError, match="best.pt next to this file"):
        checkpoint_thresholds(load_checkpoint(d / "last.pt"), path=d / "last.pt")


def test_no_validation_split_no_thresholds(runs, capsys):
    d, m = runs["noval"]
    assert m["calibrated"]["thresholds"] is None
    assert "no validation split" in m["calibrated"]["reason"]
    saved = json.loads((d / "metrics.json").read_text())
    assert saved["calibrated"] == m["calibrated"]
    assert "thresholds" not in load_checkpoint(d / "last.pt")
    assert "head" in saved["long_tail"]  # the long tail does not need a validation split
    img = d / "x.png"
    _write_image(img)
    for cmd in (["eval", "--dataset", "synthetic", "--num-images", str(NUM_IMAGES),
                 "--image-size", str(SIZE)], ["predict", str(img)]):
        assert main([*cmd, "--checkpoint", str(d / "last.pt"), "--threshold", "calibrated"]) == 2
        err = capsys.readouterr().err
        assert "no calibrated thresholds stored" in err and len(err.strip().splitlines()) == 1
    # predict's default is then 0.5, said on stderr
    assert main(["predict", str(img), "--checkpoint", str(d / "last.pt"), "--format",
                 "json"]) == 0
    assert "threshold 0.5" in capsys.readouterr().err


def _write_image(path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


def test_cli_eval_and_predict_use_the_stored_thresholds(runs, tmp_path, capsys):
    d, m = runs["last"]
    ckpt_path = d / "last.pt"
    stored = load_checkpoint(ckpt_path)["thresholds"]
    saved = json.loads((d / "metrics.json").read_text())
    base = ["eval", "--checkpoint", str(ckpt_path), "--dataset", "synthetic", "--num-images",
            str(NUM_IMAGES), "--image-size", str(SIZE)]
    for word, block in (("calibrated", "per_class"), ("calibrated-global", "global")):
        out = tmp_path / f"{word}.json"
        assert main([*base, "--threshold", word, "--out", str(out)]) == 0
        e = json.loads(out.read_text())
        assert e["threshold"]["rule"] == word and e["threshold"]["split"] == "val"
        for key in NAMES:  # the same test split as the run's final evaluation
            assert e[key] == pytest.approx(saved["calibrated"][block][key], abs=1e-6), key
    assert main([*base, "--out", str(tmp_path / "half.json")]) == 0  # default: 0.5
    half = json.loads((tmp_path / "half.json").read_text())
    assert half["threshold"] == {"rule": "fixed", "value": 0.5}
    assert half["CP"] == pytest.approx(saved["CP"], abs=1e-6)
    capsys.readouterr()

    img = tmp_path / "x.png"
    _write_image(img)
    model = model_from_checkpoint(load_checkpoint(ckpt_path)).eval()

    def predicted(*flags):
        assert main(["predict", str(img), "--checkpoint", str(ckpt_path), "--format", "json",
                     "--no-progress", *flags]) == 0
        return json.loads(capsys.readouterr().out)[0]

    cal, default, half = predicted("--threshold", "calibrated"), predicted(), \
        predicted("--threshold", "0.5")
    assert default == cal  # the stored thresholds are predict's default
    thr = dict(zip(model.classes, stored["per_class"]))
    assert set(cal["labels"]) == {c for c, s in cal["scores"].items() if s > thr[c]}
    assert set(half["labels"]) == {c for c, s in half["scores"].items() if s > 0.5}
    glob = predicted("--threshold", "calibrated-global")
    assert set(glob["labels"]) == {c for c, s in glob["scores"].items()
                                   if s > stored["global"]}
    assert cal["labels"] != half["labels"]  # the thresholds change the labels here


@pytest.mark.parametrize("value", ["abc", "1.5", "-0.1", "1", "nan"])
def test_cli_rejects_bad_threshold_in_one_line(value, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path / "x.png"), "--checkpoint", "none.pt",
              "--threshold", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--threshold" in err and "'calibrated'" in err and repr(value) in err


def test_update_checkpoint_adds_keys_atomically_and_keeps_the_model(runs, tmp_path):
    d, _ = runs["noval"]
    path = tmp_path / "c.pt"
    path.write_bytes((d / "last.pt").read_bytes())
    before = load_checkpoint(path)
    update_checkpoint(path, {"note": np.array([1, 2]), "thresholds": None})
    after = load_checkpoint(path)
    assert torch.equal(after["note"], torch.tensor([1, 2])) and after["thresholds"] is None
    for k in before["state_dict"]:
        assert torch.equal(before["state_dict"][k], after["state_dict"][k])
    with pytest.raises(ValueError, match="define the model"):
        update_checkpoint(path, {"state_dict": {}})
    with pytest.raises(CheckpointError, match="malformed"):
        checkpoint_thresholds({**after, "thresholds": {"per_class": [0.5], "global": 0.5}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary left
