"""`tlx sweep`: matrix expansion, deterministic directories, skipping, SLURM script, sequential runs."""
import hashlib
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.fixtures.datasets import make_ct_dataset
from trainer.errors import TrainerError
from trainer.sweep import load_sweep, pending, refuse_differing, run_differences, run_state, slurm_script, state_rows
from trainer.sweep_check import differences, given_flags
from trainer.tasks import get_task

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
    assert cmd[-10:] == ["--workers", "2", "--window", "-200", "300", "--epochs", "5", "--allow-partial-init",
                         "--out", str(tmp_path / "runs")]
    assert load_sweep(_write(tmp_path)).runs == sweep.runs   # deterministic


def _made(run, result=True, **config):
    """A run folder as trainer.finetune leaves it: config.json (here only `config`'s keys: a key config.json
    lacks is not compared), and result.json (complete) or checkpoints/last.pt (started)."""
    (run.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run.run_dir / "config.json").write_text(json.dumps({"task": run.task, "seed": run.seed, **config}))
    (run.run_dir / ("result.json" if result else "checkpoints/last.pt")).write_text("{}")


def test_states_skip_complete_and_resume_started(tmp_path):
    sweep = load_sweep(_write(tmp_path))
    done, started = sweep.runs[0], sweep.runs[1]
    _made(done)
    _made(started, result=False)
    assert (run_state(done), run_state(started), run_state(sweep.runs[2])) == ("complete", "started", "pending")
    todo = pending(sweep.runs)
    assert len(todo) == 16 and done not in todo and started in todo
    fractions, rows = state_rows(sweep.runs)
    assert fractions == ["1.0", "0.01"]
    assert rows[0][:3] == ("radnet", "scratch", "finetune")
    assert rows[0][3]["1.0"] == {"complete": 1, "started": 1, "differs": 0, "pending": 0}


def test_slurm_script_has_one_array_task_per_incomplete_run(tmp_path):
    sweep = load_sweep(_write(tmp_path))
    _made(sweep.runs[0])
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
    (MATRIX.replace('"scratch", "radnet-1.28M"', '"scratch", "imagenet-1k"'),
     r"init 'imagenet-1k' is not in \[inits\]"),
    (MATRIX.replace('settings = ["finetune", "linear"]', 'settings = ["probe"]'),
     r"setting 'probe' is not one of: finetune, linear"),
    (MATRIX.replace("fractions = [1.0, 0.01]", 'fractions = [1.0, "1%"]'),
     r"fractions must be numbers in \(0, 1\], got \[1.0, '1%'\]"),
    (MATRIX.replace("fractions = [1.0, 0.01]", "fractions = [true]"), r"fractions must be numbers in \(0, 1\]"),
])
def test_bad_matrix_files_say_what_is_wrong(tmp_path, text, message):
    with pytest.raises(TrainerError, match=message):
        load_sweep(_write(tmp_path, text))


def test_options_of_a_run_folder_are_compared_with_the_matrix(tmp_path):
    """What config.json records (resolved values, flags_set) against the flags the matrix gives
    (trainer/sweep_check.py)."""
    sweep = load_sweep(_write(tmp_path))
    run = sweep.runs[0]                       # radnet, scratch, finetune, 1.0, seed 0; workers 0, window -200 300
    radnet = get_task("radnet").hyperparameters(1.0)
    same = {"init": "scratch", "init_name": "scratch", "init_checkpoint": None, "fraction": 1.0, "setting": "finetune",
            "window": [-200.0, 300.0], "workers": 3, "epochs": radnet["epochs"], "lr": radnet["lr"],
            "flags_set": ["data", "epochs", "init_name", "task", "window"], "out": "elsewhere", "log_every": 7}
    _made(run, **same)
    assert run_differences(run) == [] and run_state(run) == "complete"   # workers, out, log_every may differ
    _made(run, **{**same, "window": [-100.0, 300.0], "epochs": 3, "flags_set": ["epochs", "image_size", "window"],
                  "image_size": 64, "max_steps": 5})
    assert run_differences(run) == ["--window (the run: [-100.0, 300.0], the matrix: -200 300)",
                                    f"--epochs (the run: 3, the matrix: the task's default {radnet['epochs']})",
                                    "--image-size (the run: 64, the matrix: its default)"]
    assert run_state(run) == "differs" and run not in pending(sweep.runs)
    with pytest.raises(TrainerError, match=r"^1 run folder\(s\) under .*runs hold runs made with other options than "
                                           r"experiments.toml gives them, e.g. "
                                           r"radnet/scratch/finetune/frac-1.0/seed-0: "
                                           r"--window \(the run: \[-100.0, 300.0\], the matrix: -200 300\); --epochs"):
        refuse_differing(sweep)
    (run.run_dir / "config.json").unlink()        # cannot tell: not taken for the run asked for
    assert run_differences(run) == ["no readable config.json, so its options are unknown"]
    # an init checkpoint replaced since the run started; class weights are recorded per class, resolved
    pre = next(r for r in sweep.runs if r.init_name == "radnet-1.28M" and r.fraction == 1.0)
    Path(pre.init).parent.mkdir(parents=True)
    Path(pre.init).write_bytes(b"weights v1")
    digest = hashlib.sha256(b"weights v1").hexdigest()
    _made(pre, init_checkpoint=pre.init, init_sha256=digest, classes=["a", "b"], class_weights=[1.0, 5.0])
    assert run_differences(pre) == []
    assert differences(pre.run_dir, [*pre.flags(), "--class-weights", "b=5,*=1"], "radnet", 1.0, None) == []
    assert differences(pre.run_dir, [*pre.flags(), "--class-weights", "1,4"], "radnet", 1.0, None) == \
        ["--class-weights (the run: [1.0, 5.0], the matrix: 1,4)"]
    Path(pre.init).write_bytes(b"weights v2")
    assert run_differences(pre) == ["--init (its file changed since the run started: another init_sha256)"]
    assert given_flags(["--epochs", "2", "--window", "-1", "1", "--no-compile", "--allow-partial-init"]) == \
        {"epochs": ["2"], "window": ["-1", "1"], "compile": False, "allow_partial_init": True}


def test_run_sequentially_then_everything_is_skipped_until_the_matrix_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # the runs are subprocesses: see conftest.py
    make_ct_dataset(tmp_path / "ct", splits={"train": 12, "val": 6, "test": 6}, num_classes=3)
    text = ('[data]\nradnet = "ct"\n[args]\nmodel = "resnet-tiny"\ndevice = "cpu"\nworkers = 0\n'
            'epochs = 1\nbatch-size = 4\noptimizer = "adamw"\n'
            '[[matrix]]\ntasks = ["radnet"]\ninits = ["scratch"]\nseeds = [0, 1]\n')
    f = _write(tmp_path, text)
    dry = CliRunner().invoke(cli, ["sweep", str(f), "--run", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.count("-m trainer.finetune --task radnet") == 2
    result = CliRunner().invoke(cli, ["sweep", str(f), "--run"])
    assert result.exit_code == 0, result.output
    assert "[1/2] " in result.output and "[2/2] " in result.output
    typed = [line for line in result.output.splitlines() if line.startswith("$ ")]   # each command on one line
    assert len(typed) == 2 and all("-m trainer.finetune --task radnet" in t and "--seed" in t for t in typed)
    res = json.loads((tmp_path / "runs/radnet/scratch/finetune/frac-1.0/seed-0/result.json").read_text())
    assert 0 <= res["metrics"]["accuracy"] <= 1
    again = CliRunner().invoke(cli, ["sweep", str(f), "--run"])
    assert again.exit_code == 0 and "2 runs: 2 complete, 0 started, 0 pending" in again.output
    assert "[1/" not in again.output                                   # nothing run again
    emitted = CliRunner().invoke(cli, ["sweep", str(f), "--emit", "slurm"])
    assert emitted.exit_code == 2 and "every run of experiments.toml is complete" in emitted.output
    # 1-epoch runs were "complete" for a 2-epoch matrix, and skipped: now refused, naming the option
    _write(tmp_path, text.replace("epochs = 1", "epochs = 2"))
    shown = CliRunner().invoke(cli, ["sweep", str(f)])
    assert shown.exit_code == 0 and "2 made with other options than the matrix's" in " ".join(shown.output.split())
    for extra in (["--run"], ["--emit", "slurm"], ["--run", "--dry-run"]):
        refused = CliRunner().invoke(cli, ["sweep", str(f), *extra])
        assert refused.exit_code == 2, refused.output
        assert re.search(r"Error: 2 run folder\(s\) under .* hold runs made with other options than experiments.toml "
                         r"gives them, e.g. radnet/scratch/finetune/frac-1.0/seed-0: --epochs \(the run: 1, the "
                         r"matrix: 2\); give the matrix a new `out`", " ".join(refused.output.split()))


def test_the_documented_example_file_expands(tmp_path):
    example = Path(__file__).parents[2] / "docs" / "experiments.example.toml"
    sweep = load_sweep(example)
    assert len(sweep.runs) == 3 * 4 * 2 * 4 + 3 * 2 * 3 * 4 + 2 * 4 * 2 * 3 * 4
    assert sweep.launcher[:1] == ["torchrun"]


def test_shots_and_folds_expand_into_one_run_each(tmp_path):
    text = MATRIX.replace('''tasks = ["lits"]
inits = ["scratch"]
seeds = [3]''', '''tasks = ["lits"]
inits = ["scratch"]
seeds = [3]
shots = [1, 5]
folds = 3''')
    sweep = load_sweep(_write(tmp_path, text))
    lits = [r for r in sweep.runs if r.task == "lits"]
    assert len(lits) == 2 * 3
    dirs = [r.run_dir.relative_to(tmp_path / "runs").as_posix() for r in lits]
    assert dirs[:3] == [f"lits/scratch/finetune/shots-1/seed-3/fold-{i}-of-3" for i in range(3)]
    flags = lits[4].flags()
    assert flags[flags.index("--shots") + 1] == "5" and "--fraction" not in flags
    assert (flags[flags.index("--folds") + 1], flags[flags.index("--fold") + 1]) == ("3", "1")
    columns, rows = state_rows(sweep.runs)
    assert columns == ["1.0", "0.01", "1-shot", "5-shot"]
    assert rows[-1][3]["5-shot"]["pending"] == 3
    for bad, message in (("folds = 1", r"folds must be an integer >= 2, got 1"),
                         ("shots = [0]", r"shots must be integers >= 1, got \[0\]"),
                         ("shots = [1]\nfractions = [1.0]", r"give fractions or shots, not both")):
        with pytest.raises(TrainerError, match=message):
            load_sweep(_write(tmp_path, MATRIX.replace('seeds = [3]', f'seeds = [3]\n{bad}')))
