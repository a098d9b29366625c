r"""Loaders and samplers shared by training, evaluation, feature extraction and the
image-feature embeddings: the one place that turns a dataset into batches.

- :func:`make_loader`: a :class:`~torch.utils.data.DataLoader` with the pyg_mlic
  :func:`~pyg_mlic.data.base.collate`, a seeded epoch sampler for training and, with
  ``world_size > 1``, a :class:`DistributedEpochSampler` shard.
- :func:`to_device`: the input check at the data boundary
  (:func:`~pyg_mlic.data.base.check_batch_finite`, on the host) and the transfer.

They live in the data layer (not in the engine) so that :mod:`pyg_mlic.data` and
:mod:`pyg_mlic.embeddings` use them without importing the training engine.
"""
from __future__ import annotations

import math
import random
from typing import Any, Dict, Iterator, List

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from pyg_mlic.data.base import check_batch_finite, collate

__all__ = ["epoch_seed", "EpochShuffleSampler", "DistributedEpochSampler", "make_loader",
           "to_device"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded with ``seed`` (every generator is
    reseeded from it, so a resumed run continues exactly as an uninterrupted one)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**31 - 1)


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on ``(seed, epoch)``."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class DistributedEpochSampler(DistributedSampler):
    r"""A :class:`~torch.utils.data.DistributedSampler` with the engine's epoch permutation.

    Epoch :math:`e` shuffles with ``torch.randperm(N)`` seeded from ``(seed, e)``
    exactly as :class:`EpochShuffleSampler` (so the run is reproducible and comparable to
    one process); the permutation is padded to a multiple of ``num_replicas`` by
    repeating its first entries (as :class:`~torch.utils.data.DistributedSampler` does)
    and rank :math:`r` takes positions :math:`r, r + W, \dots`. Call :meth:`set_epoch`
    every epoch.

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
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        pad = self.total_size - n
        if pad > 0:
            order += (order * math.ceil(pad / n))[:pad]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank:self.total_size:self.num_replicas])


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % (2**32)
    random.seed(s)
    np.random.seed(s)


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0,
                num_workers: int = 0, world_size: int = 1, rank: int = 0) -> DataLoader:
    """DataLoader with the pyg_mlic collate and, for training, a seeded epoch sampler.

    With ``world_size > 1`` the sampler is a :class:`DistributedEpochSampler` (shuffled
    for training, in dataset order for evaluation) and ``batch_size`` is the *per-rank*
    batch.
    """
    if world_size > 1:
        sampler = DistributedEpochSampler(dataset, world_size, rank, shuffle=train, seed=seed)
    else:
        sampler = EpochShuffleSampler(len(dataset), seed) if train else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=num_workers, collate_fn=collate, drop_last=False,
                      worker_init_fn=_worker_init if num_workers else None,
                      persistent_workers=False)


def to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """Check the batch's inputs on the host (no device synchronisation), then move it."""
    check_batch_finite(batch)
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            out[k] = [t.to(device) for t in v]
        else:
            out[k] = v
    return out
