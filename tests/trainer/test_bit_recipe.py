"""BiT recipe pieces against their definitions: the BiT-HyperRule step by step, AGC's
formula, MixUp's label and loss arithmetic."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.agc import adaptive_grad_clip_, agc_parameters, unitwise_norm
from trainer.bit_hyperrule import RECIPES, bit_hyperrule
from trainer.errors import TrainerError
from trainer.mixup import mixed_targets, mixup_batch, mixup_loss
from trainer.models import build_encoder
from trainer.task_heads import TaskModel

# --- BiT-HyperRule ------------------------------------------------------------------------

def _published_get_lr(step, dataset_size, base_lr):
    """big_transfer's bit_hyperrule.get_lr, transcribed (None = past the end)."""
    if dataset_size < 20_000:
        supports = [100, 200, 300, 400, 500]
    elif dataset_size < 500_000:
        supports = [500, 3000, 6000, 9000, 10_000]
    else:
        supports = [500, 6000, 12_000, 18_000, 20_000]
    if step < supports[0]:
        return base_lr * step / supports[0]
    if step >= supports[-1]:
        return None
    for s in supports[1:]:
        if s < step:
            base_lr /= 10
    return base_lr


@pytest.mark.parametrize("n,total,warmup,decays,alpha", [
    (1, 500, 100, (200, 300, 400), 0.0), (19_999, 500, 100, (200, 300, 400), 0.0),
    (20_000, 10_000, 500, (3000, 6000, 9000), 0.1), (499_999, 10_000, 500, (3000, 6000, 9000), 0.1),
    (500_000, 20_000, 500, (6000, 12_000, 18_000), 0.1), (14_000_000, 20_000, 500, (6000, 12_000, 18_000), 0.1)])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_hyperrule_every_step_matches_the_definition(n, total, warmup, decays, alpha, recipe):
    rule = bit_hyperrule(n, recipe)
    base = RECIPES[recipe]["base_lr"]
    assert (rule.total_steps, rule.warmup_steps, rule.mixup_alpha) == (total, warmup, alpha)
    for step in range(total):
        # from the definition: linear warmup from 0, then /10 after each decay point
        want = base * step / warmup if step < warmup else base / 10 ** sum(step > d for d in decays)
        assert rule.lr(step) == pytest.approx(want, rel=1e-12, abs=0)
        assert rule.lr(step) == pytest.approx(_published_get_lr(step, n, base), rel=1e-12, abs=0)
    assert _published_get_lr(total, n, base) is None
    with pytest.raises(TrainerError, match=rf"step {total} is outside 0..{total - 1}"):
        rule.lr(total)


def test_hyperrule_landmarks_and_recipes():
    rule = bit_hyperrule(50_000)
    assert (rule.base_lr, rule.batch_size) == (0.003, 512)
    assert rule.lr(0) == 0.0 and rule.lr(250) == pytest.approx(0.0015)
    assert rule.lr(3000) == pytest.approx(0.003) and rule.lr(3001) == pytest.approx(0.0003)
    assert rule.lr(9001) == pytest.approx(3e-6)
    # decays at 30/60/90 % for the two larger sizes
    assert [d / rule.total_steps for d in rule.supports[1:4]] == [0.3, 0.6, 0.9]
    cj = bit_hyperrule(50_000, "cherti-jitsev")
    assert (cj.base_lr, cj.batch_size, cj.supports) == (0.001, 128, rule.supports)


def test_hyperrule_refuses_bad_input():
    with pytest.raises(TrainerError, match=r"recipe 'bitm' is not one of bit, cherti-jitsev"):
        bit_hyperrule(100, "bitm")
    for bad in (0, -5, 2.5, True):
        with pytest.raises(TrainerError, match=r"needs a training-set size >= 1"):
            bit_hyperrule(bad)


# --- AGC ------------------------------------------------------------------------------------

def _agc_by_hand(w: torch.Tensor, g: torch.Tensor, clipping: float, eps: float) -> torch.Tensor:
    """The formula, one unit at a time in float64."""
    w, g = w.double(), g.double()
    units = [(w, g)] if w.ndim <= 1 else [(w[i], g[i]) for i in range(w.shape[0])]
    out = []
    for wi, gi in units:
        max_norm = clipping * max(math.sqrt(float((wi ** 2).sum())), eps)
        gn = math.sqrt(float((gi ** 2).sum()))
        out.append(gi * (max_norm / max(gn, 1e-6)) if gn > max_norm else gi)
    return (out[0] if w.ndim <= 1 else torch.stack(out)).float()


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (5, 7), (9,)])
def test_agc_matches_formula_per_unit(shape):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=gen)
    if len(shape) > 1:
        w[1] = 0.0                                          # a zero unit: eps sets its bound
    g = torch.randn(shape, generator=gen) * torch.logspace(-4, 0, shape[0]).view(-1, *[1] * (len(shape) - 1))
    p = torch.nn.Parameter(w.clone())
    p.grad = g.clone()
    adaptive_grad_clip_([p], clipping=0.05, eps=1e-3)
    want = _agc_by_hand(w, g, 0.05, 1e-3)
    assert torch.allclose(p.grad, want, rtol=1e-5, atol=1e-9)
    if len(shape) > 1:
        clipped = [i for i in range(shape[0]) if not torch.equal(p.grad[i], g[i])]
        assert 0 < len(clipped) < shape[0]                  # some units clipped, the small ones not
        for i in clipped:                                   # clipped units sit exactly on their bound
            bound = 0.05 * max(float(unitwise_norm(w)[i].squeeze()), 1e-3)
            assert float(torch.linalg.vector_norm(p.grad[i])) == pytest.approx(bound, rel=1e-5)


def test_agc_leaves_small_gradients_and_the_classifier_alone():
    model = TaskModel(build_encoder("bit-tiny"), "classification", num_outputs=3)
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = {names[id(p)] for p in agc_parameters(model)}
    assert "head.weight" not in chosen and "head.bias" not in chosen
    assert len(chosen) == len(names) - 2
    p = torch.nn.Parameter(torch.ones(4, 4))
    p.grad = torch.full((4, 4), 1e-4)
    adaptive_grad_clip_([p], clipping=0.01)
    assert torch.equal(p.grad, torch.full((4, 4), 1e-4))
    with pytest.raises(ValueError, match="clipping must be > 0"):
        adaptive_grad_clip_([p], clipping=0.0)


# --- MixUp ----------------------------------------------------------------------------------

def test_mixup_inputs_labels_and_loss_arithmetic():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 4, 4, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    m = mixup_batch(x, y, alpha=0.1, rng=np.random.default_rng(3))
    lam, perm = m.lam, m.perm
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(8))   # a permutation: nothing lost
    assert torch.allclose(m.x, lam * x + (1 - lam) * x[perm])
    assert torch.equal(m.y_a, y) and torch.equal(m.y_b, y[perm])
    logits = torch.randn(8, 5, generator=gen)
    loss = mixup_loss(F.cross_entropy, logits, m)
    assert loss == pytest.approx(float(lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])))
    soft = mixed_targets(F.one_hot(y, 5).float(), m)
    assert torch.allclose(soft.sum(1), torch.ones(8))                      # still distributions
    assert loss == pytest.approx(float(F.cross_entropy(logits, soft)), rel=1e-6)   # CE is linear in the target
    again = mixup_batch(x, y, alpha=0.1, rng=np.random.default_rng(3))
    assert again.lam == lam and torch.equal(again.perm, perm)              # deterministic from the seed


def test_mixup_multilabel_bce_and_alpha_zero():
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(6, 2, generator=gen), (torch.rand(6, 4, generator=gen) > 0.5).float()
    m = mixup_batch(x, t, alpha=1.0, rng=np.random.default_rng(0))
    logits = torch.randn(6, 4, generator=gen)
    two = mixup_loss(F.binary_cross_entropy_with_logits, logits, m)
    assert float(two) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, mixed_targets(t, m))), rel=1e-6)
    none = mixup_batch(x, t, alpha=0.0, rng=np.random.default_rng(0))
    assert none.lam == 1.0 and torch.equal(none.x, x) and torch.equal(none.y_b, t)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        mixup_batch(x, t, alpha=-0.1, rng=np.random.default_rng(0))


def test_label_smoothing_is_torchs_cross_entropy():
    # documented rather than written: torch's CE with label_smoothing=e is CE on (1-e) onehot + e/C
    logits, y = torch.randn(4, 5, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 3, 1, 4])
    smooth = 0.9 * F.one_hot(y, 5).float() + 0.1 / 5
    assert float(F.cross_entropy(logits, y, label_smoothing=0.1)) == \
        pytest.approx(float(F.cross_entropy(logits, smooth)), rel=1e-6)
