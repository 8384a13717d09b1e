"""The supervised-pretraining recipe options of trainer.finetune (issue 19, docs/bit.md): AGC,
MixUp, RandAugment, label smoothing, a zero-initialised head and the BiT-HyperRule schedule.
They are checked and resolved here so that the training loop only calls three functions.

    check_recipe_flags(cfg, task.kind)                  # one-line TrainerErrors, before anything is built
    hp.update(hyperrule_hp(cfg))                        # --schedule bit-hyperrule: SGD, no decay, its lr/batch
    recipe = resolve_recipe(cfg, task.kind, train_size=len(subset))
    loss = training_loss(model, x, y, recipe, loss_fn, mix_rng(cfg.seed, step, rank))
    loss.backward(); clip_gradients(model, recipe); optimizer.step()

MixUp draws its lambda and permutation from numpy's generator keyed by (seed, step, rank),
so a resumed run draws what the uninterrupted one drew, and each rank mixes its own share of
the global batch (as bit_pytorch mixes each device's batch). RandAugment lives in the data
loader (trainer/data/labelled.py), keyed by (seed, epoch, sample) like the other augmentations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from trainer.agc import adaptive_grad_clip_, agc_parameters
from trainer.bit_hyperrule import DEFAULT_RECIPE, RECIPES, HyperRule, bit_hyperrule
from trainer.errors import TrainerError
from trainer.mixup import mixup_batch, mixup_loss
from trainer.randaugment import MAX_MAGNITUDE

HYPERRULE = "bit-hyperrule"
# flags the rule itself sets (--lr and --batch-size may still override its recipe's values: small data
# sets need a smaller batch than the published 512)
HYPERRULE_SETS = {"epochs": "the step count", "decay": "the /10 staircase", "warmup_epochs": "the warmup"}


@dataclass(frozen=True)
class Recipe:
    """The resolved options of one run (config.json records `resolved()`)."""
    agc: float | None = None                     # AGC clipping factor; None: no clipping
    mixup: float = 0.0                           # MixUp alpha; 0: no MixUp
    label_smoothing: float = 0.0
    randaugment: tuple[int, int] | None = None   # (ops per image N, magnitude M)
    zero_init_head: bool = False
    hyperrule: HyperRule | None = None

    def resolved(self) -> dict:
        """config.json's flags as the run used them (--mixup and --zero-init-head may come from the rule)."""
        return {"mixup": self.mixup, "zero_init_head": self.zero_init_head,
                "hyperrule_recipe": self.hyperrule.recipe if self.hyperrule else None}

    def derived(self) -> dict:
        """The rule's schedule, for config.json (None without --schedule bit-hyperrule)."""
        rule = self.hyperrule
        return {"hyperrule": None if rule is None else {
            "train_size": rule.train_size, "total_steps": rule.total_steps, "warmup_steps": rule.warmup_steps,
            "decay_steps": list(rule.supports[1:-1]), "base_lr": rule.base_lr, "batch_size": rule.batch_size,
            "mixup_alpha": rule.mixup_alpha}}


def parse_randaugment(text: str) -> tuple[int, int]:
    """'2,9' -> (2, 9): N ops per image >= 1, magnitude M in 0..30."""
    parts = text.split(",")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        n = m = None
    if n is None or n < 1 or not 0 <= m <= MAX_MAGNITUDE:
        raise TrainerError(f"--randaugment {text!r} must be N,M: N ops per image >= 1 and magnitude M in "
                           f"0..{MAX_MAGNITUDE} (e.g. 2,9)")
    return n, m


def check_recipe_flags(cfg, kind: str) -> None:
    """Bad values and combinations, one line each (exit 2)."""
    if cfg.agc is not None and not (math.isfinite(cfg.agc) and cfg.agc > 0):
        raise TrainerError(f"--agc {cfg.agc} must be a clipping factor > 0 (NFNets: 0.01 at batch 4096)")
    if cfg.mixup is not None and not (math.isfinite(cfg.mixup) and cfg.mixup >= 0):
        raise TrainerError(f"--mixup {cfg.mixup} must be an alpha >= 0 (0: no MixUp; BiT: 0.1)")
    if not 0 <= cfg.label_smoothing < 1:
        raise TrainerError(f"--label-smoothing {cfg.label_smoothing} must be in [0, 1)")
    if cfg.randaugment is not None:
        parse_randaugment(cfg.randaugment)
    single = {"--label-smoothing": cfg.label_smoothing > 0}
    per_image = {"--mixup": bool(cfg.mixup), "--randaugment": cfg.randaugment is not None,
                 "--zero-init-head": cfg.zero_init_head}
    if kind != "classification" and any(single.values()):
        raise TrainerError(f"--label-smoothing is for single-label classification; this task is {kind}")
    if kind == "segmentation" and any(per_image.values()):
        flags = ", ".join(f for f, on in per_image.items() if on)
        raise TrainerError(f"{flags}: for classification and multilabel tasks (image-level labels and a linear "
                           f"head), not segmentation")
    check_hyperrule_flags(cfg)


def check_hyperrule_flags(cfg) -> None:
    """--hyperrule-recipe only with the rule; the rule refuses the flags it sets itself."""
    if cfg.schedule != HYPERRULE:
        if cfg.hyperrule_recipe is not None:
            raise TrainerError(f"--hyperrule-recipe is for --schedule {HYPERRULE}, not {cfg.schedule}")
        return
    defaults = {"epochs": None, "decay": None, "warmup_epochs": 0.0}
    given = [f"--{k.replace('_', '-')} ({what})" for k, what in HYPERRULE_SETS.items()
             if getattr(cfg, k) != defaults[k]]
    if cfg.optimizer not in (None, "sgd"):
        given.append(f"--optimizer {cfg.optimizer} (SGD with momentum)")
    if cfg.weight_decay not in (None, 0.0):
        given.append(f"--weight-decay {cfg.weight_decay} (none)")
    if cfg.setting == "lp-ft":
        given.append("--setting lp-ft (its phases count epochs; the rule counts steps)")
    if given:
        raise TrainerError(f"--schedule {HYPERRULE} sets these itself; drop {'; '.join(given)}")


def hyperrule_hp(cfg) -> dict:
    """The rule's hyperparameters before the data is read: SGD, no weight decay, its recipe's lr and batch
    unless --lr / --batch-size say otherwise (the step count comes with the training-set size)."""
    recipe = RECIPES[cfg.hyperrule_recipe or DEFAULT_RECIPE]
    return {"optimizer": "sgd", "weight_decay": 0.0, "lr": cfg.lr or recipe["base_lr"],
            "batch_size": cfg.batch_size or recipe["batch_size"]}


def resolve_recipe(cfg, kind: str, train_size: int) -> Recipe:
    """The run's options; the rule (if chosen) sized by the training subset, with its MixUp alpha unless
    --mixup is given (segmentation: no MixUp) and its zero head (classification and multilabel)."""
    rule = bit_hyperrule(train_size, cfg.hyperrule_recipe or DEFAULT_RECIPE) if cfg.schedule == HYPERRULE else None
    image_level = kind != "segmentation"
    mixup = cfg.mixup if cfg.mixup is not None else (rule.mixup_alpha if rule and image_level else 0.0)
    return Recipe(agc=cfg.agc, mixup=mixup, label_smoothing=cfg.label_smoothing,
                  randaugment=parse_randaugment(cfg.randaugment) if cfg.randaugment else None,
                  zero_init_head=cfg.zero_init_head or (rule is not None and image_level), hyperrule=rule)


def hyperrule_epochs(rule: HyperRule, steps_per_epoch: int) -> int:
    """Epochs that hold the rule's steps (the last one cut at the rule's end)."""
    return -(-rule.total_steps // steps_per_epoch)


def mix_rng(seed: int, step: int, rank: int) -> np.random.Generator:
    """MixUp's generator for one step on one rank (resume-safe)."""
    return np.random.default_rng([seed, step, rank])


def training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  rng: np.random.Generator) -> torch.Tensor:
    """The step's loss: loss_fn(model(x), y), or with MixUp lam * L(y) + (1 - lam) * L(y[perm]) on the mixed
    images (trainer/mixup.py)."""
    if not recipe.mixup:
        return loss_fn(model(x), y)
    mixed = mixup_batch(x, y, recipe.mixup, rng)
    return mixup_loss(loss_fn, model(mixed.x), mixed)


def clip_gradients(model: nn.Module, recipe: Recipe) -> None:
    """AGC after backward (DDP has averaged the gradients, so every rank clips the same), the classifier
    (`head.*`, `fc.*`) left out as in NFNets."""
    if recipe.agc is not None:
        adaptive_grad_clip_(agc_parameters(model), clipping=recipe.agc)


@torch.no_grad()
def zero_head_(head: nn.Linear) -> None:
    """BiT's zero-initialised head: every logit starts at 0 whatever the features."""
    head.weight.zero_()
    head.bias.zero_()
