"""COCODataset / coco_labels on the real coco8 bundle (official instances JSON + JPEGs)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pyg_mlic.data.base import collate
from pyg_mlic.data.coco import COCODataset, coco_labels
from pyg_mlic.data.transforms import RandomCropResizeTransform, ResizeTransform
from pyg_mlic.errors import ClassMismatchError, DatasetError


@pytest.fixture(scope="module")
def coco8(data_dir) -> Path:
    d = data_dir / "images" / "coco8"
    if not (d / "instances_train.json").is_file():
        pytest.skip(f"coco8 not found at {d}")
    return d


def _independent_labels(ann_file):
    """Plain-json parse, no pycocotools, no library code."""
    d = json.loads(Path(ann_file).read_text())
    names = sorted(c["name"] for c in d["categories"])
    col = {c["id"]: names.index(c["name"]) for c in d["categories"]}
    ids = [im["id"] for im in d["images"]]
    Y = np.zeros((len(ids), len(names)), np.uint8)
    for a in d["annotations"]:
        Y[ids.index(a["image_id"]), col[a["category_id"]]] = 1
    return d, ids, Y, names


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_labels_match_independent_parse(coco8, split):
    ann = coco8 / f"instances_{split}.json"
    ids, Y, classes = coco_labels(ann)
    _, ids2, Y2, names = _independent_labels(ann)
    assert ids == ids2 and classes == names
    assert Y.dtype == np.uint8 and Y.shape == (4, 80)
    np.testing.assert_array_equal(Y, Y2)
    assert Y.sum() > 4                       # several labels per image: real multi-label


def test_default_class_order_is_mlgcn_order(coco8, data_dir):
    f = data_dir / "labels" / "coco2014.npz"
    if not f.is_file():
        pytest.skip("coco2014.npz not found")
    with np.load(f, allow_pickle=False) as z:
        ref = [str(c) for c in z["classes"]]
    _, _, classes = coco_labels(coco8 / "instances_train.json")
    assert classes == ref
    assert classes[:3] == ["airplane", "apple", "backpack"]


def test_classes_subset_and_order(coco8):
    ann = coco8 / "instances_val.json"
    _, Yall, allc = coco_labels(ann)
    pick = ["person", "dog", "zebra"]
    ids, Y, classes = coco_labels(ann, classes=pick)
    assert classes == pick
    np.testing.assert_array_equal(Y, Yall[:, [allc.index(c) for c in pick]])
    with pytest.raises(ClassMismatchError, match="unicorn"):
        coco_labels(ann, classes=["person", "unicorn"])


def test_dataset_samples_and_box_scaling(coco8):
    ds = COCODataset(coco8, "instances_train.json", split="train",
                     transform=ResizeTransform(224))
    d, ids, Y, names = _independent_labels(coco8 / "instances_train.json")
    assert ds.input_kind == "image" and len(ds) == 4 and ds.image_dir == "images"
    assert ds.classes == names and ds.label_mask is None
    np.testing.assert_array_equal(ds.labels, Y)
    for i in range(len(ds)):
        s = ds[i]
        assert set(s) == {"image", "target", "mask", "index", "boxes", "box_labels", "path"}
        assert s["image"].shape == (3, 224, 224) and s["image"].dtype == torch.float32
        assert s["target"].dtype == torch.float32 and s["mask"].dtype == torch.bool
        assert torch.equal(s["target"], torch.from_numpy(Y[i]).float())
        assert s["index"] == i
        info = d["images"][i]
        anns = [a for a in d["annotations"] if a["image_id"] == info["id"] and not a["iscrowd"]]
        assert s["boxes"].shape == (len(anns), 4) and s["boxes"].dtype == torch.float32
        assert s["box_labels"].dtype == torch.int64
        # boxes: xywh -> xyxy, clipped to the image, scaled by the resize factors
        W, H = info["width"], info["height"]
        ref = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                             a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float64)
        ref[:, 0::2] = ref[:, 0::2].clamp(0, W)
        ref[:, 1::2] = ref[:, 1::2].clamp(0, H)
        ref *= torch.tensor([224 / W, 224 / H, 224 / W, 224 / H], dtype=torch.float64)
        torch.testing.assert_close(s["boxes"].double(), ref, atol=1e-3, rtol=0)
        lab = [names.index(next(c["name"] for c in d["categories"]
                                if c["id"] == a["category_id"])) for a in anns]
        assert s["box_labels"].tolist() == lab
        # every box label is a positive image label
        assert all(s["target"][j] == 1 for j in lab)
        assert (s["boxes"] >= 0).all() and (s["boxes"] <= 224).all()


def test_image_pixels_match_pil(coco8):
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    ds = COCODataset(coco8, "instances_val.json", split="val",
                     transform=ResizeTransform(64, mean=mean, std=std))
    s = ds[2]
    ref = Image.open(ds.image_files[2]).convert("RGB").resize((64, 64), Image.BILINEAR)
    ref = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(s["image"], ref)


def test_train_transform_keeps_boxes_inside(coco8):
    import random
    t = RandomCropResizeTransform(96, generator=random.Random(0))
    ds = COCODataset(coco8, coco8 / "instances_train.json", split="train", transform=t)
    for _ in range(3):
        for i in range(len(ds)):
            s = ds[i]
            b = s["boxes"]
            assert s["image"].shape == (3, 96, 96)
            assert (b >= 0).all() and (b <= 96).all()
            assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
            assert len(b) == len(s["box_labels"])


def test_default_transform_and_dataloader(coco8):
    ds = COCODataset(coco8, "instances_val.json", split="val")
    assert type(ds.transform).__name__ == "ResizeTransform" and ds.transform.size == 448
    assert type(COCODataset(coco8, "instances_train.json").transform).__name__ == \
        "RandomCropResizeTransform"
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=0, collate_fn=collate)))
    assert batch["image"].shape == (3, 3, 448, 448)
    assert batch["target"].shape == (3, 80) and batch["mask"].shape == (3, 80)
    assert batch["index"].tolist() == [0, 1, 2]
    assert isinstance(batch["boxes"], list) and len(batch["boxes"]) == 3
    assert [len(b) for b in batch["boxes"]] == [len(x) for x in batch["box_labels"]]


def test_without_boxes(coco8):
    ds = COCODataset(coco8, "instances_val.json", split="val", with_boxes=False,
                     transform=ResizeTransform(32))
    assert "boxes" not in ds[0] and "box_labels" not in ds[0]


def test_verify_real_images(coco8):
    ds = COCODataset(coco8, "instances_train.json", transform=ResizeTransform(32))
    rep = ds.verify(progress=False)
    assert rep.ok and rep.checked == 4


# ---------------------------------------------------------------- bad input

@pytest.fixture
def tmp_coco(tmp_path, coco8):
    """A writable copy of coco8's val split (JSON + its 4 real images)."""
    (tmp_path / "images").mkdir()
    d = json.loads((coco8 / "instances_val.json").read_text())
    for im in d["images"]:
        shutil.copy(coco8 / "images" / im["file_name"], tmp_path / "images")
    return tmp_path, d


def _write(root, d, name="ann.json"):
    p = root / name
    p.write_text(json.dumps(d))
    return p


def test_keep_empty(tmp_coco):
    root, d = tmp_coco
    d["images"].append({"id": 999, "file_name": d["images"][0]["file_name"],
                        "width": d["images"][0]["width"], "height": d["images"][0]["height"]})
    ann = _write(root, d)
    ids, Y, _ = coco_labels(ann)
    assert ids[-1] == 999 and len(ids) == 5 and Y[-1].sum() == 0
    ids, Y, _ = coco_labels(ann, keep_empty=False)
    assert 999 not in ids and len(ids) == 4 and Y.sum(1).min() > 0
    ds = COCODataset(root, ann, split="val", transform=ResizeTransform(32))
    s = ds[4]
    assert s["target"].sum() == 0 and s["boxes"].shape == (0, 4)


def test_malformed_json(tmp_path):
    p = tmp_path / "instances_bad.json"
    p.write_text('{"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [')
    with pytest.raises(DatasetError, match="instances_bad.json.*malformed JSON"):
        coco_labels(p)
    p.write_text('[1, 2]')
    with pytest.raises(DatasetError, match="instances_bad.json"):
        coco_labels(p)
    p.write_text('{"images": []}')
    with pytest.raises(DatasetError, match="instances_bad.json.*categories"):
        coco_labels(p)
    with pytest.raises(DatasetError, match="not found.*nothere.json"):
        coco_labels(tmp_path / "nothere.json")


def test_unknown_category_id(tmp_coco):
    root, d = tmp_coco
    d["annotations"][3]["category_id"] = 91
    ann = _write(root, d, "instances_x.json")
    with pytest.raises(DatasetError, match=r"instances_x\.json.*unknown category id 91"):
        coco_labels(ann)
    with pytest.raises(DatasetError, match=r"instances_x\.json.*unknown category id 91"):
        COCODataset(root, ann)


def test_bad_bbox_and_unknown_image(tmp_coco):
    root, d = tmp_coco
    d["annotations"][0]["bbox"] = [1, 2, -3, 4]
    ann = _write(root, d, "instances_y.json")
    with pytest.raises(DatasetError, match=r"instances_y\.json.*invalid 'bbox'"):
        COCODataset(root, ann)
    coco_labels(ann)  # labels do not need boxes
    d["annotations"][0]["bbox"] = [1, 2, 3, 4]
    d["annotations"][0]["image_id"] = 123456
    ann = _write(root, d, "instances_y.json")
    with pytest.raises(DatasetError, match=r"instances_y\.json.*unknown image id 123456"):
        coco_labels(ann)


def test_empty_dataset(tmp_coco):
    root, d = tmp_coco
    d["images"], d["annotations"] = [], []
    ann = _write(root, d, "instances_empty.json")
    with pytest.raises(DatasetError, match=r"instances_empty\.json.*empty"):
        COCODataset(root, ann)


def test_path_escaping_root(tmp_coco):
    root, d = tmp_coco
    d["images"][1]["file_name"] = "../../etc/passwd"
    ann = _write(root, d, "instances_evil.json")
    with pytest.raises(DatasetError, match=r"instances_evil\.json.*escapes"):
        COCODataset(root, ann, image_dir="images")
    d["images"][1]["file_name"] = "/etc/passwd"
    ann = _write(root, d, "instances_evil.json")
    with pytest.raises(DatasetError, match="escapes"):
        COCODataset(root, ann, image_dir="images")


def test_missing_and_corrupt_images(tmp_coco):
    root, d = tmp_coco
    ann = _write(root, d)
    names = [im["file_name"] for im in d["images"]]
    (root / "images" / names[0]).unlink()                               # missing
    (root / "images" / names[1]).write_bytes(b"\xff\xd8\xff\xe0 garbage" * 10)  # not a JPEG
    full = (root / "images" / names[2]).read_bytes()
    (root / "images" / names[2]).write_bytes(full[: len(full) // 2])     # truncated JPEG
    ds = COCODataset(root, ann, split="val", transform=ResizeTransform(32))
    with pytest.raises(DatasetError, match=f"not found.*{names[0]}"):
        ds[0]
    with pytest.raises(DatasetError, match=names[1]):
        ds[1]
    with pytest.raises(DatasetError, match=f"truncated or corrupt.*{names[2]}"):
        ds[2]
    assert ds[3]["image"].shape == (3, 32, 32)
    rep = ds.verify(progress=False, raise_on_error=False)
    assert not rep.ok and rep.checked == 4
    assert [Path(p).name for p in rep.bad_files] == names[:3]
    with pytest.raises(DatasetError, match="3 of 4 image files"):
        ds.verify(progress=False)
    # the error reaches the main process from a DataLoader worker, naming the file
    dl = DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate)
    with pytest.raises(DatasetError, match=names[0]):
        next(iter(dl))


def test_image_size_mismatch(tmp_coco):
    root, d = tmp_coco
    d["images"][0]["width"] += 10
    ann = _write(root, d)
    ds = COCODataset(root, ann, split="val", transform=ResizeTransform(32))
    with pytest.raises(DatasetError, match=d["images"][0]["file_name"] + ".*says"):
        ds[0]


def test_crowd_annotations(tmp_coco):
    root, d = tmp_coco
    a = d["annotations"][0]
    a["iscrowd"] = 1
    img = next(i for i, im in enumerate(d["images"]) if im["id"] == a["image_id"])
    ann = _write(root, d)
    ds = COCODataset(root, ann, split="val", transform=ResizeTransform(32))
    ref = [x for x in d["annotations"] if x["image_id"] == a["image_id"]]
    assert len(ds.boxes(img)[0]) == len(ref) - 1                    # crowd box left out
    dsc = COCODataset(root, ann, split="val", transform=ResizeTransform(32), crowd_boxes=True)
    assert len(dsc.boxes(img)[0]) == len(ref)
    # the crowd annotation still counts for the image label (as in ML-GCN)
    _, Y, classes = coco_labels(ann)
    name = next(c["name"] for c in d["categories"] if c["id"] == a["category_id"])
    assert Y[img, classes.index(name)] == 1


def test_dataset_pickles_for_spawned_workers(coco8):
    import pickle
    ds = COCODataset(coco8, "instances_val.json", split="val", transform=ResizeTransform(32))
    ds2 = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(ds2[1]["image"], ds[1]["image"])
    assert torch.equal(ds2[1]["boxes"], ds[1]["boxes"])


def test_coco_class_constant_matches_the_real_label_file(data_dir):
    import numpy as np

    from pyg_mlic.data.coco import COCO_CLASSES

    with np.load(data_dir / "labels" / "coco2014.npz", allow_pickle=False) as d:
        # the label file holds them in ML-GCN's (alphabetical) order
        assert sorted(str(c) for c in d["classes"]) == sorted(COCO_CLASSES)
    assert len(set(COCO_CLASSES)) == 80
