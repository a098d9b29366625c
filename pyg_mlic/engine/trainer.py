"""The training/evaluation loop shared by every model.

One :class:`Trainer` trains any :class:`~pyg_mlic.models.MultiLabelModel` on any
dataset of the :mod:`pyg_mlic.data` protocol:

- optimiser groups: backbone parameters at ``backbone_lr``, the rest at ``lr``;
- step (``lr_step``) or milestone (``lr_milestones``) schedule, or cosine / one-cycle
  with warm-up (:mod:`pyg_mlic.engine.schedules`); gradient clipping (``grad_clip``);
- mixed precision (``amp``, :mod:`pyg_mlic.engine.amp`) and an EMA of the weights
  (``ema``, :mod:`pyg_mlic.engine.ema`; validation scores both, ``select`` picks);
- evaluation on the validation split every ``eval_every`` epochs;
- the final evaluation on the test split uses the weights chosen by ``select``
  (``"last"`` or ``"best_val"``) — never the test split itself;
- a checkpoint at the end of every epoch, written atomically; ``resume=True``
  continues from it and, because every epoch reseeds all generators from
  ``(seed, epoch)``, ends with exactly the metrics of an uninterrupted run;
- ``metrics.json`` (the :func:`~pyg_mlic.metrics.multilabel_metrics` dict of the
  final evaluation plus the run settings) and ``history.json`` in ``out_dir``;
- multi-process training (DDP) when started under ``torchrun`` with an initialised
  process group (see :mod:`pyg_mlic.engine.distributed`): ``config.batch_size`` is
  the global batch, split evenly over the ranks; evaluation gathers every rank's
  predictions; only rank 0 writes files.
"""
from __future__ import annotations

import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pyg_mlic.data.loader import EpochShuffleSampler, make_loader  # noqa: F401  (re-exported)
from pyg_mlic.data.loader import epoch_seed as _epoch_seed
from pyg_mlic.data.loader import to_device as _to_device
from pyg_mlic.engine.checkpoint import load_checkpoint, save_checkpoint
from pyg_mlic.engine.config import TrainConfig
from pyg_mlic.engine.mixup import check_mixup_model, mixup_batch, mixup_generator
from pyg_mlic.errors import CheckpointError, check_same_classes
from pyg_mlic.version import __version__

from pyg_mlic.utils.progress import tqdm  # None without tqdm (a hard dependency)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


#: training settings that must not change when a run is resumed (they would make the
#: continued run differ from an uninterrupted one); epochs, device, workers, progress may.
_RESUME_MUST_MATCH = ("batch_size", "optimizer", "lr", "backbone_lr", "momentum", "weight_decay",
                      "lr_step", "lr_milestones", "lr_gamma", "grad_clip", "select", "seed",
                      "eval_every", "extra", "schedule", "warmup_epochs", "amp", "ema", "mixup")

#: test hook: seconds to sleep after every training step (fault-injection tests kill a
#: run in the middle of an epoch); unset in normal use
_STEP_SLEEP_ENV = "PYG_MLIC_STEP_SLEEP"


# write_json(path, obj): JSON written atomically, numpy values / tensors / paths converted
from pyg_mlic.utils.io import atomic_write_json as write_json  # noqa: E402


@torch.no_grad()
def predict(model, loader: DataLoader, device: Optional[torch.device] = None,
            progress: bool = False, desc: str = "eval",
            amp: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Run ``model`` over ``loader``; returns fp32 ``logits``, ``target``, ``mask`` and
    ``features`` (when the model exposes them), concatenated in dataset order.

    ``amp`` (``"bf16"`` / ``"fp16"``): run the forward pass under autocast (only the
    forward: the outputs are cast to fp32 before anything is computed on them)."""
    from pyg_mlic.engine.amp import autocast

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, targets, masks, feats = [], [], [], []
    it = loader
    if progress and tqdm is not None:
        it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    try:
        for batch in it:
            batch = _to_device(batch, device)
            with autocast(torch.device(device), amp):
                out = model(batch)
            logits.append(out.logits.float().cpu())
            targets.append(batch["target"].cpu())
            masks.append(batch["mask"].cpu())
            if "features" in out.extras:
                feats.append(out.extras["features"].float().cpu())
    finally:
        model.train(was_training)
    res = {"logits": torch.cat(logits), "target": torch.cat(targets), "mask": torch.cat(masks)}
    if feats:
        res["features"] = torch.cat(feats)
    return res


def evaluate(model, dataset_or_loader, *, batch_size: int = 64, device=None,
             progress: bool = False, num_workers: int = 0, amp: Optional[str] = None,
             **metric_kwargs) -> Dict[str, Any]:
    """:func:`~pyg_mlic.metrics.multilabel_metrics` of ``model`` on a dataset or loader
    (``amp``: the forward pass under autocast, see :func:`predict`; metrics on fp32 logits).

    Inside an initialised process group with more than one rank, pass a *dataset*:
    each rank predicts its shard and the metrics are computed on the gathered union
    (see :func:`predict_dataset`); every rank returns the same dict.
    """
    from pyg_mlic.metrics import multilabel_metrics

    if isinstance(dataset_or_loader, DataLoader):
        p = predict(model, dataset_or_loader, device=device, progress=progress, amp=amp)
    else:
        p = predict_dataset(model, dataset_or_loader, batch_size=batch_size, device=device,
                            progress=progress, num_workers=num_workers, amp=amp)
    names = list(getattr(model, "classes", None) or [])
    if len(names) == p["logits"].shape[1]:  # named in the warning about classes without AP
        metric_kwargs.setdefault("class_names", names)
    return multilabel_metrics(p["logits"], p["target"], mask=p["mask"], scores_are="logits",
                              **metric_kwargs)


def predict_dataset(model, dataset: Dataset, *, batch_size: int = 64, device=None,
                    progress: bool = False, num_workers: int = 0,
                    amp: Optional[str] = None) -> Dict[str, torch.Tensor]:
    r""":func:`predict` over a whole dataset, split over the ranks of a process group.

    In one process this is ``predict(model, make_loader(dataset, ...))``. With
    :math:`W > 1` ranks, rank :math:`r` predicts samples :math:`r, r + W, \dots` (the
    shards are padded to equal length by repeating samples), the shards are
    all-gathered, the repeats dropped by sample index, and every rank receives all
    :math:`N` rows in dataset order.
    """
    from pyg_mlic.engine import distributed as D

    info = D.current()
    if not info.enabled:
        return predict(model, make_loader(dataset, batch_size, train=False,
                                          num_workers=num_workers),
                       device=device, progress=progress, amp=amp)
    loader = make_loader(dataset, max(1, batch_size // info.world_size), train=False,
                         num_workers=num_workers, world_size=info.world_size, rank=info.rank)
    p = predict(model, loader, device=device, progress=progress and info.is_main, amp=amp)
    return D.gather_predictions(p, list(loader.sampler), len(dataset))


class _TrainStep(torch.nn.Module):
    """``batch -> (loss, parts)``: a model's forward and loss as one module (what DDP wraps,
    so that only the loss is an output of the wrapped module). With ``amp`` the forward
    runs under autocast and the loss in fp32, on the logits and auxiliary terms cast up
    (see :mod:`pyg_mlic.engine.amp`)."""

    def __init__(self, model, amp: Optional[str] = None, device_type: str = "cpu") -> None:
        super().__init__()
        self.model = model
        self.amp, self.device_type = amp, device_type

    def forward(self, batch: Dict[str, Any]):
        if self.amp is None:
            out = self.model(batch)
            return self.model.loss(out, batch)
        import dataclasses

        from pyg_mlic.engine.amp import autocast

        with autocast(torch.device(self.device_type), self.amp):
            out = self.model(batch)
        out = dataclasses.replace(out, logits=out.logits.float(), aux_losses={
            k: v.float() for k, v in out.aux_losses.items()})
        return self.model.loss(out, batch)


class Trainer:
    """Train and evaluate a model (see the module docstring for the protocol).

    Args:
        model: a :class:`~pyg_mlic.models.MultiLabelModel`.
        train_set: training dataset.
        val_set: validation dataset (``None``: no per-epoch evaluation; then
            ``select`` must be ``"last"``).
        test_set: the dataset of the final evaluation (``None``: use ``val_set``).
        config: :class:`TrainConfig`.
        out_dir: where checkpoints, ``metrics.json`` and ``history.json`` go
            (``None``: nothing is written).
        run_info: extra settings recorded in ``metrics.json`` (dataset, CLI args ...).
    """

    def __init__(self, model, train_set: Dataset, val_set: Optional[Dataset] = None,
                 test_set: Optional[Dataset] = None, config: Optional[TrainConfig] = None,
                 out_dir: Optional[os.PathLike] = None,
                 run_info: Optional[Dict[str, Any]] = None) -> None:
        self.config = config or TrainConfig.for_model(model)
        if self.config.select == "best_val" and val_set is None:
            raise ValueError("select='best_val' needs a validation split")
        check_mixup_model(model, self.config.mixup)
        for name, ds in (("validation", val_set), ("test", test_set)):
            if ds is not None:
                check_same_classes("training set", model.classes, f"{name} set", ds.classes)
        check_same_classes("model", model.classes, "training set", train_set.classes)
        for name, ds in (("validation", val_set), ("test", test_set)):
            _check_has_positives(name, ds)
        self.model = model
        self.train_set, self.val_set, self.test_set = train_set, val_set, test_set
        # unmasked positives per class of the training split: the long-tail groups of the
        # final evaluation, and stored in every checkpoint for eval's
        self.train_label_counts = _train_label_counts(train_set)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_info = dict(run_info or {})
        from pyg_mlic.utils.device import resolve_device

        self.device = resolve_device(self.config.device)
        self.history: List[Dict[str, Any]] = []
        self.best: Tuple[float, int] = (-math.inf, -1)
        self.start_epoch = 0
        from pyg_mlic.engine import distributed as D

        self.dist = D.current()
        ws = self.dist.world_size
        if ws > 1:
            if self.config.batch_size % ws:
                raise ValueError(f"batch_size {self.config.batch_size} (the global batch) must be "
                                 f"divisible by the number of processes ({ws})")
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.dist.local_rank)
        if self.dist.is_main:
            warn_unlearnable(train_set)

    # ------------------------------------------------------------------ set-up
    def _build_optim(self, steps_per_epoch: Optional[int] = None):
        """The optimiser (backbone / head groups) and the learning-rate schedule
        (:func:`~pyg_mlic.engine.schedules.build_scheduler`; ``steps_per_epoch`` is
        needed by the per-batch schedules). Sets ``self.schedule_per_step``."""
        from pyg_mlic.engine.schedules import build_scheduler

        c = self.config
        backbone, head = self.model.parameter_groups()
        groups = [{"params": head, "lr": c.lr, "name": "head"}]
        if backbone:
            groups.append({"params": backbone, "lr": c.lr if c.backbone_lr is None
                           else c.backbone_lr, "name": "backbone"})
        if c.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        elif c.optimizer == "adam":
            opt = torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay)
        else:
            opt = torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)
        sched, self.schedule_per_step = build_scheduler(opt, c, steps_per_epoch)
        return opt, sched

    def _ckpt_path(self, name: str) -> Optional[Path]:
        return self.out_dir / name if self.out_dir is not None else None

    def _save(self, name: str, epoch: int, weights: Optional[str] = None) -> None:
        """Write checkpoint ``name``. Its ``state_dict`` holds the weights that are
        evaluated / deployed from it (``weights``: ``"raw"`` or ``"ema"``; default: the
        EMA weights when ``ema`` is on, as ``select="last"`` evaluates them); with an EMA
        the trained weights, needed to continue training, are in ``raw_state_dict``."""
        path = self._ckpt_path(name)
        if path is None:
            return
        ema = getattr(self, "ema", None)
        weights = weights or ("ema" if ema is not None else "raw")
        if self.dist.is_main:
            extra = {
                "epoch": epoch, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "history": self.history,
                "best_val_map": self.best[0], "best_epoch": self.best[1],
                "train_config": self.config.to_dict(), "run_info": self.run_info,
                "weights": weights, "best_weights": getattr(self, "best_weights", "raw"),
                "train_label_counts": self.train_label_counts.tolist()}
            if ema is not None:  # each set of weights once: as state_dict or beside it
                extra["ema"] = {"decay": ema.decay, "updates": ema.updates}
                if weights == "ema":
                    extra["raw_state_dict"] = self.model.state_dict()
                else:
                    extra["ema"]["module"] = ema.module.state_dict()
            if getattr(self, "scaler", None) is not None:
                extra["grad_scaler"] = {"state": self.scaler.state_dict(),
                                        "consecutive_skips": self._amp_skips}
            save_checkpoint(path, model=ema.module if weights == "ema" else self.model,
                            extra=extra)
        from pyg_mlic.engine.distributed import barrier

        barrier()  # no rank reads a checkpoint before rank 0 has written it

    def _resume(self) -> None:
        path = self._ckpt_path("last.pt")
        if path is None or not path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        ckpt = load_checkpoint(path, expect_model=self.model.model_name,
                               expect_classes=self.model.classes)
        try:  # with an EMA, state_dict holds the average and raw_state_dict the trained weights
            self.model.load_state_dict(ckpt.get("raw_state_dict", ckpt["state_dict"]))
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit this model: "
                                  f"{str(e)[:300]}") from None
        saved = ckpt.get("train_config") or {}
        now = self.config.to_dict()
        changed = {k: (saved[k], now[k]) for k in _RESUME_MUST_MATCH
                   if k in saved and k in now and saved[k] != now[k]}
        if self.schedule_per_step and self.config.schedule != "step" and "epochs" in saved \
                and saved["epochs"] != now["epochs"]:
            # the cosine / one-cycle schedule spans the whole run: another length is
            # another schedule from the first step on
            changed["epochs"] = (saved["epochs"], now["epochs"])
        if changed:
            raise CheckpointError(
                f"{path}: --resume with different training settings would not continue the "
                f"same run: " + ", ".join(f"{k} was {a!r}, now {b!r}"
                                          for k, (a, b) in changed.items()) +
                "; use the original settings (only epochs, device, workers and progress "
                "may change; epochs not with schedule 'cosine' / 'onecycle', which span the "
                "run) or a new --out folder")
        if "optimizer" not in ckpt or "epoch" not in ckpt:
            raise CheckpointError(f"{path}: a model-only checkpoint (no optimizer state / "
                                  f"epoch) cannot be resumed")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None:
            saved_ema = ckpt.get("ema")
            if not isinstance(saved_ema, dict):
                raise CheckpointError(f"{path}: no EMA state in the checkpoint; resume without "
                                      f"ema or start a new --out folder")
            module = saved_ema.get("module", ckpt["state_dict"] if ckpt.get("weights") == "ema"
                                   else None)
            if module is None:
                raise CheckpointError(f"{path}: the checkpoint's EMA entry has no weights")
            self.ema.load_state_dict({**saved_ema, "module": module})
        if self.scaler is not None:
            saved_scaler = ckpt.get("grad_scaler")
            if not isinstance(saved_scaler, dict):
                raise CheckpointError(f"{path}: no fp16 gradient-scaler state in the "
                                      f"checkpoint; resume with the original amp setting")
            self.scaler.load_state_dict(saved_scaler["state"])
            self._amp_skips = int(saved_scaler.get("consecutive_skips", 0))
        self.history = list(ckpt.get("history", []))
        self.best = (float(ckpt.get("best_val_map", -math.inf)), int(ckpt.get("best_epoch", -1)))
        self.best_weights = str(ckpt.get("best_weights", "raw"))
        self.start_epoch = int(ckpt["epoch"]) + 1
        if self.start_epoch > self.config.epochs and self.dist.rank == 0:
            warnings.warn(f"{path}: the run trained {self.start_epoch} epochs already, more "
                          f"than epochs={self.config.epochs}; nothing is trained, the "
                          f"checkpoint is evaluated as it is (give a larger --epochs to train "
                          f"on)", stacklevel=2)

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> Dict[str, Any]:
        """Train for ``config.epochs`` epochs, then evaluate; returns the final metrics."""
        from pyg_mlic.engine import distributed as D

        c = self.config
        ws, rank = self.dist.world_size, self.dist.rank
        seed_everything(c.seed)
        self.model.to(self.device)
        if ws > 1 and c.sync_bn:
            # BatchNorm statistics over the global batch (same Parameter objects: the
            # state dict and the optimiser groups are unchanged): torch.nn.SyncBatchNorm
            # on CUDA, D.DistributedBatchNorm on the CPU (gloo); without sync_bn each
            # rank's BatchNorm layers see the per-rank batch
            self.model = D.convert_sync_batchnorm(self.model, device=self.device)
        from pyg_mlic.engine.amp import check_amp, grad_scaler
        from pyg_mlic.engine.ema import ModelEma

        check_amp(c.amp, self.device)
        # built before the schedule: the per-batch schedules need the epoch's length
        loader = make_loader(self.train_set, c.batch_size // ws, train=True, seed=c.seed,
                             num_workers=c.num_workers, world_size=ws, rank=rank)
        self.optimizer, self.scheduler = self._build_optim(len(loader))
        self.scaler = grad_scaler(c.amp, self.device)  # fp16 only
        self._amp_skips = 0  # consecutive steps the fp16 scaler skipped
        # EMA of the unwrapped model's weights (after any sync-BN conversion: same names)
        self.ema = ModelEma(self.model, c.ema) if c.ema is not None else None
        self.best_weights = "raw"  # which weights hold the best validation mAP so far
        if resume:
            self._resume()
        # forward + loss in one module: under DDP only the loss leaves the wrapped module,
        # so outputs the loss does not use (ModelOutput.extras) are not taken for outputs
        # DDP must wait for gradients of
        self.train_model = _TrainStep(self.model, c.amp, self.device.type)
        if ws > 1:
            # the label statistics, embeddings and initial weights are computed on every
            # rank from the same files and seed: make sure they agree before training
            D.check_ranks_agree("the class list / training labels / training settings",
                                D.state_digest(list(self.model.classes), self.train_set.labels,
                                               c.to_dict()))
            D.check_ranks_agree("the model (weights, buffers, label graph)", D.state_digest(
                self.model.state_dict(), self.model.build_kwargs))
        if ws > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            find_unused = c.find_unused_parameters
            if find_unused is None:
                find_unused = getattr(self.model, "ddp_find_unused_parameters", None)
            if find_unused is None:  # probe one step: does any parameter get no gradient?
                unused = self._probe_unused_parameters(loader)
                find_unused = D.all_reduce_sum({"n": float(len(unused))})["n"] > 0
            self.find_unused_parameters = bool(find_unused)
            self.train_model = DDP(
                _TrainStep(self.model, c.amp, self.device.type),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(find_unused))
        t0 = time.time()
        for epoch in range(self.start_epoch, c.epochs):
            # every epoch reseeds from (seed, epoch) -> resume == uninterrupted run;
            # ranks get distinct streams (dropout, augmentation) from the rank offset
            seed_everything(_epoch_seed(c.seed, epoch) + rank)
            loader.sampler.set_epoch(epoch)
            record = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            record.update(self._train_epoch(loader, epoch))
            if ws > 1 and not c.sync_bn:
                # DDP copies rank 0's buffers (BatchNorm statistics) at the start of each
                # forward only: after the last step of the epoch they differ between ranks,
                # so evaluation and the checkpoint would use rank-specific statistics
                D.broadcast_state(self.model, buffers_only=True)
                if self.ema is not None:  # the EMA averaged each rank's own statistics
                    D.broadcast_state(self.ema.module, buffers_only=True)
            if not self.schedule_per_step:
                self.scheduler.step()
            if self.val_set is not None and ((epoch + 1) % c.eval_every == 0
                                             or epoch + 1 == c.epochs):
                # the forward under autocast (amp), the metrics on fp32 logits
                vm = evaluate(self.model, self.val_set, batch_size=c.batch_size,
                              device=self.device, num_workers=c.num_workers, amp=c.amp)
                record["val_mAP"] = vm["mAP"]
                record["val_CF1"], record["val_OF1"] = vm["CF1"], vm["OF1"]
                candidates = [(vm["mAP"], "raw")]
                if self.ema is not None:
                    ve = evaluate(self.ema.module, self.val_set, batch_size=c.batch_size,
                                  device=self.device, num_workers=c.num_workers, amp=c.amp)
                    record["val_mAP_ema"] = ve["mAP"]
                    record["val_CF1_ema"], record["val_OF1_ema"] = ve["CF1"], ve["OF1"]
                    candidates.append((ve["mAP"], "ema"))
                improved = None  # the best of raw and EMA over all epochs (raw wins ties)
                for value, which in candidates:
                    if value > self.best[0]:
                        self.best, self.best_weights, improved = (value, epoch), which, which
                if improved is not None and c.select == "best_val":
                    self._save("best.pt", epoch, weights=improved)
                    if self.out_dir is None:  # no folder: keep the chosen weights in memory
                        chosen = self.ema.module if improved == "ema" else self.model
                        self._best_state = {k: v.detach().clone() for k, v in
                                            chosen.state_dict().items()}
            self.history.append(record)
            self._save("last.pt", epoch)
            if self.out_dir is not None and self.dist.is_main:
                write_json(self.out_dir / "history.json", self.history)
        train_time = time.time() - t0
        # which weights the final evaluation uses: best.pt's (raw or EMA, chosen on the
        # validation split) for select="best_val"; the last epoch's EMA weights (when ema
        # is on) for select="last" -- loaded into the model, as best.pt's are
        best_kept = c.select == "best_val" and self.best[1] >= 0 and (
            getattr(self, "_best_state", None) is not None
            or (self._ckpt_path("best.pt") is not None and self._ckpt_path("best.pt").exists()))
        if best_kept:
            self.final_weights = self.best_weights
        elif self.ema is not None:
            self.ema.copy_to(self.model)
            self.final_weights = "ema"
        else:
            self.final_weights = "raw"
        return self.final_evaluation(train_time)

    def _probe_unused_parameters(self, loader: DataLoader) -> List[str]:
        """Names of trainable parameters that get no gradient from one training step.

        Runs forward + loss + backward on the first batch of epoch ``start_epoch`` and
        then restores everything it touched (weights, buffers such as BatchNorm
        statistics, gradients, and the Python / NumPy / PyTorch random states), so the
        run continues exactly as if the probe had not happened.
        """
        import copy

        py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        state = copy.deepcopy(self.model.state_dict())
        was_training = self.model.training
        try:
            seed_everything(_epoch_seed(self.config.seed, self.start_epoch) + self.dist.rank)
            loader.sampler.set_epoch(self.start_epoch)
            batch = _to_device(next(iter(loader)), self.device)
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            loss, _ = _TrainStep(self.model)(batch)
            loss.backward()
            return [n for n, p in self.model.named_parameters()
                    if p.requires_grad and p.grad is None]
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            self.model.load_state_dict(state)
            self.model.train(was_training)
            random.setstate(py)
            np.random.set_state(npy)
            torch.set_rng_state(th)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)

    def _train_epoch(self, loader: DataLoader, epoch: int) -> Dict[str, float]:
        from pyg_mlic.engine import distributed as D
        from pyg_mlic.engine.amp import MAX_CONSECUTIVE_SKIPS

        c = self.config
        model = getattr(self, "train_model", None) or _TrainStep(self.model, c.amp,
                                                                 self.device.type)
        scaler, ema = getattr(self, "scaler", None), getattr(self, "ema", None)
        self.model.train()
        sums: Dict[str, float] = {}
        n = 0
        it = loader
        if c.progress and tqdm is not None and self.dist.is_main:
            it = tqdm(loader, desc=f"{self.model.model_name} epoch {epoch + 1}/{c.epochs}",
                      leave=False, dynamic_ncols=True)
        sleep = float(os.environ.get(_STEP_SLEEP_ENV, "0") or 0)
        # mixup draws from its own generator, seeded by (seed, epoch, rank): a resumed run
        # draws what an uninterrupted one does, and the global random state is untouched
        mix_rng = mixup_generator(c.seed, epoch, self.dist.rank) if c.mixup else None
        for step, batch in enumerate(it):
            batch = _to_device(batch, self.device)
            if mix_rng is not None:
                batch = mixup_batch(batch, c.mixup, mix_rng)
            try:
                loss, parts = model(batch)
            except RuntimeError as e:
                if "find_unused_parameters" in str(e):
                    raise RuntimeError(
                        f"{self.model.model_name}: some parameters got no gradient in a "
                        f"multi-process step; train with TrainConfig(find_unused_parameters="
                        f"True) or set the model attribute ddp_find_unused_parameters = True. "
                        f"DDP said: {str(e)[:400]}") from e
                raise
            self.optimizer.zero_grad(set_to_none=True)
            if scaler is not None:  # fp16: scaled loss; the guard and clipping see the
                scaler.scale(loss).backward()  # true (unscaled) gradient below
                scaler.unscale_(self.optimizer)
            else:
                loss.backward()  # DDP averages the gradients over the ranks here
            # the divergence guard: one host-device synchronisation per step, for the loss
            # and the gradient norm together; nothing is stepped with a bad gradient
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if c.grad_clip:
                gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            else:
                gnorm = (torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(g.detach(), 2.0) for g in grads]), 2.0)
                    if grads else loss.new_zeros(()))
            loss_ok, grad_ok = torch.stack([torch.isfinite(loss.detach()),
                                            torch.isfinite(gnorm.detach()).to(loss.device)]
                                           ).tolist()
            if self.dist.enabled:  # all ranks stop together instead of hanging in all-reduce
                bad = D.all_reduce_sum({"loss": float(not loss_ok), "grad": float(not grad_ok)})
                loss_ok, grad_ok = bad["loss"] == 0.0, bad["grad"] == 0.0
            if not loss_ok or (not grad_ok and scaler is None):
                self._diverged(epoch, step, loss, gnorm, parts)
            if scaler is not None:
                # a non-finite fp16 gradient: the scaler skips the step and lowers the scale;
                # only a long run of skips is a divergence (see pyg_mlic.engine.amp)
                self._amp_skips = 0 if grad_ok else self._amp_skips + 1
                if self._amp_skips > MAX_CONSECUTIVE_SKIPS:
                    self._diverged(epoch, step, loss, gnorm, parts, detail=(
                        f"{self._amp_skips} consecutive fp16 steps skipped by the gradient "
                        f"scaler (scale now {scaler.get_scale():.3g})"))
                scaler.step(self.optimizer)
                scaler.update()
            else:
                self.optimizer.step()
            if grad_ok and ema is not None:  # after every step taken
                ema.update(self.model)
            if getattr(self, "schedule_per_step", False):
                with warnings.catch_warnings():  # a first step skipped by the fp16 scaler
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_sched")
                    self.scheduler.step()
            bs = len(batch["target"])
            n += bs
            for k, v in parts.items():  # tensors: summed on the device, read once an epoch
                sums[k] = sums.get(k, 0.0) + v.detach().float() * bs
            if hasattr(it, "set_postfix") and step % 10 == 0:
                it.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if sleep > 0:
                time.sleep(sleep)
        sums = {k: float(v) for k, v in sums.items()}
        if self.dist.enabled:  # the epoch's loss over all ranks' samples
            tot = D.all_reduce_sum({**sums, "__n": float(n)})
            n = int(tot.pop("__n"))
            sums = tot
        return {f"train_{k}": v / max(n, 1) for k, v in sums.items()}

    def _diverged(self, epoch: int, step: int, loss, gnorm, parts: Dict[str, float],
                  detail: str = "") -> None:
        """Stop a run whose loss or gradient is not finite, saying where and what to try;
        the last checkpoint written (end of the previous epoch) is left as it is."""
        from pyg_mlic.errors import DivergenceError

        what = "loss" if not bool(torch.isfinite(loss.detach())) else "gradient"
        if detail:
            what = f"{what} ({detail})"
        lrs = ", ".join(f"{g.get('name', i)} {g['lr']:.3g}"
                        for i, g in enumerate(self.optimizer.param_groups))
        last = self._ckpt_path("last.pt")
        kept = (f"the last good checkpoint, {last} (end of epoch {self.history[-1]['epoch'] + 1})"
                f", is kept" if last is not None and last.exists() and self.history
                else "no checkpoint had been written yet")
        shown = ", ".join(f"{k} {float(v):.4g}" for k, v in parts.items())
        raise DivergenceError(
            f"{self.model.model_name} diverged: non-finite {what} at epoch {epoch + 1}, step "
            f"{step + 1} (loss parts: {shown}; gradient norm {float(gnorm):.4g}; learning "
            f"rates: {lrs}); {kept}. Try a lower learning rate (--lr / --backbone-lr), "
            f"gradient clipping (TrainConfig grad_clip), or check the inputs")

    def final_evaluation(self, train_time: float = float("nan")) -> Dict[str, Any]:
        """Evaluate the selected weights on the test split and write ``metrics.json``.

        Besides the :func:`~pyg_mlic.metrics.multilabel_metrics` dict at threshold 0.5 (the
        papers' protocol, top level), ``metrics.json`` holds

        - ``long_tail``: :func:`~pyg_mlic.metrics.long_tail_map` of the test APs, classes
          grouped by their *training*-split positive counts (terciles);
        - ``calibrated``: thresholds chosen on the **validation** split with the evaluated
          weights (:func:`~pyg_mlic.metrics.calibrate_thresholds`; per class to maximise
          each class's F1, one global to maximise OF1), CP/CR/CF1/OP/OR/OF1 (and top-3) of
          the test split at the per-class (``per_class``) and at the global (``global``)
          thresholds. The thresholds are added to the checkpoint the evaluated weights
          came from (``best.pt`` or ``last.pt``, key ``thresholds``), which
          ``pyg-mlic eval/predict --threshold calibrated`` read. Without a validation split
          nothing is calibrated (``calibrated.thresholds = null`` and a ``reason``); the
          test split is never used.
        """
        from pyg_mlic.metrics import long_tail_map, multilabel_metrics

        c = self.config
        rule = c.select
        if rule == "best_val" and self._ckpt_path("best.pt") is not None \
                and self._ckpt_path("best.pt").exists():
            ckpt = load_checkpoint(self._ckpt_path("best.pt"))
            self.model.load_state_dict(ckpt["state_dict"])
            chosen = int(ckpt["epoch"])
        elif rule == "best_val" and getattr(self, "_best_state", None) is not None:
            self.model.load_state_dict(self._best_state)
            chosen = int(self.best[1])
        else:
            chosen = c.epochs - 1
        test = self.test_set if self.test_set is not None else self.val_set
        if test is None:
            raise ValueError("nothing to evaluate: give a test or validation split")
        t0 = time.time()
        test_pred = predict_dataset(self.model, test, batch_size=c.batch_size, device=self.device,
                                    progress=c.progress and self.dist.is_main,
                                    num_workers=c.num_workers)
        m = multilabel_metrics(test_pred["logits"], test_pred["target"], mask=test_pred["mask"],
                               scores_are="logits", class_names=list(self.model.classes))
        m["eval_time_s"] = time.time() - t0
        m["train_time_s"] = train_time
        # no test split: the final number comes from the validation split; when that split
        # also chose the weights (select="best_val") the number is optimistically biased
        biased = self.test_set is None and rule == "best_val" and chosen >= 0 \
            and self.best[1] >= 0
        m["selection_biased"] = bool(biased)
        m["selection"] = {"rule": rule, "epoch": chosen,
                          "best_val_mAP": None if self.best[1] < 0 else self.best[0],
                          "evaluated_split": getattr(test, "split", "?")}
        m["selection"]["weights"] = getattr(self, "final_weights", "raw")  # EMA or raw: fit
        m["protocol"] = {"threshold": 0.5, "topk": 3, "topk_rule":
                         "a top-3 label counts only if its probability is also > 0.5 "
                         "(ML-GCN's released evaluation, as the papers report)"}
        if biased:
            warnings.warn(f"{self.model.model_name}: no test split, so the final metrics are "
                          f"computed on the validation split ({getattr(test, 'split', '?')}) "
                          f"that chose the weights (select='best_val'): they are "
                          f"selection-biased (metrics.json: selection_biased = true); give a "
                          f"test split for an unbiased number", UserWarning, stacklevel=2)
        m["settings"] = {"model": self.model.model_name, "model_config": _jsonable(
            self.model.build_kwargs), "train_config": c.to_dict(), "library_version":
            __version__, "num_train": len(self.train_set),
            "num_test": len(test), "classes": list(self.model.classes),
            "world_size": self.dist.world_size, **self.run_info}
        # mAP of head / medium / tail classes (terciles of the training-label counts), and
        # thresholds calibrated on the validation split (never the test split), stored in
        # the checkpoint the evaluated weights came from
        m["long_tail"] = long_tail_map(m["AP"], self.train_label_counts)
        m["calibrated"] = _calibrate_on_validation(self, test, test_pred, chosen)
        if self.out_dir is not None and self.dist.is_main:
            write_json(self.out_dir / "metrics.json", m)
        return m


def _listed(names: List[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


def warn_unlearnable(dataset: Dataset) -> List[str]:
    """Warn, before any training, about what a training split cannot teach: a class with
    no known positive (or no known negative) label, whose scores the model can only
    learn as a constant, and features that are the same on every row. Returns the
    warnings' texts (``[]``: nothing to warn about)."""
    labels = getattr(dataset, "labels", None)
    classes = list(getattr(dataset, "classes", []) or [])
    where = f"training split ({getattr(dataset, 'split', '?')}, {len(dataset)} rows)"
    out: List[str] = []
    if labels is not None and len(labels) and len(classes) == np.asarray(labels).shape[1]:
        y = np.asarray(labels) == 1
        mask = getattr(dataset, "label_mask", None)
        known = np.ones_like(y) if mask is None else np.asarray(mask, dtype=bool)
        for what, missing in (("positive", ~(y & known).any(0)),
                              ("negative", ~(~y & known).any(0))):
            idx = np.flatnonzero(missing)
            if len(idx):
                out.append(f"{where}: {len(idx)} of {len(classes)} class(es) have no known "
                           f"{what} label, so the model cannot learn to rank them: "
                           f"{_listed([classes[i] for i in idx])}")
    feats = getattr(dataset, "features", None)
    if getattr(dataset, "input_kind", None) == "features" and isinstance(feats, np.ndarray) \
            and len(feats) > 1 and not bool(np.ptp(feats, axis=0).any()):
        out.append(f"{where}: every feature column is constant (all rows are the same "
                   f"vector), so the model can learn nothing but the label frequencies")
    for text in out:
        warnings.warn(text, UserWarning, stacklevel=3)
    return out


def _check_has_positives(name: str, dataset: Optional[Dataset]) -> None:
    """Refuse, before any training, an evaluation split on which mAP is undefined
    (no unmasked positive label at all): the run would fail only at its end."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        return
    pos = np.asarray(labels) == 1
    mask = getattr(dataset, "label_mask", None)
    if mask is not None:
        pos &= np.asarray(mask, dtype=bool)
    if not pos.any():
        from pyg_mlic.errors import DatasetError

        raise DatasetError(f"{name} set ({getattr(dataset, 'split', '?')}, {len(labels)} "
                           f"samples) has no (unmasked) positive label: mAP and recall are "
                           f"undefined on it")


def _jsonable(d: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            out[k] = f"<tensor {list(v.shape)}>"
        elif isinstance(v, np.ndarray):
            out[k] = f"<array {list(v.shape)}>"
        else:
            out[k] = v
    return out


def _train_label_counts(dataset: Dataset) -> np.ndarray:
    """Unmasked positives per class of a (training) dataset, int64 ``[C]``."""
    pos = np.asarray(dataset.labels) == 1
    mask = getattr(dataset, "label_mask", None)
    if mask is not None:
        pos &= np.asarray(mask, dtype=bool)
    return pos.sum(0).astype(np.int64)


def _calibrate_on_validation(trainer: "Trainer", test: Dataset,
                             test_pred: Dict[str, torch.Tensor], epoch: int) -> Dict[str, Any]:
    """The ``calibrated`` block of ``metrics.json`` (see :meth:`Trainer.final_evaluation`).

    Thresholds come from the model's current (evaluated) weights on ``trainer.val_set``
    only; ``test_pred`` (the final evaluation's predictions) is reused when there is no test
    split (then the evaluated split is the calibration split: ``selection_biased``).
    """
    from pyg_mlic.engine.checkpoint import update_checkpoint
    from pyg_mlic.engine.distributed import barrier
    from pyg_mlic.metrics import UndefinedAPWarning, calibrate_thresholds, multilabel_metrics

    val = trainer.val_set
    if val is None:
        return {"thresholds": None, "reason": "no validation split: thresholds are calibrated "
                "on the validation split only, never on the test split"}
    c = trainer.config
    val_pred = test_pred if val is test else predict_dataset(
        trainer.model, val, batch_size=c.batch_size, device=trainer.device,
        num_workers=c.num_workers)
    t = calibrate_thresholds(val_pred["logits"], val_pred["target"], mask=val_pred["mask"],
                             scores_are="logits")
    val_split = getattr(val, "split", "?")
    block: Dict[str, Any] = {
        "split": val_split, "evaluated_split": getattr(test, "split", "?"), "epoch": epoch,
        "rule": "per class: the probability threshold maximising the class's F1 on the "
                "validation split (classes without a positive there: the global one); "
                "global: the one threshold maximising OF1 (predict label c when p > t)",
        "thresholds": t,
        # calibrated on the split it is evaluated on (no test split): optimistic numbers
        "selection_biased": val is test}
    drop = ("mAP", "AP", "num_classes_evaluated")  # threshold-free: as at the top level
    with warnings.catch_warnings():  # classes without positives: said by the 0.5 evaluation
        warnings.simplefilter("ignore", UndefinedAPWarning)
        for key in ("per_class", "global"):
            mm = multilabel_metrics(test_pred["logits"], test_pred["target"],
                                    mask=test_pred["mask"], threshold=t[key],
                                    scores_are="logits")
            block[key] = {k: v for k, v in mm.items() if k not in drop}
    # the checkpoint whose weights were evaluated (best.pt under select="best_val")
    name = "best.pt" if c.select == "best_val" and trainer._ckpt_path("best.pt") is not None \
        and trainer._ckpt_path("best.pt").exists() else "last.pt"
    path = trainer._ckpt_path(name)
    block["checkpoint"] = None
    if path is not None and path.exists():
        if trainer.dist.is_main:
            update_checkpoint(path, {"thresholds": {
                "per_class": t["per_class"], "global": t["global"], "split": val_split,
                "epoch": epoch, "num_samples": t["num_samples"],
                "fallback_classes": t["fallback_classes"], "rule": block["rule"]}})
        block["checkpoint"] = name
    barrier()  # no rank reads the checkpoint before rank 0 has rewritten it
    return block
