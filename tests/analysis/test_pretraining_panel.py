"""The report's pretraining figure: training loss per logged step (steps.jsonl) and the kNN curve per epoch."""
import json

import numpy as np
import pytest
from PIL import Image

from analysis.figures import pretraining_plot
from analysis.report_compute import pretraining_panel
from analysis.runs import load_run
from tests.analysis.synthetic import write_run


def _pretrain_run(root, name, steps=None, knn=True):
    curve = [{"epoch": e, "step": 4 * e, "train_loss": 5.0 - e, **({"val_knn_accuracy": 0.2 * e} if knn else {})}
             for e in (1, 2)]
    path = write_run(root, "pretrain", name, 0, setting="pretrain", curve=curve)
    if steps is not None:
        (path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    return load_run(path, root)


def test_the_panel_takes_every_logged_step_and_the_knn_curve(tmp_path):
    steps = [{"step": s, "epoch": 1 + (s - 1) // 4, "loss": 6.0 - 0.5 * s, "lr": 0.1, "images_per_s": 9.0}
             for s in (8, 2, 4, 6)]   # read back sorted by step
    panel = pretraining_panel([_pretrain_run(tmp_path, "ct", steps), _pretrain_run(tmp_path, "old", knn=False)])
    assert panel.loss["pretrain/ct"] == ([2, 4, 6, 8], [5.0, 4.0, 3.0, 2.0])
    assert panel.loss["pretrain/old"] == ([4, 8], [4.0, 3.0])     # no steps.jsonl: the epochs' mean loss
    assert panel.knn == {"pretrain/ct": ([4, 8], [0.2, 0.4])}    # the run without the probe left out


def test_a_broken_steps_line_leaves_the_run_out_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"steps.jsonl line 2: step '4' is not an integer"):
        _pretrain_run(tmp_path, "ct", [{"step": 2, "loss": 1.0}, {"step": "4", "loss": 1.0}])


def test_the_figure_has_two_panels_with_content(tmp_path):
    path = pretraining_plot({"a": ([1, 2, 3], [3.0, 2.0, 1.0])}, {"a": ([3], [0.5])}, tmp_path / "p.png")
    image = np.asarray(Image.open(path).convert("L"))
    assert image.shape[1] > 1.5 * image.shape[0]   # two panels side by side
    assert image.std() > 5
