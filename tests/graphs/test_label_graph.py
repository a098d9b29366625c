"""Tests of pyg_mlic.graphs.label_graph (ML-GCN Sec. 3.4, Eqs. 2, 6, 7, 8)."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from fractions import Fraction as F

import numpy as np
import pytest
import torch

from pyg_mlic.graphs import (
    CONVENTIONS,
    SCHEMES,
    LabelGraph,
    conditional_probability,
    cooccurrence,
    propagation_matrix,
)

EPS = 1e-6  # the ML-GCN release's constant in gen_A
s = math.sqrt


# ----------------------------------------------------------------------------- real data
# Equality with the statistics ML-GCN released (shared/data/reference): these tests need
# the real label files and skip without PYG_MLIC_DATA. Everything else in this file runs
# on hand-written or seeded-random label matrices.

@pytest.fixture(scope="module")
def coco(data_dir):
    with np.load(data_dir / "labels" / "coco2014.npz", allow_pickle=False) as d:
        Y = d["labels"][d["split"] == "train2014"]
        classes = d["classes"].tolist()
    with np.load(data_dir / "reference" / "mlgcn_coco_adj.npz", allow_pickle=False) as r:
        ref = {k: r[k] for k in r.files}
    return Y, classes, ref


@pytest.fixture(scope="module")
def voc(data_dir):
    with np.load(data_dir / "labels" / "voc2007.npz", allow_pickle=False) as d:
        Y = d["labels"][d["split"] == "trainval"]
        classes = d["classes"].tolist()
    with np.load(data_dir / "reference" / "mlgcn_voc_adj.npz", allow_pickle=False) as r:
        ref = {k: r[k] for k in r.files}
    return Y, classes, ref


@pytest.mark.parametrize("int8_gemm", [True, False])
def test_coco_train2014_reproduces_mlgcn_reference_exactly(coco, int8_gemm, monkeypatch):
    import pyg_mlic.graphs.label_graph as lg
    monkeypatch.setattr(lg, "_USE_INT8_GEMM", int8_gemm)  # both product paths
    Y, classes, ref = coco
    assert Y.shape == (82081, 80) and Y.dtype == np.uint8
    counts, nums = cooccurrence(Y)
    assert counts.dtype == np.int64 and nums.dtype == np.int64
    np.testing.assert_array_equal(counts, ref["adj"])
    np.testing.assert_array_equal(nums, ref["nums"])
    assert classes == ref["classes"].tolist()


def test_voc2007_trainval_positives_reproduce_mlgcn_reference_exactly(voc):
    Y, classes, ref = voc
    assert set(np.unique(Y).tolist()) == {-1, 0, 1}  # difficult (0) really is present
    counts, nums = cooccurrence(Y == 1)               # positives only: difficult excluded
    np.testing.assert_array_equal(counts, ref["adj"])
    np.testing.assert_array_equal(nums, ref["nums"])
    assert classes == ref["classes"].tolist()
    # counting difficult as present gives different statistics: the choice matters
    counts_d, nums_d = cooccurrence(Y >= 0)
    assert not np.array_equal(nums_d, ref["nums"])


# An independent transcription of the public ML-GCN code (util.py: gen_A, gen_adj),
# with its hard-coded 0.25, in numpy (float64) and as the release runs it (gen_A's
# float64 array cast to float32, gen_adj in float32 torch).
def _release_gen_A(num_classes, t, adj, nums):
    _adj = adj.copy()
    _nums = nums[:, np.newaxis]
    _adj = _adj / _nums
    _adj[_adj < t] = 0
    _adj[_adj >= t] = 1
    _adj = _adj * 0.25 / (_adj.sum(0, keepdims=True) + 1e-6)
    _adj = _adj + np.identity(num_classes, int)
    return _adj


def _release_gen_adj_numpy(A):
    D = np.diag(np.power(A.sum(1), -0.5))
    return np.matmul(np.matmul(A, D).T, D)


def _release_gen_adj_torch(A):
    A = torch.from_numpy(A).float()
    D = torch.diag(torch.pow(A.sum(1).float(), -0.5))
    return torch.matmul(torch.matmul(A, D).t(), D)


def _check_release_transcription(counts, nums, tau=0.4):
    """Our ``mlgcn_code`` operator equals the transcribed release on ``(counts, nums)``."""
    counts, nums = np.asarray(counts), np.asarray(nums)
    C = len(nums)
    A = _release_gen_A(C, tau, counts, nums)
    expected64 = _release_gen_adj_numpy(A)
    expected32 = _release_gen_adj_torch(A)
    g = LabelGraph.from_counts(counts, nums, tau=tau, p=0.25, scheme="reweighted",
                               convention="mlgcn_code")
    P = g.propagation()
    np.testing.assert_allclose(P.double().numpy(), expected64, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(P, expected32, rtol=1e-6, atol=1e-7)
    dense = propagation_matrix(counts, nums, tau, 0.25, "reweighted", "mlgcn_code")
    np.testing.assert_allclose(dense.numpy(), expected64, rtol=1e-12, atol=1e-15)
    # and the paper's operator is a different matrix (direction flips, rows sum to 1)
    paper = LabelGraph.from_counts(counts, nums, tau=tau, p=0.25).propagation()
    assert not torch.allclose(paper, P, atol=1e-3)
    torch.testing.assert_close(paper.sum(1), torch.ones(C))


@pytest.mark.parametrize("which", ["coco", "voc"])
def test_mlgcn_code_convention_matches_release_transcription_on_reference(which, request):
    _, _, ref = request.getfixturevalue(which)
    _check_release_transcription(ref["adj"], ref["nums"])


# ----------------------------------------------------------------------------- hand example
# Four labels, five images, written by hand.
Y_HAND = [
    [1, 1, 0, 0],
    [1, 1, 1, 0],
    [1, 0, 0, 0],
    [1, 0, 0, 1],
    [0, 1, 1, 0],
]
# M (images holding both labels, zero diagonal) and N, counted by hand
M_HAND = [
    [0, 2, 1, 1],
    [2, 0, 2, 0],
    [1, 2, 0, 0],
    [1, 0, 0, 0],
]
N_HAND = [4, 3, 2, 1]
# Eq. 6: P_ij = M_ij / N_i
P_HAND = [
    [F(0), F(1, 2), F(1, 4), F(1, 4)],
    [F(2, 3), F(0), F(2, 3), F(0)],
    [F(1, 2), F(1), F(0), F(0)],
    [F(1), F(0), F(0), F(0)],
]
TAU, P_RW = 0.5, 0.2  # tau = 0.5 hits P_01 = P_20 = 1/2 exactly: Eq. 7 keeps them (>=)
# Eq. 7 at tau = 0.5: A = [[0,1,0,0],[1,0,1,0],[1,1,0,0],[1,0,0,0]]
_a, _b, _c = 0.2 / (3 + EPS), 0.2 / (2 + EPS), 0.2 / (1 + EPS)  # p / (column sum + eps)
_r = [1 + _b, 1 + _a + _c, 1 + _a + _b, 1 + _a]                 # row sums of gen_A
EXPECTED = {
    # paper, Eq. 8: 1 - p on the diagonal, p split evenly among the neighbours
    ("reweighted", "paper"): [
        [0.8, 0.2, 0.0, 0.0],
        [0.1, 0.8, 0.1, 0.0],
        [0.1, 0.1, 0.8, 0.0],
        [0.2, 0.0, 0.0, 0.8],
    ],
    # paper, Kipf: (A + I) with degrees d = [2, 3, 3, 2]
    ("binary", "paper"): [
        [1 / 2, 1 / s(6), 0, 0],
        [1 / s(6), 1 / 3, 1 / 3, 0],
        [1 / s(6), 1 / 3, 1 / 3, 0],
        [1 / 2, 0, 0, 1 / 2],
    ],
    # paper, Kipf on P + I with degrees d = [2, 7/3, 5/2, 2]
    ("probability", "paper"): [
        [1 / 2, (1 / 2) / s(14 / 3), (1 / 4) / s(5), 1 / 8],
        [(2 / 3) / s(14 / 3), 3 / 7, (2 / 3) / s(35 / 6), 0],
        [(1 / 2) / s(5), 1 / s(35 / 6), 2 / 5, 0],
        [1 / 2, 0, 0, 1 / 2],
    ],
    # release: A = p B / (colsum(B) + eps) + I, column sums of B = [3, 2, 1, 0];
    # operator_ij = A_ji / sqrt(r_i r_j)
    ("reweighted", "mlgcn_code"): [
        [1 / _r[0], _a / s(_r[0] * _r[1]), _a / s(_r[0] * _r[2]), _a / s(_r[0] * _r[3])],
        [_b / s(_r[1] * _r[0]), 1 / _r[1], _b / s(_r[1] * _r[2]), 0],
        [0, _c / s(_r[2] * _r[1]), 1 / _r[2], 0],
        [0, 0, 0, 1 / _r[3]],
    ],
    # release: B + I with row sums [2, 3, 3, 2], transposed
    ("binary", "mlgcn_code"): [
        [1 / 2, 1 / s(6), 1 / s(6), 1 / 2],
        [1 / s(6), 1 / 3, 1 / 3, 0],
        [0, 1 / 3, 1 / 3, 0],
        [0, 0, 0, 1 / 2],
    ],
    # release: P + I with row sums [2, 7/3, 5/2, 2], transposed
    ("probability", "mlgcn_code"): [
        [1 / 2, (2 / 3) / s(14 / 3), (1 / 2) / s(5), 1 / 2],
        [(1 / 2) / s(14 / 3), 3 / 7, 1 / s(35 / 6), 0],
        [(1 / 4) / s(5), (2 / 3) / s(35 / 6), 2 / 5, 0],
        [1 / 8, 0, 0, 1 / 2],
    ],
}


def test_hand_example_statistics():
    counts, nums = cooccurrence(np.array(Y_HAND, dtype=np.uint8))
    assert counts.tolist() == M_HAND and nums.tolist() == N_HAND
    P = conditional_probability(counts, nums)
    assert P.dtype == torch.float64
    np.testing.assert_array_equal(P.numpy(), np.array(P_HAND, dtype=float))
    g = LabelGraph.from_labels(np.array(Y_HAND), tau=TAU, p=P_RW)
    np.testing.assert_array_equal(g.conditional_probability().numpy(),
                                  np.array(P_HAND, dtype=np.float32))


@pytest.mark.parametrize("scheme,convention", sorted(EXPECTED))
def test_hand_example_operator(scheme, convention):
    g = LabelGraph.from_labels(np.array(Y_HAND, dtype=np.uint8), tau=TAU, p=P_RW,
                               scheme=scheme, convention=convention,
                               classes=["person", "dog", "frisbee", "zebra"])
    expected = torch.tensor(EXPECTED[(scheme, convention)], dtype=torch.float32)
    P = g.propagation()
    assert P.dtype == torch.float32 and P.shape == (4, 4)
    torch.testing.assert_close(P, expected, rtol=1e-6, atol=1e-7)
    dense = propagation_matrix(M_HAND, N_HAND, TAU, P_RW, scheme, convention)
    torch.testing.assert_close(dense, expected.double(), rtol=1e-6, atol=1e-7)
    # nonzeros of the operator are exactly the edges
    assert g.num_edges == int((expected != 0).sum())


def _random_labels(seed, n=400, c=10):
    """Seeded-random labels with real co-occurrence: label 1 mostly follows label 0,
    label 3 occurs only with label 2, the rest are independent."""
    rng = np.random.default_rng(seed)
    Y = rng.random((n, c)) < rng.uniform(0.1, 0.5, size=c)
    Y[:, 1] |= Y[:, 0] & (rng.random(n) < 0.8)
    Y[:, 3] = Y[:, 2] & (rng.random(n) < 0.6)
    return Y.astype(np.uint8)


def _independent_counts(Y):
    Yi = np.asarray(Y, dtype=np.int64)
    return Yi.T @ Yi - np.diag(Yi.sum(0)), Yi.sum(0)


@pytest.mark.parametrize("seed", [0, 1])
def test_mlgcn_code_convention_matches_release_transcription(seed):
    _check_release_transcription(M_HAND, N_HAND, tau=TAU)
    counts, nums = _independent_counts(_random_labels(seed))
    assert nums.min() > 0                        # the release divides by N_i
    _check_release_transcription(counts, nums)


@pytest.mark.parametrize("seed", [0, 1])
def test_from_counts_equals_from_labels(seed):
    Y = _random_labels(seed)
    classes = [f"c{i}" for i in range(Y.shape[1])]
    counts, nums = _independent_counts(Y)
    for scheme in SCHEMES:
        for conv in CONVENTIONS:
            a = LabelGraph.from_counts(counts, nums, classes=np.array(classes), scheme=scheme,
                                       convention=conv, split="train")
            b = LabelGraph.from_labels(torch.from_numpy(Y), classes=classes, scheme=scheme,
                                       convention=conv, split="train")
            assert torch.equal(a.edge_index, b.edge_index)
            assert torch.equal(a.edge_weight, b.edge_weight)
            assert a.counts.tolist() == b.counts.tolist() == counts.tolist()
            assert a.nums.tolist() == b.nums.tolist() == nums.tolist()
            assert a.classes == b.classes == classes
    # the structure the generator plants is found: 3 -> 2 always, 1 -> 0 often
    cp = LabelGraph.from_counts(counts, nums).conditional_probability()
    assert cp[3, 2] == 1.0 and cp[0, 1] > 0.6


def test_paper_reweighted_rows_sum_to_one_and_self_weight_is_1_minus_p():
    for p in (0.0, 0.2, 0.7, 1.0):
        P = LabelGraph.from_labels(np.array(Y_HAND), tau=TAU, p=p).propagation()
        torch.testing.assert_close(P.sum(1), torch.ones(4))
        torch.testing.assert_close(P.diagonal(), torch.full((4,), 1.0 - p))


def test_threshold_is_inclusive_and_tau_changes_the_graph():
    Y = np.array(Y_HAND)
    A = lambda tau: (LabelGraph.from_labels(Y, tau=tau, scheme="binary")  # noqa: E731
                     .propagation() > 0).int().fill_diagonal_(0).tolist()
    assert A(0.5) == [[0, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    assert A(0.5000001) == [[0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]]


# ----------------------------------------------------------------------------- degenerate cases
# label 2 never occurs (N_2 = 0); at tau = 0.4 label 0 has no neighbour (P_01 = 1/3)
Y_DEGEN = [[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]
_q = 0.25 / (1 + EPS)
EXPECTED_DEGEN = {
    ("reweighted", "paper", 0.2): [[1, 0, 0], [0.2, 0.8, 0], [0, 0, 1]],
    ("binary", "paper", 0.2): [[1, 0, 0], [1 / s(2), 1 / 2, 0], [0, 0, 1]],
    ("probability", "paper", 0.2): [[3 / 4, (1 / 3) / s(2), 0], [(1 / 2) / s(2), 2 / 3, 0],
                                    [0, 0, 1]],
    ("reweighted", "mlgcn_code", 0.25): [[1, _q / s(1 + _q), 0], [0, 1 / (1 + _q), 0],
                                         [0, 0, 1]],
    # release: B + I = [[1,0,0],[1,1,0],[0,0,1]], row sums [1, 2, 1], transposed
    ("binary", "mlgcn_code", 0.25): [[1, 1 / s(2), 0], [0, 1 / 2, 0], [0, 0, 1]],
    # release: P + I = [[1,1/3,0],[1/2,1,0],[0,0,1]], row sums [4/3, 3/2, 1], transposed
    ("probability", "mlgcn_code", 0.25): [[3 / 4, (1 / 2) / s(2), 0],
                                          [(1 / 3) / s(2), 2 / 3, 0], [0, 0, 1]],
}


@pytest.mark.parametrize("scheme,convention,p", sorted(EXPECTED_DEGEN))
def test_unseen_label_and_isolated_node_are_finite(scheme, convention, p):
    Y = torch.tensor(Y_DEGEN, dtype=torch.bool)
    g = LabelGraph.from_labels(Y, tau=0.4, p=p, scheme=scheme, convention=convention)
    assert g.nums.tolist() == [3, 2, 0]
    P = g.propagation()
    assert torch.isfinite(P).all()
    torch.testing.assert_close(P, torch.tensor(EXPECTED_DEGEN[(scheme, convention, p)],
                                               dtype=torch.float32), rtol=1e-6, atol=1e-7)
    cp = g.conditional_probability()
    assert torch.isfinite(cp).all() and cp[2].tolist() == [0, 0, 0]


def test_release_would_produce_nan_for_unseen_label_but_we_do_not():
    counts, nums = cooccurrence(np.array(Y_DEGEN))
    with np.errstate(invalid="ignore", divide="ignore"):
        release = _release_gen_adj_numpy(_release_gen_A(3, 0.4, counts.astype(float), nums))
    assert np.isnan(release).any()
    ours = propagation_matrix(counts, nums, 0.4, 0.25, "reweighted", "mlgcn_code")
    assert torch.isfinite(ours).all()


def test_no_edges_at_all_gives_identity():
    Y = np.eye(3, dtype=np.uint8)  # labels never co-occur
    for scheme in SCHEMES:
        for conv in CONVENTIONS:
            P = LabelGraph.from_labels(Y, scheme=scheme, convention=conv).propagation()
            torch.testing.assert_close(P, torch.eye(3))
    with pytest.warns(UserWarning, match="no label has a positive"):  # no images
        P = LabelGraph.from_labels(np.zeros((0, 3)), scheme="binary").propagation()
    torch.testing.assert_close(P, torch.eye(3))


def test_tau_zero_keeps_unseen_label_without_outgoing_edges():
    P = LabelGraph.from_labels(np.array(Y_DEGEN), tau=0.0, p=0.2).propagation()
    assert torch.isfinite(P).all()
    assert P[2].tolist() == [0, 0, 1]                     # nothing to aggregate for label 2
    torch.testing.assert_close(P[0], torch.tensor([0.8, 0.1, 0.1]))  # Eq. 7 with tau = 0


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name,value", [("tau", -0.1), ("tau", 1.5), ("tau", float("nan")),
                                        ("p", -1e-9), ("p", 2.0), ("p", float("inf"))])
def test_tau_p_out_of_range(name, value):
    kw = {name: value}
    with pytest.raises(ValueError, match=name):
        LabelGraph.from_labels(np.array(Y_HAND), **kw)
    with pytest.raises(ValueError, match=name):
        LabelGraph.from_counts(M_HAND, N_HAND, **kw)
    with pytest.raises(ValueError, match=name):
        propagation_matrix(M_HAND, N_HAND, **kw)


def test_tau_p_type_errors():
    with pytest.raises(TypeError, match="tau"):
        LabelGraph.from_labels(np.array(Y_HAND), tau="0.4")
    with pytest.raises(TypeError, match="p"):
        LabelGraph.from_labels(np.array(Y_HAND), p=True)


def test_unknown_scheme_or_convention_lists_valid_names():
    with pytest.raises(ValueError, match="'reweighted', 'binary', 'probability'"):
        LabelGraph.from_labels(np.array(Y_HAND), scheme="re-weighted")
    with pytest.raises(ValueError, match="'paper', 'mlgcn_code'"):
        LabelGraph.from_labels(np.array(Y_HAND), convention="code")


@pytest.mark.parametrize("Y,exc,match", [
    (np.array([1, 0, 1]), ValueError, "2-D"),
    (np.zeros((2, 3, 4)), ValueError, "2-D"),
    (np.array([[1, 2], [0, 1]]), ValueError, r"found 2 at \[0, 1\]"),
    (np.array([[1, -1], [0, 1]], dtype=np.int8), ValueError, "difficult"),
    (torch.tensor([[1.0, float("nan")]]), ValueError, "NaN"),
    (np.array([[0.5, 1.0]]), ValueError, "0.5"),
    (np.array([["a", "b"]]), TypeError, "numeric"),
    (np.zeros((4, 0)), ValueError, "no label columns"),
])
def test_bad_labels(Y, exc, match):
    with pytest.raises(exc, match=match):
        cooccurrence(Y)
    with pytest.raises(exc, match=match):
        LabelGraph.from_labels(Y)


def test_bad_counts():
    with pytest.raises(ValueError, match="zero diagonal"):
        LabelGraph.from_counts([[1, 0], [0, 1]], [1, 1])
    with pytest.raises(ValueError, match="symmetric"):
        LabelGraph.from_counts([[0, 1], [0, 0]], [1, 1])
    with pytest.raises(ValueError, match="exceeds nums"):
        LabelGraph.from_counts([[0, 3], [3, 0]], [2, 5])
    with pytest.raises(ValueError, match="nums must be a vector"):
        LabelGraph.from_counts([[0, 1], [1, 0]], [1, 1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        LabelGraph.from_counts([[0, -1], [-1, 0]], [1, 1])
    with pytest.raises(ValueError, match="whole numbers"):
        LabelGraph.from_counts([[0, 0.5], [0.5, 0]], [1, 1])


def test_embeddings_checked_and_stored_as_float32():
    Y = np.array(Y_HAND)
    E = np.arange(12, dtype=np.float64).reshape(4, 3)
    g = LabelGraph.from_labels(Y, embeddings=E)
    assert g.data.x.dtype == torch.float32 and g.data.x.tolist() == E.tolist()
    E[0, 0] = 99.0
    assert g.data.x[0, 0] == 0.0                      # stored copy, not an alias
    Et = torch.ones(4, 5)
    g = LabelGraph.from_labels(Y, embeddings=Et)
    Et.zero_()
    assert g.data.x.sum() == 20
    with pytest.raises(ValueError, match=r"embeddings has 3 rows but the label graph has 4"):
        LabelGraph.from_labels(Y, embeddings=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        LabelGraph.from_labels(Y, embeddings=np.full((4, 2), np.inf))
    with pytest.raises(ValueError, match="2-D"):
        LabelGraph.from_labels(Y, embeddings=np.zeros(4))
    assert LabelGraph.from_labels(Y).data.x is None


def test_classes_argument():
    Y = np.array(Y_HAND)
    assert LabelGraph.from_labels(Y).classes == ["0", "1", "2", "3"]
    g = LabelGraph.from_labels(Y, classes=np.array(["a", "b", "c", "d"]))
    assert g.classes == ["a", "b", "c", "d"] and g.data.classes == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="classes has 3 names but the label statistics have 4"):
        LabelGraph.from_labels(Y, classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="duplicate"):
        LabelGraph.from_labels(Y, classes=["a", "b", "a", "d"])


# ----------------------------------------------------------------------------- PyG data

def test_data_layout_and_round_trip_equals_dense_operator():
    from torch_geometric.data import Data
    from torch_geometric.nn import SimpleConv
    from torch_geometric.utils import to_dense_adj

    Y = np.array(Y_HAND, dtype=np.uint8)
    E = torch.randn(4, 6)
    for scheme in SCHEMES:
        for conv in CONVENTIONS:
            g = LabelGraph.from_labels(Y, embeddings=E, tau=TAU, p=P_RW, scheme=scheme,
                                       convention=conv, split="train2014")
            d = g.data
            assert isinstance(d, Data) and d.num_nodes == 4
            assert d.edge_index.dtype == torch.long and d.edge_index.shape[0] == 2
            assert d.edge_weight.dtype == torch.float32
            assert d.edge_weight.shape == (d.edge_index.shape[1],)
            assert (d.edge_weight != 0).all()
            assert d.counts.dtype == torch.int64 and d.counts.tolist() == M_HAND
            assert d.nums.dtype == torch.int64 and d.nums.tolist() == N_HAND
            assert (d.split, d.tau, d.p, d.scheme, d.convention) == ("train2014", TAU, P_RW,
                                                                    scheme, conv)
            direct = propagation_matrix(M_HAND, N_HAND, TAU, P_RW, scheme, conv).float()
            assert torch.equal(g.propagation(), direct)
            # independent densification: to_dense_adj gives A[source, target]
            dense = to_dense_adj(d.edge_index, edge_attr=d.edge_weight, max_num_nodes=4)[0]
            assert torch.equal(dense.t(), direct)
            # a sum-aggregating PyG layer (source_to_target flow) applies exactly P @ X
            out = SimpleConv(aggr="sum")(d.x, d.edge_index, d.edge_weight)
            torch.testing.assert_close(out, direct @ d.x)
            # self-loops are stored as edges
            loops = d.edge_index[0] == d.edge_index[1]
            assert int(loops.sum()) == 4


def test_edge_direction_paper_vs_code():
    # P(L_1 | L_0) = 1/2 >= 0.5 but P(L_3 | L_0) = 1/4: in the paper node 0 aggregates
    # from 1 and not from 3; the release flips it: node 3 aggregates from 0 ...
    g = LabelGraph.from_labels(np.array(Y_HAND), tau=TAU, scheme="binary")
    edges = set(map(tuple, g.edge_index.t().tolist()))  # (source j, target i)
    assert (1, 0) in edges and (3, 0) not in edges and (0, 3) in edges
    h = LabelGraph.from_labels(np.array(Y_HAND), tau=TAU, scheme="binary",
                               convention="mlgcn_code")
    edges = set(map(tuple, h.edge_index.t().tolist()))
    # ... and node 0 aggregates from 3 (since P(L_0 | L_3) = 1 >= tau)
    assert (3, 0) in edges and (0, 3) not in edges


def test_numpy_and_torch_inputs_agree():
    Yn = np.array(Y_HAND, dtype=np.uint8)
    variants = [Yn, Yn.astype(bool), Yn.astype(np.float32), Yn.astype(np.int64),
                Yn.astype(np.uint16), torch.from_numpy(Yn), torch.from_numpy(Yn).float(),
                torch.from_numpy(Yn).bool(), np.asfortranarray(Yn), Yn[::-1], Y_HAND]
    ro = Yn.copy()
    ro.setflags(write=False)                      # e.g. a memory-mapped label file
    variants.append(ro)
    ref = LabelGraph.from_labels(Yn)
    for Y in variants:
        g = LabelGraph.from_labels(Y)
        assert torch.equal(g.edge_index, ref.edge_index)
        assert torch.equal(g.edge_weight, ref.edge_weight)
        counts, nums = cooccurrence(Y)
        if isinstance(Y, torch.Tensor):
            assert counts.dtype == torch.int64 and nums.dtype == torch.int64
        else:
            assert counts.dtype == np.int64 and nums.dtype == np.int64
        assert counts.tolist() == M_HAND and nums.tolist() == N_HAND


def test_float64_path_for_huge_n_matches(monkeypatch):
    import pyg_mlic.graphs.label_graph as lg
    rng = np.random.default_rng(0)
    Y = (rng.random((500, 7)) < 0.3).astype(np.uint8)
    c32, n32 = cooccurrence(Y)
    monkeypatch.setattr(lg, "_FLOAT32_EXACT_LIMIT", 10)  # force the float64 branch
    c64, n64 = cooccurrence(Y)
    np.testing.assert_array_equal(c32, c64)
    np.testing.assert_array_equal(n32, n64)
    Yi = Y.astype(np.int64)
    np.testing.assert_array_equal(n64, Yi.sum(0))
    np.testing.assert_array_equal(c64, Yi.T @ Yi - np.diag(Yi.sum(0)))


@pytest.mark.parametrize("dtype", [np.uint8, np.bool_, np.int8, np.int64])
def test_int8_gemm_and_float_paths_agree(monkeypatch, dtype):
    import pyg_mlic.graphs.label_graph as lg
    rng = np.random.default_rng(2)
    Y = (rng.random((3000, 13)) < 0.3).astype(dtype)
    Yi = Y.astype(np.int64)
    expected = (Yi.T @ Yi - np.diag(Yi.sum(0)), Yi.sum(0))
    for use in (True, False):
        monkeypatch.setattr(lg, "_USE_INT8_GEMM", use)
        for variant in (Y, np.asfortranarray(Y), torch.from_numpy(Y)):
            counts, nums = cooccurrence(variant)
            np.testing.assert_array_equal(np.asarray(counts), expected[0])
            np.testing.assert_array_equal(np.asarray(nums), expected[1])


def test_int8_gemm_result_is_checked(monkeypatch):
    import pyg_mlic.graphs.label_graph as lg
    rng = np.random.default_rng(3)
    Y = (rng.random((2000, 1)) < 0.5).astype(np.uint8)
    monkeypatch.setattr(lg, "_INT8_MIN_COLS", 1)
    # a single label: torch 2.14's _int_mm gives garbage for a 1x1 output; whatever the
    # torch version does, the checked path must return the right count
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        counts, nums = cooccurrence(Y)
    assert counts.tolist() == [[0]] and nums.tolist() == [int(Y.sum())]
    # an int8 GEMM returning an inconsistent matrix is detected and replaced
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: torch.full((a.shape[0], b.shape[1]), 7,
                                                                  dtype=torch.int32))
    Y = (rng.random((2000, 9)) < 0.5).astype(np.uint8)
    with pytest.warns(RuntimeWarning, match="_int_mm"):
        counts, nums = cooccurrence(Y)
    np.testing.assert_array_equal(nums, Y.astype(np.int64).sum(0))
    # and a torch without _int_mm uses the float product
    monkeypatch.delattr(torch, "_int_mm")
    counts2, nums2 = cooccurrence(Y)
    np.testing.assert_array_equal(counts2, counts)
    np.testing.assert_array_equal(nums2, nums)


def test_from_data_round_trip_and_tamper_detection():
    g = LabelGraph.from_labels(np.array(Y_HAND), embeddings=np.ones((4, 2)),
                               classes=list("abcd"), tau=TAU, p=P_RW, split="train")
    h = LabelGraph.from_data(g.data.clone())
    assert torch.equal(h.propagation(), g.propagation())
    assert (h.classes, h.split, h.tau, h.p, h.scheme, h.convention) == (
        g.classes, g.split, g.tau, g.p, g.scheme, g.convention)
    assert torch.equal(h.x, g.x)
    bad = g.data.clone()
    bad.edge_weight = bad.edge_weight * 1.01
    with pytest.raises(ValueError, match="disagree"):
        LabelGraph.from_data(bad)
    assert LabelGraph.from_data(bad, check=False).propagation().sum() > 4.0
    bad = g.data.clone()
    del bad.counts
    with pytest.raises(ValueError, match="missing attributes"):
        LabelGraph.from_data(bad)
    with pytest.raises(TypeError):
        LabelGraph.from_data({"edge_index": g.edge_index})


def test_from_data_via_torch_save_state(tmp_path):
    # checkpoints store plain tensors/strings (weights_only=True loadable), not pickled Data
    g = LabelGraph.from_labels(np.array(Y_HAND), classes=list("abcd"))
    state = {k: v for k, v in g.data.to_dict().items()}
    torch.save(state, tmp_path / "g.pt")
    from torch_geometric.data import Data
    loaded = torch.load(tmp_path / "g.pt", weights_only=True)
    h = LabelGraph.from_data(Data.from_dict(loaded))
    assert torch.equal(h.propagation(), g.propagation()) and h.classes == list("abcd")


def test_batching_does_not_offset_statistics():
    from torch_geometric.data import Batch
    g = LabelGraph.from_labels(np.array(Y_HAND))
    b = Batch.from_data_list([g.data, g.data])
    assert torch.equal(b.edge_index[:, g.num_edges:], g.edge_index + 4)  # edges offset ...
    assert torch.equal(b.counts, torch.cat([g.counts, g.counts]))     # ... statistics not
    assert torch.equal(b.nums, torch.cat([g.nums, g.nums]))


def test_accessors_repr_and_to():
    g = LabelGraph.from_labels(np.array(Y_HAND), embeddings=np.zeros((4, 3)), tau=TAU,
                               split="train2014")
    assert g.num_classes == 4 and g.num_edges == int((g.propagation() != 0).sum())
    r = repr(g)
    for part in ("num_classes=4", "scheme='reweighted'", "convention='paper'", "tau=0.5",
                 "p=0.2", "split='train2014'", "x=[4, 3]"):
        assert part in r
    assert g.to("cpu") is g and g.propagation().device.type == "cpu"
    assert g.to(torch.device("cpu")).data.edge_weight.device.type == "cpu"


def test_from_dataset_uses_labels_classes_split():
    class _DS:
        labels = np.array(Y_HAND, dtype=np.uint8)
        classes = ["a", "b", "c", "d"]
        split = "trainval"
    g = LabelGraph.from_dataset(_DS())
    assert g.split == "trainval" and g.classes == _DS.classes and g.nums.tolist() == N_HAND


# ----------------------------------------------------------------------------- COCO / VOC files
# Y_HAND's labels [person, dog, frisbee, zebra] as a COCO instances file: category ids
# not contiguous and not in name order, a label annotated twice in one image, a crowd
# annotation, an image without annotations.
_COCO_IDS = {"person": 1, "dog": 18, "zebra": 24, "frisbee": 34}
_HAND_NAMES = ["person", "dog", "frisbee", "zebra"]
# by name (ML-GCN's order): dog, frisbee, person, zebra; M and N counted by hand
M_COCO = [
    [0, 2, 2, 0],
    [2, 0, 1, 0],
    [2, 1, 0, 1],
    [0, 0, 1, 0],
]
N_COCO = [3, 2, 4, 1]


def _write_coco(path):
    import json

    images, anns = [], []
    for r, row in enumerate(Y_HAND + [[0, 0, 0, 0]]):
        images.append({"id": 100 + r, "file_name": f"{r}.jpg", "width": 64, "height": 48})
        for name, y in zip(_HAND_NAMES, row):
            if y:
                anns.append({"image_id": 100 + r, "category_id": _COCO_IDS[name],
                             "bbox": [1, 2, 10, 10], "iscrowd": int(name == "frisbee" and r == 4)})
    anns.append({"image_id": 100, "category_id": 1, "bbox": [5, 5, 3, 3], "iscrowd": 0})
    for i, a in enumerate(anns):
        a["id"] = i + 1
    cats = [{"id": i, "name": n} for n, i in _COCO_IDS.items()]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_from_coco_hand_file(tmp_path):
    pytest.importorskip("pycocotools")
    ann = _write_coco(tmp_path / "instances_mini.json")
    g = LabelGraph.from_coco(ann, tau=TAU, p=P_RW)
    assert g.split == "mini" and g.classes == ["dog", "frisbee", "person", "zebra"]
    assert g.counts.tolist() == M_COCO and g.nums.tolist() == N_COCO
    # the same graph as the hand example with its columns in name order
    perm = [_HAND_NAMES.index(c) for c in g.classes]
    ref = LabelGraph.from_labels(np.array(Y_HAND)[:, perm], tau=TAU, p=P_RW)
    assert torch.equal(g.propagation(), ref.propagation())
    # the classes argument selects and orders columns
    h = LabelGraph.from_coco(ann, classes=["zebra", "person"], split="mine")
    assert h.classes == ["zebra", "person"] and h.split == "mine"
    assert h.nums.tolist() == [1, 4] and h.counts.tolist() == [[0, 1], [1, 0]]


# Three labels in VOC format. Objects per image ("!" = difficult):
#   a: WBC, RBC, RBC, Platelets!   b: RBC, Platelets   c: WBC!, RBC   d: WBC, Platelets,
#   Platelets!   z (not in trainval): WBC, RBC, Platelets
_VOC_OBJECTS = {
    "a": [("WBC", 0), ("RBC", 0), ("RBC", 0), ("Platelets", 1)],
    "b": [("RBC", 0), ("Platelets", 0)],
    "c": [("WBC", 1), ("RBC", 0)],
    "d": [("WBC", 0), ("Platelets", 0), ("Platelets", 1)],
    "z": [("WBC", 0), ("RBC", 0), ("Platelets", 0)],
}
# positives only: a = {WBC, RBC}, b = {RBC, Platelets}, c = {RBC}, d = {WBC, Platelets}
M_VOC, N_VOC = [[0, 1, 1], [1, 0, 1], [1, 1, 0]], [2, 3, 2]
# difficult counted as present: a = all three, c = {WBC, RBC}
M_VOC_DIFF, N_VOC_DIFF = [[0, 2, 2], [2, 0, 2], [2, 2, 0]], [3, 3, 3]


def _write_voc(root):
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\nc\nd\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("z\n")
    for i, objs in _VOC_OBJECTS.items():
        body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>1"
                       "</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
                       for n, d in objs)
        (root / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><size><width>8</width><height>8</height></size>{body}</annotation>")
    return root


def test_from_voc_hand_folder_counts_positives_only(tmp_path):
    from pyg_mlic.data.voc import voc_labels

    root = _write_voc(tmp_path / "voc")
    g = LabelGraph.from_voc(root, split="trainval", classes=["WBC", "RBC", "Platelets"])
    assert g.split == "trainval" and g.classes == ["WBC", "RBC", "Platelets"]
    assert g.counts.tolist() == M_VOC and g.nums.tolist() == N_VOC
    # counting difficult as present gives other statistics: the choice matters
    _, Y, _ = voc_labels(root, "trainval", classes=["WBC", "RBC", "Platelets"])
    assert set(np.unique(Y).tolist()) == {-1, 0, 1}
    counts, nums = cooccurrence(Y >= 0)
    assert counts.tolist() == M_VOC_DIFF and nums.tolist() == N_VOC_DIFF
    assert LabelGraph.from_voc(root, split="test", classes="infer").nums.tolist() == [1, 1, 1]


# ----------------------------------------------------------------------------- real files
# The same readers on the real coco8 / BCCD files, checked against independent parsers.

def test_from_coco_on_coco8(data_dir):
    pytest.importorskip("pyg_mlic.data.coco", reason="pyg_mlic.data.coco not written yet")
    from pycocotools.coco import COCO

    ann = data_dir / "images" / "coco8" / "instances_train.json"
    g = LabelGraph.from_coco(ann, tau=0.4, p=0.2)
    assert g.split == "train"
    # independent image-level labels straight from pycocotools, in g's class order
    api = COCO(str(ann))
    name_to_id = {c["name"]: c["id"] for c in api.loadCats(api.getCatIds())}
    assert sorted(g.classes) == g.classes == sorted(name_to_id)  # ML-GCN order: by name
    img_ids = api.getImgIds()
    Y = np.zeros((len(img_ids), len(g.classes)), dtype=np.uint8)
    for r, iid in enumerate(img_ids):
        for a in api.loadAnns(api.getAnnIds(imgIds=iid, iscrowd=None)):
            Y[r, g.classes.index(next(n for n, i in name_to_id.items()
                                      if i == a["category_id"]))] = 1
    counts, nums = cooccurrence(Y)
    assert nums.sum() > 0 and counts.sum() > 0
    np.testing.assert_array_equal(g.counts.numpy(), counts)
    np.testing.assert_array_equal(g.nums.numpy(), nums)
    # the classes argument selects and orders columns
    # (the two most frequent classes: coco8's training file has no person or dog)
    pick = [g.classes[i] for i in np.argsort(-nums, kind="stable")[:2]]
    assert nums[g.classes.index(pick[1])] > 0
    h = LabelGraph.from_coco(ann, classes=pick[::-1], split="mine")
    assert h.classes == pick[::-1] and h.split == "mine"
    np.testing.assert_array_equal(h.nums.numpy(), [nums[g.classes.index(c)] for c in pick[::-1]])


def test_from_voc_counts_positives_only(data_dir):
    pytest.importorskip("pyg_mlic.data.voc", reason="pyg_mlic.data.voc not written yet")
    root = data_dir / "images" / "bccd"
    g = LabelGraph.from_voc(root, split="trainval", classes=["WBC", "RBC", "Platelets"])
    assert g.split == "trainval" and g.classes == ["WBC", "RBC", "Platelets"]
    # independent reading of the XML files: positive = a non-difficult object
    ids = (root / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    Y = np.zeros((len(ids), g.num_classes), dtype=np.uint8)
    for r, i in enumerate(ids):
        for obj in ET.parse(root / "Annotations" / f"{i}.xml").getroot().iter("object"):
            diff = obj.find("difficult")
            if diff is None or int(diff.text) == 0:
                Y[r, g.classes.index(obj.find("name").text.strip())] = 1
    counts, nums = cooccurrence(Y)
    np.testing.assert_array_equal(g.counts.numpy(), counts)
    np.testing.assert_array_equal(g.nums.numpy(), nums)
    assert nums.min() > 0 and counts.sum() > 0


# ----------------------------------------------------------------------------- partial labels
# Statistics with a known-mask K (False = unknown): M_ij = sum Y_ni K_ni Y_nj K_nj,
# N_i|j = sum Y_ni K_ni K_nj, P(L_j | L_i) = M_ij / N_i|j (see cooccurrence).
Y_PART = [[1, 1, 0],
          [1, 0, 1],
          [1, 1, 1],
          [0, 1, 0]]
K_PART = [[1, 1, 1],
          [1, 0, 1],   # L_1 unknown in image 1
          [1, 1, 0],   # L_2 (a positive) hidden in image 2
          [1, 1, 1]]
# counted by hand (known positives: img0 {0,1}, img1 {0,2}, img2 {0,1}, img3 {1})
M_PART = [[0, 2, 1],
          [2, 0, 0],
          [1, 0, 0]]
N_PART = [[3, 2, 2],     # N_0|1 = 2: of images 0, 1, 2 holding L_0, L_1 is known in 0 and 2
          [3, 3, 2],
          [1, 0, 1]]     # N_2|1 = 0: L_1 is never known beside a known L_2
P_PART = [[F(0), F(2, 2), F(1, 2)],
          [F(2, 3), F(0), F(0, 2)],
          [F(1, 1), F(0), F(0)]]   # 0 / 0 -> 0


def test_masked_statistics_hand_example():
    Y, K = np.array(Y_PART, np.uint8), np.array(K_PART, bool)
    counts, nums = cooccurrence(Y, mask=K)
    assert counts.tolist() == M_PART and nums.tolist() == N_PART
    assert counts.dtype == np.int64 and nums.dtype == np.int64
    P = conditional_probability(counts, nums)
    assert P.dtype == torch.float64
    assert P.tolist() == [[float(v) for v in row] for row in P_PART]
    # the naive estimate (known co-occurrences over the known positives N_i) differs:
    # P(L_1 | L_0) would be 2/3, not 1
    assert float(P[0, 1]) == 1.0 and nums.diagonal().tolist() == [3, 3, 1]
    g = LabelGraph.from_labels(Y, mask=K, scheme="probability")
    assert torch.equal(g.conditional_probability(torch.float64), P)
    assert g.nums.tolist() == N_PART and g.counts.tolist() == M_PART


def _random_partial(seed, N=300, C=7):
    rng = np.random.default_rng(seed)
    Y = (rng.random((N, C)) < rng.uniform(0.05, 0.6, C)).astype(np.uint8)
    Y[:, 3] = 0  # a label never seen
    K = rng.random((N, C)) < 0.6
    return Y, K


@pytest.mark.parametrize("seed", [0, 1])
def test_masked_statistics_equal_brute_force(seed):
    Y, K = _random_partial(seed)
    M = np.zeros((7, 7), np.int64)
    Nm = np.zeros((7, 7), np.int64)
    for y, k in zip(Y, K):
        for i in range(7):
            for j in range(7):
                if y[i] and k[i] and k[j]:
                    Nm[i, j] += 1
                    M[i, j] += int(bool(y[j]) and i != j)
    counts, nums = cooccurrence(Y, mask=K)
    np.testing.assert_array_equal(counts, M)
    np.testing.assert_array_equal(nums, Nm)
    # torch in, torch out; float labels and 0/1 masks accepted
    tc, tn = cooccurrence(torch.from_numpy(Y).float(), mask=torch.from_numpy(K.astype(np.int64)))
    assert torch.equal(tc, torch.from_numpy(M)) and torch.equal(tn, torch.from_numpy(Nm))
    # the value of an unknown entry does not matter
    Y2 = np.where(K, Y, 1 - Y).astype(np.uint8)
    c2, n2 = cooccurrence(Y2, mask=K)
    np.testing.assert_array_equal(c2, counts)
    np.testing.assert_array_equal(n2, nums)


@pytest.mark.parametrize("scheme,convention", [(s_, c) for s_ in SCHEMES for c in CONVENTIONS])
@pytest.mark.parametrize("dtype", [np.uint8, np.bool_, np.float32])
def test_all_known_mask_equals_no_mask_exactly(scheme, convention, dtype):
    Y, _ = _random_partial(2, N=1500, C=9)       # N >= 1024: the unmasked int8 fast path
    Y = Y.astype(dtype)
    K = np.ones(Y.shape, bool)
    c0, n0 = cooccurrence(Y)
    c1, n1 = cooccurrence(Y, mask=K)
    np.testing.assert_array_equal(c1, c0)
    assert n1.shape == (9, 9) and all(np.array_equal(n1[:, j], n0) for j in range(9))
    assert torch.equal(conditional_probability(c1, n1), conditional_probability(c0, n0))
    assert torch.equal(propagation_matrix(c1, n1, tau=0.3, p=0.25, scheme=scheme,
                                          convention=convention),
                       propagation_matrix(c0, n0, tau=0.3, p=0.25, scheme=scheme,
                                          convention=convention))
    g0 = LabelGraph.from_labels(Y, tau=0.3, p=0.25, scheme=scheme, convention=convention)
    g1 = LabelGraph.from_labels(Y, tau=0.3, p=0.25, scheme=scheme, convention=convention,
                                mask=K)
    assert torch.equal(g1.edge_index, g0.edge_index) and torch.equal(g1.edge_weight,
                                                                     g0.edge_weight)
    assert torch.equal(g1.propagation(), g0.propagation())


def test_masked_graph_validates_round_trips_and_matches_from_counts():
    Y, K = _random_partial(3)
    g = LabelGraph.from_labels(Y, mask=K, tau=0.3, classes=[f"c{i}" for i in range(7)])
    assert tuple(g.nums.shape) == (7, 7)
    LabelGraph.from_data(g.data)                  # the check recomputes from N_i|j
    counts, nums = cooccurrence(Y, mask=K)
    g2 = LabelGraph.from_counts(counts, nums, tau=0.3, classes=g.classes)
    assert torch.equal(g2.propagation(), g.propagation())
    # never-seen label (column 3): identity row, no NaN
    P = g.propagation()
    assert torch.isfinite(P).all() and P[3].tolist() == [float(i == 3) for i in range(7)]
    # the unmasked graph of the same labels differs (the statistics are not the same)
    assert not torch.equal(LabelGraph.from_labels(Y, tau=0.3).propagation(), P)


def test_masked_estimate_is_unbiased_under_random_hiding():
    # labels with a strong correlation, then half of the entries hidden at random: the
    # masked Eq. 6 recovers the full-label conditional probabilities; dividing the known
    # co-occurrences by the known positives N_i would halve them
    rng = np.random.default_rng(0)
    N = 40000
    a = rng.random(N) < 0.3
    b = np.where(a, rng.random(N) < 0.8, rng.random(N) < 0.1)
    c = rng.random(N) < 0.5
    Y = np.stack([a, b, c], 1).astype(np.uint8)
    K = rng.random(Y.shape) >= 0.5
    P_full = conditional_probability(*cooccurrence(Y))
    counts, nums = cooccurrence(Y, mask=K)
    P_mask = conditional_probability(counts, nums)
    assert float((P_mask - P_full).abs().max()) < 0.02
    naive = conditional_probability(counts, nums.diagonal())
    assert abs(float(naive[0, 1]) - 0.5 * float(P_full[0, 1])) < 0.02


@pytest.mark.parametrize("mask,match", [
    (np.ones((4, 2), bool), "shape of the labels"),
    (np.full((4, 3), 2), "boolean"),
    (np.full((4, 3), np.nan), "boolean"),
])
def test_bad_mask(mask, match):
    with pytest.raises(ValueError, match=match):
        cooccurrence(np.array(Y_PART, np.uint8), mask=mask)
    with pytest.raises(ValueError, match=match):
        LabelGraph.from_labels(np.array(Y_PART, np.uint8), mask=mask)


def test_bad_pair_counts():
    M, N = np.array(M_PART), np.array(N_PART)
    with pytest.raises(ValueError, match=r"exceeds nums\[0, 1\]"):
        conditional_probability(M, np.where(np.eye(3, dtype=bool), N, 0))
    bad = N.copy()
    bad[0, 1] = 4
    with pytest.raises(ValueError, match=r"nums\[0, 1\] = 4 exceeds nums\[0, 0\]"):
        LabelGraph.from_counts(M, bad)
    with pytest.raises(ValueError, match=r"per-pair denominators"):
        propagation_matrix(M, np.ones((3, 2)))


def test_from_dataset_leaves_unknown_entries_out():
    class _DS:
        labels = np.array(Y_PART, dtype=np.uint8)
        label_mask = np.array(K_PART, bool)
        classes = ["a", "b", "c"]
        split = "train"
    g = LabelGraph.from_dataset(_DS())
    assert g.counts.tolist() == M_PART and g.nums.tolist() == N_PART
