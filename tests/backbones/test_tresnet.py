"""TResNet backbones (IML-GCN / ASL) through timm: names, shapes, parameter counts
against Table 1 of IML-GCN, and local weight files. Random init, 64 px inputs."""
from __future__ import annotations

import pytest
import torch

from pyg_mlic.backbones import ImageEncoder, build_backbone, list_backbones

timm = pytest.importorskip("timm", reason="timm not installed (pip install pyg_mlic[timm])")


def test_tresnet_names_registered():
    assert {"tresnet_m", "tresnet_l", "tresnet_xl"} <= set(list_backbones())


@pytest.mark.heavy
def test_tresnet_m_gap_features_and_weights_file(tmp_path):
    torch.manual_seed(0)
    b = build_backbone("tresnet_m").eval()
    assert b.out_channels == 2048
    assert b.default_cfg["mean"] == (0.0, 0.0, 0.0)  # TResNet takes [0, 1] inputs
    n = sum(p.numel() for p in b.parameters())
    # IML-GCN Table 1: "ASL (TResNetM) 29.5M" = backbone + an 80-class linear head
    assert round((n + 2048 * 80 + 80) / 1e6, 1) == 29.5
    enc = ImageEncoder(b, pool="avg").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        fmap = b(x)
        f = enc(x)
    assert fmap.shape == (2, 2048, 2, 2)
    assert f.shape == (2, 2048)
    assert torch.allclose(f, fmap.mean((2, 3)), atol=1e-6)
    # a full timm checkpoint (with its classifier head) loads into the alias; head ignored
    full = timm.create_model("tresnet_m", pretrained=False)
    full.load_state_dict(b.model.state_dict(), strict=False)
    path = tmp_path / "tresnet_m.pth"
    torch.save(full.state_dict(), path)
    b2 = build_backbone("tresnet-m", weights=str(path)).eval()
    assert b2.default_cfg["weights"] == str(path)
    with torch.no_grad():
        assert torch.allclose(b2(x), fmap, atol=1e-5)
    # weights of another architecture are refused with the file named
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="r18.pth"):
        build_backbone("tresnet_m", weights=str(tmp_path / "r18.pth"))


@pytest.mark.heavy
def test_tresnet_l_channels():
    b = build_backbone("tresnet_l")
    assert b.out_channels == 2432
    n = sum(p.numel() for p in b.parameters())
    # IML-GCN Table 1: "ASL (TResNetL) 53.8M" (with an 80-class head)
    assert round((n + 2432 * 80 + 80) / 1e6, 1) == 53.8
