"""U-Net decoders on the ResNet encoder's stages, for 2D segmentation.

    dec = UNetDecoder(encoder.stage_channels, num_classes=3, kind="backboned-unet")
    logits = dec(encoder.forward_stages(x), out_size=x.shape[-2:])   # [B, 3, H, W]

The encoder gives five maps at strides 2, 4, 8, 16, 32 (stem after its ReLU, layer1..4).
Both decoders climb back up in five blocks of widths `channels` (256, 128, 64, 32, 16 for
ResNet-50), each doubling the resolution and concatenating the encoder map of that
stride (skips [None, relu, layer1, layer2, layer3]: the last block has none), then map
the last block to class logits. Every decoder parameter is newly initialised.

- `backboned-unet` (default): the study's decoder, the `backboned_unet` package's Unet
  with its defaults (parametric upsampling, batch norm): per block a transposed 4x4
  convolution (stride 2, padding 1, no bias) + BN + ReLU, the concatenated skip, one 3x3
  convolution (no bias) + BN + ReLU; a 1x1 convolution (with bias) as the head. For
  ResNet-50: 12,987,584 parameters plus the head (51 for 3 classes).
- `smp-unet` (tlx's earlier decoder): per block nearest-neighbour upsampling, the
  concatenated skip, two 3x3 convolution + BN + ReLU; a 3x3 convolution as the head, as
  segmentation_models_pytorch's Unet. 9,013,363 parameters for ResNet-50 and 3 classes.

Narrower encoders get proportionally narrower widths (>= 8); `channels` overrides them.
An input side that is no multiple of 32 gives odd encoder maps: `smp-unet` resizes to
each skip's size; `backboned-unet`, whose transposed convolution exactly doubles, keeps
the top-left part of the doubled map that lies over the skip (the study used 256 px,
where nothing is cut).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESNET50_DECODER = (256, 128, 64, 32, 16)
DECODERS = ("backboned-unet", "smp-unet")


def default_decoder_channels(feature_dim: int) -> tuple[int, ...]:
    """ResNet-50 (2048 features) gets RESNET50_DECODER; narrower encoders proportionally less (>= 8)."""
    return tuple(max(8, c * feature_dim // 2048) for c in RESNET50_DECODER)


def _widths(stage_channels: list[int], channels: tuple[int, ...] | None) -> tuple[list[int], list[int], tuple]:
    """(input width of each block, skip width of each block, block widths)."""
    if len(stage_channels) != 5:
        raise ValueError(f"expected 5 encoder stages (stem, layer1..4), got {len(stage_channels)}")
    channels = tuple(channels or default_decoder_channels(stage_channels[-1]))
    if len(channels) != 5:
        raise ValueError(f"decoder needs 5 widths, got {channels}")
    return [stage_channels[-1]] + list(channels[:-1]), list(stage_channels[3::-1]) + [0], channels


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _TransposedBlock(nn.Module):
    """backboned_unet's UpsampleBlock(parametric=True, use_bn=True)."""

    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout + skip, cout, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: torch.Size) -> torch.Tensor:
        x = F.relu(self.bn1(self.up(x)))[..., :size[0], :size[1]]   # 2h >= the finer map's h: cut the overhang
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return F.relu(self.bn2(self.conv2(x)))


class _NearestBlock(nn.Module):
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
    """Five up blocks and a head; `kind` is one of DECODERS (see the module docstring)."""

    def __init__(self, stage_channels: list[int], num_classes: int, channels: tuple[int, ...] | None = None,
                 kind: str = "backboned-unet"):
        super().__init__()
        if kind not in DECODERS:
            raise ValueError(f"decoder {kind!r} is not one of {', '.join(DECODERS)}")
        self.kind = kind
        ins, skips, widths = _widths(stage_channels, channels)
        block = _TransposedBlock if kind == "backboned-unet" else _NearestBlock
        self.blocks = nn.ModuleList(block(i, s, o) for i, s, o in zip(ins, skips, widths))
        self.classifier = (nn.Conv2d(widths[-1], num_classes, 1) if kind == "backboned-unet"
                           else nn.Conv2d(widths[-1], num_classes, 3, padding=1))

    def forward(self, stages: list[torch.Tensor], out_size: torch.Size) -> torch.Tensor:
        x = stages[-1]
        skips = stages[3::-1] + [None]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip, skip.shape[-2:] if skip is not None else out_size)
        return self.classifier(x)
