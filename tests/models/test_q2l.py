"""Query2Label (Liu et al., 2021): label queries, a transformer decoder, per-label linear
projection; its label-query self-attention as a label graph."""
import math

import numpy as np
import pytest
import torch

from helpers_features import make_features_npz
from pyg_mlic.data.features import FeaturesDataset
from pyg_mlic.engine import TrainConfig, fit, model_from_checkpoint
from pyg_mlic.errors import OptionError
from pyg_mlic.losses import asymmetric_loss
from pyg_mlic.models import build_model, demo_rows, list_models
from pyg_mlic.models.q2l import (MultiHeadAttention, Query2Label, default_q2l_widths,
                                 sine_position_embedding)

CLASSES = [f"c{i}" for i in range(6)]
# the demo's kind of recipe: a constant rate, no EMA (the models' paper defaults, merged
# under these, have a one-cycle schedule and an EMA of 0.9997, meant for long runs)
FAST = dict(epochs=2, batch_size=16, optimizer="adam", lr=2e-3, lr_step=None, schedule="step",
            ema=None, progress=False)
SMALL = dict(hidden_dim=32, heads=4)


def _image_model(**kw):
    return build_model("q2l", classes=CLASSES, backbone="small_cnn", **{**SMALL, **kw})


def test_registered_with_a_demo_row_and_paper_defaults():
    assert "q2l" in list_models() and demo_rows()["q2l"] == ("q2l", {"encoder_layers": 0})
    c = TrainConfig.for_model(Query2Label)
    assert (c.optimizer, c.lr, c.weight_decay, c.epochs) == ("adamw", 1e-4, 1e-2, 80)
    assert (c.schedule, c.ema, c.backbone_lr) == ("onecycle", 0.9997, None)
    assert default_q2l_widths(2048) == (2048, 8192)   # the authors' ResNet-101 widths
    m = build_model("q2l", classes=CLASSES, backbone="small_cnn")
    assert (m.hidden_dim, m.ffn_dim, m.heads) == (128, 512, 4)
    assert (len(m.token_encoder), len(m.decoder)) == (1, 2)
    assert isinstance(m.tokens.proj, torch.nn.Identity)   # d = D: no input projection
    assert (m.asl_gamma_pos, m.asl_gamma_neg, m.asl_clip) == (0.0, 2.0, 0.0)


def test_shapes_loss_and_attention_rows_sum_to_one():
    m = _image_model()
    batch = {"image": torch.randn(3, 3, 64, 64), "target": torch.randint(0, 2, (3, 6)).float()}
    out = m(batch)
    assert out.logits.shape == (3, 6) and out.extras["features"].shape == (3, 128)
    sa, ca = out.extras["self_attention"], out.extras["cross_attention"]
    assert [a.shape for a in sa] == [(3, 4, 6, 6)] * 2
    assert [a.shape for a in ca] == [(3, 4, 6, 16)] * 2
    for a in sa + ca:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    total, _ = m.loss(out, batch)
    ref = asymmetric_loss(out.logits, batch["target"], 0.0, 2.0, 0.0, reduction="sum")
    torch.testing.assert_close(total, ref)
    total.backward()
    assert m.query_embed.grad is not None and m.fc_weight.grad is not None
    assert m.encoder.backbone.blocks[0][0].weight.grad is not None


def test_per_label_linear_projection():
    """logit_c = <w_c, h_c> + b_c of label c's own decoded query."""
    m = _image_model().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        r = m.decode(x)
    h = r["queries"]                                          # [B, C, d]
    ref = torch.stack([h[:, c] @ m.fc_weight[c] + m.fc_bias[c] for c in range(6)], 1)
    torch.testing.assert_close(r["logits"], ref)


def test_multi_head_attention_by_hand():
    att = MultiHeadAttention(8, heads=2)
    q, k = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    out, w = att(q, k, k)
    Q = (q @ att.q_proj.weight.t() + att.q_proj.bias).view(3, 2, 4)
    K = (k @ att.k_proj.weight.t() + att.k_proj.bias).view(5, 2, 4)
    V = (k @ att.v_proj.weight.t() + att.v_proj.bias).view(5, 2, 4)
    heads = []
    for h in range(2):
        A = torch.softmax(Q[:, h] @ K[:, h].t() / math.sqrt(4), -1)
        torch.testing.assert_close(w[0, h], A)
        heads.append(A @ V[:, h])
    ref = torch.cat(heads, 1) @ att.out_proj.weight.t() + att.out_proj.bias
    torch.testing.assert_close(out[0], ref)


def test_sine_position_embedding():
    p = sine_position_embedding(2, 3, 8)
    assert p.shape == (6, 8)
    # token (y, x) = row y * w + x: its first half codes y, its second x
    torch.testing.assert_close(p[1, :4], p[0, :4])       # same row y = 0
    torch.testing.assert_close(p[3, 4:], p[0, 4:])       # same column x = 0
    assert not torch.allclose(p[0], p[4])
    u = 0.5 / 2 * 2 * math.pi
    torch.testing.assert_close(p[0, 0], torch.tensor(math.sin(u)))
    assert torch.all(sine_position_embedding(2, 2, 6)[:, 4:] == 0)   # padded: 4 does not divide 6


def test_strict_options():
    with pytest.raises(OptionError, match="decoder_layers"):
        _image_model(decoder_layer=3)
    with pytest.raises(ValueError, match="decoder_self_attention"):
        _image_model(decoder_self_attention="first")
    with pytest.raises(ValueError, match="divisible"):
        _image_model(hidden_dim=30)
    with pytest.raises(ValueError, match="position_embedding"):
        _image_model(position_embedding="learned")
    with pytest.raises(ValueError, match="input projection off"):
        _image_model(input_proj=False)          # d = 32 != D = 128
    with pytest.raises(ValueError, match="asl_reduction"):
        _image_model(asl_reduction="avg")


def test_label_graph_is_the_query_self_attention():
    m = _image_model()
    g = m.label_graph()                       # layer 1: the learned queries only
    assert g.num_nodes == 6 and g.classes == CLASSES and g.kind == "q2l_self_attention"
    assert g.layers == [0] and g.num_images == 0 and g.x.shape == (6, 32)
    sa = m.decoder[0].self_attn
    Q0 = m.query_embed
    Qh = (Q0 @ sa.q_proj.weight.t() + sa.q_proj.bias).view(6, 4, 8)
    Kh = (Q0 @ sa.k_proj.weight.t() + sa.k_proj.bias).view(6, 4, 8)
    ref = torch.stack([torch.softmax(Qh[:, h] @ Kh[:, h].t() / math.sqrt(8), -1)
                       for h in range(4)]).mean(0)
    torch.testing.assert_close(g.adj, ref.detach())
    torch.testing.assert_close(g.adj.sum(1), torch.ones(6))
    # edge j -> i carries A_ij
    e = g.edge_index
    torch.testing.assert_close(g.edge_weight, g.adj[e[1], e[0]])
    # the first layer's self-attention is the same for every image, the second's is not
    m.eval()
    with torch.no_grad():
        a = m.decode(torch.randn(2, 3, 64, 64))["self_attention"]
    torch.testing.assert_close(a[0][0], a[0][1])
    assert not torch.allclose(a[1][0], a[1][1])
    m.train()
    gb = m.label_graph({"image": torch.randn(4, 3, 64, 64)})
    assert m.training and gb.layers == [0, 1] and gb.num_images == 4
    torch.testing.assert_close(gb.adj.sum(1), torch.ones(6))
    skip = _image_model(decoder_self_attention="skip_first")
    assert skip.decoder[0].self_attn is None and skip.decoder[1].self_attn is not None
    with pytest.raises(ValueError, match="pass a batch"):
        skip.label_graph()
    assert skip.label_graph(torch.randn(2, 3, 64, 64)).layers == [1]
    with pytest.raises(ValueError, match="no label graph"):
        _image_model(decoder_self_attention="none").label_graph()


def test_fit_on_synthetic_scenes_and_reload(tmp_path):
    from pyg_mlic.data.synthetic import SyntheticScenes

    tr = SyntheticScenes("train", num_images=48, image_size=32)
    va = SyntheticScenes("val", num_images=16, image_size=32)
    m = fit("q2l", tr, va, va, model_options=dict(backbone="small_cnn", **SMALL),
            train_options=dict(FAST, select="best_val"), out_dir=tmp_path / "run")
    assert 0 < m["mAP"] <= 1 and m["settings"]["model_config"]["hidden_dim"] == 32
    re = model_from_checkpoint(tmp_path / "run" / "last.pt").eval()
    x = torch.stack([va[i]["image"] for i in range(3)])
    with torch.no_grad():
        torch.testing.assert_close(re.export_module().eval()(x), re({"image": x}).logits)


def test_fit_on_a_features_file_and_onnx_export(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from pyg_mlic.export import export_model

    tr = FeaturesDataset(make_features_npz(tmp_path / "a.npz", n=160), split="train")
    te = FeaturesDataset(make_features_npz(tmp_path / "b.npz", n=60, seed=1), split="test")
    opts = dict(encoder_hidden=[32], encoder_out=32, feature_tokens=2, **SMALL)
    res = fit("q2l", tr, None, te, model_options=opts,
              train_options=dict(FAST, epochs=6, lr=1e-2), out_dir=tmp_path / "run")
    assert res["mAP"] > 0.6
    re = model_from_checkpoint(tmp_path / "run" / "last.pt").eval()
    assert re.label_graph(torch.zeros(2, 16)).num_nodes == 5
    x = torch.from_numpy(np.load(tmp_path / "b.npz")["features"][:9])
    with torch.no_grad():
        ref = re({"features": x}).logits
    path = export_model(re, tmp_path / "m.onnx", "onnx")
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-4, rtol=1e-4)


def test_image_model_exports_to_onnx(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from pyg_mlic.export import export_model

    m = _image_model().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m({"image": x}).logits
    path = export_model(m, tmp_path / "img.onnx", "onnx", image_size=64)
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], ref.numpy(),
                               atol=1e-4, rtol=1e-4)


def test_fit_on_coco8_images(data_dir, tmp_path):
    from pyg_mlic.data.factory import build_splits
    from pyg_mlic.models import get_model_class

    root = data_dir / "images" / "coco8"
    if not (root / "instances_train.json").is_file():
        pytest.skip(f"coco8 not found at {root}")
    tr, va, te = build_splits("coco", root=str(root), train_file="instances_train.json",
                              test_file="instances_val.json", image_size=64,
                              model=get_model_class("q2l"), backbone="small_cnn")
    m = fit("q2l", tr, va, te, model_options=dict(backbone="small_cnn", **SMALL),
            train_options=dict(FAST, epochs=1, batch_size=4))
    assert 0 <= m["mAP"] <= 1 and np.isfinite(m["mAP"])
