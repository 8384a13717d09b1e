import io

from tlxcore.progress import Tick, clock, drawn, log_line, silent


def test_log_line_has_done_total_percent_elapsed_and_eta():
    line = log_line(Tick("write", 250, 1000, "slices", "ok"), elapsed=10.0)
    assert line == "write  250/1,000 slices  25%  elapsed 0:00:10  ETA 0:00:30  ok"


def test_log_line_eta_counts_from_where_a_resumed_stage_started():
    # 400 done before this process started; 100 more in 10 s -> 500 left at 10/s
    assert "ETA 0:00:50" in log_line(Tick("train", 500, 1000, "steps"), elapsed=10.0, done_at_start=400)


def test_log_line_without_total_and_finished():
    assert log_line(Tick("scan", 1200, None, "files"), elapsed=3725) == "scan  1,200 files  elapsed 1:02:05"
    assert "ETA" not in log_line(Tick("scan", 5, 5, "files"), elapsed=1)
    assert clock(-3) == "0:00:00"


def test_plain_drawer_throttles_and_always_prints_the_end(monkeypatch):
    monkeypatch.delenv("TLX_QUIET", raising=False)
    out = io.StringIO()
    with drawn(every_s=3600, stream=out) as progress:
        for i in range(1, 101):
            progress(Tick("write", i, 100, "slices"))
        progress.note("done")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("write  1/100") and lines[1].startswith("write  100/100")
    assert lines[2] == "done"


def test_quiet_and_disabled_draw_nothing(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv("TLX_QUIET", "1")
    with drawn(stream=out) as progress:
        progress(Tick("a", 1, 1))
        progress.note("x")
    monkeypatch.setenv("TLX_QUIET", "0")
    with drawn(enabled=False, stream=out) as progress:
        progress(Tick("a", 1, 1))
    assert out.getvalue() == "" and silent(Tick("a", 1, 1)) is None
