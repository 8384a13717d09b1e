"""NT-Xent over the global batch, with an all-gather that sends gradients back to their rank.

    from trainer.losses import nt_xent
    loss = nt_xent(z1, z2, temperature=0.5)   # z1, z2: this rank's two views' embeddings, (b, d)

Each rank's 2b local embeddings are anchors; the candidates are all 2N embeddings of
the global batch (N = b * world size), gathered from every rank. The anchor's positive
is its other view; the other 2N - 2 are negatives; its own copy is masked out. The
value returned is the mean over this rank's anchors, so:
- single process: the usual NT-Xent of the whole batch;
- DDP: DDP averages parameter gradients over ranks, and `GatherWithGrad` sums the
  embeddings' gradients over ranks in backward, so the averaged gradient is exactly the
  gradient of the global batch's mean loss (tests/trainer/test_ntxent.py checks it on
  2 gloo processes against one process holding the whole batch). Computing anchors
  locally costs 2b x 2N similarities per rank instead of 2N x 2N.
Similarities and the softmax run in float32 even under bf16 autocast.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.dist import is_distributed


class GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x.contiguous())
        ctx.rank, ctx.b = dist.get_rank(), x.shape[0]
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss used every rank's embeddings: rank r's embeddings get the sum.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.b:(ctx.rank + 1) * ctx.b]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(all ranks' x concatenated in rank order, offset of this rank's rows)."""
    if not is_distributed():
        return x, 0
    return GatherWithGrad.apply(x), dist.get_rank() * x.shape[0]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1 = F.normalize(z1.float(), dim=1)
        z2 = F.normalize(z2.float(), dim=1)
        all1, offset = gather_with_grad(z1)
        all2, _ = gather_with_grad(z2)
        n, b = all1.shape[0], z1.shape[0]
        candidates = torch.cat([all1, all2])                # (2N, d): view 1 of all, then view 2 of all
        anchors = torch.cat([z1, z2])                       # (2b, d)
        logits = anchors @ candidates.T / temperature       # (2b, 2N)
        own = torch.arange(b, device=z1.device) + offset    # my rows' indices among the N
        self_idx = torch.cat([own, own + n])
        positive = torch.cat([own + n, own])
        rows = torch.arange(2 * b, device=z1.device)
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[rows, self_idx] = True
        return F.cross_entropy(logits.masked_fill(mask, float("-inf")), positive)
