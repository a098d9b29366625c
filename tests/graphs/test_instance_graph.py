"""Instance spatial graph (GM-MLIC Eq. 1): kNN over box centres, box-pair edge attributes."""
import itertools

import pytest
import torch
from torch_geometric.data import Batch

from pyg_mlic.graphs.instance_graph import (
    instance_graph,
    instance_graph_batch,
    instance_graphs_from_regions,
    knn_edges_dense,
)

# W = 200, H = 100; centres (5, 5), (25, 5), (5, 45): d01 = 20, d02 = 40, d12 = sqrt(2000)
BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [0.0, 40.0, 10.0, 50.0]])
SIZE = (100, 200)
BHAT = [[0.0, 0.0, 0.05, 0.1], [0.1, 0.0, 0.15, 0.1], [0.0, 0.4, 0.05, 0.5]]


def _edges(g):
    return list(zip(*g.edge_index.tolist()))


def test_three_boxes_k1_by_hand():
    feats = torch.arange(6.0).view(3, 2)
    g = instance_graph(BOXES, feats, SIZE, k=1)
    # node j hears from its nearest i: 0 <- 1, 1 <- 0, 2 <- 0   (edge = (source, target))
    assert _edges(g) == [(1, 0), (0, 1), (0, 2)]
    expect = torch.tensor([BHAT[1] + BHAT[0], BHAT[0] + BHAT[1], BHAT[0] + BHAT[2]])
    assert g.edge_attr.shape == (3, 8)
    assert torch.allclose(g.edge_attr, expect)
    assert torch.equal(g.x, feats)
    # pos: the normalised centres the neighbours are searched on
    assert torch.allclose(g.pos, torch.tensor([[0.025, 0.05], [0.125, 0.05], [0.025, 0.45]]))
    assert torch.equal(g.boxes, BOXES)
    assert torch.allclose(g.boxes_norm, torch.tensor(BHAT))
    assert g.image_size.tolist() == [[100, 200]] and g.num_nodes == 3


def test_three_boxes_k2_is_complete_and_ordered_by_distance():
    g = instance_graph(BOXES, torch.zeros(3, 1), SIZE, k=2)
    assert _edges(g) == [(1, 0), (2, 0), (0, 1), (2, 1), (0, 2), (1, 2)]
    assert torch.allclose(g.edge_attr[3], torch.tensor(BHAT[2] + BHAT[1]))
    # M <= k: every other instance, still no self-loop
    g5 = instance_graph(BOXES, torch.zeros(3, 1), SIZE, k=5)
    assert sorted(_edges(g5)) == sorted(_edges(g))
    assert all(s != t for s, t in _edges(g5))


def test_ties_broken_by_lower_index():
    boxes = torch.tensor([[-1.0, -1, 1, 1], [0.0, -1, 2, 1], [-2.0, -1, 0, 1]])  # centres 0, 1, -1
    # (a power-of-two image side: the normalised distances tie exactly in floating point)
    g = instance_graph(boxes + 5, torch.zeros(3, 1), (8, 8), k=1)
    assert _edges(g) == [(1, 0), (0, 1), (0, 2)]


def test_zero_and_one_instance():
    g0 = instance_graph(torch.zeros(0, 4), torch.zeros(0, 7), (10, 10), k=3)
    assert g0.num_nodes == 0 and g0.edge_index.shape == (2, 0)
    assert g0.edge_attr.shape == (0, 8) and g0.x.shape == (0, 7)
    g1 = instance_graph(BOXES[:1], torch.ones(1, 7), (100, 200), k=3)
    assert g1.num_nodes == 1 and g1.edge_index.shape == (2, 0)


def test_mask_drops_padding_rows():
    boxes = torch.cat([BOXES, torch.zeros(2, 4)])
    feats = torch.cat([torch.ones(3, 2), torch.zeros(2, 2)])
    mask = torch.tensor([True, True, True, False, False])
    g = instance_graph(boxes, feats, SIZE, k=1, mask=mask)
    assert g.num_nodes == 3 and _edges(g) == [(1, 0), (0, 1), (0, 2)]


def _reference_edges(boxes, mask, k, size=(1, 1)):
    """Brute force: per centre j, the k closest other real i by (squared distance of the
    normalised centres, index), in the compact numbering of the real rows."""
    h, w = size
    c = (boxes[:, :2] + boxes[:, 2:]) / 2 / torch.tensor([float(w), float(h)])
    real = [i for i in range(len(boxes)) if mask[i]]
    compact = {i: n for n, i in enumerate(real)}
    out = []
    for j in real:
        others = sorted((float(((c[i] - c[j]) ** 2).sum()), i) for i in real if i != j)
        out += [(compact[i], compact[j]) for _, i in others[:k]]
    return out


@pytest.mark.parametrize("k", [1, 3, 6])
def test_batch_matches_brute_force_and_offsets(k):
    g = torch.Generator().manual_seed(k)
    bsz, kmax = 4, 7
    xy = torch.rand(bsz, kmax, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(bsz, kmax, 2, generator=g) * 20], -1)
    feats = torch.randn(bsz, kmax, 5, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0] * 7, [1, 0, 1, 0, 1, 0, 0]]).bool()
    sizes = torch.tensor([[80, 90], [100, 70], [50, 50], [72, 72]])
    batch = instance_graph_batch(boxes, feats, sizes, mask, k=k)
    assert isinstance(batch, Batch) and batch.num_graphs == bsz
    counts = mask.sum(1)
    assert batch.ptr.tolist() == [0] + torch.cumsum(counts, 0).tolist()
    assert batch.batch.tolist() == sum(([b] * int(n) for b, n in enumerate(counts)), [])
    for b in range(bsz):
        d = batch.get_example(b)
        ref = _reference_edges(boxes[b], mask[b], k, sizes[b].tolist())
        assert _edges(d) == ref
        assert torch.equal(d.x, feats[b][mask[b]])
        h, w = sizes[b].tolist()
        bn = boxes[b][mask[b]] / torch.tensor([w, h, w, h])
        if ref:
            src, dst = d.edge_index
            assert torch.allclose(d.edge_attr, torch.cat([bn[src], bn[dst]], 1))
        # the same graph built alone
        alone = instance_graph(boxes[b], feats[b], sizes[b], k=k, mask=mask[b])
        assert torch.equal(alone.edge_index, d.edge_index)
        assert torch.equal(alone.edge_attr, d.edge_attr)
    # global edge indices are offset by each graph's first node
    e_img = batch.batch[batch.edge_index[0]]
    assert torch.equal(e_img, batch.batch[batch.edge_index[1]])
    ne = [min(k, int(n) - 1) * int(n) if n > 1 else 0 for n in counts]
    assert batch.edge_index.shape[1] == sum(ne)


def test_knn_dense_excludes_padding_and_self():
    pos = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.5, 0.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False, True]])
    b, src, dst = knn_edges_dense(pos, mask, k=2)
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert pairs == {(1, 0), (3, 0), (0, 1), (3, 1), (0, 3), (1, 3)}
    assert all(s not in (2,) and d not in (2,) for s, d in pairs)


def test_from_region_features():
    from pyg_mlic.detection import RegionFeatures, Regions

    r = Regions(BOXES, torch.randn(3, 4), torch.tensor([0.9, 0.8, 0.7]), torch.tensor([3, 1, 2]),
                SIZE)
    rf = RegionFeatures.from_regions([r, Regions.empty(4, (8, 8))], max_instances=5)
    batch = instance_graphs_from_regions(rf, k=1)
    assert batch.num_graphs == 2 and batch.ptr.tolist() == [0, 3, 3]
    assert _edges(batch.get_example(0)) == [(1, 0), (0, 1), (0, 2)]
    assert batch.cls.tolist() == [3, 1, 2] and torch.allclose(batch.score, r.scores)
    assert batch.image_size.tolist() == [[100, 200], [8, 8]]
    # a region with no area (a crop left it on the image's edge) is not an instance
    flat = Regions(torch.cat([BOXES, torch.tensor([[200.0, 5.0, 200.0, 9.0]])]),
                   torch.randn(4, 4), torch.tensor([0.9, 0.8, 0.7, 0.6]),
                   torch.tensor([3, 1, 2, 5]), SIZE)
    g = instance_graphs_from_regions(RegionFeatures.from_regions([flat], 5), k=1)
    assert g.num_nodes == 3 and g.cls.tolist() == [3, 1, 2]
    assert _edges(g.get_example(0)) == [(1, 0), (0, 1), (0, 2)]


def test_bad_input():
    f = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="k must be"):
        instance_graph(BOXES, f, SIZE, k=0)
    with pytest.raises(ValueError, match="boxes must be"):
        instance_graph(BOXES[:, :3], f, SIZE)
    with pytest.raises(ValueError, match="features must be"):
        instance_graph(BOXES, torch.zeros(2, 2), SIZE)
    with pytest.raises(ValueError, match="x2 >= x1"):
        instance_graph(BOXES[:, [2, 1, 0, 3]], f, SIZE)
    with pytest.raises(ValueError, match="non-finite"):
        instance_graph(BOXES * float("nan"), f, SIZE)
    with pytest.raises(ValueError, match="positive"):
        instance_graph(BOXES, f, (0, 10))
    with pytest.raises(ValueError, match="mask"):
        instance_graph_batch(BOXES[None], f[None], torch.tensor([SIZE]),
                             torch.ones(1, 3, dtype=torch.long))


def test_edge_count_formula_over_sizes():
    for m, k in itertools.product(range(0, 6), range(1, 5)):
        g = instance_graph(torch.rand(m, 2).repeat(1, 2) + torch.tensor([0, 0, 1.0, 1.0]),
                           torch.zeros(m, 1), (10, 10), k=k)
        assert g.edge_index.shape[1] == m * min(k, max(m - 1, 0))


# ---------------------------------------------------------------- one coordinate system
# a wide 200 x 20 (W x H) image: A's nearest neighbour is C in pixels (8 px below) but B
# in normalised coordinates (0.2 of the width to the right; C is 0.4 of the height below)
WIDE = torch.tensor([[8.0, 8.0, 12.0, 12.0],       # A, centre (10, 10)
                     [48.0, 8.0, 52.0, 12.0],      # B, centre (50, 10): 40 px, 0.2
                     [8.0, 16.0, 12.0, 20.0]])     # C, centre (10, 18): 8 px, 0.4


def test_neighbours_are_searched_on_normalised_centres():
    g = instance_graph(WIDE, torch.zeros(3, 1), (20, 200), k=1)
    assert _edges(g)[0] == (1, 0)                  # A hears from B, not from C
    pixel = knn_edges_dense(((WIDE[:, :2] + WIDE[:, 2:]) / 2)[None],
                            torch.ones(1, 3, dtype=torch.bool), 1)
    assert (int(pixel[1][0]), int(pixel[2][0])) == (2, 0)      # in pixels it would be C
    # the same graph from boxes that are already normalised (unit image size)
    gn = instance_graph(WIDE / torch.tensor([200.0, 20, 200, 20]), torch.zeros(3, 1), (1, 1),
                        k=1)
    assert torch.equal(gn.edge_index, g.edge_index)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_the_model_and_the_graph_builders_build_the_same_instance_graph(k):
    """G_o of the training path (GraphNetworkBlock.forward_dense on the normalised boxes of
    read_regions), of instance_graph_batch (pixels + image sizes) and of
    assignment_graph_batch are one graph, in non-square images with padding."""
    from pyg_mlic.graphs import assignment_graph_batch
    from pyg_mlic.graphs.assignment_graph import NEAR
    from pyg_mlic.nn import GraphNetworkBlock

    g = torch.Generator().manual_seed(10 + k)
    sizes = torch.tensor([[20, 200], [300, 40], [64, 64]])            # (H, W)
    bsz, kmax = 3, 6
    wh = sizes.flip(1).float()[:, None, :]                            # (W, H)
    xy = torch.rand(bsz, kmax, 2, generator=g) * wh * 0.8
    boxes = torch.cat([xy, xy + torch.rand(bsz, kmax, 2, generator=g) * wh * 0.2], -1)
    boxes[0, :3] = WIDE                                                # the case above
    mask = torch.tensor([[1, 1, 1, 1, 0, 1], [1] * 6, [1, 0, 1, 1, 0, 0]]).bool()
    feats = torch.randn(bsz, kmax, 5, generator=g)
    ig = instance_graph_batch(boxes, feats, sizes, mask, k=k)
    slot = mask.nonzero()                                             # node -> (image, row)
    ref = sorted((int(slot[s, 0]), int(slot[s, 1]), int(slot[d, 1]))
                 for s, d in ig.edge_index.t().tolist())
    # the training path: boxes normalised as read_regions does, kNN inside the block
    nboxes = boxes / torch.stack([sizes[:, 1], sizes[:, 0]] * 2, 1)[:, None, :].float()
    gnb = GraphNetworkBlock(5, 3, 8, [8], k=k)
    seen = {}
    gnb.node_convs[0].register_forward_pre_hook(
        lambda mod, args: seen.update(near=args[1][NEAR]) and None)
    gnb.forward_dense(feats, nboxes * mask[..., None], mask, torch.eye(3))
    src, dst = seen["near"]
    dense = sorted((int(s) // kmax, int(s) % kmax, int(d) % kmax)
                   for s, d in zip(src.tolist(), dst.tolist()))
    assert dense == ref
    # the assignment graph (pixels + sizes, and already-normalised boxes)
    for bx, sz in ((boxes, sizes), (nboxes, None)):
        ag = assignment_graph_batch(feats, bx, torch.eye(3), sz, mask, k=k)
        assert torch.equal(ag[NEAR].edge_index, ig.edge_index)
        torch.testing.assert_close(ag[NEAR].edge_attr, ig.edge_attr)
