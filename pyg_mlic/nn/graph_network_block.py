r"""The instance–label matching selection module of GM-MLIC (Wu et al., IJCAI 2021,
Sec. 3.3): encoder (Eq. 4), :math:`k` graph convolution modules (Eqs. 5–12) and the
matching-edge decoder (Eq. 13)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, HeteroData

from pyg_mlic.graphs.assignment_graph import (CO, INSTANCE, LABEL, MATCH, NEAR, REV_MATCH,
                                              assignment_graph, label_edges)
from pyg_mlic.graphs.instance_graph import DEFAULT_K, box_centers, knn_edges_dense
from pyg_mlic.nn.block_adjacency import block_adjacency
from pyg_mlic.nn.gnb_edge_conv import EdgeType, Folded, GNBEdgeConv, SplitMLP, pair_relu_linear
from pyg_mlic.nn.gnb_node_conv import GNBNodeConv

__all__ = ["GraphNetworkBlock", "matching_adjacency"]


def matching_adjacency(mask: Tensor, num_labels: int, dtype: torch.dtype = torch.float32
                       ) -> Tuple[Tensor, Tensor]:
    r"""The matching edges of a padded batch (every real instance of an image joined to
    every label) as two block ``adj_t`` (:func:`~pyg_mlic.nn.block_adjacency.
    block_adjacency`) holding the weights of a mean aggregation:

    * ``('instance', 'match', 'label')``: ``[B·C, B·K]``, block :math:`b` =
      :math:`m_{b,k} / \max(1, \sum_k m_{b,k})` (a label averages the real instances);
    * ``('label', 'rev_match', 'instance')``: ``[B·K, B·C]``, block :math:`b` =
      :math:`m_{b,k} / C` (a real instance averages the :math:`C` labels; padding rows
      have no neighbour).

    Args:
        mask (Tensor): bool ``[B, K]``. num_labels (int): :math:`C`.
    """
    B, K = mask.shape
    w = mask.to(dtype)
    to_labels = (w / w.sum(1, keepdim=True).clamp_min(1.0))[:, None, :].expand(B, num_labels, K)
    to_instances = (w / max(int(num_labels), 1))[:, :, None].expand(B, K, num_labels)
    return block_adjacency(to_labels), block_adjacency(to_instances)


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

    Every graph goes through the layers' :class:`~torch_geometric.nn.conv.MessagePassing`
    API (:meth:`GNBNodeConv.propagate <torch_geometric.nn.conv.MessagePassing.propagate>`,
    :meth:`GNBEdgeConv.edge_updater
    <torch_geometric.nn.conv.MessagePassing.edge_updater>`); the two entry points differ
    only in how the graph is laid out (equal up to float rounding, see
    ``tests/nn/test_gnb.py``):

    * :meth:`forward_dense` — the training path, a padded batch: ROI features
      ``[B, K, D]``, boxes, mask, label embeddings ``[C, d]``. Instances are the
      :math:`B K` rows (padding rows are isolated nodes) with the kNN edges as an
      ``edge_index``; the labels are shared by the batch (``[C, F]``, ``[B, C, F]`` once
      image-dependent) with one label ``edge_index``; the matching edges are dense
      ``[B, K, C, F]`` states over a :func:`matching_adjacency` (block ``adj_t``), which
      routes them to the layers' fused paths (no gather over the :math:`B K C` edges). The
      first layer of every MLP over a concatenation is applied per node, the output layer
      of an MLP is folded into the first layer of its consumers
      (:class:`~pyg_mlic.nn.gnb_edge_conv.Folded`), per-edge hidden states over node
      pairs are recomputed in the backward pass instead of stored
      (:func:`~pyg_mlic.nn.gnb_edge_conv.pair_relu_linear`) and mean aggregations keep
      only the sign pattern of their inputs
      (:func:`~pyg_mlic.nn.gnb_edge_conv.relu_weighted_sum`).
    * :meth:`forward` — an assignment graph (:func:`~pyg_mlic.graphs.assignment_graph_batch`,
      edge lists everywhere: the layers' per-edge ``message`` / ``edge_update`` path), one
      score per matching edge;
      ``reference=True`` builds every edge input by concatenation (textbook form).
    * :meth:`forward_reference` — per-image loop of ``forward(..., reference=True)``
      (for tests and benchmarks).

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

    # ------------------------------------------------------------------ shared
    def _convolve(self, x: Dict[str, Tensor], ei: Dict[EdgeType, Tensor],
                  ea: Dict[EdgeType, object], reference: bool = False):
        """The :math:`k` node + edge convolution modules."""
        for nc, ec in zip(self.node_convs, self.edge_convs):
            x = nc(x, ei, ea, reference=reference)
            if ec is not None:
                ea = {**ea, **ec(x, ei, ea, reference=reference, fold=not reference)}
        return x, ea

    @staticmethod
    def _pair_state(m: SplitMLP, a: Tensor, b: Tensor, src: Tensor, dst: Tensor,
                    reference: bool):
        """Encoder of an edge from its two end nodes, :math:`m([a_{src}, b_{dst}])`."""
        if reference:
            return m(a[src], b[dst])
        return Folded.of_pair(m, m.proj(0, a, bias=True), m.proj(1, b), src, dst)

    # ------------------------------------------------------------------ padded batch
    def forward_dense(self, features: Tensor, boxes: Tensor, mask: Tensor,
                      label_embeddings: Tensor, label_edge_index: Optional[Tensor] = None
                      ) -> Tensor:
        r"""Matching logits of a padded batch (the training path).

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
        x = {INSTANCE: self.enc_instance(features).reshape(B * K, -1),   # [B K, F]
             LABEL: self.enc_label(E)}                                   # [C, F] (shared)
        ei: Dict[EdgeType, Tensor] = {}
        ea: Dict[EdgeType, object] = {}
        if self.use_instance_graph:
            b, src, dst = knn_edges_dense(box_centers(boxes), mask, self.k)
            ei[NEAR] = torch.stack([b * K + src, b * K + dst])           # over the B K rows
            flat = boxes.reshape(B * K, 4)
            ea[NEAR] = self._pair_state(self.enc_near, flat, flat, ei[NEAR][0], ei[NEAR][1],
                                        False)
        if self.use_label_graph:
            ei[CO] = label_edge_index if label_edge_index is not None else label_edges(
                C, device=features.device)
            ea[CO] = self._pair_state(self.enc_co, E, E, ei[CO][0], ei[CO][1], False)
        if self.use_matching_edges:
            ei[MATCH], ei[REV_MATCH] = matching_adjacency(mask, C, features.dtype)
            m = self.enc_match                                           # [B, K, C, F]
            ea[MATCH] = Folded.of_pair(m, m.proj(0, features, bias=True).unsqueeze(2),
                                       m.proj(1, E))
        x, ea = self._convolve(x, ei, ea)
        dec = self.decoder
        if self.use_matching_edges:
            return dec.head(dec.hidden(dec.proj(0, ea[MATCH], bias=True))).squeeze(-1)
        xo, xl = x[INSTANCE].view(B, K, -1), x[LABEL]
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
        x = {INSTANCE: data[INSTANCE].x, LABEL: data[LABEL].x}
        ei = {t: data[t].edge_index for t in (NEAR, CO, MATCH, REV_MATCH)
              if t in data.edge_types}
        match = ei[MATCH]

        def attr_or_pairs(t, m, a, b):
            if "edge_attr" in data[t]:
                return m(data[t].edge_attr)
            return self._pair_state(m, a, b, ei[t][0], ei[t][1], reference)

        ea: Dict[EdgeType, object] = {}
        if self.use_instance_graph:
            ea[NEAR] = attr_or_pairs(NEAR, self.enc_near, data[INSTANCE].boxes,
                                     data[INSTANCE].boxes)
        if self.use_label_graph:
            ea[CO] = attr_or_pairs(CO, self.enc_co, x[LABEL], x[LABEL])
        if self.use_matching_edges:
            ea[MATCH] = attr_or_pairs(MATCH, self.enc_match, x[INSTANCE], x[LABEL])
        x = {INSTANCE: self.enc_instance(x[INSTANCE]), LABEL: self.enc_label(x[LABEL])}
        x, ea = self._convolve(x, ei, ea, reference)
        dec = self.decoder
        if self.use_matching_edges:
            e = ea[MATCH]
            return (dec(e) if reference else dec.head(dec.hidden(dec.proj(0, e, bias=True)))
                    ).squeeze(-1)
        xo, xl = x[INSTANCE], x[LABEL]
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
