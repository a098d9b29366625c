"""IA-GCN on real synthetic scenes (boxes -> RoIAlign ROIs) and on features + ROIs."""
import json

import numpy as np
import pytest
import torch

from pyg_mlic.data import SyntheticScenes
from pyg_mlic.data.base import collate
from pyg_mlic.engine import TrainConfig, Trainer, load_checkpoint, model_from_checkpoint, predict
from pyg_mlic.engine.trainer import make_loader
from pyg_mlic.graphs import LabelGraph
from pyg_mlic.models import ablation_tables, build_model, demo_rows, list_models
from pyg_mlic.models.ia_gcn import (AUX_LOSS_NAME, IAGCN, REGION_CONVS, default_gcn_hidden,
                                    default_region_hidden)
from pyg_mlic.nn.instance_aware_label_conv import image_dependent_propagation

SMALL = dict(backbone="small_cnn", gcn_hidden=[16, 24], region_hidden=[8, 12, 16, 20])


@pytest.fixture(scope="module")
def scenes():
    tr = SyntheticScenes("train", num_images=48, image_size=48, cache=True)
    te = SyntheticScenes("test", num_images=16, image_size=48, cache=True)
    return tr, te


def _model(tr, **kw):
    torch.manual_seed(0)
    return build_model("ia_gcn", classes=tr.classes, train_labels=tr.labels, **{**SMALL, **kw})


def test_registration_defaults_and_ablation_rows():
    assert "ia_gcn" in list_models() and demo_rows()["ia_gcn"] == ("ia_gcn", {})
    assert not any(k.startswith("ia_gcn (") for k in demo_rows())     # the defaults train
    t = ablation_tables()["IA-GCN modules (Table 3)"]
    off = dict(id_lcm=False, var_inf=False, com_sco=False)
    assert {k: v[1] for k, v in t.items()} == {                        # cumulative, Table 3
        "Base": off, "Base+ID_LCM": {"var_inf": False, "com_sco": False},
        "Base+ID_LCM+Var_Inf": {"com_sco": False}, "Base+ID_LCM+Var_Inf+Com_Sco": {}}
    assert list(t) == ["Base", "Base+ID_LCM", "Base+ID_LCM+Var_Inf",
                       "Base+ID_LCM+Var_Inf+Com_Sco"]
    eq10 = ablation_tables()["IA-GCN region branch, readings of Eq. 10"]
    assert sorted(v[1]["region_conv"] for v in eq10.values()) == sorted(REGION_CONVS)
    c = TrainConfig.for_model(IAGCN)
    assert (c.optimizer, c.lr, c.backbone_lr, c.momentum, c.weight_decay) == \
        ("sgd", 0.01, 0.001, 0.9, 1e-4)
    assert (c.lr_step, c.lr_gamma, c.epochs) == (30, 0.1, 120)


def test_default_widths_scale_with_d_and_are_the_papers_at_2048(scenes):
    tr, _ = scenes
    assert default_gcn_hidden(2048) == [512, 1024]                      # Sec. 4.3
    assert default_region_hidden(2048) == [256, 512, 1024, 2048]
    assert default_gcn_hidden(128) == [32, 64] and default_region_hidden(128) == [16, 32, 64, 128]
    assert default_gcn_hidden(2) == [1, 1]                              # never 0
    m = build_model("ia_gcn", classes=tr.classes, train_labels=tr.labels, backbone="small_cnn",
                    label_embeddings=torch.randn(15, 300))              # D = 128
    assert [(c.in_channels, c.out_channels) for c in m.gcn] == [(300, 32), (32, 64), (64, 128)]
    assert [c.out_channels for c in m.region_layers] == [16, 32, 64, 128]
    assert m.region_layers[0].in_channels == 40                        # N ROI slots
    assert m.region_conv == "label_nodes" and m.fusion_weight == 0.8
    assert m.roi_in_features == 128 and m.max_instances == 40
    assert isinstance(m.act, torch.nn.ReLU)
    # D = 2048 (ResNet-101's): the paper's widths exactly
    Y = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]], np.uint8)
    big = build_model("ia_gcn", classes=list("abcd"), train_labels=Y, input_kind="features",
                      in_features=8, encoder_hidden=[], encoder_out=2048, roi_feature_dim=6,
                      label_embeddings=torch.randn(4, 300), region_conv="roi_graph")
    assert [(c.in_channels, c.out_channels) for c in big.gcn] == [(300, 512), (512, 1024),
                                                                  (1024, 2048)]
    assert [lin.out_features for lin in big.region_layers] == [256, 512, 1024, 2048]
    assert big.build_kwargs["gcn_hidden"] == [512, 1024]              # recorded as resolved


def test_region_layers_have_he_initialisation(scenes):
    tr, _ = scenes
    for conv in REGION_CONVS:
        m = build_model("ia_gcn", classes=tr.classes, train_labels=tr.labels,
                        backbone="small_cnn", region_conv=conv)
        for layer in m.region_layers:
            w = getattr(layer, "lin", layer).weight
            fan_in = w.size(1)
            assert w.abs().max() <= (6 / fan_in) ** 0.5 + 1e-6           # kaiming_uniform
            assert abs(float(w.detach().std()) / (2 / fan_in) ** 0.5 - 1) < 0.25, conv


def test_forward_matches_the_equations(scenes):
    tr, _ = scenes
    m = _model(tr).eval()
    batch = collate([tr[i] for i in range(4)])
    with torch.no_grad():
        out = m(batch)
        r = m._read(batch)
        v = m.var(r.features, r.mask)
        S = torch.sigmoid(m.f_cnn(v.x)) * r.mask[..., None]
        a = S.max(1).values
        P = image_dependent_propagation(a, LabelGraph.from_labels(
            tr.labels, classes=tr.classes).propagation())
        h = m.label_embeddings
        Ms = []
        for b in range(4):
            hb = h
            for i, conv in enumerate(m.gcn):
                hb = P[b] @ hb @ conv.lin.weight.t()
                hb = torch.relu(hb) if i < 2 else hb
            Ms.append(hb)
        y_w = torch.stack([Ms[b] @ r.image_features[b] for b in range(4)])
    assert out.logits.shape == (4, 15)
    torch.testing.assert_close(out.extras["global_logits"], y_w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.extras["image_scores"], a)
    torch.testing.assert_close(out.logits, 0.8 * y_w + 0.2 * out.extras["region_logits"],
                               atol=1e-4, rtol=1e-4)
    assert set(out.aux_losses) == {AUX_LOSS_NAME}
    torch.testing.assert_close(out.aux_losses[AUX_LOSS_NAME], v.kl)


@pytest.mark.parametrize("region_conv", REGION_CONVS)
def test_gradients_reach_every_module(scenes, region_conv):
    tr, _ = scenes
    m = _model(tr, region_conv=region_conv).train()
    batch = collate([tr[i] for i in range(4)])
    out = m(batch)
    total, parts = m.loss(out, batch)
    assert set(parts) == {"cls", AUX_LOSS_NAME}
    total.backward()
    region = (("region_layers.0.lin.weight", "region_layers.3.lin.weight", "region_bias")
              if region_conv == "label_nodes" else ("region_layers.0.weight",))
    for name in ("var.w_mu.weight", "var.w_sigma.weight", "f_cnn.0.weight", "gcn.0.lin.weight",
                 "region_fc.weight", *region):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in m.encoder.backbone.parameters())


def test_kl_is_per_image_and_trains_the_variational_maps_not_the_backbone(scenes):
    tr, _ = scenes
    batch = collate([tr[i] for i in range(4)])
    m = _model(tr, kl_weight=0.5).train()
    out = m(batch)
    r = m._read(batch)
    n = r.mask.sum(1)
    assert len(set(n.tolist())) > 1                         # images with different ROI counts
    v = m.var(r.features, r.mask)
    per_image = torch.stack([0.5 * (v.mu[b, :k] ** 2 + v.logvar[b, :k].exp() - 1
                                    - v.logvar[b, :k]).mean() for b, k in enumerate(n)])
    torch.testing.assert_close(out.aux_losses[AUX_LOSS_NAME], 0.5 * per_image.mean())
    bb = [p for p in m.encoder.backbone.parameters()]
    g = torch.autograd.grad(out.aux_losses[AUX_LOSS_NAME], bb + [m.var.w_mu.weight],
                            allow_unused=True)
    assert all(x is None or not x.abs().any() for x in g[:-1])     # KL -> not the backbone
    assert g[-1].abs().sum() > 0                                   # KL -> w_mu
    full = _model(tr, kl_weight=0.5, kl_feature_grad=True).train()
    g = torch.autograd.grad(full(batch).aux_losses[AUX_LOSS_NAME],
                            list(full.encoder.backbone.parameters()), allow_unused=True)
    assert any(x is not None and x.abs().sum() > 0 for x in g)      # the option restores it


def test_label_nodes_branch_is_eq10_as_printed(scenes):
    tr, _ = scenes
    m = _model(tr, region_conv="label_nodes", max_instances=6).eval()
    batch = collate([tr[i] for i in range(3)])
    with torch.no_grad():
        out = m(batch)
        S, a = out.extras["roi_scores"], out.extras["image_scores"]
        P = image_dependent_propagation(a, LabelGraph.from_labels(
            tr.labels, classes=tr.classes).propagation())
        ref = []
        for b in range(3):
            h = torch.zeros(15, 6)
            h[:, :S.size(1)] = S[b].t()                        # H0 = (A^w_I)^T, N = 6 slots
            for conv in m.region_layers:
                h = torch.relu(P[b] @ h @ conv.lin.weight.t())  # ReLU(Â_F H W)
            ref.append(h @ m.region_fc.weight[0] + m.region_bias)
    torch.testing.assert_close(out.extras["region_logits"], torch.stack(ref),
                               atol=1e-5, rtol=1e-4)


def test_roi_graph_branch_is_permutation_invariant(scenes):
    tr, _ = scenes
    m = _model(tr, region_conv="roi_graph").eval()
    batch = collate([tr[i] for i in range(3)])
    perm = dict(batch, boxes=[b.flip(0) for b in batch["boxes"]])
    with torch.no_grad():
        torch.testing.assert_close(m(batch).logits, m(perm).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("region_conv", REGION_CONVS)
def test_all_padding_image_gives_finite_logits_and_falls_back_to_as(scenes, region_conv):
    tr, _ = scenes
    m = _model(tr, region_conv=region_conv).eval()
    batch = collate([tr[i] for i in range(3)])
    batch["boxes"] = [torch.zeros(0, 4), batch["boxes"][1], torch.zeros(0, 4)]
    with torch.no_grad():
        out = m(batch)
        base = _model(tr, id_lcm=False, region_conv=region_conv).eval()
        base.load_state_dict(m.state_dict())
        ref = base(batch)
    assert torch.isfinite(out.logits).all()
    assert (out.extras["image_scores"][0] == 0).all()
    # no ROI: the statistical graph (id_lcm off) and the FC bias as region score
    torch.testing.assert_close(out.extras["global_logits"][0], ref.extras["global_logits"][0],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.extras["region_logits"][0],
                               m.region_bias if region_conv == "label_nodes" else m.region_fc.bias)
    batch["boxes"] = [torch.zeros(0, 4)] * 3
    m.train()
    out = m(batch)
    assert torch.isfinite(out.logits).all() and float(out.aux_losses[AUX_LOSS_NAME].detach()) == 0


def test_eval_is_deterministic_and_training_samples(scenes):
    tr, _ = scenes
    m = _model(tr)
    batch = collate([tr[i] for i in range(4)])
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(batch).logits, m(batch).logits)
    m.train()
    with torch.no_grad():
        assert not torch.equal(m(batch).logits, m(batch).logits)      # z is sampled


def test_switches(scenes):
    tr, _ = scenes
    batch = collate([tr[i] for i in range(2)])
    base = _model(tr, id_lcm=False, var_inf=False, com_sco=False)
    assert not hasattr(base, "f_cnn") and not hasattr(base, "region_fc")
    out = base(dict(batch, boxes=None))                             # no ROIs needed
    assert out.aux_losses == {} and out.logits.shape == (2, 15)
    no_var = _model(tr, var_inf=False)
    assert no_var.var is None and no_var(batch).aux_losses == {}
    no_com = _model(tr, com_sco=False)
    o = no_com(batch)
    assert torch.equal(o.logits, o.extras["global_logits"]) and "region_logits" not in o.extras
    assert _model(tr, kl_weight=0.0)(batch).aux_losses == {}
    for bad in (dict(fusion_weight=1.5), dict(kl_weight=-1.0), dict(region_conv="gat"),
                dict(rois="rpn"), dict(max_instances=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            _model(tr, **bad)


def test_features_input_needs_batch_rois():
    classes = list("abcd")
    Y = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 1, 0]], np.uint8)
    kw = dict(classes=classes, train_labels=Y, input_kind="features", in_features=10,
              encoder_hidden=[], encoder_out=12, gcn_hidden=[8], region_hidden=[8, 8])
    with pytest.raises(ValueError, match="roi_feature_dim"):
        build_model("ia_gcn", **kw)
    with pytest.raises(ValueError, match="input_kind='image'"):
        build_model("ia_gcn", rois="boxes", roi_in_features=6, **kw)
    m = build_model("ia_gcn", roi_feature_dim=6, **kw)              # as the CLI passes it
    assert m.roi_in_features == 6
    mask = torch.tensor([[True, True, False], [False, False, False]])
    batch = {"features": torch.randn(2, 10), "roi_features": torch.randn(2, 3, 6) * mask[..., None],
             "roi_mask": mask, "roi_boxes": torch.rand(2, 3, 4) * 10,
             "roi_image_size": torch.tensor([[20, 30], [20, 30]])}
    out = m(batch)
    assert out.logits.shape == (2, 4) and torch.isfinite(out.logits).all()
    with pytest.raises(ValueError, match="RegionDataset"):
        m({"features": torch.randn(2, 10)})
    with pytest.raises(ValueError, match="roi_in_features=5"):
        m(dict(batch, roi_features=torch.randn(2, 3, 5)))


@pytest.mark.filterwarnings("ignore::UserWarning:pyg_mlic.engine.trainer")
def test_train_on_scenes_loss_decreases_and_checkpoint_round_trips(scenes, tmp_path):
    tr, te = scenes
    model = _model(tr)
    cfg = TrainConfig(epochs=4, batch_size=16, optimizer="adam", lr=3e-3, lr_step=None,
                      progress=False)
    res = Trainer(model, tr, None, te, cfg, out_dir=tmp_path / "run").fit()
    assert 0.0 <= res["mAP"] <= 1.0
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert all(f"train_{AUX_LOSS_NAME}" in h and "train_cls" in h for h in hist)
    assert hist[-1]["train_cls"] < hist[0]["train_cls"]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt", expect_model="ia_gcn")
    loaded = model_from_checkpoint(ckpt)
    assert isinstance(loaded, IAGCN) and loaded.roi_in_features == 128
    assert torch.equal(loaded.edge_weight, model.edge_weight)
    loader = make_loader(te, 16, train=False)
    torch.testing.assert_close(predict(model, loader)["logits"], predict(loaded, loader)["logits"])


def test_global_logits_equal_the_explicit_classifiers(scenes):
    tr, _ = scenes
    from pyg_mlic.nn.instance_aware_label_conv import instance_aware_scaling

    for hidden in ([16, 24], []):
        m = _model(tr, gcn_hidden=hidden)
        x = torch.randn(3, 128)
        s = instance_aware_scaling(torch.rand(3, 15), m.edge_index, m.edge_weight, 15)
        M = m.classifiers(s)
        assert M.shape == (3, 15, 128)
        torch.testing.assert_close(m.global_logits(x, s), torch.einsum("bcd,bd->bc", M, x),
                                   atol=1e-4, rtol=1e-4)


def test_training_forward_runs_through_the_layers_message_passing(scenes):
    tr, _ = scenes
    m = _model(tr).train()
    batch = collate([tr[i] for i in range(2)])
    calls = []
    for i, conv in enumerate(m.gcn):
        conv.register_message_and_aggregate_forward_hook(
            lambda mod, inputs, out, i=i: calls.append((i, tuple(out.shape))))
    for i, conv in enumerate(m.region_layers):
        conv.register_message_and_aggregate_forward_hook(
            lambda mod, inputs, out, i=i: calls.append((f"r{i}", tuple(out.shape))))
    out = m(batch)
    total, _ = m.loss(out, batch)
    total.backward()
    # the first two layers (materialised states), then the last layer's propagation on
    # the logits signal (global branch), then the region GCN's four layers over the label
    # nodes (label_nodes), all fused over adj_t
    assert [c[0] for c in calls] == [0, 1, 0, "r0", "r1", "r2", "r3"]
    assert calls[2][1] == (2, 15, 1) and calls[1][1] == (2, 15, 16)   # 16 -> 24: A_F first
    assert calls[3][1] == (2, 15, 8)                                  # W_I (N = 40 -> 8) first
    # roi_graph: the region branch propagates the ROI scores with the label GCN's operator
    m = _model(tr, region_conv="roi_graph").train()
    calls.clear()
    for i, conv in enumerate(m.gcn):
        conv.register_message_and_aggregate_forward_hook(
            lambda mod, inputs, out, i=i: calls.append((i, tuple(out.shape))))
    m(batch)
    assert [c[0] for c in calls] == [0, 1, 0, 0]
