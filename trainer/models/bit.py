"""BiT ResNet-v2 (Kolesnikov et al. 2020, "Big Transfer"): pre-activation bottlenecks,
GroupNorm(32) and weight-standardised convolutions, widths x1 to x4.

    from trainer.models import build_encoder
    enc = build_encoder("bit-r50x1")                    # enc.feature_dim == 2048
    enc = build_encoder("bit-r152x4", checkpoint_activations=True)   # recompute each stage in backward
    feats = enc(x)                                      # pooled features [B, 2048 * width]
    stages = enc.forward_stages(x)                      # five maps for the U-Net decoder

The layout follows google-research/big_transfer's bit_pytorch/models.py (`ResNetV2`),
so the released BiT .npz weights map one to one (trainer/bit_weights.py):
- `root.conv`: a 7x7/2 weight-standardised conv (64 * width), then zero pad 1 and a 3x3/2
  max pool, as published (MaxPool2d's own padding would pad with -inf, which differs
  wherever the un-normalised conv output is negative);
- `body.block{1..4}.unit{01..}`: PreActBottleneck: GN -> ReLU -> conv1x1 -> GN -> ReLU ->
  conv3x3 (stride here, as BiT's PyTorch/TF2 code) -> GN -> ReLU -> conv1x1, plus the
  identity or, in each block's first unit, a projection conv applied to the pre-activated
  input (`downsample`);
- `norm`: the final GN (BiT's `head.gn`), then ReLU and global average pooling;
- `fc`: a Linear classifier (BiT's `head.conv`, a 1x1 conv on the pooled map, which is
  the same map), only when num_classes > 0. tlx's `--init` drops `fc.*` as for any encoder.

Weight standardisation: w' = (w - mean(w)) / sqrt(var(w) + 1e-10) per output channel
(population variance), as bit_pytorch's StdConv2d. GroupNorm eps is torch's 1e-5, as
bit_pytorch's nn.GroupNorm(32, c).

`forward_stages` (the U-Net's skips, strides 2, 4, 8, 16, 32): the root conv's output,
the outputs of block1..block3 (pre-activation residual streams, not normalised: in a v2
network the next unit normalises them) and relu(norm(block4)), the map that is pooled.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

WS_EPS = 1e-10   # bit_pytorch's StdConv2d


class StdConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised per output channel on every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (self.weight - mean) / torch.sqrt(var + WS_EPS)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> StdConv2d:
    return StdConv2d(cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=False)


class PreActBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1, groups: int = 32):
        super().__init__()
        self.gn1 = nn.GroupNorm(groups, cin)
        self.conv1 = _conv(cin, cmid, 1)
        self.gn2 = nn.GroupNorm(groups, cmid)
        self.conv2 = _conv(cmid, cmid, 3, stride)
        self.gn3 = nn.GroupNorm(groups, cmid)
        self.conv3 = _conv(cmid, cout, 1)
        self.downsample = _conv(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.gn1(x))
        residual = x if self.downsample is None else self.downsample(out)   # projection sees the pre-activation
        out = self.conv1(out)
        out = self.conv2(F.relu(self.gn2(out)))
        out = self.conv3(F.relu(self.gn3(out)))
        return out + residual


class ResNetV2(nn.Module):
    """BiT ResNet-v2 encoder with the interface of trainer.models.resnet.ResNet
    (`feature_dim`, `stage_channels`, `forward_stages`, `forward_features`, `forward`).

    `layers`: units per block ([3, 4, 6, 3] for R50); `width`: BiT's width factor;
    `base_width` (64) and `groups` (32) are BiT's and change only for the tiny test model.
    `checkpoint_activations`: each of block1..block4 keeps only its input while grad is on
    and recomputes its activations in backward (torch.utils.checkpoint, non-reentrant);
    the root conv is not wrapped (its input is all it would save). GroupNorm holds no
    running statistics, so recomputation is exact.
    """

    def __init__(self, layers: list[int], width: int = 1, num_classes: int = 0, in_channels: int = 3,
                 base_width: int = 64, groups: int = 32, checkpoint_activations: bool = False):
        super().__init__()
        wf = base_width * width
        self.checkpoint_activations = checkpoint_activations
        self.root = nn.Sequential(OrderedDict([
            ("conv", StdConv2d(in_channels, wf, kernel_size=7, stride=2, padding=3, bias=False)),
            ("pad", nn.ConstantPad2d(1, 0.0)),
            ("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=0)),
        ]))
        blocks, cin = [], wf
        for i, (units, mult) in enumerate(zip(layers, (1, 2, 4, 8)), start=1):
            cmid, cout, stride = wf * mult, wf * mult * 4, 1 if i == 1 else 2
            unit_list = [(f"unit{u:02d}", PreActBottleneck(cin if u == 1 else cout, cout, cmid,
                                                            stride if u == 1 else 1, groups))
                         for u in range(1, units + 1)]
            blocks.append((f"block{i}", nn.Sequential(OrderedDict(unit_list))))
            cin = cout
        self.body = nn.Sequential(OrderedDict(blocks))
        self.norm = nn.GroupNorm(groups, cin)
        self.feature_dim = cin
        self.stage_channels = [wf] + [wf * m * 4 for m in (1, 2, 4, 8)]
        self.fc = nn.Linear(cin, num_classes) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if self.fc is not None:
            # BiT's zero head: a new classifier starts at zero logits (bit_pytorch zero_head=True)
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def _stage(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_activations and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 2, 4, 8, 16, 32 (root conv, block1..block4 normalised)."""
        stem = self.root.conv(x)
        c1 = self._stage(self.body.block1, self.root.pool(self.root.pad(stem)))
        c2 = self._stage(self.body.block2, c1)
        c3 = self._stage(self.body.block3, c2)
        c4 = F.relu(self.norm(self._stage(self.body.block4, c3)))
        return [stem, c1, c2, c3, c4]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)
        return feats if self.fc is None else self.fc(feats)


# (units per block, width factor) of the released BiT models.
BIT_ARCHS = {
    "bit-r50x1": ([3, 4, 6, 3], 1), "bit-r50x3": ([3, 4, 6, 3], 3),
    "bit-r101x1": ([3, 4, 23, 3], 1), "bit-r101x3": ([3, 4, 23, 3], 3),
    "bit-r152x2": ([3, 8, 36, 3], 2), "bit-r152x4": ([3, 8, 36, 3], 4),
}
