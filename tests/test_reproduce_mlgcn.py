"""benchmarks/reproduce_mlgcn.py: the paper's numbers are the paper's, and the script runs
end to end (one epoch) on the 8 real COCO images of the shared data."""
import importlib
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def repro():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("reproduce_mlgcn")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_paper_numbers_match_the_paper_text(repro, data_dir):
    paper = data_dir.parent / "papers" / "000_ce42d59f26156513.txt"
    if not paper.is_file():
        pytest.skip(f"ML-GCN paper text not found at {paper}")
    parsed = repro.parse_paper_tables(paper)
    assert parsed["coco"] == repro.PAPER_COCO
    assert parsed["voc"] == repro.PAPER_VOC
    # the reported mAP is the mean of the 20 reported APs (up to rounding)
    for row in repro.PAPER_VOC.values():
        assert abs(sum(row[:20]) / 20 - row[20]) < 0.06


def test_ratios_block_is_measured_against_the_baseline_row(repro):
    res = {"dataset": "coco", "paper": repro.PAPER_COCO, "measured": {
        "ResNet-101": {"mAP": 0.5}, "ML-GCN (Binary)": {"mAP": 0.25},
        "ML-GCN (Re-weighted)": {"mAP": 0.75}}}
    r = repro.ratios(res)
    assert list(r) == ["measured mAP ratio ML-GCN (Binary) / ResNet-101",
                       "measured mAP ratio ML-GCN (Re-weighted) / ResNet-101"]
    rw = r["measured mAP ratio ML-GCN (Re-weighted) / ResNet-101"]
    assert rw["value"] == pytest.approx(1.5)
    assert rw["baseline"] == "ResNet-101 (measured)"
    assert rw["candidate"] == "ML-GCN (Re-weighted) (measured)"
    assert f"paper: {83.0 / 77.3:.3f}" in rw["meaning"]
    # VOC: the paper's mAP is the last column
    voc = dict(res, dataset="voc2007", paper=repro.PAPER_VOC)
    assert f"paper: {94.0 / 89.9:.3f}" in repro.ratios(voc)[
        "measured mAP ratio ML-GCN (Re-weighted) / ResNet-101"]["meaning"]
    assert repro.ratios({"measured": {}}) == {}


@pytest.mark.heavy
def test_reproduce_runs_on_coco8(repro, data_dir, tmp_path, capsys):
    coco8 = data_dir / "images" / "coco8"
    if not (coco8 / "instances_train.json").is_file():
        pytest.skip(f"coco8 not found at {coco8}")
    out_json = tmp_path / "res.json"
    rc = repro.main(["--dataset", "coco", "--root", str(coco8),
                     "--train-file", "instances_train.json", "--test-file", "instances_val.json",
                     "--epochs", "1", "--image-size", "128", "--backbone", "resnet50",
                     "--batch-size", "4", "--workers", "0", "--no-checkpoint",
                     "--no-progress", "--out", str(tmp_path / "runs"), "--json", str(out_json)])
    assert rc == 0
    text = capsys.readouterr().out
    # the paper's rows beside the measured ones, and the deviations said out loud
    for row, vals in repro.PAPER_COCO.items():
        assert f"paper    {row}" in text and f"measured {row}" in text
        paper_line = next(l for l in text.splitlines() if l.startswith(f"paper    {row}"))
        assert f"{vals[0]:.1f}" in paper_line and f"{vals[-1]:.1f}" in paper_line
    assert "random backbone initialisation" in text and "1 epochs (paper: 100)" in text
    res = json.loads(out_json.read_text())
    assert res["num_train"] == 4 and res["num_test"] == 4
    # the harness contract: a ratios block, and no path of this machine in the JSON
    assert list(res)[0] == "ratios" and len(res["ratios"]) == 2
    for r in res["ratios"].values():
        assert r["value"] >= 0 and r["baseline"] == "ResNet-101 (measured)"
    text = out_json.read_text()
    assert str(tmp_path) not in text and str(data_dir) not in text
    assert "$PYG_MLIC_DATA/images/coco8" in text
    assert list(res["measured"]) == list(repro.PAPER_COCO)
    for row, m in res["measured"].items():
        for k in repro.COCO_COLUMNS:
            assert 0.0 <= m[k] <= 1.0 and not math.isnan(m[k]), (row, k)
        assert m["selection"]["rule"] == "last"
        assert m["settings"]["num_train"] == 4
    opts = {r: res["measured"][r]["settings"]["model_options"] for r in res["measured"]}
    assert opts["ML-GCN (Binary)"]["scheme"] == "binary"
    assert opts["ML-GCN (Re-weighted)"]["scheme"] == "reweighted"
    assert not (tmp_path / "runs").exists()  # --no-checkpoint wrote nothing
