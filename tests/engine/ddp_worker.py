"""Worker of the multi-process tests in ``test_distributed.py`` (not collected by pytest).

Started as ``torchrun --standalone --nproc_per_node=2 ddp_worker.py OUT CASE[,CASE...]``
(every rank joins a gloo group on the CPU), or imported by the test for the
one-process reference runs (:func:`run_case` without a process group). Cases:

``bn_layer``
    :class:`~pyg_mlic.engine.distributed.DistributedBatchNorm` on each rank's part of a
    batch against :class:`torch.nn.BatchNorm2d` / ``1d`` on the whole batch (outputs,
    input and parameter gradients, running statistics, ``momentum=None``, no affine, no
    running statistics, uneven per-rank counts, eval mode), plus
    :func:`~pyg_mlic.engine.distributed.broadcast_state` and ``all_gather_rows`` on
    0-d / int / bool / bfloat16 tensors. Every rank asserts; rank 0 writes
    ``OUT/bn_layer.json`` with the largest differences.
``cli``
    ``pyg-mlic train`` of the baseline with small_cnn (BatchNorm, no ``--sync-bn``) in
    the same job (last: the command leaves the process group).
any name of :data:`CASES`
    a tiny :class:`~pyg_mlic.engine.Trainer` run (checkpoint, ``metrics.json``,
    ``history.json`` in ``OUT/CASE``, written by rank 0) and ``OUT/CASE/ranks.json``:
    a digest of every rank's final parameters and buffers.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, Dict

import torch

from pyg_mlic.engine import distributed as D

IMAGE_SIZE = 32
NUM_IMAGES = 32  # train 32 (divisible by the 2 ranks and the batch), val 8, test 16
BATCH = 16       # global batch: 8 per rank


def _train_config(sync_bn: bool):
    from pyg_mlic.engine import TrainConfig

    return TrainConfig(epochs=2, batch_size=BATCH, optimizer="sgd", lr=0.05, momentum=0.9,
                       weight_decay=1e-4, lr_step=None, seed=3, device="cpu", progress=False,
                       sync_bn=sync_bn)


def _scenes():
    """Synthetic scenes with the deterministic test transform (no crop / flip)."""
    from pyg_mlic.data.factory import build_splits

    return build_splits("synthetic", image_size=IMAGE_SIZE, num_images=NUM_IMAGES, seed=0,
                        augment=False)


def _baseline(root: Path):
    from pyg_mlic.engine import seed_everything
    from pyg_mlic.models import build_model

    train, val, test = _scenes()
    seed_everything(3)
    model = build_model("baseline", classes=list(train.classes), input_kind="image",
                        train_labels=train.labels, backbone="small_cnn")
    return model, train, val, test


def _ia_gcn(root: Path):
    """IA-GCN on ground-truth regions of the scenes (RoIAlign on a frozen small_cnn, a
    :class:`~pyg_mlic.detection.RegionDataset`); the global features come from the model's
    own small_cnn, whose BatchNorm layers train. ``var_inf=False``: the variational ROI
    weighting samples noise, which differs between ranks by design."""
    from pyg_mlic.detection import GroundTruthRegionExtractor, RegionDataset
    from pyg_mlic.engine import seed_everything
    from pyg_mlic.models import build_model

    ex = GroundTruthRegionExtractor("small_cnn", image_size=IMAGE_SIZE, max_instances=6,
                                    seed=0)
    train, val, test = (RegionDataset(ds, ex, root=root / "roi_cache", progress=False)
                        for ds in _scenes())
    seed_everything(3)
    model = build_model("ia_gcn", classes=list(train.classes), input_kind="image",
                        train_labels=train.labels, backbone="small_cnn",
                        roi_feature_dim=train.roi_feature_dim, gcn_hidden=[16],
                        region_hidden=[16, 16], var_inf=False)
    return model, train, val, test


def _gm_mlic(root: Path):
    """GM-MLIC with ROIs pooled (RoIAlign) from its own small_cnn's feature map at the
    annotated boxes (``rois="boxes"``): the BatchNorm layers are on the loss's path."""
    from pyg_mlic.engine import seed_everything
    from pyg_mlic.models import build_model

    train, val, test = _scenes()
    seed_everything(3)
    model = build_model("gm_mlic", classes=list(train.classes), input_kind="image",
                        train_labels=train.labels, backbone="small_cnn", rois="boxes",
                        roi_output_size=2, encoder_channels=16, conv_channels=[16, 8], k=3)
    return model, train, val, test


def _gm_mlic_regions(root: Path):
    """GM-MLIC on ground-truth RegionDataset regions with ``rois="region_boxes"``: RoIAlign
    on the model's own trainable small_cnn at the cached boxes, so the BatchNorm layers are
    on the loss's path, and the batch also carries precomputed ROI features the model does
    not read (the case that made DDP wait for gradients of an unused output before the loss
    was computed inside the wrapped module)."""
    from pyg_mlic.detection import GroundTruthRegionExtractor, RegionDataset
    from pyg_mlic.engine import seed_everything
    from pyg_mlic.models import build_model

    ex = GroundTruthRegionExtractor("small_cnn", image_size=IMAGE_SIZE, max_instances=6,
                                    seed=0)
    train, val, test = (RegionDataset(ds, ex, root=root / "roi_cache", progress=False)
                        for ds in _scenes())
    seed_everything(3)
    model = build_model("gm_mlic", classes=list(train.classes), input_kind="image",
                        train_labels=train.labels, backbone="small_cnn",
                        rois="region_boxes", roi_output_size=2, encoder_channels=16,
                        conv_channels=[16, 8], k=3)
    return model, train, val, test


#: case name -> (builder, sync_bn)
CASES = {"baseline_sync_bn": (_baseline, True), "baseline_no_sync_bn": (_baseline, False),
         "ia_gcn_sync_bn": (_ia_gcn, True), "gm_mlic_sync_bn": (_gm_mlic, True),
         "gm_mlic_regions_sync_bn": (_gm_mlic_regions, True)}


def run_case(name: str, out: Path) -> Dict[str, Any]:
    """Train case ``name`` into ``out``; returns the final metrics (on every rank)."""
    from pyg_mlic.engine import Trainer

    build, sync_bn = CASES[name]
    model, train, val, test = build(out)
    trainer = Trainer(model, train, val, test, _train_config(sync_bn), out_dir=out)
    metrics = trainer.fit()
    kinds = sorted({type(m).__name__ for m in trainer.model.modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)})
    params = D.state_digest(dict(trainer.model.named_parameters()))
    buffers = D.state_digest(dict(trainer.model.named_buffers()))
    ranks = [None] * D.current().world_size
    if D.current().enabled:
        torch.distributed.all_gather_object(ranks, (params, buffers))
    else:
        ranks = [(params, buffers)]
    if D.current().is_main:
        (out / "ranks.json").write_text(json.dumps({
            "params": [p for p, _ in ranks], "buffers": [b for _, b in ranks],
            "bn_kinds": kinds, "find_unused_parameters":
                getattr(trainer, "find_unused_parameters", None)}))
    return metrics


# --------------------------------------------------------------------------- bn_layer
def _close(name: str, a: torch.Tensor, b: torch.Tensor, errs: Dict[str, float]) -> None:
    a, b = a.detach(), b.detach()
    errs[name] = max(errs.get(name, 0.0), float((a.double() - b.double()).abs().max()))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def _bn_layer_case(tag: str, ref: torch.nn.Module, shape, counts, errs) -> None:
    """Two training steps and one eval step of ``ref`` on the whole batch versus its
    converted copy on this rank's rows (``counts[r]`` rows of rank r)."""
    rank, ws = D.current().rank, D.current().world_size
    assert len(counts) == ws and sum(counts) == shape[0]
    lo = sum(counts[:rank])
    rows = slice(lo, lo + counts[rank])
    if ref.affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
    bn = D.convert_sync_batchnorm(copy.deepcopy(ref), device="cpu")
    assert isinstance(bn, D.DistributedBatchNorm), type(bn)
    for step in range(2):
        x = torch.randn(shape) * 2.0 + 1.0
        g = torch.randn(shape)
        xr = x.clone().requires_grad_(True)
        yr = ref(xr)
        (yr * g).sum().backward()
        xd = x[rows].clone().requires_grad_(True)
        yd = bn(xd)
        (yd * g[rows]).sum().backward()
        _close(f"{tag}/output", yd, yr[rows], errs)
        _close(f"{tag}/input_grad", xd.grad, xr.grad[rows], errs)
        if ref.affine:
            for p_ref, p in ((ref.weight, bn.weight), (ref.bias, bn.bias)):
                total = p.grad.clone()
                torch.distributed.all_reduce(total)  # DDP would average; the sum is exact
                _close(f"{tag}/param_grad", total, p_ref.grad, errs)
                p_ref.grad, p.grad = None, None
        for name, b_ref in ref.named_buffers():
            b = dict(bn.named_buffers())[name]
            if b_ref.dtype.is_floating_point:
                _close(f"{tag}/{name}", b, b_ref, errs)
            else:
                assert torch.equal(b, b_ref), (tag, name, b, b_ref)
    if not ref.track_running_stats:
        return  # eval without running statistics: per-rank batch statistics, as in torch
    ref.eval()
    bn.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        _close(f"{tag}/eval_output", bn(x[rows]), ref(x)[rows], errs)


def check_bn_layer(out: Path) -> None:
    torch.manual_seed(11)  # the same data on every rank; each uses its own rows
    errs: Dict[str, float] = {}
    _bn_layer_case("2d_uneven", torch.nn.BatchNorm2d(4), (7, 4, 3, 3), [4, 3], errs)
    _bn_layer_case("2d_one_row_on_a_rank", torch.nn.BatchNorm2d(3), (3, 3, 2, 2), [2, 1],
                   errs)
    _bn_layer_case("1d", torch.nn.BatchNorm1d(5), (10, 5), [5, 5], errs)
    _bn_layer_case("1d_sequence", torch.nn.BatchNorm1d(3), (6, 3, 4), [3, 3], errs)
    _bn_layer_case("momentum_none", torch.nn.BatchNorm2d(4, momentum=None), (6, 4, 2, 2),
                   [3, 3], errs)
    _bn_layer_case("no_affine", torch.nn.BatchNorm2d(4, affine=False), (6, 4, 2, 2), [3, 3],
                   errs)
    _bn_layer_case("no_running_stats", torch.nn.BatchNorm2d(4, track_running_stats=False),
                   (6, 4, 2, 2), [3, 3], errs)

    # broadcast_state: a module with 0-d int, bool and bfloat16 buffers, rank-dependent
    rank = D.current().rank
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    m.register_buffer("flags", torch.tensor([True, rank == 0, False]))
    m.register_buffer("half_buf", torch.full((2,), 0.5 + rank, dtype=torch.bfloat16))
    with torch.no_grad():
        for t in list(m.parameters()) + list(m.buffers()):
            if t.dtype == torch.bool:
                continue
            t.fill_(rank + 1) if t.dim() == 0 else t.add_(rank)
    mine = D.state_digest(m.state_dict())
    digests = [None, None]
    torch.distributed.all_gather_object(digests, mine)
    assert digests[0] != digests[1]
    D.broadcast_state(m)
    torch.distributed.all_gather_object(digests, D.state_digest(m.state_dict()))
    assert digests[0] == digests[1], "broadcast_state left the ranks different"
    assert int(m[1].num_batches_tracked) == 1 and bool(m.flags[1])

    # all_gather_rows: dtypes gloo does not reduce, different row counts per rank
    for dtype in (torch.bool, torch.bfloat16, torch.int64, torch.float16):
        t = (torch.arange((rank + 1) * 6).reshape(rank + 1, 2, 3) % 2).to(dtype)
        got = D.all_gather_rows(t)
        assert [tuple(x.shape) for x in got] == [(1, 2, 3), (2, 2, 3)], dtype
        assert all(x.dtype == dtype for x in got)
        assert torch.equal(got[1], (torch.arange(12).reshape(2, 2, 3) % 2).to(dtype))
    try:
        D.all_gather_rows(torch.tensor(3))
    except ValueError:
        pass
    else:
        raise AssertionError("all_gather_rows accepted a 0-d tensor")
    if D.current().is_main:
        (out / "bn_layer.json").write_text(json.dumps(errs, indent=1))


def cli_train(out: Path) -> int:
    """``pyg-mlic train`` of an image model with BatchNorm (baseline, small_cnn, with the
    training augmentation, no ``--sync-bn``) inside this torchrun job: the command that
    crashed in the rank-agreement digest on ``num_batches_tracked``. It leaves the
    process group (``cmd_train`` does), so it must be the last case."""
    from pyg_mlic.cli import main as cli_main

    return cli_main(["train", "--dataset", "synthetic", "--model", "baseline", "--backbone",
                     "small_cnn", "--image-size", str(IMAGE_SIZE), "--num-images",
                     str(NUM_IMAGES), "--epochs", "1", "--batch-size", str(BATCH),
                     "--no-progress", "--out", str(out)])


def main(argv) -> int:
    out, cases = Path(argv[0]), argv[1].split(",")
    torch.set_num_threads(1)
    info = D.init_distributed("cpu")
    assert info.enabled and info.backend == "gloo", info
    try:
        for case in cases:
            if case == "bn_layer":
                check_bn_layer(out)
            elif case == "cli":
                assert case == cases[-1], "the cli case leaves the process group: put it last"
                assert cli_train(out / "cli") == 0
            else:
                run_case(case, out / case)
    finally:
        D.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
