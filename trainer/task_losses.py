"""The losses of multi-label targets with missing labels, and of segmentation by Dice.

    loss = masked_bce(logits, targets, class_weights)      # targets NaN = missing: zero gradient there
    loss = dice_loss(logits, target_classes)                # 1 - soft Dice, averaged over foreground classes
    loss = segmentation_loss("dice+ce", logits, target, class_weights, cross_entropy)

Masked BCE: a label stored as missing (NaN: `tlx convert cxr --uncertain ignore`, `--blank ignore`,
or a label a merged source lacks) contributes nothing, neither loss nor gradient; the loss is the
weighted sum over the observed entries divided by their number (the mean BCE when nothing is
missing, as before), over the global batch under DDP (each rank divides by the global count /
world size, so the run does not depend on the number of GPUs, as the weighted CE). Soft targets
(label smoothing) are taken as they are.

Soft Dice (Milletari et al. 2016, squared terms left out): per foreground class c,
D_c = (2 sum p_c t_c + eps) / (sum p_c + sum t_c + eps) over the batch's pixels, p the softmax
probabilities, t the one-hot truth, eps = 1; loss = 1 - mean_c D_c. The sums run over this rank's
share of the batch (the Dice of a batch is no mean of per-sample terms, so DDP's gradient averaging
makes it the mean of the ranks' batch Dice losses). `dice+ce` adds it to the (class-weighted)
cross-entropy with weight 1. Class weights apply to the cross-entropy only.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.dist import is_distributed

SEG_LOSSES = ("ce", "dice", "dice+ce")
DICE_EPS = 1.0


def masked_bce(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """BCE with logits over the observed (non-NaN) targets; missing ones get zero loss and zero gradient."""
    logits, target = logits.float(), target.float()
    observed = ~torch.isnan(target)
    weight = observed.float() if class_weights is None else observed * class_weights.expand_as(logits)
    total = F.binary_cross_entropy_with_logits(logits, torch.where(observed, target, 0.0), weight=weight,
                                               reduction="sum")
    count = observed.sum().to(total.dtype).detach()
    if is_distributed():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return total / count.clamp(min=1.0)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes; logits [B, C, H, W], target [B, H, W] class indices."""
    probs = torch.softmax(logits.float(), dim=1)
    truth = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    overlap = (probs * truth).sum(dims)
    dice = (2 * overlap + DICE_EPS) / (probs.sum(dims) + truth.sum(dims) + DICE_EPS)
    return 1 - dice[1:].mean() if probs.shape[1] > 1 else 1 - dice.mean()


def segmentation_loss(name: str, logits: torch.Tensor, target: torch.Tensor, class_weights,
                      cross_entropy) -> torch.Tensor:
    """`name` of SEG_LOSSES; `cross_entropy(logits, target, class_weights)` is the trainer's weighted CE."""
    if name == "ce":
        return cross_entropy(logits, target, class_weights)
    if name == "dice":
        return dice_loss(logits, target)
    if name == "dice+ce":
        return dice_loss(logits, target) + cross_entropy(logits, target, class_weights)
    raise ValueError(f"segmentation loss {name!r} is not one of: {', '.join(SEG_LOSSES)}")
