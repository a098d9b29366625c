"""benchmarks/bench_partial_labels.py: its quick mode writes the harness's JSON (a valid
``ratios`` block and the mAP table), and run_all renders the table in both reports."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bench():
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import bench_partial_labels as mod
        from benchmarks import run_all
    finally:
        sys.path.remove(str(ROOT))
    return mod, run_all


def test_registered_and_ratios_of_a_table(bench):
    mod, run_all = bench
    assert run_all.SCRIPTS["partial_labels"] == "bench_partial_labels.py"
    r = {"mAP": {"baseline": {"10 %": 0.2, "100 %": 0.4},
                 "ml_gcn": {"10 %": 0.3, "100 %": 0.5}, "a_gcn": {"100 %": 0.45}}}
    rat = mod.ratios(r)
    assert rat["mAP baseline @ 10 % / baseline @ 100 %"]["value"] == pytest.approx(0.5)
    assert rat["mAP ml_gcn @ 10 % / ml_gcn @ 100 %"]["value"] == pytest.approx(0.6)
    assert rat["mAP ml_gcn / baseline @ 10 %"]["value"] == pytest.approx(1.5)
    assert rat["mAP a_gcn / baseline @ 100 %"]["value"] == pytest.approx(1.125)
    assert "mAP a_gcn / baseline @ 10 %" not in rat          # a row that did not run
    run_all.check_ratios(rat)


def test_run_all_renders_a_scripts_table(bench):
    _, run_all = bench
    table = {"title": "test mAP vs known", "header": ["method", "10 %", "100 %"],
             "rows": [["baseline", "20.0", "40.0"], ["ml_gcn", "30.0", "FAILED"]]}
    res = {"date": "d", "git_commit": "c", "machine": {"cpu_count": 2}, "quick": True,
           "commands": ["python x"],
           "benchmarks": {"partial_labels": {"status": "ok", "result": {"tables": [table]},
                                             "ratios": {}}}, "accuracy": {}}
    blocks = run_all.report_blocks(res)
    md = run_all.render_markdown(blocks)
    assert "test mAP vs known:" in md and "| method | 10 % | 100 % |" in md
    assert "| ml_gcn | 30.0 | FAILED |" in md
    docutils_core = pytest.importorskip("docutils.core")
    doc = docutils_core.publish_doctree(run_all.render_rst(blocks),
                                        settings_overrides={"report_level": 2, "halt_level": 2})
    assert "FAILED" in doc.astext() and "baseline" in doc.astext()


@pytest.mark.heavy
def test_quick_mode_writes_the_table_and_ratios(tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_partial_labels.py"),
                        "--quick", "--methods", "baseline", "ml_gcn", "--known", "0.5", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=900,
                       cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["mAP"]) == {"baseline", "ml_gcn"}
    assert set(res["mAP"]["ml_gcn"]) == {"50 %", "100 %"}
    assert res["hidden"]["50 %"]["fraction"] == 0.5 and res["all_rows_ran"] is True
    assert "mAP ml_gcn @ 50 % / ml_gcn @ 100 %" in res["ratios"]
    assert "mAP ml_gcn / baseline @ 50 %" in res["ratios"]
    t = res["tables"][0]
    assert t["header"] == ["method", "50 %", "100 %"] and len(t["rows"]) == 2
