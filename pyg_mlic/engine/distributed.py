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
  one-process :class:`~pyg_mlic.data.loader.EpochShuffleSampler` draws — and rank
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
  label statistics, training settings and initial model (the label graph and
  embeddings are computed deterministically on every rank from the same files; DDP then
  broadcasts rank 0's parameters and buffers anyway). :func:`state_digest` hashes every
  tensor by dtype, shape and bytes — 0-d and integer / bool buffers such as BatchNorm's
  ``num_batches_tracked`` included; :func:`broadcast_state` and :func:`all_gather_rows`
  move tensors of any dtype as raw bytes.
- :func:`convert_sync_batchnorm` (``TrainConfig(sync_bn=True)``) makes BatchNorm layers
  normalise with the statistics of the global batch: PyTorch's
  :class:`~torch.nn.SyncBatchNorm` on CUDA, :class:`DistributedBatchNorm` (differentiable
  all-reduces, any backend) on the CPU, where PyTorch's is not available.

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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from pyg_mlic.data.loader import DistributedEpochSampler  # noqa: F401  (re-exported)

__all__ = ["DistInfo", "init_distributed", "current", "destroy", "barrier", "under_launcher",
           "all_gather_rows", "gather_predictions", "all_reduce_sum",
           "check_ranks_agree", "state_digest", "broadcast_state", "DistributedBatchNorm",
           "convert_sync_batchnorm", "launch", "relaunch", "namespace_to_argv"]

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
        ValueError: ``device`` is not a device of this machine
            (:func:`~pyg_mlic.utils.device.resolve_device`).
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
    from pyg_mlic.utils.device import resolve_device

    use_cuda = resolve_device(device).type == "cuda"  # ValueError: a device not here
    if use_cuda:
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
# --------------------------------------------------------------------------- collectives
def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t`` as a flat ``uint8`` tensor (any dtype, any rank, 0-d too).

    Collectives that only move data (broadcast, all-gather) send these bytes instead of
    the tensor itself: gloo and nccl support different dtype sets (bool, bfloat16,
    complex ...), but every backend moves ``uint8``.
    """
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _from_bytes(raw: torch.Tensor, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`_as_bytes` (``raw`` is copied first, so its offset is aligned)."""
    return raw.clone().view(dtype).reshape(tuple(shape))


def all_gather_rows(t: torch.Tensor) -> List[torch.Tensor]:
    """``all_gather`` of tensors whose first dimension differs between ranks.

    Every rank pads its tensor with zeros to the largest first dimension, gathers, and
    trims each piece back to its true length. Any dtype works (the rows travel as raw
    bytes, so bool, integer, half and bfloat16 tensors need no backend support).

    Args:
        t (Tensor): ``[n_r, ...]`` on this rank (same trailing shape and dtype on all).

    Returns:
        list of Tensor: the tensors of ranks ``0 .. W-1`` (on ``t``'s device).

    Raises:
        ValueError: ``t`` is 0-d (it has no rows; gather ``t.reshape(1)``).
    """
    if t.dim() == 0:
        raise ValueError("all_gather_rows: a 0-d tensor has no rows to gather; "
                         "pass t.reshape(1)")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [t]
    dev = _comm_device()
    ws = dist.get_world_size()
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(ws)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s) for s in sizes]
    m = max(sizes_i)
    row_shape = tuple(t.shape[1:])
    row_bytes = int(math.prod(row_shape)) * t.element_size()
    padded = torch.zeros((m, row_bytes), dtype=torch.uint8, device=dev)
    if t.shape[0] and row_bytes:
        padded[: t.shape[0]] = _as_bytes(t).to(dev).reshape(t.shape[0], row_bytes)
    out = [torch.empty_like(padded) for _ in range(ws)]
    dist.all_gather(out, padded)
    return [_from_bytes(o[:k], t.dtype, (k, *row_shape)).to(t.device)
            for o, k in zip(out, sizes_i)]


def _state_tensors(state: Any, buffers_only: bool = False) -> List[torch.Tensor]:
    if isinstance(state, torch.nn.Module):
        tensors = [] if buffers_only else list(state.parameters())
        return tensors + [b for b in state.buffers() if b is not None]
    if isinstance(state, dict):
        return [state[k] for k in sorted(state, key=str) if isinstance(state[k], torch.Tensor)]
    return [t for t in state if isinstance(t, torch.Tensor)]


@torch.no_grad()
def broadcast_state(state: Any, src: int = 0, buffers_only: bool = False) -> None:
    """Overwrite, in place, every rank's tensors with those of rank ``src``.

    All tensors travel as one ``uint8`` buffer (one collective, any mix of dtypes and
    shapes: 0-d integer buffers such as BatchNorm's ``num_batches_tracked``, bool masks,
    half / bfloat16 weights). No-op in one process.

    Args:
        state: a :class:`torch.nn.Module` (its parameters and buffers), a state dict or
            a list of tensors — the same structure (names, shapes, dtypes) on every rank.
        src (int): the rank whose values win. (default: :obj:`0`)
        buffers_only (bool): for a module, only its buffers (e.g. BatchNorm running
            statistics, which DDP does not average). (default: :obj:`False`)
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    tensors = _state_tensors(state, buffers_only)
    if not tensors:
        return
    dev = _comm_device()
    flat = torch.cat([_as_bytes(t).to(dev) for t in tensors])
    dist.broadcast(flat, src)
    o = 0
    for t in tensors:
        nb = t.numel() * t.element_size()
        t.copy_(_from_bytes(flat[o:o + nb], t.dtype, t.shape))
        o += nb


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


def _tensor_bytes(t: torch.Tensor) -> Tuple[str, bytes]:
    """``(header, raw bytes)`` of any dense or sparse tensor, whatever its dtype and rank.

    ``Tensor.view(torch.uint8)`` cannot reinterpret a 0-d tensor whose element is wider
    than a byte (BatchNorm's ``num_batches_tracked``, an int64 scalar), and
    ``Tensor.numpy()`` knows no ``bfloat16``: the tensor is flattened first and its bytes
    are read through a ``uint8`` view, which works for every dtype (bool, integers,
    floating point of any width, complex).
    """
    t = t.detach()
    if t.layout != torch.strided:  # sparse: the dense values (layouts differ between ranks)
        t = t.to_dense()
    a = t.cpu().contiguous().reshape(-1)
    head = f"{a.dtype}{tuple(t.shape)}"
    return head, (a.view(torch.uint8).numpy().tobytes() if a.numel() else b"")


def state_digest(*objs: Any) -> str:
    """SHA-256 of tensors / arrays / state dicts / plain values (for cross-rank checks).

    Tensors and arrays count with dtype, shape and every bit — including 0-d tensors and
    integer / bool buffers such as BatchNorm's ``num_batches_tracked``; numbers, strings
    and ``None`` by value; NumPy object arrays element by element; other objects only by
    type name (their ``repr`` may hold a memory address, which differs between processes).
    """
    h = hashlib.sha256()

    def feed(o: Any) -> None:
        if isinstance(o, dict):
            h.update(f"{{{len(o)}".encode())
            for k in sorted(o, key=str):
                h.update(str(k).encode())
                feed(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"[{len(o)}".encode())
            for v in o:
                feed(v)
        elif isinstance(o, torch.Tensor):
            head, raw = _tensor_bytes(o)
            h.update(head.encode())
            h.update(raw)
        elif isinstance(o, np.ndarray):
            h.update(f"{o.dtype}{o.shape}".encode())
            if o.dtype.hasobject:  # the bytes of an object array are pointers
                for v in o.reshape(-1).tolist():
                    feed(v)
            else:
                h.update(np.ascontiguousarray(o).tobytes())
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


# --------------------------------------------------------------------------- synchronised BN
class _AllReduceSum(torch.autograd.Function):
    r""":math:`\mathbf{y} = \sum_r \mathbf{x}_r` on every rank, differentiable.

    With the objective :math:`L = \sum_s L_s` (rank :math:`s` computes :math:`L_s` from the
    common :math:`\mathbf{y}`), :math:`\partial L / \partial \mathbf{x}_r = \sum_s
    \partial L_s / \partial \mathbf{y}`: the backward pass is the same all-reduce of the
    incoming gradients. Every rank must call it equally often, in the same order (true
    for the same model on every rank).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        y = x.detach().clone().contiguous()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        g = grad.detach().clone().contiguous()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


def _sync_batch_norm(x: torch.Tensor, weight: Optional[torch.Tensor],
                     bias: Optional[torch.Tensor], running_mean: Optional[torch.Tensor],
                     running_var: Optional[torch.Tensor], momentum: float, eps: float,
                     group: Any) -> torch.Tensor:
    r"""Batch normalisation over the union of every rank's batch (training mode).

    Two all-reduces per call, both differentiable (:class:`_AllReduceSum`): the channel
    sums with the element count give the global mean :math:`\mu`, then the sums of
    :math:`(x - \mu)^2` give the biased global variance :math:`\sigma^2` (two passes, as
    :func:`torch.nn.functional.batch_norm` computes it, without the cancellation of
    :math:`E[x^2] - \mu^2`). Statistics accumulate in at least fp32. The running
    statistics are updated exactly like BatchNorm's on the global batch (unbiased
    variance :math:`\sigma^2 N / (N - 1)`), identically on every rank.
    """
    C = x.shape[1]
    dims = [0] + list(range(2, x.dim()))
    shape = [1, C] + [1] * (x.dim() - 2)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    count = x.numel() // max(C, 1)
    s = xf.sum(dims)
    stats = _AllReduceSum.apply(torch.cat([s, s.new_full((1,), float(count))]), group)
    n = stats[C]
    n_total = float(n.detach())
    if n_total <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got "
                         f"{int(n_total)} over all ranks (input size {list(x.shape)} here)")
    mean = stats[:C] / n
    d = xf - mean.view(shape)
    var = _AllReduceSum.apply((d * d).sum(dims), group) / n
    y = d * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.mul_(1.0 - momentum).add_(mean.detach().to(running_mean.dtype),
                                                   alpha=momentum)
            unbiased = var.detach() * (n_total / (n_total - 1.0))
            running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype),
                                                  alpha=momentum)
    return y.to(x.dtype)


class DistributedBatchNorm(_BatchNorm):
    r"""BatchNorm whose training statistics are those of the global batch, on any backend.

    A drop-in replacement for :class:`torch.nn.SyncBatchNorm` that also runs on the CPU
    with ``gloo`` (PyTorch's own — run in 2.14, and the same in earlier releases' sources —
    accepts only accelerator inputs, computes its statistics with the CUDA-only
    ``torch.batch_norm_stats``, and
    :class:`~torch.nn.parallel.DistributedDataParallel` refuses a CPU module that holds
    one). In training mode inside a process group of :math:`W > 1` ranks it normalises
    with the mean and biased variance over all ranks' samples,

    .. math::
        \mu = \frac{1}{N} \sum_{r} \sum_{i \in \mathcal{B}_r} x_i, \qquad
        \sigma^2 = \frac{1}{N} \sum_{r} \sum_{i \in \mathcal{B}_r} (x_i - \mu)^2,
        \qquad N = \sum_r |\mathcal{B}_r|

    (per channel, over batch and spatial positions; ranks may hold different numbers of
    samples), with gradients that flow across ranks through both all-reduces, so that
    :math:`W` processes with per-rank batches :math:`\mathcal{B}_r` compute what one
    process computes on :math:`\bigcup_r \mathcal{B}_r`. In evaluation mode, in one
    process, or with a frozen (``eval()``) layer it is :func:`torch.nn.functional.batch_norm`
    with no communication. Parameters, buffers and the state dict are BatchNorm's.

    Build it with :func:`convert_sync_batchnorm` (which keeps the layers' ``Parameter``
    objects and buffers) rather than directly.

    Args:
        num_features (int): channels :math:`C`.
        eps, momentum, affine, track_running_stats: as for :class:`torch.nn.BatchNorm2d`.
        process_group: the group to synchronise over (default: the whole world).

    Shapes:
        - **input:** :math:`(B, C, *)` (the dimensions of the converted layer's class
          when converted)
        - **output:** same as the input
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Any = None, device: Any = None, dtype: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.process_group = process_group
        #: input ranks accepted (those of the converted class; ``None``: any >= 2)
        self.input_dims: Optional[Tuple[int, ...]] = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if self.input_dims is not None and input.dim() not in self.input_dims:
            want = " or ".join(f"{d}D" for d in self.input_dims)
            raise ValueError(f"expected {want} input (got {input.dim()}D input)")
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        running_mean = self.running_mean if use_buffers else None
        running_var = self.running_var if use_buffers else None
        group = self.process_group if self.process_group is not None else (
            dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        sync = (bn_training and self.training and group is not None
                and dist.get_world_size(group) > 1)
        if not sync:
            return F.batch_norm(input, running_mean, running_var, self.weight, self.bias,
                                bn_training, factor, self.eps)
        return _sync_batch_norm(input, self.weight, self.bias, running_mean, running_var,
                                factor, self.eps, group)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", synchronised"


def _input_dims_of(module: torch.nn.Module) -> Optional[Tuple[int, ...]]:
    if isinstance(module, torch.nn.BatchNorm1d):
        return (2, 3)
    if isinstance(module, torch.nn.BatchNorm2d):
        return (4,)
    if isinstance(module, torch.nn.BatchNorm3d):
        return (5,)
    return getattr(module, "input_dims", None)


def convert_sync_batchnorm(module: torch.nn.Module, process_group: Any = None, *,
                           device: Any = None, impl: str = "auto") -> torch.nn.Module:
    """Replace every BatchNorm layer of ``module`` by a synchronised one (in place).

    Like :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`, the new layers take over
    the old layers' ``Parameter`` objects and buffers (so optimiser groups, the state dict
    and its keys are unchanged) and their training mode (a frozen ``eval()`` layer stays
    frozen and never communicates).

    Args:
        module: the model (the root itself may be a BatchNorm layer: use the return value).
        process_group: the group to synchronise over (default: the whole world).
        device: the training device; decides ``impl="auto"``.
        impl (str): ``"auto"`` (PyTorch's fused :class:`torch.nn.SyncBatchNorm` on CUDA,
            :class:`DistributedBatchNorm` elsewhere), ``"torch"`` or ``"pyg_mlic"``
            (:class:`DistributedBatchNorm` on every device and backend).

    Returns:
        the converted module.
    """
    if impl not in ("auto", "torch", "pyg_mlic"):
        raise ValueError(f"convert_sync_batchnorm: impl must be 'auto', 'torch' or 'pyg_mlic', "
                         f"got {impl!r}")
    dev_type = torch.device(device).type if device is not None else None
    if impl == "auto":
        if dev_type is None:
            p = next(iter(module.parameters()), None)
            dev_type = p.device.type if p is not None else "cpu"
        impl = "torch" if dev_type == "cuda" else "pyg_mlic"
    if impl == "torch":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    return _convert_distributed_bn(module, process_group)


def _convert_distributed_bn(module: torch.nn.Module, process_group: Any) -> torch.nn.Module:
    from torch.nn.modules.lazy import LazyModuleMixin

    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, DistributedBatchNorm) \
            and not (isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()):
        out = DistributedBatchNorm(module.num_features, module.eps, module.momentum,
                                   module.affine, module.track_running_stats, process_group)
        out.input_dims = _input_dims_of(module)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, _convert_distributed_bn(child, process_group))
    return out


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
