"""The network and loss of a downstream task: a ResNet encoder plus a new head.

    model = TaskModel(encoder, kind="classification", num_outputs=7, frozen_encoder=False)
    loss = task_loss("classification", model(x), y, class_weights)

Heads (all newly initialised; the encoder may come from a checkpoint):
- classification and multilabel: one linear layer on the pooled features (the SimCLR
  projector or an ImageNet `fc` is never reused);
- segmentation: the U-Net decoder of trainer/models/unet.py on the encoder's stages.

Linear evaluation (`frozen_encoder=True`): the encoder's parameters do not train and
the encoder stays in eval mode even while the model is in train mode, so its
BatchNorm running statistics do not move either (a frozen encoder that still updated
its BN statistics would be a different encoder). For segmentation the decoder trains,
which is the paper's "half the model".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.unet import UNetDecoder

KINDS = ("classification", "multilabel", "segmentation")


class TaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, kind: str, num_outputs: int, frozen_encoder: bool = False,
                 decoder_channels: tuple[int, ...] | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(KINDS)}")
        self.kind, self.frozen_encoder = kind, frozen_encoder
        self.encoder = encoder
        if kind == "segmentation":
            self.decoder = UNetDecoder(encoder.stage_channels, num_outputs, decoder_channels)
        else:
            self.head = nn.Linear(encoder.feature_dim, num_outputs)
        if frozen_encoder:
            self.encoder.requires_grad_(False)

    def head_module(self) -> nn.Module:
        """The new part: the linear head or the U-Net decoder."""
        return self.decoder if self.kind == "segmentation" else self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "segmentation":
            return self.decoder(self.encoder.forward_stages(x), out_size=x.shape[-2:])
        return self.head(self.encoder.forward_features(x))

    def train(self, mode: bool = True) -> "TaskModel":
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()  # BN statistics of a frozen encoder must not move
        return self


def task_loss(kind: str, logits: torch.Tensor, target: torch.Tensor,
              class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted cross-entropy (per image, or per pixel for segmentation: logits [B, C, H, W],
    target [B, H, W]) or, for multilabel, binary cross-entropy on each label's logit with
    the label's weight. Computed in float32 whatever the autocast dtype."""
    logits = logits.float()
    if kind == "multilabel":
        weight = None if class_weights is None else class_weights.expand_as(logits)
        return F.binary_cross_entropy_with_logits(logits, target.float(), weight=weight)
    # torch's weighted mean: sum_i w[y_i] * -log p_i[y_i] / sum_i w[y_i]
    return F.cross_entropy(logits, target.long(), weight=class_weights)
