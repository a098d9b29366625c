r"""Node convolution of GM-MLIC's graph network block (Wu et al., IJCAI 2021, Eqs. 5–8)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import degree, scatter

from pyg_mlic.graphs.assignment_graph import CO, INSTANCE, LABEL, MATCH, NEAR, REV_MATCH
from pyg_mlic.nn.gnb_edge_conv import EdgeType, SplitMLP, linear, relu_weighted_sum

__all__ = ["GNBNodeConv"]


class GNBNodeConv(MessagePassing):
    r"""The node convolution of GM-MLIC's graph network block (Wu et al., *GM-MLIC: Graph
    Matching based Multi-Label Image Classification*, IJCAI 2021, Eqs. 5–8).

    An instance node aggregates its instance neighbours :math:`\mathcal{N}_o` (over the
    kNN edges) and its label neighbours :math:`\mathcal{N}_l` (over the matching edges)
    separately, each with its own MLP and a mean, then updates itself (Eqs. 5–6):

    .. math::
        \hat{v}^o_i = \frac{1}{|\mathcal{N}_o|} \sum_{j \in \mathcal{N}_o(i)}
            \hat\rho^o_n([e^o_{ji}, v^o_j]), \qquad
        \tilde{v}^o_i = \frac{1}{|\mathcal{N}_l|} \sum_{c \in \mathcal{N}_l(i)}
            \tilde\rho^o_n([e^m_{ic}, v^l_c]), \qquad
        v^o_i \leftarrow \phi^o_n([v^o_i, \hat{v}^o_i, \tilde{v}^o_i])

    and a label node likewise over its label neighbours (label edges) and its instance
    neighbours (matching edges) (Eqs. 7–8):

    .. math::
        \hat{v}^l_c = \frac{1}{|\mathcal{N}_l|} \sum_{j \in \mathcal{N}_l(c)}
            \hat\rho^l_n([e^l_{jc}, v^l_j]), \qquad
        \tilde{v}^l_c = \frac{1}{|\mathcal{N}_o|} \sum_{i \in \mathcal{N}_o(c)}
            \tilde\rho^l_n([e^m_{ic}, v^o_i]), \qquad
        v^l_c \leftarrow \phi^l_n([v^l_c, \hat{v}^l_c, \tilde{v}^l_c])

    Every :math:`\rho, \phi` is a :class:`~pyg_mlic.nn.SplitMLP` (two layers, ReLU). An
    empty neighbourhood gives a zero aggregate (PyG's mean convention). Because the mean
    is linear, :math:`\frac{1}{n}\sum_j \mathbf{W}_2 \mathbf{h}_j + \mathbf{b}_2 =
    \mathbf{W}_2 \big(\frac{1}{n}\sum_j \mathbf{h}_j\big) + \mathbf{b}_2`: the second
    layer of every :math:`\rho` is applied after the aggregation, once per node, and the
    first layer's node part once per node before the gather.

    Ablations (GM-MLIC Table 4): ``use_instance_graph=False`` drops
    :math:`\hat{v}^o` (no :math:`G_o`), ``use_label_graph=False`` drops
    :math:`\hat{v}^l` (no :math:`G_l`), ``use_matching_edges=False`` drops
    :math:`\tilde{v}^o` and :math:`\tilde{v}^l` (no instance–label messages); the
    corresponding MLPs are not created and :math:`\phi` takes the remaining parts.

    Two code paths compute the same function: :meth:`forward` (PyG form on a
    :class:`~torch_geometric.data.HeteroData` / ``Batch``; ``reference=True`` builds the
    inputs of every message by concatenation) and :meth:`forward_dense` (padded tensors;
    the fast path of :class:`~pyg_mlic.nn.GraphNetworkBlock`).

    Args:
        in_channels (int): width of the incoming node and edge states.
        out_channels (int): width of the updated node states.
        hidden_channels (int, optional): hidden width of the MLPs. (default: ``out_channels``)
        use_instance_graph (bool): aggregate over :math:`G_o`. (default: :obj:`True`)
        use_label_graph (bool): aggregate over :math:`G_l`. (default: :obj:`True`)
        use_matching_edges (bool): aggregate over the matching edges. (default: :obj:`True`)

    Shapes:
        - **input:** ``x_dict`` with ``instance`` :math:`(N_o, F_{in})` and ``label``
          :math:`(N_l, F_{in})`; edge states :math:`(E_t, F_{in})` per edge type
        - **output:** dict with ``instance`` :math:`(N_o, F_{out})`, ``label``
          :math:`(N_l, F_{out})`
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: Optional[int] = None,
                 use_instance_graph: bool = True, use_label_graph: bool = True,
                 use_matching_edges: bool = True):
        super().__init__(aggr="mean")
        Fi, Fo = int(in_channels), int(out_channels)
        H = int(hidden_channels or Fo)
        self.in_channels, self.out_channels, self.hidden_channels = Fi, Fo, H
        self.use_instance_graph = bool(use_instance_graph)
        self.use_label_graph = bool(use_label_graph)
        self.use_matching_edges = bool(use_matching_edges)
        mk = lambda on: SplitMLP([Fi, Fi], H, Fo) if on else None  # noqa: E731
        self.rho_oo = mk(self.use_instance_graph)     # \hat\rho^o_n  over [e^o_ji, v^o_j]
        self.rho_lo = mk(self.use_matching_edges)     # \tilde\rho^o_n over [e^m_ic, v^l_c]
        self.rho_ll = mk(self.use_label_graph)        # \hat\rho^l_n  over [e^l_jc, v^l_j]
        self.rho_ol = mk(self.use_matching_edges)     # \tilde\rho^l_n over [e^m_ic, v^o_i]
        no = [Fi] + [Fo] * (self.use_instance_graph + self.use_matching_edges)
        nl = [Fi] + [Fo] * (self.use_label_graph + self.use_matching_edges)
        self.phi_o = SplitMLP(no, H, Fo)               # \phi^o_n (Eq. 6)
        self.phi_l = SplitMLP(nl, H, Fo)               # \phi^l_n (Eq. 8)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for m in (self.rho_oo, self.rho_lo, self.rho_ll, self.rho_ol, self.phi_o, self.phi_l):
            if m is not None:
                m.reset_parameters()

    # ------------------------------------------------------------------ graph form
    def message(self, p_j: Tensor, q: Tensor) -> Tensor:
        return torch.relu(p_j + q)

    def _aggregate_graph(self, mlp: SplitMLP, edge_index: Tensor, e: Tensor, x_src: Tensor,
                         num_dst: int, reference: bool) -> Tensor:
        if reference:  # textbook: the MLP on the concatenation [e_ji, v_j], then the mean
            msg = mlp(e, x_src[edge_index[0]])
            return scatter(msg, edge_index[1], 0, dim_size=num_dst, reduce="mean")
        h = self.propagate(edge_index, p=(mlp.proj(1, x_src), None), q=mlp.proj(0, e, bias=True),
                           size=(x_src.size(0), num_dst))
        deg = degree(edge_index[1], num_dst, dtype=h.dtype)
        return mlp.head(h) * (deg > 0).unsqueeze(-1).to(h.dtype)

    def forward(self, x_dict: Dict[str, Tensor], edge_index_dict: Dict[EdgeType, Tensor],
                edge_attr_dict: Dict[EdgeType, Tensor],
                reference: bool = False) -> Dict[str, Tensor]:
        xo, xl = x_dict[INSTANCE], x_dict[LABEL]
        No, Nl = xo.size(0), xl.size(0)
        po, pl = [xo], [xl]
        if self.rho_oo is not None:
            po.append(self._aggregate_graph(self.rho_oo, edge_index_dict[NEAR],
                                            edge_attr_dict[NEAR], xo, No, reference))
        if self.rho_lo is not None:
            rev = edge_index_dict.get(REV_MATCH, edge_index_dict[MATCH].flip(0))
            po.append(self._aggregate_graph(self.rho_lo, rev, edge_attr_dict[MATCH], xl, No,
                                            reference))
        if self.rho_ll is not None:
            pl.append(self._aggregate_graph(self.rho_ll, edge_index_dict[CO],
                                            edge_attr_dict[CO], xl, Nl, reference))
        if self.rho_ol is not None:
            pl.append(self._aggregate_graph(self.rho_ol, edge_index_dict[MATCH],
                                            edge_attr_dict[MATCH], xo, Nl, reference))
        return {INSTANCE: self.phi_o(*po), LABEL: self.phi_l(*pl)}

    # ------------------------------------------------------------------ dense form
    def forward_dense(self, xo: Tensor, mask: Tensor, xl: Tensor,
                      near: Optional[Tuple[Tensor, Tensor, Tensor, Tensor]] = None,
                      co: Optional[Tuple[Tensor, Tensor, Tensor]] = None,
                      em: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r"""Fast path on padded tensors (layouts as in
        :meth:`~pyg_mlic.nn.GNBEdgeConv.forward_dense`).

        Args:
            xo (Tensor): instance states ``[B, K, F]``; mask (Tensor): bool ``[B, K]``.
            xl (Tensor): label states ``[C, F]`` (shared by the batch) or ``[B, C, F]``.
            near, co, em: edge states (required when the matching ablation flag is on).

        Returns:
            ``(instances [B, K, F_out], labels [B, C, F_out])``; label states stay
            ``[C, F_out]`` when nothing image-dependent reaches them
            (``use_matching_edges=False`` and shared label edges). Padding rows of the
            instance output are finite but meaningless.
        """
        B, K = mask.shape
        po, pl = [xo], [xl]
        if self.rho_oo is not None:
            e, b, src, dst = near
            m = self.rho_oo
            flat = xo.reshape(B * K, -1)
            h = m.hidden(m.proj(0, e, bias=True), m.proj(1, flat)[b * K + src])   # [E_o, H]
            tgt = b * K + dst
            agg = scatter(h, tgt, 0, dim_size=B * K, reduce="mean")
            has = torch.zeros(B * K, dtype=h.dtype, device=h.device).index_fill_(0, tgt, 1.0)
            po.append((m.head(agg) * has.unsqueeze(-1)).view(B, K, -1))
        if self.rho_lo is not None or self.rho_ol is not None:
            # one pass over the matching edges for both first layers
            Wc = torch.cat([self.rho_lo.weight(0), self.rho_ol.weight(0)])
            bc = torch.cat([self.rho_lo.lin1.bias, self.rho_ol.lin1.bias])
            pe = linear(em, Wc, bc)                                            # [B, K, C, 2H]
            H = self.rho_lo.lin1.out_features
            pxl = self.rho_lo.proj(1, xl)                                      # [(B,) C, H]
            pxl = pxl.unsqueeze(-3) if pxl.dim() == 3 else pxl
            C = pe.shape[2]
            # mean over the C labels / the real instances of relu(.): only the sign pattern
            # of the [B, K, C, H] pre-activations is kept for the backward pass
            agg_o = relu_weighted_sum(pe[..., :H] + pxl, pe.new_full((), 1.0 / C), 2)
            po.append(self.rho_lo.head(agg_o))
            w = mask.to(pe.dtype)
            cnt = w.sum(1)                                                     # [B]
            wk = (w / cnt.clamp_min(1.0).view(B, 1)).view(B, K, 1, 1)
            agg_l = relu_weighted_sum(pe[..., H:] + self.rho_ol.proj(1, xo).unsqueeze(2), wk, 1)
            del pe
            pl.append(self.rho_ol.head(agg_l) * (cnt > 0).to(agg_l.dtype).view(B, 1, 1))
        if self.rho_ll is not None:
            e, src, dst = co
            m = self.rho_ll
            C = xl.size(-2)
            h = m.hidden(m.proj(0, e, bias=True), m.proj(1, xl)[..., src, :])  # [(B,) E_l, H]
            agg = scatter(h, dst, h.dim() - 2, dim_size=C, reduce="mean")
            has = torch.zeros(C, dtype=h.dtype, device=h.device).index_fill_(0, dst, 1.0)
            pl.insert(1, m.head(agg) * has.unsqueeze(-1))
        if len(pl) > 1 and any(t.dim() == 3 for t in pl):
            pl = [t.expand(B, *t.shape[-2:]) if t.dim() == 2 else t for t in pl]
        return self.phi_o(*po), self.phi_l(*pl)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"instance_graph={self.use_instance_graph}, label_graph="
                f"{self.use_label_graph}, matching_edges={self.use_matching_edges})")
