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
without colour jitter or blur; natural images). Evaluation never augments: stored
fixed-size images are resized to the image size, natural images resized (shorter side
to size / 0.875) and centre-cropped, the usual ImageNet evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from trainer.data.augment import AugmentConfig, apply_view, draw_view, normalize
from trainer.data.dataset import SampleReader, TlxDataset
from trainer.errors import TrainerError

TARGET_ROLE = {"classification": "label", "multilabel": "labels", "segmentation": "mask"}
EVAL_CROP = 0.875  # natural images: resize to size / 0.875, centre crop size (224 of 256)


@dataclass(frozen=True)
class ImageOptions:
    image_size: int
    normalize: str = "minmax"
    window: tuple[float, float] = (-1024.0, 3072.0)
    augment: str = "none"
    seed: int = 0


class LabelledSplit(Dataset):
    def __init__(self, dataset: TlxDataset, split: str, kind: str, images: ImageOptions, train: bool = False):
        self.dataset, self.split, self.kind, self.images, self.train = dataset, split, kind, images, train
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
        x = self._image(self.reader.read(self.table, i, self.image_ext))
        y = self.reader.read(self.table, i, self.target_ext)
        rng = np.random.default_rng([self.images.seed, epoch, i]) if self.train else None
        if self.kind == "segmentation":
            y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
            x, y = self._resize_pair(x, y)
            if rng is not None and self.images.augment != "none" and rng.random() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            return x, y, i
        target = torch.tensor(int(y)) if self.kind == "classification" else torch.from_numpy(np.asarray(y, np.float32))
        if rng is not None and self.images.augment == "crop-flip":
            x = apply_view(x, draw_view(rng, tuple(x.shape[-2:]), self._aug), self._aug)
        else:
            x = self._eval_resize(x)
            if rng is not None and self.images.augment == "flip" and rng.random() < 0.5:
                x = x.flip(-1)
        return x, target, i

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

    def _eval_resize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.images.image_size
        h, w = x.shape[-2:]
        if self.image_spec.shape is None:  # variable-size natural images: resize + centre crop
            scale = s / EVAL_CROP / min(h, w)
            x = _resize(x, (max(s, round(h * scale)), max(s, round(w * scale))))
            top, left = (x.shape[-2] - s) // 2, (x.shape[-1] - s) // 2
            return x[:, top:top + s, left:left + s]
        return x if (h, w) == (s, s) else _resize(x, (s, s))

    def _resize_pair(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.images.image_size
        if tuple(x.shape[-2:]) == (s, s):
            return x, y
        return _resize(x, (s, s)), F.interpolate(y[None, None].float(), size=(s, s), mode="nearest")[0, 0].long()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def batches(split: LabelledSplit, plan: np.ndarray, epoch: int, workers: int,
            pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches of the rows of `plan` ([steps, batch] sample ids), in order, decoded by `workers` processes."""
    sampler = [[(int(i), epoch) for i in row] for row in plan]
    loader = DataLoader(split, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    yield from loader
