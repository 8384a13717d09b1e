"""Shared fixtures of the write-side tests: one synthetic cohort and one dataset made from it
by `tlx shard`, built once per session (tiny 32x32 slices) and only read by the tests."""
import json

import pytest
from click.testing import CliRunner

from tests.datakit.write_helpers import PLAN_ARGS, SECRET, WRITE_ARGS


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """4 patients (2 train, 1 val, 1 test with the fractions above), every kind of mess."""
    from datakit.synth.make_cohort import GROUND_TRUTH, synth_cohort

    out = tmp_path_factory.mktemp("write-cohort") / "cohort"
    synth_cohort(out, patients=4, seed=0, matrix=32, workers=2)
    return out, json.loads((out / GROUND_TRUTH).read_text())


@pytest.fixture(scope="session")
def sharded(cohort, tmp_path_factory):
    """(dataset folder, captured CLI output) of `tlx shard` on the cohort."""
    from cli.main import cli

    root, _ = cohort
    out = tmp_path_factory.mktemp("write-dataset") / "data"
    result = CliRunner().invoke(cli, ["shard", "--dicom-root", str(root), "--out", str(out), *PLAN_ARGS, *WRITE_ARGS],
                                env={"TLX_SECRET": SECRET, "TLX_QUIET": "1"})
    assert result.exit_code == 0, result.output
    return out, result.output
