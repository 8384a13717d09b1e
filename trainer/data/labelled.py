"""Labelled samples for the downstream tasks: image tensor + target, from any tlx dataset kind.

    split = LabelledSplit(open_dataset("lits/"), "train", kind="segmentation", images=ImageOptions(128))
    x, y, i = split[(sample_id, epoch)]          # x float32 [3, S, S] in [0, 1]; y per kind; i = sample_id
    meta = split.metadata()                      # slices.parquet rows of the split, in sample order
    for x, y, ids in batches(split, plan, workers=4):   # plan: [steps, per-rank batch] sample ids
        ...

Targets: classification -> int64 class index (`cls`/`label` member), multilabel ->
float32 multi-hot (`labels` member), segmentation -> int64 [S, S] class map (`mask`).

Pixels to [0, 1]: 8-bit images (X-rays, JPEGs) are divided by 255; int16/float images
(CT in HU, MRI) go through trainer.data.augment.normalize channel by channel, the same
`minmax` (per slice) or `hu` (fixed window) choice as in pretraining, so a SimCLR
encoder sees its inputs the way it learned them. One channel is repeated to three.

Augmentation (the task's `augment`), drawn per sample from (seed, epoch, sample id) so
a resumed run sees the same pixels: `none`; `flip` (horizontal, p = 0.5, the mask
too); `crop-flip` (random resized crop + flip, trainer.data.augment's SimCLR crop
without colour jitter or blur; natural images); then, for image-level labels, RandAugment
when `randaugment` = (N, M) is set (trainer/randaugment.py). Evaluation never augments: stored
fixed-size images are resized to the image size, natural images resized (shorter side
to size / 0.875) and centre-cropped, the usual ImageNet evaluation.

JPEG datasets on a GPU: DaliJpegDecoder decodes with nvJPEG through DALI; the workers
then only read the encoded bytes and draw each sample's crop box (the same box the
torch path would crop); DALI cuts the box and resizes it in float, so both paths agree
except for the antialiasing at the border of a downscaled box.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from datakit.read import SampleReader, TlxDataset
from trainer.data.augment import BOTTOM, FLIP, LEFT, RIGHT, TOP, AugmentConfig, draw_view, normalize
from trainer.errors import TrainerError, leave_stops_to_the_trainer, worker_batches
from trainer.randaugment import apply_randaugment, draw_randaugment

TARGET_ROLE = {"classification": "label", "multilabel": "labels", "segmentation": "mask"}
EVAL_CROP = 0.875  # natural images: resize to size / 0.875, centre crop size (224 of 256)


@dataclass(frozen=True)
class ImageOptions:
    image_size: int
    normalize: str = "minmax"
    window: tuple[float, float] = (-1024.0, 3072.0)
    augment: str = "none"
    seed: int = 0
    randaugment: tuple[int, int] | None = None   # (N ops, magnitude M): training only, after the crop


class LabelledSplit(Dataset):
    def __init__(self, dataset: TlxDataset, split: str, kind: str, images: ImageOptions, train: bool = False,
                 encoded: bool = False):
        self.dataset, self.split, self.kind, self.images, self.train = dataset, split, kind, images, train
        self.encoded = encoded  # JPEGs left encoded, with their crop box, for DaliJpegDecoder
        self.table = dataset.sample_table(split, with_keys=True)
        self.keys = self.table.keys
        self.reader = SampleReader(dataset)
        self.image_ext, self.image_spec = dataset.member("image")
        self.target_ext, _ = dataset.member(TARGET_ROLE[kind])
        # The crop and flip of trainer.data.augment, without its colour jitter and blur.
        self._aug = AugmentConfig(image_size=images.image_size, normalize=images.normalize, window=images.window,
                                  jitter_p=0.0, blur_p=0.0)

    def __len__(self) -> int:
        return len(self.table)

    def metadata(self):
        """slices.parquet rows of this split, aligned with the sample ids (row i = sample i)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        path = self.dataset.root / "slices.parquet"
        if not path.is_file():
            raise TrainerError(f"{self.dataset.root} has no slices.parquet (the dataset format requires it)")
        table = pq.read_table(path)
        table = table.filter(pc.equal(table["split"], self.split))
        keys = table["key"].to_pylist()
        if keys != list(self.keys):
            raise TrainerError(f"{path}: the {self.split} rows do not list the shards' samples in shard order "
                               f"({len(keys)} rows, {len(self.keys)} samples); the dataset is inconsistent")
        return table

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, epoch = item
        y = self.reader.read(self.table, i, self.target_ext)
        rng = np.random.default_rng([self.images.seed, epoch, i]) if self.train else None
        if self.encoded:
            return self._encoded(i, rng), torch.tensor(int(y)), i
        x = self._image(self.reader.read(self.table, i, self.image_ext))
        if self.kind == "segmentation":
            y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
            x, y = self._resize_pair(x, y)
            if rng is not None and self.images.augment != "none" and rng.random() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            return x, y, i
        target = torch.tensor(int(y)) if self.kind == "classification" else torch.from_numpy(np.array(y, np.float32))
        x = _crop_resize(x, self._box(*x.shape[-2:], rng), self.images.image_size)
        if rng is not None and self.images.randaugment is not None:   # drawn after the box: same rng, same key
            n, magnitude = self.images.randaugment
            x = apply_randaugment(x, draw_randaugment(rng, n), magnitude)
        return x, target, i

    def _box(self, h: int, w: int, rng: np.random.Generator | None) -> np.ndarray:
        """The region to resize to the image size, and whether to flip: (top, left, bottom, right, flip).
        crop-flip training: trainer.data.augment's random resized crop and flip; otherwise the
        whole stored image, or for variable-size natural images the centre square of 0.875
        of the shorter side (= resize it to size / 0.875 and crop size)."""
        if rng is not None and self.images.augment == "crop-flip":
            p = draw_view(rng, (h, w), self._aug)
            return np.array([*p[[TOP, LEFT, BOTTOM, RIGHT]], p[FLIP]], np.float32)
        top, left, bottom, right = 0, 0, h, w
        if self.image_spec.shape is None:
            side = round(min(h, w) * EVAL_CROP)
            top, left = (h - side) // 2, (w - side) // 2
            bottom, right = top + side, left + side
        flip = rng is not None and self.images.augment == "flip" and rng.random() < 0.5
        return np.array([top, left, bottom, right, flip], np.float32)

    def _encoded(self, i: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """The JPEG's bytes and its box: the box the torch path would crop, so both paths see
        the same pixels up to the JPEG decoder."""
        path = self.table.shard_paths[self.table.shard[i]]
        data = self.reader.read_bytes(path, int(self.table.offset[self.image_ext][i]),
                                      int(self.table.size[self.image_ext][i]))
        from PIL import Image
        with Image.open(io.BytesIO(data)) as im:   # reads the header only: the size
            w, h = im.size
        return np.frombuffer(data, np.uint8), self._box(h, w, rng)

    def _image(self, arr: np.ndarray) -> torch.Tensor:
        """Decoded member -> float32 [3, H, W] in [0, 1]."""
        if self.image_spec.codec in ("jpeg", "png") and arr.ndim == 3:
            arr = arr.transpose(2, 0, 1)            # PIL gives [H, W, C]
        if arr.ndim == 2:
            arr = arr[None]
        if arr.dtype == np.uint8:
            x = arr.astype(np.float32) / 255.0
        else:
            x = np.stack([normalize(c, self._aug) for c in arr])
        x = torch.from_numpy(np.ascontiguousarray(x))
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        elif x.shape[0] != 3:
            raise TrainerError(f"image member {self.image_ext!r} has {x.shape[0]} channels; the encoder takes 1 or 3")
        return x

    def _resize_pair(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.images.image_size
        if tuple(x.shape[-2:]) == (s, s):
            return x, y
        return _resize(x, (s, s)), F.interpolate(y[None, None].float(), size=(s, s), mode="nearest")[0, 0].long()


def _crop_resize(x: torch.Tensor, box: np.ndarray, size: int) -> torch.Tensor:
    top, left, bottom, right, flip = (int(v) for v in box)
    x = x[:, top:bottom, left:right]
    if tuple(x.shape[-2:]) != (size, size):
        x = _resize(x, (size, size))
    return x.flip(-1) if flip else x


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _collate_encoded(samples):
    return ([s[0][0] for s in samples], np.stack([s[0][1] for s in samples]),
            torch.stack([s[1] for s in samples]), torch.tensor([s[2] for s in samples]))


def batches(split: LabelledSplit, plan: np.ndarray, epoch: int, workers: int, pin_memory: bool = False,
            jpeg_decoder: "DaliJpegDecoder | None" = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches (x, y, sample ids) of the rows of `plan` ([steps, batch] sample ids), in order,
    read by `workers` processes; JPEGs decoded by `jpeg_decoder` (DALI) when given."""
    sampler = [[(int(i), epoch) for i in row] for row in plan]
    split.encoded = jpeg_decoder is not None
    loader = DataLoader(split, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory and not split.encoded,
                        persistent_workers=False, prefetch_factor=4 if workers else None,
                        collate_fn=_collate_encoded if split.encoded else None,
                        worker_init_fn=leave_stops_to_the_trainer)
    for batch in worker_batches(loader):
        if jpeg_decoder is None:
            yield batch
        else:
            jpegs, boxes, y, ids = batch
            yield jpeg_decoder(jpegs, boxes), y, ids


class DaliJpegDecoder:
    """JPEG decode, crop-resize and flip with NVIDIA DALI: nvJPEG on the GPU ("mixed" decoder),
    or DALI's CPU-only mode with device cpu (what the tests run). Fed per batch with the
    encoded bytes and boxes LabelledSplit(encoded=True) yields; returns float32
    [B, 3, S, S] in [0, 1] on the device. Decoding full-size JPEGs is where natural-image
    fine-tuning spends its CPU time, hence the GPU."""

    def __init__(self, image_size: int, max_batch: int, device: torch.device, threads: int = 4):
        try:
            from nvidia.dali import fn, pipeline_def, types
        except ImportError as exc:
            raise TrainerError("--loader dali needs NVIDIA DALI (pip install 'tlx[dali]'); "
                               "or use --loader torch") from exc
        gpu = device.type == "cuda"
        self.device = device

        @pipeline_def(batch_size=max_batch, num_threads=threads, device_id=(device.index or 0) if gpu else None,
                      exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
        def decode():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
            start = fn.external_source(name="start", dtype=types.FLOAT)
            end = fn.external_source(name="end", dtype=types.FLOAT)
            flip = fn.external_source(name="flip", dtype=types.INT32)
            img = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
            img = fn.slice(img, start=fn.cast(start, dtype=types.INT32), end=fn.cast(end, dtype=types.INT32),
                           axis_names="HW")
            img = fn.resize(img, size=[image_size, image_size], interp_type=types.INTERP_LINEAR, antialias=True,
                            dtype=types.FLOAT)
            img = fn.flip(img, horizontal=flip)
            return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW", mean=[0.0, 0.0, 0.0],
                                            std=[255.0, 255.0, 255.0])

        self.pipe = decode()
        self.pipe.build()

    def __call__(self, jpegs: list[np.ndarray], boxes: np.ndarray) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray
        self.pipe.feed_input("jpegs", jpegs)
        self.pipe.feed_input("start", [np.ascontiguousarray(b[0:2]) for b in boxes])
        self.pipe.feed_input("end", [np.ascontiguousarray(b[2:4]) for b in boxes])
        self.pipe.feed_input("flip", [np.array(int(b[4]), np.int32) for b in boxes])
        (out,) = self.pipe.run()
        dense = out.as_tensor()
        x = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
        feed_ndarray(dense, x,
                     cuda_stream=torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None)
        return x
