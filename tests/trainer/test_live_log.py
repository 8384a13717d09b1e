"""metrics.csv and TensorBoard mirror steps.jsonl and metrics.jsonl, and are cut back with them on resume."""
import csv

import pytest

from tests.fixtures.optional import need
from trainer.runlog import RunLog


def _csv(run):
    with open(run / "metrics.csv") as f:
        return [(r["source"], r["step"], r["metric"], float(r["value"])) for r in csv.DictReader(f)]


def _log_two_epochs(log):
    log.write_config({"model": "resnet18"})
    log.resume_at(epochs_done=0, step=0)
    for step in (1, 2):
        log.step(step, 4, epoch=1, loss=5.0 - step, lr=0.1 * step, images_per_s=100.0)
    log.epoch({"epoch": 1, "step": 2, "train_loss": 3.5, "val_knn_accuracy": 0.25, "partial": False})
    for step in (3, 4):
        log.step(step, 4, epoch=2, loss=5.0 - step, lr=0.1 * step, images_per_s=100.0)
    log.epoch({"epoch": 2, "step": 4, "train_loss": 1.5, "val_knn_accuracy": 0.5})


def test_metrics_csv_holds_every_number_of_both_jsonl_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TLX_TENSORBOARD", "0")
    _log_two_epochs(RunLog(tmp_path))
    rows = _csv(tmp_path)
    assert len(rows) == 4 * 3 + 2 * 2   # loss, lr, images_per_s per step; train_loss, kNN per epoch (no flags)
    assert ("step", "3", "loss", 2.0) in rows and ("step", "4", "lr", pytest.approx(0.4)) in rows
    assert ("epoch", "4", "val_knn_accuracy", 0.5) in rows
    assert not (tmp_path / "tensorboard").exists()


def test_resume_cuts_metrics_csv_back_to_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TLX_TENSORBOARD", "0")
    _log_two_epochs(RunLog(tmp_path))
    RunLog(tmp_path).resume_at(epochs_done=1, step=2)
    rows = _csv(tmp_path)
    assert {int(s) for _, s, _, _ in rows} == {1, 2}
    assert len(rows) == 2 * 3 + 2


def test_ranks_other_than_0_write_no_live_log(tmp_path):
    _log_two_epochs(RunLog(tmp_path, enabled=False))
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_gets_per_step_and_per_epoch_scalars_and_purges_on_resume(tmp_path, monkeypatch):
    need("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    monkeypatch.delenv("TLX_TENSORBOARD", raising=False)
    _log_two_epochs(RunLog(tmp_path))
    resumed = RunLog(tmp_path)
    resumed.resume_at(epochs_done=1, step=2)
    resumed.step(3, 4, epoch=2, loss=9.0, lr=0.3, images_per_s=100.0)   # the resumed run logs step 3 anew
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("step/loss")]
    assert loss == [(1, 4.0), (2, 3.0), (3, 9.0)]   # the first attempt's step 3 and 4 are purged
    assert [(e.step, e.value) for e in acc.Scalars("epoch/val_knn_accuracy")] == [(2, 0.25)]
