"""The first stage of the DALI loader: plan position -> (HU slice, sample id, two views' parameters).

Runs in DALI's Python worker processes (a parallel `fn.external_source`), which import
this module to unpickle `PlanSource`; it imports numpy and zstandard, not torch, so the
workers start in a fraction of a second.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datakit.read import SampleTable
from trainer.data.augment import NO_BLUR_SIGMA, SIGMA, draw_views
from trainer.data.sharding import epoch_plan


class PlanSource:
    """Per-sample callback of the parallel external source, pickled into DALI's worker processes.

    It carries no per-sample arrays (they would be pickled into every worker): the table is
    memory-mapped from `table_dir`, the plan recomputed from (seed, epoch)."""

    def __init__(self, loader, table_dir: Path, first_epoch: int, first_step: int):
        self.reader, self.ext, self.seed, self.aug = loader.reader, loader.ext, loader.seed, loader.aug
        self.n, self.global_batch, self.batch = len(loader.table), loader.global_batch, loader.batch
        self.rank, self.world_size = loader.rank, loader.world_size
        self.table_dir, self.first_epoch, self.first_step = table_dir, first_epoch, first_step
        self._table: SampleTable | None = None
        self._plan: tuple[int, np.ndarray] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_table": None, "_plan": None}

    def __call__(self, info):
        epoch = self.first_epoch + info.epoch_idx
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, epoch_plan(self.n, self.global_batch, seed=self.seed, epoch=epoch,
                                            rank=self.rank, world_size=self.world_size))
        i = info.idx_in_epoch + (self.first_step * self.batch if info.epoch_idx == 0 else 0)
        if i >= len(self._plan[1]):
            raise StopIteration
        if self._table is None:
            self._table = SampleTable.load(self.table_dir)
        sid = int(self._plan[1][i])
        if self.aug.rgb:  # JPEG bytes for DALI's decoder; the crop boxes need only the header's size
            t = self._table
            data = self.reader.read_bytes(t.shard_paths[t.shard[sid]], int(t.offset[self.ext][sid]),
                                          int(t.size[self.ext][sid]))
            pixels, shape = np.frombuffer(data, np.uint8), jpeg_shape(data)
        else:
            hu = self.reader.read(self._table, sid, self.ext)
            pixels, shape = hu[:, :, None], hu.shape
        params = draw_views(self.seed, epoch, sid, shape, self.aug)
        params[:, SIGMA] = np.where(params[:, SIGMA] > 0, params[:, SIGMA], NO_BLUR_SIGMA)
        return pixels, np.array([sid], np.int64), params[0], params[1]


def jpeg_shape(data: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's header (PIL reads no pixels for this)."""
    import io

    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return im.height, im.width
