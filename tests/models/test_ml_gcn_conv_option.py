"""ML-GCN's ``conv=`` option: another PyG layer in place of LabelGCNConv, rebuilt from
checkpoints by name or import string."""
import numpy as np
import pytest
import torch
from torch_geometric.nn import GATConv, GCNConv, MessagePassing, SAGEConv

from pyg_mlic.engine import model_from_checkpoint
from pyg_mlic.engine.checkpoint import load_checkpoint, save_checkpoint
from pyg_mlic.graphs import LabelGraph
from pyg_mlic.models import build_model
from pyg_mlic.models.ml_gcn import (LABEL_CONVS, ClassifierGCN, register_label_conv,
                                    resolve_label_conv)
from pyg_mlic.nn import LabelGCNConv


class ScaledSumConv(MessagePassing):
    """A module-level custom layer: h_i' = W sum_j p_ij h_j + b (importable by name)."""

    def __init__(self, in_channels, out_channels, scale=1.0):
        super().__init__(aggr="add")
        self.lin = torch.nn.Linear(in_channels, out_channels)
        self.scale = scale

    def forward(self, x, edge_index, edge_weight=None):
        return self.scale * self.propagate(edge_index, x=self.lin(x), w=edge_weight)

    def message(self, x_j, w):
        return x_j if w is None else w.view(-1, 1) * x_j


@pytest.fixture(scope="module")
def voc(data_dir):
    d = np.load(data_dir / "labels" / "voc2007.npz", allow_pickle=False)
    Y = (d["labels"][d["split"] == "trainval"] == 1).astype(np.uint8)
    return Y, [str(c) for c in d["classes"]]


def _model(voc, **kw):
    Y, classes = voc
    return build_model("ml_gcn", classes=classes, train_labels=Y, input_kind="features",
                       in_features=16, encoder_hidden=[], encoder_out=32, gcn_hidden=[24], **kw)


def test_default_is_label_gcn_conv_and_unchanged(voc):
    m = _model(voc)
    assert all(type(c) is LabelGCNConv for c in m.gcn.convs)
    assert m.build_kwargs["conv"] == "gcn" and m.build_kwargs["conv_kwargs"] == {}


@pytest.mark.parametrize("name,cls", [("gat", GATConv), ("gcnconv", GCNConv),
                                      ("sage", SAGEConv)])
def test_registered_pyg_layers_train_and_rebuild(voc, tmp_path, name, cls):
    torch.manual_seed(0)
    m = _model(voc, conv=name)
    assert all(type(c) is cls for c in m.gcn.convs)
    x = torch.randn(5, 16)
    out = m({"features": x}).logits
    assert out.shape == (5, 20) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in m.gcn.parameters() if p.requires_grad)
    save_checkpoint(tmp_path / "m.pt", model=m)
    m2 = model_from_checkpoint(load_checkpoint(tmp_path / "m.pt")).eval()
    m.eval()
    assert m2.build_kwargs["conv"] == name
    with torch.no_grad():
        torch.testing.assert_close(m2({"features": x}).logits, m({"features": x}).logits)


def test_edge_weights_reach_the_layer_as_documented(voc):
    Y, classes = voc
    g = LabelGraph.from_labels(Y, classes=classes, tau=0.4, p=0.2)
    ei, ew = g.data.edge_index, g.data.edge_weight
    z = torch.randn(20, 8)
    # GAT (edge_dim=1): the weights are attention features -> changing them changes W
    gat = ClassifierGCN(8, [], 6, conv="gat").eval()
    assert gat.convs[0].edge_dim == 1
    with torch.no_grad():
        assert not torch.allclose(gat(z, ei, ew), gat(z, ei, 2 * ew + 1))
    # SAGE ignores them (documented): only the edges matter
    sage = ClassifierGCN(8, [], 6, conv="sage").eval()
    with torch.no_grad():
        torch.testing.assert_close(sage(z, ei, ew), sage(z, ei, 2 * ew + 1))
    # the default applies P as given: one layer = P @ Z @ W
    gcn = ClassifierGCN(8, [], 6).eval()
    with torch.no_grad():
        dense = g.propagation() @ z @ gcn.convs[0].lin.weight.t()
        torch.testing.assert_close(gcn(z, ei, ew), dense, atol=1e-5, rtol=1e-5)


def test_custom_layer_by_class_and_import_string(voc, tmp_path):
    m = _model(voc, conv=ScaledSumConv, conv_kwargs={"scale": 0.5})
    spec = m.build_kwargs["conv"]
    assert spec == f"{__name__}:ScaledSumConv" and m.build_kwargs["conv_kwargs"] == {"scale": 0.5}
    assert all(isinstance(c, ScaledSumConv) and c.scale == 0.5 for c in m.gcn.convs)
    save_checkpoint(tmp_path / "c.pt", model=m)
    m2 = model_from_checkpoint(load_checkpoint(tmp_path / "c.pt"))
    assert all(isinstance(c, ScaledSumConv) for c in m2.gcn.convs)
    f, _, s = resolve_label_conv("torch_geometric.nn:GraphConv")
    assert s == "torch_geometric.nn:GraphConv" and f.__name__ == "GraphConv"


def test_registered_custom_name_and_unimportable_factory(voc, tmp_path):
    register_label_conv("scaled_sum_test", ScaledSumConv, scale=2.0)
    try:
        m = _model(voc, conv="scaled_sum_test")
        assert m.build_kwargs["conv"] == "scaled_sum_test" and m.gcn.convs[0].scale == 2.0
    finally:
        LABEL_CONVS.pop("scaled_sum_test")
    lam = _model(voc, conv=lambda a, b: LabelGCNConv(a, b))
    assert lam.build_kwargs["conv"].startswith("unimportable:")
    save_checkpoint(tmp_path / "l.pt", model=lam)
    with pytest.raises(ValueError, match="register_label_conv"):
        model_from_checkpoint(load_checkpoint(tmp_path / "l.pt"))


def test_bad_conv_values_are_named(voc):
    with pytest.raises(ValueError, match="unknown conv 'nope'.*gat"):
        _model(voc, conv="nope")
    with pytest.raises(ValueError, match="no_such_module"):
        _model(voc, conv="no_such_module:Layer")
    with pytest.raises(TypeError, match="conv must be"):
        _model(voc, conv=3)


@pytest.mark.parametrize("name", sorted(LABEL_CONVS))
def test_every_registered_name_builds_and_runs(voc, name):
    if name == "scaled_sum_test":
        pytest.skip("registered by another test")
    m = _model(voc, conv=name).eval()
    with torch.no_grad():
        out = m({"features": torch.randn(3, 16)}).logits
    assert out.shape == (3, 20) and torch.isfinite(out).all()


def test_the_extending_docs_example_runs(tmp_path, monkeypatch):
    """The Python blocks of docs/extending.rst, executed in order in one namespace."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "extending.rst").read_text()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", text)
    assert len(blocks) >= 2
    import sys
    import types

    monkeypatch.chdir(tmp_path)
    mod = types.ModuleType("docs_extending")  # PyG's inspector looks classes up by module
    monkeypatch.setitem(sys.modules, "docs_extending", mod)
    ns = mod.__dict__
    try:
        for b in blocks:
            exec(compile("\n".join(line[3:] for line in b.splitlines()), "extending.rst", "exec"),
                 ns)
    finally:
        LABEL_CONVS.pop("gated", None)
    assert (tmp_path / "gated.pt").is_file()
    assert ns["loss"].item() < 0.69  # 20 Adam steps on 5 samples fit below chance level
