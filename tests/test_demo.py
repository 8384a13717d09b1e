"""The quickstart's main job (`tlx demo`) runs end to end on the CPU and leaves a complete report."""
import csv
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
# The demo's own budget (900 s, below), not the suite's 300 s per test: the demo is 35 steps, 27 of them training
# runs; on a shared 2-core machine at load 5 its wall time is about twice its CPU time.
@pytest.mark.timeout(900)
def test_demo_runs_end_to_end_resumes_and_pretraining_beats_scratch_under_linear_evaluation(tmp_path):
    """The demo with its own defaults and fixed seeds (the test pins what a user of `tlx demo` sees)."""
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "cli.main", "demo", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "TLX_SECRET"}  # the demo brings its own key
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert all(manifest["splits"][s]["samples"] > 0 for s in ("train", "val", "test"))
    assert json.loads((out / "natural-data" / "manifest.json").read_text())["kind"] == "image-classification"
    sequential = json.loads((out / "runs" / "pretrain" / "natural-then-ct" / "config.json").read_text())
    assert sequential["init_epoch"] == 3 and sequential["epochs"] == 6
    with open(out / "report" / "results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "accuracy"]
    inits = ["ct-simclr", "natural-simclr", "natural-then-ct", "scratch"]
    assert sorted((r["init"], r["setting"], r["n"]) for r in rows) == sorted(
        (init, setting, "3") for init in inits for setting in ("finetune", "linear"))
    linear = {r["init"]: float(r["mean"]) for r in rows if r["setting"] == "linear"}
    for init in inits[:3]:     # the study's question in miniature: every pretrained init above scratch
        assert linear[init] > linear["scratch"], linear
    index = (out / "report" / "index.md").read_text()
    for section in ("## Result tables", "## Pairwise comparisons", "## Scale factors",
                    "### Slice utility against slice distance (Fig. SF4)", "## Convergence", "## Feature reuse",
                    "## Activation similarity", "## Prediction overlap", "## Pixel maps"):
        assert section in index
    assert json.loads((out / "report" / "scale_factors.json").read_text())
    for table in ("slice_utility.csv", "activation_similarity.csv", "feature_reuse.csv"):
        assert (out / "report" / table).is_file(), table
    with open(out / "report" / "activation_similarity.csv") as f:
        activations = list(csv.DictReader(f))
    assert {r["comparison"] for r in activations} == {"init ↔ fine-tuned", "random ↔ random",
                                                      "fine-tuned ↔ fine-tuned"}

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert again.stdout.count("already done") == 35


def test_a_demo_folder_made_with_other_options_is_refused(tmp_path):
    """`tlx demo --patients 40` into a 30-patient demo skipped every step as done and showed the old report."""
    from click.testing import CliRunner

    from cli.main import cli
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"patients": 30, "pretrain_epochs": 3, "finetune_epochs": 5, "seeds": 3}))
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--patients", "40", "--seeds", "4"])
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (f"Error: {out} holds a demo made with --patients 30 (now 40), --seeds 3 "
                                               f"(now 4); rerun with its options to continue it, or pick another --out")
    (out / "demo.json").unlink()
    (out / "cohort").mkdir()
    (out / "cohort" / "cohort.json").write_text("{}")     # a step done by a tlx that kept no demo.json
    result = CliRunner().invoke(cli, ["demo", "--out", str(out)])
    assert result.exit_code == 2 and "holds demo steps but no demo.json saying with which options" in result.output
    assert not (out / "demo.json").exists()
