"""ResNet written here, with parameter names identical to torchvision's.

Because the module tree mirrors torchvision (`conv1`, `bn1`, `layer1.0.conv1`,
`layer1.0.downsample.0`, ..., `fc`), a torchvision or timm ImageNet state dict loads
with `load_state_dict(sd, strict=True)` and no key renaming. torchvision itself is not
needed (it does not install next to the torch build we pin).

Variant "v1.5" (stride on the 3x3 conv of a bottleneck), as torchvision. Options for other
releases: `width_factor=2` (torchvision's wide_resnet*_2: bottleneck inner widths doubled,
outputs unchanged), and `keras=True` for the Keras ResNet-50 v1 layout (the RadImageNet and
keras.applications releases): stride on the first 1x1 conv of a block, convolutions with
biases, BatchNorm eps 1.001e-5 (trainer/keras_weights.py converts their .h5 files).
"""
from __future__ import annotations

import torch
from torch import nn

KERAS_BN_EPS = 1.001e-5   # keras.applications.ResNet50's BatchNormalization epsilon


def conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=bias)


def conv1x1(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=bias)


def _bn(c: int, keras: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=KERAS_BN_EPS if keras else 1e-5)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None,
                 width_factor: int = 1, keras: bool = False):
        super().__init__()
        if width_factor != 1 or keras:
            raise ValueError("BasicBlock has no wide or Keras variant")
        self.conv1 = conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None,
                 width_factor: int = 1, keras: bool = False):
        super().__init__()
        inner, out = width * width_factor, width * self.expansion
        # v1.5 (torchvision) strides in the 3x3 conv; Keras' v1 in the first 1x1 conv
        self.conv1 = conv1x1(cin, inner, stride if keras else 1, bias=keras)
        self.bn1 = _bn(inner, keras)
        self.conv2 = conv3x3(inner, inner, 1 if keras else stride, bias=keras)
        self.bn2 = _bn(inner, keras)
        self.conv3 = conv1x1(inner, out, bias=keras)
        self.bn3 = _bn(out, keras)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A torchvision-layout ResNet.

    `num_classes=0` builds the encoder without `fc` (what SimCLR and the downstream
    heads use); `forward` then returns the pooled features of size `feature_dim`.
    `forward_stages` returns the five feature maps a U-Net decoder skips from.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 base_width: int = 64, num_classes: int = 1000, in_channels: int = 3,
                 zero_init_residual: bool = True, width_factor: int = 1, keras: bool = False):
        super().__init__()
        self.inplanes, self.block_options = base_width, {"width_factor": width_factor, "keras": keras}
        self.conv1 = nn.Conv2d(in_channels, base_width, kernel_size=7, stride=2, padding=3, bias=keras)
        self.bn1 = _bn(base_width, keras)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, base_width, layers[0])
        self.layer2 = self._make_layer(block, base_width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, base_width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, base_width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = base_width * 8 * block.expansion
        # Channels of forward_stages' outputs, shallow to deep.
        self.stage_channels = [base_width] + [base_width * m * block.expansion for m in (1, 2, 4, 8)]
        self.fc = nn.Linear(self.feature_dim, num_classes) if num_classes else None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block starts as the identity
            # (Goyal et al. 2017); this is what large-batch SimCLR recipes rely on.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def _make_layer(self, block, width: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample, keras = None, self.block_options["keras"]
        if stride != 1 or self.inplanes != width * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, width * block.expansion, stride, bias=keras),
                                       _bn(width * block.expansion, keras))
        layers = [block(self.inplanes, width, stride, downsample, **self.block_options)]
        self.inplanes = width * block.expansion
        layers += [block(self.inplanes, width, **self.block_options) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 2, 4, 8, 16, 32 (stem, layer1..layer4)."""
        stem = self.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(self.maxpool(stem))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [stem, c1, c2, c3, c4]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.forward_stages(x)[-1]), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)
        return feats if self.fc is None else self.fc(feats)
