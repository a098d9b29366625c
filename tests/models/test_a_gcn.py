import json
import os
import subprocess
import sys

import pytest
import torch

from helpers_features import make_features_npz
from pyg_mlic.data.features import FeaturesDataset
from pyg_mlic.engine import TrainConfig, Trainer, load_checkpoint, model_from_checkpoint, predict
from pyg_mlic.engine.trainer import make_loader
from pyg_mlic.models import ablation_tables, build_model, demo_rows, list_models
from pyg_mlic.models.a_gcn import AGCN, AUX_LOSS_NAME
from pyg_mlic.nn import sparse_correlation_loss

SMALL = dict(gcn_hidden=[16], encoder_hidden=[16], encoder_out=16)


def _features_model(C=5, F=16, **kw):
    return build_model("a_gcn", classes=[f"class_{i}" for i in range(C)], input_kind="features",
                       in_features=F, **{**SMALL, **kw})


@pytest.fixture
def feature_sets(tmp_path):
    tr = FeaturesDataset(make_features_npz(tmp_path / "tr.npz", n=160, seed=0), split="train")
    te = FeaturesDataset(make_features_npz(tmp_path / "te.npz", n=60, seed=2), split="test")
    return tr, te


def test_registered_with_demo_and_ablation_rows():
    assert "a_gcn" in list_models()
    assert demo_rows()["a_gcn"] == ("a_gcn", {})
    table = ablation_tables()["A-GCN variants (Table 1)"]
    assert {k: v[1] for k, v in table.items()} == {
        "A-GCN": {"variant": "default"},
        "A-GCN (w/o L_A)": {"variant": "default", "alpha": 0.0},
        "Cos-A (w L_A)": {"variant": "cos", "label_embeddings": "glove"},
        "FC-A (w L_A)": {"variant": "fc"},
        "Dot-A (w L_A)": {"variant": "dot"}}
    assert all(v[0] == "a_gcn" for v in table.values())


def test_paper_training_defaults():
    c = TrainConfig.for_model(AGCN)
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay) == ("sgd", 0.01, 0.9, 1e-4)
    assert (c.lr_step, c.lr_gamma, c.epochs, c.batch_size) == (30, 0.1, 65, 32)


@pytest.mark.parametrize("variant", ["default", "cos", "fc", "dot"])
def test_forward_loss_and_gradients_every_variant(variant):
    torch.manual_seed(0)
    emb = {"label_embeddings": torch.randn(5, 8)} if variant == "cos" else {}
    m = _features_model(variant=variant, alpha=0.5, **emb)
    batch = {"features": torch.randn(4, 16), "target": torch.randint(0, 2, (4, 5)).float()}
    out = m(batch)
    assert out.logits.shape == (4, 5) and out.logits.dtype == torch.float32
    adj = out.extras["adjacency"]
    assert adj.shape == (5, 5) and torch.isfinite(adj).all()
    la = sparse_correlation_loss(adj, "sum")  # the model's default (Eq. 6's L1 norm)
    assert set(out.aux_losses) == {AUX_LOSS_NAME}
    assert torch.allclose(out.aux_losses[AUX_LOSS_NAME], 0.5 * la)
    total, parts = m.loss(out, batch)
    cls = m.classification_loss(out.logits, batch["target"])
    assert torch.allclose(total, cls + 0.5 * la)
    assert parts[AUX_LOSS_NAME] == pytest.approx(0.5 * float(la.detach()))
    total.backward()
    for p in m.lg.parameters():  # cos has none
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert all(p.grad is not None for p in m.gcn.parameters())


def test_alpha_zero_drops_the_term_and_validation():
    m = _features_model(alpha=0.0)
    out = m({"features": torch.randn(2, 16)})
    assert out.aux_losses == {} and "L_A" in out.extras
    assert _features_model(alpha=2.0).alpha == 2.0  # Fig. 3's diverging value is allowed
    for bad in (-0.1, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="alpha"):
            _features_model(alpha=bad)
    with pytest.raises(ValueError, match="variant"):
        _features_model(variant="gat")
    with pytest.raises(ValueError, match="la_reduction"):
        _features_model(la_reduction="max")


def test_la_default_is_the_l1_norm_sum():
    """Eq. 6, L_A = |A_hat - I|, "an L1-norm loss": the entry-wise sum over the C^2 entries
    (the default); "mean" is the sum / C^2."""
    torch.manual_seed(0)
    m = _features_model(C=3, alpha=0.5)
    assert m.la_reduction == "sum" and m.build_kwargs["la_reduction"] == "sum"
    with torch.no_grad():
        out = m({"features": torch.randn(2, 16)})
    adj = out.extras["adjacency"]
    by_hand = sum(abs(float(adj[i, j]) - (1.0 if i == j else 0.0))
                  for i in range(3) for j in range(3))
    assert float(out.extras["L_A"]) == pytest.approx(by_hand, rel=1e-6)
    assert float(out.aux_losses[AUX_LOSS_NAME]) == pytest.approx(0.5 * by_hand, rel=1e-6)
    torch.manual_seed(0)
    mean = _features_model(C=3, alpha=0.5, la_reduction="mean")
    with torch.no_grad():
        la_mean = mean({"features": torch.randn(2, 16)}).extras["L_A"]
    assert float(la_mean) * 3 ** 2 == pytest.approx(by_hand, rel=1e-6)
    # a tiny graph by hand: A_hat = [[0.6, 0.4], [0.1, 0.9]] -> |.-I| = 0.4+0.4+0.1+0.1 = 1.0
    A = torch.tensor([[0.6, 0.4], [0.1, 0.9]])
    assert float(sparse_correlation_loss(A, "sum")) == pytest.approx(1.0)
    assert float(sparse_correlation_loss(A, "mean")) == pytest.approx(0.25)


def test_image_input_and_label_embeddings():
    E = torch.randn(3, 8)
    m = build_model("a_gcn", classes=list("abc"), backbone="small_cnn", label_embeddings=E,
                    gcn_hidden=[16], lg_hidden=4)
    out = m({"image": torch.randn(2, 3, 64, 64)})
    assert out.logits.shape == (2, 3)
    assert m.lg.lin_phi.in_features == 8 and m.lg.lin_phi.out_features == 4
    bb, head = m.parameter_groups()
    assert bb and {id(p) for p in m.lg.parameters()} <= {id(p) for p in head}
    from pyg_mlic.errors import ClassMismatchError
    with pytest.raises(ClassMismatchError):
        build_model("a_gcn", classes=list("abc"), backbone="small_cnn",
                    label_embeddings=torch.randn(4, 8))


def test_eval_cache_is_invalidated_by_parameter_changes():
    m = _features_model().eval()
    x = {"features": torch.randn(3, 16)}
    with torch.no_grad():
        a = m(x).logits
        assert m._cache is not None
        m.lg.lin_phi.weight.mul_(3.0)
        b = m(x).logits
        m.train()
        c = m(x).logits  # no cache in training mode
    assert not torch.allclose(a, b) and torch.allclose(b, c)


def test_learned_graph_views():
    m = _features_model(C=4)
    adj = m.learned_graph()
    assert adj.shape == (4, 4) and not adj.requires_grad
    data = m.graph_data()
    assert data.classes == m.classes and data.num_nodes == 4
    from pyg_mlic.graphs.label_graph import _dense_from_edges
    assert torch.allclose(_dense_from_edges(data.edge_index, data.edge_weight, 4), adj)


def test_train_save_load_reproduces_logits(feature_sets, tmp_path):
    tr, te = feature_sets
    torch.manual_seed(0)
    model = build_model("a_gcn", classes=tr.classes, input_kind="features",
                        in_features=tr.feature_dim, train_labels=tr.labels, **SMALL)
    adj0 = model.learned_graph().clone()
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.05, lr_step=None,
                      progress=False)
    m = Trainer(model, tr, None, te, cfg, out_dir=tmp_path / "run").fit()
    assert 0.0 <= m["mAP"] <= 1.0
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert all(f"train_{AUX_LOSS_NAME}" in h and "train_cls" in h for h in hist)
    assert not torch.allclose(model.learned_graph(), adj0)  # the graph was learned
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt", expect_model="a_gcn")
    loaded = model_from_checkpoint(ckpt)
    assert isinstance(loaded, AGCN) and loaded.lg.variant == "default"
    loader = make_loader(te, 32, train=False)
    a, b = predict(model, loader)["logits"], predict(loaded, loader)["logits"]
    assert torch.equal(a, b)
    assert torch.equal(model.learned_graph(), loaded.learned_graph())


def test_export_module_matches_model():
    m = _features_model().eval()
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.allclose(m.export_module()(x), m({"features": x}).logits, atol=1e-6)


def test_plot_learned_graph(tmp_path):
    from pyg_mlic.errors import ClassMismatchError
    from pyg_mlic.graphs import LabelGraph
    from pyg_mlic.viz import plot_learned_graph

    Y = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1]])
    classes = ["person", "dog", "frisbee"]
    g = LabelGraph.from_labels(Y, classes=classes)
    m = build_model("a_gcn", classes=classes, input_kind="features", in_features=4, **SMALL)
    p = plot_learned_graph(m.learned_graph(), g, classes, tmp_path / "lg.png")
    assert p.stat().st_size > 1000
    p2 = plot_learned_graph(m.learned_graph(), g.propagation(), classes, tmp_path / "lg2.png")
    assert p2.exists()
    with pytest.raises(ClassMismatchError):
        plot_learned_graph(torch.eye(2), g, classes, tmp_path / "bad.png")
    with pytest.raises(ClassMismatchError):
        plot_learned_graph(torch.eye(3), g, ["a", "b", "c"], tmp_path / "bad.png")


@pytest.mark.heavy
def test_cli_trains_a_gcn_on_features(tmp_path):
    tr = make_features_npz(tmp_path / "A.npz", n=120, seed=0)
    te = make_features_npz(tmp_path / "B.npz", n=60, seed=1)
    out = tmp_path / "D"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-m", "pyg_mlic.cli", "train", "--dataset", "features",
                        "--train-file", str(tr), "--test-file", str(te), "--model", "a_gcn",
                        "--out", str(out), "--epochs", "2", "--no-progress",
                        "--set", "variant='fc'", "alpha=0.5"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["mAP"] <= 1.0
    s = m["settings"]
    assert s["model"] == "a_gcn" and s["model_config"]["variant"] == "fc"
    assert s["model_config"]["alpha"] == 0.5
    # features: the features recipe (constant lr), the epoch chosen on held-out rows
    assert s["train_config"]["lr_step"] is None and s["train_config"]["epochs"] <= 2
    assert model_from_checkpoint(out / "last.pt").lg.variant == "fc"


def test_cos_variant_refuses_one_hot_embeddings():
    """Eq. 7 (cosine of the embeddings) has no parameter: with one-hot (pairwise orthogonal)
    embeddings the learned graph would be the identity, so the model refuses them."""
    with pytest.raises(ValueError, match="pairwise orthogonal.*identity"):
        _features_model(variant="cos")
    with pytest.raises(ValueError, match="one-hot"):
        _features_model(variant="cos", label_embeddings="onehot")
    m = _features_model(variant="cos", label_embeddings=torch.randn(5, 8))
    assert m.learned_graph().shape == (5, 5)

