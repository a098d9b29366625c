"""IML-GCN model: ML-GCN's GCN over given embeddings, tau = 0.1 graph, ASL loss, the
paper's training recipe, checkpoints, and Table 1's parameter counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pyg_mlic.engine import TrainConfig, model_from_checkpoint, save_checkpoint
from pyg_mlic.graphs import LabelGraph
from pyg_mlic.losses import asymmetric_loss
from pyg_mlic.models import build_model, get_model_class
from pyg_mlic.models.registry import count_parameters

CLASSES = ["a", "b", "c", "d"]


def _labels(n=40, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, len(CLASSES))) < 0.4).astype(np.uint8)
    Y[:, 1] = Y[:, 0]          # a strong correlation so the tau=0.1 graph has edges
    return Y


def _model(**kw):
    torch.manual_seed(0)
    cfg = dict(classes=CLASSES, input_kind="features", in_features=6, encoder_hidden=[8],
               encoder_out=10, train_labels=_labels(), label_embeddings=torch.randn(4, 4))
    cfg.update(kw)
    return build_model("iml_gcn", **cfg)


def test_graph_defaults_and_forward():
    m = _model()
    g = LabelGraph.from_labels(_labels(), classes=CLASSES, tau=0.1, p=0.2, split="train")
    assert torch.equal(m.edge_index, g.data.edge_index)
    assert torch.allclose(m.edge_weight, g.data.edge_weight)
    assert m.encoder.out_channels == 10 and m.label_embeddings.shape == (4, 4)
    out = m({"features": torch.randn(3, 6)})
    assert out.logits.shape == (3, 4)
    W = m.classifiers()
    assert torch.allclose(out.logits, out.extras["features"] @ W.t(), atol=1e-6)


def test_loss_is_asymmetric_loss():
    m = _model(asl_gamma_neg=3.0, asl_clip=0.1)
    logits = torch.randn(5, 4)
    y = (torch.rand(5, 4) > 0.5).float()
    mask = torch.rand(5, 4) > 0.2
    assert torch.allclose(m.classification_loss(logits, y, mask),
                          asymmetric_loss(logits, y, 0.0, 3.0, 0.1, mask=mask))
    asl = build_model("asl", classes=CLASSES, input_kind="features", in_features=6)
    assert torch.allclose(asl.classification_loss(logits, y),
                          asymmetric_loss(logits, y))
    with pytest.raises(ValueError, match="clip"):
        _model(asl_clip=1.5)


@pytest.mark.parametrize("name", ["iml_gcn", "asl"])
def test_asl_reduction_defaults_to_the_official_sum(name):
    """Both ASL models sum over the batch and classes by default (the official ASL code;
    with Adam's coupled weight decay a mean makes the decay B*C times stronger)."""
    build = _model if name == "iml_gcn" else (
        lambda **kw: build_model("asl", classes=CLASSES, input_kind="features", in_features=6,
                                 **kw))
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    y = (torch.rand(5, 4) > 0.5).float()
    mask = torch.rand(5, 4) > 0.2
    m = build()
    assert m.asl_reduction == "sum" and m.build_kwargs["asl_reduction"] == "sum"
    total = m.classification_loss(logits, y)
    assert torch.allclose(total, asymmetric_loss(logits, y, reduction="none").sum())
    assert torch.allclose(m.classification_loss(logits, y, mask),
                          asymmetric_loss(logits, y, reduction="none")[mask].sum())
    mean = build(asl_reduction="mean")
    assert torch.allclose(mean.classification_loss(logits, y) * 5 * 4, total)
    with pytest.raises(ValueError, match="asl_reduction"):
        build(asl_reduction="none")


def test_paper_train_config():
    cfg = TrainConfig.for_model(get_model_class("iml_gcn"))
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.epochs) == ("adam", 1e-3, 5e-4, 40)
    assert cfg.lr_milestones == [10, 20, 30] and cfg.lr_gamma == 0.1
    from pyg_mlic.engine.trainer import Trainer

    m = _model()
    t = Trainer.__new__(Trainer)      # only the optimiser / schedule construction
    t.model, t.config = m, cfg
    opt, sched = t._build_optim()
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-4)
    assert lrs[20] == pytest.approx(1e-5) and lrs[39] == pytest.approx(1e-6)


def test_embedding_arguments():
    with pytest.warns(UserWarning, match="one-hot"):
        m = _model(label_embeddings=None)
    assert torch.equal(m.label_embeddings, torch.eye(4))
    with pytest.raises(ValueError, match="stage-1 encoder"):
        _model(label_embeddings="image-features")


def test_checkpoint_round_trip(tmp_path):
    m = _model(asl_gamma_pos=1.0).eval()
    save_checkpoint(tmp_path / "m.pt", model=m)
    m2 = model_from_checkpoint(tmp_path / "m.pt").eval()
    x = {"features": torch.randn(2, 6)}
    assert torch.allclose(m(x).logits, m2(x).logits)
    assert type(m2).__name__ == "IMLGCN" and m2.asl_gamma_pos == 1.0
    assert m2.asl_reduction == "sum"
    save_checkpoint(tmp_path / "mean.pt", model=_model(asl_reduction="mean"))
    assert model_from_checkpoint(tmp_path / "mean.pt").asl_reduction == "mean"


def test_image_backbone_any():
    torch.manual_seed(0)
    m = build_model("iml_gcn", classes=CLASSES, backbone="small_cnn", train_labels=_labels(),
                    label_embeddings=torch.randn(4, 3))
    out = m({"image": torch.randn(2, 3, 32, 32)})
    assert out.logits.shape == (2, 4) and out.extras["features"].shape == (2, 128)


@pytest.mark.heavy
def test_parameter_counts_match_table1():
    pytest.importorskip("timm")
    coco = [f"c{i}" for i in range(80)]
    Y = (np.random.default_rng(0).random((50, 80)) < 0.1).astype(np.uint8)
    pca = count_parameters(build_model("iml_gcn", classes=coco, train_labels=Y,
                                       label_embeddings=torch.zeros(80, 80)))
    fi = count_parameters(build_model("iml_gcn", classes=coco, train_labels=Y,
                                      label_embeddings=torch.zeros(80, 2048)))
    # Table 1: IML-GCN with F_PCA 31.5M, with F_I 33.5M (TResNet-M + GCN 2048->1024->2048)
    assert round(pca["total"] / 1e6, 1) == 31.5
    assert round(fi["total"] / 1e6, 1) == 33.5
    assert pca["backbone"] == fi["backbone"]
    assert pca["head"] == 80 * 1024 + 1024 * 2048
    assert fi["head"] == 2048 * 1024 + 1024 * 2048
