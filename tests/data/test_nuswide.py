"""NUSWIDEDataset on tiny fake NUS-WIDE layouts built from real BCCD JPEGs (the format
is the point: official list files, generic list files, CSV)."""
import shutil

import numpy as np
import pytest
from torch.utils.data import DataLoader

from pyg_mlic.data.base import collate
from pyg_mlic.data.nuswide import NUSWIDEDataset, nuswide_labels, read_image_list
from pyg_mlic.data.transforms import ResizeTransform
from pyg_mlic.errors import ClassMismatchError, DatasetError

# The 81 concepts of Concepts81.txt, in file order.
CONCEPTS = (
    "airport animal beach bear birds boats book bridge buildings cars castle cat cityscape "
    "clouds computer coral cow dancing dog earthquake elk fire fish flags flowers food fox "
    "frost garden glacier grass harbor horses house lake leaf map military moon mountain "
    "nighttime ocean person plane plants police protest railroad rainbow reflection road "
    "rocks running sand sign sky snow soccer sports statue street sun sunset surf swimmers "
    "tattoo temple tiger tower town toy train tree valley vehicle water waterfall wedding "
    "whales window zebra").split()
T32 = ResizeTransform(32)


@pytest.fixture
def nus(tmp_path, data_dir):
    """Official layout: Flickr/<folder>/<file>.jpg, ImageList, Concepts81, TrainTestLabels."""
    src = data_dir / "images" / "bccd" / "JPEGImages"
    if not src.is_dir():
        pytest.skip("BCCD not found")
    assert len(CONCEPTS) == 81
    jpgs = sorted(src.glob("*.jpg"))[:8]
    rng = np.random.default_rng(0)
    layout = {}
    for split, files, prefix in (("Train", jpgs[:5], ""),
                                 ("Test", jpgs[5:], "C:\\ImageData\\Flickr\\")):
        rel = []
        for k, f in enumerate(files):
            folder = ["actor", "beach", "zebra"][k % 3]
            (tmp_path / "Flickr" / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, tmp_path / "Flickr" / folder / f"{k:04d}_{f.stem}.jpg")
            rel.append(f"{folder}\\{k:04d}_{f.stem}.jpg")
        (tmp_path / "ImageList").mkdir(exist_ok=True)
        (tmp_path / "ImageList" / f"{split}Imagelist.txt").write_text(
            "".join(prefix + r + "\r\n" for r in rel))
        Y = (rng.random((len(files), 81)) < 0.15).astype(np.uint8)
        Y[0, :] = 0                                   # one image without any concept
        Y[1, [4, 42]] = 1                             # birds + person
        gt = tmp_path / "Groundtruth" / "TrainTestLabels"
        gt.mkdir(parents=True, exist_ok=True)
        for j, c in enumerate(CONCEPTS):
            (gt / f"Labels_{c}_{split}.txt").write_text("".join(f"{v}\n" for v in Y[:, j]))
        layout[split] = ([r.replace("\\", "/") for r in rel], Y)
    (tmp_path / "ConceptsList").mkdir()
    (tmp_path / "ConceptsList" / "Concepts81.txt").write_text("\n".join(CONCEPTS) + "\n")
    return tmp_path, layout


def test_official_layout(nus):
    root, layout = nus
    for split in ("train", "test"):
        rel, Y = layout[split.capitalize()]
        ds = NUSWIDEDataset(root, split, transform=T32)
        assert ds.classes == CONCEPTS and len(ds) == len(rel) and ds.image_dir == "Flickr"
        np.testing.assert_array_equal(ds.labels, Y)
        assert ds.image_files == [str(root / "Flickr" / r) for r in rel]
        s = ds[1]
        assert set(s) == {"image", "target", "mask", "index", "path"}
        assert s["image"].shape == (3, 32, 32) and s["target"].shape == (81,)
        assert s["target"][[4, 42]].tolist() == [1.0, 1.0]
        assert ds.verify(progress=False).ok
    # Windows-absolute entries of the test list were cut after "Flickr"
    assert read_image_list(root / "ImageList" / "TestImagelist.txt")[0].startswith("actor/")
    ds = NUSWIDEDataset(root, "train")
    assert ds.transform.size == 448 and type(ds.transform).__name__ == \
        "RandomCropResizeTransform"
    with pytest.raises(DatasetError, match="'train' and 'test'"):
        NUSWIDEDataset(root, "val")


def test_dataloader_and_options(nus):
    root, layout = nus
    ds = NUSWIDEDataset(root, "train", transform=T32)
    batch = next(iter(DataLoader(ds, batch_size=5, num_workers=0, collate_fn=collate)))
    assert batch["image"].shape == (5, 3, 32, 32) and batch["target"].shape == (5, 81)
    assert batch["mask"].all()
    ne = NUSWIDEDataset(root, "train", transform=T32, keep_empty=False)
    assert len(ne) == int(layout["Train"][1].any(1).sum()) < 5
    sub = NUSWIDEDataset(root, "train", transform=T32, classes=["person", "birds"])
    np.testing.assert_array_equal(sub.labels, layout["Train"][1][:, [42, 4]])
    with pytest.raises(ClassMismatchError, match="unicorn"):
        NUSWIDEDataset(root, "train", classes=["person", "unicorn"])


def test_generic_list_files(nus):
    root, layout = nus
    rel, Y = layout["Train"]
    (root / "lists").mkdir()
    (root / "lists" / "val_images.txt").write_text("\n".join(rel[:3]) + "\n")
    (root / "lists" / "val_labels.txt").write_text(
        "\n".join(" ".join(map(str, r)) for r in Y[:3]) + "\n")
    ds = NUSWIDEDataset(root, "val", image_list="lists/val_images.txt",
                        label_file="lists/val_labels.txt", transform=T32)
    assert ds.classes == CONCEPTS and len(ds) == 3          # concepts file found in root
    np.testing.assert_array_equal(ds.labels, Y[:3])
    assert ds[2]["image"].shape == (3, 32, 32)
    # explicit names instead of a concepts file
    (root / "lists" / "two.txt").write_text("0 1\n1 1\n1 0\n")
    _, Y2, names = nuswide_labels(root, "val", image_list="lists/val_images.txt",
                                  label_file="lists/two.txt", classes=["sky", "water"])
    assert names == ["sky", "water"] and Y2.tolist() == [[0, 1], [1, 1], [1, 0]]


def test_csv_layout(nus):
    root, layout = nus
    rel, _ = layout["Train"]
    (root / "nus.csv").write_text("image,labels,split\n"
                                  f"{rel[0]},sky;water,train\n{rel[1]},person,train\n"
                                  f"{rel[2]},sky,test\n")
    tr = NUSWIDEDataset(root, "train", csv_file="nus.csv", transform=T32)
    te = NUSWIDEDataset(root, "test", csv_file="nus.csv", transform=T32)
    assert tr.classes == te.classes == ["person", "sky", "water"]
    assert tr.labels.tolist() == [[0, 1, 1], [1, 0, 0]] and te.labels.tolist() == [[0, 1, 0]]
    assert te.image_files == [str(root / "Flickr" / rel[2])]


def test_label_value_out_of_range(nus):
    root, _ = nus
    f = root / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Train.txt"
    f.write_text("0\n1\n2\n0\n0\n")
    with pytest.raises(DatasetError, match=r"Labels_sky_Train\.txt: row 3: label value '2' "
                                           r"out of range"):
        NUSWIDEDataset(root, "train")
    f.write_text("0\n1\n0\n")
    with pytest.raises(DatasetError, match=r"Labels_sky_Train\.txt: 3 label rows, but the "
                                           r"image list has 5"):
        NUSWIDEDataset(root, "train")
    f.unlink()
    with pytest.raises(DatasetError, match=r"not found.*Labels_sky_Train\.txt"):
        NUSWIDEDataset(root, "train")


def test_bad_label_matrix(nus):
    root, layout = nus
    rel, _ = layout["Train"]
    (root / "il.txt").write_text("\n".join(rel[:2]))
    (root / "lm.txt").write_text("0 1 1\n1 0\n")
    with pytest.raises(DatasetError, match=r"lm\.txt: row 2 has 2 values"):
        nuswide_labels(root, image_list="il.txt", label_file="lm.txt", classes=list("abc"))
    (root / "lm.txt").write_text("0 1 1\n1 0 -1\n")
    with pytest.raises(DatasetError, match=r"lm\.txt: row 2, column 3: label value '-1'"):
        nuswide_labels(root, image_list="il.txt", label_file="lm.txt", classes=list("abc"))
    (root / "lm.txt").write_text("0 1 1\n1 0 1\n")
    with pytest.raises(DatasetError, match=r"lm\.txt: 3 label columns, expected 2"):
        nuswide_labels(root, image_list="il.txt", label_file="lm.txt", classes=list("ab"))


def test_paths_missing_images_and_empty(nus):
    root, layout = nus
    il = root / "ImageList" / "TrainImagelist.txt"
    lines = il.read_text().splitlines()
    il.write_text("\n".join(["..\\..\\etc\\passwd"] + lines[1:]))
    with pytest.raises(DatasetError, match=r"TrainImagelist\.txt.*escapes the dataset root"):
        NUSWIDEDataset(root, "train")
    il.write_text("\n".join(lines))
    rel = layout["Train"][0]
    (root / "Flickr" / rel[1]).unlink()
    (root / "Flickr" / rel[3]).write_bytes(b"\x00" * 100)
    ds = NUSWIDEDataset(root, "train", transform=T32)
    with pytest.raises(DatasetError, match=f"not found.*{rel[1].split('/')[1]}"):
        ds[1]
    with pytest.raises(DatasetError, match=rel[3].split("/")[1]):
        ds[3]
    with pytest.warns(UserWarning, match="1 of 5 listed images are missing"):
        sk = NUSWIDEDataset(root, "train", transform=T32, skip_missing=True)
    assert len(sk) == 4 and sk.missing == [str(root / "Flickr" / rel[1])]
    np.testing.assert_array_equal(sk.labels, np.delete(layout["Train"][1], 1, axis=0))
    il.write_text("\n\n")
    with pytest.raises(DatasetError, match=r"TrainImagelist\.txt.*empty"):
        NUSWIDEDataset(root, "train")
