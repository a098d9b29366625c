"""The image-dependent label graph convolution of IA-GCN."""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import zeros
from torch_geometric.typing import Adj, OptTensor
from torch_geometric.utils import is_sparse, spmm, to_torch_csr_tensor

__all__ = ["InstanceAwareLabelConv", "image_dependent_propagation", "instance_aware_scaling",
           "label_adjacency_csr"]


def label_adjacency_csr(edge_index: Tensor, edge_weight: OptTensor, num_nodes: int) -> Tensor:
    r"""The label graph as PyG's transposed adjacency ``adj_t``: a ``torch.sparse_csr``
    matrix :math:`\mathbf{A}` ``[C, C]`` with :math:`A_{ij}` = weight of edge
    :math:`j \to i` (``edge_index[0] = j`` the source, ``edge_index[1] = i`` the target),
    so that ``propagate(adj_t, ...)`` aggregates at the targets exactly as
    ``propagate(edge_index, edge_weight=...)`` does (:func:`torch_geometric.utils.
    to_torch_csr_tensor` of the flipped edges; duplicate edges are summed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
        return to_torch_csr_tensor(edge_index.flip(0), edge_weight, (num_nodes, num_nodes))


def _check_scores(a: Tensor, num_nodes: int) -> Tensor:
    if a.dim() != 2 or a.size(1) != num_nodes:
        raise ValueError(f"InstanceAwareLabelConv: image scores a must be [B, C={num_nodes}], "
                         f"got {tuple(a.shape)}")
    return a


def _adj_t(edge_index: Adj, edge_weight: OptTensor, num_nodes: int, dtype) -> Adj:
    """``edge_index`` itself when it is already a sparse adjacency, else its CSR ``adj_t``."""
    if is_sparse(edge_index):
        return edge_index
    if edge_weight is None:
        edge_weight = torch.ones(edge_index.size(1), dtype=dtype, device=edge_index.device)
    return label_adjacency_csr(edge_index, edge_weight.to(dtype), num_nodes)


def instance_aware_scaling(a: Tensor, edge_index: Adj, edge_weight: OptTensor = None,
                           num_nodes: Optional[int] = None, adj: Optional[Adj] = None,
                           eps: float = 1e-12) -> Tensor:
    r"""The per-image node scalings :math:`\mathbf{s}_b` with
    :math:`\hat{\mathbf{A}}_F^{(b)} = \mathrm{diag}(\mathbf{s}_b)\,\mathbf{A}_S\,
    \mathrm{diag}(\mathbf{s}_b)` (see :class:`InstanceAwareLabelConv`): the normalisation
    of the image-dependent graph, as :func:`torch_geometric.nn.conv.gcn_conv.gcn_norm` is
    GCN's,

    .. math::
        d_{b,i} = a_{b,i} \, (\mathbf{A}_S \mathbf{a}_b)_i,\qquad
        s_{b,i} = a_{b,i}\, d_{b,i}^{-1/2} \;(0 \text{ where } d_{b,i} = 0)

    Images whose scores are all zero (no real ROI) use :math:`\mathbf{a}_b = \mathbf{1}`.

    Args:
        a (Tensor): ``[B, C]`` non-negative image-level label scores.
        edge_index (Tensor or SparseTensor): the statistical graph :math:`\mathbf{A}_S`:
            edges :math:`j \to i` ``[2, E]`` (with ``edge_weight``), or its ``adj_t``
            (:func:`label_adjacency_csr`, a ``torch.sparse`` matrix or a
            ``torch_sparse.SparseTensor``).
        edge_weight (Tensor, optional): ``[E]`` weights :math:`A_{S,ij} \ge 0`
            (default: ones).
        num_nodes (int, optional): :math:`C` (default: ``a.size(1)``).
        adj (Tensor, optional): ``adj_t`` of the graph, when ``edge_index`` is an edge list
            (built if omitted).

    Returns:
        ``[B, C]`` scalings.
    """
    num_nodes = a.size(-1) if num_nodes is None else int(num_nodes)
    a = _check_scores(a, num_nodes)
    empty = (a.detach() <= 0).all(1, keepdim=True)
    a = torch.where(empty, torch.ones_like(a), a)        # no ROI at all: fall back to A_S
    if adj is None:
        adj = _adj_t(edge_index, edge_weight, num_nodes, a.dtype)
    deg = a * spmm(adj, a.t().contiguous()).t()           # row sums of A_F, [B, C]
    pos = deg > eps
    return torch.where(pos, a * deg.clamp_min(eps).rsqrt(), torch.zeros_like(a))


def image_dependent_propagation(a: Tensor, A_S: Tensor, eps: float = 1e-12) -> Tensor:
    r"""Dense per-image reference of the normalised image-dependent matrix (Eqs. 1, 4):

    .. math::
        \mathbf{A}_F^{(b)} = \mathbf{A}_S \odot \mathbf{a}_b \mathbf{a}_b^{\top},\qquad
        \hat{\mathbf{A}}_F^{(b)} = \mathbf{D}_b^{-1/2}\,\mathbf{A}_F^{(b)}\,
        \mathbf{D}_b^{-1/2},\quad \mathbf{D}_b = \mathrm{diag}(\mathbf{A}_F^{(b)}\mathbf{1})

    computed image by image with dense ``[C, C]`` matrices, for tests and as the
    documentation of what :class:`InstanceAwareLabelConv` applies. Zero degrees give zero
    rows/columns; an all-zero :math:`\mathbf{a}_b` is replaced by :math:`\mathbf{1}`.

    Args:
        a (Tensor): ``[B, C]`` scores. A_S (Tensor): dense ``[C, C]`` statistical matrix.

    Returns:
        ``[B, C, C]``.
    """
    out = []
    for ab in a:
        if not (ab > 0).any():
            ab = torch.ones_like(ab)
        AF = A_S * torch.outer(ab, ab)
        d = AF.sum(1)
        inv = torch.where(d > eps, d.clamp_min(eps).rsqrt(), torch.zeros_like(d))
        out.append(inv[:, None] * AF * inv[None, :])
    return torch.stack(out)


def _linear(lin: torch.nn.Module, t: Tensor) -> Tensor:
    """``lin(t)``; a ``[B, C, F]`` view of a contiguous ``[C, B, F]`` tensor (the layout of
    the sparse product, images side by side) is mapped in that layout and returned as a
    view again, so that stacked layers never copy between the two layouts."""
    if t.dim() == 3 and not t.is_contiguous() and t.transpose(0, 1).is_contiguous():
        return lin(t.transpose(0, 1)).transpose(0, 1)
    return lin(t)


class InstanceAwareLabelConv(MessagePassing):
    r"""The image-dependent label graph convolution of IA-GCN (Wang et al.,
    *Instance-Aware Graph Convolutional Network for Multi-Label Classification*,
    Sec. 3.2–3.3, Eqs. 1–5).

    Each image :math:`b` has rough label scores :math:`\mathbf{a}_b \in [0, 1]^C`
    (Eq. 3) and its own label correlation matrix, the statistical matrix
    :math:`\mathbf{A}_S` (ML-GCN's, given as edge weights) masked by the individual one
    :math:`\mathbf{A}_I = \mathbf{a}_b\mathbf{a}_b^{\top}` (Eqs. 1, 4):

    .. math::
        \mathbf{A}_F^{(b)} = \mathbf{A}_S \odot \mathbf{a}_b \mathbf{a}_b^{\top},\qquad
        \mathbf{H}_b' = \hat{\mathbf{A}}_F^{(b)}\,\mathbf{H}_b\,\mathbf{W}\;(+\,\mathbf{b})
        \quad \text{(Eq. 5, activation applied by the caller)}

    **Normalisation.** The paper only says ":math:`\hat{\mathbf{A}}` is the normalized
    version of :math:`\mathbf{A}`" citing Kipf & Welling. We use the symmetric degree
    normalisation with degrees from row sums and *no added identity*:

    .. math::
        \hat{\mathbf{A}}_F^{(b)} = \mathbf{D}_b^{-1/2}\mathbf{A}_F^{(b)}\mathbf{D}_b^{-1/2},
        \qquad D_{b,ii} = \sum_j A_{S,ij}\, a_{b,i}\, a_{b,j}

    because ML-GCN's re-weighted :math:`\mathbf{A}_S` (Eq. 8) already carries the self
    weights :math:`1-p` (an added :math:`\mathbf{I}` would change that balance), and
    then (i) :math:`\hat{\mathbf{A}}_F` does not depend on a global rescaling of
    :math:`\mathbf{a}_b`, and (ii) :math:`\mathbf{a}_b = \mathbf{1}` gives back
    :math:`\mathbf{A}_S` exactly for ML-GCN's row-stochastic re-weighted matrix (``paper``
    convention), so switching the image-dependent part off (``a=None``) is continuous.

    **Batched form.** Per image the normalised weights are
    :math:`w_b(j \to i) = A_{S,ij}\, a_{b,i} a_{b,j} / \sqrt{D_{b,ii} D_{b,jj}}
    = s_{b,i}\, A_{S,ij}\, s_{b,j}` with :math:`s_{b,i} = a_{b,i} D_{b,ii}^{-1/2}`
    (:func:`instance_aware_scaling`), i.e. node-wise

    .. math::
        \mathbf{h}'_{b,i} = \mathbf{W}^{\top} \sum_{j \in \mathcal{N}(i)}
        s_{b,i}\, A_{S,ij}\, s_{b,j}\, \mathbf{h}_{b,j}, \qquad
        \hat{\mathbf{A}}_F^{(b)} = \mathrm{diag}(\mathbf{s}_b)\,\mathbf{A}_S\,
        \mathrm{diag}(\mathbf{s}_b) .

    :math:`\hat{\mathbf{A}}_F` is zero wherever :math:`\mathbf{A}_S` is;
    :func:`image_dependent_propagation` is the dense per-image reference.

    **Message passing.** :meth:`forward` calls :meth:`propagate` once, as
    :class:`~torch_geometric.nn.conv.GCNConv` does:

    * over an edge list ``edge_index`` ``[2, E]`` + ``edge_weight`` (``sparse=False``):
      :meth:`message` builds every per-image message
      :math:`s_{b,i} A_{S,ij} s_{b,j} \mathbf{h}_{b,j}` and PyG sums them (the readable
      reference);
    * over a sparse adjacency ``adj_t`` (a ``torch.sparse`` matrix, e.g.
      :func:`label_adjacency_csr`, or a ``torch_sparse.SparseTensor``; an edge list is
      converted to it when ``sparse=True``, the default): the fused
      :meth:`message_and_aggregate`. It scales every image's node features by
      :math:`\mathbf{s}_b`, stacks the :math:`B` images side by side as one ``[C, B·F]``
      signal, runs **one** sparse product over the shared support of :math:`\mathbf{A}_S`
      and scales again: :math:`O(|E| B F)` instead of the :math:`O(B C^2 F)` of dense
      per-image matrices. For small label sets (:math:`C \le` ``dense_max_nodes``,
      default 128: the measured crossover between COCO's 80 labels, where dense is
      faster, and 500, where sparse is; the sparse product is memory-bound on a CPU) it
      builds the per-image matrices :math:`\mathrm{diag}(\mathbf{s}_b)\mathbf{A}_S
      \mathrm{diag}(\mathbf{s}_b)` from the dense adjacency instead and uses one batched
      matrix product, for signals of at least ``dense_min_channels`` channels (default 64:
      building the matrices costs :math:`B C^2` whatever the width, and only a wide signal,
      the label features, earns it back at matrix-multiply speed; IA-GCN's logits and ROI
      scores take the sparse product).

    All of them compute the same function (tested, values and gradients).

    **Degenerate scores.** A node with :math:`D_{b,ii} = 0` (:math:`a_{b,i} = 0`) is
    isolated: its row and column of :math:`\hat{\mathbf{A}}_F^{(b)}` are zero (no NaN).
    An image whose scores are all zero (IA-GCN: no real ROI) falls back to
    :math:`\mathbf{a}_b = \mathbf{1}`, i.e. the normalised statistical matrix.

    The linear map is applied before the propagation when the input is shared by all
    images (first layer: the label embeddings) or when it narrows the features, and after
    it otherwise (:math:`\hat{\mathbf{A}}(\mathbf{H}\mathbf{W}) =
    (\hat{\mathbf{A}}\mathbf{H})\mathbf{W}`). The propagation alone,
    ``propagate(adj_t, x=H, edge_weight=None, s=scaling.unsqueeze(-1))``, applies
    :math:`\hat{\mathbf{A}}_F` to any per-image signal ``[B, C, F]`` (IA-GCN's logits
    and region branch use it).

    Args:
        in_channels (int): size of each input label feature.
        out_channels (int): size of each output label feature.
        bias (bool, optional): add a learnable bias. (default: :obj:`False`)
        sparse (bool, optional): convert an edge list to a sparse ``adj_t`` and use the
            fused :meth:`message_and_aggregate`; :obj:`False` propagates over the edge list
            with :meth:`message`. (default: :obj:`True`)
        eps (float, optional): degrees :math:`\le` ``eps`` count as zero.
            (default: :obj:`1e-12`)
        dense_max_nodes (int, optional): with per-image scores, graphs of at most this
            many nodes use the dense batched product in :meth:`message_and_aggregate`;
            ``0`` always uses the sparse one. (default: :obj:`128`)
        dense_min_channels (int, optional): ... and signals of at least this many
            channels. (default: :obj:`64`)
        **kwargs (optional): additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** label features :math:`(C, F_{in})` (shared by all images) or
          :math:`(B, C, F_{in})`, edge indices :math:`(2, E)` and edge weights
          :math:`(E)` (:math:`\mathbf{A}_S`) or a sparse adjacency :math:`(C, C)`, image
          scores :math:`(B, C)` or :obj:`None` (apply :math:`\mathbf{A}_S` as given, like
          :class:`~pyg_mlic.nn.LabelGCNConv`)
        - **output:** :math:`(B, C, F_{out})` when scores are given or the input is
          batched, else :math:`(C, F_{out})`
    """

    propagate_type = {"x": Tensor, "edge_weight": Optional[Tensor], "s": Optional[Tensor]}

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False,
                 sparse: bool = True, eps: float = 1e-12, dense_max_nodes: int = 128,
                 dense_min_channels: int = 64, **kwargs):
        kwargs.setdefault("aggr", "add")
        super().__init__(**kwargs)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.sparse, self.eps = bool(sparse), float(eps)
        if isinstance(dense_max_nodes, bool) or int(dense_max_nodes) < 0:
            raise ValueError(f"InstanceAwareLabelConv: dense_max_nodes must be an int >= 0, "
                             f"got {dense_max_nodes!r}")
        self.dense_max_nodes = int(dense_max_nodes)
        if isinstance(dense_min_channels, bool) or int(dense_min_channels) < 0:
            raise ValueError(f"InstanceAwareLabelConv: dense_min_channels must be an int >= 0, "
                             f"got {dense_min_channels!r}")
        self.dense_min_channels = int(dense_min_channels)
        self.lin = Linear(in_channels, out_channels, bias=False, weight_initializer="glorot")
        if bias:
            self.bias = Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin.reset_parameters()
        zeros(self.bias)

    def forward(self, x: Tensor, edge_index: Adj, edge_weight: OptTensor = None,
                a: OptTensor = None, scaling: OptTensor = None) -> Tensor:
        r"""
        Args:
            x (Tensor): ``[C, F_in]`` or ``[B, C, F_in]`` label features.
            edge_index (Tensor or SparseTensor): :math:`\mathbf{A}_S` as edges
                :math:`j \to i` ``[2, E]``, or as ``adj_t`` (:func:`label_adjacency_csr`,
                any ``torch.sparse`` matrix or ``torch_sparse.SparseTensor``; pass it to
                share one conversion between layers).
            edge_weight (Tensor, optional): ``[E]`` weights :math:`A_{S,ij} \ge 0` of an
                edge list (default: ones).
            a (Tensor, optional): ``[B, C]`` image scores :math:`\mathbf{a}_b`; ``None``
                applies :math:`\mathbf{A}_S` as given.
            scaling (Tensor, optional): precomputed :func:`instance_aware_scaling`
                ``[B, C]`` (overrides ``a``).
        """
        if x.dim() not in (2, 3):
            raise ValueError(f"InstanceAwareLabelConv: x must be [C, F] or [B, C, F], got "
                             f"{tuple(x.shape)}")
        C = x.size(-2)
        if is_sparse(edge_index):
            adj, edge_weight = edge_index, None
        else:
            if edge_weight is None:
                edge_weight = x.new_ones(edge_index.size(1))
            edge_weight = edge_weight.to(x.dtype)
            adj = label_adjacency_csr(edge_index, edge_weight, C) if self.sparse else edge_index
        s = scaling
        if s is None and a is not None:
            s = instance_aware_scaling(a.to(x.dtype), edge_index, edge_weight, C,
                                       adj if is_sparse(adj) else None, self.eps)
        if s is not None and (s.dim() != 2 or s.size(1) != C):
            raise ValueError(f"InstanceAwareLabelConv: scaling must be [B, C={C}], got "
                             f"{tuple(s.shape)}")
        if s is not None and x.dim() == 3 and x.size(0) != s.size(0):
            raise ValueError(f"InstanceAwareLabelConv: x has {x.size(0)} images, the scores "
                             f"{s.size(0)}")
        batched = s is not None or x.dim() == 3
        lin_first = (x.dim() == 2 and batched) or self.out_channels < self.in_channels
        h = _linear(self.lin, x) if lin_first else x
        out = self.propagate(adj, x=h, edge_weight=edge_weight,
                             s=None if s is None else s.unsqueeze(-1))
        if not lin_first:
            out = _linear(self.lin, out)
        if self.bias is not None:
            out = out + self.bias
        return out

    def message(self, x_j: Tensor, edge_weight: Tensor, s_i: Optional[Tensor],
                s_j: Optional[Tensor]) -> Tensor:
        r"""Per edge :math:`j \to i` and image :math:`b`:
        :math:`s_{b,i}\, A_{S,ij}\, s_{b,j}\, \mathbf{h}_{b,j}` (``s`` is
        :math:`\mathbf{s}` as ``[B, C, 1]``; without it :math:`A_{S,ij} \mathbf{h}_j`)."""
        w = edge_weight.view(-1, 1)
        if s_i is not None and s_j is not None:
            w = s_i * w * s_j                                    # [B, E, 1]
        return w * x_j

    def message_and_aggregate(self, adj_t: Adj, x: Tensor, s: Optional[Tensor]) -> Tensor:
        r""":math:`\mathrm{diag}(\mathbf{s}_b)\,\mathbf{A}_S\,\mathrm{diag}(\mathbf{s}_b)
        \,\mathbf{H}_b` for all images at once (see *Message passing*): ``adj_t`` is
        :math:`\mathbf{A}_S` ``[C, C]``, ``x`` ``[C, F]`` (shared) or ``[B, C, F]``, ``s``
        ``[B, C, 1]`` or :obj:`None` (then :math:`\mathbf{A}_S \mathbf{H}`)."""
        C = x.size(-2)
        if s is not None and C <= self.dense_max_nodes and x.size(-1) >= self.dense_min_channels:
            A = adj_t.to_dense().to(x.dtype)
            P = s * A * s.transpose(-2, -1)                      # [B, C, C]
            return torch.matmul(P, x)
        if s is None and x.dim() == 2:
            return spmm(adj_t, x, reduce=self.aggr)
        # images side by side, [C, B, F]: the result is returned as a [B, C, F] *view*, so
        # a following layer gets its layout back for free (see _linear)
        xc = x.unsqueeze(1) if x.dim() == 2 else x.transpose(0, 1)
        sc = s.transpose(0, 1) if s is not None else None        # [C, B, 1]
        if sc is not None:
            xc = xc * sc                                         # diag(s_b) H_b
        B, F_ = xc.shape[1:]
        out = spmm(adj_t, xc.reshape(C, B * F_), reduce=self.aggr).view(C, B, F_)
        if sc is not None:
            out = out * sc
        return out.transpose(0, 1)

    def normalized_edge_weight(self, edge_index: Tensor, edge_weight: Tensor,
                               a: Tensor) -> Tensor:
        r"""The per-image normalised edge weights
        :math:`w_b(j \to i) = s_{b,i} A_{S,ij} s_{b,j}` as ``[B, E]`` (for inspection:
        the forward pass never materialises them)."""
        C = a.size(1)
        s = instance_aware_scaling(a, edge_index, edge_weight, C, eps=self.eps)
        src, dst = edge_index[0], edge_index[1]
        return s[:, dst] * edge_weight.to(s.dtype)[None] * s[:, src]

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"sparse={self.sparse}, dense_max_nodes={self.dense_max_nodes})")
