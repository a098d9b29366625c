r"""The instance–label matching selection module of GM-MLIC (Wu et al., IJCAI 2021,
Sec. 3.3): encoder (Eq. 4), :math:`k` graph convolution modules (Eqs. 5–12) and the
matching-edge decoder (Eq. 13)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, HeteroData

from pyg_mlic.graphs.assignment_graph import (CO, INSTANCE, LABEL, MATCH, NEAR, REV_MATCH,
                                              assignment_graph, label_edges)
from pyg_mlic.graphs.instance_graph import DEFAULT_K, box_centers, knn_edges_dense
from pyg_mlic.nn.gnb_edge_conv import Folded, GNBEdgeConv, SplitMLP, pair_relu_linear
from pyg_mlic.nn.gnb_node_conv import GNBNodeConv

__all__ = ["GraphNetworkBlock"]


class GraphNetworkBlock(nn.Module):
    r"""GM-MLIC's matching selection network on the assignment graph (Wu et al., *GM-MLIC:
    Graph Matching based Multi-Label Image Classification*, IJCAI 2021, Sec. 3.3).

    .. math::
        G_A \leftarrow \mathrm{Enc}(G_A) = (V_A, E_A, \phi^v_{enc}(V_A),
        \phi^e_{enc}(E_A)) \qquad \text{(Eq. 4)}

    then :math:`k` convolution modules, each a :class:`~pyg_mlic.nn.GNBNodeConv`
    (Eqs. 5–8) followed by a :class:`~pyg_mlic.nn.GNBEdgeConv` (Eqs. 9–12), and the
    decoder on the matching edges

    .. math::
        \mathbf{S} = \mathrm{Dec}(G_A) = \phi^e_{dec}(E^m_A) \in [0, 1]^{M \times C}
        \qquad \text{(Eq. 13)}

    The block returns the decoder's pre-sigmoid output :math:`\mathbf{Z}`,
    :math:`\mathbf{S} = \sigma(\mathbf{Z})`.

    Encoders: one :class:`~pyg_mlic.nn.SplitMLP` per node type (ROI features, word
    embeddings) and per edge type (box pairs, embedding pairs, feature–embedding pairs),
    since the attributes differ in size. The last module's edge convolution updates the
    matching edges only (updated instance/label edges would never be read). The decoder
    is a two-layer MLP to one output.

    Ablations (Table 4): ``use_instance_graph=False`` ("w/o :math:`G_o`": no kNN edges),
    ``use_label_graph=False`` ("w/o :math:`G_l`": no label edges),
    ``use_matching_edges=False`` ("w/o ILM edges": the matching edges carry no state and
    no messages; instances and labels are processed on their own graphs and the
    decoder scores each instance–label pair from the final node states,
    :math:`s_{ic} = \sigma(\phi_{dec}([v^o_i, v^l_c]))`).

    Code paths (equal up to float rounding, see ``tests/nn/test_gnb.py``):

    * :meth:`forward_dense` — the fast path on padded tensors: ROI features
      ``[B, K, D]``, boxes, mask, label embeddings ``[C, d]``. The first layer of every
      MLP over a concatenation is applied per node and broadcast to the edges, label-only
      quantities are computed once per batch, matching edges are dense ``[B, K, C, F]``,
      the output layer of an MLP is folded into the first layer of its consumers
      (:class:`~pyg_mlic.nn.gnb_edge_conv.Folded`), per-edge hidden states over node
      pairs are recomputed in the backward pass instead of stored
      (:func:`~pyg_mlic.nn.gnb_edge_conv.pair_relu_linear`) and mean aggregations keep
      only the sign pattern of their inputs
      (:func:`~pyg_mlic.nn.gnb_edge_conv.relu_weighted_sum`).
    * :meth:`forward` — PyG form on an assignment graph
      (:func:`~pyg_mlic.graphs.assignment_graph_batch`), one score per matching edge.
    * :meth:`forward_reference` — per-image loop, every edge input built by
      concatenation (the textbook form; for tests and benchmarks).

    Args:
        instance_channels (int): ROI feature size :math:`D`.
        label_channels (int): word embedding size :math:`d`.
        encoder_channels (int): width of the encoded nodes and edges (not given in the
            paper). (default: :obj:`512`)
        conv_channels (list[int]): output width of each convolution module; the paper uses
            :math:`k = 2` modules of widths 512 and 256 (Sec. 4.2). (default: ``(512, 256)``)
        k (int): neighbours per instance in :math:`G_o` (not given). (default: :obj:`5`)
        use_instance_graph, use_label_graph, use_matching_edges (bool): ablations.
    """

    def __init__(self, instance_channels: int, label_channels: int, encoder_channels: int = 512,
                 conv_channels: Sequence[int] = (512, 256), k: int = DEFAULT_K,
                 use_instance_graph: bool = True, use_label_graph: bool = True,
                 use_matching_edges: bool = True):
        super().__init__()
        if not conv_channels:
            raise ValueError("GraphNetworkBlock: conv_channels needs at least one module")
        Dr, d, Fe = int(instance_channels), int(label_channels), int(encoder_channels)
        self.instance_channels, self.label_channels = Dr, d
        self.encoder_channels, self.conv_channels = Fe, [int(c) for c in conv_channels]
        self.k = int(k)
        self.use_instance_graph = bool(use_instance_graph)
        self.use_label_graph = bool(use_label_graph)
        self.use_matching_edges = bool(use_matching_edges)
        self.enc_instance = SplitMLP([Dr], Fe, Fe)
        self.enc_label = SplitMLP([d], Fe, Fe)
        self.enc_near = SplitMLP([4, 4], Fe, Fe) if self.use_instance_graph else None
        self.enc_co = SplitMLP([d, d], Fe, Fe) if self.use_label_graph else None
        self.enc_match = SplitMLP([Dr, d], Fe, Fe) if self.use_matching_edges else None
        self.node_convs = nn.ModuleList()
        self.edge_convs = nn.ModuleList()
        dims = [Fe, *self.conv_channels]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(self.conv_channels) - 1
            self.node_convs.append(GNBNodeConv(a, b, None, self.use_instance_graph,
                                               self.use_label_graph, self.use_matching_edges))
            types = []
            if self.use_instance_graph and not last:
                types.append(NEAR)
            if self.use_label_graph and not last:
                types.append(CO)
            if self.use_matching_edges:
                types.append(MATCH)
            self.edge_convs.append(GNBEdgeConv(b, a, b, None, types) if types else None)
        out = dims[-1]
        self.decoder = SplitMLP([out] if self.use_matching_edges else [out, out], out, 1)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    # ------------------------------------------------------------------ fast path
    def forward_dense(self, features: Tensor, boxes: Tensor, mask: Tensor,
                      label_embeddings: Tensor, label_edge_index: Optional[Tensor] = None
                      ) -> Tensor:
        r"""Matching logits of a padded batch (fast path).

        Args:
            features (Tensor): ROI features ``[B, K, D]``.
            boxes (Tensor): boxes ``[B, K, 4]`` ``xyxy`` normalised to :math:`[0, 1]`.
            mask (Tensor): bool ``[B, K]``, ``False`` = padding.
            label_embeddings (Tensor): ``[C, d]``.
            label_edge_index (Tensor, optional): :math:`G_l` ``[2, E_l]``. (default:
                complete without self-loops)

        Returns:
            Tensor: :math:`\mathbf{Z}` ``[B, K, C]``, :math:`\mathbf{S} = \sigma(\mathbf{Z})`;
            padding rows are finite but meaningless (mask them).
        """
        B, K, _ = features.shape
        C = label_embeddings.size(0)
        E = label_embeddings.to(features.dtype)
        xo = self.enc_instance(features)                                   # [B, K, F]
        xl = self.enc_label(E)                                             # [C, F] (shared)
        near = co = em = None
        if self.use_instance_graph:
            b, src, dst = knn_edges_dense(box_centers(boxes), mask, self.k)
            m = self.enc_near
            flat = boxes.reshape(B * K, 4)
            e = Folded.of_pair(m, m.proj(0, flat, bias=True), m.proj(1, flat), b * K + src,
                               b * K + dst)
            near = (e, b, src, dst)
        if self.use_label_graph:
            ei = label_edge_index if label_edge_index is not None else label_edges(
                C, device=features.device)
            m = self.enc_co
            e = Folded.of_pair(m, m.proj(0, E, bias=True), m.proj(1, E), ei[0], ei[1])
            co = (e, ei[0], ei[1])                                         # [E_l, F] (shared)
        if self.use_matching_edges:
            m = self.enc_match
            em = Folded.of_pair(m, m.proj(0, features, bias=True).unsqueeze(2), m.proj(1, E))
        for nc, ec in zip(self.node_convs, self.edge_convs):
            xo, xl = nc.forward_dense(xo, mask, xl, near, co, em)
            if ec is not None:
                upd = ec.forward_dense(xo, xl, near, co, em)
                if NEAR in upd:
                    near = (upd[NEAR],) + near[1:]
                if CO in upd:
                    co = (upd[CO],) + co[1:]
                em = upd.get(MATCH, em)
        dec = self.decoder
        if self.use_matching_edges:
            return dec.head(dec.hidden(dec.proj(0, em, bias=True))).squeeze(-1)
        pl = dec.proj(1, xl)
        pl = pl.unsqueeze(-3) if pl.dim() == 3 else pl
        return pair_relu_linear(dec.proj(0, xo, bias=True).unsqueeze(2), pl, dec.lin2.weight,
                                dec.lin2.bias).squeeze(-1)

    # ------------------------------------------------------------------ graph form
    def forward(self, data: Union[HeteroData, Batch], reference: bool = False) -> Tensor:
        r"""Matching logits on an assignment graph, one per ``('instance', 'match',
        'label')`` edge, in that edge type's order.

        Args:
            data: a :class:`HeteroData` or a ``Batch`` of them
                (:func:`~pyg_mlic.graphs.assignment_graph_batch`).
            reference (bool): build every edge input by concatenation (textbook form).
        """
        x_dict = {INSTANCE: data[INSTANCE].x, LABEL: data[LABEL].x}
        ei = {t: data[t].edge_index for t in (NEAR, CO, MATCH, REV_MATCH)
              if t in data.edge_types}
        match = ei[MATCH]

        def attr_or_pairs(t, m, a, b):
            if "edge_attr" in data[t]:
                return m(data[t].edge_attr)
            src, dst = ei[t]
            if reference:
                return m(a[src], b[dst])
            return m.head(m.hidden(m.proj(0, a, bias=True)[src], m.proj(1, b)[dst]))

        ea = {}
        if self.use_instance_graph:
            ea[NEAR] = attr_or_pairs(NEAR, self.enc_near, data[INSTANCE].boxes,
                                     data[INSTANCE].boxes)
        if self.use_label_graph:
            ea[CO] = attr_or_pairs(CO, self.enc_co, x_dict[LABEL], x_dict[LABEL])
        if self.use_matching_edges:
            ea[MATCH] = attr_or_pairs(MATCH, self.enc_match, x_dict[INSTANCE], x_dict[LABEL])
        x_dict = {INSTANCE: self.enc_instance(x_dict[INSTANCE]),
                  LABEL: self.enc_label(x_dict[LABEL])}
        for nc, ec in zip(self.node_convs, self.edge_convs):
            x_dict = nc(x_dict, ei, ea, reference=reference)
            if ec is not None:
                ea.update(ec(x_dict, ei, ea, reference=reference))
        dec = self.decoder
        if self.use_matching_edges:
            return dec(ea[MATCH]).squeeze(-1)
        xo, xl = x_dict[INSTANCE], x_dict[LABEL]
        if reference:
            return dec(xo[match[0]], xl[match[1]]).squeeze(-1)
        return dec.head(dec.hidden(dec.proj(0, xo, bias=True)[match[0]],
                                   dec.proj(1, xl)[match[1]])).squeeze(-1)

    @staticmethod
    def to_dense(data: Union[HeteroData, Batch], scores: Tensor, max_instances: int
                 ) -> Tensor:
        r"""Scatter per-matching-edge scores of :meth:`forward` into ``[B, K, C]`` (padded
        positions from ``data['instance'].slot``; unfilled entries are 0)."""
        inst, lab = data[INSTANCE], data[LABEL]
        src, dst = data[MATCH].edge_index
        ib = inst.batch if "batch" in inst else torch.zeros(inst.num_nodes, dtype=torch.long,
                                                            device=scores.device)
        lb = lab.batch if "batch" in lab else torch.zeros(lab.num_nodes, dtype=torch.long,
                                                          device=scores.device)
        lptr = lab.ptr if "ptr" in lab else torch.tensor([0, lab.num_nodes],
                                                         device=scores.device)
        B = int(lptr.numel() - 1)
        C = int(lptr[1] - lptr[0]) if B else 0
        out = scores.new_zeros(B, int(max_instances), C)
        out[ib[src], inst.slot[src], dst - lptr[lb[dst]]] = scores
        return out

    def forward_reference(self, features: Tensor, boxes: Tensor, mask: Tensor,
                          label_embeddings: Tensor, label_edge_index: Optional[Tensor] = None
                          ) -> Tensor:
        r"""Textbook implementation for checking: a loop over images, each building its
        :func:`~pyg_mlic.graphs.assignment_graph` with concatenated edge attributes and
        running :meth:`forward` with ``reference=True``. Same arguments and result as
        :meth:`forward_dense` (padding rows are 0)."""
        B, K, _ = features.shape
        C = label_embeddings.size(0)
        E = label_embeddings.to(features.dtype)
        rows: List[Tensor] = []
        for i in range(B):
            g = assignment_graph(features[i], boxes[i], E, None, k=self.k,
                                 label_graph=label_edge_index, mask=mask[i])
            z = self.forward(g, reference=True).view(-1, C)                # [M, C]
            full = z.new_zeros(K, C)
            full = full.index_copy(0, g[INSTANCE].slot, z)
            rows.append(full)
        return torch.stack(rows)

    def extra_repr(self) -> str:
        return (f"instance_channels={self.instance_channels}, label_channels="
                f"{self.label_channels}, encoder={self.encoder_channels}, "
                f"convs={self.conv_channels}, k={self.k}, instance_graph="
                f"{self.use_instance_graph}, label_graph={self.use_label_graph}, "
                f"matching_edges={self.use_matching_edges}")
