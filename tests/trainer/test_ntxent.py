"""NT-Xent: closed-form values, float32 under autocast, and the DDP gradient equals the full-batch gradient."""
import math

import pytest
import torch
import torch.nn.functional as F
from dist_helpers import run_ranks
from torch import nn

from trainer.gradcache import grad_cache_step
from trainer.losses import nt_xent
from trainer.models.simclr_model import SimCLRModel

BATCH, WORLD = 8, 2


@pytest.mark.parametrize("n", [1, 4, 16])
def test_all_equal_embeddings_give_log_2n_minus_1(n):
    z = torch.ones(n, 5)
    assert math.isclose(nt_xent(z, z.clone(), 0.5).item(), math.log(2 * n - 1), rel_tol=1e-6)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_orthonormal_identical_views_give_closed_form(t):
    n = 6
    z = 3.0 * torch.eye(n, 16)[torch.randperm(n)]  # n orthogonal rows (any norm: the loss normalises)
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
    # absolute tolerance: the logits are 1/t = 10, where float32 resolves ~1e-6
    assert math.isclose(nt_xent(z, z.clone(), t).item(), expected, rel_tol=1e-5, abs_tol=2e-6)


def test_reference_formula_and_float32_under_autocast():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 7), torch.randn(5, 7)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / 0.2
    sim.fill_diagonal_(float("-inf"))
    reference = F.cross_entropy(sim, torch.cat([torch.arange(5, 10), torch.arange(5)]))
    assert torch.allclose(nt_xent(z1, z2, 0.2), reference, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.2)
    assert loss.dtype == torch.float32


def _model():
    torch.manual_seed(0)
    # No BatchNorm anywhere, so the ranks' forward passes match the full batch's exactly.
    encoder = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return SimCLRModel(encoder, nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5)), temperature=0.2)


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 1, 10, 10, generator=g), torch.randn(BATCH, 1, 10, 10, generator=g)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _ddp_worker(out_path):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from trainer.dist import all_reduce_mean, close_dist, init_dist
    env = init_dist("cpu")
    b = BATCH // env.world_size
    x1, x2 = (x[env.rank * b:(env.rank + 1) * b] for x in _batch())
    ddp = DDP(_model())
    loss = ddp(x1, x2)
    loss.backward()
    grads = _grads(ddp.module)
    ddp.zero_grad(set_to_none=True)
    grad_cache_step(ddp, x1, x2, chunk=1)
    if env.is_main:
        torch.save({"loss": all_reduce_mean(loss.detach()), "grads": grads, "gc": _grads(ddp.module)}, out_path)
    else:
        all_reduce_mean(loss.detach())
    close_dist(env)


def test_two_gloo_ranks_give_the_full_batch_gradient(tmp_path):
    run_ranks(_ddp_worker, str(tmp_path / "ddp.pt"), world=WORLD)
    got = torch.load(tmp_path / "ddp.pt")
    model = _model()
    loss = model(*_batch())
    loss.backward()
    want = _grads(model)
    assert math.isclose(got["loss"], loss.item(), rel_tol=1e-6)
    for name, g in want.items():
        assert g.abs().max() > 1e-4, name  # the comparison is not between zeros
        diff = (got["grads"][name] - g).abs().max().item()
        diff_gc = (got["gc"][name] - g).abs().max().item()   # gradient caching under DDP, chunk 1
        print(f"{name}: max |g| {g.abs().max().item():.2e}, DDP diff {diff:.1e}, DDP+gradcache diff {diff_gc:.1e}")
        assert max(diff, diff_gc) < min(1e-6, 1e-3 * g.abs().max().item()), name
