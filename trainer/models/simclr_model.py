"""The SimCLR network: encoder + projector, and it owns its loss (forward(x1, x2) returns it).

    model = SimCLRModel(build_encoder("resnet50"), build_projector("paper", 2048), temperature=0.5)
    loss = model(x1, x2)         # x1, x2: (b, 1, H, W) or (b, 3, H, W), the two views of the same b slices
    z = model(x)                 # one argument: the projector's embeddings (used by gradient caching)

Owning the loss keeps the training loop one line long and lets DDP wrap the whole
thing. Both views go through the encoder in one batch, so BatchNorm normalises over both
views together (as SimCLR does).

The loaders hand out one-channel slices; the encoder keeps torchvision's 3-channel
conv1 (so ImageNet weights load unchanged). The channel is replicated here, on the
device, as a stride-0 view (`expand`): the host-to-device copy moves one channel, not
three, and nothing is copied until the first convolution reads it.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.losses import nt_xent


class SimCLRModel(nn.Module):
    def __init__(self, encoder: nn.Module, projector: nn.Module, temperature: float):
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.temperature = temperature

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.projector(self.encoder(x))

    def loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent(z1, z2, self.temperature)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        if x2 is None:
            return self.embed(x1)
        z1, z2 = self.embed(torch.cat([x1, x2])).chunk(2)
        return self.loss(z1, z2)
