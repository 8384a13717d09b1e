"""Which samples each rank reads at each step: a plan that is a pure function of (seed, epoch).

    from trainer.data.sharding import steps_per_epoch, epoch_plan, eval_slice
    steps = steps_per_epoch(num_samples, global_batch)            # the same on every rank
    ids = epoch_plan(num_samples, global_batch, seed=0, epoch=3, rank=r, world_size=w)
    # ids: int64, shape (steps * global_batch // w,); rank r's batch j is ids[j*b:(j+1)*b], b = global_batch // w

The epoch's order is one permutation of all samples drawn from (seed, epoch). Global
batch j is the j-th run of `global_batch` samples of that order, and rank r takes the
r-th slice of it. So:
- ranks are disjoint, and every rank has exactly `steps` batches (DDP never waits on a
  rank that ran out: shard sizes do not matter, the plan is per sample);
- every sample is seen once per epoch except the `num_samples % global_batch` dropped
  at the end of the order (a different remainder each epoch);
- the content of global batch j does not depend on the number of ranks, so a run
  resumed on another number of GPUs sees the same data;
- resuming inside an epoch is `ids[start_step * b:]`.

`num_samples` may also be an array of sample ids (e.g. a labelled subset): the plan
then permutes those ids.
"""
from __future__ import annotations

import numpy as np

from trainer.errors import TrainerError


def _ids(samples: int | np.ndarray) -> np.ndarray:
    return np.arange(samples, dtype=np.int64) if np.isscalar(samples) else np.asarray(samples, dtype=np.int64)


def per_rank_batch(global_batch: int, world_size: int) -> int:
    if global_batch < world_size or global_batch % world_size:
        raise TrainerError(f"--batch-size {global_batch} (global) must be a multiple of the world size {world_size}")
    return global_batch // world_size


def steps_per_epoch(samples: int | np.ndarray, global_batch: int) -> int:
    n = len(_ids(samples))
    steps = n // global_batch
    if steps == 0:
        raise TrainerError(f"the split has {n} samples, fewer than one global batch of {global_batch}; "
                           f"lower --batch-size")
    return steps


def epoch_order(samples: int | np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """All sample ids in this epoch's order."""
    ids = _ids(samples)
    return ids[np.random.default_rng([seed, epoch]).permutation(len(ids))]


def epoch_plan(samples: int | np.ndarray, global_batch: int, *, seed: int, epoch: int,
               rank: int, world_size: int) -> np.ndarray:
    """This rank's sample ids for the epoch, batch after batch (see the module docstring)."""
    b = per_rank_batch(global_batch, world_size)
    steps = steps_per_epoch(samples, global_batch)
    order = epoch_order(samples, seed, epoch)[: steps * global_batch]
    return order.reshape(steps, world_size, b)[:, rank, :].reshape(-1)


def eval_slice(samples: int | np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Evaluation: every sample exactly once over all ranks, in order, nothing dropped
    (contiguous blocks whose sizes differ by at most one)."""
    return np.array_split(_ids(samples), world_size)[rank]
