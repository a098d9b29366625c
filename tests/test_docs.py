"""The documentation builds with warnings as errors (what `make docs` runs)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.heavy
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    p = subprocess.run([sys.executable, "-W", "ignore::FutureWarning", "-m", "sphinx", "-W",
                        "--keep-going", "-q", "-b", "html", str(ROOT / "docs"), str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert (tmp_path / "api.html").exists() and (tmp_path / "label_graphs.html").exists()
