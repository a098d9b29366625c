r"""The ML-GCN label graph: co-occurrence statistics → correlation matrix → PyG graph.

Implements Sec. 3.4 of *Multi-Label Image Recognition with Graph Convolutional
Networks* (Chen et al., CVPR 2019; "ML-GCN"), Eqs. 2, 6, 7 and 8, and — as an
explicit alternative — the operator actually computed by the public ML-GCN code
(``gen_A`` / ``gen_adj`` in ``util.py`` of github.com/megvii-research/ML-GCN),
which differs from the paper (see :func:`propagation_matrix`).

Pipeline:

1. :func:`cooccurrence` counts label pairs in a multi-hot matrix
   :math:`\mathbf{Y} \in \{0,1\}^{N \times C}` (training split only):
   :math:`\mathbf{M} = \mathbf{Y}^\top \mathbf{Y}` with a zero diagonal, and
   :math:`N_i = (\mathbf{Y}^\top \mathbf{Y})_{ii}`. With partially known labels
   (a known-mask :math:`\mathbf{K}`, ``mask=``) only pairs of known entries count and
   the denominators become per pair, :math:`N_{i|j}` (see :func:`cooccurrence`).
2. :func:`conditional_probability` gives :math:`P_{ij} = P(L_j \mid L_i)` (Eq. 6).
3. :func:`propagation_matrix` turns it into the dense operator
   :math:`\mathbf{P}` a GCN layer applies as :math:`\mathbf{H}' = \mathbf{P}\mathbf{H}\mathbf{W}`
   (Eq. 2), following one of three schemes (Eq. 6 raw, Eq. 7 binary, Eq. 8 re-weighted)
   and one of two conventions (``"paper"`` or ``"mlgcn_code"``).
4. :class:`LabelGraph` stores the operator as a :class:`torch_geometric.data.Data`
   (``edge_index`` / ``edge_weight``, label embeddings as ``x``, and the statistics and
   settings it was built from).

Example::

    >>> import numpy as np
    >>> from pyg_mlic.graphs import LabelGraph, cooccurrence
    >>> Y = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=np.uint8)
    >>> counts, nums = cooccurrence(Y)
    >>> nums
    array([3, 2, 1])
    >>> g = LabelGraph.from_labels(Y, classes=["person", "dog", "frisbee"])
    >>> g.propagation().shape
    torch.Size([3, 3])
"""
from __future__ import annotations

import math
import numbers
import os
import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from pyg_mlic.errors import ClassMismatchError, check_same_classes

__all__ = [
    "SCHEMES",
    "CONVENTIONS",
    "cooccurrence",
    "conditional_probability",
    "propagation_matrix",
    "LabelGraph",
]

ArrayLike = Union[np.ndarray, Tensor, Sequence]

#: Valid values of ``scheme``.
SCHEMES: Tuple[str, ...] = ("reweighted", "binary", "probability")
#: Valid values of ``convention``.
CONVENTIONS: Tuple[str, ...] = ("paper", "mlgcn_code")

# float32 represents every integer up to 2**24 exactly, so a float32 Yᵀ Y of 0/1
# entries is exact as long as no count can exceed that, i.e. N < 2**24.
_FLOAT32_EXACT_LIMIT = 2 ** 24
# CPU integer/bool labels at least this large use the int8 GEMM (_gram_int8); smaller
# ones (where speed does not matter) and float labels use the float product.
_USE_INT8_GEMM = True
_INT8_MIN_ROWS = 1024
_INT8_MIN_COLS = 8
# The constant the ML-GCN release adds to the column sums in gen_A.
_MLGCN_EPS = 1e-6


# ----------------------------------------------------------------------------- input checks

def _to_tensor(a: Any, name: str) -> Tuple[Tensor, bool]:
    """``a`` as a tensor (zero-copy for numpy where possible) and whether it was numpy-like."""
    if isinstance(a, Tensor):
        return a.detach(), False
    arr = np.asarray(a)
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise TypeError(f"{name} must be a numeric numpy array or torch tensor, "
                        f"got dtype {arr.dtype}")
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} must be real-valued, got complex dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize > 1:  # uint16/32/64: no torch equivalent
        arr = arr.astype(np.int64)
    if any(s < 0 for s in arr.strides):
        arr = np.ascontiguousarray(arr)  # torch.from_numpy rejects negative strides
    if not arr.flags.writeable:  # e.g. a memory-mapped file: nothing here writes to it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr), True
    return torch.from_numpy(arr), True


def _check_labels(Y: Any, name: str = "Y") -> Tuple[Tensor, bool]:
    r"""Validate a multi-hot label matrix; return it as a tensor (no copy) + numpy flag."""
    Yt, was_numpy = _to_tensor(Y, name)
    if Yt.is_complex():
        raise TypeError(f"{name} must be real-valued, got complex dtype {Yt.dtype}")
    if Yt.dim() != 2:
        raise ValueError(f"{name} must be a 2-D multi-hot matrix [N, C] (images x labels), "
                         f"got shape {tuple(Yt.shape)}")
    if Yt.shape[1] == 0:
        raise ValueError(f"{name} has no label columns (shape {tuple(Yt.shape)})")
    if Yt.numel() == 0 or Yt.dtype == torch.bool:
        return Yt, was_numpy
    if Yt.is_floating_point():
        bad = (Yt != 0) & (Yt != 1)  # NaN compares unequal to both: caught here
        if bool(bad.any()):
            r, c = (int(v) for v in bad.nonzero()[0])
            v = float(Yt[r, c])
            what = "NaN" if math.isnan(v) else repr(v)
            raise ValueError(f"{name} must contain only 0 and 1, found {what} at [{r}, {c}]"
                             + _VOC_HINT * (v == -1.0))
        return Yt, was_numpy
    if Yt.device.type == "cpu":            # numpy's reductions are faster on small ints
        arr = Yt.numpy()
        lo = 0 if Yt.dtype == torch.uint8 else int(arr.min())
        hi = int(arr.max())
    else:
        lo_t, hi_t = torch.aminmax(Yt)
        lo, hi = int(lo_t), int(hi_t)
    if lo < 0 or hi > 1:
        bad = (Yt < 0) | (Yt > 1)
        r, c = (int(v) for v in bad.nonzero()[0])
        v = int(Yt[r, c])
        raise ValueError(f"{name} must contain only 0 and 1, found {v} at [{r}, {c}]"
                         + _VOC_HINT * (v == -1))
    return Yt, was_numpy


_VOC_HINT = (" (VOC-style labels with 1 = present, 0 = difficult, -1 = absent must be "
             "converted by the caller, e.g. Y == 1 to count positives only as the ML-GCN "
             "release does; LabelGraph.from_voc does this)")


def _check_unit_interval(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {value!r}")
    v = float(value)
    if not (0.0 <= v <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def _check_choice(value: Any, name: str, valid: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid values: "
                         + ", ".join(repr(v) for v in valid))
    return value


def _warn_if_no_positive(positives: float, split: str) -> None:
    """Statistics with no positive label at all give the identity operator (every node
    keeps only its self-loop): almost always an empty or unlabelled source."""
    if positives == 0:
        warnings.warn(f"label graph of split {split!r}: no label has a positive, so every "
                      f"node keeps only its self-loop and the operator is the identity (an "
                      f"empty or unlabelled source? e.g. a COCO file without 'annotations')",
                      UserWarning, stacklevel=3)


def _check_counts(counts: Any, nums: Any) -> Tuple[Tensor, Tensor]:
    """Validate precomputed co-occurrence statistics; return CPU int64 tensors.

    ``nums`` is the vector :math:`N_i` ``[C]`` or, for partially known labels, the
    matrix of per-pair denominators :math:`N_{i|j}` ``[C, C]`` (see :func:`cooccurrence`).
    """
    out = []
    for a, name in ((counts, "counts"), (nums, "nums")):
        t, _ = _to_tensor(a, name)
        if t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer counts, got dtype bool")
        if t.is_floating_point():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or infinite values")
            if not bool((t == t.round()).all()):
                raise ValueError(f"{name} must hold whole numbers (image counts)")
        out.append(t.to(device="cpu", dtype=torch.int64))
    M, n = out
    if M.dim() != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"counts must be a square [C, C] matrix, got shape {tuple(M.shape)}")
    if not ((n.dim() == 1 and n.shape[0] == M.shape[0]) or n.shape == M.shape):
        raise ValueError(f"nums must be a vector [C] with C = {M.shape[0]} (the size of "
                         f"counts), or the per-pair denominators [C, C] of partially known "
                         f"labels, got shape {tuple(n.shape)}")
    if M.shape[0] == 0:
        raise ValueError("counts is empty: there must be at least one label")
    if bool((M < 0).any()) or bool((n < 0).any()):
        raise ValueError("counts and nums must be non-negative")
    if bool((M.diagonal() != 0).any()):
        raise ValueError("counts must have a zero diagonal (M_ij counts images holding "
                         "two different labels; the per-label counts go in nums)")
    if not torch.equal(M, M.T):
        raise ValueError("counts must be symmetric (M_ij = M_ji = images holding both "
                         "L_i and L_j)")
    if n.dim() == 2:
        return M, _check_pair_nums(M, n)
    over = M > n[:, None]
    if bool(over.any()):
        i, j = (int(v) for v in over.nonzero()[0])
        raise ValueError(f"counts[{i}, {j}] = {int(M[i, j])} exceeds nums[{i}] = {int(n[i])}: "
                         f"two labels cannot co-occur in more images than either occurs in")
    return M, n


def _check_pair_nums(M: Tensor, n: Tensor) -> Tensor:
    r"""Checks of the per-pair denominators :math:`N_{i|j}` ``[C, C]`` (partial labels):
    :math:`M_{ij} \leq N_{i|j} \leq N_{i|i} = N_i`."""
    over = M > n
    if bool(over.any()):
        i, j = (int(v) for v in over.nonzero()[0])
        raise ValueError(f"counts[{i}, {j}] = {int(M[i, j])} exceeds nums[{i}, {j}] = "
                         f"{int(n[i, j])}: two labels cannot co-occur in more images than "
                         f"hold L_{i} with L_{j} known")
    over = n > n.diagonal()[:, None]
    if bool(over.any()):
        i, j = (int(v) for v in over.nonzero()[0])
        raise ValueError(f"nums[{i}, {j}] = {int(n[i, j])} exceeds nums[{i}, {i}] = "
                         f"{int(n[i, i])}: the images holding L_{i} with L_{j} known are a "
                         f"subset of the images holding L_{i}")
    return n


def _label_counts(n: Tensor) -> Tensor:
    """:math:`N_i` ``[C]`` from ``nums`` in either form (the diagonal of :math:`N_{i|j}`)."""
    return n if n.dim() == 1 else n.diagonal()


def _check_classes(classes: Optional[Sequence[str]], C: int) -> List[str]:
    if classes is None:
        return [str(i) for i in range(C)]
    if isinstance(classes, str):
        raise TypeError("classes must be a sequence of names, not a single string")
    names = [str(c) for c in (classes.tolist() if hasattr(classes, "tolist") else classes)]
    if len(names) != C:
        raise ClassMismatchError(f"classes has {len(names)} names but the label statistics "
                                 f"have {C} labels")
    if len(set(names)) != C:
        dup = sorted({c for c in names if names.count(c) > 1})
        raise ValueError(f"classes contains duplicate names: {dup[:10]}")
    return names


def _check_embeddings(embeddings: Any, C: int) -> Optional[Tensor]:
    if embeddings is None:
        return None
    E, _ = _to_tensor(embeddings, "embeddings")
    if E.dim() != 2:
        raise ValueError(f"embeddings must be a 2-D matrix [C, d], got shape {tuple(E.shape)}")
    if E.shape[0] != C:
        raise ClassMismatchError(f"embeddings has {E.shape[0]} rows but the label graph has "
                                 f"{C} labels (one embedding row per label is needed)")
    if E.shape[1] == 0:
        raise ValueError("embeddings has zero columns (d = 0)")
    E = E.to(device="cpu", dtype=torch.float32, copy=True)  # never alias the caller's array
    if not bool(torch.isfinite(E).all()):
        bad = (~torch.isfinite(E)).nonzero()[0].tolist()
        raise ValueError(f"embeddings contains NaN or infinite values (first at {bad})")
    return E


# ----------------------------------------------------------------------------- statistics

def _gram_int8(Yt: Tensor) -> Optional[Tensor]:
    r""":math:`\mathbf{Y}^\top\mathbf{Y}` of a validated CPU 0/1 integer/bool tensor via
    an int8 x int8 -> int32 GEMM (``torch._int_mm``, oneDNN), or ``None`` to fall back.

    The labels are used as they are stored (one byte each, no float copy); int32
    accumulation is exact for :math:`N < 2^{31}`. ``torch._int_mm`` is a private API
    (torch 2.14 returns garbage for a ``1 x 1`` output), so the result is sanity-checked
    — symmetric, :math:`0 \le G_{ij} \le G_{ii} \le N` and
    :math:`\operatorname{tr} G = \operatorname{nnz}(\mathbf{Y})` — and anything
    unexpected falls back to the float product.
    """
    N, C = Yt.shape
    int_mm = getattr(torch, "_int_mm", None)
    if int_mm is None or N >= 2 ** 31:
        return None
    if Yt.dtype in (torch.uint8, torch.bool):
        Yi = Yt.view(torch.int8)
    else:
        Yi = Yt.to(torch.int8)
    if not Yi.is_contiguous():
        Yi = Yi.contiguous()
    try:
        G = int_mm(Yi.t(), Yi)
    except (RuntimeError, TypeError, NotImplementedError):
        return None
    d = G.diagonal()
    ok = (G.shape == (C, C) and torch.equal(G, G.t()) and bool((G >= 0).all())
          and bool((G <= d[:, None]).all()) and int(d.max()) <= N
          and int(d.sum(dtype=torch.int64)) == int(np.count_nonzero(Yi.numpy())))
    if not ok:
        warnings.warn("torch._int_mm returned an inconsistent label co-occurrence matrix; "
                      "using the float32 product instead", RuntimeWarning, stacklevel=3)
        return None
    return G


def _cooccurrence_tensor(Yt: Tensor) -> Tuple[Tensor, Tensor]:
    """Co-occurrence of a validated 0/1 tensor: int64 ``(counts, nums)`` on ``Yt.device``."""
    N, C = Yt.shape
    G = None
    if (_USE_INT8_GEMM and Yt.device.type == "cpu" and not Yt.is_floating_point()
            and N >= _INT8_MIN_ROWS and C >= _INT8_MIN_COLS):
        G = _gram_int8(Yt)
    if G is None:
        dtype = torch.float32 if N < _FLOAT32_EXACT_LIMIT else torch.float64
        Yf = Yt.to(dtype)                  # cast once: the only copy of Y
        G = torch.mm(Yf.t(), Yf)           # one BLAS product, exact for 0/1 entries
    G = G.to(torch.int64)
    nums = G.diagonal().clone()
    G.fill_diagonal_(0)
    return G, nums


def _check_mask(mask: Any, Yt: Tensor) -> Tensor:
    """Validate a known-label mask for the labels ``Yt``; return it as a bool tensor on
    ``Yt.device`` (True = known)."""
    Kt, _ = _to_tensor(mask, "mask")
    if tuple(Kt.shape) != tuple(Yt.shape):
        raise ValueError(f"mask must have the shape of the labels {tuple(Yt.shape)} "
                         f"(True = known, False = unknown), got {tuple(Kt.shape)}")
    if Kt.dtype != torch.bool:
        if Kt.is_complex():
            raise TypeError(f"mask must be boolean, got complex dtype {Kt.dtype}")
        bad = (Kt != 0) & (Kt != 1)
        if bool(bad.any()):
            r, c = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"mask must be boolean (or 0/1), found {Kt[r, c].item()!r} at "
                             f"[{r}, {c}]")
        Kt = Kt != 0
    return Kt.to(Yt.device)


def _cooccurrence_masked(Yt: Tensor, Kt: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Statistics of validated labels with a known-mask: int64 ``(counts, nums)`` with
    ``nums`` the per-pair denominators :math:`N_{i|j}` ``[C, C]``, on ``Yt.device``.

    With :math:`\tilde{\mathbf{Y}} = \mathbf{Y} \odot \mathbf{K}` (the known positives),
    one product :math:`\tilde{\mathbf{Y}}^\top [\tilde{\mathbf{Y}} \,|\, \mathbf{K}]`
    gives both :math:`\mathbf{M}` (left block, diagonal cleared) and :math:`N_{i|j}`
    (right block); exact in float32 below :math:`2^{24}` images, float64 above."""
    N, C = Yt.shape
    dtype = torch.float32 if N < _FLOAT32_EXACT_LIMIT else torch.float64
    K = Kt.to(dtype)
    Yk = Yt.to(dtype) * K
    G = torch.mm(Yk.t(), torch.cat([Yk, K], dim=1)).to(torch.int64)
    counts = G[:, :C].contiguous()
    counts.fill_diagonal_(0)
    return counts, G[:, C:].contiguous()


def cooccurrence(Y: ArrayLike, mask: Optional[ArrayLike] = None
                 ) -> Tuple[Union[np.ndarray, Tensor], Union[np.ndarray, Tensor]]:
    r"""Label co-occurrence statistics of a multi-hot matrix (ML-GCN Sec. 3.4).

    .. math::
        M_{ij} = \sum_{n=1}^{N} Y_{ni} Y_{nj} \quad (i \neq j), \qquad M_{ii} = 0,
        \qquad N_i = \sum_{n=1}^{N} Y_{ni},

    i.e. :math:`M_{ij}` is the number of images holding both :math:`L_i` and
    :math:`L_j` and :math:`N_i` the number of images holding :math:`L_i`. Both come
    from one matrix product :math:`\mathbf{Y}^\top\mathbf{Y}` (its diagonal is
    :math:`\mathbf{N}`) computed in float32 — exact, since every partial sum is an
    integer below :math:`2^{24}` — or in float64 when :math:`N \geq 2^{24}`; ``Y`` is
    cast once and multiplied once. Large integer/bool label matrices on the CPU skip
    the cast: an int8 GEMM with exact int32 accumulation computes the same product
    from the stored bytes (checked, with the float product as fallback); see
    ``benchmarks/bench_graphs.py`` for its cost against one float32 product.

    Pass the **training** split only: statistics from test images leak labels.

    **Partially known labels** (``mask``, a known-mask :math:`\mathbf{K} \in
    \{0, 1\}^{N \times C}`, False = unknown: a VOC *difficult* object, a label hidden by
    ``--drop-labels``). An image tells whether :math:`L_j` co-occurs with :math:`L_i`
    only when both entries are known, so only such pairs are counted:

    .. math::
        M_{ij} = \sum_{n} Y_{ni} K_{ni}\, Y_{nj} K_{nj} \quad (i \neq j), \qquad
        N_{i|j} = \sum_{n} Y_{ni} K_{ni}\, K_{nj},

    :math:`N_{i|j}` being the number of images known to hold :math:`L_i` whose
    :math:`L_j` is known. Eq. 6 then reads
    :math:`P(L_j \mid L_i) = M_{ij} / N_{i|j}`: among the images known to hold
    :math:`L_i`, those where :math:`L_j` was observed are a sample of all of them
    whenever entries are hidden independently of their values (missing completely at
    random, as ``--drop-labels`` hides them), so the ratio estimates the same
    probability as with full labels. (Dividing the known co-occurrences by
    :math:`N_i = \sum_n Y_{ni} K_{ni}` instead would shrink every :math:`P(L_j \mid
    L_i)` by the fraction of known :math:`L_j` entries.) The denominators now depend on
    the pair, so ``nums`` is returned as the matrix :math:`N_{i|j}` ``[C, C]``; its
    diagonal :math:`N_{i|i} = \sum_n Y_{ni} K_{ni}` is the number of images known to
    hold :math:`L_i`. Every function taking ``(counts, nums)``
    (:func:`conditional_probability`, :func:`propagation_matrix`,
    :meth:`LabelGraph.from_counts`) accepts both forms. With every entry known
    (:math:`\mathbf{K} = \mathbf{1}`) every column of :math:`N_{i|j}` is :math:`N_i`
    and :math:`\mathbf{M}`, Eq. 6 and the operator are exactly those without a mask.
    The masked statistics come from one float product
    :math:`(\mathbf{Y}\odot\mathbf{K})^\top[\mathbf{Y}\odot\mathbf{K} \,|\,
    \mathbf{K}]` (exact, as above); ``mask=None`` keeps the fast paths.

    Args:
        Y (numpy.ndarray or torch.Tensor): multi-hot labels ``[N, C]`` with values in
            :math:`\{0, 1\}` (bool, any integer or floating dtype). VOC-style labels
            (1 present, 0 difficult, -1 absent) are rejected: the caller decides
            about *difficult* (the ML-GCN release counts positives only, ``Y == 1``; or
            pass ``Y == 1`` with ``mask=Y != 0`` to leave *difficult* entries unknown).
        mask (numpy.ndarray or torch.Tensor, optional): known-mask ``[N, C]``, bool (or
            0/1), True = known; ``None``: every entry is known. (default: ``None``)

    Returns:
        (counts, nums): ``counts`` int64 ``[C, C]`` (symmetric, zero diagonal) and
        ``nums`` int64 ``[C]`` (:math:`N_i`), or ``[C, C]`` (:math:`N_{i|j}`) when a
        ``mask`` is given; numpy arrays if ``Y`` is not a tensor, else tensors on
        ``Y.device``.

    Raises:
        ValueError: ``Y`` is not 2-D, or holds values other than 0 and 1 (including NaN);
            ``mask`` has another shape or values other than 0 and 1.
        TypeError: ``Y`` or ``mask`` is not numeric.
    """
    Yt, was_numpy = _check_labels(Y)
    if mask is None:
        counts, nums = _cooccurrence_tensor(Yt)
    else:
        counts, nums = _cooccurrence_masked(Yt, _check_mask(mask, Yt))
    if was_numpy:
        return counts.cpu().numpy(), nums.cpu().numpy()
    return counts, nums


def conditional_probability(counts: ArrayLike, nums: ArrayLike) -> Tensor:
    r"""Conditional probability matrix of ML-GCN Eq. 6.

    .. math::
        P_{ij} = P(L_j \mid L_i) = \frac{M_{ij}}{N_i}, \qquad
        P_{ij} = 0 \ \text{for all } j \text{ if } N_i = 0,

    so row :math:`i` holds the probability of every other label given :math:`L_i`.
    A label never seen in the statistics (:math:`N_i = 0`) has an all-zero row
    instead of :math:`0/0`. The matrix is asymmetric and has a zero diagonal. With
    partially known labels ``nums`` is the matrix :math:`N_{i|j}` of
    :func:`cooccurrence` and :math:`P_{ij} = M_{ij} / N_{i|j}` (0 where
    :math:`N_{i|j} = 0`, i.e. where :math:`L_j` is never known beside :math:`L_i`).

    Args:
        counts: co-occurrence counts :math:`\mathbf{M}` ``[C, C]`` (zero diagonal).
        nums: per-label image counts :math:`\mathbf{N}` ``[C]``, or the per-pair
            denominators :math:`N_{i|j}` ``[C, C]`` of partially known labels.

    Returns:
        torch.Tensor: float64 ``[C, C]``.
    """
    M, n = _check_counts(counts, nums)
    return _conditional_probability(M, n)


def _conditional_probability(M: Tensor, n: Tensor) -> Tensor:
    denom = n.to(torch.float64).clamp_min(1.0)   # N_i = 0 ⇒ M_i· = 0 ⇒ row 0 (N_i|j alike)
    return M.to(torch.float64) / (denom[:, None] if n.dim() == 1 else denom)


def propagation_matrix(counts: ArrayLike, nums: ArrayLike, tau: float = 0.4, p: float = 0.2,
                       scheme: str = "reweighted", convention: str = "paper") -> Tensor:
    r"""The dense operator :math:`\mathbf{P}` a label GCN layer applies (ML-GCN Eq. 2).

    A layer computes :math:`\mathbf{H}' = h(\mathbf{P}\,\mathbf{H}\,\mathbf{W})`, so row
    :math:`i` of :math:`\mathbf{P}` lists what node :math:`i` aggregates. Everything
    starts from the conditional probabilities of Eq. 6,
    :math:`P_{ij} = M_{ij}/N_i = P(L_j \mid L_i)` (all-zero row where :math:`N_i = 0`).

    **Schemes** (the correlation matrix :math:`\mathbf{A}` before normalisation):

    - ``"probability"`` — :math:`\mathbf{A} = \mathbf{P}` (Eq. 6, no threshold; ``tau``
      unused).
    - ``"binary"`` — Eq. 7, for :math:`i \neq j`:

      .. math::
          A_{ij} = \begin{cases} 1 & P_{ij} \geq \tau \\ 0 & P_{ij} < \tau \end{cases},
          \qquad A_{ii} = 0,

      and :math:`A_{ij} = 0` for every :math:`j` when :math:`N_i = 0`. (With
      :math:`\tau = 0` every pair of seen labels is connected, as Eq. 7 says.)
    - ``"reweighted"`` — Eq. 8 on top of Eq. 7, with :math:`k_i = \sum_{j \neq i} A_{ij}`
      the number of neighbours of :math:`i`:

      .. math::
          A'_{ij} = \begin{cases} p\,A_{ij} / k_i & i \neq j \\ 1 - p & i = j
          \end{cases} \quad (k_i > 0), \qquad
          A'_{ij} = \delta_{ij} \quad (k_i = 0).

      A node with no neighbour above :math:`\tau` (or a label never seen,
      :math:`N_i = 0`) keeps all of its own feature, :math:`A'_{ii} = 1`, instead of
      dividing by zero.

    **Convention** ``"paper"`` (default) — node :math:`i` aggregates from :math:`j`
    where :math:`P(L_j \mid L_i) \geq \tau`:

    - ``"reweighted"``: :math:`\mathbf{P}_{op} = \mathbf{A}'` as is — Eq. 8 already makes
      every row sum to 1 (:math:`1-p` for the node itself, :math:`p` for its neighbours).
    - ``"binary"`` / ``"probability"``: the "normalized version" of Eq. 2, i.e. the
      renormalisation of Kipf & Welling (ref. [14]) with degrees from row sums:

      .. math::
          \tilde{\mathbf{A}} = \mathbf{A} + \mathbf{I}, \qquad
          \tilde{D}_{ii} = \sum_j \tilde{A}_{ij}, \qquad
          \mathbf{P}_{op} = \tilde{\mathbf{D}}^{-1/2}\,\tilde{\mathbf{A}}\,
          \tilde{\mathbf{D}}^{-1/2}.

      :math:`\tilde{D}_{ii} \geq 1`, so isolated and unseen labels get
      :math:`(\mathbf{P}_{op})_{ii} = 1`.

    **Convention** ``"mlgcn_code"`` — exactly what the public ML-GCN code computes
    (``gen_A`` then ``gen_adj`` in ``util.py`` of megvii-research/ML-GCN). With
    :math:`B_{ij} = [P_{ij} \geq \tau]` (the code binarises the diagonal too, which only
    matters for :math:`\tau = 0`) and :math:`\epsilon = 10^{-6}`:

    .. math::
        \mathbf{A} = \begin{cases}
            \left[\dfrac{p\,B_{ij}}{\sum_k B_{kj} + \epsilon}\right]_{ij} + \mathbf{I}
                & \text{reweighted (column sums!)} \\
            \mathbf{B} + \mathbf{I} & \text{binary} \\
            \mathbf{P} + \mathbf{I} & \text{probability}
        \end{cases}, \qquad
        D_{ii} = \Big(\sum_j A_{ij}\Big)^{-1/2}, \qquad
        \mathbf{P}_{op} = (\mathbf{A}\mathbf{D})^\top \mathbf{D}
                        = \mathbf{D}\,\mathbf{A}^\top\mathbf{D}.

    The release hard-codes :math:`p = 0.25`: ``p=0.25`` reproduces it. Differences from
    the paper: the re-weighting divides by *column* sums, the self weight is 1 (not
    :math:`1-p`), a symmetric :math:`D^{-1/2}\cdot D^{-1/2}` normalisation with row-sum
    degrees follows, and the transpose flips the direction — node :math:`i`
    aggregates from :math:`j` where :math:`P(L_i \mid L_j) \geq \tau`. One deliberate
    deviation: where the release divides :math:`0/0` for a label with :math:`N_i = 0`
    (NaN everywhere after ``gen_adj``), that row of :math:`\mathbf{P}` is 0 here.
    Computed in float64 (the release casts ``gen_A``'s float64 result to float32
    before ``gen_adj``; the two agree to float32 rounding).

    Args:
        counts: co-occurrence counts ``[C, C]`` (see :func:`cooccurrence`).
        nums: per-label image counts ``[C]``, or the per-pair denominators
            :math:`N_{i|j}` ``[C, C]`` of partially known labels.
        tau (float): threshold :math:`\tau \in [0, 1]` of Eq. 7. (default: ``0.4``)
        p (float): re-weighting :math:`p \in [0, 1]` of Eq. 8 (used by ``"reweighted"``
            only). (default: ``0.2``)
        scheme (str): ``"reweighted"``, ``"binary"`` or ``"probability"``.
        convention (str): ``"paper"`` or ``"mlgcn_code"``.

    Returns:
        torch.Tensor: float64 ``[C, C]`` operator; never NaN.
    """
    tau = _check_unit_interval(tau, "tau")
    p = _check_unit_interval(p, "p")
    scheme = _check_choice(scheme, "scheme", SCHEMES)
    convention = _check_choice(convention, "convention", CONVENTIONS)
    M, n = _check_counts(counts, nums)
    return _propagation(M, n, tau, p, scheme, convention)


def _propagation(M: Tensor, n: Tensor, tau: float, p: float, scheme: str,
                 convention: str) -> Tensor:
    """:func:`propagation_matrix` on validated CPU int64 statistics (float64 result)."""
    C = M.shape[0]
    P = _conditional_probability(M, n)
    eye = torch.eye(C, dtype=torch.float64)
    seen = (_label_counts(n) > 0).to(torch.float64)[:, None]  # never-seen labels → 0
    if convention == "paper":
        if scheme == "probability":
            A = P
        else:
            A = (P >= tau).to(torch.float64) * seen
            A.fill_diagonal_(0.0)
        if scheme == "reweighted":
            k = A.sum(1, keepdim=True)
            has = k > 0
            A = torch.where(has, A * (p / k.clamp_min(1.0)), A)
            return A + eye * torch.where(has, 1.0 - p, 1.0)
        A = A + eye
        d = A.sum(1).rsqrt()                           # row sums >= 1: finite
        return d[:, None] * A * d[None, :]
    # convention == "mlgcn_code": gen_A ...
    if scheme == "probability":
        A = P + eye
    else:
        B = (P >= tau).to(torch.float64) * seen
        if scheme == "reweighted":
            B = B * p / (B.sum(0, keepdim=True) + _MLGCN_EPS)
        A = B + eye
    # ... then gen_adj: D = diag(rowsum^-1/2), (A D)^T D
    d = A.sum(1).pow(-0.5)                             # row sums >= 1: finite
    return d[:, None] * A.t() * d[None, :]


def _edges_from_dense(P: Tensor) -> Tuple[Tensor, Tensor]:
    """PyG edges (source_to_target) of a dense operator: ``edge_index[0]`` = source j,
    ``edge_index[1]`` = target i, weight ``P[i, j]``; sorted by source then target."""
    Pt = P.to(torch.float32).t()
    ji = Pt.nonzero()                                  # rows (j, i), row-major
    edge_index = ji.t().contiguous()
    edge_weight = Pt[ji[:, 0], ji[:, 1]]
    return edge_index, edge_weight


def _dense_from_edges(edge_index: Tensor, edge_weight: Tensor, C: int) -> Tensor:
    """Sum-aggregate edges into the dense operator: ``P[i, j] += w`` for edge j → i."""
    P = torch.zeros(C, C, dtype=torch.float32, device=edge_weight.device)
    P.index_put_((edge_index[1], edge_index[0]), edge_weight.to(torch.float32),
                 accumulate=True)
    return P


# ----------------------------------------------------------------------------- the graph

_REQUIRED_ATTRS = ("edge_index", "edge_weight", "counts", "nums", "classes", "split", "tau",
                   "p", "scheme", "convention")


class LabelGraph:
    r"""The ML-GCN label graph (Chen et al., CVPR 2019, Sec. 3.4) as a PyG graph.

    Nodes are the :math:`C` labels; the edges carry the operator
    :math:`\mathbf{P}` of :func:`propagation_matrix` that a label GCN layer applies
    as :math:`\mathbf{H}' = \mathbf{P}\,\mathbf{H}\,\mathbf{W}` (Eq. 2). Built from
    training-split statistics with :meth:`from_labels`, :meth:`from_counts`,
    :meth:`from_coco`, :meth:`from_voc` or :meth:`from_dataset`; rebuilt from a saved
    :class:`~torch_geometric.data.Data` with :meth:`from_data`.

    :attr:`data` is a :class:`torch_geometric.data.Data` with

    - ``x`` — label embeddings float32 ``[C, d]`` (e.g. GloVe), or ``None`` when none
      were given (pick an embedding provider; the graph does not invent one-hot
      features);
    - ``edge_index`` — long ``[2, E]`` in PyG's ``source_to_target`` flow:
      ``edge_index[0]`` is the source :math:`j`, ``edge_index[1]`` the target
      :math:`i`, meaning node :math:`i` aggregates from node :math:`j`;
    - ``edge_weight`` — float32 ``[E]``, :math:`P_{ij}` for every nonzero of
      :math:`\mathbf{P}`, self-loops included as ordinary edges (a layer must apply the
      weights as given: no added self-loops, no renormalisation);
    - ``num_nodes`` = :math:`C`;
    - ``classes`` (list of str), ``counts`` int64 ``[C, C]`` (:math:`\mathbf{M}`),
      ``nums`` int64 ``[C]`` (:math:`\mathbf{N}`; ``[C, C]``, the per-pair
      :math:`N_{i|j}`, for statistics of partially known labels, see
      :func:`cooccurrence`), ``split`` (the split the statistics came from), ``tau``,
      ``p``, ``scheme``, ``convention``. (No attribute name contains ``"index"`` except
      ``edge_index``, so PyG batching offsets nothing else.)

    Args:
        data (torch_geometric.data.Data): a graph holding the attributes above.
        check (bool): verify that the edges equal the operator recomputed from the
            statistics and settings. (default: ``True``)
    """

    def __init__(self, data: Any, check: bool = True) -> None:
        from torch_geometric.data import Data
        if not isinstance(data, Data):
            raise TypeError(f"LabelGraph wraps a torch_geometric.data.Data, got "
                            f"{type(data).__name__}")
        missing = [k for k in _REQUIRED_ATTRS if k not in data]
        if missing:
            raise ValueError(f"Data is not a label graph: missing attributes {missing}")
        C = len(data.classes)
        if data.num_nodes != C:
            raise ValueError(f"Data has num_nodes={data.num_nodes} but {C} classes")
        ei, ew = data.edge_index, data.edge_weight
        if ei.dim() != 2 or ei.shape[0] != 2 or ei.dtype != torch.long:
            raise ValueError(f"edge_index must be long [2, E], got {ei.dtype} "
                             f"{tuple(ei.shape)}")
        if ew.dim() != 1 or ew.shape[0] != ei.shape[1]:
            raise ValueError(f"edge_weight must be [E] with E = {ei.shape[1]}, got "
                             f"{tuple(ew.shape)}")
        if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= C):
            raise ValueError(f"edge_index refers to nodes outside [0, {C})")
        if not bool(torch.isfinite(ew).all()):
            raise ValueError("edge_weight contains NaN or infinite values")
        if data.x is not None:
            _check_embeddings(data.x, C)
        self.data = data
        if check:
            M, n = _check_counts(data.counts.cpu(), data.nums.cpu())
            _check_classes(data.classes, M.shape[0])
            expected = _propagation(
                M, n, _check_unit_interval(data.tau, "tau"), _check_unit_interval(data.p, "p"),
                _check_choice(data.scheme, "scheme", SCHEMES),
                _check_choice(data.convention, "convention", CONVENTIONS)).to(torch.float32)
            got = self.propagation().cpu()
            if not torch.allclose(got, expected, rtol=1e-6, atol=1e-7):
                err = float((got - expected).abs().max())
                raise ValueError(f"edge weights disagree with the operator recomputed from "
                                 f"counts/nums/tau/p/scheme/convention (max abs error {err:.3g}); "
                                 f"pass check=False to keep them anyway")

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_counts(cls, counts: ArrayLike, nums: ArrayLike, embeddings: Optional[ArrayLike] = None,
                    tau: float = 0.4, p: float = 0.2, scheme: str = "reweighted",
                    convention: str = "paper", classes: Optional[Sequence[str]] = None,
                    split: str = "train") -> "LabelGraph":
        r"""Build the graph from precomputed statistics :math:`\mathbf{M}`, :math:`\mathbf{N}`.

        E.g. the ML-GCN release's ``adj`` / ``nums`` (``mlgcn_coco_adj.npz``).

        Args:
            counts: co-occurrence counts ``[C, C]``: non-negative integers, symmetric,
                zero diagonal, :math:`M_{ij} \leq N_i`.
            nums: per-label image counts ``[C]``, or the per-pair denominators
                :math:`N_{i|j}` ``[C, C]`` of partially known labels (see
                :func:`cooccurrence`).
            embeddings: optional label embeddings ``[C, d]`` stored as ``data.x``
                (float32, must be finite).
            tau, p, scheme, convention: see :func:`propagation_matrix`.
            classes: label names (default ``"0" … "C-1"``).
            split (str): the split the statistics came from (recorded).
        """
        tau = _check_unit_interval(tau, "tau")
        p = _check_unit_interval(p, "p")
        scheme = _check_choice(scheme, "scheme", SCHEMES)
        convention = _check_choice(convention, "convention", CONVENTIONS)
        M, n = _check_counts(counts, nums)
        _warn_if_no_positive(float(n.sum()), split)
        return cls._build(M, n, embeddings, tau, p, scheme, convention, classes, split)

    @classmethod
    def from_labels(cls, Y: ArrayLike, embeddings: Optional[ArrayLike] = None, tau: float = 0.4,
                    p: float = 0.2, scheme: str = "reweighted", convention: str = "paper",
                    classes: Optional[Sequence[str]] = None,
                    split: str = "train", mask: Optional[ArrayLike] = None) -> "LabelGraph":
        r"""Build the graph from a multi-hot training label matrix.

        Counts :math:`\mathbf{M}` and :math:`\mathbf{N}` with :func:`cooccurrence`, then
        builds the operator of :func:`propagation_matrix`. With a known-mask ``mask``
        only pairs of known entries are counted and Eq. 6 divides by the per-pair
        :math:`N_{i|j}` (stored as ``nums`` ``[C, C]``; see :func:`cooccurrence`); with
        every entry known the operator is exactly the one without a mask.

        Args:
            Y: multi-hot labels ``[N, C]`` in :math:`\{0, 1\}` (numpy or torch) of the
                **training** split. For VOC-style labels (1 present, 0 difficult,
                -1 absent) pass ``Y == 1`` (positives only, as in the ML-GCN release)
                or decide otherwise about *difficult*; -1 is rejected.
            embeddings: optional label embeddings ``[C, d]`` (``data.x``).
            tau, p, scheme, convention: see :func:`propagation_matrix`.
            classes: label names (default ``"0" … "C-1"``).
            split (str): name of the split ``Y`` comes from (recorded). (default ``"train"``)
            mask: optional known-mask ``[N, C]`` (bool or 0/1; False = unknown, e.g. VOC
                *difficult* or a label hidden by ``--drop-labels``). (default ``None``:
                every entry is known)
        """
        tau = _check_unit_interval(tau, "tau")
        p = _check_unit_interval(p, "p")
        scheme = _check_choice(scheme, "scheme", SCHEMES)
        convention = _check_choice(convention, "convention", CONVENTIONS)
        Yt, _ = _check_labels(Y)
        if mask is None:
            M, n = _cooccurrence_tensor(Yt)
            _warn_if_no_positive(float(n.sum()), split)
        else:
            known = _check_mask(mask, Yt)
            M, n = _cooccurrence_masked(Yt, known)
            _warn_if_no_positive(float(((Yt == 1) & known.bool()).sum()), split)
        return cls._build(M.cpu(), n.cpu(), embeddings, tau, p, scheme, convention, classes,
                          split)

    @classmethod
    def from_coco(cls, ann_file: Union[str, os.PathLike], embeddings: Optional[ArrayLike] = None,
                  tau: float = 0.4, p: float = 0.2, scheme: str = "reweighted",
                  convention: str = "paper", classes: Optional[Sequence[str]] = None,
                  split: Optional[str] = None) -> "LabelGraph":
        r"""Build the graph from a COCO ``instances_*.json`` (read with pycocotools).

        Image-level labels come from :func:`pyg_mlic.data.coco.coco_labels` (an image
        holds a label if it has at least one instance of it; images without
        annotations count towards nothing).

        Args:
            ann_file: path of a COCO instances json (use the *training* split's).
            classes: category names selecting and ordering the labels (default: all
                categories as :func:`~pyg_mlic.data.coco.coco_labels` orders them).
            split (str, optional): recorded split name (default: the file name without
                ``instances_`` and ``.json``, e.g. ``"train2014"``).
            embeddings, tau, p, scheme, convention: as in :meth:`from_labels`.
        """
        from pyg_mlic.data.coco import coco_labels
        _, labels, names = coco_labels(ann_file, classes=classes, keep_empty=True)
        if split is None:
            stem = Path(ann_file).name
            stem = stem[:-5] if stem.endswith(".json") else stem
            split = stem[len("instances_"):] if stem.startswith("instances_") else stem
        return cls.from_labels(labels, embeddings=embeddings, tau=tau, p=p, scheme=scheme,
                               convention=convention, classes=names, split=split)

    @classmethod
    def from_voc(cls, root: Union[str, os.PathLike], split: str = "trainval",
                 embeddings: Optional[ArrayLike] = None, tau: float = 0.4, p: float = 0.2,
                 scheme: str = "reweighted", convention: str = "paper",
                 classes: Optional[Sequence[str]] = None) -> "LabelGraph":
        r"""Build the graph from a PASCAL VOC folder (``ImageSets/Main`` + ``Annotations``).

        Labels come from :func:`pyg_mlic.data.voc.voc_labels` (1 present, 0 difficult,
        -1 absent); only positives (value 1) are counted, *difficult* objects are
        excluded — as the ML-GCN release did for its VOC 2007 ``trainval`` statistics.

        Args:
            root: the VOC folder (holding ``ImageSets/`` and ``Annotations/``).
            split (str): image set to count, read and recorded. (default ``"trainval"``)
            classes: the label columns, passed to
                :func:`~pyg_mlic.data.voc.voc_labels` (default: the 20 VOC classes; a
                list such as ``["WBC", "RBC", "Platelets"]`` or ``"infer"`` for other
                VOC-format data).
            embeddings, tau, p, scheme, convention: as in :meth:`from_labels`.
        """
        from pyg_mlic.data.voc import voc_labels
        if classes is None:
            _, labels, names = voc_labels(root, split)
        else:
            _, labels, names = voc_labels(root, split, classes=classes)
            if not isinstance(classes, str):
                check_same_classes("classes argument", classes, f"VOC labels of {root}", names)
        Y = np.asarray(labels) == 1
        return cls.from_labels(Y, embeddings=embeddings, tau=tau, p=p, scheme=scheme,
                               convention=convention, classes=names, split=split)

    @classmethod
    def from_dataset(cls, dataset: Any, embeddings: Optional[ArrayLike] = None, tau: float = 0.4,
                     p: float = 0.2, scheme: str = "reweighted",
                     convention: str = "paper") -> "LabelGraph":
        r"""Build the graph from a :class:`~pyg_mlic.data.base.MultiLabelDataset`.

        Uses its ``labels`` (``uint8 [N, C]``, 1 = present), ``label_mask`` (unknown
        entries are not counted, see :func:`cooccurrence`), ``classes`` and ``split``;
        pass the *training* dataset.
        """
        return cls.from_labels(dataset.labels, embeddings=embeddings, tau=tau, p=p,
                               scheme=scheme, convention=convention,
                               classes=list(dataset.classes),
                               split=str(getattr(dataset, "split", "train")),
                               mask=getattr(dataset, "label_mask", None))

    @classmethod
    def from_data(cls, data: Any, check: bool = True) -> "LabelGraph":
        """Rebuild from a :class:`~torch_geometric.data.Data` saved from :attr:`data`
        (e.g. in a checkpoint); see :class:`LabelGraph` for ``check``."""
        return cls(data, check=check)

    @classmethod
    def _build(cls, M: Tensor, n: Tensor, embeddings: Any, tau: float, p: float, scheme: str,
               convention: str, classes: Optional[Sequence[str]], split: str) -> "LabelGraph":
        from torch_geometric.data import Data
        C = M.shape[0]
        names = _check_classes(classes, C)
        x = _check_embeddings(embeddings, C)
        if not isinstance(split, str):
            raise TypeError(f"split must be a string naming the statistics' split, got "
                            f"{split!r}")
        P = _propagation(M, n, tau, p, scheme, convention)
        edge_index, edge_weight = _edges_from_dense(P)
        data = Data(x=x, edge_index=edge_index, edge_weight=edge_weight, num_nodes=C,
                    classes=names, counts=M, nums=n, split=split, tau=tau, p=p,
                    scheme=scheme, convention=convention)
        graph = cls.__new__(cls)  # everything above is validated: skip __init__'s checks
        graph.data = data
        return graph

    # ---------------------------------------------------------------- accessors
    @property
    def num_classes(self) -> int:
        """Number of labels :math:`C` (= nodes)."""
        return len(self.data.classes)

    @property
    def classes(self) -> List[str]:
        """Label names, in node order."""
        return list(self.data.classes)

    @property
    def num_edges(self) -> int:
        """Number of stored edges (nonzeros of the operator, self-loops included)."""
        return int(self.data.edge_index.shape[1])

    @property
    def x(self) -> Optional[Tensor]:
        """Label embeddings ``[C, d]`` or ``None``."""
        return self.data.x

    @property
    def edge_index(self) -> Tensor:
        """``[2, E]``: ``edge_index[0]`` = source :math:`j`, ``edge_index[1]`` = target
        :math:`i` (node :math:`i` aggregates from :math:`j`)."""
        return self.data.edge_index

    @property
    def edge_weight(self) -> Tensor:
        """``[E]``; :math:`P_{ij}` for the edge :math:`j \\to i`."""
        return self.data.edge_weight

    @property
    def counts(self) -> Tensor:
        """Co-occurrence counts :math:`\\mathbf{M}` int64 ``[C, C]``."""
        return self.data.counts

    @property
    def nums(self) -> Tensor:
        """Per-label image counts :math:`\\mathbf{N}` int64 ``[C]``, or the per-pair
        :math:`N_{i|j}` ``[C, C]`` of partially known labels (see :func:`cooccurrence`)."""
        return self.data.nums

    @property
    def split(self) -> str:
        """Name of the split the statistics came from (e.g. ``"train2014"``)."""
        return self.data.split

    @property
    def tau(self) -> float:
        """Threshold :math:`\\tau` of Eq. 7."""
        return float(self.data.tau)

    @property
    def p(self) -> float:
        """Re-weighting parameter :math:`p` of Eq. 8."""
        return float(self.data.p)

    @property
    def scheme(self) -> str:
        """``"reweighted"``, ``"binary"`` or ``"probability"``."""
        return self.data.scheme

    @property
    def convention(self) -> str:
        """``"paper"`` or ``"mlgcn_code"``."""
        return self.data.convention

    def propagation(self) -> Tensor:
        r"""The dense operator :math:`\mathbf{P}` ``[C, C]`` (float32), rebuilt from the edges.

        :math:`P_{ij} = \sum` of the weights of edges :math:`j \to i` — exactly what a
        sum-aggregating message-passing layer applies to the edges, i.e.
        :math:`\mathbf{H}' = \mathbf{P}\,\mathbf{H}\,\mathbf{W}` (Eq. 2). On the device of
        the edges.
        """
        return _dense_from_edges(self.data.edge_index, self.data.edge_weight, self.num_classes)

    def conditional_probability(self, dtype: torch.dtype = torch.float32) -> Tensor:
        r"""Dense :math:`P_{ij} = M_{ij}/N_i = P(L_j \mid L_i)` of Eq. 6 (zero rows where
        :math:`N_i = 0`; :math:`M_{ij}/N_{i|j}` for partially known labels), ``[C, C]`` on
        the device of ``counts``."""
        return _conditional_probability(self.data.counts.cpu(), self.data.nums.cpu()).to(
            dtype=dtype, device=self.data.counts.device)

    def to(self, device: Union[str, torch.device], *args: Any, **kwargs: Any) -> "LabelGraph":
        """Move every tensor of :attr:`data` to ``device`` (in place, like
        :meth:`torch_geometric.data.Data.to`); returns ``self``."""
        self.data = self.data.to(device, *args, **kwargs)
        return self

    def __repr__(self) -> str:
        x = "None" if self.data.x is None else list(self.data.x.shape)
        return (f"{type(self).__name__}(num_classes={self.num_classes}, "
                f"num_edges={self.num_edges}, scheme={self.scheme!r}, "
                f"convention={self.convention!r}, tau={self.tau:g}, p={self.p:g}, "
                f"split={self.split!r}, x={x})")

    # ---------------------------------------------------------------- file format
    #: value of the ``format`` key that marks a label-graph ``.npz`` (see :meth:`save`)
    FILE_FORMAT = "pyg_mlic.label_graph"
    #: version of the file layout :meth:`save` writes; :meth:`load` reads it and older ones
    FILE_VERSION = 1
    #: keys every label-graph file holds
    FILE_KEYS = ("format", "format_version", "classes", "counts", "nums", "tau", "p", "scheme",
                 "convention", "split")

    def with_embeddings(self, embeddings: ArrayLike, spec: Optional[str] = None) -> "LabelGraph":
        """A copy of this graph with label embeddings ``[C, d]`` as ``x`` (rows in the
        order of :attr:`classes`), e.g. ``g.with_embeddings(load_label_embeddings("glove",
        g.classes), spec="glove")``; ``spec`` (where they came from) is recorded as
        ``data.embeddings_spec`` and written by :meth:`save`."""
        data = self.data.clone()
        data.x = _check_embeddings(embeddings, self.num_classes)
        if spec is not None:
            data.embeddings_spec = str(spec)
        graph = type(self).__new__(type(self))
        graph.data = data
        return graph

    def content_hash(self) -> str:
        """SHA-256 (hex) of what defines the graph — classes, :math:`\\mathbf{M}`,
        :math:`\\mathbf{N}`, ``tau``, ``p``, ``scheme``, ``convention``, ``split`` and the
        embeddings — independent of how or when a file holding it was written (the bytes
        of two saves of one graph differ: zip entries carry a time stamp)."""
        import hashlib

        h = hashlib.sha256()

        def put(tag: str, payload: bytes) -> None:
            h.update(f"{tag}:{len(payload)}:".encode())
            h.update(payload)

        put("classes", "\n".join(self.classes).encode("utf-8"))
        for name in ("counts", "nums"):
            t = getattr(self.data, name).detach().cpu().to(torch.int64).contiguous()
            put(name, repr(tuple(t.shape)).encode() + t.numpy().tobytes())
        put("settings", repr((self.tau, self.p, self.scheme, self.convention,
                              self.split)).encode())
        if self.data.x is not None:
            x = self.data.x.detach().cpu().to(torch.float32).contiguous()
            put("x", repr(tuple(x.shape)).encode() + x.numpy().tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        """JSON-ready record of the graph (what ``metrics.json`` stores as
        ``settings.label_graph``): ``path`` and ``sha256`` of the file it was loaded from
        (``None`` for a graph built in memory), :meth:`content_hash`, ``split``,
        ``source``, ``num_classes``, ``tau``, ``p``, ``scheme``, ``convention``,
        ``embeddings`` (their spec, or ``None``) and ``embedding_dim``."""
        info = dict(getattr(self, "file_info", None) or {"path": None, "sha256": None})
        x = self.data.x
        info.update(content_hash=self.content_hash(), split=self.split,
                    source=getattr(self.data, "source", None), num_classes=self.num_classes,
                    tau=self.tau, p=self.p, scheme=self.scheme, convention=self.convention,
                    embeddings=(getattr(self.data, "embeddings_spec", None) or "given")
                    if x is not None else None,
                    embedding_dim=None if x is None else int(x.shape[1]))
        return info

    def save(self, path: Union[str, os.PathLike], *, source: Optional[str] = None,
             embeddings_spec: Optional[str] = None, compress: bool = False) -> Path:
        r"""Write the graph to a ``.npz`` file that :meth:`load` (and
        ``np.load(path, allow_pickle=False)``, from any language with an npz reader)
        reads back: plain arrays and strings, no pickle. Written atomically.

        Keys (format version :attr:`FILE_VERSION`):

        ====================  ===================================================
        ``format``            ``"pyg_mlic.label_graph"``
        ``format_version``    int, the layout version (1)
        ``pyg_mlic_version``  the version that wrote the file
        ``classes``           str ``[C]``: label names, node order
        ``counts``            int64 ``[C, C]``: :math:`\mathbf{M}` (zero diagonal)
        ``nums``              int64 ``[C]``: :math:`\mathbf{N}` (or ``[C, C]``
                              per-pair denominators of partially known labels)
        ``tau``, ``p``        float64: Eq. 7 threshold, Eq. 8 re-weighting
        ``scheme``            str: ``reweighted`` / ``binary`` / ``probability``
        ``convention``        str: ``paper`` / ``mlgcn_code``
        ``split``             str: the split the statistics came from
        ``source``            str: where the labels came from (free text)
        ``propagation``       float32 ``[C, C]``: the operator :math:`\mathbf{P}`
                              (:meth:`propagation`; checked on load)
        ``vectors``           float32 ``[C, d]``: label embeddings (optional)
        ``embeddings_spec``   str: where they came from (with ``vectors``)
        ====================  ===================================================

        ``classes`` + ``vectors`` is also the layout of the ``npz:PATH`` label-embedding
        spec, so ``label_embeddings="npz:FILE"`` reads a graph file's embeddings.

        Args:
            path: destination; must end in ``.npz``.
            source (str, optional): description of the labels' origin (default: the
                graph's ``data.source``, set by :meth:`load`, else empty).
            embeddings_spec (str, optional): origin of the embeddings (default:
                ``data.embeddings_spec``).
            compress (bool): ``np.savez_compressed``. (default: :obj:`False`)

        Returns:
            pathlib.Path: ``path``.
        """
        from pyg_mlic.utils.io import atomic_np_savez
        from pyg_mlic.version import __version__

        path = Path(path)
        if path.suffix.lower() != ".npz":
            raise ValueError(f"label graph files are .npz (plain arrays, no pickle): got "
                             f"{str(path)!r}; name it e.g. {path.with_suffix('.npz').name!r}")
        d = self.data
        source = getattr(d, "source", None) if source is None else source
        arrays = {
            "format": np.array(self.FILE_FORMAT),
            "format_version": np.array(self.FILE_VERSION, dtype=np.int64),
            "pyg_mlic_version": np.array(str(__version__)),
            "classes": np.array(self.classes, dtype=np.str_),
            "counts": d.counts.detach().cpu().to(torch.int64).numpy(),
            "nums": d.nums.detach().cpu().to(torch.int64).numpy(),
            "tau": np.array(self.tau, dtype=np.float64),
            "p": np.array(self.p, dtype=np.float64),
            "scheme": np.array(self.scheme),
            "convention": np.array(self.convention),
            "split": np.array(str(self.split)),
            "source": np.array("" if source is None else str(source)),
            "propagation": self.propagation().detach().cpu().numpy(),
        }
        if d.x is not None:
            spec = getattr(d, "embeddings_spec", None) if embeddings_spec is None \
                else embeddings_spec
            arrays["vectors"] = d.x.detach().cpu().to(torch.float32).numpy()
            arrays["embeddings_spec"] = np.array("" if spec is None else str(spec))
        return atomic_np_savez(path, arrays, compress=compress)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "LabelGraph":
        r"""Read a label-graph ``.npz`` written by :meth:`save` (``pyg-mlic graph --out``).

        Only plain arrays are read (``allow_pickle=False``); the statistics are validated
        as by :meth:`from_counts`, the operator is rebuilt from them and compared with the
        stored ``propagation``. The returned graph remembers the file: ``file_info``
        (``path``, ``sha256`` of its bytes), ``data.source`` and ``data.embeddings_spec``.

        Raises:
            FileNotFoundError: no such file.
            pyg_mlic.errors.DatasetError: (one line, naming the file) not an ``.npz``, a
                pickle / ``torch.save`` file, an npz that is not a label graph, missing
                keys, wrong dtypes or shapes, invalid statistics, a format version newer
                than this pyg_mlic reads, or a ``propagation`` that disagrees with the
                statistics.
        """
        import hashlib
        import zipfile

        from pyg_mlic.errors import DatasetError

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"label graph file not found: {path}"
                                    + (" (a folder)" if path.is_dir() else ""))
        raw = path.read_bytes()
        rebuild = "rebuild it with `pyg-mlic graph ... --out FILE.npz`"
        if raw[:1] == b"\x80":
            raise DatasetError(f"{path}: a pickle / torch.save file (e.g. from the old "
                               f"`pyg-mlic graph --save`), which is never unpickled; label "
                               f"graph files are .npz now: {rebuild}")
        try:
            z = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise DatasetError(f"{path}: not a label-graph .npz ({e}); {rebuild}") from None
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise DatasetError(f"{path}: not a readable .npz file ({e})") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path}: a single .npy array, not a label-graph .npz; "
                               f"{rebuild}")
        with z:
            files = list(z.files)
            if any(f.endswith("data.pkl") for f in files):
                raise DatasetError(f"{path}: a torch.save archive (pickle inside), which is "
                                   f"never unpickled; label graph files are .npz: {rebuild}")

            def get(key: str) -> np.ndarray:
                try:
                    return z[key]
                except ValueError as e:  # an object array: would need pickle
                    raise DatasetError(f"{path}: key {key!r} cannot be read without "
                                       f"unpickling ({e})") from None

            def text(key: str) -> str:
                a = get(key)
                if a.ndim != 0 or a.dtype.kind != "U":
                    raise DatasetError(f"{path}: {key!r} must be a string, got "
                                       f"{a.dtype} {a.shape}")
                return str(a[()])

            def number(key: str, kinds: str = "fiu") -> float:
                a = get(key)
                if a.ndim != 0 or a.dtype.kind not in kinds:
                    raise DatasetError(f"{path}: {key!r} must be a number, got {a.dtype} "
                                       f"{a.shape}")
                return a[()].item()

            if "format" not in files or text("format") != cls.FILE_FORMAT:
                raise DatasetError(f"{path}: not a pyg_mlic label-graph file (keys "
                                   f"{sorted(files)[:12]}, no format={cls.FILE_FORMAT!r}); "
                                   f"build one with `pyg-mlic graph ... --out FILE.npz` or "
                                   f"LabelGraph.from_counts(...).save(FILE)")
            if "format_version" not in files:
                raise DatasetError(f"{path}: missing key 'format_version'")
            version = number("format_version", "iu")
            if version > cls.FILE_VERSION:
                raise DatasetError(f"{path}: label-graph format version {version} is newer "
                                   f"than this pyg_mlic reads (up to {cls.FILE_VERSION}): "
                                   f"upgrade pyg_mlic")
            if version < 1:
                raise DatasetError(f"{path}: invalid label-graph format version {version}")
            missing = [k for k in cls.FILE_KEYS if k not in files]
            if missing:
                raise DatasetError(f"{path}: missing keys {missing} (a label-graph file "
                                   f"holds {list(cls.FILE_KEYS)})")
            classes = get("classes")
            if classes.ndim != 1 or classes.dtype.kind != "U":
                raise DatasetError(f"{path}: 'classes' must be a 1-D string array [C], got "
                                   f"{classes.dtype} {classes.shape}")
            stats = {}
            for key in ("counts", "nums"):
                a = get(key)
                if a.dtype.kind not in "iu":
                    raise DatasetError(f"{path}: {key!r} must hold integer counts, got "
                                       f"{a.dtype}")
                stats[key] = a.astype(np.int64)
            C = len(classes)
            if stats["counts"].shape != (C, C):
                raise DatasetError(f"{path}: 'counts' must be [C, C] = [{C}, {C}] (C = "
                                   f"number of classes), got {list(stats['counts'].shape)}")
            vectors = None
            if "vectors" in files:
                vectors = get("vectors")
                if vectors.ndim != 2 or vectors.shape[0] != C or vectors.dtype.kind not in "fiu":
                    raise DatasetError(f"{path}: 'vectors' must be a numeric [C, d] matrix "
                                       f"with C = {C}, got {vectors.dtype} "
                                       f"{list(vectors.shape)}")
            settings = dict(tau=number("tau"), p=number("p"), scheme=text("scheme"),
                            convention=text("convention"))
            split = text("split")
            source = text("source") if "source" in files else ""
            spec = text("embeddings_spec") if "embeddings_spec" in files else None
            stored = get("propagation") if "propagation" in files else None
            try:
                graph = cls.from_counts(stats["counts"], stats["nums"], embeddings=vectors,
                                        classes=classes.tolist(), split=split, **settings)
            except (ValueError, TypeError) as e:
                raise DatasetError(f"{path}: {e}") from None
        if stored is not None:
            got = graph.propagation().numpy()
            if stored.shape != got.shape or stored.dtype.kind != "f":
                raise DatasetError(f"{path}: 'propagation' must be a float [C, C] = [{C}, "
                                   f"{C}] matrix, got {stored.dtype} {list(stored.shape)}")
            err = float(np.abs(stored.astype(np.float64) - got).max())
            if not np.isfinite(err) or err > 1e-6:
                raise DatasetError(f"{path}: the stored 'propagation' differs from the "
                                   f"operator recomputed from counts/nums/tau/p/scheme/"
                                   f"convention (max abs difference {err:.3g}): the file was "
                                   f"edited or written by another operator; {rebuild}")
        graph.data.source = source
        if spec is not None:
            graph.data.embeddings_spec = spec
        graph.file_info = {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest()}
        return graph
