"""Model registry: a name -> a constructor, with tiny variants for CPU tests.

    >>> from trainer.models import build_encoder
    >>> enc = build_encoder("resnet50")          # fc-less ResNet-50, enc.feature_dim == 2048
    >>> enc = build_encoder("resnet-tiny")       # same code path, a few thousand parameters
    >>> enc = build_encoder("wide_resnet50_2")   # torchvision's names; also resnet101, resnet152, wide_resnet101_2
    >>> enc = build_encoder("bit-r50x1", checkpoint_activations=True)   # BiT ResNet-v2 (trainer/models/bit.py)
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from trainer.errors import TrainerError
from trainer.models.bit import BIT_ARCHS, ResNetV2
from trainer.models.resnet import BasicBlock, Bottleneck, ResNet

MODELS: dict[str, Callable[..., ResNet | ResNetV2]] = {
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
    **{name: partial(ResNetV2, layers, width) for name, (layers, width) in BIT_ARCHS.items()},
    # BiT's code path, one unit per block, 16 root channels and GroupNorm(8): for tests.
    "bit-tiny": partial(ResNetV2, [1, 1, 1, 1], 1, base_width=16, groups=8),
}


def build_encoder(name: str, num_classes: int = 0, **kwargs) -> ResNet | ResNetV2:
    """A registered ResNet; `num_classes=0` (default) leaves out `fc`.
    `checkpoint_activations=True` is accepted by the BiT (GroupNorm) models only."""
    if name not in MODELS:
        raise TrainerError(f"--model {name!r} is not one of {', '.join(sorted(MODELS))}")
    if kwargs.get("checkpoint_activations") and not name.startswith("bit-"):
        # recomputing a BatchNorm forward in backward would update its running statistics twice
        raise TrainerError(f"--checkpoint-activations needs a GroupNorm model (bit-*), not {name!r}: "
                           f"recomputing BatchNorm would count its running statistics twice")
    if not name.startswith("bit-"):
        kwargs.pop("checkpoint_activations", None)   # False here: the BatchNorm models take no such option
    return MODELS[name](num_classes=num_classes, **kwargs)
