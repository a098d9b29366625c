"""The input pipeline of a run (pyg_mlic.data.factory): normalisation from the backbone,
augmentation from the model's paper (``default_data_config``), the user's ``--data-opt``
over both, end to end through ``pyg-mlic train`` / ``eval`` / ``predict`` on real images
(coco8)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from pyg_mlic.data.factory import (DATA_OPTIONS, build_splits, checkpoint_data_config,
                                   model_default, resolve_data_config)
from pyg_mlic.data.transforms import (RandomCropResizeTransform, ResizeRandomCropTransform,
                                      ResizeTransform)
from pyg_mlic.errors import OptionError
from pyg_mlic.models import get_model_class

IMAGENET = [0.485, 0.456, 0.406]


@pytest.fixture(scope="module")
def coco8(data_dir) -> Path:
    d = data_dir / "images" / "coco8"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    return d


def _coco_args(coco8: Path):
    return ["--dataset", "coco", "--root", str(coco8), "--train-file",
            str(coco8 / "instances_train.json"), "--test-file", str(coco8 / "instances_val.json")]


# ------------------------------------------------------------------ resolution
def test_agcn_reads_its_paper_pipeline_scaled_to_the_input():
    agcn = get_model_class("a_gcn")
    assert agcn.default_data_config == dict(train="resize_crop", resize=512, crop=448)
    cfg = resolve_data_config("coco", model=agcn)
    assert (cfg["train"], cfg["resize"], cfg["image_size"]) == ("resize_crop", 512, 448)
    assert cfg["backbone"] == "resnet101" and cfg["mean"] == IMAGENET
    assert cfg["sources"]["resize"] == "a_gcn.default_data_config"
    assert resolve_data_config("voc2007", model=agcn, image_size=224)["resize"] == 256
    assert resolve_data_config("coco", model=agcn, image_size=64)["resize"] == 73
    # the user's resize is taken as given (no scaling), and wins
    assert resolve_data_config("coco", model=agcn, image_size=64,
                               data_config={"resize": 80})["resize"] == 80
    # the synthetic scenes keep their mild crop whatever the model
    syn = resolve_data_config("synthetic", model=agcn, image_size=64)
    assert syn["train"] == "random_resized_crop" and syn["scale"] == [0.85, 1.0]
    assert syn["backbone"] == "resnet101"


def test_other_models_keep_the_shared_crop():
    for name in ("baseline", "ml_gcn", "ia_gcn", "gm_mlic"):
        cfg = resolve_data_config("coco", model=get_model_class(name))
        assert cfg["train"] == "random_resized_crop" and cfg["scale"] == [0.5, 1.0]
        assert cfg["randaugment"] is None and cfg["flip_p"] == 0.5 and cfg["sources"] == {}


def test_iml_gcn_and_asl_get_randaugment_and_tresnet_statistics():
    pytest.importorskip("timm")
    for name in ("iml_gcn", "asl"):
        cls = get_model_class(name)
        assert model_default(cls, "backbone") == "tresnet_m"
        cfg = resolve_data_config("coco", model=cls)
        assert cfg["randaugment"] == {"num_ops": 2, "magnitude": 9}
        assert cfg["mean"] == [0.0, 0.0, 0.0] and cfg["std"] == [1.0, 1.0, 1.0]
        # another backbone brings its own statistics
        assert resolve_data_config("coco", model=cls, backbone="resnet50")["mean"] == IMAGENET
    # ASL's own training geometry (resize, Cutout 0.5, no flip) through data options
    cfg = resolve_data_config("coco", model=get_model_class("asl"),
                              data_config=dict(train="resize", cutout=0.5, flip_p=0.0))
    assert (cfg["train"], cfg["resize"], cfg["cutout"], cfg["flip_p"]) == \
        ("resize_crop", 448, 0.5, 0.0)


def test_bad_data_options_are_named():
    with pytest.raises(OptionError, match="flip"):
        resolve_data_config("coco", data_config={"flip": True})
    with pytest.raises(ValueError, match="unknown training transform"):
        resolve_data_config("coco", data_config={"train": "mosaic"})
    with pytest.raises(ValueError, match="randaugment"):
        resolve_data_config("coco", data_config={"randaugment": "yes"})
    with pytest.raises(ValueError, match="unknown backbone"):
        resolve_data_config("coco", backbone="vgg16")
    assert set(DATA_OPTIONS) >= {"train", "resize", "randaugment", "cutout", "mean", "std"}


def test_build_splits_builds_the_resolved_transforms(coco8):
    kw = dict(root=str(coco8), train_file=str(coco8 / "instances_train.json"),
              test_file=str(coco8 / "instances_val.json"), image_size=64)
    tr, _, te = build_splits("coco", model=get_model_class("a_gcn"), backbone="small_cnn", **kw)
    assert isinstance(tr.transform, ResizeRandomCropTransform) and tr.transform.resize == 73
    assert isinstance(te.transform, ResizeTransform) and te.transform.size == 64
    assert tr.data_config is te.data_config and tr.data_config["backbone"] == "small_cnn"
    s = tr[0]
    assert s["image"].shape == (3, 64, 64) and (s["boxes"] >= 0).all()
    tr, va, _ = build_splits("coco", augment=False, val_fraction=0.25, **kw)
    assert isinstance(tr.dataset.transform, ResizeTransform) and tr.data_config["train"] == "none"
    assert va.data_config is tr.data_config
    # no model named: the ResNets' ImageNet statistics, the shared crop
    tr, _, _ = build_splits("coco", **kw)
    assert type(tr.transform) is RandomCropResizeTransform
    assert tr.transform.mean == tuple(IMAGENET)


def test_checkpoint_data_config_prefers_the_recorded_one():
    rec = {"backbone": "x", "mean": [0.1] * 3, "std": [0.2] * 3, "image_size": 32}
    assert checkpoint_data_config({"run_info": {"data_config": rec}}) == rec
    got = checkpoint_data_config({"run_info": {"image_size": 96},
                                  "build_kwargs": {"backbone": "small_cnn"}})
    assert got["mean"] == IMAGENET and got["image_size"] == 96 and got["backbone"] == "small_cnn"


# ------------------------------------------------------------------ CLI, end to end
def test_cli_train_a_gcn_uses_the_papers_transform(coco8, tmp_path, monkeypatch):
    """``pyg-mlic train --model a_gcn`` on a real dataset trains with resize + random crop
    (scaled to --image-size) and tests with a resize, normalised for its backbone."""
    import pyg_mlic.engine as engine
    from pyg_mlic.cli import main

    seen = {}
    real_fit = engine.fit

    def spy(model, train, val, test, **kw):
        seen.update(model=model, train=train.transform, test=test.transform,
                    cfg=train.data_config)
        return real_fit(model, train, val, test, **kw)

    monkeypatch.setattr(engine, "fit", spy)
    out = tmp_path / "agcn"
    assert main(["train", *_coco_args(coco8), "--model", "a_gcn", "--backbone", "small_cnn",
                 "--image-size", "64", "--epochs", "1", "--batch-size", "4",
                 "--label-embeddings", "onehot", "--out", str(out), "--no-progress"]) == 0
    assert seen["model"] == "a_gcn"
    tf = seen["train"]
    assert type(tf) is ResizeRandomCropTransform and (tf.size, tf.resize) == (64, 73)
    assert tf.flip_p == 0.5 and tf.mean == tuple(IMAGENET)
    assert type(seen["test"]) is ResizeTransform and seen["test"].size == 64
    assert seen["cfg"]["sources"]["train"] == "a_gcn.default_data_config"
    assert (out / "metrics.json").is_file()
    # --data-opt overrides the paper's pipeline
    seen.clear()
    monkeypatch.setattr(engine, "fit", lambda model, train, val, test, **kw: seen.update(
        train=train.transform) or {})
    from pyg_mlic import cli

    args = cli.build_parser().parse_args(
        ["train", *_coco_args(coco8), "--model", "a_gcn", "--backbone", "small_cnn",
         "--image-size", "64", "--data-opt", "train=random_resized_crop",
         "--data-opt", "scale=(0.9, 1.0)"])
    tr, _, _ = cli._splits(args)
    assert type(tr.transform) is RandomCropResizeTransform and tr.transform.scale == (0.9, 1.0)


def test_cli_splits_follow_the_models_backbone(coco8):
    pytest.importorskip("timm")
    from pyg_mlic import cli

    parse = cli.build_parser().parse_args
    tr, _, te = cli._splits(parse(["train", *_coco_args(coco8), "--model", "iml_gcn",
                                   "--image-size", "64"]))
    assert te.transform.mean == (0.0, 0.0, 0.0) and tr.transform.randaugment is not None
    tr, _, te = cli._splits(parse(["train", *_coco_args(coco8), "--model", "iml_gcn",
                                   "--image-size", "64", "--set", "backbone=resnet50"]))
    assert te.transform.mean == tuple(IMAGENET)
    # the synthetic scenes: the demo recipe's small_cnn unless a backbone is named
    tr, _, _ = cli._splits(parse(["train", "--dataset", "synthetic", "--num-images", "8",
                                  "--image-size", "32", "--model", "asl"]))
    assert tr.data_config["backbone"] == "small_cnn" and tr.transform.scale == (0.85, 1.0)


def test_cli_eval_and_predict_normalise_for_the_checkpoints_backbone(coco8, tmp_path,
                                                                     capsys):
    """A checkpoint whose run recorded a data config (here: a backbone fed [0, 1] pixels)
    is evaluated and served with that normalisation, not ImageNet's."""
    from PIL import Image

    from pyg_mlic.cli import main
    from pyg_mlic.engine import save_checkpoint
    from pyg_mlic.models import build_model

    torch.manual_seed(0)
    ds, _, _ = build_splits("coco", root=str(coco8), train_file=str(coco8 / "instances_train.json"),
                            test_file=str(coco8 / "instances_val.json"), image_size=48)
    model = build_model("baseline", classes=ds.classes, backbone="small_cnn").eval()
    cfg = {"backbone": "small_cnn", "mean": [0.0] * 3, "std": [1.0] * 3, "image_size": 48,
           "preprocessing": "test"}
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model=model, extra={"run_info": {"image_size": 48,
                                                           "data_config": cfg}})
    img = coco8 / "images" / "000000000009.jpg"
    assert main(["predict", str(img), "--checkpoint", str(ckpt), "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)[0]["scores"]
    x = ResizeTransform(48, mean=(0, 0, 0), std=(1, 1, 1))(Image.open(img).convert("RGB"))[0]
    with torch.no_grad():
        ref = torch.sigmoid(model({"image": x[None]}).logits)[0]
    for i, c in enumerate(model.classes):
        assert got[c] == pytest.approx(float(ref[i]), abs=1e-5)
    # eval builds its test split with the same normalisation
    from pyg_mlic import cli

    args = cli.build_parser().parse_args(["eval", *_coco_args(coco8), "--checkpoint",
                                          str(ckpt), "--image-size", "48"])
    _, _, te = cli._splits(args)
    assert te.transform.mean == (0.0, 0.0, 0.0) and te.transform.std == (1.0, 1.0, 1.0)


def test_cli_extract_features_normalises_for_the_backbone(data_dir, tmp_path, monkeypatch):
    """extract-features reads the backbone's data config by name (here a backbone
    registered with [0, 1] inputs): the features equal the encoder on unnormalised pixels."""
    import numpy as np

    from pyg_mlic.backbones import ImageEncoder, SmallCNN, build_backbone, register_backbone
    from pyg_mlic.backbones import registry as R
    from pyg_mlic.cli import main
    from pyg_mlic.data import VOCDataset, load_features

    name = "test_unit_cnn01"

    @register_backbone(name, data_config=dict(mean=(0, 0, 0), std=(1, 1, 1),
                                              input_size=(3, 40, 40)))
    def _unit(weights=None, **kw):
        torch.manual_seed(0)
        return SmallCNN(widths=(8, 16), weights=weights)

    try:
        root = data_dir / "images" / "bccd"
        out = tmp_path / "f.npz"
        assert main(["extract-features", "--dataset", "voc2007", "--root", str(root), "--split",
                     "val", "--classes", "WBC,RBC,Platelets", "--backbone", name,
                     "--out", str(out), "--no-progress"]) == 0
        X = load_features(out)["features"]
        ds = VOCDataset(root, "val", classes=["WBC", "RBC", "Platelets"],
                        transform=ResizeTransform(40, mean=(0, 0, 0), std=(1, 1, 1)))
        enc = ImageEncoder(build_backbone(name), "avg").eval()
        with torch.no_grad():
            ref = enc(torch.stack([ds[i]["image"] for i in range(3)])).numpy()
        np.testing.assert_allclose(X[:3], ref, rtol=1e-4, atol=1e-5)
    finally:
        R._BACKBONES.pop(name)
        R._DATA_CONFIGS.pop(name, None)


def test_region_dataset_keeps_the_data_config(coco8):
    from pyg_mlic.detection import RegionDataset
    from pyg_mlic.detection.groundtruth import GroundTruthRegionExtractor

    tr, _, _ = build_splits("coco", root=str(coco8), train_file=str(coco8 / "instances_train.json"),
                            test_file=str(coco8 / "instances_val.json"), image_size=32,
                            backbone="small_cnn")
    tr.transform.generator = random.Random(0)
    rd = RegionDataset(tr, GroundTruthRegionExtractor("small_cnn", image_size=32), cache=False)
    assert rd.data_config is tr.data_config and rd.roi_augment == "follow"


# ------------------------------------------------------------------ --classes
def test_classes_choose_the_columns_of_a_voc_format_folder_and_of_coco(data_dir, coco8,
                                                                        tmp_path):
    """A VOC-format folder of another dataset (BCCD) trains from the command line with
    ``--classes`` (or ``infer``), every split in the training split's column order, and
    ``eval`` reads the test split with the checkpoint's classes; a COCO subset keeps only
    the named categories; a source that carries its own classes refuses the option."""
    from pyg_mlic.cli import main
    from pyg_mlic.data.voc import voc_labels

    bccd = data_dir / "images" / "bccd"
    tr, va, te = build_splits("voc2007", root=str(bccd), classes=["WBC", "RBC", "Platelets"],
                              val_file="val", image_size=32)
    assert tr.classes == va.classes == te.classes == ["WBC", "RBC", "Platelets"]
    _, Y, _ = voc_labels(bccd, "test", classes=["WBC", "RBC", "Platelets"])
    assert (te.labels == (Y == 1)).all()
    tr, _, te = build_splits("voc2007", root=str(bccd), classes="infer", image_size=32)
    assert tr.classes == te.classes == ["Platelets", "RBC", "WBC"]
    tr, _, te = build_splits("coco", root=str(coco8),
                             train_file=str(coco8 / "instances_train.json"),
                             test_file=str(coco8 / "instances_val.json"),
                             classes=["person", "dog"], image_size=32)
    assert tr.classes == te.classes == ["person", "dog"] and tr.labels.shape[1] == 2
    with pytest.raises(ValueError, match=r"--classes\) chooses the label columns of coco and "
                                         r"voc2007; 'synthetic' carries its own"):
        build_splits("synthetic", classes=["a"], num_images=8, image_size=32)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "voc2007", "--root", str(bccd), "--classes",
                 "WBC,RBC,Platelets", "--model", "baseline", "--backbone", "small_cnn",
                 "--image-size", "32", "--epochs", "1", "--batch-size", "64", "--no-progress",
                 "--out", str(run)]) == 0
    m = json.loads((run / "metrics.json").read_text())
    out = tmp_path / "eval.json"
    assert main(["eval", "--dataset", "voc2007", "--root", str(bccd), "--checkpoint",
                 str(run / "last.pt"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["mAP"] == pytest.approx(m["mAP"], abs=1e-6)


def test_eval_reads_the_test_split_alone(coco8, tmp_path):
    """``build_splits(test_only=True)`` (what ``pyg-mlic eval`` calls) builds the test split
    with the given columns and reads no training annotations: COCO evaluates without an
    ``instances_train*.json`` (coco8 has none under ``annotations/``), with the
    checkpoint's classes and the mAP of :func:`~pyg_mlic.engine.evaluate`."""
    from pyg_mlic.cli import main
    from pyg_mlic.engine import evaluate, save_checkpoint
    from pyg_mlic.models import build_model

    val_json = str(coco8 / "instances_val.json")
    tr, va, te = build_splits("coco", root=str(coco8), train_file=str(tmp_path / "none.json"),
                              test_file=val_json, classes=["person", "dog"], image_size=32,
                              test_only=True)
    assert tr is None and va is None and te.classes == ["person", "dog"]
    full = build_splits("coco", root=str(coco8), train_file=str(coco8 / "instances_train.json"),
                        test_file=val_json, classes=["person", "dog"], image_size=32)[2]
    assert (te.labels == full.labels).all() and te.image_files == full.image_files
    torch.manual_seed(0)
    model = build_model("baseline", classes=["person", "dog"], backbone="small_cnn").eval()
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model=model, extra={"run_info": {"image_size": 32}})
    out = tmp_path / "eval.json"
    assert main(["eval", "--dataset", "coco", "--root", str(coco8), "--test-file", val_json,
                 "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    want = evaluate(model, te, batch_size=32, progress=False)["mAP"]
    assert json.loads(out.read_text())["mAP"] == pytest.approx(want, abs=1e-6)
