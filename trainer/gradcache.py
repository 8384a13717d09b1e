"""Exact gradient caching (Gao et al. 2021) for a contrastive loss over a batch that does not fit.

    from trainer.gradcache import grad_cache_step
    loss = grad_cache_step(model, x1, x2, chunk=256)   # model: SimCLRModel, or DDP around one
    optimizer.step()

1. embed every chunk of both views without building a graph (memory: embeddings only);
2. compute the loss on all embeddings and its gradient w.r.t. each embedding;
3. re-embed chunk by chunk with a graph and backpropagate that chunk's cached gradient.
The parameter gradient is then exactly that of the loss on the whole batch at once:
NT-Xent couples every pair of samples, so it must see all embeddings together; plain
gradient accumulation (a loss per micro-batch) would drop all cross-chunk negatives
and is a different objective, which is why tlx does not offer it.

BatchNorm caveat: in train mode BN normalises each chunk with that chunk's statistics,
so with BN the result equals a whole-batch step only for BN in eval mode (the test
checks that); in training it is the whole-batch contrastive loss with per-chunk BN
statistics (like training on more GPUs with a smaller per-GPU batch). Running
statistics are updated once per step (pass 1 does not count): the buffers are restored
after it. Under DDP only the last chunk's backward all-reduces the gradients.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


@contextlib.contextmanager
def frozen_buffers(module: nn.Module):
    """Run a forward without changing BN running statistics (restored afterwards)."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


def _unwrap(model: nn.Module) -> tuple[DDP | None, nn.Module]:
    """(the DDP wrapper if any, the SimCLRModel) inside a maybe-compiled, maybe-DDP model."""
    inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    return (inner, inner.module) if isinstance(inner, DDP) else (None, inner)


def grad_cache_step(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, chunk: int) -> torch.Tensor:
    """Backward of the whole-batch loss in chunks of `chunk` images per view; returns the loss (detached)."""
    ddp, net = _unwrap(model)
    with torch.no_grad(), frozen_buffers(net):
        z1 = torch.cat([net(c) for c in x1.split(chunk)])
        z2 = torch.cat([net(c) for c in x2.split(chunk)])
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    loss = net.loss(z1, z2)
    loss.backward()  # gradients w.r.t. the embeddings only (under DDP: summed over ranks by the gather)
    pieces = list(zip(x1.split(chunk), z1.grad.split(chunk))) + list(zip(x2.split(chunk), z2.grad.split(chunk)))
    for i, (x, g) in enumerate(pieces):
        last = i == len(pieces) - 1
        sync = contextlib.nullcontext() if last or ddp is None else ddp.no_sync()
        with sync:
            z = model(x)
            z.backward(g.to(z.dtype))
    return loss.detach()
