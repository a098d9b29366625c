"""Preprocessing belongs to the weights: every backbone states the mean, std and input
size its weights expect (``data_config(name)``, without building it), equal to what the
built module's ``default_cfg`` says and to the source's own metadata (torchvision's
weight enums, timm's ``pretrained_cfg``)."""
from __future__ import annotations

import importlib.util

import pytest

from pyg_mlic.backbones import build_backbone, data_config, list_backbones
from pyg_mlic.backbones import registry as R

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _has(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def test_every_registered_backbone_states_its_preprocessing():
    for name in list_backbones():
        if name.startswith("tresnet") and not _has("timm"):
            with pytest.raises(ImportError, match="timm"):
                data_config(name)
            continue
        cfg = data_config(name)
        assert set(cfg) == set(R.DATA_CONFIG_KEYS)
        assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0] == 3
        assert all(s > 0 for s in cfg["std"]) and cfg["source"]


@pytest.mark.parametrize("name", ["resnet50", "small_cnn",
                                  pytest.param("efficientnet_lite0", marks=pytest.mark.skipif(
                                      not _has("efficientnet_lite_pytorch"),
                                      reason="efficientnet-lite-pytorch not installed"))])
def test_data_config_equals_the_built_modules_default_cfg(name):
    cfg, b = data_config(name), build_backbone(name)
    for key in ("mean", "std", "input_size"):
        assert tuple(b.default_cfg[key]) == tuple(cfg[key]), key


def test_resnet_statistics_come_from_torchvisions_weights():
    from torchvision.models import ResNet101_Weights

    tf = ResNet101_Weights.IMAGENET1K_V1.transforms()
    cfg = data_config("resnet101")
    assert cfg["mean"] == tuple(tf.mean) and cfg["std"] == tuple(tf.std) == IMAGENET[1]
    assert cfg["input_size"] == (3, 448, 448) and "ResNet101_Weights" in cfg["source"]
    # small_cnn: the statistics the demo has always normalised its inputs with
    assert (data_config("small_cnn")["mean"], data_config("small_cnn")["std"]) == IMAGENET


def test_tresnet_takes_unit_range_inputs_from_timms_cfg():
    timm = pytest.importorskip("timm")
    for name in ("tresnet_m", "tresnet_l", "tresnet_xl"):
        cfg = data_config(name)
        ref = timm.get_pretrained_cfg(name)
        assert cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"] == (1.0, 1.0, 1.0)
        assert cfg["mean"] == tuple(ref.mean) and cfg["input_size"] == tuple(ref.input_size)
        assert cfg["source"].startswith(f"timm pretrained_cfg {name}")
    # any timm model through its pretrained cfg, tags included, without creating it
    clip = data_config("timm:vit_base_patch16_clip_224.openai")
    assert clip["mean"] == tuple(timm.get_pretrained_cfg(
        "vit_base_patch16_clip_224.openai").mean) != IMAGENET[0]
    assert data_config("timm:tresnet_m.miil_in21k")["std"] == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="unknown timm model"):
        data_config("timm:no_such_net_xyz")


def test_timm_backbone_default_cfg_matches():
    pytest.importorskip("timm")
    b = build_backbone("timm:resnet10t")
    cfg = data_config("timm:resnet10t")
    assert b.default_cfg["mean"] == cfg["mean"] and b.default_cfg["std"] == cfg["std"]
    assert b.default_cfg["input_size"] == cfg["input_size"]


def test_registration_with_and_without_a_data_config():
    name, plain = "test_dc_net", "test_dc_plain"

    @R.register_backbone(name, data_config=lambda: dict(mean=(0.5,) * 3, std=(0.5,) * 3))
    def _a(weights=None, **kw):  # pragma: no cover - never built
        raise AssertionError

    @R.register_backbone(plain)
    def _b(weights=None, **kw):  # pragma: no cover - never built
        raise AssertionError

    try:
        cfg = data_config("Test-DC-Net")       # names are normalised as in build_backbone
        assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["input_size"] == (3, 224, 224)
        assert cfg["interpolation"] == "bilinear" and cfg["source"] == "'Test-DC-Net'"
        dflt = data_config(plain)
        assert (dflt["mean"], dflt["std"]) == IMAGENET and "ImageNet" in dflt["source"]
    finally:
        for n in (name, plain):
            R._BACKBONES.pop(n)
            R._DATA_CONFIGS.pop(n, None)
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        data_config("vgg16")
    with pytest.raises(ValueError, match="unknown backbone family"):
        data_config("hub:resnet50")
    bad = "test_dc_bad"
    R.register_backbone(bad, data_config=dict(mean=(0.5,) * 3, std=(0.0,) * 3))(lambda **k: 0)
    try:
        with pytest.raises(ValueError, match="std > 0"):
            data_config(bad)
    finally:
        R._BACKBONES.pop(bad)
        R._DATA_CONFIGS.pop(bad, None)
