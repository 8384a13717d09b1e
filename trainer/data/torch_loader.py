"""The torch two-view loader: DataLoader worker processes decode and augment each sample with torch ops.

For machines without DALI (and CPU runs). Each worker reads its samples' bytes at the
offsets of the `.idx` files (one positioned read per sample), decodes them by the
manifest's codec (JPEG with PIL), normalises, and draws both views with per-sample parameters
(trainer/data/augment.py). Interface: trainer/data/two_view.py.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from trainer.data.augment import apply_view, draw_views, to_unit
from trainer.data.two_view import TwoViewBatch, TwoViewLoader
from trainer.errors import leave_stops_to_the_trainer, worker_batches


class _TwoViews(Dataset):
    """Plan position i -> (view 1, view 2, sample id); forked into the workers with the loader's table."""

    def __init__(self, loader: TwoViewLoader, ids, epoch: int):
        self.reader, self.table, self.ext = loader.reader, loader.table, loader.ext
        self.seed, self.aug, self.ids, self.epoch = loader.seed, loader.aug, ids, epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        sid = int(self.ids[i])
        x = torch.from_numpy(to_unit(self.reader.read(self.table, sid, self.ext), self.aug))
        params = draw_views(self.seed, self.epoch, sid, tuple(x.shape[-2:]), self.aug)
        return apply_view(x, params[0], self.aug), apply_view(x, params[1], self.aug), sid


class TorchTwoViewLoader(TwoViewLoader):
    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TwoViewBatch]:
        data = _TwoViews(self, self.plan(epoch, start_step), epoch)
        pin = self.device.type == "cuda"
        loader = DataLoader(data, batch_size=self.batch, shuffle=False, drop_last=False, num_workers=self.workers,
                            pin_memory=pin, persistent_workers=False,
                            prefetch_factor=4 if self.workers else None, worker_init_fn=leave_stops_to_the_trainer)
        for v1, v2, ids in worker_batches(loader):
            yield TwoViewBatch(v1.to(self.device, non_blocking=pin), v2.to(self.device, non_blocking=pin), ids)
