"""The SimCLR loop: run format, exact resume after a crash, the golden loss curve, torchrun restarts.

Regenerate the golden curve (after a deliberate change of the numerics):
    PYTHONPATH=. python tests/trainer/test_simclr_loop.py
"""
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from datakit.errors import DatakitError
from tests.fixtures.datasets import make_ct_dataset
from tests.fixtures.lock_holder import held
from tests.fixtures.optional import need
from tlxcore.lock import FolderBusy
from trainer import simclr
from trainer.checkpoint import load_checkpoint
from trainer.errors import TrainerError
from trainer.models import build_encoder
from trainer.optim import LARS

GOLDEN = Path(__file__).with_name("golden_simclr_losses.json")
# 37 train samples, global batch 8: 4 steps per epoch; 3 epochs = 12 steps.
ARGS = ["--device", "cpu", "--model", "resnet-tiny", "--image-size", "32", "--batch-size", "8", "--epochs", "3",
        "--workers", "0", "--loader", "torch", "--log-every", "1", "--checkpoint-every", "3", "--eval-every", "0"]


def _dataset(root):
    return make_ct_dataset(root, shard_sizes={"train": [3, 12, 5, 17]}, image_size=40)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("ds"))


@pytest.fixture(scope="module")
def straight(ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    simclr.main(["--data", str(ds), "--out", str(out), *ARGS])
    return out


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_run_directory_follows_the_run_format(straight):
    cfg = json.loads((straight / "config.json").read_text())
    assert {k: cfg[k] for k in ("task", "init", "setting", "fraction", "seed", "world_size", "data_train_samples",
                                "model", "init_checkpoint")} == \
        {"task": "simclr", "init": "scratch", "setting": "pretrain", "fraction": 1.0, "seed": 0, "world_size": 1,
         "data_train_samples": 37, "model": "resnet-tiny", "init_checkpoint": None}
    # the paper recipe, resolved: sqrt rule lr = 0.075 * sqrt(8), temperature 0.5, no blur
    assert math.isclose(cfg["lr"], 0.075 * math.sqrt(8)) and cfg["temperature"] == 0.5 and cfg["blur_p"] == 0.0
    assert cfg["tool_version"] and cfg["projector"] == "paper" and cfg["schedule"] == "cosine-epoch"
    # one flat shape (trainer.config.run_config): the contract's keys first, then every flag, resolved
    assert list(cfg)[:7] == ["task", "init", "setting", "fraction", "seed", "world_size", "tool_version"]
    assert {f.name for f in fields(simclr.SimCLRConfig)} <= set(cfg) and "args" not in cfg
    assert (cfg["checkpoint_every"], cfg["resume"], cfg["workers"], cfg["epochs"]) == (3, "auto", 0, 3)
    metrics = _lines(straight / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert all({"train_loss", "lr", "images_per_s", "wall_s"} <= set(m) for m in metrics)
    assert [round(m["lr"], 6) for m in metrics] == [round(0.075 * math.sqrt(8) * (1 + math.cos(math.pi * e / 3)) / 2, 6)
                                                    for e in range(3)]  # cosine per epoch, no warmup
    assert [s["step"] for s in _lines(straight / "steps.jsonl")] == list(range(1, 13))
    ckpt = load_checkpoint(straight / "checkpoints" / "last.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["model_name"]) == (12, 3, "resnet-tiny")
    missing, unexpected = build_encoder("resnet-tiny", num_classes=7).load_state_dict(ckpt["encoder"], strict=False)
    assert missing == ["fc.weight", "fc.bias"] and not unexpected
    assert [p.name for p in (straight / "checkpoints").iterdir()] == ["last.pt"]


def _crash_at_step(n, monkeypatch, argv):
    """simclr.main(argv) dying inside optimizer step n (RuntimeError, as a node failure would stop it)."""
    real_step, calls = LARS.step, []

    def step_or_crash(self, *a, **k):
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError("simulated node failure")
        return real_step(self, *a, **k)
    monkeypatch.setattr(LARS, "step", step_or_crash)
    with pytest.raises(RuntimeError, match="simulated node failure"):
        simclr.main(argv)
    monkeypatch.setattr(LARS, "step", real_step)


def test_crash_and_resume_is_bit_for_bit(ds, straight, tmp_path, monkeypatch):
    out = tmp_path / "crashed"
    _crash_at_step(8, monkeypatch, ["--data", str(ds), "--out", str(out), *ARGS])  # after the checkpoint of step 6
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 6
    assert simclr.main(["--data", str(ds), "--out", str(out), *ARGS])["step"] == 12   # --resume auto
    a, b = load_checkpoint(straight / "checkpoints" / "last.pt"), load_checkpoint(out / "checkpoints" / "last.pt")
    for part in ("encoder", "projector"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    momenta_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momenta_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momenta_a, momenta_b)) and len(momenta_a) == len(momenta_b) > 0
    assert [s["loss"] for s in _lines(out / "steps.jsonl")] == [s["loss"] for s in _lines(straight / "steps.jsonl")]
    assert [m["train_loss"] for m in _lines(out / "metrics.jsonl")] == \
        [m["train_loss"] for m in _lines(straight / "metrics.jsonl")]
    # resuming a finished run does nothing
    assert simclr.main(["--data", str(ds), "--out", str(out), *ARGS])["step"] == 12


def test_rerunning_a_stopped_run_keeps_its_partial_epoch_line(ds, tmp_path):
    out, args = tmp_path / "stopped", ["--data", str(ds), "--out", str(tmp_path / "stopped"), *ARGS]
    simclr.main([*args, "--max-steps", "2"])
    (row,) = _lines(out / "metrics.jsonl")
    assert row["partial"] and row["step"] == 2
    assert simclr.main([*args, "--max-steps", "2"])["step"] == 2        # nothing to do: the line stays
    assert _lines(out / "metrics.jsonl") == [row]
    simclr.main([*args, "--max-steps", "4"])                             # going on: the epoch's full line replaces it
    assert [(m["epoch"], m["step"], m.get("partial")) for m in _lines(out / "metrics.jsonl")] == [(1, 4, None)]


def test_a_restart_without_a_checkpoint_starts_the_logs_afresh(ds, straight, tmp_path, monkeypatch):
    """A first attempt killed before its first checkpoint left its steps.jsonl lines, and the restart (a new
    run: nothing to resume) appended its own: steps 1-2 twice (35 lines for 30 steps in the issue)."""
    out = tmp_path / "run"
    _crash_at_step(3, monkeypatch, ["--data", str(ds), "--out", str(out), *ARGS])   # before the first checkpoint
    assert [s["step"] for s in _lines(out / "steps.jsonl")] == [1, 2] and not (out / "checkpoints").exists()
    simclr.main(["--data", str(ds), "--out", str(out), *ARGS])
    assert [s["step"] for s in _lines(out / "steps.jsonl")] == list(range(1, 13))    # each step once
    assert [s["loss"] for s in _lines(out / "steps.jsonl")] == [s["loss"] for s in _lines(straight / "steps.jsonl")]
    assert [m["epoch"] for m in _lines(out / "metrics.jsonl")] == [1, 2, 3]


def test_a_second_trainer_into_a_run_folder_being_written_is_refused(ds, tmp_path):
    """Two trainers into one --out: one crashed, the other wrote interleaved logs. The second is now refused
    in one line naming the first's pid, before it reads or writes anything there."""
    out = tmp_path / "run"
    with held(out, "trainer.simclr") as holder:
        with pytest.raises(FolderBusy, match=rf"^{out} is being written by pid {holder.pid} on .* \(trainer.simclr\); "
                                             r"wait for it to finish"):
            simclr.main(["--data", str(ds), "--out", str(out), *ARGS])
        assert sorted(p.name for p in out.iterdir()) == [".tlx.lock"]     # nothing read or written
    assert simclr.main(["--data", str(ds), "--out", str(out), *ARGS, "--max-steps", "1"])["step"] == 1


def test_golden_loss_curve(straight):
    golden = json.loads(GOLDEN.read_text())
    assert golden["args"] == ARGS
    losses = [s["loss"] for s in _lines(straight / "steps.jsonl")]
    assert len(losses) == len(golden["losses"])
    # float32 kernels differ a little between CPUs; a real change of the numerics moves the curve far more
    for got, want in zip(losses, golden["losses"]):
        assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-4), (losses, golden["losses"])


def test_resume_refuses_a_different_run_and_never_refuses_to_overwrite(ds, straight):
    with pytest.raises(TrainerError, match=r"^cannot resume from .*last.pt: --temperature differ from the "
                                           r"checkpoint's run; use the same values, or a new --out$"):
        simclr.main(["--data", str(ds), "--out", str(straight), *ARGS, "--temperature", "0.2"])
    with pytest.raises(TrainerError, match=r"^.*last.pt holds a started run and --resume is never: continue it "
                                           r"with --resume auto, or pick a new --out$"):
        simclr.main(["--data", str(ds), "--out", str(straight), *ARGS, "--resume", "never"])
    with pytest.raises(DatakitError, match=r"is not a tlx dataset: no manifest.json"):
        simclr.main(["--data", str(straight), "--out", str(straight / "x"), *ARGS])
    with pytest.raises(TrainerError,
                       match=r"^out of range: --batch-size -8 \(at least 1\), --log-every 0 \(at least 1\)$"):
        simclr.main(["--data", str(ds), "--out", str(straight / "x"), *ARGS, "--log-every", "0", "--batch-size", "-8"])
    with pytest.raises(TrainerError, match=r"^--window -1000 400 has no effect with --normalize minmax; add "
                                           r"--normalize hu, or leave --window out$"):
        simclr.main(["--data", str(ds), "--out", str(straight / "y"), *ARGS, "--window", "-1000", "400"])
    assert not (straight / "y").exists()


def test_resume_refuses_another_training_split_but_takes_the_same_one_moved(ds, straight, tmp_path):
    """--data may move on resume; a dataset with other training data may not (the run would go on with it,
    and config.json, which analysis reads for the pretraining size, would name it)."""
    other = make_ct_dataset(tmp_path / "other", splits={"train": 36, "val": 14, "test": 14},
                            shard_sizes={"train": [3, 12, 5, 16]}, image_size=40)
    with pytest.raises(TrainerError, match=r"^cannot resume: --data '.*other' holds another training split \(36 "
                                           r"samples\) than the checkpoint's run \(37 samples, other shards\)"):
        simclr.main(["--data", str(other), "--out", str(straight), *ARGS])
    same_size = make_ct_dataset(tmp_path / "same_size", shard_sizes={"train": [3, 12, 5, 17]}, image_size=40, seed=1)
    with pytest.raises(TrainerError, match=r"\(37 samples\) than the checkpoint's run \(37 samples, other shards\)"):
        simclr.main(["--data", str(same_size), "--out", str(straight), *ARGS])
    shutil.copytree(ds, tmp_path / "moved")
    state = simclr.main(["--data", str(tmp_path / "moved"), "--out", str(straight), *ARGS])  # finished: no step
    assert state["step"] == 12


def test_resume_path_continues_from_that_checkpoint_into_another_folder(ds, straight, tmp_path):
    """--resume PATH: a run in a new folder goes on from another run's checkpoint (here after step 6 of 12)
    and ends where the uninterrupted run ends; the changed-options check compares against that checkpoint."""
    simclr.main(["--data", str(ds), "--out", str(tmp_path / "first"), *ARGS, "--max-steps", "6"])
    last = tmp_path / "first" / "checkpoints" / "last.pt"
    with pytest.raises(TrainerError, match=rf"^cannot resume from {last}: --lr differ"):
        simclr.main(["--data", str(ds), "--out", str(tmp_path / "second"), *ARGS, "--resume", str(last), "--lr", "0.1"])
    state = simclr.main(["--data", str(ds), "--out", str(tmp_path / "second"), *ARGS, "--resume", str(last)])
    assert state["step"] == 12
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (straight, tmp_path / "second"))
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    assert [s["step"] for s in _lines(tmp_path / "second" / "steps.jsonl")] == list(range(7, 13))


@pytest.mark.parametrize("old, new", [(["--ckpt-every", "3"], "--ckpt-every was renamed: use --checkpoint-every"),
                                      (["--ckpt-every=3"], "--ckpt-every was renamed: use --checkpoint-every"),
                                      (["--resume", "none"], "--resume none was renamed: use --resume never"),
                                      (["--resume=none"], "--resume none was renamed: use --resume never")])
def test_old_spellings_name_the_new_one(tmp_path, old, new):
    with pytest.raises(TrainerError, match=rf"^{new} \(same meaning\)$"):
        simclr.main(["--data", str(tmp_path), "--out", str(tmp_path / "r"), *old])


def test_old_spelling_on_the_command_line_is_one_line_and_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer.simclr", "--data", str(tmp_path),
                           "--out", str(tmp_path / "r"), "--ckpt-every", "100"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "Error: --ckpt-every was renamed: use --checkpoint-every (same meaning)\n"


@pytest.mark.parametrize("quiet", ["1", "0"])
def test_tlx_quiet_silences_notes_and_progress(ds, tmp_path, monkeypatch, capsys, quiet):
    """Progress and notes go through tlxcore.progress (as in finetune): nothing under TLX_QUIET; otherwise
    (stdout not a terminal, as in a job log) progress lines with done/total and the epoch note."""
    monkeypatch.setenv("TLX_QUIET", quiet)
    simclr.main(["--data", str(ds), "--out", str(tmp_path / "run"), *ARGS, "--max-steps", "2"])
    out = capsys.readouterr().out
    if quiet == "1":
        assert out == ""
    else:
        assert "train  2/2 steps  100%" in out and "epoch 1 (partial): loss " in out


def test_command_line_error_is_one_line_and_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer.simclr", "--data", str(tmp_path),
                           "--out", str(tmp_path / "r"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"Error: {str(tmp_path)!r} is not a tlx dataset: "
                                   f"no manifest.json (make one with `tlx shard`)")


def test_simclr_recipe_with_dali_gradcache_hu_window_and_knn(ds, tmp_path):
    need("nvidia.dali")
    out = tmp_path / "run"
    args = [a if a != "torch" else "dali" for a in ARGS]
    state = simclr.main(["--data", str(ds), "--out", str(out), *args, "--recipe", "simclr", "--max-steps", "2",
                         "--grad-cache-chunk", "3", "--normalize", "hu", "--window", "-1000", "1000",
                         "--eval-every", "5", "--knn-bank", "37", "--knn-queries", "14", "--workers", "1"])
    assert state["step"] == 2
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["temperature"], cfg["blur_p"], cfg["warmup_epochs"], cfg["window"]) == \
        (0.1, 0.5, 10.0, [-1000.0, 1000.0])
    assert math.isclose(cfg["lr"], 0.3 * 8 / 256)
    (row,) = _lines(out / "metrics.jsonl")
    assert row["partial"] and row["epoch"] == 1 and math.isfinite(row["train_loss"])
    assert 0.0 <= row["val_knn_accuracy"] <= 1.0   # the probe runs at the end of a stopped run


def test_torchrun_two_ranks_restart_after_a_hard_crash(ds, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "TLX_TEST_CRASH_MARKER": str(tmp_path / "crashed"), "TLX_TEST_CRASH_AT": "5",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.getcwd()])}
    # One restart is all it may take: without trainer.dist's per-attempt store prefix, restarted ranks
    # read the dead attempt's addresses and fail ("connectFullMesh failed ... Connection refused").
    # --workers 1: rank 0's data-loader worker inherits its run-folder lock and gets torchrun's SIGTERM with it;
    # the restarted rank 0 must still get the lock (tlxcore.lock: forked children close their copy)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1",
           str(Path(__file__).with_name("crash_once.py")), "--data", str(ds), "--out", str(out), *ARGS,
           "--max-steps", "8", "--workers", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "crashed").exists()                       # it did crash once
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 8 and len(ckpt["rng"]) == 2           # both ranks' generators saved
    assert [s["step"] for s in _lines(out / "steps.jsonl")] == list(range(1, 9))   # no step lost or repeated
    assert [m["epoch"] for m in _lines(out / "metrics.jsonl")] == [1, 2]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        root = _dataset(Path(tmp) / "ds")
        simclr.main(["--data", str(root), "--out", str(Path(tmp) / "run"), *ARGS])
        losses = [s["loss"] for s in _lines(Path(tmp) / "run" / "steps.jsonl")]
    GOLDEN.write_text(json.dumps({"about": "first losses of a tiny deterministic CPU run; regenerate with "
                                           "PYTHONPATH=. python tests/trainer/test_simclr_loop.py",
                                  "args": ARGS, "losses": losses}, indent=1) + "\n")
    print(losses)
