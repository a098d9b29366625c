r"""Node convolution of GM-MLIC's graph network block (Wu et al., IJCAI 2021, Eqs. 5–8)."""
from __future__ import annotations

import typing  # noqa: F401  (the string types of propagate_type)
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.typing import Adj
from torch_geometric.utils import degree, is_sparse, scatter

from pyg_mlic.graphs.assignment_graph import CO, INSTANCE, LABEL, MATCH, NEAR, REV_MATCH
from pyg_mlic.nn.block_adjacency import dense_blocks
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

    **Message passing.** Every aggregation is one :meth:`propagate` call (the MLP's
    first layer split into its edge part :math:`\mathbf{q}_{ji}` and its node part
    :math:`\mathbf{p}_j`, so the message is :math:`\mathrm{ReLU}(\mathbf{p}_j +
    \mathbf{q}_{ji})`):

    * over an edge list ``edge_index`` (the instance and label graphs; the matching edges
      of an assignment graph): :meth:`message` per edge and PyG's mean;
    * over a sparse ``adj_t`` of dense per-image blocks
      (:func:`~pyg_mlic.nn.block_adjacency.block_adjacency`: the matching edges of a
      padded batch, every instance joined to every label, with edge states
      ``[B, K, C, F]``): the fused :meth:`message_and_aggregate`, a weighted sum over the
      blocks without any gather, where the block values are the mean weights
      :math:`1/|\mathcal{N}|` (0 for padding instances) and only the sign pattern of the
      ``[B, K, C, H]`` pre-activations is kept for the backward pass
      (:func:`~pyg_mlic.nn.gnb_edge_conv.relu_weighted_sum`). This is the training path
      of :class:`~pyg_mlic.nn.GraphNetworkBlock`.

    Both give the same result (tested, values and gradients); ``reference=True`` builds
    the input of every message by concatenation instead (textbook form, edge lists only).

    Args:
        in_channels (int): width of the incoming node and edge states.
        out_channels (int): width of the updated node states.
        hidden_channels (int, optional): hidden width of the MLPs. (default: ``out_channels``)
        use_instance_graph (bool): aggregate over :math:`G_o`. (default: :obj:`True`)
        use_label_graph (bool): aggregate over :math:`G_l`. (default: :obj:`True`)
        use_matching_edges (bool): aggregate over the matching edges. (default: :obj:`True`)

    Shapes:
        - **input:** ``x_dict`` with ``instance`` :math:`(N_o, F_{in})` and ``label``
          :math:`(N_l, F_{in})` (a padded batch: :math:`N_o = B K`, labels
          :math:`(C, F_{in})` shared by the images or :math:`(B, C, F_{in})`); per edge
          type an ``edge_index`` :math:`(2, E_t)` or an ``adj_t``, and edge states
          :math:`(E_t, F_{in})` (label edges of a padded batch: :math:`(B, E_l, F_{in})`
          too; matching edges with ``adj_t``: :math:`(B, K, C, F_{in})`)
        - **output:** dict with ``instance`` :math:`(N_o, F_{out})`, ``label``
          :math:`(N_l, F_{out})` (padded batch: :math:`(B, C, F_{out})`, or
          :math:`(C, F_{out})` while nothing image-dependent reached the labels)
    """

    # (string types: PyG's generated propagate imports this module's __all__ only)
    propagate_type = {"p": "typing.Tuple[Tensor, typing.Optional[Tensor]]", "q": "Tensor"}

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

    # ------------------------------------------------------------------ message passing
    def message(self, p_j: Tensor, q: Tensor) -> Tensor:
        return torch.relu(p_j + q)

    def message_and_aggregate(self, adj_t: Tensor, p: Tuple[Tensor, Optional[Tensor]],
                              q: Tensor) -> Tensor:
        r""":math:`\sum_j A_{ij}\,\mathrm{ReLU}(\mathbf{p}_j + \mathbf{q}_{ji})` over the dense
        blocks of a :func:`~pyg_mlic.nn.block_adjacency.block_adjacency` ``adj_t``
        ``[B·T, B·S]``: ``q`` ``[B, S, T, H]`` (edge :math:`s \to t` of image :math:`b` at
        ``[b, s, t]``), ``p[0]`` the sources ``[B·S, H]``, ``[B, S, H]`` or ``[S, H]``
        (shared by the images). Returns ``[B·T, H]``."""
        x = p[0]
        if q.dim() != 4:
            raise ValueError("GNBNodeConv: a sparse adj_t needs dense edge states [B, S, T, H] "
                             "(matching edges of a padded batch); pass an edge_index for "
                             "edge lists")
        B, S, T = q.shape[:3]
        w = dense_blocks(adj_t, T, S).to(q.dtype)                          # [B, T, S]
        if x.dim() == 2 and x.size(0) == B * S:
            x = x.view(B, S, -1)
        out = relu_weighted_sum(q + x.unsqueeze(-2), w.transpose(1, 2).unsqueeze(-1), -3)
        return out.reshape(B * T, -1)

    def _aggregate(self, mlp: SplitMLP, adj, q, x_src: Tensor, x_dst: Tensor,
                   reference: bool) -> Tensor:
        r"""The mean over the neighbours of :math:`\rho([\mathbf{e}_{ji}, \mathbf{v}_j])`,
        zero for a node without neighbours; ``q`` = :math:`\mathbf{W}_1^{(0)}\mathbf{e} +
        \mathbf{b}_1` (``reference``: the edge states themselves)."""
        if reference:  # textbook: the MLP on the concatenation [e_ji, v_j], then the mean
            msg = mlp(q, x_src[adj[0]])
            return scatter(msg, adj[1], 0, dim_size=x_dst.size(0), reduce="mean")
        p = mlp.proj(1, x_src)
        if is_sparse(adj):
            h = self.propagate(adj, p=(p, None), q=q)
            has = dense_blocks(adj, q.size(2), q.size(1)).sum(-1).reshape(-1, 1) > 0
        else:
            n_dst = x_dst.size(-2)
            h = self.propagate(adj, p=(p, None), q=q, size=(p.size(-2), n_dst))
            has = degree(adj[1], n_dst, dtype=h.dtype).unsqueeze(-1) > 0
        out = mlp.head(h) * has.to(h.dtype)
        if out.dim() == 2 and (x_dst.dim() == 3 or out.size(0) != x_dst.size(0)):
            out = out.view(-1, x_dst.size(-2), out.size(-1))   # padded batch: [B, C, F]
        return out

    def forward(self, x_dict: Dict[str, Tensor], edge_index_dict: Dict[EdgeType, Adj],
                edge_attr_dict: Dict[EdgeType, object],
                reference: bool = False) -> Dict[str, Tensor]:
        r"""
        Args:
            x_dict (dict): ``instance`` and ``label`` node states.
            edge_index_dict (dict): per edge type an ``edge_index`` or an ``adj_t``
                (``('label', 'rev_match', 'instance')`` defaults to the flipped matching
                edge list).
            edge_attr_dict (dict): edge states per edge type (tensors or
                :class:`~pyg_mlic.nn.gnb_edge_conv.Folded`); the reverse matching edges
                share the matching edges' states.
            reference (bool): textbook form (edge lists only).
        """
        xo, xl = x_dict[INSTANCE], x_dict[LABEL]
        po, pl = [xo], [xl]
        if self.rho_oo is not None:
            e = edge_attr_dict[NEAR]
            q = e if reference else self.rho_oo.proj(0, e, bias=True)
            po.append(self._aggregate(self.rho_oo, edge_index_dict[NEAR], q, xo, xo, reference))
        if self.use_matching_edges:
            match = edge_index_dict[MATCH]
            rev = edge_index_dict.get(REV_MATCH)
            if rev is None:
                if is_sparse(match):
                    raise ValueError("GNBNodeConv: a sparse matching adj_t needs its reverse "
                                     f"under {REV_MATCH}")
                rev = match.flip(0)
            e = edge_attr_dict[MATCH]
            if reference:
                q_lo = q_ol = e
            else:   # one pass over the matching edges for both first layers
                H = self.rho_lo.lin1.out_features
                pe = linear(e, torch.cat([self.rho_lo.weight(0), self.rho_ol.weight(0)]),
                            torch.cat([self.rho_lo.lin1.bias, self.rho_ol.lin1.bias]))
                q_lo, q_ol = pe[..., :H], pe[..., H:]
                if pe.dim() == 4:                  # [B, K, C, H]: labels are the sources
                    q_lo = q_lo.transpose(1, 2)
            po.append(self._aggregate(self.rho_lo, rev, q_lo, xl, xo, reference))
        if self.rho_ll is not None:
            e = edge_attr_dict[CO]
            q = e if reference else self.rho_ll.proj(0, e, bias=True)
            pl.append(self._aggregate(self.rho_ll, edge_index_dict[CO], q, xl, xl, reference))
        if self.use_matching_edges:
            pl.append(self._aggregate(self.rho_ol, match, q_ol, xo, xl, reference))
        if len(pl) > 1 and any(t.dim() == 3 for t in pl):
            B = next(t.size(0) for t in pl if t.dim() == 3)
            pl = [t.expand(B, *t.shape[-2:]) if t.dim() == 2 else t for t in pl]
        return {INSTANCE: self.phi_o(*po), LABEL: self.phi_l(*pl)}

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"instance_graph={self.use_instance_graph}, label_graph="
                f"{self.use_label_graph}, matching_edges={self.use_matching_edges})")
