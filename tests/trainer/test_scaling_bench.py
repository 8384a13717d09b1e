"""benchmarks/scaling on gloo/CPU: both points measured, E(N) = T(N) / (N T(1)) with T = images/s."""
import json

import pytest

from benchmarks.scaling import main


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
