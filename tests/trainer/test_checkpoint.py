"""Atomic checkpoints in the run format; RNG round trip; device/dist setup errors."""
import random

import numpy as np
import pytest
import torch

from trainer.checkpoint import (
    check_same_run,
    checkpoint_due,
    find_resume_point,
    load_checkpoint,
    new_checkpoint,
    restore_rng_states,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trainer.dist import init_dist
from trainer.errors import TrainerError
from trainer.models import build_encoder


def test_round_trip_drops_fc_and_keeps_entries(tmp_path):
    enc = build_encoder("resnet-tiny", num_classes=3)
    ckpt = new_checkpoint("resnet-tiny", enc.state_dict(), step=7, epoch=1, config={"seed": 0})
    save_checkpoint(ckpt, tmp_path / "checkpoints" / "last.pt")
    back = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert back["format"] == "tlx-checkpoint" and back["version"] == 1 and back["step"] == 7
    assert not any(k.startswith("fc.") for k in back["encoder"])
    fresh = build_encoder("resnet-tiny", num_classes=3)
    missing, unexpected = fresh.load_state_dict(back["encoder"], strict=False)
    assert missing == ["fc.weight", "fc.bias"] and unexpected == []
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in back["encoder"].items())
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(new_checkpoint("m", {}, step=1), path)

    def boom(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(new_checkpoint("m", {}, step=2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


def test_load_refuses_other_files(tmp_path):
    with pytest.raises(TrainerError, match=r"checkpoint '.*nope.pt' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(TrainerError, match=r"is not a tlx checkpoint \(no format='tlx-checkpoint' key\)"):
        load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "plain.pt").read_bytes()[:100])   # a copy cut short
    with pytest.raises(TrainerError, match=r"checkpoint '.*cut.pt' cannot be read \(RuntimeError: PytorchStreamReader "
                                           r"failed reading zip archive: .*\); it is damaged or not a torch file$"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"format": "tlx-checkpoint", "version": 9}, tmp_path / "future.pt")
    with pytest.raises(TrainerError, match="has checkpoint version 9; this tlx reads version 1"):
        load_checkpoint(tmp_path / "future.pt")


def test_rng_state_round_trip():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])
    assert restore_rng_states([state], rank=0) and not restore_rng_states([state], rank=1)


def test_cuda_states_of_more_gpus_than_this_machine_has_restore_what_it_has(monkeypatch):
    # a run saved on an 8-GPU node resumed on a 2-GPU node: torch.cuda.set_rng_state_all would index
    # generators 2-7, which do not exist there (an IndexError at resume)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(states))
    set_rng_state({**rng_state(), "cuda": [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]})
    assert [int(s[0]) for s in restored] == [0, 1]


def test_init_dist_single_process_and_bad_device(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    env = init_dist("cpu")
    assert (env.rank, env.world_size, env.backend, env.device.type, env.is_main) == (0, 1, None, "cpu", True)
    with pytest.raises(TrainerError, match="--device 'tpu' is not one of auto, cuda, cpu"):
        init_dist("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainerError, match="no CUDA GPU is visible"):
            init_dist("cuda")


def test_checkpoint_due_only_at_multiples_and_never_for_zero():
    assert [s for s in range(1, 11) if checkpoint_due(s, 4)] == [4, 8]
    assert not any(checkpoint_due(s, 0) for s in range(1, 11))


def test_find_resume_point_auto_never_and_path(tmp_path):
    run = tmp_path / "run"
    assert find_resume_point("auto", run, fix="x") == (None, None)     # nothing to continue
    assert find_resume_point("never", run, fix="x") == (None, None)
    save_checkpoint(new_checkpoint("m", {}, step=3), run / "checkpoints" / "last.pt")
    ckpt, source = find_resume_point("auto", run, fix="x")
    assert ckpt["step"] == 3 and source == run / "checkpoints" / "last.pt"
    with pytest.raises(TrainerError, match=r"last.pt holds a started run and --resume is never: continue it with "
                                           r"--resume auto, or pick a new --out$"):
        find_resume_point("never", run, fix="pick a new --out")
    save_checkpoint(new_checkpoint("m", {}, step=9), tmp_path / "other.pt")
    ckpt, source = find_resume_point(str(tmp_path / "other.pt"), run, fix="x")   # a path wins over last.pt
    assert ckpt["step"] == 9 and source == tmp_path / "other.pt"
    with pytest.raises(TrainerError, match=r"checkpoint '.*missing.pt' does not exist"):
        find_resume_point(str(tmp_path / "missing.pt"), run, fix="x")


def test_check_same_run_names_what_differs_and_lets_volatile_keys_change():
    saved = {"task": "t", "lr": 0.1, "workers": 8, "world_size": 8, "classes": ["a", "b"], "data": "d1"}
    now = {**saved, "workers": 2, "world_size": 2, "data": "d2", "new_flag": 1}   # new_flag: not in the old config
    check_same_run(saved, now, flags=["lr", "workers", "data"], source="x.pt", fix="a new --out",
                   may_change={"data"})
    with pytest.raises(TrainerError, match=r"^cannot resume from x.pt: --lr, classes, --data differ from the "
                                           r"checkpoint's run; use the same values, or a new --out$"):
        check_same_run(saved, {**now, "lr": 0.2, "classes": ["a"]}, flags=["lr", "workers", "data"], source="x.pt",
                       fix="a new --out")
