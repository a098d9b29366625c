"""The bad-input matrix: every bad input, through the public API or the CLI, and what happens.

Each :class:`Case` is a real input (a file written to ``tmp_path`` or an argument)
fed to the public API / ``pyg-mlic``; its ``behaviour`` is what the user sees — a
clear error naming the file / class / argument, or a documented, tested result.
Never a NaN metric or a silent wrong answer.

``docs/bad_inputs.rst`` holds the same list as a table, generated from ``CASES``:
after adding or changing a case run ::

    PYTHONPATH=. python tests/test_bad_inputs.py > docs/bad_inputs.rst

:func:`test_doc_table_is_generated_from_cases` fails when the two drift apart.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_features import make_features_npz  # noqa: E402

from pyg_mlic.errors import (CheckpointError, ClassMismatchError,  # noqa: E402
                             DatasetError)


@dataclass
class Case:
    id: str
    area: str
    input: str
    behaviour: str
    run: Callable[[Path], None]


CASES: List[Case] = []


def case(id: str, area: str, input: str, behaviour: str):
    """Register the decorated ``f(tmp_path)`` as a case of the matrix."""
    def deco(f):
        assert id not in {c.id for c in CASES}, id
        CASES.append(Case(id, area, input, behaviour, f))
        return f
    return deco


def _need_model(name: str) -> None:
    from pyg_mlic.models import list_models

    if name not in list_models():
        pytest.skip(f"model {name!r} is not registered yet")


# ----------------------------------------------------------------------- small real inputs
def _image_folder(tmp: Path, rows: str) -> Path:
    from PIL import Image

    (tmp / "img").mkdir(exist_ok=True)
    Image.new("RGB", (24, 16), (200, 30, 30)).save(tmp / "img" / "ok.jpg", quality=90)
    (tmp / "labels.csv").write_text("image,labels\n" + rows)
    return tmp


def _features_npz(tmp: Path, name: str = "f.npz", **arrays) -> Path:
    base = dict(features=np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32),
                labels=np.eye(6, 3, dtype=np.uint8), classes=np.array(["a", "b", "c"]))
    base.update(arrays)
    np.savez(tmp / name, **base)
    return tmp / name


def _labels(n: int = 40, c: int = 4, seed: int = 0) -> np.ndarray:
    Y = (np.random.default_rng(seed).random((n, c)) < 0.4).astype(np.uint8)
    Y[0] = 1
    return Y


def _features_model(name: str, classes=("a", "b", "c", "d"), **kw):
    from pyg_mlic.models import build_model

    return build_model(name, classes=list(classes), input_kind="features", in_features=8,
                       encoder_hidden=[8], encoder_out=8, **kw)


def _trained_checkpoint(tmp: Path) -> Path:
    from pyg_mlic.cli import main

    make_features_npz(tmp / "tr.npz", n=64, seed=0)
    make_features_npz(tmp / "te.npz", n=32, seed=1)
    assert main(_train_args(tmp, tmp / "run") + ["--epochs", "1"]) == 0
    return tmp / "run" / "last.pt"


def _train_args(tmp: Path, out: Path) -> List[str]:
    return ["train", "--dataset", "features", "--train-file", str(tmp / "tr.npz"),
            "--test-file", str(tmp / "te.npz"), "--model", "baseline", "--set",
            "encoder_hidden=[8]", "encoder_out=8", "--batch-size", "32", "--no-progress",
            "--out", str(out)]


def _eval_args(tmp: Path, ckpt: Path) -> List[str]:
    return ["eval", "--checkpoint", str(ckpt), "--dataset", "features", "--train-file",
            str(tmp / "tr.npz"), "--test-file", str(tmp / "te.npz")]


class _Evil:
    """Unpickling this creates the file ``marker`` (stands for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _region_batch(K: int, present: int, D: int = 6, B: int = 2) -> dict:
    mask = torch.zeros(B, K, dtype=torch.bool)
    mask[:, :present] = True
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(B, K, 2, generator=g) * 8
    return {"features": torch.randn(B, 8, generator=g),
            "roi_features": torch.randn(B, K, D, generator=g),
            "roi_boxes": torch.cat([boxes, boxes + 4], dim=-1), "roi_mask": mask,
            "roi_image_size": torch.tensor([[16, 16]] * B),
            "target": torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])[:B],
            "mask": torch.ones(B, 4, dtype=torch.bool)}


def _region_model(name: str, max_instances: int):
    _need_model(name)
    extra = (dict(region_hidden=[8], gcn_hidden=[8, 8]) if name == "ia_gcn"
             else dict(encoder_channels=8, conv_channels=[8]))
    torch.manual_seed(0)
    return _features_model(name, train_labels=_labels(), roi_feature_dim=6,
                           max_instances=max_instances, **extra)


# =========================================================================== images / files
@case("corrupt-jpeg", "data", "a truncated JPEG listed in a label CSV",
      "``DatasetError`` when the sample is loaded, naming the file ('cannot decode image "
      "... truncated or corrupt'); ``dataset.verify()`` lists every bad file up front")
def _(tmp):
    from pyg_mlic.data.folder import FolderDataset

    root = _image_folder(tmp, "img/ok.jpg,cat\nimg/bad.jpg,dog\n")
    data = (root / "img" / "ok.jpg").read_bytes()
    (root / "img" / "bad.jpg").write_bytes(data[: len(data) // 2])
    ds = FolderDataset(root, root / "labels.csv")
    assert ds[0]["image"].shape[0] == 3
    with pytest.raises(DatasetError, match=r"cannot decode image.*bad\.jpg"):
        ds[1]
    with pytest.raises(DatasetError, match=r"bad\.jpg"):
        ds.verify(progress=False)


@case("image-without-known-scale", "data",
      "a 16-bit greyscale PNG, and a float TIFF with values outside [0, 1], in a label CSV",
      "the 16-bit image is scaled to 8 bits (255 / 65535), not clipped to white as PIL's "
      "``convert('RGB')`` does; the float image raises ``DatasetError`` 'mode F (float) "
      "image with values in [lo, hi], not [0, 1]: its scale is unknown', naming the file")
def _(tmp):
    from PIL import Image

    from pyg_mlic.data.folder import FolderDataset

    root = _image_folder(tmp, "img/ok.jpg,cat\nimg/g16.png,dog\nimg/f.tiff,cat\n")
    Image.fromarray(np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)).save(
        root / "img" / "g16.png")
    Image.fromarray(np.full((32, 32), 4.0, np.float32)).save(root / "img" / "f.tiff")
    ds = FolderDataset(root, root / "labels.csv")
    img = np.asarray(ds.load_image(1))
    assert img.max() == 255 and (img == 255).mean() < 0.01  # a ramp, not a white square
    with pytest.raises(DatasetError, match=r"mode F .*scale is unknown.*f\.tiff"):
        ds[2]


@case("missing-image", "data", "a label CSV row whose image file does not exist",
      "``DatasetError`` '1 of 2 image files not found: PATH' when the splits are built "
      "(``build_splits``, every ``pyg-mlic`` command), before training; 'image file not "
      "found: PATH' when a sample is loaded directly (and from ``dataset.verify()``)")
def _(tmp):
    from pyg_mlic.data.factory import build_splits
    from pyg_mlic.data.folder import FolderDataset

    root = _image_folder(tmp, "img/ok.jpg,cat\nimg/gone.jpg,dog\n")
    ds = FolderDataset(root, root / "labels.csv")
    with pytest.raises(DatasetError, match=r"image file not found: .*gone\.jpg"):
        ds[1]
    with pytest.raises(DatasetError, match=r"split 'train'\): 1 of 2 image files not found: "
                                           r".*gone\.jpg"):
        build_splits("folder", root=str(root), train_file=str(root / "labels.csv"),
                     test_file=str(root / "labels.csv"), image_size=32)
    with pytest.raises(DatasetError, match=r"split 'test'\): 1 of 2 image files not found: "
                                           r".*gone\.jpg"):  # eval: the test split alone
        build_splits("folder", root=str(root), test_file=str(root / "labels.csv"),
                     image_size=32, test_only=True)


@case("missing-features-file", "data", "``--train-file`` pointing to no file",
      "``DatasetError`` 'features file not found: PATH'")
def _(tmp):
    from pyg_mlic.cli import main

    make_features_npz(tmp / "te.npz")
    with pytest.raises(DatasetError, match=r"features file not found: .*tr\.npz"):
        main(["--debug", *_train_args(tmp, tmp / "o")])


@case("not-an-npz", "data", "a features file that is not an ``.npz`` archive (e.g. text)",
      "``DatasetError`` 'not an .npz archive (unrecognised file header ...)'")
def _(tmp):
    from pyg_mlic.data.features import FeaturesDataset

    (tmp / "f.npz").write_text("features,labels\n1,2\n")
    with pytest.raises(DatasetError, match="not an .npz archive"):
        FeaturesDataset(tmp / "f.npz")


@case("empty-csv", "data", "an empty label CSV file", "``DatasetError`` 'the CSV file is empty'")
def _(tmp):
    from pyg_mlic.data.folder import FolderDataset

    (tmp / "labels.csv").write_text("")
    with pytest.raises(DatasetError, match=r"labels\.csv: the CSV file is empty"):
        FolderDataset(tmp, tmp / "labels.csv")


@case("empty-coco-json", "data", "a COCO annotation file listing no image",
      "``DatasetError`` 'no image left ... empty dataset', naming the file")
def _(tmp):
    from pyg_mlic.data.coco import COCODataset

    (tmp / "inst.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    with pytest.raises(DatasetError, match=r"inst\.json: no image left"):
        COCODataset(tmp, tmp / "inst.json")


@case("empty-features", "data", "a features ``.npz`` with zero rows",
      "``DatasetError`` 'holds no rows (empty dataset)'")
def _(tmp):
    from pyg_mlic.data.features import FeaturesDataset

    f = _features_npz(tmp, features=np.zeros((0, 4), np.float32),
                      labels=np.zeros((0, 3), np.uint8))
    with pytest.raises(DatasetError, match="no rows"):
        FeaturesDataset(f)


@case("label-id-out-of-range-coco", "data", "a COCO annotation whose ``category_id`` is not "
      "in ``categories``", "``DatasetError`` naming the file, annotation, image and the "
      "unknown id")
def _(tmp):
    from pyg_mlic.data.coco import COCODataset

    (tmp / "inst.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 99, "bbox": [0, 0, 2, 2],
                         "area": 4, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "cat"}]}))
    with pytest.raises(DatasetError, match=r"annotation 5 of image 1 has unknown category id 99"):
        COCODataset(tmp, tmp / "inst.json")


@case("label-value-out-of-range", "data", "a label value other than 0/1 (features ``labels`` "
      "holding 2; a CSV class column holding 2)", "``DatasetError`` naming the file, row, "
      "column and class")
def _(tmp):
    from pyg_mlic.data.features import FeaturesDataset
    from pyg_mlic.data.folder import FolderDataset

    lab = np.eye(6, 3, dtype=np.uint8)
    lab[4, 1] = 2
    with pytest.raises(DatasetError, match=r"out of range at row 4, column 1 \('b'\)"):
        FeaturesDataset(_features_npz(tmp, labels=lab))
    (tmp / "c.csv").write_text("image,cat,dog\nimg/a.jpg,1,2\n")
    with pytest.raises(DatasetError, match=r"c\.csv, line 2: value '2' in column 'dog'"):
        FolderDataset(tmp, tmp / "c.csv")


@case("unknown-class-name", "data", "a CSV label name that is not in the given class list "
      "(e.g. the test split names a class the training split lacks)",
      "``DatasetError`` naming the file, line and label")
def _(tmp):
    from pyg_mlic.data.folder import FolderDataset

    root = _image_folder(tmp, "img/ok.jpg,cat;dragon\n")
    with pytest.raises(DatasetError, match=r"line 2: unknown label 'dragon'"):
        FolderDataset(root, root / "labels.csv", classes=["cat", "dog"])


@case("path-escapes-root", "security", "an annotation path leaving the dataset root "
      "(``../x.jpg``, ``/etc/passwd``, a VOC image id ``../../etc/passwd``)",
      "``DatasetError`` 'absolute or escapes the dataset root' / 'not a plain file name'; "
      "nothing outside the root is opened")
def _(tmp):
    from pyg_mlic.data.folder import FolderDataset
    from pyg_mlic.data.voc import VOCDataset

    for bad in ("../x.jpg", "/etc/passwd", "img/../../x.jpg"):
        (tmp / "labels.csv").write_text(f"image,labels\n{bad},cat\n")
        with pytest.raises(DatasetError, match="escapes the dataset root"):
            FolderDataset(tmp, tmp / "labels.csv")
    main = tmp / "voc" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("../../etc/passwd\n")
    with pytest.raises(DatasetError, match="not a plain file name"):
        VOCDataset(tmp / "voc", "train")


# =========================================================================== labels / metrics
@case("all-negative-image", "labels", "an image with no positive label",
      "kept: its target row is all 0 (a negative for every class) in training and in the "
      "metrics; mAP, loss and training stay finite")
def _(tmp):
    from pyg_mlic.data.features import FeaturesDataset
    from pyg_mlic.engine import TrainConfig, Trainer
    from pyg_mlic.models import build_model

    lab = np.eye(6, 3, dtype=np.uint8)
    lab[3:] = 0  # three images without any label
    lab[3, 0] = 1
    ds = FeaturesDataset(_features_npz(tmp, labels=lab))
    assert float(ds[4]["target"].sum()) == 0.0
    model = build_model("baseline", classes=ds.classes, input_kind="features",
                        in_features=4, encoder_hidden=[8], encoder_out=8)
    m = Trainer(model, ds, None, ds, TrainConfig(epochs=2, batch_size=4, progress=False)).fit()
    assert np.isfinite(m["mAP"]) and 0.0 <= m["mAP"] <= 1.0


@case("class-without-positives", "labels", "a class with no (unmasked) positive in the "
      "evaluated split", "``UndefinedAPWarning`` naming the class; its AP is ``None`` and it "
      "is left out of mAP, CP, CR and CF1 (the mean over the classes that have positives)")
def _(tmp):
    from pyg_mlic.metrics import UndefinedAPWarning, multilabel_metrics

    g = torch.Generator().manual_seed(0)
    s = torch.randn(30, 3, generator=g)
    t = (torch.rand(30, 3, generator=g) < 0.5).float()
    t[:, 1] = 0
    with pytest.warns(UndefinedAPWarning, match=r"1 \(b\)"):
        m = multilabel_metrics(s, t, class_names=["a", "b", "c"])
    assert m["AP"][1] is None
    assert m["mAP"] == pytest.approx((m["AP"][0] + m["AP"][2]) / 2)
    assert all(np.isfinite(v) for v in m.values() if isinstance(v, float))


@case("no-class-has-positives", "labels", "an evaluation split where no class has a positive",
      "``ValueError`` 'no class has an (unmasked) positive sample ... mAP and recall are "
      "undefined' (no NaN metric)")
def _(tmp):
    from pyg_mlic.metrics import multilabel_metrics

    with pytest.raises(ValueError, match="no class has an"):
        multilabel_metrics(torch.randn(5, 3), torch.zeros(5, 3))


@case("eval-split-without-positives", "labels", "a validation / test split with no positive "
      "label at all (e.g. the wrong file)", "``DatasetError`` when the ``Trainer`` is built, "
      "before any training ('test set ... has no (unmasked) positive label')")
def _(tmp):
    from pyg_mlic.data.features import FeaturesDataset
    from pyg_mlic.engine import Trainer
    from pyg_mlic.models import build_model

    tr = FeaturesDataset(_features_npz(tmp, "tr.npz"))
    te = FeaturesDataset(_features_npz(tmp, "te.npz", labels=np.zeros((6, 3), np.uint8)),
                         split="test")
    model = build_model("baseline", classes=tr.classes, input_kind="features", in_features=4,
                        encoder_hidden=[8], encoder_out=8)
    with pytest.raises(DatasetError, match=r"test set \(test, 6 samples\) has no"):
        Trainer(model, tr, None, te)


@case("label-never-occurs-in-train", "graphs", "a class that never occurs in the training "
      "labels (N_i = 0) of a label graph", "no division by zero: the node keeps only its "
      "self-loop (row of P = e_i), the graph and ML-GCN's logits stay finite")
def _(tmp):
    from pyg_mlic.graphs import LabelGraph

    Y = _labels()
    Y[:, 2] = 0
    P = LabelGraph.from_labels(Y).propagation()
    assert torch.isfinite(P).all()
    assert P[2].tolist() == [0.0, 0.0, 1.0, 0.0]
    out = _features_model("ml_gcn", train_labels=Y)({"features": torch.randn(3, 8)})
    assert torch.isfinite(out.logits).all()


@case("graph-source-without-positives", "graphs", "a label graph built from a source with no "
      "positive label at all (a COCO file without ``annotations``, all-zero labels)",
      "``UserWarning`` 'no label has a positive, so ... the operator is the identity' "
      "(from ``LabelGraph.from_labels`` / ``from_counts`` / ``pyg-mlic graph``); the "
      "identity operator, finite")
def _(tmp):
    from pyg_mlic.graphs import LabelGraph

    with pytest.warns(UserWarning, match="no label has a positive, so every node keeps only "
                                         "its self-loop"):
        P = LabelGraph.from_labels(np.zeros((5, 4)), split="empty").propagation()
    assert torch.equal(P, torch.eye(4))
    with pytest.warns(UserWarning, match="split 'c'.*no label has a positive"):
        LabelGraph.from_counts(np.zeros((3, 3)), np.zeros(3), split="c")
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 8, "height": 8}
                       for i in (1, 2)],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    (tmp / "noann.json").write_text(json.dumps(coco))  # no 'annotations' list
    with pytest.warns(UserWarning, match="no label has a positive"):
        LabelGraph.from_coco(tmp / "noann.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LabelGraph.from_labels(_labels())  # a source with positives: no warning


@case("isolated-graph-node", "graphs", "a label whose conditional probabilities are all below "
      "tau (a node left with no neighbour)", "the node aggregates only itself (row of P = "
      "e_i, its self weight 1 rather than 1 - p, so re-weighting never divides by an empty "
      "row); finite operator; ``pyg-mlic graph`` lists such nodes")
def _(tmp):
    from pyg_mlic.graphs import LabelGraph

    Y = _labels(60)
    Y[6:, 1] = Y[6:, 0]  # a and b always together: neighbours
    Y[:, 3] = 0
    Y[:6, 3] = 1
    Y[:6, :3] = 0  # label d never co-occurs with another label
    P = LabelGraph.from_labels(Y, tau=0.4, p=0.2).propagation()
    assert torch.isfinite(P).all()
    assert P[3].tolist() == [0.0, 0.0, 0.0, 1.0] and P[:, 3].tolist() == [0.0, 0.0, 0.0, 1.0]
    off = P.clone().fill_diagonal_(0)
    assert off[0, 1] > 0 and off[1, 0] > 0  # the other nodes keep their neighbours


# =========================================================================== non-finite values
@case("nan-features-file", "non-finite", "NaN or inf in a features ``.npz``",
      "``DatasetError`` naming the file and the first bad row / column / value")
def _(tmp):
    from pyg_mlic.data.features import FeaturesDataset

    for bad in (np.nan, np.inf):
        x = np.ones((6, 4), np.float32)
        x[2, 3] = bad
        with pytest.raises(DatasetError, match=r"non-finite.*row 2 \(column 3"):
            FeaturesDataset(_features_npz(tmp, features=x))


@case("inf-in-batch", "non-finite", "NaN/inf reaching a model (a broken transform or "
      "hand-made batch)", "``ValueError`` 'non-finite values in the input batch' when the "
      "engine loads the batch (checked on the host, before the device); inside a model only "
      "with ``PYG_MLIC_DEBUG=1``; in training a non-finite loss or gradient raises "
      "``DivergenceError`` naming the epoch, the step and the learning rates")
def _(tmp):
    from pyg_mlic.data.base import check_batch_finite
    from pyg_mlic.models.base import DEBUG_ENV

    x = torch.randn(2, 8)
    x[1, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite values in the input batch"):
        check_batch_finite({"features": x})
    os.environ[DEBUG_ENV] = "1"
    try:
        with pytest.raises(ValueError, match="non-finite values in the input batch"):
            _features_model("baseline")({"features": x})
    finally:
        del os.environ[DEBUG_ENV]


@case("nan-embeddings", "non-finite", "NaN/inf label embeddings (``npz:`` file, tensor given "
      "to a model or to ``LabelGraph``)", "``ValueError`` naming the classes (or first "
      "position) with non-finite vectors")
def _(tmp):
    from pyg_mlic.embeddings import load_label_embeddings
    from pyg_mlic.graphs import LabelGraph

    v = np.ones((3, 5), np.float32)
    v[1, 2] = np.nan
    np.savez(tmp / "e.npz", vectors=v, classes=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"non-finite.*\['b'\]"):
        load_label_embeddings(f"npz:{tmp / 'e.npz'}", ["a", "b", "c"])
    E = torch.ones(4, 5)
    E[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite.*\[2, 1\]"):
        LabelGraph.from_labels(_labels(), embeddings=E)
    with pytest.raises(ValueError, match=r"non-finite label embeddings for classes \['c'\]"):
        _features_model("ml_gcn", train_labels=_labels(), label_embeddings=E)


@case("nan-scores", "non-finite", "NaN/inf scores given to ``multilabel_metrics``",
      "``ValueError`` with the count and the first [sample, class] position")
def _(tmp):
    from pyg_mlic.metrics import multilabel_metrics

    s = torch.randn(4, 2)
    s[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"1 non-finite value.*\[1, 1\]"):
        multilabel_metrics(s, torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]]))


# =========================================================================== hyper-parameters
@case("tau-p-out-of-range", "hyper-parameters", "``tau`` or ``p`` outside [0, 1] or NaN "
      "(``LabelGraph``, ``ml_gcn``, ``ia_gcn``)", "``ValueError`` 'tau must be in [0, 1], "
      "got ...' (same for p)")
def _(tmp):
    from pyg_mlic.graphs import LabelGraph

    Y = _labels()
    for kw in (dict(tau=1.5), dict(tau=float("nan")), dict(p=-0.1), dict(p=2.0)):
        name = next(iter(kw))
        with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\]"):
            LabelGraph.from_labels(Y, **kw)
        with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\]"):
            _features_model("ml_gcn", train_labels=Y, **kw)


@case("alpha-out-of-range", "hyper-parameters", "A-GCN's ``alpha`` (weight of L_A) negative, "
      "NaN or not a number", "``ValueError`` 'alpha ... must be a finite number >= 0'")
def _(tmp):
    _need_model("a_gcn")
    for bad in (-1.0, float("nan"), "big"):
        with pytest.raises(ValueError, match="alpha .*must be a finite number >= 0"):
            _features_model("a_gcn", alpha=bad)


@case("lambda-out-of-range", "hyper-parameters", "IA-GCN's fusion weight lambda (Eq. 11) "
      "outside [0, 1]", "``ValueError`` naming ``fusion_weight`` and the valid range")
def _(tmp):
    _need_model("ia_gcn")
    for bad in (1.5, -0.5, float("inf")):
        with pytest.raises(ValueError, match="fusion_weight"):
            _features_model("ia_gcn", train_labels=_labels(), fusion_weight=bad)


@case("beta-out-of-range", "hyper-parameters", "GM-MLIC's ``beta`` (Eq. 15) negative or NaN",
      "``ValueError`` 'beta (Eq. 15) must be a finite number >= 0'")
def _(tmp):
    _need_model("gm_mlic")
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match=r"beta \(Eq. 15\) must be a finite number >= 0"):
            _features_model("gm_mlic", train_labels=_labels(), beta=bad)


# =========================================================================== regions
@case("zero-rois", "regions", "an image with no region (``roi_mask`` all False) in IA-GCN / "
      "GM-MLIC", "finite logits and loss: padding rows are zeros and masked out of every "
      "aggregation; the image is classified from its global feature and the label graph")
def _(tmp):
    for name in ("ia_gcn", "gm_mlic"):
        model = _region_model(name, max_instances=3)
        b = _region_batch(K=2, present=0)
        out = model(b)
        loss, _ = model.loss(out, b)
        assert torch.isfinite(out.logits).all() and torch.isfinite(loss), name


@case("more-rois-than-max-instances", "regions", "more ROIs per image than ``max_instances``",
      "the first ``max_instances`` (highest-scored, as stored) are used: the output equals "
      "that of the truncated input")
def _(tmp):
    for name in ("ia_gcn", "gm_mlic"):
        model = _region_model(name, max_instances=3).eval()
        b = _region_batch(K=7, present=7)
        cut = {k: (v[:, :3] if k in ("roi_features", "roi_boxes", "roi_mask") else v)
               for k, v in b.items()}
        with torch.no_grad():
            torch.testing.assert_close(model(b).logits, model(cut).logits)


# =========================================================================== class lists
@case("class-mismatch-graph", "class lists", "a label graph whose class list differs from the "
      "model's", "``ClassMismatchError`` listing the missing / extra classes")
def _(tmp):
    from pyg_mlic.graphs import LabelGraph

    g = LabelGraph.from_labels(_labels(), classes=["w", "x", "y", "z"])
    with pytest.raises(ClassMismatchError, match=r"missing from label graph: \['a', 'b'"):
        _features_model("ml_gcn", label_graph=g)


@case("class-mismatch-embeddings", "class lists", "label embeddings for other classes (an "
      "``npz:`` file lacking a class; a matrix with the wrong number of rows)",
      "``ClassMismatchError`` naming the file and the classes without a vector / the shapes")
def _(tmp):
    from pyg_mlic.embeddings import load_label_embeddings

    np.savez(tmp / "e.npz", vectors=np.ones((3, 5), np.float32),
             classes=np.array(["a", "b", "x"]))
    with pytest.raises(ClassMismatchError, match=r"e\.npz has no vector for 1 of the 3 "
                                                 r"classes: \['c'\]"):
        load_label_embeddings(f"npz:{tmp / 'e.npz'}", ["a", "b", "c"])
    with pytest.raises(ClassMismatchError, match=r"shape \(5, 3\), expected \[4, d\]"):
        _features_model("ml_gcn", train_labels=_labels(), label_embeddings=torch.ones(5, 3))


@case("class-mismatch-labels", "class lists", "training labels with another number of "
      "columns than the class list", "``ClassMismatchError`` 'classes has 4 names but the "
      "label statistics have 3 labels'")
def _(tmp):
    with pytest.raises(ClassMismatchError, match="4 names but the label statistics have 3"):
        _features_model("ml_gcn", train_labels=_labels(c=3))


@case("class-mismatch-dataset-checkpoint", "class lists", "``pyg-mlic eval`` of a checkpoint "
      "on a dataset with other classes", "``ClassMismatchError`` 'checkpoint has 5 classes, "
      "dataset features has 4 ...'")
def _(tmp):
    from pyg_mlic.cli import main

    ckpt = _trained_checkpoint(tmp)
    make_features_npz(tmp / "te.npz", c=4, seed=3)
    with pytest.raises(ClassMismatchError, match="checkpoint has 5 classes"):
        main(["--debug", *_eval_args(tmp, ckpt)])


@case("eval-feature-size-mismatch", "class lists", "``pyg-mlic eval`` of a features "
      "checkpoint on a test file of another feature size",
      "``ClassMismatchError`` 'checkpoint ... takes 16 features per row, the test split has "
      "6' before any forward pass")
def _(tmp):
    from pyg_mlic.cli import main

    ckpt = _trained_checkpoint(tmp)
    make_features_npz(tmp / "te.npz", d=6, seed=3)
    with pytest.raises(ClassMismatchError, match="takes 16 features per row, the test split "
                                                 "has 6"):
        main(["--debug", *_eval_args(tmp, ckpt)])


@case("predict-feature-size-mismatch", "class lists", "``pyg-mlic predict`` of a features "
      "checkpoint on a features file of another feature size",
      "``ClassMismatchError`` 'checkpoint ... takes 16 features per row, ... has 6' before "
      "any forward pass, nothing written")
def _(tmp):
    from pyg_mlic.cli import main

    ckpt = _trained_checkpoint(tmp)
    make_features_npz(tmp / "ok.npz", seed=3)
    make_features_npz(tmp / "other.npz", d=6, seed=3)
    with pytest.raises(ClassMismatchError, match="takes 16 features per row, .*other.npz has 6"):
        main(["--debug", "predict", str(tmp / "ok.npz"), str(tmp / "other.npz"),
              "--checkpoint", str(ckpt), "--output", str(tmp / "p.csv")])
    assert not (tmp / "p.csv").exists()


# =========================================================================== checkpoints
@case("truncated-checkpoint", "checkpoints", "a truncated checkpoint (``eval --checkpoint`` / "
      "``train --resume``)", "``CheckpointError`` 'not a loadable pyg_mlic checkpoint "
      "(truncated, corrupt ...)' naming the file")
def _(tmp):
    from pyg_mlic.cli import main

    ckpt = _trained_checkpoint(tmp)
    cut = tmp / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a loadable"):
        main(["--debug", *_eval_args(tmp, cut)])
    ckpt.write_bytes(cut.read_bytes())
    with pytest.raises(CheckpointError, match=r"last\.pt: not a loadable"):
        main(["--debug", *_train_args(tmp, tmp / "run") + ["--epochs", "2", "--resume"]])


@case("foreign-checkpoint", "checkpoints", "a checkpoint of something else: a plain "
      "state dict, or another model's checkpoint given to ``--resume``",
      "``CheckpointError`` 'not a pyg_mlic checkpoint (missing format tag)' / 'holds model "
      "'baseline', expected 'ml_gcn''")
def _(tmp):
    from pyg_mlic.cli import main

    ckpt = _trained_checkpoint(tmp)
    torch.save({"weight": torch.zeros(3)}, tmp / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a pyg_mlic checkpoint"):
        main(["--debug", *_eval_args(tmp, tmp / "foreign.pt")])
    args = _train_args(tmp, tmp / "run") + ["--epochs", "2", "--resume"]
    args[args.index("baseline")] = "ml_gcn"
    with pytest.raises(CheckpointError, match="holds model 'baseline', expected 'ml_gcn'"):
        main(["--debug", *args])
    torch.save({"weight": torch.zeros(3)}, ckpt)
    with pytest.raises(CheckpointError, match="not a pyg_mlic checkpoint"):
        main(["--debug", *_train_args(tmp, tmp / "run") + ["--epochs", "2", "--resume"]])


@case("missing-checkpoint", "checkpoints", "``--resume`` with no ``OUT/last.pt``",
      "``FileNotFoundError`` '--resume: no checkpoint at PATH'")
def _(tmp):
    from pyg_mlic.cli import main

    make_features_npz(tmp / "tr.npz", n=64)
    make_features_npz(tmp / "te.npz", n=32, seed=1)
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint"):
        main(["--debug", *_train_args(tmp, tmp / "nothing") + ["--resume"]])


@case("resume-with-other-settings", "checkpoints", "``--resume`` with another seed, batch "
      "size, optimiser, learning rate, schedule or selection rule than the checkpoint's",
      "``CheckpointError`` listing each changed setting ('seed was 0, now 1'): the run would "
      "not be the one that was interrupted. ``--epochs`` (and device, workers, progress) may "
      "change")
def _(tmp):
    from pyg_mlic.cli import main
    from pyg_mlic.engine import load_checkpoint

    _trained_checkpoint(tmp)
    base = _train_args(tmp, tmp / "run") + ["--resume", "--epochs", "2"]
    with pytest.raises(CheckpointError, match=r"seed was 0, now 1"):
        main(["--debug", *base + ["--seed", "1"]])
    with pytest.raises(CheckpointError, match=r"batch_size was 32, now 16"):
        main(["--debug"] + [a if a != "32" else "16" for a in base])
    assert main(base) == 0  # more epochs: the point of resuming
    assert load_checkpoint(tmp / "run" / "last.pt")["epoch"] == 1


@case("out-holds-a-run", "checkpoints", "``pyg-mlic train --out DIR`` where DIR holds a run "
      "already (without ``--resume``), or where ``--out`` is a file",
      "exits with 'train: DIR already holds a run (last.pt, ...); pass --resume to continue "
      "it, --overwrite to replace it, or another --out', the old run untouched; "
      "``--overwrite`` removes the old run's files (no stale ``best.pt``) and trains anew; "
      "``--resume --overwrite`` together is a usage error")
def _(tmp):
    from pyg_mlic.cli import main

    make_features_npz(tmp / "tr.npz", n=64)
    make_features_npz(tmp / "te.npz", n=32, seed=1)
    out = tmp / "o"
    args = _train_args(tmp, out) + ["--epochs", "1"]
    assert main(args + ["--val-fraction", "0.25", "--select", "best_val"]) == 0
    before = {f: (out / f).read_bytes() for f in ("last.pt", "best.pt", "metrics.json")}
    with pytest.raises(SystemExit, match=r"already holds a run \(last\.pt, best\.pt, "
                                         r"metrics\.json, history\.json\); pass --resume"):
        main(["--debug", *args])
    assert {f: (out / f).read_bytes() for f in before} == before
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "best.pt").exists() and (out / "last.pt").read_bytes() != before["last.pt"]
    with pytest.raises(SystemExit, match=r"--out .*te\.npz is a file, not a folder"):
        main(["--debug", *_train_args(tmp, tmp / "te.npz")])
    last = (out / "last.pt").read_bytes()
    with pytest.raises(SystemExit):  # argparse: not allowed with argument --resume
        main(args + ["--resume", "--overwrite"])
    assert (out / "last.pt").read_bytes() == last


@case("nproc-invalid", "distributed", "``pyg-mlic train --nproc 0`` (or negative)",
      "exits with 'train: --nproc must be >= 1'")
def _(tmp):
    from pyg_mlic.cli import main

    make_features_npz(tmp / "tr.npz", n=64)
    make_features_npz(tmp / "te.npz", n=32, seed=1)
    with pytest.raises(SystemExit, match="--nproc must be >= 1"):
        main(["--debug", *_train_args(tmp, tmp / "o") + ["--nproc", "0"]])


@case("malicious-pickle-checkpoint", "security", "a checkpoint whose pickle would run code "
      "(``eval --checkpoint``, ``train --resume``, ``predict``/``export``)",
      "``CheckpointError``: loaded with ``torch.load(weights_only=True)``, which refuses "
      "the object; the code never runs")
def _(tmp):
    from pyg_mlic.cli import main

    make_features_npz(tmp / "tr.npz", n=64)
    make_features_npz(tmp / "te.npz", n=32, seed=1)
    marker = tmp / "pwned"
    evil = tmp / "run" / "last.pt"
    evil.parent.mkdir()
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        with open(evil, "wb") as f:
            pickle.dump({"format": "pyg_mlic-checkpoint", "x": _Evil(marker)}, f, protocol=proto)
        torch.save({"format": "pyg_mlic-checkpoint", "x": _Evil(marker)}, tmp / "evil_zip.pt")
        for argv in (_eval_args(tmp, evil), _eval_args(tmp, tmp / "evil_zip.pt"),
                     _train_args(tmp, tmp / "run") + ["--resume"],
                     ["predict", str(tmp / "any.jpg"), "--checkpoint", str(evil)],
                     ["export", "--checkpoint", str(evil), "--out", str(tmp / "m.onnx")]):
            with pytest.raises(CheckpointError):
                main(["--debug", *argv])
            assert not marker.exists()


@case("object-array-npz", "security", "a features / embeddings ``.npz`` holding an object "
      "(pickled) array", "``DatasetError`` 'object (pickled) array, which is never loaded'; "
      "files are read with ``allow_pickle=False``, the pickle never runs")
def _(tmp):
    from pyg_mlic.cli import main
    from pyg_mlic.embeddings import load_label_embeddings

    marker = tmp / "pwned"
    obj = np.empty(3, dtype=object)
    obj[:] = [_Evil(marker), "b", "c"]
    _features_npz(tmp, "tr.npz", classes=obj)
    _features_npz(tmp, "te.npz")
    with pytest.raises(DatasetError, match=r"'classes' is an object \(pickled\) array"):
        main(["--debug", *_train_args(tmp, tmp / "o")])
    np.savez(tmp / "e.npz", vectors=np.ones((3, 2), np.float32), classes=obj)
    with pytest.raises(DatasetError, match="pickle"):
        load_label_embeddings(f"npz:{tmp / 'e.npz'}", ["a", "b", "c"])
    assert not marker.exists()


# =========================================================================== options
@case("option-typo", "options", "a misspelt model option (``--set tua=0.3``, "
      "``build_model('ml_gcn', tua=0.3)``, ``fit(..., model_options={'tua': 0.3})``)",
      "``OptionError`` 'ml_gcn got an unknown option 'tua'; did you mean 'tau'?' before any "
      "data is read; the CLI prints it on one line and exits 2")
def _(tmp, capsys=None):
    from pyg_mlic.cli import main
    from pyg_mlic.engine import fit
    from pyg_mlic.errors import OptionError
    from pyg_mlic.models import build_model

    with pytest.raises(OptionError, match="unknown option 'tua'; did you mean 'tau'"):
        build_model("ml_gcn", classes=["a", "b"], input_kind="features", in_features=4,
                    tua=0.3)
    # no file exists: the option is refused before the dataset is opened
    with pytest.raises(OptionError, match="ml_gcn got an unknown option 'tua'"):
        main(["--debug", "train", "--dataset", "features", "--train-file", str(tmp / "no.npz"),
              "--test-file", str(tmp / "no.npz"), "--model", "ml_gcn", "--set", "tua=0.3"])
    tr = _features_dataset(tmp, "tr.npz")
    with pytest.raises(OptionError, match="did you mean 'tau'"):
        fit("ml_gcn", tr, None, tr, model_options={"tua": 0.3})
    with pytest.raises(OptionError, match="unknown training option 'epoch'; did you mean "
                                          "'epochs'"):
        fit("baseline", tr, None, tr, train_options={"epoch": 3})
    with pytest.raises(OptionError, match="unknown option 'pca'"):  # a recipe option
        fit("ml_gcn", tr, None, tr, model_options={"pca": False})   # of IML-GCN only


@case("user-error-one-line", "options", "any user error at the command line (bad option, "
      "missing file, class mismatch, corrupt checkpoint)",
      "one line ``pyg-mlic: error: ...`` on stderr, exit status 2, no traceback; "
      "``--debug`` raises the exception instead")
def _(tmp):
    import subprocess

    for argv in (["train", "--dataset", "synthetic", "--model", "ml_gcn", "--set", "tua=0.3"],
                 ["eval", "--checkpoint", str(tmp / "none.pt"), "--dataset", "synthetic"]):
        r = subprocess.run([sys.executable, "-m", "pyg_mlic.cli", *argv], capture_output=True,
                           text=True, timeout=300)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "Warning" not in ln
                 and not ln.startswith(("  warnings.warn", "pyg-mlic: warning: "))]
        assert r.returncode == 2, r.stderr
        assert len(lines) == 1 and lines[0].startswith("pyg-mlic: error: "), r.stderr
        assert "Traceback" not in r.stderr


@case("feature-size-mismatch", "data", "train and test features files of different feature "
      "sizes (e.g. extracted with two backbones)",
      "``ClassMismatchError`` 'feature size differs between splits: training split 4, test "
      "split 6' when the splits are loaded, before training")
def _(tmp):
    from pyg_mlic.data.factory import build_splits
    from pyg_mlic.engine import fit

    _features_npz(tmp, "tr.npz")
    _features_npz(tmp, "te.npz", features=np.ones((6, 6), np.float32))
    with pytest.raises(ClassMismatchError, match="feature size differs between splits: "
                                                 "training split 4, test split 6"):
        build_splits("features", train_file=str(tmp / "tr.npz"), test_file=str(tmp / "te.npz"))
    from pyg_mlic.data.features import FeaturesDataset

    tr, te = FeaturesDataset(tmp / "tr.npz"), FeaturesDataset(tmp / "te.npz")
    with pytest.raises(ClassMismatchError, match="feature size differs"):
        fit("baseline", tr, None, te)


@case("class-not-teachable", "labels", "a class with no known positive (or no known "
      "negative) label in the *training* split, or features equal on every training row",
      "before training, a ``UserWarning`` naming the split and the classes "
      "('1 of 3 class(es) have no known positive label ... 'c''); the command line prints it "
      "as one line ``pyg-mlic: warning: ...``")
def _(tmp):
    from pyg_mlic.engine import fit

    Y = _labels(40, 3)
    Y[:, 2] = 0
    _features_npz(tmp, "tr.npz", features=np.random.default_rng(0).normal(
        size=(40, 4)).astype(np.float32), labels=Y)
    from pyg_mlic.data.features import FeaturesDataset

    with pytest.warns(UserWarning, match=r"training split \(train, 40 rows\): 1 of 3 "
                                         r"class\(es\) have no known positive label.*'c'"):
        tr = FeaturesDataset(tmp / "tr.npz")
        fit("baseline", tr, None, tr, train_options=dict(epochs=1, progress=False))


@case("beyond-float32", "data", "a float64 (or integer) features file with a value beyond "
      "float32's range, or a column whose spread float32 cannot hold (e.g. 1e9 + x)",
      "``DatasetError`` naming the value, row and column; for the lost spread a "
      "``UserWarning`` naming the column and asking to subtract each column's mean")
def _(tmp):
    from pyg_mlic.data.features import FeaturesDataset

    X = np.random.default_rng(0).normal(size=(6, 4))
    X[2, 1] = 1e200
    _features_npz(tmp, "big.npz", features=X)
    with pytest.raises(DatasetError, match=r"value 1e\+200 \(row 2, column 1\) is beyond the "
                                           r"float32 range"):
        FeaturesDataset(tmp / "big.npz")
    X[2, 1] = 0.0
    X[:, 3] += 1e9
    _features_npz(tmp, "off.npz", features=X)
    with pytest.warns(UserWarning, match=r"1 feature column\(s\) lose their spread in float32"
                                         r".*column 3"):
        FeaturesDataset(tmp / "off.npz")


@case("bad-learning-rate", "hyper-parameters", "a learning rate that is NaN, inf, 0 or "
      "negative (``--lr``, ``--backbone-lr``, ``TrainConfig``)",
      "``ValueError`` 'lr must be a finite learning rate > 0, got inf' before training "
      "(``backbone_lr = 0`` freezes the backbone and is allowed)")
def _(tmp):
    from pyg_mlic.cli import main
    from pyg_mlic.engine import TrainConfig

    for lr in (float("nan"), float("inf"), 0.0, -1e-3):
        with pytest.raises(ValueError, match=r"lr must be a finite learning rate > 0"):
            TrainConfig(lr=lr)
    with pytest.raises(ValueError, match=r"backbone_lr must be a finite learning rate >= 0"):
        TrainConfig(lr=0.1, backbone_lr=float("nan"))
    assert TrainConfig(lr=0.1, backbone_lr=0.0).backbone_lr == 0.0
    make_features_npz(tmp / "tr.npz", n=64)
    make_features_npz(tmp / "te.npz", n=32, seed=1)
    assert main(_train_args(tmp, tmp / "o") + ["--lr", "inf"]) == 2
    assert not (tmp / "o" / "last.pt").exists()


@case("not-a-dataset", "options", "``fit`` given a path, an array or a list where a split "
      "belongs", "``TypeError`` 'the training split must be a dataset of this library (... "
      "FeaturesDataset(path) ...), got str', before any work")
def _(tmp):
    from pyg_mlic.engine import fit

    make_features_npz(tmp / "tr.npz", n=32)
    from pyg_mlic.data.features import FeaturesDataset

    tr = FeaturesDataset(tmp / "tr.npz")
    with pytest.raises(TypeError, match=r"the training split must be a dataset of this "
                                        r"library .*got str"):
        fit("baseline", str(tmp / "tr.npz"), None, tr)
    with pytest.raises(TypeError, match=r"the test split must be .*got ndarray"):
        fit("baseline", tr, None, np.zeros((4, 4)))


@case("output-is-a-folder", "options", "an output file option naming a folder: ``eval --out``, "
      "``predict --output``, ``export --out``, ``graph --out`` / ``--plot``, "
      "``extract-features --out``; ``demo --out`` naming a file",
      "one-line error ``--out DIR is a folder; name the file to write`` before any work "
      "(extract-features failed after extracting every image)")
def _(tmp):
    from pyg_mlic.cli import main

    ckpt = _trained_checkpoint(tmp)
    d = tmp / "dir.npz"
    d.mkdir()
    runs = {
        "eval": _eval_args(tmp, ckpt) + ["--out", str(d)],
        "predict": ["predict", str(tmp / "te.npz"), "--checkpoint", str(ckpt), "--output",
                    str(tmp / "dir.csv")],
        "export": ["export", "--checkpoint", str(ckpt), "--out", str(d)],
        "graph": ["graph", "--labels", str(tmp / "tr.npz"), "--out", str(d)],
        "extract-features": ["extract-features", "--dataset", "synthetic", "--num-images", "8",
                             "--backbone", "small_cnn", "--out", str(d)],
    }
    (tmp / "dir.csv").mkdir()
    for command, argv in runs.items():
        with pytest.raises(SystemExit, match=f"{command}: --out.* is a folder; name the file"):
            main(["--debug", *argv])
    with pytest.raises(SystemExit, match="graph: --plot .* is a folder"):
        main(["--debug", "graph", "--labels", str(tmp / "tr.npz"), "--plot", str(d)])
    with pytest.raises(ValueError, match="demo: out .*tr.npz is a file, not a folder"):
        main(["--debug", "demo", "--out", str(tmp / "tr.npz"), "--models", "baseline"])


@case("malformed-layer-widths", "options", "``--set encoder_hidden=[1,`` (an unclosed list "
      "left as a string), ``encoder_hidden=512`` or ``[16.5]``; ``--data-opt`` with "
      "``--dataset features``",
      "``ValueError`` 'hidden (encoder_hidden) must be a list of integer layer widths, e.g. "
      "[512] ..., got '[1,'' (was 'invalid literal for int()'); 'data_config (--data-opt) "
      "sets image transforms; --dataset features has none' (was silently ignored)")
def _(tmp):
    from pyg_mlic.cli import main

    make_features_npz(tmp / "tr.npz", n=64)
    make_features_npz(tmp / "te.npz", n=32, seed=1)
    base = ["--debug", "train", "--dataset", "features", "--train-file", str(tmp / "tr.npz"),
            "--test-file", str(tmp / "te.npz"), "--model", "ml_gcn", "--epochs", "1",
            "--no-progress"]
    for i, value in enumerate(("[1,", "512", "[16.5]")):
        with pytest.raises(ValueError, match=r"hidden \(encoder_hidden\) must be a list of "
                                             r"integer layer widths, e\.g\. \[512\]"):
            main(base + ["--out", str(tmp / f"o{i}"), "--set", f"encoder_hidden={value}"])
    with pytest.raises(ValueError, match=r"--data-opt\) sets image transforms; --dataset "
                                         r"features has none \(got \['crop'\]\)"):
        main(base + ["--out", str(tmp / "d"), "--data-opt", "crop=64"])
    assert not any((tmp / f"o{i}").exists() for i in range(3))


@case("options-not-a-dict", "options", "``fit`` given a list or a string as "
      "``train_options`` / ``model_options`` (e.g. ``train_options=['epochs', 2]``)",
      "``TypeError`` 'fit: train_options must be a dict or a TrainConfig (option name -> "
      "value), got list', before any work")
def _(tmp):
    from pyg_mlic.data.features import FeaturesDataset
    from pyg_mlic.engine import fit

    tr = FeaturesDataset(make_features_npz(tmp / "tr.npz", n=32))
    with pytest.raises(TypeError, match=r"fit: train_options must be a dict or a TrainConfig "
                                        r"\(option name -> value\), got list"):
        fit("baseline", tr, None, tr, train_options=["epochs", 2])
    with pytest.raises(TypeError, match=r"fit: model_options must be a dict .*got str"):
        fit("baseline", tr, None, tr, model_options="dropout=0.1")


@case("non-integer-count", "hyper-parameters", "``epochs``, ``batch_size``, ``seed``, "
      "``num_workers`` or ``eval_every`` that is not an integer (``'3'``, ``16.5``, "
      "``None``)", "``ValueError`` 'epochs must be an integer, got '3''; integral numbers "
      "(``3.0``, ``numpy.int64(3)``) are taken as ints")
def _(tmp):
    from pyg_mlic.engine import TrainConfig

    for kw in (dict(epochs="3"), dict(batch_size=16.5), dict(seed=None), dict(eval_every=True)):
        (name,) = kw
        with pytest.raises(ValueError, match=rf"{name} must be an integer, got"):
            TrainConfig(**kw)
    c = TrainConfig(epochs=3.0, batch_size=np.int64(8))
    assert (c.epochs, c.batch_size) == (3, 8) and type(c.batch_size) is int


@case("bad-val-fraction", "options", "``--val-fraction`` negative, NaN or >= 1",
      "``ValueError`` 'validation fraction must be in (0, 1)' (0, the default, holds out "
      "nothing)")
def _(tmp):
    from pyg_mlic.data.factory import build_splits

    make_features_npz(tmp / "tr.npz", n=64)
    make_features_npz(tmp / "te.npz", n=32, seed=1)
    files = dict(train_file=str(tmp / "tr.npz"), test_file=str(tmp / "te.npz"))
    for f in (-0.2, float("nan"), 1.0):
        with pytest.raises(ValueError, match=r"validation fraction must be in \(0, 1\)"):
            build_splits("features", val_fraction=f, **files)
    assert build_splits("features", val_fraction=0.0, **files)[1] is None


@case("unknown-device", "options", "``--device`` naming no torch device (``tpu``) or one "
      "this machine lacks (``cuda`` without CUDA, ``cuda:3`` with two GPUs)",
      "``ValueError`` 'device 'tpu' is not a torch device' / 'CUDA is not available on this "
      "machine', before anything is written")
def _(tmp):
    from pyg_mlic.cli import main
    from pyg_mlic.utils.device import resolve_device

    with pytest.raises(ValueError, match="'tpu' is not a torch device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available on this machine"):
            resolve_device("cuda")
    make_features_npz(tmp / "tr.npz", n=64)
    make_features_npz(tmp / "te.npz", n=32, seed=1)
    assert main(_train_args(tmp, tmp / "o") + ["--device", "tpu"]) == 2
    assert not (tmp / "o").exists() or not any((tmp / "o").iterdir())


@case("diverging-run", "training", "a run whose loss or gradient becomes inf/NaN (a "
      "learning rate too large, an unstable layer)", "``DivergenceError`` naming the epoch, "
      "the step, the learning rates and what to try; nothing is stepped with the bad "
      "gradient and the last good checkpoint (the previous epoch's ``last.pt``) is kept")
def _(tmp):
    from pyg_mlic.data.features import FeaturesDataset
    from pyg_mlic.engine import fit, load_checkpoint
    from pyg_mlic.errors import DivergenceError

    make_features_npz(tmp / "tr.npz", n=64, seed=0)
    tr = FeaturesDataset(tmp / "tr.npz")
    model = _NaNAfter(tr.classes, input_kind="features", in_features=tr.feature_dim,
                      after_steps=4)  # 64 samples / 16 = 4 steps: NaN at epoch 2, step 1
    with pytest.raises(DivergenceError, match=r"diverged: non-finite loss at epoch 2, step 1 "
                                              r".*learning rates: head 0.1.*last good "
                                              r"checkpoint, .*last\.pt \(end of epoch 1\), "
                                              r"is kept.*lower learning rate"):
        fit(model, tr, None, tr, out_dir=tmp / "run", train_options=dict(
            epochs=3, batch_size=16, progress=False, optimizer="sgd", lr=0.1, lr_step=None))
    kept = load_checkpoint(tmp / "run" / "last.pt")
    assert kept["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values()
               if v.is_floating_point())
    # the weights were not stepped with the NaN gradient
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _NaNAfter(__import__("pyg_mlic.models.baseline", fromlist=["Baseline"]).Baseline):
    """A baseline whose logits turn NaN after ``after_steps`` training steps."""

    def __init__(self, classes, after_steps: int = 4, **kw):
        super().__init__(classes, **kw)
        self.after_steps, self.steps = after_steps, 0

    def forward(self, batch):
        out = super().forward(batch)
        if self.training:
            self.steps += 1
            if self.steps > self.after_steps:
                out.logits = out.logits * float("nan")
        return out


def _features_dataset(tmp: Path, name: str):
    from pyg_mlic.data.features import FeaturesDataset

    make_features_npz(tmp / name, n=32, c=4, d=8, seed=0)
    return FeaturesDataset(tmp / name)


# =========================================================================== the tests
@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c: Case, tmp_path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
        c.run(tmp_path)


def render_rst() -> str:
    """``docs/bad_inputs.rst``: the table of :data:`CASES`."""
    lines = [
        ":orphan:",
        "",
        "Bad inputs",
        "==========",
        "",
        ".. This file is generated from tests/test_bad_inputs.py (CASES); do not edit it by",
        "   hand: run ``PYTHONPATH=. python tests/test_bad_inputs.py > docs/bad_inputs.rst``.",
        "",
        "Every bad input below is a case of ``tests/test_bad_inputs.py``: a real input fed",
        "to the public API or the ``pyg-mlic`` command, with the behaviour asserted. The",
        "errors derive from :class:`ValueError` (``DatasetError``, ``ClassMismatchError``,",
        "``CheckpointError`` in :mod:`pyg_mlic.errors`) or :class:`FileNotFoundError`, and",
        "their messages name the offending file, class or argument. No case produces a NaN",
        "metric or a silently wrong answer.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 18 12 35 35",
        "",
        "   * - Case",
        "     - Area",
        "     - Input",
        "     - What happens",
    ]
    for c in CASES:
        lines += [f"   * - ``{c.id}``", f"     - {c.area}", f"     - {c.input}",
                  f"     - {c.behaviour}"]
    return "\n".join(lines) + "\n"


def test_doc_table_is_generated_from_cases():
    doc = (ROOT / "docs" / "bad_inputs.rst").read_text()
    assert doc == render_rst(), ("docs/bad_inputs.rst is out of date: run "
                                 "PYTHONPATH=. python tests/test_bad_inputs.py > "
                                 "docs/bad_inputs.rst")


if __name__ == "__main__":
    sys.stdout.write(render_rst())
