"""`tlx show`: a dataset's samples per split and label, and a pretraining run's views, as PNG grids."""
import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from datakit.errors import DatakitError
from datakit.show import show_dataset, to_display
from tests.fixtures.datasets import CLASSES, make_ct_dataset
from trainer.errors import TrainerError
from trainer.show_views import show_views


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("show") / "data", splits={"train": 24, "val": 8, "test": 8})


def _pixels(path):
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32)


def test_one_row_per_split_and_label_with_the_samples_it_names(ds, tmp_path):
    shown = show_dataset(ds, tmp_path / "g.png", per_label=2)
    slices = pl.read_parquet(ds / "slices.parquet")
    cells = slices.group_by("split", "label").len()
    assert len(shown.rows) == len(cells)
    for split, label, keys in shown.rows:
        n = cells.filter((pl.col("split") == split) & (pl.col("label") == label))["len"][0]
        assert len(keys) == min(2, n) and len(set(keys)) == len(keys)
        assert set(slices.filter((pl.col("split") == split) & (pl.col("label") == label))["key"]) >= set(keys)
    image = _pixels(shown.path)
    assert image.shape[0] > 100 * len(shown.rows) and image.std() > 10
    assert show_dataset(ds, tmp_path / "h.png", per_label=2).rows == shown.rows   # seeded: the same samples


def test_keys_labels_and_splits_narrow_the_grid(ds, tmp_path):
    key = pl.read_parquet(ds / "slices.parquet")["key"][5]
    assert [r[2] for r in show_dataset(ds, tmp_path / "k.png", keys=[key]).rows] == [[key]]
    rows = show_dataset(ds, tmp_path / "l.png", splits=["train"], labels=[CLASSES[0]]).rows
    assert [(s, lab) for s, lab, _ in rows] == [("train", CLASSES[0])]


def test_a_hu_window_clips_and_scales():
    hu = np.array([[-2000, -1000], [-300, 1000]], np.int16)
    assert to_display(hu, (-1000, 400)).tolist() == [[0.0, 0.0], [0.5, 1.0]]
    assert to_display(hu, None).tolist() == [[0.0, pytest.approx(1 / 3)], [pytest.approx(1700 / 3000), 1.0]]


@pytest.mark.parametrize("kwargs, message", [
    ({"splits": ["dev"]}, r"--split 'dev' is not one of train, val, test"),
    ({"labels": ["knee"]}, r"--label 'knee' is not a class of .*; its classes: "),
    ({"keys": ["nope-1"]}, r"--key 'nope-1' is not a sample of .* \(keys look like "),
    ({"window": (400, -1000)}, r"--window 400 -1000: LOW must be below HIGH"),
])
def test_bad_options_are_one_line_errors(ds, tmp_path, kwargs, message):
    with pytest.raises(DatakitError, match=message):
        show_dataset(ds, tmp_path / "x.png", **kwargs)
    assert not (tmp_path / "x.png").exists()


def test_a_runs_views_are_drawn_beside_their_slices(ds, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"task": "simclr", "setting": "pretrain", "data": str(ds),
                                                 "image_size": 32, "normalize": "minmax", "blur_p": 0.5, "seed": 3}))
    result = CliRunner().invoke(cli, ["show", str(run), "--out", str(tmp_path / "v.png"), "--samples", "3"])
    assert result.exit_code == 0, result.output
    image = _pixels(tmp_path / "v.png")
    assert image.shape == (3 * 210, 3 * 190) and image.std() > 10   # 3 rows of 3 cells (1.9 x 2.1 in at 100 dpi)


def test_a_finetuning_run_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"setting": "finetune", "data": "x"}))
    with pytest.raises(TrainerError, match=r"is a 'finetune' run; `tlx show` draws the views of pretraining"):
        show_views(tmp_path, tmp_path / "v.png")


def test_the_cli_draws_a_dataset(ds, tmp_path):
    result = CliRunner().invoke(cli, ["show", str(ds), "--out", str(tmp_path / "d.png"), "--split", "val"])
    assert result.exit_code == 0 and "wrote " in result.output and (tmp_path / "d.png").stat().st_size > 1000
