"""The scale-factor benchmark runs end to end at a tiny size and counts what it times."""
import json

from benchmarks.scale_factors import main


def test_benchmark_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sf.json"
    result = main(["--slices", "4", "--size", "32", "--volumes", "1", "--device", "cpu", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    # 4 slices, study-code: 6 pairs within the volume + each slice against its one baseline slice
    assert result["upper_bound"]["mi_evaluations"] == 6 + 4
    text = main(["--slices", "4", "--size", "32", "--volumes", "1", "--device", "cpu", "--json", str(out),
                 "--estimator", "paper-text"])
    assert text["upper_bound"]["mi_evaluations"] == 6 + 4 * 4     # paper-text: all slices of the baseline volume
    assert result["upper_bound"]["volumes_per_s"] > 0 and result["device"] == "cpu"
    assert "projection to RadNet-12M" in capsys.readouterr().out
