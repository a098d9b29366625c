"""Partial labels: test mAP against the fraction of known training labels.

The partial-label protocol of the multi-label literature (e.g. Durand et al., CVPR 2019):
a seeded random fraction of the *training* labels is hidden
(:func:`pyg_mlic.data.partial.drop_labels`, the function behind ``pyg-mlic train
--drop-labels``; entries hidden uniformly at random, positives and negatives alike); the
losses ignore the hidden entries and the label-graph statistics count only pairs of
known entries (:func:`pyg_mlic.graphs.cooccurrence` with ``mask=``). Validation and test
labels are complete.

Rows: the baseline, each graph method (``ml_gcn``, ``a_gcn``, ``ia_gcn``,
``iml_gcn``, ``gm_mlic``) and the two attention heads whose label graph is learned
(``ml_decoder``, ``q2l``; their Asymmetric Loss ignores the hidden entries like every
other loss) at the demo's settings (:data:`pyg_mlic.engine.recipes.SMALL`:
small_cnn from scratch, 64 px, 800 synthetic scenes, 5 epochs of Adam, weights chosen on
the validation split; each row as :func:`pyg_mlic.demo.train_row` trains it through
:func:`pyg_mlic.engine.fit`, IML-GCN reusing the baseline row of the same known fraction
as its stage 1). Columns: 10 %, 30 %, 50 % and 100 % of the training labels known
(``drop_labels`` 0.9, 0.7, 0.5, 0; the same hidden entries for every method, seed 0).

Ratios (all measured in the same run): each method's mAP at each known fraction over the
same method at 100 % (how much of its accuracy survives the missing labels) and over the
baseline at the same fraction (what the method adds under the same labels).

Usage: ``python benchmarks/bench_partial_labels.py [--quick] [--json FILE]
[--methods baseline ml_gcn ...] [--known 0.1 0.3 0.5 1.0]``. ``--quick``: 48 scenes at
32 px, 1 epoch (checks the protocol runs; its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import (format_ratios, machine, ratio, score_ratio,  # noqa: E402
                                write_results)

#: the rows (demo rows of :func:`pyg_mlic.models.demo_rows`), baseline first: IML-GCN
#: reuses it as stage 1
METHODS = ("baseline", "ml_gcn", "a_gcn", "ia_gcn", "iml_gcn", "gm_mlic", "ml_decoder", "q2l")
#: fractions of the training labels that stay known
KNOWN = (0.1, 0.3, 0.5, 1.0)
QUICK = dict(epochs=1, num_images=48, image_size=32)
TITLE = "test mAP (%) vs known-label fraction of the training split, synthetic scenes"


def _pct(q: float) -> str:
    return f"{100 * q:g} %"


def run(quick: bool = False, methods: Sequence[str] = METHODS,
        known: Sequence[float] = KNOWN, seed: int = 0,
        work: Optional[Path] = None) -> Dict[str, Any]:
    """Train every ``(method, known fraction)`` row; return the results dict."""
    import torch

    from pyg_mlic.data.partial import drop_labels
    from pyg_mlic.demo import DEMO_DEFAULTS, DEMO_MODEL, DEMO_TRAIN, demo_splits, train_row
    from pyg_mlic.engine import TrainConfig
    from pyg_mlic.models import demo_rows, get_model_class

    rows_cfg = demo_rows()
    unknown = [m for m in methods if m not in rows_cfg]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(rows_cfg)}")
    bad = [q for q in known if not 0.0 < float(q) <= 1.0]
    if bad:
        raise SystemExit(f"known fractions must be in (0, 1], got {bad}")
    methods = [m for m in METHODS if m in methods] + [m for m in methods if m not in METHODS]
    known = sorted({float(q) for q in known})
    s = dict(QUICK) if quick else {k: DEMO_DEFAULTS[k] for k in
                                   ("epochs", "num_images", "image_size")}
    n, size = s["num_images"], s["image_size"]
    # the demo's splits (cached renders, shared by every row: the partial-label views wrap
    # the same training scenes)
    train, val, test = demo_splits(n, size, seed)
    tmp = tempfile.TemporaryDirectory(prefix="pyg_mlic_partial_") if work is None else None
    out_root = Path(tmp.name) if tmp is not None else Path(work)
    table: Dict[str, Dict[str, float]] = {m: {} for m in methods}
    errors: Dict[str, str] = {}
    seconds: Dict[str, float] = {}
    hidden: Dict[str, Any] = {}
    notes: List[str] = []
    # the same hidden entries for every method (one view per known fraction)
    parts = {q: drop_labels(train, 1.0 - q, seed=seed) if q < 1.0 else train for q in known}
    missing: Dict[float, List[str]] = {}
    for q, part in parts.items():
        hidden[_pct(q)] = getattr(part, "partial_labels", None)
        pos = np.asarray(part.labels, dtype=bool)
        if part.label_mask is not None:
            pos &= part.label_mask
        missing[q] = [c for c, k in zip(part.classes, pos.sum(0)) if k == 0]
        if missing[q]:
            notes.append(f"{_pct(q)} known: {len(missing[q])} label(s) without a known positive "
                         f"({', '.join(missing[q])}); the IML-GCN row uses on_missing='mean' "
                         "for their image-feature embeddings")
    # stage-1 checkpoints of the two-stage rows (the baseline row of the same fraction);
    # method-major order: the baseline runs first, the slowest method (GM-MLIC) last
    stage1: Dict[float, Dict[str, Path]] = {q: {} for q in known}
    try:
        for m in methods:
            for q in known:
                part = parts[q]
                model_name, cfg = rows_cfg[m]
                if missing[q] and getattr(get_model_class(model_name), "two_stage", False):
                    cfg = {**cfg, "on_missing": "mean"}
                key = f"{m} @ {_pct(q)}"
                t0 = time.time()
                tcfg = TrainConfig(epochs=s["epochs"], batch_size=DEMO_DEFAULTS["batch_size"],
                                   seed=seed, progress=False, **DEMO_TRAIN)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res, _ = train_row(model_name, cfg, (part, val, test), tcfg,
                                           out_root / f"known{int(round(100 * q))}" / m,
                                           stage1[q], {"dataset": "synthetic", "demo_row": m,
                                                    "known_fraction": q},
                                           label_embeddings="onehot")
                    table[m][_pct(q)] = float(res["mAP"])
                except Exception as e:  # noqa: BLE001 - a failed row is recorded
                    errors[key] = f"{type(e).__name__}: {e}"
                seconds[key] = time.time() - t0
                got = table[m].get(_pct(q))
                print(f"  {key:<22} " + (f"mAP {100 * got:5.1f}" if got is not None
                                         else "FAILED: " + errors[key])
                      + f"  ({seconds[key]:.0f} s)", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    cols = [_pct(q) for q in known]
    rows = [[m] + [f"{100 * table[m][c]:.1f}" if c in table[m] else "FAILED" for c in cols]
            for m in methods]
    settings = dict(s, batch_size=DEMO_DEFAULTS["batch_size"], train=DEMO_TRAIN,
                    model=DEMO_MODEL, label_embeddings="onehot", seed=seed,
                    known_fractions=known, methods=methods,
                    sizes={"train": len(train), "val": len(val), "test": len(test)},
                    data="synthetic scenes; test split (complete labels)",
                    torch_threads=torch.get_num_threads())
    return {"quick": quick, "settings": settings, "mAP": table, "hidden": hidden,
            "notes": notes, "errors": errors, "seconds": seconds, "all_rows_ran": not errors,
            "machine": machine(),
            "tables": [{"title": TITLE, "header": ["method", *cols], "rows": rows}]}


def ratios(r: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The ``ratios`` block: every method's mAP at each known fraction over the same method
    at 100 % known, and over the baseline at the same fraction (rows that ran only)."""
    out: Dict[str, Dict[str, Any]] = {}
    table: Dict[str, Dict[str, float]] = r["mAP"]
    full = _pct(1.0)
    for m, row in table.items():
        for col, v in row.items():
            if col != full and row.get(full):
                out[f"mAP {m} @ {col} / {m} @ {full}"] = ratio(
                    v / row[full], f"{m}, {full} of the training labels known",
                    f"{m}, {col} known",
                    "x the same method's mAP with every training label known (higher is "
                    "better)")
            base = table.get("baseline", {}).get(col)
            if m != "baseline" and base:
                out[f"mAP {m} / baseline @ {col}"] = score_ratio(
                    v, base, f"baseline, {col} known", f"{m}, {col} known")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"tiny run ({QUICK['num_images']} scenes, {QUICK['image_size']} px, "
                         f"{QUICK['epochs']} epoch)")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), metavar="ROW",
                    help=f"demo rows to train (default: {' '.join(METHODS)})")
    ap.add_argument("--known", nargs="+", type=float, default=list(KNOWN), metavar="Q",
                    help="known fractions of the training labels (default: 0.1 0.3 0.5 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="keep the runs in this folder")
    args = ap.parse_args(argv)
    r = run(args.quick, args.methods, args.known, args.seed, args.work)
    t = r["tables"][0]
    w = max(len(m) for m in r["mAP"]) + 2
    print(f"\n{TITLE}" + (" (quick)" if args.quick else ""))
    print("".join(f"{h:<{w}}" if i == 0 else f"{h:>8}" for i, h in enumerate(t["header"])))
    for row in t["rows"]:
        print("".join(f"{c:<{w}}" if i == 0 else f"{c:>8}" for i, c in enumerate(row)))
    for note in r["notes"]:
        print(f"note: {note}")
    rat = ratios(r)
    print("ratios (same run):\n" + format_ratios(rat))
    if args.json:
        write_results(r, rat, args.json)
    if r["errors"]:
        print(f"FAILED rows: {', '.join(r['errors'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
