"""resolve_device: a device name checked once, with a one-line error."""
import pytest
import torch

from pyg_mlic.utils.device import resolve_device


def test_default_and_cpu():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("") == resolve_device(None)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" cpu ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "gpu0"])
def test_unknown_names_are_refused_in_one_line(spec):
    with pytest.raises(ValueError, match=rf"device '{spec}' is not a torch device; use 'cpu'"):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused():
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA is not available on this machine"):
            resolve_device(spec)


def test_train_refuses_a_device_this_machine_lacks(tmp_path):
    from helpers_features import make_features_npz
    from pyg_mlic.cli import main

    tr = make_features_npz(tmp_path / "A.npz", n=60)
    args = ["train", "--dataset", "features", "--train-file", str(tr), "--model", "baseline",
            "--epochs", "1", "--no-progress", "--out", str(tmp_path / "o"), "--device", "tpu"]
    assert main(args) == 2
    assert not (tmp_path / "o" / "last.pt").exists()
