"""Execute every notebook in notebooks/ (stored without outputs) with nbclient.

The kernel is this interpreter (a kernelspec written to a temporary JUPYTER_PATH),
so the notebooks run against the installed pyg_mlic, never another Python.
"""
import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    d = tmp_path_factory.mktemp("jupyter")
    spec = d / "kernels" / "pyg_mlic_test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pyg_mlic test", "language": "python"}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(d) + (os.pathsep + old if old else "")
    yield "pyg_mlic_test"
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


def test_notebooks_are_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    assert NOTEBOOKS, "no notebooks found"
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells)
                 if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
        assert not dirty, f"{p.name}: cells {dirty} carry outputs; clear them before committing"


@pytest.mark.heavy
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, kernel_env, data_dir, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("PYG_MLIC_DATA", str(data_dir))
    t0 = time.time()
    nbclient.NotebookClient(nb, timeout=300, kernel_name=kernel_env,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    elapsed = time.time() - t0
    assert elapsed < 240, f"{path.name} took {elapsed:.0f} s (budget: 2 min on an idle machine)"
