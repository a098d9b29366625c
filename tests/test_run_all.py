"""benchmarks/run_all.py: a quick pass over a small subset writes RESULTS.md, RESULTS.rst
and results.json that parse, with the scripts' in-run ``ratios`` blocks; a failing section
is marked in the report and makes the run exit non-zero; the report is written only from
a clean commit and carries no path of the machine it ran on."""
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORT_FILES = ("RESULTS.md", "RESULTS.rst", "results.json")


@pytest.fixture()
def run_all():
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import run_all as mod
    finally:
        sys.path.remove(str(ROOT))
    return mod


def machine_paths(data_dir=None):
    """Absolute paths of this machine that a report must not carry."""
    paths = {str(ROOT), str(ROOT.parent), tempfile.gettempdir(), os.path.expanduser("~"),
             sys.prefix, os.path.dirname(sys.executable)}
    if data_dir is not None:
        paths.add(str(data_dir))
    return {p for p in paths if len(p) > 1}


#: an absolute POSIX path (two components or more) that is not part of a URL, a relative
#: path or a ``$VAR/...`` / ``~/...`` form; written independently of benchmarks/_common.py
ABS_PATH = re.compile(r"(?<![\w.~$/:\\-])/(?:[\w.+@-]+/)+[\w.+@-]*")


def assert_no_machine_paths(text, where, data_dir=None):
    left = ABS_PATH.findall(text)
    assert not left, f"{where} carries absolute paths: {left[:5]}"
    for p in machine_paths(data_dir):
        assert p + "/" not in text and f'"{p}"' not in text and f" {p} " not in text, (where, p)


# ----------------------------------------------------------------------------- fakes
OK_SCRIPT = '''
import argparse, os, sys
from benchmarks._common import ROOT, data_dir, speedup, memory_saving, write_results
ap = argparse.ArgumentParser()
ap.add_argument("--quick", action="store_true")
ap.add_argument("--json")
a = ap.parse_args()
res = {"quick": a.quick, "script": __file__, "src": str(ROOT / "pyg_mlic" / "metrics.py"),
       "data": str(data_dir() / "labels" / "coco2014.npz"), "cwd": os.getcwd(),
       "home": os.path.expanduser("~/weights/x.pth"), "other": "/opt/elsewhere/file.bin",
       "python": sys.executable, "goal_met": True}
print("progress on stdout, then the JSON file")
write_results(res, {"fake_speedup": speedup(2.0, 0.5, "slow path", "fast path"),
                    "fake_memory": memory_saving(30.0, 10.0, "big", "small")}, a.json)
'''
BOOM_SCRIPT = '''
import os
raise RuntimeError(f"boom in {__file__} (cwd {os.getcwd()})")
'''
NO_RATIOS_SCRIPT = '''
import argparse, json
ap = argparse.ArgumentParser()
ap.add_argument("--quick", action="store_true")
ap.add_argument("--json")
a = ap.parse_args()
open(a.json, "w").write(json.dumps({"speed_x": 3.0}))
'''


@pytest.fixture()
def fakes(run_all, tmp_path, monkeypatch):
    """Three injected sections: ``fake_ok`` (a valid ratios block, paths of this machine
    in its numbers), ``fake_boom`` (raises) and ``fake_noratios`` (JSON without a ratios
    block); the git work tree reads clean at commit ``abc...``."""
    sdir = tmp_path / "scripts"
    sdir.mkdir()
    for name, src in (("fake_ok", OK_SCRIPT), ("fake_boom", BOOM_SCRIPT),
                      ("fake_noratios", NO_RATIOS_SCRIPT)):
        (sdir / f"{name}.py").write_text(src)
        monkeypatch.setitem(run_all.SCRIPTS, name, str(sdir / f"{name}.py"))
    monkeypatch.setattr(run_all, "worktree_state", lambda *a, **k: ("abc1234" * 5 + "ab", []))
    return sdir


def _read_report(out):
    return {f: (out / f).read_text() for f in REPORT_FILES}


def test_failed_section_exits_nonzero_and_is_marked(run_all, fakes, tmp_path, capsys):
    out = tmp_path / "report"
    rc = run_all.main(["--quick", "--only", "fake_ok", "fake_boom", "fake_noratios",
                       "--out", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "FAILED sections" in err and "fake_boom" in err and "fake_noratios" in err
    texts = _read_report(out)
    res = json.loads(texts["results.json"])
    assert res["failed"] == ["fake_boom", "fake_noratios"]
    assert res["git_commit"] == "abc1234" * 5 + "ab" and res["worktree"] == "clean"
    b = res["benchmarks"]
    assert b["fake_ok"]["status"] == "ok"
    assert b["fake_ok"]["ratios"]["fake_speedup"] == {
        "value": 4.0, "baseline": "slow path", "candidate": "fast path", "meaning": "x faster"}
    assert b["fake_ok"]["ratios"]["fake_memory"]["meaning"] == "x less memory"
    assert b["fake_ok"]["checks"] == {"goal_met": True}
    assert b["fake_boom"]["status"] == "error" and "RuntimeError: boom" in b["fake_boom"]["error"]
    assert b["fake_noratios"]["status"] == "error"
    assert "no top-level 'ratios' block" in b["fake_noratios"]["error"]
    md = texts["RESULTS.md"]
    assert "FAILED sections (2; run_all.py exits with status 1)" in md
    assert re.search(r"^fake_boom \(quick, [^)]*\): FAILED \(error\)", md, re.M)
    assert re.search(r"^fake_ok \(quick, [^)]*\): ok", md, re.M)
    assert "| fake_speedup | 4 | x faster | fast path | slow path |" in md
    assert "+dirty" not in md and "abc1234abc1234" in md
    # the paths the scripts emitted are gone from every report file (relative forms stay)
    for fname, text in texts.items():
        assert_no_machine_paths(text, fname)
    ok = b["fake_ok"]["result"]
    assert ok["src"] == "pyg_mlic/metrics.py" and ok["data"] == "$PYG_MLIC_DATA/labels/coco2014.npz"
    assert ok["home"] == "~/weights/x.pth" and ok["other"] == "file.bin"
    assert ok["cwd"] == "benchmarks" and ok["python"] == "python"
    assert b["fake_ok"]["command"].startswith("python ")
    assert "--quick --json $TMP/fake_ok.json" in b["fake_ok"]["command"]
    docutils_core = pytest.importorskip("docutils.core")
    doc = docutils_core.publish_doctree(texts["RESULTS.rst"],
                                        settings_overrides={"report_level": 2, "halt_level": 2})
    assert "FAILED" in doc.astext() and "fake_speedup" in doc.astext()
    # re-rendering the same results exits non-zero too: the report still holds the failures
    assert run_all.main(["--from-json", str(out / "results.json"), "--out",
                         str(tmp_path / "again")]) == 1
    assert (tmp_path / "again" / "RESULTS.md").read_text() == md


def test_all_sections_ok_exits_zero(run_all, fakes, tmp_path):
    out = tmp_path / "report"
    assert run_all.main(["--only", "fake_ok", "--out", str(out)]) == 0
    md = (out / "RESULTS.md").read_text()
    assert "All 1 sections ran without a failure." in md and "FAILED" not in md


def test_dirty_tree_refuses_to_write_the_report(run_all, fakes, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_all, "worktree_state",
                        lambda *a, **k: ("f" * 40, [" M pyg_mlic/metrics.py"]))
    committed = {f: (run_all.HERE / f).read_bytes() for f in REPORT_FILES
                 if (run_all.HERE / f).is_file()}
    out = tmp_path / "report"
    # no --allow-dirty: refused before anything runs, nothing written anywhere
    assert run_all.main(["--only", "fake_ok", "--out", str(out)]) == 1
    cap = capsys.readouterr()
    lines = [line for line in cap.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "refusing to write the report" in lines[0]
    assert "pyg_mlic/metrics.py" in lines[0] and "--allow-dirty" in lines[0]
    assert "== fake_ok" not in cap.out and not out.exists()
    # --allow-dirty never writes the committed benchmarks/RESULTS.*
    assert run_all.main(["--allow-dirty", "--only", "fake_ok"]) == 1
    assert "refusing to write the committed report" in capsys.readouterr().err
    assert run_all.main(["--allow-dirty", "--only", "fake_ok", "--out",
                         str(run_all.HERE)]) == 1
    src = tmp_path / "r.json"
    src.write_text(json.dumps({"date": "d", "git_commit": "c", "machine": {}, "quick": True,
                               "commands": [], "benchmarks": {}, "accuracy": {}}))
    assert run_all.main(["--from-json", str(src)]) == 1
    assert run_all.main(["--from-json", str(src), "--allow-dirty"]) == 1
    assert {f: (run_all.HERE / f).read_bytes() for f in committed} == committed
    # --allow-dirty elsewhere: a scratch report, stamped with the commit and the state
    assert run_all.main(["--allow-dirty", "--only", "fake_ok", "--out", str(out)]) == 0
    md = (out / "RESULTS.md").read_text()
    assert "f" * 40 in md and "+dirty" not in md and "uncommitted changes" in md
    # the tree turning dirty mid-run (or HEAD moving) stops the writes
    with pytest.raises(run_all.ReportRefused, match="HEAD moved"):
        run_all.write_report({}, out, True, {"git_commit": "0" * 40})


def test_worktree_state_reads_a_real_git_tree(run_all, tmp_path):
    def git(*a):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *a], cwd=tmp_path,
                       check=True, capture_output=True)

    try:
        git("init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not available")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "RESULTS.md").write_text("old\n")
    git("add", "code.py", "RESULTS.md")
    git("commit", "-q", "-m", "init")
    head, changes = run_all.worktree_state(tmp_path)
    assert len(head) == 40 and changes == []
    (tmp_path / "untracked.txt").write_text("ignored: not tracked\n")
    (tmp_path / "RESULTS.md").write_text("new report\n")
    assert run_all.worktree_state(tmp_path, ignore=[tmp_path / "RESULTS.md"])[1] == []
    (tmp_path / "code.py").write_text("x = 2\n")
    assert run_all.worktree_state(tmp_path, ignore=[tmp_path / "RESULTS.md"])[1] == [
        " M code.py"]
    assert run_all.worktree_state(tmp_path.parent / "no-such-dir") == (None, None)


def test_committed_report_carries_no_machine_paths(data_dir):
    for f in REPORT_FILES:
        p = ROOT / "benchmarks" / f
        if p.is_file():
            assert_no_machine_paths(p.read_text(), f"benchmarks/{f}", data_dir)


def test_every_script_writes_its_json_through_the_common_writer(run_all):
    for name in [*run_all.SCRIPTS.values(), "bench_gm_mlic.py"]:
        src = (run_all.HERE / name).read_text()
        assert "write_results(" in src and "def ratios(" in src, name
        assert "json.dump(r" not in src and "json.dumps(res, indent" not in src, name


def test_common_writer_checks_the_ratios_block(tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import _common as c
    finally:
        sys.path.remove(str(ROOT))
    out = c.write_results({"t_s": 1.0, "path": str(ROOT / "x" / "y.npz")},
                          {"a": c.time_ratio(1.0, 4.0, "ref", "ours")}, tmp_path / "r.json")
    assert list(out) == ["ratios", "t_s", "path"] and out["path"] == "x/y.npz"
    assert json.loads((tmp_path / "r.json").read_text()) == out
    assert out["ratios"]["a"]["value"] == 0.25
    for bad in ({"a": 1.5}, {"a": c.ratio(float("nan"), "b", "c", "x faster")},
                {"a": {"value": 1.0, "baseline": "", "candidate": "c", "meaning": "m"}}):
        with pytest.raises(ValueError, match="bad ratios block"):
            c.write_results({}, bad)


@pytest.mark.heavy
def test_run_all_quick_subset_writes_parsable_reports(tmp_path, data_dir):
    if not (data_dir / "images" / "coco8" / "instances_train.json").is_file():
        pytest.skip(f"coco8 not found under {data_dir}")
    # --allow-dirty: the report goes to tmp_path, the tree may have uncommitted changes
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick",
                        "--allow-dirty", "--only", "metrics", "coco8", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYG_MLIC_DATA": str(data_dir)})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["quick"] is True and res["sections"] == ["metrics", "coco8"]
    assert res["machine"]["cpu_count"] >= 1 and res["git_commit"] and res["date"]
    assert "+dirty" not in res["git_commit"] and res["failed"] == []
    assert any("run_all.py" in c for c in res["commands"])
    m = res["benchmarks"]["metrics"]
    assert m["status"] == "ok", m.get("error")
    assert "bench_metrics.py --quick" in m["command"]
    r = m["ratios"]["ratio_ours_over_floor"]
    assert r["value"] > 0 and "floor" in r["baseline"] and r["meaning"]
    assert m["ratios"]["ratio_sklearn_over_ours"]["meaning"] == "x faster"
    assert m["result"]["ratios"] == m["ratios"]
    assert m["checks"]["both_sort_paths_identical"] is True
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
    for f in REPORT_FILES:
        assert_no_machine_paths((tmp_path / f).read_text(), f, data_dir)
    # the reStructuredText version parses without warnings
    docutils_core = pytest.importorskip("docutils.core")
    rst = (tmp_path / "RESULTS.rst").read_text()
    doc = docutils_core.publish_doctree(
        rst, settings_overrides={"report_level": 2, "halt_level": 2})
    assert "ratio_ours_over_floor" in doc.astext()
    # --merge: re-running one section keeps the others, each stamped with its own run
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick",
                        "--allow-dirty", "--merge", "--only", "metrics", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res2 = json.loads((tmp_path / "results.json").read_text())
    assert res2["sections"] == ["metrics", "coco8"]
    assert res2["accuracy"]["coco8"] == res["accuracy"]["coco8"]
    assert res2["benchmarks"]["metrics"]["date"] >= res["benchmarks"]["metrics"]["date"]
    assert len(res2["commands"]) >= 2 and "(quick, " in (tmp_path / "RESULTS.md").read_text()


def test_report_renderers_escape_markup_and_collect_checks(run_all):
    from benchmarks._common import speedup

    res = {"date": "d", "git_commit": "c", "machine": {"cpu_count": 2}, "quick": True,
           "commands": ["python x"], "benchmarks": {"b": {
               "status": "ok", "command": "python b.py", "seconds": 1.0,
               "ratios": {"x.ratio_b_over_c": speedup(1.0, 2.0, "slow `a`", "fast_*b*")},
               "checks": run_all.collect_checks({"ratio_a": 2.0, "t_s": 3.0, "x": {
                   "ratio_b_over_c": 0.5, "goal_met": True}, "ratios": {"z": True}})},
               "legacy": {"status": "ok", "ratios": {"ratio_old": 1.5, "ok": True}}},
           "accuracy": {"t": {"status": "partial", "settings": {"epochs": 1}, "errors": {
               "row_*x|": "ValueError: bad `thing`_"}, "rows": {"a|*b_": {
                   "mAP": 0.5, "CF1": 0.1, "OF1": 0.2, "ratio_mAP_vs_baseline": None,
                   "seconds": 1.0}}}}}
    assert res["benchmarks"]["b"]["checks"] == {"x.goal_met": True}
    assert run_all.failed_sections(res) == {"t": "partial: 1 failed row(s): row_*x|"}
    blocks = run_all.report_blocks(res)
    docutils_core = pytest.importorskip("docutils.core")
    doc = docutils_core.publish_doctree(run_all.render_rst(blocks),
                                        settings_overrides={"report_level": 2, "halt_level": 2})
    text = doc.astext()
    assert "a|*b_" in text and "bad `thing`_" in text and "x.ratio_b_over_c" in text
    assert "fast_*b*" in text and "ratio_old" in text
    md = run_all.render_markdown(blocks)
    assert "| a\\|*b_ | 50.0 | - |" in md and "| ratio_old | 1.5 |" in md
    assert "t: FAILED (partial: 1 failed row(s)" in md
