"""Options `tlx shard` can refuse before it scans anything: nothing is written, and the corrected command
then runs without "not empty, pass --resume"."""
from click.testing import CliRunner

from cli.main import cli
from tests.datakit.conftest import SECRET

ENV = {"TLX_SECRET": SECRET, "TLX_QUIET": "1"}


def _shard(root, out, *extra):
    return CliRunner().invoke(cli, ["shard", "--dicom-root", str(root), "--out", str(out), *extra], env=ENV)


def test_an_exclude_class_no_rule_can_give_is_refused_before_the_scan(cohort, tmp_path):
    root, _ = cohort
    result = _shard(root, tmp_path / "data", "--exclude-class", "thorx")
    assert result.exit_code == 2
    assert "--exclude-class thorx: no series can get that label; the label rules (label_rules.toml) give " in \
        " ".join(result.output.split())
    assert "thorax" in result.output
    assert not (tmp_path / "data").exists()   # no work/ to resume: the corrected command starts afresh


def test_an_output_folder_inside_the_dicom_root_is_refused(cohort, tmp_path):
    root, _ = cohort
    result = _shard(root, root / "shards-out")
    assert result.exit_code == 2 and "is inside --dicom-root" in " ".join(result.output.split())
    assert not (root / "shards-out").exists()
