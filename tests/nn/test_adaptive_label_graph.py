import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyg_mlic.nn import AdaptiveLabelGraph, LabelGCNConv, sparse_correlation_loss
from pyg_mlic.nn.adaptive_label_graph import (NONNEG, VARIANTS, adjacency_to_edges,
                                              normalize_adjacency)

E3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
S20, S35 = math.sqrt(20.0), math.sqrt(35.0)


def _set(lin, weight, bias=None):
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight))
        if bias is not None:
            lin.bias.copy_(torch.tensor(bias))


# --------------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(variant, dtype):
    C, d = 7, 5
    lg = AdaptiveLabelGraph(d, C, hidden_channels=4, variant=variant).to(dtype)
    x = torch.randn(C, d, dtype=dtype)
    adj = lg(x)
    assert adj.shape == (C, C) and adj.dtype == dtype
    assert torch.isfinite(adj).all() and (adj >= 0).all()
    ei, ew = lg.edges(adj)
    assert ei.dtype == torch.long and ei.shape == (2, ew.numel()) and ew.dtype == dtype
    data = lg.to_data(x, classes=list("abcdefg"))
    assert data.num_nodes == C and data.classes == list("abcdefg")
    assert data.adj.shape == (C, C) and data.variant == variant
    n_params = sum(p.numel() for p in lg.parameters())
    expected = {"default": 2 * (d * 4 + 4), "dot": d * 4 + 4, "fc": d * C + C, "cos": 0}
    assert n_params == expected[variant]


def test_default_hidden_is_embedding_size_and_repr():
    lg = AdaptiveLabelGraph(6, 3)
    assert lg.lin_phi.out_features == 6 and lg.lin_theta.out_features == 6
    assert "variant='default'" in repr(lg)


# --------------------------------------------------------------------- hand computations
def test_default_matches_hand_computation():
    # phi = E, theta = E diag(1, -1):  C * A = Phi Theta^T = [[1,0,1],[0,-1,-1],[1,-1,0]]
    lg = AdaptiveLabelGraph(2, 3, hidden_channels=2, bias=False)
    _set(lg.lin_phi, [[1.0, 0.0], [0.0, 1.0]])
    _set(lg.lin_theta, [[1.0, 0.0], [0.0, -1.0]])
    A = lg.correlation(E3)
    assert torch.allclose(A, torch.tensor([[1.0, 0, 1], [0, -1, -1], [1, -1, 0]],
                                          dtype=A.dtype) / 3)
    # relu -> [[1/3,0,1/3],[0,0,0],[1/3,0,0]]; + I; degrees 5/3, 1, 4/3
    expected = torch.tensor([[0.8, 0.0, 1 / S20],
                             [0.0, 1.0, 0.0],
                             [1 / S20, 0.0, 0.75]])
    adj = lg(E3)
    assert torch.allclose(adj, expected, atol=1e-7)
    # L_A (Eq. 6, the entry-wise L1 norm): |0.8-1| + |0.75-1| + 2/sqrt(20) summed (the
    # default) or over 9 entries (mean)
    total = 0.2 + 0.25 + 2 / S20
    assert sparse_correlation_loss(adj).item() == pytest.approx(total, rel=1e-6)
    assert sparse_correlation_loss(adj, "mean").item() == pytest.approx(total / 9, rel=1e-6)


def test_default_with_bias_matches_hand_computation():
    # zero weights, biases b_phi = (1, 0), b_theta = (2, 0): every A_ij = 2/3
    lg = AdaptiveLabelGraph(2, 3, hidden_channels=2)
    _set(lg.lin_phi, [[0.0, 0.0], [0.0, 0.0]], [1.0, 0.0])
    _set(lg.lin_theta, [[0.0, 0.0], [0.0, 0.0]], [2.0, 0.0])
    # A~ = 2/3 J + I, every degree 3: diagonal (5/3)/3 = 5/9, off-diagonal (2/3)/3 = 2/9
    expected = torch.full((3, 3), 2 / 9) + torch.eye(3) * (1 / 3)
    assert torch.allclose(lg(E3), expected, atol=1e-7)


def test_fc_matches_hand_computation_and_orientation():
    # W_l^T rows w_0 = (1, 0), w_1 = (0, 2), w_2 = (-1, 1): A_ij = w_i . e_j
    lg = AdaptiveLabelGraph(2, 3, variant="fc", bias=False)
    _set(lg.lin_l, [[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
    A = lg.correlation(E3)
    assert torch.allclose(A, torch.tensor([[1.0, 0, 1], [0, 2, 2], [-1, 1, 0]], dtype=A.dtype))
    # relu, + I: [[2,0,1],[0,3,2],[0,1,1]]; degrees 3, 5, 2
    expected = torch.tensor([[2 / 3, 0.0, 1 / math.sqrt(6)],
                             [0.0, 3 / 5, 2 / math.sqrt(10)],
                             [0.0, 1 / math.sqrt(10), 1 / 2]])
    adj = lg(E3)
    assert torch.allclose(adj, expected, atol=1e-7)
    assert not torch.allclose(adj, adj.t())


def test_dot_matches_hand_computation():
    lg = AdaptiveLabelGraph(2, 3, hidden_channels=2, variant="dot", bias=False)
    _set(lg.lin_phi, [[1.0, 0.0], [0.0, 1.0]])
    # A = E E^T / 3 = [[1,0,1],[0,1,1],[1,1,2]] / 3; degrees 5/3, 5/3, 7/3
    expected = torch.tensor([[0.8, 0.0, 1 / S35],
                             [0.0, 0.8, 1 / S35],
                             [1 / S35, 1 / S35, 5 / 7]])
    assert torch.allclose(lg(E3), expected, atol=1e-7)


def test_cos_matches_hand_computation_and_is_symmetric():
    lg = AdaptiveLabelGraph(2, 3, variant="cos")
    r = 1 / math.sqrt(2)  # cos(e_0, e_2) = cos(e_1, e_2)
    d0, d2 = 2 + r, 2 + 2 * r
    expected = torch.tensor([[2 / d0, 0.0, r / math.sqrt(d0 * d2)],
                             [0.0, 2 / d0, r / math.sqrt(d0 * d2)],
                             [r / math.sqrt(d0 * d2), r / math.sqrt(d0 * d2), 2 / d2]])
    assert torch.allclose(lg(E3), expected, atol=1e-7)
    x = torch.randn(9, 4)
    adj = lg.__class__(4, 9, variant="cos")(x)
    assert torch.equal(adj, adj.t())


def test_dot_is_symmetric_default_is_not():
    x = torch.randn(6, 4)
    dot = AdaptiveLabelGraph(4, 6, variant="dot")(x)
    assert torch.allclose(dot, dot.t(), atol=1e-7)
    torch.manual_seed(1)
    default = AdaptiveLabelGraph(4, 6, hidden_channels=8)(x * 5)
    assert not torch.allclose(default, default.t())


# --------------------------------------------------------------------- L_A
def test_sparse_correlation_loss_zero_at_identity():
    assert sparse_correlation_loss(torch.eye(5)).item() == 0.0
    assert sparse_correlation_loss(torch.eye(5), "sum").item() == 0.0
    # orthogonal embeddings: Cos-A gives exactly A = I -> A~ = 2I -> A^ = I -> L_A = 0
    adj = AdaptiveLabelGraph(4, 4, variant="cos")(torch.eye(4) * 3)
    assert torch.equal(adj, torch.eye(4)) and sparse_correlation_loss(adj).item() == 0.0
    # zero maps: A = 0 -> A^ = I
    lg = AdaptiveLabelGraph(3, 4, bias=False)
    torch.nn.init.zeros_(lg.lin_phi.weight)
    assert sparse_correlation_loss(lg(torch.randn(4, 3))).item() == 0.0


def test_sparse_correlation_loss_validates():
    with pytest.raises(ValueError, match="reduction"):
        sparse_correlation_loss(torch.eye(3), "max")
    with pytest.raises(ValueError, match="square"):
        sparse_correlation_loss(torch.ones(2, 3))


# --------------------------------------------------------------------- PyG view + gradients
@pytest.mark.parametrize("variant", ["default", "fc", "dot"])
def test_gradients_reach_lg_through_label_gcn_edge_weights(variant):
    torch.manual_seed(0)
    C, d = 6, 5
    lg = AdaptiveLabelGraph(d, C, variant=variant)
    conv = LabelGCNConv(d, 3)
    x = torch.randn(C, d)
    adj = lg(x)
    ei, ew = lg.edges(adj)
    assert ew.requires_grad
    out = conv(x, ei, ew)
    # the sparse path is exactly the dense operator  A^ X W
    assert torch.allclose(out, adj @ conv.lin(x), atol=1e-6)
    out.pow(2).sum().backward()  # no L_A: the only path to the LG module is edge_weight
    params = [lg.lin_phi, lg.lin_theta] if variant == "default" else \
        [lg.lin_phi] if variant == "dot" else [lg.lin_l]
    for lin in params:
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
        assert torch.isfinite(lin.weight.grad).all()


def test_edges_follow_label_graph_convention():
    adj = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.25, 0.0, 1.0]])
    ei, ew = adjacency_to_edges(adj)
    got = {(int(j), int(i)): float(w) for (j, i), w in zip(ei.t(), ew)}
    # edge j -> i carries A^[i, j]; zeros dropped
    assert got == {(0, 0): 1.0, (0, 2): 0.25, (1, 0): 0.5, (1, 1): 1.0, (2, 2): 1.0}
    from pyg_mlic.graphs.label_graph import _dense_from_edges
    assert torch.equal(_dense_from_edges(ei, ew, 3), adj)


# --------------------------------------------------------------------- numerics
def test_naive_eq4_is_nan_where_ours_is_finite():
    # phi = E, theta = -E: A = -E E^T / 3, a row sum of A + I is negative
    lg = AdaptiveLabelGraph(2, 3, hidden_channels=2, bias=False)
    _set(lg.lin_phi, [[1.0, 0.0], [0.0, 1.0]])
    _set(lg.lin_theta, [[-1.0, 0.0], [0.0, -1.0]])
    x = E3 * 2
    At = lg.correlation(x) + torch.eye(3, dtype=torch.float64)
    dinv = At.sum(1).pow(-0.5)
    naive = dinv[:, None] * At * dinv[None, :]
    assert torch.isnan(naive).any()
    assert torch.equal(lg(x), torch.eye(3))  # every correlation negative -> relu -> identity


def test_softplus_keeps_gradient_for_negative_correlations():
    lg = AdaptiveLabelGraph(2, 3, hidden_channels=2, bias=False, nonneg="softplus")
    _set(lg.lin_phi, [[1.0, 0.0], [0.0, 1.0]])
    _set(lg.lin_theta, [[-1.0, 0.0], [0.0, -1.0]])
    adj = lg(E3 * 2)
    assert (adj > 0).all()
    sparse_correlation_loss(adj).backward()
    assert lg.lin_theta.weight.grad.abs().sum() > 0


def test_max_value_caps_correlations():
    A = torch.tensor([[0.0, 1e30], [0.0, 0.0]], dtype=torch.float64)
    adj = normalize_adjacency(A, max_value=100.0)
    # A+ = [[0, 100], [0, 0]] -> A~ = [[1, 100], [0, 1]], degrees 101, 1
    assert torch.allclose(adj, torch.tensor([[1 / 101, 100 / math.sqrt(101)], [0.0, 1.0]],
                                            dtype=torch.float64))


F32_MAX = float(np.finfo(np.float32).max)


@st.composite
def adversarial_embeddings(draw):
    C = draw(st.integers(1, 6))
    d = draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["raw", "scaled", "identical", "zero_rows", "zeros"]))
    if kind == "raw":  # any finite float32, including 3.4e38 and subnormals
        return draw(hnp.arrays(np.float32, (C, d), elements=st.floats(
            width=32, allow_nan=False, allow_infinity=False)))
    base = draw(hnp.arrays(np.float64, (C, d), elements=st.floats(-1, 1)))
    scale = 10.0 ** draw(st.integers(-45, 38))
    x = np.clip(base * scale, -F32_MAX, F32_MAX)
    if kind == "identical":
        x[:] = x[0]
    elif kind == "zero_rows":
        x[draw(hnp.arrays(np.bool_, (C,)))] = 0.0
    elif kind == "zeros":
        x[:] = 0.0
    return x.astype(np.float32)


@settings(max_examples=150, deadline=None)
@given(x=adversarial_embeddings(), variant=st.sampled_from(VARIANTS),
       nonneg=st.sampled_from(NONNEG), seed=st.integers(0, 3))
def test_no_nan_or_inf_for_adversarial_embeddings(x, variant, nonneg, seed):
    torch.manual_seed(seed)
    C, d = x.shape
    lg = AdaptiveLabelGraph(d, C, hidden_channels=3, variant=variant, nonneg=nonneg)
    adj = lg(torch.from_numpy(x))
    assert adj.dtype == torch.float32 and torch.isfinite(adj).all()
    assert (adj >= 0).all() and (adj <= math.sqrt(1 + C * lg.max_value)).all()
    assert torch.isfinite(sparse_correlation_loss(adj))
    ei, ew = lg.edges(adj)
    assert torch.isfinite(LabelGCNConv(d, 2)(torch.from_numpy(x).clamp(-1, 1), ei, ew)).all()


# --------------------------------------------------------------------- validation
def test_bad_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="variant"):
        AdaptiveLabelGraph(3, 4, variant="gat")
    with pytest.raises(ValueError, match="nonneg"):
        AdaptiveLabelGraph(3, 4, nonneg="abs")
    with pytest.raises(ValueError, match="num_labels"):
        AdaptiveLabelGraph(3, 0)
    with pytest.raises(ValueError, match="max_value"):
        AdaptiveLabelGraph(3, 4, max_value=float("inf"))
    lg = AdaptiveLabelGraph(3, 4)
    with pytest.raises(ValueError, match=r"expected \[4, 3\]"):
        lg(torch.randn(5, 3))
    with pytest.raises(ValueError, match="2-D"):
        lg(torch.randn(4))
    bad = torch.randn(4, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite label embeddings in rows \[2\]"):
        lg(bad)
    with pytest.raises(ValueError, match="floating point"):
        lg(torch.ones(4, 3, dtype=torch.long))


def test_float64_overflow_is_a_clear_error():
    lg = AdaptiveLabelGraph(2, 3).double()
    with pytest.raises(ValueError, match="overflowed"):
        lg(torch.full((3, 2), 1e300, dtype=torch.float64))
