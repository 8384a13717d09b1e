"""Label policies of `tlx convert cxr`: what a positive, negative, uncertain or blank label of the
source becomes in the stored float32 target vector (NaN = missing: the masked BCE ignores it).

    policy = LabelPolicy(uncertain="lsr", blank="zeros")
    policy.targets((1, 0, -1, None), split="train", key="img-1", seed=0)   # (1.0, 0.0, 0.71..., 0.0)

- positive -> 1, negative -> 0.
- uncertain (-1), in the train split: `ones` (U-Ones) -> 1, `zeros` (U-Zeros) -> 0, `ignore`
  -> missing, `lsr` -> label smoothing: a value drawn uniformly from `lsr_range` (default
  0.55-0.85, U-Ones+LSR of Pham et al. 2021; give 0,0.3 for their U-Zeros+LSR), once per
  image and label, from the seed and the image's key (so a rerun draws the same values).
- uncertain in val and test: missing by default (`eval_uncertain="ignore"`: an AUC is scored
  only on labels the source states), or the train policy (`policy`; not with `lsr`, whose soft
  values cannot be scored).
- blank (not mentioned): `zeros` -> 0 (the usual reading of CheXpert's blanks) or `ignore` -> missing.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from datakit.convert.cxr_presets import NEG, POS, UNC
from datakit.errors import DatakitError

UNCERTAIN = ("ones", "zeros", "lsr", "ignore")
BLANK = ("zeros", "ignore")
EVAL_UNCERTAIN = ("ignore", "policy")
LSR_RANGE = (0.55, 0.85)


@dataclass(frozen=True)
class LabelPolicy:
    uncertain: str = "ignore"
    blank: str = "zeros"
    eval_uncertain: str = "ignore"
    lsr_range: tuple[float, float] = LSR_RANGE

    def check(self) -> "LabelPolicy":
        for option, value, allowed in (("--uncertain", self.uncertain, UNCERTAIN), ("--blank", self.blank, BLANK),
                                       ("--eval-uncertain", self.eval_uncertain, EVAL_UNCERTAIN)):
            if value not in allowed:
                raise DatakitError(f"{option} {value!r} is not one of: {', '.join(allowed)}")
        lo, hi = self.lsr_range
        if not 0 <= lo < hi <= 1:
            raise DatakitError(f"--lsr-range {lo},{hi} must satisfy 0 <= low < high <= 1")
        if self.uncertain == "lsr" and self.eval_uncertain == "policy":
            raise DatakitError("--eval-uncertain policy with --uncertain lsr would put soft targets into val and "
                               "test, where an AUC needs 0 or 1; use --eval-uncertain ignore")
        return self

    def config(self) -> dict:
        return {"uncertain": self.uncertain, "blank": self.blank, "eval_uncertain": self.eval_uncertain,
                "lsr_range": list(self.lsr_range) if self.uncertain == "lsr" else None}

    def targets(self, states: tuple, split: str, key: str, seed: int) -> tuple[float, ...]:
        """The stored target of each state (float32 values, NaN for missing)."""
        uncertain = self.uncertain if split == "train" or self.eval_uncertain == "policy" else "ignore"
        draws = _lsr_draws(len(states), self.lsr_range, key, seed) if uncertain == "lsr" else None
        out = []
        for j, state in enumerate(states):
            if state == POS:
                out.append(1.0)
            elif state == NEG:
                out.append(0.0)
            elif state == UNC:
                out.append({"ones": 1.0, "zeros": 0.0, "ignore": math.nan}.get(uncertain)
                           if draws is None else draws[j])
            else:
                out.append(0.0 if self.blank == "zeros" else math.nan)
        return tuple(out)


def _lsr_draws(n: int, bounds: tuple[float, float], key: str, seed: int) -> list[float]:
    """n uniform draws in [low, high) for one image, as float32 values (what the member stores)."""
    image = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "little")
    draws = np.random.default_rng([seed, image]).uniform(bounds[0], bounds[1], n).astype(np.float32)
    return [float(v) for v in draws]
