"""Both loaders: each rank disjoint, equal steps on uneven shards, full coverage, deterministic, resumable."""
import numpy as np
import pytest
import torch

from tests.fixtures.datasets import make_ct_dataset
from tests.fixtures.optional import need
from trainer.data.augment import AugmentConfig
from trainer.data.loader import make_loader
from trainer.errors import TrainerError

SHARDS = [3, 12, 5, 17]      # 37 training samples in uneven shards
GLOBAL_BATCH, WORLD = 8, 2   # 4 steps per epoch, 5 samples dropped
AUG = AugmentConfig(image_size=24, blur_p=0.5)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("ds"), splits={"train": sum(SHARDS), "val": 6},
                           shard_sizes={"train": SHARDS}, image_size=32, constant=1, codec="zstd-shuffle")


def _loader(kind, ds, rank, world=WORLD, seed=0, workers=1):
    return make_loader(kind, ds, "train", global_batch=GLOBAL_BATCH, rank=rank, world_size=world, seed=seed,
                       aug=AUG, workers=workers, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def epochs(ds):
    """{kind: {rank: [epoch 0 batches, epoch 1 batches, epoch 1 from step 2]}} for both loaders (2 ranks)."""
    need("nvidia.dali")
    out = {}
    for kind in ("torch", "dali"):
        out[kind] = {}
        for rank in range(WORLD):
            loader = _loader(kind, ds, rank)
            assert loader.steps_per_epoch == 4
            runs = [list(loader.epoch(0)), list(loader.epoch(1))]
            if rank == 0:
                runs.append(list(loader.epoch(1, start_step=2)))
            loader.close()
            out[kind][rank] = runs
    return out


@pytest.mark.parametrize("kind", ["torch", "dali"])
def test_ranks_disjoint_equal_steps_and_covering(epochs, kind):
    for e in (0, 1):
        per_rank = [torch.cat([b.ids for b in epochs[kind][r][e]]).numpy() for r in range(WORLD)]
        assert [len(epochs[kind][r][e]) for r in range(WORLD)] == [4, 4]           # equal steps, uneven shards
        assert all(b.view1.shape == (4, 1, 24, 24) for r in range(WORLD) for b in epochs[kind][r][e])
        seen = np.concatenate(per_rank)
        assert len(set(per_rank[0]) & set(per_rank[1])) == 0                        # disjoint
        assert len(np.unique(seen)) == 32 and seen.min() >= 0 and seen.max() < 37   # all but the remainder 37 % 8
    e0 = np.concatenate([torch.cat([b.ids for b in epochs[kind][r][0]]).numpy() for r in range(WORLD)])
    e1 = np.concatenate([torch.cat([b.ids for b in epochs[kind][r][1]]).numpy() for r in range(WORLD)])
    assert not np.array_equal(e0, e1)                                                # reshuffled per epoch


@pytest.mark.parametrize("kind", ["torch", "dali"])
def test_views_are_valid_and_resume_is_the_tail_of_the_epoch(epochs, kind):
    batches = epochs[kind][0]
    for b in batches[0]:
        assert b.view1.dtype == torch.float32 and 0 <= b.view1.min() and b.view1.max() <= 1
        assert not torch.equal(b.view1, b.view2)
    for full, resumed in zip(batches[1][2:], batches[2]):
        assert torch.equal(full.ids, resumed.ids) and torch.equal(full.view1, resumed.view1)
        assert torch.equal(full.view2, resumed.view2)


def test_torch_and_dali_read_the_same_samples_with_the_same_augmentations(epochs):
    for r in range(WORLD):
        for e in (0, 1):
            for t, d in zip(epochs["torch"][r][e], epochs["dali"][r][e]):
                assert torch.equal(t.ids, d.ids)
                # same crop boxes, flips, jitter and blur; the crop is cut before resizing in both (a resize
                # over a region of interest would blend in pixels outside the crop at its border); only the
                # antialiasing filters differ slightly at the border of downscaled crops
                for tv, dv in ((t.view1, d.view1), (t.view2, d.view2)):
                    assert (tv - dv).abs().mean() < 1e-4 and (tv - dv).abs().max() < 2e-2


def test_deterministic_from_seed_and_epoch_whatever_the_workers(ds):
    a = list(_loader("torch", ds, 1, workers=0).epoch(3))
    b = list(_loader("torch", ds, 1, workers=2).epoch(3))
    c = list(_loader("torch", ds, 1, seed=1, workers=0).epoch(3))
    assert all(torch.equal(x.view1, y.view1) and torch.equal(x.ids, y.ids) for x, y in zip(a, b))
    assert not all(torch.equal(x.ids, y.ids) for x, y in zip(a, c))


def test_loader_errors(ds):
    with pytest.raises(TrainerError, match="--loader 'ffcv' is not one of dali, torch"):
        make_loader("ffcv", ds, "train")
    with pytest.raises(TrainerError, match=r"the split has 6 samples, fewer than one global batch of 8"):
        make_loader("torch", ds, "val", global_batch=8, rank=0, world_size=1, seed=0, aug=AUG, workers=0,
                    device=torch.device("cpu"))
    with pytest.raises(TrainerError, match=r"start step 5 outside the epoch's 4 steps"):
        next(_loader("torch", ds, 0).epoch(0, start_step=5))
