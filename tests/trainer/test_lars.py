"""LARS update sizes against the formula; schedules at their landmarks."""
import math

import numpy as np
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
    with pytest.raises(TrainerError, match="schedule 'poly' is not one of cosine-epoch, warmup-cosine, exp-epoch"):
        Schedule("poly", 1.0, 1, 1)


def tf_simclr_lars(w, grads, lrs, momentum, wd, eta, excluded):
    """TF-SimCLR's LARSOptimizer (lars_optimizer.py, no Nesterov), written out in float64 numpy:
        grad += wd * w                                      (not for excluded tensors)
        trust = eta * ||w|| / ||grad||  (1 if either norm is 0, or the tensor is excluded)
        v = momentum * v + lr * trust * grad;  w = w - v"""
    w, v = w.copy(), np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        trust = 1.0
        if not excluded:
            g = g + wd * w
            wn, gn = np.linalg.norm(w), np.linalg.norm(g)
            trust = eta * wn / gn if wn > 0 and gn > 0 else 1.0
        v = momentum * v + lr * trust * g
        w = w - v
    return w


@pytest.mark.parametrize("lrs", [[4.8, 4.8, 2.4, 2.4, 1.2], [1.0, 0.5, 0.5, 0.25, 2.0]])
def test_study_code_form_is_the_tf_simclr_update_over_lr_changes(lrs):
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(4, 3)), rng.normal(size=4)
    grads = [(rng.normal(size=(4, 3)), rng.normal(size=4)) for _ in lrs]
    results = {}
    for form in ("study-code", "lr-outside"):
        lin = nn.Linear(3, 4).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w0))
            lin.bias.copy_(torch.from_numpy(b0))
        opt = LARS(lars_param_groups(lin, weight_decay=1e-2), lr=lrs[0], momentum=0.9, trust_coefficient=1e-3,
                   form=form)
        for (gw, gb), lr in zip(grads, lrs):
            set_lr(opt, lr)
            lin.weight.grad, lin.bias.grad = torch.from_numpy(gw), torch.from_numpy(gb)
            opt.step()
        results[form] = (lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy())
    expected_w = tf_simclr_lars(w0, [g[0] for g in grads], lrs, 0.9, 1e-2, 1e-3, excluded=False)
    expected_b = tf_simclr_lars(b0, [g[1] for g in grads], lrs, 0.9, 1e-2, 1e-3, excluded=True)
    np.testing.assert_allclose(results["study-code"][0], expected_w, rtol=0, atol=1e-13)
    np.testing.assert_allclose(results["study-code"][1], expected_b, rtol=0, atol=1e-13)
    # lr outside the buffer: the same while lr is constant, another trajectory once it changes
    assert np.abs(results["lr-outside"][1] - expected_b).max() > 1e-3


def test_the_two_forms_agree_while_the_lr_is_constant_and_an_unknown_form_is_refused():
    outs = []
    for form in ("study-code", "lr-outside"):
        torch.manual_seed(3)
        lin = nn.Linear(3, 2).double()
        opt = LARS(lars_param_groups(lin, 1e-4), lr=0.3, momentum=0.9, form=form)
        for _ in range(4):
            lin.weight.grad, lin.bias.grad = torch.ones(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
            opt.step()
        outs.append(torch.cat([lin.weight.flatten(), lin.bias]).detach())
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-14)
    with pytest.raises(TrainerError, match="LARS form 'tf' is not one of study-code, lr-outside"):
        LARS(lars_param_groups(_model(), 0.0), lr=1.0, form="tf")


def test_the_recipes_apply_the_lr_inside_the_momentum_and_a_run_from_before_resumes_only_as_it_was():
    from trainer.checkpoint import check_same_run
    from trainer.config import parse_config
    from trainer.simclr import SimCLRConfig, resolve, saved_config

    for recipe in ("paper", "simclr"):
        cfg = resolve(parse_config(SimCLRConfig, ["--data", "d", "--out", "o", "--recipe", recipe]))
        assert cfg.lars_form == "study-code"
    before = saved_config({"config": {"lr": 4.8}})    # a checkpoint of tlx before the flag: no lars_form
    assert before == {"lars_form": "lr-outside", "lr": 4.8}
    with pytest.raises(TrainerError, match="--lars-form differ from the checkpoint's run"):
        check_same_run(before, {"lars_form": "study-code", "lr": 4.8}, flags=["lars_form", "lr"], source="x",
                       fix="a new --out")
    check_same_run(before, {"lars_form": "lr-outside", "lr": 4.8}, flags=["lars_form", "lr"], source="x",
                   fix="a new --out")   # resumed with the form it ran with: fine
    assert saved_config({"config": {"lars_form": "study-code"}})["lars_form"] == "study-code"
