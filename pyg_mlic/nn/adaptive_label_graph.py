r"""Adaptive label graph (LG) module of A-GCN and the sparse correlation constraint."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyg_mlic.utils.debug import check_values

__all__ = ["AdaptiveLabelGraph", "VARIANTS", "NONNEG", "normalize_adjacency",
           "sparse_correlation_loss", "adjacency_to_edges"]

#: Valid values of ``variant`` (A-GCN Eqs. 5, 7, 8, 9).
VARIANTS: Tuple[str, ...] = ("default", "cos", "fc", "dot")
#: Valid values of ``nonneg`` (the map that makes the learned correlations non-negative).
NONNEG: Tuple[str, ...] = ("relu", "softplus")
#: Valid values of ``reduction`` of :func:`sparse_correlation_loss`.
REDUCTIONS: Tuple[str, ...] = ("mean", "sum")


def _compute_dtype(t: Tensor) -> torch.dtype:
    # float64 keeps (W E)(W E)^T finite for every finite float32 embedding; MPS has no
    # float64, so it stays in the input precision there.
    return torch.float32 if t.device.type == "mps" else torch.float64


def _check_choice(value: str, name: str, valid: Tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"AdaptiveLabelGraph: {name} must be one of {list(valid)}, got "
                         f"{value!r}")
    return value


def normalize_adjacency(A: Tensor, nonneg: str = "relu", max_value: float = 1e4) -> Tensor:
    r"""The normalisation of A-GCN Eq. 4 applied to a learned correlation matrix, made
    safe for negative and huge similarities.

    .. math::
        \mathbf{A}^{+} = \min\big(g(\mathbf{A}),\, a_{\max}\big),\qquad
        \tilde{\mathbf{A}} = \mathbf{A}^{+} + \mathbf{I}_C,\qquad
        \tilde{D}_{ii} = \sum_j \tilde{A}_{ij},\qquad
        \hat{\mathbf{A}} = \tilde{\mathbf{D}}^{-1/2}\,\tilde{\mathbf{A}}\,\tilde{\mathbf{D}}^{-1/2}

    with :math:`g = \mathrm{ReLU}` (``nonneg="relu"``) or :math:`g = \mathrm{softplus}`
    (``nonneg="softplus"``). Eq. 4 applied to a raw learned :math:`\mathbf{A}` breaks as
    soon as a row sum of :math:`\mathbf{A} + \mathbf{I}` is :math:`\le 0` (the degree's
    :math:`-1/2` power is NaN or infinite); with :math:`\mathbf{A}^{+} \ge 0` every degree
    is :math:`\ge 1`, so :math:`\tilde{\mathbf{D}}^{-1/2} \in (0, 1]`. ReLU keeps the
    paper's operator **exactly** wherever the learned correlations are non-negative and
    cuts negative ones (anti-correlated labels exchange no messages, and their entries
    get no gradient); softplus keeps a gradient everywhere but turns a zero correlation
    into :math:`\log 2`. The cap :math:`a_{\max}` bounds
    :math:`\hat{A}_{ij} \le \sqrt{1 + C\,a_{\max}}` (for an asymmetric
    :math:`\tilde{\mathbf{A}}`, :math:`\hat{A}_{ij} \le \sqrt{\tilde D_{ii}/\tilde D_{jj}}`
    is otherwise unbounded); it only acts on correlations far beyond the
    :math:`O(1)` values training produces.

    Args:
        A (Tensor): learned correlations :math:`(C, C)`, finite.
        nonneg (str): ``"relu"`` or ``"softplus"``. (default: :obj:`"relu"`)
        max_value (float): cap :math:`a_{\max} > 0`. (default: :obj:`1e4`)

    Returns:
        :math:`\hat{\mathbf{A}}` :math:`(C, C)`, same dtype as ``A``, every entry finite
        and in :math:`[0, \sqrt{1 + C\,a_{\max}}]`.
    """
    _check_choice(nonneg, "nonneg", NONNEG)
    if A.dim() != 2 or A.size(0) != A.size(1):
        raise ValueError(f"normalize_adjacency: A must be square [C, C], got {tuple(A.shape)}")
    if not math.isfinite(max_value) or max_value <= 0:
        raise ValueError(f"normalize_adjacency: max_value must be finite and > 0, got {max_value}")
    Ap = F.relu(A) if nonneg == "relu" else F.softplus(A)
    Ap = Ap.clamp(max=max_value)
    At = Ap + torch.eye(A.size(0), dtype=A.dtype, device=A.device)
    d = At.sum(1).rsqrt()                     # row sums >= 1
    return d[:, None] * At * d[None, :]


def sparse_correlation_loss(adj: Tensor, reduction: str = "sum") -> Tensor:
    r"""Sparse correlation constraint of A-GCN (Eq. 6):

    .. math::
        \mathcal{L}_A = \big|\hat{\mathbf{A}} - \mathbf{I}_C\big|_1

    "an L1-norm loss": the entry-wise matrix 1-norm, the *sum* of the :math:`C^2` absolute
    differences (``reduction="sum"``, the default; the paper normalises its classification
    loss, Eq. 2, by :math:`1/C` explicitly but not Eq. 6). ``reduction="mean"`` averages
    them (:math:`C^2` times smaller: at :math:`C = 80` its gradient on the graph module is
    6400 times weaker); see ``docs/methods/a_gcn.rst`` for the measured comparison.

    Args:
        adj (Tensor): :math:`\hat{\mathbf{A}}` :math:`(C, C)`.
        reduction (str): ``"sum"`` or ``"mean"``. (default: :obj:`"sum"`)

    Returns:
        a scalar tensor (differentiable w.r.t. ``adj``).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"sparse_correlation_loss: reduction must be one of "
                         f"{list(REDUCTIONS)}, got {reduction!r}")
    if adj.dim() != 2 or adj.size(0) != adj.size(1):
        raise ValueError(f"sparse_correlation_loss: adj must be square [C, C], got "
                         f"{tuple(adj.shape)}")
    diff = (adj - torch.eye(adj.size(0), dtype=adj.dtype, device=adj.device)).abs()
    return diff.mean() if reduction == "mean" else diff.sum()


def adjacency_to_edges(adj: Tensor) -> Tuple[Tensor, Tensor]:
    r"""PyG edges of a dense operator in the ``source_to_target`` convention of
    :class:`~pyg_mlic.graphs.LabelGraph`: the edge :math:`j \to i` carries
    :math:`\hat{A}_{ij}`, so a sum-aggregating layer computes
    :math:`\mathbf{H}' = \hat{\mathbf{A}}\mathbf{H}`. Uses
    :func:`torch_geometric.utils.dense_to_sparse` on :math:`\hat{\mathbf{A}}^\top`
    (zero entries are dropped); ``edge_weight`` is an indexing of ``adj``, so gradients
    flow back to it.

    Returns:
        ``(edge_index [2, E] long, edge_weight [E])``, sorted by source then target.
    """
    from torch_geometric.utils import dense_to_sparse

    if adj.dim() != 2 or adj.size(0) != adj.size(1):
        raise ValueError(f"adjacency_to_edges: adj must be square [C, C], got {tuple(adj.shape)}")
    return dense_to_sparse(adj.t())


class AdaptiveLabelGraph(nn.Module):
    r"""The adaptive label graph (LG) module of A-GCN (Li et al., *Learning Category
    Correlations for Multi-label Image Recognition with Graph Networks*, Eqs. 4–9).

    Learns a label correlation matrix from the label embeddings
    :math:`\mathbf{E} \in \mathbb{R}^{C \times d_e}` (rows :math:`\mathbf{e}_i`).
    ``variant`` selects the architecture:

    - ``"default"`` (A-GCN, Eq. 5): two :math:`1 \times 1` convolutions — linear maps
      :math:`\mathbf{W}_\phi, \mathbf{W}_\theta \in \mathbb{R}^{h \times d_e}` applied to
      every label embedding — and a dot product,

      .. math::
          \mathbf{A} = \frac{1}{C}\,(\mathbf{W}_\phi * \mathbf{E})^\top
          (\mathbf{W}_\theta * \mathbf{E}),\qquad
          A_{ij} = \frac{1}{C}\,\boldsymbol{\phi}_i^\top \boldsymbol{\theta}_j,\quad
          \boldsymbol{\phi}_i = \mathbf{W}_\phi \mathbf{e}_i (+\mathbf{b}_\phi),\;
          \boldsymbol{\theta}_j = \mathbf{W}_\theta \mathbf{e}_j (+\mathbf{b}_\theta)

      (the paper writes :math:`\mathbf{E}` column-wise, :math:`d_e \times C`; in general
      :math:`\mathbf{A}` is not symmetric);
    - ``"cos"`` (Cos-A, Eq. 7): :math:`A_{ij} = \cos(\mathbf{e}_i, \mathbf{e}_j)`,
      symmetric and **parameter-free** (the graph is fixed by the embeddings; a zero
      embedding has cosine 0 with every label);
    - ``"fc"`` (FC-A, Eq. 8): one fully-connected layer
      :math:`\mathbf{W}_l \in \mathbb{R}^{d_e \times C}`,
      :math:`\mathbf{A} = \mathbf{W}_l^\top \mathbf{E}`, i.e.
      :math:`A_{ij} = \mathbf{w}_i^\top \mathbf{e}_j (+ b_i)` with
      :math:`\mathbf{w}_i` the :math:`i`-th column of :math:`\mathbf{W}_l`;
    - ``"dot"`` (Dot-A, Eq. 9): one :math:`1 \times 1` convolution and the
      self-correlation :math:`\mathbf{A} = \frac{1}{C}(\mathbf{W}_\phi * \mathbf{E})^\top
      (\mathbf{W}_\phi * \mathbf{E})`, symmetric.

    :math:`\mathbf{A}` is then normalised as in Eq. 4,
    :math:`\hat{\mathbf{A}} = \tilde{\mathbf{D}}^{-1/2}(\mathbf{A}^{+} + \mathbf{I}_C)
    \tilde{\mathbf{D}}^{-1/2}` with :math:`\tilde{D}_{ii} = \sum_j \tilde{A}_{ij}` (row
    sums, as in the paper), by :func:`normalize_adjacency`.

    **Numerics (a deviation from Eq. 4, by necessity).** Learned similarities can be
    negative, so a row sum of :math:`\mathbf{A} + \mathbf{I}` can be :math:`\le 0` and
    :math:`\tilde{\mathbf{D}}^{-1/2}` NaN or infinite — what applying Eq. 4 to the raw
    :math:`\mathbf{A}` does. Here :math:`\mathbf{A}^{+} = \min(g(\mathbf{A}), a_{\max})`
    with :math:`g` = ReLU (default; identical to Eq. 4 whenever :math:`\mathbf{A} \ge 0`)
    or softplus (``nonneg``), which makes every degree :math:`\ge 1`.
    :math:`\mathbf{A}` is computed in float64 (float32 on MPS) and :math:`\hat{\mathbf{A}}`
    returned in the input dtype, so **every finite float32 embedding** — huge, tiny,
    zero or repeated rows — gives a finite :math:`\hat{\mathbf{A}}` with entries in
    :math:`[0, \sqrt{1 + C a_{\max}}]`; Cos-A rescales rows before normalising them and
    is finite for any finite input. Non-finite embeddings, or float64 embeddings so large
    (:math:`\gtrsim 10^{150}`) that :math:`\mathbf{A}` overflows, raise
    :class:`ValueError`.

    The result is available (a) dense, from :meth:`forward`, for plotting and for the
    sparse correlation constraint :func:`sparse_correlation_loss` (Eq. 6), and (b) as a
    PyG graph from :meth:`edges` / :meth:`to_data` in the convention of
    :class:`~pyg_mlic.graphs.LabelGraph` (edge :math:`j \to i` carries
    :math:`\hat{A}_{ij}`), so :class:`~pyg_mlic.nn.LabelGCNConv` consumes it unchanged
    and gradients flow through ``edge_weight`` back to :math:`\mathbf{W}_\phi`,
    :math:`\mathbf{W}_\theta` (or :math:`\mathbf{W}_l`).

    Args:
        in_channels (int): label embedding size :math:`d_e`.
        num_labels (int): number of labels :math:`C` (FC-A's output size; checked
            against the input for every variant).
        hidden_channels (int, optional): output size :math:`h` of the :math:`1 \times 1`
            convolutions (``default``, ``dot``). The paper does not give it.
            (default: :obj:`None` = ``in_channels``)
        variant (str): ``"default"``, ``"cos"``, ``"fc"`` or ``"dot"``.
            (default: :obj:`"default"`)
        nonneg (str): ``"relu"`` or ``"softplus"``, see above. (default: :obj:`"relu"`)
        bias (bool): biases in the :math:`1 \times 1` convolutions / FC layer (PyTorch's
            default for convolutions). (default: :obj:`True`)
        max_value (float): cap :math:`a_{\max}` on :math:`\mathbf{A}^{+}`.
            (default: :obj:`1e4`)

    Shapes:
        - **input:** label embeddings :math:`(C, d_e)`
        - **output:** :math:`\hat{\mathbf{A}}` :math:`(C, C)`, dtype of the input

    Example::

        >>> lg = AdaptiveLabelGraph(300, num_labels=80)
        >>> E = torch.randn(80, 300)
        >>> adj = lg(E)                        # [80, 80], dense (plots, Eq. 6)
        >>> edge_index, edge_weight = lg.edges(adj)
        >>> conv = LabelGCNConv(300, 1024)
        >>> h = conv(E, edge_index, edge_weight)   # H' = Â E W
    """

    def __init__(self, in_channels: int, num_labels: int, hidden_channels: Optional[int] = None,
                 variant: str = "default", nonneg: str = "relu", bias: bool = True,
                 max_value: float = 1e4) -> None:
        super().__init__()
        _check_choice(variant, "variant", VARIANTS)
        _check_choice(nonneg, "nonneg", NONNEG)
        for name, v in (("in_channels", in_channels), ("num_labels", num_labels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"AdaptiveLabelGraph: {name} must be a positive int, got {v!r}")
        hidden_channels = in_channels if hidden_channels is None else hidden_channels
        if not isinstance(hidden_channels, int) or hidden_channels < 1:
            raise ValueError(f"AdaptiveLabelGraph: hidden_channels must be a positive int, got "
                             f"{hidden_channels!r}")
        if not (isinstance(max_value, (int, float)) and math.isfinite(max_value)
                and max_value > 0):
            raise ValueError(f"AdaptiveLabelGraph: max_value must be finite and > 0, got "
                             f"{max_value!r}")
        self.in_channels, self.num_labels = in_channels, num_labels
        self.hidden_channels = hidden_channels
        self.variant, self.nonneg, self.max_value = variant, nonneg, float(max_value)
        self.lin_phi = self.lin_theta = self.lin_l = None
        if variant in ("default", "dot"):
            self.lin_phi = nn.Linear(in_channels, hidden_channels, bias=bias)
        if variant == "default":
            self.lin_theta = nn.Linear(in_channels, hidden_channels, bias=bias)
        if variant == "fc":
            # nn.Linear's weight [C, d_e] is W_l^T of Eq. 8
            self.lin_l = nn.Linear(in_channels, num_labels, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.lin_phi, self.lin_theta, self.lin_l):
            if lin is not None:
                lin.reset_parameters()

    # ------------------------------------------------------------------ the matrices
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(f"AdaptiveLabelGraph: label embeddings must be a 2-D tensor "
                             f"[C, d_e], got {getattr(x, 'shape', type(x))}")
        if x.size(0) != self.num_labels or x.size(1) != self.in_channels:
            raise ValueError(f"AdaptiveLabelGraph: label embeddings have shape "
                             f"{tuple(x.shape)}, expected [{self.num_labels}, "
                             f"{self.in_channels}] (num_labels, in_channels)")
        if not x.is_floating_point():
            raise ValueError(f"AdaptiveLabelGraph: label embeddings must be floating point, "
                             f"got {x.dtype}")
        if check_values(x) and not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).any(1).nonzero().flatten().tolist()
            raise ValueError(f"AdaptiveLabelGraph: non-finite label embeddings in rows {bad[:10]}")

    @staticmethod
    def _linear(lin: nn.Linear, x: Tensor) -> Tensor:
        b = None if lin.bias is None else lin.bias.to(x.dtype)
        return F.linear(x, lin.weight.to(x.dtype), b)

    def correlation(self, x: Tensor) -> Tensor:
        r"""The learned correlation matrix :math:`\mathbf{A}` :math:`(C, C)` of Eq. 5
        (or 7, 8, 9) **before** normalisation, in float64 (float32 on MPS). Entry
        :math:`(i, j)` is what node :math:`i` receives from node :math:`j`."""
        self._check_input(x)
        C = x.size(0)
        xd = x.to(_compute_dtype(x))
        if self.variant == "cos":
            # rescale each row by its max |.| first: the norm cannot overflow or underflow
            s = xd.abs().amax(1, keepdim=True)
            u = xd / torch.where(s > 0, s, torch.ones_like(s))
            u = F.normalize(u, dim=1)               # zero rows stay zero -> cos 0
            A = u @ u.t()
        elif self.variant == "fc":
            A = self._linear(self.lin_l, xd).t()    # A_ij = w_i . e_j (+ b_i)
        else:
            phi = self._linear(self.lin_phi, xd)
            theta = phi if self.variant == "dot" else self._linear(self.lin_theta, xd)
            A = (phi @ theta.t()) / C
        if check_values(A) and not bool(torch.isfinite(A).all()):
            if not all(bool(torch.isfinite(p).all()) for p in self.parameters()):
                raise ValueError(f"AdaptiveLabelGraph({self.variant}): non-finite parameters "
                                 f"(training diverged?); lower the learning rate or alpha")
            raise ValueError(f"AdaptiveLabelGraph({self.variant}): the correlation matrix "
                             f"overflowed (label embeddings up to {float(x.abs().max()):.3g}, "
                             f"dtype {x.dtype}); rescale the embeddings")
        return A

    def forward(self, x: Tensor) -> Tensor:
        r"""The normalised matrix :math:`\hat{\mathbf{A}}` :math:`(C, C)` (Eq. 4, with the
        non-negative treatment above) in the dtype of ``x``."""
        A = self.correlation(x)
        return normalize_adjacency(A, self.nonneg, self.max_value).to(x.dtype)

    # ------------------------------------------------------------------ PyG views
    @staticmethod
    def edges(adj: Tensor) -> Tuple[Tensor, Tensor]:
        r"""``(edge_index, edge_weight)`` of a dense :math:`\hat{\mathbf{A}}` (see
        :func:`adjacency_to_edges`)."""
        return adjacency_to_edges(adj)

    def to_data(self, x: Tensor, adj: Optional[Tensor] = None, classes=None):
        r"""The learned graph as a :class:`torch_geometric.data.Data`: ``x`` = the label
        embeddings, ``edge_index`` / ``edge_weight`` of :math:`\hat{\mathbf{A}}` (edge
        :math:`j \to i` carries :math:`\hat{A}_{ij}`), ``adj`` = the dense
        :math:`\hat{\mathbf{A}}`, ``num_nodes`` = :math:`C`, ``variant``, ``nonneg``
        and, when given, ``classes``. ``adj`` may be passed to avoid recomputing it."""
        from torch_geometric.data import Data

        if adj is None:
            adj = self(x)
        edge_index, edge_weight = adjacency_to_edges(adj)
        data = Data(x=x, edge_index=edge_index, edge_weight=edge_weight, adj=adj,
                    num_nodes=x.size(0), variant=self.variant, nonneg=self.nonneg)
        if classes is not None:
            if len(classes) != x.size(0):
                raise ValueError(f"AdaptiveLabelGraph.to_data: {len(classes)} class names for "
                                 f"{x.size(0)} labels")
            data.classes = [str(c) for c in classes]
        return data

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, num_labels={self.num_labels}, "
                f"hidden_channels={self.hidden_channels}, variant={self.variant!r}, "
                f"nonneg={self.nonneg!r})")
