"""Label graph convolution of ML-GCN."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import zeros
from torch_geometric.typing import Adj, OptTensor, SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor, spmm

__all__ = ["LabelGCNConv"]


class LabelGCNConv(MessagePassing):
    r"""The label graph convolution of ML-GCN (Chen et al., *Multi-Label Image
    Recognition with Graph Convolutional Networks*, CVPR 2019, Eq. 2).

    .. math::
        \mathbf{H}' = \mathbf{P}\,\mathbf{H}\,\mathbf{W} \;(+\, \mathbf{b})

    that is, node-wise

    .. math::
        \mathbf{h}'_i = \mathbf{W}^{\top} \sum_{j \in \mathcal{N}(i)} p_{ij}\, \mathbf{h}_j

    where :math:`\mathbf{P}` is the propagation operator of a label graph, stored as
    edge weights :math:`p_{ij}` on edges :math:`j \to i` (see
    :meth:`pyg_mlic.graphs.LabelGraph.propagation`), and is applied **as given**:
    unlike :class:`torch_geometric.nn.conv.GCNConv`, no self-loops are added and no
    normalisation is applied, so the re-weighted matrix of ML-GCN Eq. 8 (self weight
    :math:`1-p`) reaches the layer unchanged. Set ``normalize=True`` for a raw adjacency:
    PyG's :func:`~torch_geometric.nn.conv.gcn_conv.gcn_norm` then adds self-loops and
    normalises symmetrically, :math:`\mathbf{D}^{-1/2}(\mathbf{A}+\mathbf{I})
    \mathbf{D}^{-1/2}` with in-degrees :math:`D_{ii} = 1 + \sum_j A_{ij}` (Kipf & Welling;
    the weights must then be non-negative).

    The graph is an edge list ``edge_index`` + ``edge_weight`` (:meth:`message`, then a
    sum) or, as in :class:`~torch_geometric.nn.conv.GCNConv`, a sparse adjacency
    ``adj_t`` (a ``torch.sparse`` matrix or a ``torch_sparse.SparseTensor`` with
    ``adj_t[i, j]`` = :math:`p_{ij}`; :meth:`message_and_aggregate`, one sparse product);
    both give the same result.

    The non-linearity :math:`h(\cdot)` of Eq. 2 (LeakyReLU in ML-GCN) is applied by
    the model between layers, as in PyG. The linear map is applied before or after
    the propagation, whichever side has fewer channels (the result is the same,
    :math:`\mathbf{P}(\mathbf{H}\mathbf{W}) = (\mathbf{P}\mathbf{H})\mathbf{W}`).

    Args:
        in_channels (int): size of each input label feature (``-1`` = lazy).
        out_channels (int): size of each output label feature.
        bias (bool, optional): add a learnable bias. (default: :obj:`False`, as in
            the public ML-GCN code's ``GraphConvolution``)
        normalize (bool, optional): add self-loops and normalise symmetrically with
            :func:`~torch_geometric.nn.conv.gcn_conv.gcn_norm` (GCN of Kipf & Welling).
            (default: :obj:`False`: the weights are applied as given)
        **kwargs (optional): additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** label features :math:`(C, F_{in})`, edge indices :math:`(2, E)` and
          edge weights :math:`(E)` *or* a sparse adjacency ``adj_t`` :math:`(C, C)`
        - **output:** label features :math:`(C, F_{out})`
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False,
                 normalize: bool = False, **kwargs):
        kwargs.setdefault("aggr", "add")
        super().__init__(**kwargs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.normalize = normalize
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

    def forward(self, x: Tensor, edge_index: Adj, edge_weight: OptTensor = None) -> Tensor:
        r"""
        Args:
            x (Tensor): ``[C, F_in]`` label features.
            edge_index (Tensor or SparseTensor): edges :math:`j \to i` ``[2, E]``, or the
                sparse adjacency ``adj_t`` ``[C, C]`` (weights as its values).
            edge_weight (Tensor, optional): ``[E]`` weights :math:`p_{ij}` of an edge list
                (default: ones).
        """
        if self.normalize:
            if isinstance(edge_index, SparseTensor):
                edge_index = gcn_norm(edge_index, None, x.size(self.node_dim), False, True,
                                      self.flow, x.dtype)
            else:
                edge_index, edge_weight = gcn_norm(edge_index, edge_weight,
                                                   x.size(self.node_dim), False, True,
                                                   self.flow, x.dtype)
        elif edge_weight is None and not (isinstance(edge_index, SparseTensor)
                                          or is_torch_sparse_tensor(edge_index)):
            edge_weight = x.new_ones(edge_index.size(1))
        if self.in_channels != -1 and self.out_channels < self.in_channels:
            out = self.propagate(edge_index, x=self.lin(x), edge_weight=edge_weight)
        else:
            out = self.lin(self.propagate(edge_index, x=x, edge_weight=edge_weight))
        if self.bias is not None:
            out = out + self.bias
        return out

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, adj_t: Adj, x: Tensor) -> Tensor:
        return spmm(adj_t, x, reduce=self.aggr)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"normalize={self.normalize})")
