"""trainer.simclr --init / --init-epoch / --keep-every: strict loads of the two formats, the schedule
continued exactly where --init-epoch says, epoch checkpoints, config.json's record, bad input."""
import hashlib
import json
import math
import subprocess
import sys

import pytest
import torch

from tests.fixtures.datasets import make_ct_dataset
from trainer import simclr
from trainer.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint
from trainer.errors import TrainerError
from trainer.models import build_encoder
from trainer.models.projector import build_projector
from trainer.models.simclr_model import SimCLRModel
from trainer.pretrain_init import load_pretrain_init

# 37 train samples, global batch 8: 4 steps per epoch
ARGS = ["--device", "cpu", "--model", "resnet-tiny", "--image-size", "32", "--batch-size", "8", "--workers", "0",
        "--loader", "torch", "--log-every", "1", "--eval-every", "0"]


def _net(model="resnet-tiny", seed=0):
    torch.manual_seed(seed)
    enc = build_encoder(model)
    return SimCLRModel(enc, build_projector("paper", enc.feature_dim), 0.5)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("ds"), shard_sizes={"train": [3, 12, 5, 17]}, image_size=40)


@pytest.fixture(scope="module")
def first(ds, tmp_path_factory):
    """4 epochs, epoch checkpoints every 2."""
    out = tmp_path_factory.mktemp("first")
    simclr.main(["--data", str(ds), "--out", str(out), "--epochs", "4", "--keep-every", "2", *ARGS])
    return out


def test_a_tlx_checkpoint_loads_encoder_and_projector(tmp_path):
    src, dst = _net(seed=1), _net(seed=2)
    path = tmp_path / "a.pt"
    save_checkpoint(new_checkpoint("resnet-tiny", src.encoder.state_dict(), projector=src.projector.state_dict()), path)
    record = load_pretrain_init(dst, str(path), "resnet-tiny")
    assert _same(dst.encoder.state_dict(), src.encoder.state_dict())
    assert _same(dst.projector.state_dict(), src.projector.state_dict())
    assert record == {"init_checkpoint": str(path), "init_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "init_variant": "tlx-simclr", "init_loaded": ["encoder", "projector"]}


def test_a_torchvision_state_dict_loads_the_encoder_only(tmp_path):
    src, dst = _net(seed=1), _net(seed=2)
    fresh = {k: v.clone() for k, v in dst.projector.state_dict().items()}
    path = tmp_path / "tv.pth"
    torch.save({**src.encoder.state_dict(), "fc.weight": torch.zeros(1000, 8), "fc.bias": torch.zeros(1000)}, path)
    record = load_pretrain_init(dst, str(path), "resnet-tiny")
    assert _same(dst.encoder.state_dict(), src.encoder.state_dict())
    assert _same(dst.projector.state_dict(), fresh)                     # the projector stays as initialised
    assert record["init_variant"] == "torchvision-encoder" and record["init_loaded"] == ["encoder"]


def test_strict_loads_name_missing_unexpected_and_other_architectures(tmp_path):
    state = _net().encoder.state_dict()
    cut = {k: v for k, v in state.items() if k != "layer1.0.conv1.weight"}
    torch.save(cut, tmp_path / "missing.pth")
    with pytest.raises(TrainerError, match=r"strict load failed: 1 missing: layer1\.0\.conv1\.weight"):
        load_pretrain_init(_net(), str(tmp_path / "missing.pth"), "resnet-tiny")
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(TrainerError, match=r"strict load failed: 1 unexpected: extra\.weight"):
        load_pretrain_init(_net(), str(tmp_path / "extra.pth"), "resnet-tiny")
    r18 = _net("resnet18")
    save_checkpoint(new_checkpoint("resnet18", r18.encoder.state_dict(), projector=r18.projector.state_dict()),
                    tmp_path / "r18.pt")
    with pytest.raises(TrainerError, match=r"holds a resnet18 encoder; this run's --model is resnet-tiny"):
        load_pretrain_init(_net(), str(tmp_path / "r18.pt"), "resnet-tiny")
    torch.save(r18.encoder.state_dict(), tmp_path / "r18.pth")   # a state dict of another ResNet: shapes differ
    with pytest.raises(TrainerError, match=r"strict load failed: .*shape-mismatched"):
        load_pretrain_init(_net(), str(tmp_path / "r18.pth"), "resnet-tiny")


def test_keep_every_keeps_epoch_checkpoints(first):
    names = sorted(p.name for p in (first / "checkpoints").iterdir())
    assert names == ["epoch-2.pt", "epoch-4.pt", "last.pt"]
    e2 = load_checkpoint(first / "checkpoints" / "epoch-2.pt")
    assert (e2["step"], e2["epoch"]) == (8, 2)
    assert _same(load_checkpoint(first / "checkpoints" / "epoch-4.pt")["encoder"],
                 load_checkpoint(first / "checkpoints" / "last.pt")["encoder"])


def test_init_epoch_continues_the_schedule_exactly(first, ds, tmp_path):
    out = tmp_path / "seq"
    init = first / "checkpoints" / "epoch-2.pt"
    simclr.main(["--data", str(ds), "--out", str(out), "--epochs", "4", "--init", str(init), "--init-epoch", "2",
                 *ARGS])
    lr0 = 0.075 * math.sqrt(8)
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(9, 17))             # epochs 3 and 4 of 4, 4 steps each
    # the paper schedule, cosine per epoch: lr(e) = lr0 * (1 + cos(pi * e / epochs)) / 2 at 0-based epoch e
    assert [s["lr"] for s in steps] == pytest.approx([lr0 * (1 + math.cos(math.pi * ((s - 1) // 4) / 4)) / 2
                                                      for s in range(9, 17)], rel=1e-12)
    before = [json.loads(x) for x in (first / "steps.jsonl").read_text().splitlines()]
    assert [s["lr"] for s in steps] == [s["lr"] for s in before[8:]]   # the lrs of the uninterrupted run's tail
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [3, 4]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["init"] == first.name and cfg["init_epoch"] == 2 and cfg["init_checkpoint"] == str(init)
    assert cfg["init_sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()
    assert cfg["init_variant"] == "tlx-simclr"
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 16


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "4", "--init", "X", "--init-epoch", "4"], "--init-epoch 4 is at or past --epochs 4"),
    (["--epochs", "4", "--init-epoch", "1"], "--init-epoch 1 continues another run's schedule; give that run's"),
    (["--epochs", "4", "--init", "nope.pt"], "--init 'nope.pt': no such file"),
])
def test_bad_init_flags_one_line_exit_2(ds, tmp_path, extra, message):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "trainer.simclr", "--data", str(ds), "--out", str(out), *ARGS, *extra],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (out / "config.json").exists() and not (out / "checkpoints").exists()
