"""A training run killed with SIGKILL mid-epoch resumes to exactly the uninterrupted result."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers_features import make_features_npz
from pyg_mlic.cli import main
from pyg_mlic.engine import load_checkpoint
from pyg_mlic.errors import CheckpointError
from pyg_mlic.version import __version__

TIMING = ("eval_time_s", "train_time_s")


def _argv(tmp_path, out, epochs=3, **over):
    opts = {"--lr": "0.01", "--seed": "11", "--batch-size": "32", **over}
    argv = ["train", "--dataset", "features", "--train-file", str(tmp_path / "tr.npz"),
            "--val-file", str(tmp_path / "va.npz"), "--test-file", str(tmp_path / "te.npz"),
            "--model", "baseline", "--set", "encoder_hidden=[32]", "encoder_out=32",
            "dropout=0.2",  # a random layer: its stream must be restored on resume too
            "--epochs", str(epochs), "--optimizer", "adam", "--no-progress", "--out", str(out)]
    for k, v in opts.items():
        argv += [k, v]
    return argv


@pytest.fixture
def files(tmp_path):
    make_features_npz(tmp_path / "tr.npz", n=240, seed=0)
    make_features_npz(tmp_path / "va.npz", n=60, seed=1)
    make_features_npz(tmp_path / "te.npz", n=100, seed=2)
    return tmp_path


def _epoch_of(path):
    try:
        return int(load_checkpoint(path)["epoch"])
    except (FileNotFoundError, CheckpointError):
        return None


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(files):
    tmp = files
    assert main(_argv(tmp, tmp / "full")) == 0
    full = json.loads((tmp / "full" / "metrics.json").read_text())

    crash = tmp / "crash"
    # PYG_MLIC_STEP_SLEEP: the engine's fault-injection hook (sleep after each step), so
    # that an epoch (8 steps) lasts >= 2.4 s and the kill lands inside epoch 2
    env = dict(os.environ, PYG_MLIC_STEP_SLEEP="0.3")
    proc = subprocess.Popen([sys.executable, "-m", "pyg_mlic.cli", *_argv(tmp, crash)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while _epoch_of(crash / "last.pt") != 0:
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert time.time() < deadline, "the first epoch's checkpoint never appeared"
            time.sleep(0.05)
        time.sleep(0.6)  # epoch 2 (index 1) is now a few steps in
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _epoch_of(crash / "last.pt") == 0  # killed before epoch 2 finished
    assert len(json.loads((crash / "history.json").read_text())) == 1
    assert not (crash / "metrics.json").exists()

    assert main(_argv(tmp, crash) + ["--resume"]) == 0
    resumed = json.loads((crash / "metrics.json").read_text())
    for k in set(full) | set(resumed):
        if k not in TIMING:
            assert resumed[k] == full[k], k  # exactly, not approximately
    assert json.loads((crash / "history.json").read_text()) == \
        json.loads((tmp / "full" / "history.json").read_text())


def test_checkpoint_carries_what_resume_and_eval_need(files):
    tmp = files
    assert main(_argv(tmp, tmp / "run", epochs=1)) == 0
    ckpt = load_checkpoint(tmp / "run" / "last.pt")
    assert ckpt["format"] == "pyg_mlic-checkpoint"
    assert ckpt["library_version"] == __version__
    assert ckpt["model_name"] == "baseline"
    assert ckpt["classes"] == [f"class_{i}" for i in range(5)]
    assert ckpt["build_kwargs"]["encoder_hidden"] == [32]
    assert ckpt["train_config"]["seed"] == 11 and ckpt["train_config"]["batch_size"] == 32
    assert ckpt["run_info"]["dataset"] == "features"
    assert ckpt["epoch"] == 0 and "optimizer" in ckpt and "scheduler" in ckpt



def test_resume_with_fewer_epochs_than_trained_warns_and_trains_nothing(files):
    """``--resume --epochs 1`` on a run that trained 2 epochs: a warning says nothing is
    trained, and the checkpoint is evaluated as it is (its weights are not changed)."""
    tmp = files
    assert main(_argv(tmp, tmp / "run", epochs=2)) == 0
    before = load_checkpoint(tmp / "run" / "last.pt")
    with pytest.warns(UserWarning, match=r"trained 2 epochs already, more than epochs=1; "
                                         r"nothing is trained"):
        assert main(_argv(tmp, tmp / "run", epochs=1) + ["--resume"]) == 0
    after = load_checkpoint(tmp / "run" / "last.pt")
    assert after["epoch"] == before["epoch"] == 1
    assert all((after["state_dict"][k] == v).all() for k, v in before["state_dict"].items())
