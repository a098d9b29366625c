r"""Edge convolution of GM-MLIC's graph network block (Wu et al., IJCAI 2021, Eqs. 9–12),
and :class:`SplitMLP`, the two-layer MLP over concatenated parts shared by every GNB
function."""
from __future__ import annotations

import typing
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import is_sparse

from pyg_mlic.graphs.assignment_graph import CO, MATCH, NEAR

__all__ = ["SplitMLP", "GNBEdgeConv", "EdgeType", "Folded", "pair_relu_linear",
           "relu_weighted_sum"]

EdgeType = Tuple[str, str, str]


class SplitMLP(nn.Module):
    r"""Two-layer perceptron over a concatenation of parts,

    .. math::
        \mathrm{MLP}([\mathbf{a}_1, \ldots, \mathbf{a}_n]) =
        \mathbf{W}_2\,\sigma\Big(\sum_{k=1}^{n} \mathbf{W}_1^{(k)} \mathbf{a}_k
        + \mathbf{b}_1\Big) + \mathbf{b}_2

    with :math:`\mathbf{W}_1 = [\mathbf{W}_1^{(1)}, \ldots, \mathbf{W}_1^{(n)}]` and
    :math:`\sigma` = ReLU. Calling the module concatenates (the textbook form);
    :meth:`proj` applies one block :math:`\mathbf{W}_1^{(k)}` to one part, so an MLP over
    an edge :math:`[\mathbf{v}_i, \mathbf{v}_j]` can project each *node* once and add the
    projections per edge (gather + add) instead of materialising the concatenation.

    Args:
        in_parts (list[int]): sizes of the concatenated parts.
        hidden_channels (int): hidden width.
        out_channels (int): output width.

    Shapes:
        - **input:** parts :math:`(*, F_k)` (broadcastable leading dimensions)
        - **output:** :math:`(*, F_{out})`
    """

    def __init__(self, in_parts: Sequence[int], hidden_channels: int, out_channels: int):
        super().__init__()
        self.in_parts = [int(p) for p in in_parts]
        if not self.in_parts or min(self.in_parts) < 1:
            raise ValueError(f"SplitMLP: in_parts must be positive sizes, got {in_parts!r}")
        self.lin1 = nn.Linear(sum(self.in_parts), int(hidden_channels))
        self.lin2 = nn.Linear(int(hidden_channels), int(out_channels))
        self._offsets = [0]
        for p in self.in_parts:
            self._offsets.append(self._offsets[-1] + p)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""He initialisation of the first layer (ReLU follows) and LeCun of the second,
        zero biases, so that the signal keeps its scale through the many stacked MLPs of a
        graph network block (PyTorch's default :class:`~torch.nn.Linear` initialisation
        shrinks the variance about sixfold per ReLU layer: the scores of a default-initialised
        GNB would hardly depend on its input). The first layer is initialised part by part,
        :math:`\mathbf{W}_1^{(k)} \sim \mathcal{N}(0, 2 / (n F_k))` for :math:`n` parts, so
        that every part contributes equally to the pre-activation whatever its width: a
        15-d one-hot label next to a 1024-d ROI feature is not drowned at initialisation."""
        n = len(self.in_parts)
        with torch.no_grad():
            for k, size in enumerate(self.in_parts):     # each part gets an equal share
                self.lin1.weight[:, self._offsets[k]:self._offsets[k + 1]].normal_(
                    0.0, (2.0 / (n * size)) ** 0.5)
        nn.init.normal_(self.lin2.weight, std=self.lin2.in_features ** -0.5)
        nn.init.zeros_(self.lin1.bias)
        nn.init.zeros_(self.lin2.bias)

    def weight(self, k: int) -> Tensor:
        r""":math:`\mathbf{W}_1^{(k)}` ``[hidden, F_k]``."""
        return self.lin1.weight[:, self._offsets[k]:self._offsets[k + 1]]

    def proj(self, k: int, x: Tensor, bias: bool = False) -> Tensor:
        r""":math:`\mathbf{W}_1^{(k)} \mathbf{a}_k` (:math:`+\,\mathbf{b}_1` if ``bias``)."""
        if x.shape[-1] != self.in_parts[k]:
            raise ValueError(f"SplitMLP: part {k} must have {self.in_parts[k]} channels, got "
                             f"{x.size(-1)}")
        if isinstance(x, Folded):
            return x.linear(self.weight(k), self.lin1.bias if bias else None)
        return F.linear(x, self.weight(k), self.lin1.bias if bias else None)

    def hidden(self, *projections: Tensor) -> Tensor:
        r""":math:`\sigma(\sum_k \text{projections}_k)` (the bias must be in one of them)."""
        out = projections[0]
        for p in projections[1:]:
            out = out + p
        return F.relu(out)

    def head(self, h: Tensor) -> Tensor:
        r"""The second layer :math:`\mathbf{W}_2 \mathbf{h} + \mathbf{b}_2`."""
        return self.lin2(h)

    def forward(self, *parts: Tensor) -> Tensor:
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return self.lin2(F.relu(self.lin1(x)))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_parts} -> {self.lin1.out_features} -> "
                f"{self.lin2.out_features})")


def _gather(x: Tensor, idx: Optional[Tensor]) -> Tensor:
    return x if idx is None else x.index_select(-2, idx)


def _pair_hidden(a: Tensor, b: Tensor, ia: Optional[Tensor], ib: Optional[Tensor]) -> Tensor:
    return torch.relu(_gather(a, ia) + _gather(b, ib))


def _grad_to(g: Tensor, x: Tensor, idx: Optional[Tensor]) -> Tensor:
    """Gradient of ``_gather(x, idx)`` broadcast to ``g.shape``, brought back to ``x``."""
    if idx is None:
        return g.sum_to_size(x.shape)
    shape = x.shape[:-2] + (idx.numel(), x.shape[-1])
    return torch.zeros_like(x).index_add_(-2, idx, g.sum_to_size(shape))


class _PairReLULinear(torch.autograd.Function):
    """``F.linear(relu(a[ia] + b[ib]), W, bias)`` saving ``a`` and ``b`` (per node), not the
    per-edge hidden state: backward recomputes it (one add + ReLU)."""

    @staticmethod
    def forward(ctx, a, b, ia, ib, weight, bias):
        ctx.save_for_backward(a, b, ia, ib, weight)
        ctx.has_bias = bias is not None
        return F.linear(_pair_hidden(a, b, ia, ib), weight, bias)

    @staticmethod
    def backward(ctx, gy):
        a, b, ia, ib, weight = ctx.saved_tensors
        r = _pair_hidden(a, b, ia, ib)
        gw = gb = ga = gbb = None
        if ctx.needs_input_grad[4]:
            gw = gy.reshape(-1, gy.shape[-1]).t() @ r.reshape(-1, r.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[5]:
            gb = gy.reshape(-1, gy.shape[-1]).sum(0)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            gpre = (gy @ weight).masked_fill_(r <= 0, 0.0)
            del r
            if ctx.needs_input_grad[0]:
                ga = _grad_to(gpre, a, ia)
            if ctx.needs_input_grad[1]:
                gbb = _grad_to(gpre, b, ib)
        return ga, gbb, None, None, gw, gb


def pair_relu_linear(a: Tensor, b: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     index_a: Optional[Tensor] = None,
                     index_b: Optional[Tensor] = None) -> Tensor:
    r""":math:`\mathbf{W}\,\mathrm{ReLU}(\mathbf{a}_{[i]} + \mathbf{b}_{[j]}) + \mathbf{c}`
    for per-node projections :math:`\mathbf{a}, \mathbf{b}` broadcast (or gathered along
    dimension -2 with ``index_a`` / ``index_b``) to the edges.

    Equal to ``F.linear(torch.relu(a[..., ia, :] + b[..., ib, :]), weight, bias)``, but
    autograd keeps only the per-node inputs: the per-edge hidden state is recomputed in the
    backward pass (an add and a ReLU) instead of being stored.
    """
    return _PairReLULinear.apply(a, b, index_a, index_b, weight, bias)


class _ReLUWeightedSum(torch.autograd.Function):
    """``(relu(x) * w).sum(dim)`` saving the sign pattern of ``x`` as booleans."""

    @staticmethod
    def forward(ctx, x, w, dim):
        pos = x > 0
        ctx.save_for_backward(pos, w)
        ctx.dim = dim
        r = torch.relu(x)
        return r.mul_(w).sum(dim)

    @staticmethod
    def backward(ctx, gy):
        pos, w = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[0]:
            # in the memory layout of x (which may be a permuted view, e.g. the matching
            # edges [B, K, C, H] read label-major): its consumers then copy it as is
            gx = torch.empty_like(pos, dtype=gy.dtype)
            torch.mul(gy.unsqueeze(ctx.dim), w, out=gx)
            gx.masked_fill_(~pos, 0.0)
        return gx, None, None


def relu_weighted_sum(x: Tensor, weight: Tensor, dim: int) -> Tensor:
    r""":math:`\sum_k w_k\,\mathrm{ReLU}(x_k)` along ``dim`` (``weight`` broadcastable to
    ``x``, not differentiated), storing one boolean per element of ``x`` for the backward
    pass instead of the float activations (a mean aggregation of MLP messages)."""
    return _ReLUWeightedSum.apply(x, weight, dim)


class Folded:
    r"""An edge state :math:`\mathbf{e} = \mathbf{W}\mathbf{h} + \mathbf{b}` kept
    unevaluated (the output layer of the MLP that produced it), so that every consumer,
    which starts with a linear map :math:`\mathbf{W}_c`, applies the folded map
    :math:`(\mathbf{W}_c\mathbf{W})\mathbf{h} + \mathbf{W}_c\mathbf{b}` to the hidden
    state instead: one matrix product per edge fewer and the state never materialised.
    The hidden state is either a tensor ``h`` or, for an encoder over a pair of nodes,
    :math:`\mathrm{ReLU}(\mathbf{a}_{[i]} + \mathbf{b}_{[j]})` given by its per-node
    parts (see :func:`pair_relu_linear`: then not even ``h`` is stored).

    Args:
        h (Tensor, optional): hidden state ``[*, H]``.
        weight (Tensor): ``[F, H]``; bias (Tensor): ``[F]``.
        pair (tuple, optional): ``(a, b, index_a, index_b)`` instead of ``h``.
    """

    __slots__ = ("h", "weight", "bias", "pair")

    def __init__(self, h: Optional[Tensor], weight: Tensor, bias: Optional[Tensor],
                 pair: Optional[tuple] = None):
        if (h is None) == (pair is None):
            raise ValueError("Folded: give exactly one of h and pair")
        self.h, self.weight, self.bias, self.pair = h, weight, bias, pair

    @classmethod
    def of(cls, mlp: "SplitMLP", h: Tensor) -> "Folded":
        """The output of ``mlp`` for hidden state ``h``, unevaluated."""
        return cls(h, mlp.lin2.weight, mlp.lin2.bias)

    @classmethod
    def of_pair(cls, mlp: "SplitMLP", a: Tensor, b: Tensor, index_a: Optional[Tensor] = None,
                index_b: Optional[Tensor] = None) -> "Folded":
        """The output of ``mlp`` for the hidden state ``relu(a[index_a] + b[index_b])``."""
        return cls(None, mlp.lin2.weight, mlp.lin2.bias, (a, b, index_a, index_b))

    def _apply(self, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.pair is not None:
            a, b, ia, ib = self.pair
            return pair_relu_linear(a, b, weight, bias, ia, ib)
        return F.linear(self.h, weight, bias)

    def linear(self, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        r""":math:`\mathbf{W}_c \mathbf{e} + \mathbf{b}_c` without forming :math:`\mathbf{e}`."""
        b = weight @ self.bias if self.bias is not None else None
        if bias is not None:
            b = bias if b is None else b + bias
        return self._apply(weight @ self.weight, b)

    def value(self) -> Tensor:
        """The state itself."""
        return self._apply(self.weight, self.bias)

    @property
    def shape(self) -> torch.Size:
        if self.h is not None:
            lead = self.h.shape[:-1]
        else:
            a, b, ia, ib = self.pair
            sa = a.shape[:-2] + ((ia.numel() if ia is not None else a.shape[-2]), a.shape[-1])
            sb = b.shape[:-2] + ((ib.numel() if ib is not None else b.shape[-2]), b.shape[-1])
            lead = torch.broadcast_shapes(sa, sb)[:-1]
        return lead + (self.weight.size(0),)


def linear(e, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear`` on a tensor or a :class:`Folded` state."""
    if isinstance(e, Folded):
        return e.linear(weight, bias)
    return F.linear(e, weight, bias)


def folded_second_projection(first: SplitMLP, k: int, inner: SplitMLP) -> Tuple[Tensor, Tensor]:
    r"""``(W, b)`` with :math:`\mathbf{W}_1^{(k)}(\mathbf{W}_2'\mathbf{h} + \mathbf{b}_2')
    = \mathbf{W}\mathbf{h} + \mathbf{b}`: part :math:`k` of ``first`` applied to the output
    of ``inner``, folded into one map of ``inner``'s hidden state (one matrix product per
    edge fewer)."""
    Wk = first.weight(k)
    return Wk @ inner.lin2.weight, Wk @ inner.lin2.bias


class GNBEdgeConv(MessagePassing):
    r"""The edge convolution of GM-MLIC's graph network block (Wu et al., *GM-MLIC: Graph
    Matching based Multi-Label Image Classification*, IJCAI 2021, Eqs. 9–12).

    Every edge :math:`(i \to j)` of the assignment graph gathers its two end nodes and
    updates its attribute; instance edges (Eq. 9), label edges (Eq. 10) and matching
    edges (Eqs. 11–12) each have their own MLPs:

    .. math::
        \hat{e}^o_{ij} = \rho^o_e([v^o_i, v^o_j]), \qquad
        e^o_{ij} \leftarrow \phi^o_e([e^o_{ij}, \hat{e}^o_{ij}])

    .. math::
        \hat{e}^l_{ij} = \rho^l_e([v^l_i, v^l_j]), \qquad
        e^l_{ij} \leftarrow \phi^l_e([e^l_{ij}, \hat{e}^l_{ij}])

    .. math::
        \hat{e}^m_{ij} = \rho^m_e([v^o_i, v^l_j]), \qquad
        e^m_{ij} \leftarrow \phi^m_e([e^m_{ij}, \hat{e}^m_{ij}])

    All :math:`\rho, \phi` are :class:`SplitMLP` (two layers, ReLU; the paper says "MLPs"
    without sizes).

    **Message passing.** Each edge type is one
    :meth:`~torch_geometric.nn.conv.MessagePassing.edge_updater` call, and
    :meth:`edge_update` computes the new state of every edge from the per-node first-layer
    projections of :math:`\rho` (:math:`\mathbf{W}_a v_i + \mathbf{W}_b v_j`: each node
    projected once, gathered or broadcast per edge), with the second layer of
    :math:`\rho` folded into the first layer of :math:`\phi`
    (:func:`folded_second_projection`) and the per-edge hidden state of :math:`\rho`
    recomputed in the backward pass instead of stored (:func:`pair_relu_linear`):

    * over an edge list ``edge_index`` (or any ``adj_t``), the edge states are
      ``[E, F]`` and the node projections are gathered at ``edge_index_j`` /
      ``edge_index_i``;
    * over the :func:`~pyg_mlic.nn.block_adjacency.block_adjacency` of a padded batch
      (matching edges, every instance joined to every label), the edge states are dense
      ``[B, K, C, F]`` and the node projections are broadcast over the blocks (no
      gather).

    Both give the same result (tested); ``reference=True`` builds every edge input by
    concatenation instead (the textbook form, for checking). ``fold=True`` returns the
    new states unevaluated (:class:`Folded`, the output layer of :math:`\phi` applied by
    each consumer: :class:`~pyg_mlic.nn.GraphNetworkBlock` does this).

    Args:
        node_channels (int): width of the (already updated) node states.
        edge_channels (int): width of the incoming edge states.
        out_channels (int): width of the updated edge states.
        hidden_channels (int, optional): hidden width of the MLPs. (default: ``out_channels``)
        edge_types (list, optional): which of :data:`NEAR`, :data:`CO`, :data:`MATCH` to
            update (the others are passed through untouched or dropped). (default: all)

    Shapes:
        - **input:** node states ``instance`` :math:`(N_o, F_v)`, ``label``
          :math:`(N_l, F_v)` (padded batch: :math:`(C, F_v)` or :math:`(B, C, F_v)`);
          per edge type an ``edge_index`` :math:`(2, E_t)` or an ``adj_t``; edge states
          :math:`(E_t, F_e)` (padded batch: label edges :math:`(B, E_l, F_e)` too,
          matching edges :math:`(B, K, C, F_e)`)
        - **output:** dict of updated edge states in the same layouts, :math:`F_{out}`
          channels
    """

    # (string types: PyG's generated edge_updater imports this module's __all__ only)
    edge_updater_type = {"p": "typing.Tuple[Tensor, Tensor]", "e": "typing.Any", "key": "str"}

    def __init__(self, node_channels: int, edge_channels: int, out_channels: int,
                 hidden_channels: Optional[int] = None,
                 edge_types: Optional[Sequence[EdgeType]] = None):
        super().__init__(aggr="mean")
        H = int(hidden_channels or out_channels)
        self.node_channels, self.edge_channels = int(node_channels), int(edge_channels)
        self.out_channels, self.hidden_channels = int(out_channels), H
        types = [tuple(t) for t in (edge_types if edge_types is not None else (NEAR, CO, MATCH))]
        for t in types:
            if t not in (NEAR, CO, MATCH):
                raise ValueError(f"GNBEdgeConv: unknown edge type {t}; expected one of "
                                 f"{[NEAR, CO, MATCH]}")
        self.edge_types = types
        self.rho = nn.ModuleDict()
        self.phi = nn.ModuleDict()
        for t in types:
            key = t[1]
            self.rho[key] = SplitMLP([node_channels, node_channels], H, out_channels)
            self.phi[key] = SplitMLP([edge_channels, out_channels], H, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for m in list(self.rho.values()) + list(self.phi.values()):
            m.reset_parameters()

    # ------------------------------------------------------------------ message passing
    def edge_update(self, p: typing.Tuple[Tensor, Tensor], e: typing.Any, key: str,
                    edge_index_i: Tensor, edge_index_j: Tensor) -> typing.Any:
        r""":math:`\phi([\mathbf{e}_{ji}, \rho([\mathbf{v}_j, \mathbf{v}_i])])` for every
        edge :math:`j \to i` of type ``key``, unevaluated (:class:`Folded`): ``p`` = the
        first-layer projections of :math:`\rho` of the sources (with the bias) and of the
        targets; ``e`` ``[E, F]`` (gathered at ``edge_index_j`` / ``edge_index_i``) or
        dense ``[B, S, T, F]`` (sources ``[B·S, H]`` or ``[B, S, H]``, targets ``[T, H]``
        or ``[B, T, H]``, broadcast)."""
        rho, phi = self.rho[key], self.phi[key]
        W, bias = folded_second_projection(phi, 1, rho)
        src, dst = p
        if len(e.shape) == 4:
            B, S = e.shape[:2]
            if src.dim() == 2 and src.size(0) == B * S:
                src = src.view(B, S, -1)
            r = pair_relu_linear(src.unsqueeze(-2), dst.unsqueeze(-3), W, bias)
        else:
            r = pair_relu_linear(src, dst, W, bias, edge_index_j, edge_index_i)
        return Folded.of(phi, phi.hidden(phi.proj(0, e, bias=True), r))

    def _update(self, t: EdgeType, x_src: Tensor, x_dst: Tensor, edge_index, e,
                reference: bool, fold: bool):
        rho, phi = self.rho[t[1]], self.phi[t[1]]
        if reference:
            ehat = rho(x_src[edge_index[0]], x_dst[edge_index[1]])
            return phi(e, ehat)
        size = None if is_sparse(edge_index) else (x_src.size(-2), x_dst.size(-2))
        out = self.edge_updater(edge_index, p=(rho.proj(0, x_src, bias=True),
                                               rho.proj(1, x_dst)), e=e, key=t[1], size=size)
        return out if fold else out.value()

    def forward(self, x_dict: Dict[str, Tensor], edge_index_dict: Dict[EdgeType, Any],
                edge_attr_dict: Dict[EdgeType, Any], reference: bool = False,
                fold: bool = False) -> Dict[EdgeType, Any]:
        r"""
        Args:
            x_dict (dict): ``instance`` and ``label`` node states (already updated).
            edge_index_dict (dict): per edge type an ``edge_index`` or an ``adj_t``.
            edge_attr_dict (dict): edge states per edge type (tensors or :class:`Folded`).
            reference (bool): textbook form (edge lists only).
            fold (bool): return :class:`Folded` states instead of tensors.

        Returns:
            dict of the updated states of the requested types present in
            ``edge_index_dict``.
        """
        out = {}
        for t in self.edge_types:
            if t not in edge_index_dict:
                continue
            out[t] = self._update(t, x_dict[t[0]], x_dict[t[2]], edge_index_dict[t],
                                  edge_attr_dict[t], reference, fold)
        return out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(nodes={self.node_channels}, "
                f"edges={self.edge_channels} -> {self.out_channels}, "
                f"types={[t[1] for t in self.edge_types]})")
