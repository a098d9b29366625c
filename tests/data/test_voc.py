"""VOCDataset / voc_labels on the real BCCD data (VOC-format XML, ImageSets, JPEGs)."""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pyg_mlic.data.base import collate
from pyg_mlic.data.transforms import RandomCropResizeTransform, ResizeTransform
from pyg_mlic.data.voc import VOC_CLASSES, VOCDataset, parse_voc_xml, voc_labels
from pyg_mlic.errors import DatasetError

BCCD = ["WBC", "RBC", "Platelets"]


@pytest.fixture(scope="module")
def bccd(data_dir) -> Path:
    d = data_dir / "images" / "bccd"
    if not (d / "ImageSets" / "Main").is_dir():
        pytest.skip(f"BCCD not found at {d}")
    return d


def _regex_objects(xml_file):
    """Independent parse (regular expressions, no ElementTree): [(name, difficult, box)]."""
    text = Path(xml_file).read_text()
    out = []
    for obj in re.findall(r"<object>(.*?)</object>", text, flags=re.S):
        name = re.search(r"<name>\s*(.*?)\s*</name>", obj).group(1)
        diff = re.search(r"<difficult>\s*(\d)\s*</difficult>", obj)
        box = [float(re.search(rf"<{k}>\s*([\d.]+)\s*</{k}>", obj).group(1))
               for k in ("xmin", "ymin", "xmax", "ymax")]
        out.append((name, bool(diff and diff.group(1) == "1"), box))
    return out


@pytest.mark.parametrize("split", ["train", "val", "trainval", "test"])
def test_bccd_labels_match_independent_parse(bccd, split):
    ids, Y, classes = voc_labels(bccd, split, classes=BCCD)
    ref_ids = (bccd / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    assert ids == ref_ids and classes == BCCD
    assert Y.dtype == np.int8 and Y.shape == (len(ref_ids), 3)
    ref = -np.ones_like(Y)
    for r, i in enumerate(ids):
        for name, diff, _ in _regex_objects(bccd / "Annotations" / f"{i}.xml"):
            j = BCCD.index(name)
            ref[r, j] = max(ref[r, j], 0 if diff else 1)
    np.testing.assert_array_equal(Y, ref)
    # per-class image counts, and a real multi-label structure
    counts = (Y == 1).sum(0)
    np.testing.assert_array_equal(counts, (ref == 1).sum(0))
    assert ((Y == 1).sum(1) >= 2).mean() > 0.5


def test_bccd_split_sizes_and_union(bccd):
    tr, Ytr, _ = voc_labels(bccd, "train", classes=BCCD)
    va, Yva, _ = voc_labels(bccd, "val", classes=BCCD)
    tv, Ytv, _ = voc_labels(bccd, "trainval", classes=BCCD)
    assert (len(tr), len(va), len(tv)) == (205, 87, 292)
    pos = {i: row for i, row in zip(tr + va, np.concatenate([Ytr, Yva]))}
    assert sorted(pos) == sorted(tv)
    for i, row in zip(tv, Ytv):
        np.testing.assert_array_equal(pos[i], row)


def test_all_three_in_190_images(bccd):
    # data README: "190 images hold all three" (over all 364 annotation files)
    n = sum(len({o[0] for o in _regex_objects(f)}) == 3
            for f in (bccd / "Annotations").glob("*.xml"))
    assert n == 190
    ids = [p.stem for p in (bccd / "Annotations").glob("*.xml")]
    got = sum(set(parse_voc_xml(bccd / "Annotations" / f"{i}.xml").names) == set(BCCD)
              for i in ids)
    assert got == 190


def test_infer_classes_and_default_voc_classes(bccd):
    _, Y, classes = voc_labels(bccd, "test", classes="infer")
    assert classes == ["Platelets", "RBC", "WBC"]
    _, Y2, _ = voc_labels(bccd, "test", classes=BCCD)
    np.testing.assert_array_equal(Y, Y2[:, [2, 1, 0]])
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and \
        VOC_CLASSES[-1] == "tvmonitor"
    with pytest.raises(DatasetError, match=r"BloodImage_\d+\.xml.*unknown class name"):
        voc_labels(bccd, "test")                    # default = the 20 VOC classes


def test_dataset_samples_and_boxes(bccd):
    ds = VOCDataset(bccd, "test", classes=BCCD, transform=ResizeTransform(224))
    assert ds.input_kind == "image" and ds.classes == BCCD and len(ds) == 72
    ids, Y, _ = voc_labels(bccd, "test", classes=BCCD)
    np.testing.assert_array_equal(ds.labels, (Y == 1).astype(np.uint8))
    for i in (0, 5, 71):
        s = ds[i]
        assert set(s) == {"image", "target", "mask", "index", "boxes", "box_labels", "path"}
        assert s["image"].shape == (3, 224, 224) and s["image"].dtype == torch.float32
        assert s["target"].shape == (3,) and s["mask"].dtype == torch.bool
        objs = _regex_objects(bccd / "Annotations" / f"{ids[i]}.xml")
        ref = torch.tensor([o[2] for o in objs], dtype=torch.float64)
        ref[:, 0::2] = ref[:, 0::2].clamp(0, 640)
        ref[:, 1::2] = ref[:, 1::2].clamp(0, 480)
        ref *= torch.tensor([224 / 640, 224 / 480] * 2, dtype=torch.float64)
        assert s["boxes"].dtype == torch.float32
        torch.testing.assert_close(s["boxes"].double(), ref, atol=1e-3, rtol=0)
        assert s["box_labels"].tolist() == [BCCD.index(o[0]) for o in objs]
        assert s["path"].endswith(f"JPEGImages/{ids[i]}.jpg")


def test_train_transform_and_dataloader(bccd):
    import random
    ds = VOCDataset(bccd, "val", classes=BCCD,
                    transform=RandomCropResizeTransform(64, generator=random.Random(1)))
    dl = DataLoader(ds, batch_size=4, shuffle=False, num_workers=0, collate_fn=collate)
    batch = next(iter(dl))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["target"].shape == (4, 3)
    assert batch["mask"].dtype == torch.bool and len(batch["boxes"]) == 4
    for b, bl in zip(batch["boxes"], batch["box_labels"]):
        assert len(b) == len(bl) and (b >= 0).all() and (b <= 64).all()
    assert type(VOCDataset(bccd, "train", classes=BCCD).transform).__name__ == \
        "RandomCropResizeTransform"
    assert type(VOCDataset(bccd, "test", classes=BCCD).transform).__name__ == \
        "ResizeTransform"


def test_voc_root_resolution(bccd, tmp_path):
    (tmp_path / "VOCdevkit").mkdir()
    (tmp_path / "VOCdevkit" / "VOC2007").symlink_to(bccd, target_is_directory=True)
    ds = VOCDataset(tmp_path, "val", classes=BCCD, year="2007")
    assert len(ds) == 87 and ds.root == tmp_path / "VOCdevkit" / "VOC2007"
    with pytest.raises(DatasetError, match="no VOC-format dataset"):
        VOCDataset(tmp_path / "VOCdevkit", "val", classes=BCCD, year="2012")


# ------------------------------------------------------------- difficult + bad input

@pytest.fixture
def tmp_voc(tmp_path, bccd):
    """A writable 3-image VOC folder built from real BCCD files."""
    ids = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00003"]
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    for i in ids:
        shutil.copy(bccd / "Annotations" / f"{i}.xml", tmp_path / "Annotations")
        shutil.copy(bccd / "JPEGImages" / f"{i}.jpg", tmp_path / "JPEGImages")
    (tmp_path / "ImageSets/Main/mini.txt").write_text("\n".join(ids) + "\n")
    return tmp_path, ids


def _make_wbc_difficult(xml_file):
    """Mark every WBC object of a file difficult (returns how many)."""
    text = Path(xml_file).read_text()
    parts = re.split(r"(<object>.*?</object>)", text, flags=re.S)
    n = 0
    for k, p in enumerate(parts):
        if p.startswith("<object>") and re.search(r"<name>\s*WBC\s*</name>", p):
            parts[k] = re.sub(r"<difficult>0</difficult>", "<difficult>1</difficult>", p)
            n += 1
    Path(xml_file).write_text("".join(parts))
    return n


def test_difficult_conventions(tmp_voc):
    root, ids = tmp_voc
    assert _make_wbc_difficult(root / "Annotations" / f"{ids[0]}.xml") >= 1
    _, Y, _ = voc_labels(root, "mini", classes=BCCD)
    assert Y[0, 0] == 0 and (Y[1:, 0] == 1).all()            # WBC difficult-only -> 0
    ign = VOCDataset(root, "mini", classes=BCCD, transform=ResizeTransform(32))
    assert ign.labels[0, 0] == 0 and ign.label_mask[0, 0] == False  # noqa: E712
    assert ign.label_mask.sum() == ign.label_mask.size - 1
    s = ign[0]
    assert s["target"][0] == 0 and not s["mask"][0] and s["mask"][1:].all()
    pos = VOCDataset(root, "mini", classes=BCCD, difficult="positive",
                     transform=ResizeTransform(32))
    assert pos.labels[0, 0] == 1 and pos.label_mask is None and pos[0]["mask"].all()
    neg = VOCDataset(root, "mini", classes=BCCD, difficult="negative",
                     transform=ResizeTransform(32))
    assert neg.labels[0, 0] == 0 and neg.label_mask is None
    # difficult boxes: kept with a flag by default, or dropped
    a = ign.annotations[0]
    assert a.difficult.any() and len(ign.boxes(0)[0]) == len(a.names)
    nod = VOCDataset(root, "mini", classes=BCCD, difficult_boxes=False,
                     transform=ResizeTransform(32))
    assert len(nod.boxes(0)[0]) == (~a.difficult).sum()
    assert 0 not in nod.boxes(0)[1].tolist()
    with pytest.raises(ValueError, match="difficult"):
        VOCDataset(root, "mini", classes=BCCD, difficult="maybe")


def test_malformed_xml(tmp_voc):
    root, ids = tmp_voc
    f = root / "Annotations" / f"{ids[1]}.xml"
    f.write_text(f.read_text()[:300])
    with pytest.raises(DatasetError, match=f"{ids[1]}.xml: malformed XML"):
        voc_labels(root, "mini", classes=BCCD)
    f.write_text("<annotation><object><name>RBC</name><bndbox><xmin>a</xmin></bndbox>"
                 "</object></annotation>")
    with pytest.raises(DatasetError, match=f"{ids[1]}.xml.*non-numeric"):
        VOCDataset(root, "mini", classes=BCCD)


def test_unknown_class_and_missing_files(tmp_voc):
    root, ids = tmp_voc
    with pytest.raises(DatasetError, match=r"BloodImage_00000\.xml.*unknown class name 'RBC'"):
        voc_labels(root, "mini", classes=["WBC", "Platelets"])
    with pytest.raises(DatasetError, match=r"split file not found.*nosuch\.txt"):
        voc_labels(root, "nosuch", classes=BCCD)
    (root / "Annotations" / f"{ids[2]}.xml").unlink()
    with pytest.raises(DatasetError, match=f"not found.*{ids[2]}.xml"):
        VOCDataset(root, "mini", classes=BCCD)


def test_empty_split(tmp_voc):
    root, _ = tmp_voc
    (root / "ImageSets/Main/empty.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"empty\.txt.*empty dataset"):
        VOCDataset(root, "empty", classes=BCCD)


def test_missing_and_corrupt_jpeg(tmp_voc):
    root, ids = tmp_voc
    (root / "JPEGImages" / f"{ids[0]}.jpg").unlink()
    (root / "JPEGImages" / f"{ids[1]}.jpg").write_bytes(np.random.default_rng(0)
                                                        .bytes(5000))
    ds = VOCDataset(root, "mini", classes=BCCD, transform=ResizeTransform(32))
    with pytest.raises(DatasetError, match=f"not found.*{ids[0]}.jpg"):
        ds[0]
    with pytest.raises(DatasetError, match=f"not a recognised image.*{ids[1]}.jpg"):
        ds[1]
    assert ds[2]["image"].shape == (3, 32, 32)
    rep = ds.verify(progress=False, raise_on_error=False)
    assert rep.checked == 3 and len(rep.problems) == 2
    assert f"{ids[0]}.jpg" in str(rep) and f"{ids[1]}.jpg" in str(rep)
    rep = ds.verify(progress=False, decode=False, raise_on_error=False)
    assert len(rep.problems) == 2
