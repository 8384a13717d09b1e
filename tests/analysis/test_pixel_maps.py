"""Pixel maps (Fig. 7): per-pixel overlap of two inits' segmentations, counted by hand, and their overlays."""
import numpy as np
import polars as pl
import pytest

from analysis.errors import AnalysisError
from analysis.pixel_maps import load_masks, pixel_overlap
from analysis.report import ReportOptions, build_report
from tests.analysis.synthetic import write_run


def write_masks(run, keys, pred, target, classes=("background", "liver", "tumor")):
    np.savez_compressed(run / "masks.npz", keys=np.array(keys), pred=np.asarray(pred, np.uint8),
                        target=np.asarray(target, np.uint8), classes=np.array(classes))


def test_pixel_patterns_by_hand(tmp_path):
    target = np.zeros((2, 4, 4), np.uint8)
    target[0, :2, :2] = 1                        # 4 liver pixels on slice a; slice b all background
    a, b = target.copy(), target.copy()
    a[0, 0, 0] = 0                               # A misses one liver pixel ...
    b[0, 0, 0], b[0, 0, 1] = 0, 0                # ... B misses it and one more
    b[1, 3, 3] = 2                               # B calls a background pixel tumor
    for name, pred in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        write_masks(tmp_path / name, ["k-a", "k-b"], pred, target)
    # compared pixels: the 4 true liver pixels + B's false tumor = 5
    # A right on 4 (wrong at [0,0,0]); B right on 2 (wrong at [0,0,0], [0,0,1], [1,3,3])
    cells, units, views = pixel_overlap([load_masks(tmp_path / "a" / "masks.npz"),
                                        load_masks(tmp_path / "b" / "masks.npz")])
    assert units == 5
    got = {c.pattern: (c.observed, c.expected) for c in cells}
    acc_a, acc_b = 4 / 5, 2 / 5
    assert got[(True, True)] == pytest.approx((2 / 5, acc_a * acc_b))
    assert got[(True, False)] == pytest.approx((2 / 5, acc_a * (1 - acc_b)))
    assert got[(False, True)] == pytest.approx((0.0, (1 - acc_a) * acc_b))
    assert got[(False, False)] == pytest.approx((1 / 5, (1 - acc_a) * (1 - acc_b)))
    assert [v.key for v in views] == ["k-a", "k-b"]               # two disagreeing pixels on a, one on b
    assert views[0].only[0].sum() == 1 and views[0].only[0][0, 1] and not views[0].only[1].any()
    assert views[1].only[0][3, 3] and views[1].only[0].sum() == 1


def test_masks_of_other_test_sets_or_other_truths_are_refused(tmp_path):
    t = np.zeros((1, 2, 2), np.uint8)
    for name, key, truth in (("a", "x", t), ("b", "y", t), ("c", "x", t + 1)):
        (tmp_path / name).mkdir()
        write_masks(tmp_path / name, [key], t, truth)
    a, b, c = (load_masks(tmp_path / n / "masks.npz") for n in "abc")
    with pytest.raises(AnalysisError, match="share no test slice"):
        pixel_overlap([a, b])
    with pytest.raises(AnalysisError, match="disagree on the true masks"):
        pixel_overlap([a, c])
    (tmp_path / "a" / "masks.npz").write_bytes(b"not a zip")
    with pytest.raises(AnalysisError, match="cannot be read as masks"):
        load_masks(tmp_path / "a" / "masks.npz")


def test_the_report_draws_pixel_maps_and_writes_the_per_pixel_table(tmp_path):
    root = tmp_path / "runs"
    rng = np.random.default_rng(0)
    target = np.zeros((5, 16, 16), np.uint8)
    target[:, 4:12, 4:12] = 1
    keys = [f"s{i}" for i in range(5)]
    for init in ("ct", "imagenet"):
        for seed in (0, 1):
            pred = target.copy()
            flip = rng.random(target.shape) < 0.1
            pred[flip] = 1 - pred[flip]
            run = write_run(root, "lits", init, seed, metrics={"dice_liver": 0.9}, kind="segmentation",
                            data=str(tmp_path / "no-such-dataset"))
            write_masks(run, keys, pred, target)
    write_run(root, "lits", "scratch", 0, metrics={"dice_liver": 0.5}, kind="segmentation")   # no masks
    report = build_report(root, tmp_path / "report", options=ReportOptions(redundancy_splits=1))
    text = report.index.read_text()
    assert "## Pixel maps (Fig. 7)" in text and "Segmentation runs without masks.npz: `lits/scratch" in text
    (panel,) = report.pixel_maps
    assert panel.names == ["ct", "imagenet"] and panel.model_sets == 2 and len(panel.views) == 4
    table = pl.read_csv(tmp_path / "report" / "pixel_overlap.csv")
    assert table["observed"].sum() == pytest.approx(1.0) and table["expected"].sum() == pytest.approx(1.0)
    for fig in panel.figures:
        assert (tmp_path / "report" / fig).read_bytes()[:4] == b"\x89PNG"
    assert any("overlays drawn without the CT slices" in n for n in report.notes["pixel maps"])
