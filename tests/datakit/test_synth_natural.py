"""`tlx synth --kind natural`: deterministic JPEG class folders that `tlx convert class-folder` takes."""
import hashlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from datakit.errors import DatakitError
from datakit.read import open_dataset
from datakit.synth.natural import CLASSES, natural_image, synth_natural


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.jpg"))}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a, _, _ = (synth_natural(tmp_path / n, per_class=3, size=32, seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert a["files"] == 30 and a["classes"] == list(CLASSES)
    da, db, dc = (_digest(tmp_path / n) for n in "abc")
    assert len(da) == 30 and da == db
    assert set(da) == set(dc) and all(da[k] != dc[k] for k in da)
    im = Image.open(tmp_path / "a" / "disc" / "disc-0000.jpg")
    assert im.mode == "RGB" and im.size == (32, 32)


def test_an_image_is_a_function_of_seed_class_and_index():
    a = natural_image("star", 5, 32, 0)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3) and a.std() > 10  # not flat
    assert np.array_equal(a, natural_image("star", 5, 32, 0))
    assert not np.array_equal(a, natural_image("star", 6, 32, 0))
    assert not np.array_equal(a, natural_image("disc", 5, 32, 0))


def test_convert_class_folder_makes_a_jpg_cls_dataset(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["synth", "--kind", "natural", "--out", str(tmp_path / "nat"), "--per-class", "10",
                            "--matrix", "32"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["convert", "class-folder", "--root", str(tmp_path / "nat"), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    ds = open_dataset(tmp_path / "ds")
    assert ds.classes == sorted(CLASSES)
    ext, spec = ds.member("image")
    assert (ext, spec.codec) == ("jpg", "jpeg")
    assert sum(ds.num_samples(s) for s in ("train", "val", "test")) == 100


def test_bad_input_is_refused(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(DatakitError, match="is not empty"):
        synth_natural(tmp_path / "full", per_class=1)
    with pytest.raises(DatakitError, match="need at least 1 image per class and 16 px"):
        synth_natural(tmp_path / "new", per_class=0)
    r = CliRunner().invoke(cli, ["synth", "--kind", "natural", "--out", str(tmp_path / "full")])
    assert r.exit_code == 2 and "is not empty" in r.output
