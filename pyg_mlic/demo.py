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

#: settings shared by every row, so the table compares methods, not recipes
DEMO_DEFAULTS = dict(epochs=5, num_images=800, image_size=64, batch_size=32)
DEMO_TRAIN = dict(optimizer="adam", lr=2e-3, backbone_lr=2e-3, weight_decay=1e-4, lr_step=None,
                  select="best_val")
DEMO_MODEL = dict(backbone="small_cnn")
#: label embeddings of the graph methods. One-hot: with a backbone trained from scratch
#: for a few epochs, 50-d GloVe (``--label-embeddings glove``) trained ML-GCN to a much lower
#: validation mAP here (0.33 vs 0.64 after 6 epochs on 1200 images, measured), because
#: near-identical word vectors start all classifiers nearly equal.
DEMO_EMBEDDINGS = ("onehot",)


#: options of a two-stage row (IML-GCN) read by the recipe, not by the model
TWO_STAGE_ROW_KEYS = ("label_embeddings", "pca", "n_components", "on_missing")


def two_stage_row(model_name: str, cfg: Dict, ctx: Dict, splits: tuple, tcfg,
                  out: Path, stage1_ckpts: Dict[str, Path], run_info: Dict) -> Dict:
    """A demo row trained with the two-stage recipe
    (:func:`pyg_mlic.engine.two_stage.run_two_stage`, IML-GCN): the ``baseline`` row
    trained earlier in the same demo run is reused as stage 1 (its encoder gives the
    image-feature embeddings and initialises the row's encoder); without it, stage 1
    trains the ``asl`` model at the same demo settings first."""
    from pyg_mlic.engine.two_stage import run_two_stage

    cfg = dict(cfg)
    recipe = {k: cfg.pop(k) for k in TWO_STAGE_ROW_KEYS if k in cfg}
    recipe.setdefault("label_embeddings", "image-features")
    opts = {k: v for k, v in ctx.items() if k not in ("label_embeddings", "label_embeddings_spec")}
    opts.update(DEMO_MODEL)
    opts.update(cfg)
    train, val, test = splits
    return run_two_stage(train, val, test, out_dir=out, model=model_name, model_options=opts,
                         stage1_config=tcfg, stage2_config=tcfg,
                         stage1_checkpoint=stage1_ckpts.get("baseline"),
                         run_info={**run_info, "stage1": "baseline row" if "baseline" in
                                   stage1_ckpts else "asl (trained here)"},
                         seed=tcfg.seed, **recipe)


def train_row(model_name: str, cfg: Dict, ctx: Dict, splits: tuple, tcfg, out: Path,
              stage1_ckpts: Dict[str, Path], run_info: Optional[Dict] = None,
              seed: int = 0) -> Tuple[Dict, list]:
    """Train one table row and return ``(metrics, history)``: the two-stage recipe for
    models with ``two_stage`` (:func:`two_stage_row`), else the engine on ``splits``.
    The plain ``baseline`` row records its checkpoint in ``stage1_ckpts`` so that the
    two-stage rows after it reuse it as stage 1."""
    from pyg_mlic.engine import Trainer, seed_everything
    from pyg_mlic.models import build_model, get_model_class

    run_info = dict(run_info or {})
    if getattr(get_model_class(model_name), "two_stage", False):
        res = two_stage_row(model_name, cfg, ctx, splits, tcfg, out, stage1_ckpts, run_info)
        return res, res.pop("history", [])
    seed_everything(seed)
    model = build_model(model_name, **{**ctx, **DEMO_MODEL, **cfg})
    train, val, test = splits
    trainer = Trainer(model, train, val, test, tcfg, out_dir=out, run_info=run_info)
    res = trainer.fit()
    if model_name == "baseline" and not cfg:
        best = Path(out) / "best.pt"
        stage1_ckpts["baseline"] = best if best.exists() else Path(out) / "last.pt"
    return res, trainer.history


def run_demo(out: str = "runs/demo", epochs: Optional[int] = None,
             num_images: Optional[int] = None, image_size: Optional[int] = None,
             models: Optional[Sequence[str]] = None, seed: int = 0,
             progress: bool = True, ablations: bool = False) -> Dict[str, Dict]:
    """Train the demo rows and return ``{row: metrics}`` (also written to ``out``).

    With ``ablations=True`` the ablation tables registered by the models
    (:func:`pyg_mlic.models.registry.register_ablation`) are trained and printed too."""
    from pyg_mlic.cli import format_table, model_context
    from pyg_mlic.data.synthetic import SyntheticScenes
    from pyg_mlic.data.transforms import build_transforms
    from pyg_mlic.engine import TrainConfig, write_json
    from pyg_mlic.models import ablation_tables, demo_rows, get_model_class

    epochs = epochs or DEMO_DEFAULTS["epochs"]
    num_images = num_images or DEMO_DEFAULTS["num_images"]
    image_size = image_size or DEMO_DEFAULTS["image_size"]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = demo_rows()
    if models:
        unknown = [m for m in models if m not in rows]
        if unknown:
            raise SystemExit(f"unknown demo rows {unknown}; available: {list(rows)}")
        rows = {k: v for k, v in rows.items() if k in models}

    t_start = time.time()
    kw = dict(image_size=image_size, seed=seed, cache=True)
    train = SyntheticScenes("train", num_images=num_images,
                            transform=build_transforms(True, image_size, scale=(0.85, 1.0)), **kw)
    val = SyntheticScenes("val", num_images=max(num_images // 4, 50),
                          transform=build_transforms(False, image_size), **kw)
    test = SyntheticScenes("test", num_images=max(num_images // 2, 100),
                           transform=build_transforms(False, image_size), **kw)
    print(f"synthetic scenes: {len(train)} train / {len(val)} val / {len(test)} test images, "
          f"{len(train.classes)} classes, {image_size}x{image_size}; "
          f"{len(rows)} models x {epochs} epochs on {torch.get_num_threads()} CPU threads")

    def train_rows(rows_: Dict[str, tuple], sub: str = "") -> Dict[str, Dict]:
        res: Dict[str, Dict] = {}
        for label, (model_name, cfg) in rows_.items():
            t0 = time.time()
            ctx = model_context(train, label_embeddings=emb_spec)
            tcfg = TrainConfig(epochs=epochs, batch_size=DEMO_DEFAULTS["batch_size"], seed=seed,
                               progress=progress, **DEMO_TRAIN)
            slug = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label).strip("_")
            run_info = {"dataset": "synthetic", "image_size": image_size, "demo_row": label,
                        "model_options": cfg}
            two_stage = getattr(get_model_class(model_name), "two_stage", False)
            res[label], histories[label] = train_row(
                model_name, cfg, ctx, (train, val, test), tcfg, out_dir / sub / slug,
                stage1_ckpts, run_info, seed=seed)
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
