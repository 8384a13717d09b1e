"""Model registry: a name -> a constructor, with tiny variants for CPU tests.

    >>> from trainer.models import build_encoder
    >>> enc = build_encoder("resnet50")          # fc-less ResNet-50, enc.feature_dim == 2048
    >>> enc = build_encoder("resnet-tiny")       # same code path, a few thousand parameters
    >>> enc = build_encoder("wide_resnet50_2")   # torchvision's names; also resnet101, resnet152, wide_resnet101_2
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from trainer.errors import TrainerError
from trainer.models.resnet import BasicBlock, Bottleneck, ResNet

MODELS: dict[str, Callable[..., ResNet]] = {
    "resnet50": partial(ResNet, Bottleneck, [3, 4, 6, 3]),
    "resnet18": partial(ResNet, BasicBlock, [2, 2, 2, 2]),
    "resnet101": partial(ResNet, Bottleneck, [3, 4, 23, 3]),
    "resnet152": partial(ResNet, Bottleneck, [3, 8, 36, 3]),
    "wide_resnet50_2": partial(ResNet, Bottleneck, [3, 4, 6, 3], width_factor=2),
    "wide_resnet101_2": partial(ResNet, Bottleneck, [3, 4, 23, 3], width_factor=2),
    # keras.applications ResNet50 (v1: stride in the 1x1 conv, conv biases): RadImageNet, Keras ImageNet
    "resnet50-keras": partial(ResNet, Bottleneck, [3, 4, 6, 3], keras=True),
    # Same bottleneck code path as resnet50, one block per stage, width 8: for tests and the demo.
    "resnet-tiny": partial(ResNet, Bottleneck, [1, 1, 1, 1], base_width=8),
    "resnet-tiny-keras": partial(ResNet, Bottleneck, [1, 1, 1, 1], base_width=8, keras=True),
}


def build_encoder(name: str, num_classes: int = 0, **kwargs) -> ResNet:
    """A registered ResNet; `num_classes=0` (default) leaves out `fc`."""
    if name not in MODELS:
        raise TrainerError(f"--model {name!r} is not one of {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, **kwargs)
