"""Issue 19's recipe wired into trainer.finetune: --schedule bit-hyperrule, --agc, --mixup, --randaugment,
--label-smoothing, --zero-init-head, --checkpoint-activations; supervised pretraining then transfer; BiT
first layers; `tlx weights convert --from bit` loaded with --init."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import trainer.finetune as ft
from cli.main import cli
from tests.fixtures.bit_npz import write_bit_npz
from tests.fixtures.datasets import make_ct_dataset, make_natural_dataset
from trainer.bit_hyperrule import bit_hyperrule
from trainer.checkpoint import load_checkpoint
from trainer.data.labelled import ImageOptions, LabelledSplit
from trainer.errors import TrainerError
from trainer.randaugment import apply_randaugment, draw_randaugment
from trainer.task_heads import task_loss

CPU = ["--device", "cpu", "--workers", "0", "--image-size", "32"]


@pytest.fixture(scope="module")
def natural(tmp_path_factory):
    """10 classes, 48 train / 6 val / 6 test JPEGs."""
    return make_natural_dataset(tmp_path_factory.mktemp("nat"))


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("ct") / "ds", splits={"train": 24, "val": 6, "test": 6},
                           num_classes=3)


@pytest.fixture(scope="module")
def pretrain(natural, tmp_path_factory):
    """Supervised pretraining of bit-tiny on the 10-class set: BiT-HyperRule, AGC, MixUp, RandAugment, label
    smoothing and activation checkpointing, cut at 4 steps."""
    run = tmp_path_factory.mktemp("pre") / "run"
    result = ft.main(["--task", "imagenet-10", "--data", str(natural), "--model", "bit-tiny", *CPU,
                      "--schedule", "bit-hyperrule", "--batch-size", "8", "--max-steps", "4", "--log-every", "1",
                      "--agc", "0.01", "--mixup", "0.2", "--randaugment", "2,9", "--label-smoothing", "0.1",
                      "--checkpoint-activations", "--run-dir", str(run)])
    return run, result


def _steps(run):
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines() if '"loss"' in line]


def test_bit_hyperrule_sets_steps_lr_optimizer_and_records_every_flag(pretrain):
    run, result = pretrain
    cfg = json.loads((run / "config.json").read_text())
    rule = bit_hyperrule(48)                        # 48 training examples: 500 steps, warmup 100
    steps_per_epoch = 48 // 8
    assert cfg["hyperrule"] == {"train_size": 48, "total_steps": 500, "warmup_steps": 100,
                                "decay_steps": [200, 300, 400], "base_lr": 0.003, "batch_size": 512,
                                "mixup_alpha": 0.0}
    assert cfg["epochs"] == math.ceil(500 / steps_per_epoch) == 84
    assert (cfg["optimizer"], cfg["weight_decay"], cfg["lr"], cfg["batch_size"]) == ("sgd", 0.0, 0.003, 8)
    assert (cfg["schedule"], cfg["hyperrule_recipe"], cfg["weight_decay_from"]) == ("bit-hyperrule", "bit",
                                                                                      "bit-hyperrule")
    assert (cfg["agc"], cfg["mixup"], cfg["randaugment"], cfg["label_smoothing"]) == (0.01, 0.2, "2,9", 0.1)
    assert cfg["zero_init_head"] is True and cfg["checkpoint_activations"] is True   # the rule's zero head
    lines = _steps(run)
    assert [line["step"] for line in lines] == [1, 2, 3, 4] and result["steps"] == 4
    # the lr logged at step s is the rule's for update s - 1 (lr 0 at the first update, as published)
    assert [line["lr"] for line in lines] == pytest.approx([rule.lr(s) for s in range(4)], abs=0, rel=1e-12)
    # a zero head gives every class logit 0: the loss is ln 10 whatever MixUp and smoothing do, until the
    # head moves (update 0 has lr 0, so steps 1 and 2 see the zero head)
    assert [line["loss"] for line in lines[:2]] == pytest.approx([math.log(10)] * 2, abs=1e-6)


def test_pretrained_checkpoint_is_the_init_of_a_transfer_run(pretrain, ct, tmp_path):
    run, _ = pretrain
    init = run / "checkpoints" / "last.pt"
    result = ft.main(["--task", "radnet", "--data", str(ct), "--init", str(init), *CPU, "--epochs", "1",
                      "--batch-size", "8", "--optimizer", "sgd", "--lr", "0.01", "--run-dir", str(tmp_path / "tr")])
    cfg = json.loads((tmp_path / "tr" / "config.json").read_text())
    assert (cfg["init"], cfg["init_checkpoint"], cfg["model"]) == ("run", str(init), "bit-tiny")
    assert cfg["init_missing"] == cfg["init_unexpected"] == [] and cfg["init_source"] == "tlx-checkpoint"
    assert (tmp_path / "tr" / "result.json").is_file() and result["steps"] == 3
    encoder = load_checkpoint(init)["encoder"]
    for when, where in (("pretrain", run), ("transfer", tmp_path / "tr")):
        layers = np.load(where / "first_layers.npz")
        assert list(layers["layer_names"]) == list(ft.BIT_FIRST_LAYERS), when
        assert layers["init/conv1.weight"].shape == (16, 3, 7, 7)      # bit-tiny's root conv
    layers = np.load(tmp_path / "tr" / "first_layers.npz")
    for key, name in zip(ft.FIRST_LAYERS, ft.BIT_FIRST_LAYERS):      # the transfer starts from the pretraining
        assert np.array_equal(layers[f"init/{key}"], encoder[name].numpy()), key


def test_agc_bounds_every_unit_update_of_plain_sgd(ct, tmp_path):
    """One SGD step without momentum: each conv output unit moves by lr * ||G_i||, which AGC caps at
    lr * clipping * max(||W_i||, 1e-3); without AGC the same step moves further."""
    moved = {}
    for agc in ("1e-4", None):
        run = tmp_path / f"agc-{agc}"
        ft.main(["--task", "radnet", "--data", str(ct), "--model", "resnet-tiny", *CPU, "--epochs", "1",
                 "--max-steps", "1", "--batch-size", "8", "--optimizer", "sgd", "--momentum", "0", "--lr", "1.0",
                 "--weight-decay", "0", "--run-dir", str(run), *(["--agc", agc] if agc else [])])
        layers = np.load(run / "first_layers.npz")
        w0, w1 = layers["init/conv1.weight"], layers["final/conv1.weight"]
        step = np.linalg.norm((w1 - w0).reshape(len(w0), -1), axis=1)
        bound = 1.0 * 1e-4 * np.maximum(np.linalg.norm(w0.reshape(len(w0), -1), axis=1), 1e-3)
        moved[agc] = (step, bound)
    step, bound = moved["1e-4"]
    assert np.all(step <= bound * (1 + 1e-4)) and np.any(step > bound * 0.99)   # clipped to the bound
    assert np.any(moved[None][0] > bound * 2)                                   # the unclipped step is larger


def test_mixup_is_deterministic_per_seed_and_changes_the_run(ct, tmp_path):
    def last(name, *flags):
        ft.main(["--task", "radnet", "--data", str(ct), "--model", "resnet-tiny", *CPU, "--epochs", "1",
                 "--batch-size", "8", "--optimizer", "sgd", "--lr", "0.05", "--run-dir", str(tmp_path / name),
                 *flags])
        return load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["head"]["weight"]
    a, b, plain = last("a", "--mixup", "0.4"), last("b", "--mixup", "0.4"), last("c")
    assert torch.equal(a, b) and not torch.allclose(a, plain)


def test_zero_init_head_starts_at_zero_logits(ct, tmp_path):
    ft.main(["--task", "radnet", "--data", str(ct), "--model", "resnet-tiny", *CPU, "--epochs", "1", "--max-steps",
             "1", "--batch-size", "8", "--optimizer", "sgd", "--lr", "0.01", "--zero-init-head", "--log-every", "1",
             "--run-dir", str(tmp_path / "z")])
    assert _steps(tmp_path / "z")[0]["loss"] == pytest.approx(math.log(3), abs=1e-6)   # 3 classes, equal weights
    assert json.loads((tmp_path / "z" / "config.json").read_text())["zero_init_head"] is True


def test_label_smoothing_is_torchs_and_reaches_the_loss():
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    smoothed = task_loss("classification", logits, y, label_smoothing=0.2)
    assert torch.allclose(smoothed, F.cross_entropy(logits, y, label_smoothing=0.2))
    assert not torch.allclose(smoothed, task_loss("classification", logits, y))


def test_randaugment_runs_on_training_samples_only_deterministically(natural):
    from datakit.read import open_dataset
    ds = open_dataset(natural)
    plain = LabelledSplit(ds, "train", "classification", ImageOptions(32, seed=3), train=True)
    aug = LabelledSplit(ds, "train", "classification", ImageOptions(32, seed=3, randaugment=(2, 9)), train=True)
    x, _, _ = plain[(5, 1)]
    rng = np.random.default_rng([3, 1, 5])     # the sample's key; the box draws nothing without crop-flip
    expected = apply_randaugment(x, draw_randaugment(rng, 2), 9)
    assert torch.equal(aug[(5, 1)][0], expected) and torch.equal(aug[(5, 1)][0], aug[(5, 1)][0])
    evaluation = LabelledSplit(ds, "val", "classification", ImageOptions(32, seed=3, randaugment=(2, 9)))
    plain_val = LabelledSplit(ds, "val", "classification", ImageOptions(32, seed=3))
    assert torch.equal(evaluation[(0, 1)][0], plain_val[(0, 1)][0])


BAD = [
    (["--agc", "0"], r"^--agc 0.0 must be a clipping factor > 0"),
    (["--agc", "nan"], r"^--agc nan must be a clipping factor > 0"),
    (["--mixup", "-0.1"], r"^--mixup -0.1 must be an alpha >= 0"),
    (["--label-smoothing", "1"], r"^--label-smoothing 1.0 must be in \[0, 1\)$"),
    (["--randaugment", "2"], r"^--randaugment '2' must be N,M: N ops per image >= 1 and magnitude M in 0..30"),
    (["--randaugment", "0,9"], r"^--randaugment '0,9' must be N,M"),
    (["--randaugment", "2,31"], r"^--randaugment '2,31' must be N,M"),
    (["--hyperrule-recipe", "bit"], r"^--hyperrule-recipe is for --schedule bit-hyperrule, not exponential$"),
    (["--schedule", "bit-hyperrule", "--epochs", "3", "--optimizer", "adamw"],
     r"^--schedule bit-hyperrule sets these itself; drop --epochs \(the step count\); --optimizer adamw "
     r"\(SGD with momentum\)$"),
    (["--schedule", "bit-hyperrule", "--setting", "lp-ft"], r"^--schedule bit-hyperrule sets these itself; drop "
                                                            r"--setting lp-ft"),
]


@pytest.mark.parametrize("flags, message", BAD)
def test_bad_values_are_one_line_errors(ct, tmp_path, flags, message):
    with pytest.raises(TrainerError, match=message):
        ft.main(["--task", "radnet", "--data", str(ct), "--model", "resnet-tiny", *CPU, "--run-dir", str(tmp_path),
                 *flags])


@pytest.mark.parametrize("task, flags, message", [
    ("lits", ["--mixup", "0.1", "--randaugment", "2,9"],
     r"^--mixup, --randaugment: for classification and multilabel tasks \(image-level labels and a linear head\), "
     r"not segmentation$"),
    ("lits", ["--zero-init-head"], r"^--zero-init-head: for classification and multilabel tasks"),
    ("chestxray", ["--label-smoothing", "0.1"],
     r"^--label-smoothing is for single-label classification; this task is multilabel$"),
])
def test_options_of_image_level_tasks_are_refused_elsewhere(ct, task, flags, message):
    with pytest.raises(TrainerError, match=message):
        ft.main(["--task", task, "--data", str(ct), *CPU, *flags])


def test_checkpoint_activations_is_refused_for_batchnorm_models(ct, tmp_path):
    with pytest.raises(TrainerError, match=r"--checkpoint-activations needs a GroupNorm model \(bit-\*\), not "
                                           r"'resnet-tiny'"):
        ft.main(["--task", "radnet", "--data", str(ct), "--model", "resnet-tiny", *CPU, "--checkpoint-activations",
                 "--run-dir", str(tmp_path)])


def test_randaugment_is_refused_with_dali(natural, tmp_path):
    with pytest.raises(TrainerError, match=r"^--randaugment runs in the torch loader's workers, not in DALI; use "
                                           r"--loader torch or auto$"):
        ft.main(["--task", "imagenet-10", "--data", str(natural), "--model", "resnet-tiny", *CPU,
                 "--randaugment", "2,9", "--loader", "dali", "--run-dir", str(tmp_path)])


@pytest.mark.filterwarnings("ignore:'trainer.finetune' found in sys.modules")  # runpy re-runs an imported module
def test_cli_bad_value_exits_2_with_one_line(ct, monkeypatch, capsys):
    import runpy
    import sys
    monkeypatch.setattr(sys, "argv", ["trainer.finetune", "--task", "radnet", "--data", str(ct), "--agc", "-1"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("trainer.finetune", run_name="__main__")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "Error: --agc -1.0 must be a clipping factor > 0 (NFNets: 0.01 at " \
                                              "batch 4096)"


def test_weights_convert_from_bit_then_init_strictly(ct, tmp_path):
    arrays = write_bit_npz(tmp_path / "BiT-M-tiny.npz", [1, 1, 1, 1], 16, classes=5)
    res = CliRunner().invoke(cli, ["weights", "convert", "--from", "bit", "--model", "bit-tiny",
                                   str(tmp_path / "BiT-M-tiny.npz"), str(tmp_path / "bit.pt")])
    assert res.exit_code == 0, res.output
    assert f"bit-tiny, {len(arrays)} tensors; dropped fc.bias (the pretraining head), fc.weight" in res.output
    ft.main(["--task", "radnet", "--data", str(ct), "--init", str(tmp_path / "bit.pt"), *CPU, "--epochs", "0",
             "--batch-size", "8", "--run-dir", str(tmp_path / "run")])          # --allow-partial-init not given
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"] == "bit-tiny" and cfg["init_missing"] == cfg["init_unexpected"] == []
    layers = np.load(tmp_path / "run" / "first_layers.npz")
    kernel = arrays["resnet/root_block/standardized_conv2d/kernel"]          # HWIO -> OIHW
    assert np.array_equal(layers["init/conv1.weight"], kernel.transpose(3, 2, 0, 1))
    res = CliRunner().invoke(cli, ["weights", "convert", "--from", "bit", "--model", "bit-r50x1",
                                   str(tmp_path / "BiT-M-tiny.npz"), str(tmp_path / "o.pt")])
    assert res.exit_code == 2 and "do not fit bit-r50x1" in res.output
    res = CliRunner().invoke(cli, ["weights", "convert", "--model", "bit-tiny", str(tmp_path / "BiT-M-tiny.npz"),
                                   str(tmp_path / "o.pt")])
    assert res.exit_code == 2 and "--model is for --from bit" in res.output


def test_multilabel_pretraining_with_mixup_and_randaugment(tmp_path):
    """A multi-label run (the chest X-ray superset's kind) takes MixUp, RandAugment and the zero head: with zero
    logits every label's BCE is ln 2, mixed or not, so the first step's loss is exactly ln 2."""
    from datakit.convert.image_folder import ImageFolderOptions, convert_image_folder
    from tests.fixtures.task_datasets import write_chestxray
    root, csv = write_chestxray(tmp_path / "cxr", n_patients=20, size=32)
    convert_image_folder(ImageFolderOptions(root=str(root), labels=str(csv), out=str(tmp_path / "data"), size=32,
                                            val=0.2, test=0.2, workers=1))
    result = ft.main(["--task", "chestxray", "--data", str(tmp_path / "data"), "--model", "resnet-tiny", *CPU,
                      "--epochs", "1", "--max-steps", "2", "--batch-size", "4", "--optimizer", "sgd", "--lr", "0.01",
                      "--mixup", "0.4", "--randaugment", "1,5", "--zero-init-head", "--agc", "0.05",
                      "--log-every", "1", "--run-dir", str(tmp_path / "run")])
    assert result["steps"] == 2 and (tmp_path / "run" / "result.json").is_file()
    assert _steps(tmp_path / "run")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
