"""The other studies' fine-tuning protocol options: optimizers, schedules, early stopping, plateau, LP-FT,
head dropout, AUC, --epochs 0, foreign inits."""
import json
import math

import numpy as np
import pytest
import torch

import trainer.finetune as ft
from tests.fixtures.datasets import make_ct_dataset
from trainer import metrics as M
from trainer.checkpoint import load_checkpoint
from trainer.errors import TrainerError
from trainer.models import build_encoder
from trainer.optim import Schedule, build_optimizer, lars_param_groups
from trainer.selection import Watch, plateau_step
from trainer.task_heads import TaskModel

TINY = ["--model", "resnet-tiny", "--device", "cpu", "--workers", "0", "--batch-size", "8", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("ct") / "ds", splits={"train": 48, "val": 15, "test": 15},
                           num_classes=3)


def _lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# AUC

def test_binary_auc_against_hand_computed_values():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs (0.35 > 0.1), (0.35 < 0.4), (0.8 > both) -> 3/4
    assert M.class_auc(probs, np.array([0, 0, 1, 1])) == 0.75
    tied = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])   # one tie between a positive and a negative: 1/2
    assert M.class_auc(tied, np.array([1, 0, 0])) == pytest.approx((0.5 + 1.0) / 2)
    assert math.isnan(M.class_auc(probs, np.zeros(4, int)))   # one class only: undefined


def test_ovr_macro_auc_against_hand_computed_values():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])
    target = np.array([0, 1, 2, 1])
    # class 0: 0.7 above 0.2, 0.3, 0.5 -> 1; class 1: positives 0.5, 0.25 vs negatives 0.2, 0.3 -> 3/4;
    # class 2: 0.4 above 0.1, 0.3, 0.25 -> 1
    assert M.class_auc(probs, target) == pytest.approx((1 + 0.75 + 1) / 3)
    # class 2 absent from the targets: left out of the macro mean
    # targets 1, 1, 0, 0: class 0's positives 0.3, 0.5 vs negatives 0.7, 0.2 -> 2/4; class 1's positives 0.2,
    # 0.5 vs negatives 0.3, 0.25 -> 2/4
    assert M.class_auc(probs, np.array([1, 1, 0, 0])) == pytest.approx(0.5)
    metrics, _ = M.classification_results(probs, target, ["a", "b", "c", "d"])
    assert metrics == {"accuracy": 0.75, "auc": pytest.approx(2.75 / 3)}


# ---------------------------------------------------------------------------------------------
# optimizers, schedules, selection

def test_optimizers_and_their_options():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    sgd = build_optimizer("sgd", lars_param_groups(model, 1e-4), lr=0.1, momentum=0.9, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9
    assert [g["weight_decay"] for g in sgd.param_groups] == [1e-4, 0.0]   # no decay on biases and norms
    assert type(build_optimizer("adam", lars_param_groups(model, 0.0), lr=1e-3)) is torch.optim.Adam
    assert type(build_optimizer("adamw", lars_param_groups(model, 0.0), lr=1e-3)) is torch.optim.AdamW
    with pytest.raises(TrainerError, match=r"^--nesterov needs --optimizer sgd with --momentum > 0; got adamw"):
        build_optimizer("adamw", lars_param_groups(model, 0.0), lr=1e-3, nesterov=True)
    with pytest.raises(TrainerError, match=r"^--optimizer 'rmsprop' is not one of: adamw, adam, sgd, lars$"):
        build_optimizer("rmsprop", lars_param_groups(model, 0.0), lr=1e-3)


def test_step_schedule_and_plateau():
    step = Schedule("step", base_lr=1.0, epochs=10, steps_per_epoch=4, decay=0.1, step_epochs=3)
    assert [step(e * 4) for e in range(7)] == [1.0, 1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1),
                                               pytest.approx(0.1), pytest.approx(0.01)]
    # torch's ReduceLROnPlateau(patience=1, factor=0.5): improved, bad, bad (drop), improved, bad, bad (drop)
    scale, bad, scales = 1.0, 0, []
    for improved in (True, False, False, True, False, False):
        scale, bad = plateau_step(scale, bad, improved, patience=1, factor=0.5)
        scales.append(scale)
    assert scales == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=1, factor=0.5, threshold=0)
    for value in (0.5, 0.4, 0.3, 0.6, 0.5, 0.4):
        ref.step(value)
    assert opt.param_groups[0]["lr"] == 0.25


def test_weight_decay_presets():
    from trainer.tasks import default_weight_decay, get_task
    assert default_weight_decay("lits", "adamw", "study") == (1e-6, "study")
    assert default_weight_decay("brats", "adamw", "study") == (1e-5, "study")
    assert default_weight_decay("radnet", "lars", "study") == (1e-4, "study")
    assert default_weight_decay("radnet", "adamw", "study") == (1e-2, "tlx")   # the study's configs give none
    assert default_weight_decay("lits", "adamw", "tlx") == (1e-2, "tlx")
    assert get_task("chestxray").hyperparameters(1.0)["weight_decay"] == 1e-6
    with pytest.raises(TrainerError, match=r"^--weight-decay-preset 'paper' is not one of: study, tlx$"):
        default_weight_decay("lits", "adamw", "paper")


def test_watch_parses_and_compares():
    watch = Watch.parse("val_loss:10", ("accuracy", "auc"))
    assert (watch.metric, watch.mode, watch.patience) == ("loss", "min", 10)
    assert watch.better(0.3, watch.worst) and not watch.better(float("nan"), watch.worst)
    assert Watch.parse("auc:3", ("accuracy", "auc")).mode == "max"
    for bad in ("loss", "loss:0", "dice:3", "loss:x"):
        with pytest.raises(TrainerError, match=rf"^--early-stop '{bad}' must be METRIC:PATIENCE with METRIC one of "
                                               r"loss, accuracy, auc"):
            Watch.parse(bad, ("accuracy", "auc"))


# ---------------------------------------------------------------------------------------------
# runs

def _planted(monkeypatch, key, values):
    """Replace the validation results by a planted curve (the test split is evaluated for real)."""
    real, calls = ft.evaluate, []

    def fake(model, split, *args, **kwargs):
        metrics, rows = real(model, split, *args, **kwargs)
        if split.split == "val":
            metrics[key] = values[len(calls)]
            calls.append(1)
        return metrics, rows
    monkeypatch.setattr(ft, "evaluate", fake)


def test_early_stop_on_a_planted_curve(ct, tmp_path, monkeypatch):
    _planted(monkeypatch, "loss", [1.0, 0.8, 0.9, 0.85, 0.95, 0.7, 0.6, 0.5])
    run = tmp_path / "es"
    result = ft.main(["--task", "radnet", "--data", str(ct), "--run-dir", str(run), "--epochs", "8",
                      "--early-stop", "loss:3", *TINY])
    # best val loss at epoch 2; epochs 3, 4, 5 not better: stop after epoch 5 (epochs 6-8 never run)
    assert (result["best_epoch"], result["stopped_epoch"], result["epochs"]) == (2, 5, 5)
    assert (result["selected_by"], result["best_val"]) == ("loss", 0.8)
    assert [line["val_loss"] for line in _lines(run)] == [1.0, 0.8, 0.9, 0.85, 0.95]
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 2
    assert "loss" not in result["metrics"] and result["test_loss"] > 0
    assert set(result["metrics"]) == {"accuracy", "auc"}


def test_plateau_lowers_the_lr_on_a_planted_curve(ct, tmp_path, monkeypatch):
    _planted(monkeypatch, "accuracy", [0.5, 0.4, 0.3, 0.6, 0.5, 0.4])
    result = ft.main(["--task", "radnet", "--data", str(ct), "--run-dir", str(tmp_path / "p"), "--epochs", "6",
                      "--schedule", "plateau", "--plateau-patience", "1", "--decay", "0.5", *TINY])
    lrs = [line["lr"] for line in _lines(tmp_path / "p")]
    assert lrs == [3e-3] * 3 + [1.5e-3] * 3 and result["best_epoch"] == 4 and result["stopped_epoch"] is None


def test_sgd_nesterov_with_a_step_schedule(ct, tmp_path):
    ft.main(["--task", "radnet", "--data", str(ct), "--run-dir", str(tmp_path / "s"), "--epochs", "2",
             "--optimizer", "sgd", "--nesterov", "--schedule", "step", "--step-epochs", "1", "--decay", "0.5", *TINY])
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (cfg["optimizer"], cfg["nesterov"], cfg["weight_decay"], cfg["schedule"]) == ("sgd", True, 0.0, "step")
    assert cfg["weight_decay_from"] == "tlx"   # the study's configs have no SGD: torch's 0
    assert [line["lr"] for line in _lines(tmp_path / "s")] == [3e-3, 1.5e-3]


@pytest.fixture(scope="module")
def init_file(tmp_path_factory):
    torch.manual_seed(3)
    enc = build_encoder("resnet-tiny")
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("init") / "moco.pth.tar"
    sd = enc.state_dict()
    torch.save({"state_dict": {**{f"module.encoder_q.{k}": v for k, v in sd.items()},
                               **{f"module.encoder_k.{k}": v.clone() for k, v in sd.items()},
                               "module.queue": torch.randn(16, 8)}}, path)
    return path, {k: v.clone() for k, v in sd.items()}


def test_lp_ft_keeps_the_encoder_bit_identical_in_its_linear_phase(ct, tmp_path, init_file):
    path, initial = init_file
    args = ["--task", "radnet", "--data", str(ct), "--init", str(path), "--setting", "lp-ft", "--epochs", "2",
            "--lp-epochs", "1", *TINY]
    ft.main([*args, "--run-dir", str(tmp_path / "linear-phase"), "--max-steps", "6"])   # 48 / 8 = 6 steps: epoch 1
    cfg = json.loads((tmp_path / "linear-phase" / "config.json").read_text())
    assert (cfg["lp_epochs"], cfg["trains"], cfg["init_layout"], cfg["init_stripped"]) == (
        1, "head, then encoder and head", "moco", "module.encoder_q.")
    first = load_checkpoint(tmp_path / "linear-phase" / "checkpoints" / "last.pt")
    assert first["epoch"] == 1
    assert all(torch.equal(first["encoder"][k], initial[k]) for k in initial)   # weights and BN statistics
    ft.main([*args, "--run-dir", str(tmp_path / "both")])
    last = load_checkpoint(tmp_path / "both" / "checkpoints" / "last.pt")
    assert not torch.equal(last["encoder"]["layer1.0.conv1.weight"], initial["layer1.0.conv1.weight"])
    assert not torch.equal(last["encoder"]["bn1.running_mean"], initial["bn1.running_mean"])   # BN trains in phase 2


def test_epochs_zero_evaluates_the_init(ct, tmp_path, init_file):
    path, initial = init_file
    result = ft.main(["--task", "radnet", "--data", str(ct), "--init", str(path), "--run-dir", str(tmp_path / "z"),
                      "--epochs", "0", *TINY])
    assert (result["epochs"], result["steps"], result["best_epoch"], result["best_val"]) == (0, 0, 0, None)
    assert 0 <= result["metrics"]["accuracy"] <= 1 and 0 <= result["metrics"]["auc"] <= 1
    layers = np.load(tmp_path / "z" / "first_layers.npz")
    assert np.array_equal(layers["init/conv1.weight"], layers["final/conv1.weight"])
    assert np.array_equal(layers["final/conv1.weight"], initial["conv1.weight"].numpy())
    assert not (tmp_path / "z" / "metrics.jsonl").exists() or _lines(tmp_path / "z") == []


def test_head_dropout_adds_no_parameters_and_acts_in_training_only():
    torch.manual_seed(0)
    model = TaskModel(build_encoder("resnet-tiny"), "classification", 3, head_dropout=0.5)
    plain = TaskModel(build_encoder("resnet-tiny"), "classification", 3)
    assert set(model.state_dict()) == set(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    with pytest.raises(TrainerError, match=r"^--head-dropout 0.5 must be in \[0, 1\) and is for the linear head"):
        TaskModel(build_encoder("resnet-tiny"), "segmentation", 3, head_dropout=0.5)


def test_bad_protocol_options_are_one_line_errors(ct, tmp_path):
    base = ["--task", "radnet", "--data", str(ct), "--out", str(tmp_path), *TINY]
    with pytest.raises(TrainerError, match=r"^--lp-epochs is for --setting lp-ft, not finetune$"):
        ft.main([*base, "--lp-epochs", "2"])
    with pytest.raises(TrainerError, match=r"^--lp-epochs 5 must be in \[0, --epochs 2\]$"):
        ft.main([*base, "--setting", "lp-ft", "--epochs", "2", "--lp-epochs", "5"])
    with pytest.raises(TrainerError, match=r"^--early-stop 'dice_mean:3' must be METRIC:PATIENCE"):
        ft.main([*base, "--early-stop", "dice_mean:3"])
    with pytest.raises(TrainerError, match=r"^--nesterov needs --optimizer sgd"):
        ft.main([*base, "--nesterov", "--epochs", "1"])


def test_lp_ft_and_a_held_out_fold_on_two_ranks(ct, tmp_path, init_file):
    """DDP over 2 gloo ranks: lp-ft's frozen phase (encoder parameters without gradients) and its unfrozen
    phase both run; the held-out fold is tested in shares by both ranks and gathered whole."""
    import os
    import subprocess
    import sys

    import polars as pl
    path, initial = init_file
    run = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "trainer.finetune", "--task", "radnet", "--data", str(ct), "--init", str(path),
                    "--setting", "lp-ft", "--epochs", "2", "--lp-epochs", "1", "--folds", "3", "--fold", "2",
                    "--run-dir", str(run), *TINY], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   capture_output=True)
    assert json.loads((run / "result.json").read_text())["epochs"] == 2
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert not torch.equal(last["encoder"]["layer1.0.conv1.weight"], initial["layer1.0.conv1.weight"])
    folds = pl.read_parquet(run / "folds.parquet")
    tested = pl.read_parquet(run / "predictions.parquet")["sample"].to_list()
    assert sorted(tested) == sorted(folds.filter(pl.col("fold") == 2)["key"].to_list())


@pytest.mark.filterwarnings("ignore:'trainer.finetune' found in sys.modules")  # runpy re-runs an imported module
@pytest.mark.parametrize("bad, message", [
    (["--folds", "5", "--fold", "5"], "--fold 5 is out of range for --folds 5: 0..4"),
    (["--shots", "40"], "--shots 40: these classes have fewer than 40 training examples: "),
    (["--early-stop", "loss"], "--early-stop 'loss' must be METRIC:PATIENCE"),
])
def test_command_line_errors_are_one_line_and_exit_2(ct, tmp_path, monkeypatch, capsys, bad, message):
    import runpy
    import sys
    monkeypatch.setattr(sys, "argv", ["trainer.finetune", "--task", "radnet", "--data", str(ct), "--out",
                                      str(tmp_path), *TINY, *bad])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("trainer.finetune", run_name="__main__")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(f"Error: {message}")
