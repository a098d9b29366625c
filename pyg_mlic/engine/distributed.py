r"""Multi-process training with :mod:`torch.distributed` (DDP), launched by ``torchrun``.

The engine runs unchanged in one process; under ``torchrun`` (or ``pyg-mlic train
--nproc N``, which starts ``torch.distributed.run`` on this machine) every process
("rank") runs the same :class:`~pyg_mlic.engine.Trainer` and this module supplies
the parts that differ:

- :func:`init_distributed` reads the launcher's environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the
  process group: backend ``nccl`` when training on CUDA, ``gloo`` on the CPU.
- :class:`DistributedEpochSampler` is a :class:`~torch.utils.data.DistributedSampler`
  whose permutation depends only on ``(seed, epoch)`` — the *same* permutation the
  one-process :class:`~pyg_mlic.engine.trainer.EpochShuffleSampler` draws — and rank
  :math:`r` of :math:`W` takes positions :math:`r, r + W, r + 2W, \dots`. With a
  per-rank batch :math:`b = B / W`, step :math:`k` of rank :math:`r` sees positions
  :math:`[kB, (k+1)B)` of the permutation, so the union over ranks of step
  :math:`k` is exactly step :math:`k` of a one-process run with batch :math:`B`;
  DDP averages the gradients, and the mean of :math:`W` per-rank mean losses over
  equal-sized shards is the mean over the global batch. ``--batch-size`` is
  therefore the **global** batch :math:`B` (it must be divisible by :math:`W`).
- :func:`gather_predictions` collects the scores, targets and masks of every rank
  (``all_gather`` with padding to the largest shard), drops the samples the
  sampler repeated to give every rank the same number (by sample index), and
  returns them in dataset order: metrics are computed on the union, exactly the
  rows a one-process evaluation sees.
- :func:`check_ranks_agree` verifies that every rank built the same class list,
  label statistics and initial model (the label graph and embeddings are computed
  deterministically on every rank from the same files; DDP then broadcasts rank 0's
  parameters and buffers anyway).

Only rank 0 writes checkpoints, ``history.json`` and ``metrics.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["DistInfo", "init_distributed", "current", "destroy", "barrier", "under_launcher",
           "DistributedEpochSampler", "all_gather_rows", "gather_predictions", "all_reduce_sum",
           "check_ranks_agree", "state_digest", "launch", "relaunch", "namespace_to_argv"]

#: launcher environment variables (set by ``torchrun`` / ``torch.distributed.run``)
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the process group.

    Attributes:
        rank (int): global rank (0 = the process that writes files).
        world_size (int): number of processes.
        local_rank (int): rank on this node (selects the GPU).
        backend (str or None): ``"gloo"``, ``"nccl"`` or ``None`` (one process).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        """``True`` on rank 0."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """``True`` when more than one process trains."""
        return self.world_size > 1


def under_launcher() -> bool:
    """``True`` when the process was started by ``torchrun`` with ``WORLD_SIZE > 1``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def current() -> DistInfo:
    """The :class:`DistInfo` of an initialised process group (one process otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                    backend=str(dist.get_backend()))


def init_distributed(device: Optional[str] = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by the launcher's environment.

    Without a launcher (``WORLD_SIZE`` unset or 1) nothing happens and a one-process
    :class:`DistInfo` is returned, so callers can call this unconditionally.

    Args:
        device (str, optional): the training device; ``cuda`` (or ``None`` with a GPU
            present) selects ``nccl`` and the GPU ``LOCAL_RANK``, anything else ``gloo``.
        timeout_s (float): collective-operation timeout in seconds.

    Raises:
        RuntimeError: ``torch.distributed`` is not available, or the launcher's
            environment is incomplete.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if not under_launcher():
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    missing = [k for k in _ENV + ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"distributed launch: environment variables {missing} are not set; "
                           "start the run with torchrun (or pyg-mlic train --nproc N)")
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = (device.startswith("cuda") if device else torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device} requested but CUDA is not available")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return current()


def destroy() -> None:
    """Leave the process group (no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------------- sampler
class DistributedEpochSampler(DistributedSampler):
    r"""A :class:`~torch.utils.data.DistributedSampler` with the engine's epoch permutation.

    Epoch :math:`e` shuffles with ``torch.randperm(N)`` seeded from ``(seed, e)``
    exactly as :class:`~pyg_mlic.engine.trainer.EpochShuffleSampler` (so the run is
    reproducible and comparable to one process); the permutation is padded to a
    multiple of ``num_replicas`` by repeating its first entries (as
    :class:`~torch.utils.data.DistributedSampler` does) and rank :math:`r` takes
    positions :math:`r, r + W, \dots`. Call :meth:`set_epoch` every epoch.

    Args:
        dataset: the dataset (only its length is used).
        num_replicas (int): world size :math:`W`.
        rank (int): this process's rank.
        shuffle (bool): shuffle (training) or keep dataset order (evaluation).
        seed (int): the run's seed.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True,
                 seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=False)

    def global_order(self) -> List[int]:
        """The padded permutation of every rank together (length ``total_size``)."""
        n = len(self.dataset)
        if self.shuffle:
            from pyg_mlic.engine.trainer import _epoch_seed

            g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        pad = self.total_size - n
        if pad > 0:
            order += (order * math.ceil(pad / n))[:pad]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank:self.total_size:self.num_replicas])


# --------------------------------------------------------------------------- collectives
def all_gather_rows(t: torch.Tensor) -> List[torch.Tensor]:
    """``all_gather`` of tensors whose first dimension differs between ranks.

    Every rank pads its tensor with zeros to the largest first dimension, gathers, and
    trims each piece back to its true length.

    Args:
        t (Tensor): ``[n_r, ...]`` on this rank (same trailing shape and dtype on all).

    Returns:
        list of Tensor: the tensors of ranks ``0 .. W-1`` (on ``t``'s device).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [t]
    dev = _comm_device()
    ws = dist.get_world_size()
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(ws)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s) for s in sizes]
    m = max(sizes_i)
    dtype = t.dtype
    x = t.to(torch.uint8) if dtype == torch.bool else t  # gloo has no bool all_gather
    padded = torch.zeros((m, *x.shape[1:]), dtype=x.dtype, device=dev)
    padded[: x.shape[0]] = x.to(dev)
    out = [torch.empty_like(padded) for _ in range(ws)]
    dist.all_gather(out, padded)
    return [o[:k].to(t.device).to(dtype) for o, k in zip(out, sizes_i)]


def gather_predictions(pred: Dict[str, torch.Tensor], indices: Sequence[int],
                       num_samples: int) -> Dict[str, torch.Tensor]:
    """Union of every rank's predictions, duplicates dropped, in dataset order.

    Args:
        pred: this rank's :func:`~pyg_mlic.engine.predict` output (``logits``,
            ``target``, ``mask`` and optionally ``features``, rows in sampler order).
        indices: the dataset index of each row (the rank's sampler order).
        num_samples: dataset length :math:`N`.

    Returns:
        dict: the same keys with ``N`` rows, row :math:`i` = sample :math:`i`.

    Raises:
        RuntimeError: the ranks together did not cover every sample exactly (a sampler
            bug; metrics on a partial set would be silently wrong).
    """
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    if idx.numel() != pred["logits"].shape[0]:
        raise RuntimeError(f"gather_predictions: {pred['logits'].shape[0]} predictions but "
                           f"{idx.numel()} sample indices on this rank")
    all_idx = torch.cat(all_gather_rows(idx))
    out: Dict[str, torch.Tensor] = {}
    # first occurrence of every index (the repeats are the sampler's padding)
    order = torch.argsort(all_idx, stable=True)
    sorted_idx = all_idx[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    keep = order[first]
    got = all_idx[keep]
    if got.numel() != num_samples or not torch.equal(got, torch.arange(num_samples)):
        raise RuntimeError(f"gather_predictions: the ranks evaluated {got.numel()} distinct "
                           f"samples, expected all {num_samples}")
    for key, value in pred.items():
        out[key] = torch.cat(all_gather_rows(value))[keep]
    return out


def all_reduce_sum(values: Dict[str, float]) -> Dict[str, float]:
    """Sum a ``{name: float}`` dict over ranks (same keys on every rank)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=_comm_device())
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def state_digest(*objs: Any) -> str:
    """SHA-256 of tensors / arrays / state dicts / plain values (for cross-rank checks).

    Tensors and arrays count with dtype, shape and every bit; numbers, strings and
    ``None`` by value; other objects only by type name (their ``repr`` may hold a
    memory address, which differs between processes).
    """
    h = hashlib.sha256()

    def feed(o: Any) -> None:
        if isinstance(o, dict):
            for k in sorted(o, key=str):
                h.update(str(k).encode())
                feed(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"[{len(o)}".encode())
            for v in o:
                feed(v)
        elif isinstance(o, torch.Tensor):
            a = o.detach().cpu().contiguous()
            h.update(f"{a.dtype}{tuple(a.shape)}".encode())
            h.update(a.view(torch.uint8).numpy().tobytes() if a.numel() else b"")
        elif isinstance(o, np.ndarray):
            a = np.ascontiguousarray(o)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        elif o is None or isinstance(o, (str, bytes, bool, int, float, np.generic)):
            h.update(f"{type(o).__name__}:{o!r}".encode())
        else:  # other objects: their repr may hold a memory address; their tensors are in
            h.update(type(o).__qualname__.encode())  # the state dict

    for o in objs:
        feed(o)
    return h.hexdigest()


def check_ranks_agree(what: str, digest: str) -> None:
    """Raise on every rank unless all ranks hold the same ``digest`` of ``what``.

    Raises:
        RuntimeError: naming ``what`` and the ranks that disagree with rank 0.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    digests: List[Optional[str]] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    bad = [r for r, d in enumerate(digests) if d != digests[0]]
    if bad:
        raise RuntimeError(f"distributed run: {what} differs between rank 0 and rank(s) {bad}; "
                           "every rank must read the same data files with the same settings")


# --------------------------------------------------------------------------- launcher
def namespace_to_argv(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      skip: Sequence[str] = ()) -> List[str]:
    """Rebuild a command line that ``parser`` parses back into ``args``.

    Every optional argument whose value differs from its default is written out
    (``store_true`` flags as the bare flag, ``nargs`` lists as separate words,
    ``append`` lists as repeated options). Used by :func:`launch` to re-run the same
    command in each worker; the result is verified by parsing it again.
    """
    argv: List[str] = []
    for action in parser._actions:  # noqa: SLF001 - argparse's documented-in-practice list
        if not action.option_strings or action.dest in skip or action.dest == "help":
            continue
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is None:
            continue
        opt = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                argv.append(opt)
        elif isinstance(action, argparse._StoreFalseAction):
            if not value:
                argv.append(opt)
        elif isinstance(action, argparse._AppendAction):
            for v in value:
                argv += [opt, str(v)]
        elif action.nargs in ("*", "+") or isinstance(action.nargs, int):
            argv += [opt, *map(str, value)]
        else:
            argv += [opt, str(value)]
    return argv


def launch(command: str, argv: Sequence[str], nproc: int,
           extra_launcher_args: Sequence[str] = ()) -> int:
    """Run ``python -m pyg_mlic.cli COMMAND ARGV`` in ``nproc`` processes on this machine.

    Uses ``python -m torch.distributed.run --standalone --nproc_per_node NPROC`` (the
    module behind ``torchrun``), which picks a free rendezvous port, sets ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` and stops every
    worker when one fails.

    Returns:
        int: the launcher's exit code (0 when every worker succeeded).
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={int(nproc)}", *extra_launcher_args,
           "-m", "pyg_mlic.cli", command, *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(nproc))))
    return subprocess.call(cmd, env=env)


def relaunch(parser: argparse.ArgumentParser, args: argparse.Namespace, command: str,
             nproc: int, skip: Sequence[str] = ("nproc",)) -> int:
    """Re-run a parsed CLI command in ``nproc`` local processes (``--nproc N``).

    The command line is rebuilt from ``args`` with :func:`namespace_to_argv` (minus
    ``skip``), checked to parse back into the same values, and handed to :func:`launch`.

    Raises:
        RuntimeError: the rebuilt command line would not reproduce ``args``.
    """
    argv = namespace_to_argv(parser, args, skip)
    again = parser.parse_args(argv)
    ignore = set(skip) | {"func"}
    diff = sorted(k for k, v in vars(again).items()
                  if k not in ignore and not k.startswith("_") and getattr(args, k, None) != v)
    if diff:
        raise RuntimeError(f"--nproc: cannot rebuild the command line for the workers "
                           f"(options {diff} do not round-trip); run torchrun directly")
    return launch(command, argv, nproc)
