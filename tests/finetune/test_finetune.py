"""trainer.finetune on tiny CT shards: learning, run-format outputs, resume, linear evaluation, inits."""
import json
import math
from dataclasses import fields

import numpy as np
import polars as pl
import pytest
import torch

import trainer.finetune as ft
from tests.fixtures.datasets import make_ct_dataset
from tests.fixtures.lock_holder import held
from tlxcore.lock import FolderBusy
from trainer.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint
from trainer.errors import RunInterrupted, TrainerError
from trainer.models import build_encoder
from trainer.task_heads import TaskModel, load_init, read_init, sha256_file

TINY = ["--model", "resnet-tiny", "--device", "cpu", "--workers", "0", "--optimizer", "adamw"]


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("ct") / "ds", splits={"train": 48, "val": 15, "test": 15},
                           num_classes=3)


@pytest.fixture(scope="module")
def radnet_run(ct, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = ft.main(["--task", "radnet", "--data", str(ct), "--out", str(out), "--epochs", "8", "--batch-size", "8",
                      "--lr", "3e-3", "--seed", "1", *TINY])
    return out / "radnet" / "scratch" / "finetune" / "frac-1.0" / "seed-1", result


def test_separable_classes_are_learned(radnet_run):
    run, result = radnet_run
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == list(range(1, 9))
    assert lines[-1]["train_loss"] < lines[0]["train_loss"] / 3
    assert result["metrics"]["accuracy"] >= 0.8           # 3 classes: chance is 1/3
    assert max(l["val_accuracy"] for l in lines) > lines[0]["val_accuracy"]


def test_outputs_follow_the_run_format(radnet_run):
    run, result = radnet_run
    cfg = json.loads((run / "config.json").read_text())
    assert {k: cfg[k] for k in ("task", "init", "setting", "fraction", "seed", "world_size")} == \
        {"task": "radnet", "init": "scratch", "setting": "finetune", "fraction": 1.0, "seed": 1, "world_size": 1}
    assert cfg["init_checkpoint"] is None and cfg["init_sha256"] is None and cfg["data_train_samples"] == 48
    assert (cfg["optimizer"], cfg["lr"], cfg["decay"], cfg["batch_size"]) == ("adamw", 3e-3, 0.97, 8)
    assert (cfg["normalize"], cfg["window"]) == ("minmax", [-1024.0, 3072.0])
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[1])
    assert line["lr"] == pytest.approx(3e-3 * 0.97)       # multiplied by the decay after every epoch
    assert {"train_loss", "val_accuracy", "images_per_s", "wall_s"} <= set(line)
    assert line["step"] == 12 and "steps" not in line      # 48 samples, batch 8: 6 steps per epoch
    assert json.loads((run / "result.json").read_text()) == result
    assert set(result) >= {"metrics", "best_epoch", "epochs"} and result["epochs"] == 8
    pred = pl.read_parquet(run / "predictions.parquet")
    assert pred.columns == ["sample", "correct", "target", "pred", "confidence"] and len(pred) == 15
    assert pred["correct"].mean() == pytest.approx(result["metrics"]["accuracy"])
    layers = np.load(run / "first_layers.npz")
    assert sorted(layers.files) == sorted([f"{w}/{n}" for w in ("init", "final") for n in ft.FIRST_LAYERS]
                                          + ["layer_names"])
    assert list(layers["layer_names"]) == list(ft.FIRST_LAYERS)     # a ResNet's own names are the file's keys
    assert not np.array_equal(layers["init/conv1.weight"], layers["final/conv1.weight"])
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == result["best_epoch"] and "head" in best and "fc.weight" not in best["encoder"]
    assert np.array_equal(best["encoder"]["conv1.weight"].numpy(), layers["final/conv1.weight"])
    assert len(pl.read_parquet(run / "subset.parquet")) == 48


def test_config_is_flat_with_every_flag_at_the_top_level(radnet_run):
    """One shape for both trainers (trainer.config.run_config): the run contract's keys, every flag with the
    value the run used (the task's defaults filled in), derived keys; nothing nested under `args`."""
    run, _ = radnet_run
    cfg = json.loads((run / "config.json").read_text())
    assert list(cfg)[:7] == ["task", "init", "setting", "fraction", "seed", "world_size", "tool_version"]
    assert {f.name for f in fields(ft.FinetuneConfig)} <= set(cfg) and "args" not in cfg
    assert (cfg["init"], cfg["init_name"], cfg["init_checkpoint"]) == ("scratch", "scratch", None)
    assert (cfg["epochs"], cfg["model"], cfg["image_size"], cfg["workers"]) == (8, "resnet-tiny", 32, 0)
    radnet = ft.get_task("radnet")  # flags left unset hold the task's values
    assert cfg["augment"] == radnet.augment
    # --optimizer adamw on radnet, whose study configs give a weight decay for LARS only: tlx's AdamW value
    assert (cfg["weight_decay"], cfg["weight_decay_from"]) == (1e-2, "tlx")
    assert (cfg["resume"], cfg["checkpoint_every"], cfg["log_every"], cfg["steps_per_epoch"]) == ("auto", 250, 10, 6)
    assert cfg["class_weights"] == [1.0, 1.0, 1.0] and cfg["max_steps"] is None


def test_steps_jsonl_has_a_line_every_log_every_steps(radnet_run):
    run, _ = radnet_run
    lines = [json.loads(l) for l in (run / "steps.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(10, 49, 10)) + [48]     # every 10th step, and the last
    assert [l["epoch"] for l in lines] == [2, 4, 5, 7, 8]                    # 6 steps per epoch
    assert all(math.isfinite(l["loss"]) and l["lr"] > 0 and l["images_per_s"] > 0 for l in lines)


def test_a_complete_run_is_not_run_again(radnet_run, ct):
    run, result = radnet_run
    before = (run / "metrics.jsonl").stat().st_mtime_ns
    again = ft.main(["--task", "radnet", "--data", str(ct), "--out", str(run.parents[4]), "--epochs", "8",
                     "--batch-size", "8", "--lr", "3e-3", "--seed", "1", *TINY])
    assert again == result and (run / "metrics.jsonl").stat().st_mtime_ns == before


def test_a_complete_run_with_other_options_is_refused_naming_them(radnet_run, ct, tmp_path):
    """A new --lr (or fewer epochs, or a --max-steps that cut it short) into a complete run was skipped as
    complete and its old result returned; all of config.json is compared now, as on resume."""
    run, result = radnet_run
    args = ["--task", "radnet", "--data", str(ct), "--out", str(run.parents[4]), "--epochs", "8", "--batch-size",
            "8", "--lr", "3e-3", "--seed", "1", *TINY]
    before = (run / "result.json").read_bytes()
    for flag, value, names in (("--lr", "2e-3", "--lr"), ("--epochs", "2", "--epochs"),
                               ("--batch-size", "16", "--batch-size, steps_per_epoch")):
        with pytest.raises(TrainerError, match=rf"^{run} holds a complete run made with other options: {names} "
                                               r"differ from its config.json; give the values it was made with to "
                                               r"read its result, or use another --run-dir, or remove the old run$"):
            ft.main([*args, flag, value])
    with pytest.raises(TrainerError, match=r"complete run made with other options: --max-steps differ"):
        ft.main([*args, "--max-steps", "5"])
    # what may change on resume may change here too: where and how it runs, how often it logs
    assert ft.main([*args, "--log-every", "3", "--eval-batch-size", "5", "--checkpoint-every", "0"]) == result
    assert (run / "result.json").read_bytes() == before
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["flags_set"] == ["batch_size", "data", "epochs", "lr", "model", "optimizer", "seed", "task"]
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "result.json").write_text(json.dumps(result))
    with pytest.raises(TrainerError, match=rf"^{lone} holds a result.json but no readable config.json "
                                           r"\(FileNotFoundError: .*\), so which options made it is unknown"):
        ft.main([*args, "--run-dir", str(lone)])


def test_a_second_run_into_a_run_folder_being_written_is_refused(ct, tmp_path):
    run = tmp_path / "run"
    with held(run, "trainer.finetune") as holder:
        with pytest.raises(FolderBusy, match=rf"^{run} is being written by pid {holder.pid} on .*\(trainer.finetune\)"):
            ft.main(["--task", "radnet", "--data", str(ct), "--run-dir", str(run), "--epochs", "1", *TINY])
        assert sorted(p.name for p in run.iterdir()) == [".tlx.lock"]


def _comparable(run):
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    for l in lines:
        del l["images_per_s"], l["wall_s"]
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    return lines, json.loads((run / "result.json").read_text()), last


def test_kill_and_resume_equals_an_uninterrupted_run(ct, tmp_path, monkeypatch):
    args = ["--task", "radnet", "--data", str(ct), "--epochs", "3", "--batch-size", "16", "--lr", "1e-3",
            "--checkpoint-every", "2", "--log-every", "1", *TINY]
    ft.main([*args, "--run-dir", str(tmp_path / "straight")])
    real_loss, calls = ft.task_loss, {"n": 0}

    def dies_at_step_6(*a, **kw):  # step 6 = third step of epoch 2, after the mid-epoch checkpoint at step 4
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")
        return real_loss(*a, **kw)

    monkeypatch.setattr(ft, "task_loss", dies_at_step_6)
    with pytest.raises(RunInterrupted, match=rf"^interrupted: rerun the same command to continue "
                                             rf"{tmp_path / 'resumed'} "
                                             r"from its last checkpoint \(--resume auto\)$"):   # Ctrl-C: one line
        ft.main([*args, "--run-dir", str(tmp_path / "resumed")])
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["step"] == 4
    monkeypatch.setattr(ft, "task_loss", real_loss)
    ft.main([*args, "--run-dir", str(tmp_path / "resumed")])
    walls = [json.loads(l)["wall_s"] for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert walls == sorted(walls)          # seconds since the run started, across the restart
    a, b = _comparable(tmp_path / "straight"), _comparable(tmp_path / "resumed")
    assert a[0] == b[0] and a[1] == b[1]
    for part in ("encoder", "head"):
        assert all(torch.equal(a[2][part][k], b[2][part][k]) for k in a[2][part])
    assert pl.read_parquet(tmp_path / "straight" / "predictions.parquet").equals(
        pl.read_parquet(tmp_path / "resumed" / "predictions.parquet"))
    steps = [[{k: v for k, v in json.loads(l).items() if k != "images_per_s"}
              for l in (tmp_path / d / "steps.jsonl").read_text().splitlines()] for d in ("straight", "resumed")]
    assert steps[0] == steps[1] and [l["step"] for l in steps[1]] == list(range(1, 10))  # none lost or repeated
    (tmp_path / "resumed" / "result.json").unlink()
    with pytest.raises(TrainerError, match=r"^cannot resume from .*resumed/checkpoints/last.pt: --lr differ from the "
                                           r"checkpoint's run; use the same values, or use another --run-dir"):
        ft.main([*[a if a != "1e-3" else "2e-3" for a in args], "--run-dir", str(tmp_path / "resumed")])
    with pytest.raises(TrainerError, match=r"last.pt holds a started run and --resume is never: continue it with "
                                           r"--resume auto, or use another --run-dir$"):
        ft.main([*args, "--run-dir", str(tmp_path / "resumed"), "--resume", "never"])
    # --resume PATH: a new run folder continues from that checkpoint (here: the finished one, so it only tests)
    last = tmp_path / "resumed" / "checkpoints" / "last.pt"
    ft.main([*args, "--run-dir", str(tmp_path / "copy"), "--resume", str(last)])
    assert json.loads((tmp_path / "copy" / "result.json").read_text()) == a[1]


@pytest.fixture(scope="module")
def simclr_checkpoint(tmp_path_factory):
    """A tlx SimCLR checkpoint as trainer.simclr writes it: encoder, projector, optimizer state."""
    torch.manual_seed(5)
    enc = build_encoder("resnet-tiny")
    with torch.no_grad():  # non-trivial BN statistics, so a moving one would show; means around 0, else
        for name, buf in enc.named_buffers():   # every ReLU is off and the features are all 0
            if "running" in name:
                buf.uniform_(-0.2, 0.2) if "mean" in name else buf.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("pre") / "demo-simclr" / "checkpoints" / "last.pt"
    save_checkpoint(new_checkpoint("resnet-tiny", enc.state_dict(), projector={"0.weight": torch.randn(4, 256)},
                                   step=10, epoch=1, config={"normalize": "hu", "window": [-1000.0, 1000.0]}), path)
    return path, {k: v.clone() for k, v in enc.state_dict().items()}


def test_linear_evaluation_leaves_the_encoder_bit_identical(ct, tmp_path, simclr_checkpoint):
    path, initial = simclr_checkpoint
    ft.main(["--task", "radnet", "--data", str(ct), "--init", str(path), "--setting", "linear", "--fraction", "0.5",
             "--epochs", "2", "--batch-size", "8", "--lr", "1e-2", "--out", str(tmp_path), "--device", "cpu",
             "--workers", "0"])
    run = tmp_path / "radnet" / "demo-simclr" / "linear" / "frac-0.5" / "seed-0"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "resnet-tiny" and cfg["init_sha256"] == sha256_file(path)
    assert cfg["encoder_frozen"] and cfg["trains"] == "head" and cfg["subset_samples"] == 24
    assert cfg["init_dropped"] == ["projector (not the encoder: the SimCLR projection head)"]
    assert (cfg["normalize"], cfg["window"]) == ("hu", [-1000.0, 1000.0])   # as the encoder was pretrained
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert set(last["encoder"]) == set(initial)
    assert all(torch.equal(last["encoder"][k], initial[k]) for k in initial)  # weights AND BN statistics
    torch.manual_seed(0)  # the run's own construction order: seed, encoder, then the new head
    head0 = TaskModel(build_encoder("resnet-tiny"), "classification", 3).head.weight
    assert not torch.equal(last["head"]["weight"], head0)    # while the head did train
    layers = np.load(run / "first_layers.npz")
    assert np.array_equal(layers["init/conv1.weight"], layers["final/conv1.weight"])
    assert len(pl.read_parquet(run / "subset.parquet")) == 24


def test_strict_init_names_missing_unexpected_and_reshaped_keys(tmp_path):
    sd = build_encoder("resnet-tiny", num_classes=10).state_dict()
    state, info = read_init(_save(sd, tmp_path / "imagenet.pth"))
    assert info.source == "state-dict" and info.dropped == ["fc.* (the pretraining classifier, 2 keys)"]
    assert info.layout == "torchvision" and info.stripped == ""
    load_init(build_encoder("resnet-tiny"), state, info, allow_partial=False)   # fc dropped: loads strictly
    # a file saved before torch 0.4.1 (torchvision's original ImageNet weights) has no BN step counters:
    # torch's strict load accepts it, and so does ours; a missing weight or running statistic still fails
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    enc = build_encoder("resnet-tiny")
    state, info = read_init(_save(old, tmp_path / "old.pth"))
    load_init(enc, state, info, allow_partial=False)
    assert info.missing == [] and torch.equal(enc.layer1[0].bn1.running_var, sd["layer1.0.bn1.running_var"])
    del old["layer1.0.bn1.running_var"]
    state, info = read_init(_save(old, tmp_path / "old.pth"))
    with pytest.raises(TrainerError, match=r"strict load failed: 1 missing: layer1.0.bn1.running_var \(pass"):
        load_init(build_encoder("resnet-tiny"), state, info, allow_partial=False)
    broken = dict(sd)
    del broken["layer1.0.conv1.weight"]
    broken["extra.weight"] = torch.zeros(1)
    broken["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    state, info = read_init(_save(broken, tmp_path / "broken.pth"))
    with pytest.raises(TrainerError, match=r"strict load failed: 1 missing: layer1.0.conv1.weight; 1 unexpected: "
                                           r"extra.weight; 1 shape-mismatched: conv1.weight "
                                           r"\(pass --allow-partial-init"):
        load_init(build_encoder("resnet-tiny"), state, info, allow_partial=False)
    enc = build_encoder("resnet-tiny")
    info = load_init(enc, state, info, allow_partial=True)
    assert (info.missing, info.unexpected, info.mismatched) == (["layer1.0.conv1.weight"], ["extra.weight"],
                                                                 ["conv1.weight"])
    assert torch.equal(enc.layer2[0].conv2.weight, sd["layer2.0.conv2.weight"])
    with pytest.raises(TrainerError, match=r"--init 'nope.pt': no such file; give 'scratch'"):
        read_init("nope.pt")
    (tmp_path / "notes.pth").write_text("not weights\n")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "imagenet.pth").read_bytes()[:500])
    for name in ("notes.pth", "cut.pth"):
        with pytest.raises(TrainerError, match=rf"--init '.*{name}' cannot be read by torch.load \(\w+: .*\); "
                                               r"give 'scratch', a torchvision-layout state dict"):
            read_init(str(tmp_path / name))


def test_bad_combinations_are_one_line_errors(ct, tmp_path, simclr_checkpoint):
    with pytest.raises(TrainerError, match=r"--task lits trains on datasets of kind segmentation; .* is of kind "
                                           r"'ct-slices'"):
        ft.main(["--task", "lits", "--data", str(ct), *TINY])
    with pytest.raises(TrainerError, match=r"--model resnet50 but the init checkpoint holds a resnet-tiny"):
        ft.main(["--task", "radnet", "--data", str(ct), "--init", str(simclr_checkpoint[0]), "--model", "resnet50"])
    with pytest.raises(TrainerError, match=r"--fraction 0.01 of 48 training samples keeps 1, but one example of "
                                           r"each of the 3 classes"):
        ft.main(["--task", "radnet", "--data", str(ct), "--fraction", "0.01", "--out", str(tmp_path), *TINY])
    for bad in ("0.0", "-0.5", "nan"):
        with pytest.raises(TrainerError, match=rf"--fraction {bad} must be in \(0, 1\] \(1.0 = all training data\)"):
            ft.main(["--task", "radnet", "--data", str(ct), "--fraction", bad, "--out", str(tmp_path), *TINY])
    with pytest.raises(TrainerError, match=r"^out of range: --epochs -1 \(at least 0\), --eval-batch-size -1 \(at "
                                           r"least 1\)$"):
        ft.main(["--task", "radnet", "--data", str(ct), "--out", str(tmp_path), *TINY, "--eval-batch-size", "-1",
                 "--epochs", "-1"])


def _save(sd, path):
    torch.save(sd, path)
    return str(path)


def test_two_ranks_give_the_single_process_result(ct, tmp_path, simclr_checkpoint):
    """torchrun with 2 gloo ranks, linear evaluation (no batch statistics involved): the same
    global batches, gradients averaged over ranks, val/test gathered from both ranks. Class
    weights: the weighted mean is over the global batch (a weighted mean per rank, averaged,
    would weigh the ranks' samples by their rank's weight sum)."""
    import os
    import subprocess
    import sys
    args = ["--task", "radnet", "--data", str(ct), "--init", str(simclr_checkpoint[0]), "--setting", "linear",
            "--epochs", "2", "--batch-size", "16", "--lr", "1e-2", "--device", "cpu", "--workers", "0",
            "--class-weights", "1,4,20", "--optimizer", "adamw"]
    ft.main([*args, "--run-dir", str(tmp_path / "one")])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "trainer.finetune", *args, "--run-dir", str(tmp_path / "two")], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]   # the ranks' own words when it fails (once seen in CI-like runs)
    one, two = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt") for d in ("one", "two"))
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    torch.manual_seed(0)  # the run's construction order: seed, encoder, then the new head
    head0 = TaskModel(build_encoder("resnet-tiny"), "classification", 3).head
    assert (one["head"]["weight"] - head0.weight).abs().max() > 1e-3   # it trained: not two copies of the init
    for part in ("weight", "bias"):
        assert torch.allclose(one["head"][part], two["head"][part], atol=1e-5), part
    p1, p2 = (pl.read_parquet(tmp_path / d / "predictions.parquet").sort("sample") for d in ("one", "two"))
    assert p1["sample"].to_list() == p2["sample"].to_list() and len(p1) == 15
    assert p1["pred"].to_list() == p2["pred"].to_list()


@pytest.mark.filterwarnings("ignore:'trainer.finetune' found in sys.modules")  # runpy re-runs an imported module
def test_command_line_user_errors_are_one_line_and_exit_2(ct, monkeypatch, capsys):
    import runpy
    import sys
    monkeypatch.setattr(sys, "argv", ["trainer.finetune", "--task", "radnet", "--data", str(ct),
                                      "--init", "missing.pt"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("trainer.finetune", run_name="__main__")   # what `python -m trainer.finetune` runs
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "Error: --init 'missing.pt': no such file; give 'scratch', a " \
                                              "torchvision-layout state dict (.pth) or a tlx checkpoint (.pt)"


@pytest.mark.parametrize("old, new", [(["--ckpt-every", "3"], "--ckpt-every was renamed: use --checkpoint-every"),
                                      (["--resume", "none"], "--resume none was renamed: use --resume never")])
def test_old_spellings_name_the_new_one(ct, old, new):
    with pytest.raises(TrainerError, match=rf"^{new} \(same meaning\)$"):
        ft.main(["--task", "radnet", "--data", str(ct), *TINY, *old])


@pytest.mark.parametrize("quiet", ["1", "0"])
def test_tlx_quiet_silences_notes_and_progress(ct, tmp_path, monkeypatch, capsys, quiet):
    """finetune prints through tlxcore.progress as simclr does: nothing under TLX_QUIET; otherwise (stdout
    not a terminal, as in a job log) epoch notes and progress lines with done/total."""
    monkeypatch.setenv("TLX_QUIET", quiet)
    ft.main(["--task", "radnet", "--data", str(ct), "--run-dir", str(tmp_path / "run"), "--epochs", "1",
             "--batch-size", "16", "--max-steps", "2", *TINY])
    out = capsys.readouterr().out
    if quiet == "1":
        assert out == ""
    else:
        assert "epoch 1/1  loss " in out and "train  2/2 steps  100%" in out and "test accuracy" in out


def test_window_without_hu_normalisation_is_refused_before_anything_is_written(ct, tmp_path):
    with pytest.raises(TrainerError, match=r"^--window -1000 400 has no effect with --normalize minmax; add "
                                           r"--normalize hu, or leave --window out$"):
        ft.main(["--task", "radnet", "--data", str(ct), "--out", str(tmp_path / "r"), "--window", "-1000", "400",
                 *TINY])
    assert not (tmp_path / "r").exists()


def test_a_training_subset_without_a_class_of_val_or_test_is_named(ct):
    from types import SimpleNamespace

    import pyarrow as pa

    def split(labels):
        return SimpleNamespace(metadata=lambda: pa.table({"label_index": pa.array(labels, pa.int16())}))

    plan = SimpleNamespace(task=SimpleNamespace(kind="classification"))
    data = SimpleNamespace(train=split([0, 1, 0, 2]), val=split([0, 2]), test=split([2, 2]), subset=np.array([0, 1]),
                           test_ids=None)
    lines = ft.split_warnings(plan, SimpleNamespace(classes=["a", "b", "c"]), data)
    assert [line.split(" belong to")[0] for line in lines] == [
        "the training subset has no samples of class c, which 1 of 2 val samples",
        "the training subset has no samples of class c, which 2 of 2 test samples"]
    assert "test accuracy 0 is the expected result" in lines[1]
    segmentation = SimpleNamespace(task=SimpleNamespace(kind="segmentation"))
    assert ft.split_warnings(segmentation, SimpleNamespace(classes=["a", "b", "c"]), data) == []
