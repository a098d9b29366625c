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
from torch_geometric.utils import spmm

__all__ = ["InstanceAwareLabelConv", "image_dependent_propagation", "instance_aware_scaling",
           "label_adjacency_csr"]


def label_adjacency_csr(edge_index: Tensor, edge_weight: Tensor, num_nodes: int) -> Tensor:
    r"""The label graph as a ``torch.sparse_csr`` matrix :math:`\mathbf{A}` ``[C, C]`` with
    :math:`A_{ij}` = weight of edge :math:`j \to i` (``edge_index[0] = j`` the source,
    ``edge_index[1] = i`` the target), so that :math:`\mathbf{A}\mathbf{H}` aggregates at the
    targets like a sum-aggregating :class:`~torch_geometric.nn.conv.MessagePassing` layer.
    Duplicate edges are summed by the product."""
    src, dst = edge_index[0].long(), edge_index[1].long()
    order = torch.argsort(dst * num_nodes + src)
    crow = torch.zeros(num_nodes + 1, dtype=torch.long, device=edge_index.device)
    crow[1:] = torch.bincount(dst, minlength=num_nodes).cumsum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
        return torch.sparse_csr_tensor(crow, src[order], edge_weight[order],
                                       size=(num_nodes, num_nodes), check_invariants=False)


def _check_scores(a: Tensor, num_nodes: int) -> Tensor:
    if a.dim() != 2 or a.size(1) != num_nodes:
        raise ValueError(f"InstanceAwareLabelConv: image scores a must be [B, C={num_nodes}], "
                         f"got {tuple(a.shape)}")
    return a


def instance_aware_scaling(a: Tensor, edge_index: Tensor, edge_weight: Tensor,
                           num_nodes: int, adj: Optional[Tensor] = None,
                           eps: float = 1e-12) -> Tensor:
    r"""The per-image node scalings :math:`\mathbf{s}_b` with
    :math:`\hat{\mathbf{A}}_F^{(b)} = \mathrm{diag}(\mathbf{s}_b)\,\mathbf{A}_S\,
    \mathrm{diag}(\mathbf{s}_b)` (see :class:`InstanceAwareLabelConv`):

    .. math::
        d_{b,i} = a_{b,i} \, (\mathbf{A}_S \mathbf{a}_b)_i,\qquad
        s_{b,i} = a_{b,i}\, d_{b,i}^{-1/2} \;(0 \text{ where } d_{b,i} = 0)

    Images whose scores are all zero (no real ROI) use :math:`\mathbf{a}_b = \mathbf{1}`.

    Args:
        a (Tensor): ``[B, C]`` non-negative image-level label scores.
        edge_index, edge_weight: the statistical graph :math:`\mathbf{A}_S` (edges
            :math:`j \to i`, weights :math:`A_{S,ij} \ge 0`).
        num_nodes (int): :math:`C`.
        adj (Tensor, optional): :func:`label_adjacency_csr` of the graph (built if omitted).

    Returns:
        ``[B, C]`` scalings.
    """
    a = _check_scores(a, num_nodes)
    empty = (a.detach() <= 0).all(1, keepdim=True)
    a = torch.where(empty, torch.ones_like(a), a)        # no ROI at all: fall back to A_S
    if adj is None:
        adj = label_adjacency_csr(edge_index, edge_weight.to(a.dtype), num_nodes)
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
    = s_{b,i}\, A_{S,ij}\, s_{b,j}` with :math:`s_{b,i} = a_{b,i} D_{b,ii}^{-1/2}`, i.e.

    .. math::
        \hat{\mathbf{A}}_F^{(b)} = \mathrm{diag}(\mathbf{s}_b)\,\mathbf{A}_S\,
        \mathrm{diag}(\mathbf{s}_b),\qquad
        D_{b,ii} = a_{b,i}\,(\mathbf{A}_S \mathbf{a}_b)_i .

    So the layer scales every image's node features by :math:`\mathbf{s}_b`, stacks the
    :math:`B` images side by side as one ``[C, B·F]`` signal, runs **one** propagation
    over the shared support of :math:`\mathbf{A}_S` (a sparse CSR product,
    :meth:`message_and_aggregate`, or gather/scatter :meth:`message` with
    ``sparse=False``), and scales again: :math:`O(|E| B F)` instead of the
    :math:`O(B C^2 F)` of dense per-image matrices. :math:`\mathbf{A}_F` is zero wherever
    :math:`\mathbf{A}_S` is. :func:`image_dependent_propagation` is the dense per-image
    reference.

    **Degenerate scores.** A node with :math:`D_{b,ii} = 0` (:math:`a_{b,i} = 0`) is
    isolated: its row and column of :math:`\hat{\mathbf{A}}_F^{(b)}` are zero (no NaN).
    An image whose scores are all zero (IA-GCN: no real ROI) falls back to
    :math:`\mathbf{a}_b = \mathbf{1}`, i.e. the normalised statistical matrix.

    **Small label sets.** The batched sparse product is memory-bound: its cost is a few
    passes over the ``[C, B, F]`` features whatever the number of edges, while a dense
    ``[B, C, C]`` batched product costs :math:`B C^2 F` multiply-adds at matrix-multiply
    speed. For :math:`C \le` ``dense_max_nodes`` (default 128: measured crossover between
    COCO's 80 labels, where dense is faster, and 500, where sparse is) the layer builds the
    per-image matrices :math:`\mathrm{diag}(\mathbf{s}_b)\mathbf{A}_S
    \mathrm{diag}(\mathbf{s}_b)` densely and uses one ``bmm``; both paths compute the same
    function (tested).

    The linear map is applied before the propagation when the input is shared by all
    images (first layer: the label embeddings) or when it narrows the features, and after
    it otherwise (:math:`\hat{\mathbf{A}}(\mathbf{H}\mathbf{W}) =
    (\hat{\mathbf{A}}\mathbf{H})\mathbf{W}`).

    Args:
        in_channels (int): size of each input label feature.
        out_channels (int): size of each output label feature.
        bias (bool, optional): add a learnable bias. (default: :obj:`False`)
        sparse (bool, optional): aggregate with a sparse CSR product instead of
            gather/scatter messages. (default: :obj:`True`)
        eps (float, optional): degrees :math:`\le` ``eps`` count as zero.
            (default: :obj:`1e-12`)
        dense_max_nodes (int, optional): with per-image scores, graphs of at most this
            many nodes use the dense batched product (see *Small label sets*); ``0``
            always uses the sparse one. (default: :obj:`128`)
        **kwargs (optional): additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** label features :math:`(C, F_{in})` (shared by all images) or
          :math:`(B, C, F_{in})`, edge indices :math:`(2, E)`, edge weights
          :math:`(E)` (:math:`\mathbf{A}_S`), image scores :math:`(B, C)` or :obj:`None`
          (apply :math:`\mathbf{A}_S` as given, like
          :class:`~pyg_mlic.nn.LabelGCNConv`)
        - **output:** :math:`(B, C, F_{out})` when scores are given or the input is
          batched, else :math:`(C, F_{out})`
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False,
                 sparse: bool = True, eps: float = 1e-12, dense_max_nodes: int = 128,
                 **kwargs):
        kwargs.setdefault("aggr", "add")
        super().__init__(**kwargs)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.sparse, self.eps = bool(sparse), float(eps)
        if isinstance(dense_max_nodes, bool) or int(dense_max_nodes) < 0:
            raise ValueError(f"InstanceAwareLabelConv: dense_max_nodes must be an int >= 0, "
                             f"got {dense_max_nodes!r}")
        self.dense_max_nodes = int(dense_max_nodes)
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

    # ------------------------------------------------------------------ propagation
    def _propagate(self, h: Tensor, edge_index: Tensor, edge_weight: Tensor,
                   adj: Optional[Tensor]) -> Tensor:
        """:math:`\\mathbf{A}_S \\mathbf{h}` for ``h`` ``[C, F']``."""
        if self.sparse:
            if adj is None:
                adj = label_adjacency_csr(edge_index, edge_weight.to(h.dtype), h.size(0))
            return self.propagate(adj, x=h, edge_weight=None)
        return self.propagate(edge_index, x=h, edge_weight=edge_weight.to(h.dtype),
                              size=(h.size(0), h.size(0)))

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None,
                a: Optional[Tensor] = None, adj: Optional[Tensor] = None,
                scaling: Optional[Tensor] = None) -> Tensor:
        r"""
        Args:
            x (Tensor): ``[C, F_in]`` or ``[B, C, F_in]`` label features.
            edge_index (Tensor): ``[2, E]`` edges :math:`j \to i` of :math:`\mathbf{A}_S`.
            edge_weight (Tensor, optional): ``[E]`` weights :math:`A_{S,ij} \ge 0`
                (default: ones).
            a (Tensor, optional): ``[B, C]`` image scores :math:`\mathbf{a}_b`; ``None``
                applies :math:`\mathbf{A}_S` as given.
            adj (Tensor, optional): precomputed :func:`label_adjacency_csr` (saves the
                conversion when several layers share the graph).
            scaling (Tensor, optional): precomputed :func:`instance_aware_scaling`
                ``[B, C]`` (overrides ``a``).
        """
        C = x.size(-2)
        if edge_weight is None:
            edge_weight = x.new_ones(edge_index.size(1))
        if self.sparse and adj is None:
            adj = label_adjacency_csr(edge_index, edge_weight.to(x.dtype), C)
        s = scaling
        if s is None and a is not None:
            s = instance_aware_scaling(a.to(x.dtype), edge_index, edge_weight, C, adj, self.eps)
        if s is not None and (s.dim() != 2 or s.size(1) != C):
            raise ValueError(f"InstanceAwareLabelConv: scaling must be [B, C={C}], got "
                             f"{tuple(s.shape)}")
        if s is not None and C <= self.dense_max_nodes and x.dim() in (2, 3):
            out = self._dense_forward(x, s, edge_index, edge_weight, adj)
        elif x.dim() == 2 and s is None:                    # one graph, shared features
            lin_first = self.out_channels < self.in_channels
            h = self.lin(x) if lin_first else x
            out = self._propagate(h, edge_index, edge_weight, adj)
            out = out if lin_first else self.lin(out)
        else:
            # work in the [C, B, F] layout (images side by side): the output is returned as
            # a [B, C, F] *view* of it, so a following layer gets its layout back for free
            if x.dim() == 2:                               # shared input: lin once
                hc = self.lin(x).unsqueeze(1)              # [C, 1, F]
                lin_first = True
            elif x.dim() == 3:
                xc = x.transpose(0, 1)                     # [C, B, F]
                lin_first = self.out_channels < self.in_channels
                hc = self.lin(xc) if lin_first else xc
            else:
                raise ValueError(f"InstanceAwareLabelConv: x must be [C, F] or [B, C, F], "
                                 f"got {tuple(x.shape)}")
            B = s.size(0) if s is not None else hc.size(1)
            if hc.size(1) not in (1, B):
                raise ValueError(f"InstanceAwareLabelConv: x has {hc.size(1)} images, the "
                                 f"scores {B}")
            sc = s.t().unsqueeze(-1) if s is not None else None          # [C, B, 1]
            hc = hc * sc if sc is not None else hc.expand(C, B, hc.size(-1))  # diag(s_b) H_b
            F_ = hc.size(-1)
            out = self._propagate(hc.reshape(C, B * F_), edge_index, edge_weight, adj)
            out = out.view(C, B, F_)
            if sc is not None:
                out = out * sc
            if not lin_first:
                out = self.lin(out)
            out = out.transpose(0, 1)                      # [B, C, F_out] view
        if self.bias is not None:
            out = out + self.bias
        return out

    def _dense_forward(self, x: Tensor, s: Tensor, edge_index: Tensor, edge_weight: Tensor,
                       adj: Optional[Tensor]) -> Tensor:
        """Small graphs: the per-image matrices ``diag(s_b) A_S diag(s_b)`` built densely,
        one batched product; ``[B, C, F_out]``."""
        C = x.size(-2)
        if adj is not None:
            A = adj.to_dense().to(x.dtype)
        else:
            A = x.new_zeros(C, C).index_put_((edge_index[1], edge_index[0]),
                                             edge_weight.to(x.dtype), accumulate=True)
        P = s[:, :, None] * A[None] * s[:, None, :]        # [B, C, C]
        if x.dim() == 2:                                   # shared input: lin once
            return torch.matmul(P, self.lin(x))
        if x.size(0) != s.size(0):
            raise ValueError(f"InstanceAwareLabelConv: x has {x.size(0)} images, the scores "
                             f"{s.size(0)}")
        if self.out_channels < self.in_channels:
            return torch.bmm(P, self.lin(x))
        return self.lin(torch.bmm(P, x))

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        return spmm(adj_t, x, reduce=self.aggr)

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

