"""The task registry: Table ST4 defaults, fraction rows, class weights, user task files, run names."""
import pytest

from trainer.errors import TrainerError
from trainer.tasks import BUILTIN, format_fraction, get_task, parse_class_weights, resolve_class_weights, run_dir


def test_table_st4_defaults_by_fraction():
    radnet = get_task("radnet")
    assert radnet.hyperparameters(1.0) | {} == {"batch_size": 4096, "lr": 1e-2, "optimizer": "lars",
                                                 "weight_decay": 1e-4, "epochs": 100, "decay": 0.97}   # the study's
    assert (radnet.hyperparameters(0.1)["batch_size"], radnet.hyperparameters(0.1)["lr"]) == (1024, 5e-3)
    for f in (0.01, 0.001):
        hp = radnet.hyperparameters(f)
        assert (hp["batch_size"], hp["lr"], hp["optimizer"]) == (256, 1e-4, "adamw")
    assert get_task("imagenet-10").hyperparameters(0.01)["batch_size"] == 64
    assert get_task("imagenet-10").hyperparameters(1.0)["batch_size"] == 256
    lits, brats = get_task("lits"), get_task("brats")
    assert (lits.lr, lits.decay, lits.epochs, lits.class_weights) == (2e-4, 0.97, 50, (1.0, 3.0, 10.0))
    assert (brats.lr, brats.decay, brats.batch_size) == (1e-3, 0.95, 128)
    assert set(BUILTIN) >= {"radnet", "chestxray", "lits", "brats", "imagenet"}


def test_class_weights_by_position_and_name():
    assert resolve_class_weights((1, 3, 10), ["background", "liver", "tumor"], strict=True) == [1, 3, 10]
    assert resolve_class_weights({"No Finding": 1e-3, "*": 1}, ["a", "No Finding"], strict=False) == [1, 1e-3]
    assert resolve_class_weights({"No Finding": 1e-3, "*": 1}, ["a", "b"], strict=False) == [1, 1]
    assert resolve_class_weights((), ["a", "b"], strict=True) == [1, 1]
    with pytest.raises(TrainerError, match=r"--class-weights names \['lesion'\] that are not classes of the "
                                           r"dataset: background, liver, tumor"):
        resolve_class_weights(parse_class_weights("lesion=10,*=1"), ["background", "liver", "tumor"], strict=True)
    with pytest.raises(TrainerError, match=r"give 2 values for the dataset's 3 classes"):
        resolve_class_weights(parse_class_weights("1,5"), ["a", "b", "c"], strict=True)
    with pytest.raises(TrainerError, match=r"--class-weights 'x,y' must be numbers"):
        parse_class_weights("x,y")


def test_tasks_file_adds_a_declarative_task(tmp_path):
    f = tmp_path / "tasks.toml"
    f.write_text('[tasks.kidney]\nkind = "segmentation"\ndata_kinds = ["segmentation"]\nmetric = "dice_mean"\n'
                 'epochs = 30\nbatch_size = 16\nlr = 3e-4\noptimizer = "adamw"\ndecay = 0.9\n'
                 'class_weights = [1, 4]\n[tasks.kidney.by_fraction."0.1"]\nbatch_size = 8\n')
    task = get_task("kidney", tasks_file=f)
    assert task.hyperparameters(0.1)["batch_size"] == 8 and task.class_weights == (1, 4)
    f.write_text('[tasks.bad]\nkind = "segmentation"\nloss = "dice"\n')
    with pytest.raises(TrainerError, match=r"task 'bad' has unknown fields \['loss'\]"):
        get_task("bad", tasks_file=f)
    f.write_text('[tasks.broken]\nkind = segmentation\n')          # a string without quotes
    with pytest.raises(TrainerError, match=r"--tasks-file .*tasks.toml: not valid TOML \(Invalid value \(at line 2"):
        get_task("broken", tasks_file=f)
    with pytest.raises(TrainerError, match=r"--task 'nope' is not one of: radnet, chestxray"):
        get_task("nope")


def test_run_dir_names():
    assert str(run_dir("runs", "radnet", "radnet-1.28M", "linear", 0.01, 2)) == \
        "runs/radnet/radnet-1.28M/linear/frac-0.01/seed-2"
    assert [format_fraction(f) for f in (1, 0.5, 0.001, 1e-5)] == ["1.0", "0.5", "0.001", "1e-05"]
    with pytest.raises(TrainerError, match="cannot name a directory"):
        run_dir("runs", "radnet", "a/b", "linear", 1.0, 0)
