"""Partial labels in every model: an unknown entry (``mask`` False) changes neither the
loss nor its gradients, and the label statistics a model builds count known entries only."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pyg_mlic.data import SyntheticScenes, collate
from pyg_mlic.data.partial import drop_labels
from pyg_mlic.engine import model_context
from pyg_mlic.graphs import LabelGraph
from pyg_mlic.losses import positive_ratio
from pyg_mlic.models import build_model, list_models

SMALL = {"gcn_hidden": [8], "encoder_channels": 8, "conv_channels": [8], "k": 2,
         "region_hidden": [8, 8], "max_instances": 6}


@pytest.fixture(scope="module")
def scenes():
    return SyntheticScenes("train", num_images=24, image_size=32, seed=0, cache=True)


def _build(name, train):
    from pyg_mlic.models.registry import model_option_names

    ctx = model_context(train, backbone="small_cnn")
    valid = set(model_option_names(name))
    opts = {k: v for k, v in SMALL.items() if k in valid}
    if "label_embeddings" in valid:
        opts["label_embeddings"] = torch.eye(len(train.classes))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(name, **ctx, **opts)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)                 # the same noise (IA-GCN's variational weights ...)
    out = model(batch)
    total, _ = model.loss(out, batch)
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return total.detach(), grads


@pytest.mark.parametrize("name", list_models())
def test_unknown_entries_change_neither_loss_nor_gradients(name, scenes):
    model = _build(name, scenes)
    model.train()
    batch = collate([scenes[i] for i in range(4)])
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(batch["target"].shape, generator=g) < 0.6
    mask[0, 0] = True
    batch["mask"] = mask
    flipped = dict(batch, target=torch.where(mask, batch["target"], 1 - batch["target"]))
    l0, g0 = _loss_and_grads(model, batch)
    l1, g1 = _loss_and_grads(model, flipped)
    assert torch.isfinite(l0) and g0, name
    assert torch.equal(l0, l1), (name, float(l0), float(l1))
    assert g0.keys() == g1.keys()
    for k in g0:
        assert torch.equal(g0[k], g1[k]), (name, k)
    # a known entry does change it (the test can fail)
    known = dict(batch, target=batch["target"].clone())
    known["target"][0, 0] = 1 - known["target"][0, 0]
    l2, _ = _loss_and_grads(model, known)
    assert not torch.equal(l0, l2), name


def test_context_carries_the_mask_and_checkpoints_do_not(scenes):
    part = drop_labels(scenes, 0.5, seed=0)
    ctx = model_context(part, backbone="small_cnn")
    assert ctx["train_label_mask"] is part.label_mask
    assert model_context(scenes)["train_label_mask"] is None
    m = _build("ml_gcn", part)
    assert "train_label_mask" not in m.build_kwargs and "train_labels" not in m.build_kwargs


@pytest.mark.parametrize("name", ["ml_gcn", "ia_gcn", "iml_gcn"])
def test_label_graph_counts_known_pairs_only(name, scenes):
    part = drop_labels(scenes, 0.5, seed=0)
    m = _build(name, part)
    tau = m.build_kwargs.get("tau", 0.4)
    g = LabelGraph.from_labels(part.labels, mask=part.label_mask, tau=tau)
    full = LabelGraph.from_labels(part.labels, tau=tau)
    assert torch.equal(m.edge_index, g.edge_index) and torch.equal(m.edge_weight, g.edge_weight)
    assert not (torch.equal(m.edge_index, full.edge_index)
                and torch.equal(m.edge_weight, full.edge_weight))
    # still constructible without a mask: today's graph
    m0 = _build(name, scenes)
    assert torch.equal(m0.edge_weight, LabelGraph.from_labels(scenes.labels, tau=tau).edge_weight)


def test_gm_mlic_ratios_and_prior_from_known_entries(scenes):
    part = drop_labels(scenes, 0.7, seed=1)
    m = _build("gm_mlic", part)
    r = positive_ratio(part.labels, mask=part.label_mask)
    assert torch.equal(m.pos_ratio, r)
    assert not torch.equal(r, positive_ratio(scenes.labels))
    assert np.isclose(float(m.pos_ratio.sum()), float(r.sum()))


def test_image_feature_embeddings_average_known_positives_only(tmp_path):
    """IML-GCN's Eq. 5 under partial labels: a label's embedding averages the images known
    to hold it (the batch mask), not those whose hidden label is positive."""
    from helpers_features import make_features_npz
    from pyg_mlic.data.features import FeaturesDataset
    from pyg_mlic.embeddings.image_features import label_feature_means

    ds = FeaturesDataset(make_features_npz(tmp_path / "f.npz", n=60, c=4), split="train")
    part = drop_labels(ds, 0.5, seed=0)
    res = label_feature_means(torch.nn.Identity(), part, batch_size=16, progress=False)
    Yk = torch.from_numpy((part.labels.astype(bool) & part.label_mask).astype(np.float64))
    F = torch.from_numpy(ds.features.astype(np.float64))
    assert res["counts"].tolist() == Yk.sum(0).long().tolist()
    assert torch.allclose(res["sums"], Yk.t() @ F)
    assert res["counts"].sum() < int(ds.labels.sum())
