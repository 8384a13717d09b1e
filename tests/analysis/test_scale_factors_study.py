"""The scale factors as the study's code computed them: smoothed-histogram S_UB, gzip level 9, the slice limit,
and the slice pairs behind the utility-against-distance plot (Fig. SF4)."""
import gzip

import numpy as np
import polars as pl
import pytest
from scipy import ndimage

from analysis.errors import AnalysisError
from analysis.mi import PairwiseMI, quantize, smoothed_mi, smoothing_matrix
from analysis.scale_factors import (ScaleFactorConfig, compressed_size, estimate_scale_factors, upper_bound_codes,
                                    write_results)
from tests.analysis.synthetic import write_ct_dataset

EPS = np.finfo(float).eps


def recipe_mi(x, y, bins=64, sigma=1.0):
    """The smoothed-histogram MI recipe the study's code used (mutual_information_2d), written out."""
    jh = np.histogram2d(x.ravel(), y.ravel(), bins=bins)[0]
    ndimage.gaussian_filter(jh, sigma=sigma, mode="constant", output=jh)
    jh = jh + EPS
    jh = jh / np.sum(jh)
    s1 = np.sum(jh, axis=0).reshape((-1, jh.shape[0]))
    s2 = np.sum(jh, axis=1).reshape((jh.shape[1], -1))
    return np.sum(jh * np.log(jh)) - np.sum(s1 * np.log(s1)) - np.sum(s2 * np.log(s2))


def test_the_smoothing_is_scipys_gaussian_filter():
    counts = np.random.default_rng(0).integers(0, 50, (64, 64)).astype(np.float64)
    G = smoothing_matrix(64, 1.0)
    assert np.allclose(G @ counts @ G.T, ndimage.gaussian_filter(counts, 1.0, mode="constant"), atol=1e-12)
    G2 = smoothing_matrix(16, 2.5)
    assert np.allclose(G2 @ counts[:16, :16] @ G2.T, ndimage.gaussian_filter(counts[:16, :16], 2.5, mode="constant"))


@pytest.mark.parametrize("method", ["bincount", "onehot", "torch-float"])
def test_smoothed_mi_of_every_method_is_the_recipes(method):
    if method == "torch-float":
        pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    slices = rng.integers(-500, 500, (3, 12, 12)).astype(np.int16)
    slices[1] = slices[0] // 2 + rng.integers(-20, 20, (12, 12))        # a slice much like the first
    codes = quantize(slices)
    engine = PairwiseMI(64, method, sigma=1.0)
    within = engine.within(codes)
    for i in range(3):
        for j in range(3):
            assert within[i, j] == pytest.approx(recipe_mi(slices[i], slices[j]), abs=1e-10)
    between = engine.between(codes[:2], codes[1:])
    assert between[0, 1] == pytest.approx(recipe_mi(slices[0], slices[2]), abs=1e-10)
    assert within[0, 0] < -np.sum((p := np.bincount(codes[0]) / 144)[p > 0] * np.log(p[p > 0]))  # below entropy
    assert smoothed_mi(np.eye(4) * 5, smoothing_matrix(4, 1.0)) > 0


def test_study_code_s_ub_of_a_three_slice_toy_volume_by_hand():
    rng = np.random.default_rng(2)
    a = rng.integers(-1000, 1000, (8, 8)).astype(np.int16)
    volume = np.stack([a, a, rng.integers(-1000, 1000, (8, 8)).astype(np.int16)])   # slices 0 and 1 identical
    other = rng.integers(-1000, 1000, (2, 8, 8)).astype(np.int16)                    # the baseline volume
    mi = np.array([[recipe_mi(x, y) for y in volume] for x in volume])
    mi_max = np.mean(np.diag(mi))                                       # once per volume
    mi_min = np.mean([recipe_mi(x, y) for x in volume for y in other])
    r = (mi - mi_min) / (mi_max - mi_min)                               # not clipped
    u = [1.0, 1.0 - r[1, 0], 1.0 - max(r[2, 0], r[2, 1])]               # slices added in order 0, 1, 2
    eff, s_ub = upper_bound_codes(quantize(volume), quantize(other), PairwiseMI(64, sigma=1.0), "study-code")
    assert eff == pytest.approx(sum(u), abs=1e-9) and s_ub == pytest.approx(3 / sum(u), abs=1e-9)
    # slice 1 repeats slice 0, whose self-MI is above the volume's mean MI_max: r > 1, and with no clipping its
    # utility is negative (the paper's text, per slice and clipped, would give exactly 0)
    assert mi[0, 0] > mi_max and u[1] < 0
    # the paper-text estimator normalises each slice by its own entropy and baseline, and clips
    eff_text, _ = upper_bound_codes(quantize(volume), quantize(other), PairwiseMI(64), "paper-text")
    assert eff_text != pytest.approx(eff)


def test_study_code_refuses_a_volume_without_a_scale():
    codes = quantize(np.zeros((3, 4, 4), np.int16))
    with pytest.raises(AnalysisError, match=r"MI_max .* <= MI_min"):
        upper_bound_codes(codes, codes, PairwiseMI(64, sigma=1.0), "study-code")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two 3-slice volumes, one 5-slice volume of one repeated slice, one 4-slice noise volume."""
    rng = np.random.default_rng(3)
    volumes = {"a": rng.integers(-1000, 1000, (3, 16, 16)), "b": rng.integers(-1000, 1000, (3, 16, 16)),
               "long": np.repeat(rng.integers(-1000, 1000, (1, 16, 16)), 5, 0),
               "c": rng.integers(-1000, 1000, (4, 16, 16))}
    return write_ct_dataset(tmp_path_factory.mktemp("study") / "data",
                            {k: v.astype(np.int16) for k, v in volumes.items()})


def test_volumes_over_the_slice_limit_are_skipped_for_s_ub_only(mixed):
    result = estimate_scale_factors(mixed, ScaleFactorConfig(max_slices=4, seed=1))
    rows = {r["volume"]: r for r in result["per_volume"]}
    assert rows["long"]["ub_skipped"] and rows["long"]["s_ub"] is None and rows["long"]["s_lb"] > 1
    assert not any(rows[v]["ub_skipped"] for v in ("a", "b", "c"))
    used = [rows[v] for v in ("a", "b", "c")]
    assert result["s_ub"]["value"] == pytest.approx(10 / sum(r["ub_effective_slices"] for r in used))
    assert (result["s_ub"]["volumes"], result["s_ub"]["volumes_skipped"], result["s_ub"]["max_slices"]) == (3, 1, 4)
    assert result["s_ub"]["estimator"] == "study-code" and result["s_ub"]["smoothing_sigma"] == 1.0
    assert result["s_lb"]["volumes"] == 4 and result["volumes_ok"] == 4
    # the study's own limit is 300 slices; paper-text has none; 0 lifts it
    assert ScaleFactorConfig().slice_limit == 300 and ScaleFactorConfig(estimator="paper-text").slice_limit is None
    assert ScaleFactorConfig(max_slices=0).slice_limit is None
    with pytest.raises(AnalysisError, match="estimator 'code' is not known; use one of study-code, paper-text"):
        ScaleFactorConfig(estimator="code")


def test_s_lb_uses_gzip_at_level_9_by_default():
    data = np.random.default_rng(4).integers(-3, 3, 50_000).astype(np.int16).tobytes()
    assert compressed_size(data, "gzip") == len(gzip.compress(data, mtime=0))    # Python's default: 9
    assert compressed_size(data, "gzip") != compressed_size(data, "gzip", level=6)


def test_dump_pairs_writes_every_ordered_pair_with_its_distance_and_utility(tmp_path, mixed):
    result = estimate_scale_factors(mixed, ScaleFactorConfig(estimator="paper-text", dump_pairs=True, lower=False))
    path = write_results(result, tmp_path)
    assert '"pairs_file": "scale_factors_pairs.parquet"' in path.read_text()
    pairs = pl.read_parquet(tmp_path / "scale_factors_pairs.parquet")
    counts = dict(pairs.group_by("volume").len().iter_rows())
    assert counts == {"a": 6, "b": 6, "long": 20, "c": 12}            # n (n - 1) ordered pairs
    assert (pairs["distance"] == (pairs["i"] - pairs["j"]).abs()).all() and (pairs["distance"] > 0).all()
    long = pairs.filter(pl.col("volume") == "long")["utility"]
    assert long.max() == pytest.approx(0.0, abs=1e-6)                  # repeated slices: nothing new
    # the utilities of a volume, taken in the order the slices were added, give its effective slices
    rows = {r["volume"]: r for r in result["per_volume"]}
    order = np.random.default_rng([0, 2, 1]).permutation(3)   # volume "b" is position 1 of a, b, c, long: its stream
    table = {(i, j): u for i, j, u in pairs.filter(pl.col("volume") == "b").select("i", "j", "utility").iter_rows()}
    eff = 1 + sum(min(table[(order[k], order[m])] for m in range(k)) for k in range(1, 3))
    assert rows["b"]["ub_effective_slices"] == pytest.approx(eff, abs=1e-6)
    # a run without --dump-pairs removes an older dump instead of leaving it to be read as its own
    write_results(estimate_scale_factors(mixed, ScaleFactorConfig(lower=False)), tmp_path)
    assert not (tmp_path / "scale_factors_pairs.parquet").exists()


def test_the_report_plots_utility_against_distance_from_the_pairs_file(tmp_path):
    from analysis.report import ReportOptions, build_report
    from tests.analysis.synthetic import write_run

    out = tmp_path / "report"
    out.mkdir()
    (out / "scale_factors.json").write_text(
        '{"format": "tlx-scale-factors", "version": 1, "pairs_file": "scale_factors_pairs.parquet", '
        '"s_lb": {"value": 1.2, "ci95": null, "compressor": "gzip", "level": 9}, '
        '"s_ub": {"value": 3.0, "ci95": null, "estimator": "study-code", "volumes_skipped": 2, "max_slices": 300}}')
    pl.DataFrame({"volume": ["v", "v", "w"], "i": [0, 1, 5], "j": [1, 0, 7], "distance": [1, 1, 2],
                  "utility": [0.2, 0.4, 0.9]}).write_parquet(out / "scale_factors_pairs.parquet")
    write_run(tmp_path / "runs", "radnet", "scratch", 0, metrics={"accuracy": 0.5})
    report = build_report(tmp_path / "runs", out, options=ReportOptions(redundancy_splits=1))
    rows = pl.read_csv(out / "slice_utility.csv").to_dicts()
    assert [(r["distance"], r["pairs"]) for r in rows] == [(1, 2), (2, 1)]
    assert rows[0]["mean"] == pytest.approx(0.3) and rows[0]["median"] == pytest.approx(0.3)
    assert rows[0]["q10"] == pytest.approx(0.22) and rows[1]["q90"] == pytest.approx(0.9)
    text = report.index.read_text()
    assert "3 ordered pairs of 2 volume(s)" in text and (out / report.slice_utility.figure).is_file()
    assert "| S_UB | 3 | — | estimator study-code, 2 volume(s) over 300 slices skipped |" in text
    assert "| S_LB | 1.2 | — | gzip level 9 |" in text
    (out / "scale_factors_pairs.parquet").unlink()
    report = build_report(tmp_path / "runs", out, options=ReportOptions(redundancy_splits=1))
    assert report.slice_utility is None and "cannot be read as Parquet" in report.notes["slice utility"][0]
