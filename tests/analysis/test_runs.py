"""find_runs: a run that cannot be used is left out with its reason, never a traceback; both config.json shapes."""
import json

from analysis.runs import curve_row, find_runs, flat_config
from tests.analysis.synthetic import write_run


def test_bad_metrics_lines_leave_out_the_run_with_a_reason(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "radnet", "a", 0, metrics={"accuracy": 0.5}, curve=[{"epoch": 1, "train_loss": 1.0}])
    for seed, epoch in ((1, None), (2, "2")):  # sorting these with int epochs raised TypeError
        write_run(root, "radnet", "a", seed, metrics={"accuracy": 0.5},
                  curve=[{"epoch": 1, "train_loss": 1.0}, {"epoch": epoch, "train_loss": 0.5}])
    bad_json = write_run(root, "radnet", "a", 3, metrics={"accuracy": 0.5})
    (bad_json / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2,\n')
    runs, problems = find_runs(root)
    assert [r.seed for r in runs] == [0]
    assert problems == ["radnet/a/finetune/frac-1/seed-1: left out: metrics.jsonl line 2: epoch None is not an integer",
                        "radnet/a/finetune/frac-1/seed-2: left out: metrics.jsonl line 2: epoch '2' is not an integer",
                        "radnet/a/finetune/frac-1/seed-3: left out: metrics.jsonl line 2 is not JSON "
                        "(Expecting property name enclosed in double quotes)"]


def test_flat_config_is_read_as_written(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "radnet", "radnet-1.28M", 3, fraction=0.1, metrics={"accuracy": 0.5}, lr=0.1, world_size=2,
              tool_version="0.3", init_checkpoint="runs/pretrain/radnet-1.28M/checkpoints/last.pt")
    (run,), problems = find_runs(root)
    assert problems == []
    assert (run.task, run.init, run.setting, run.fraction, run.seed) == ("radnet", "radnet-1.28M", "finetune", 0.1, 3)
    assert run.config["lr"] == 0.1 and run.config["world_size"] == 2 and "args" not in run.config


def test_nested_finetune_config_has_its_args_lifted_and_top_level_keys_win(tmp_path):
    """What finetune wrote before the flat shape: run-contract keys at the top, its flags under `args` (where `init`
    is the checkpoint path and the top-level `init` the name the tables use)."""
    path = tmp_path / "runs" / "lits" / "ct" / "linear" / "frac-0.5" / "seed-1"
    path.mkdir(parents=True)
    args = {"task": "lits", "init": "runs/pretrain/ct/checkpoints/last.pt", "setting": "linear", "fraction": 0.5,
            "seed": 1, "lr": 0.01, "epochs": 40, "class_weights": "1,3"}
    config = {"task": "lits", "init": "ct", "setting": "linear", "fraction": 0.5, "seed": 1, "world_size": 1,
              "class_weights": [1.0, 3.0], "metric": "dice_liver", "args": args}
    (path / "config.json").write_text(json.dumps(config))
    (path / "result.json").write_text(json.dumps({"metrics": {"dice_liver": 0.9}}))
    (run,), problems = find_runs(tmp_path / "runs")
    assert problems == []
    assert (run.task, run.init, run.setting, run.fraction, run.seed) == ("lits", "ct", "linear", 0.5, 1)
    assert run.config["lr"] == 0.01 and run.config["epochs"] == 40          # lifted from args
    assert run.config["class_weights"] == [1.0, 3.0]                         # the top-level value wins
    assert "args" not in run.config and run.declared_metric == "dice_liver"
    assert flat_config({"seed": 2, "args": {"seed": 9, "lr": 1}}) == {"seed": 2, "lr": 1}
    assert flat_config({"seed": 2, "args": "not flags"}) == {"seed": 2, "args": "not flags"}


def test_a_key_only_under_args_still_groups_the_run(tmp_path):
    path = tmp_path / "runs" / "r"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"task": "radnet", "init": "scratch", "setting": "finetune",
                                                  "args": {"fraction": 1.0, "seed": 4}}))
    (run,), problems = find_runs(tmp_path / "runs")
    assert problems == [] and (run.fraction, run.seed) == (1.0, 4)


def test_step_counter_is_read_as_step_under_either_name(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "radnet", "new", 0, curve=[{"epoch": 1, "step": 10, "train_loss": 1.0},
                                               {"epoch": 2, "step": 20, "train_loss": 0.5}])
    write_run(root, "radnet", "old", 0, curve=[{"epoch": 2, "steps": 20, "train_loss": 0.5},
                                               {"epoch": 1, "steps": 10, "train_loss": 1.0}])
    runs, problems = find_runs(root)
    assert problems == []
    for run in runs:
        assert [(row["epoch"], row["step"]) for row in run.curve] == [(1, 10), (2, 20)], run.init
        assert all("steps" not in row for row in run.curve)
    assert curve_row({"epoch": 1, "step": 5, "steps": 7}) == {"epoch": 1, "step": 5, "steps": 7}  # step is kept
