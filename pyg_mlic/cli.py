"""Command-line interface: ``pyg-mlic train|eval|predict|graph|demo``.

Also runnable as ``python -m pyg_mlic.cli ...``.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pyg_mlic.version import __version__


def _parse_set(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``["tau=0.4", "widths=[1024,2048]"]`` → ``{"tau": 0.4, "widths": [1024, 2048]}``."""
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def _int_at_least(low: int, what: str):
    """An argparse ``type``: an integer ``>= low``; anything else is refused at parse
    time, never replaced by a default (``--image-size 0`` is an error, not 224 px)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = parse.__qualname__ = what
    parse.__doc__ = f"An integer >= {low} ({what})."
    return parse


#: options that count something: pixels, images, epochs, rows per batch, threads
positive_int = _int_at_least(1, "positive_int")
#: seeds, numbers of workers, top-k shown
nonnegative_int = _int_at_least(0, "nonnegative_int")


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--amp`` of the commands that run a trained model (eval, predict)."""
    p.add_argument("--device", help="where the forward passes run: cpu, cuda, cuda:N, mps "
                   "(default: cuda when available, else cpu)")
    p.add_argument("--amp", choices=["bf16", "fp16"],
                   help="autocast the forward pass to bfloat16 or float16 (scores are "
                        "computed on fp32 logits); default: full precision")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from pyg_mlic.data.factory import DATASETS

    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", help="dataset folder (image datasets)")
    p.add_argument("--train-file", help="training annotations / list / features .npz")
    p.add_argument("--test-file", help="test annotations / list / features .npz")
    p.add_argument("--val-file", help="validation annotations / list / features .npz")
    p.add_argument("--classes", metavar="NAMES",
                   help="coco / voc2007: the label columns, comma-separated (e.g. "
                        "WBC,RBC,Platelets for the VOC-format BCCD), or 'infer' (VOC: the "
                        "names in the training split's annotations, sorted); default: the "
                        "dataset's own (COCO: the file's categories; VOC: the 20 VOC "
                        "classes); eval: the checkpoint's")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out this fraction of the training split for validation "
                        "when the dataset has no validation split (default: 0)")
    p.add_argument("--image-size", type=positive_int,
                   help="network input side (default: 448, the papers'; 64 for --dataset "
                        "synthetic)")
    p.add_argument("--num-images", type=positive_int,
                   help="synthetic scenes: training-set size (default: 800)")
    p.add_argument("--no-augment", action="store_true", help="no random crop/flip in training")
    p.add_argument("--drop-labels", type=float, default=0.0, metavar="FRACTION",
                   help="partial labels: hide this seeded random fraction (0 <= F < 1) of the "
                        "training split's known labels; losses and label statistics ignore "
                        "them, validation and test are untouched (default: 0)")
    p.add_argument("--data-opt", action="append", metavar="KEY=VALUE",
                   help="a transform setting over the model paper's (repeatable): "
                        "train=random_resized_crop|resize_crop|resize, resize=512, crop=448, "
                        "scale=(0.5,1.0), ratio=(0.75,1.33), flip_p=0.5, randaugment=True or "
                        "{'num_ops':2,'magnitude':9,'geometric':False}, cutout=0.5, "
                        "mean=(...), std=(...) (default: the backbone's; see "
                        "pyg_mlic.data.factory.resolve_data_config)")
    p.add_argument("--regions", metavar="BACKEND",
                   help="add ROIs from a region backend to every sample (IA-GCN, GM-MLIC): "
                        "auto, torchvision, detectron2, precomputed, groundtruth; extracted "
                        "once into an on-disk cache (see pyg_mlic.detection.RegionDataset)")
    p.add_argument("--region-opt", action="append", metavar="KEY=VALUE",
                   help="a region-backend argument, e.g. weights=PATH, mode=rpn, path=DIR "
                        "(repeatable)")
    p.add_argument("--max-instances", type=positive_int,
                   help="ROIs kept per image by the region backend (default: the backend's)")
    p.add_argument("--region-cache", help="folder of the ROI cache (default: ~/.cache/pyg_mlic)")


def _drop_fraction(args) -> float:
    """``--drop-labels``, checked (one-line error outside [0, 1))."""
    from pyg_mlic.data.partial import check_drop_fraction

    try:
        return check_drop_fraction(getattr(args, "drop_labels", 0.0) or 0.0, "--drop-labels")
    except ValueError as e:
        raise SystemExit(f"{getattr(args, 'command', 'train')}: {e}") from None


def _splits(args, *, model: Optional[str] = None, backbone: Optional[str] = None,
            data_config: Optional[Dict[str, Any]] = None, check: bool = True,
            classes: Optional[Sequence[str]] = None, test_only: bool = False):
    """The splits of ``args.dataset`` with the transforms of the run
    (:func:`pyg_mlic.data.factory.resolve_data_config`): the normalisation of the backbone
    the model uses and the augmentation of the model's paper, ``--data-opt`` over both.

    ``model`` / ``backbone`` default to what the command line names: ``train``'s
    ``--model`` and ``--backbone`` (or ``--set backbone=``; the model's own default
    otherwise, ``small_cnn`` on the synthetic scenes as the demo recipe), ``eval``'s
    checkpoint (its recorded data config). ``data_config`` entries override
    ``--data-opt``'s. ``check=False``: the splits are not checked against each other (``eval``
    reads only the test split; the checkpoint's classes are checked instead). ``classes``:
    the label columns of coco / voc2007 when ``--classes`` is not given (``eval``: the
    checkpoint's). ``test_only``: ``(None, None, test)``, no training file read
    (``eval``)."""
    from pyg_mlic.data.factory import build_splits, checkpoint_data_config

    overrides = _parse_set(getattr(args, "data_opt", None))
    model = model or getattr(args, "model", None)
    if model is not None and backbone is None:
        backbone = getattr(args, "backbone", None) or _parse_set(
            getattr(args, "set", None)).get("backbone")
        if backbone is None and args.dataset == "synthetic":
            from pyg_mlic.engine.recipes import SMALL

            backbone = SMALL["model"]["backbone"]
    elif model is None and backbone is None and getattr(args, "checkpoint", None) \
            and args.dataset != "features":
        from pyg_mlic.engine import load_checkpoint

        recorded = checkpoint_data_config(load_checkpoint(args.checkpoint))
        backbone = backbone or recorded["backbone"]
        overrides = {"mean": recorded["mean"], "std": recorded["std"], **overrides}
    model_cls = None
    if model is not None:
        from pyg_mlic.models import get_model_class

        model_cls = get_model_class(model)
    drop, regions = _drop_fraction(args), bool(getattr(args, "regions", None))
    splits = build_splits(args.dataset, root=args.root, train_file=args.train_file,
                          test_file=args.test_file, val_file=args.val_file,
                          image_size=args.image_size or 448, val_fraction=args.val_fraction,
                          seed=getattr(args, "seed", 0), num_images=args.num_images,
                          augment=not args.no_augment, model=model_cls, backbone=backbone,
                          data_config={**overrides, **(data_config or {})}, check=check,
                          drop_labels=0.0 if regions else drop,
                          classes=_class_list(getattr(args, "classes", None),
                                              args.command) or classes,
                          test_only=test_only)
    if not regions:
        return splits
    from pyg_mlic.data.partial import drop_labels
    from pyg_mlic.detection import RegionDataset, build_region_extractor

    opts = _parse_set(args.region_opt)
    if args.max_instances is not None:
        opts["max_instances"] = args.max_instances
    extractor = build_region_extractor(args.regions, model=model_cls, **opts)
    root = {"root": args.region_cache} if args.region_cache else {}
    train, *rest = (None if ds is None else RegionDataset(ds, extractor, **root)
                    for ds in splits)
    # --drop-labels after the wrap (the same entries build_splits would hide): the ROI
    # cache stays keyed by the images alone, shared with runs on complete labels
    return (train if train is None else drop_labels(train, drop, seed=getattr(args, "seed", 0)),
            *rest)


# ---------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from pyg_mlic.engine import distributed
    from pyg_mlic.engine.fit import check_fit_options

    # a typo in --model / --set is caught here, before any process or data is started
    check_fit_options(args.model, _parse_set(args.set), label_embeddings=args.label_embeddings,
                      label_graph=args.label_graph)
    if args.regions:  # a detection pass over every image for a model that reads no ROI
        from pyg_mlic.models import list_models
        from pyg_mlic.models.registry import model_option_names

        if "rois" not in model_option_names(args.model):
            import warnings

            readers = [m for m in list_models() if "rois" in model_option_names(m)]
            warnings.warn(f"{args.model} reads no regions: --regions {args.regions} only "
                          f"builds the ROI cache (shared with the models that read it: "
                          f"{', '.join(readers)})", UserWarning, stacklevel=2)

    if getattr(args, "nproc", 1) < 1:
        raise SystemExit(f"train: --nproc must be >= 1, got {args.nproc}")
    _check_out_dir(args)
    if getattr(args, "nproc", 1) > 1 and not distributed.under_launcher():
        # --nproc N: re-run this command in N processes under torch.distributed.run
        return distributed.relaunch(args._train_parser, args, "train", args.nproc)
    distributed.init_distributed(args.device)  # no-op unless started by torchrun
    try:
        return _train(args)
    finally:
        distributed.destroy()


#: what a run writes directly under OUT (``--overwrite`` removes these, nothing else)
RUN_FILES = ("last.pt", "best.pt", "metrics.json", "history.json", "stages.json")


def _check_output_file(command: str, flag: str, path: Optional[str]) -> None:
    """An output file option (``--out`` of eval / export / graph / extract-features,
    ``--output``, ``--plot``) that names a folder is refused before any work, not after
    it when the write fails."""
    if path and Path(path).is_dir():
        raise SystemExit(f"{command}: {flag} {path} is a folder; name the file to write")


def _check_out_dir(args) -> None:
    """``--out`` must be a folder; one that holds a run already is continued
    (``--resume``), replaced (``--overwrite``: its run files are removed first, so no
    checkpoint of the old run is left beside the new one) or refused, never silently
    written over."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"train: --out {out} is a file, not a folder")
    held = [f for f in RUN_FILES if (out / f).is_file()]
    if not held or args.resume:
        return
    if not getattr(args, "overwrite", False):
        raise SystemExit(f"train: {out} already holds a run ({', '.join(held)}); pass "
                         f"--resume to continue it, --overwrite to replace it, or another "
                         f"--out")
    from pyg_mlic.engine import distributed

    if distributed.under_launcher():  # the parent (--nproc) or rank 0 removes them
        import os

        if int(os.environ.get("RANK", "0")) != 0:
            return
    for f in held:
        (out / f).unlink()


def _train(args) -> int:
    from pyg_mlic.engine import check_fit_options, distributed, fit
    from pyg_mlic.metrics import format_long_tail, format_table

    options = _parse_set(args.set)
    for key, value in (("backbone", args.backbone), ("backbone_weights", args.backbone_weights)):
        if value is not None:
            options[key] = value
    train_options = {k: v for k, v in dict(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, backbone_lr=args.backbone_lr,
        optimizer=args.optimizer, seed=args.seed, select=args.select,
        num_workers=args.num_workers, device=args.device, weight_decay=args.weight_decay,
        sync_bn=args.sync_bn or None, progress=False if args.no_progress else None,
        amp=args.amp, ema=args.ema, mixup=args.mixup, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, grad_clip=args.grad_clip).items()
        if v is not None}
    graph = None
    if args.label_graph:  # a bad file fails before the dataset is read
        from pyg_mlic.graphs import LabelGraph

        graph = LabelGraph.load(args.label_graph)
    options, train_options = _data_defaults(args, options, train_options, graph)
    # every option is checked before the (possibly long) dataset load
    check_fit_options(args.model, options, train_options, args.label_embeddings)
    train, val, test = _splits(args)
    run_info = {"dataset": args.dataset, "root": args.root, "train_file": args.train_file,
                "test_file": args.test_file, "val_file": args.val_file,
                "image_size": args.image_size, "num_images": args.num_images,
                "augment": not args.no_augment, "regions": args.regions,
                "drop_labels": _drop_fraction(args),
                "data_defaults": getattr(args, "_data_defaults", None)}
    m = fit(args.model, train, val, test, model_options=options, train_options=train_options,
            out_dir=args.out, label_embeddings=args.label_embeddings, label_graph=graph,
            resume=args.resume, run_info=run_info)
    if distributed.current().is_main:
        rows = [(args.model, m)]
        if m.get("stage1") and "mAP" in m["stage1"]:
            rows = [(f"{m.get('settings', {}).get('recipe', {}).get('stage1_model', 'asl')} "
                     "(stage 1)", m["stage1"]), (f"{args.model} (stage 2)", m)]
        cal = m.get("calibrated") or {}
        if cal.get("thresholds"):  # CP ... OF1 at the per-class thresholds chosen on val
            rows.append((f"{rows[-1][0]} @calibrated", {
                **cal["per_class"], "mAP": m["mAP"],
                "selection_biased": bool(m.get("selection_biased") or cal["selection_biased"])}))
        print(format_table(rows))
        if cal.get("thresholds"):
            print(f"@calibrated: per-class thresholds chosen on split {cal['split']!r} "
                  f"(stored in {cal['checkpoint'] or 'metrics.json only'}); the other rows "
                  f"use 0.5")
        elif cal:
            print(f"thresholds not calibrated: {cal.get('reason')}")
        long_tail = format_long_tail(rows)
        if long_tail:
            print("\n" + long_tail)
        print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'last.pt'}")
    return 0


def _data_defaults(args, options: Dict[str, Any], train_options: Dict[str, Any],
                   label_graph: Any = None):
    """``--dataset synthetic``: the demo's small recipe (:data:`pyg_mlic.engine.recipes.SMALL`:
    a small CNN from scratch, 64 px, 800 scenes, 5 epochs of Adam, weights chosen on the
    validation split) as a complete training configuration, so that every model trains in
    minutes on a CPU; flags the user gives win (and a ``--label-graph`` file's embeddings
    win over the recipe's). Real datasets keep each paper's settings (the model's
    ``default_train_config`` under the flags)."""
    if args.dataset != "synthetic":
        return options, train_options
    from pyg_mlic.engine import TrainConfig
    from pyg_mlic.engine.fit import check_fit_options
    from pyg_mlic.engine.recipes import SMALL

    applied: Dict[str, Any] = {}
    for key, value in SMALL["model"].items():
        if key not in options:
            options[key] = applied[key] = value
    for key, value in SMALL["data"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
            applied[key] = value
    from pyg_mlic.engine.fit import uses_two_stage

    if args.label_embeddings is None and not uses_two_stage(args.model) and \
            getattr(label_graph, "x", None) is None:
        args.label_embeddings = applied["label_embeddings"] = SMALL["label_embeddings"]
    check_fit_options(args.model, options, train_options, args.label_embeddings)
    applied.update({k: v for k, v in SMALL["train"].items() if k not in train_options})
    args._data_defaults = applied
    return options, TrainConfig(**{**SMALL["train"], **train_options})


# ---------------------------------------------------------------------------- eval
def threshold_spec(text: str):
    """``--threshold`` of ``eval`` / ``predict``: ``calibrated`` (the per-class thresholds
    stored in the checkpoint, chosen on the validation split after training),
    ``calibrated-global`` (the one stored global threshold) or a probability in [0, 1)."""
    from pyg_mlic.engine.checkpoint import THRESHOLD_KINDS

    word = text.strip().lower()
    if word in THRESHOLD_KINDS:
        return word
    try:
        value = float(word)
    except ValueError:
        value = None
    if value is None or not 0.0 <= value < 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"expected 'calibrated', 'calibrated-global' or a probability in [0, 1), "
            f"got {text!r}")
    return value


def resolve_threshold(spec, ckpt: Dict[str, Any], path) -> tuple:
    """``(threshold, description)`` for :func:`threshold_spec`'s value (``None``: the stored
    per-class thresholds when the checkpoint has them, else 0.5). ``threshold`` is a float or
    a per-class list; ``description`` is recorded in the output (``rule``, ``value``,
    calibration ``split``). A word the checkpoint cannot serve raises CheckpointError."""
    from pyg_mlic.engine.checkpoint import checkpoint_thresholds

    if spec is None:
        spec = "calibrated" if isinstance(ckpt.get("thresholds"), dict) else 0.5
    if isinstance(spec, float):
        return spec, {"rule": "fixed", "value": spec}
    thr = checkpoint_thresholds(ckpt, spec, path)
    return thr, {"rule": spec, "value": thr, "split": ckpt["thresholds"].get("split")}


def _describe_threshold(desc: Dict[str, Any]) -> str:
    if desc["rule"] == "fixed":
        return f"threshold {desc['value']:g}"
    what = "per-class" if desc["rule"] == "calibrated" else "global"
    glob = "" if desc["rule"] == "calibrated" else f" {desc['value']:.4g}"
    return (f"calibrated {what} threshold{'s' if what == 'per-class' else ''}{glob} "
            f"(chosen on split {desc.get('split')!r}, stored in the checkpoint)")


def _inference_device(args):
    """``--device`` of eval / predict (default: ``cuda`` when available, as ``train``),
    with ``--amp`` checked against it: both refused in one line before any data is read."""
    from pyg_mlic.engine.amp import check_amp
    from pyg_mlic.utils.device import resolve_device

    device = resolve_device(args.device)
    check_amp(args.amp, device)
    return device


def cmd_eval(args) -> int:
    from pyg_mlic.engine import evaluate, load_checkpoint, model_from_checkpoint, write_json
    from pyg_mlic.metrics import format_table

    from pyg_mlic.data.factory import checkpoint_data_config

    _check_output_file("eval", "--out", args.out)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt)
    # checked before the (possibly long) dataset load
    threshold, described = resolve_threshold(args.threshold, ckpt, args.checkpoint)
    device = _inference_device(args)
    model.to(device)
    if args.image_size is None:
        args.image_size = int(ckpt.get("run_info", {}).get("image_size") or 448)
    recorded = {} if args.dataset == "features" else checkpoint_data_config(ckpt)
    own = list(model.classes) if args.dataset in ("coco", "voc2007", "folder") else None
    _, _, test = _splits(args, backbone=recorded.get("backbone"), check=False, classes=own,
                         data_config={k: recorded[k] for k in ("mean", "std") if k in recorded},
                         test_only=True)
    from pyg_mlic.errors import check_same_classes

    check_same_classes("checkpoint", model.classes, f"dataset {args.dataset}", test.classes)
    dim = model.build_kwargs.get("in_features")
    if getattr(test, "input_kind", None) == "features" and dim is not None:
        _check_feature_dim(args.checkpoint, int(dim), test.feature_dim, "the test split")
    m = evaluate(model, test, batch_size=args.batch_size, device=device,
                 progress=not args.no_progress, num_workers=args.num_workers, amp=args.amp,
                 threshold=threshold)
    m["threshold"] = described
    counts = ckpt.get("train_label_counts")  # absent from older checkpoints
    if counts is not None and len(counts) == len(m["AP"]):
        from pyg_mlic.metrics import long_tail_map

        m["long_tail"] = long_tail_map(m["AP"], counts)
    print(format_table([(ckpt["model_name"], m)]))
    print(f"CP ... OF1 and top-3 at {_describe_threshold(described)}")
    from pyg_mlic.metrics import format_long_tail

    long_tail = format_long_tail([(ckpt["model_name"], m)])
    if long_tail:
        print("\n" + long_tail)
    if args.out:
        write_json(Path(args.out), m)
        print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------- predict
#: file suffixes ``pyg-mlic predict`` collects from a folder (case-insensitive)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def expand_image_paths(items: Sequence[str]) -> List[Path]:
    """Image files of ``items``: files as given, folders expanded to their images
    (:data:`IMAGE_EXTENSIONS`, sorted by name, not recursive)."""
    paths: List[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir()
                           if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise SystemExit(f"predict: folder {p} holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        else:
            paths.append(p)
    return paths


def _check_feature_dim(checkpoint: str, dim: int, got: int, where: str) -> None:
    """A features checkpoint (``dim`` inputs per row) against the rows of ``where``."""
    if got != dim:
        from pyg_mlic.errors import ClassMismatchError

        raise ClassMismatchError(f"checkpoint {checkpoint} takes {dim} features per row, "
                                 f"{where} has {got} (were they extracted with the same "
                                 f"backbone and pooling?)")


def read_feature_rows(items: Sequence[str], dim: int, checkpoint: str):
    """The rows ``pyg-mlic predict`` scores with a features checkpoint: every features
    ``.npz`` in ``items`` (the format of ``--dataset features``; ``labels`` / ``classes``
    are optional and not used), all read and checked before any forward pass. Returns
    the row names (the file's ``image`` entry, else ``FILE[i]``) and a float32 tensor
    ``[N, dim]``."""
    import torch

    from pyg_mlic.data.features import load_features

    names: List[str] = []
    blocks = []
    for item in items:
        p = Path(item)
        if p.is_dir() or p.suffix.lower() != ".npz":
            raise SystemExit(f"predict: checkpoint {checkpoint} takes precomputed features: "
                             f"give features .npz files (pyg-mlic extract-features), got {p}")
        d = load_features(p, labels_required=False)
        _check_feature_dim(checkpoint, dim, d["features"].shape[1], str(p))
        n = len(d["features"])
        if n == 0:
            raise SystemExit(f"predict: {p} holds no rows, nothing was predicted")
        names += ([str(s) for s in d["image"].tolist()] if d["image"] is not None
                  else [f"{p}[{i}]" for i in range(n)])
        blocks.append(torch.from_numpy(d["features"]))
    return names, torch.cat(blocks)


def write_predictions(results: List[Dict[str, Any]], classes: Sequence[str], path: Path) -> None:
    """``results`` of :func:`cmd_predict` to ``.json`` (the list as printed) or ``.csv``
    (columns ``image``, ``labels`` joined by ``;``, then one probability column per class),
    written atomically (an interrupted run leaves the previous file, never half of one)."""
    import csv
    import io

    from pyg_mlic.utils.io import atomic_write_json, atomic_write_text

    if path.suffix.lower() == ".json":
        atomic_write_json(path, results)
        return
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["image", "labels", *classes])
    for r in results:
        w.writerow([r["image"], ";".join(r["labels"]),
                    *(f"{r['scores'][c]:.6f}" for c in classes)])
    atomic_write_text(path, buf.getvalue())


def cmd_predict(args) -> int:
    import torch

    from pyg_mlic.data._image_io import load_image
    from pyg_mlic.data.factory import checkpoint_data_config
    from pyg_mlic.data.transforms import build_transforms
    from pyg_mlic.engine import load_checkpoint, model_from_checkpoint

    out_file = Path(args.output) if getattr(args, "output", None) else None
    if out_file is not None and out_file.suffix.lower() not in (".csv", ".json"):
        raise SystemExit(f"predict: --output must end in .csv or .json, got {out_file}")
    _check_output_file("predict", "--output", args.output)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt).eval()
    threshold, described = resolve_threshold(args.threshold, ckpt, args.checkpoint)
    device = _inference_device(args)
    model.to(device)
    # one threshold per class: p > thr[c]
    thr = torch.as_tensor(threshold, dtype=torch.float64).expand(len(model.classes))
    print(f"predict: labels above the {_describe_threshold(described)}", file=sys.stderr)
    bs = args.batch_size
    if model.build_kwargs.get("input_kind", "image") == "features":
        if args.draw:
            raise SystemExit(f"predict: --draw draws on images; checkpoint {args.checkpoint} "
                             f"takes precomputed features")
        names, X = read_feature_rows(args.images, int(model.build_kwargs["in_features"]),
                                     args.checkpoint)
        batches = ((names[i:i + bs], {"features": X[i:i + bs]}, None)
                   for i in range(0, len(names), bs))
        total, unit = len(names), "row"
    else:
        # the test transform of the run, normalised as the model's backbone expects
        pre = checkpoint_data_config(ckpt)
        size = args.image_size or int(pre["image_size"])
        tf = build_transforms(train=False, size=size, mean=tuple(pre["mean"]),
                              std=tuple(pre["std"]))
        paths = expand_image_paths(args.images)
        from pyg_mlic.data._image_io import verify_images

        # every file's header before any forward pass: a bad file found at image 9,000
        # would otherwise end the run with nothing written
        report = verify_images(paths, decode=False)
        if not report.ok:
            shown = "; ".join(f"{p} ({r})" for p, r in report.problems[:3])
            more = " ..." if len(report.problems) > 3 else ""
            raise SystemExit(f"predict: {len(report.problems)} of {report.checked} images "
                             f"cannot be read, nothing was predicted: {shown}{more}")

        def image_batches():
            for start in range(0, len(paths), bs):
                chunk = paths[start:start + bs]
                pil = [load_image(p) for p in chunk]
                yield chunk, {"image": torch.stack([tf(im, None)[0] for im in pil])}, pil

        batches, total, unit = image_batches(), len(paths), "img"
    try:
        from pyg_mlic.utils.progress import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    bar = None
    if tqdm is not None and not args.no_progress and total > 1:
        bar = tqdm(total=total, desc="predict", unit=unit, file=sys.stderr)
    results = []
    used_names: Dict[str, int] = {}
    from pyg_mlic.data.loader import to_device
    from pyg_mlic.engine.amp import autocast

    with torch.no_grad():
        for chunk, batch, pil in batches:
            with autocast(device, args.amp):
                logits = model(to_device(batch, device)).logits
            probs_b = torch.sigmoid(logits.float()).cpu()
            for j, (p, probs) in enumerate(zip(chunk, probs_b)):
                order = torch.argsort(probs, descending=True)
                labels = [model.classes[i] for i in order.tolist() if probs[i] > thr[i]]
                scores = {model.classes[i]: round(float(probs[i]), 6) for i in order.tolist()}
                results.append({"image": str(p), "labels": labels, "scores": scores})
                if args.draw:
                    from pyg_mlic.viz import draw_predictions

                    k = used_names.get(p.name, 0)
                    used_names[p.name] = k + 1
                    name = p.name if k == 0 else f"{p.stem}_{k}{p.suffix}"
                    draw_predictions(pil[j], labels, scores, Path(args.draw) / name)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if out_file is not None:
        write_predictions(results, model.classes, out_file)
        print(f"wrote {out_file} ({len(results)} {unit}s)", file=sys.stderr)
    if args.draw:
        print(f"wrote {len(results)} annotated images to {args.draw}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            top = list(r["scores"].items())[: args.topk]
            print(f"{r['image']}: {', '.join(r['labels']) or '(none above threshold)'}")
            for name, s in top:
                print(f"    {s:7.4f}  {name}")
    return 0


# ---------------------------------------------------------------------------- export
def cmd_export(args) -> int:
    from pyg_mlic.engine import load_checkpoint, model_from_checkpoint
    from pyg_mlic.export import export_model

    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt)
    size = args.image_size or int(ckpt.get("run_info", {}).get("image_size") or 448)
    out = args.out or str(Path(args.checkpoint).with_suffix(
        ".onnx" if args.format == "onnx" else ".torchscript.pt"))
    _check_output_file("export", "--out", out)
    export_model(model, out, args.format, image_size=size)
    kw = model.build_kwargs
    shape = (f"[B, {int(kw['in_features'])}]" if kw.get("input_kind") == "features"
             else f"[B, 3, {size}, {size}]")
    print(f"wrote {out} ({args.format}; input {shape} -> logits [B, {model.num_classes}])")
    return 0


# ---------------------------------------------------------------------------- graph
#: ``pyg-mlic graph``'s operator settings when not given (those of LabelGraph.from_labels)
_GRAPH_DEFAULTS = dict(tau=0.4, p=0.2, scheme="reweighted", convention="paper")


def _class_list(text: Optional[str], command: str):
    """``--classes``: ``None``, ``"infer"`` or a comma-separated list of names."""
    if text is None or text.strip().lower() == "infer":
        return None if text is None else "infer"
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise SystemExit(f"{command}: --classes {text!r} names no class")
    return names


def _graph_training_split(args):
    """The training split ``pyg-mlic train --dataset ...`` would count, read for its labels
    only (no image is opened): folder and features read the ``--train-file`` alone."""
    if args.dataset == "folder":
        from pyg_mlic.data.folder import FolderDataset

        if not args.train_file:
            raise SystemExit("graph: --dataset folder needs --train-file LABELS.csv")
        root = args.root or str(Path(args.train_file).parent)
        return FolderDataset(root, args.train_file, split=args.split or "train")
    if args.split:
        raise SystemExit(f"graph: --split is not used with --dataset {args.dataset} (the "
                         f"dataset's training split is counted; --dataset voc2007 takes "
                         f"the image set as --train-file)")
    if args.dataset == "features":
        from pyg_mlic.data.features import FeaturesDataset

        if not args.train_file:
            raise SystemExit("graph: --dataset features needs --train-file FEATURES.npz")
        return FeaturesDataset(args.train_file, split="train")
    return _splits(args)[0]


def build_label_graph(args):
    """The :class:`~pyg_mlic.graphs.LabelGraph` ``pyg-mlic graph`` describes: loaded from
    ``--load`` or built from exactly one label source, counted on the training split only,
    with ``--embeddings`` attached."""
    import numpy as np

    from pyg_mlic.graphs import LabelGraph

    sources = [f for f in ("load", "labels", "coco", "voc", "dataset") if getattr(args, f)]
    if len(sources) != 1:
        raise SystemExit("graph: give exactly one of --coco INSTANCES.json, --voc ROOT, "
                         "--labels FILE.npz, --dataset NAME (e.g. folder --train-file "
                         "LABELS.csv) or --load GRAPH.npz"
                         + (f" (got {', '.join('--' + s for s in sources)})" if sources else ""))
    if args.classes is not None and sources[0] not in ("coco", "voc") and not (
            sources[0] == "dataset" and args.dataset in ("coco", "voc2007")):
        raise SystemExit("graph: --classes selects the columns of --coco or --voc labels "
                         "(or of --dataset coco / voc2007); other sources carry their class "
                         "list")
    given = {k: getattr(args, k) for k in ("tau", "p", "scheme", "convention")
             if getattr(args, k) is not None}
    kw = {**_GRAPH_DEFAULTS, **given}
    classes = _class_list(args.classes, "graph")
    if args.load:
        if given:
            raise SystemExit(f"graph: {', '.join('--' + k for k in given)} cannot change a "
                             f"saved graph ({args.load}); rebuild it from its labels")
        if args.split:
            raise SystemExit("graph: --split selects the labels to count; a saved graph "
                             "(--load) has its statistics already")
        g = LabelGraph.load(args.load)
        source = g.data.source
    elif args.labels:
        with np.load(args.labels, allow_pickle=False) as d:
            missing = [k for k in ("labels", "classes") if k not in d.files]
            if missing:
                raise SystemExit(f"graph: {args.labels} has no {' or '.join(missing)} array "
                                 f"(a labels file holds labels [N, C] and classes [C], e.g. "
                                 f"a features .npz or shared/data/labels)")
            Y, names = d["labels"], [str(c) for c in d["classes"]]
            # a known-mask (features files: False = unknown label): only pairs of known
            # entries are counted, as every training route counts them
            known = d["mask"] if "mask" in d.files else None
            split = "all"
            if not args.split and "split" in d.files:
                splits = sorted(set(d["split"].tolist()))
                train_like = [s for s in splits if "train" in s.lower()] or splits
                raise SystemExit(f"graph: {args.labels} holds the splits {splits}: pass "
                                 f"--split (label statistics come from the training split "
                                 f"only, e.g. --split {train_like[0]})")
            if args.split and "split" not in d.files:
                raise SystemExit(f"graph: {args.labels} has no 'split' array, so --split "
                                 f"{args.split} cannot select rows")
            if args.split and "split" in d.files:
                sel = d["split"] == args.split
                if not sel.any():
                    raise SystemExit(f"split {args.split!r} not in {args.labels} "
                                     f"(splits: {sorted(set(d['split'].tolist()))})")
                Y, split = Y[sel], args.split
                known = None if known is None else known[sel]
        if Y.size and Y.min() < 0:  # VOC convention: 1 present, 0 difficult, -1 absent
            Y = (Y == 1)  # positives only, difficult excluded (the ML-GCN release, as --voc)
        g = LabelGraph.from_labels(Y.astype(np.uint8), classes=names, split=split,
                                   mask=known, **kw)
        source = f"labels:{args.labels} (split {split})"
    elif args.coco:
        g = LabelGraph.from_coco(args.coco, classes=classes, split=args.split, **kw)
        source = f"coco:{args.coco}"
    elif args.voc:
        split = args.split or "trainval"
        g = LabelGraph.from_voc(args.voc, split=split, classes=classes, **kw)
        source = f"voc:{args.voc} (image set {split}; positives only, difficult excluded)"
    else:
        train = _graph_training_split(args)
        g = LabelGraph.from_dataset(train, **kw)
        where = ", ".join(f"{k}={v}" for k, v in (("root", args.root),
                                                   ("train_file", args.train_file)) if v)
        source = f"dataset:{args.dataset}" + (f" ({where})" if where else "") + \
            f" split {g.split}"
    if args.embeddings:
        from pyg_mlic.embeddings import load_label_embeddings

        g = g.with_embeddings(load_label_embeddings(args.embeddings, g.classes),
                              spec=args.embeddings)
    g.data.source = source
    return g


def cmd_graph(args) -> int:
    out = args.out
    if args.save:
        print("pyg-mlic graph: --save is deprecated, use --out FILE.npz (it writes the same "
              ".npz label-graph file; the torch/pickle file is gone)", file=sys.stderr)
        if out and out != args.save:
            raise SystemExit("graph: --save is the old name of --out: give one of them")
        out = args.save
    if out and not str(out).lower().endswith(".npz"):
        raise SystemExit(f"graph: --out must name a .npz file (plain arrays, no pickle), got "
                         f"{out!r}")
    _check_output_file("graph", "--out", out)
    _check_output_file("graph", "--plot", args.plot)
    g = build_label_graph(args)
    print(g)
    print(f"classes: {g.num_classes}, statistics from split {g.split!r} of "
          f"{g.data.source}")
    P = g.propagation()
    off = P.clone()
    off.fill_diagonal_(0)
    deg = (off != 0).sum(1)
    print(f"edges (off-diagonal): {int((off != 0).sum())}, mean neighbours: "
          f"{float(deg.float().mean()):.2f}, nodes without neighbours: "
          f"{[g.classes[i] for i in (deg == 0).nonzero().flatten().tolist()][:20]}")
    if g.x is not None:
        print(f"embeddings: {getattr(g.data, 'embeddings_spec', None) or 'given'} "
              f"{list(g.x.shape)}")
    if args.plot:
        from pyg_mlic.viz import plot_label_graph

        plot_label_graph(g, args.plot)
        print(f"wrote {args.plot}")
    if out:
        g.save(out)
        print(f"wrote {out} (use it with: pyg-mlic train ... --label-graph {out})")
    return 0


# ---------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    from pyg_mlic.demo import run_demo

    run_demo(out=args.out, epochs=args.epochs, num_images=args.num_images,
             image_size=args.image_size, models=args.models, seed=args.seed,
             progress=not args.no_progress, ablations=args.ablations)
    return 0


# ---------------------------------------------------------------------------- extract-features
def cmd_extract_features(args) -> int:
    """Backbone features of one split written as a features ``.npz``
    (see :mod:`pyg_mlic.data.extract`)."""
    import time

    import torch

    from pyg_mlic.backbones import ImageEncoder, build_backbone, data_config
    from pyg_mlic.data.extract import build_extraction_dataset, extract_features
    from pyg_mlic.data.features import save_features

    _check_output_file("extract-features", "--out", args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = data_config(args.backbone)  # the preprocessing the backbone's weights expect
    backbone = build_backbone(args.backbone, weights=args.backbone_weights)
    if args.backbone_weights is None:
        import warnings

        warnings.warn(f"extract-features: no --backbone-weights, so {args.backbone} is randomly "
                      f"initialised and its features say little about the images; pass "
                      f"--backbone-weights imagenet (efficientnet_lite0, shipped offline) or a "
                      f"local weights file", UserWarning, stacklevel=2)
    size = args.image_size or int(cfg["input_size"][-1])
    ds = build_extraction_dataset(args.dataset, root=args.root, split=args.split,
                                  image_size=size, classes=args.classes,
                                  mean=cfg.get("mean"), std=cfg.get("std"),
                                  num_images=args.num_images, seed=args.seed)
    encoder = ImageEncoder(backbone, args.pool)
    t0 = time.time()
    X, Y, M = extract_features(ds, encoder, batch_size=args.batch_size,
                               progress=not args.no_progress, device=args.device,
                               num_workers=args.num_workers)
    files = getattr(ds, "image_files", None)
    out = save_features(args.out, X, Y, ds.classes, mask=M,
                        image=[str(f) for f in files] if files is not None else None,
                        compress=args.compress)
    print(f"{args.dataset} {ds.split}: {X.shape[0]} images -> features [{X.shape[0]}, "
          f"{X.shape[1]}] ({args.backbone}, weights={args.backbone_weights}, {size}px, "
          f"mean {tuple(cfg['mean'])} std {tuple(cfg['std'])}, {args.pool} pooling), "
          f"labels [{Y.shape[0]}, {Y.shape[1]}] classes {ds.classes[:10]}"
          f"{' ...' if len(ds.classes) > 10 else ''}, "
          f"mask: {'yes' if M is not None else 'no'}; {time.time() - t0:.1f} s")
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------- info
def parameter_table(models: Optional[Sequence[str]] = None, num_classes: int = 80,
                    backbone: Optional[str] = None, embedding_dim: int = 300
                    ) -> List[Dict[str, Any]]:
    """Parameter counts (:func:`pyg_mlic.models.registry.count_parameters`) of registered
    models built with a data-free paper-like context.

    Each model is built with ``num_classes`` classes (80 = COCO), its own default (paper)
    backbone unless ``backbone`` is given, random weights, random training labels (the
    label graph is a buffer, its values do not change the counts) and ``[C,
    embedding_dim]`` label embeddings (300 = ML-GCN's GloVe), except where the model class
    defines ``paper_context(classes)`` (IML-GCN: F_PCA, ``[C, C]``).
    A model that cannot be built this way gets an ``error`` entry instead of counts.
    """
    import warnings

    import numpy as np
    import torch

    import pyg_mlic.models.iml_gcn  # noqa: F401  (registers iml_gcn and asl)
    from pyg_mlic.models import build_model, get_model_class, list_models
    from pyg_mlic.models.registry import count_parameters

    names = list(models) if models else list_models()
    classes = [f"class_{i}" for i in range(num_classes)]
    labels = (np.random.default_rng(0).random((256, num_classes)) < 0.1).astype(np.uint8)
    rows: List[Dict[str, Any]] = []
    for name in names:
        cls = get_model_class(name)
        ctx: Dict[str, Any] = dict(classes=classes, input_kind="image", train_labels=labels,
                                   label_embeddings=torch.zeros(num_classes, embedding_dim))
        if callable(getattr(cls, "paper_context", None)):
            ctx.update(cls.paper_context(classes))
        if backbone:
            ctx["backbone"] = backbone
        row: Dict[str, Any] = {"model": name}
        try:
            with warnings.catch_warnings():  # e.g. "no pretrained weights": irrelevant here
                warnings.simplefilter("ignore")
                model = build_model(name, **ctx)
        except Exception as e:  # noqa: BLE001 - reported in the table
            row["error"] = f"{type(e).__name__}: {str(e)[:120]}"
            rows.append(row)
            continue
        row["backbone_name"] = model.build_kwargs.get("backbone", ctx.get("backbone", "?"))
        emb = getattr(model, "label_embeddings", None)
        row["embeddings"] = list(emb.shape) if isinstance(emb, torch.Tensor) else None
        row.update(count_parameters(model))
        rows.append(row)
        del model
    return rows


def cmd_info(args) -> int:
    rows = parameter_table(args.model, num_classes=args.num_classes, backbone=args.backbone,
                           embedding_dim=args.embedding_dim)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"Parameters of models built with C = {args.num_classes} classes, random weights; "
          "backbone = parameters of encoder.backbone, head = everything else (classifier, "
          "label GCN, graph modules); buffers (embeddings, graph) are not counted.")
    head = f"{'model':<12}{'network':<18}{'total':>12}{'backbone':>12}{'head':>12}  embeddings"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<12}{'-':<18}  not buildable without data: {r['error']}")
            continue
        emb = "x".join(map(str, r["embeddings"])) if r["embeddings"] else "-"
        print(f"{r['model']:<12}{str(r['backbone_name']):<18}{r['total'] / 1e6:>11.2f}M"
              f"{r['backbone'] / 1e6:>11.2f}M{r['head'] / 1e6:>11.2f}M  {emb}")
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pyg-mlic", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"pyg_mlic {__version__}")
    ap.add_argument("--debug", action="store_true",
                    help="show the full traceback of an error (any position on the line)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train every model briefly on synthetic scenes; print the table")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs per model")
    p.add_argument("--num-images", type=positive_int, default=None, help="training images")
    p.add_argument("--image-size", type=positive_int, default=64)
    p.add_argument("--models", nargs="+", help="demo rows to run (default: all)")
    p.add_argument("--ablations", action="store_true", help="also run the ablation tables")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="parameter counts (total, backbone, head) of the models")
    p.add_argument("--model", nargs="*", help="models to count (default: every registered one)")
    p.add_argument("--num-classes", type=positive_int, default=80,
                   help="number of classes (80 = COCO)")
    p.add_argument("--backbone", help="build every model with this backbone instead of its "
                   "paper default")
    p.add_argument("--embedding-dim", type=positive_int, default=300,
                   help="label-embedding size for the GCN models (300 = GloVe; IML-GCN uses C)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "train", help="train a model and write metrics.json + checkpoint",
        description="Train a model through pyg_mlic.engine.fit. Settings not given come from "
                    "the model's paper (ResNet-101 / TResNet at 448 px, the paper's optimiser, "
                    "learning rates and epochs) on real datasets; with --dataset synthetic "
                    "they come from the demo's small recipe (small_cnn, 64 px, 800 scenes, "
                    "5 epochs of Adam at 2e-3, weights chosen on the validation split), so "
                    "that every model trains in minutes on a CPU; with --dataset features "
                    "they come from the features recipe (pyg_mlic.engine.recipes.FEATURES: "
                    "inputs standardised with the training split's mean/std (kept in the "
                    "checkpoint) and clipped to [-2, 2], dropout 0.2 on the input and 0.5 on "
                    "the hidden layer (--set input_clip=, input_dropout=, encoder_dropout=), "
                    "AdamW lr 1e-3 weight decay 1e-2, batch 64, about 4000 steps (20-200 "
                    "epochs), weights of the best validation epoch; without --val-file / "
                    "--val-fraction a seeded 15% of the training file is held out to choose "
                    "the epoch, then the model is retrained on the whole file for that many "
                    "epochs). Flags you give win.")
    _add_data_args(p)
    p.add_argument("--model", required=True)
    p.add_argument("--label-embeddings",
                   help="onehot | npz:PATH | glove[:PATH] | minilm | image-features (IML-GCN: "
                        "two-stage recipe, see docs/methods/iml_gcn)")
    p.add_argument("--label-graph", metavar="FILE.npz",
                   help="a label graph written by `pyg-mlic graph --out` (its classes must "
                        "be the dataset's): its statistics and operator replace the ones "
                        "counted from the training labels, and its embeddings are used when "
                        "--label-embeddings is not given. Models with a label graph only "
                        "(ml_gcn, ia_gcn, iml_gcn, gm_mlic)")
    p.add_argument("--backbone", help="backbone name (image datasets)")
    p.add_argument("--backbone-weights", help="local weights file for the backbone")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=float)
    p.add_argument("--backbone-lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--select", choices=["last", "best_val"],
                   help="weights for the final evaluation (never selected on test)")
    p.add_argument("--schedule", choices=["step", "cosine", "onecycle"],
                   help="learning-rate schedule: step (default: the paper's decays, per "
                        "epoch), cosine (warm-up then cosine to 0, per batch), onecycle "
                        "(OneCycleLR with ASL's settings, pct_start=0.2, per batch)")
    p.add_argument("--warmup-epochs", type=float, metavar="E",
                   help="linear learning-rate warm-up over E epochs (step / cosine)")
    p.add_argument("--grad-clip", type=float, metavar="NORM",
                   help="clip the gradient to this global L2 norm before each step")
    p.add_argument("--amp", choices=["bf16", "fp16"],
                   help="mixed precision: autocast the forward pass to bfloat16 (CUDA with "
                        "bf16 support, or CPU) or float16 (CUDA; with a gradient scaler); "
                        "loss and metrics stay fp32")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="keep an exponential moving average of the weights with this decay "
                        "in (0, 1) (ASL: 0.9997); validation scores raw and EMA weights")
    p.add_argument("--mixup", type=float, metavar="ALPHA",
                   help="mixup of training batches: inputs and targets blended with "
                        "lambda ~ Beta(ALPHA, ALPHA) (e.g. 0.4; 0: none, which turns off "
                        "the 0.4 of ml_gcn / a_gcn on features); not for region models")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--num-workers", type=nonnegative_int, default=0)
    p.add_argument("--device")
    p.add_argument("--out", default="runs/train")
    run_mode = p.add_mutually_exclusive_group()  # continue the run, or replace it
    run_mode.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    run_mode.add_argument("--overwrite", action="store_true",
                   help="replace the run OUT holds (its checkpoints, metrics and history "
                        "are removed first); without it, or --resume, an OUT that holds a "
                        "run is refused")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                   help="model options (tau=0.4 ...); an unknown key is an error")
    p.add_argument("--sync-bn", action="store_true",
                   help="multi-process runs: BatchNorm statistics over the global batch "
                        "(synchronised across processes)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N processes on this machine (DDP; starts "
                        "torch.distributed.run). --batch-size is the global batch, split "
                        "evenly over the processes. Multi-node: use torchrun (docs/distributed)")
    p.set_defaults(func=cmd_train, _train_parser=p)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset's test split",
                       description="Evaluate a checkpoint on the test split of a dataset "
                                   "(--test-file, or the dataset's own test split under "
                                   "--root), read alone with the checkpoint's classes and "
                                   "normalisation: no training file is needed or opened.")
    _add_data_args(p)
    p.set_defaults(image_size=None)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--threshold", type=threshold_spec, default=0.5,
                   metavar="calibrated|calibrated-global|X",
                   help="probability threshold of CP ... OF1 and top-3: a number in [0, 1) "
                        "(default: 0.5, the papers' protocol), 'calibrated' (the per-class "
                        "thresholds chosen on the validation split after training and stored "
                        "in the checkpoint) or 'calibrated-global' (the stored global one)")
    _add_inference_args(p)
    p.add_argument("--num-workers", type=nonnegative_int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", help="write the metrics to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="labels and scores for images")
    p.add_argument("images", nargs="+",
                   help="image files or folders; with a checkpoint trained on precomputed "
                        "features, features .npz files (their labels are not needed)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--threshold", type=threshold_spec, default=None,
                   metavar="calibrated|calibrated-global|X",
                   help="probability threshold of the predicted labels: 'calibrated' (the "
                        "per-class thresholds chosen on the validation split after training "
                        "and stored in the checkpoint), 'calibrated-global' (the stored global "
                        "one) or a number in [0, 1) (default: 'calibrated' when the checkpoint "
                        "stores thresholds, else 0.5)")
    p.add_argument("--topk", type=nonnegative_int, default=5,
                   help="scores shown per image (table; 0: none)")
    p.add_argument("--image-size", type=positive_int)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="images per forward pass (16)")
    p.add_argument("--output", metavar="FILE", help="also write labels + scores to FILE.csv "
                   "(one probability column per class) or FILE.json")
    p.add_argument("--draw", metavar="DIR", help="write copies of the images with the "
                   "predicted labels drawn on them to DIR")
    _add_inference_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="freeze a checkpoint to ONNX or TorchScript")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", help="output file (default: next to the checkpoint)")
    p.add_argument("--image-size", type=positive_int,
                   help="example input side (default: training size)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "graph", help="build, inspect, plot and save a label graph (+ label embeddings)",
        description="Build the ML-GCN label graph from the training split's labels of one "
                    "source (--coco, --voc, --labels, --dataset) or inspect a saved one "
                    "(--load); --embeddings adds label embeddings; --out writes both as one "
                    ".npz (no pickle) that `pyg-mlic train --label-graph FILE` uses. "
                    "See docs/label_graphs.rst.")
    grp = p.add_argument_group("label source (exactly one)")
    grp.add_argument("--coco", metavar="INSTANCES.json",
                     help="COCO instances json of the training split (e.g. "
                          "instances_train2014.json)")
    grp.add_argument("--voc", metavar="ROOT", help="a VOC-format folder (ImageSets/Main + "
                     "Annotations); counts the image set --split (default: trainval), "
                     "positives only")
    grp.add_argument("--labels", metavar="FILE.npz",
                     help=".npz with labels [N,C] and classes (e.g. shared/data/labels); an "
                          "optional mask [N,C] (False = unknown) leaves entries uncounted")
    grp.add_argument("--dataset", choices=["synthetic", "coco", "voc2007", "nuswide",
                                           "features", "folder"],
                     help="the training split `pyg-mlic train --dataset` reads (folder: "
                          "--train-file LABELS.csv [--root]; features: --train-file; others: "
                          "--root)")
    grp.add_argument("--load", metavar="GRAPH.npz", help="a saved label graph (inspect, plot, "
                     "add --embeddings, re-save)")
    p.add_argument("--split", help="the training split to count: rows of --labels (e.g. "
                   "train2014; required when the file has a split array), the --voc image set "
                   "(default: trainval), the split column of a folder CSV (default: train), "
                   "the recorded name of a --coco file (default: from its file name)")
    p.add_argument("--classes", help="--coco / --voc: comma-separated class names fixing the "
                   "columns (e.g. WBC,RBC,Platelets), or 'infer' (--voc)")
    p.add_argument("--root")
    p.add_argument("--train-file")
    p.add_argument("--embeddings", metavar="SPEC",
                   help="label embeddings stored with the graph: glove (shipped GloVe 6B "
                        "50-d), glove:PATH, minilm[:DIR], onehot, npz:PATH")
    p.add_argument("--tau", type=float, help="threshold of Eq. 7 (default: 0.4)")
    p.add_argument("--p", type=float, help="re-weighting of Eq. 8 (default: 0.2)")
    p.add_argument("--scheme", choices=["reweighted", "binary", "probability"],
                   help="(default: reweighted)")
    p.add_argument("--convention", choices=["paper", "mlgcn_code"], help="(default: paper)")
    p.add_argument("--plot", help="write a PNG of the graph")
    p.add_argument("--out", metavar="FILE.npz",
                   help="write the graph (+ embeddings, classes, split) as .npz")
    p.add_argument("--save", metavar="FILE.npz", help="deprecated name of --out")
    p.set_defaults(func=cmd_graph, test_file=None, val_file=None, val_fraction=0.0,
                   image_size=448, num_images=None, no_augment=False)
    p = sub.add_parser("extract-features",
                       help="backbone features of one split -> features .npz (--dataset features)")
    from pyg_mlic.data.extract import EXTRACT_DATASETS

    p.add_argument("--dataset", required=True, choices=EXTRACT_DATASETS,
                   help="image dataset (voc2007 reads any VOC-format folder, e.g. BCCD)")
    p.add_argument("--root", help="dataset folder")
    p.add_argument("--split", help="VOC: ImageSets/Main name (trainval, test ...); COCO: "
                   "instances json or split name (train2014); folder: CSV file; "
                   "nuswide/synthetic: train|test")
    p.add_argument("--classes", help="comma-separated class names fixing the columns (e.g. "
                   "WBC,RBC,Platelets for BCCD) or 'infer'")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--backbone-weights", default=None,
                   help="local weights file, or 'imagenet' where the weights ship offline "
                        "(efficientnet_lite0); default: random init")
    p.add_argument("--pool", default="avg", choices=["avg", "max"],
                   help="global pooling of the feature map (default: avg)")
    p.add_argument("--image-size", type=positive_int,
                   help="input side (default: the backbone's, 224 for efficientnet_lite0)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--num-images", type=positive_int, help="synthetic scenes: number of images")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="synthetic scenes: seed")
    p.add_argument("--device")
    p.add_argument("--num-workers", type=nonnegative_int, default=0)
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--compress", action="store_true", help="np.savez_compressed")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_extract_features)
    return ap


#: exit status of a user error (bad option, file, data): argparse's own
USER_ERROR = 2


def user_error_types() -> tuple:
    """Exceptions that mean bad input from the user (reported in one line, no traceback):
    pyg_mlic's errors (all :class:`ValueError`), missing files, a diverged run."""
    from pyg_mlic.errors import DivergenceError

    return (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError, DivergenceError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; a user error prints ``pyg-mlic: error: ...`` on one line and
    exits with status 2 (``--debug``: the full traceback instead)."""
    import warnings

    # torch_geometric's import triggers torch's own jit deprecation notice: not ours to act on
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    args = build_parser().parse_args(argv)
    before = warnings.formatwarning
    if not debug:  # one line per warning, like the errors (--debug: Python's own format)
        warnings.formatwarning = _format_warning
    try:
        return int(args.func(args) or 0)
    except SystemExit as e:
        if debug or e.code is None or isinstance(e.code, int):
            raise
        return _report(str(e.code))
    except user_error_types() as e:
        if debug:
            raise
        return _report(str(e) or type(e).__name__)
    finally:
        warnings.formatwarning = before


def _format_warning(message, category, filename, lineno, line=None) -> str:
    text = " ".join(str(message).split()) or category.__name__
    return f"pyg-mlic: warning: {text}\n"


def _report(message: str) -> int:
    first = " ".join(message.strip().split("\n")[0].split()) if message.strip() else "failed"
    extra = " (run with --debug for the traceback)"
    print(f"pyg-mlic: error: {first}{extra}", file=sys.stderr)
    return USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
