"""Property-based tests (hypothesis): class permutations, ranges, perfect rankings.

Complements ``tests/test_metrics.py`` (which already checks, by property, metric
ranges and that permuting classes permutes the per-class AP of
:func:`multilabel_metrics`) and ``tests/nn/test_adaptive_label_graph.py``. Every
test keeps ``max_examples`` small so the module runs in seconds.
"""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyg_mlic.graphs import LabelGraph, cooccurrence
from pyg_mlic.metrics import UndefinedAPWarning, multilabel_metrics

FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def label_matrices(draw, max_n=30, max_c=7, min_c=1):
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(min_c, max_c))
    Y = draw(hnp.arrays(np.uint8, (n, c), elements=st.integers(0, 1)))
    return Y


@st.composite
def labels_and_perm(draw, **kw):
    Y = draw(label_matrices(**kw))
    perm = draw(st.permutations(range(Y.shape[1])))
    return Y, np.asarray(perm, dtype=np.int64)


# --------------------------------------------------------------------------- cooccurrence
@FAST
@given(labels_and_perm(), st.randoms(use_true_random=False))
def test_cooccurrence_is_class_equivariant_and_sample_invariant(yp, rnd):
    Y, perm = yp
    counts, nums = cooccurrence(Y)
    # definition: M = Y^T Y off the diagonal, N = column sums
    G = Y.astype(np.int64).T @ Y.astype(np.int64)
    np.fill_diagonal(G, 0)
    np.testing.assert_array_equal(counts, G)
    np.testing.assert_array_equal(nums, Y.sum(0))
    assert counts.dtype == np.int64 and nums.dtype == np.int64
    # permuting classes permutes rows and columns of M and the entries of N
    pc, pn = cooccurrence(Y[:, perm])
    np.testing.assert_array_equal(pc, counts[np.ix_(perm, perm)])
    np.testing.assert_array_equal(pn, nums[perm])
    # the order of the images does not matter
    rows = list(range(Y.shape[0]))
    rnd.shuffle(rows)
    sc, sn = cooccurrence(Y[rows])
    np.testing.assert_array_equal(sc, counts)
    np.testing.assert_array_equal(sn, nums)
    # torch in, torch out, same numbers
    tc, tn = cooccurrence(torch.from_numpy(Y))
    assert torch.equal(tc, torch.from_numpy(counts)) and torch.equal(tn, torch.from_numpy(nums))


# --------------------------------------------------------------------------- label graph
@FAST
@given(labels_and_perm(min_c=2), st.floats(0.0, 1.0), st.floats(0.0, 1.0),
       st.sampled_from(["reweighted", "binary", "probability"]),
       st.sampled_from(["paper", "mlgcn_code"]))
def test_propagation_is_class_equivariant_and_finite(yp, tau, p, scheme, convention):
    Y, perm = yp
    kw = dict(tau=tau, p=p, scheme=scheme, convention=convention)
    classes = [f"c{i}" for i in range(Y.shape[1])]
    g = LabelGraph.from_labels(Y, classes=classes, **kw)
    gp = LabelGraph.from_labels(Y[:, perm], classes=[classes[i] for i in perm], **kw)
    P, Pp = g.propagation(), gp.propagation()
    assert torch.isfinite(P).all() and (P >= 0).all()
    # class k of the permuted graph is class perm[k] of the original: P' = P[perm][:, perm]
    idx = torch.from_numpy(perm)
    torch.testing.assert_close(Pp, P[idx][:, idx], rtol=1e-6, atol=1e-7)
    # the sparse form the GCN layer applies is the same operator (PyG source_to_target:
    # edge j -> i carries P[i, j])
    dense = torch.zeros_like(Pp)
    dense[gp.edge_index[1], gp.edge_index[0]] = gp.edge_weight
    torch.testing.assert_close(dense, Pp)
    if scheme == "reweighted" and convention == "paper":
        # Eq. 8: every row distributes exactly 1 (1 - p on itself, p on its neighbours;
        # a node without neighbours keeps 1 on itself)
        torch.testing.assert_close(P.sum(1), torch.ones(P.shape[0]), rtol=1e-5, atol=1e-6)


@FAST
@given(labels_and_perm(min_c=2, max_c=5), st.integers(0, 2**16))
def test_ml_gcn_logits_are_class_equivariant(yp, seed):
    """Relabelling the classes (labels, embeddings, class list permuted together) permutes
    ML-GCN's logits: no output depends on where a class sits in the list."""
    from pyg_mlic.models import build_model

    Y, perm = yp
    Y = Y.copy()
    Y[0] = 1  # at least one label occurs
    C = Y.shape[1]
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(C, 6, generator=g)
    x = torch.randn(3, 5, generator=g)
    classes = [f"c{i}" for i in range(C)]
    out = []
    for cols in (np.arange(C), perm):
        torch.manual_seed(seed)  # same weights: GCN weights are shared by all nodes
        m = build_model("ml_gcn", classes=[classes[i] for i in cols], input_kind="features",
                        in_features=5, train_labels=Y[:, cols], label_embeddings=E[cols],
                        encoder_hidden=[8], encoder_out=8, gcn_hidden=[8]).eval()
        with torch.no_grad():
            out.append(m({"features": x}).logits)
    torch.testing.assert_close(out[1], out[0][:, torch.from_numpy(perm)], rtol=1e-5,
                               atol=1e-6)


# --------------------------------------------------------------------------- metrics
@st.composite
def scored_problems(draw):
    Y = draw(label_matrices(max_n=25, max_c=5))
    Y[draw(st.integers(0, Y.shape[0] - 1)), draw(st.integers(0, Y.shape[1] - 1))] = 1
    s = draw(hnp.arrays(np.float64, Y.shape, elements=st.floats(-4, 4, allow_nan=False,
                                                                 width=32)))
    return s, Y


@FAST
@given(scored_problems(), st.randoms(use_true_random=False))
def test_metrics_ignore_image_order_and_depend_on_ranks_only(problem, rnd):
    s, Y = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAPWarning)
        m = multilabel_metrics(s, Y, scores_are="logits")
        rows = list(range(len(Y)))
        rnd.shuffle(rows)
        ms = multilabel_metrics(s[rows], Y[rows], scores_are="logits")
        # AP depends on the ranking only: replacing each class's scores by their dense
        # ranks (an exactly order- and tie-preserving map) keeps it
        ranks = np.stack([np.unique(col, return_inverse=True)[1].reshape(-1) for col in s.T],
                         axis=1).astype(np.float64)
        ma = multilabel_metrics(ranks, Y, scores_are="logits")
    for key, v in m.items():
        if isinstance(v, float):
            assert 0.0 <= v <= 1.0, key
            assert ms[key] == pytest.approx(v, abs=1e-12), key
    assert ms["AP"] == pytest.approx(m["AP"], abs=1e-12)
    assert ma["AP"] == pytest.approx(m["AP"], abs=1e-12)
    assert ma["mAP"] == pytest.approx(m["mAP"], abs=1e-12)


@FAST
@given(label_matrices(max_n=25, max_c=6), st.integers(0, 2**16))
def test_perfect_ranking_gives_ap_one(Y, seed):
    """Any scores that put every positive of a class above its negatives give AP = 1."""
    Y = Y.copy()
    Y[0] = 1
    rng = np.random.default_rng(seed)
    # positives in (1, 2), negatives in (-2, -1): random order within each group
    s = np.where(Y == 1, 1.0 + rng.random(Y.shape), -1.0 - rng.random(Y.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAPWarning)
        m = multilabel_metrics(s, Y, scores_are="logits")
    assert m["mAP"] == 1.0
    assert m["AP"] == [1.0 if Y[:, c].any() else None for c in range(Y.shape[1])]
    # thresholding at 0.5 (logit 0) is perfect too
    assert m["OP"] == m["OR"] == m["OF1"] == 1.0
