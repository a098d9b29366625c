"""Speed of :func:`pyg_mlic.metrics.multilabel_metrics` at COCO val2014 size.

Three timings on the same [40137, 80] float32 score matrix, measured in the
same run and interleaved (one repeat of each in turn, so background load hits
all three alike), reported as medians:

(a) floor    -- one ``torch.sort(scores, dim=0)``: the cheapest thing an exact
                per-class AP must do with torch (rank every column);
(b) ours     -- ``multilabel_metrics`` (mAP + per-class AP + CP/CR/CF1/OP/OR/OF1
                at threshold 0.5 and top-3, input validation included), default
                path: on CPU the columns are ranked with ``numpy.argsort``;
(b') ours with ``torch.sort`` (the path used on other devices);
(d) ``numpy.argsort`` of the [80, 40137] matrix alone (the sort (b) uses);
(c) sklearn  -- a Python loop of ``sklearn.metrics.average_precision_score``
                over the 80 classes (mAP only).

Targets are the real COCO val2014 label matrix (``labels/coco2014.npz`` in the
shared data folder; env ``PYG_MLIC_DATA`` overrides its location); without it a
Bernoulli(3.5 %) matrix of the same size stands in (said in the output).
Scores are noisy logits ``2 * y - 1 + N(0, 1)``. Goals: (b)/(a) <= 1.5 (also for
(b')), and (c)/(b) > 1.

Run: ``python benchmarks/bench_metrics.py [--quick] [--json FILE]`` (the JSON carries
every printed ratio in its top-level ``ratios`` block).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyg_mlic.metrics as metrics  # noqa: E402
from benchmarks._common import data_dir as _data_dir  # noqa: E402
from benchmarks._common import format_ratios, ratio, write_results  # noqa: E402
from pyg_mlic.metrics import multilabel_metrics  # noqa: E402


def load_targets(seed: int = 0) -> tuple:
    """COCO val2014 labels [40137, 80] uint8 and a description of their origin."""
    path = _data_dir() / "labels" / "coco2014.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as d:
            y = d["labels"][d["split"] == "val2014"]
        return np.ascontiguousarray(y, dtype=np.uint8), f"COCO val2014 labels from {path}"
    rng = np.random.default_rng(seed)
    y = (rng.random((40137, 80)) < 0.035).astype(np.uint8)
    y[np.arange(40137), rng.integers(0, 80, 40137)] = 1  # every image has a label, as in COCO
    return y, f"synthetic Bernoulli(0.035) labels ({path} not found)"


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(quick: bool = False) -> Dict[str, object]:
    """Measure (a), (b), (c); return the medians (seconds), ratios and settings."""
    from sklearn.metrics import average_precision_score

    y_np, origin = load_targets()
    n, c = y_np.shape
    g = torch.Generator().manual_seed(0)
    y = torch.from_numpy(y_np)
    scores = (2.0 * y.float() - 1.0) + torch.randn(n, c, generator=g)  # float32 logits
    scores_np = scores.numpy()

    def floor() -> object:
        return torch.sort(scores, dim=0)

    def ours() -> object:
        return multilabel_metrics(scores, y, threshold=0.5, topk=3)

    def ours_torch_sort() -> object:
        metrics._NUMPY_SORT_ON_CPU = False
        try:
            return multilabel_metrics(scores, y, threshold=0.5, topk=3)
        finally:
            metrics._NUMPY_SORT_ON_CPU = True

    scores_t = scores.t().contiguous().numpy()

    def numpy_argsort() -> object:
        return np.argsort(scores_t, axis=1)

    def sklearn_loop() -> object:
        return [average_precision_score(y_np[:, k], scores_np[:, k]) for k in range(c)]

    fns = {"floor_sort_s": floor, "multilabel_metrics_s": ours,
           "multilabel_metrics_torch_sort_s": ours_torch_sort, "numpy_argsort_s": numpy_argsort,
           "sklearn_loop_s": sklearn_loop}
    repeats = 3 if quick else 11
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (no class of COCO val is empty, but be quiet)
        for fn in fns.values():  # warm-up
            fn()
        times: Dict[str, List[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():
                times[k].append(_time(fn))
        m = ours()
        m_torch = ours_torch_sort()
        ref = sklearn_loop()
    med = {k: statistics.median(v) for k, v in times.items()}
    ap_diff = max(abs(a - b) for a, b in zip(m["AP"], ref))
    same = m == m_torch
    return {
        "shape": [n, c],
        "targets": origin,
        "positive_rate": float(y_np.mean()),
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        **med,
        "ratio_ours_over_floor": med["multilabel_metrics_s"] / med["floor_sort_s"],
        "ratio_ours_torch_sort_over_floor": med["multilabel_metrics_torch_sort_s"]
        / med["floor_sort_s"],
        "ratio_sklearn_over_ours": med["sklearn_loop_s"] / med["multilabel_metrics_s"],
        "ratio_sklearn_over_ours_torch_sort": med["sklearn_loop_s"]
        / med["multilabel_metrics_torch_sort_s"],
        "both_sort_paths_identical": same,
        "mAP": m["mAP"],
        "max_abs_AP_diff_vs_sklearn": ap_diff,
    }


def ratios(r: Dict[str, object]) -> Dict[str, Dict[str, object]]:
    """The ``ratios`` block: the four ratios :func:`main` prints (values as in ``r``)."""
    floor, sk = "(a) floor: torch.sort(scores, dim=0)", "(c) sklearn average_precision_score loop"
    ours, ours_t = "(b) multilabel_metrics", "(b') multilabel_metrics, torch.sort path"
    tr = "x the baseline's time (lower is better)"
    return {"ratio_ours_over_floor": ratio(r["ratio_ours_over_floor"], floor, ours, tr),
            "ratio_ours_torch_sort_over_floor": ratio(r["ratio_ours_torch_sort_over_floor"],
                                                      floor, ours_t, tr),
            "ratio_sklearn_over_ours": ratio(r["ratio_sklearn_over_ours"], sk, ours,
                                             "x faster"),
            "ratio_sklearn_over_ours_torch_sort": ratio(
                r["ratio_sklearn_over_ours_torch_sort"], sk, ours_t, "x faster")}


def main(argv: List[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 11")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args(argv)
    r = run(quick=args.quick)
    print(f"scores [{r['shape'][0]}, {r['shape'][1]}] float32, {r['targets']}, "
          f"positive rate {r['positive_rate']:.4f}, {r['torch_threads']} torch threads, "
          f"median of {r['repeats']}")
    ms = lambda key: f"{r[key] * 1e3:9.1f} ms"  # noqa: E731
    print(f"(a)  floor: torch.sort(scores, dim=0)          {ms('floor_sort_s')}")
    print(f"(b)  multilabel_metrics (all metrics)          {ms('multilabel_metrics_s')}")
    print(f"(b') multilabel_metrics, torch.sort path       "
          f"{ms('multilabel_metrics_torch_sort_s')}")
    print(f"(d)  numpy.argsort of the [C, N] matrix        {ms('numpy_argsort_s')}")
    print(f"(c)  sklearn average_precision_score loop      {ms('sklearn_loop_s')}")
    print(f"(b)/(a)  = {r['ratio_ours_over_floor']:.2f}   (b')/(a) = "
          f"{r['ratio_ours_torch_sort_over_floor']:.2f}   (goal <= 1.5)")
    print(f"(c)/(b)  = {r['ratio_sklearn_over_ours']:.2f}   (c)/(b') = "
          f"{r['ratio_sklearn_over_ours_torch_sort']:.2f}")
    print(f"mAP {r['mAP']:.6f}; max |AP - sklearn AP| = {r['max_abs_AP_diff_vs_sklearn']:.2e}; "
          f"both sort paths identical: {r['both_sort_paths_identical']}")
    print("ratios (same run):\n" + format_ratios(ratios(r)))
    if args.json:
        write_results(r, ratios(r), args.json)


if __name__ == "__main__":
    main()
