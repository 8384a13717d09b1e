"""--data A --data B --mix: exact per-batch and per-epoch proportions, ranks disjoint (also on 2 gloo ranks),
deterministic from (seed, epoch), a crashed mixed run resumed bit for bit, per-source fractions in
metrics.jsonl, one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.fixtures.datasets import make_ct_dataset, make_natural_dataset
from tests.trainer.dist_helpers import run_ranks
from tests.trainer.test_simclr_loop import _crash_at_step
from trainer import simclr
from trainer.checkpoint import load_checkpoint
from trainer.data.augment import AugmentConfig
from trainer.data.mixed_loader import MixedTwoViewLoader
from trainer.data.mixing import mix_counts, mixed_epoch_plan, mixed_steps, parse_mix
from trainer.data.sharding import epoch_order
from trainer.errors import TrainerError

SIZES, COUNTS = [37, 100], [3, 5]     # 8 per global batch; 37 // 3 = 12 < 100 // 5 = 20: 12 steps
ARGS = ["--device", "cpu", "--model", "resnet-tiny", "--image-size", "16", "--batch-size", "8", "--epochs", "2",
        "--workers", "0", "--loader", "torch", "--log-every", "1", "--checkpoint-every", "3", "--eval-every", "0"]


def test_counts_steps_and_weights():
    assert mix_counts([1, 1], 8) == [4, 4] and mix_counts([3, 5], 8) == [3, 5] and mix_counts([1, 2], 8) == [3, 5]
    assert mix_counts([0.5, 0.25, 0.25], 10) == [5, 3, 2]             # largest remainder, ties to the first
    assert sum(mix_counts([0.3, 0.3, 0.4], 64)) == 64
    assert mixed_steps(SIZES, COUNTS) == 12
    assert parse_mix("1,3", 2) == [1.0, 3.0] and parse_mix(None, 1) == [1.0]


def test_plan_is_stratified_disjoint_over_ranks_and_rank_count_free():
    steps = 12
    whole = mixed_epoch_plan(SIZES, COUNTS, seed=0, epoch=1, rank=0, world_size=1)
    parts = [mixed_epoch_plan(SIZES, COUNTS, seed=0, epoch=1, rank=r, world_size=2) for r in range(2)]
    src, ids = (a.reshape(steps, 8) for a in whole)
    for j in range(steps):                                            # every global batch exactly 3 + 5
        assert np.bincount(src[j], minlength=2).tolist() == COUNTS
        # the two ranks' halves of batch j are batch j of the one-rank plan, split
        halves = [set(zip(p[0].reshape(steps, 4)[j], p[1].reshape(steps, 4)[j])) for p in parts]
        assert halves[0].isdisjoint(halves[1]) and halves[0] | halves[1] == set(zip(src[j], ids[j]))
    for s, (n, c) in enumerate(zip(SIZES, COUNTS)):
        seen = ids[src == s]
        assert len(seen) == steps * c == len(np.unique(seen)) and seen.max() < n   # no sample twice in an epoch
    # dataset 0 in the order of a plain run's permutation
    assert set(ids[src == 0]) == set(epoch_order(37, 0, 1)[:36])
    again = mixed_epoch_plan(SIZES, COUNTS, seed=0, epoch=1, rank=0, world_size=1)
    other = mixed_epoch_plan(SIZES, COUNTS, seed=0, epoch=2, rank=0, world_size=1)
    assert all(np.array_equal(a, b) for a, b in zip(whole, again)) and not np.array_equal(whole[1], other[1])


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    ct = make_ct_dataset(root / "ct", splits={"train": 37, "val": 6, "test": 6}, image_size=24)
    return ct, make_natural_dataset(root / "nat", per_class=12, size=24)


def _loader(two, rank=0, world=1, workers=0):
    return MixedTwoViewLoader(list(two), [3, 5], "train", global_batch=8, rank=rank, world_size=world, seed=0,
                              aug=AugmentConfig(image_size=16), workers=workers, device=torch.device("cpu"))


def test_loader_mixes_rgb_and_gray_ct_in_one_batch(two):
    loader = _loader(two)
    assert loader.steps_per_epoch == min(37 // 3, 100 // 5) == 12 and loader.channels == 3
    batches = list(loader.epoch(0))
    assert len(batches) == 12
    for b in batches:
        assert b.view1.shape == b.view2.shape == (8, 3, 16, 16)
        assert np.bincount(b.sources.numpy(), minlength=2).tolist() == [3, 5]
        ct = b.view1[b.sources == 0]
        assert torch.equal(ct[:, 0], ct[:, 1]) and torch.equal(ct[:, 1], ct[:, 2])   # CT replicated gray
    assert loader.source_counts(0, 12) == [36, 60]
    tail = list(loader.epoch(0, start_step=9))
    assert all(torch.equal(a.view1, b.view1) and torch.equal(a.ids, b.ids) for a, b in zip(batches[9:], tail))
    two_workers = list(_loader(two, workers=2).epoch(0))
    assert all(torch.equal(a.view2, b.view2) for a, b in zip(batches, two_workers))


def _rank_counts(two, out):
    import torch.distributed as dist
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    loader = _loader(two, rank=rank, world=2)
    counts, pairs = torch.zeros(2, dtype=torch.int64), []
    for b in loader.epoch(1):
        counts += torch.bincount(b.sources, minlength=2)
        pairs += list(zip(b.sources.tolist(), b.ids.tolist()))
    dist.all_reduce(counts)
    (out / f"rank-{rank}.json").write_text(json.dumps({"counts": counts.tolist(), "pairs": pairs,
                                                       "steps": loader.steps_per_epoch}))
    dist.destroy_process_group()


def test_two_gloo_ranks_draw_exact_proportions_disjointly(two, tmp_path):
    run_ranks(_rank_counts, two, tmp_path, world=2)
    r0, r1 = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2))
    assert r0["counts"] == r1["counts"] == [12 * 3, 12 * 5]          # exact over the epoch, summed over ranks
    assert len(r0["pairs"]) == len(r1["pairs"]) == 12 * 4
    p0, p1 = {tuple(p) for p in r0["pairs"]}, {tuple(p) for p in r1["pairs"]}
    assert p0.isdisjoint(p1) and len(p0 | p1) == 96


def test_mixed_run_records_fractions_and_resumes_bit_for_bit(two, tmp_path, monkeypatch):
    ct, nat = two
    argv = ["--data", str(ct), "--data", str(nat), "--mix", "3,5", *ARGS]
    simclr.main([*argv, "--out", str(tmp_path / "straight")])
    _crash_at_step(17, monkeypatch, [*argv, "--out", str(tmp_path / "crashed")])   # after step 15's checkpoint
    assert load_checkpoint(tmp_path / "crashed" / "checkpoints" / "last.pt")["step"] == 15
    assert simclr.main([*argv, "--out", str(tmp_path / "crashed")])["step"] == 24
    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("straight", "crashed"))
    for part in ("encoder", "projector"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    lines = [(tmp_path / r / "metrics.jsonl").read_text() for r in ("straight", "crashed")]
    rows = [json.loads(x) for x in lines[0].splitlines()]
    assert [json.loads(x)["train_loss"] for x in lines[1].splitlines()] == [r["train_loss"] for r in rows]
    assert [r["source_samples"] for r in rows] == [[36, 60], [36, 60]]
    assert [r["source_fractions"] for r in rows] == [[0.375, 0.625]] * 2
    cfg = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert cfg["data"] == [str(ct), str(nat)] and cfg["mix"] == "3,5" and cfg["data_train_samples"] == 37 + 100
    assert [(d["kind"], d["rgb"], d["weight"], d["per_batch"]) for d in cfg["datasets"]] == \
        [("ct-slices", False, 3.0, 3), ("image-classification", True, 5.0, 5)]


@pytest.mark.parametrize("extra, message", [
    (["--mix", "1"], "--mix '1' has 1 weights for 2 --data datasets; give one weight per dataset"),
    (["--mix", "1,-1"], "--mix '1,-1': weights must be finite and >= 0"),
    (["--mix", "0,0"], "--mix '0,0': the weights sum to 0"),
    ([], "2 --data datasets need --mix w1,...,w2"),
    (["--mix", "1,0"], "--mix gives dataset 2 0 of the 8 samples of a batch"),
    (["--mix", "1,1", "--loader", "dali"], "--loader dali reads one --data; a mixed run"),
])
def test_bad_mix_one_line_exit_2_nothing_written(two, tmp_path, extra, message):
    ct, nat = two
    out = tmp_path / "run"
    args = [a for a in ARGS if a not in ("--loader", "torch")]
    r = subprocess.run([sys.executable, "-m", "trainer.simclr", "--data", str(ct), "--data", str(nat), "--out",
                        str(out), *args, *(extra if "--loader" in extra else [*extra, "--loader", "torch"])],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (out / "config.json").exists() and not (out / "checkpoints").exists()


def test_a_dataset_without_train_split_is_refused(two, tmp_path):
    evals = make_ct_dataset(tmp_path / "evals", splits={"val": 6, "test": 6}, image_size=24)
    with pytest.raises(TrainerError, match=r"has no train split \(or an empty one\)"):
        simclr.main(["--data", str(two[0]), "--data", str(evals), "--mix", "1,1", "--out", str(tmp_path / "r"), *ARGS])
    with pytest.raises(TrainerError, match=r"has no train split \(or an empty one\)"):
        simclr.main(["--data", str(evals), "--out", str(tmp_path / "r2"), *ARGS])
