"""The per-(seed, epoch) plan: disjoint, equal steps, full coverage up to the remainder, world-size free."""
import numpy as np
import pytest

from trainer.data.sharding import epoch_order, epoch_plan, eval_slice, per_rank_batch, steps_per_epoch
from trainer.errors import TrainerError


@pytest.mark.parametrize("n,batch,world", [(37, 8, 2), (100, 12, 4), (64, 64, 1), (1000, 96, 3)])
def test_disjoint_equal_and_covering(n, batch, world):
    plans = [epoch_plan(n, batch, seed=3, epoch=5, rank=r, world_size=world) for r in range(world)]
    steps = steps_per_epoch(n, batch)
    assert all(len(p) == steps * batch // world for p in plans)
    seen = np.concatenate(plans)
    assert len(np.unique(seen)) == len(seen) == steps * batch   # disjoint, nothing duplicated
    dropped = np.setdiff1d(np.arange(n), seen)
    assert len(dropped) == n % batch                          # only the remainder is dropped
    assert np.array_equal(np.sort(dropped), np.sort(epoch_order(n, 3, 5)[steps * batch:]))


def test_deterministic_per_seed_and_epoch_and_reshuffled_each_epoch():
    a = epoch_plan(50, 10, seed=1, epoch=2, rank=1, world_size=2)
    assert np.array_equal(a, epoch_plan(50, 10, seed=1, epoch=2, rank=1, world_size=2))
    assert not np.array_equal(a, epoch_plan(50, 10, seed=1, epoch=3, rank=1, world_size=2))
    assert not np.array_equal(a, epoch_plan(50, 10, seed=2, epoch=2, rank=1, world_size=2))


def test_global_batches_do_not_depend_on_world_size():
    one = epoch_plan(90, 12, seed=0, epoch=1, rank=0, world_size=1).reshape(-1, 12)
    four = np.stack([epoch_plan(90, 12, seed=0, epoch=1, rank=r, world_size=4).reshape(-1, 3) for r in range(4)], 1)
    assert np.array_equal(one, four.reshape(-1, 12))


def test_subset_ids_and_eval_slices():
    ids = np.array([4, 8, 15, 16, 23, 42, 7])
    plan = np.concatenate([epoch_plan(ids, 2, seed=0, epoch=0, rank=r, world_size=2) for r in range(2)])
    assert set(plan) <= set(ids) and len(set(plan)) == 6
    parts = [eval_slice(10, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [4, 3, 3] and np.array_equal(np.concatenate(parts), np.arange(10))


def test_errors_name_the_bad_value():
    with pytest.raises(TrainerError, match=r"--batch-size 10 \(global\) must be a multiple of the world size 4"):
        per_rank_batch(10, 4)
    with pytest.raises(TrainerError, match="the split has 5 samples, fewer than one global batch of 8"):
        steps_per_epoch(5, 8)
