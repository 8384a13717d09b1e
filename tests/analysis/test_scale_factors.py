"""Scale factors on datasets with known answers: identical slices, independent slices."""
import importlib.util
import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from analysis.errors import AnalysisError
from analysis.mi import PairwiseMI
from analysis.scale_factors import (
    ScaleFactorConfig,
    aggregate,
    effective_slices,
    estimate_scale_factors,
    load_results,
    lower_bound_volume,
    write_results,
)
from cli.main import cli
from tests.analysis.synthetic import write_ct_dataset

SLICES, SIZE = 8, 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """5 volumes of independent noise slices and one volume of one slice repeated."""
    rng = np.random.default_rng(0)
    volumes = {f"noise{i}": rng.integers(-1000, 1000, (SLICES, SIZE, SIZE)).astype(np.int16) for i in range(5)}
    volumes["same"] = np.repeat(rng.integers(-1000, 1000, (1, SIZE, SIZE)).astype(np.int16), SLICES, 0)
    return write_ct_dataset(tmp_path_factory.mktemp("sf") / "data", volumes)


@pytest.fixture(scope="module")
def full(dataset):
    return estimate_scale_factors(dataset, ScaleFactorConfig(seed=3))


def per_volume(result):
    return {r["volume"]: r for r in result["per_volume"]}


def test_effective_slices_by_hand():
    h = np.full(3, 2.0)                      # self-MI of each slice
    base = np.full(3, 0.5)                   # mean MI to a random other volume's slices
    mi = np.array([[2.0, 1.25, 0.5],
                   [1.25, 2.0, 1.7],
                   [0.5, 1.7, 2.0]])
    # slice 1: relative MI to slice 0 = (1.25 - 0.5) / 1.5 = 0.5 -> adds 0.5
    # slice 2: to slice 0: 0 (at the baseline), to slice 1: (1.7 - 0.5) / 1.5 = 0.8 -> adds 0.2
    eff, utility = effective_slices(mi, h, base, "paper-text")
    np.testing.assert_allclose(utility, [1.0, 0.5, 0.2])
    assert eff == pytest.approx(1.7)
    for estimator in ("paper-text", "study-code"):
        identical = effective_slices(np.full((4, 4), 2.0), np.full(4, 2.0), np.full(4, 0.5), estimator)
        independent = effective_slices(np.full((4, 4), 0.5), np.full(4, 2.0), np.full(4, 0.5), estimator)
        assert (identical[0], independent[0]) == (1.0, 4.0)


def test_identical_slices_are_worth_one_slice(full):
    same = per_volume(full)["same"]
    assert same["ub_effective_slices"] == pytest.approx(1.0)
    assert same["s_ub"] == pytest.approx(SLICES)
    assert same["s_lb"] > 3  # gzip's window (32 KiB) spans four 8 KiB slices: repeats compress away


def test_independent_slices_are_worth_about_one_each(full):
    for name, r in per_volume(full).items():
        if name.startswith("noise"):
            assert 1.0 <= r["s_ub"] < 1.1, r
    # S_LB: (the dataset's random sets may include the repeated volume's alike slices, so check it directly)
    rng = np.random.default_rng(1)
    volume, others = (rng.integers(-1000, 1000, (SLICES, SIZE, SIZE)).astype(np.int16) for _ in range(2))
    for compressor in ("gzip", "zstd"):
        c_vol, c_rand, s_lb = lower_bound_volume(volume, others, compressor)
        assert s_lb == pytest.approx(c_rand / c_vol) == pytest.approx(1.0, abs=0.01)


def test_dataset_factor_is_total_slices_over_total_effective_slices(full):
    rows = full["per_volume"]
    kept = [r for r in rows if r["ub_dropped"] is None]
    assert full["s_ub"]["value"] == pytest.approx(sum(r["slices"] for r in kept)
                                                  / sum(r["ub_effective_slices"] for r in kept))
    # S_LB as the study's code summed it: all random bytes over all volume bytes
    assert full["s_lb"]["value"] == pytest.approx(sum(r["lb_random_bytes"] for r in rows)
                                                  / sum(r["lb_volume_bytes"] for r in rows))
    assert full["s_ub"]["ci95"] is None  # every volume was used: no sampling error
    assert (full["volumes_ok"], full["volumes_failed"], full["slices_processed"]) == (6, [], 6 * SLICES)
    # within-volume pairs once each, plus each slice against its one baseline slice (study-code)
    assert full["mi_evaluations"] == 6 * (SLICES * (SLICES - 1) // 2 + SLICES)
    # paper-text: every slice against all slices of one other volume; per-volume S_LB: slices over effective slices
    text = estimate_scale_factors(full["dataset"], ScaleFactorConfig(seed=3, estimator="paper-text",
                                                                    lb_estimator="per-volume"))
    rows = text["per_volume"]
    n = sum(r["slices"] for r in rows)
    assert text["s_ub"]["value"] == pytest.approx(n / sum(r["ub_effective_slices"] for r in rows))
    assert text["s_lb"]["value"] == pytest.approx(n / sum(r["slices"] / r["s_lb"] for r in rows))
    assert text["mi_evaluations"] == 6 * (SLICES * (SLICES - 1) // 2 + SLICES * SLICES)


def test_results_do_not_depend_on_workers_and_follow_the_seed(dataset, full):
    parallel = estimate_scale_factors(dataset, ScaleFactorConfig(seed=3, workers=2))
    assert parallel["per_volume"] == full["per_volume"]
    other_seed = estimate_scale_factors(dataset, ScaleFactorConfig(seed=4, lower=False))
    assert other_seed["s_ub"]["value"] != full["s_ub"]["value"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is an optional accelerator")
@pytest.mark.parametrize("estimator", ["study-code", "paper-text"])
def test_the_gpu_pipeline_gives_the_cpu_results(tmp_path, monkeypatch, estimator):
    """The GPU branch (reader threads prepare, one torch engine finishes) on the CPU build of torch: the smoothed
    histograms (study-code) as G C G^T in torch, the plain ones (paper-text) as sums of C log C."""
    import analysis.scale_factors as sf

    rng = np.random.default_rng(6)
    root = write_ct_dataset(tmp_path / "data", {f"v{i}": rng.integers(-1000, 1000, (4, 16, 16)).astype(np.int16)
                                                for i in range(4)})
    cpu = estimate_scale_factors(root, ScaleFactorConfig(seed=3, compressor="zstd", estimator=estimator))
    real_engine = sf.PairwiseMI
    devices = []
    monkeypatch.setattr(sf, "_resolve_device", lambda device: "cuda")
    monkeypatch.setattr(sf, "PairwiseMI", lambda bins, method, device, **kw: devices.append((method, device, kw))
                        or real_engine(bins, method, "cpu", **kw))
    gpu = estimate_scale_factors(root, ScaleFactorConfig(seed=3, compressor="zstd", workers=3, device="cuda",
                                                         estimator=estimator))
    sigma = 1.0 if estimator == "study-code" else 0.0
    assert devices == [("torch", "cuda", {"sigma": sigma})]  # one engine for all volumes, int8 products by default
    for row, ref in zip(gpu["per_volume"], cpu["per_volume"], strict=True):
        assert row["volume"] == ref["volume"] and row["error"] is None and row["s_lb"] == ref["s_lb"]
        assert row["ub_effective_slices"] == pytest.approx(ref["ub_effective_slices"], abs=1e-9)
    assert gpu["s_ub"]["value"] == pytest.approx(cpu["s_ub"]["value"], abs=1e-9)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is an optional accelerator")
def test_an_int8_product_the_gpu_lacks_is_one_error_before_any_volume_is_read(dataset, monkeypatch):
    import torch

    import analysis.scale_factors as sf

    def unsupported(a, b):
        raise RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmul")

    reads = []
    monkeypatch.setattr(torch, "_int_mm", unsupported)
    monkeypatch.setattr(sf, "_resolve_device", lambda device: "cuda")
    monkeypatch.setattr(sf, "PairwiseMI", lambda bins, method, device, **kw: PairwiseMI(bins, method, "cpu", **kw))
    monkeypatch.setattr(sf, "read_slices", lambda *args: reads.append(args))
    with pytest.raises(AnalysisError, match="MI method 'torch' fails on cpu .*CUBLAS_STATUS_NOT_SUPPORTED.*; "
                                            r"try --method torch-float"):
        estimate_scale_factors(dataset, ScaleFactorConfig(workers=2, device="cuda"))
    assert reads == []


def test_a_sample_of_volumes_gives_a_confidence_interval(dataset):
    result = estimate_scale_factors(dataset, ScaleFactorConfig(volumes=4, baseline_slices=3, compressor="zstd",
                                                                 estimator="paper-text"))
    assert result["volumes_sampled"] == 4 and result["volumes_in_split"] == 6
    lo, hi = result["s_ub"]["ci95"]
    assert lo < result["s_ub"]["value"] < hi
    assert result["s_lb"]["compressor"] == "zstd" and result["s_lb"]["level"] == 3


def test_ratio_estimator_confidence_interval_by_hand():
    # slices n = [10, 10], effective e = [5, 10]: S = 20 / 15 = 4/3; residuals n - S e = [10/3, -10/3]
    # var = (1 - 2/4) / (2 * 1) * (200/9) / 7.5^2 = 0.0987654; half width = 1.95996 * 0.314270 = 0.615958
    out = aggregate([10, 10], [5, 10], population=4)
    assert out["value"] == pytest.approx(4 / 3)
    assert out["ci95"] == pytest.approx([4 / 3 - 0.615958, 4 / 3 + 0.615958], abs=1e-6)
    assert out["slice_weighted_mean"] == pytest.approx(1.5)


def test_a_volume_that_fails_is_reported_not_dropped(tmp_path):
    rng = np.random.default_rng(5)
    volumes = {f"v{i}": rng.integers(-1000, 1000, (4, 16, 16)).astype(np.int16) for i in range(4)}
    root = write_ct_dataset(tmp_path / "data", volumes)
    # corrupt the stored bytes of one slice of v2
    idx = next(p for p in root.rglob("*.idx") if "v2-s0001" in p.read_text())
    line = next(line for line in idx.read_text().splitlines() if "v2-s0001" in line)
    offset, size = (int(x) for x in line.split()[1:3])
    with open(idx.with_suffix(".tar"), "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * size)
    result = estimate_scale_factors(root, ScaleFactorConfig(lower=False, baseline_slices=1,
                                                            estimator="paper-text"))
    failed = {f["volume"]: f for f in result["volumes_failed"]}
    assert "v2" in failed and "DatakitError" in failed["v2"]["error"]       # datakit.read names shard and sample
    assert "sample v2-s0001: member 'hu.zst' (zstd) does not decode" in failed["v2"]["error"]
    assert result["volumes_ok"] + len(failed) == result["volumes_sampled"] == 4
    assert result["slices_processed"] == 4 * result["volumes_ok"]
    assert result["s_ub"]["volumes"] == 3 and result["s_ub"]["ci95"] is not None  # the rest, taken as a sample


def test_analyze_reports_the_volumes_that_failed(tmp_path):
    from analysis.report import build_report

    out = tmp_path / "report"
    out.mkdir()
    (out / "scale_factors.json").write_text(json.dumps({
        "format": "tlx-scale-factors", "version": 1, "s_ub": {"value": 2.5, "ci95": None},
        "volumes_failed": [{"volume": "v2", "slices": 4, "error": "ZstdError: bad"},
                           {"volume": "v7", "slices": 9, "error": "AnalysisError: short read"}]}))
    summary = tmp_path / "published.csv"
    summary.write_text("task,metric,init,mean,std,n,ddof\nlits,dice,a,0.9,0.1,4,1\n")
    report = build_report(None, out, summary=summary)
    assert load_results(out / "scale_factors.json")["ub"].volumes_failed == 2
    assert report.notes["scale factors"] == ["2 volume(s) failed in `tlx scale-factors` and are not in S "
                                             "(their errors: `volumes_failed` in the scale factors file)"]
    assert "**2 volume(s) failed in `tlx scale-factors`" in report.index.read_text()


def test_bad_datasets_are_refused(tmp_path, dataset):
    with pytest.raises(AnalysisError, match="no manifest.json"):
        estimate_scale_factors(tmp_path)
    with pytest.raises(AnalysisError, match="split 'val' of .* holds no slices"):
        estimate_scale_factors(dataset, ScaleFactorConfig(split="val"))
    one = write_ct_dataset(tmp_path / "one", {"v": np.zeros((3, 8, 8), np.int16)})
    with pytest.raises(AnalysisError, match="at least 2 volumes"):
        estimate_scale_factors(one)
    manifest = json.loads((one / "manifest.json").read_text())
    (one / "manifest.json").write_text(json.dumps({**manifest, "format_version": 9}))
    with pytest.raises(AnalysisError, match=r"format_version 9 is unknown to this tlx; it reads 1, 2 \(update tlx\)"):
        estimate_scale_factors(one)
    with pytest.raises(AnalysisError, match="compressor 'bz2' is not known"):
        ScaleFactorConfig(compressor="bz2")
    with pytest.raises(AnalysisError, match="bins must be in 2..4096, got 1"):
        ScaleFactorConfig(bins=1)
    with pytest.raises(AnalysisError, match=r"HI > LO, got \(100, -100\)"):
        ScaleFactorConfig(value_range=(100, -100))


def test_a_damaged_dataset_is_a_one_line_error(tmp_path):
    root = write_ct_dataset(tmp_path / "data", {f"v{i}": np.full((2, 8, 8), i, np.int16) for i in range(2)})
    idx = sorted(root.rglob("*.idx"))[0]
    damage = [(root / "manifest.json", b'{"format": "tlx-sh', "manifest.json cannot be read"),
              (root / "slices.parquet", b"PAR1 cut short", "slices.parquet cannot be read as Parquet"),
              (idx, b"# idx\nhu.zst notanumber 1 x.hu.zst\n", "cannot list its samples")]
    for path, garbage, message in damage:
        before = path.read_bytes()
        path.write_bytes(garbage)
        result = CliRunner().invoke(cli, ["scale-factors", str(root), "--out", str(tmp_path / "o"), "--workers", "1",
                                          "--device", "cpu"])
        assert result.exit_code == 2 and message in result.output and "run `tlx verify`" in result.output, path
        path.write_bytes(before)


def test_cli_writes_json_that_analyze_reads(tmp_path, dataset):
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["scale-factors", str(dataset), "--out", str(out), "--workers", "1",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    factors = load_results(out / "scale_factors.json")
    saved = json.loads((out / "scale_factors.json").read_text())
    assert factors["ub"].value == pytest.approx(saved["s_ub"]["value"]) and factors["ub"].se == 0
    assert factors["lb"].value == pytest.approx(saved["s_lb"]["value"])
    assert (out / "scale_factors_volumes.csv").read_text().count("\n") == 7  # header + 6 volumes
    bad = CliRunner().invoke(cli, ["scale-factors", str(tmp_path), "--out", str(out)])
    assert bad.exit_code == 2 and "no manifest.json" in bad.output


def test_volumes_csv_keeps_a_failure_that_comes_after_the_first_hundred_volumes(tmp_path, full):
    ok = per_volume(full)["noise0"]
    rows = [dict(ok, position=i) for i in range(120)]
    rows.append(dict(ok, position=120, s_lb=None, s_ub=None, ub_effective_slices=None, error="ZstdError: bad"))
    write_results({**full, "per_volume": rows}, tmp_path)
    table = pl.read_csv(tmp_path / "scale_factors_volumes.csv")
    assert table.height == 121 and table["error"].to_list()[-1] == "ZstdError: bad"
    assert table["s_ub"].null_count() == 1


def test_write_results_round_trip(tmp_path, full):
    path = write_results(full, tmp_path)
    assert load_results(path)["ub"].value == pytest.approx(full["s_ub"]["value"])
    path.write_text('{"format": "other"}')
    with pytest.raises(AnalysisError, match="is not a tlx-scale-factors v1 file"):
        load_results(path)


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_ticks_count_every_volume_up_to_the_total(dataset, workers):
    ticks = []
    result = estimate_scale_factors(dataset, ScaleFactorConfig(volumes=4, workers=workers, lower=False),
                                    progress=ticks.append)
    assert [t.done for t in ticks] == [0, 1, 2, 3, 4]  # a start tick, then one per volume, none lost or repeated
    assert {(t.stage, t.total, t.unit) for t in ticks} == {("scale factors", 4, "volumes")}
    assert ticks[-1].done == ticks[-1].total == result["volumes_sampled"] == result["volumes_ok"]
    assert all(t.text == "" for t in ticks)  # no volume failed


def test_progress_names_the_volumes_that_failed(tmp_path):
    rng = np.random.default_rng(5)
    root = write_ct_dataset(tmp_path / "data", {f"v{i}": rng.integers(-1000, 1000, (3, 8, 8)).astype(np.int16)
                                                for i in range(3)})
    (root / "shards" / "train" / "train-000000.tar").write_bytes(b"")  # every slice in it: a short read
    ticks = []
    result = estimate_scale_factors(root, ScaleFactorConfig(lower=False), progress=ticks.append)
    failed = len(result["volumes_failed"])
    assert failed > 0 and ticks[-1].done == ticks[-1].total == 3
    assert ticks[-1].text == f"{failed} failed"


def test_the_cli_draws_the_progress_as_log_lines_and_quiet_silences_them(tmp_path, dataset):
    args = ["scale-factors", str(dataset), "--out", str(tmp_path), "--workers", "1", "--device", "cpu",
            "--bound", "ub", "--volumes", "3"]
    shown = CliRunner().invoke(cli, args, env={"TLX_QUIET": "0"})  # not a terminal: lines as in a job log
    assert shown.exit_code == 0, shown.output
    assert "scale factors  3/3 volumes  100%  elapsed" in shown.output
    quiet = CliRunner().invoke(cli, args, env={"TLX_QUIET": "1"})
    assert quiet.exit_code == 0 and "volumes  100%" not in quiet.output and "S_UB = " in quiet.output
