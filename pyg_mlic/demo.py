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
from typing import Dict, Optional, Sequence

import torch

#: settings shared by every row, so the table compares methods, not recipes
DEMO_DEFAULTS = dict(epochs=12, num_images=1500, image_size=64, batch_size=32)
DEMO_TRAIN = dict(optimizer="adam", lr=2e-3, backbone_lr=2e-3, weight_decay=1e-4, lr_step=None,
                  select="best_val")
DEMO_MODEL = dict(backbone="small_cnn")


def run_demo(out: str = "runs/demo", epochs: Optional[int] = None,
             num_images: Optional[int] = None, image_size: Optional[int] = None,
             models: Optional[Sequence[str]] = None, seed: int = 0,
             progress: bool = True) -> Dict[str, Dict]:
    """Train the demo rows and return ``{row: metrics}`` (also written to ``out``)."""
    from pyg_mlic.cli import format_table, model_context
    from pyg_mlic.data.synthetic import SyntheticScenes
    from pyg_mlic.data.transforms import build_transforms
    from pyg_mlic.engine import TrainConfig, Trainer, write_json
    from pyg_mlic.models import build_model, demo_rows

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
                            transform=build_transforms(True, image_size, scale=(0.7, 1.0)), **kw)
    val = SyntheticScenes("val", num_images=max(num_images // 4, 50),
                          transform=build_transforms(False, image_size), **kw)
    test = SyntheticScenes("test", num_images=max(num_images // 2, 100),
                           transform=build_transforms(False, image_size), **kw)
    print(f"synthetic scenes: {len(train)} train / {len(val)} val / {len(test)} test images, "
          f"{len(train.classes)} classes, {image_size}x{image_size}; "
          f"{len(rows)} models x {epochs} epochs on {torch.get_num_threads()} CPU threads")

    results: Dict[str, Dict] = {}
    histories: Dict[str, list] = {}
    for label, (model_name, cfg) in rows.items():
        t0 = time.time()
        ctx = model_context(train)
        model_cfg = {**DEMO_MODEL, **cfg}
        model = build_model(model_name, **{**ctx, **model_cfg})
        tcfg = TrainConfig(epochs=epochs, batch_size=DEMO_DEFAULTS["batch_size"], seed=seed,
                           progress=progress, **DEMO_TRAIN)
        row_dir = out_dir / label.replace(" ", "_").replace("(", "").replace(")", "")
        trainer = Trainer(model, train, val, test, tcfg, out_dir=row_dir,
                          run_info={"dataset": "synthetic", "image_size": image_size,
                                    "demo_row": label, "model_options": cfg})
        m = trainer.fit()
        results[label] = m
        histories[label] = trainer.history
        print(f"  {label:<28} test mAP {100 * m['mAP']:5.1f}  ({time.time() - t0:5.1f} s)")

    table = format_table(list(results.items()))
    print("\nSynthetic scenes (test split; weights chosen on the validation split)\n" + table)
    (out_dir / "table.txt").write_text(table + "\n")
    write_json(out_dir / "metrics.json", {
        "rows": results, "dataset": "synthetic", "classes": train.classes,
        "settings": {"epochs": epochs, "num_images": num_images, "image_size": image_size,
                     "seed": seed, "train": DEMO_TRAIN, "model": DEMO_MODEL},
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
