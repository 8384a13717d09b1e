"""`tlx sweep`: matrix expansion, deterministic directories, skipping, SLURM script, sequential runs."""
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from trainer.errors import TrainerError
from trainer.sweep import load_sweep, pending, run_state, slurm_script, state_rows
from tests.fixtures.datasets import make_ct_dataset

MATRIX = """
out = "runs"
[data]
radnet = "data/ct"
lits = "/abs/lits"
[inits]
"radnet-1.28M" = "pre/last.pt"
[args]
workers = 0
window = [-200, 300]
[[matrix]]
tasks = ["radnet"]
inits = ["scratch", "radnet-1.28M"]
settings = ["finetune", "linear"]
fractions = [1.0, 0.01]
seeds = [0, 1]
[[matrix]]
tasks = ["lits"]
inits = ["scratch"]
seeds = [3]
args = { epochs = 5, allow_partial_init = true, workers = 2 }
[slurm]
partition = "gpu"
"""


def _write(tmp_path, text=MATRIX):
    f = tmp_path / "experiments.toml"
    f.write_text(text)
    return f


def test_expansion_names_and_flags(tmp_path):
    sweep = load_sweep(_write(tmp_path))
    assert len(sweep.runs) == 2 * 2 * 2 * 2 + 1
    dirs = [r.run_dir.relative_to(tmp_path / "runs").as_posix() for r in sweep.runs]
    assert dirs[:3] == ["radnet/scratch/finetune/frac-1.0/seed-0", "radnet/scratch/finetune/frac-1.0/seed-1",
                        "radnet/scratch/finetune/frac-0.01/seed-0"]
    assert dirs[-1] == "lits/scratch/finetune/frac-1.0/seed-3"
    assert len(set(dirs)) == len(dirs)
    pre = next(r for r in sweep.runs if r.init_name == "radnet-1.28M")
    assert pre.init == str(tmp_path / "pre" / "last.pt") and pre.data == str(tmp_path / "data" / "ct")
    cmd = sweep.command(sweep.runs[-1])
    assert cmd[cmd.index("--task") + 1] == "lits" and cmd[cmd.index("--data") + 1] == "/abs/lits"
    # [args] then the block's own args, which win (workers 2 over 0); bools become bare flags
    assert cmd[-8:] == ["--workers", "2", "--window", "-200", "300", "--epochs", "5", "--allow-partial-init"]
    assert load_sweep(_write(tmp_path)).runs == sweep.runs   # deterministic


def test_states_skip_complete_and_resume_started(tmp_path):
    sweep = load_sweep(_write(tmp_path))
    done, started = sweep.runs[0], sweep.runs[1]
    (done.run_dir).mkdir(parents=True)
    (done.run_dir / "result.json").write_text("{}")
    (started.run_dir / "checkpoints").mkdir(parents=True)
    (started.run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    assert (run_state(done), run_state(started), run_state(sweep.runs[2])) == ("complete", "started", "pending")
    todo = pending(sweep.runs)
    assert len(todo) == 16 and done not in todo and started in todo
    fractions, rows = state_rows(sweep.runs)
    assert fractions == ["1.0", "0.01"]
    assert rows[0][:3] == ("radnet", "scratch", "finetune")
    assert rows[0][3]["1.0"] == {"complete": 1, "started": 1, "pending": 0}


def test_slurm_script_has_one_array_task_per_incomplete_run(tmp_path):
    sweep = load_sweep(_write(tmp_path))
    (sweep.runs[0].run_dir).mkdir(parents=True)
    (sweep.runs[0].run_dir / "result.json").write_text("{}")
    script = slurm_script(sweep, pending(sweep.runs))
    assert script.startswith("#!/bin/bash\n")
    assert "#SBATCH --array=0-15\n" in script and "#SBATCH --partition=gpu\n" in script
    cases = [l for l in script.splitlines() if re.match(r"\s+\d+\) ", l)]
    assert len(cases) == 16 and cases[0].strip().startswith("0) ") and cases[-1].strip().startswith("15) ")
    assert "seed-" not in script and "--seed 1 " in cases[0] and "--fraction 1.0 " in cases[0]


def test_emit_slurm_creates_the_log_folder_before_submission(tmp_path):
    # SLURM does not create the folder of #SBATCH --output: an array task whose log folder is missing fails
    # before the script (and its mkdir) runs
    result = CliRunner().invoke(cli, ["sweep", str(_write(tmp_path)), "--emit", "slurm"])
    assert result.exit_code == 0, result.output
    assert f"#SBATCH --output={tmp_path / 'runs'}/slurm-%A_%a.out\n" in result.stdout
    assert (tmp_path / "runs").is_dir()


@pytest.mark.parametrize("text,message", [
    (MATRIX.replace('out = "runs"', 'out = "runs"\nbogus = 1'), r"unknown keys \['bogus'\]"),
    (MATRIX.replace("workers = 0", "seed = 4"), r"'seed' is set by the matrix itself"),
    (MATRIX.replace('lits = "/abs/lits"', ""), r"task 'lits' has no dataset in \[data\] \(it has: radnet\)"),
    (MATRIX.replace('"scratch", "radnet-1.28M"', '"scratch", "imagenet-1k"'), r"init 'imagenet-1k' is not in \[inits\]"),
    (MATRIX.replace('settings = ["finetune", "linear"]', 'settings = ["probe"]'),
     r"setting 'probe' is not one of: finetune, linear"),
    (MATRIX.replace("fractions = [1.0, 0.01]", 'fractions = [1.0, "1%"]'),
     r"fractions must be numbers in \(0, 1\], got \[1.0, '1%'\]"),
    (MATRIX.replace("fractions = [1.0, 0.01]", "fractions = [true]"), r"fractions must be numbers in \(0, 1\]"),
])
def test_bad_matrix_files_say_what_is_wrong(tmp_path, text, message):
    with pytest.raises(TrainerError, match=message):
        load_sweep(_write(tmp_path, text))


def test_run_sequentially_then_everything_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # the runs are subprocesses: see conftest.py
    make_ct_dataset(tmp_path / "ct", splits={"train": 12, "val": 6, "test": 6}, num_classes=3)
    f = _write(tmp_path, '[data]\nradnet = "ct"\n[args]\nmodel = "resnet-tiny"\ndevice = "cpu"\nworkers = 0\n'
                         'epochs = 1\nbatch-size = 4\noptimizer = "adamw"\n'
                         '[[matrix]]\ntasks = ["radnet"]\ninits = ["scratch"]\nseeds = [0, 1]\n')
    dry = CliRunner().invoke(cli, ["sweep", str(f), "--run", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.count("-m trainer.finetune --task radnet") == 2
    done = tmp_path / "runs/radnet/scratch/finetune/frac-1.0/seed-1"
    done.mkdir(parents=True)
    (done / "result.json").write_text('{"metrics": {"accuracy": 0.5}}')     # complete already: skipped
    result = CliRunner().invoke(cli, ["sweep", str(f), "--run"])
    assert result.exit_code == 0, result.output
    assert "[1/1] " in result.output and "seed-0" in result.output and "seed-1" not in result.output
    res = json.loads((tmp_path / "runs/radnet/scratch/finetune/frac-1.0/seed-0/result.json").read_text())
    assert 0 <= res["metrics"]["accuracy"] <= 1
    again = CliRunner().invoke(cli, ["sweep", str(f), "--run"])
    assert again.exit_code == 0 and "2 runs: 2 complete, 0 started, 0 pending" in again.output
    emitted = CliRunner().invoke(cli, ["sweep", str(f), "--emit", "slurm"])
    assert emitted.exit_code == 2 and "every run of experiments.toml is complete" in emitted.output


def test_the_documented_example_file_expands(tmp_path):
    example = Path(__file__).parents[2] / "docs" / "experiments.example.toml"
    sweep = load_sweep(example)
    assert len(sweep.runs) == 3 * 4 * 2 * 4 + 3 * 2 * 3 * 4 + 2 * 4 * 2 * 3 * 4
    assert sweep.launcher[:1] == ["torchrun"]
