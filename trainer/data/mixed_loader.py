"""The two-view loader of a mixed run (several --data, --mix): torch workers, the plan of trainer/data/mixing.py.

    loader = MixedTwoViewLoader(["ct/", "natural/"], [1, 1], "train", global_batch=64, rank=r, world_size=w,
                                seed=0, aug=AugmentConfig(image_size=64), workers=2, device=torch.device("cpu"))
    for batch in loader.epoch(0):
        batch.view1, batch.view2     # (b, 3, S, S): RGB and replicated-gray CT share the batch at one view size
        batch.ids, batch.sources     # sample id within its dataset, dataset index

Each dataset keeps its own kind: CT slices are normalised by --normalize and get the CT
jitter, JPEG datasets are RGB and get the RGB set (trainer/data/augment.py); a CT view is
replicated to 3 channels when any dataset is RGB. Augmentation parameters are keyed by
(seed, epoch, sample id + dataset index * 2**40): dataset 0's are those of a plain run.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datakit.read import SampleReader, SampleTable, TlxDataset, open_dataset
from trainer.data.augment import AugmentConfig, apply_view, draw_views, to_unit
from trainer.data.mixing import mix_counts, mixed_epoch_plan, mixed_steps
from trainer.data.sharding import per_rank_batch
from trainer.data.two_view import TwoViewBatch, image_member, split_table
from trainer.errors import TrainerError, leave_stops_to_the_trainer, worker_batches

SOURCE_KEY = 2 ** 40  # sample ids of dataset i are keyed as id + i * SOURCE_KEY for the augmentations


@dataclass
class MixSource:
    dataset: TlxDataset
    ext: str
    table: SampleTable
    reader: SampleReader
    aug: AugmentConfig


class MixedTwoViewLoader:
    def __init__(self, datasets: list, weights: list[float], split: str, *, global_batch: int, rank: int,
                 world_size: int, seed: int, aug: AugmentConfig, workers: int, device: torch.device):
        self.sources = []
        for ds in datasets:
            ds = ds if isinstance(ds, TlxDataset) else open_dataset(ds)
            ext, rgb = image_member(ds)
            self.sources.append(MixSource(ds, ext, split_table(ds, split), SampleReader(ds), replace(aug, rgb=rgb)))
        self.rgb = any(s.aug.rgb for s in self.sources)
        self.aug = aug
        self.counts = mix_counts(weights, global_batch)
        self.sizes = [len(s.table) for s in self.sources]
        self.steps_per_epoch = mixed_steps(self.sizes, self.counts)
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.batch = per_rank_batch(global_batch, world_size)
        self.seed, self.workers, self.device = seed, workers, device

    @property
    def channels(self) -> int:
        return 3 if self.rgb or self.aug.input_scale != "unit" else 1

    def plan(self, epoch: int, start_step: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """This rank's (dataset index, sample id) arrays for `epoch` from `start_step` on."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise TrainerError(f"start step {start_step} outside the epoch's {self.steps_per_epoch} steps")
        src, ids = mixed_epoch_plan(self.sizes, self.counts, seed=self.seed, epoch=epoch, rank=self.rank,
                                    world_size=self.world_size)
        return src[start_step * self.batch:], ids[start_step * self.batch:]

    def source_counts(self, epoch: int, steps: int) -> list[int]:
        """Samples of each dataset in the first `steps` global batches of `epoch`, over all ranks."""
        src, _ = mixed_epoch_plan(self.sizes, self.counts, seed=self.seed, epoch=epoch, rank=0, world_size=1)
        return np.bincount(src[: steps * self.global_batch], minlength=len(self.sources)).tolist()

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TwoViewBatch]:
        data = _MixedViews(self, *self.plan(epoch, start_step), epoch)
        pin = self.device.type == "cuda"
        loader = DataLoader(data, batch_size=self.batch, shuffle=False, drop_last=False, num_workers=self.workers,
                            pin_memory=pin, persistent_workers=False, prefetch_factor=4 if self.workers else None,
                            worker_init_fn=leave_stops_to_the_trainer)
        for v1, v2, ids, src in worker_batches(loader):
            yield TwoViewBatch(v1.to(self.device, non_blocking=pin), v2.to(self.device, non_blocking=pin), ids, src)

    def close(self) -> None:
        for s in self.sources:
            s.reader.close()


class _MixedViews(Dataset):
    """Plan position i -> (view 1, view 2, sample id, dataset index)."""

    def __init__(self, loader: MixedTwoViewLoader, src: np.ndarray, ids: np.ndarray, epoch: int):
        self.sources, self.src, self.ids, self.epoch = loader.sources, src, ids, epoch
        self.seed, self.channels = loader.seed, loader.channels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        s, sid = int(self.src[i]), int(self.ids[i])
        source = self.sources[s]
        x = torch.from_numpy(to_unit(source.reader.read(source.table, sid, source.ext), source.aug))
        params = draw_views(self.seed, self.epoch, sid + s * SOURCE_KEY, tuple(x.shape[-2:]), source.aug)
        views = [apply_view(x, p, source.aug) for p in params]
        views = [v.expand(self.channels, -1, -1) if v.shape[0] != self.channels else v for v in views]
        return views[0].contiguous(), views[1].contiguous(), sid, s
