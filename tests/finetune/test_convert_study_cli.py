"""The study converters from the command line: summaries, and one-line errors with exit code 2."""
import os
import subprocess
import sys

from click.testing import CliRunner

from cli.main import cli
from tests.fixtures.cxr_sources import write_nih
from tests.fixtures.mask_sources import write_montgomery

ENV = {**os.environ, "TLX_QUIET": "1"}


def _tlx(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300)


def test_cxr_and_merge_from_the_command_line(tmp_path):
    root, _ = write_nih(tmp_path / "nih")
    result = CliRunner().invoke(cli, ["convert", "cxr", "--preset", "nih", "--root", str(root), "--out",
                                      str(tmp_path / "a"), "--size", "8", "--workers", "1", "--val", "1"])
    assert result.exit_code == 0, result.output
    assert "multilabel, 15 classes" in " ".join(result.output.split())
    bad = _tlx("convert", "cxr", "--merge", tmp_path / "a", "--out", tmp_path / "m")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "--merge needs at least two datasets; got 1" in bad.stderr and "Traceback" not in bad.stderr
    usage = _tlx("convert", "cxr", "--root", root, "--out", tmp_path / "x")
    assert usage.returncode == 2 and "give --preset and --root" in usage.stderr


def test_image_mask_size_mismatch_is_one_line_and_writes_nothing(tmp_path):
    import numpy as np
    from PIL import Image
    root, _ = write_montgomery(tmp_path / "MontgomerySet", n=4)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "ManualMask" / "leftMask" / "MCUCXR_0002_0.png")
    out = tmp_path / "o"
    bad = _tlx("convert", "image-mask", "--root", root, "--preset", "montgomery", "--out", out, "--workers", "1")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
    assert "mask ManualMask/leftMask/MCUCXR_0002_0.png is 5x5 (width x height)" in bad.stderr
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]
