"""A U-Net decoder on the ResNet encoder's stages, for 2D segmentation.

    dec = UNetDecoder(encoder.stage_channels, num_classes=3)
    logits = dec(encoder.forward_stages(x), out_size=x.shape[-2:])   # [B, 3, H, W]

The encoder gives five maps at strides 2, 4, 8, 16, 32 (stem, layer1..layer4). The
decoder climbs back up in five blocks: each upsamples x2, concatenates the encoder map
of that stride (a skip connection from every stage; the last block, at stride 1, has
none) and applies two 3x3 conv-BN-ReLU. A 3x3 conv maps the last block to class logits.

The paper calls its network "symmetrical U-Net-like" without giving widths. The widths
here are those of the widely used ResNet U-Net (segmentation_models_pytorch's Unet:
256, 128, 64, 32, 16 for ResNet-50, about 9M parameters next to the encoder's 23.5M),
scaled with the encoder's width for smaller encoders; `channels` overrides them.
Every decoder parameter is newly initialised (the encoder may be pretrained).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESNET50_DECODER = (256, 128, 64, 32, 16)


def default_decoder_channels(feature_dim: int) -> tuple[int, ...]:
    """ResNet-50 (2048 features) gets RESNET50_DECODER; narrower encoders proportionally less (>= 8)."""
    return tuple(max(8, c * feature_dim // 2048) for c in RESNET50_DECODER)


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _UpBlock(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.conv1 = _ConvBNReLU(cin + skip, cout)
        self.conv2 = _ConvBNReLU(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: torch.Size) -> torch.Tensor:
        # Upsample to the skip's exact size (not just x2): inputs need not be multiples of 32.
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    def __init__(self, stage_channels: list[int], num_classes: int, channels: tuple[int, ...] | None = None):
        super().__init__()
        if len(stage_channels) != 5:
            raise ValueError(f"expected 5 encoder stages (stem, layer1..4), got {len(stage_channels)}")
        channels = tuple(channels or default_decoder_channels(stage_channels[-1]))
        if len(channels) != 5:
            raise ValueError(f"decoder needs 5 widths, got {channels}")
        skips = list(stage_channels[3::-1]) + [0]   # layer3, layer2, layer1, stem, none
        ins = [stage_channels[-1]] + list(channels[:-1])
        self.blocks = nn.ModuleList(_UpBlock(i, s, o) for i, s, o in zip(ins, skips, channels))
        self.classifier = nn.Conv2d(channels[-1], num_classes, 3, padding=1)

    def forward(self, stages: list[torch.Tensor], out_size: torch.Size) -> torch.Tensor:
        x = stages[-1]
        skips = stages[3::-1] + [None]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip, skip.shape[-2:] if skip is not None else out_size)
        return self.classifier(x)
