"""SimCLR projection heads of the two recipes.

    from trainer.models.projector import build_projector
    head = build_projector("paper", in_dim=2048)    # 2048-2048 ReLU 2048-2048 Sigmoid 2048-256, no biases
    head = build_projector("simclr", in_dim=2048)   # 2048-2048 BN ReLU 2048-128 (SimCLR v1)

Hidden widths follow the encoder's feature size (2048 for ResNet-50), so the tiny test
models get proportionally tiny heads; the output sizes are the recipes' (256, 128).
"""
from __future__ import annotations

from torch import nn

from trainer.errors import TrainerError

PROJECTORS = ("paper", "simclr")


def build_projector(kind: str, in_dim: int) -> nn.Sequential:
    if kind == "paper":
        # The study's head as published: no biases, and a Sigmoid (not a ReLU) after the second layer.
        return nn.Sequential(nn.Linear(in_dim, in_dim, bias=False), nn.ReLU(inplace=True),
                             nn.Linear(in_dim, in_dim, bias=False), nn.Sigmoid(),
                             nn.Linear(in_dim, 256, bias=False))
    if kind == "simclr":
        return nn.Sequential(nn.Linear(in_dim, in_dim, bias=False), nn.BatchNorm1d(in_dim), nn.ReLU(inplace=True),
                             nn.Linear(in_dim, 128, bias=False))
    raise TrainerError(f"projector {kind!r} is not one of {', '.join(PROJECTORS)}")
