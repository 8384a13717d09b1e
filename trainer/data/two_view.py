"""What the two two-view loaders share (trainer/data/loader.py picks one): the batch they yield and
their base class, which holds the dataset, its sample table and this rank's plan. The
implementations (torch_loader, dali_loader) subclass it; only `epoch` differs.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Iterator, NamedTuple

import numpy as np
import torch

from datakit.read import SampleReader, TlxDataset, open_dataset
from trainer.data.augment import AugmentConfig
from trainer.data.sharding import epoch_plan, per_rank_batch, steps_per_epoch
from trainer.errors import TrainerError


class TwoViewBatch(NamedTuple):
    view1: torch.Tensor
    view2: torch.Tensor
    ids: torch.Tensor
    sources: torch.Tensor | None = None   # (b,) int64 dataset index of each sample (mixed runs only)


def image_member(dataset: TlxDataset) -> tuple[str, bool]:
    """(the image member's extension, whether it is RGB): int16 (H, W) CT slices, or JPEG images."""
    ext, spec = dataset.member("image")
    if spec.codec == "jpeg":
        return ext, True
    if spec.shape is None or len(spec.shape) != 2:
        raise TrainerError(f"image member {ext!r} has shape {spec.shape} and codec {spec.codec}; SimCLR reads "
                           f"one-channel (H, W) slices or JPEG images")
    return ext, False


def split_table(dataset: TlxDataset, split: str):
    """The split's sample table; TrainerError when the dataset has no such split (or an empty one)."""
    if dataset.num_samples(split) == 0:
        raise TrainerError(f"dataset {dataset.root} has no {split} split (or an empty one); SimCLR trains on the "
                           f"train split of a dataset tlx wrote")
    return dataset.sample_table(split)


class TwoViewLoader:
    """What both loaders share: dataset, sample table, plan; subclasses turn plans into batches."""

    def __init__(self, dataset: TlxDataset | str | os.PathLike, split: str, *, global_batch: int, rank: int,
                 world_size: int, seed: int, aug: AugmentConfig, workers: int, device: torch.device):
        self.dataset = dataset if isinstance(dataset, TlxDataset) else open_dataset(dataset)
        self.ext, self.rgb = image_member(self.dataset)
        aug = replace(aug, rgb=self.rgb)
        self.table = split_table(self.dataset, split)
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.batch = per_rank_batch(global_batch, world_size)
        self.steps_per_epoch = steps_per_epoch(len(self.table), global_batch)
        self.seed, self.aug, self.workers, self.device = seed, aug, workers, device
        self.reader = SampleReader(self.dataset)

    @property
    def channels(self) -> int:
        """Channels of a view: 3 for RGB or --input-scale imagenet, else 1 (the model replicates it)."""
        return 3 if self.rgb or self.aug.input_scale != "unit" else 1

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
