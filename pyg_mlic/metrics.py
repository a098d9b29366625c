r"""Multi-label classification metrics: mAP and the CP/CR/CF1/OP/OR/OF1 family.

These are the metrics every table of the implemented papers reports (ML-GCN,
Chen et al., CVPR 2019, Sec. 4.1; IA-GCN, Sec. 4.2, Eqs. (15)-(17); A-GCN;
IML-GCN; GM-MLIC): the mean of the per-class non-interpolated average
precisions (mAP), and precision / recall / F1, averaged per class (C*) and
overall (O*), for two prediction rules: "score above a threshold" and "the
:math:`k` highest-scoring labels of each image" (top-3 in the papers).

The public functions:

* :func:`average_precision` — per-class AP as a tensor, identical to
  :func:`sklearn.metrics.average_precision_score` applied column by column
  (ties included), fully vectorised (one sort of the score matrix, no Python
  loop over classes).
* :func:`multilabel_metrics` — everything at once, as a ``dict`` of Python
  floats, ready for ``json.dump``; one threshold for every class (the papers'
  0.5) or one per class.
* :func:`calibrate_thresholds` — per-class (F1-optimal) and global (OF1-optimal)
  probability thresholds chosen on a *validation* split, exactly (every distinct
  score is tried) and vectorised.
* :func:`long_tail_map` — mAP of the head / medium / tail classes, grouped by
  their training-label frequency.
* :func:`paired_bootstrap_map` — the mAP difference of two models on the same test
  images with a paired bootstrap confidence interval (is a gap larger than the
  test split's sampling noise?).
* :func:`format_table`, :func:`format_long_tail` — the printed tables.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["average_precision", "multilabel_metrics", "calibrate_thresholds", "long_tail_map",
           "paired_bootstrap_map", "format_table", "format_long_tail", "METRIC_COLUMNS",
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
    thr = _score_threshold(threshold, are_logits)
    v = torch.tensor(thr, dtype=torch.float64).to(dtype)
    if float(v) > thr:
        v = torch.nextafter(v, torch.tensor(-math.inf, dtype=dtype))
    return v


def _score_threshold(threshold: float, are_logits: bool) -> float:
    """The probability ``threshold`` on the scores' scale, in float64 (see above)."""
    if not are_logits:
        return float(threshold)
    if threshold == 0.0:
        return -math.inf
    if threshold == 1.0:
        return math.inf
    return math.log(threshold) - math.log1p(-threshold)  # exact 0 at 0.5


def _thresholds_in_dtype(thresholds: Tensor, are_logits: bool, dtype: torch.dtype) -> Tensor:
    """:func:`_threshold_in_dtype` of every entry of a float64 [C] vector of probability
    thresholds (the same exact round-down, so class c with threshold t compares exactly as
    a scalar threshold t does)."""
    thr = torch.tensor([_score_threshold(t, are_logits) for t in thresholds.tolist()],
                       dtype=torch.float64, device=thresholds.device)
    v = thr.to(dtype)
    return torch.where(v.to(torch.float64) > thr,
                       torch.nextafter(v, torch.full_like(v, -math.inf)), v)


def _check_threshold(threshold: Any, fn: str) -> Union[float, Tensor]:
    """A probability in [0, 1] (Python float) or a vector of them (float64 tensor; its
    length is checked against C by the caller)."""
    if isinstance(threshold, Tensor) and threshold.dim() == 0:
        threshold = threshold.item()
    elif isinstance(threshold, np.ndarray) and threshold.ndim == 0:
        threshold = threshold.item()
    if isinstance(threshold, bool):
        raise ValueError(f"{fn}: `threshold` must be a probability in [0, 1] or a [C] sequence "
                         f"of them, got {threshold!r}")
    if isinstance(threshold, numbers.Real):
        if not 0.0 <= float(threshold) <= 1.0:  # NaN fails too
            raise ValueError(f"{fn}: `threshold` must be a probability in [0, 1], "
                             f"got {threshold!r}")
        return float(threshold)
    if isinstance(threshold, (str, bytes)) or not isinstance(
            threshold, (Tensor, np.ndarray, Sequence)):
        raise ValueError(f"{fn}: `threshold` must be a probability in [0, 1] or a [C] sequence "
                         f"of them (one per class), got {type(threshold).__name__}")
    t = _as_tensor(threshold, "threshold", fn)
    if t.dim() != 1:
        raise ValueError(f"{fn}: a per-class `threshold` must have shape [C], got shape "
                         f"{tuple(t.shape)}")
    t = t.detach().to("cpu", torch.float64)
    bad = ~((t >= 0.0) & (t <= 1.0))  # NaN is bad
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{fn}: per-class `threshold` values must be probabilities in [0, 1]; "
                         f"{int(bad.sum())} are not, first class {i} with {float(t[i])!r}")
    return t


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
    """Per class: (#scores > thr, #positives with score > thr), by binary search in ``r.vals``;
    ``thr`` is one threshold (0-d) or one per class ([C])."""
    c, n = r.vals.shape
    first_above = torch.searchsorted(r.vals, thr.reshape(-1, 1).expand(c, 1).contiguous(),
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
                       threshold: Union[float, ArrayLike] = 0.5, topk: Optional[int] = 3, *,
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

    **Per-class thresholds.** ``threshold`` may also be a vector :math:`(t_c)_{c=1}^{C}`
    (e.g. the ``"per_class"`` entry of :func:`calibrate_thresholds`): then
    :math:`\hat y_{ic} = [p_{ic} > t_c]`, in the threshold rule and in the top-:math:`k`
    rule's threshold condition alike; the formulas below are unchanged.

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
        threshold (float or sequence, optional): probability threshold in :math:`[0, 1]`;
            applies to probabilities even when logits are given. A :math:`(C)` sequence /
            array / tensor gives one threshold per class. (default: :obj:`0.5`)
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
    threshold = _check_threshold(threshold, "multilabel_metrics")
    s, tgt, m, are_logits = _prepare(scores, targets, mask, scores_are, "multilabel_metrics")
    n, c = s.shape
    if isinstance(threshold, Tensor) and threshold.numel() != c:
        raise ValueError(f"multilabel_metrics: per-class `threshold` has {threshold.numel()} "
                         f"values for C={c} classes")
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
    if isinstance(threshold, Tensor):  # [C]: one per class
        thr = _thresholds_in_dtype(threshold, are_logits, s.dtype).to(s.device)
    else:
        thr = _threshold_in_dtype(threshold, are_logits, s.dtype).to(s.device)
    npred, tp = _threshold_counts(r, thr)
    out.update(zip(names, _prf(tp, npred, r.npos, evaluated)))

    # top-k rule: the k best unmasked labels of each image
    if topk is not None:
        ranked = s if m is None else s.masked_fill(~m, -math.inf)
        idx = torch.topk(ranked, min(topk, c), dim=1, sorted=False).indices  # [N, k]
        keep = None if m is None else m.gather(1, idx)
        if topk_requires_threshold:
            above = s.gather(1, idx) > (thr if thr.dim() == 0 else thr[idx])
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


# --------------------------------------------------------------------------- #
# threshold calibration
# --------------------------------------------------------------------------- #
def _f1_optimal(vals: Tensor, hit: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""The F1-optimal probability threshold of every row (see :func:`calibrate_thresholds`).

    ``vals`` float64 [R, L] probabilities sorted ascending per row (ignored entries
    ``-inf``, which sort first); ``hit`` int64 [R, L] 1 at the positives (0 at ignored
    entries). Returns ``(threshold, F1 at it, positives)``, each [R].

    Candidates are :math:`t = 0` and every value :math:`u` of the row; for a candidate the
    predicted entries (:math:`p > t`) are those at positions :math:`\ge e`, :math:`e` =
    the first position holding a value :math:`> t` (one batched binary search), so
    :math:`N^{pre} = L - e` and :math:`\mathrm{TP} = N^+ - (\text{positives before } e)`.
    """
    r, n = vals.shape
    npos = hit.sum(1)
    cum = torch.zeros(r, n + 1, dtype=torch.int64, device=vals.device)
    torch.cumsum(hit, 1, out=cum[:, 1:])
    cand = torch.cat([vals.new_zeros(r, 1), vals], 1)  # ascending after the -inf entries
    end = torch.searchsorted(vals, cand, right=True)  # [R, L + 1]
    tp = (npos.unsqueeze(1) - cum.gather(1, end)).to(torch.float64)
    denom = ((n - end) + npos.unsqueeze(1)).to(torch.float64)
    f1 = torch.where(denom > 0, 2.0 * tp / denom.clamp(min=1.0), torch.zeros_like(tp))
    f1.masked_fill_(torch.isinf(cand), -1.0)  # an ignored entry is no candidate
    # argmax returns the first maximum: on the reversed candidates, the largest threshold
    j = (n - torch.argmax(f1.flip(1), dim=1)).unsqueeze(1)
    best = f1.gather(1, j).squeeze(1)
    lo = cand.gather(1, j).squeeze(1)
    e = end.gather(1, j)
    hi = torch.where(e.squeeze(1) < n, vals.gather(1, e.clamp(max=n - 1)).squeeze(1),
                     torch.ones_like(lo))
    mid = 0.5 * (lo + hi)  # same predictions on this split for every t in [lo, hi)
    return torch.where(mid < hi, mid, lo), best, npos


def calibrate_thresholds(scores: ArrayLike, targets: ArrayLike, mask: Optional[ArrayLike] = None,
                         *, scores_are: str = "auto") -> Dict[str, Any]:
    r"""Probability thresholds that maximise F1 on a (validation) split: one per class and
    one global.

    Choose them on a **validation** split and apply them to the test split
    (``multilabel_metrics(test_scores, test_targets, threshold=t["per_class"])``); choosing
    them on the split they are evaluated on makes the numbers optimistic.

    With the prediction rule of :func:`multilabel_metrics`, :math:`\hat y_{ic} = [p_{ic} >
    t]`, class :math:`c` at threshold :math:`t` has :math:`\mathrm{TP}_c(t)` correct and
    :math:`N^{pre}_c(t)` predicted labels among its :math:`N^+_c` (unmasked) positives, and

    .. math::
        \mathrm{F1}_c(t) = \frac{2\,P_c R_c}{P_c + R_c}
            = \frac{2\,\mathrm{TP}_c(t)}{N^{pre}_c(t) + N^+_c},
        \qquad
        \mathrm{OF1}(t) = \frac{2 \sum_c \mathrm{TP}_c(t)}
            {\sum_c N^{pre}_c(t) + \sum_c N^+_c}

    (precision :math:`P_c = \mathrm{TP}_c / N^{pre}_c`, recall :math:`R_c = \mathrm{TP}_c /
    N^+_c`; OF1 is the overall F1 of :func:`multilabel_metrics`, the harmonic mean of OP
    and OR). The predictions change only where :math:`t` crosses a score, so with
    :math:`u_1 < \dots < u_G` the distinct (unmasked) probabilities of class :math:`c` the
    search over :math:`\{0, u_1, \dots, u_G\}` is exact:

    .. math::
        t^*_c = \operatorname*{arg\,max}_{t \in \{0, u_1, \dots, u_G\}} \mathrm{F1}_c(t),
        \qquad
        t^*_{\text{global}} = \operatorname*{arg\,max}_{t} \mathrm{OF1}(t)

    (the global search runs over the distinct probabilities of all unmasked entries of all
    classes, the overall sums over all classes as in :func:`multilabel_metrics`). Every
    :math:`t` in :math:`[u_g, u_{g+1})` (:math:`u_0 = 0`, :math:`u_{G+1} = 1`) predicts the
    same labels on this split; the threshold returned is the midpoint
    :math:`(u_g + u_{g+1}) / 2` of the optimal interval, farthest from the scores it
    separates. Ties in F1 go to the largest threshold (fewest predicted labels). One sort
    per class and batched binary searches, :math:`O(NC \log N)`, no Python loop over
    classes or thresholds.

    The per-class thresholds maximise each class's own F1; they do not in general maximise
    CF1 (the harmonic mean of the class-averaged precision and recall, not a sum over
    classes). **Fallback:** a class with no (unmasked) positive in the split (its F1 is 0
    whatever the threshold), or whose best F1 is 0, gets the global threshold; such classes
    are listed in ``"fallback_classes"``.

    Probabilities are computed in float64 (``sigmoid`` of the logits); logits above about
    36.7 all map to probability 1 there and count as tied, as they do for any probability
    threshold.

    Args:
        scores (Tensor or ndarray): :math:`(N, C)` logits or probabilities of the split.
        targets (Tensor or ndarray): :math:`(N, C)` multi-hot, in :math:`\{0, 1\}`.
        mask (Tensor or ndarray, optional): :math:`(N, C)` bool, ``False`` = ignore the entry
            (it counts nowhere: no prediction, positive or candidate). (default: :obj:`None`)
        scores_are (str, optional): ``"logits"``, ``"probabilities"`` or ``"auto"`` (as in
            :func:`multilabel_metrics`). (default: :obj:`"auto"`)

    Returns:
        dict: ``"per_class"`` (list of :math:`C` probability thresholds, to pass as
        ``threshold=`` to :func:`multilabel_metrics`), ``"global"`` (float),
        ``"per_class_F1"`` (each class's F1 on this split at its threshold; ``None`` for
        classes without positives), ``"global_OF1"`` (OF1 on this split at the global
        threshold), ``"fallback_classes"`` (indices), ``"num_samples"``.

    Raises:
        ValueError: as :func:`multilabel_metrics` for bad input, or when the split holds no
            (unmasked) positive at all.

    Example:
        >>> from pyg_mlic.metrics import calibrate_thresholds
        >>> t = calibrate_thresholds([[0.9], [0.6], [0.4], [0.2]], [[1], [0], [1], [0]])
        >>> t["per_class"], t["per_class_F1"]  # predict p > 0.3: P = 2/3, R = 1
        ([0.30000000000000004], [0.8])
    """
    fn = "calibrate_thresholds"
    s, tgt, m, are_logits = _prepare(scores, targets, mask, scores_are, fn)
    n, c = s.shape
    p = s.to(torch.float64)
    if are_logits:
        p = torch.sigmoid(p)
    hit = (tgt != 0).to(torch.int64)
    if int(hit.sum()) == 0:
        raise ValueError(f"{fn}: no (unmasked) positive label among the N={n} samples; there "
                         f"is nothing to calibrate on")

    # per class: every column sorted once (ignored entries -inf, first)
    pt = p.t().contiguous()
    if m is not None:
        pt.masked_fill_(~m.t(), -math.inf)
    vals, order = _sort_rows(pt)
    thr_c, f1_c, npos_c = _f1_optimal(vals, hit.t().gather(1, order))
    del vals, order, pt

    # global: the unmasked entries of all classes pooled
    flat, flat_hit = (p.reshape(-1), hit.reshape(-1)) if m is None else (p[m], hit[m])
    gvals, gorder = _sort_rows(flat.unsqueeze(0))
    thr_g, of1_g, _ = _f1_optimal(gvals, flat_hit.unsqueeze(0).gather(1, gorder))
    g = float(thr_g[0])

    fallback = (npos_c == 0) | (f1_c <= 0)
    per_class = torch.where(fallback, torch.full_like(thr_c, g), thr_c)
    return {
        "per_class": per_class.tolist(),
        "global": g,
        "per_class_F1": [float(f) if k > 0 else None
                         for f, k in zip(f1_c.tolist(), npos_c.tolist())],
        "global_OF1": float(of1_g[0]),
        "fallback_classes": fallback.nonzero().flatten().tolist(),
        "num_samples": n,
    }


# --------------------------------------------------------------------------- #
# long tail
# --------------------------------------------------------------------------- #
#: the class groups of :func:`long_tail_map`, most frequent first
LONG_TAIL_GROUPS = ("head", "medium", "tail")


def long_tail_map(ap_per_class: ArrayLike, train_counts: ArrayLike,
                  bounds: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    r"""mAP of the head, medium and tail classes, grouped by training-label frequency.

    With :math:`n_c` the number of *training* images holding label :math:`c` (unmasked
    positives) and bounds :math:`b_1 \le b_2`,

    .. math::
        \text{tail} = \{c : n_c < b_1\}, \quad
        \text{medium} = \{c : b_1 \le n_c < b_2\}, \quad
        \text{head} = \{c : n_c \ge b_2\},

    and each group's mAP is the mean AP of its classes with a defined AP. By default
    :math:`b_1, b_2` are the terciles of the :math:`n_c` (the :math:`1/3` and :math:`2/3`
    quantiles, :func:`numpy.quantile` with linear interpolation): with :math:`3k` distinct
    counts each group holds :math:`k` classes. Classes with equal counts always share a
    group, so ties can leave a group smaller (or empty: its mAP is then ``None``). A count
    held by two or more classes that falls *on* the lower tercile (a block of ties
    straddling it, as the many classes with zero or one training positive of a long-tailed
    set do) goes to the tail: :math:`b_1` moves up to the next larger count (and
    :math:`b_2` to at least :math:`b_1`), so that the rarest classes are never reported as
    medium or head. When every class has the same count there is no tail: all are head.

    Args:
        ap_per_class (sequence): :math:`(C)` per-class AP (the ``"AP"`` list of
            :func:`multilabel_metrics`); ``None`` / NaN = undefined (no positive in the
            evaluated split): such classes are left out of the means and counted in
            ``"num_undefined"``.
        train_counts (sequence): :math:`(C)` positives per class in the training split.
        bounds (pair of float, optional): :math:`(b_1, b_2)` in training-count units
            instead of the terciles. (default: :obj:`None`)

    Returns:
        dict: ``"head"``, ``"medium"``, ``"tail"`` (float mAP in :math:`[0, 1]` or
        ``None`` when the group has no class with a defined AP), ``"bounds"``
        (:math:`[b_1, b_2]`), ``"rule"`` (``"terciles"`` or ``"given"``),
        ``"num_classes"`` (classes with a defined AP per group), ``"num_undefined"``
        (classes left out per group).

    Example:
        >>> from pyg_mlic.metrics import long_tail_map
        >>> lt = long_tail_map([1.0, 0.5, 0.5, 0.25, 0.25, None], [60, 50, 30, 20, 5, 1])
        >>> [round(b, 2) for b in lt["bounds"]]  # terciles of the training counts
        [15.0, 36.67]
        >>> lt["head"], lt["medium"], lt["tail"], lt["num_undefined"]["tail"]
        (0.75, 0.375, 0.25, 1)
    """
    fn = "long_tail_map"
    try:
        ap = np.array([np.nan if a is None else float(a) for a in
                       (ap_per_class.tolist() if hasattr(ap_per_class, "tolist")
                        else ap_per_class)], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{fn}: `ap_per_class` must be a [C] sequence of numbers or None: "
                         f"{e}") from None
    counts = np.asarray(train_counts.cpu().numpy() if isinstance(train_counts, Tensor)
                        else train_counts)
    if counts.ndim != 1 or not (np.issubdtype(counts.dtype, np.number)
                                or counts.dtype == np.bool_):
        raise ValueError(f"{fn}: `train_counts` must be a [C] vector of numbers, got shape "
                         f"{counts.shape} dtype {counts.dtype}")
    counts = counts.astype(np.float64)
    if counts.shape != ap.shape:
        raise ValueError(f"{fn}: {ap.size} APs but {counts.size} training counts; both must "
                         f"have one entry per class")
    if ap.size == 0:
        raise ValueError(f"{fn}: no classes")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"{fn}: `train_counts` must be finite and >= 0")
    if bounds is None:
        lo, hi = (float(b) for b in np.quantile(counts, [1.0 / 3.0, 2.0 / 3.0]))
        values, held = np.unique(counts, return_counts=True)
        if bool(((values == lo) & (held > 1)).any()) and bool((values > lo).any()):
            # ties on the lower tercile join the tail (zero-positive classes never head)
            lo = float(values[values > lo][0])
            hi = max(hi, lo)
        rule = "terciles"
    else:
        try:
            lo, hi = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise ValueError(f"{fn}: `bounds` must be two numbers (b1, b2) with b1 <= b2 "
                             f"(tail: n < b1, head: n >= b2), got {bounds!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"{fn}: `bounds` must be two finite numbers with b1 <= b2, "
                             f"got {bounds!r}")
        rule = "given"
    groups = {"head": counts >= hi, "medium": (counts >= lo) & (counts < hi),
              "tail": counts < lo}
    defined = ~np.isnan(ap)
    out: Dict[str, Any] = {}
    for name in LONG_TAIL_GROUPS:
        sel = groups[name] & defined
        out[name] = float(ap[sel].mean()) if sel.any() else None
    out["bounds"] = [lo, hi]
    out["rule"] = rule
    out["num_classes"] = {k: int((groups[k] & defined).sum()) for k in LONG_TAIL_GROUPS}
    out["num_undefined"] = {k: int((groups[k] & ~defined).sum()) for k in LONG_TAIL_GROUPS}
    return out


def _weighted_ap(s: np.ndarray, tgt: np.ndarray, mask: Optional[np.ndarray],
                 weights: np.ndarray, chunk: int = 256) -> np.ndarray:
    r"""AP of every class under integer sample weights (resample counts).

    ``s`` float [N, C], ``tgt`` bool [N, C] (unmasked positives), ``mask`` bool [N, C] or
    ``None``, ``weights`` float [B, N]. Returns float64 [B, C]: row ``b`` is the AP of
    the data set in which sample :math:`i` appears ``weights[b, i]`` times (a duplicate
    ties with its original, so this is :func:`average_precision` of the resampled rows),
    NaN where a class has no positive of positive weight. Each class is sorted once; the
    weights are processed ``chunk`` rows at a time (memory ``chunk x N``)."""
    b, (n, c) = weights.shape[0], s.shape
    out = np.full((b, c), np.nan)
    for j in range(c):
        keep = np.ones(n, bool) if mask is None else mask[:, j]
        order = np.argsort(-s[keep, j], kind="stable")
        sc, yc = s[keep, j][order], tgt[keep, j][order].astype(np.float64)
        if sc.size == 0:
            continue
        ends = np.append(np.nonzero(np.diff(sc))[0], sc.size - 1)  # last index of each tie group
        cols = np.flatnonzero(keep)[order]
        for i in range(0, b, chunk):
            w = weights[i:i + chunk, cols]
            tp = np.cumsum(w * yc, axis=1)[:, ends]
            seen = np.cumsum(w, axis=1)[:, ends]
            gain = np.diff(tp, axis=1, prepend=0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                prec = np.where(seen > 0, tp / np.where(seen > 0, seen, 1.0), 0.0)
                out[i:i + chunk, j] = np.minimum((gain * prec).sum(1) / tp[:, -1], 1.0)
    return out


def paired_bootstrap_map(scores_a: Union[ArrayLike, Sequence[ArrayLike]],
                         scores_b: Union[ArrayLike, Sequence[ArrayLike]],
                         targets: ArrayLike, mask: Optional[ArrayLike] = None, *,
                         num_resamples: int = 2000, confidence: float = 0.95,
                         seed: int = 0) -> Dict[str, Any]:
    r"""mAP difference of two models on the same test images, with a paired bootstrap
    confidence interval.

    With :math:`\mathrm{mAP}_a, \mathrm{mAP}_b` the mAPs of the two models on the
    :math:`N` test images, resample the images :math:`B` times with replacement (the same
    draw for both models: *paired*) and recompute both on each resample
    :math:`b`; the interval is the percentile interval of
    :math:`\Delta_b = \mathrm{mAP}_a^{(b)} - \mathrm{mAP}_b^{(b)}`,

    .. math::
        \Delta = \mathrm{mAP}_a - \mathrm{mAP}_b, \qquad
        \mathrm{CI}_{1-\alpha} = \big[q_{\alpha/2}(\Delta_b),\; q_{1-\alpha/2}(\Delta_b)\big].

    An interval that contains 0 means the test split cannot tell the two apart: the gap
    is within its sampling noise (72 BCCD test images move a model's mAP by a point or
    more). A model given as several runs (seeds) counts with the mean of their mAPs, on
    every resample, so the interval is about the test images, not the seeds. Each
    resample's mAP is the mean AP of the classes with a positive in that resample (as
    :func:`multilabel_metrics` leaves out classes without one).

    Args:
        scores_a, scores_b: :math:`(N, C)` scores (logits or probabilities: AP only
            ranks them), or a sequence of such arrays (runs of one model).
        targets: :math:`(N, C)` in :math:`\{0, 1\}`.
        mask: :math:`(N, C)` bool, ``False`` = ignore the entry. (default: :obj:`None`)
        num_resamples (int): :math:`B`. (default: :obj:`2000`)
        confidence (float): :math:`1 - \alpha`. (default: :obj:`0.95`)
        seed (int): seed of the resampling. (default: :obj:`0`)

    Returns:
        dict: ``"mAP_a"``, ``"mAP_b"``, ``"diff"`` (:math:`\Delta`, on all images),
        ``"ci"`` (``[low, high]``), ``"confidence"``, ``"p_a_below_b"`` (the fraction of
        resamples with :math:`\Delta_b < 0`), ``"num_resamples"``, ``"num_images"``.

    Example:
        >>> import numpy as np
        >>> from pyg_mlic.metrics import paired_bootstrap_map
        >>> y = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
        >>> r = paired_bootstrap_map(y + 0.1, y[::-1] + 0.1, y, num_resamples=200)
        >>> r["diff"] > 0 and r["ci"][0] <= r["diff"] <= r["ci"][1]
        True
    """
    fn = "paired_bootstrap_map"
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, numbers.Integral) \
            or num_resamples < 1:
        raise ValueError(f"{fn}: num_resamples must be a positive integer, got "
                         f"{num_resamples!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or \
            not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"{fn}: confidence must be in (0, 1), got {confidence!r}")

    def runs(x: Any, name: str) -> List[Tensor]:
        many = isinstance(x, (list, tuple)) and len(x) > 0 and \
            not isinstance(x[0], numbers.Number) and np.ndim(x[0]) == 2
        out = []
        for i, sc in enumerate(x if many else [x]):
            s, t, m, _ = _prepare(sc, targets, mask, "auto", f"{fn} ({name}"
                                  + (f", run {i})" if many else ")"))
            out.append(s)
        return out

    ra, rb = runs(scores_a, "scores_a"), runs(scores_b, "scores_b")
    _, tgt, m, _ = _prepare(ra[0], targets, mask, "auto", fn)
    tgt_np = tgt.cpu().numpy().astype(bool)
    m_np = None if m is None else m.cpu().numpy()
    n = tgt_np.shape[0]
    rng = np.random.default_rng(seed)
    # resample counts: row 0 is the data set itself, rows 1.. the bootstrap draws
    w = np.vstack([np.ones(n), np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                                         for _ in range(int(num_resamples))])]).astype(
        np.float64)

    def mean_map(rs: List[Tensor]) -> np.ndarray:
        maps = []
        for s in rs:
            ap = _weighted_ap(s.cpu().double().numpy(), tgt_np, m_np, w)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no class
                maps.append(np.nanmean(ap, axis=1))
        return np.mean(maps, axis=0)

    ma, mb = mean_map(ra), mean_map(rb)
    if not (np.isfinite(ma[0]) and np.isfinite(mb[0])):
        raise ValueError(f"{fn}: no class has a positive (unmasked) target: mAP is undefined")
    d = (ma - mb)[1:]
    d = d[np.isfinite(d)]
    alpha = 1.0 - float(confidence)
    lo, hi = np.quantile(d, [alpha / 2.0, 1.0 - alpha / 2.0])
    return {"mAP_a": float(ma[0]), "mAP_b": float(mb[0]), "diff": float(ma[0] - mb[0]),
            "ci": [float(lo), float(hi)], "confidence": float(confidence),
            "p_a_below_b": float(np.mean(d < 0)), "num_resamples": int(d.size),
            "num_images": int(n)}


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



def format_long_tail(rows: Sequence) -> str:
    """The long-tail table (mAP in %): ``rows`` is ``[(name, metrics), ...]`` with the
    ``"long_tail"`` entry of the engine's metrics (:func:`long_tail_map`); rows without it
    are skipped (``""`` when none has it). Each row names its bounds and class counts."""
    rows = [(n, m["long_tail"]) for n, m in rows if isinstance(m.get("long_tail"), dict)]
    if not rows:
        return ""
    width = max([len("Method")] + [len(str(n)) for n, _ in rows]) + 2

    def cell(v: Optional[float]) -> str:
        return f"{100 * v:8.1f}" if v is not None else "       -"

    head = (f"{'Method':<{width}}" + "".join(f"{g:>8}" for g in LONG_TAIL_GROUPS) +
            "  mAP by training-label frequency n (classes with an AP)")
    lines = [head, "-" * len(head)]
    for name, lt in rows:
        b1, b2 = lt["bounds"]
        k, u = lt["num_classes"], lt.get("num_undefined", {})
        groups = ", ".join(f"{g} {k[g]}" + (f" (+{u[g]} without AP)" if u.get(g) else "")
                           for g in LONG_TAIL_GROUPS)
        lines.append(f"{str(name):<{width}}" + "".join(cell(lt[g]) for g in LONG_TAIL_GROUPS) +
                     f"  tail: n < {b1:.4g} <= medium < {b2:.4g} <= head ({lt['rule']}); {groups}")
    return "\n".join(lines)
