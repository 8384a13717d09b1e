"""Model registry: a name -> a constructor, with tiny variants for CPU tests.

    >>> from trainer.models import build_encoder
    >>> enc = build_encoder("resnet50")          # fc-less ResNet-50, enc.feature_dim == 2048
    >>> enc = build_encoder("resnet-tiny")       # same code path, a few thousand parameters
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from trainer.errors import TrainerError
from trainer.models.resnet import BasicBlock, Bottleneck, ResNet

MODELS: dict[str, Callable[..., ResNet]] = {
    "resnet50": partial(ResNet, Bottleneck, [3, 4, 6, 3]),
    "resnet18": partial(ResNet, BasicBlock, [2, 2, 2, 2]),
    # Same bottleneck code path as resnet50, one block per stage, width 8: for tests and the demo.
    "resnet-tiny": partial(ResNet, Bottleneck, [1, 1, 1, 1], base_width=8),
}


def build_encoder(name: str, num_classes: int = 0, **kwargs) -> ResNet:
    """A registered ResNet; `num_classes=0` (default) leaves out `fc`."""
    if name not in MODELS:
        raise TrainerError(f"--model {name!r} is not one of {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, **kwargs)
