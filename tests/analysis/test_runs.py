"""find_runs: a run that cannot be used is left out with its reason, never a traceback."""
from analysis.runs import find_runs
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
