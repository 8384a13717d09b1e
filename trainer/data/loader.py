"""One interface for the two two-view loaders (torch on CPU workers, DALI on the GPU).

    from trainer.data.loader import make_loader
    loader = make_loader("dali", "data/", split="train", global_batch=4096, rank=r, world_size=w,
                         seed=0, aug=AugmentConfig(...), workers=8, device=torch.device("cuda", r))
    loader.steps_per_epoch                      # the same on every rank
    for batch in loader.epoch(epoch, start_step=0):
        batch.view1, batch.view2                # (b, 1, S, S) float32 in [0, 1], on `device`
        batch.ids                               # (b,) int64 sample ids (index into the split's sample table)
    loader.close()

Both read the same samples in the same order, the plan of trainer/data/sharding.py, and
draw the same per-sample augmentation parameters (trainer/data/augment.py); they differ
only in where decoding and augmenting run. `start_step` resumes inside an epoch.
"""
from __future__ import annotations

import os
from typing import Iterator, NamedTuple

import numpy as np
import torch

from trainer.data.augment import AugmentConfig
from datakit.read import SampleReader, TlxDataset, open_dataset
from trainer.data.sharding import epoch_plan, per_rank_batch, steps_per_epoch
from trainer.errors import TrainerError

LOADERS = ("dali", "torch")


class TwoViewBatch(NamedTuple):
    view1: torch.Tensor
    view2: torch.Tensor
    ids: torch.Tensor


class TwoViewLoader:
    """What both loaders share: dataset, sample table, plan; subclasses turn plans into batches."""

    def __init__(self, dataset: TlxDataset | str | os.PathLike, split: str, *, global_batch: int, rank: int,
                 world_size: int, seed: int, aug: AugmentConfig, workers: int, device: torch.device):
        self.dataset = dataset if isinstance(dataset, TlxDataset) else open_dataset(dataset)
        self.ext, spec = self.dataset.member("image")
        if spec.shape is None or len(spec.shape) != 2:
            raise TrainerError(f"image member {self.ext!r} has shape {spec.shape}; SimCLR reads one-channel (H, W) slices")
        self.table = self.dataset.sample_table(split)
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.batch = per_rank_batch(global_batch, world_size)
        self.steps_per_epoch = steps_per_epoch(len(self.table), global_batch)
        self.seed, self.aug, self.workers, self.device = seed, aug, workers, device
        self.reader = SampleReader(self.dataset)

    def plan(self, epoch: int, start_step: int = 0) -> np.ndarray:
        """This rank's sample ids for `epoch` from `start_step` on."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise TrainerError(f"start step {start_step} outside the epoch's {self.steps_per_epoch} steps")
        ids = epoch_plan(len(self.table), self.global_batch, seed=self.seed, epoch=epoch,
                         rank=self.rank, world_size=self.world_size)
        return ids[start_step * self.batch:]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TwoViewBatch]:
        raise NotImplementedError

    def close(self) -> None:
        self.reader.close()


def make_loader(kind: str, dataset, split: str, **kwargs) -> TwoViewLoader:
    if kind == "torch":
        from trainer.data.torch_loader import TorchTwoViewLoader
        return TorchTwoViewLoader(dataset, split, **kwargs)
    if kind == "dali":
        from trainer.data.dali_loader import DaliTwoViewLoader
        return DaliTwoViewLoader(dataset, split, **kwargs)
    raise TrainerError(f"--loader {kind!r} is not one of {', '.join(LOADERS)}")
