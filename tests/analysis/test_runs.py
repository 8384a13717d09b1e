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


def test_an_empty_or_wrong_folder_is_refused(tmp_path):
    """`tlx analyze` on a folder without runs exited 0 with an empty report."""
    import pytest
    from click.testing import CliRunner

    from analysis.errors import AnalysisError
    from cli.main import cli
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match=rf"^no runs found under {tmp_path / 'empty'}: no config.json below it"):
        find_runs(tmp_path / "empty")
    bad = tmp_path / "bad" / "a"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text('{"task": "radnet"}')
    with pytest.raises(AnalysisError, match=r"^no runs found under .*bad: 1 config.json, none usable \(a: left out: "
                                            r"config.json lacks 'init'"):
        find_runs(tmp_path / "bad")
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path / "empty"), "--out", str(tmp_path / "report")])
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (f"Error: no runs found under {tmp_path / 'empty'}: no config.json below "
                                               f"it (every run folder holds one: docs/run-format.md)")
    assert not (tmp_path / "report" / "index.md").exists()


def test_runs_of_one_cell_with_different_configs_are_shown_apart_never_averaged(tmp_path):
    """Old 1e-3 runs and new 2e-3 runs of one task/init/setting/fraction were averaged into one cell. Now each
    config is its own init; seeds, where and how a run ran, and keys only some runs hold do not split a cell."""
    from analysis.report import compute_report
    from analysis.report_markdown import render_index
    from analysis.results import results_from_runs
    root = tmp_path / "runs"
    for seed, lr, acc, extra in ((0, 1e-3, 0.80, {"workers": 8, "device": "cuda", "world_size": 8}),
                                 (1, 1e-3, 0.82, {"workers": 2, "tool_version": "0.9", "out": "elsewhere"}),
                                 (2, 2e-3, 0.60, {}), (3, 2e-3, 0.62, {"data_kind": "ct-slices"})):
        write_run(root, "radnet", "scratch", seed, metrics={"accuracy": acc}, lr=lr, epochs=2, **extra)
    write_run(root / "again", "radnet", "scratch", 0, metrics={"accuracy": 0.5}, lr=2e-3, epochs=2)  # seed 0 twice
    write_run(root, "radnet", "imagenet", 0, metrics={"accuracy": 0.7}, lr=1e-3, epochs=2)
    write_run(root, "radnet", "imagenet", 1, metrics={"accuracy": 0.9}, lr=1e-3, epochs=2, max_steps=None)
    runs, problems = find_runs(root)
    assert problems == []
    assert sorted((r.init, r.seed) for r in runs) == [
        ("imagenet", 0), ("imagenet", 1), ("scratch [lr=0.001]", 0), ("scratch [lr=0.001]", 1),
        ("scratch [lr=0.002]", 0), ("scratch [lr=0.002]", 2), ("scratch [lr=0.002]", 3)]
    rows = {(r.init, r.summary.n): round(r.summary.mean, 6) for r in results_from_runs(runs)}
    assert rows == {("imagenet", 2): 0.8, ("scratch [lr=0.001]", 2): 0.81, ("scratch [lr=0.002]", 3): 0.573333}
    report = compute_report(root, tmp_path / "report")
    assert report.variants == ["radnet / finetune / 100% / scratch: 5 runs of 2 configs that differ in lr; shown "
                               "apart as `scratch [lr=0.001]` (2 runs), `scratch [lr=0.002]` (3 runs)"]
    index = render_index(report)
    assert "**Runs of different configs in one table cell:**" in index and f"- {report.variants[0]}" in index
    assert index.index("Runs of different configs") < index.index("## Runs")   # at the top, before any table


def test_variant_labels_name_what_differs_or_number_the_configs(tmp_path):
    root = tmp_path / "runs"
    for seed, sha in ((0, "a" * 64), (1, "a" * 63 + "b")):
        write_run(root, "radnet", "radnet-1.28M", seed, metrics={"accuracy": 0.5}, init_sha256=sha, epochs=1)
    runs, _ = find_runs(root)
    assert [r.init for r in runs] == ["radnet-1.28M [config 1]", "radnet-1.28M [config 2]"]   # cut values collide
    write_run(root, "radnet", "radnet-1.28M", 0, metrics={"accuracy": 0.5}, init_sha256="c" * 64, epochs=1)
    write_run(root, "radnet", "radnet-1.28M", 1, metrics={"accuracy": 0.5}, init_sha256="d" * 64, epochs=2)
    runs, _ = find_runs(root)
    assert [r.init for r in runs] == ["radnet-1.28M [epochs=1, init_sha256=ccccccccccccccccccc…]",
                                      "radnet-1.28M [epochs=2, init_sha256=ddddddddddddddddddd…]"]
