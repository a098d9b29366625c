"""GM-MLIC's graph network block: node/edge convolutions (Eqs. 5-12), fast == graph ==
reference, ablations, permutation invariance."""
import pytest
import torch

from pyg_mlic.graphs import assignment_graph, assignment_graph_batch
from pyg_mlic.graphs.assignment_graph import CO, INSTANCE, LABEL, MATCH, NEAR, REV_MATCH
from pyg_mlic.nn import GNBEdgeConv, GNBNodeConv, GraphNetworkBlock, SplitMLP

FLAGS = [dict(), dict(use_instance_graph=False), dict(use_label_graph=False),
         dict(use_matching_edges=False),
         dict(use_instance_graph=False, use_label_graph=False, use_matching_edges=False)]


def _inputs(B=3, K=6, C=4, D=10, d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, K, D, generator=g, dtype=torch.float64)
    xy = torch.rand(B, K, 2, generator=g, dtype=torch.float64) * 0.5
    wh = torch.rand(B, K, 2, generator=g, dtype=torch.float64) * 0.5
    boxes = torch.cat([xy, xy + wh], -1)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[0, 4:] = False
    if B > 2:
        mask[2, 1:] = False                                  # a single instance
    E = torch.randn(C, d, generator=g, dtype=torch.float64)
    return f * mask[..., None], boxes * mask[..., None], mask, E


def _block(D=10, d=7, **kw):
    torch.manual_seed(0)
    return GraphNetworkBlock(D, d, 16, (16, 8), k=2, **kw).double()


def test_split_mlp_parts_equal_concatenation():
    torch.manual_seed(0)
    m = SplitMLP([3, 5], 8, 4)
    a, b = torch.randn(6, 3), torch.randn(6, 5)
    ref = m(a, b)
    h = m.hidden(m.proj(0, a, bias=True), m.proj(1, b))
    torch.testing.assert_close(m.head(h), ref)
    torch.testing.assert_close(m(torch.cat([a, b], 1)), ref)
    with pytest.raises(ValueError, match="part 1"):
        m.proj(1, a)


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: ",".join(f) or "full")
def test_fast_path_equals_graph_and_reference(flags):
    f, boxes, mask, E = _inputs()
    g = _block(**flags)
    z = g.forward_dense(f, boxes, mask, E)
    assert z.shape == (3, 6, 4)
    ref = g.forward_reference(f, boxes, mask, E)
    batch = assignment_graph_batch(f, boxes, E, mask=mask, k=2)
    zg = g.to_dense(batch, g(batch), 6)
    zr = g.to_dense(batch, g(batch, reference=True), 6)
    m = mask[..., None].expand_as(z)
    for other in (ref, zg, zr):
        torch.testing.assert_close(z[m], other[m], atol=1e-10, rtol=1e-10)


def test_fast_path_float32_within_1e5_and_restricted_label_graph():
    f, boxes, mask, E = (t.float() if t.is_floating_point() else t for t in _inputs(C=5))
    torch.manual_seed(0)
    g = GraphNetworkBlock(10, 7, 32, (32, 16), k=3)
    lei = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 4]])
    z = g.forward_dense(f, boxes, mask, E, lei)
    ref = g.forward_reference(f, boxes, mask, E, lei)
    torch.testing.assert_close(z[mask], ref[mask], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(z[mask], g.forward_dense(f, boxes, mask, E)[mask])


def test_gradients_equal_between_paths():
    f, boxes, mask, E = _inputs()
    g = _block()
    g.forward_dense(f, boxes, mask, E)[mask].sum().backward()
    fast = {n: p.grad.clone() for n, p in g.named_parameters()}
    g.zero_grad()
    g.forward_reference(f, boxes, mask, E)[mask].sum().backward()
    for n, p in g.named_parameters():
        torch.testing.assert_close(p.grad, fast[n], atol=1e-9, rtol=1e-9, msg=n)
        assert fast[n].abs().sum() > 0, n                         # every parameter is used


def test_permuting_instances_permutes_scores():
    f, boxes, mask, E = _inputs(B=1, K=7)
    g = _block()
    z = g.forward_dense(f, boxes, mask, E)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    zp = g.forward_dense(f[:, perm], boxes[:, perm], mask[:, perm], E)
    torch.testing.assert_close(zp, z[:, perm])


def test_padding_does_not_change_real_scores():
    f, boxes, mask, E = _inputs(B=2, K=6)
    g = _block()
    z = g.forward_dense(f, boxes, mask, E)
    pad = torch.cat([f, torch.randn(2, 3, 10, dtype=f.dtype)], 1)      # garbage padding
    pb = torch.cat([boxes, torch.rand(2, 3, 4, dtype=f.dtype)], 1)
    pm = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
    zp = g.forward_dense(pad, pb, pm, E)
    torch.testing.assert_close(zp[:, :6][mask], z[mask])
    alone = g.forward_dense(f[:1, :4], boxes[:1, :4], mask[:1, :4], E)  # batch-independent
    torch.testing.assert_close(alone[0], z[0, :4])


def test_node_conv_matches_the_equations_by_hand():
    torch.manual_seed(0)
    conv = GNBNodeConv(4, 3).double()
    g = assignment_graph(torch.randn(3, 4, dtype=torch.float64),
                         torch.tensor([[0, 0, .2, .2], [.1, .1, .3, .3], [.8, .8, .9, .9]],
                                      dtype=torch.float64),
                         torch.randn(2, 4, dtype=torch.float64), k=1)
    ea = {NEAR: torch.randn(g[NEAR].edge_index.size(1), 4, dtype=torch.float64),
          CO: torch.randn(2, 4, dtype=torch.float64),
          MATCH: torch.randn(6, 4, dtype=torch.float64)}
    ei = {t: g[t].edge_index for t in g.edge_types}
    x = {INSTANCE: g[INSTANCE].x, LABEL: g[LABEL].x}
    out = conv(x, ei, ea)
    xo, xl = x[INSTANCE], x[LABEL]
    for i in range(3):
        nb = [(e, int(s)) for e, (s, d) in enumerate(ei[NEAR].t()) if int(d) == i]
        vhat = torch.stack([conv.rho_oo(ea[NEAR][e], xo[j]) for e, j in nb]).mean(0)
        vtil = torch.stack([conv.rho_lo(ea[MATCH][i * 2 + c], xl[c]) for c in range(2)]).mean(0)
        torch.testing.assert_close(out[INSTANCE][i], conv.phi_o(xo[i], vhat, vtil))
    for c in range(2):
        vhat = conv.rho_ll(ea[CO][1 - c], xl[1 - c])               # the other label
        vtil = torch.stack([conv.rho_ol(ea[MATCH][i * 2 + c], xo[i]) for i in range(3)]).mean(0)
        torch.testing.assert_close(out[LABEL][c], conv.phi_l(xl[c], vhat, vtil))
    assert set(out) == {INSTANCE, LABEL} and out[INSTANCE].shape == (3, 3)


def test_edge_conv_matches_the_equations_and_types():
    torch.manual_seed(0)
    conv = GNBEdgeConv(3, 4, 5, edge_types=[MATCH]).double()
    x = {INSTANCE: torch.randn(2, 3, dtype=torch.float64),
         LABEL: torch.randn(3, 3, dtype=torch.float64)}
    ei = {MATCH: torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2]]),
          CO: torch.tensor([[0], [1]])}
    e = torch.randn(6, 4, dtype=torch.float64)
    out = conv(x, ei, {MATCH: e, CO: torch.randn(1, 4, dtype=torch.float64)})
    assert set(out) == {MATCH} and out[MATCH].shape == (6, 5)
    for k, (i, c) in enumerate(ei[MATCH].t().tolist()):
        ehat = conv.rho["match"](x[INSTANCE][i], x[LABEL][c])      # Eq. 11
        torch.testing.assert_close(out[MATCH][k], conv.phi["match"](e[k], ehat))   # Eq. 12
    with pytest.raises(ValueError, match="edge type"):
        GNBEdgeConv(3, 4, 5, edge_types=[("a", "b", "c")])


def test_paper_defaults_and_reset_parameters():
    g = GraphNetworkBlock(1024, 300)
    assert g.conv_channels == [512, 256] and len(g.node_convs) == 2
    assert [c.out_channels for c in g.node_convs] == [512, 256]
    assert g.edge_convs[-1].edge_types == [MATCH]                 # last module: matching only
    assert g.edge_convs[0].edge_types == [NEAR, CO, MATCH]
    w = g.decoder.lin1.weight.clone()
    g.reset_parameters()
    assert not torch.equal(w, g.decoder.lin1.weight)
    s = repr(g)
    assert "GNBNodeConv" in s and "matching_edges=True" in s
    with pytest.raises(ValueError, match="conv_channels"):
        GraphNetworkBlock(4, 4, conv_channels=())


def test_rev_match_uses_the_same_state_order():
    f, boxes, mask, E = _inputs(B=1)
    b = assignment_graph_batch(f, boxes, E, mask=mask, k=2)
    assert torch.equal(b[REV_MATCH].edge_index, b[MATCH].edge_index.flip(0))


def test_memory_saving_autograd_functions_gradcheck():
    from pyg_mlic.nn.gnb_edge_conv import Folded, pair_relu_linear, relu_weighted_sum

    torch.manual_seed(0)
    d = dict(dtype=torch.float64, requires_grad=True)
    a, b = torch.randn(2, 3, 1, 4, **d), torch.randn(5, 4, **d)
    W, c = torch.randn(3, 4, **d), torch.randn(3, **d)
    torch.testing.assert_close(pair_relu_linear(a, b, W, c),
                               torch.nn.functional.linear(torch.relu(a + b), W, c))
    assert torch.autograd.gradcheck(lambda *t: pair_relu_linear(*t), (a, b, W, c))
    ia, ib = torch.tensor([0, 2, 2, 1]), torch.tensor([4, 0, 1, 1])
    x, y = torch.randn(2, 3, 4, **d), torch.randn(5, 4, **d)       # gathered along dim -2
    torch.testing.assert_close(pair_relu_linear(x, y, W, c, ia, ib),
                               torch.nn.functional.linear(torch.relu(x[:, ia] + y[ib]), W, c))
    assert torch.autograd.gradcheck(lambda p, q, w: pair_relu_linear(p, q, w, None, ia, ib),
                                    (x, y, W))
    z = torch.randn(2, 3, 5, 4, **d)
    w = torch.rand(2, 3, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(relu_weighted_sum(z, w, 1), (torch.relu(z) * w).sum(1))
    assert torch.autograd.gradcheck(lambda t: relu_weighted_sum(t, w, 1), (z,))
    f = Folded.of_pair(SplitMLP([4, 4], 4, 3).double(), a, b)
    assert f.shape == (2, 3, 5, 3)
    torch.testing.assert_close(f.linear(W.t()[:3, :3].contiguous()), f.value() @ W.t()[:3, :3].t())


# ----------------------------------------------------------------------------- message passing
def test_block_adjacency_round_trip_and_errors():
    from pyg_mlic.nn.block_adjacency import block_adjacency, dense_blocks

    w = torch.rand(2, 3, 4)
    adj = block_adjacency(w)
    assert adj.shape == (6, 8) and adj.is_coalesced() and adj._nnz() == 24
    dense = adj.to_dense()
    torch.testing.assert_close(dense[:3, :4], w[0])
    torch.testing.assert_close(dense[3:, 4:], w[1])
    assert (dense[:3, 4:] == 0).all() and (dense[3:, :4] == 0).all()
    torch.testing.assert_close(dense_blocks(adj, 3, 4), w)
    with pytest.raises(ValueError, match="block adjacency"):
        dense_blocks(adj, 2, 4)
    with pytest.raises(ValueError, match="block adjacency"):
        dense_blocks(adj.to_sparse_csr(), 3, 4)


def test_matching_adjacency_holds_mean_weights():
    from pyg_mlic.nn.block_adjacency import dense_blocks
    from pyg_mlic.nn.graph_network_block import matching_adjacency

    mask = torch.tensor([[True, True, False], [False, False, False]])
    to_labels, to_instances = matching_adjacency(mask, 4)
    wl, wi = dense_blocks(to_labels, 4, 3), dense_blocks(to_instances, 3, 4)
    torch.testing.assert_close(wl.sum(-1), torch.tensor([[1.0] * 4, [0.0] * 4]))  # mean
    torch.testing.assert_close(wi.sum(-1), mask.float())           # padding rows: none
    assert (wl[0, :, 2] == 0).all() and (wi[0, :2] == 0.25).all()


def _padded_and_graph(B=3, K=4, C=5, F=6, seed=0, dtype=torch.float32):
    """One padded batch in both layouts: padded (instances [B K, F], shared labels [C, F],
    dense matching states [B, K, C, F] over block adjacencies) and the equivalent edge
    lists (labels copied per image, matching edges of the real instances)."""
    from pyg_mlic.nn.graph_network_block import matching_adjacency

    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[0, 2:] = False
    mask[2] = False                                                  # no instance at all
    xo = torch.randn(B * K, F, generator=g, dtype=dtype)
    xl = torch.randn(C, F, generator=g, dtype=dtype)
    near = torch.tensor([[0, 1, 4, 5, 6, 7], [1, 0, 5, 6, 7, 4]])  # real instances only
    co = torch.tensor([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 2]])
    e_near = torch.randn(near.size(1), F, generator=g, dtype=dtype)
    e_co = torch.randn(co.size(1), F, generator=g, dtype=dtype)
    em = torch.randn(B, K, C, F, generator=g, dtype=dtype)
    to_l, to_i = matching_adjacency(mask, C, dtype)
    padded = ({INSTANCE: xo, LABEL: xl},
              {NEAR: near, CO: co, MATCH: to_l, REV_MATCH: to_i},
              {NEAR: e_near, CO: e_co, MATCH: em})
    b, k = mask.nonzero(as_tuple=True)
    c = torch.arange(C)
    src = (b * K + k).repeat_interleave(C)
    dst = (b[:, None] * C + c[None]).reshape(-1)
    off = torch.arange(B).repeat_interleave(co.size(1)) * C
    graph = ({INSTANCE: xo, LABEL: xl.repeat(B, 1)},
             {NEAR: near, CO: co.repeat(1, B) + off, MATCH: torch.stack([src, dst]),
              REV_MATCH: torch.stack([dst, src])},
             {NEAR: e_near, CO: e_co.repeat(B, 1),
              MATCH: em[b, k].reshape(-1, F)})
    return mask, padded, graph


def test_node_conv_fused_block_path_equals_the_message_path_with_gradients():
    mask, padded, graph = _padded_and_graph()
    torch.manual_seed(0)
    conv = GNBNodeConv(6, 7)
    real = mask.reshape(-1)
    G_o, G_l = torch.randn(12, 7), torch.randn(3, 5, 7)
    outs, grads = [], []
    for x, ei, ea in (graph, padded):
        conv.zero_grad()
        out = conv(x, ei, ea)
        lab = out[LABEL].view(3, 5, 7)
        ((out[INSTANCE] * G_o)[real].sum() + (lab * G_l).sum()).backward()
        outs.append((out[INSTANCE][real].detach(), lab.detach()))
        grads.append({n: p.grad.clone() for n, p in conv.named_parameters()})
    assert padded[0][LABEL].dim() == 2 and outs[1][1].shape == (3, 5, 7)
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-5, msg=n)
        assert grads[0][n].abs().sum() > 0, n
    # labels of the image without instances get no matching message (zero aggregate)
    e = dict(padded[2])
    ref = conv(padded[0], padded[1], e)[LABEL][2]
    e[MATCH] = e[MATCH] * 3.0
    torch.testing.assert_close(conv(padded[0], padded[1], e)[LABEL][2], ref)


def test_node_conv_fused_path_needs_dense_edge_states():
    _, padded, graph = _padded_and_graph()
    conv = GNBNodeConv(6, 7)
    x, ei, _ = padded
    with pytest.raises(ValueError, match="dense edge states"):
        conv(x, ei, dict(graph[2], MATCH=graph[2][MATCH]))
    with pytest.raises(ValueError, match="rev_match"):
        conv(x, {k: v for k, v in ei.items() if k != REV_MATCH}, padded[2])


def test_edge_conv_dense_block_path_equals_the_gathered_path_with_gradients():
    mask, padded, graph = _padded_and_graph()
    torch.manual_seed(0)
    conv = GNBEdgeConv(6, 6, 5)
    b, k = mask.nonzero(as_tuple=True)
    x_pad = dict(padded[0], **{LABEL: torch.randn(3, 5, 6)})          # batched labels
    x_graph = dict(graph[0], **{LABEL: x_pad[LABEL].reshape(15, 6)})
    Gs = {t: torch.randn(n, 5) for t, n in ((NEAR, 6), (CO, 18), (MATCH, len(b) * 5))}
    outs, grads = [], []
    for (x, ei, ea), pad in (((x_graph,) + graph[1:], False), ((x_pad,) + padded[1:], True)):
        conv.zero_grad()
        out = conv(x, ei, ea)
        if pad:   # to the graph's edge order: label edges per image, real matching edges
            out = {NEAR: out[NEAR], CO: out[CO].reshape(-1, 5),
                   MATCH: out[MATCH][b, k].reshape(-1, 5)}
        sum((out[t] * Gs[t]).sum() for t in Gs).backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in conv.named_parameters()})
    for t in Gs:
        torch.testing.assert_close(outs[1][t], outs[0][t], atol=1e-5, rtol=1e-5, msg=str(t))
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-5, msg=n)
    folded = conv(*padded, fold=True)[MATCH]
    assert folded.shape == (3, 4, 5, 5)
    torch.testing.assert_close(folded.value(), conv(*padded)[MATCH])


def test_forward_dense_runs_through_the_message_passing_api():
    f, boxes, mask, E = _inputs()
    g = _block()
    calls = {"propagate": 0, "message_and_aggregate": 0, "edge_update": 0}

    def count(name):
        def hook(*args):
            calls[name] += 1
        return hook

    for nc in g.node_convs:
        nc.register_propagate_forward_hook(count("propagate"))
        nc.register_message_and_aggregate_forward_hook(count("message_and_aggregate"))
    for ec in g.edge_convs:
        ec.register_edge_update_forward_hook(count("edge_update"))
    g.forward_dense(f, boxes, mask, E)[mask].sum().backward()
    # per module: near, rev-match, co, match aggregations; two fused (the matching edges)
    assert calls == {"propagate": 8, "message_and_aggregate": 4, "edge_update": 4}
