"""The training/evaluation loop shared by every model.

One :class:`Trainer` trains any :class:`~pyg_mlic.models.MultiLabelModel` on any
dataset of the :mod:`pyg_mlic.data` protocol:

- optimiser groups: backbone parameters at ``backbone_lr``, the rest at ``lr``;
- step (``lr_step``) or milestone (``lr_milestones``) schedule;
- evaluation on the validation split every ``eval_every`` epochs;
- the final evaluation on the test split uses the weights chosen by ``select``
  (``"last"`` or ``"best_val"``) — never the test split itself;
- a checkpoint at the end of every epoch, written atomically; ``resume=True``
  continues from it and, because every epoch reseeds all generators from
  ``(seed, epoch)``, ends with exactly the metrics of an uninterrupted run;
- ``metrics.json`` (the :func:`~pyg_mlic.metrics.multilabel_metrics` dict of the
  final evaluation plus the run settings) and ``history.json`` in ``out_dir``.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pyg_mlic.data.base import collate
from pyg_mlic.engine.checkpoint import load_checkpoint, save_checkpoint
from pyg_mlic.engine.config import TrainConfig
from pyg_mlic.errors import CheckpointError, check_same_classes
from pyg_mlic.version import __version__

try:  # tqdm is a hard dependency, but keep the engine importable without it
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**31 - 1)


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % (2**32)
    random.seed(s)
    np.random.seed(s)


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on ``(seed, epoch)``."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def write_json(path: os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, torch.Tensor)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0,
                num_workers: int = 0) -> DataLoader:
    """DataLoader with the pyg_mlic collate and, for training, a seeded epoch sampler."""
    sampler = EpochShuffleSampler(len(dataset), seed) if train else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=num_workers, collate_fn=collate, drop_last=False,
                      worker_init_fn=_worker_init if num_workers else None,
                      persistent_workers=False)


def _to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            out[k] = [t.to(device) for t in v]
        else:
            out[k] = v
    return out


@torch.no_grad()
def predict(model, loader: DataLoader, device: Optional[torch.device] = None,
            progress: bool = False, desc: str = "eval") -> Dict[str, torch.Tensor]:
    """Run ``model`` over ``loader``; returns fp32 ``logits``, ``target``, ``mask`` and
    ``features`` (when the model exposes them), concatenated in dataset order."""
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
             progress: bool = False, **metric_kwargs) -> Dict[str, Any]:
    """:func:`~pyg_mlic.metrics.multilabel_metrics` of ``model`` on a dataset or loader."""
    from pyg_mlic.metrics import multilabel_metrics

    loader = dataset_or_loader
    if not isinstance(loader, DataLoader):
        loader = make_loader(loader, batch_size, train=False)
    p = predict(model, loader, device=device, progress=progress)
    return multilabel_metrics(p["logits"], p["target"], mask=p["mask"], scores_are="logits",
                              **metric_kwargs)


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
        for name, ds in (("validation", val_set), ("test", test_set)):
            if ds is not None:
                check_same_classes("training set", model.classes, f"{name} set", ds.classes)
        check_same_classes("model", model.classes, "training set", train_set.classes)
        self.model = model
        self.train_set, self.val_set, self.test_set = train_set, val_set, test_set
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_info = dict(run_info or {})
        dev = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(dev)
        self.history: List[Dict[str, Any]] = []
        self.best: Tuple[float, int] = (-math.inf, -1)
        self.start_epoch = 0

    # ------------------------------------------------------------------ set-up
    def _build_optim(self):
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
        if c.lr_milestones:
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(c.lr_milestones), c.lr_gamma)
        elif c.lr_step:
            sched = torch.optim.lr_scheduler.StepLR(opt, c.lr_step, c.lr_gamma)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
        return opt, sched

    def _ckpt_path(self, name: str) -> Optional[Path]:
        return self.out_dir / name if self.out_dir is not None else None

    def _save(self, name: str, epoch: int) -> None:
        path = self._ckpt_path(name)
        if path is None:
            return
        save_checkpoint(path, model=self.model, extra={
            "epoch": epoch, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "history": self.history,
            "best_val_map": self.best[0], "best_epoch": self.best[1],
            "train_config": self.config.to_dict(), "run_info": self.run_info})

    def _resume(self) -> None:
        path = self._ckpt_path("last.pt")
        if path is None or not path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        ckpt = load_checkpoint(path, expect_model=self.model.model_name,
                               expect_classes=self.model.classes)
        try:
            self.model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit this model: {str(e)[:300]}") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.history = list(ckpt.get("history", []))
        self.best = (float(ckpt.get("best_val_map", -math.inf)), int(ckpt.get("best_epoch", -1)))
        self.start_epoch = int(ckpt["epoch"]) + 1

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> Dict[str, Any]:
        """Train for ``config.epochs`` epochs, then evaluate; returns the final metrics."""
        c = self.config
        seed_everything(c.seed)
        self.model.to(self.device)
        self.optimizer, self.scheduler = self._build_optim()
        if resume:
            self._resume()
        loader = make_loader(self.train_set, c.batch_size, train=True, seed=c.seed,
                             num_workers=c.num_workers)
        val_loader = (make_loader(self.val_set, c.batch_size, train=False,
                                  num_workers=c.num_workers) if self.val_set is not None else None)
        t0 = time.time()
        for epoch in range(self.start_epoch, c.epochs):
            seed_everything(_epoch_seed(c.seed, epoch))
            loader.sampler.set_epoch(epoch)
            record = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            record.update(self._train_epoch(loader, epoch))
            self.scheduler.step()
            if val_loader is not None and ((epoch + 1) % c.eval_every == 0 or epoch + 1 == c.epochs):
                vm = evaluate(self.model, val_loader, device=self.device)
                record["val_mAP"] = vm["mAP"]
                record["val_CF1"], record["val_OF1"] = vm["CF1"], vm["OF1"]
                if vm["mAP"] > self.best[0]:
                    self.best = (vm["mAP"], epoch)
                    if c.select == "best_val":
                        self._save("best.pt", epoch)
            self.history.append(record)
            self._save("last.pt", epoch)
            if self.out_dir is not None:
                write_json(self.out_dir / "history.json", self.history)
        train_time = time.time() - t0
        return self.final_evaluation(train_time)

    def _train_epoch(self, loader: DataLoader, epoch: int) -> Dict[str, float]:
        c = self.config
        self.model.train()
        sums: Dict[str, float] = {}
        n = 0
        it = loader
        if c.progress and tqdm is not None:
            it = tqdm(loader, desc=f"{self.model.model_name} epoch {epoch + 1}/{c.epochs}",
                      leave=False, dynamic_ncols=True)
        for step, batch in enumerate(it):
            batch = _to_device(batch, self.device)
            out = self.model(batch)
            loss, parts = self.model.loss(out, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss ({parts}) at epoch {epoch + 1}, step {step + 1} of "
                    f"{self.model.model_name}; lower the learning rate or check the inputs")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            bs = len(batch["target"])
            n += bs
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * bs
            if hasattr(it, "set_postfix"):
                it.set_postfix(loss=f"{float(loss.detach()):.4f}")
        return {f"train_{k}": v / max(n, 1) for k, v in sums.items()}

    def final_evaluation(self, train_time: float = float("nan")) -> Dict[str, Any]:
        """Evaluate the selected weights on the test split and write ``metrics.json``."""
        c = self.config
        rule = c.select
        if rule == "best_val" and self._ckpt_path("best.pt") is not None \
                and self._ckpt_path("best.pt").exists():
            ckpt = load_checkpoint(self._ckpt_path("best.pt"))
            self.model.load_state_dict(ckpt["state_dict"])
            chosen = int(ckpt["epoch"])
        else:
            chosen = c.epochs - 1
        test = self.test_set if self.test_set is not None else self.val_set
        if test is None:
            raise ValueError("nothing to evaluate: give a test or validation split")
        t0 = time.time()
        m = evaluate(self.model, test, batch_size=c.batch_size, device=self.device,
                     progress=c.progress)
        m["eval_time_s"] = time.time() - t0
        m["train_time_s"] = train_time
        m["selection"] = {"rule": rule, "epoch": chosen,
                          "best_val_mAP": None if self.best[1] < 0 else self.best[0],
                          "evaluated_split": getattr(test, "split", "?")}
        m["settings"] = {"model": self.model.model_name, "model_config": _jsonable(
            self.model.build_kwargs), "train_config": c.to_dict(), "library_version":
            __version__, "num_train": len(self.train_set),
            "num_test": len(test), "classes": list(self.model.classes), **self.run_info}
        if self.out_dir is not None:
            write_json(self.out_dir / "metrics.json", m)
        return m


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
