"""Tests of pyg_mlic.metrics: AP against scikit-learn (ties, masks), the CP/CR/CF1/OP/OR/OF1
family against hand-computed numbers and a brute-force reference, input validation."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from pyg_mlic import metrics
from pyg_mlic.metrics import (UndefinedAPWarning, average_precision, calibrate_thresholds,
                              format_long_tail, long_tail_map, multilabel_metrics,
                              paired_bootstrap_map)

NAMES = ("CP", "CR", "CF1", "OP", "OR", "OF1")


@pytest.fixture(params=["numpy_sort", "torch_sort"])
def sort_backend(request, monkeypatch):
    """Run a test with both CPU sort paths (numpy.argsort and torch.sort)."""
    monkeypatch.setattr(metrics, "_NUMPY_SORT_ON_CPU", request.param == "numpy_sort")
    return request.param


def sklearn_ap(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> list:
    """Per-class sklearn AP on the unmasked entries (None where no positive)."""
    out = []
    for c in range(scores.shape[1]):
        keep = np.ones(len(scores), bool) if mask is None else mask[:, c].astype(bool)
        y = targets[keep, c]
        out.append(float(average_precision_score(y, scores[keep, c])) if y.sum() > 0 else None)
    return out


def reference_metrics(prob: np.ndarray, y: np.ndarray, mask: np.ndarray, threshold,
                      k: int, topk_requires_threshold: bool = True) -> dict:
    """Brute force, one image and one class at a time (scores must be tie-free for top-k);
    top-k with the papers' rule (also above the threshold) unless told otherwise;
    ``threshold`` one float or one per class."""
    n, c = prob.shape
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (c,))
    pred_t = np.zeros((n, c), bool)
    pred_k = np.zeros((n, c), bool)
    for i in range(n):
        for j in range(c):
            pred_t[i, j] = mask[i, j] and prob[i, j] > thr[j]
        unmasked = [j for j in range(c) if mask[i, j]]
        for j in sorted(unmasked, key=lambda j: -prob[i, j])[:k]:
            pred_k[i, j] = prob[i, j] > thr[j] if topk_requires_threshold else True
    pos = (y == 1) & mask
    evaluated = pos.sum(0) > 0
    out = {}
    for suffix, pred in (("", pred_t), (f"_top{k}", pred_k)):
        tp = (pred & pos).sum(0)
        npred = pred.sum(0)
        p_c = [tp[j] / npred[j] if npred[j] else 0.0 for j in range(c) if evaluated[j]]
        r_c = [tp[j] / pos[:, j].sum() for j in range(c) if evaluated[j]]
        cp, cr = float(np.mean(p_c)), float(np.mean(r_c))
        op = tp.sum() / npred.sum() if npred.sum() else 0.0
        or_ = tp.sum() / pos.sum()
        f1 = lambda a, b: 2 * a * b / (a + b) if a + b else 0.0  # noqa: E731
        out.update({f"CP{suffix}": cp, f"CR{suffix}": cr, f"CF1{suffix}": f1(cp, cr),
                    f"OP{suffix}": op, f"OR{suffix}": or_, f"OF1{suffix}": f1(op, or_)})
    ap = sklearn_ap(prob, y, mask)
    out["AP"] = ap
    out["mAP"] = float(np.mean([a for a in ap if a is not None]))
    return out


def assert_metrics_close(m: dict, ref: dict, tol: float = 1e-12, ap_tol: float = 1e-6) -> None:
    assert set(ref) <= set(m), set(ref) - set(m)
    for key, value in ref.items():
        if key == "AP":
            assert [a is None for a in m[key]] == [a is None for a in value]
            assert [a for a in m[key] if a is not None] == pytest.approx(
                [a for a in value if a is not None], abs=ap_tol)
        elif key == "mAP":
            assert m[key] == pytest.approx(value, abs=ap_tol)
        else:
            assert m[key] == pytest.approx(value, abs=tol), key


def assert_no_nan(m: dict) -> None:
    for key, value in m.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            assert v is None or math.isfinite(v), (key, v)


# --------------------------------------------------------------------------- #
# average precision = sklearn, ties included
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_ap_equals_sklearn_with_many_ties(decimals, sort_backend):
    rng = np.random.default_rng(decimals)
    n, c = 500, 12
    y = (rng.random((n, c)) < 0.2).astype(np.uint8)
    scores = np.round(rng.random((n, c)) + 0.3 * y, decimals)  # rounded: large tie groups
    assert len(np.unique(scores[:, 0])) < n  # there are ties
    m = multilabel_metrics(scores, y)
    ref = sklearn_ap(scores, y)
    np.testing.assert_allclose(m["AP"], ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(average_precision(scores, y).numpy(), ref, atol=1e-6, rtol=0)
    assert m["mAP"] == pytest.approx(np.mean(ref), abs=1e-6)


def test_ap_float32_ties_from_float_rounding(sort_backend):
    # float32 logits of 40k samples collide by chance (24-bit mantissa); bf16 ties a lot.
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(5000, 4, generator=g) < 0.1).to(torch.uint8)
    s = (torch.randn(5000, 4, generator=g) + y).to(torch.bfloat16)
    ap = average_precision(s, y)
    ref = sklearn_ap(s.float().numpy(), y.numpy())
    np.testing.assert_allclose(ap.numpy(), ref, atol=1e-6, rtol=0)


def test_ap_hand_computed_tie():
    # scores 0.5 (+), 0.5 (-), 0.2 (+): the tie group has precision 1/2 and brings 1 TP,
    # then 0.2 brings the second at precision 2/3 -> AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12.
    ap = average_precision(np.array([[0.5], [0.5], [0.2]]), np.array([[1], [0], [1]]))
    assert ap.item() == pytest.approx(7 / 12, abs=1e-12)
    assert ap.item() == pytest.approx(average_precision_score([1, 0, 1], [0.5, 0.5, 0.2]))


def test_perfect_ranking_gives_ap_one():
    rng = np.random.default_rng(3)
    y = (rng.random((200, 5)) < 0.3).astype(np.int64)
    y[0] = 1
    scores = y + 0.5 * rng.random(y.shape)  # every positive above every negative
    m = multilabel_metrics(scores, y, scores_are="logits")
    assert m["AP"] == [1.0] * 5 and m["mAP"] == 1.0


def test_mask_equals_sklearn_on_unmasked_subset(sort_backend):
    rng = np.random.default_rng(4)
    n, c = 300, 6
    y = (rng.random((n, c)) < 0.3).astype(np.uint8)
    scores = np.round(rng.normal(size=(n, c)) + y, 1).astype(np.float32)
    mask = rng.random((n, c)) < 0.7
    m = multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(y), torch.from_numpy(mask))
    np.testing.assert_allclose(m["AP"], sklearn_ap(scores, y, mask), atol=1e-6, rtol=0)


def test_masked_entries_count_nowhere():
    """Whatever sits under mask == False (scores, even -1 / 0 VOC targets) changes nothing."""
    rng = np.random.default_rng(5)
    n, c = 120, 5
    y = (rng.random((n, c)) < 0.3).astype(np.int64)
    scores = rng.random((n, c))
    mask = rng.random((n, c)) < 0.75
    base = multilabel_metrics(scores, y, mask, topk=2)
    scores2, y2 = scores.copy(), y.copy()
    scores2[~mask] = rng.random((~mask).sum())  # new scores, possibly the highest of a row
    y2[~mask] = rng.choice([-1, 0, 1], size=(~mask).sum())
    assert multilabel_metrics(scores2, y2, mask, topk=2) == base
    assert_metrics_close(base, reference_metrics(scores, y, mask, 0.5, 2))


def test_real_voc2007_difficult_mask(data_dir):
    """Real VOC 2007 test labels (1 / -1 / 0 = difficult): difficult is ignored, as sklearn on
    the non-difficult subset."""
    path = data_dir / "labels" / "voc2007.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with np.load(path, allow_pickle=False) as d:
        labels = d["labels"][d["split"] == "test"].astype(np.int64)
    assert (labels == 0).any()  # real difficult entries
    rng = np.random.default_rng(6)
    scores = np.round(rng.normal(size=labels.shape) + 1.5 * (labels == 1), 1).astype(np.float32)
    m = multilabel_metrics(scores, labels == 1, mask=labels != 0)
    ref = sklearn_ap(scores, (labels == 1).astype(int), labels != 0)
    np.testing.assert_allclose(m["AP"], ref, atol=1e-6, rtol=0)
    assert m["num_classes_evaluated"] == 20
    # passing the raw VOC labels is refused with a hint, not silently misread
    with pytest.raises(ValueError, match="VOC-style"):
        multilabel_metrics(scores, labels)


def test_input_not_modified_and_layouts():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(4, 50, generator=g)  # [C, N] contiguous -> scores = base.t()
    keep = base.clone()
    y = (torch.rand(50, 4, generator=g) < 0.4).to(torch.uint8)
    y[0] = 1
    mask = torch.rand(50, 4, generator=g) < 0.8
    a = multilabel_metrics(base.t(), y, mask)
    assert torch.equal(base, keep)
    b = multilabel_metrics(base.t().contiguous().numpy(), y.numpy(), mask.numpy())
    c = multilabel_metrics(base.t().double(), y.bool(), mask.to(torch.uint8))
    assert a == b
    assert_metrics_close(c, a)


# --------------------------------------------------------------------------- #
# classes without positives
# --------------------------------------------------------------------------- #
def test_class_without_positive_is_excluded_with_one_warning():
    scores = np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.6], [0.4, 0.3, 0.2]])
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])  # class 2 has no positive
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        m = multilabel_metrics(scores, y, class_names=["cat", "dog", "unicorn"])
    undefined = [w for w in rec if issubclass(w.category, UndefinedAPWarning)]
    assert len(undefined) == 1 and "2 (unicorn)" in str(undefined[0].message)
    assert undefined[0].filename == __file__  # points at the caller
    assert m["AP"][2] is None and m["num_classes_evaluated"] == 2
    assert m["mAP"] == pytest.approx((1.0 + 1.0) / 2)
    # CP/CR average over classes 0 and 1 only; OP still counts class 2's false positives
    # threshold 0.5 predicts (0,0) TP, (0,2) FP, (1,1) TP, (1,2) FP
    assert m["CP"] == 1.0 and m["CR"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["OP"] == 0.5 and m["OR"] == pytest.approx(2 / 3)
    assert_no_nan(m)


def test_mask_can_remove_all_positives_of_a_class():
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.4, 0.3]])
    y = np.array([[1, 1], [0, 1], [1, 0]])
    mask = np.array([[1, 0], [1, 0], [1, 1]], bool)
    with pytest.warns(UndefinedAPWarning, match="1 class"):
        m = multilabel_metrics(scores, y, mask)
    assert m["AP"] == [1.0, None]
    assert_no_nan(m)
    with pytest.warns(UndefinedAPWarning):
        ap = average_precision(scores, y, mask)
    assert ap[0] == 1.0 and torch.isnan(ap[1])


def test_no_class_with_positive_raises():
    with pytest.raises(ValueError, match="no class has an"):
        multilabel_metrics(np.random.rand(4, 3), np.zeros((4, 3)))


# --------------------------------------------------------------------------- #
# CP/CR/CF1/OP/OR/OF1 against hand-computed numbers
# --------------------------------------------------------------------------- #
HAND_SCORES = np.array([[0.9, 0.6, 0.1],
                        [0.8, 0.2, 0.7],
                        [0.3, 0.4, 0.2],
                        [0.1, 0.55, 0.65]])
HAND_TARGETS = np.array([[1, 1, 0],
                         [1, 0, 0],
                         [0, 1, 1],
                         [1, 0, 1]])


def test_hand_computed_threshold_and_top2():
    m = multilabel_metrics(HAND_SCORES, HAND_TARGETS, threshold=0.5, topk=2,
                           topk_requires_threshold=False)
    # AP: class 0 ranks +,+,-,+ -> (1 + 1 + 3/4) / 3; class 1 +,-,+,- -> (1 + 2/3) / 2;
    # class 2 -,+,+,- -> (1/2 + 2/3) / 2
    assert m["AP"] == pytest.approx([11 / 12, 5 / 6, 7 / 12])
    assert m["mAP"] == pytest.approx(7 / 9)
    # > 0.5: class 0 predicted for images {0,1} (TP 2, 3 positives), class 1 {0,3} (TP 1 of 2),
    # class 2 {1,3} (TP 1 of 2)
    expected = {"CP": 2 / 3, "CR": 5 / 9, "CF1": 20 / 33, "OP": 4 / 6, "OR": 4 / 7, "OF1": 8 / 13,
                # top-2 per image: {0,1}, {0,2}, {1,0}, {2,1}
                "CP_top2": 11 / 18, "CR_top2": 13 / 18, "CF1_top2": 143 / 216,
                "OP_top2": 5 / 8, "OR_top2": 5 / 7, "OF1_top2": 2 / 3}
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert m["num_classes_evaluated"] == 3
    assert set(m) == {"mAP", *NAMES, *(f"{k}_top2" for k in NAMES), "AP",
                      "num_classes_evaluated"}
    # the papers' rule (the default: top-k AND above the threshold): image 2 loses its two
    # sub-threshold labels (0.4 and 0.3), which here gives back the threshold numbers
    m2 = multilabel_metrics(HAND_SCORES, HAND_TARGETS, topk=2)
    for key in NAMES:
        assert m2[f"{key}_top2"] == pytest.approx(expected[key], abs=1e-12), key
    # top-3 of 3 classes predicts everything under the plain rule: precision = positive
    # rate, recall = 1
    m3 = multilabel_metrics(HAND_SCORES, HAND_TARGETS, topk_requires_threshold=False)
    assert m3["CP_top3"] == pytest.approx((3 / 4 + 2 / 4 + 2 / 4) / 3)
    assert m3["OP_top3"] == pytest.approx(7 / 12)
    assert m3["CR_top3"] == 1.0 and m3["OR_top3"] == 1.0
    m5 = multilabel_metrics(HAND_SCORES, HAND_TARGETS, topk=5,  # k > C: the same, named top5
                            topk_requires_threshold=False)
    assert [m5[f"{k}_top5"] for k in NAMES] == [m3[f"{k}_top3"] for k in NAMES]
    # nothing above the threshold: precision 0 (not NaN), F1 0
    m4 = multilabel_metrics(HAND_SCORES, HAND_TARGETS, threshold=np.float32(0.95), topk=None)
    assert (m4["CP"], m4["CR"], m4["CF1"], m4["OP"], m4["OR"], m4["OF1"]) == (0, 0, 0, 0, 0, 0)
    assert not any(k.endswith("_top3") for k in m4)


def test_top3_rules_differ_on_a_hand_computed_example():
    """Two images, four labels. Image 0: positives {0, 1}, scores 0.9, 0.8, 0.3, 0.1.
    Image 1: positive {2}, scores 0.2, 0.1, 0.7, 0.4. Top-3: image 0 -> {0, 1, 2},
    image 1 -> {2, 3, 0}.
    Papers' rule (also > 0.5): image 0 predicts {0, 1}, image 1 {2}: 3 predictions, 3
    correct -> OP-3 = 1, OR-3 = 1. Plain rule: 6 predictions, 3 correct -> OP-3 = 1/2,
    OR-3 = 1; per class (0, 1, 2 have positives): P = (1/2, 1, 1/2), R = (1, 1, 1)."""
    s = np.array([[0.9, 0.8, 0.3, 0.1], [0.2, 0.1, 0.7, 0.4]])
    y = np.array([[1, 1, 0, 0], [0, 0, 1, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAPWarning)  # label 3 has no positive
        papers = multilabel_metrics(s, y, topk=3)
        plain = multilabel_metrics(s, y, topk=3, topk_requires_threshold=False)
    assert (papers["OP_top3"], papers["OR_top3"], papers["CP_top3"]) == (1.0, 1.0, 1.0)
    assert plain["OP_top3"] == pytest.approx(0.5) and plain["OR_top3"] == 1.0
    assert plain["CP_top3"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert plain["OF1_top3"] == pytest.approx(2 / 3)


def test_perfect_ranker_on_coco_val2014_under_both_top3_rules(data_dir):
    """The papers print OP-3 ~90 on COCO; under the plain top-3 rule even a perfect ranker
    (score 1 for every positive, 0 otherwise) is capped at OP-3 75.8 on the val2014 labels
    (many images have fewer than 3 labels); under the papers' rule it gets 100."""
    with np.load(data_dir / "labels" / "coco2014.npz", allow_pickle=False) as d:
        y = d["labels"][d["split"] == "val2014"].astype(np.uint8)
    perfect = y.astype(np.float32)
    papers = multilabel_metrics(perfect, y, topk=3, scores_are="probabilities")
    plain = multilabel_metrics(perfect, y, topk=3, scores_are="probabilities",
                               topk_requires_threshold=False)
    assert papers["OP_top3"] == 1.0 and papers["mAP"] == 1.0
    assert plain["OP_top3"] == pytest.approx(0.758, abs=5e-4)
    assert plain["OP_top3"] < 0.76 < papers["OP_top3"]


def test_against_brute_force_reference(sort_backend):
    rng = np.random.default_rng(8)
    for trial in range(5):
        n, c, k = 60, 7, 1 + trial % 4
        y = (rng.random((n, c)) < 0.3).astype(np.uint8)
        prob = rng.random((n, c))  # tie-free, so top-k is unambiguous
        mask = rng.random((n, c)) < (1.0 if trial == 0 else 0.8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedAPWarning)
            for rule in (True, False):
                m = multilabel_metrics(prob, y, mask, threshold=0.4, topk=k,
                                       topk_requires_threshold=rule)
                ref = reference_metrics(prob, y, mask, 0.4, k, topk_requires_threshold=rule)
                assert_metrics_close(m, ref)


# --------------------------------------------------------------------------- #
# logits vs probabilities, dtypes, exact thresholds
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.8])
def test_logits_and_probabilities_agree(threshold):
    rng = np.random.default_rng(9)
    logits = np.round(rng.normal(size=(200, 6)) * 2, 1)  # float64, ties, |x| < 10
    y = (rng.random((200, 6)) < 0.3).astype(np.uint8)
    probs = 1.0 / (1.0 + np.exp(-logits))
    a = multilabel_metrics(logits, y, threshold=threshold)  # auto -> logits
    b = multilabel_metrics(logits, y, threshold=threshold, scores_are="logits")
    c = multilabel_metrics(probs, y, threshold=threshold, scores_are="probabilities")
    d = multilabel_metrics(probs, y, threshold=threshold)  # auto -> probabilities
    assert a == b
    assert c == d
    assert_metrics_close(c, a, ap_tol=1e-12)
    # the threshold applies to probabilities even for logits: sigmoid(0.3) = 0.574
    one = np.array([[1, 1]])
    assert multilabel_metrics(np.array([[0.3, -0.3]]), one, threshold=0.55, topk=None,
                              scores_are="logits")["OR"] == 0.5
    assert multilabel_metrics(np.array([[0.3, -0.3]]), one, threshold=0.6, topk=None,
                              scores_are="logits")["OR"] == 0.0


def test_threshold_comparison_is_exact():
    y = np.array([[1, 1]])
    # float32(0.1) = 0.100000001490... > 0.1 (predicted); float32(0.7) = 0.699999988 < 0.7
    s = torch.tensor([[0.1, 0.7]], dtype=torch.float32)
    assert multilabel_metrics(s, y, threshold=0.1, topk=None)["OR"] == 1.0
    assert multilabel_metrics(s, y, threshold=0.7, topk=None)["OR"] == 0.0
    # strictly greater: probability 0.5 / logit 0 is not predicted at threshold 0.5
    assert multilabel_metrics(np.array([[0.5, 0.5]]), y, topk=None)["OR"] == 0.0
    assert multilabel_metrics(np.array([[0.0, 0.0]]), y, topk=None,
                              scores_are="logits")["OR"] == 0.0
    assert multilabel_metrics(np.array([[1e-30, 0.0]]), y, topk=None,
                              scores_are="logits")["OR"] == 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input(dtype):
    g = torch.Generator().manual_seed(10)
    y = (torch.rand(300, 5, generator=g) < 0.3).to(torch.uint8)
    y[0] = 1
    s = (torch.randn(300, 5, generator=g) + y).to(dtype)
    m = multilabel_metrics(s, y)
    assert m == multilabel_metrics(s.float(), y)  # upcast is exact
    np.testing.assert_allclose(m["AP"], sklearn_ap(s.float().numpy(), y.numpy()), atol=1e-6)
    assert_no_nan(m)


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #
GOOD_S = np.array([[0.2, 0.9], [0.7, 0.1]])
GOOD_Y = np.array([[0, 1], [1, 0]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(scores=np.array([[np.nan, 0.9], [0.7, 0.1]])), "non-finite"),
    (dict(scores=np.array([[np.inf, 0.9], [0.7, 0.1]])), "non-finite"),
    (dict(scores=torch.tensor([[0.2, -float("inf")], [0.7, 0.1]])), r"first at .*\[0, 1\]"),
    (dict(targets=np.array([[0, 2], [1, 0]])), "must be 0/1"),
    (dict(targets=np.array([[0, 1], [-1, 0]])), "VOC-style"),
    (dict(targets=np.array([[0.0, 0.5], [1.0, 0.0]])), "value 0.5"),
    (dict(targets=np.array([[0, 1, 0], [1, 0, 0]])), "shape"),
    (dict(scores=np.array([0.2, 0.9]), targets=np.array([0, 1])), r"\[N, 1\]"),
    (dict(scores=np.zeros((0, 2)), targets=np.zeros((0, 2))), "empty"),
    (dict(scores=np.zeros((2, 0)), targets=np.zeros((2, 0))), "empty"),
    (dict(mask=np.ones((2, 3), bool)), "`mask` has shape"),
    (dict(mask=np.array([[1, 2], [1, 1]])), "`mask` must be boolean"),
    (dict(scores=np.array([["a", "b"], ["c", "d"]])), "must hold numbers"),
    (dict(scores_are="logit"), "scores_are"),
    (dict(scores=GOOD_S * 3, scores_are="probabilities"), "outside"),
    (dict(threshold=1.5), "threshold"),
    (dict(threshold=-0.1), "threshold"),
    (dict(threshold=True), "threshold"),
    (dict(topk=0), "topk"),
    (dict(topk=-1), "topk"),
    (dict(topk=1.5), "topk"),
    (dict(class_names=["a"]), "class_names"),
])
def test_bad_input_raises(kwargs, match):
    args = dict(scores=GOOD_S, targets=GOOD_Y, topk=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        multilabel_metrics(**args)


def test_bad_input_raises_in_average_precision():
    with pytest.raises(ValueError, match="non-finite"):
        average_precision(np.array([[np.nan], [1.0]]), np.array([[1], [0]]))


# --------------------------------------------------------------------------- #
# properties
# --------------------------------------------------------------------------- #
@st.composite
def problems(draw):
    n = draw(st.integers(1, 25))
    c = draw(st.integers(1, 6))
    levels = draw(st.integers(2, 12))  # few distinct values -> many ties
    s = np.array(draw(st.lists(st.integers(0, levels), min_size=n * c, max_size=n * c)),
                 dtype=np.float64).reshape(n, c) / levels
    y = np.array(draw(st.lists(st.booleans(), min_size=n * c, max_size=n * c))).reshape(n, c)
    y[draw(st.integers(0, n - 1)), draw(st.integers(0, c - 1))] = True
    mask = np.array(draw(st.lists(st.booleans(), min_size=n * c, max_size=n * c))).reshape(n, c)
    use_mask = draw(st.booleans())
    if use_mask and not (y & mask).any():
        mask |= y  # keep at least one unmasked positive
    return s, y.astype(np.uint8), (mask if use_mask else None), draw(st.integers(1, c))


@settings(max_examples=60, deadline=None)
@given(problems(), st.floats(0.0, 1.0), st.randoms(use_true_random=False))
def test_property_ranges_and_class_permutation(problem, threshold, rnd):
    s, y, mask, k = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAPWarning)
        m = multilabel_metrics(s, y, mask, threshold=threshold, topk=k)
        perm = list(range(s.shape[1]))
        rnd.shuffle(perm)
        mp = multilabel_metrics(s[:, perm], y[:, perm], None if mask is None else mask[:, perm],
                                threshold=threshold, topk=k)
    assert_no_nan(m)
    for key, value in m.items():
        if key not in ("AP", "num_classes_evaluated"):
            assert 0.0 <= value <= 1.0, (key, value)
    assert all(a is None or 0.0 <= a <= 1.0 for a in m["AP"])
    assert mp["AP"] == [m["AP"][p] for p in perm]
    for key in ("mAP", *NAMES):  # invariant up to summation order
        assert mp[key] == pytest.approx(m[key], abs=1e-12)
    ref = sklearn_ap(s, y, mask)
    assert m["AP"] == pytest.approx(ref, abs=1e-6)


# --------------------------------------------------------------------------- #
# per-class thresholds and threshold calibration
# --------------------------------------------------------------------------- #
# Three classes, four images. Class 0: +,-,+,- at 0.9, 0.6, 0.4, 0.2; class 1: +,+,-,- at
# 0.8, 0.7, 0.3, 0.1; class 2 has no positive.
CAL_P = np.array([[0.9, 0.8, 0.5],
                  [0.6, 0.7, 0.35],
                  [0.4, 0.3, 0.05],
                  [0.2, 0.1, 0.15]])
CAL_Y = np.array([[1, 1, 0],
                  [0, 1, 0],
                  [1, 0, 0],
                  [0, 0, 0]])


def brute_force_f1(p: np.ndarray, y: np.ndarray, t: float) -> float:
    pred = p > t
    tp, npred, npos = int((pred & (y == 1)).sum()), int(pred.sum()), int((y == 1).sum())
    return 2 * tp / (npred + npos) if npred + npos else 0.0


def test_calibration_picks_the_f1_optimal_threshold_by_hand():
    """Class 0, F1 = 2 TP / (N_pre + N_pos) for p > t: t in [0, 0.2) predicts 4 (TP 2) ->
    4/6; [0.2, 0.4): 3 (TP 2) -> 4/5 = 0.8, the best; [0.4, 0.6): 2 (TP 1) -> 1/2;
    [0.6, 0.9): 1 (TP 1) -> 2/3. The midpoint of [0.2, 0.4) is returned: 0.3.
    Class 1: [0.3, 0.7) predicts exactly the two positives (F1 = 1) -> 0.5.
    Global (all 12 entries pooled, 4 positives): descending 0.9+ 0.8+ 0.7+ 0.6- 0.5- 0.4+
    ...; the top 3 give OF1 = 6/7, top 6 give 8/10, the rest less -> [0.6, 0.7) -> 0.65.
    Class 2 has no positive: it falls back to the global threshold."""
    t = calibrate_thresholds(CAL_P, CAL_Y)
    assert t["per_class"] == pytest.approx([0.3, 0.5, 0.65], abs=1e-15)
    assert t["global"] == pytest.approx(0.65, abs=1e-15)
    assert t["per_class_F1"] == pytest.approx([0.8, 1.0, None])
    assert t["global_OF1"] == pytest.approx(6 / 7)
    assert t["fallback_classes"] == [2] and t["num_samples"] == 4
    # the same from logits (the thresholds stay probabilities)
    logits = np.log(CAL_P) - np.log1p(-CAL_P)
    tl = calibrate_thresholds(logits, CAL_Y, scores_are="logits")
    assert tl["per_class"] == pytest.approx(t["per_class"], abs=1e-12)
    assert tl["global"] == pytest.approx(t["global"], abs=1e-12)
    # exact search: no threshold on a fine grid beats the chosen ones
    grid = np.linspace(0, 1, 2001)
    for c in range(2):
        best = max(brute_force_f1(CAL_P[:, c], CAL_Y[:, c], g) for g in grid)
        assert brute_force_f1(CAL_P[:, c], CAL_Y[:, c], t["per_class"][c]) == pytest.approx(best)
    best = max(brute_force_f1(CAL_P, CAL_Y, g) for g in grid)
    assert brute_force_f1(CAL_P, CAL_Y, t["global"]) == pytest.approx(best) == 6 / 7


def test_ties_go_to_the_largest_threshold():
    """p = 0.9+, 0.7-, 0.5-, 0.3+ (2 positives), F1 = 2 TP / (N_pre + 2): top 1 -> 2/3,
    top 2 -> 1/2, top 3 -> 2/5, all -> 4/6 = 2/3. Top 1 (t in [0.7, 0.9)) and all
    (t in [0, 0.3)) tie: the largest threshold wins, 0.8, not 0.15. Without the negative
    at 0.5 the best is unique: all three predicted (4/5), t in [0, 0.3) -> 0.15."""
    t = calibrate_thresholds(np.array([[0.9], [0.7], [0.5], [0.3]]),
                             np.array([[1], [0], [0], [1]]))
    assert t["per_class"] == pytest.approx([0.8]) and t["per_class_F1"] == pytest.approx([2 / 3])
    t = calibrate_thresholds(np.array([[0.9], [0.7], [0.3]]), np.array([[1], [0], [1]]))
    assert t["per_class"] == pytest.approx([0.15]) and t["per_class_F1"] == pytest.approx([0.8])


def test_per_class_thresholds_change_cp_cr_by_hand():
    """At (0.3, 0.5, 0.65): class 0 predicts {0.9, 0.6, 0.4} (TP 2 of 2: P 2/3, R 1),
    class 1 {0.8, 0.7} (P 1, R 1), class 2 nothing (no positive: out of CP/CR, in OP).
    CP = (2/3 + 1) / 2 = 5/6, CR = 1, OP = 4/5, OR = 1. At 0.5 everywhere: class 0 predicts
    {0.9, 0.6} (P 1/2, R 1/2), class 1 {0.8, 0.7}: CP = CR = OP = OR = 3/4."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAPWarning)
        t = calibrate_thresholds(CAL_P, CAL_Y)
        cal = multilabel_metrics(CAL_P, CAL_Y, threshold=t["per_class"], topk=None)
        half = multilabel_metrics(CAL_P, CAL_Y, threshold=0.5, topk=None)
        # a vector of equal thresholds is the scalar threshold (as list, array, tensor)
        for vec in ([0.5] * 3, np.full(3, 0.5), torch.full((3,), 0.5)):
            assert multilabel_metrics(CAL_P, CAL_Y, threshold=vec) == \
                multilabel_metrics(CAL_P, CAL_Y, threshold=0.5)
    assert (cal["CP"], cal["CR"], cal["OP"], cal["OR"]) == pytest.approx((5 / 6, 1, 4 / 5, 1))
    assert cal["CF1"] == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert (half["CP"], half["CR"], half["OP"], half["OR"]) == pytest.approx((.75, .75, .75, .75))
    assert cal["mAP"] == half["mAP"]  # threshold-free


def test_per_class_thresholds_against_brute_force(sort_backend):
    """Threshold rule and the top-k rule's threshold condition use each class's own
    threshold, masked entries count nowhere; logits compare exactly as probabilities."""
    rng = np.random.default_rng(21)
    n, c = 80, 6
    y = (rng.random((n, c)) < 0.3).astype(np.uint8)
    prob = rng.random((n, c))
    mask = rng.random((n, c)) < 0.85
    thr = rng.random(c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAPWarning)
        for rule in (True, False):
            m = multilabel_metrics(prob, y, mask, threshold=thr, topk=3,
                                   topk_requires_threshold=rule)
            assert_metrics_close(m, reference_metrics(prob, y, mask, thr, 3,
                                                      topk_requires_threshold=rule))
        logits = torch.tensor(np.log(prob) - np.log1p(-prob), dtype=torch.float32)
        ml = multilabel_metrics(logits, y, mask, threshold=torch.tensor(thr), scores_are="logits")
        mp = multilabel_metrics(torch.sigmoid(logits.double()), y, mask, threshold=thr,
                                scores_are="probabilities")
    for key in NAMES:
        assert ml[key] == pytest.approx(mp[key], abs=1e-12), key


def test_calibration_is_exact_on_random_data_with_ties(sort_backend):
    """On data with many ties: every class reaches the brute-force best F1 over all
    candidate thresholds, the global threshold the best OF1, and multilabel_metrics at
    the global threshold reports exactly that OF1."""
    rng = np.random.default_rng(5)
    n, c = 120, 5
    prob = np.round(rng.random((n, c)), 1)  # 11 levels: ties everywhere, exact 0 and 1
    y = (rng.random((n, c)) < prob * 0.8).astype(np.uint8)
    y[:, 4] = 0  # a class without positive
    mask = rng.random((n, c)) < 0.9
    t = calibrate_thresholds(prob, y, mask, scores_are="probabilities")
    cands = np.concatenate([[0.0], np.unique(prob)])
    for j in range(4):
        keep = mask[:, j]
        best = max(brute_force_f1(prob[keep, j], y[keep, j], u) for u in cands)
        got = brute_force_f1(prob[keep, j], y[keep, j], t["per_class"][j])
        assert got == pytest.approx(best, abs=1e-12) and t["per_class_F1"][j] == pytest.approx(got)
        assert prob[keep, j].min() <= t["per_class"][j] or best == 0
    pooled_p, pooled_y = prob[mask], y[mask]
    best = max(brute_force_f1(pooled_p, pooled_y, u) for u in cands)
    assert brute_force_f1(pooled_p, pooled_y, t["global"]) == pytest.approx(best, abs=1e-12)
    assert t["global_OF1"] == pytest.approx(best, abs=1e-12)
    assert 4 in t["fallback_classes"] and t["per_class"][4] == t["global"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAPWarning)
        m = multilabel_metrics(prob, y, mask, threshold=t["global"], topk=None)
    assert m["OF1"] == pytest.approx(best, abs=1e-12)
    # a returned threshold lies strictly between scores: never on a tie level
    assert not np.isin(np.round(t["per_class"], 12), np.unique(prob)).any()


def test_calibration_respects_the_mask():
    """Masking class 0's positive at 0.4 leaves +,-,- at 0.9, 0.6, 0.2: only {0.9} is worth
    predicting (F1 = 1), t in [0.6, 0.9) -> 0.75. Masked entries' scores and targets can
    be anything: the result does not change."""
    mask = np.ones_like(CAL_Y, dtype=bool)
    mask[2, 0] = False
    t = calibrate_thresholds(CAL_P, CAL_Y, mask)
    assert t["per_class"][0] == pytest.approx(0.75) and t["per_class_F1"][0] == 1.0
    assert t["per_class"][1] == pytest.approx(0.5)
    rng = np.random.default_rng(3)
    p = rng.random((50, 4))
    y = (rng.random((50, 4)) < 0.4).astype(np.uint8)
    m = rng.random((50, 4)) < 0.7
    p2, y2 = p.copy(), y.copy()
    p2[~m] = rng.random(int((~m).sum()))
    y2[~m] = 1 - y2[~m]
    assert calibrate_thresholds(p, y, m) == calibrate_thresholds(p2, y2, m)
    assert calibrate_thresholds(p, y) != calibrate_thresholds(p, y, m)


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold=[0.5, 0.5, 0.5]), r"3 values for C=2"),
    (dict(threshold=[0.5, 1.5]), r"first class 1 with 1.5"),
    (dict(threshold=[0.5, float("nan")]), "probabilities in"),
    (dict(threshold=[[0.5, 0.5]]), r"shape \[C\]"),
    (dict(threshold="0.5"), "probability in"),
    (dict(threshold=float("nan")), "probability in"),
])
def test_bad_per_class_threshold_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        multilabel_metrics(GOOD_S, GOOD_Y, **kwargs)


def test_calibration_bad_input_raises():
    with pytest.raises(ValueError, match="no \\(unmasked\\) positive"):
        calibrate_thresholds(GOOD_S, np.zeros_like(GOOD_Y))
    with pytest.raises(ValueError, match="no \\(unmasked\\) positive"):
        calibrate_thresholds(GOOD_S, GOOD_Y, mask=GOOD_Y == 0)
    with pytest.raises(ValueError, match="outside"):
        calibrate_thresholds(GOOD_S * 3, GOOD_Y, scores_are="probabilities")
    with pytest.raises(ValueError, match="non-finite"):
        calibrate_thresholds(np.array([[np.nan, 0.2], [0.1, 0.3]]), GOOD_Y)


# --------------------------------------------------------------------------- #
# long tail
# --------------------------------------------------------------------------- #
def test_long_tail_terciles_by_hand():
    """Nine classes with training counts 1..9 (shuffled): terciles 11/3 and 19/3 put
    counts 1-3 in the tail, 4-6 in medium, 7-9 in the head. Class with count 5 has no AP:
    left out of medium's mean and counted."""
    counts = np.array([9, 1, 5, 2, 8, 4, 3, 7, 6])
    ap = [0.9, 0.1, None, 0.2, 0.8, 0.4, 0.3, 0.7, 0.6]  # AP = count / 10 by construction
    lt = long_tail_map(ap, counts)
    assert lt["bounds"] == pytest.approx([11 / 3, 19 / 3])
    assert lt["head"] == pytest.approx(0.8) and lt["tail"] == pytest.approx(0.2)
    assert lt["medium"] == pytest.approx(0.5)  # (0.4 + 0.6) / 2, class 5 left out
    assert lt["num_classes"] == {"head": 3, "medium": 2, "tail": 3}
    assert lt["num_undefined"] == {"head": 0, "medium": 1, "tail": 0}
    assert lt["rule"] == "terciles"
    # given bounds: tail n < 2, medium 2 <= n < 9, head n >= 9
    g = long_tail_map(torch.tensor([np.nan if a is None else a for a in ap]), counts,
                      bounds=(2, 9))
    assert (g["head"], g["tail"]) == pytest.approx((0.9, 0.1))
    assert g["medium"] == pytest.approx(np.mean([0.2, 0.3, 0.4, 0.6, 0.7, 0.8]))
    assert g["num_classes"] == {"head": 1, "medium": 6, "tail": 1} and g["rule"] == "given"
    # equal counts share a group: all in the head, the other groups empty (None, not NaN)
    same = long_tail_map([0.5, 0.7], [4, 4])
    assert same["head"] == pytest.approx(0.6) and same["medium"] is None and same["tail"] is None
    # ties on the lower tercile join the tail: classes without a training positive are
    # never head (the terciles of [0, 0, 0, 9] are 0 and 0), nor are the five classes
    # seen once of a long-tailed set (terciles 1 and 3)
    zeros = long_tail_map([0.1, 0.2, 0.3, 0.9], [0, 0, 0, 9])
    assert zeros["num_classes"] == {"head": 1, "medium": 0, "tail": 3}
    assert zeros["tail"] == pytest.approx(0.2) and zeros["bounds"] == [9.0, 9.0]
    rare = long_tail_map([0.5] * 9, [1, 1, 1, 1, 1, 2, 5, 100, 200])
    assert rare["num_classes"] == {"head": 3, "medium": 1, "tail": 5}
    table = format_long_tail([("model", {"long_tail": lt}), ("no long tail", {})])
    assert "80.0" in table and "50.0" in table and "20.0" in table
    assert "(+1 without AP)" in table and "no long tail" not in table
    assert format_long_tail([("x", {})]) == ""


@pytest.mark.parametrize("args, match", [
    (([0.5, 0.5], [1, 2, 3]), "2 APs but 3 training counts"),
    (([0.5], [-1]), ">= 0"),
    (([0.5, 0.4], [1, 2], (5, 2)), "b1 <= b2"),
    (([0.5, 0.4], [1, 2], (5,)), "two numbers"),
    (([0.5, "x"], [1, 2]), "numbers or None"),
])
def test_long_tail_bad_input_raises(args, match):
    with pytest.raises(ValueError, match=match):
        long_tail_map(*args)


# --------------------------------------------------------------------------- bootstrap
def test_bootstrap_resample_ap_is_sklearns_weighted_ap():
    """Each resample's AP (ties and a mask included) is scikit-learn's AP with the
    resample counts as sample weights, i.e. the AP of the duplicated rows."""
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=(50, 4)), 1)  # rounding makes ties
    y = rng.random((50, 4)) < 0.4
    mask = rng.random((50, 4)) > 0.2
    w = np.stack([np.bincount(rng.integers(0, 50, 50), minlength=50) for _ in range(6)])
    ap = metrics._weighted_ap(s, y & mask, mask, w.astype(float))
    # processed a few resamples at a time: the same numbers
    np.testing.assert_array_equal(metrics._weighted_ap(s, y & mask, mask, w.astype(float),
                                                       chunk=4), ap)
    for b in range(len(w)):
        for c in range(4):
            keep = mask[:, c]
            ref = average_precision_score(y[keep, c], s[keep, c], sample_weight=w[b, keep])
            assert ap[b, c] == pytest.approx(ref, abs=1e-12)


def test_paired_bootstrap_map():
    rng = np.random.default_rng(1)
    y = (rng.random((80, 5)) < 0.3).astype(int)
    y[0] = 1  # every class has a positive
    good = y + rng.normal(0, 0.6, y.shape)
    bad = rng.normal(size=y.shape)
    same = paired_bootstrap_map(good, good, y, num_resamples=300)
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0] and same["p_a_below_b"] == 0.0
    r = paired_bootstrap_map(good, bad, y, num_resamples=300, seed=3)
    assert r["mAP_a"] == pytest.approx(multilabel_metrics(good, y)["mAP"], abs=1e-12)
    assert r["mAP_b"] == pytest.approx(multilabel_metrics(bad, y)["mAP"], abs=1e-12)
    assert r["diff"] == pytest.approx(r["mAP_a"] - r["mAP_b"])
    assert 0.0 < r["ci"][0] < r["diff"] < r["ci"][1] and r["p_a_below_b"] == 0.0
    assert r["num_images"] == 80 and r["num_resamples"] == 300
    assert paired_bootstrap_map(good, bad, y, num_resamples=300, seed=3) == r  # seeded
    # runs of one model count with their mean mAP; swapping the models negates the gap
    two = paired_bootstrap_map([good, bad], bad, y, num_resamples=300)
    assert two["mAP_a"] == pytest.approx((r["mAP_a"] + r["mAP_b"]) / 2)
    back = paired_bootstrap_map(bad, good, y, num_resamples=300, seed=3)
    assert back["diff"] == pytest.approx(-r["diff"]) and back["p_a_below_b"] == 1.0
    # a narrower confidence gives a narrower interval
    n90 = paired_bootstrap_map(good, bad, y, num_resamples=300, seed=3, confidence=0.5)
    assert r["ci"][0] <= n90["ci"][0] <= n90["ci"][1] <= r["ci"][1]


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_resamples=0), "num_resamples"), (dict(num_resamples=2.5), "num_resamples"),
    (dict(confidence=1.0), "confidence"), (dict(confidence=True), "confidence"),
])
def test_paired_bootstrap_bad_options_raise(kwargs, match):
    y = np.eye(3, dtype=int)
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_map(y + 0.0, y + 0.0, y, **kwargs)


def test_paired_bootstrap_bad_input_raises():
    y = np.eye(4, dtype=int)
    with pytest.raises(ValueError, match="scores_b.*shape"):
        paired_bootstrap_map(y + 0.0, np.zeros((4, 3)), y)
    with pytest.raises(ValueError, match="scores_a, run 1.*non-finite"):
        paired_bootstrap_map([y + 0.0, np.full((4, 4), np.nan)], y + 0.0, y)
    with pytest.raises(ValueError, match="no class has a positive"):
        paired_bootstrap_map(y + 0.0, y + 0.0, np.zeros((4, 4), int))
