"""InstanceAwareLabelConv: image-dependent label graph (IA-GCN Eqs. 1-5)."""
import numpy as np
import pytest
import torch

from pyg_mlic.graphs import LabelGraph
from pyg_mlic.nn import InstanceAwareLabelConv, LabelGCNConv
from pyg_mlic.nn.instance_aware_label_conv import (image_dependent_propagation,
                                                   instance_aware_scaling)


@pytest.fixture(scope="module")
def voc_graph(data_dir):
    d = np.load(data_dir / "labels" / "voc2007.npz", allow_pickle=False)
    Y = (d["labels"][d["split"] == "trainval"] == 1).astype(np.uint8)
    g = LabelGraph.from_labels(Y, classes=[str(c) for c in d["classes"]], tau=0.4, p=0.2)
    return g.data.edge_index, g.data.edge_weight.float(), g.propagation()


def _scores(B, C, seed=0):
    return torch.rand(B, C, generator=torch.Generator().manual_seed(seed))


def test_af_is_zero_wherever_as_is_zero(voc_graph):
    ei, ew, A_S = voc_graph
    P = image_dependent_propagation(_scores(4, 20), A_S)
    assert (P[:, A_S == 0] == 0).all()
    assert (P[:, A_S > 0] > 0).all()
    assert (A_S == 0).float().mean() > 0.5                          # a sparse graph


def test_reference_formula_and_scale_invariance(voc_graph):
    _, _, A_S = voc_graph
    a = _scores(2, 20, 1)
    AF = A_S * torch.outer(a[0], a[0])                              # Eqs. 1, 4
    d = AF.sum(1)
    ref = AF / torch.sqrt(d[:, None] * d[None, :])
    P = image_dependent_propagation(a, A_S)
    torch.testing.assert_close(P[0], ref)
    torch.testing.assert_close(image_dependent_propagation(3 * a, A_S), P)
    # a = 1 gives back ML-GCN's row-stochastic re-weighted matrix
    torch.testing.assert_close(image_dependent_propagation(torch.ones(1, 20), A_S)[0], A_S)


# (sparse CSR, 0): batched sparse product; (False, 0): gather/scatter messages;
# (True, 128): the small-graph dense batched product (C = 20 <= 128)
PATHS = [(True, 0), (False, 0), (True, 128)]


@pytest.mark.parametrize("sparse,dense_max_nodes", PATHS)
def test_batched_equals_per_image_dense_reference(voc_graph, sparse, dense_max_nodes):
    ei, ew, A_S = voc_graph
    torch.manual_seed(0)
    B, C = 5, 20
    conv = InstanceAwareLabelConv(12, 7, bias=True, sparse=sparse,
                                  dense_max_nodes=dense_max_nodes)
    torch.nn.init.normal_(conv.bias)
    a = _scores(B, C, 2)
    P = image_dependent_propagation(a, A_S)
    W = conv.lin.weight.t()
    x = torch.randn(C, 12)                                          # shared (embeddings)
    out = conv(x, ei, ew, a=a)
    ref = torch.stack([P[b] @ x @ W + conv.bias for b in range(B)])
    assert out.shape == (B, C, 7)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    xb = torch.randn(B, C, 12)                                      # per image, widening
    ref = torch.stack([P[b] @ xb[b] @ W + conv.bias for b in range(B)])
    torch.testing.assert_close(conv(xb, ei, ew, a=a), ref, atol=1e-5, rtol=1e-5)
    narrow = InstanceAwareLabelConv(12, 3, sparse=sparse,           # lin before propagation
                                    dense_max_nodes=dense_max_nodes)
    ref = torch.stack([P[b] @ xb[b] @ narrow.lin.weight.t() for b in range(B)])
    torch.testing.assert_close(narrow(xb, ei, ew, a=a), ref, atol=1e-5, rtol=1e-5)


def test_normalized_edge_weights_match_the_dense_matrix(voc_graph):
    ei, ew, A_S = voc_graph
    a = _scores(3, 20, 3)
    conv = InstanceAwareLabelConv(4, 4)
    w = conv.normalized_edge_weight(ei, ew, a)
    P = image_dependent_propagation(a, A_S)
    assert w.shape == (3, ei.size(1))
    torch.testing.assert_close(w, P[:, ei[1], ei[0]])


def test_without_scores_it_is_the_ml_gcn_layer(voc_graph):
    ei, ew, A_S = voc_graph
    torch.manual_seed(0)
    conv, ref = InstanceAwareLabelConv(12, 16), LabelGCNConv(12, 16)
    ref.lin.weight.data.copy_(conv.lin.weight.data)
    x = torch.randn(20, 12)
    torch.testing.assert_close(conv(x, ei, ew), ref(x, ei, ew), atol=1e-5, rtol=1e-5)


def test_dense_and_sparse_paths_agree_in_a_stack_with_gradients(voc_graph):
    ei, ew, _ = voc_graph
    torch.manual_seed(0)
    a0, x0 = _scores(4, 20, 5), torch.randn(20, 6)
    outs, grads = [], []
    for dmn in (0, 128):
        torch.manual_seed(1)
        convs = [InstanceAwareLabelConv(6, 8, dense_max_nodes=dmn),
                 InstanceAwareLabelConv(8, 5, dense_max_nodes=dmn)]
        a = a0.clone().requires_grad_(True)
        h = torch.relu(convs[0](x0, ei, ew, a=a))
        out = convs[1](h, ei, ew, a=a)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([a.grad] + [c.lin.weight.grad for c in convs])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="dense_max_nodes"):
        InstanceAwareLabelConv(6, 8, dense_max_nodes=-1)


def test_degenerate_scores_give_no_nan_and_fall_back_to_as(voc_graph):
    ei, ew, A_S = voc_graph
    a = _scores(3, 20, 4)
    a[0] = 0.0                                                      # no ROI at all
    a[1, :5] = 0.0                                                  # some labels at zero
    s = instance_aware_scaling(a, ei, ew, 20)
    assert torch.isfinite(s).all() and (s[1, :5] == 0).all()
    P = image_dependent_propagation(a, A_S)
    torch.testing.assert_close(P[0], A_S)                           # fallback: A_S
    assert (P[1, :5] == 0).all() and (P[1, :, :5] == 0).all()
    conv = InstanceAwareLabelConv(6, 8)
    a.requires_grad_(True)
    x = torch.randn(20, 6, requires_grad=True)
    out = conv(x, ei, ew, a=a)
    torch.testing.assert_close(out, torch.stack([P[b] @ x @ conv.lin.weight.t()
                                                 for b in range(3)]), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(x.grad).all()
    assert a.grad[2].abs().sum() > 0 and conv.lin.weight.grad is not None


def test_shape_errors(voc_graph):
    ei, ew, _ = voc_graph
    conv = InstanceAwareLabelConv(6, 8)
    with pytest.raises(ValueError, match=r"\[B, C=20\]"):
        conv(torch.randn(20, 6), ei, ew, a=torch.rand(3, 19))
    with pytest.raises(ValueError, match="images"):
        conv(torch.randn(2, 20, 6), ei, ew, a=torch.rand(3, 20))
