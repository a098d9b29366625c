"""benchmarks/run_all.py: a quick pass over a small subset writes RESULTS.md, RESULTS.rst
and results.json that parse, with in-run ratios, and records failures instead of crashing."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.heavy
def test_run_all_quick_subset_writes_parsable_reports(tmp_path, data_dir):
    if not (data_dir / "images" / "coco8" / "instances_train.json").is_file():
        pytest.skip(f"coco8 not found under {data_dir}")
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick",
                        "--only", "metrics", "coco8", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900,
                       env={**__import__("os").environ, "PYG_MLIC_DATA": str(data_dir)})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["quick"] is True and res["sections"] == ["metrics", "coco8"]
    assert res["machine"]["cpu_count"] >= 1 and res["git_commit"] and res["date"]
    assert any("run_all.py" in c for c in res["commands"])
    m = res["benchmarks"]["metrics"]
    assert m["status"] == "ok", m.get("error")
    assert "bench_metrics.py --quick" in m["command"]
    assert m["ratios"]["ratio_ours_over_floor"] > 0
    assert m["ratios"]["both_sort_paths_identical"] is True
    acc = res["accuracy"]["coco8"]
    from pyg_mlic.models import demo_rows

    # every registered demo row is either measured or recorded with its error
    assert set(acc["rows"]) | set(acc["errors"]) == set(demo_rows())
    assert acc["errors"] == {}, acc["errors"]        # every model trains on real photographs
    assert acc["rows"]["baseline"]["ratio_mAP_vs_baseline"] == pytest.approx(1.0)
    for r in acc["rows"].values():
        assert 0.0 <= r["mAP"] <= 1.0
    md = (tmp_path / "RESULTS.md").read_text()
    assert md.startswith("# Benchmark results") and "ratio_ours_over_floor" in md
    assert "| baseline | " in md and "quick pass" in md
    # the reStructuredText version parses without warnings
    docutils_core = pytest.importorskip("docutils.core")
    rst = (tmp_path / "RESULTS.rst").read_text()
    doc = docutils_core.publish_doctree(
        rst, settings_overrides={"report_level": 2, "halt_level": 2})
    assert "ratio_ours_over_floor" in doc.astext()
    # --merge: re-running one section keeps the others, each stamped with its own run
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick",
                        "--merge", "--only", "metrics", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res2 = json.loads((tmp_path / "results.json").read_text())
    assert res2["sections"] == ["metrics", "coco8"]
    assert res2["accuracy"]["coco8"] == res["accuracy"]["coco8"]
    assert res2["benchmarks"]["metrics"]["date"] >= res["benchmarks"]["metrics"]["date"]
    assert len(res2["commands"]) >= 2 and "(quick, " in (tmp_path / "RESULTS.md").read_text()


def test_report_renderers_escape_markup_and_collect_ratios():
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import run_all
    finally:
        sys.path.remove(str(ROOT))
    res = {"date": "d", "git_commit": "c", "machine": {"cpu_count": 2}, "quick": True,
           "commands": ["python x"], "benchmarks": {"b": {
               "status": "ok", "command": "python b.py", "seconds": 1.0,
               "ratios": run_all.collect_ratios({"ratio_a": 2.0, "t_s": 3.0, "x": {
                   "ratio_b_over_c": 0.5, "goal_met": True}, "ratio_nan": float("nan")})}},
           "accuracy": {"t": {"status": "ok", "settings": {"epochs": 1}, "errors": {
               "row_*x|": "ValueError: bad `thing`_"}, "rows": {"a|*b_": {
                   "mAP": 0.5, "CF1": 0.1, "OF1": 0.2, "ratio_mAP_vs_baseline": None,
                   "seconds": 1.0}}}}}
    assert res["benchmarks"]["b"]["ratios"] == {"ratio_a": 2.0, "x.ratio_b_over_c": 0.5,
                                                "x.goal_met": True}
    blocks = run_all.report_blocks(res)
    docutils_core = pytest.importorskip("docutils.core")
    doc = docutils_core.publish_doctree(run_all.render_rst(blocks),
                                        settings_overrides={"report_level": 2, "halt_level": 2})
    text = doc.astext()
    assert "a|*b_" in text and "bad `thing`_" in text and "x.ratio_b_over_c" in text
    assert "| a\\|*b_ | 50.0 | - |" in run_all.render_markdown(blocks)
