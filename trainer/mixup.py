"""MixUp (Zhang et al. 2018) as BiT applies it: one lambda ~ Beta(alpha, alpha) per batch,
each example mixed with the example a random permutation puts in its place.

    from trainer.mixup import mixup_batch, mixup_loss
    rng = np.random.default_rng([seed, step])      # deterministic per step, resume-safe
    m = mixup_batch(x, y, alpha=0.1, rng=rng)
    loss = mixup_loss(F.cross_entropy, model(m.x), m)

    x' = lam * x + (1 - lam) * x[perm]
    loss = lam * L(logits, y) + (1 - lam) * L(logits, y[perm])
Because cross-entropy and binary cross-entropy are linear in the target, the loss equals
L on the mixed target lam * t + (1 - lam) * t[perm] (`mixed_targets`, for one-hot,
soft or multi-label targets); the tests check both forms. alpha = 0 means no MixUp
(lam = 1, perm = identity), as bit_pytorch skips it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class Mixed:
    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float
    perm: torch.Tensor


def mixup_batch(x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator) -> Mixed:
    if alpha < 0:
        raise ValueError(f"MixUp alpha must be >= 0, got {alpha}")
    if alpha == 0:
        return Mixed(x, y, y, 1.0, torch.arange(x.shape[0]))
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(x.shape[0]))
    return Mixed(lam * x + (1 - lam) * x[perm], y, y[perm], lam, perm)


def mixup_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], logits: torch.Tensor,
               m: Mixed) -> torch.Tensor:
    return m.lam * loss_fn(logits, m.y_a) + (1 - m.lam) * loss_fn(logits, m.y_b)


def mixed_targets(targets: torch.Tensor, m: Mixed) -> torch.Tensor:
    """lam * t + (1 - lam) * t[perm] for float targets [B, C] (one-hot, soft or multi-label)."""
    return m.lam * targets + (1 - m.lam) * targets[m.perm]
