"""FolderDataset / read_label_csv (custom data) and the shared safe image loader."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pyg_mlic.data._image_io import load_image, resolve_under, verify_images
from pyg_mlic.data.base import collate
from pyg_mlic.data.folder import FolderDataset, read_label_csv
from pyg_mlic.data.transforms import ResizeTransform
from pyg_mlic.errors import ClassMismatchError, DatasetError

IDS = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00003", "BloodImage_00004"]


@pytest.fixture
def folder(tmp_path, data_dir):
    """4 real BCCD JPEGs under tmp/img/ (a user's own image folder)."""
    src = data_dir / "images" / "bccd" / "JPEGImages"
    if not src.is_dir():
        pytest.skip("BCCD not found")
    (tmp_path / "img").mkdir()
    for i in IDS:
        shutil.copy(src / f"{i}.jpg", tmp_path / "img" / f"{i}.jpg")
    return tmp_path


def _csv(root, text, name="labels.csv"):
    p = root / name
    p.write_text(text)
    return p


def test_names_layout_inferred_sorted(folder):
    _csv(folder, "image,labels\n"
                 f"img/{IDS[0]}.jpg,rbc;wbc\n"
                 f"img/{IDS[1]}.jpg, wbc ; platelets ;\n"
                 f"img/{IDS[2]}.jpg,\n"
                 f"img/{IDS[3]}.jpg,rbc\n")
    ds = FolderDataset(folder, "labels.csv", transform=ResizeTransform(48))
    assert ds.classes == ["platelets", "rbc", "wbc"] and ds.input_kind == "image"
    np.testing.assert_array_equal(ds.labels, [[0, 1, 1], [1, 0, 1], [0, 0, 0], [0, 1, 0]])
    s = ds[1]
    assert set(s) == {"image", "target", "mask", "index", "path"}
    assert s["image"].shape == (3, 48, 48) and s["target"].tolist() == [1.0, 0.0, 1.0]
    assert s["path"] == str(folder / "img" / f"{IDS[1]}.jpg")
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0, collate_fn=collate)))
    assert batch["image"].shape == (4, 3, 48, 48) and batch["target"].shape == (4, 3)
    assert batch["path"][3].endswith(f"{IDS[3]}.jpg")


def test_transform_applied_to_real_pixels(folder):
    _csv(folder, f"image,labels\nimg/{IDS[0]}.jpg,a\n")
    ds = FolderDataset(folder, "labels.csv", split="test",
                       transform=ResizeTransform(32, mean=(0, 0, 0), std=(1, 1, 1)))
    ref = Image.open(folder / "img" / f"{IDS[0]}.jpg").convert("RGB").resize((32, 32),
                                                                           Image.BILINEAR)
    ref = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(ds[0]["image"], ref)
    default = FolderDataset(folder, "labels.csv", split="test")
    assert default.transform.size == 448 and default[0]["image"].shape == (3, 448, 448)


def test_columns_layout_and_explicit_classes(folder):
    p = _csv(folder, "image,WBC,RBC,Platelets\n"
                     f"img/{IDS[0]}.jpg,1,1,0\n"
                     f"img/{IDS[1]}.jpg,1,0,1\n")
    ds = FolderDataset(folder, p, transform=ResizeTransform(32))
    assert ds.classes == ["WBC", "RBC", "Platelets"]                 # header order
    np.testing.assert_array_equal(ds.labels, [[1, 1, 0], [1, 0, 1]])
    ds = FolderDataset(folder, p, classes=["Platelets", "WBC", "RBC"],
                       transform=ResizeTransform(32))
    np.testing.assert_array_equal(ds.labels, [[0, 1, 1], [1, 1, 0]])
    with pytest.raises(ClassMismatchError, match="unknown class column.*'Platelets'"):
        FolderDataset(folder, p, classes=["WBC", "RBC"])


def test_split_column(folder):
    _csv(folder, "image,labels,split\n"
                 f"img/{IDS[0]}.jpg,a,train\n"
                 f"img/{IDS[1]}.jpg,b,test\n"
                 f"img/{IDS[2]}.jpg,c;a,train\n")
    tr = FolderDataset(folder, "labels.csv", split="train", transform=ResizeTransform(32))
    te = FolderDataset(folder, "labels.csv", split="test", transform=ResizeTransform(32))
    assert tr.classes == te.classes == ["a", "b", "c"]                # inferred over all rows
    assert len(tr) == 2 and len(te) == 1
    np.testing.assert_array_equal(te.labels, [[0, 1, 0]])
    with pytest.raises(DatasetError, match=r"labels\.csv.*no row has split 'val'"):
        FolderDataset(folder, "labels.csv", split="val")


def test_unknown_label_names_the_row(folder):
    _csv(folder, "image,labels\n"
                 f"img/{IDS[0]}.jpg,WBC\n"
                 f"img/{IDS[1]}.jpg,WBC;Neutrophil\n")
    with pytest.raises(DatasetError, match=r"labels\.csv, line 3: unknown label 'Neutrophil'"):
        FolderDataset(folder, "labels.csv", classes=["WBC", "RBC"])


def test_bad_values_and_headers(folder):
    _csv(folder, f"image,a,b\nimg/{IDS[0]}.jpg,1,2\n")
    with pytest.raises(DatasetError, match=r"labels\.csv, line 2: value '2' in column 'b' "
                                           r"out of range"):
        read_label_csv(folder / "labels.csv")
    _csv(folder, f"img/{IDS[0]}.jpg,a\n")
    with pytest.raises(DatasetError, match=r"labels\.csv.*no image column"):
        read_label_csv(folder / "labels.csv")
    _csv(folder, f"image,labels\nimg/{IDS[0]}.jpg,a,extra\n")
    with pytest.raises(DatasetError, match=r"labels\.csv, line 2: 3 fields"):
        read_label_csv(folder / "labels.csv")
    _csv(folder, f"image,labels\nimg/{IDS[0]}.jpg,a\nimg/{IDS[0]}.jpg,b\n")
    with pytest.raises(DatasetError, match=r"labels\.csv, line 3: image .* already listed"):
        read_label_csv(folder / "labels.csv")
    with pytest.raises(DatasetError, match=r"not found.*nothere\.csv"):
        read_label_csv(folder / "nothere.csv")


def test_empty_dataset(folder):
    _csv(folder, "")
    with pytest.raises(DatasetError, match=r"labels\.csv.*empty"):
        FolderDataset(folder, "labels.csv")
    _csv(folder, "image,labels\n\n")
    with pytest.raises(DatasetError, match=r"labels\.csv.*"):
        FolderDataset(folder, "labels.csv", classes=["a"])


def test_paths_cannot_escape_root(folder):
    for bad in ("../secret.jpg", "/etc/passwd", "img/../../x.jpg", "C:\\x.jpg"):
        _csv(folder, f"image,labels\n{bad},a\n")
        with pytest.raises(DatasetError, match=r"labels\.csv.*escapes the dataset root"):
            FolderDataset(folder, "labels.csv")


def test_missing_and_corrupt_images(folder):
    (folder / "img" / f"{IDS[1]}.jpg").unlink()
    full = (folder / "img" / f"{IDS[2]}.jpg").read_bytes()
    (folder / "img" / f"{IDS[2]}.jpg").write_bytes(full[:2000])      # truncated JPEG
    _csv(folder, "image,labels\n" + "".join(f"img/{i}.jpg,a\n" for i in IDS))
    ds = FolderDataset(folder, "labels.csv", transform=ResizeTransform(32))
    assert ds[0]["image"].shape == (3, 32, 32)
    with pytest.raises(DatasetError, match=f"image file not found: .*{IDS[1]}.jpg"):
        ds[1]
    with pytest.raises(DatasetError, match=f"cannot decode image.*{IDS[2]}.jpg"):
        ds[2]
    rep = ds.verify(progress=False, raise_on_error=False)
    assert rep.checked == 4 and [Path(p).name for p in rep.bad_files] == \
        [f"{IDS[1]}.jpg", f"{IDS[2]}.jpg"]
    with pytest.raises(DatasetError, match=f"(?s)2 of 4 image files.*{IDS[1]}.jpg"):
        ds.verify(progress=True)


# ------------------------------------------------------------ _image_io helpers

def test_load_image_modes_and_errors(tmp_path):
    Image.new("L", (7, 5), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (4, 3), (10, 20, 30, 40)).save(tmp_path / "rgba.png")
    for name, size in (("gray.png", (7, 5)), ("rgba.png", (4, 3))):
        img = load_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == size
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(DatasetError, match=r"not a recognised image file: .*text\.jpg"):
        load_image(tmp_path / "text.jpg")
    with pytest.raises(DatasetError, match="directory"):
        load_image(tmp_path)
    rep = verify_images([tmp_path / "gray.png", tmp_path / "text.jpg", tmp_path / "no.png"])
    assert not rep.ok and rep.checked == 3 and len(rep.problems) == 2
    assert "text.jpg" in str(rep) and "no.png" in str(rep)


def test_load_image_scales_high_bit_depth_instead_of_clipping(tmp_path):
    """A 16-bit greyscale PNG and a float TIFF in [0, 1] are scaled to 8 bits (PIL's
    convert("RGB") clips them: a 16-bit ramp became 99.6 % white); a float or 32-bit image
    without a known scale is refused in one line naming the file."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    g = np.asarray(load_image(tmp_path / "g16.png"))
    assert g.shape == (64, 64, 3) and g.dtype == np.uint8
    np.testing.assert_array_equal(g[..., 0], np.rint(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8))
    assert (g == 255).mean() < 0.01 and (g[..., 0] == g[..., 2]).all()
    Image.fromarray((ramp.astype(np.float64) / 65535).astype(np.float32)).save(tmp_path / "f.tiff")
    f = np.asarray(load_image(tmp_path / "f.tiff"))[..., 0].astype(int)
    assert np.abs(f - np.rint(ramp.astype(np.float64) * 255 / 65535)).max() <= 1
    Image.fromarray(np.full((4, 4), 3.0, np.float32)).save(tmp_path / "f3.tiff")
    with pytest.raises(DatasetError, match=r"mode F .* not \[0, 1\].*f3\.tiff"):
        load_image(tmp_path / "f3.tiff")
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "i32.tiff")
    with pytest.raises(DatasetError, match=r"outside the 16-bit range.*i32\.tiff"):
        load_image(tmp_path / "i32.tiff")


def test_resolve_under(tmp_path):
    assert resolve_under(tmp_path, "a/b.jpg") == tmp_path / "a" / "b.jpg"
    assert resolve_under(tmp_path, "a\\b.jpg") == tmp_path / "a" / "b.jpg"
    for bad in ("", "..", "a/../../b", "/abs", "D:/x", "a\x00b"):
        with pytest.raises(DatasetError, match="src.txt"):
            resolve_under(tmp_path, bad, "src.txt")
