"""ML-Decoder (Ridnik et al., 2021): group queries, cross-attention only, group FC pooling."""
import numpy as np
import pytest
import torch

from helpers_features import make_features_npz
from pyg_mlic.data.features import FeaturesDataset
from pyg_mlic.engine import TrainConfig, fit, model_from_checkpoint
from pyg_mlic.errors import OptionError
from pyg_mlic.losses import asymmetric_loss
from pyg_mlic.models import build_model, demo_rows, list_models
from pyg_mlic.models.ml_decoder import GroupFC, MLDecoder, default_ml_decoder_widths, group_sizes

CLASSES = [f"c{i}" for i in range(7)]
# the demo's kind of recipe: a constant rate, no EMA (the models' paper defaults, merged
# under these, have a one-cycle schedule and an EMA of 0.9997, meant for long runs)
FAST = dict(epochs=2, batch_size=16, optimizer="adam", lr=2e-3, lr_step=None, schedule="step",
            ema=None, progress=False)


def _image_model(**kw):
    return build_model("ml_decoder", classes=CLASSES, backbone="small_cnn", **kw)


def _features_model(C=5, F=16, **kw):
    return build_model("ml_decoder", classes=[f"class_{i}" for i in range(C)],
                       input_kind="features", in_features=F, encoder_hidden=[16],
                       encoder_out=16, **kw)


def test_registered_with_a_demo_row_and_paper_defaults():
    assert "ml_decoder" in list_models()
    # the demo row: ASL without focusing on the negatives (see docs/methods/ml_decoder.rst)
    assert demo_rows()["ml_decoder"] == ("ml_decoder", {"asl_gamma_neg": 0.0})
    c = TrainConfig.for_model(MLDecoder)
    assert (c.optimizer, c.lr, c.weight_decay, c.epochs, c.batch_size) == \
        ("adam", 1e-4, 1e-4, 40, 56)
    assert (c.schedule, c.ema, c.backbone_lr) == ("onecycle", 0.9997, None)
    # the paper's widths at D = 2048 (d = 768, FFN 2048), scaled below
    assert default_ml_decoder_widths(2048) == (768, 2048)
    assert default_ml_decoder_widths(128) == (48, 128)
    m = _image_model()
    assert (m.embed_dim, m.ffn_dim, m.heads, len(m.decoder)) == (48, 128, 8, 1)
    assert all(layer.self_attn is None for layer in m.decoder)  # no self-attention


def test_group_sizes():
    assert group_sizes(80) == (80, 1)            # K = min(C, 100): full decoding on COCO
    assert group_sizes(1000) == (100, 10)
    assert group_sizes(9605, 100) == (100, 97)
    assert group_sizes(7, 3) == (3, 3)           # g = 3: queries 0, 1, 2 -> 3 + 3 + 1 labels
    # C = 150, K = 100 -> g = 2: queries 75-99 would decode nothing and are not built
    assert group_sizes(150) == (75, 2)
    assert group_sizes(5, 50) == (5, 1)          # K capped at C
    with pytest.raises(ValueError, match="num_groups"):
        group_sizes(5, 0)


def test_shapes_loss_and_gradients():
    m = _image_model(num_groups=3)
    assert (m.num_groups, m.group_size) == (3, 3)
    batch = {"image": torch.randn(4, 3, 64, 64), "target": torch.randint(0, 2, (4, 7)).float()}
    out = m(batch)
    assert out.logits.shape == (4, 7) and out.extras["features"].shape == (4, 128)
    (cross,) = out.extras["cross_attention"]
    assert cross.shape == (4, 8, 3, 16)  # [B, H, K, hw] on the 4x4 map of 64-px images
    torch.testing.assert_close(cross.sum(-1), torch.ones(4, 8, 3))
    # ASL with the paper's settings is the classification loss
    total, parts = m.loss(out, batch)
    ref = asymmetric_loss(out.logits, batch["target"], 0.0, 4.0, 0.05, reduction="sum")
    torch.testing.assert_close(total, ref)
    total.backward()
    assert m.encoder.backbone.blocks[0][0].weight.grad is not None
    assert m.pool_fc.weight.grad is not None and torch.isfinite(m.pool_fc.weight.grad).all()
    f = _features_model(feature_tokens=3)
    assert f({"features": torch.randn(2, 16)}).logits.shape == (2, 5)


def test_strict_options():
    with pytest.raises(OptionError, match="num_groups"):
        _image_model(num_group=3)
    with pytest.raises(ValueError, match="queries must be one of"):
        _image_model(queries="random")
    with pytest.raises(ValueError, match="divisible"):
        _image_model(embed_dim=50)
    with pytest.raises(ValueError, match="dropout"):
        _image_model(dropout=1.0)
    with pytest.raises(ValueError, match="one query per class"):
        _image_model(num_groups=3, queries="embeddings", query_embeddings=torch.randn(7, 4))
    with pytest.raises(ValueError, match="needs query_embeddings"):
        _image_model(queries="embeddings")
    with pytest.raises(ValueError, match="only used with"):
        _image_model(query_embeddings=torch.randn(7, 4))


def test_query_types():
    fixed = _image_model()
    assert "query_embed" in dict(fixed.named_buffers())          # not trained (the paper's)
    assert "query_embed" not in dict(fixed.named_parameters())
    learned = _image_model(queries="learned")
    assert learned.query_embed.requires_grad
    E = torch.randn(7, 5)
    emb = _image_model(queries="embeddings", query_embeddings=E)
    assert torch.equal(emb.query_embed, E) and emb.query_vectors().shape == (7, 48)
    assert emb({"image": torch.randn(2, 3, 64, 64)}).logits.shape == (2, 7)


def test_queries_do_not_interact_without_self_attention():
    """A query's output depends on itself and the image only: dropping or permuting the
    other queries changes nothing."""
    m = _image_model(num_groups=3, decoder_layers=2).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        full = m.decode(x)["outputs"]                               # [B, K, d]
        q = m.query_vectors()
        alone = m.decode(x, queries=q[1:2])["outputs"]
        perm = m.decode(x, queries=q[[2, 0, 1]])["outputs"]
    torch.testing.assert_close(alone[:, 0], full[:, 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(perm, full[:, [2, 0, 1]], atol=1e-5, rtol=1e-5)


def test_group_fc_maps_query_k_to_labels_k_g_onwards():
    fc = GroupFC(num_groups=3, embed_dim=4, group_size=3, num_classes=7)
    torch.nn.init.normal_(fc.bias)
    h = torch.randn(2, 3, 4)
    out = fc(h)
    # by hand: logit kg + j = <W_k[:, j], h_k> + b
    ref = torch.stack([h[:, c // 3] @ fc.weight[c // 3, :, c % 3] for c in range(7)], 1) + fc.bias
    torch.testing.assert_close(out, ref)
    for k, labels in enumerate([[0, 1, 2], [3, 4, 5], [6]]):
        h2 = h.clone()
        h2[:, k] += 1.0
        changed = ((fc(h2) - out).abs() > 1e-6).any(0).nonzero().flatten().tolist()
        assert changed == labels
    assert fc.query_of_label().tolist() == [0, 0, 0, 1, 1, 1, 2]
    with pytest.raises(ValueError, match="cannot hold"):
        GroupFC(2, 4, 3, 7)


def test_label_graph_is_a_data_over_the_labels():
    m = _image_model(num_groups=3)
    g = m.label_graph()
    assert g.num_nodes == 7 and g.classes == CLASSES and g.kind == "ml_decoder_query_sharing"
    block = torch.block_diag(torch.ones(3, 3), torch.ones(3, 3), torch.ones(1, 1))
    assert torch.equal(g.adj, block)
    assert g.group.tolist() == [0, 0, 0, 1, 1, 1, 2] and g.membership.shape == (3, 7)
    assert g.edge_index.shape[1] == int(block.sum()) and torch.all(g.edge_weight == 1)
    assert g.x.shape == (7, 48)
    # K = C: each label its own query, nothing shared
    assert torch.equal(_image_model().label_graph().adj, torch.eye(7))
    m.train()
    ga = m.label_graph({"image": torch.randn(6, 3, 64, 64)})
    assert m.training  # restored
    assert ga.kind == "ml_decoder_co_attention" and ga.num_images == 6
    A = ga.adj
    assert A.shape == (7, 7) and torch.all((A >= 0) & (A <= 1)) and torch.allclose(A, A.t())
    assert torch.all(A[block.bool()] == 1)  # a group (and each label) with itself
    # one feature token: every query attends only to it
    f = _features_model()
    assert torch.all(f.label_graph(torch.randn(3, 16)).adj == 1)
    with pytest.raises(TypeError, match="collated batch"):
        m.label_graph([1, 2])


def test_fit_on_synthetic_scenes_and_reload(tmp_path):
    from pyg_mlic.data.synthetic import SyntheticScenes

    tr = SyntheticScenes("train", num_images=48, image_size=32)
    va = SyntheticScenes("val", num_images=16, image_size=32)
    m = fit("ml_decoder", tr, va, va, model_options=dict(backbone="small_cnn", num_groups=5),
            train_options=dict(FAST, select="best_val"), out_dir=tmp_path / "run")
    assert 0 < m["mAP"] <= 1 and m["settings"]["model_config"]["num_groups"] == 5
    s = m["settings"]
    assert s["label_embeddings"] is None  # takes none (fixed random queries)
    re = model_from_checkpoint(tmp_path / "run" / "last.pt").eval()
    x = torch.stack([va[i]["image"] for i in range(3)])
    net = re.export_module().eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), re({"image": x}).logits)


def test_fit_on_a_features_file_and_onnx_export(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from pyg_mlic.export import export_model

    tr = FeaturesDataset(make_features_npz(tmp_path / "a.npz", n=160), split="train")
    te = FeaturesDataset(make_features_npz(tmp_path / "b.npz", n=60, seed=1), split="test")
    opts = dict(encoder_hidden=[32], encoder_out=32, feature_tokens=2)
    res = fit("ml_decoder", tr, None, te, model_options=opts,
              train_options=dict(FAST, epochs=6, lr=1e-2), out_dir=tmp_path / "run")
    assert res["mAP"] > 0.6
    re = model_from_checkpoint(tmp_path / "run" / "last.pt").eval()
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

    m = _image_model(num_groups=3).eval()
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
                              model=get_model_class("ml_decoder"), backbone="small_cnn")
    m = fit("ml_decoder", tr, va, te, model_options=dict(backbone="small_cnn"),
            train_options=dict(FAST, epochs=1, batch_size=4))
    assert 0 <= m["mAP"] <= 1 and np.isfinite(m["mAP"])
