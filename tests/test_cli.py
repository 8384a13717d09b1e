"""`tlx --help` is fast and imports no heavy library; every subcommand has help with an example."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli.main import COMMANDS, cli


def test_help_does_not_import_torch():
    code = ("import sys; from cli.main import cli;\n"
            "try:\n  cli(['--help'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'numpy', 'pyarrow', 'pydicom', 'nvidia.dali') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_with_an_example(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output or "example" in result.output


def test_the_demo_prints_each_command_on_one_line_however_narrow_the_console():
    import io
    import shlex

    from rich.console import Console

    from cli.demo_cmd import print_command

    argv = ["python", "-m", "trainer.finetune", "--task", "radnet", "--data", "demo/data", "--init",
            "demo/runs/pretrain/demo-simclr/checkpoints/last.pt", "--epochs", "3", "--out", "[x] y"]
    buf = io.StringIO()
    print_command(Console(file=buf, width=40, force_terminal=False), argv)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and shlex.split(lines[0][2:]) == argv   # pastes back to the same argv, markup kept


def test_the_demo_runs_only_consecutive_steps_of_one_group_side_by_side():
    from pathlib import Path

    from cli.demo_cmd import Step, batches

    steps = list(enumerate([Step(t, [], Path(t), g) for t, g in
                            [("a", None), ("b", "p"), ("c", "p"), ("d", None), ("e", "r"), ("f", "r"), ("g", "r")]],
                           1))
    assert [[s.title for _, s in b] for b in batches(steps, 2)] == [["a"], ["b", "c"], ["d"], ["e", "f", "g"]]
    assert [len(b) for b in batches(steps, 1)] == [1] * 7   # --jobs 1: every step in turn
