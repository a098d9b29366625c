"""Reproduce ML-GCN's Tables 1-2 (Chen et al., CVPR 2019): baseline, ML-GCN (Binary),
ML-GCN (Re-weighted) on MS-COCO 2014 or PASCAL VOC 2007, printed beside the paper's numbers.

The paper's protocol (Sec. 4.2), which is this script's default:

* ResNet-101 pre-trained on ImageNet, global max pooling (Eq. 3), 448x448 inputs, random
  crop + resize and horizontal flips for training, plain resize for testing;
* label graph from the *training* split's co-occurrence (Eq. 6), tau = 0.4 (Eq. 7) and,
  for the re-weighted row, p = 0.2 (Eq. 8); 300-d GloVe label embeddings; a 2-layer GCN
  (300 -> 1024 -> 2048, LeakyReLU 0.2) generating the classifiers (Eq. 4);
* SGD, momentum 0.9, weight decay 1e-4, lr 0.01 divided by 10 every 40 epochs, 100 epochs
  (the models' ``default_train_config``: backbone lr 0.001, head lr 0.01);
* evaluation of the last epoch on COCO val2014 / VOC 2007 test (no selection on the test
  set); VOC *difficult* labels are ignored in loss and metrics.

Rows: "ResNet-101" = :class:`pyg_mlic.models.Baseline` (backbone + GMP + linear layer),
"ML-GCN (Binary)" / "ML-GCN (Re-weighted)" = ``ml_gcn`` with ``scheme="binary"`` /
``"reweighted"``.

Usage with a GPU and the datasets (no weights are downloaded: give the torchvision
ResNet-101 ImageNet file, e.g. ``resnet101-63fe2227.pth``)::

    python benchmarks/reproduce_mlgcn.py --dataset coco --root /data/coco2014 \\
        --backbone-weights ~/weights/resnet101-63fe2227.pth --device cuda --workers 8
    python benchmarks/reproduce_mlgcn.py --dataset voc2007 --root /data/VOCdevkit/VOC2007 \\
        --backbone-weights ~/weights/resnet101-63fe2227.pth --device cuda

``--root`` for COCO holds ``train2014/``, ``val2014/`` and ``annotations/instances_*2014.json``
(or pass ``--train-file``/``--test-file``). Checkpoints go to ``--out/<row>/last.pt`` every
epoch; ``--resume`` continues an interrupted run. Label embeddings default to the GloVe
vectors of the ML-GCN release in ``<data>/embeddings/glove300_{coco,voc}.npz``.

Smoke run on the 8 real COCO images of the shared data (CPU, one epoch)::

    python benchmarks/reproduce_mlgcn.py --dataset coco --root ../shared/data/images/coco8 \\
        --train-file instances_train.json --test-file instances_val.json --epochs 1 \\
        --image-size 224 --backbone resnet50 --batch-size 4 --no-checkpoint

(numbers from such a run mean nothing: random initialisation, 4 training images.)

The JSON (``--json FILE``) carries, in its top-level ``ratios`` block, each ML-GCN row's
measured mAP over the measured baseline row's (same run), with the paper's ratio in the
entry's ``meaning``.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from _common import data_dir, machine, score_ratio, write_results

#: ML-GCN Table 1 (MS-COCO): mAP, CP, CR, CF1, OP, OR, OF1, then the top-3 CP ... OF1.
PAPER_COCO: Dict[str, List[float]] = {
    "ResNet-101": [77.3, 80.2, 66.7, 72.8, 83.9, 70.8, 76.8, 84.1, 59.4, 69.7, 89.1, 62.8, 73.6],
    "ML-GCN (Binary)": [80.3, 81.1, 70.1, 75.2, 83.8, 74.2, 78.7, 84.9, 61.3, 71.2, 88.8, 65.2,
                        75.2],
    "ML-GCN (Re-weighted)": [83.0, 85.1, 72.0, 78.0, 85.8, 75.4, 80.3, 89.2, 64.1, 74.6, 90.5,
                             66.5, 76.7],
}
COCO_COLUMNS = ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "CP_top3", "CR_top3", "CF1_top3",
                "OP_top3", "OR_top3", "OF1_top3"]

#: ML-GCN Table 2 (VOC 2007 test): AP of the 20 classes (VOC order), then mAP.
PAPER_VOC: Dict[str, List[float]] = {
    "ResNet-101": [99.5, 97.7, 97.8, 96.4, 65.7, 91.8, 96.1, 97.6, 74.2, 80.9, 85.0, 98.4, 96.5,
                   95.9, 98.4, 70.1, 88.3, 80.2, 98.9, 89.2, 89.9],
    "ML-GCN (Binary)": [99.6, 98.3, 97.9, 97.6, 78.2, 92.3, 97.4, 97.4, 79.2, 94.4, 86.5, 97.4,
                        97.9, 97.1, 98.7, 84.6, 95.3, 83.0, 98.6, 90.4, 93.1],
    "ML-GCN (Re-weighted)": [99.5, 98.5, 98.6, 98.1, 80.8, 94.6, 97.2, 98.2, 82.3, 95.7, 86.4,
                             98.2, 98.4, 96.7, 99.0, 84.7, 96.7, 84.3, 98.9, 93.7, 94.0],
}
VOC_SHORT = ["aero", "bike", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "table", "dog", "horse", "motor", "person", "plant", "sheep", "sofa", "train", "tv"]

#: the table rows: paper label -> (registered model, options)
ROWS: Dict[str, tuple] = {
    "ResNet-101": ("baseline", {}),
    "ML-GCN (Binary)": ("ml_gcn", {"scheme": "binary"}),
    "ML-GCN (Re-weighted)": ("ml_gcn", {"scheme": "reweighted"}),
}
ROW_KEYS = {"baseline": "ResNet-101", "binary": "ML-GCN (Binary)",
            "reweighted": "ML-GCN (Re-weighted)"}


def parse_paper_tables(path: Path) -> Dict[str, Dict[str, List[float]]]:
    """Read the three rows of Tables 1 and 2 from the plain-text ML-GCN paper (used by the
    tests to check the constants above against the paper)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    out: Dict[str, Dict[str, List[float]]] = {"coco": {}, "voc": {}}
    pats = {"ResNet-101": r"^ResNet-101 \[10\] ((?:[\d.]+ ?)+)$",
            "ML-GCN (Binary)": r"^ML-GCN \(Binary\) ((?:[\d.]+ ?)+)$",
            "ML-GCN (Re-weighted)": r"^ML-GCN \(Re-weighted\) ((?:[\d.]+ ?)+)$"}
    for name, pat in pats.items():
        for m in re.finditer(pat, text, flags=re.M):
            vals = [float(v) for v in m.group(1).split()]
            key = "coco" if len(vals) == 13 else "voc" if len(vals) == 21 else None
            if key and name not in out[key]:
                out[key][name] = vals
    return out


def default_embeddings(dataset: str) -> Optional[str]:
    name = {"coco": "glove300_coco.npz", "voc2007": "glove300_voc.npz"}[dataset]
    p = data_dir() / "embeddings" / name
    return f"npz:{p}" if p.is_file() else None


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Train and evaluate the selected rows; returns ``{"measured": {row: metrics}, ...}``."""
    import torch

    from pyg_mlic.data.factory import build_splits
    from pyg_mlic.engine import fit
    from pyg_mlic.metrics import UndefinedAPWarning

    if args.threads:
        torch.set_num_threads(args.threads)
    emb = args.label_embeddings or default_embeddings(args.dataset)
    if emb is None:
        raise SystemExit("no label embeddings: pass --label-embeddings (e.g. npz:glove300_coco.npz "
                         "or glove:glove.840B.300d.txt); the paper uses 300-d GloVe")
    train, _, test = build_splits(args.dataset, root=args.root, train_file=args.train_file,
                                  test_file=args.test_file, image_size=args.image_size,
                                  seed=args.seed, augment=not args.no_augment)
    deviations = []
    if args.backbone != "resnet101":
        deviations.append(f"backbone {args.backbone} (paper: resnet101)")
    if not args.backbone_weights:
        deviations.append("random backbone initialisation (paper: ImageNet weights)")
    if args.image_size != 448:
        deviations.append(f"{args.image_size} px inputs (paper: 448)")
    if args.epochs is not None and args.epochs != 100:
        deviations.append(f"{args.epochs} epochs (paper: 100)")
    print(f"{args.dataset}: {len(train)} training images ({train.split}), {len(test)} test "
          f"images ({test.split}), {len(train.classes)} classes; label embeddings {emb}")
    for d in deviations:
        print(f"  deviation from the paper's protocol: {d}")
    out_root = Path(args.out)
    measured: Dict[str, Any] = {}
    for key in args.rows:
        row = ROW_KEYS[key]
        model_name, opts = ROWS[row]
        t0 = time.time()
        if model_name == "ml_gcn":
            opts = dict(opts, tau=args.tau, p=args.p, convention=args.convention)
        options = dict(opts, backbone=args.backbone)
        if args.backbone_weights:
            options["backbone_weights"] = args.backbone_weights
        train_options = {k: v for k, v in dict(
            epochs=args.epochs, batch_size=args.batch_size, device=args.device,
            num_workers=args.workers, seed=args.seed, progress=not args.no_progress,
            select="last").items() if v is not None}
        run_info = {"dataset": args.dataset, "root": str(args.root), "image_size": args.image_size,
                    "row": row, "backbone": args.backbone,
                    "backbone_weights": args.backbone_weights}
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", row).strip("_")
        with warnings.catch_warnings():
            # tiny smoke sets have classes without test positives: left out of mAP (said once)
            warnings.simplefilter("ignore", UndefinedAPWarning)
            m = fit(model_name, train, None, test, model_options=options,
                    train_options=train_options, label_embeddings=emb,
                    out_dir=None if args.no_checkpoint else out_root / slug,
                    resume=args.resume, run_info=run_info)
        epochs = m["settings"]["train_config"]["epochs"]
        m.pop("history", None)
        m["settings"] = {k: v for k, v in m["settings"].items() if k != "classes"}
        measured[row] = m
        print(f"  {row:<22} mAP {100 * m['mAP']:5.1f}  ({time.time() - t0:.0f} s, "
              f"{epochs} epochs)", flush=True)
    return {"dataset": args.dataset, "measured": measured, "deviations": deviations,
            "paper": PAPER_COCO if args.dataset == "coco" else PAPER_VOC,
            "classes": list(train.classes), "machine": machine(),
            "num_train": len(train), "num_test": len(test)}


def _fmt(v: Optional[float]) -> str:
    return "      -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:7.1f}"


def format_comparison(res: Dict[str, Any]) -> str:
    """Paper rows and measured rows, one pair per method (values in %)."""
    lines: List[str] = []
    if res["dataset"] == "coco":
        cols = [f"{c.replace('_top3', ''):>7}" for c in COCO_COLUMNS]
        head = f"{'Method':<32}" + "".join(cols[:7]) + " |" + "".join(cols[7:])
        lines += [f"{'':<32}{'All':^49} |{'Top-3':^42}", head, "-" * len(head)]
        for row, m in res["measured"].items():
            p = PAPER_COCO[row]
            lines.append(f"{'paper    ' + row:<32}" + "".join(_fmt(v) for v in p[:7]) + " |"
                         + "".join(_fmt(v) for v in p[7:]))
            vals = [100 * m[c] if c in m else None for c in COCO_COLUMNS]
            lines.append(f"{'measured ' + row:<32}" + "".join(_fmt(v) for v in vals[:7]) + " |"
                         + "".join(_fmt(v) for v in vals[7:]))
    else:
        head = f"{'Method':<32}" + "".join(f"{c:>7}" for c in VOC_SHORT) + f"{'mAP':>7}"
        lines += [head, "-" * len(head)]
        for row, m in res["measured"].items():
            p = PAPER_VOC[row]
            lines.append(f"{'paper    ' + row:<32}" + "".join(_fmt(v) for v in p))
            ap = [None if a is None else 100 * a for a in m["AP"]]
            lines.append(f"{'measured ' + row:<32}" + "".join(_fmt(v) for v in ap)
                         + _fmt(100 * m["mAP"]))
    return "\n".join(lines)


def ratios(res: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The ``ratios`` block: each measured row's mAP over the measured baseline row's
    (the first row run), with the paper's ratio of the same rows beside it."""
    meas = res.get("measured", {})
    paper = res.get("paper", {})
    base = next(iter(meas), None)
    col = -1 if res.get("dataset") == "voc2007" else 0      # the mAP column of the table
    out: Dict[str, Dict[str, Any]] = {}
    if base is None or not meas[base].get("mAP"):
        return out
    for row, m in meas.items():
        if row == base:
            continue
        note = ""
        if base in paper and row in paper:
            note = f"; paper: {paper[row][col] / paper[base][col]:.3f}"
        out[f"measured mAP ratio {row} / {base}"] = score_ratio(
            m["mAP"], meas[base]["mAP"], f"{base} (measured)", f"{row} (measured)",
            note=note)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=["coco", "voc2007"])
    ap.add_argument("--root", required=True, help="dataset folder")
    ap.add_argument("--train-file", help="COCO: training instances json (default "
                    "annotations/instances_train2014.json); VOC: split name (trainval)")
    ap.add_argument("--test-file", help="COCO: test instances json (default "
                    "annotations/instances_val2014.json); VOC: split name (test)")
    ap.add_argument("--rows", nargs="+", default=list(ROW_KEYS), choices=list(ROW_KEYS),
                    help="which table rows to train (default: all three)")
    ap.add_argument("--backbone", default="resnet101")
    ap.add_argument("--backbone-weights", help="local ImageNet weights file of the backbone "
                    "(nothing is downloaded); default random init")
    ap.add_argument("--label-embeddings", help="embeddings spec (default: the GloVe vectors of "
                    "the ML-GCN release in <data>/embeddings)")
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--epochs", type=int, help="default: the models' 100")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--tau", type=float, default=0.4)
    ap.add_argument("--p", type=float, default=0.2)
    ap.add_argument("--convention", default="paper", choices=["paper", "mlgcn_code"])
    ap.add_argument("--device", help="cuda, cpu ... (default: cuda when available)")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--out", default="runs/reproduce_mlgcn")
    ap.add_argument("--no-checkpoint", action="store_true", help="write no checkpoints")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/<row>/last.pt")
    ap.add_argument("--json", help="write paper + measured numbers here")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    args = build_parser().parse_args(argv)
    if args.resume and args.no_checkpoint:
        raise SystemExit("--resume needs checkpoints (drop --no-checkpoint)")
    res = run(args)
    table = 1 if args.dataset == "coco" else 2
    print(f"\nML-GCN Table {table} ({'MS-COCO val2014' if table == 1 else 'VOC 2007 test'}): "
          f"paper vs measured ({res['num_train']} training / {res['num_test']} test images)")
    print(format_comparison(res))
    if res["deviations"]:
        print("measured with deviations from the paper's protocol: "
              + "; ".join(res["deviations"]))
    if args.json:
        write_results(res, ratios(res), args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
