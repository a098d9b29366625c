"""Multi-process (DDP) training: a real two-process gloo run equals one process."""
import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_features import make_features_npz
from pyg_mlic.cli import build_parser, main
from pyg_mlic.engine import load_checkpoint
from pyg_mlic.engine.distributed import (DistributedBatchNorm, DistributedEpochSampler,
                                         all_gather_rows, broadcast_state,
                                         convert_sync_batchnorm, gather_predictions,
                                         namespace_to_argv, state_digest)
from pyg_mlic.engine.trainer import EpochShuffleSampler

# metrics that depend on the run's wall clock, not on what was learned
TIMING = ("eval_time_s", "train_time_s")


def _train_argv(tmp_path, out, epochs=2, batch=32):
    return ["train", "--dataset", "features", "--train-file", str(tmp_path / "tr.npz"),
            "--val-file", str(tmp_path / "va.npz"), "--test-file", str(tmp_path / "te.npz"),
            # no dropout (the features recipe's default): each rank draws its own noise
            "--model", "baseline", "--set", "encoder_hidden=[32]", "encoder_out=32",
            "encoder_dropout=0", "input_dropout=0",
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


def test_state_digest_of_batchnorm_and_every_dtype():
    """BatchNorm's ``num_batches_tracked`` is a 0-d int64 buffer: the digest used to fail on
    it (``view(torch.uint8)`` of a 0-d tensor); every dtype and rank must hash by value."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.BatchNorm1d(4))
    sd = net.state_dict()
    assert sd["1.num_batches_tracked"].dim() == 0
    d = state_digest(sd)
    assert d == state_digest({k: v.clone() for k, v in sd.items()})
    bumped = dict(sd, **{"1.num_batches_tracked": torch.tensor(1)})
    assert state_digest(bumped) != d
    values = [torch.tensor(True), torch.tensor(3, dtype=torch.int32), torch.tensor(1.5),
              torch.tensor(0.5, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.float16),
              torch.tensor([1 + 2j]), torch.zeros(0, 3, dtype=torch.int64),
              torch.eye(2).to_sparse(), np.array(["a", "b"], dtype=object), np.float32(2)]
    digests = {state_digest(v) for v in values}
    assert len(digests) == len(values)
    assert state_digest(torch.tensor(False)) != state_digest(torch.tensor(True))
    assert state_digest(torch.eye(2).to_sparse()) == state_digest(torch.eye(2))
    # object arrays by value (their bytes are pointers, different in every process)
    built = "".join(["x", "y"])  # another str object than the literal
    assert state_digest(np.array(["xy", 1], dtype=object)) == state_digest(
        np.array([built, 1], dtype=object))


def test_sync_batchnorm_conversion_in_one_process():
    """convert_sync_batchnorm keeps the Parameter objects, buffers, state-dict keys and
    training modes; without a process group the layer *is* BatchNorm (no communication)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4),
                              torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(16)),
                              torch.nn.BatchNorm2d(2).eval())  # a frozen layer stays frozen
    ref = copy.deepcopy(net)
    weight, mean = net[1].weight, net[1].running_mean
    keys = list(net.state_dict())
    conv = convert_sync_batchnorm(net, device="cpu")
    assert conv is net and conv[1].weight is weight and conv[1].running_mean is mean
    assert isinstance(conv[1], DistributedBatchNorm) and isinstance(conv[2][1],
                                                                    DistributedBatchNorm)
    assert not conv[3].training and list(conv.state_dict()) == keys
    x = torch.randn(5, 3, 2, 2)
    torch.testing.assert_close(conv[:3](x), ref[:3](x), rtol=0, atol=0)
    assert int(conv[1].num_batches_tracked) == 1
    for a, b in zip(conv.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="expected 4D input"):
        conv[1](torch.randn(5, 4))
    # torch's SyncBatchNorm is CUDA-only (inputs, batch_norm_stats, DDP's check); it is
    # what "auto" picks on CUDA, and what "pyg_mlic" replaces anywhere
    t = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(2)), device="cuda")
    assert type(t[0]) is torch.nn.SyncBatchNorm
    assert isinstance(convert_sync_batchnorm(t, impl="pyg_mlic")[0], DistributedBatchNorm)
    # one process: the collectives are no-ops / identities
    broadcast_state(conv)
    assert all_gather_rows(torch.ones(2, 3, dtype=torch.bool))[0].dtype == torch.bool
    with pytest.raises(ValueError, match="0-d"):
        all_gather_rows(torch.tensor(1))


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


# --------------------------------------------------------------------------- BatchNorm models
WORKER = Path(__file__).with_name("ddp_worker.py")
#: training cases of ddp_worker.py compared with one process (sync_bn=True)
SYNC_CASES = ("baseline_sync_bn", "ia_gcn_sync_bn", "gm_mlic_sync_bn", "gm_mlic_regions_sync_bn")


@pytest.fixture(scope="module")
def two_process_bn_runs(tmp_path_factory):
    """One real two-process torchrun (gloo, CPU) job of ``ddp_worker.py``: the synchronised
    BatchNorm layer checks, the BatchNorm image and region models with and without
    sync_bn, and ``pyg-mlic train`` of the BatchNorm baseline (the reported crash)."""
    out = tmp_path_factory.mktemp("ddp_bn")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cases = ["bn_layer", *SYNC_CASES, "baseline_no_sync_bn", "cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(out), ",".join(cases)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def one_process_bn_runs(tmp_path_factory):
    """The same training cases in this process (no process group: world size 1)."""
    sys.path.insert(0, str(WORKER.parent))
    import ddp_worker

    out = tmp_path_factory.mktemp("one_bn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same kernels' summation order
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tiny splits: classes without positives
            for case in SYNC_CASES:
                ddp_worker.run_case(case, out / case)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.heavy
def test_sync_batchnorm_layer_equals_batchnorm_of_the_global_batch(two_process_bn_runs):
    """DistributedBatchNorm on each rank's rows == BatchNorm on all rows: outputs, input
    and parameter gradients, running statistics (two steps), eval outputs, including
    unequal rows per rank, ``momentum=None``, no affine, no running statistics. The
    worker asserts each to 1e-5; here the largest differences, fp32 rounding, are kept."""
    errs = json.loads((two_process_bn_runs / "bn_layer.json").read_text())
    assert len(errs) >= 30
    assert max(errs.values()) < 1e-5, errs


@pytest.mark.heavy
@pytest.mark.parametrize("case", SYNC_CASES)
def test_two_process_sync_bn_equals_one_process(two_process_bn_runs, one_process_bn_runs,
                                               case):
    """BatchNorm models (small_cnn: baseline; IA-GCN on ground-truth RegionDataset ROIs;
    GM-MLIC with RoIAlign ROIs of its own backbone) trained by two processes with
    ``sync_bn=True`` equal one process with the same global batch.

    The conditions of exact equality hold: 32 training images (divisible by the ranks and
    by the batch 16), no augmentation, no random layer (IA-GCN without its variational
    ROI weighting), no label mask, and BatchNorm statistics over the global batch. What
    remains is fp32 rounding (sums in another order): measured at most 2e-7 on any weight or
    buffer after 4 SGD steps and identical metrics; the tolerances (1e-5 on the weights,
    1e-4 on each metric) sit far below what per-rank BatchNorm statistics give (about 3e-2
    on the running means and 3e-3 on the metrics, see the next test).
    """
    one, two = one_process_bn_runs / case, two_process_bn_runs / case
    ranks = json.loads((two / "ranks.json").read_text())
    assert ranks["bn_kinds"] == ["DistributedBatchNorm"]
    assert ranks["params"][0] == ranks["params"][1]
    assert ranks["buffers"][0] == ranks["buffers"][1]  # running statistics too
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert (m1["settings"]["world_size"], m2["settings"]["world_size"]) == (1, 2)
    assert m2["settings"]["train_config"]["sync_bn"] is True
    for k, v in m1.items():
        if isinstance(v, float) and k not in TIMING:
            assert m2[k] == pytest.approx(v, abs=1e-4), k
    h1 = json.loads((one / "history.json").read_text())
    h2 = json.loads((two / "history.json").read_text())
    assert len(h1) == len(h2) == 2
    for a, b in zip(h1, h2):
        assert b["train_cls"] == pytest.approx(a["train_cls"], rel=1e-5)
        assert b["val_mAP"] == pytest.approx(a["val_mAP"], abs=1e-4)
    w1 = load_checkpoint(one / "last.pt")["state_dict"]
    w2 = load_checkpoint(two / "last.pt")["state_dict"]
    assert list(w2) == list(w1)  # the state dict of plain BatchNorm
    for k in w1:
        if w1[k].dtype.is_floating_point:
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-5, msg=k)
        else:  # num_batches_tracked, label-graph indices
            assert torch.equal(w2[k], w1[k]), k


@pytest.mark.heavy
def test_two_process_without_sync_bn_runs_and_ranks_agree(two_process_bn_runs,
                                                          one_process_bn_runs):
    """sync_bn=False on the CPU: plain BatchNorm with per-rank statistics. Training runs,
    the ranks hold the same weights, and the result differs from one process by far more
    than the tolerances above (so those tests do measure the synchronisation)."""
    two = two_process_bn_runs / "baseline_no_sync_bn"
    ranks = json.loads((two / "ranks.json").read_text())
    assert ranks["bn_kinds"] == ["BatchNorm2d"]
    assert ranks["params"][0] == ranks["params"][1]
    # rank 0's BatchNorm statistics are broadcast after every epoch: every rank evaluates
    # and checkpoints the same model
    assert ranks["buffers"][0] == ranks["buffers"][1]
    w1 = load_checkpoint(one_process_bn_runs / "baseline_sync_bn" / "last.pt")["state_dict"]
    w2 = load_checkpoint(two / "last.pt")["state_dict"]
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1 if k.endswith("running_mean"))
    assert worst > 1e-3


@pytest.mark.heavy
def test_torchrun_cli_train_image_model_with_batchnorm(two_process_bn_runs):
    """The reported crash: ``pyg-mlic train --model baseline --backbone small_cnn`` under a
    two-process torchrun failed in the rank-agreement digest on ``num_batches_tracked``."""
    m = json.loads((two_process_bn_runs / "cli" / "metrics.json").read_text())
    assert m["settings"]["world_size"] == 2 and m["settings"]["train_config"]["sync_bn"] is False
    assert 0.0 <= m["mAP"] <= 1.0
    assert (two_process_bn_runs / "cli" / "last.pt").exists()
