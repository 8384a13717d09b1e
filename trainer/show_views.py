"""`tlx show RUN`: the views a SimCLR run's loader makes, beside the slices they came from.

    from trainer.show_views import show_views
    show_views("runs/pretrain/ct", "views.png", samples=8, epoch=0)

The run's config.json says the dataset, view size, normalisation and augmentations; the torch loader
(the same per-sample parameters as DALI's, trainer/data/augment.py) draws the first global batch of
`epoch` of rank 0's plan. Each row: the normalised slice, view 1, view 2, so a user sees what the
encoder is trained on (crop scale, flips, jitter, blur) before spending GPU hours on it.
"""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from tlxcore.image_grid import save_grid
from trainer.data.augment import AugmentConfig, normalize
from trainer.data.loader import make_loader
from trainer.errors import TrainerError


def augment_config(config: dict) -> AugmentConfig:
    """The AugmentConfig a run used: its config.json's fields of that name (tuples from JSON lists)."""
    names = {f.name for f in fields(AugmentConfig)}
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in names})


def show_views(run: str | os.PathLike, out: str | os.PathLike, samples: int = 8, epoch: int = 0,
               data: str | os.PathLike | None = None) -> Path:
    """Draw `samples` rows to `out`; `data` replaces the run's dataset path (a run launched elsewhere)."""
    run = Path(run)
    path = run / "config.json"
    if not path.is_file():
        raise TrainerError(f"{run} holds no config.json: not a tlx run (or a dataset without manifest.json)")
    config = json.loads(path.read_text())
    if config.get("setting") != "pretrain" or "data" not in config:
        raise TrainerError(f"{run} is a {config.get('setting', 'unknown')!r} run; `tlx show` draws the views of "
                           f"pretraining (SimCLR) runs, and the samples of datasets")
    aug = augment_config(config)
    loader = make_loader("torch", data or config["data"], "train", global_batch=samples, rank=0, world_size=1,
                         seed=int(config.get("seed", 0)), aug=aug, workers=0, device=torch.device("cpu"))
    try:
        batch = next(iter(loader.epoch(epoch)))
        rows = []
        for v1, v2, sid in zip(batch.view1, batch.view2, batch.ids.tolist()):
            whole = normalize(loader.reader.read(loader.table, sid, loader.ext), aug)
            rows.append([(whole, f"sample {sid}"), (_image(v1), "view 1"), (_image(v2), "view 2")])
    finally:
        loader.close()
    return save_grid(rows, out)


def _image(view: torch.Tensor) -> np.ndarray:
    """(C, S, S) in [0, 1] -> (S, S) or (S, S, 3) for the grid."""
    a = view.detach().float().clamp(0, 1).numpy()
    return a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
