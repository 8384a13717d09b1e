"""Adaptive gradient clipping (Brock et al. 2021, "High-Performance Large-Scale Image
Recognition Without Normalization", NFNets), unit-wise.

    from trainer.agc import adaptive_grad_clip_, agc_parameters
    loss.backward()
    adaptive_grad_clip_(agc_parameters(model), clipping=0.01)
    optimizer.step()

For each unit i of a parameter W with gradient G (a unit = one output row: dims 1.. of
a conv weight [out, in, kh, kw] or a linear weight [out, in]; the whole tensor for a
bias or a norm gain):
    max_i = clipping * max(||W_i||, eps)
    G_i  <- G_i * max_i / max(||G_i||, 1e-6)   if ||G_i|| > max_i, else unchanged
(Frobenius norms). eps = 1e-3 keeps zero-initialised parameters from being frozen. This
is deepmind's nfnets `unitwise_norm`/AGC with torch's [out, ...] layout (their HWIO
kernels reduce over axes 0..2, the same units). The paper does not clip the final
classifier; `agc_parameters` leaves out `fc.*` and `head.*` for that reason.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def unitwise_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-output-unit L2 norm, shaped to broadcast against `t` (a scalar for ndim <= 1)."""
    if t.ndim <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_grad_clip_(params: Iterable[torch.Tensor], clipping: float = 0.01, eps: float = 1e-3) -> None:
    """Clip every gradient in place, unit by unit (module docstring)."""
    if clipping <= 0:
        raise ValueError(f"AGC clipping must be > 0, got {clipping}")
    for p in params:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p).clamp_min(eps) * clipping
        grad_norm = unitwise_norm(p.grad)
        clipped = p.grad * (max_norm / grad_norm.clamp_min(1e-6))
        p.grad.copy_(torch.where(grad_norm > max_norm, clipped, p.grad))


def agc_parameters(model: nn.Module, exclude: tuple[str, ...] = ("fc.", "head.")) -> list[torch.Tensor]:
    """Trainable parameters outside the classifier (names starting with `exclude`)."""
    return [p for name, p in model.named_parameters()
            if p.requires_grad and not any(name.startswith(e) or f".{e}" in name for e in exclude)]
