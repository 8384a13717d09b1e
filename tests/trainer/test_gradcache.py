"""Gradient caching gives the one-big-batch gradient (BN in eval mode) and updates BN statistics once."""
import torch

from trainer.gradcache import grad_cache_step
from trainer.models import build_encoder
from trainer.models.projector import build_projector
from trainer.models.simclr_model import SimCLRModel


def _model(kind="simclr"):
    torch.manual_seed(0)
    enc = build_encoder("resnet-tiny", zero_init_residual=False)  # nonzero residual branches: every layer matters
    return SimCLRModel(enc, build_projector(kind, enc.feature_dim), temperature=0.1)


def _views(n=12, size=32):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, size, size, generator=g), torch.rand(n, 1, size, size, generator=g)


def test_chunked_gradient_equals_whole_batch_with_bn_in_eval_mode():
    x1, x2 = _views()
    full = _model().eval()
    full_loss = full(x1, x2)
    full_loss.backward()
    cached = _model().eval()
    loss = grad_cache_step(cached, x1, x2, chunk=5)  # 5 + 5 + 2: uneven chunks too
    assert torch.allclose(loss, full_loss.detach(), atol=1e-6)
    for (name, p), q in zip(full.named_parameters(), cached.parameters()):
        assert p.grad.abs().max() > 0, name
        assert torch.allclose(q.grad, p.grad, rtol=1e-4, atol=1e-6), name


def test_bn_running_statistics_move_once_per_step():
    x1, x2 = _views(8)
    model = _model().train()
    bn = model.encoder.bn1
    grad_cache_step(model, x1, x2, chunk=4)
    assert int(bn.num_batches_tracked) == 4   # 2 chunks x 2 views in pass 2; pass 1 is undone
    # the same four forwards without caching leave the same running statistics
    plain = _model().train()
    for x in (*x1.split(4), *x2.split(4)):
        plain(x)
    assert torch.allclose(bn.running_mean, plain.encoder.bn1.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, plain.encoder.bn1.running_var, atol=1e-6)
