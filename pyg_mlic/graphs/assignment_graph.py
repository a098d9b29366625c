r"""The assignment graph of GM-MLIC (Wu et al., *GM-MLIC: Graph Matching based
Multi-Label Image Classification*, IJCAI 2021, Sec. 3.2, Eqs. 1–3).

One image becomes a :class:`torch_geometric.data.HeteroData` with two node types and
four edge types:

* node type ``instance``: one node per detected instance (ROI); ``x`` = ROI feature
  :math:`f_i` (:math:`v^o_i`, Eq. 1), ``boxes`` = :math:`\hat B_i` (normalised ``xyxy``),
  ``slot`` = position in the padded ``[B, K]`` input;
* node type ``label``: one node per class; ``x`` = word embedding :math:`w_c`
  (:math:`v^l_c`, Eq. 2);
* ``('instance', 'near', 'instance')``: kNN edges of the instance spatial graph
  :math:`G_o` (built by :func:`~pyg_mlic.graphs.instance_graph_batch`), ``edge_attr`` =
  :math:`[\hat B_i, \hat B_j]` (8 columns, Eq. 1);
* ``('label', 'co', 'label')``: the label semantic graph :math:`G_l`, ``edge_attr`` =
  :math:`[w_i, w_j]` (:math:`2d` columns, Eq. 2);
* ``('instance', 'match', 'label')``: every instance–label pair, ``edge_attr`` =
  :math:`[v^o_i, v^l_j] = [f_i, w_j]` (Eq. 3);
* ``('label', 'rev_match', 'instance')``: the same matching edges traversed backwards, in
  the same order and with the same ``edge_attr`` (instance part first): each is one edge
  :math:`e^m_{ij}` of Eq. 3, whose state the graph network block updates once.

Edges go from ``edge_index[0]`` (source) to ``edge_index[1]`` (receiver) and an edge
attribute concatenates source then receiver, as in Eq. 1.

Choices where the paper is silent:

* :math:`G_l` is complete without self-loops by default (:math:`C(C-1)` edges; the paper
  says :math:`G_l` "does not require pre-defined label co-occurrence statistics"); pass
  ``label_graph`` (a :class:`~pyg_mlic.graphs.LabelGraph`, its ``Data`` or an
  ``edge_index``) to restrict :math:`G_l` to that graph's support (edges with non-zero
  weight, self-loops dropped).
* :math:`k` of the kNN graph is not given; default :data:`~pyg_mlic.graphs.DEFAULT_K` (5).
* Boxes may be given in pixels with ``image_size`` ``(H, W)`` or already normalised to
  :math:`[0, 1]` (``image_size=None``); either way neighbours are searched on the centres
  of the normalised boxes :math:`\hat B` (see :mod:`~pyg_mlic.graphs.instance_graph`), the
  coordinates :class:`~pyg_mlic.nn.GraphNetworkBlock`'s training path uses, so both give
  the same :math:`G_o`.

Batching: :func:`assignment_graph_batch` builds all images of a padded batch at once
(one neighbour search for the whole batch, matching edges from ``arange`` products — no
Python loop over pairs) and returns a :class:`torch_geometric.data.Batch` whose edge
indices are offset per node type. No attribute name contains ``index`` except the edge
indices (PyG increments those when batching; the padded position is called ``slot``).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch, HeteroData

from pyg_mlic.graphs.instance_graph import DEFAULT_K, instance_graph_batch

__all__ = ["assignment_graph", "assignment_graph_batch", "complete_label_edges",
           "label_edges", "matching_edges", "INSTANCE", "LABEL", "NEAR", "CO", "MATCH",
           "REV_MATCH"]

INSTANCE, LABEL = "instance", "label"
NEAR: Tuple[str, str, str] = (INSTANCE, "near", INSTANCE)
CO: Tuple[str, str, str] = (LABEL, "co", LABEL)
MATCH: Tuple[str, str, str] = (INSTANCE, "match", LABEL)
REV_MATCH: Tuple[str, str, str] = (LABEL, "rev_match", INSTANCE)


def complete_label_edges(num_labels: int, device: Optional[torch.device] = None) -> Tensor:
    """Edges of the complete directed graph on ``num_labels`` nodes without self-loops,
    ``[2, C(C-1)]``, sorted by source then receiver."""
    C = int(num_labels)
    idx = torch.arange(C, device=device)
    src = idx.repeat_interleave(C)
    dst = idx.repeat(C)
    keep = src != dst
    return torch.stack([src[keep], dst[keep]])


def label_edges(num_labels: int, label_graph: Any = None,
                device: Optional[torch.device] = None) -> Tensor:
    r"""``edge_index`` ``[2, E_l]`` of the label semantic graph :math:`G_l`.

    Args:
        num_labels (int): :math:`C`.
        label_graph: ``None`` (complete graph without self-loops), a
            :class:`~pyg_mlic.graphs.LabelGraph`, its ``Data`` (edges with a non-zero
            ``edge_weight``), or an ``edge_index`` ``[2, E]``. Self-loops are dropped.
    """
    C = int(num_labels)
    if C < 1:
        raise ValueError(f"assignment graph: need at least one label, got {C}")
    if label_graph is None:
        return complete_label_edges(C, device)
    if isinstance(label_graph, Tensor):
        ei = label_graph
    else:
        data = getattr(label_graph, "data", label_graph)
        if not hasattr(data, "edge_index"):
            raise TypeError("assignment graph: label_graph must be a LabelGraph, a Data with "
                            f"edge_index or an edge_index tensor, got {type(label_graph)}")
        n = getattr(data, "num_nodes", None)
        if n is not None and n != C:
            raise ValueError(f"assignment graph: label_graph has {n} nodes but there are {C} "
                             "labels")
        ei = data.edge_index
        w = getattr(data, "edge_weight", None)
        if w is not None:
            ei = ei[:, w != 0]
    ei = torch.as_tensor(ei).long()
    if ei.dim() != 2 or ei.size(0) != 2:
        raise ValueError(f"assignment graph: label edge_index must be [2, E], got "
                         f"{tuple(ei.shape)}")
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= C):
        raise ValueError(f"assignment graph: label edge_index refers to nodes outside "
                         f"0..{C - 1}")
    ei = ei[:, ei[0] != ei[1]]
    return ei.to(device) if device is not None else ei


def matching_edges(num_instances: int, num_labels: int,
                   device: Optional[torch.device] = None) -> Tensor:
    r"""Matching edges (Eq. 3): every instance :math:`i` to every label :math:`c`,
    ``[2, M C]``, instance-major (edge :math:`iC + c` joins :math:`i` and :math:`c`)."""
    M, C = int(num_instances), int(num_labels)
    return torch.stack([torch.arange(M, device=device).repeat_interleave(C),
                        torch.arange(C, device=device).repeat(M)])


def _check_embeddings(E: Tensor) -> Tensor:
    if not isinstance(E, Tensor) or E.dim() != 2 or E.size(0) < 1:
        raise ValueError(f"assignment graph: label_embeddings must be a [C, d] tensor, got "
                         f"{getattr(E, 'shape', type(E))}")
    if not torch.isfinite(E).all():
        raise ValueError("assignment graph: label_embeddings contain non-finite values")
    return E


def assignment_graph_batch(features: Tensor, boxes: Tensor, label_embeddings: Tensor,
                           image_sizes: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                           k: int = DEFAULT_K, label_graph: Any = None,
                           match_attr: bool = True) -> Batch:
    r"""Assignment graphs of a padded batch of :math:`B` images (Eqs. 1–3).

    Args:
        features (Tensor): ROI features ``[B, K, D]`` (zero padding).
        boxes (Tensor): ``[B, K, 4]`` ``xyxy``: pixels with ``image_sizes``, or already
            normalised to :math:`[0, 1]` when ``image_sizes`` is ``None``.
        label_embeddings (Tensor): word embeddings ``[C, d]`` (shared by all images).
        image_sizes (Tensor, optional): ``[B, 2]`` ``(H, W)``. (default: boxes are normalised)
        mask (Tensor, optional): bool ``[B, K]``, ``False`` = padding (no node).
        k (int): neighbours per instance in :math:`G_o`. (default: :obj:`5`)
        label_graph: support of :math:`G_l` (see :func:`label_edges`). (default: complete)
        match_attr (bool): store the matching edges' ``edge_attr`` :math:`[f_i, w_j]`
            (``[M C, D + d]`` per image). Set ``False`` to skip the concatenation when the
            consumer computes it from the node features (as
            :class:`~pyg_mlic.nn.GraphNetworkBlock` can). (default: :obj:`True`)

    Returns:
        torch_geometric.data.Batch: of :math:`B` :class:`HeteroData` graphs (see the
        module docstring); ``batch['instance'].batch`` maps instances to images,
        ``batch['label'].batch`` labels to images (each image has its own copy of the
        :math:`C` label nodes).
    """
    if features.dim() != 3:
        raise ValueError(f"assignment_graph_batch: features must be [B, K, D], got "
                         f"{tuple(features.shape)}")
    E = _check_embeddings(label_embeddings).to(features.dtype)
    bsz, kmax = features.shape[:2]
    if image_sizes is None:
        image_sizes = torch.ones(bsz, 2, dtype=torch.long, device=features.device)
        rb = boxes[mask] if mask is not None and boxes.shape[:2] == mask.shape \
            else boxes.reshape(-1, boxes.shape[-1])
        if rb.numel() and torch.isfinite(rb).all() \
                and (float(rb.min()) < -1e-4 or float(rb.max()) > 1 + 1e-4):
                raise ValueError("assignment_graph_batch: without image_sizes the boxes must "
                                 "be normalised to [0, 1]; pass image_sizes for pixel boxes")
    ig = instance_graph_batch(boxes, features, image_sizes, mask, k)
    C = E.size(0)
    co = label_edges(C, label_graph, device=features.device)
    co_attr = torch.cat([E[co[0]], E[co[1]]], dim=1)
    slots = mask.nonzero()[:, 1] if mask is not None else \
        torch.arange(kmax, device=features.device).repeat(bsz)
    counts = ig.ptr[1:] - ig.ptr[:-1]
    ecounts = torch.bincount(ig.batch[ig.edge_index[1]], minlength=bsz)
    eptr = torch.cat([ecounts.new_zeros(1), torch.cumsum(ecounts, 0)])
    data_list = []
    for g in range(bsz):                                        # per image, not per pair
        n0, n1 = int(ig.ptr[g]), int(ig.ptr[g + 1])
        e0, e1 = int(eptr[g]), int(eptr[g + 1])
        M = int(counts[g])
        d = HeteroData()
        d[INSTANCE].x = ig.x[n0:n1]
        d[INSTANCE].boxes = ig.boxes_norm[n0:n1]
        d[INSTANCE].slot = slots[n0:n1]
        d[INSTANCE].num_nodes = M
        d[LABEL].x = E
        d[LABEL].num_nodes = C
        d[NEAR].edge_index = ig.edge_index[:, e0:e1] - n0
        d[NEAR].edge_attr = ig.edge_attr[e0:e1]
        d[CO].edge_index = co
        d[CO].edge_attr = co_attr
        m = matching_edges(M, C, device=features.device)
        d[MATCH].edge_index = m
        d[REV_MATCH].edge_index = m.flip(0)
        if match_attr:
            a = torch.cat([d[INSTANCE].x[m[0]], E[m[1]]], dim=1)
            d[MATCH].edge_attr = a
            d[REV_MATCH].edge_attr = a
        data_list.append(d)
    return Batch.from_data_list(data_list)


def assignment_graph(features: Tensor, boxes: Tensor, label_embeddings: Tensor,
                     image_size: Optional[Union[Sequence[int], Tensor]] = None,
                     k: int = DEFAULT_K, label_graph: Any = None,
                     mask: Optional[Tensor] = None, match_attr: bool = True) -> HeteroData:
    r"""The assignment graph :math:`G_A` of one image (GM-MLIC Sec. 3.2, Eqs. 1–3).

    Args:
        features (Tensor): ROI features ``[M, D]`` (:math:`v^o_i = f_i`).
        boxes (Tensor): ``[M, 4]`` ``xyxy`` in pixels (with ``image_size``) or normalised.
        label_embeddings (Tensor): ``[C, d]`` (:math:`v^l_c = w_c`).
        image_size: ``(H, W)`` or ``None`` when ``boxes`` are already in :math:`[0, 1]`.
        k (int): neighbours per instance. (default: :obj:`5`)
        label_graph: support of :math:`G_l` (see :func:`label_edges`). (default: complete)
        mask (Tensor, optional): bool ``[M]``, ``False`` rows are dropped.
        match_attr (bool): store the matching edge attributes. (default: :obj:`True`)

    Returns:
        HeteroData: see the module docstring.

    Example::

        >>> f, w = torch.randn(2, 16), torch.randn(3, 300)
        >>> boxes = torch.tensor([[0., 0., .5, .5], [.5, .5, 1., 1.]])
        >>> g = assignment_graph(f, boxes, w)
        >>> [g[t].edge_index.size(1) for t in g.edge_types]
        [2, 6, 6, 6]
    """
    if features.dim() != 2 or boxes.dim() != 2 or boxes.size(0) != features.size(0):
        raise ValueError(f"assignment_graph: features must be [M, D] and boxes [M, 4], got "
                         f"{tuple(features.shape)} and {tuple(boxes.shape)}")
    sizes = None
    if image_size is not None:
        sizes = torch.as_tensor(image_size, dtype=torch.long,
                                device=features.device).reshape(1, 2)
    b = assignment_graph_batch(features[None], boxes[None], label_embeddings, sizes,
                               mask.reshape(1, -1) if mask is not None else None, k,
                               label_graph, match_attr)
    return b.get_example(0)
