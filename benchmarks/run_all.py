"""Run every benchmark and the accuracy tables; write ``RESULTS.md``, ``RESULTS.rst``
(included by the docs) and ``results.json``.

Sections (``--only NAME ...`` selects some of them):

* speed benchmarks, each a script of this folder run in its own process with
  ``--quick`` (in quick mode) and ``--json FILE``:
  ``graphs`` (bench_graphs.py), ``metrics`` (bench_metrics.py), ``heads``
  (bench_heads.py: ML-GCN, IA-GCN and GM-MLIC heads, the last from bench_gm_mlic.py, and
  the ML-Decoder / Query2Label heads against ResNet-101 at 448 px, C = 80 ... 1000),
  ``regions`` (bench_regions.py), ``compare_features`` (compare_features.py: BCCD
  features, the engine against scikit-learn heads) and ``reproduce`` (reproduce.py
  ``--method all`` as a smoke run on the 8 real coco8 images: it proves each paper's
  protocol runs end to end, its numbers mean nothing at that size);
* accuracy tables, every registered demo row
  (:func:`pyg_mlic.models.demo_rows`: the baseline and each method) trained briefly:
  ``synthetic`` (:func:`pyg_mlic.demo.run_demo`, the demo's settings), ``bccd`` (the
  BCCD blood-cell images, VOC format: train / val / test splits) and ``coco8`` (8 real
  COCO images: 4 train / 4 test, a smoke test of the image path on real photographs);
* ``partial_labels`` (bench_partial_labels.py): test mAP of the baseline, each graph
  method and the ML-Decoder / Query2Label heads on the synthetic scenes against the fraction of known training labels (10, 30,
  50, 100 %); its ``tables`` entry is rendered as a table of the report.

The harness contract (see ``benchmarks/_common.py``):

* every script writes one JSON with a top-level ``ratios`` block, ``name -> {"value",
  "baseline", "candidate", "meaning"}``: every speed or memory figure is a ratio of two
  things measured in the same run; the report shows exactly that block. A script that
  exits non-zero, writes no JSON or no valid ``ratios`` block is a failed section. The
  accuracy tables report each row's mAP over the baseline row's mAP.
* A section or a row that fails is recorded with its error and marked FAILED in the
  report; the run goes on, and ``run_all.py`` exits with status 1 at the end.
* The report is generated only from a clean commit: when ``git status --porcelain`` shows
  changes to tracked files (the report's own three files aside), nothing is written and
  the run stops with a one-line error. ``--allow-dirty`` writes a scratch report to
  another folder (``--out``), never to the committed ``benchmarks/RESULTS.*``. The report
  is stamped with the commit and carries no path of the machine it ran on.

Run: ``python benchmarks/run_all.py [--quick] [--only metrics synthetic ...] [--out DIR]``
(``make bench`` runs the full set; expect well over an hour on 2 CPU cores).
Exit status: 0 all sections ran, 1 a section failed or the report was refused.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import (check_ratios, data_dir, find_absolute_paths,  # noqa: E402
                                machine, sanitize, sanitize_text, score_ratio)

#: speed / protocol benchmarks: ``name -> script`` (run in a subprocess; a path relative
#: to this folder or absolute)
SCRIPTS: Dict[str, str] = {
    "graphs": "bench_graphs.py",
    "metrics": "bench_metrics.py",
    "heads": "bench_heads.py",
    "message_passing": "bench_message_passing.py",
    "regions": "bench_regions.py",
    "compare_features": "compare_features.py",
    "reproduce": "reproduce.py",
    "partial_labels": "bench_partial_labels.py",
}
#: accuracy tables: every registered demo row on these datasets
ACCURACY = ("synthetic", "bccd", "coco8")
SECTIONS = tuple(SCRIPTS) + ACCURACY
#: the report's files (written together into ``--out``)
OUTPUTS = ("RESULTS.md", "RESULTS.rst", "results.json")
BCCD_CLASSES = ["WBC", "RBC", "Platelets"]
#: small settings of the real-image tables (small_cnn backbone trained from scratch)
REAL_SETTINGS = {
    "bccd": {"full": dict(epochs=8, image_size=128, batch_size=16),
             "quick": dict(epochs=1, image_size=64, batch_size=16)},
    "coco8": {"full": dict(epochs=10, image_size=128, batch_size=4),
              "quick": dict(epochs=1, image_size=64, batch_size=4)},
}
SYNTHETIC_QUICK = dict(epochs=1, num_images=64, image_size=32)


def sections() -> Tuple[str, ...]:
    """Every section name, scripts first (read at call time: :data:`SCRIPTS` can grow)."""
    return tuple(SCRIPTS) + tuple(a for a in ACCURACY if a not in SCRIPTS)


# ----------------------------------------------------------------------------- git
def _git(*args: str, root: Path = ROOT) -> Optional[str]:
    """``git ARGS`` in ``root``: its standard output, or None when git fails."""
    try:
        p = subprocess.run(["git", *args], cwd=str(root), capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


def worktree_state(root: Path = ROOT, ignore: Sequence[Path] = ()
                   ) -> Tuple[Optional[str], Optional[List[str]]]:
    """``(HEAD's hash, changed tracked files)`` of the git work tree at ``root``: the
    ``git status --porcelain --untracked-files=no`` lines, leaving out the paths in
    ``ignore`` (the report's own files). ``(None, None)`` outside a git work tree."""
    head = _git("rev-parse", "HEAD", root=root)
    top = _git("rev-parse", "--show-toplevel", root=root)
    status = _git("status", "--porcelain", "--untracked-files=no", root=root)
    if head is None or top is None or status is None:
        return None, None
    top_real = os.path.realpath(top.strip())
    skip = {os.path.relpath(os.path.realpath(str(p)), top_real) for p in ignore}
    changes = []
    for line in status.splitlines():
        if not line.strip():
            continue
        paths = [p.strip().strip('"') for p in line[3:].split(" -> ")]
        if all(p in skip for p in paths):
            continue
        changes.append(line.rstrip())
    return head.strip(), changes


def _is_committed_report(out_dir: Path) -> bool:
    """Whether ``out_dir`` is where the committed report lives (``benchmarks/``, or any
    folder whose report files git tracks)."""
    out = Path(out_dir).resolve()
    if out == HERE.resolve():
        return True
    tracked = _git("ls-files", "--", *[str(out / f) for f in OUTPUTS])
    return bool(tracked and tracked.strip())


class ReportRefused(SystemExit):
    """The report may not be written here (uncommitted changes; see :func:`report_guard`).
    Exits with status 1 and its one-line message."""


def report_guard(out_dir: Path, allow_dirty: bool = False) -> Dict[str, str]:
    """Check that the report may be written to ``out_dir``; return its stamp
    ``{"git_commit": hash, "worktree": "clean" | ...}``.

    Raises :class:`ReportRefused` when the work tree has uncommitted changes to tracked
    files (or is no git work tree) and ``allow_dirty`` is false, and whenever such a
    report would go to the committed ``benchmarks/RESULTS.*``."""
    out = Path(out_dir)
    # the report's own files (here and at the committed place) are outputs, not inputs
    head, changes = worktree_state(ignore=[d / f for d in (out, HERE) for f in OUTPUTS])
    if head is not None and changes == []:
        return {"git_commit": head, "worktree": "clean"}
    if head is None:
        why = "this is not a git work tree (no commit to stamp)"
    else:
        shown = ", ".join(c[3:] for c in changes[:4]) + (", ..." if len(changes) > 4 else "")
        why = (f"the work tree has uncommitted changes to {len(changes)} tracked file(s) "
               f"({shown})")
    if not allow_dirty:
        raise ReportRefused(f"run_all.py: refusing to write the report: {why}; the report is "
                            "generated only from a clean commit (commit first, or pass "
                            "--allow-dirty --out OTHER_DIR for a scratch report)")
    if _is_committed_report(out):
        raise ReportRefused(f"run_all.py: refusing to write the committed report "
                            f"({sanitize_text(str(out))}/RESULTS.*): {why}, and --allow-dirty "
                            "never writes it (pass --out OTHER_DIR)")
    return {"git_commit": head or "unknown",
            "worktree": "uncommitted changes (--allow-dirty: a scratch report, not for "
                        "committing)"}


def git_commit() -> str:
    """``HEAD``'s hash (``unknown`` outside a git work tree). Never ``+dirty``: a report
    is written only from a clean commit, see :func:`report_guard`."""
    head, _ = worktree_state()
    return head or "unknown"


# ----------------------------------------------------------------------------- scripts
def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: keys whose values are settings, not checks (their booleans are options)
_SETTING_KEYS = ("quick", "settings", "machine", "run_info", "features", "config", "cfg",
                 "chosen", "selection_val")


def _is_setting_key(k: str) -> bool:
    k = k.lower()
    return k in _SETTING_KEYS or k.endswith(("_config", "_options", "_opts", "options"))


def collect_checks(res: Any, prefix: str = "") -> Dict[str, bool]:
    """The yes/no checks a benchmark reports (booleans in ``res``, e.g. ``goal_met``,
    ``both_sort_paths_identical``), flattened to dotted keys; list items are labelled by
    their ``name`` (or ``C`` and ``D``) when they have one. Not searched: the ``ratios``
    block and settings (``settings``, ``*_config``, ``*_options``, ``quick`` ...)."""
    out: Dict[str, bool] = {}
    if isinstance(res, dict):
        for k, v in res.items():
            if (not prefix and k == "ratios") or _is_setting_key(str(k)):
                continue
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, (dict, list)):
                out.update(collect_checks(v, key))
            elif isinstance(v, bool):
                out[key] = v
    elif isinstance(res, list) and len(res) <= 50:
        for i, v in enumerate(res):
            if isinstance(v, dict) and ("name" in v or "C" in v):
                tag = v["name"] if "name" in v else ",".join(
                    f"{k}={v[k]}" for k in ("C", "D") if k in v)
                out.update(collect_checks(v, f"{prefix}[{tag}]"))
            elif isinstance(v, (dict, list)):
                out.update(collect_checks(v, f"{prefix}[{i}]"))
    return out


def script_command(name: str, quick: bool, json_path: Path, work: Path) -> List[str]:
    """The command line of benchmark ``name`` (see :data:`SCRIPTS`)."""
    script = HERE / SCRIPTS[name]
    cmd = [sys.executable, str(script)]
    if name == "reproduce":
        coco8 = data_dir() / "images" / "coco8"
        cmd += ["--method", "all", "--dataset", "coco", "--root", str(coco8), "--train-file",
                "instances_train.json", "--test-file", "instances_val.json",
                "--epochs", "1", "--image-size", "64" if quick else "128",
                "--backbone", "small_cnn" if quick else "resnet50", "--batch-size", "4",
                "--detector-size", "64" if quick else "128", "--workers", "0",
                "--region-cache", str(work / "reproduce_regions"),
                "--no-checkpoint", "--no-progress", "--out", str(work / "reproduce")]
    elif quick:
        cmd.append("--quick")
    return cmd + ["--json", str(json_path)]


def _show(s: str, work: Optional[Path] = None) -> str:
    """Text of a command or an error as the report shows it: no path of this machine
    (the run's work folder reads ``$TMP``)."""
    return sanitize_text(s, {str(work): "$TMP"} if work is not None else None)


def run_script(name: str, quick: bool, work: Path, timeout: float) -> Dict[str, Any]:
    """Run one benchmark script; return its record (command, status, result, ratios,
    checks). Status ``ok`` needs exit status 0, the JSON file and a valid ``ratios``
    block; anything else is ``error`` (or ``absent``), each a failed section."""
    script = HERE / SCRIPTS[name]
    if not script.is_file():
        return {"status": "absent", "error": f"{script.name} not found"}
    json_path = work / f"{name}.json"
    cmd = script_command(name, quick, json_path, work)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PYTHONWARNINGS="ignore")
    t0 = time.time()
    rec: Dict[str, Any] = {"command": _show(" ".join(cmd), work)}
    try:
        p = subprocess.run(cmd, cwd=str(HERE), capture_output=True, text=True, env=env,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        rec.update(status="error", error=f"timed out after {timeout:.0f} s",
                   seconds=time.time() - t0)
        return rec
    rec["seconds"] = time.time() - t0
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-12:]
        rec.update(status="error", error=_show(f"exit {p.returncode}: " + "\n".join(tail), work))
        return rec
    try:
        res = json.loads(json_path.read_text())
    except (ValueError, OSError) as e:
        rec.update(status="error", error=_show(f"could not read the JSON result: {e}", work),
                   stdout_tail=_show(p.stdout[-2000:], work))
        return rec
    try:
        if not isinstance(res, dict) or "ratios" not in res:
            raise ValueError("the JSON result has no top-level 'ratios' block (write it "
                             "with benchmarks/_common.py: write_results)")
        ratios = check_ratios(res["ratios"])
    except ValueError as e:
        rec.update(status="error", error=_show(str(e), work), result=sanitize(res))
        return rec
    rec.update(status="ok", result=sanitize(res), ratios=ratios,
               checks=collect_checks(res))
    return rec


# ----------------------------------------------------------------------------- accuracy
KEEP = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "CP_top3", "CR_top3", "CF1_top3",
        "OP_top3", "OR_top3", "OF1_top3")


def _table_record(rows: Dict[str, Dict[str, Any]], errors: Dict[str, str],
                  settings: Dict[str, Any], seconds: Dict[str, float]) -> Dict[str, Any]:
    base = rows.get("baseline", {}).get("mAP")
    out_rows = {}
    for label, m in rows.items():
        r = {k: float(m[k]) for k in KEEP if k in m and _finite(m[k])}
        r["ratio_mAP_vs_baseline"] = (r["mAP"] / base) if base and "mAP" in r else None
        r["seconds"] = seconds.get(label)
        out_rows[label] = r
    ratios = {f"mAP {label} / baseline": score_ratio(r["mAP"], base, "baseline row",
                                                     f"{label} row")
              for label, r in out_rows.items() if base and "mAP" in r}
    # a table with failed rows is a failed section ("partial"), one with none "error"
    status = "error" if not rows else "partial" if errors else "ok"
    return {"status": status, "settings": settings, "rows": out_rows, "ratios": ratios,
            "errors": errors, "reference": "baseline row of the same table"}


def accuracy_synthetic(quick: bool, work: Path) -> Dict[str, Any]:
    """Every demo row on the synthetic scenes, one :func:`run_demo` call per row."""
    from pyg_mlic.demo import DEMO_DEFAULTS, DEMO_MODEL, DEMO_TRAIN, run_demo
    from pyg_mlic.models import demo_rows

    s = dict(SYNTHETIC_QUICK) if quick else {k: DEMO_DEFAULTS[k] for k in
                                             ("epochs", "num_images", "image_size")}
    rows, errors, secs = {}, {}, {}
    for label in demo_rows():
        t0 = time.time()
        try:
            res = run_demo(out=str(work / "synthetic" / f"row{len(secs) + len(errors)}"),
                           models=[label], progress=False, **s)
            rows[label] = res[label]
        except Exception as e:  # noqa: BLE001 - a failing row is recorded, not fatal
            errors[label] = _err(e)
        secs[label] = time.time() - t0
    settings = dict(s, batch_size=DEMO_DEFAULTS["batch_size"], train=DEMO_TRAIN,
                    model=DEMO_MODEL, data="synthetic scenes (test split)")
    return _table_record(rows, errors, settings, secs)


def _real_splits(name: str, image_size: int):
    from pyg_mlic.data.transforms import build_transforms

    tr_tf, te_tf = build_transforms(True, image_size), build_transforms(False, image_size)
    if name == "bccd":
        from pyg_mlic.data.voc import VOCDataset

        root = data_dir() / "images" / "bccd"
        kw = dict(classes=BCCD_CLASSES)
        return (VOCDataset(root, "train", transform=tr_tf, **kw),
                VOCDataset(root, "val", transform=te_tf, **kw),
                VOCDataset(root, "test", transform=te_tf, **kw))
    from pyg_mlic.data.coco import COCODataset

    root = data_dir() / "images" / "coco8"
    train = COCODataset(root, "instances_train.json", split="train", transform=tr_tf)
    test = COCODataset(root, "instances_val.json", split="test", transform=te_tf,
                       classes=train.classes)
    return train, None, test


def accuracy_real(name: str, quick: bool) -> Dict[str, Any]:
    """Every demo row trained briefly on BCCD or coco8 with the engine (small_cnn from
    scratch, the demo's optimiser; weights chosen on the validation split when there is
    one, else the last epoch). Two-stage models (IML-GCN) reuse the baseline row as stage 1,
    as the demo does (:func:`pyg_mlic.demo.train_row`)."""
    import numpy as np
    import torch

    from pyg_mlic.demo import DEMO_MODEL, DEMO_TRAIN, train_row
    from pyg_mlic.engine import TrainConfig
    from pyg_mlic.models import demo_rows, get_model_class

    s = REAL_SETTINGS[name]["quick" if quick else "full"]
    try:
        train, val, test = _real_splits(name, s["image_size"])
    except Exception as e:  # noqa: BLE001
        return {"status": "error", "error": _err(e), "settings": s, "rows": {}, "errors": {}}
    tr_cfg = dict(DEMO_TRAIN, select="best_val" if val is not None else "last")
    note = {"coco8": "a smoke test of the image path on real photographs: 4 training and 4 "
                     "test images, so the numbers carry no information about the methods",
            "bccd": "3 classes (WBC, RBC, Platelets), backbone trained from scratch at a small "
                    "input size: a check that every model trains on real images, not a "
                    "benchmark of the methods"}[name]
    rows, errors, secs = {}, {}, {}
    stage1_ckpts: Dict[str, Path] = {}
    missing = [c for c, n in zip(train.classes, np.asarray(train.labels).sum(0)) if n == 0]
    if missing:
        note += (f"; {len(missing)} label(s) have no training image, so the IML-GCN row uses "
                 "on_missing='mean' for their image-feature embeddings")
    work = tempfile.TemporaryDirectory(prefix=f"pyg_mlic_{name}_")
    for label, (model_name, cfg) in demo_rows().items():
        t0 = time.time()
        out = Path(work.name) / re.sub(r"[^A-Za-z0-9_-]+", "_", label)
        try:
            tcfg = TrainConfig(epochs=s["epochs"], batch_size=s["batch_size"], seed=0,
                               progress=False, **tr_cfg)
            if missing and getattr(get_model_class(model_name), "two_stage", False):
                # a label without a training image (coco8: 73 of 80) gets the mean image
                # feature, IML-GCN's documented fallback, instead of Eq. 5's error
                cfg = {**cfg, "on_missing": "mean"}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tiny test sets: classes without positives
                # the demo's row runner: IML-GCN reuses the baseline row as stage 1
                rows[label], _ = train_row(model_name, cfg, (train, val, test), tcfg,
                                           out, stage1_ckpts,
                                           {"dataset": name, "demo_row": label},
                                           label_embeddings="onehot")
        except Exception as e:  # noqa: BLE001 - a failing row is recorded, not fatal
            errors[label] = _err(e)
        secs[label] = time.time() - t0
        print(f"  {name:<6} {label:<28} "
              + (f"mAP {100 * rows[label]['mAP']:5.1f}" if label in rows else "FAILED")
              + f"  ({secs[label]:.0f} s)", flush=True)
    work.cleanup()
    settings = dict(s, train=tr_cfg, model=DEMO_MODEL, label_embeddings="onehot",
                    sizes={"train": len(train), "val": len(val) if val is not None else 0,
                           "test": len(test)}, classes=list(train.classes),
                    torch_threads=torch.get_num_threads())
    rec = _table_record(rows, errors, settings, secs)
    rec["note"] = note
    return rec


def _err(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


# ----------------------------------------------------------------------------- report
def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if _finite(v):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _stamp(rec: Dict[str, Any], res: Dict[str, Any]) -> str:
    """`` (full, 2026-11-28 10:00 UTC, abc1234)`` for a section of a merged report."""
    if "date" not in rec:
        return ""
    mode = "quick" if rec.get("quick", res.get("quick")) else "full"
    return f" ({mode}, {rec['date']}, {str(rec.get('git_commit', ''))[:12]})"


def failed_sections(res: Dict[str, Any]) -> Dict[str, str]:
    """``name -> why`` of every section of the report that failed: status other than
    ``ok`` (``error``, ``absent``, ``partial``: a table with failed rows)."""
    out: Dict[str, str] = {}
    for kind in ("benchmarks", "accuracy"):
        for name, rec in res.get(kind, {}).items():
            st = rec.get("status", "missing")
            errs = rec.get("errors") or {}
            if st == "ok" and not errs:
                continue
            if errs:
                why = f"{st}: {len(errs)} failed row(s): {', '.join(errs)}"
            else:
                lines = [x for x in str(rec.get("error") or "").strip().splitlines()
                         if x.strip()]
                if len(lines) > 1:  # "exit 1: Traceback ..." -> "exit 1: <the exception>"
                    lines = [f"{lines[0].split(':', 1)[0]}: {lines[-1].strip()}"]
                why = st + (f": {lines[0]}" if lines else "")
            out[name] = why
    return out


def _ratio_rows(ratios: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for k, r in ratios.items():
        if isinstance(r, dict):
            rows.append([k, _fmt(r.get("value")), str(r.get("meaning", "")),
                         str(r.get("candidate", "")), str(r.get("baseline", ""))])
        else:  # a report written before the ratios block existed
            rows.append([k, _fmt(r), "", "", ""])
    return rows


def report_blocks(res: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """The report as ``(kind, payload)`` blocks: ``h1``/``h2`` titles, ``p`` paragraphs,
    ``code`` literal text, ``table`` ``(header, rows)``; rendered to Markdown and RST."""
    b: List[Tuple[str, Any]] = [("h1", "Benchmark results")]
    recs = list(res.get("benchmarks", {}).values()) + list(res.get("accuracy", {}).values())
    modes = {bool(r.get("quick", res["quick"])) for r in recs} or {bool(res["quick"])}
    mode = ("sections from several runs, each marked full or quick" if len(modes) > 1 else
            "quick pass (--quick: few repeats, tiny trainings)" if modes == {True} else "full run")
    tree = res.get("worktree", "clean")
    at = f"commit {res['git_commit']}" + ("" if tree == "clean" else f" with {tree}")
    b.append(("p", f"Generated by benchmarks/run_all.py on {res['date']} at {at}; {mode}. "
                   "Every figure is a ratio against a reference measured in the same run "
                   "(absolute times on a shared machine mean little)."))
    failed = failed_sections(res)
    if failed:
        b.append(("p", f"FAILED sections ({len(failed)}; run_all.py exits with status 1):"))
        b.append(("code", "\n".join(f"{k}: {v}" for k, v in failed.items())))
    else:
        b.append(("p", f"All {len(recs)} sections ran without a failure."))
    b.append(("table", (["machine", "value"], [[k, str(v)] for k, v in res["machine"].items()])))
    b.append(("p", "Commands:"))
    b.append(("code", "\n".join(res["commands"])))
    acc = res.get("accuracy", {})
    if acc:
        b.append(("h2", "Accuracy (mAP and ratio against the baseline row)"))
        for name, t in acc.items():
            s = t.get("settings", {})
            desc = ", ".join(f"{k}={v}" for k, v in s.items()
                             if k in ("epochs", "num_images", "image_size", "batch_size", "sizes"))
            note = f" Note: {t['note']}." if t.get("note") else ""
            mark = f" FAILED ({failed[name]})." if name in failed else ""
            b.append(("p", f"{name}{_stamp(t, res)}:{mark} {desc}. "
                           f"Reference: {t.get('reference', 'baseline row')}."
                           + note))
            if t.get("rows"):
                rows = [[lab, f"{100 * r['mAP']:.1f}" if "mAP" in r else "-",
                         _fmt(r.get("ratio_mAP_vs_baseline")),
                         f"{100 * r['CF1']:.1f}" if "CF1" in r else "-",
                         f"{100 * r['OF1']:.1f}" if "OF1" in r else "-",
                         f"{r['seconds']:.0f}" if _finite(r.get("seconds")) else "-"]
                        for lab, r in t["rows"].items()]
                b.append(("table", (["row", "mAP %", "mAP / baseline", "CF1 %", "OF1 %",
                                     "seconds"], rows)))
            errs = dict(t.get("errors") or {})
            if t.get("error"):
                errs["(dataset)"] = t["error"]
            if errs:
                b.append(("p", f"{name}: failed rows:"))
                b.append(("code", "\n".join(f"{k}: {v}" for k, v in errs.items())))
    bench = res.get("benchmarks", {})
    if bench:
        b.append(("h2", "Speed and protocol benchmarks (in-run ratios)"))
        for name, r in bench.items():
            head = f"{name}{_stamp(r, res)}: " + ("FAILED" if name in failed else "") \
                + (f" ({r['status']})" if name in failed else r["status"])
            if _finite(r.get("seconds")):
                head += f" ({r['seconds']:.0f} s)"
            b.append(("p", head))
            if r.get("command"):
                b.append(("code", r["command"]))
            for t in (r.get("result") or {}).get("tables") or []:
                # a script's own tables: {"title", "header": [...], "rows": [[...]]}
                if isinstance(t, dict) and t.get("header") and isinstance(t.get("rows"), list):
                    if t.get("title"):
                        b.append(("p", f"{t['title']}:"))
                    b.append(("table", ([str(h) for h in t["header"]],
                                        [[str(c) for c in row] for row in t["rows"]])))
            if r.get("ratios"):
                b.append(("table", (["figure", "value", "meaning", "candidate", "baseline"],
                                    _ratio_rows(r["ratios"]))))
            if r.get("checks"):
                b.append(("table", (["check", "value"],
                                    [[k, _fmt(v)] for k, v in r["checks"].items()])))
            if r.get("error"):
                b.append(("code", r["error"]))
    return b


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: List[Tuple[str, Any]]) -> str:
    out: List[str] = []
    for kind, x in blocks:
        if kind == "h1":
            out += [f"# {x}", ""]
        elif kind == "h2":
            out += [f"## {x}", ""]
        elif kind == "p":
            out += [x, ""]
        elif kind == "code":
            out += ["```", x, "```", ""]
        elif kind == "table":
            head, rows = x
            out.append("| " + " | ".join(_md_cell(h) for h in head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            out.append("")
    return "\n".join(out)


def _rst_text(s: str) -> str:
    """Plain text safe for reStructuredText (no inline markup is interpreted)."""
    return re.sub(r"([\\*`|_])", r"\\\1", str(s).replace("\n", " "))


def render_rst(blocks: List[Tuple[str, Any]]) -> str:
    out: List[str] = []
    for kind, x in blocks:
        if kind in ("h1", "h2"):
            t = _rst_text(x)
            out += [t, ("=" if kind == "h1" else "-") * len(t), ""]
        elif kind == "p":
            out += [_rst_text(x), ""]
        elif kind == "code":
            out += ["::", ""] + ["    " + line for line in str(x).splitlines() or [""]] + [""]
        elif kind == "table":
            head, rows = x
            out += [".. list-table::", "   :header-rows: 1", ""]
            for r in [head, *rows]:
                cells = [_rst_text(c) or "\\ " for c in r]
                out.append(f"   * - {cells[0]}")
                out += [f"     - {c}" for c in cells[1:]]
            out.append("")
    return "\n".join(out)


def render_report(res: Dict[str, Any]) -> Dict[str, str]:
    """``file name -> text`` of the three report files, with every path of this machine
    removed (:func:`benchmarks._common.sanitize`); raises :class:`ValueError` if one
    were left."""
    res = sanitize(json.loads(json.dumps(res, default=str)))
    blocks = report_blocks(res)
    texts = {"results.json": json.dumps(res, indent=2) + "\n",
             "RESULTS.md": render_markdown(blocks), "RESULTS.rst": render_rst(blocks)}
    for fname, text in texts.items():
        left = find_absolute_paths(text)
        if left:
            raise ValueError(f"{fname} would carry absolute paths: {left[:3]}")
    return texts


def write_report(res: Dict[str, Any], out_dir: Path, allow_dirty: bool = False,
                 stamp: Optional[Dict[str, str]] = None) -> None:
    """Write RESULTS.md, RESULTS.rst and results.json into ``out_dir`` after checking
    :func:`report_guard` again (the tree must still be the one the run started from:
    same commit, and clean unless ``allow_dirty``)."""
    now = report_guard(out_dir, allow_dirty)
    if stamp is not None and now["git_commit"] != stamp["git_commit"]:
        raise ReportRefused(f"run_all.py: refusing to write the report: HEAD moved from "
                            f"{stamp['git_commit'][:12]} to {now['git_commit'][:12]} during "
                            "the run")
    texts = render_report(res)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for fname, text in texts.items():
        (out_dir / fname).write_text(text)


# ----------------------------------------------------------------------------- main
def _section_stamp(rec: Dict[str, Any], quick: bool, commit: str) -> Dict[str, Any]:
    """Record with the section's own mode, date and commit (sections of a merged report
    can come from different runs)."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rec.update(quick=quick, date=now, git_commit=commit)
    return rec


def run(only: Optional[Sequence[str]] = None, quick: bool = False,
        out_dir: Path = HERE, timeout: Optional[float] = None,
        argv: Optional[Sequence[str]] = None, merge: bool = False,
        allow_dirty: bool = False) -> Dict[str, Any]:
    """Run the selected sections (default: all) and write the report to ``out_dir``
    after each one (a crash or Ctrl-C leaves the sections done so far).

    Nothing runs when the report could not be written (:func:`report_guard`: uncommitted
    changes, unless ``allow_dirty`` and ``out_dir`` is not the committed report).

    With ``merge=True`` the sections found in ``out_dir/results.json`` are kept and the
    ones run now replace them, so a long full report can be built a few sections at a
    time; each section records its own mode (full or quick), date and commit."""
    all_sections = sections()
    sel = list(only or all_sections)
    unknown = [s for s in sel if s not in all_sections]
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {list(all_sections)}")
    stamp = report_guard(out_dir, allow_dirty)
    timeout = timeout or (900.0 if quick else 4 * 3600.0)
    cmd = "python benchmarks/run_all.py" + (" " + " ".join(argv) if argv else "")
    cmd = sanitize_text(cmd)
    res: Dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **stamp, "machine": machine(), "quick": quick,
        "sections": sel, "commands": [cmd], "benchmarks": {}, "accuracy": {}}
    old_path = Path(out_dir) / "results.json"
    if merge and old_path.is_file():
        old = json.loads(old_path.read_text())
        for kind in ("benchmarks", "accuracy"):
            for k, v in old.get(kind, {}).items():
                v.setdefault("quick", old.get("quick", False))
                v.setdefault("date", old.get("date"))
                v.setdefault("git_commit", old.get("git_commit"))
                res[kind][k] = v
        res["commands"] = [c for c in old.get("commands", []) if c != cmd] + [cmd]
        res["sections"] = [k for k in all_sections if k in res["benchmarks"]
                           or k in res["accuracy"] or k in sel]
    with tempfile.TemporaryDirectory(prefix="pyg_mlic_bench_") as tmp:
        work = Path(tmp)
        for name in sel:
            t0 = time.time()
            print(f"== {name}", flush=True)
            if name in SCRIPTS:
                rec = _section_stamp(run_script(name, quick, work, timeout), quick,
                                     stamp["git_commit"])
                res["benchmarks"][name] = rec
                if rec.get("command"):
                    res["commands"].append(rec["command"])
            else:
                try:
                    rec = accuracy_synthetic(quick, work) if name == "synthetic" \
                        else accuracy_real(name, quick)
                except Exception as e:  # noqa: BLE001
                    rec = {"status": "error", "error": _err(e), "rows": {}, "errors": {}}
                rec["seconds"] = time.time() - t0
                res["accuracy"][name] = _section_stamp(rec, quick, stamp["git_commit"])
            why = failed_sections({"benchmarks": {name: rec}}).get(name)
            print(f"   {'FAILED ' if why else ''}{rec['status']} in {time.time() - t0:.0f} s"
                  + (f": {_show(why.splitlines()[-1], work)}" if why else ""), flush=True)
            res["failed"] = sorted(failed_sections(res))
            write_report(res, out_dir, allow_dirty, stamp)
    res["failed"] = sorted(failed_sections(res))
    write_report(res, out_dir, allow_dirty, stamp)
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line; returns the exit status: 0 when every section of the report ran,
    1 when one failed (the report marks it). A refused report exits 1 too, with a
    one-line message and nothing written."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="fast pass: the scripts' --quick modes and tiny trainings")
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=sections(),
                    help=f"sections to run (default: all): {', '.join(sections())}")
    ap.add_argument("--out", type=Path, default=HERE,
                    help="folder of RESULTS.md / RESULTS.rst / results.json (default: benchmarks/)")
    ap.add_argument("--timeout", type=float, help="seconds per benchmark script")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other sections of OUT/results.json; replace the ones run now")
    ap.add_argument("--from-json", type=Path, metavar="RESULTS_JSON",
                    help="run nothing: re-render the reports from a results.json")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="write a scratch report although the work tree has uncommitted "
                         "changes; only with --out elsewhere than the committed benchmarks/")
    args = ap.parse_args(argv)
    try:
        if args.from_json:
            res = json.loads(args.from_json.read_text())
            write_report(res, args.out, args.allow_dirty)
            print(f"re-rendered {sanitize_text(str(args.from_json))} into "
                  f"{sanitize_text(str(args.out))}")
        else:
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
            res = run(args.only, args.quick, args.out, args.timeout, argv, merge=args.merge,
                      allow_dirty=args.allow_dirty)
            print(f"wrote {sanitize_text(str(args.out / 'RESULTS.md'))}, RESULTS.rst and "
                  "results.json")
    except ReportRefused as e:
        print(e.code, file=sys.stderr)
        return 1
    failed = failed_sections(res)
    if failed:
        print("FAILED sections: " + "; ".join(f"{k} ({v.splitlines()[0]})"
                                              for k, v in failed.items()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
