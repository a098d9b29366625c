"""``pyg-mlic train --regions BACKEND``: ROIs from a region backend, cached once per split."""
import json

import pytest

from pyg_mlic.models import list_models
from test_cli import run_cli

REGION_ARGS = ["--dataset", "synthetic", "--num-images", "24", "--image-size", "48",
               "--backbone", "small_cnn", "--regions", "groundtruth",
               "--region-opt", "backbone=small_cnn", "--region-opt", "image_size=48",
               "--max-instances", "6", "--epochs", "1", "--batch-size", "8", "--no-progress"]


@pytest.mark.parametrize("model", ["baseline", "ia_gcn", "gm_mlic"])
def test_train_with_cached_regions(tmp_path, model):
    if model not in list_models():
        pytest.skip(f"{model} is not registered")
    cache = tmp_path / "cache"
    run_cli("train", "--model", model, *REGION_ARGS, "--region-cache", cache,
            "--out", tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= m["mAP"] <= 1.0
    # one cache folder per split under the given root, each complete
    folders = sorted(p.name.split("-")[1] for p in cache.iterdir())
    assert folders == ["test", "train", "val"]
    # a second run reuses the caches (no re-extraction; the same folders)
    before = {p: (p / "index.json").stat().st_mtime_ns for p in cache.iterdir()
              if (p / "index.json").exists()}
    run_cli("train", "--model", model, *REGION_ARGS, "--region-cache", cache,
            "--out", tmp_path / "run2")
    after = {p: (p / "index.json").stat().st_mtime_ns for p in cache.iterdir()
             if (p / "index.json").exists()}
    assert before == after


def test_unknown_region_backend_is_a_clear_error(tmp_path):
    p = run_cli("train", "--model", "baseline", "--dataset", "synthetic", "--num-images", "24",
                "--image-size", "48", "--backbone", "small_cnn", "--regions", "nope",
                "--out", tmp_path / "r", check=False)
    assert p.returncode != 0
    assert "unknown region backend 'nope'" in (p.stdout + p.stderr)


def test_regions_for_a_model_that_reads_none_is_said(tmp_path):
    """``--regions`` with the baseline (which reads no ROI) trains, and says that the
    detection pass only fills the shared ROI cache."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    p = subprocess.run([sys.executable, "-m", "pyg_mlic.cli", "train", "--model", "baseline",
                        *REGION_ARGS, "--region-cache", str(tmp_path / "cache"), "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    assert ("pyg-mlic: warning: baseline reads no regions: --regions groundtruth only builds "
            "the ROI cache (shared with the models that read it: ia_gcn, gm_mlic)") in p.stderr
