r"""Multi-label classification metrics: mAP and the CP/CR/CF1/OP/OR/OF1 family.

These are the metrics every table of the implemented papers reports (ML-GCN,
Chen et al., CVPR 2019, Sec. 4.1; IA-GCN, Sec. 4.2, Eqs. (15)-(17); A-GCN;
IML-GCN; GM-MLIC): the mean of the per-class non-interpolated average
precisions (mAP), and precision / recall / F1, averaged per class (C*) and
overall (O*), for two prediction rules: "score above a threshold" and "the
:math:`k` highest-scoring labels of each image" (top-3 in the papers).

Two functions are public:

* :func:`average_precision` — per-class AP as a tensor, identical to
  :func:`sklearn.metrics.average_precision_score` applied column by column
  (ties included), fully vectorised (one sort of the score matrix, no Python
  loop over classes).
* :func:`multilabel_metrics` — everything at once, as a ``dict`` of Python
  floats, ready for ``json.dump``.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["average_precision", "multilabel_metrics", "format_table", "METRIC_COLUMNS",
           "UndefinedAPWarning"]

ArrayLike = Union[Tensor, np.ndarray, Sequence]

_SCORES_ARE = ("auto", "logits", "probabilities")

# On CPU, numpy's argsort (SIMD quicksort) ranks the [C, N] score matrix several times
# faster than torch.sort (see benchmarks/bench_metrics.py); other devices use torch.sort.
# Both give the same metrics: the order inside a tie group never matters here.
_NUMPY_SORT_ON_CPU = True


class UndefinedAPWarning(UserWarning):
    """Some classes have no (unmasked) positive sample: their AP is undefined.

    Such classes are left out of the mAP and of the per-class averages
    (CP, CR, CF1). Filter it with
    ``warnings.filterwarnings("ignore", category=UndefinedAPWarning)``.
    """


# --------------------------------------------------------------------------- #
# input handling
# --------------------------------------------------------------------------- #
def _as_tensor(x: ArrayLike, name: str, fn: str) -> Tensor:
    """``numpy`` array / sequence / tensor -> tensor (no copy when possible)."""
    if isinstance(x, Tensor):
        return x.detach()
    try:
        arr = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{fn}: `{name}` cannot be converted to an array: {e}") from e
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{fn}: `{name}` must hold numbers, got numpy dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{fn}: `{name}` must be real, got numpy dtype {arr.dtype}")
    if (not arr.flags.writeable or not arr.dtype.isnative
            or any(s < 0 for s in arr.strides)):
        # torch.from_numpy refuses negative strides / foreign byte order and warns on
        # read-only arrays; a private native copy avoids all three.
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr)


def _check_2d(t: Tensor, name: str, fn: str) -> None:
    if t.dim() != 2:
        hint = " (for a single class pass shape [N, 1])" if t.dim() == 1 else ""
        raise ValueError(f"{fn}: `{name}` must have shape [N, C], got shape "
                         f"{tuple(t.shape)}{hint}")


def _first_bad(bad: Tensor) -> Tuple[int, Tuple[int, int]]:
    idx = bad.nonzero()
    return int(idx.shape[0]), (int(idx[0, 0]), int(idx[0, 1]))


def _prepare(scores: ArrayLike, targets: ArrayLike, mask: Optional[ArrayLike],
             scores_are: str, fn: str) -> Tuple[Tensor, Tensor, Optional[Tensor], bool]:
    """Validate inputs.

    Returns:
        ``(s, tgt, mask, are_logits)``: ``s`` floating [N, C] (fp16/bf16 upcast to
        fp32, integers to fp64, fp32/fp64 kept); ``tgt`` [N, C] (bool, integer or
        float dtype) holding exactly 1 for unmasked positives and 0 elsewhere;
        ``mask`` bool [N, C] or ``None`` (``None`` also when nothing is masked);
        whether the scores are logits.
    """
    if scores_are not in _SCORES_ARE:
        raise ValueError(f"{fn}: `scores_are` must be one of {_SCORES_ARE}, "
                         f"got {scores_are!r}")
    s = _as_tensor(scores, "scores", fn)
    t = _as_tensor(targets, "targets", fn)
    _check_2d(s, "scores", fn)
    _check_2d(t, "targets", fn)
    if s.shape != t.shape:
        raise ValueError(f"{fn}: `scores` has shape {tuple(s.shape)} but `targets` "
                         f"has shape {tuple(t.shape)}; both must be [N, C]")
    n, c = s.shape
    if n == 0 or c == 0:
        raise ValueError(f"{fn}: empty input (`scores` has shape {(n, c)}); need at "
                         f"least one sample and one class")
    if s.is_complex() or t.is_complex():
        raise ValueError(f"{fn}: complex `scores`/`targets` are not supported")

    # ---- scores: working dtype --------------------------------------------------
    if s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()  # exact; AP is computed in at least fp32
    elif not s.is_floating_point():
        s = s.to(torch.float64)  # bool / integer scores (e.g. vote counts)
    lo, hi = torch.aminmax(s)  # one pass: NaN propagates, +-inf shows up in lo/hi
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        count, where = _first_bad(~torch.isfinite(s))
        raise ValueError(f"{fn}: `scores` contains {count} non-finite value(s) "
                         f"(NaN or inf), first at [sample, class] = {list(where)}")
    in_unit = lo >= 0.0 and hi <= 1.0
    if scores_are == "probabilities" and not in_unit:
        raise ValueError(f"{fn}: scores_are='probabilities' but `scores` lie in "
                         f"[{lo:g}, {hi:g}], outside [0, 1]; pass scores_are='logits' for logits")
    are_logits = scores_are == "logits" or (scores_are == "auto" and not in_unit)

    # ---- mask --------------------------------------------------------------------
    m: Optional[Tensor] = None
    if mask is not None:
        m = _as_tensor(mask, "mask", fn).to(s.device)
        _check_2d(m, "mask", fn)
        if m.shape != s.shape:
            raise ValueError(f"{fn}: `mask` has shape {tuple(m.shape)} but `scores` "
                             f"has shape {tuple(s.shape)}")
        if m.dtype != torch.bool:
            bad = (m != 0) & (m != 1)
            if bool(bad.any()):
                count, where = _first_bad(bad)
                raise ValueError(f"{fn}: `mask` must be boolean (True = evaluate, "
                                 f"False = ignore) or 0/1; {count} entries are neither, first at "
                                 f"[sample, class] = {list(where)}")
            m = m != 0
        if bool(m.all()):
            m = None

    # ---- targets -----------------------------------------------------------------
    t = t.to(s.device)
    if t.dtype != torch.bool:
        if t.is_floating_point():
            valid = False  # 0.5 passes a min/max test: check every value
        else:
            tlo, thi = torch.aminmax(t)  # one pass for the usual uint8 / int64 multi-hot
            valid = int(tlo) >= 0 and int(thi) <= 1
        if not valid:
            bad = (t != 0) & (t != 1)
            if m is not None:
                bad &= m  # masked (ignored) entries may hold anything, e.g. VOC's 0 / -1
            if bool(bad.any()):
                count, where = _first_bad(bad)
                value = t[where].item()
                raise ValueError(
                    f"{fn}: `targets` must be 0/1 (multi-hot); {count} unmasked "
                    f"entries are not, first at [sample, class] = {list(where)} with value "
                    f"{value!r}. For VOC-style labels (1 / -1 / 0 = difficult) pass "
                    f"targets=(labels == 1) and mask=(labels != 0).")
    if m is not None:
        t = (t == 1) & m
    return s, t, m, are_logits


def _threshold_in_dtype(threshold: float, are_logits: bool, dtype: torch.dtype) -> Tensor:
    r"""The ``dtype`` value :math:`v` with ``x > v  <=>  x > thr`` for every ``x`` of ``dtype``.

    ``thr`` is ``threshold`` for probabilities (exact) and :math:`\log(t / (1 - t))` for
    logits (``sigmoid(x) > t  <=>  x > logit(t)``; evaluated in float64, exact 0 at
    t = 0.5). Rounding it *down* to the largest representable :math:`v \le thr` makes the
    comparison exact, unlike rounding the Python float to nearest (fp32 ``0.1`` is above
    0.1, so a naive fp32 comparison would miss it).
    """
    if are_logits:
        if threshold == 0.0:
            thr = -math.inf
        elif threshold == 1.0:
            thr = math.inf
        else:
            thr = math.log(threshold) - math.log1p(-threshold)  # exact 0 at 0.5
    else:
        thr = float(threshold)
    v = torch.tensor(thr, dtype=torch.float64).to(dtype)
    if float(v) > thr:
        v = torch.nextafter(v, torch.tensor(-math.inf, dtype=dtype))
    return v


# --------------------------------------------------------------------------- #
# average precision
# --------------------------------------------------------------------------- #
class _Ranking(NamedTuple):
    """Every column sorted once, and where its positives landed."""

    vals: Tensor       # [C, N] scores sorted ascending per class (masked entries -inf, first)
    pos_flat: Tensor   # [M] int64 ascending: c * N + sorted position of every unmasked positive
    row_start: Tensor  # [C] int64: offset of class c's positives in pos_flat
    npos: Tensor       # [C] int64: unmasked positives per class
    ap: Tensor         # [C] float64: average precision, NaN where npos == 0


def _sort_rows(st: Tensor) -> Tuple[Tensor, Tensor]:
    """``st.sort(dim=1)`` (ascending) of a contiguous [C, N] matrix: (values, indices)."""
    if _NUMPY_SORT_ON_CPU and st.device.type == "cpu" and st.dtype in (torch.float32,
                                                                       torch.float64):
        order = torch.from_numpy(np.argsort(st.numpy(), axis=1)).long()
        return st.gather(1, order), order
    return st.sort(dim=1)


def _rank(s: Tensor, tgt: Tensor, mask: Optional[Tensor]) -> _Ranking:
    r"""Sort every class once and compute its AP (see :func:`average_precision`).

    ``s`` floating [N, C] (finite), ``tgt`` [N, C] with exactly 1 at unmasked
    positives and 0 elsewhere.

    The tie-group sum of :func:`average_precision` regrouped per positive: positive
    :math:`i` of class :math:`c` adds :math:`\mathrm{TP}_c(s_{ic}) / (N^+_c\,
    |\{j : s_{jc} \ge s_{ic}\}|)`, the precision at its own score with its whole tie
    group counted. Both counts come from positions in the ascending sort: if
    :math:`g` is the first position of the tie group, :math:`|\{j : s_{jc} \ge
    s_{ic}\}| = N - g` and :math:`\mathrm{TP}_c(s_{ic})` is the number of positives
    at positions :math:`\ge g`. So after one dense sort (plus one gather / nonzero to
    find the positives), all work is on the :math:`M \ll NC` positives, in float64.
    """
    n, c = s.shape
    # Sort the transposed contiguous [C, N] matrix along its last dim (with torch.sort
    # about twice as fast as sorting [N, C] along dim 0; numpy on CPU, see _sort_rows).
    # Masked entries go to -inf (scores are finite) with target 0: they sort first and
    # never count.
    st = s.t().contiguous()
    if mask is not None:
        if st.data_ptr() == s.data_ptr():  # s was already [C, N]-contiguous: don't write into it
            st = st.clone()
        st.masked_fill_(~mask.t(), -math.inf)
    vals, order = _sort_rows(st)
    del st
    hit = tgt.t().gather(1, order)  # [C, N] targets in score order
    del order
    pos_flat = hit.reshape(-1).nonzero().squeeze(1)  # ascending c * N + position
    del hit
    cls = torch.div(pos_flat, n, rounding_mode="floor")
    first = pos_flat - cls * n  # first position of the tie group; for now the own position
    npos = torch.bincount(cls, minlength=c)
    row_start = torch.cumsum(npos, 0) - npos

    # Positives tied with their left neighbour need the true start of their tie group:
    # one batched searchsorted, their scores padded into a [C, max tied per class] query.
    flat = vals.reshape(-1)
    v = flat[pos_flat]
    tied = (first > 0) & (flat[(pos_flat - 1).clamp(min=0)] == v)
    if bool(tied.any()):
        u = tied.nonzero().squeeze(1)
        cls_u = cls[u]
        count_u = torch.bincount(cls_u, minlength=c)
        col = torch.arange(u.numel(), device=u.device) - (torch.cumsum(count_u, 0) - count_u)[cls_u]
        query = vals.new_zeros(c, int(count_u.max()))
        query[cls_u, col] = v[u]
        first[u] = torch.searchsorted(vals, query, right=False)[cls_u, col]
    # TP at that score = positives of the class at positions >= first.
    tp = (row_start + npos)[cls] - torch.searchsorted(pos_flat, cls * n + first, right=False)
    precision = tp.to(torch.float64) / (n - first).to(torch.float64)
    num = torch.zeros(c, dtype=torch.float64, device=s.device).index_add_(0, cls, precision)
    ap = num / npos.to(torch.float64)  # 0 / 0 = NaN marks "no positive"
    return _Ranking(vals, pos_flat, row_start, npos, ap.clamp_(max=1.0))


def _threshold_counts(r: _Ranking, thr: Tensor) -> Tuple[Tensor, Tensor]:
    """Per class: (#scores > thr, #positives with score > thr), by binary search in ``r.vals``."""
    c, n = r.vals.shape
    first_above = torch.searchsorted(r.vals, thr.reshape(1, 1).expand(c, 1).contiguous(),
                                     right=True).squeeze(1)
    base = torch.arange(c, device=first_above.device) * n
    tp = r.row_start + r.npos - torch.searchsorted(r.pos_flat, base + first_above, right=False)
    return n - first_above, tp


def average_precision(scores: ArrayLike, targets: ArrayLike,
                      mask: Optional[ArrayLike] = None) -> Tensor:
    r"""Non-interpolated average precision of every class (column).

    For class :math:`c` with :math:`N^+_c` (unmasked) positives and distinct
    scores :math:`\tau_1 > \tau_2 > \dots > \tau_G`,

    .. math::
        \mathrm{AP}_c = \sum_{g=1}^{G}
            \frac{\mathrm{TP}_c(\tau_g) - \mathrm{TP}_c(\tau_{g-1})}{N^+_c}\;
            \frac{\mathrm{TP}_c(\tau_g)}{\bigl|\{i : s_{ic} \ge \tau_g\}\bigr|},
        \qquad \mathrm{TP}_c(\tau) = \bigl|\{i : s_{ic} \ge \tau,\ y_{ic} = 1\}\bigr|,

    with :math:`\mathrm{TP}_c(\tau_0) = 0`: precision is evaluated only where the
    score changes, so tied samples are ranked together. This is exactly
    :func:`sklearn.metrics.average_precision_score` on each column (ties included),
    the definition used by the ML-GCN evaluation code up to its tie handling.
    The ranking is computed on the scores as given (logits or probabilities give
    the same AP; applying a sigmoid in low precision can only create ties).

    Args:
        scores (Tensor or ndarray): :math:`(N, C)` real scores, any float dtype
            (fp16/bf16 are upcast to fp32, fp64 is kept so that ties are exactly
            the input's ties).
        targets (Tensor or ndarray): :math:`(N, C)` in :math:`\{0, 1\}` (bool, int
            or float).
        mask (Tensor or ndarray, optional): :math:`(N, C)` bool, ``False`` = ignore
            the entry entirely (e.g. VOC "difficult"). (default: :obj:`None`)

    Returns:
        Tensor: float64 :math:`(C)`. Classes without any unmasked positive have an
        undefined AP: their entry is ``NaN`` (use :func:`torch.nanmean`) and an
        :class:`UndefinedAPWarning` names them. :func:`multilabel_metrics` turns
        these into ``None`` instead.

    Raises:
        ValueError: on non-finite scores, targets outside :math:`\{0, 1\}`,
            shape mismatches or empty input.
    """
    s, tgt, m, _ = _prepare(scores, targets, mask, "auto", "average_precision")
    r = _rank(s, tgt, m)
    _warn_undefined((r.npos == 0).nonzero().flatten().tolist(), None, stacklevel=3)
    return r.ap


def _warn_undefined(classes: List[int], class_names: Optional[Sequence[str]],
                    stacklevel: int) -> None:
    if not classes:
        return
    named = [f"{i} ({class_names[i]})" if class_names is not None else str(i) for i in classes]
    shown = ", ".join(named[:20]) + (f", ... ({len(named)} in total)" if len(named) > 20 else "")
    warnings.warn(f"{len(classes)} class(es) have no (unmasked) positive sample, so their AP is "
                  f"undefined; they are left out of mAP, CP, CR and CF1: {shown}",
                  UndefinedAPWarning, stacklevel=stacklevel)


# --------------------------------------------------------------------------- #
# everything
# --------------------------------------------------------------------------- #
def _f1(p: float, r: float) -> float:
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0


def _prf(tp: Tensor, npred: Tensor, npos: Tensor, evaluated: Tensor) -> Tuple[float, ...]:
    """CP, CR, CF1, OP, OR, OF1 from per-class counts ([C] each) of one prediction rule."""
    tp, npred, npos = tp.to(torch.float64), npred.to(torch.float64), npos.to(torch.float64)
    per_class_p = tp / npred.clamp(min=1)  # 0 when nothing is predicted (then tp = 0)
    per_class_r = tp / npos.clamp(min=1)
    cp = float(per_class_p[evaluated].mean())
    cr = float(per_class_r[evaluated].mean())
    tp_all, npred_all, npos_all = float(tp.sum()), float(npred.sum()), float(npos.sum())
    op = tp_all / npred_all if npred_all > 0 else 0.0
    or_ = tp_all / npos_all  # > 0: at least one class has a positive
    return cp, cr, _f1(cp, cr), op, or_, _f1(op, or_)


def multilabel_metrics(scores: ArrayLike, targets: ArrayLike, mask: Optional[ArrayLike] = None,
                       threshold: float = 0.5, topk: Optional[int] = 3, *,
                       scores_are: str = "auto", topk_requires_threshold: bool = True,
                       class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    r"""mAP, CP, CR, CF1, OP, OR, OF1 and their top-:math:`k` versions.

    The evaluation protocol of ML-GCN (Chen et al., CVPR 2019, Sec. 4.1) and the
    papers that follow it (IA-GCN Eqs. (15)-(17), A-GCN, IML-GCN, GM-MLIC).

    **mAP** is the mean over the evaluated classes of the non-interpolated average
    precision of :func:`average_precision` (sklearn's definition, ties included):

    .. math::
        \mathrm{mAP} = \frac{1}{|\mathcal{C}|}\sum_{c \in \mathcal{C}} \mathrm{AP}_c,
        \qquad \mathcal{C} = \{c : N^+_c > 0\}.

    **Threshold metrics.** Label :math:`c` is predicted for image :math:`i` when its
    probability is *strictly* above ``threshold``, :math:`\hat y_{ic} = [p_{ic} > t]`.
    For logits :math:`x_{ic}` this is :math:`x_{ic} > \log\frac{t}{1-t}`, which is
    what is evaluated (no sigmoid is applied; the comparison against the float
    ``threshold`` is exact in the scores' dtype). With :math:`N^{cor}_c`,
    :math:`N^{pre}_c`, :math:`N^{gt}_c` the correctly predicted, predicted and
    ground-truth positives of class :math:`c` (IA-GCN Eqs. (15)-(17)):

    .. math::
        \mathrm{CP} = \frac{1}{|\mathcal{C}|}\sum_{c \in \mathcal{C}}
            \frac{N^{cor}_c}{N^{pre}_c}, \quad
        \mathrm{CR} = \frac{1}{|\mathcal{C}|}\sum_{c \in \mathcal{C}}
            \frac{N^{cor}_c}{N^{gt}_c}, \quad
        \mathrm{CF1} = \frac{2\,\mathrm{CP}\,\mathrm{CR}}{\mathrm{CP} + \mathrm{CR}},

    .. math::
        \mathrm{OP} = \frac{\sum_c N^{cor}_c}{\sum_c N^{pre}_c}, \quad
        \mathrm{OR} = \frac{\sum_c N^{cor}_c}{\sum_c N^{gt}_c}, \quad
        \mathrm{OF1} = \frac{2\,\mathrm{OP}\,\mathrm{OR}}{\mathrm{OP} + \mathrm{OR}},

    i.e. CF1 is the harmonic mean of the averages (as in the papers and the ML-GCN
    code), not the mean of per-class F1 scores. A class with :math:`N^{pre}_c = 0`
    has precision 0, and any F1 whose precision and recall are both 0 is 0.
    The per-class averages run over the same classes :math:`\mathcal{C}` as mAP;
    the overall sums run over all classes (false positives of a class without
    positives still lower OP).

    **Top-k metrics** (keys ``CP_top{k}`` ... ``OF1_top{k}``): the same formulas with
    :math:`\hat y_{ic} = 1` for label :math:`c` of image :math:`i` when it is among the
    ``topk`` highest-scoring (unmasked) labels of the image **and** its score passes the
    threshold — the papers' protocol: ML-GCN's released evaluation (``overall_topk``, which
    tests ``logit >= 0`` where this function uses ``>``) and every paper that copies it
    (A-GCN, IA-GCN, IML-GCN, GM-MLIC). ``topk_requires_threshold=False`` drops the
    threshold condition (the top-:math:`k` labels are predicted whatever their scores): on
    COCO val2014, where many images hold fewer than 3 labels, even a perfect ranker is then
    capped at OP-3 75.8 (measured on the real labels, see the tests), while the papers'
    rule gives it 100. Ties at the :math:`k`-th score are broken by :func:`torch.topk`.
    With :math:`k \ge C` and ``topk_requires_threshold=False`` every (unmasked) label is
    predicted.

    **Masked entries** (``mask == False``) count nowhere: not in any AP ranking, not
    as prediction, positive or negative, and they never take a top-:math:`k` slot (an
    image with fewer than :math:`k` unmasked labels predicts just those).

    Args:
        scores (Tensor or ndarray): :math:`(N, C)` logits or probabilities, any float
            dtype (fp16/bf16 upcast to fp32; fp64 kept). numpy arrays and torch tensors
            (any device) are accepted.
        targets (Tensor or ndarray): :math:`(N, C)` multi-hot, values in :math:`\{0, 1\}`
            (masked entries may hold anything).
        mask (Tensor or ndarray, optional): :math:`(N, C)` bool, ``False`` = ignore
            (e.g. VOC "difficult"). (default: :obj:`None`)
        threshold (float, optional): probability threshold in :math:`[0, 1]`; applies to
            probabilities even when logits are given. (default: :obj:`0.5`)
        topk (int, optional): :math:`k \ge 1` of the top-:math:`k` metrics (the key names
            use it as given, also when :math:`k > C`);
            ``None`` skips them. (default: :obj:`3`)
        scores_are (str, optional): ``"logits"``, ``"probabilities"`` or ``"auto"``
            (probabilities iff every score lies in :math:`[0, 1]`, else logits; logits
            that all happen to lie in :math:`[0, 1]` need ``"logits"``).
            (default: :obj:`"auto"`)
        topk_requires_threshold (bool, optional): the papers' top-:math:`k` rule (a top-k
            label counts only if it also passes ``threshold``); ``False``: the plain
            top-:math:`k` rule. (default: :obj:`True`)
        class_names (sequence of str, optional): used in the warning about classes
            without positives. (default: :obj:`None`)

    Returns:
        dict: ``"mAP"``, ``"CP"``, ``"CR"``, ``"CF1"``, ``"OP"``, ``"OR"``, ``"OF1"``, then
        ``"CP_top{k}"`` ... ``"OF1_top{k}"`` (if ``topk``), all Python floats in
        :math:`[0, 1]`; ``"AP"``: list of :math:`C` per-class APs (``None`` for classes
        without positives); ``"num_classes_evaluated"``: :math:`|\mathcal{C}|` (int).
        Never NaN. Classes without positives are named in one
        :class:`UndefinedAPWarning` per call.

    Raises:
        ValueError: non-finite scores, targets outside :math:`\{0, 1\}`, shape mismatch,
            empty input, a bad ``threshold`` / ``topk`` / ``scores_are``, probabilities
            outside :math:`[0, 1]`, or no class with a positive at all.

    Example:
        >>> import torch
        >>> from pyg_mlic.metrics import multilabel_metrics
        >>> y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
        >>> m = multilabel_metrics(torch.randn(3, 3), y, topk=2)
        >>> sorted(k for k in m if k.endswith("_top2"))
        ['CF1_top2', 'CP_top2', 'CR_top2', 'OF1_top2', 'OP_top2', 'OR_top2']
    """
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) \
            or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"multilabel_metrics: `threshold` must be a probability in [0, 1], "
                         f"got {threshold!r}")
    s, tgt, m, are_logits = _prepare(scores, targets, mask, scores_are, "multilabel_metrics")
    n, c = s.shape
    if topk is not None:
        if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) \
                or int(topk) < 1:
            raise ValueError(f"multilabel_metrics: `topk` must be a positive int or None, "
                             f"got {topk!r}")
        topk = int(topk)
    if class_names is not None and len(class_names) != c:
        raise ValueError(f"multilabel_metrics: `class_names` has {len(class_names)} names for "
                         f"C={c} classes")

    r = _rank(s, tgt, m)
    evaluated = r.npos > 0
    num_eval = int(evaluated.sum())
    if num_eval == 0:
        raise ValueError(f"multilabel_metrics: no class has an (unmasked) positive sample among "
                         f"the N={n} samples; mAP and recall are undefined")
    _warn_undefined((~evaluated).nonzero().flatten().tolist(), class_names, stacklevel=3)

    out: Dict[str, Any] = {"mAP": float(r.ap[evaluated].mean())}
    names = ("CP", "CR", "CF1", "OP", "OR", "OF1")

    # threshold rule: counted in the sorted columns (no [N, C] prediction matrix needed)
    thr = _threshold_in_dtype(float(threshold), are_logits, s.dtype).to(s.device)
    npred, tp = _threshold_counts(r, thr)
    out.update(zip(names, _prf(tp, npred, r.npos, evaluated)))

    # top-k rule: the k best unmasked labels of each image
    if topk is not None:
        ranked = s if m is None else s.masked_fill(~m, -math.inf)
        idx = torch.topk(ranked, min(topk, c), dim=1, sorted=False).indices  # [N, k]
        keep = None if m is None else m.gather(1, idx)
        if topk_requires_threshold:
            above = s.gather(1, idx) > thr
            keep = above if keep is None else keep & above
        cls = idx if keep is None else idx[keep]
        hit = tgt.gather(1, idx) != 0
        hit = hit if keep is None else hit[keep]
        npred_k = torch.bincount(cls.reshape(-1), minlength=c)
        tp_k = torch.bincount(cls[hit], minlength=c)
        out.update((f"{k}_top{topk}", v) for k, v in zip(names, _prf(tp_k, npred_k, r.npos,
                                                                      evaluated)))

    out["AP"] = [float(a) if e else None for a, e in zip(r.ap.tolist(), evaluated.tolist())]
    out["num_classes_evaluated"] = num_eval
    return out


#: the columns of the papers' tables (all labels), in order
METRIC_COLUMNS = ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"]


def format_table(rows: Sequence, topk: int = 3) -> str:
    """The papers' results table (values in %): ``rows`` is ``[(name, metrics), ...]``
    with ``metrics`` dicts of :func:`multilabel_metrics`; columns mAP, CP, CR, CF1, OP, OR,
    OF1, then the top-``k`` ones (``-`` where a row lacks them). A row whose metrics carry
    ``selection_biased = True`` (the engine's final evaluation on the validation split that
    chose the weights) is starred, with a footnote."""
    top = [f"{c}_top{topk}" for c in METRIC_COLUMNS[1:]]
    width = max([len("Method")] + [len(str(n)) for n, _ in rows]) + 2
    head1 = " " * width + f"{'All':^{7 * 7}}|{'Top-' + str(topk):^{6 * 7}}"
    head2 = f"{'Method':<{width}}" + "".join(f"{c:>7}" for c in METRIC_COLUMNS) + "|" + \
        "".join(f"{c:>7}" for c in METRIC_COLUMNS[1:])
    lines = [head1, head2, "-" * len(head2)]
    biased = False
    for name, m in rows:
        vals = "".join(f"{100 * m[c]:7.1f}" for c in METRIC_COLUMNS)
        tvals = "".join(f"{100 * m[c]:7.1f}" if c in m else "      -" for c in top)
        mark = "*" if m.get("selection_biased") else ""
        biased = biased or bool(mark)
        lines.append(f"{str(name) + mark:<{width}}{vals}|{tvals}")
    if biased:
        lines.append("* SELECTION-BIASED: evaluated on the validation split that chose the "
                     "weights (no test split was given)")
    return "\n".join(lines)
