"""Run every benchmark and the accuracy tables; write ``RESULTS.md``, ``RESULTS.rst``
(included by the docs) and ``results.json``.

Sections (``--only NAME ...`` selects some of them):

* speed benchmarks, each a script of this folder run in its own process with
  ``--quick`` (in quick mode) and its JSON output option:
  ``graphs`` (bench_graphs.py), ``metrics`` (bench_metrics.py), ``heads``
  (bench_heads.py: ML-GCN, IA-GCN and GM-MLIC heads, the last from bench_gm_mlic.py),
  ``regions`` (bench_regions.py), ``compare_features`` (compare_features.py: BCCD
  features, the engine against scikit-learn heads) and ``reproduce_mlgcn`` (reproduce_mlgcn.py as a smoke run on the
  8 real coco8 images: it proves the paper protocol runs end to end, its numbers mean
  nothing at that size);
* accuracy tables, every registered demo row
  (:func:`pyg_mlic.models.demo_rows`: the baseline and each method) trained briefly:
  ``synthetic`` (:func:`pyg_mlic.demo.run_demo`, the demo's settings), ``bccd`` (the
  BCCD blood-cell images, VOC format: train / val / test splits) and ``coco8`` (8 real
  COCO images: 4 train / 4 test, a smoke test of the image path on real photographs).

Every figure is reported as a ratio against a reference measured in the same run: the
speed benchmarks' own ``ratio_*`` figures (each script times its baseline beside the code
under test), and for the accuracy tables each row's mAP over the baseline row's mAP.
A section or a row that fails is recorded with its error; the run goes on.

Run: ``python benchmarks/run_all.py [--quick] [--only metrics synthetic ...] [--out DIR]``
(``make bench`` runs the full set; expect well over an hour on 2 CPU cores).
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

from benchmarks._common import data_dir, machine  # noqa: E402

#: speed / protocol benchmarks: ``name -> script`` (run in a subprocess)
SCRIPTS: Dict[str, str] = {
    "graphs": "bench_graphs.py",
    "metrics": "bench_metrics.py",
    "heads": "bench_heads.py",
    "regions": "bench_regions.py",
    "compare_features": "compare_features.py",
    "reproduce_mlgcn": "reproduce_mlgcn.py",
}
#: accuracy tables: every registered demo row on these datasets
ACCURACY = ("synthetic", "bccd", "coco8")
SECTIONS = tuple(SCRIPTS) + ACCURACY
BCCD_CLASSES = ["WBC", "RBC", "Platelets"]
#: small settings of the real-image tables (small_cnn backbone trained from scratch)
REAL_SETTINGS = {
    "bccd": {"full": dict(epochs=8, image_size=128, batch_size=16),
             "quick": dict(epochs=1, image_size=64, batch_size=16)},
    "coco8": {"full": dict(epochs=10, image_size=128, batch_size=4),
              "quick": dict(epochs=1, image_size=64, batch_size=4)},
}
SYNTHETIC_QUICK = dict(epochs=1, num_images=64, image_size=32)


# ----------------------------------------------------------------------------- helpers
def git_commit() -> str:
    """``HEAD``'s hash, ``+dirty`` when the work tree has uncommitted changes."""
    try:
        h = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                           text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        return (h or "unknown") + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_ratio_key(key: str) -> bool:
    k = key.lower()
    return ("ratio" in k or "_over_" in k or "speedup" in k) and not k.startswith("goal")


def collect_ratios(res: Any, prefix: str = "") -> Dict[str, Any]:
    """Flatten ``res`` and keep the in-run ratios (keys containing ``ratio`` or
    ``_over_``, e.g. ``pyg_over_dense``; not the goals) and the yes/no checks (booleans,
    e.g. ``goal_met``) a benchmark reports. List items are labelled by their ``name``
    (or ``C`` and ``D``) when they have one."""
    out: Dict[str, Any] = {}
    if isinstance(res, dict):
        for k, v in res.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, (dict, list)):
                out.update(collect_ratios(v, key))
            elif isinstance(v, bool) or (_is_ratio_key(str(k)) and _finite(v)):
                out[key] = v
    elif isinstance(res, list) and len(res) <= 50:
        for i, v in enumerate(res):
            if isinstance(v, dict) and ("name" in v or "C" in v):
                tag = v["name"] if "name" in v else ",".join(
                    f"{k}={v[k]}" for k in ("C", "D") if k in v)
                out.update(collect_ratios(v, f"{prefix}[{tag}]"))
            elif isinstance(v, (dict, list)):
                out.update(collect_ratios(v, f"{prefix}[{i}]"))
    return out


def _json_mode(script: Path) -> str:
    """``"flag"`` when the script's ``--json`` prints the result dict to stdout,
    ``"file"`` when it takes a path."""
    src = script.read_text()
    return "flag" if re.search(r"""["']--json["'][^)]*store_true""", src) else "file"


def script_command(name: str, quick: bool, json_path: Path, work: Path) -> List[str]:
    """The command line of benchmark ``name`` (see :data:`SCRIPTS`)."""
    script = HERE / SCRIPTS[name]
    cmd = [sys.executable, str(script)]
    if name == "reproduce_mlgcn":
        coco8 = data_dir() / "images" / "coco8"
        cmd += ["--dataset", "coco", "--root", str(coco8), "--train-file",
                "instances_train.json", "--test-file", "instances_val.json",
                "--epochs", "1", "--image-size", "64" if quick else "128",
                "--backbone", "resnet50", "--batch-size", "4", "--workers", "0",
                "--no-checkpoint", "--no-progress", "--out", str(work / "reproduce_mlgcn")]
    elif quick:
        cmd.append("--quick")
    cmd += ["--json"] if _json_mode(script) == "flag" else ["--json", str(json_path)]
    return cmd


def _last_json_object(text: str) -> Any:
    """The JSON document a ``--json`` flag printed (the last top-level ``{...}``)."""
    start = text.find("\n{")
    start = 0 if text.startswith("{") else (start + 1 if start >= 0 else -1)
    if start < 0:
        raise ValueError("no JSON object in the output")
    return json.loads(text[start:])


def run_script(name: str, quick: bool, work: Path, timeout: float) -> Dict[str, Any]:
    """Run one benchmark script; return its record (command, status, result, ratios)."""
    script = HERE / SCRIPTS[name]
    if not script.is_file():
        return {"status": "absent", "error": f"{script.name} not found"}
    json_path = work / f"{name}.json"
    cmd = script_command(name, quick, json_path, work)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PYTHONWARNINGS="ignore")
    t0 = time.time()
    shown = " ".join(_rel(c) for c in cmd).replace(str(work), "$TMP")
    rec: Dict[str, Any] = {"command": shown}
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
        rec.update(status="error", error=f"exit {p.returncode}: " + "\n".join(tail))
        return rec
    try:
        res = json.loads(json_path.read_text()) if json_path.is_file() \
            else _last_json_object(p.stdout)
    except (ValueError, OSError) as e:
        rec.update(status="error", error=f"could not read the JSON result: {e}",
                   stdout_tail=p.stdout[-2000:])
        return rec
    rec.update(status="ok", result=res, ratios=ratios_for(name, res))
    return rec


def ratios_for(name: str, res: Dict[str, Any]) -> Dict[str, Any]:
    """The in-run ratios of benchmark ``name``'s result dict."""
    if name == "reproduce_mlgcn":
        return reproduce_ratios(res)
    if name == "compare_features":
        return {**compare_ratios(res), **collect_ratios(res)}
    return collect_ratios(res)


def compare_ratios(res: Dict[str, Any], ref: str = "baseline (engine)") -> Dict[str, Any]:
    """compare_features: each test row's mAP over the engine baseline's, per block."""
    out: Dict[str, Any] = {}
    for block, rows in res.get("test", {}).items():
        base = rows.get(ref, {}).get("mAP")
        for row, m in rows.items():
            if base and _finite(m.get("mAP")):
                out[f"{block}: mAP {row} / {ref}"] = m["mAP"] / base
    return out


def reproduce_ratios(res: Dict[str, Any]) -> Dict[str, Any]:
    """mAP of each ML-GCN row over the baseline row's, measured and in the paper."""
    out: Dict[str, Any] = {}
    meas, paper = res.get("measured", {}), res.get("paper", {})
    base = next(iter(meas), None)
    for row, m in meas.items():
        if row == base:
            continue
        if base and meas[base].get("mAP"):
            out[f"measured mAP ratio {row} / {base}"] = m["mAP"] / meas[base]["mAP"]
        if base in paper and row in paper:
            out[f"paper mAP ratio {row} / {base}"] = paper[row][-1 if res.get(
                "dataset") == "voc2007" else 0] / paper[base][-1 if res.get(
                    "dataset") == "voc2007" else 0]
    return out


def _rel(s: str) -> str:
    """Paths under the project shown relative to it (commands are copy-pastable)."""
    s = str(s)
    if s == sys.executable:
        return "python"
    for base, rep in ((str(HERE) + os.sep, "benchmarks/"), (str(ROOT) + os.sep, "")):
        if s.startswith(base):
            return rep + s[len(base):]
    return s


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
    return {"status": "ok" if rows else "error", "settings": settings, "rows": out_rows,
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
    as the demo does (:func:`pyg_mlic.demo.two_stage_row`)."""
    import numpy as np
    import torch

    from pyg_mlic.cli import model_context
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
            ctx = model_context(train, label_embeddings="onehot")
            tcfg = TrainConfig(epochs=s["epochs"], batch_size=s["batch_size"], seed=0,
                               progress=False, **tr_cfg)
            if missing and getattr(get_model_class(model_name), "two_stage", False):
                # a label without a training image (coco8: 73 of 80) gets the mean image
                # feature, IML-GCN's documented fallback, instead of Eq. 5's error
                cfg = {**cfg, "on_missing": "mean"}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tiny test sets: classes without positives
                # the demo's row runner: IML-GCN reuses the baseline row as stage 1
                rows[label], _ = train_row(model_name, cfg, ctx, (train, val, test), tcfg,
                                           out, stage1_ckpts,
                                           {"dataset": name, "demo_row": label})
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


def report_blocks(res: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """The report as ``(kind, payload)`` blocks: ``h1``/``h2`` titles, ``p`` paragraphs,
    ``code`` literal text, ``table`` ``(header, rows)``; rendered to Markdown and RST."""
    b: List[Tuple[str, Any]] = [("h1", "Benchmark results")]
    recs = list(res.get("benchmarks", {}).values()) + list(res.get("accuracy", {}).values())
    modes = {bool(r.get("quick", res["quick"])) for r in recs} or {bool(res["quick"])}
    mode = ("sections from several runs, each marked full or quick" if len(modes) > 1 else
            "quick pass (--quick: few repeats, tiny trainings)" if modes == {True} else "full run")
    b.append(("p", f"Generated by benchmarks/run_all.py on {res['date']} at commit "
                   f"{res['git_commit']}; {mode}. Every figure is a ratio against a reference "
                   "measured in the same run (absolute times on a shared machine mean little)."))
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
            b.append(("p", f"{name}{_stamp(t, res)}: {desc}. "
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
                b.append(("p", f"{name}: failed rows (recorded, not fatal):"))
                b.append(("code", "\n".join(f"{k}: {v}" for k, v in errs.items())))
    bench = res.get("benchmarks", {})
    if bench:
        b.append(("h2", "Speed and protocol benchmarks (in-run ratios)"))
        for name, r in bench.items():
            head = f"{name}{_stamp(r, res)}: {r['status']}"
            if _finite(r.get("seconds")):
                head += f" ({r['seconds']:.0f} s)"
            b.append(("p", head))
            if r.get("command"):
                b.append(("code", r["command"]))
            if r.get("ratios"):
                b.append(("table", (["figure", "value"],
                                    [[k, _fmt(v)] for k, v in r["ratios"].items()])))
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


def write_report(res: Dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    blocks = report_blocks(res)
    (out_dir / "RESULTS.md").write_text(render_markdown(blocks))
    (out_dir / "RESULTS.rst").write_text(render_rst(blocks))


# ----------------------------------------------------------------------------- main
def _section_stamp(rec: Dict[str, Any], quick: bool) -> Dict[str, Any]:
    """Record with the section's own mode, date and commit (sections of a merged report
    can come from different runs)."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rec.update(quick=quick, date=now, git_commit=git_commit())
    return rec


def run(only: Optional[Sequence[str]] = None, quick: bool = False,
        out_dir: Path = HERE, timeout: Optional[float] = None,
        argv: Optional[Sequence[str]] = None, merge: bool = False) -> Dict[str, Any]:
    """Run the selected sections (default: all) and write the report to ``out_dir``
    after each one (a crash or Ctrl-C leaves the sections done so far).

    With ``merge=True`` the sections found in ``out_dir/results.json`` are kept and the
    ones run now replace them, so a long full report can be built a few sections at a
    time; each section records its own mode (full or quick), date and commit."""
    sel = list(only or SECTIONS)
    unknown = [s for s in sel if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    timeout = timeout or (900.0 if quick else 4 * 3600.0)
    cmd = "python benchmarks/run_all.py" + (" " + " ".join(argv) if argv else "")
    res: Dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(), "machine": machine(), "quick": quick,
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
        res["sections"] = [k for k in SECTIONS if k in res["benchmarks"] or k in res["accuracy"]
                           or k in sel]
    with tempfile.TemporaryDirectory(prefix="pyg_mlic_bench_") as tmp:
        work = Path(tmp)
        for name in sel:
            t0 = time.time()
            print(f"== {name}", flush=True)
            if name in SCRIPTS:
                rec = _section_stamp(run_script(name, quick, work, timeout), quick)
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
                res["accuracy"][name] = _section_stamp(rec, quick)
            print(f"   {rec['status']} in {time.time() - t0:.0f} s"
                  + (f": {rec['error'].splitlines()[-1]}" if rec.get("error") else ""),
                  flush=True)
            write_report(res, out_dir)
    write_report(res, out_dir)
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="fast pass: the scripts' --quick modes and tiny trainings")
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=SECTIONS,
                    help=f"sections to run (default: all): {', '.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, default=HERE,
                    help="folder of RESULTS.md / RESULTS.rst / results.json (default: benchmarks/)")
    ap.add_argument("--timeout", type=float, help="seconds per benchmark script")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other sections of OUT/results.json; replace the ones run now")
    ap.add_argument("--from-json", type=Path, metavar="RESULTS_JSON",
                    help="run nothing: re-render the reports from a results.json")
    args = ap.parse_args(argv)
    if args.from_json:
        res = json.loads(args.from_json.read_text())
        for name, rec in res.get("benchmarks", {}).items():
            if rec.get("status") == "ok" and "result" in rec:
                rec["ratios"] = ratios_for(name, rec["result"])
        write_report(res, args.out)
        print(f"re-rendered {args.from_json} into {args.out}")
        return 0
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    res = run(args.only, args.quick, args.out, args.timeout, argv, merge=args.merge)
    failed = [k for k, v in {**res["benchmarks"], **res["accuracy"]}.items()
              if v.get("status") == "error"]
    print(f"wrote {args.out / 'RESULTS.md'}, RESULTS.rst and results.json"
          + (f"; failed sections: {failed}" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
