"""Build the (train, validation, test) splits of a dataset by name.

This is what ``pyg-mlic train --dataset NAME`` calls. Validation: datasets with a
validation split of their own use it (synthetic scenes); otherwise
``val_fraction > 0`` holds out a seeded fraction of the training split, and
``val_fraction = 0`` trains on all of it (then the engine must evaluate the last
epoch: the test split is never used for selection). Partial labels
(``drop_labels=``, ``pyg-mlic train --drop-labels F``) hide a seeded fraction of the
training split's labels only (:mod:`pyg_mlic.data.partial`).

Transforms (:func:`resolve_data_config`): the normalisation comes from the backbone the
model uses (:func:`pyg_mlic.backbones.data_config`: TResNet takes :math:`[0, 1]` inputs,
torchvision's ResNets ImageNet-normalised ones), the training augmentation from the
model's paper (its class attribute ``default_data_config``: A-GCN's resize 512 + random
448 crop, IML-GCN's RandAugment) on real datasets, and the user's ``data_config`` wins
over both.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from pyg_mlic.data.base import MultiLabelDataset, check_splits, holdout_split
from pyg_mlic.data.transforms import TRAIN_TRANSFORMS, build_transforms

DATASETS = ("synthetic", "coco", "voc2007", "nuswide", "features", "folder")

Splits = Tuple[MultiLabelDataset, Optional[MultiLabelDataset], MultiLabelDataset]

#: the keys of a data config: a model's ``default_data_config``, ``build_splits(...,
#: data_config=)`` and ``pyg-mlic train --data-opt KEY=VALUE``
DATA_OPTIONS = ("train", "resize", "crop", "scale", "ratio", "flip_p", "randaugment",
                "cutout", "mean", "std")
#: what a data config holds when nothing overrides it: the shared random-resized crop of
#: ML-GCN / IA-GCN / GM-MLIC with flips, no RandAugment, no Cutout
DEFAULT_AUGMENTATION: Dict[str, Any] = dict(train="random_resized_crop", scale=(0.5, 1.0),
                                            ratio=(3 / 4, 4 / 3), flip_p=0.5, randaugment=None,
                                            cutout=None)
#: the synthetic scenes' training crop: their objects are small, so a mild crop keeps
#: every labelled object in the picture (whatever the model's paper does on real data)
SYNTHETIC_AUGMENTATION: Dict[str, Any] = dict(train="random_resized_crop", scale=(0.85, 1.0))
#: the backbone of the synthetic scenes when neither a model nor a backbone is named
#: (the demo's, :data:`pyg_mlic.engine.recipes.SMALL`)
SYNTHETIC_BACKBONE = "small_cnn"


def model_default(model: Any, option: str) -> Any:
    """The default value of constructor argument ``option`` of a model class (or of an
    instance's class), following ``**kwargs`` up the class hierarchy; :obj:`None` when no
    constructor on the way takes it. Read by signature only: no model is built."""
    cls = model if isinstance(model, type) else type(model)
    for c in inspect.getmro(cls):
        init = vars(c).get("__init__")
        if init is None or c is object:
            continue
        params = inspect.signature(init).parameters
        p = params.get(option)
        if p is not None:
            return None if p.default is inspect.Parameter.empty else p.default
        if not any(q.kind == q.VAR_KEYWORD for q in params.values()):
            return None
    return None


def resolve_data_config(dataset: str, *, model: Any = None, backbone: Optional[str] = None,
                        image_size: int = 448, augment: bool = True,
                        data_config: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The complete input pipeline of a run: normalisation, test transform, training
    augmentation, as one JSON-able dict (what :func:`build_splits` builds its transforms
    from, and what a run records).

    Resolution, later wins:

    1. :data:`DEFAULT_AUGMENTATION` (random-resized crop, area 50-100 %, flip);
    2. real datasets: the model class's ``default_data_config`` (A-GCN:
       ``train="resize_crop", resize=512, crop=448``; IML-GCN / ASL: RandAugment); the
       synthetic scenes: :data:`SYNTHETIC_AUGMENTATION` instead (their mild crop);
    3. ``data_config``, the user's (any of :data:`DATA_OPTIONS`).

    A ``resize`` given for a crop of ``crop`` pixels is scaled to ``image_size``
    (``round(resize * image_size / crop)``: A-GCN's 512 for 448 becomes 73 at 64 px) unless
    the user gave ``resize`` themself. ``train="resize"`` is a plain resize to
    ``image_size`` (``resize_crop`` with ``resize = image_size``; ASL's geometry).

    ``mean`` / ``std`` are those of the backbone's weights
    (:func:`pyg_mlic.backbones.data_config`) unless ``data_config`` gives them. The
    backbone is ``backbone``, else the model's default (its constructor's ``backbone``
    argument, e.g. ``tresnet_m`` for ``iml_gcn``), else for the synthetic scenes
    :data:`SYNTHETIC_BACKBONE`, else ``resnet101`` (the default of the library's
    ResNet models).

    Args:
        dataset (str): the dataset name (one of :data:`DATASETS`).
        model: a model class (or instance) whose ``default_data_config`` and default
            backbone are read; :obj:`None`: none.
        backbone (str, optional): the backbone the model is built with.
        image_size (int): network input side. (default: :obj:`448`)
        augment (bool): ``False``: the training split gets the test transform.
        data_config (dict, optional): overrides (:data:`DATA_OPTIONS`).

    Returns:
        dict: ``backbone``, ``mean``, ``std``, ``preprocessing`` (where mean/std come
        from), ``image_size``, ``test`` (``"resize"``), ``train`` (a key of
        :data:`~pyg_mlic.data.transforms.TRAIN_TRANSFORMS`, or ``"none"`` without
        augmentation) and its options (``resize`` for ``resize_crop``; ``scale``,
        ``ratio`` for ``random_resized_crop``; ``flip_p``, ``randaugment``, ``cutout``),
        and ``sources`` (which settings came from the model's paper or the user).

    Raises:
        OptionError: an unknown key in ``data_config`` or the model's config.
        ValueError: an unknown ``train`` value or backbone name.
    """
    from pyg_mlic.backbones.registry import data_config as backbone_data_config
    from pyg_mlic.errors import check_options

    model_cfg: Dict[str, Any] = {}
    owner = "model"
    if model is not None:
        model_cfg = dict(getattr(model, "default_data_config", None) or {})
        owner = getattr(model, "model_name", None) or getattr(model, "__name__", "model")
        check_options(f"{owner}.default_data_config", model_cfg, DATA_OPTIONS, kind="data option")
    user = dict(data_config or {})
    check_options("data config", user, DATA_OPTIONS, kind="data option")
    if dataset == "synthetic":
        paper, paper_name = SYNTHETIC_AUGMENTATION, "synthetic scenes"
    else:
        paper, paper_name = model_cfg, f"{owner}.default_data_config" if model_cfg else ""
    cfg: Dict[str, Any] = {**DEFAULT_AUGMENTATION, **paper, **user}
    sources = {**{k: paper_name for k in paper}, **{k: "user" for k in user}}
    if backbone is None and model is not None:
        backbone = model_default(model, "backbone")
    if backbone is None:
        backbone = SYNTHETIC_BACKBONE if dataset == "synthetic" else "resnet101"
    pre = backbone_data_config(str(backbone))
    size = int(image_size)
    kind = cfg["train"]
    plain_resize = kind == "resize"
    if plain_resize:
        kind = "resize_crop"
    if kind not in TRAIN_TRANSFORMS:
        raise ValueError(f"unknown training transform {kind!r}; valid: "
                         f"{list(TRAIN_TRANSFORMS) + ['resize']}")
    out: Dict[str, Any] = {
        "backbone": str(backbone),
        "mean": list(user.get("mean", pre["mean"])), "std": list(user.get("std", pre["std"])),
        "preprocessing": "user" if "mean" in user or "std" in user else pre["source"],
        "image_size": size, "test": "resize", "train": kind if augment else "none",
    }
    if augment:
        if kind == "resize_crop":
            resize = size if plain_resize else int(cfg.get("resize") or size)
            crop = cfg.get("crop")
            if crop and not plain_resize and "resize" not in user and int(crop) != size:
                resize = int(round(resize * size / int(crop)))
            out["resize"] = max(resize, size)
        else:
            out["scale"], out["ratio"] = list(cfg["scale"]), list(cfg["ratio"])
        ra = cfg["randaugment"]
        if ra is not None and not isinstance(ra, (bool, Mapping)):
            raise ValueError(f"data option randaugment must be a bool or a dict of "
                             f"BoxRandAugment options, got {ra!r}")
        ra = {} if ra is True else (dict(ra) if isinstance(ra, Mapping) else None)
        cutout = cfg["cutout"]
        out.update(flip_p=float(cfg["flip_p"]), randaugment=ra,
                   cutout=float(cutout) if cutout else None)
    out["sources"] = sources
    return out


def transforms_from_config(cfg: Mapping[str, Any]):
    """``(train_transform, test_transform)`` of a :func:`resolve_data_config` dict."""
    norm = dict(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    size = int(cfg["image_size"])
    test = build_transforms(False, size, **norm)
    kind = cfg["train"]
    if kind == "none":
        return test, test
    opts: Dict[str, Any] = dict(flip_p=cfg["flip_p"], randaugment=cfg.get("randaugment"),
                                cutout=cfg.get("cutout"), **norm)
    if kind == "resize_crop":
        opts["resize"] = int(cfg["resize"])
    else:
        opts.update(scale=tuple(cfg["scale"]), ratio=tuple(cfg["ratio"]))
    return build_transforms(True, size, kind=kind, **opts), test


def checkpoint_data_config(ckpt: Mapping[str, Any]) -> Dict[str, Any]:
    """The preprocessing a checkpoint's model was trained with, for evaluating or
    predicting with it: the data config its run recorded (``run_info["data_config"]``, see
    :func:`resolve_data_config`), else one resolved from the backbone in its
    ``build_kwargs`` at the recorded ``image_size`` (default 448).

    Returns:
        dict: at least ``backbone``, ``mean``, ``std``, ``image_size``, ``preprocessing``.
    """
    from pyg_mlic.backbones.registry import data_config as backbone_data_config

    info = dict(ckpt.get("run_info") or {})
    recorded = info.get("data_config")
    if isinstance(recorded, Mapping) and "mean" in recorded and "std" in recorded:
        return dict(recorded)
    size = int(info.get("image_size") or 448)
    backbone = (ckpt.get("build_kwargs") or {}).get("backbone") or "resnet101"
    pre = backbone_data_config(str(backbone))
    return {"backbone": str(backbone), "mean": list(pre["mean"]), "std": list(pre["std"]),
            "preprocessing": pre["source"], "image_size": size, "test": "resize",
            "train": "none"}


def _need(value, flag: str, name: str):
    if value is None:
        raise ValueError(f"--dataset {name} needs {flag}")
    return value


def _first_existing(root: Path, *candidates: str) -> Path:
    for c in candidates:
        if (root / c).exists():
            return root / c
    raise FileNotFoundError(f"none of {list(candidates)} found under {root}")


def build_splits(name: str, *, root: Optional[str] = None, train_file: Optional[str] = None,
                 test_file: Optional[str] = None, val_file: Optional[str] = None,
                 image_size: int = 448, val_fraction: float = 0.0, seed: int = 0,
                 num_images: Optional[int] = None, augment: bool = True,
                 model: Any = None, backbone: Optional[str] = None,
                 data_config: Optional[Mapping[str, Any]] = None,
                 check: bool = True, drop_labels: float = 0.0,
                 classes: Union[None, str, Sequence[str]] = None,
                 test_only: bool = False) -> Splits:
    """Return ``(train, val, test)`` for dataset ``name`` (one of :data:`DATASETS`).

    The transforms follow :func:`resolve_data_config` (the backbone's normalisation,
    the model paper's augmentation on real datasets, ``data_config`` over both); the
    resolved dict is the ``data_config`` attribute of every returned image split.

    Args:
        name: dataset name.
        root: dataset folder (image datasets).
        train_file, test_file, val_file: annotation / list / features files; their
            meaning depends on the dataset (COCO: instances jsons; features: ``.npz``;
            folder: CSV files).
        image_size: side of the network input (448 in the papers).
        val_fraction: fraction of the training split held out for validation when
            the dataset has no validation split of its own.
        seed: seed of the hold-out split and of the synthetic scenes.
        num_images: synthetic scenes only: training-set size (val/test scale with it).
        augment: use the training augmentation (random crop + flip ...) on the training
            split; ``False``: the test transform.
        model: the model class (e.g. ``get_model_class("a_gcn")``) whose
            ``default_data_config`` and default backbone are read.
        backbone: the backbone the model is built with (its normalisation is used).
        data_config: overrides of the data config (:data:`DATA_OPTIONS`).
        check: refuse splits with different classes, input kinds or feature sizes
            (:func:`~pyg_mlic.data.base.check_splits`); ``False`` for a caller that reads
            one split only and checks it itself (``pyg-mlic eval``).
        drop_labels (float): partial labels: hide this fraction ``0 <= f < 1`` of the
            *training* split's known label entries, seeded by ``seed``
            (:func:`pyg_mlic.data.partial.drop_labels`; the returned training split
            records it in ``partial_labels``); validation and test labels are untouched.
            (default: ``0``, none)
        classes (None, "infer" or list of str): coco / voc2007 only: the label columns,
            in order, for every split (a VOC-format folder of another dataset, e.g. BCCD's
            ``["WBC", "RBC", "Platelets"]``, or a subset of COCO's categories); ``"infer"``:
            VOC: the names in the training split's annotations (sorted), COCO: the file's
            categories. ``None``: the dataset's own (COCO: the training file's categories;
            VOC: the 20 VOC classes). (default: :obj:`None`)
        test_only (bool): build the test split alone and return ``(None, None, test)``
            (``pyg-mlic eval``): no training annotations are read (COCO's
            ``instances_train*.json``, a folder's training CSV) and ``train_file`` is not
            needed; ``classes`` then fixes the test split's columns for coco, voc2007
            and folder (eval passes the checkpoint's). (default: :obj:`False`)
    """
    from pyg_mlic.data.partial import check_drop_fraction

    drop = check_drop_fraction(drop_labels, "drop_labels")
    cfg, train_tf, test_tf = None, None, None
    if name == "features" and data_config:
        raise ValueError(f"data_config (--data-opt) sets image transforms; --dataset features "
                         f"has none (got {sorted(data_config)})")
    if name != "features":
        cfg = resolve_data_config(name, model=model, backbone=backbone, image_size=image_size,
                                  augment=augment, data_config=data_config)
        train_tf, test_tf = transforms_from_config(cfg)
    val = None
    if classes is not None and name not in ("coco", "voc2007") and \
            not (test_only and name == "folder"):
        raise ValueError(f"classes= (--classes) chooses the label columns of coco and "
                         f"voc2007; {name!r} carries its own class list")
    if test_only and name != "synthetic":
        test = _test_split(name, root, test_file, test_tf, classes)
        from pyg_mlic.data._image_io import ImageDatasetMixin

        if isinstance(test, ImageDatasetMixin):  # a missing image stops the load
            test.check_files_exist()
        return _record(cfg, None, None, test)
    if name == "synthetic":
        from pyg_mlic.data.synthetic import SyntheticScenes

        n_val = n_test = None
        if num_images:
            n_val, n_test = max(num_images // 4, 8), max(num_images // 2, 8)
        kw = dict(image_size=image_size, seed=seed)
        test = SyntheticScenes("test", num_images=n_test, transform=test_tf, **kw)
        if test_only:
            return _record(cfg, None, None, test)
        train = SyntheticScenes("train", num_images=num_images, transform=train_tf, **kw)
        val = SyntheticScenes("val", num_images=n_val, transform=test_tf, **kw)
        return _record(cfg, _drop(train, drop, seed), val, test)
    if name == "coco":
        from pyg_mlic.data.coco import COCODataset

        r = Path(_need(root, "--root", name))
        tr_ann = Path(train_file) if train_file else _first_existing(
            r, "annotations/instances_train2014.json", "annotations/instances_train2017.json")
        train = COCODataset(r, tr_ann, split="train", transform=train_tf,
                            classes=None if classes == "infer" else classes)
        test = _test_split(name, root, test_file, test_tf, train.classes)
        if val_file:
            val = COCODataset(r, val_file, split="val", transform=test_tf, classes=train.classes)
    elif name == "voc2007":
        from pyg_mlic.data.voc import VOCDataset

        r = _voc_root(root)
        train = VOCDataset(r, split=train_file or "trainval", transform=train_tf,
                           classes=classes)
        test = _test_split(name, root, test_file, test_tf, train.classes)
        if val_file:
            val = VOCDataset(r, split=val_file, transform=test_tf, classes=train.classes)
    elif name == "nuswide":
        from pyg_mlic.data.nuswide import NUSWIDEDataset

        r = _need(root, "--root", name)
        train = NUSWIDEDataset(r, split="train", transform=train_tf)
        test = _test_split(name, root, test_file, test_tf, None)
    elif name == "features":
        from pyg_mlic.data.features import FeaturesDataset

        train = FeaturesDataset(_need(train_file, "--train-file", name), split="train")
        test = _test_split(name, root, test_file, None, None)
        if val_file:
            val = FeaturesDataset(val_file, split="val")
    elif name == "folder":
        from pyg_mlic.data.folder import FolderDataset

        r = _need(root, "--root", name)
        train = FolderDataset(r, _need(train_file, "--train-file", name), split="train",
                              transform=train_tf)
        test = _test_split(name, root, test_file, test_tf, train.classes)
        if val_file:
            val = FolderDataset(r, val_file, split="val", classes=train.classes, transform=test_tf)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")
    from pyg_mlic.data._image_io import ImageDatasetMixin

    for ds in (train, val, test):  # a missing image stops the load, not a later batch
        if isinstance(ds, ImageDatasetMixin):
            ds.check_files_exist()
    if val is None and val_fraction:
        train, val = holdout_split(train, val_fraction, seed=seed,
                                   val_transform=test_tf if cfg is not None else None)
    if check:  # classes, input kind, feature size: caught at load
        check_splits(train, val, test)
    return _record(cfg, _drop(train, drop, seed), val, test)


def _voc_root(root: Optional[str]) -> Path:
    """``--root`` of voc2007: the folder itself or the ``VOCdevkit/VOC2007`` under it."""
    r = Path(_need(root, "--root", "voc2007"))
    return r / "VOCdevkit" / "VOC2007" if (r / "VOCdevkit" / "VOC2007").is_dir() else r


def _test_split(name: str, root: Optional[str], test_file: Optional[str],
                transform: Optional[Callable], classes: Union[None, str, Sequence[str]]
                ) -> MultiLabelDataset:
    """The test split of dataset ``name`` with the columns ``classes`` (coco, voc2007,
    folder; ``None`` / ``"infer"``: the file's own), for :func:`build_splits`."""
    cols = None if classes == "infer" else classes
    if name == "coco":
        from pyg_mlic.data.coco import COCODataset

        r = Path(_need(root, "--root", name))
        ann = Path(test_file) if test_file else _first_existing(
            r, "annotations/instances_val2014.json", "annotations/instances_val2017.json")
        test = COCODataset(r, ann, split="test", transform=transform, classes=cols)
    elif name == "voc2007":
        from pyg_mlic.data.voc import VOCDataset

        test = VOCDataset(_voc_root(root), split=test_file or "test", transform=transform,
                          classes=classes)
    elif name == "nuswide":
        from pyg_mlic.data.nuswide import NUSWIDEDataset

        test = NUSWIDEDataset(_need(root, "--root", name), split="test", transform=transform)
    elif name == "features":
        from pyg_mlic.data.features import FeaturesDataset

        test = FeaturesDataset(_need(test_file, "--test-file", name), split="test")
    elif name == "folder":
        from pyg_mlic.data.folder import FolderDataset

        test = FolderDataset(_need(root, "--root", name), _need(test_file, "--test-file", name),
                             split="test", classes=cols, transform=transform)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")
    return test


def _drop(train: MultiLabelDataset, fraction: float, seed: int) -> MultiLabelDataset:
    """The training split with ``fraction`` of its known labels hidden (after the
    validation hold-out, so validation labels are never touched)."""
    if fraction == 0.0:
        return train
    from pyg_mlic.data.partial import drop_labels

    return drop_labels(train, fraction, seed=seed)


def _record(cfg: Optional[Dict[str, Any]], *splits) -> Splits:
    if cfg is not None:
        for ds in splits:
            if ds is not None:
                ds.data_config = cfg
    return splits  # type: ignore[return-value]
