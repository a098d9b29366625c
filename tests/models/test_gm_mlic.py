"""GM-MLIC on real synthetic scenes (boxes -> RoIAlign ROIs): pooling, loss, ablations,
training and checkpoints."""
import json
import math

import pytest
import torch

from pyg_mlic.data import SyntheticScenes
from pyg_mlic.data.base import collate
from pyg_mlic.engine import TrainConfig, Trainer, load_checkpoint, model_from_checkpoint, predict
from pyg_mlic.engine.trainer import make_loader
from pyg_mlic.graphs import LabelGraph
from pyg_mlic.models import ablation_tables, build_model, demo_rows, list_models
from pyg_mlic.models.gm_mlic import GMMLIC, cross_instance_max, default_gnb_widths, prior_logits

SMALL = dict(backbone="small_cnn", encoder_channels=16, conv_channels=[16, 8], k=3)


@pytest.fixture(scope="module")
def scenes():
    tr = SyntheticScenes("train", num_images=48, image_size=48, cache=True)
    te = SyntheticScenes("test", num_images=16, image_size=48, cache=True)
    return tr, te


def _model(tr, **kw):
    torch.manual_seed(0)
    return build_model("gm_mlic", classes=tr.classes, train_labels=tr.labels, **{**SMALL, **kw})


def test_registration_defaults_and_ablation_rows(scenes):
    tr, _ = scenes
    assert "gm_mlic" in list_models() and demo_rows()["gm_mlic"] == ("gm_mlic", {})
    assert not any(k.startswith("gm_mlic (") for k in demo_rows())   # the defaults train
    t = ablation_tables()["GM-MLIC ablations (Table 4)"]
    assert {k: v[1] for k, v in t.items()} == {
        "Our w/o G_l": {"use_label_graph": False}, "Our w/o G_o": {"use_instance_graph": False},
        "Our w/o ILM edges": {"use_matching_edges": False}, "Our GM-MLIC": {}}
    c = TrainConfig.for_model(GMMLIC)
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.lr_step, c.lr_gamma) == \
        ("sgd", 0.01, 0.9, 1e-4, 30, 0.1)
    E = torch.randn(15, 300)
    m = build_model("gm_mlic", classes=tr.classes, train_labels=tr.labels,
                    backbone="small_cnn", label_embeddings=E)
    assert m.max_instances == 35 and m.beta == 0.4 and m.loss_reduction == "mean"
    assert m.gnb.label_channels == 300 and m.roi_in_features == 128
    assert m.label_edge_index.shape == (2, 15 * 14)
    # widths scale with D_r (128 here), the paper's at D_r = 2048
    assert default_gnb_widths(2048) == (512, [512, 256])
    assert (m.gnb.encoder_channels, m.gnb.conv_channels) == default_gnb_widths(128) \
        == (64, [64, 32])                                          # the floor
    assert default_gnb_widths(1024) == (256, [256, 128])
    assert default_gnb_widths(256) == default_gnb_widths(8) == (64, [64, 32])
    assert m.build_kwargs["encoder_channels"] == 64 and m.build_kwargs["conv_channels"] == [64, 32]
    paper = _model(tr, conv_channels=[512, 256], encoder_channels=None)
    assert (paper.gnb.encoder_channels, paper.gnb.conv_channels) == (512, [512, 256])
    # inputs at the scale the block's initialisation assumes: label embeddings scaled to
    # unit mean square (the recorded embeddings are the given ones), LayerNorm on ROIs
    torch.testing.assert_close(m.label_embeddings, E / E.pow(2).mean().sqrt())
    assert torch.equal(m.build_kwargs["label_embeddings"], E)
    assert float(_model(tr).label_embeddings.pow(2).mean()) == pytest.approx(1.0)  # one-hot
    assert isinstance(m.roi_norm, torch.nn.LayerNorm)
    raw = build_model("gm_mlic", classes=tr.classes, train_labels=tr.labels, backbone="small_cnn",
                      label_embeddings=E, label_norm=False, roi_norm=False)
    assert torch.equal(raw.label_embeddings, E) and raw.roi_norm is None
    assert GMMLIC.default_region_options == {"mode": "detections"}


def test_cross_instance_max_ignores_padding_and_handles_empty_images():
    z = torch.tensor([[[0.0, 5.0], [2.0, -1.0], [9.0, 9.0]],
                      [[-3.0, 1.0], [7.0, 7.0], [7.0, 7.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    empty = torch.tensor([0.25, -0.5])
    out = cross_instance_max(z, mask, empty)
    assert out.tolist() == [[2.0, 5.0], [0.25, -0.5]]            # the 9s are padding
    # p = max_j sigmoid(z_j) = sigmoid(max_j z_j) (Eq. 14)
    torch.testing.assert_close(torch.sigmoid(out[0]), torch.sigmoid(z[0, :2]).max(0).values)
    z.requires_grad_(True)
    e = empty.clone().requires_grad_(True)
    cross_instance_max(z, mask, e).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad[0, 2].abs().sum() == 0
    assert e.grad.tolist() == [1.0, 1.0]


def test_loss_weights_match_eq15_by_hand(scenes):
    tr, _ = scenes
    m = _model(tr)
    r = torch.tensor(tr.labels, dtype=torch.float32).mean(0)
    torch.testing.assert_close(m.pos_ratio, r)
    logits = torch.randn(4, 15)
    y = torch.randint(0, 2, (4, 15)).float()
    mask = torch.rand(4, 15) > 0.2
    loss = m.classification_loss(logits, y, mask)
    total, n = 0.0, 0
    for i in range(4):
        for c in range(15):
            if not mask[i, c]:
                continue
            p = 1 / (1 + math.exp(-float(logits[i, c])))
            w = math.exp(0.4 * (1 - float(r[c]))) if y[i, c] else math.exp(0.4 * float(r[c]))
            yy = float(y[i, c])
            total += -w * (yy * math.log(p) + (1 - yy) * math.log(1 - p))
            n += 1
    assert float(loss) == pytest.approx(total / n, rel=1e-5)
    plain = _model(tr, beta=0.0).classification_loss(logits, y, mask)
    torch.testing.assert_close(plain, torch.nn.functional.binary_cross_entropy_with_logits(
        logits[mask], y[mask]))
    # Eq. 15 as printed: the sum
    summed = _model(tr, loss_reduction="sum").classification_loss(logits, y, mask)
    assert float(summed) == pytest.approx(total, rel=1e-5)
    with pytest.raises(ValueError, match="loss_reduction"):
        _model(tr, loss_reduction="max")


def test_prior_logits_minimise_eq15_and_initialise_the_bias(scenes):
    tr, _ = scenes
    m = _model(tr)
    y = torch.as_tensor(tr.labels).float()
    z = prior_logits(m.pos_ratio, 0.4).clone().requires_grad_(True)
    loss = m.classification_loss(z.expand_as(y), y)
    loss.backward()
    assert z.grad.abs().max() < 1e-6                   # the constant optimum of Eq. 15
    r = m.pos_ratio
    torch.testing.assert_close(prior_logits(r, 0.0), torch.log(r / (1 - r)))
    torch.testing.assert_close(m.label_bias.detach(), prior_logits(r, 0.4))
    torch.testing.assert_close(m.empty_logits.detach(), prior_logits(r, 0.4))
    assert (_model(tr, class_prior=False).label_bias == 0).all()
    no_ratio = build_model("gm_mlic", classes=tr.classes, backbone="small_cnn", beta=0.0)
    assert (no_ratio.label_bias == 0).all()             # no labels: no prior to start from


def test_forward_equals_pooled_reference_and_permutation_invariance(scenes):
    tr, _ = scenes
    m = _model(tr).eval()
    batch = collate([tr[i] for i in range(4)])
    with torch.no_grad():
        out = m(batch)
        z, mask = out.extras["matching_logits"], out.extras["roi_mask"]
        assert out.logits.shape == (4, 15) and torch.isfinite(out.logits).all()
        assert mask.sum(1).tolist() == [len(b) for b in batch["boxes"]]
        for i in range(4):
            torch.testing.assert_close(out.logits[i], z[i][mask[i]].max(0).values)
        # the per-label bias is part of the matching logits (S = sigmoid(Z))
        m.label_bias.add_(torch.arange(15.0))
        torch.testing.assert_close(m(batch).extras["matching_logits"], z + torch.arange(15.0))
        m.label_bias.sub_(torch.arange(15.0))
        # the same ROIs in another order give the same prediction
        perm = [list(reversed(range(len(b)))) for b in batch["boxes"]]
        pb = dict(batch, boxes=[b[p] for b, p in zip(batch["boxes"], perm)])
        torch.testing.assert_close(m(pb).logits, out.logits, atol=1e-5, rtol=1e-5)


def test_zero_instances_give_finite_logits_and_gradients(scenes):
    tr, _ = scenes
    m = _model(tr)
    batch = collate([tr[i] for i in range(3)])
    batch["boxes"] = [torch.zeros(0, 4), batch["boxes"][1], torch.zeros(0, 4)]
    out = m(batch)
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.logits[0], m.empty_logits.detach())
    loss, _ = m.loss(out, batch)
    loss.backward()
    assert torch.isfinite(loss) and m.empty_logits.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    batch["boxes"] = [torch.zeros(0, 4)] * 3                       # no instance at all
    assert torch.isfinite(m(batch).logits).all()


@pytest.mark.parametrize("flag", ["use_label_graph", "use_instance_graph",
                                  "use_matching_edges"])
def test_ablations_run_and_differ(scenes, flag):
    tr, _ = scenes
    batch = collate([tr[i] for i in range(2)])
    m = _model(tr, **{flag: False})
    out = m(batch)
    assert out.logits.shape == (2, 15) and torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert all(p.grad is not None for p in m.gnb.parameters())    # no dead parameters
    assert getattr(m.gnb, flag) is False


def test_label_graph_support_and_validation(scenes):
    tr, _ = scenes
    lg = LabelGraph.from_labels(tr.labels, classes=tr.classes)
    m = _model(tr, label_graph=lg)
    assert 0 < m.label_edge_index.size(1) < 15 * 14
    with pytest.raises(ValueError, match="train_labels"):
        build_model("gm_mlic", classes=tr.classes, backbone="small_cnn")
    assert build_model("gm_mlic", classes=tr.classes, backbone="small_cnn", beta=0.0).beta == 0
    for bad in (dict(beta=-1.0), dict(rois="x"), dict(max_instances=0), dict(k=0)):
        with pytest.raises(ValueError):
            _model(tr, **bad)
    with pytest.raises(ValueError, match="rois='boxes'"):
        _model(tr, input_kind="features", in_features=8, rois="boxes")


def test_train_on_scenes_loss_decreases_and_checkpoint_round_trips(scenes, tmp_path):
    tr, te = scenes
    model = _model(tr)
    cfg = TrainConfig(epochs=4, batch_size=16, optimizer="adam", lr=3e-3, lr_step=None,
                      progress=False)
    res = Trainer(model, tr, None, te, cfg, out_dir=tmp_path / "run").fit()
    assert 0.0 <= res["mAP"] <= 1.0
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert hist[-1]["train_cls"] < hist[0]["train_cls"]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt", expect_model="gm_mlic")
    loaded = model_from_checkpoint(ckpt)
    assert isinstance(loaded, GMMLIC) and loaded.roi_in_features == 128
    assert torch.equal(loaded.pos_ratio, model.pos_ratio)
    assert torch.equal(loaded.label_edge_index, model.label_edge_index)
    loader = make_loader(te, 16, train=False)
    torch.testing.assert_close(predict(model, loader)["logits"], predict(loaded, loader)["logits"])


def test_training_forward_runs_through_the_layers_message_passing(scenes):
    tr, _ = scenes
    m = _model(tr).train()
    batch = collate([tr[i] for i in range(2)])
    fused, edges = [], []
    for nc in m.gnb.node_convs:
        nc.register_message_and_aggregate_forward_hook(lambda *a: fused.append(1))
    for ec in m.gnb.edge_convs:
        ec.register_edge_update_forward_hook(lambda *a: edges.append(1))
    out = m(batch)
    m.loss(out, batch)[0].backward()
    assert len(fused) == 4 and len(edges) == 4          # 2 modules: matching both ways; edges


def _region_batch(scenes_tr, n=3, labels=None):
    from pyg_mlic.detection import GroundTruthRegionExtractor, RegionDataset

    ex = GroundTruthRegionExtractor("small_cnn", image_size=48, max_instances=6)
    rd = RegionDataset(scenes_tr, ex, cache=False)
    batch = collate([rd[i] for i in range(n)])
    if labels is not None:
        batch["roi_labels"] = torch.full_like(batch["roi_labels"], labels)
    return rd, batch


def test_precomputed_rois_build_and_run_no_image_encoder(scenes):
    tr, _ = scenes
    rd, batch = _region_batch(tr)
    m = _model(tr, roi_feature_dim=rd.roi_feature_dim)          # what a RegionDataset gives
    assert m.reads_precomputed and m.encoder is None and m.roi_in_features == 128
    assert m.parameter_groups()[0] == []                       # no backbone parameters
    out = m(batch)
    assert "features" not in out.extras and torch.isfinite(out.logits).all()
    m.loss(out, batch)[0].backward()
    # nothing without a gradient (DDP would need find_unused_parameters otherwise)
    assert [n for n, p in m.named_parameters() if p.grad is None] == []
    assert _model(tr, rois="batch", roi_in_features=7).encoder is None
    rebuilt = build_model("gm_mlic", **m.build_kwargs)         # what a checkpoint rebuilds
    rebuilt.load_state_dict(m.state_dict())
    assert rebuilt.encoder is None and m.build_kwargs["rois"] == "batch"
    torch.testing.assert_close(rebuilt(batch).logits, out.logits)
    # image input without precomputed ROIs: the error says how to get them
    with pytest.raises(ValueError, match="RegionDataset"):
        m(collate([tr[0]]))


def test_region_boxes_train_the_backbone_at_the_detector_boxes(scenes):
    tr, _ = scenes
    rd, batch = _region_batch(tr)
    m = _model(tr, rois="region_boxes", roi_feature_dim=rd.roi_feature_dim + 5)
    assert m.encoder is not None and m.roi_in_features == 128    # the backbone's D
    out = m(batch)
    assert out.extras["features"].shape == (3, 128)
    m.loss(out, batch)[0].backward()
    assert all(p.grad is not None for p in m.encoder.backbone.parameters())
    with pytest.raises(ValueError, match="region_boxes"):
        _model(tr, rois="region_boxes", input_kind="features", in_features=8)


def test_warns_once_when_every_roi_label_is_minus_one(scenes):
    import warnings

    tr, _ = scenes
    rd, batch = _region_batch(tr, labels=-1)                   # class-agnostic proposals
    m = _model(tr, roi_feature_dim=rd.roi_feature_dim)
    with pytest.warns(UserWarning, match="every ROI of the batch has label -1"):
        m(batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(batch)                                               # once per model
        _, labelled = _region_batch(tr)                        # detections: classes known
        _model(tr, roi_feature_dim=rd.roi_feature_dim)(labelled)
