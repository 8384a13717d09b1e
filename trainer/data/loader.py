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
only in where decoding and augmenting run. `start_step` resumes inside an epoch. Their
shared base (TwoViewLoader, TwoViewBatch) is trainer/data/two_view.py.
"""
from __future__ import annotations

from trainer.data.dali_loader import DaliTwoViewLoader
from trainer.data.torch_loader import TorchTwoViewLoader
from trainer.data.two_view import TwoViewLoader
from trainer.errors import TrainerError

LOADERS = ("dali", "torch")


def make_loader(kind: str, dataset, split: str, **kwargs) -> TwoViewLoader:
    """The loader of `kind` (torch or dali) over `split`; the keyword arguments are TwoViewLoader's."""
    if kind == "torch":
        return TorchTwoViewLoader(dataset, split, **kwargs)
    if kind == "dali":
        return DaliTwoViewLoader(dataset, split, **kwargs)
    raise TrainerError(f"--loader {kind!r} is not one of {', '.join(LOADERS)}")
