"""Label graph convolution of ML-GCN."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import zeros
from torch_geometric.typing import Adj, OptTensor
from torch_geometric.utils import add_remaining_self_loops, scatter


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
    :math:`1-p`) reaches the layer unchanged. Set ``normalize=True`` to get the
    symmetric normalisation :math:`\mathbf{D}^{-1/2}(\mathbf{A}+\mathbf{I})\mathbf{D}^{-1/2}`
    of a raw adjacency instead.

    The non-linearity :math:`h(\cdot)` of Eq. 2 (LeakyReLU in ML-GCN) is applied by
    the model between layers, as in PyG. The linear map is applied before or after
    the propagation, whichever side has fewer channels (the result is the same,
    :math:`\mathbf{P}(\mathbf{H}\mathbf{W}) = (\mathbf{P}\mathbf{H})\mathbf{W}`).

    Args:
        in_channels (int): size of each input label feature (``-1`` = lazy).
        out_channels (int): size of each output label feature.
        bias (bool, optional): add a learnable bias. (default: :obj:`False`, as in
            the public ML-GCN code's ``GraphConvolution``)
        normalize (bool, optional): add self-loops and normalise symmetrically
            (GCN of Kipf & Welling). (default: :obj:`False`)
        **kwargs (optional): additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** label features :math:`(C, F_{in})`, edge indices :math:`(2, E)`,
          edge weights :math:`(E)`
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
        if edge_weight is None:
            edge_weight = x.new_ones(edge_index.size(1))
        if self.normalize:
            edge_index, edge_weight = self._gcn_norm(edge_index, edge_weight, x.size(0))
        if self.in_channels != -1 and self.out_channels < self.in_channels:
            out = self.propagate(edge_index, x=self.lin(x), edge_weight=edge_weight)
        else:
            out = self.lin(self.propagate(edge_index, x=x, edge_weight=edge_weight))
        if self.bias is not None:
            out = out + self.bias
        return out

    @staticmethod
    def _gcn_norm(edge_index: Tensor, edge_weight: Tensor, num_nodes: int):
        edge_index, edge_weight = add_remaining_self_loops(edge_index, edge_weight, 1.0, num_nodes)
        row, col = edge_index[0], edge_index[1]
        deg = scatter(edge_weight, col, 0, dim_size=num_nodes, reduce="sum")
        inv = deg.clamp_min(1e-12).pow(-0.5).masked_fill(deg <= 0, 0.0)
        return edge_index, inv[row] * edge_weight * inv[col]

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.view(-1, 1) * x_j

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"normalize={self.normalize})")
