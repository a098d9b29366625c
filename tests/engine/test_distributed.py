"""Multi-process (DDP) training: a real two-process gloo run equals one process."""
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers_features import make_features_npz
from pyg_mlic.cli import build_parser, main
from pyg_mlic.engine import load_checkpoint
from pyg_mlic.engine.distributed import (DistributedEpochSampler, gather_predictions,
                                         namespace_to_argv, state_digest)
from pyg_mlic.engine.trainer import EpochShuffleSampler

# metrics that depend on the run's wall clock, not on what was learned
TIMING = ("eval_time_s", "train_time_s")


def _train_argv(tmp_path, out, epochs=2, batch=32):
    return ["train", "--dataset", "features", "--train-file", str(tmp_path / "tr.npz"),
            "--val-file", str(tmp_path / "va.npz"), "--test-file", str(tmp_path / "te.npz"),
            "--model", "baseline", "--set", "encoder_hidden=[32]", "encoder_out=32",
            "--epochs", str(epochs), "--batch-size", str(batch), "--optimizer", "adam",
            "--lr", "0.01", "--seed", "7", "--no-progress", "--out", str(out)]


@pytest.fixture
def feature_files(tmp_path):
    make_features_npz(tmp_path / "tr.npz", n=240, seed=0)
    # odd sizes: the evaluation sampler pads rank 1 with a repeated sample, which the
    # gather must drop (otherwise the 2-process metrics would differ)
    make_features_npz(tmp_path / "va.npz", n=61, seed=1)
    make_features_npz(tmp_path / "te.npz", n=121, seed=2)
    return tmp_path


@pytest.mark.parametrize("n,world", [(240, 2), (121, 2), (10, 3), (7, 4)])
def test_distributed_sampler_shards_are_the_global_batches(n, world):
    """Step k of all ranks together (per-rank batch b) = step k of one process (batch W*b)."""
    b = 4
    for epoch in (0, 5):
        ref = EpochShuffleSampler(n, seed=3)
        ref.set_epoch(epoch)
        one = list(ref)
        shards = []
        for r in range(world):
            s = DistributedEpochSampler(range(n), world, r, shuffle=True, seed=3)
            s.set_epoch(epoch)
            shards.append(list(s))
        assert len({len(x) for x in shards}) == 1  # equal shards: no rank waits forever
        padded = [shards[k % world][k // world] for k in range(world * len(shards[0]))]
        assert padded[:n] == one  # rank-interleaved = the one-process permutation
        steps = (n + world * b - 1) // (world * b)
        for k in range(steps):
            union = sorted(sum((x[k * b:(k + 1) * b] for x in shards), []))
            assert union == sorted(padded[k * world * b:(k + 1) * world * b])


def test_gather_predictions_single_process_drops_repeats():
    """Without a process group the gather is the identity, after dropping the sampler's
    repeats and restoring dataset order."""
    idx = [2, 0, 1, 2]  # sample 2 repeated (padding)
    logits = torch.tensor([[2.0], [0.0], [1.0], [2.0]])
    pred = {"logits": logits, "target": logits > 0.5, "mask": torch.ones(4, 1, dtype=torch.bool)}
    out = gather_predictions(pred, idx, 3)
    assert out["logits"].flatten().tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(RuntimeError, match="distinct samples"):
        gather_predictions(pred, idx, 4)


def test_nproc_command_line_round_trips(tmp_path):
    """``--nproc N`` re-runs the command from the parsed arguments: they must round-trip."""
    parser = build_parser()
    args = parser.parse_args(_train_argv(tmp_path, tmp_path / "o") + [
        "--nproc", "2", "--resume", "--region-opt", "a=1", "--region-opt", "b=2"])
    argv = namespace_to_argv(args._train_parser, args, skip=("nproc",))
    assert "--nproc" not in argv
    again = args._train_parser.parse_args(argv)
    for k, v in vars(again).items():
        if k not in ("nproc", "func") and not k.startswith("_"):
            assert getattr(args, k) == v, k


def test_state_digest_sees_every_tensor_bit():
    a = {"w": torch.zeros(3), "classes": ["x", "y"]}
    b = {"w": torch.tensor([0.0, -0.0, 0.0]), "classes": ["x", "y"]}
    assert state_digest(a) == state_digest({"classes": ["x", "y"], "w": torch.zeros(3)})
    assert state_digest(a) != state_digest(b)  # -0.0 differs in its bits
    assert state_digest(a) != state_digest({**a, "classes": ["y", "x"]})


def test_two_process_run_matches_one_process(feature_files, capsys):
    """A real two-process (torchrun, gloo, CPU) training run.

    Same data, same seed, same *global* batch (32 = 2 ranks x 16) as the one-process
    run. Every optimisation step sees the same 32 samples; the only difference is the
    order of the floating-point additions: the gradient is the mean of two per-rank
    means (gloo all-reduce) instead of one mean over 32 rows, which changes the weights
    in the last bits (about 1e-7 relative per step). The tolerances below (1e-5 on the
    weights, 1e-3 on each metric) allow that rounding and nothing more: a missed
    gradient sync, a wrong shard or an un-dropped padding sample moves the weights by
    1e-3 or more and the metrics by around 1e-2.
    """
    tmp = feature_files
    assert main(_train_argv(tmp, tmp / "one")) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    # `pyg-mlic train --nproc 2` re-runs the command under `python -m torch.distributed.run
    # --standalone --nproc_per_node=2` (torchrun): both entry points are exercised
    cmd = [sys.executable, "-m", "pyg_mlic.cli", *_train_argv(tmp, tmp / "two"), "--nproc", "2"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1  # only rank 0 reports (and writes)
    one = json.loads((tmp / "one" / "metrics.json").read_text())
    two = json.loads((tmp / "two" / "metrics.json").read_text())
    assert two["settings"]["world_size"] == 2 and one["settings"]["world_size"] == 1
    assert two["settings"]["num_test"] == 121
    for k, v in one.items():
        if isinstance(v, float) and k not in TIMING:
            assert two[k] == pytest.approx(v, abs=1e-3), k
    assert two["AP"] == pytest.approx(one["AP"], abs=1e-3)
    h1 = json.loads((tmp / "one" / "history.json").read_text())
    h2 = json.loads((tmp / "two" / "history.json").read_text())
    for a, b in zip(h1, h2):  # per-epoch loss over all ranks' samples, validation mAP
        assert b["train_cls"] == pytest.approx(a["train_cls"], rel=1e-5)
        assert b["val_mAP"] == pytest.approx(a["val_mAP"], abs=1e-3)
    w1 = load_checkpoint(tmp / "one" / "last.pt")["state_dict"]
    w2 = load_checkpoint(tmp / "two" / "last.pt")["state_dict"]
    assert list(w2) == list(w1)  # rank 0 saved the plain model, not the DDP wrapper
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-5)


def test_unused_parameter_probe_finds_them_and_restores_everything(tmp_path):
    """DDP's find_unused_parameters is switched on by probing one step; the probe must
    leave weights, buffers, gradients and random streams exactly as it found them."""
    from pyg_mlic.data.features import FeaturesDataset
    from pyg_mlic.engine import TrainConfig, Trainer, make_loader
    from pyg_mlic.models import build_model

    ds = FeaturesDataset(make_features_npz(tmp_path / "tr.npz", n=40), split="train")
    model = build_model("baseline", classes=ds.classes, input_kind="features",
                        in_features=ds.feature_dim, encoder_hidden=[8], encoder_out=8,
                        dropout=0.5)
    model.unused_branch = torch.nn.Linear(3, 3)  # e.g. an ablation switch turned off
    trainer = Trainer(model, ds, None, ds, TrainConfig(epochs=1, batch_size=8, progress=False))
    trainer.optimizer, trainer.scheduler = trainer._build_optim()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    unused = trainer._probe_unused_parameters(make_loader(ds, 8, train=True))
    assert unused == ["unused_branch.weight", "unused_branch.bias"]
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    del model.unused_branch
    assert trainer._probe_unused_parameters(make_loader(ds, 8, train=True)) == []
