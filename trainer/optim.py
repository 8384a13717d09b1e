"""LARS and the learning-rate schedules of the recipes.

    from trainer.optim import LARS, lars_param_groups, Schedule, set_lr
    opt = LARS(lars_param_groups(model, weight_decay=1e-6), lr=4.8, momentum=0.9)
    sched = Schedule("cosine-epoch", base_lr=4.8, epochs=100, steps_per_epoch=312)
    for step in range(start, total):
        set_lr(opt, sched(step))
        ...

LARS (You et al. 2017, as in SimCLR): per tensor, the update direction d = g + wd * w is
rescaled by the trust ratio eta * ||w|| / ||d||, then enters heavy-ball momentum. Biases
and normalisation parameters (every tensor with ndim <= 1) get neither weight decay nor
the trust ratio: they take plain momentum SGD steps. (The study's own LARS meant to
exclude them too, but the exclusion was dead code: it scaled every tensor. That is a
deliberate deviation, see docs/trainer.md.)

Where the learning rate goes (`form`, LARS_FORMS):
- `study-code`: inside the momentum buffer, as TF-SimCLR's LARSOptimizer and the study:
  v <- m v + lr * ratio * d;  w <- w - v. A change of lr acts on new steps only.
- `lr-outside`: the buffer accumulates unscaled steps and the current lr multiplies it
  (torch SGD's convention; tlx before issue 13): v <- m v + ratio * d;  w <- w - lr v.
  A change of lr rescales the whole remembered momentum at once.
The two are identical while lr is constant; they part at every lr change.

Schedules are pure functions of the global step, so a resumed run needs only the step:
- `cosine-epoch`: lr = base * (1 + cos(pi * epoch / epochs)) / 2, constant within an
  epoch, no warmup (the study's recipe);
- `warmup-cosine`: linear warmup over `warmup_epochs` then cosine to 0, per step
  (canonical SimCLR);
- `exp-epoch`: lr = base * decay ** epoch (the downstream recipes: x0.97 after every epoch);
- `step`: lr = base * decay ** (epoch // step_epochs) (torch's StepLR);
- `constant`.
(ReduceLROnPlateau depends on validation results, not on the step: trainer/selection.py.)

Fine-tuning's other optimizers (`build_optimizer`): torch's SGD (momentum, nesterov), Adam
(its weight decay is an L2 term in the gradient, as torch's and Keras' Adam) and AdamW
(decoupled decay), all with the same two parameter groups (no decay on biases and norms).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from trainer.errors import TrainerError
from trainer.tasks import OPTIMIZERS

SCHEDULES = ("cosine-epoch", "warmup-cosine", "exp-epoch", "step", "constant")
LARS_FORMS = ("study-code", "lr-outside")


def lars_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decay + trust ratio) and biases/norm parameters (excluded)."""
    decay, excluded = [], []
    for p in model.parameters():
        if p.requires_grad:
            (excluded if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
            {"params": excluded, "weight_decay": 0.0, "lars_exclude": True}]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum; groups flagged `lars_exclude` skip decay and trust ratio.

    `form` says where the learning rate enters (module docstring): `study-code` (the default, the
    study's and TF-SimCLR's) or `lr-outside`; both trainers pass their --lars-form."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 0.0, form: str = "study-code"):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if form not in LARS_FORMS:
            raise TrainerError(f"LARS form {form!r} is not one of {', '.join(LARS_FORMS)}")
        self.form = form
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    # ratio 1 where either norm is 0 (fresh zero-init tensors, zero gradients)
                    ratio = torch.where((w_norm > 0) & (d_norm > 0),
                                        group["trust_coefficient"] * w_norm / (d_norm + group["eps"]),
                                        torch.ones_like(w_norm))
                    d = d.mul(ratio)
                inside = self.form == "study-code"
                if inside:
                    d = d.mul(group["lr"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.detach().clone()   # = m * 0 + d: TF's zero-initialised slot
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-1.0 if inside else -group["lr"])
        return loss


def build_optimizer(name: str, groups: list[dict], lr: float, momentum: float = 0.9, nesterov: bool = False,
                    lars_form: str = "study-code") -> torch.optim.Optimizer:
    """One of OPTIMIZERS on lars_param_groups' groups (each group carries its own weight decay).

    >>> build_optimizer("sgd", lars_param_groups(model, 1e-4), lr=0.1, momentum=0.9, nesterov=True)
    """
    if name not in OPTIMIZERS:
        raise TrainerError(f"--optimizer {name!r} is not one of: {', '.join(OPTIMIZERS)}")
    if nesterov and (name != "sgd" or momentum <= 0):
        raise TrainerError(f"--nesterov needs --optimizer sgd with --momentum > 0; got {name}, momentum {momentum}")
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, form=lars_form)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(groups, lr=lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class Schedule:
    """lr as a function of the global step (0-based)."""
    kind: str
    base_lr: float
    epochs: int
    steps_per_epoch: int
    warmup_epochs: float = 0.0
    decay: float = 0.97
    step_epochs: int = 30

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise TrainerError(f"schedule {self.kind!r} is not one of {', '.join(SCHEDULES)}")
        if self.epochs < 1 or self.steps_per_epoch < 1:
            raise TrainerError(f"schedule needs epochs >= 1 and steps_per_epoch >= 1, "
                               f"got {self.epochs}, {self.steps_per_epoch}")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def __call__(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        if self.kind == "constant":
            return self.base_lr
        if self.kind == "cosine-epoch":
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs))
        if self.kind == "exp-epoch":
            return self.base_lr * self.decay ** epoch
        if self.kind == "step":
            return self.base_lr * self.decay ** (epoch // self.step_epochs)
        warmup = round(self.warmup_epochs * self.steps_per_epoch)
        if step < warmup:
            return self.base_lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
