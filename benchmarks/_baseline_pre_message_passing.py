"""Baseline (pre-MessagePassing fast path): the training fast paths of IA-GCN and GM-MLIC
as they were at commit 9f37b11, before they moved into the layers' ``propagate`` /
``message_and_aggregate`` / ``edge_updater``. Copied verbatim (``self`` renamed to the
module passed in; IA-GCN's CSR product ``self.propagate(adj, x=h)``, which dispatched to
``spmm(adj, h)``, written as that ``spmm``), so that ``bench_message_passing.py`` times
the old and the new code in the same run on the same parameters.

Only the benchmark uses this file. The GM-MLIC copies reuse the memory-saving helpers of
:mod:`pyg_mlic.nn.gnb_edge_conv` (``SplitMLP``, ``Folded``, ``pair_relu_linear``), which
the change left as they were; ``relu_weighted_sum``, whose backward changed, is copied too.
Shape checks of the originals are left out.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.utils import scatter, spmm

from pyg_mlic.graphs.assignment_graph import CO, MATCH, NEAR, label_edges
from pyg_mlic.graphs.instance_graph import box_centers, knn_edges_dense
from pyg_mlic.nn import gnb_edge_conv as _lib
from pyg_mlic.nn.gnb_edge_conv import Folded, folded_second_projection, linear, pair_relu_linear


# ----------------------------------------------------------------------------- IA-GCN
def label_adjacency_csr(edge_index: Tensor, edge_weight: Tensor, num_nodes: int) -> Tensor:
    src, dst = edge_index[0].long(), edge_index[1].long()
    order = torch.argsort(dst * num_nodes + src)
    crow = torch.zeros(num_nodes + 1, dtype=torch.long, device=edge_index.device)
    crow[1:] = torch.bincount(dst, minlength=num_nodes).cumsum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
        return torch.sparse_csr_tensor(crow, src[order], edge_weight[order],
                                       size=(num_nodes, num_nodes), check_invariants=False)


def instance_aware_scaling(a: Tensor, edge_index: Tensor, edge_weight: Tensor,
                           num_nodes: int, adj: Optional[Tensor] = None,
                           eps: float = 1e-12) -> Tensor:
    empty = (a.detach() <= 0).all(1, keepdim=True)
    a = torch.where(empty, torch.ones_like(a), a)        # no ROI at all: fall back to A_S
    if adj is None:
        adj = label_adjacency_csr(edge_index, edge_weight.to(a.dtype), num_nodes)
    deg = a * spmm(adj, a.t().contiguous()).t()           # row sums of A_F, [B, C]
    pos = deg > eps
    return torch.where(pos, a * deg.clamp_min(eps).rsqrt(), torch.zeros_like(a))


def _conv_propagate(conv, h, edge_index, edge_weight, adj):
    if adj is None:
        adj = label_adjacency_csr(edge_index, edge_weight.to(h.dtype), h.size(0))
    return spmm(adj, h)                                   # self.propagate(adj, x=h)


def _conv_dense_forward(conv, x, s, edge_index, edge_weight, adj):
    C = x.size(-2)
    if adj is not None:
        A = adj.to_dense().to(x.dtype)
    else:
        A = x.new_zeros(C, C).index_put_((edge_index[1], edge_index[0]),
                                         edge_weight.to(x.dtype), accumulate=True)
    P = s[:, :, None] * A[None] * s[:, None, :]        # [B, C, C]
    if x.dim() == 2:                                   # shared input: lin once
        return torch.matmul(P, conv.lin(x))
    if conv.out_channels < conv.in_channels:
        return torch.bmm(P, conv.lin(x))
    return conv.lin(torch.bmm(P, x))


def conv_forward(conv, x, edge_index, edge_weight=None, a=None, adj=None, scaling=None):
    """``InstanceAwareLabelConv.forward`` (``sparse=True``, the default)."""
    C = x.size(-2)
    if edge_weight is None:
        edge_weight = x.new_ones(edge_index.size(1))
    if adj is None:
        adj = label_adjacency_csr(edge_index, edge_weight.to(x.dtype), C)
    s = scaling
    if s is None and a is not None:
        s = instance_aware_scaling(a.to(x.dtype), edge_index, edge_weight, C, adj, conv.eps)
    if s is not None and C <= conv.dense_max_nodes and x.dim() in (2, 3):
        out = _conv_dense_forward(conv, x, s, edge_index, edge_weight, adj)
    elif x.dim() == 2 and s is None:
        lin_first = conv.out_channels < conv.in_channels
        h = conv.lin(x) if lin_first else x
        out = _conv_propagate(conv, h, edge_index, edge_weight, adj)
        out = out if lin_first else conv.lin(out)
    else:
        if x.dim() == 2:
            hc = conv.lin(x).unsqueeze(1)
            lin_first = True
        else:
            xc = x.transpose(0, 1)
            lin_first = conv.out_channels < conv.in_channels
            hc = conv.lin(xc) if lin_first else xc
        B = s.size(0) if s is not None else hc.size(1)
        sc = s.t().unsqueeze(-1) if s is not None else None
        hc = hc * sc if sc is not None else hc.expand(C, B, hc.size(-1))
        F_ = hc.size(-1)
        out = _conv_propagate(conv, hc.reshape(C, B * F_), edge_index, edge_weight, adj)
        out = out.view(C, B, F_)
        if sc is not None:
            out = out * sc
        if not lin_first:
            out = conv.lin(out)
        out = out.transpose(0, 1)
    if conv.bias is not None:
        out = out + conv.bias
    return out


def ia_global_logits(m, x: Tensor, scaling: Tensor, adj: Tensor) -> Tensor:
    """``IAGCN.global_logits``."""
    h = m.label_embeddings
    for conv in m.gcn[:-1]:
        h = m.act(conv_forward(conv, h, m.edge_index, m.edge_weight, adj=adj, scaling=scaling))
    last = m.gcn[-1]
    v = x @ last.lin.weight
    u = v @ h.t() if h.dim() == 2 else torch.einsum("bcf,bf->bc", h, v)
    return scaling * spmm(adj, (scaling * u).t().contiguous()).t()


def _masked_max(h: Tensor, mask: Tensor) -> Tensor:
    filled = h.masked_fill(~mask[..., None], float("-inf"))
    out = filled.max(1).values
    return torch.where(mask.any(1, keepdim=True), out, torch.zeros_like(out))


def ia_region_scores(m, S: Tensor, mask: Tensor, s: Tensor, adj: Tensor) -> Tensor:
    """``IAGCN._region_scores``."""
    B, K, C = S.shape
    T = S * s[:, None, :]
    AT = spmm(adj, T.reshape(B * K, C).t().contiguous()).t().reshape(B, K, C)
    if m.region_conv == "label_axis":
        h = m.act(m.region_layers[0](AT * s[:, None, :]))
        for lin in m.region_layers[1:]:
            h = m.act(lin(h))
    else:
        A_R = torch.bmm(AT, T.transpose(1, 2))
        A_R = A_R.transpose(1, 2)
        A_R = A_R * (mask[:, :, None] & mask[:, None, :])
        d = A_R.sum(2)
        inv = torch.where(d > 1e-12, d.clamp_min(1e-12).rsqrt(), torch.zeros_like(d))
        A_R = inv[:, :, None] * A_R * inv[:, None, :]
        h = S
        for lin in m.region_layers:
            h = m.act(torch.bmm(A_R, lin(h)))
    h = h * mask[..., None]
    return m.region_fc(_masked_max(h, mask))


def ia_head(m, x: Tensor, X: Tensor, mask: Tensor) -> Tensor:
    """``IAGCN.forward`` after the ROIs are read and weighted (``id_lcm`` and ``com_sco``
    on): ROI scores, image-dependent graph, global and region logits, fusion."""
    S = torch.sigmoid(m.f_cnn(X)) * mask[..., None]
    a = S.max(1).values if S.size(1) else S.new_zeros(S.size(0), m.num_classes)
    adj = label_adjacency_csr(m.edge_index, m.edge_weight.to(x.dtype), m.num_classes)
    s = instance_aware_scaling(a, m.edge_index, m.edge_weight, m.num_classes, adj)
    y_w = ia_global_logits(m, x, s, adj)
    y_r = ia_region_scores(m, S, mask, s, adj)
    return m.fusion_weight * y_w + (1.0 - m.fusion_weight) * y_r


# ----------------------------------------------------------------------------- GM-MLIC
class _ReLUWeightedSum(_lib._ReLUWeightedSum):
    """``pyg_mlic.nn.gnb_edge_conv._ReLUWeightedSum`` with its old backward (the gradient
    allocated in broadcasting order, not in the layout of the input)."""

    @staticmethod
    def backward(ctx, gy):
        pos, w = ctx.saved_tensors
        gx = (gy.unsqueeze(ctx.dim) * w).masked_fill(~pos, 0.0) \
            if ctx.needs_input_grad[0] else None
        return gx, None, None


def relu_weighted_sum(x: Tensor, weight: Tensor, dim: int) -> Tensor:
    return _ReLUWeightedSum.apply(x, weight, dim)


def gnb_node_forward_dense(nc, xo, mask, xl, near=None, co=None, em=None):
    """``GNBNodeConv.forward_dense``."""
    B, K = mask.shape
    po, pl = [xo], [xl]
    if nc.rho_oo is not None:
        e, b, src, dst = near
        m = nc.rho_oo
        flat = xo.reshape(B * K, -1)
        h = m.hidden(m.proj(0, e, bias=True), m.proj(1, flat)[b * K + src])
        tgt = b * K + dst
        agg = scatter(h, tgt, 0, dim_size=B * K, reduce="mean")
        has = torch.zeros(B * K, dtype=h.dtype, device=h.device).index_fill_(0, tgt, 1.0)
        po.append((m.head(agg) * has.unsqueeze(-1)).view(B, K, -1))
    if nc.rho_lo is not None or nc.rho_ol is not None:
        Wc = torch.cat([nc.rho_lo.weight(0), nc.rho_ol.weight(0)])
        bc = torch.cat([nc.rho_lo.lin1.bias, nc.rho_ol.lin1.bias])
        pe = linear(em, Wc, bc)
        H = nc.rho_lo.lin1.out_features
        pxl = nc.rho_lo.proj(1, xl)
        pxl = pxl.unsqueeze(-3) if pxl.dim() == 3 else pxl
        C = pe.shape[2]
        agg_o = relu_weighted_sum(pe[..., :H] + pxl, pe.new_full((), 1.0 / C), 2)
        po.append(nc.rho_lo.head(agg_o))
        w = mask.to(pe.dtype)
        cnt = w.sum(1)
        wk = (w / cnt.clamp_min(1.0).view(B, 1)).view(B, K, 1, 1)
        agg_l = relu_weighted_sum(pe[..., H:] + nc.rho_ol.proj(1, xo).unsqueeze(2), wk, 1)
        del pe
        pl.append(nc.rho_ol.head(agg_l) * (cnt > 0).to(agg_l.dtype).view(B, 1, 1))
    if nc.rho_ll is not None:
        e, src, dst = co
        m = nc.rho_ll
        C = xl.size(-2)
        h = m.hidden(m.proj(0, e, bias=True), m.proj(1, xl)[..., src, :])
        agg = scatter(h, dst, h.dim() - 2, dim_size=C, reduce="mean")
        has = torch.zeros(C, dtype=h.dtype, device=h.device).index_fill_(0, dst, 1.0)
        pl.insert(1, m.head(agg) * has.unsqueeze(-1))
    if len(pl) > 1 and any(t.dim() == 3 for t in pl):
        pl = [t.expand(B, *t.shape[-2:]) if t.dim() == 2 else t for t in pl]
    return nc.phi_o(*po), nc.phi_l(*pl)


def gnb_edge_forward_dense(ec, xo, xl, near=None, co=None, em=None) -> Dict[tuple, object]:
    """``GNBEdgeConv.forward_dense``."""
    out: Dict[tuple, object] = {}
    B, K = xo.shape[:2]
    if NEAR in ec.edge_types and near is not None:
        e, b, src, dst = near
        rho, phi = ec.rho["near"], ec.phi["near"]
        flat = xo.reshape(B * K, -1)
        W, bias = folded_second_projection(phi, 1, rho)
        r = pair_relu_linear(rho.proj(0, flat, bias=True), rho.proj(1, flat), W, bias,
                             b * K + src, b * K + dst)
        out[NEAR] = Folded.of(phi, phi.hidden(phi.proj(0, e, bias=True), r))
    if CO in ec.edge_types and co is not None:
        e, src, dst = co
        rho, phi = ec.rho["co"], ec.phi["co"]
        W, bias = folded_second_projection(phi, 1, rho)
        r = pair_relu_linear(rho.proj(0, xl, bias=True), rho.proj(1, xl), W, bias, src, dst)
        out[CO] = Folded.of(phi, phi.hidden(phi.proj(0, e, bias=True), r))
    if MATCH in ec.edge_types and em is not None:
        rho, phi = ec.rho["match"], ec.phi["match"]
        pl = rho.proj(1, xl)
        pl = pl.unsqueeze(-3) if pl.dim() == 3 else pl
        W, bias = folded_second_projection(phi, 1, rho)
        r = pair_relu_linear(rho.proj(0, xo, bias=True).unsqueeze(-2), pl, W, bias)
        out[MATCH] = Folded.of(phi, phi.hidden(phi.proj(0, em, bias=True), r))
    return out


def gnb_forward_dense(net, features: Tensor, boxes: Tensor, mask: Tensor,
                      label_embeddings: Tensor,
                      label_edge_index: Optional[Tensor] = None) -> Tensor:
    """``GraphNetworkBlock.forward_dense``."""
    B, K, _ = features.shape
    C = label_embeddings.size(0)
    E = label_embeddings.to(features.dtype)
    xo = net.enc_instance(features)
    xl = net.enc_label(E)
    near = co = em = None
    if net.use_instance_graph:
        b, src, dst = knn_edges_dense(box_centers(boxes), mask, net.k)
        m = net.enc_near
        flat = boxes.reshape(B * K, 4)
        e = Folded.of_pair(m, m.proj(0, flat, bias=True), m.proj(1, flat), b * K + src,
                           b * K + dst)
        near = (e, b, src, dst)
    if net.use_label_graph:
        ei = label_edge_index if label_edge_index is not None else label_edges(
            C, device=features.device)
        m = net.enc_co
        e = Folded.of_pair(m, m.proj(0, E, bias=True), m.proj(1, E), ei[0], ei[1])
        co = (e, ei[0], ei[1])
    if net.use_matching_edges:
        m = net.enc_match
        em = Folded.of_pair(m, m.proj(0, features, bias=True).unsqueeze(2), m.proj(1, E))
    for nc, ec in zip(net.node_convs, net.edge_convs):
        xo, xl = gnb_node_forward_dense(nc, xo, mask, xl, near, co, em)
        if ec is not None:
            upd = gnb_edge_forward_dense(ec, xo, xl, near, co, em)
            if NEAR in upd:
                near = (upd[NEAR],) + near[1:]
            if CO in upd:
                co = (upd[CO],) + co[1:]
            em = upd.get(MATCH, em)
    dec = net.decoder
    if net.use_matching_edges:
        return dec.head(dec.hidden(dec.proj(0, em, bias=True))).squeeze(-1)
    pl = dec.proj(1, xl)
    pl = pl.unsqueeze(-3) if pl.dim() == 3 else pl
    return pair_relu_linear(dec.proj(0, xo, bias=True).unsqueeze(2), pl, dec.lin2.weight,
                            dec.lin2.bias).squeeze(-1)


__all__: Tuple[str, ...] = ("conv_forward", "ia_global_logits", "ia_region_scores", "ia_head",
                            "gnb_forward_dense", "label_adjacency_csr",
                            "instance_aware_scaling")
