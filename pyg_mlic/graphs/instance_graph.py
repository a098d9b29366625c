r"""The instance spatial graph of GM-MLIC (Wu et al., IJCAI 2021, Sec. 3.2, Eq. 1).

Each detected instance :math:`i` of an image (box :math:`B_i = (x_1, y_1, x_2, y_2)` in
pixels, ROI feature :math:`f_i`) is a node; directed edges join every instance to its
:math:`k` nearest neighbours by box centre; node and edge attributes are

.. math::
    v^o_i = f_i, \qquad e^o_{ij} = [\hat B_i, \hat B_j], \qquad
    \hat B = \Big(\frac{x_1}{W}, \frac{y_1}{H}, \frac{x_2}{W}, \frac{y_2}{H}\Big)
    \qquad \text{(Eq. 1)}

for an edge from source :math:`i` to receiver :math:`j` in a :math:`W \times H` image, so
``edge_attr`` has 8 columns: the normalised box of the source, then of the receiver.

Neighbourhoods: with the centres of the *normalised* boxes,
:math:`\hat c_i = ((\hat x_1 + \hat x_2)/2, (\hat y_1 + \hat y_2)/2)` (the coordinates
of Eq. 1, in :math:`[0, 1]^2`), :math:`\mathcal{N}_k(j)` holds the :math:`\min(k, M - 1)`
instances :math:`i \ne j` with the smallest :math:`\lVert \hat c_i - \hat c_j \rVert_2`
(ties broken by the lower index), and
the graph has the edges :math:`i \to j` for :math:`i \in \mathcal{N}_k(j)` — PyG's
``knn_graph(flow="source_to_target")`` convention: ``edge_index[1]`` is the centre
node, which aggregates from its neighbours. No self-loops; an image with
:math:`M \le k` instances gets the complete directed graph, one with :math:`M \le 1`
no edge, one with :math:`M = 0` no node. The paper does not state :math:`k`; the default
here is 5.

One coordinate system: the neighbour search runs on normalised centres everywhere — here,
in :func:`~pyg_mlic.graphs.assignment_graph_batch` and in the training path of
:class:`~pyg_mlic.nn.GraphNetworkBlock` (``forward_dense``, which receives the normalised
boxes of :func:`~pyg_mlic.models.regions.read_regions`) — so the graph of an image does not
depend on which path built it (tested equal). In a non-square image this differs from a
search in pixels: a horizontal pixel counts :math:`1/W`, a vertical one :math:`1/H`,
the frame in which the edge attributes :math:`[\hat B_i, \hat B_j]` are given, and which
a resize of the image leaves unchanged.

The batch builder runs the neighbour search for all images at once on padded
``[B, K]`` tensors (pairwise squared distances and one stable sort; no loop over
instances) and returns a :class:`torch_geometric.data.Batch`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

__all__ = ["instance_graph", "instance_graph_batch", "instance_graphs_from_regions",
           "normalize_boxes", "box_centers", "knn_edges_dense", "DEFAULT_K"]

#: Default number of neighbours (not given by the paper).
DEFAULT_K = 5

SizeLike = Union[Tensor, Sequence[int], Tuple[int, int]]


def normalize_boxes(boxes: Tensor, image_size: Tensor) -> Tensor:
    r""":math:`\hat B = (x_1/W, y_1/H, x_2/W, y_2/H)` (GM-MLIC Eq. 1).

    Args:
        boxes (Tensor): ``[..., 4]`` ``xyxy`` pixels.
        image_size (Tensor): ``[..., 2]`` ``(H, W)`` broadcastable to ``boxes[..., :2]``.
    """
    hw = image_size.to(boxes.dtype)
    scale = torch.stack([hw[..., 1], hw[..., 0], hw[..., 1], hw[..., 0]], -1)
    return boxes / scale


def box_centers(boxes: Tensor) -> Tensor:
    r"""Box centres :math:`((x_1 + x_2)/2, (y_1 + y_2)/2)`, ``[..., 4] -> [..., 2]``."""
    return 0.5 * (boxes[..., 0:2] + boxes[..., 2:4])


def knn_edges_dense(pos: Tensor, mask: Tensor, k: int) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Directed kNN edges of :math:`B` padded point sets at once.

    Args:
        pos (Tensor): ``[B, K, 2]`` points.
        mask (Tensor): bool ``[B, K]``, ``False`` rows are ignored.
        k (int): neighbours per point (fewer when an image has :math:`\le k` points).

    Returns:
        ``(b, src, dst)``: long tensors ``[E]`` — image of each edge and the *padded*
        positions (``0 ... K-1``) of its source (a neighbour) and destination (the
        centre), sorted by image, destination and distance rank.
    """
    bsz, kmax = mask.shape
    kk = min(int(k), kmax - 1)
    if kk <= 0 or bsz == 0:
        z = torch.zeros(0, dtype=torch.long, device=pos.device)
        return z, z, z
    diff = pos[:, :, None, :] - pos[:, None, :, :]                 # [B, K, K, 2]
    d2 = (diff * diff).sum(-1)                                      # exact, symmetric
    eye = torch.eye(kmax, dtype=torch.bool, device=pos.device)
    invalid = ~(mask[:, :, None] & mask[:, None, :]) | eye
    d2 = d2.masked_fill(invalid, float("inf"))
    val, nbr = torch.sort(d2, dim=-1, stable=True)                  # row c: neighbours of c
    val, nbr = val[..., :kk], nbr[..., :kk]
    b, dst, rank = torch.isfinite(val).nonzero(as_tuple=True)
    src = nbr[b, dst, rank]
    return b, src, dst


def _check_k(k: int) -> int:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"instance graph: k must be an int >= 1, got {k!r}")
    return int(k)


def instance_graph_batch(boxes: Tensor, features: Tensor, image_sizes: Tensor,
                         mask: Optional[Tensor] = None, k: int = DEFAULT_K,
                         scores: Optional[Tensor] = None,
                         labels: Optional[Tensor] = None) -> Batch:
    r"""Instance spatial graphs of a padded batch of images (GM-MLIC Eq. 1).

    Args:
        boxes (Tensor): float ``[B, K, 4]`` ``xyxy`` pixels.
        features (Tensor): float ``[B, K, D]`` ROI features.
        image_sizes (Tensor): ``[B, 2]`` ``(H, W)`` of each image.
        mask (Tensor, optional): bool ``[B, K]``; ``False`` marks padding rows, which
            get no node. (default: all real)
        k (int): neighbours per instance. (default: :data:`DEFAULT_K`)
        scores (Tensor, optional): ``[B, K]`` confidences, stored as ``score``.
        labels (Tensor, optional): ``[B, K]`` class ids, stored as ``cls``.

    Returns:
        torch_geometric.data.Batch: ``B`` graphs with ``x`` :math:`(N, D)`, ``pos``
        :math:`(N, 2)` normalised box centres :math:`\hat c` (the coordinates the
        neighbours are searched on), ``boxes`` :math:`(N, 4)` (pixels),
        ``boxes_norm`` :math:`(N, 4)` (:math:`\hat B`), ``edge_index`` :math:`(2, E)`,
        ``edge_attr`` :math:`(E, 8)` = :math:`[\hat B_{src}, \hat B_{dst}]`,
        ``image_size`` :math:`(B, 2)`, optional ``score``/``cls`` :math:`(N)`; ``batch``
        and ``ptr`` as usual. :math:`N = \sum_b M_b`.
    """
    k = _check_k(k)
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"instance_graph_batch: boxes must be [B, K, 4], got {tuple(boxes.shape)}")
    bsz, kmax = boxes.shape[:2]
    if features.dim() != 3 or features.shape[:2] != (bsz, kmax):
        raise ValueError(f"instance_graph_batch: features must be [B={bsz}, K={kmax}, D], got "
                         f"{tuple(features.shape)}")
    image_sizes = torch.as_tensor(image_sizes, device=boxes.device)
    if image_sizes.shape != (bsz, 2):
        raise ValueError(f"instance_graph_batch: image_sizes must be [B={bsz}, 2] (H, W), got "
                         f"{tuple(image_sizes.shape)}")
    if (image_sizes <= 0).any():
        raise ValueError(f"instance_graph_batch: image sizes must be positive, got "
                         f"{image_sizes.tolist()}")
    if mask is None:
        mask = torch.ones(bsz, kmax, dtype=torch.bool, device=boxes.device)
    elif mask.shape != (bsz, kmax) or mask.dtype != torch.bool:
        raise ValueError(f"instance_graph_batch: mask must be bool [B={bsz}, K={kmax}], got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    for name, t in (("scores", scores), ("labels", labels)):
        if t is not None and t.shape != (bsz, kmax):
            raise ValueError(f"instance_graph_batch: {name} must be [B={bsz}, K={kmax}], got "
                             f"{tuple(t.shape)}")
    real_boxes = boxes[mask]
    if not torch.isfinite(real_boxes).all():
        raise ValueError("instance_graph_batch: boxes contain non-finite values")
    if ((real_boxes[:, 2] < real_boxes[:, 0]) | (real_boxes[:, 3] < real_boxes[:, 1])).any():
        raise ValueError("instance_graph_batch: boxes must be xyxy with x2 >= x1 and y2 >= y1")

    bn = normalize_boxes(boxes, image_sizes[:, None, :])              # [B, K, 4]
    pos = box_centers(bn)                                             # [B, K, 2] in [0, 1]
    b, src, dst = knn_edges_dense(pos, mask, k)
    # compact node numbering: the real rows of all images, in order
    node_id = (torch.cumsum(mask.reshape(-1).long(), 0) - 1).view(bsz, kmax)
    counts = mask.sum(1)
    node_ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    gsrc, gdst = node_id[b, src], node_id[b, dst]
    edge_attr = torch.cat([bn[b, src], bn[b, dst]], dim=1)            # [E, 8]
    ecounts = torch.bincount(b, minlength=bsz) if b.numel() else torch.zeros(
        bsz, dtype=torch.long, device=boxes.device)
    edge_ptr = torch.cat([ecounts.new_zeros(1), torch.cumsum(ecounts, 0)])

    x, p, bx, bnn = features[mask], pos[mask], boxes[mask], bn[mask]
    sc = scores[mask] if scores is not None else None
    cl = labels[mask].long() if labels is not None else None
    data_list = []
    for g in range(bsz):                                              # per image, not per node
        n0, n1 = int(node_ptr[g]), int(node_ptr[g + 1])
        e0, e1 = int(edge_ptr[g]), int(edge_ptr[g + 1])
        d = Data(x=x[n0:n1], pos=p[n0:n1], boxes=bx[n0:n1], boxes_norm=bnn[n0:n1],
                 edge_index=torch.stack([gsrc[e0:e1], gdst[e0:e1]]) - n0,
                 edge_attr=edge_attr[e0:e1], image_size=image_sizes[g].view(1, 2).long())
        if sc is not None:
            d.score = sc[n0:n1]
        if cl is not None:
            d.cls = cl[n0:n1]
        d.num_nodes = n1 - n0
        data_list.append(d)
    return Batch.from_data_list(data_list)


def instance_graph(boxes: Tensor, features: Tensor, image_size: SizeLike,
                   k: int = DEFAULT_K, mask: Optional[Tensor] = None,
                   scores: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> Data:
    r"""The instance spatial graph of one image (GM-MLIC Eq. 1).

    Args:
        boxes (Tensor): float ``[M, 4]`` ``xyxy`` pixels.
        features (Tensor): float ``[M, D]`` ROI features (node attributes :math:`v^o_i`).
        image_size: ``(H, W)``.
        k (int): neighbours per instance. (default: :data:`DEFAULT_K`)
        mask (Tensor, optional): bool ``[M]``; rows with ``False`` (padding) are dropped.
        scores, labels (Tensor, optional): ``[M]``, stored as ``score`` / ``cls``.

    Returns:
        torch_geometric.data.Data: see :func:`instance_graph_batch` (one graph).

    Example::

        >>> boxes = torch.tensor([[0., 0., 10., 10.], [20., 0., 30., 10.], [0., 40., 10., 50.]])
        >>> g = instance_graph(boxes, torch.randn(3, 8), image_size=(100, 200), k=1)
        >>> g.edge_index.tolist()                # each node hears from its nearest one
        [[1, 0, 0], [0, 1, 2]]
        >>> g.edge_attr.shape
        torch.Size([3, 8])
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"instance_graph: boxes must be [M, 4], got {tuple(boxes.shape)}")
    if features.dim() != 2 or features.shape[0] != boxes.shape[0]:
        raise ValueError(f"instance_graph: features must be [M={boxes.shape[0]}, D], got "
                         f"{tuple(features.shape)}")
    size = torch.as_tensor(image_size, dtype=torch.long, device=boxes.device).reshape(-1)
    if size.numel() != 2:
        raise ValueError(f"instance_graph: image_size must be (H, W), got {image_size!r}")
    if mask is not None:
        mask = mask.reshape(1, -1)
    batch = instance_graph_batch(
        boxes[None], features[None], size.view(1, 2), mask, k,
        scores[None] if scores is not None else None,
        labels[None] if labels is not None else None)
    return batch.get_example(0)


def instance_graphs_from_regions(regions, k: int = DEFAULT_K) -> Batch:
    r""":func:`instance_graph_batch` of a :class:`~pyg_mlic.detection.RegionFeatures` (or
    a collated batch dict with the ``roi_*`` keys of
    :class:`~pyg_mlic.detection.RegionDataset`). Rows whose box has no area
    (:math:`x_2 \le x_1` or :math:`y_2 \le y_1`) are not instances: they get no node,
    like padding."""
    from pyg_mlic.detection.base import RegionFeatures

    if not isinstance(regions, RegionFeatures):
        regions = RegionFeatures.from_batch(regions)
    b = regions.boxes
    mask = regions.mask & (b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1])
    return instance_graph_batch(regions.boxes, regions.features, regions.image_sizes,
                                mask, k, regions.scores, regions.labels)
