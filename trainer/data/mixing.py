"""`trainer.simclr --data A --data B --mix wA,wB`: every global batch drawn from several datasets in fixed proportions.

    from trainer.data.mixing import parse_mix, mix_counts, mixed_steps, mixed_epoch_plan
    counts = mix_counts(parse_mix("1,1", 2), global_batch=8)     # [4, 4]: samples of each dataset per batch
    steps = mixed_steps([37, 120], counts)                         # 9: min over datasets of N_i // counts_i
    src, ids = mixed_epoch_plan([37, 120], counts, seed=0, epoch=3, rank=r, world_size=w)

Stratified per dataset, as the study's 50/50 mixture: global batch j holds exactly
counts_i samples of dataset i (the weights' shares of the batch, rounded by largest
remainder; every dataset gets at least one), whatever the epoch and the number of ranks.
Dataset i's samples come in the order of its own permutation from (seed, epoch) (dataset 0's
is exactly trainer/data/sharding.epoch_order, so a one-dataset mix reads as a plain run),
consumed counts_i per batch; the samples of a global batch are then shuffled over its
positions (from (seed, epoch)) so that every rank gets a mix, and rank r takes the r-th slice.
So, as for one dataset: ranks are disjoint, every rank has the same number of steps, the
content of a global batch does not depend on the number of ranks, and resuming at step k is
the tail of the epoch's plan.

The length of an epoch: `min_i(N_i // counts_i)` steps, i.e. until the dataset that runs out
first (relative to its share) has been seen once; the others see a different random part of
theirs each epoch. With weights proportional to the sizes, that is one pass over everything
(up to rounding).
"""
from __future__ import annotations

import numpy as np

from trainer.data.sharding import epoch_order, per_rank_batch
from trainer.errors import TrainerError


def parse_mix(text: str | None, datasets: int) -> list[float]:
    """--mix "wA,wB,..." as floats, one per --data; TrainerError for a wrong count, a negative or a zero sum."""
    if text is None:
        if datasets > 1:
            raise TrainerError(f"{datasets} --data datasets need --mix w1,...,w{datasets} (their shares of a batch)")
        return [1.0]
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise TrainerError(f"--mix {text!r} is not a comma-separated list of numbers") from None
    if len(weights) != datasets:
        raise TrainerError(f"--mix {text!r} has {len(weights)} weights for {datasets} --data datasets; "
                           f"give one weight per dataset")
    if any(not np.isfinite(w) or w < 0 for w in weights):
        raise TrainerError(f"--mix {text!r}: weights must be finite and >= 0")
    if sum(weights) <= 0:
        raise TrainerError(f"--mix {text!r}: the weights sum to 0; give at least one positive weight")
    return weights


def mix_counts(weights: list[float], global_batch: int) -> list[int]:
    """Samples of each dataset per global batch: largest-remainder rounding of the weights' shares."""
    share = np.asarray(weights, float) / sum(weights) * global_batch
    counts = np.floor(share).astype(int)
    rest = global_batch - counts.sum()
    counts[np.argsort(-(share - counts), kind="stable")[:rest]] += 1
    if (counts == 0).any():
        i = int(np.flatnonzero(counts == 0)[0])
        raise TrainerError(f"--mix gives dataset {i + 1} 0 of the {global_batch} samples of a batch; raise its "
                           f"weight or --batch-size, or drop that --data")
    return counts.tolist()


def mixed_steps(sizes: list[int], counts: list[int]) -> int:
    steps = min(n // c for n, c in zip(sizes, counts))
    if steps == 0:
        i = int(np.argmin([n // c for n, c in zip(sizes, counts)]))
        raise TrainerError(f"--data dataset {i + 1} has {sizes[i]} training samples, fewer than its {counts[i]} "
                           f"per batch; lower --batch-size or its --mix weight")
    return steps


def _source_order(n: int, seed: int, epoch: int, source: int) -> np.ndarray:
    if source == 0:
        return epoch_order(n, seed, epoch)
    return np.random.default_rng([seed, epoch, source]).permutation(n).astype(np.int64)


def mixed_epoch_plan(sizes: list[int], counts: list[int], *, seed: int, epoch: int, rank: int,
                     world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's (dataset index, sample id) pairs for the epoch, batch after batch, as two int64 arrays."""
    global_batch = sum(counts)
    b = per_rank_batch(global_batch, world_size)
    steps = mixed_steps(sizes, counts)
    src = np.concatenate([np.full((steps, c), i, np.int64) for i, c in enumerate(counts)], axis=1)
    ids = np.concatenate([_source_order(n, seed, epoch, i)[: steps * c].reshape(steps, c)
                          for i, (n, c) in enumerate(zip(sizes, counts))], axis=1)
    # shuffle positions inside each global batch, so every rank's part is a mix (BN statistics per rank)
    where = np.argsort(np.random.default_rng([seed, epoch, 2 ** 32]).random((steps, global_batch)), axis=1)
    src, ids = np.take_along_axis(src, where, 1), np.take_along_axis(ids, where, 1)
    part = slice(rank * b, (rank + 1) * b)
    return src[:, part].reshape(-1), ids[:, part].reshape(-1)
