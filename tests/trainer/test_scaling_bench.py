"""benchmarks/scaling on gloo/CPU: both points measured, E(N) = T(N) / (N T(1)) with T = images/s."""
import argparse
import json

import pytest

from benchmarks.scaling import main, table, with_baseline


def test_scaling_benchmark_measures_one_and_two_ranks(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    result = main(["--ranks", "1,2", "--steps", "1", "--warmup", "0", "--repeats", "1", "--image-size", "16",
                   "--global-batch", "4", "--out", str(out)])
    rows = {r["ranks"]: r for r in result["rows"]}
    assert set(rows) == {1, 2}
    for r in rows.values():
        assert r["seconds_per_step"] > 0
        assert r["images_per_s"] == pytest.approx(4 / r["seconds_per_step"])
    t1, t2 = rows[1]["images_per_s"], rows[2]["images_per_s"]
    assert rows[1]["efficiency"] == pytest.approx(1.0)
    assert rows[2]["efficiency"] == pytest.approx(t2 / (2 * t1))
    assert rows[2]["efficiency"] == pytest.approx(rows[1]["seconds_per_step"] / (2 * rows[2]["seconds_per_step"]))
    assert json.loads(out.read_text())["rows"] == result["rows"]
    assert "E(N)" in capsys.readouterr().out


def test_global_batch_must_split_over_ranks(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--ranks", "1,2", "--global-batch", "3", "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    assert "--global-batch 3 is not divisible by 2 ranks" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_torchrun_point_and_the_baseline_merge(tmp_path, monkeypatch):
    baseline = tmp_path / "n1.json"
    baseline.write_text(json.dumps({"rows": [{"ranks": 1, "seconds_per_step": 2.0}]}))
    assert with_baseline({8: 0.5}, str(baseline)) == {1: 2.0, 8: 0.5}
    assert with_baseline({1: 1.5}, str(baseline)) == {1: 1.5}          # a measured T(1) wins
    args = argparse.Namespace(global_batch=64)
    rows = {r["ranks"]: r for r in table(args, {1: 2.0, 8: 0.5})}
    assert rows[8]["images_per_s"] == 128.0 and rows[8]["efficiency"] == pytest.approx(128 / (8 * 32))
    baseline.write_text(json.dumps({"rows": [{"ranks": 4, "seconds_per_step": 2.0}]}))
    with pytest.raises(SystemExit, match="no single-rank row"):
        with_baseline({8: 0.5}, str(baseline))
    # under torchrun (WORLD_SIZE set) the script measures that one point
    for k, v in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    result = main(["--steps", "1", "--warmup", "0", "--image-size", "16", "--global-batch", "4",
                   "--out", str(tmp_path / "n.json")])
    assert [r["ranks"] for r in result["rows"]] == [1] and result["rows"][0]["efficiency"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "n.json").read_text())["rows"] == result["rows"]
