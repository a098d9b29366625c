"""The papers' numbers quoted in docs/methods/*.rst are the papers' (read from the paper
texts in shared/papers), and the commands shown there use options the CLI has."""
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "methods"


def list_table_rows(rst: str):
    """``{first cell: [float cells]}`` of every list-table in ``rst``."""
    rows, cur = {}, None
    for line in rst.splitlines():
        if line.startswith("   * - "):
            cur = line[7:].strip()
            rows[cur] = []
        elif line.startswith("     - ") and cur is not None:
            try:
                rows[cur].append(float(line[7:]))
            except ValueError:
                pass
        elif not line.strip():
            continue
        else:
            cur = None
    return {k: v for k, v in rows.items() if v}


def _papers(data_dir) -> Path:
    p = data_dir.parent / "papers"
    if not p.is_dir():
        pytest.skip(f"paper texts not found at {p}")
    return p


def test_ml_gcn_tables_are_the_papers(data_dir):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import reproduce as reproduce_mlgcn
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    paper = next(_papers(data_dir).glob("000_*.txt"))
    parsed = reproduce_mlgcn.parse_paper_tables(paper)
    text = (DOCS / "ml_gcn.rst").read_text()
    rows = list_table_rows(text)
    coco_part, voc_part = text.split("Table 2")[0], text.split("Table 2")[1]
    coco, voc = list_table_rows(coco_part), list_table_rows(voc_part)
    assert coco == parsed["coco"] and voc == parsed["voc"]
    assert coco["ML-GCN (Re-weighted)"][0] == 83.0 and voc["ML-GCN (Re-weighted)"][-1] == 94.0
    assert len(rows) == 3  # the same three row names in both tables


def test_a_gcn_table_is_the_papers(data_dir):
    paper = next(_papers(data_dir).glob("002_*.txt")).read_text()
    rows = list_table_rows((DOCS / "a_gcn.rst").read_text())
    names = {"Our baseline (ResNet101)": "Our baseline (ResNet101)", "A-GCN": "A-GCN",
             "A-GCN (w/o L_A)": "A-GCN (w/o $L_A$ )", "Cos-A (w L_A)": "Cos-A (w $L_A$ )",
             "FC-A (w L_A)": "FC-A (w $L_A$ )", "Dot-A (w L_A)": "Dot-A (w $L_A$ )",
             "ML-GCN (Re-weighted), their re-implementation": "ML-GCN (Re-weighted)*"}
    assert set(rows) == set(names)
    for ours, theirs in names.items():
        line = next(l for l in paper.splitlines() if l.startswith(theirs + "\t"))
        vals = [float(v) for v in re.sub(r"</?b>", "", line[len(theirs):]).split()]
        assert rows[ours] == vals, ours
    assert rows["A-GCN"][0] == 83.1


def test_documented_commands_use_existing_cli_options():
    from pyg_mlic.cli import build_parser

    parser = build_parser()
    n = 0
    for page in ("ml_gcn.rst", "a_gcn.rst", "../datasets.rst", "../extending.rst"):
        text = (DOCS / page).read_text()
        for cmd in re.findall(r"^   (pyg-mlic .+?(?:\\\n.+?)*)$", text, flags=re.M):
            argv = shlex.split(cmd.replace("\\\n", " "))[1:]
            args = parser.parse_args(argv)  # SystemExit on an unknown option or a bad choice
            assert args.func is not None
            n += 1
    assert n >= 10
