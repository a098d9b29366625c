"""InstanceAwareLabelConv: image-dependent label graph (IA-GCN Eqs. 1-5); the fused
message_and_aggregate (sparse and dense) equals the per-edge message path."""
import numpy as np
import pytest
import torch
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor
from torch_geometric.utils import to_torch_coo_tensor

from pyg_mlic.graphs import LabelGraph
from pyg_mlic.nn import InstanceAwareLabelConv, LabelGCNConv
from pyg_mlic.nn.instance_aware_label_conv import (image_dependent_propagation,
                                                   instance_aware_scaling,
                                                   label_adjacency_csr)

# a COO adj_t is converted to CSR by torch_geometric.utils.spmm (a warning, the case tested)
pytestmark = pytest.mark.filterwarnings("ignore:Converting sparse tensor:UserWarning",
                                        "ignore:Sparse CSC tensor support:UserWarning",
                                        "ignore:Sparse invariant checks:UserWarning")

C = 20


@pytest.fixture(scope="module")
def graph():
    """A label graph built from hand-made labels: 20 labels in 5 groups of 4 that co-occur,
    two groups per image, and a frequent hub label 0 (ML-GCN's re-weighted matrix)."""
    rng = np.random.default_rng(0)
    group = np.arange(C) // 4
    Y = np.zeros((300, C), np.uint8)
    g = rng.integers(0, 5, (300, 2))
    for k in range(2):
        Y |= ((group[None] == g[:, k:k + 1]) & (rng.random((300, C)) < 0.5)).astype(np.uint8)
    Y[:, 0] |= (rng.random(300) < 0.4).astype(np.uint8)
    lg = LabelGraph.from_labels(Y, tau=0.4, p=0.2)
    return lg.data.edge_index, lg.data.edge_weight.float(), lg.propagation()


def _scores(B, seed=0):
    return torch.rand(B, C, generator=torch.Generator().manual_seed(seed))


def _adjacencies(ei, ew):
    adjs = {"csr": label_adjacency_csr(ei, ew, C),
            "coo": to_torch_coo_tensor(ei.flip(0), ew, (C, C))}
    if WITH_TORCH_SPARSE:
        adjs["SparseTensor"] = SparseTensor.from_edge_index(ei, ew, (C, C)).t()
    return adjs


def test_af_is_zero_wherever_as_is_zero(graph):
    ei, ew, A_S = graph
    P = image_dependent_propagation(_scores(4), A_S)
    assert (P[:, A_S == 0] == 0).all()
    assert (P[:, A_S > 0] > 0).all()
    assert (A_S == 0).float().mean() > 0.5                          # a sparse graph


def test_reference_formula_and_scale_invariance(graph):
    _, _, A_S = graph
    a = _scores(2, 1)
    AF = A_S * torch.outer(a[0], a[0])                              # Eqs. 1, 4
    d = AF.sum(1)
    ref = AF / torch.sqrt(d[:, None] * d[None, :])
    P = image_dependent_propagation(a, A_S)
    torch.testing.assert_close(P[0], ref)
    torch.testing.assert_close(image_dependent_propagation(3 * a, A_S), P)
    # a = 1 gives back ML-GCN's row-stochastic re-weighted matrix
    torch.testing.assert_close(image_dependent_propagation(torch.ones(1, C), A_S)[0], A_S)


# (sparse, 0): fused sparse product over adj_t; (False, 0): per-edge message path;
# (sparse, 128): fused dense per-image product (C = 20 <= 128; any width, see _conv)
PATHS = [(True, 0), (False, 0), (True, 128)]


def _conv(*args, **kw):
    """The layer with the dense per-image product for any signal width (default: >= 64)."""
    return InstanceAwareLabelConv(*args, dense_min_channels=0, **kw)


@pytest.mark.parametrize("sparse,dense_max_nodes", PATHS)
def test_batched_equals_per_image_dense_reference(graph, sparse, dense_max_nodes):
    ei, ew, A_S = graph
    torch.manual_seed(0)
    B = 5
    conv = _conv(12, 7, bias=True, sparse=sparse, dense_max_nodes=dense_max_nodes)
    torch.nn.init.normal_(conv.bias)
    a = _scores(B, 2)
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
    narrow = _conv(12, 3, sparse=sparse,                            # lin before propagation
                   dense_max_nodes=dense_max_nodes)
    ref = torch.stack([P[b] @ xb[b] @ narrow.lin.weight.t() for b in range(B)])
    torch.testing.assert_close(narrow(xb, ei, ew, a=a), ref, atol=1e-5, rtol=1e-5)
    # no scores, batched input: A_S applied to every image
    ref = torch.stack([A_S @ xb[b] @ W + conv.bias for b in range(B)])
    torch.testing.assert_close(conv(xb, ei, ew), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dense_max_nodes", [0, 128])
def test_adj_t_inputs_equal_the_edge_list(graph, dense_max_nodes):
    ei, ew, _ = graph
    conv = _conv(6, 4, dense_max_nodes=dense_max_nodes)
    x, a = torch.randn(C, 6), _scores(3, 7)
    ref = conv(x, ei, ew, a=a)
    ref0 = conv(x, ei, ew)
    for name, adj in _adjacencies(ei, ew).items():
        torch.testing.assert_close(conv(x, adj, a=a), ref, atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(conv(x, adj), ref0, atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(instance_aware_scaling(a, adj),
                                   instance_aware_scaling(a, ei, ew, C), msg=name)


def test_propagate_alone_applies_the_normalised_matrix(graph):
    ei, ew, A_S = graph
    conv = _conv(1, 1)
    a, H = _scores(4, 8), torch.randn(4, C, 9)
    s = instance_aware_scaling(a, ei, ew, C)
    P = image_dependent_propagation(a, A_S)
    adj = label_adjacency_csr(ei, ew, C)
    for dmn in (0, 128):
        conv.dense_max_nodes = dmn
        out = conv.propagate(adj, x=H, edge_weight=None, s=s.unsqueeze(-1))
        torch.testing.assert_close(out, P @ H, atol=1e-6, rtol=1e-5)
    out = conv.propagate(ei, x=H, edge_weight=ew, s=s.unsqueeze(-1))  # message path
    torch.testing.assert_close(out, P @ H, atol=1e-6, rtol=1e-5)


def test_normalized_edge_weights_match_the_dense_matrix(graph):
    ei, ew, A_S = graph
    a = _scores(3, 3)
    conv = InstanceAwareLabelConv(4, 4)
    w = conv.normalized_edge_weight(ei, ew, a)
    P = image_dependent_propagation(a, A_S)
    assert w.shape == (3, ei.size(1))
    torch.testing.assert_close(w, P[:, ei[1], ei[0]])


def test_without_scores_it_is_the_ml_gcn_layer(graph):
    ei, ew, A_S = graph
    torch.manual_seed(0)
    conv, ref = InstanceAwareLabelConv(12, 16), LabelGCNConv(12, 16)
    ref.lin.weight.data.copy_(conv.lin.weight.data)
    x = torch.randn(C, 12)
    for sparse in (True, False):
        conv.sparse = sparse
        torch.testing.assert_close(conv(x, ei, ew), ref(x, ei, ew), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sparse,dense_max_nodes", PATHS[:1] + PATHS[2:])
def test_fused_paths_equal_the_message_path_in_a_stack_with_gradients(graph, sparse,
                                                                      dense_max_nodes):
    ei, ew, _ = graph
    a0, x0 = _scores(4, 5), torch.randn(C, 6)
    outs, grads = [], []
    for sp, dmn in ((False, 0), (sparse, dense_max_nodes)):
        torch.manual_seed(1)
        convs = [_conv(6, 8, sparse=sp, dense_max_nodes=dmn),
                 _conv(8, 12, sparse=sp, dense_max_nodes=dmn),
                 _conv(12, 5, sparse=sp, dense_max_nodes=dmn)]
        a = a0.clone().requires_grad_(True)
        x = x0.clone().requires_grad_(True)
        h = x
        for i, conv in enumerate(convs):
            h = conv(h, ei, ew, a=a)
            h = torch.relu(h) if i < 2 else h
        (h * torch.linspace(-1, 1, h.numel()).view_as(h)).sum().backward()
        outs.append(h.detach())
        grads.append([a.grad, x.grad] + [c.lin.weight.grad for c in convs])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="dense_max_nodes"):
        InstanceAwareLabelConv(6, 8, dense_max_nodes=-1)
    with pytest.raises(ValueError, match="dense_min_channels"):
        InstanceAwareLabelConv(6, 8, dense_min_channels=-1)


def test_degenerate_scores_give_no_nan_and_fall_back_to_as(graph):
    ei, ew, A_S = graph
    a = _scores(3, 4)
    a[0] = 0.0                                                      # no ROI at all
    a[1, :5] = 0.0                                                  # some labels at zero
    s = instance_aware_scaling(a, ei, ew, C)
    assert torch.isfinite(s).all() and (s[1, :5] == 0).all()
    P = image_dependent_propagation(a, A_S)
    torch.testing.assert_close(P[0], A_S)                           # fallback: A_S
    assert (P[1, :5] == 0).all() and (P[1, :, :5] == 0).all()
    for sparse, dmn in PATHS:
        conv = _conv(6, 8, sparse=sparse, dense_max_nodes=dmn)
        aa = a.clone().requires_grad_(True)
        x = torch.randn(C, 6, requires_grad=True)
        out = conv(x, ei, ew, a=aa)
        torch.testing.assert_close(out, torch.stack([P[b] @ x @ conv.lin.weight.t()
                                                     for b in range(3)]), atol=1e-5, rtol=1e-5)
        out.sum().backward()
        assert torch.isfinite(aa.grad).all() and torch.isfinite(x.grad).all()
        assert aa.grad[2].abs().sum() > 0 and conv.lin.weight.grad is not None


def test_shape_errors_reset_and_repr(graph):
    ei, ew, _ = graph
    conv = InstanceAwareLabelConv(6, 8, bias=True)
    with pytest.raises(ValueError, match=r"\[B, C=20\]"):
        conv(torch.randn(C, 6), ei, ew, a=torch.rand(3, 19))
    with pytest.raises(ValueError, match="images"):
        conv(torch.randn(2, C, 6), ei, ew, a=torch.rand(3, C))
    with pytest.raises(ValueError, match=r"\[C, F\] or \[B, C, F\]"):
        conv(torch.randn(C), ei, ew)
    torch.nn.init.normal_(conv.bias)
    w = conv.lin.weight.clone()
    conv.reset_parameters()
    assert not torch.equal(w, conv.lin.weight) and (conv.bias == 0).all()
    assert repr(conv) == "InstanceAwareLabelConv(6, 8, sparse=True, dense_max_nodes=128)"


def test_default_layer_wide_and_narrow_signals_equal_the_message_path(graph):
    ei, ew, _ = graph
    a = _scores(3, 9)
    for F in (64, 2):                      # default: dense per-image product from 64 channels
        torch.manual_seed(0)
        fused = InstanceAwareLabelConv(F, F)
        ref = InstanceAwareLabelConv(F, F, sparse=False)
        ref.lin.weight.data.copy_(fused.lin.weight.data)
        x = torch.randn(3, C, F)
        torch.testing.assert_close(fused(x, ei, ew, a=a), ref(x, ei, ew, a=a), atol=1e-5,
                                   rtol=1e-5)
