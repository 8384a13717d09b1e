"""BiT-HyperRule (Kolesnikov et al. 2020): the fine-tuning schedule as a pure function of
the training-set size, as google-research/big_transfer's bit_hyperrule.py defines it.

    from trainer.bit_hyperrule import bit_hyperrule
    rule = bit_hyperrule(train_size=12_000)            # recipe "bit": lr 0.003, batch 512
    rule.total_steps, rule.mixup_alpha                 # 500, 0.0
    for step in range(rule.total_steps):
        set_lr(optimizer, rule.lr(step))

Support points by dataset size n (steps; warmup end, three decays, end):
- n < 20k:        [100, 200, 300, 400, 500]
- 20k <= n < 500k: [500, 3000, 6000, 9000, 10000]
- n >= 500k:      [500, 6000, 12000, 18000, 20000]
lr(step) = base * step / warmup while step < warmup (so the first update has lr 0, as
published); then base / 10**k, k = the number of decay points strictly below `step`
(a decay at s takes effect from step s + 1); steps >= the end do not exist. For the two
larger sizes the decays sit at 30/60/90 % of training; for n < 20k at 40/60/80 %.
MixUp alpha 0.1 when n >= 20k, else no MixUp. SGD momentum 0.9, no weight decay, a zero
head. The published rule also picks a resolution (160 -> 128 crop below 96x96 px, else
512 -> 480); that part is left to the data options (tlx slices have their own sizes).

Recipes (`RECIPES`), identical in steps, warmup, decays and MixUp:
- `bit` (default): base lr 0.003 at batch 512, the published values (bit_hyperrule.py,
  bit_pytorch/train.py defaults); verified against the repository's code;
- `cherti-jitsev`: SGD lr 0.001 at batch 128, what issue 19 reports Cherti & Jitsev
  used; not yet checked against their paper's text. BiT's own rule scaled linearly to
  batch 128 would be 0.00075, so this is not a batch rescaling of `bit`.
The default is `bit` because it is the rule "as published" and checked; a study
reproduction passes `cherti-jitsev`.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainer.errors import TrainerError

RECIPES = {"bit": {"base_lr": 0.003, "batch_size": 512},
           "cherti-jitsev": {"base_lr": 0.001, "batch_size": 128}}
DEFAULT_RECIPE = "bit"


def support_points(train_size: int) -> tuple[int, int, int, int, int]:
    """(warmup end, decay 1, decay 2, decay 3, total steps) for a training set of `train_size`."""
    if train_size < 20_000:
        return (100, 200, 300, 400, 500)
    if train_size < 500_000:
        return (500, 3000, 6000, 9000, 10_000)
    return (500, 6000, 12_000, 18_000, 20_000)


@dataclass(frozen=True)
class HyperRule:
    train_size: int
    recipe: str
    base_lr: float
    batch_size: int
    supports: tuple[int, int, int, int, int]
    mixup_alpha: float

    @property
    def total_steps(self) -> int:
        return self.supports[-1]

    @property
    def warmup_steps(self) -> int:
        return self.supports[0]

    def lr(self, step: int) -> float:
        """The learning rate of update `step` (0-based, 0 <= step < total_steps)."""
        if not 0 <= step < self.total_steps:
            raise TrainerError(f"bit-hyperrule: step {step} is outside 0..{self.total_steps - 1} "
                               f"(train size {self.train_size})")
        if step < self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        return self.base_lr / 10 ** sum(1 for s in self.supports[1:-1] if s < step)


def bit_hyperrule(train_size: int, recipe: str = DEFAULT_RECIPE) -> HyperRule:
    """The schedule of a fine-tuning run on `train_size` labelled examples."""
    if recipe not in RECIPES:
        raise TrainerError(f"bit-hyperrule recipe {recipe!r} is not one of {', '.join(RECIPES)}")
    if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1:
        raise TrainerError(f"bit-hyperrule needs a training-set size >= 1, got {train_size!r}")
    return HyperRule(train_size, recipe, RECIPES[recipe]["base_lr"], RECIPES[recipe]["batch_size"],
                     support_points(train_size), 0.1 if train_size >= 20_000 else 0.0)
