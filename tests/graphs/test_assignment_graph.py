"""Assignment graph of GM-MLIC (Eqs. 1-3): hand-built example, batching, label supports."""
import pytest
import torch
from torch_geometric.data import Batch, HeteroData

from pyg_mlic.graphs import LabelGraph, assignment_graph, assignment_graph_batch
from pyg_mlic.graphs.assignment_graph import (CO, INSTANCE, LABEL, MATCH, NEAR, REV_MATCH,
                                              complete_label_edges, label_edges,
                                              matching_edges)

# two instances in a 200 x 100 (W x H) image, three labels with 2-d "word vectors"
BOXES = torch.tensor([[0.0, 0.0, 100.0, 50.0], [100.0, 50.0, 200.0, 100.0]])
BHAT = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
F = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
W = torch.tensor([[10.0, 11.0], [20.0, 21.0], [30.0, 31.0]])


def _pairs(ei):
    return list(zip(*ei.tolist()))


def test_two_instances_three_labels_equal_a_hand_built_graph():
    g = assignment_graph(F, BOXES, W, image_size=(100, 200), k=5)
    assert isinstance(g, HeteroData)
    assert set(g.node_types) == {INSTANCE, LABEL}
    assert set(g.edge_types) == {NEAR, CO, MATCH, REV_MATCH}
    assert torch.equal(g[INSTANCE].x, F) and torch.equal(g[LABEL].x, W)
    torch.testing.assert_close(g[INSTANCE].boxes, BHAT)
    assert g[INSTANCE].slot.tolist() == [0, 1]
    # G_o: k >= M - 1, so the complete directed graph; attr = [B^_src, B^_dst] (Eq. 1)
    assert sorted(_pairs(g[NEAR].edge_index)) == [(0, 1), (1, 0)]
    for (s, d), a in zip(_pairs(g[NEAR].edge_index), g[NEAR].edge_attr):
        torch.testing.assert_close(a, torch.cat([BHAT[s], BHAT[d]]))
    # G_l: complete without self-loops, attr = [w_src, w_dst] (Eq. 2)
    assert _pairs(g[CO].edge_index) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    expect_co = torch.stack([torch.cat([W[s], W[d]]) for s, d in _pairs(g[CO].edge_index)])
    assert torch.equal(g[CO].edge_attr, expect_co)
    # matching edges: all 6 pairs, attr = [f_i, w_c] (Eq. 3); reverse = same edges flipped
    assert _pairs(g[MATCH].edge_index) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    expect_m = torch.stack([torch.cat([F[i], W[c]]) for i, c in _pairs(g[MATCH].edge_index)])
    assert torch.equal(g[MATCH].edge_attr, expect_m)
    assert torch.equal(g[REV_MATCH].edge_index, g[MATCH].edge_index.flip(0))
    assert torch.equal(g[REV_MATCH].edge_attr, expect_m)
    # normalised boxes give the same graph
    g2 = assignment_graph(F, BHAT, W)
    for t in g.edge_types:
        assert torch.equal(g[t].edge_index, g2[t].edge_index)
        torch.testing.assert_close(g[t].edge_attr, g2[t].edge_attr)


def test_knn_is_reused_from_the_instance_graph():
    from pyg_mlic.graphs import instance_graph

    boxes = torch.tensor([[0, 0, 10, 10], [20, 0, 30, 10], [0, 40, 10, 50], [80, 80, 90, 90.]])
    f = torch.randn(4, 3)
    g = assignment_graph(f, boxes, W, image_size=(100, 100), k=2)
    ig = instance_graph(boxes, f, (100, 100), k=2)
    assert torch.equal(g[NEAR].edge_index, ig.edge_index)
    assert torch.equal(g[NEAR].edge_attr, ig.edge_attr)


def test_batch_offsets_padding_and_no_index_pitfall():
    torch.manual_seed(0)
    B, K, C = 3, 4, 3
    f = torch.randn(B, K, 5)
    xy = torch.rand(B, K, 2) * 0.5
    boxes = torch.cat([xy, xy + 0.25], -1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]]).bool()
    b = assignment_graph_batch(f, boxes, W, mask=mask, k=1)
    assert isinstance(b, Batch) and b.num_graphs == B
    assert b[INSTANCE].ptr.tolist() == [0, 2, 6, 8]
    assert b[LABEL].ptr.tolist() == [0, 3, 6, 9]
    assert b[INSTANCE].slot.tolist() == [0, 1, 0, 1, 2, 3, 1, 3]      # not incremented
    assert torch.equal(b[INSTANCE].x, f[mask])
    ib, lb = b[INSTANCE].batch, b[LABEL].batch
    for t in (NEAR, CO, MATCH, REV_MATCH):
        src_t, _, dst_t = t
        s, d = b[t].edge_index
        sb = (ib if src_t == INSTANCE else lb)[s]
        db = (ib if dst_t == INSTANCE else lb)[d]
        assert torch.equal(sb, db), t                                  # no cross-image edge
    assert b[MATCH].edge_index.size(1) == (2 + 4 + 2) * C
    # every image's part equals the graph built alone
    for i in range(B):
        gi = assignment_graph(f[i], boxes[i], W, k=1, mask=mask[i])
        ex = b.get_example(i)
        for t in gi.edge_types:
            assert torch.equal(ex[t].edge_index, gi[t].edge_index), (i, t)
            assert torch.equal(ex[t].edge_attr, gi[t].edge_attr), (i, t)
    # match edge (i, c) in the batch joins the right global nodes
    s, d = b[MATCH].edge_index
    assert torch.equal(b[MATCH].edge_attr, torch.cat([b[INSTANCE].x[s], b[LABEL].x[d]], 1))


def test_image_without_instances_and_match_attr_off():
    f = torch.randn(2, 3, 4)
    boxes = torch.tensor([[0, 0, .5, .5]]).expand(2, 3, 4).clone()
    mask = torch.tensor([[False] * 3, [True, True, False]])
    b = assignment_graph_batch(f, boxes, W, mask=mask, match_attr=False)
    assert b[INSTANCE].ptr.tolist() == [0, 0, 2]
    assert b[MATCH].edge_index.size(1) == 6 and "edge_attr" not in b[MATCH]
    assert b[CO].edge_index.size(1) == 12


def test_label_supports():
    assert complete_label_edges(1).shape == (2, 0)
    assert matching_edges(2, 3).tolist() == [[0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2]]
    Y = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]])
    lg = LabelGraph.from_labels(Y, classes=["a", "b", "c"], tau=0.4)
    ei = label_edges(3, lg)
    got = set(_pairs(ei))
    assert got and all(s != d for s, d in got)
    dense = torch.zeros(3, 3)
    dense[lg.data.edge_index[0], lg.data.edge_index[1]] = lg.data.edge_weight
    assert got == {(i, j) for i in range(3) for j in range(3) if i != j and dense[i, j] != 0}
    g = assignment_graph(F, BHAT, W, label_graph=lg)
    assert set(_pairs(g[CO].edge_index)) == got
    assert _pairs(label_edges(3, torch.tensor([[0, 1, 2], [1, 1, 0]]))) == [(0, 1), (2, 0)]
    with pytest.raises(ValueError, match="outside"):
        label_edges(3, torch.tensor([[0], [5]]))
    with pytest.raises(ValueError, match="nodes"):
        label_edges(4, lg)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="normalised"):
        assignment_graph(F, BOXES, W)                        # pixel boxes without a size
    with pytest.raises(ValueError, match="label_embeddings"):
        assignment_graph(F, BHAT, torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="features"):
        assignment_graph(F, BHAT[:1], W)
