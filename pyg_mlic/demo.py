"""``pyg-mlic demo``: the embedded default.

Runs on a fresh machine with no data and no internet: trains every registered
demo row (the baseline and each method, see
:func:`pyg_mlic.models.registry.register_demo_row`) briefly on the CPU on the
procedurally generated synthetic scenes, prints the paper-style table and writes
``metrics.json``, ``table.txt`` and plots to the output folder.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

from pyg_mlic.engine.recipes import SMALL

#: settings shared by every row, so the table compares methods, not recipes
DEMO_DEFAULTS = dict(epochs=SMALL["train"]["epochs"], num_images=SMALL["data"]["num_images"],
                     image_size=SMALL["data"]["image_size"],
                     batch_size=SMALL["train"]["batch_size"])
DEMO_TRAIN = {k: v for k, v in SMALL["train"].items() if k not in ("epochs", "batch_size")}
DEMO_MODEL = dict(SMALL["model"])
#: label embeddings of the graph methods (see :data:`pyg_mlic.engine.recipes.SMALL`)
DEMO_EMBEDDINGS = (SMALL["label_embeddings"],)


def train_row(model_name: str, cfg: Dict, splits: tuple, tcfg, out: Path,
              stage1_ckpts: Dict[str, Path], run_info: Optional[Dict] = None,
              label_embeddings: Optional[str] = "onehot") -> Tuple[Dict, list]:
    """Train one table row through :func:`pyg_mlic.engine.fit` and return
    ``(metrics, history)``.

    ``cfg`` are the row's model options (a ``label_embeddings`` entry overrides
    ``label_embeddings``); :data:`DEMO_MODEL` fills what the row does not set. Two-stage
    rows (IML-GCN) reuse the plain ``baseline`` row trained earlier in the same run as
    stage 1 (its checkpoint is recorded in ``stage1_ckpts``); without it stage 1 trains the
    ``asl`` model at the same settings first."""
    from pyg_mlic.engine import fit
    from pyg_mlic.engine.fit import uses_two_stage

    cfg = dict(cfg)
    row_emb = cfg.pop("label_embeddings", None)
    two_stage = uses_two_stage(model_name, row_emb)
    emb = row_emb if row_emb is not None else ("image-features" if two_stage
                                               else label_embeddings)
    options = {**DEMO_MODEL, **cfg}
    info = dict(run_info or {})
    if two_stage:
        if "baseline" in stage1_ckpts:
            options.setdefault("stage1_checkpoint", stage1_ckpts["baseline"])
        info["stage1"] = "baseline row" if "baseline" in stage1_ckpts else "asl (trained here)"
    res = fit(model_name, *splits, model_options=options, train_options=tcfg, out_dir=out,
              label_embeddings=emb, run_info=info)
    if model_name == "baseline" and not cfg:
        best = Path(out) / "best.pt"
        stage1_ckpts["baseline"] = best if best.exists() else Path(out) / "last.pt"
    return res, res.pop("history", [])


def demo_splits(num_images: int, image_size: int, seed: int = 0):
    """The demo's synthetic-scene splits (cached renders): ``num_images`` training scenes
    (random crop + flip), a validation split of a quarter (at least 50) and a test split
    of half (at least 100) as many, ``image_size`` pixels square."""
    from pyg_mlic.data.synthetic import SyntheticScenes
    from pyg_mlic.data.transforms import build_transforms

    kw = dict(image_size=image_size, seed=seed, cache=True)
    train = SyntheticScenes("train", num_images=num_images,
                            transform=build_transforms(True, image_size, scale=(0.85, 1.0)), **kw)
    val = SyntheticScenes("val", num_images=max(num_images // 4, 50),
                          transform=build_transforms(False, image_size), **kw)
    test = SyntheticScenes("test", num_images=max(num_images // 2, 100),
                           transform=build_transforms(False, image_size), **kw)
    return train, val, test


def run_demo(out: str = "runs/demo", epochs: Optional[int] = None,
             num_images: Optional[int] = None, image_size: Optional[int] = None,
             models: Optional[Sequence[str]] = None, seed: int = 0,
             progress: bool = True, ablations: bool = False) -> Dict[str, Dict]:
    """Train the demo rows and return ``{row: metrics}`` (also written to ``out``).

    With ``ablations=True`` the ablation tables registered by the models
    (:func:`pyg_mlic.models.registry.register_ablation`) are trained and printed too."""
    from pyg_mlic.engine import TrainConfig, model_context, write_json
    from pyg_mlic.metrics import format_table
    from pyg_mlic.models import ablation_tables, demo_rows, get_model_class

    epochs = epochs or DEMO_DEFAULTS["epochs"]
    num_images = num_images or DEMO_DEFAULTS["num_images"]
    image_size = image_size or DEMO_DEFAULTS["image_size"]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"demo: out {out} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = demo_rows()
    if models:
        unknown = [m for m in models if m not in rows]
        if unknown:
            raise SystemExit(f"unknown demo rows {unknown}; available: {list(rows)}")
        rows = {k: v for k, v in rows.items() if k in models}

    t_start = time.time()
    train, val, test = demo_splits(num_images, image_size, seed)
    print(f"synthetic scenes: {len(train)} train / {len(val)} val / {len(test)} test images, "
          f"{len(train.classes)} classes, {image_size}x{image_size}; "
          f"{len(rows)} models x {epochs} epochs on {torch.get_num_threads()} CPU threads")

    def train_rows(rows_: Dict[str, tuple], sub: str = "") -> Dict[str, Dict]:
        res: Dict[str, Dict] = {}
        for label, (model_name, cfg) in rows_.items():
            t0 = time.time()
            tcfg = TrainConfig(epochs=epochs, batch_size=DEMO_DEFAULTS["batch_size"], seed=seed,
                               progress=progress, **DEMO_TRAIN)
            slug = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label).strip("_")
            run_info = {"dataset": "synthetic", "image_size": image_size, "demo_row": label,
                        "model_options": cfg}
            two_stage = getattr(get_model_class(model_name), "two_stage", False)
            res[label], histories[label] = train_row(
                model_name, cfg, (train, val, test), tcfg, out_dir / sub / slug,
                stage1_ckpts, run_info, label_embeddings=emb_spec)
            note = ""
            if two_stage:
                note = (", baseline row reused as stage 1" if "baseline" in stage1_ckpts
                        else ", stage 1 + stage 2")
            print(f"  {label:<32} test mAP {100 * res[label]['mAP']:5.1f}  "
                  f"({time.time() - t0:5.1f} s{note})", flush=True)
        return res

    emb_spec = None
    for spec in DEMO_EMBEDDINGS:
        try:
            model_context(train, label_embeddings=spec)
            emb_spec = spec
            break
        except ImportError as e:
            print(f"(label embeddings {spec!r} unavailable: {e}; trying the next)")
    print(f"label embeddings: {emb_spec}")

    histories: Dict[str, list] = {}
    stage1_ckpts: Dict[str, Path] = {}
    results = train_rows(rows)
    ablation_results: Dict[str, Dict[str, Dict]] = {}
    if ablations:
        for table_name, trows in ablation_tables().items():
            print(f"ablation: {table_name}", flush=True)
            ablation_results[table_name] = train_rows(trows, sub="ablations")

    table = format_table(list(results.items()))
    print("\nSynthetic scenes (test split; weights chosen on the validation split)\n" + table)
    for table_name, res in ablation_results.items():
        t = format_table(list(res.items()))
        print(f"\n{table_name}\n{t}")
        table += f"\n\n{table_name}\n{t}"
    (out_dir / "table.txt").write_text(table + "\n")
    write_json(out_dir / "metrics.json", {
        "rows": results, "ablations": ablation_results, "dataset": "synthetic", "classes": train.classes,
        "settings": {"epochs": epochs, "num_images": num_images, "image_size": image_size,
                     "seed": seed, "train": DEMO_TRAIN, "model": DEMO_MODEL,
                     "label_embeddings": emb_spec},
        "total_time_s": time.time() - t_start})
    try:
        from pyg_mlic import viz
        from pyg_mlic.graphs import LabelGraph

        viz.plot_histories(histories, out_dir / "val_map.png")
        viz.plot_per_class_ap(results, train.classes, out_dir / "per_class_ap.png")
        g = LabelGraph.from_labels(train.labels, classes=train.classes, split="train")
        viz.plot_label_graph(g, out_dir / "label_graph.png")
        viz.plot_samples(test, out_dir / "samples.png", n=8)
        print(f"plots: {', '.join(str(p) for p in sorted(out_dir.glob('*.png')))}")
    except ImportError as e:  # matplotlib missing: the table is still there
        print(f"(plots skipped: {e})")
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'table.txt'} "
          f"in {time.time() - t_start:.0f} s")
    return results
