"""benchmarks/reproduce.py: the paper numbers are the papers', every setting has a source,
the detector-leakage rule, and one end-to-end run of every method (one epoch) on the 8 real
COCO images of the shared data. ML-Decoder's and Query2Label's entries cite the authors'
repositories (their paper texts are not in shared/papers)."""
import argparse
import importlib
import json
import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def repro():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("reproduce")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _paper(data_dir, prefix: str) -> str:
    p = data_dir.parent / "papers"
    files = sorted(p.glob(f"{prefix}_*.txt")) if p.is_dir() else []
    if not files:
        pytest.skip(f"paper text {prefix}_*.txt not found in {p}")
    return files[0].read_text(encoding="utf-8", errors="replace")


def _floats(s: str):
    return [float(v) for v in re.sub(r"</?b>", "", s).split()]


# ------------------------------------------------------------------ paper numbers
def test_ml_gcn_numbers_are_the_papers(repro, data_dir):
    _paper(data_dir, "000")
    parsed = repro.parse_paper_tables(next((data_dir.parent / "papers").glob("000_*.txt")))
    for table, ours in (("coco", repro.PAPER_COCO), ("voc", repro.PAPER_VOC)):
        assert parsed[table]["ResNet-101"] == ours["ResNet-101 (GAP)"]
        for row in ("ML-GCN (Binary)", "ML-GCN (Re-weighted)"):
            assert parsed[table][row] == ours[row]
    # item 2: the GMP baseline is a separate row, not Table 1's (average-pooled) one
    assert repro.PAPER_COCO["ResNet-101 (GMP)"][0] == 81.9
    assert repro.ROWS["ml_gcn"]["baseline_avg"].options == {"pool": "avg"}
    assert repro.ROWS["ml_gcn"]["baseline_max"].options == {"pool": "max"}


def test_a_gcn_numbers_are_the_papers(repro, data_dir):
    text = _paper(data_dir, "002")
    names = {"Our baseline (ResNet101)": "Our baseline (ResNet101)", "A-GCN": "A-GCN",
             "A-GCN (w/o L_A)": "A-GCN (w/o $L_A$ )", "Cos-A (w L_A)": "Cos-A (w $L_A$ )",
             "FC-A (w L_A)": "FC-A (w $L_A$ )", "Dot-A (w L_A)": "Dot-A (w $L_A$ )",
             "ML-GCN (Re-weighted)*": "ML-GCN (Re-weighted)*"}
    rows = repro.PAPER_TABLES["a_gcn"]["coco"].rows
    assert set(rows) == set(names)
    for ours, theirs in names.items():
        line = next(l for l in text.splitlines() if l.startswith(theirs + "\t"))
        assert rows[ours] == _floats(line[len(theirs):]), ours


def test_ia_gcn_numbers_are_the_papers(repro, data_dir):
    lines = _paper(data_dir, "001").splitlines()
    labels = {"Base": "Base", "Base+ID_LCM": "Base+ID_LCM",
              "Base+ID_LCM+Var_Inf": "Base+ID_LCM+Var_Inf",
              "IA-GCN": "Base+ID_LCM+Var_Inf+Com_Sco"}
    for table, dataset in (("Table 3:", "coco"), ("Table 4:", "voc2007")):
        start = next(i for i, l in enumerate(lines) if l.startswith(table))
        rows = repro.PAPER_TABLES["ia_gcn"][dataset].rows
        for ours, theirs in labels.items():
            line = next(l for l in lines[start:] if re.match(re.escape(theirs) + r" [\d.]", l))
            assert rows[ours] == _floats(line[len(theirs):]), (dataset, ours)
    # Table 1's IA-GCN row is Table 3's last one
    t1 = next(l for l in lines if l.startswith("IA-GCN 86.3"))
    assert _floats(t1[len("IA-GCN"):]) == repro.PAPER_TABLES["ia_gcn"]["coco"].rows["IA-GCN"]


def test_iml_gcn_numbers_are_the_papers(repro, data_dir):
    lines = _paper(data_dir, "003").splitlines()
    prefixes = {"ASL (TResNetM)": "ASL (TResNetM) (Ridnik et al. 2021a) 29.5M",
                "IML-GCN with F_I": "Ours (IML-GCN with FI ) 33.5M",
                "IML-GCN with F_PCA": "Ours (IML-GCN with FPCA) 31.5M"}
    rows = repro.PAPER_TABLES["iml_gcn"]["coco"].rows
    for ours, theirs in prefixes.items():
        line = next(l for l in lines if l.startswith(theirs))
        assert rows[ours] == _floats(line[len(theirs):]), ours


def test_gm_mlic_numbers_are_the_papers(repro, data_dir):
    text = _paper(data_dir, "004")
    lines = [l.strip() for l in text.splitlines()]
    # Table 1 (VOC) is printed transposed: a class name, then 8 values (HCP, CNN-RNN,
    # ResNet-101, RNN-Attention, ML-GCN, SSGRL, TSGCN, GM-MLIC)
    cols = []
    for name in repro.VOC_SHORT + ["mAP"]:
        i = next(i for i, l in enumerate(lines) if l == name or re.match(
            re.escape(name) + r"( [\d.]+){8}$", l))
        vals = [float(v) for v in lines[i].split()[1:]]
        j = i + 1
        while len(vals) < 8:
            vals += [float(v) for v in lines[j].split()]
            j += 1
        cols.append(vals)
    voc = repro.PAPER_TABLES["gm_mlic"]["voc2007"].rows
    for label, col in (("ResNet-101", 2), ("ML-GCN", 4), ("GM-MLIC", 7)):
        assert voc[label] == [c[col] for c in cols], label
    coco = repro.PAPER_TABLES["gm_mlic"]["coco"].rows["GM-MLIC"]
    # the text of Sec. 4.3 repeats these (the table itself is printed column by column)
    assert "84.3% mAP, 78.3% (74.9%) CF1 (Top-3)" in " ".join(lines)
    assert "80.6% OF1, 67.3% Top-3 CR and 69.8% Top-3 OR" in " ".join(lines)
    assert (coco[0], coco[3], coco[9], coco[6], coco[8], coco[11]) == \
        (84.3, 78.3, 74.9, 80.6, 67.3, 69.8)
    assert "62.2 61.0 74.1 55.3 72.5" in text
    assert repro.PAPER_TABLES["gm_mlic"]["nuswide"].rows["GM-MLIC"] == [62.2, 61.0, 74.1,
                                                                        55.3, 72.5]
    # VOC: the reported mAP is the mean of the 20 reported APs (up to rounding) ...
    for label, row in list(repro.PAPER_VOC.items()) + list(voc.items()):
        if row[0] is not None and label != "GM-MLIC":
            assert abs(sum(row[:20]) / 20 - row[20]) < 0.06, label
    # ... except GM-MLIC's own row, as printed (said in the table's notes)
    assert round(sum(voc["GM-MLIC"][:20]) / 20, 1) == 95.2 and voc["GM-MLIC"][20] == 94.7
    assert "95.2" in repro.PAPER_TABLES["gm_mlic"]["voc2007"].notes["GM-MLIC"]


# ------------------------------------------------------------------ settings and rows
def test_every_setting_has_a_source_and_every_row_builds(repro):
    from pyg_mlic.engine import TrainConfig
    from pyg_mlic.models.registry import model_option_names

    for method, per_dataset in repro.PAPER_SETTINGS.items():
        assert set(per_dataset) <= set(repro.DATASETS)
        for dataset, settings in per_dataset.items():
            for key, s in settings.items():
                assert isinstance(s.source, str) and len(s.source) > 5, (method, key)
                if key in repro.TRAIN_KEYS:
                    assert key in TrainConfig.fields()
            assert set(repro.TRAIN_KEYS) - {"lr_milestones", "momentum", "schedule",
                                            "ema"} <= set(settings)
            # a model.<option> key is an option of a model the method's rows train
            opts = set().union(*(model_option_names(r.model)
                                 for r in repro.ROWS[method].values()))
            for key in settings:
                if key.startswith("model."):
                    assert key[6:] in opts, (method, key)
        for key, row in repro.ROWS[method].items():
            valid = set(model_option_names(row.model)) | {"pca"}
            assert set(row.options) <= valid, (method, key)
            for dataset, table in repro.PAPER_TABLES[method].items():
                assert row.label in table.rows or method == "gm_mlic", (method, row.label)
        for key in repro.DEFAULT_ROWS[method]:
            assert key in repro.ROWS[method]
    # the papers' own numbers for the region methods' detectors and schedules
    ia = repro.PAPER_SETTINGS["ia_gcn"]["coco"]
    assert ia["epochs"].value == 120 and ia["detector.max_instances"].value == 40
    gm = repro.PAPER_SETTINGS["gm_mlic"]
    assert gm["voc2007"]["model.max_instances"].value == 10
    assert gm["coco"]["model.beta"].value == 0.4 and gm["voc2007"]["model.beta"].value == 0.0
    assert repro.PAPER_SETTINGS["iml_gcn"]["coco"]["lr_milestones"].value == [10, 20, 30]


def test_ml_decoder_and_q2l_entries(repro):
    """The two transformer heads: numbers and recipes from the authors' repositories
    (their paper texts are not in shared/papers), each value citing its file."""
    from pyg_mlic.engine import TrainConfig

    mld, q2l = (repro.PAPER_SETTINGS[m]["coco"] for m in ("ml_decoder", "q2l"))
    for settings, repo in ((mld, repro.MLD_REPO), (q2l, repro.Q2L_REPO)):
        for key, s in settings.items():
            assert repo in s.source or s.source.startswith(repro.NOT), key
        assert settings["schedule"].value == "onecycle" and settings["ema"].value == 0.9997
        assert settings["image_size"].value == 448
        assert settings["augment"].value == "resize_cutout_randaugment"
        TrainConfig(**{k: settings[k].value for k in repro.TRAIN_KEYS
                       if k in settings and settings[k].value is not None})
    assert (mld["backbone"].value, mld["optimizer"].value, mld["lr"].value,
            mld["weight_decay"].value, mld["epochs"].value, mld["batch_size"].value) == \
        ("tresnet_l", "adam", 1e-4, 1e-4, 40, 56)
    assert (mld["model.num_groups"].value, mld["model.embed_dim"].value,
            mld["model.ffn_dim"].value, mld["model.decoder_layers"].value) == (100, 768, 2048, 1)
    assert (mld["model.asl_gamma_neg"].value, mld["model.asl_gamma_pos"].value,
            mld["model.asl_clip"].value) == (4.0, 0.0, 0.05)
    assert (q2l["backbone"].value, q2l["optimizer"].value, q2l["lr"].value,
            q2l["weight_decay"].value, q2l["epochs"].value, q2l["batch_size"].value) == \
        ("resnet101", "adamw", 1e-4, 1e-2, 80, 64)
    assert (q2l["model.heads"].value, q2l["model.encoder_layers"].value,
            q2l["model.decoder_layers"].value) == (4, 1, 2)
    assert (q2l["model.asl_gamma_neg"].value, q2l["model.asl_clip"].value) == (2.0, 0.0)
    # the tables: the figures the issue states, and the rows the papers compare with
    t = repro.PAPER_TABLES["ml_decoder"]["coco"]
    assert t.columns == repro.COCO13 and t.rows["ML-Decoder (TResNet-L)"][0] == 90.1
    assert t.rows["ML-Decoder (TResNet-L)"][1:] == [None] * 12
    assert t.rows["ASL (TResNet-L)"][0] == 86.6
    t = repro.PAPER_TABLES["q2l"]["coco"]
    assert t.rows["Q2L-R101"][:7] == [84.9, 84.8, 74.5, 79.3, 86.6, 76.9, 81.5]
    assert t.rows["ResNet-101"][0] == 78.3
    assert "voc2007" not in repro.PAPER_TABLES["ml_decoder"]
    assert "voc2007" not in repro.PAPER_TABLES["q2l"]
    assert [repro.ROWS[m][k].label for m in ("ml_decoder", "q2l")
            for k in repro.DEFAULT_ROWS[m]] == ["ASL (TResNet-L)", "ML-Decoder (TResNet-L)",
                                                 "ResNet-101", "Q2L-R101"]
    assert repro.method_title("ml_decoder") == "ML-Decoder"
    assert repro.method_title("q2l") == "Query2Label"


def test_ml_decoder_and_q2l_options_and_deviations(repro):
    args = repro.build_parser().parse_args(["--method", "q2l", "--dataset", "coco", "--root",
                                            "x", "--backbone-weights", "w.pth"])
    # the papers' input pipeline: plain resize, no flip, RandAugment + Cutout
    cfg = repro.data_config_for("q2l", "resnet101", args)
    assert (cfg["train"], cfg["resize"], cfg["flip_p"], cfg["cutout"]) == \
        ("resize_crop", 448, 0.0, 0.5)
    assert cfg["randaugment"] is not None
    assert list(cfg["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    for method in ("ml_decoder", "q2l"):
        plan = repro.build_plan(method, args)
        assert plan.deviations == repro.RECIPE_DEVIATIONS[method], method
        assert plan.leakage is None
        assert any("fp32 training" in n for n in plan.notes)
    # --no-augment is a deviation from the paper's augmentation
    args.no_augment = True
    dev = repro.build_plan("q2l", args).deviations
    assert any(d.startswith("no training augmentation (paper: resize to the input size")
               for d in dev)
    args.no_augment = False
    # model and training options reach the rows: the paper's loss also trains the GAP rows
    mld = repro.ROWS["ml_decoder"]
    opts, train, _ = repro._options("ml_decoder", mld["ml_decoder"], "coco", args)
    assert (opts["backbone"], opts["embed_dim"], opts["ffn_dim"], opts["num_groups"],
            opts["queries"], opts["asl_gamma_neg"]) == ("tresnet_l", 768, 2048, 100,
                                                        "fixed", 4.0)
    assert (train["optimizer"], train["lr"], train["schedule"], train["ema"],
            train["epochs"], train["batch_size"]) == ("adam", 1e-4, "onecycle", 0.9997, 40, 56)
    opts, _, _ = repro._options("ml_decoder", mld["asl"], "coco", args)
    assert opts["backbone"] == "tresnet_l" and opts["asl_clip"] == 0.05
    assert "embed_dim" not in opts
    q = repro.ROWS["q2l"]
    opts, train, _ = repro._options("q2l", q["q2l"], "coco", args)
    assert (opts["backbone"], opts["heads"], opts["encoder_layers"], opts["decoder_layers"],
            opts["asl_gamma_neg"], opts["asl_clip"]) == ("resnet101", 4, 1, 2, 2.0, 0.0)
    assert (train["optimizer"], train["weight_decay"], train["epochs"]) == ("adamw", 1e-2, 80)
    opts, _, _ = repro._options("q2l", q["baseline"], "coco", args)
    assert opts["pool"] == "avg" and opts["asl_gamma_neg"] == 2.0 and "heads" not in opts
    # a dataset without a table: the COCO settings, said as deviations
    args.dataset = "voc2007"
    dev = repro.build_plan("ml_decoder", args).deviations
    assert any("reports no voc2007 experiment" in d for d in dev)
    assert any("no voc2007 table" in d for d in dev)


def _args(repro, *extra):
    return repro.build_parser().parse_args(["--method", "ml_gcn", "--dataset", "coco",
                                            "--root", "x", *extra])


def test_deviations_are_listed(repro):
    plan = repro.build_plan("ml_gcn", _args(repro, "--epochs", "2", "--image-size", "64",
                                            "--backbone", "small_cnn", "--num-train", "5"), 5)
    text = "\n".join(plan.deviations)
    assert "2 epochs (paper: 100, Sec. 4.2" in text
    assert "64 px inputs (paper: 448" in text and "backbone small_cnn (paper: resnet101" in text
    assert "random backbone initialisation" in text and "training subset: 5 images" in text
    assert plan.leakage is None
    # with the paper's protocol nothing deviates
    assert repro.build_plan("ml_gcn", _args(repro, "--backbone-weights", "r101.pth"),
                            82081).deviations == []
    # a dataset the paper has no experiment on: its COCO settings, said out loud
    args = _args(repro, "--backbone-weights", "r101.pth")
    args.dataset = "nuswide"
    dev = repro.build_plan("ml_gcn", args).deviations
    assert any("reports no nuswide experiment" in d for d in dev)
    assert any("no nuswide table" in d for d in dev)
    # IML-GCN's RandAugment and A-GCN's resize-512-crop-448: a deviation exactly when the
    # input pipeline pyg_mlic resolves for the paper lacks them
    args = _args(repro, "--backbone-weights", "w.pth")
    for method, backbone, key, word in (("iml_gcn", "tresnet_m", "randaugment", "RandAugment"),
                                        ("a_gcn", "resnet101", "train", "512 x 512")):
        cfg = repro.data_config_for(method, backbone, args)
        has = cfg.get(key) not in (None, "random_resized_crop")
        dev = repro.build_plan(method, args).deviations
        assert any(word in d for d in dev) != has, (method, cfg)
    # preprocessing belongs to the weights: TResNet takes [0, 1] inputs
    cfg = repro.data_config_for("iml_gcn", "tresnet_m", args)
    assert list(cfg["mean"]) == [0.0, 0.0, 0.0] and list(cfg["std"]) == [1.0, 1.0, 1.0]
    assert list(repro.data_config_for("ml_gcn", "resnet101", args)["mean"]) == \
        pytest.approx([0.485, 0.456, 0.406])


def test_detector_leakage_rule(repro):
    leak = repro.detector_leakage
    assert leak("ml_gcn", "coco") is None and leak("gm_mlic", "voc2007") is None
    for method in ("ia_gcn", "gm_mlic"):
        r = leak(method, "coco", "torchvision", None)          # random detector
        assert r["warn"] and r["run"] == "random" and "35,504 of the 40,504" in r["text"]
        r = leak(method, "coco", "torchvision", "frcnn_coco.pth")   # public weights: train2017
        assert r["warn"] and r["run"] == "leak" and "coco-train2014" in r["text"]
        r = leak(method, "coco", "torchvision", "frcnn_2014.pth", "coco-train2014")
        assert not r["warn"] and r["run"] == "clean"
        assert not leak(method, "coco", "detectron2", "x.pth", "no-coco")["warn"]
        assert leak(method, "coco", "precomputed", None)["warn"]
        assert not leak(method, "coco", "groundtruth", None)["warn"]
    # the plan carries it; declaring train2014-only weights removes the warning
    args = _args(repro, "--detector-weights", "w.pth", "--detector-trained-on",
                 "coco-train2014")
    assert not repro.build_plan("gm_mlic", args).leakage["warn"]
    res = {"method": "gm_mlic", "dataset": "coco", "table": None, "num_train": 1,
           "num_test": 1, "deviations": [], "notes": [], "metric_rules": [],
           "measured": {"GM-MLIC": {"mAP": 0.5}},
           "leakage": repro.build_plan("gm_mlic", args).leakage}
    text = repro.format_report(res)
    assert "WARNING" not in text and "no leakage in the measured numbers" in text


def test_voc_table_and_ratios(repro):
    ap = [0.5] * 19 + [float("nan")]
    res = {"dataset": "voc2007", "methods": {"ml_gcn": {
        "table": {"title": "t", "columns": repro.VOC21, "rows": repro.PAPER_VOC, "notes": {}},
        "measured": {"ResNet-101 (GAP)": {"mAP": 0.5, "AP": ap},
                     "ML-GCN (Re-weighted)": {"mAP": 0.75, "AP": ap}}}}}
    r = repro.ratios(res)
    key = "ml_gcn: measured mAP ratio ML-GCN (Re-weighted) / ResNet-101 (GAP)"
    assert list(r) == [key] and r[key]["value"] == pytest.approx(1.5)
    assert r[key]["baseline"] == "ResNet-101 (GAP) (measured)"
    assert f"paper: {94.0 / 89.9:.3f}" in r[key]["meaning"]
    text = repro.format_comparison(res["methods"]["ml_gcn"])
    assert "aero" in text and "tv" in text
    line = next(l for l in text.splitlines() if l.startswith("measured ML-GCN (Re-weighted)"))
    assert line.split()[-2:] == ["-", "75.0"]   # a class without positives, then mAP
    assert repro.ratios({"methods": {"ml_gcn": {"measured": {}}}}) == {}


# ------------------------------------------------------------------ end to end
@pytest.mark.heavy
def test_every_method_runs_on_coco8(repro, data_dir, tmp_path, capsys):
    coco8 = data_dir / "images" / "coco8"
    if not (coco8 / "instances_train.json").is_file():
        pytest.skip(f"coco8 not found at {coco8}")
    out_json = tmp_path / "res.json"
    rc = repro.main([
        "--method", "all", "--dataset", "coco", "--root", str(coco8),
        "--train-file", "instances_train.json", "--test-file", "instances_val.json",
        "--epochs", "1", "--image-size", "64", "--backbone", "small_cnn", "--batch-size", "4",
        "--detector-size", "32", "--region-cache", str(tmp_path / "regions"),
        "--model-opt", "gm_mlic.encoder_channels=64", "--model-opt",
        "gm_mlic.conv_channels=[64,32]", "--model-opt", "ia_gcn.region_hidden=[32,64]",
        "--model-opt", "ia_gcn.gcn_hidden=[64]", "--workers", "0", "--no-checkpoint",
        "--no-progress", "--out", str(tmp_path / "runs"), "--json", str(out_json)])
    assert rc == 0
    text = capsys.readouterr().out
    res = json.loads(out_json.read_text())
    assert list(res["methods"]) == list(repro.METHODS)
    # every method: the paper's rows (their numbers) beside the measured ones
    for method, r in res["methods"].items():
        table = repro.PAPER_TABLES[method]["coco"]
        assert table.title in text
        for label in r["measured"]:
            paper_line = next(l for l in text.splitlines()
                              if re.match(rf"paper    {re.escape(label)}\s\s", l))
            assert f"{table.rows[label][0]:.1f}" in paper_line, (method, label)
            assert f"measured {label}" in text
            for k in table.columns:
                v = r["measured"][label][k]
                assert 0.0 <= v <= 1.0 and not math.isnan(v), (method, label, k)
            assert r["measured"][label]["selection"]["rule"] == "last"
        assert "random backbone initialisation of small_cnn" in "\n".join(r["deviations"])
        assert any(d.startswith("1 epoch (paper: ") for d in r["deviations"]), method
        assert (r["leakage"] is not None) == (method in repro.REGION_METHODS)
    # item 2: both ResNet-101 baselines, each labelled, with their pooling
    ml = res["methods"]["ml_gcn"]["measured"]
    assert list(ml) == list(repro.PAPER_COCO)
    assert ml["ResNet-101 (GAP)"]["settings"]["model_options"]["pool"] == "avg"
    assert ml["ResNet-101 (GMP)"]["settings"]["model_options"]["pool"] == "max"
    assert ml["ML-GCN (Binary)"]["settings"]["model_options"]["scheme"] == "binary"
    assert "ResNet-101 (GMP): not in ML-GCN's tables" in text
    # IML-GCN's stage 1 is the ASL row; IA-GCN / GM-MLIC read detector ROIs
    assert list(res["methods"]["iml_gcn"]["measured"]) == ["ASL (TResNetM)",
                                                           "IML-GCN with F_PCA"]
    assert "ia_gcn regions: torchvision (rpn, K = 40" in text
    assert "gm_mlic regions: torchvision (detections, K = 35" in text
    # the leakage warning, for the region methods on COCO only
    warnings = [l for l in text.splitlines() if l.startswith("WARNING (detector leakage")]
    assert [w.split(",")[1].split(" on ")[0].strip() for w in warnings] == ["IA-GCN",
                                                                           "GM-MLIC"]
    assert all("35,504 of the 40,504 val2014" in w for w in warnings)
    assert "deviation: model option gm_mlic.conv_channels=[64, 32] (paper: [512, 256]" in text
    # the harness contract: a ratios block first, no path of this machine in the JSON
    assert list(res)[0] == "ratios" and len(res["ratios"]) == 9
    # the transformer heads: their reference row first, the paper's loss and schedule
    assert list(res["methods"]["ml_decoder"]["measured"]) == ["ASL (TResNet-L)",
                                                              "ML-Decoder (TResNet-L)"]
    assert list(res["methods"]["q2l"]["measured"]) == ["ResNet-101", "Q2L-R101"]
    for method in ("ml_decoder", "q2l"):
        for label, m in res["methods"][method]["measured"].items():
            tc = m["settings"]["train_config"]
            assert tc["schedule"] == "onecycle" and tc["ema"] == 0.9997, (method, label)
    assert "ml_decoder: measured mAP ratio ML-Decoder (TResNet-L) / ASL (TResNet-L)" in \
        res["ratios"]
    raw = out_json.read_text()
    assert str(tmp_path) not in raw and str(data_dir) not in raw
    assert "$PYG_MLIC_DATA/images/coco8" in raw
    assert res["num_train"] == 4 and res["num_test"] == 4
    assert not (tmp_path / "runs").exists()  # --no-checkpoint wrote nothing


def test_bad_rows_fail_before_any_work(repro):
    with pytest.raises(SystemExit, match="no row"):
        repro.main(["--method", "ml_gcn", "--dataset", "coco", "--root", "nowhere",
                    "--rows", "baseline"])
    with pytest.raises(SystemExit, match="detector-trained-on"):
        repro.main(["--method", "ia_gcn", "--dataset", "coco", "--root", "nowhere",
                    "--detector-trained-on", "coco-train2014"])
    with pytest.raises(SystemExit, match="no label embeddings for nuswide"):
        repro.main(["--method", "gm_mlic", "--dataset", "nuswide", "--root", "nowhere"])
    # --backbone-weights are the paper backbone's: GM-MLIC's stand-in encoder keeps none
    args = _args(repro, "--backbone-weights", "r101.pth")
    gm = repro.ROWS["gm_mlic"]
    opts = {k: repro._options("gm_mlic", gm[k], "coco", args)[0] for k in ("ml_gcn", "gm_mlic")}
    assert opts["ml_gcn"]["backbone"] == "resnet101" and "backbone_weights" in opts["ml_gcn"]
    assert opts["gm_mlic"]["backbone"] == "small_cnn" and "backbone_weights" not in opts["gm_mlic"]
    assert opts["gm_mlic"]["max_instances"] == 35 and opts["gm_mlic"]["beta"] == 0.4
    assert isinstance(repro.build_parser(), argparse.ArgumentParser)
