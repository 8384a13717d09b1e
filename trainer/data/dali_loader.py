"""The DALI two-view loader: CPU workers read and zstd-decode, DALI crops, flips, jitters and blurs on the GPU.

Why not `fn.readers.webdataset`: DALI has no zstd operator (its GPU inflate is
LZ4-only), so the bytes of a zstd payload have to pass through a CPU decoder anyway;
and the reader shards by fixed contiguous ranges and shuffles in a local buffer, so it
can neither follow the per-(seed, epoch) plan that the torch loader and the tests rely
on, nor resume in the middle of an epoch. So the first stage is a parallel
`fn.external_source`: DALI's own worker processes take this rank's plan, read each
sample's bytes at the offsets of the `.idx` files (the same byte ranges the webdataset
reader would read), decode zstd (or pass raw bytes through) into int16 HU, and draw the
two views' parameters. Everything after that runs on the GPU: int16 -> float,
normalisation (per-slice min-max or HU window), then per view resized crop (`fn.slice`
then `fn.resize`, as torchvision crops then resizes), flip, brightness/contrast, Gaussian
blur (when the recipe asks), and CHW layout. The int16 slice crosses PCIe once for both views.

The pipeline and its worker processes live across epochs: the workers compute each
epoch's plan themselves from (seed, epoch) and memory-map the sample table from a
temporary folder (one copy in the page cache, however many workers), so an epoch
boundary costs a `reset`, not a restart. Stopping early (`--max-steps`) or jumping to
another epoch rebuilds it.

`device` cpu runs the same graph in DALI's CPU-only mode (device_id=None): what CI
tests. Interface: trainer/data/two_view.py.

RGB (jpg) datasets: the workers pass the JPEG bytes through, with the views' parameters
drawn from the image size in the JPEG header; DALI decodes them (nvJPEG, `device="mixed"`,
on the GPU; libjpeg-turbo in CPU-only mode), then the same crop, resize and flip, then the
RGB colour jitter and grayscale (trainer/data/dali_colour.py) instead of the CT jitter.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from trainer.data.augment import (
    BOTTOM,
    BRIGHTNESS,
    CONTRAST,
    FLIP,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LEFT,
    RIGHT,
    SIGMA,
    TOP,
    AugmentConfig,
)
from trainer.data.dali_source import PlanSource
from trainer.data.two_view import TwoViewBatch, TwoViewLoader
from trainer.errors import TrainerError


def _build_pipeline(source: PlanSource, batch: int, aug: AugmentConfig, device_id: int | None, threads: int,
                    workers: int, seed: int):
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=device_id, seed=seed,
                  py_num_workers=max(1, workers), py_start_method="spawn", prefetch_queue_depth=2)
    def two_views():
        pixels, sid, p1, p2 = fn.external_source(source=source, num_outputs=4, batch=False, parallel=True,
                                                 dtype=[types.UINT8 if aug.rgb else types.INT16, types.INT64,
                                                        types.FLOAT, types.FLOAT],
                                                 layout=[None if aug.rgb else "HWC", None, None, None])
        on_dev = (lambda node: node.gpu()) if gpu else (lambda node: node)
        if aug.rgb:  # JPEG bytes: nvJPEG on the GPU ("mixed"), libjpeg-turbo in CPU-only mode
            x = fn.decoders.image(pixels, device="mixed" if gpu else "cpu", output_type=types.RGB)
            x = fn.cast(x, dtype=types.FLOAT) / 255.0
        else:
            x = _ct_unit(fn.cast(on_dev(pixels), dtype=types.FLOAT), aug, fn, dmath)  # int16 crosses to the GPU

        def view(p):
            # p is on the CPU: DALI takes per-sample operator arguments from CPU nodes only. Cut the crop,
            # then resize it: a resize over a region of interest would blend pixels outside the crop into
            # its border rows and columns, which the torch path (crop, then resize) never sees.
            v = fn.slice(x, start=fn.cast(p[TOP:LEFT + 1], dtype=types.INT32),
                         end=fn.cast(p[BOTTOM:RIGHT + 1], dtype=types.INT32), axis_names="HW")
            v = fn.resize(v, size=[aug.image_size, aug.image_size], interp_type=types.INTERP_LINEAR, antialias=True)
            v = fn.flip(v, horizontal=fn.cast(p[FLIP], dtype=types.INT32))
            if aug.rgb:
                from trainer.data.dali_colour import dali_rgb_jitter
                v = dali_rgb_jitter(v, p, on_dev)
            else:
                b, c = on_dev(p[BRIGHTNESS]), on_dev(p[CONTRAST])
                v = dmath.clamp(b * (c * v + (1.0 - c) * fn.reductions.mean(v)), 0.0, 1.0)
            if aug.blur_p > 0:
                v = fn.gaussian_blur(v, sigma=p[SIGMA], window_size=aug.blur_kernel)
            if aug.input_scale == "imagenet":
                if not aug.rgb:
                    v = fn.cat(v, v, v, axis=2)
                return fn.crop_mirror_normalize(v, dtype=types.FLOAT, output_layout="CHW", mean=list(IMAGENET_MEAN),
                                                std=list(IMAGENET_STD))
            return fn.transpose(v, perm=[2, 0, 1])  # HWC -> CHW

        return view(p1), view(p2), sid

    return two_views()


def _ct_unit(x, aug: AugmentConfig, fn, dmath):
    """HU -> [0, 1] by --normalize (as trainer.data.augment.normalize)."""
    if aug.normalize == "hu":
        lo, hi = aug.window
        return dmath.clamp((x - lo) / (hi - lo), 0.0, 1.0)
    lo, hi = fn.reductions.min(x), fn.reductions.max(x)
    return (x - lo) / dmath.max(hi - lo, 1e-6)  # constant slice -> zeros


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
    dense = tensor_list.as_tensor()
    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(dense, out, cuda_stream=stream)
    return out


class DaliTwoViewLoader(TwoViewLoader):
    def __init__(self, *args, threads: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            import nvidia.dali  # noqa: F401
        except ImportError as exc:
            raise TrainerError("--loader dali needs NVIDIA DALI (pip install 'tlx[dali]'); "
                               "or use --loader torch") from exc
        self.threads = threads
        # ~20 bytes per sample (240 MB for 12M slices); removed by close() or at interpreter exit
        # (a killed process leaves it in the temp folder).
        self._table_dir = Path(tempfile.mkdtemp(prefix="tlx-dali-table-"))
        atexit.register(shutil.rmtree, self._table_dir, ignore_errors=True)
        self.table.save(self._table_dir, [self.ext])
        self._pipe = None
        self._next_epoch: int | None = None  # the epoch the live pipeline serves next, from its start

    def _new_pipeline(self, epoch: int, start_step: int):
        self._pipe = None
        device_id = None
        if self.device.type == "cuda":
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        # DALI's operator seed is unused (every random parameter comes from the plan), but fix it anyway.
        pipe = _build_pipeline(PlanSource(self, self._table_dir, epoch, start_step), self.batch, self.aug, device_id,
                               self.threads, self.workers, seed=self.seed % (2 ** 31))
        pipe.build()
        return pipe

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[TwoViewBatch]:
        steps = len(self.plan(epoch, start_step)) // self.batch
        if self._pipe is None or self._next_epoch != epoch or start_step:
            self._pipe = self._new_pipeline(epoch, start_step)
        pipe, self._pipe, self._next_epoch = self._pipe, None, None  # not reusable unless the epoch ends cleanly
        for _ in range(steps):
            v1, v2, ids = pipe.run()
            yield TwoViewBatch(_to_torch(v1, self.device), _to_torch(v2, self.device),
                               _to_torch(ids, torch.device("cpu")).view(-1))
        try:
            pipe.run()
            raise RuntimeError("DALI source did not end with the epoch's plan")
        except StopIteration:
            pipe.reset()  # the workers move on to epoch + 1
        self._pipe, self._next_epoch = pipe, epoch + 1

    def close(self) -> None:
        self._pipe = None
        shutil.rmtree(self._table_dir, ignore_errors=True)
        super().close()
