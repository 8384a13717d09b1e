"""The scale factors as the study's code computed them (its S_UB script: mutual_information_2d and the UB2
class; its compressibility script: the CQ class), each pinned against values written out from those
definitions: smoothed-histogram MI with eps 1e-6, MI_max of the first slice, MI_min of the first 101
slices against one random baseline slice each, the baseline volume at or after the volume in a shuffled
order, the slice limit, the volumes it dropped, gzip level 9 and the sums of S_LB; and the slice pairs
behind the utility-against-distance plot (Fig. SF4)."""
import gzip

import numpy as np
import polars as pl
import pytest
from scipy import ndimage

from analysis.dataset import CTDataset, read_slices
from analysis.errors import AnalysisError
from analysis.mi import PairwiseMI, quantize, smoothed_mi, smoothing_matrix
from analysis.scale_factors import (
    NoScale,
    ScaleFactorConfig,
    compressed_size,
    estimate_scale_factors,
    plan_tasks,
    relative_mi_codes,
    upper_bound_codes,
    write_results,
)
from tests.analysis.synthetic import write_ct_dataset


def recipe_mi(x, y, bins=64, sigma=1.0, eps=1e-6):
    """The study's mutual_information_2d(x, y, sigma=1, eps=1e-6), written out (its resize to 256 x 256 aside)."""
    jh = np.histogram2d(x.ravel(), y.ravel(), bins=bins)[0]
    ndimage.gaussian_filter(jh, sigma=sigma, mode="constant", output=jh)
    jh = jh + eps
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
    partners = other[[1, 0, 1]]              # one random baseline slice per slice (the study: randint, with repeats)
    mi = np.array([[recipe_mi(x, y) for y in volume] for x in volume])
    mi_max = recipe_mi(volume[0], volume[0])                            # the first slice's self-MI, once per volume
    mi_min = np.mean([recipe_mi(x, y) for x, y in zip(volume, partners)])
    r = (mi - mi_min) / (mi_max - mi_min)                               # not clipped
    order = [2, 0, 1]                                                   # slices added in the order 2, 0, 1
    u = [1.0, 1.0 - r[0, 2], 1.0 - max(r[1, 2], r[1, 0])]
    codes = quantize(volume[order])
    eff, s_ub = upper_bound_codes(codes, quantize(partners), PairwiseMI(64, sigma=1.0), "study-code", np.array(order))
    assert eff == pytest.approx(sum(u), abs=1e-9) and s_ub == pytest.approx(3 / sum(u), abs=1e-9)
    # slice 1 repeats slice 0, whose self-MI is MI_max: r = 1 and it adds nothing; the third adds its own share
    assert u[2] == pytest.approx(0.0, abs=1e-12) and 0 < u[1] < 1
    # the paper-text estimator normalises each slice by its own entropy and baseline, and clips
    eff_text, _ = upper_bound_codes(codes, quantize(other), PairwiseMI(64), "paper-text")
    assert eff_text != pytest.approx(eff)


def test_only_the_first_101_slices_make_the_baseline():
    rng = np.random.default_rng(7)
    volume = rng.integers(-1000, 1000, (103, 6, 6)).astype(np.int16)
    partners = rng.integers(-1000, 1000, (101, 6, 6)).astype(np.int16)
    engine = PairwiseMI(64, sigma=1.0)
    mi_min = np.mean([recipe_mi(volume[i], partners[i]) for i in range(101)])   # slices 101 and 102 left out
    mi_max = recipe_mi(volume[0], volume[0])
    rel = (recipe_mi(volume[1], volume[0]) - mi_min) / (mi_max - mi_min)
    r = relative_mi_codes(quantize(volume), quantize(partners), engine, "study-code")
    assert r[1, 0] == pytest.approx(rel, abs=1e-9)
    before = engine.evaluations
    relative_mi_codes(quantize(volume), quantize(partners), engine, "study-code")
    assert engine.evaluations - before == 103 * 102 // 2 + 101           # the pairs once, then 101 baseline pairs


def test_study_code_drops_a_volume_without_a_scale():
    codes = quantize(np.zeros((3, 4, 4), np.int16))
    with pytest.raises(NoScale, match=r"MI_max .* <= MI_min"):
        upper_bound_codes(codes, codes, PairwiseMI(64, sigma=1.0), "study-code")
    assert issubclass(NoScale, AnalysisError)


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
    used = [rows[v] for v in ("a", "b", "c") if rows[v]["ub_dropped"] is None]
    assert result["s_ub"]["value"] == pytest.approx(sum(r["slices"] for r in used)
                                                    / sum(r["ub_effective_slices"] for r in used))
    assert (result["s_ub"]["volumes"], result["s_ub"]["volumes_skipped"], result["s_ub"]["max_slices"]) == (
        len(used), 1, 4)
    assert result["s_ub"]["volumes_dropped"] == 3 - len(used)
    assert result["s_ub"]["estimator"] == "study-code" and result["s_ub"]["smoothing_sigma"] == 1.0
    assert result["s_lb"]["volumes"] == 4 and result["volumes_ok"] == 4
    # the study's own limit is 300 slices; paper-text has none; 0 lifts it
    assert ScaleFactorConfig().slice_limit == 300 and ScaleFactorConfig(estimator="paper-text").slice_limit is None
    assert ScaleFactorConfig(max_slices=0).slice_limit is None
    with pytest.raises(AnalysisError, match="estimator 'code' is not known; use one of study-code, paper-text"):
        ScaleFactorConfig(estimator="code")
    with pytest.raises(AnalysisError, match="S_LB estimator 'sum' is not known; use one of study-code, per-volume"):
        ScaleFactorConfig(lb_estimator="sum")
    with pytest.raises(AnalysisError, match="baseline_slices is for the paper-text estimator"):
        ScaleFactorConfig(baseline_slices=3)


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """Volumes of 2, 3, 4, 5 and 1 slices of noise (16 x 16): their slices share little, so utilities sum near n."""
    rng = np.random.default_rng(11)
    counts = {"v2": 2, "v3": 3, "v4": 4, "v5": 5, "v1": 1}
    return write_ct_dataset(tmp_path_factory.mktemp("five") / "data",
                            {k: rng.integers(-1000, 1000, (n, 16, 16)).astype(np.int16) for k, n in counts.items()})


def test_the_baseline_volume_is_at_or_after_the_volume_in_a_shuffled_order(five):
    """The study shuffled its volume ids and gave the k-th the baseline np.random.randint(k, N): a volume at or after
    it in that order, the volume itself included (the last one's is always itself)."""
    ds = CTDataset(five, "train")
    for seed in range(6):
        shuffled = np.random.default_rng([seed, 3]).permutation(len(ds))
        _, make = plan_tasks(ds, ScaleFactorConfig(seed=seed))
        for k, v in enumerate(shuffled):
            task = make(int(v))
            later = {ds.volumes[u] for u in shuffled[k:]}
            assert task.other_volume in later, (seed, k)
            n = len(task.refs)
            assert len(task.other_refs) == min(n, 101) and len(task.random_refs) == n
        assert make(int(shuffled[-1])).other_volume == ds.volumes[shuffled[-1]]


def test_study_code_drops_volumes_as_its_script_did(five):
    result = estimate_scale_factors(five, ScaleFactorConfig(seed=0))
    rows = {r["volume"]: r for r in result["per_volume"]}
    # one slice: effective slices 1, not below n = 1, so the study's `0 < e < n` left it out
    assert rows["v1"]["ub_effective_slices"] == 1.0 and rows["v1"]["s_ub"] is None
    assert "not in (0, 1)" in rows["v1"]["ub_dropped"]
    for name, row in rows.items():
        e, n = row["ub_effective_slices"], row["slices"]
        kept = row["ub_dropped"] is None
        assert kept == (e is not None and 0 < e < n), name
        assert kept == (row["s_ub"] is not None)
    kept = [r for r in rows.values() if r["ub_dropped"] is None]
    assert result["s_ub"]["volumes_dropped"] == 5 - len(kept) and result["s_ub"]["volumes"] == len(kept)
    if kept:
        assert result["s_ub"]["value"] == pytest.approx(sum(r["slices"] for r in kept)
                                                        / sum(r["ub_effective_slices"] for r in kept))
    # the same volumes under paper-text: nothing dropped, every volume in S_UB
    text = estimate_scale_factors(five, ScaleFactorConfig(seed=0, estimator="paper-text", lower=False))
    assert text["s_ub"]["volumes"] == 5 and text["s_ub"]["volumes_dropped"] == 0


def test_study_code_s_lb_is_total_random_bytes_over_total_volume_bytes(five):
    """The study's compressibility script: per volume the whole volume and as many slices drawn with
    random.choice from every slice file (its own included) gzipped at level 9; c_avg = sum of the random
    sizes / sum of the volume sizes."""
    ds = CTDataset(five, "train")
    cfg = ScaleFactorConfig(seed=4, upper=False)
    _, make = plan_tasks(ds, cfg)
    random_bytes = volume_bytes = 0
    for v in range(len(ds)):
        task = make(v)
        volume = read_slices(task.refs, ds.member)
        randoms = read_slices(task.random_refs, ds.member)
        assert len(randoms) == len(volume)
        volume_bytes += len(gzip.compress(volume.tobytes(), compresslevel=9, mtime=0))
        random_bytes += len(gzip.compress(randoms.tobytes(), compresslevel=9, mtime=0))
    result = estimate_scale_factors(five, cfg)
    assert result["s_lb"]["value"] == pytest.approx(random_bytes / volume_bytes, rel=1e-12)
    assert result["s_lb"]["estimator"] == "study-code" and result["s_lb"]["level"] == 9
    rows = result["per_volume"]
    assert sum(r["lb_random_bytes"] for r in rows) == random_bytes
    # drawn with replacement from the whole split: a volume's own slices come up (v5 holds 5 of the 15 slices)
    v5 = ds.volumes.index("v5")
    own = {(s.paths[i], s.offsets[i]) for s in [make(v5).refs] for i in range(5)}
    drawn = [(r.paths[i], r.offsets[i]) for seed in range(5)
             for r in [plan_tasks(ds, ScaleFactorConfig(seed=seed, upper=False))[1](v5).random_refs] for i in range(5)]
    assert any(d in own for d in drawn)
    # tlx's per-volume form: total slices over total n_v / S_LB,v
    per_volume = estimate_scale_factors(five, ScaleFactorConfig(seed=4, upper=False, lb_estimator="per-volume"))
    rows = per_volume["per_volume"]
    assert per_volume["s_lb"]["value"] == pytest.approx(sum(r["slices"] for r in rows)
                                                        / sum(r["slices"] / r["s_lb"] for r in rows))


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
