"""LARS update sizes against the formula; schedules at their landmarks."""
import math

import pytest
import torch
from torch import nn

from trainer.errors import TrainerError
from trainer.optim import LARS, Schedule, lars_param_groups, set_lr


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3, bias=False))


def test_groups_exclude_biases_and_norm_parameters():
    m = _model()
    decay, excluded = lars_param_groups(m, weight_decay=1e-6)
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[2].weight)}
    assert {id(p) for p in excluded["params"]} == {id(m[0].bias), id(m[1].weight), id(m[1].bias)}
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"] and not decay["lars_exclude"]


def test_first_step_update_size_matches_formula():
    m = _model().double()  # float64: the update is ~1e-5 of the weights, float32 would cancel it away
    m(torch.randn(8, 6, dtype=torch.float64)).pow(2).sum().backward()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    grads = {n: p.grad.detach().clone() for n, p in m.named_parameters()}
    lr, wd, eta = 0.7, 1e-2, 1e-3
    LARS(lars_param_groups(m, wd), lr=lr, momentum=0.9, trust_coefficient=eta).step()
    for name, p in m.named_parameters():
        update = before[name] - p.detach()
        if p.ndim > 1:  # weights: lr * eta * ||w|| * (g + wd w) / ||g + wd w||
            d = grads[name] + wd * before[name]
            expected = lr * eta * before[name].norm() / d.norm() * d
            assert torch.allclose(update, expected, rtol=1e-9, atol=1e-15)
            assert math.isclose(update.norm().item(), lr * eta * before[name].norm().item(), rel_tol=1e-9)
        else:           # biases and BN: plain lr * g, no decay, no trust ratio
            assert torch.allclose(update, lr * grads[name], rtol=1e-9, atol=1e-15)


def test_momentum_accumulates_scaled_directions_and_zero_weights_step_plainly():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))     # ||w|| = 5
    z = nn.Parameter(torch.zeros(1, 2))              # ||w|| = 0 -> trust ratio 1
    opt = LARS([{"params": [w, z], "weight_decay": 0.0, "lars_exclude": False}], lr=1.0, momentum=0.5,
               trust_coefficient=0.1)
    for _ in range(2):
        w.grad = torch.tensor([[0.0, 2.0]])          # ||g|| = 2: scaled direction 0.1 * 5 / 2 * g = [0, 0.5]
        z.grad = torch.tensor([[1.0, 0.0]])
        opt.step()
    # step 1: v = [0, .5]; w = [3, 3.5]. step 2: ||w|| = 4.6098; d = [0, .1*4.6098]; v = .5*.5 + .46098
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 3.5 - (0.25 + 0.1 * math.hypot(3, 3.5))]]), atol=1e-6)
    # z: step 1 ratio 1 (||z|| = 0) -> z = [-1, 0]; step 2 ratio .1 * 1 / 1 -> v = .5 + .1 -> z = [-1.6, 0]
    assert torch.allclose(z.detach(), torch.tensor([[-1.6, 0.0]]))


def test_set_lr_and_schedules():
    opt = LARS(lars_param_groups(_model(), 0.0), lr=1.0)
    set_lr(opt, 0.25)
    assert all(g["lr"] == 0.25 for g in opt.param_groups)
    cos = Schedule("cosine-epoch", base_lr=4.8, epochs=100, steps_per_epoch=10)
    assert cos(0) == cos(9) == 4.8 and math.isclose(cos(500), 2.4) and cos(999) == cos(990) > 0
    wc = Schedule("warmup-cosine", base_lr=1.0, epochs=20, steps_per_epoch=10, warmup_epochs=10)
    assert math.isclose(wc(0), 0.01) and math.isclose(wc(99), 1.0) and math.isclose(wc(100), 1.0)
    assert math.isclose(wc(150), 0.5) and wc(199) < 1e-3
    ex = Schedule("exp-epoch", base_lr=1e-3, epochs=50, steps_per_epoch=4, decay=0.97)
    assert ex(3) == 1e-3 and math.isclose(ex(4), 0.97e-3) and math.isclose(ex(8), 0.97 ** 2 * 1e-3)
    with pytest.raises(TrainerError, match="schedule 'step' is not one of cosine-epoch, warmup-cosine, exp-epoch"):
        Schedule("step", 1.0, 1, 1)
