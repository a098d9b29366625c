import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers_features import make_features_npz


def run_cli(*args, cwd=None, check=True):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-m", "pyg_mlic.cli", *map(str, args)], cwd=cwd,
                       capture_output=True, text=True, env=env, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nSTDOUT:\n{p.stdout}\nSTDERR:\n{p.stderr}")
    return p


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "pyg-mlic"
    if not script.exists():
        pytest.skip("package not installed in this interpreter's environment (run via make test)")
    p = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and "pyg_mlic" in p.stdout


def test_train_eval_on_features_files(tmp_path):
    tr = make_features_npz(tmp_path / "A.npz", seed=0)
    te = make_features_npz(tmp_path / "B.npz", n=100, seed=1, with_mask=True)
    out = tmp_path / "D"
    p = run_cli("train", "--dataset", "features", "--train-file", tr, "--test-file", te,
                "--model", "baseline", "--out", out, "--epochs", "5", "--optimizer", "adam",
                "--lr", "0.01", "--no-progress")
    assert "mAP" in p.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert 0.7 < m["mAP"] <= 1.0
    for k in ["CP", "CR", "CF1", "OP", "OR", "OF1", "CP_top3", "OF1_top3"]:
        assert 0.0 <= m[k] <= 1.0
    assert m["settings"]["dataset"] == "features"
    # no validation file: the features recipe chose the epoch (of the 5 given) on held-out
    # training rows, then retrained on all of them for that many epochs
    refit = m["settings"]["features_recipe"]["refit"]
    assert m["settings"]["train_config"]["epochs"] == refit["epochs"] <= 5
    assert len(refit["held_out_history"]) == 5
    # eval reads the test file alone (no --train-file)
    e = run_cli("eval", "--checkpoint", out / "last.pt", "--dataset", "features",
                "--test-file", te, "--out", tmp_path / "e.json")
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["mAP"] == pytest.approx(m["mAP"])
    # head / medium / tail from the training counts stored in the checkpoint
    lt, want = ev["long_tail"], m["long_tail"]
    assert lt["bounds"] == want["bounds"] and lt["num_classes"] == want["num_classes"]
    assert [lt[g] for g in ("head", "medium", "tail")] == pytest.approx(
        [want[g] for g in ("head", "medium", "tail")]) and "mAP by training-label" in e.stdout


def test_train_rejects_mismatched_feature_files(tmp_path):
    tr = make_features_npz(tmp_path / "A.npz", c=5)
    te = make_features_npz(tmp_path / "B.npz", c=4)
    p = run_cli("train", "--dataset", "features", "--train-file", tr, "--test-file", te,
                "--model", "baseline", "--out", tmp_path / "D", "--epochs", "1", check=False)
    assert p.returncode != 0 and "classes" in p.stderr


def test_graph_command_on_real_coco_labels(data_dir, tmp_path):
    png = tmp_path / "g.png"
    p = run_cli("graph", "--labels", data_dir / "labels" / "coco2014.npz", "--split", "train2014",
                "--plot", png)
    assert "edges" in p.stdout and png.stat().st_size > 1000


def test_graph_requires_split_when_the_file_has_one(data_dir, tmp_path):
    """Label statistics never from more than the training split: a labels file with a
    split array needs --split (train2014 and val2014 counted together is refused)."""
    from pyg_mlic.cli import main

    with pytest.raises(SystemExit, match=r"holds the splits \['train2014', 'val2014'\]: pass "
                                         r"--split"):
        main(["--debug", "graph", "--labels", str(data_dir / "labels" / "coco2014.npz")])
    p = run_cli("graph", "--labels", data_dir / "labels" / "coco2014.npz", check=False)
    assert p.returncode == 2 and "pyg-mlic: error: graph:" in p.stderr
    np = pytest.importorskip("numpy")
    np.savez(tmp_path / "nosplit.npz", labels=np.eye(4, 3, dtype=np.uint8),
             classes=np.array(["a", "b", "c"]))
    with pytest.raises(SystemExit, match="no 'split' array"):
        main(["--debug", "graph", "--labels", str(tmp_path / "nosplit.npz"), "--split", "x"])
    assert main(["graph", "--labels", str(tmp_path / "nosplit.npz")]) == 0


def test_graph_labels_file_counts_only_known_pairs(tmp_path):
    """A labels file's known-mask (``mask``, False = unknown) is honoured: ``graph
    --labels`` gives the graph of ``graph --dataset features`` on the same file and of
    LabelGraph.from_labels(..., mask=...), not the graph of every entry counted as known."""
    from pyg_mlic.cli import main
    from pyg_mlic.graphs import LabelGraph

    rng = np.random.default_rng(1)
    Y = (rng.random((100, 4)) < 0.4).astype(np.uint8)
    K = rng.random((100, 4)) < 0.7
    np.savez(tmp_path / "m.npz", features=rng.normal(size=(100, 6)).astype(np.float32),
             labels=Y, classes=np.array(list("abcd")), mask=K)
    assert main(["graph", "--labels", str(tmp_path / "m.npz"), "--out",
                 str(tmp_path / "a.npz")]) == 0
    assert main(["graph", "--dataset", "features", "--train-file", str(tmp_path / "m.npz"),
                 "--out", str(tmp_path / "b.npz")]) == 0
    a, b = LabelGraph.load(tmp_path / "a.npz"), LabelGraph.load(tmp_path / "b.npz")
    masked = LabelGraph.from_labels(Y, classes=list("abcd"), mask=K)
    unmasked = LabelGraph.from_labels(Y, classes=list("abcd"))
    for g in (a, b):
        assert g.data.edge_index.tolist() == masked.data.edge_index.tolist()
        assert g.data.edge_weight.tolist() == pytest.approx(masked.data.edge_weight.tolist())
    assert a.data.edge_index.shape != unmasked.data.edge_index.shape  # the mask matters here
    np.savez(tmp_path / "nolabels.npz", features=np.zeros((3, 2), np.float32))
    with pytest.raises(SystemExit, match="has no labels or classes array"):
        main(["--debug", "graph", "--labels", str(tmp_path / "nolabels.npz")])


def test_demo_runs_the_baseline_row(tmp_path, data_dir):
    p = run_cli("demo", "--out", tmp_path, "--epochs", "1", "--num-images", "64",
                "--image-size", "32", "--models", "baseline", "--no-progress")
    assert "baseline" in p.stdout and "mAP" in p.stdout
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m["rows"]) == {"baseline"}
    assert (tmp_path / "table.txt").exists() and (tmp_path / "val_map.png").exists()
    # the demo's checkpoint serves `predict` on real images (JSON) and exports to ONNX
    ckpt = tmp_path / "baseline" / "last.pt"
    img = data_dir / "images" / "coco8" / "images" / "000000000009.jpg"
    p = run_cli("predict", img, "--checkpoint", ckpt, "--format", "json")
    out = json.loads(p.stdout)
    assert out[0]["image"] == str(img) and len(out[0]["scores"]) == 15
    assert all(0.0 <= s <= 1.0 for s in out[0]["scores"].values())
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    p = run_cli("predict", bad, "--checkpoint", ckpt, check=False)
    assert p.returncode != 0 and "broken.jpg" in p.stderr


# ------------------------------------------------------------------ predict on folders
@pytest.fixture(scope="module")
def tiny_image_checkpoint(tmp_path_factory):
    """ml_gcn with the GAT label layer (``--set conv=gat``), trained one epoch on 32 scenes."""
    out = tmp_path_factory.mktemp("tiny_ckpt")
    run_cli("train", "--dataset", "synthetic", "--num-images", "32", "--image-size", "32",
            "--epochs", "1", "--model", "ml_gcn", "--backbone", "small_cnn", "--set", "conv=gat",
            "gcn_hidden=[16]", "--out", out, "--no-progress")
    return out / "last.pt"


def test_predict_folder_writes_csv_json_and_drawings(tiny_image_checkpoint, data_dir, tmp_path):
    import csv

    from PIL import Image

    folder = data_dir / "images" / "coco8" / "images"
    extra = data_dir / "images" / "bccd" / "JPEGImages" / "BloodImage_00000.jpg"
    expected = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg") + [extra]
    draw = tmp_path / "drawn"
    p = run_cli("predict", folder, extra, "--checkpoint", tiny_image_checkpoint,
                "--batch-size", "3", "--threshold", "0.0", "--output", tmp_path / "p.csv",
                "--draw", draw, "--format", "json")
    printed = json.loads(p.stdout)
    assert [r["image"] for r in printed] == [str(q) for q in expected]
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = list(printed[0]["scores"])
    assert [r["image"] for r in rows] == [str(q) for q in expected]
    for r, pr in zip(rows, printed):
        # threshold 0: every class is predicted, most probable first; CSV = printed scores
        assert r["labels"].split(";") == pr["labels"] == list(pr["scores"])
        assert set(pr["labels"]) == set(classes)
        for c in classes:
            assert float(r[c]) == pytest.approx(pr["scores"][c], abs=1e-6)
    # batching does not change the scores: batch size 1 gives the same numbers
    run_cli("predict", folder, extra, "--checkpoint", tiny_image_checkpoint, "--batch-size", "1",
            "--output", tmp_path / "p.json", "--no-progress")
    single = json.loads((tmp_path / "p.json").read_text())
    for a, b in zip(single, printed):
        assert a["image"] == b["image"]
        for c in classes:
            assert a["scores"][c] == pytest.approx(b["scores"][c], abs=1e-5)
    # one annotated copy per image, same size as the original, with pixels changed
    assert sorted(q.name for q in draw.iterdir()) == sorted(q.name for q in expected)
    for q in expected:
        orig, ann = Image.open(q).convert("RGB"), Image.open(draw / q.name).convert("RGB")
        assert ann.size == orig.size
        corner = (0, 0, 60, 20)
        assert orig.crop(corner).tobytes() != ann.crop(corner).tobytes()


def test_predict_rejects_empty_folder_and_bad_output(tiny_image_checkpoint, data_dir, tmp_path):
    from pyg_mlic.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(SystemExit, match="holds no images") as e:
        main(["--debug", "predict", str(empty), "--checkpoint", str(tiny_image_checkpoint)])
    assert str(empty) in str(e.value)
    img = data_dir / "images" / "coco8" / "images" / "000000000009.jpg"
    with pytest.raises(SystemExit, match=r"\.csv or \.json"):
        main(["--debug", "predict", str(img), "--checkpoint", str(tiny_image_checkpoint),
              "--output", str(tmp_path / "p.txt")])
    # an unreadable file among real images: refused before any prediction, all named
    (empty / "broken.jpg").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"2 of 3 images cannot be read, nothing was "
                                         r"predicted: .*broken\.jpg .*; .*gone\.png \(image file "
                                         r"not found\)"):
        main(["--debug", "predict", str(img), str(empty / "broken.jpg"), str(empty / "gone.png"),
              "--checkpoint", str(tiny_image_checkpoint), "--output", str(tmp_path / "p.csv")])
    assert not (tmp_path / "p.csv").exists()


def test_eval_and_predict_take_device_and_amp(tiny_image_checkpoint, data_dir, tmp_path):
    """eval / predict run where --device says (a device the machine lacks is refused in
    one line before any image is read) and under --amp; bf16 scores stay close to fp32."""
    import torch

    from pyg_mlic.cli import main

    img = data_dir / "images" / "coco8" / "images" / "000000000009.jpg"
    got = {}
    for amp in ([], ["--amp", "bf16"]):
        out = tmp_path / f"p{len(amp)}.json"
        run_cli("predict", img, "--checkpoint", tiny_image_checkpoint, "--device", "cpu",
                *amp, "--output", out, "--no-progress")
        got[len(amp)] = json.loads(out.read_text())[0]["scores"]
    assert got[0].keys() == got[2].keys()
    for c in got[0]:
        assert got[2][c] == pytest.approx(got[0][c], abs=0.05)
    if not torch.cuda.is_available():
        for cmd in (["predict", str(img)], ["eval", "--dataset", "synthetic"]):
            with pytest.raises(ValueError, match="CUDA is not available"):
                main(["--debug", *cmd, "--checkpoint", str(tiny_image_checkpoint),
                      "--device", "cuda"])
    e32, e16 = tmp_path / "e32.json", tmp_path / "e16.json"
    for amp, out in (([], e32), (["--amp", "bf16"], e16)):
        run_cli("eval", "--checkpoint", tiny_image_checkpoint, "--dataset", "synthetic",
                "--num-images", "32", "--image-size", "32", "--device", "cpu", *amp,
                "--no-progress", "--num-workers", "0", "--out", out)
    m32, m16 = (json.loads(f.read_text()) for f in (e32, e16))
    assert np.isfinite(m16["mAP"]) and m16["mAP"] == pytest.approx(m32["mAP"], abs=0.05)


def test_draw_predictions_writes_labels_on_a_copy(data_dir, tmp_path):
    from PIL import Image

    from pyg_mlic.viz import draw_predictions

    src = data_dir / "images" / "bccd" / "JPEGImages" / "BloodImage_00000.jpg"
    a = draw_predictions(src, ["RBC", "WBC"], {"RBC": 0.91, "WBC": 0.6}, tmp_path / "a.png")
    b = draw_predictions(src, [], None, tmp_path / "b.png")
    orig = Image.open(src).convert("RGB")
    ia, ib = Image.open(a).convert("RGB"), Image.open(b).convert("RGB")
    assert ia.size == ib.size == orig.size
    assert ia.tobytes() != ib.tobytes() != orig.tobytes()
    # the far corner is untouched
    box = (orig.width - 50, orig.height - 50, orig.width, orig.height)
    assert ia.crop(box).tobytes() == orig.crop(box).tobytes()
    with pytest.raises(Exception, match="nope.jpg"):
        draw_predictions(tmp_path / "nope.jpg", ["x"], None, tmp_path / "c.png")


# ---------------------------------------------------------------------------- IML-GCN
def test_train_iml_gcn_two_stage_on_features(tmp_path, capsys):
    from pyg_mlic.cli import main

    tr = make_features_npz(tmp_path / "A.npz", n=120, seed=0)
    te = make_features_npz(tmp_path / "B.npz", n=60, seed=1)
    out = tmp_path / "iml"
    args = ["train", "--dataset", "features", "--train-file", str(tr), "--test-file", str(te),
            "--model", "iml_gcn", "--label-embeddings", "image-features", "--out", str(out),
            "--epochs", "2", "--no-progress", "--set", "encoder_out=16", "n_components=3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "asl (stage 1)" in printed and "iml_gcn (stage 2)" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["model"] == "iml_gcn"
    assert m["settings"]["recipe"] == {"n_components": 3}
    assert m["settings"]["two_stage"]["embeddings"]["n_components"] == 3
    assert json.loads((out / "stages.json").read_text())["stage2"] == "done"
    assert (out / "stage1" / "final.pt").is_file() and (out / "last.pt").is_file()
    stamp = (out / "stage1" / "last.pt").stat().st_mtime_ns
    assert main(args + ["--resume"]) == 0
    assert (out / "stage1" / "last.pt").stat().st_mtime_ns == stamp
    assert json.loads((out / "metrics.json").read_text())["mAP"] == m["mAP"]


@pytest.mark.heavy
def test_info_parameter_counts(capsys):
    pytest.importorskip("timm")
    from pyg_mlic.cli import main

    assert main(["info", "--model", "asl", "iml_gcn", "ml_gcn", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    # IML-GCN Table 1: ASL (TResNetM) 29.5M, IML-GCN with F_PCA 31.5M, ML-GCN 44.9M
    assert round(rows["asl"]["total"] / 1e6, 1) == 29.5
    assert round(rows["iml_gcn"]["total"] / 1e6, 1) == 31.5
    assert round(rows["ml_gcn"]["total"] / 1e6, 1) == 44.9
    for r in rows.values():
        assert r["total"] == r["backbone"] + r["head"]
    assert main(["info", "--model", "baseline", "--backbone", "small_cnn",
                 "--num-classes", "5"]) == 0
    table = capsys.readouterr().out
    assert "baseline" in table and "small_cnn" in table and "head" in table


# ---------------------------------------------------------------------------- graph files
def _bccd_csv(data_dir, path):
    """The BCCD VOC annotations as a folder-format CSV (names layout + split column):
    positives only, difficult objects excluded, as the VOC reader counts them."""
    import xml.etree.ElementTree as ET

    root = data_dir / "images" / "bccd"
    lines = ["image,labels,split"]
    for split, name in (("trainval", "train"), ("test", "test")):
        for i in (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
            names = set()
            for obj in ET.parse(root / "Annotations" / f"{i}.xml").getroot().iter("object"):
                diff = obj.find("difficult")
                if diff is None or int(diff.text) == 0:
                    names.add(obj.find("name").text.strip())
            lines.append(f"JPEGImages/{i}.jpg,{';'.join(sorted(names))},{name}")
    path.write_text("\n".join(lines) + "\n")
    return root, path


def test_graph_command_writes_npz_from_coco_voc_and_folder(data_dir, tmp_path, capsys):
    np = pytest.importorskip("numpy")
    from pyg_mlic.cli import main
    from pyg_mlic.graphs import LabelGraph

    # COCO instances json (real coco8) + the shipped GloVe vectors
    ann = data_dir / "images" / "coco8" / "instances_train.json"
    out = tmp_path / "coco8.npz"
    assert main(["graph", "--coco", str(ann), "--embeddings", "glove", "--tau", "0.3",
                 "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    g = LabelGraph.load(out)
    ref = LabelGraph.from_coco(ann, tau=0.3)
    assert g.classes == ref.classes and g.split == "train" and g.tau == 0.3
    assert torch_equal(g.counts, ref.counts) and torch_equal(g.propagation(), ref.propagation())
    assert g.x.shape[0] == 80 and g.data.embeddings_spec == "glove"
    assert g.data.source == f"coco:{ann}"
    with np.load(out, allow_pickle=False) as z:
        assert str(z["split"]) == "train" and z["vectors"].shape == tuple(g.x.shape)

    # a VOC folder (real BCCD) and the same labels as a folder CSV give the same graph
    root, csv = _bccd_csv(data_dir, tmp_path / "bccd.csv")
    assert main(["graph", "--voc", str(root), "--split", "trainval", "--classes",
                 "Platelets,RBC,WBC", "--embeddings", "onehot", "--out",
                 str(tmp_path / "voc.npz")]) == 0
    assert main(["graph", "--dataset", "folder", "--root", str(root), "--train-file", str(csv),
                 "--out", str(tmp_path / "folder.npz")]) == 0
    v, f = LabelGraph.load(tmp_path / "voc.npz"), LabelGraph.load(tmp_path / "folder.npz")
    assert v.classes == f.classes == ["Platelets", "RBC", "WBC"]
    assert (v.split, f.split) == ("trainval", "train")
    assert torch_equal(v.counts, f.counts) and torch_equal(v.nums, f.nums)
    assert int(f.nums.max()) > 0 and f.x is None and v.x.shape == (3, 3)
    # the CSV's test rows are not counted: all rows = trainval + test
    from pyg_mlic.data.folder import read_label_csv

    test_only = LabelGraph.from_voc(root, split="test", classes=["Platelets", "RBC", "WBC"])
    all_rows = read_label_csv(csv)[1].sum(0).astype(np.int64)
    assert int(test_only.nums.sum()) > 0
    assert all_rows.tolist() == (f.nums + test_only.nums).tolist()

    # --load inspects a saved graph and can add embeddings; --save is the deprecated alias
    capsys.readouterr()
    emb = data_dir / "embeddings" / "glove300_voc.npz"
    assert main(["graph", "--labels", str(data_dir / "labels" / "voc2007.npz"), "--split",
                 "trainval", "--save", str(tmp_path / "voc07.npz")]) == 0
    assert "--save is deprecated" in capsys.readouterr().err
    assert main(["graph", "--load", str(tmp_path / "voc07.npz"), "--embeddings", f"npz:{emb}",
                 "--out", str(tmp_path / "voc07e.npz")]) == 0
    a, b = LabelGraph.load(tmp_path / "voc07.npz"), LabelGraph.load(tmp_path / "voc07e.npz")
    assert torch_equal(a.propagation(), b.propagation()) and a.x is None
    assert b.x.shape == (20, 300) and b.split == "trainval"
    assert b.data.source == a.data.source


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


@pytest.mark.parametrize("argv,match", [
    (["--coco", "A.json", "--voc", "B"], "give exactly one of"),
    (["--load", "G.npz", "--tau", "0.3"], "--tau cannot change a saved graph"),
    (["--voc", "R", "--out", "g.pt"], r"--out must name a \.npz file"),
    (["--dataset", "folder"], "--dataset folder needs --train-file"),
    (["--labels", "L.npz", "--classes", "a,b"], "--classes selects the columns"),
])
def test_graph_command_usage_errors(argv, match, capsys):
    from pyg_mlic.cli import main

    assert main(["graph", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pyg-mlic: error: graph:")
    assert __import__("re").search(match, err)


def test_train_with_label_graph_file_uses_its_graph(tmp_path, capsys):
    """`pyg-mlic train --label-graph`: the model propagates over the file's operator with
    the file's embeddings, metrics.json records the file; models without a label graph and
    files for other classes are refused in one line."""
    import numpy as np
    import torch

    from pyg_mlic.cli import main
    from pyg_mlic.data.synthetic import SyntheticScenes
    from pyg_mlic.engine import load_checkpoint, model_from_checkpoint
    from pyg_mlic.graphs import LabelGraph

    classes = list(SyntheticScenes("train", num_images=8, image_size=16).classes)
    rng = np.random.default_rng(0)
    Y = (rng.random((50, len(classes))) < 0.3).astype(np.uint8)
    E = rng.normal(size=(len(classes), 5)).astype(np.float32)
    g = LabelGraph.from_labels(Y, classes=classes, split="mine", tau=0.25, p=0.3)
    path = g.with_embeddings(E, spec="random").save(tmp_path / "g.npz", source="test")
    out = tmp_path / "run"
    tiny = ["--dataset", "synthetic", "--num-images", "32", "--image-size", "32", "--epochs",
            "1", "--no-progress", "--set", "gcn_hidden=[16]"]
    assert main(["train", *tiny, "--model", "ml_gcn", "--label-graph", str(path),
                 "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    rec = m["settings"]["label_graph"]
    assert rec["path"] == str(path) and rec["split"] == "mine" and rec["tau"] == 0.25
    assert rec["content_hash"] == g.with_embeddings(E).content_hash()
    assert len(rec["sha256"]) == 64 and m["settings"]["label_embeddings"] == \
        "label graph (random)"
    net = model_from_checkpoint(load_checkpoint(out / "last.pt"))
    P = torch.zeros(len(classes), len(classes))
    P.index_put_((net.edge_index[1], net.edge_index[0]), net.edge_weight, accumulate=True)
    with np.load(path, allow_pickle=False) as z:
        assert torch.equal(P, torch.from_numpy(z["propagation"]))
    assert torch.equal(net.label_embeddings, torch.from_numpy(E))
    capsys.readouterr()

    assert main(["train", *tiny[:-3], "--model", "baseline", "--label-graph", str(path),
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "baseline takes no label graph" in err and err.count("\n") == 1
    other = LabelGraph.from_labels(Y, classes=classes[::-1]).save(tmp_path / "rev.npz")
    assert main(["train", *tiny, "--model", "ml_gcn", "--label-graph", str(other),
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert f"first difference at position 0: {classes[-1]!r} vs {classes[0]!r}" in err
    torch.save(g.data.to_dict(), tmp_path / "old.pt")
    assert main(["train", *tiny, "--model", "ml_gcn", "--label-graph",
                 str(tmp_path / "old.pt"), "--out", str(tmp_path / "d")]) == 2
    assert "never unpickled" in capsys.readouterr().err


def test_warnings_print_as_one_line_naming_the_problem(tmp_path):
    """The command line prints each warning as ``pyg-mlic: warning: ...`` on one line (no
    source line), here a class without a positive in the training file, named."""
    tr = make_features_npz(tmp_path / "A.npz", n=80, seed=0)
    with np.load(tr) as z:
        a = dict(z)
    a["labels"][:, 2] = 0
    np.savez(tr, **a)
    te = make_features_npz(tmp_path / "B.npz", n=60, seed=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    p = subprocess.run([sys.executable, "-m", "pyg_mlic.cli", "train", "--dataset", "features",
                        "--train-file", str(tr), "--test-file", str(te), "--model", "baseline",
                        "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    lines = [s for s in p.stderr.splitlines() if "no known positive" in s]
    assert lines and all(s.startswith("pyg-mlic: warning: training split") for s in lines)
    assert "'class_2'" in lines[0]
    assert "Warning:" not in p.stderr and "warnings.warn" not in p.stderr


@pytest.mark.parametrize("argv", [
    ["extract-features", "--dataset", "voc2007", "--out", "x.npz", "--image-size", "0"],
    ["extract-features", "--dataset", "voc2007", "--out", "x.npz", "--threads", "-2"],
    ["train", "--dataset", "features", "--model", "baseline", "--epochs", "0"],
    ["train", "--dataset", "features", "--model", "baseline", "--batch-size", "-1"],
    ["train", "--dataset", "synthetic", "--model", "baseline", "--num-images", "0"],
    ["train", "--dataset", "features", "--model", "baseline", "--seed", "-1"],
    ["eval", "--dataset", "features", "--checkpoint", "c.pt", "--image-size", "x"],
    ["demo", "--epochs", "0"],
    ["predict", "x.jpg", "--checkpoint", "c.pt", "--topk", "-1"],
])
def test_counts_below_one_are_refused_at_parse_time(argv, capsys):
    """A size, count or seed out of range is a parse error naming the option, never
    replaced by a default (``--image-size 0`` used to extract at 224 px)."""
    from pyg_mlic.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[-2]}: expected an integer >= " in err


def test_every_help_text_formats_cleanly():
    """Every command's --help renders, with no unformatted ``%%`` or ``%(...)s`` left (a
    description is not %-formatted by argparse unless it names ``%(prog)``)."""
    import argparse

    from pyg_mlic.cli import build_parser

    ap = build_parser()
    subs = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    assert subs.choices, "no sub-commands"
    for name, parser in subs.choices.items():
        text = parser.format_help()
        assert "%%" not in text and "%(" not in text, (name, text)


def test_predict_scores_features_rows_with_a_features_checkpoint(tmp_path, capsys):
    """``pyg-mlic predict`` with a checkpoint trained on features scores the rows of
    features ``.npz`` files, labelled or not (``features`` alone, with ``image`` names):
    the probabilities of the model's forward pass, names from the file's ``image`` array
    (else ``FILE[i]``), the CSV of ``--output``; ``--draw`` and folders are refused."""
    import torch

    from pyg_mlic.cli import main
    from pyg_mlic.data.features import FeaturesDataset
    from pyg_mlic.engine import model_from_checkpoint

    tr = make_features_npz(tmp_path / "A.npz", seed=0)
    te = make_features_npz(tmp_path / "B.npz", n=10, seed=1)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "features", "--train-file", str(tr), "--test-file",
                 str(te), "--model", "baseline", "--epochs", "2", "--no-progress",
                 "--out", str(out)]) == 0
    ckpt = out / "last.pt"  # no validation file: hold-out, then refit on every row
    net = model_from_checkpoint(ckpt).eval()
    X = torch.from_numpy(FeaturesDataset(te).features)
    with torch.no_grad():
        ref = torch.sigmoid(net({"features": X}).logits)
    raw = tmp_path / "rows.npz"  # no labels / classes: rows to predict
    np.savez(raw, features=X[:3].numpy(), image=np.array(["x.jpg", "y.jpg", "z.jpg"]))
    capsys.readouterr()
    assert main(["predict", str(te), str(raw), "--checkpoint", str(ckpt), "--format", "json",
                 "--batch-size", "4", "--output", str(tmp_path / "p.csv"),
                 "--no-progress"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in got] == [f"{te}[{i}]" for i in range(10)] + \
        ["x.jpg", "y.jpg", "z.jpg"]
    for r, p in zip(got, torch.cat([ref, ref[:3]])):
        assert [r["scores"][c] for c in net.classes] == pytest.approx(p.tolist(), abs=1e-5)
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "image,labels," + ",".join(net.classes) and len(rows) == 14
    for bad, msg in ((["--draw", str(tmp_path / "d")], "--draw draws on images"),
                     ([], "give features .npz files")):
        item = str(te) if bad else str(tmp_path)
        p = run_cli("predict", item, "--checkpoint", ckpt, *bad, check=False)
        assert p.returncode != 0 and msg in p.stderr
