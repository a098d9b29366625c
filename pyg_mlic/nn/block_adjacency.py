r"""Dense per-graph adjacencies in PyG's sparse ``adj_t`` form.

A batch of :math:`B` small complete bipartite graphs (GM-MLIC's matching edges: every
instance of an image joined to every label) is one block-diagonal sparse matrix: block
:math:`b` is the dense ``[T, S]`` matrix of image :math:`b` (rows: the :math:`T` target
nodes, columns: the :math:`S` source nodes), **all** its entries stored, zeros included.
Passed to :meth:`~torch_geometric.nn.conv.MessagePassing.propagate`, it routes a layer to
its fused :meth:`message_and_aggregate` like any ``adj_t``, and the layer reads the blocks
back as one dense ``[B, T, S]`` tensor (:func:`dense_blocks`) to work on dense edge states
``[B, S, T, F]`` without a gather.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["block_adjacency", "dense_blocks"]


def block_adjacency(weight: Tensor) -> Tensor:
    r"""The block-diagonal ``adj_t`` ``[B·T, B·S]`` (``torch.sparse_coo``, coalesced) whose
    block :math:`b` is ``weight[b]``: entry ``(b·T + t, b·S + s)`` is ``weight[b, t, s]``,
    the weight of the edge from source node ``b·S + s`` to target node ``b·T + t``.

    Args:
        weight (Tensor): ``[B, T, S]`` dense blocks (e.g. aggregation weights
            :math:`1/\deg`, 0 for a missing edge).
    """
    if weight.dim() != 3:
        raise ValueError(f"block_adjacency: weight must be [B, T, S], got {tuple(weight.shape)}")
    B, T, S = weight.shape
    dev = weight.device
    b = torch.arange(B, device=dev).view(B, 1, 1)
    row = (b * T + torch.arange(T, device=dev).view(1, T, 1)).expand(B, T, S)
    col = (b * S + torch.arange(S, device=dev).view(1, 1, S)).expand(B, T, S)
    index = torch.stack([row.reshape(-1), col.reshape(-1)])     # row-major: coalesced
    return torch.sparse_coo_tensor(index, weight.reshape(-1), (B * T, B * S),
                                   is_coalesced=True, check_invariants=False)


def dense_blocks(adj_t: Tensor, T: int, S: int) -> Tensor:
    r"""The blocks ``[B, T, S]`` of a :func:`block_adjacency` (a copy of its values: PyG's
    ``to_edge_index`` marks the matrix coalesced in place, which would invalidate a view
    saved for the backward pass).

    Raises:
        ValueError: ``adj_t`` is not a block-diagonal matrix of complete ``[T, S]`` blocks.
    """
    n, m = adj_t.shape
    B = n // T if T else 0
    if adj_t.layout != torch.sparse_coo or n != B * T or m != B * S \
            or adj_t._nnz() != B * T * S:
        raise ValueError(f"dense edge states [B, S={S}, T={T}, F] need the block adjacency of "
                         f"block_adjacency() (B complete [T, S] blocks), got a "
                         f"{adj_t.layout} matrix {tuple(adj_t.shape)} with {adj_t._nnz()} "
                         "entries")
    return adj_t._values().view(B, T, S).clone()
