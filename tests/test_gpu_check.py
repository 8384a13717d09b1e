"""The prepared GPU check (benchmarks.gpu_check) and its wheels (scripts/gpu_wheels.sh), on the CPU.

The dry run runs every step's code at toy sizes, so the script cannot rot between the rare GPU sessions:
every step must finish clean, every check with a verdict must pass, and every figure only a GPU can give
must be recorded as open with the reason. The step runner's budget, the wheel parts and their install are
tested on their own, offline (the wheels are made here).
"""
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from benchmarks.gpu_check import RUN_BUDGET_S, STEPS, main, markdown, run_step
from benchmarks.gpu_check_core import NEEDS_CUDA, NO_BUDGET, Record, sizes
from benchmarks.gpu_check_dist import GRAD_RTOL
from tests.fixtures.optional import need
from tlxcore.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
DRY = sizes(dry_run=True)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """(process, gpu_check.json, gpu_check.md, out folder) of one `--dry-run`, as CI runs it."""
    need("nvidia.dali")  # the DALI loader's CPU-only mode is part of the dry run
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=280, cwd=ROOT, check=False)
    report = json.loads((out / "gpu_check.json").read_text())
    return proc, report, (out / "gpu_check.md").read_text(), out


def _figures(report: dict) -> dict:
    return {(step, f["name"], f["unit"]): f for step, s in report["steps"].items() for f in s["figures"]}


def test_dry_run_runs_every_step_clean_within_its_budget(dry_run):
    proc, report, _, _ = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(report["steps"]) == list(STEPS)
    for name, step in report["steps"].items():
        assert (step["status"], step["errors"]) == ("ok", []), name
        assert 0 < step["seconds"] <= DRY.budgets[name] + 5, name
    assert report["mode"].startswith("dry-run")
    assert report["sizes"]["model"] == "resnet-tiny"


def test_dry_run_measures_everything_a_cpu_can(dry_run):
    figures = _figures(dry_run[1])
    measured = [("ceiling", f"eager batch {b}", "img/s") for b in DRY.batches] + [
        ("ceiling", f"compiled (eager) batch {b}", "img/s") for b in DRY.compile_batches] + [
        ("real_data", f"tlx synth, {DRY.convert_workers} workers", "files/s"),
        ("real_data", f"tlx shard, {DRY.convert_workers} workers", "slices/s"),
        ("real_data", "torch loader", "samples/s"), ("real_data", "dali loader", "samples/s"),
        ("real_data", f"synthetic input, batch {DRY.loader_batch}", "img/s"),
        ("real_data", "DALI loader / model", "x"),
        ("real_data", "training with torch loader", "img/s"), ("real_data", "training with dali loader", "img/s"),
        ("real_data", "training with torch loader", "%"), ("real_data", "training with dali loader", "%"),
        ("finetune", f"segmentation batch {DRY.seg_batch}", "img/s"),
        ("finetune", f"classification batch {DRY.cls_batch}", "img/s"),
        ("scale_factors", "MI int8 torch._int_mm", "MI evaluations/s"),
        ("scale_factors", "MI float32 products", "MI evaluations/s"),
        ("scale_factors", "binning (quantize, CPU)", "s/volume")]
    for key in measured:
        assert figures[key]["value"] > 0, key
    assert figures[("environment", "torch", "")]["value"]
    assert figures[("environment", "nvidia.dali", "")]["value"][0].isdigit()  # a version: the import worked


def test_dry_run_checks_pass_their_stated_tolerances(dry_run):
    figures = _figures(dry_run[1])
    ddp = figures[("distributed", "DDP + SyncBatchNorm, 2 ranks vs 1 process", "max rel diff")]
    cache = figures[("distributed", "gradient caching vs one batch, float32", "max rel diff")]
    for f in (ddp, cache):
        assert 0 <= f["value"] <= GRAD_RTOL and f["note"].startswith(f"within tolerance {GRAD_RTOL:g}")
    # On the CPU the same seed gives the same batches, views and losses, bit for bit.
    assert figures[("distributed", "identical runs: data order", "")]["value"] == "same"
    assert figures[("distributed", "identical runs: augmented views", "max abs diff")]["value"] == 0
    assert figures[("distributed", "identical runs: loss", "max abs diff")]["value"] == 0


def test_dry_run_leaves_every_gpu_figure_open_and_says_why(dry_run):
    figures = _figures(dry_run[1])
    gpu_only = [("environment", "GPU", ""), ("environment", "cuDNN", ""),
                ("distributed", "NCCL 1-process group", "us"), ("distributed", "SyncBatchNorm on CUDA", "max rel diff"),
                ("distributed", "gradient caching, bf16", "max rel diff"),
                ("scale_factors", "RadNet-12M S_UB, int8 torch._int_mm", "h"),
                ("scale_factors", "RadNet-12M S_UB, float32 products", "h"),
                ("finetune", f"segmentation batch {DRY.seg_batch}", "GiB")] + [
        ("ceiling", f"eager batch {b}", "GiB") for b in DRY.batches]
    for key in gpu_only:
        assert figures[key]["value"] is None and figures[key]["note"].startswith(NEEDS_CUDA), key
    assert not [k for k, f in figures.items() if NO_BUDGET in f["note"]]
    sync_bn = figures[("distributed", "SyncBatchNorm on CUDA", "max rel diff")]["note"]
    assert int(re.search(r"build_model converts (\d+) BatchNorm layers on CUDA", sync_bn).group(1)) > 0


def test_dry_run_writes_the_tables_and_the_log(dry_run):
    _, report, md, out = dry_run
    for name in STEPS:
        assert f"| {name} | ok |" in md
    assert md.count("| open |") == sum(f["value"] is None for s in report["steps"].values() for f in s["figures"])
    assert "A dry run checks that every step runs" in md
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {name} (budget" in log for name in STEPS)
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_full_run_fits_in_8_minutes():
    full = sizes(dry_run=False)
    assert set(full.budgets) == set(DRY.budgets) == set(STEPS)
    assert sum(full.budgets.values()) <= RUN_BUDGET_S < 8 * 60
    assert (full.device, full.model, full.image, full.batches) == ("cuda", "resnet50", 256, (128, 256, 512))


def test_a_step_past_its_budget_is_stopped_with_its_children_and_keeps_its_figures(tmp_path):
    result, pidfile = tmp_path / "step.json", tmp_path / "child.pid"
    figure = {"name": "first", "value": 1.5, "unit": "img/s", "note": ""}
    record = {"figures": [figure], "errors": [], "details": {}}
    code = (f"import json, subprocess, sys, time\n"
            f"open({str(result)!r}, 'w').write(json.dumps({record!r}))\n"
            f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
            f"time.sleep(120)\n")
    t0 = time.monotonic()
    step = run_step([sys.executable, "-c", code], result, budget=3.0, log=tmp_path / "log", name="slow", grace=0.5)
    assert time.monotonic() - t0 < 30
    assert step["status"] == "timeout" and step["figures"] == [figure]
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


WRITE = "import json; open(R, 'w').write(json.dumps({'figures': [], 'details': {}, 'errors': %s}))"


@pytest.mark.parametrize("code, status", [
    ("import sys; sys.exit(3)", "crashed"),    # died before writing anything
    (WRITE % "[{'part': 'p', 'error': 'E: bad'}]", "failed"),
    (WRITE % "[]", "ok"),
])
def test_the_step_status_says_how_it_ended(tmp_path, code, status):
    result = tmp_path / "step.json"
    step = run_step([sys.executable, "-c", f"R = {str(result)!r}\n{code}"], result, budget=30, log=tmp_path / "log",
                    name="x", grace=0.5)
    assert step["status"] == status
    assert ("exit code 3" in step["note"]) == (status == "crashed")


def test_a_failing_part_is_recorded_and_the_step_goes_on(tmp_path):
    rec = Record(tmp_path / "r.json", "s", deadline=time.monotonic() + 60)

    def broken():
        raise ValueError("batch 512 is too large\nsecond line")

    assert rec.run("big", broken, units=("img/s", "GiB")) is None
    assert rec.run("late", lambda: 1, units=("img/s",), need_s=3600) is None   # not started: budget
    assert rec.run("fine", lambda: 7) == 7
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [e["error"] for e in saved["errors"]] == ["ValueError: batch 512 is too large"]
    assert [(f["name"], f["unit"], f["value"]) for f in saved["figures"]] == [
        ("big", "img/s", None), ("big", "GiB", None), ("late", "img/s", None)]
    assert saved["figures"][0]["note"] == "failed: ValueError: batch 512 is too large"
    assert saved["figures"][2]["note"] == NO_BUDGET


def test_markdown_marks_unmeasured_figures_open():
    step = {"status": "ok", "seconds": 1.0, "budget_s": 5, "errors": [], "note": "",
            "figures": [{"name": "a", "value": None, "unit": "img/s", "note": NEEDS_CUDA},
                        {"name": "b", "value": 2612.04, "unit": "img/s", "note": ""},
                        {"name": "c", "value": 3.2e-7, "unit": "max rel diff", "note": ""}]}
    md = markdown({"mode": "GPU", "date": "2026-12-07", "commit": "abc", "budget_s": 465, "seconds": 1.0,
                   "steps": {"ceiling": step}})
    assert f"| ceiling | a | open | img/s | {NEEDS_CUDA} |" in md
    assert "| ceiling | b | 2,612.04 | img/s |  |" in md
    assert "| ceiling | c | 3.20e-07 | max rel diff |  |" in md


def test_without_a_gpu_the_full_check_is_refused(tmp_path):
    # tests/conftest.py hides every GPU
    with pytest.raises(UserError, match="no CUDA GPU is visible: run the check on the GPU machine, or add --dry-run"):
        main(["--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_a_bad_budget_or_out_is_refused(tmp_path):
    with pytest.raises(UserError, match="--budget -1: give the run's seconds, more than 0"):
        main(["--dry-run", "--budget", "-1", "--out", str(tmp_path)])
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file; give a folder"):
        main(["--dry-run", "--out", str(tmp_path / "f")])


def test_an_unknown_step_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="--steps 'ceiling,speed': speed not among environment, ceiling, real_data"):
        main(["--dry-run", "--steps", "ceiling,speed", "--out", str(tmp_path)])
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--steps", "x", "--out",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"Error: --steps 'x': x not among {', '.join(STEPS)}"]


# ---------------------------------------------------------------------------------------------
# scripts/gpu_wheels.sh and scripts/gpu_wheels.txt

def _name(requirement: str) -> str:
    for sep in "<>=!~;[ ":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower().replace("_", "-")


def test_the_wheel_list_covers_every_dependency_the_gpu_image_lacks():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dali"]}
    lines = (ROOT / "scripts" / "gpu_wheels.txt").read_text().splitlines()
    pinned = [line for line in lines if line.strip() and not line.startswith("#")]
    assert all("==" in line for line in pinned)
    wheels = [_name(line) for line in pinned]
    assert len(wheels) == len(set(wheels))
    present = {_name(n) for line in lines if line.startswith("# present:") for n in line.split(":", 1)[1].split()}
    assert not needed - set(wheels) - present, "add them to scripts/gpu_wheels.txt (or its `present` line)"
    assert not set(wheels) & present


def _wheel(folder: Path, name: str, files: dict[str, bytes]) -> str:
    """A minimal pure-Python wheel (no compression: its size is what the test asks for)."""
    dist = f"{name}-1.0.dist-info"
    files = {**files, f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for member, data in {**files, f"{dist}/RECORD": record.encode()}.items():
            z.writestr(member, data)
    return f"{name}==1.0"


def test_gpu_wheels_parts_fit_and_install_into_one_target(tmp_path):
    """download (offline, from a local folder) cuts a wheel over the part size into chunks and packs the rest;
    install stages each part and installs all wheels in one pip call when the last part arrives."""
    source = tmp_path / "source"
    source.mkdir()
    big = random.Random(0).randbytes(300_000)
    pins = [_wheel(source, "tlxfake_big", {"tlxfake_big/__init__.py": b"SHA = %r\n" % hashlib.sha256(big).hexdigest(),
                                           "tlxfake_big/blob.bin": big}),
            _wheel(source, "tlxfake_small", {"tlxfake_small/__init__.py": b"X = 1\n"}),
            _wheel(source, "nvidia_fake", {"nvidia/__init__.py": b"", "nvidia/fake/__init__.py": b"Y = 2\n"})]
    (tmp_path / "list.txt").write_text("\n".join(pins) + "\n")
    part_bytes = 200_000
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(source), "PYTHON": sys.executable,
           "TLX_PART_BYTES": str(part_bytes), "TLX_WHEEL_LIST": str(tmp_path / "list.txt"),
           "TLX_WHEEL_STAGE": str(tmp_path / "stage"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    script = str(ROOT / "scripts" / "gpu_wheels.sh")
    whl = tmp_path / "whl"
    subprocess.run(["bash", script, "download", str(whl)], env=env, check=True, capture_output=True, text=True)
    parts = sorted(whl.glob("part-*"))
    for part in parts:
        assert sum(f.stat().st_size for f in part.iterdir()) <= part_bytes
    size = (source / "tlxfake_big-1.0-py3-none-any.whl").stat().st_size
    n = -(-size // (part_bytes - 65536))   # the script keeps 64 KiB of each part for its MANIFEST
    chunks = sorted(f.name for part in parts for f in part.glob("*.chunk-*"))
    assert n > 1 and chunks == [f"tlxfake_big-1.0-py3-none-any.whl.chunk-{i:02d}-of-{n:02d}" for i in range(1, n + 1)]
    assert sum(f.stat().st_size for part in parts for f in part.glob("*.chunk-*")) == size
    target = tmp_path / "site"
    for i, part in enumerate(parts, 1):
        out = subprocess.run(["bash", script, "install", str(part), str(target)], env=env, check=True,
                             capture_output=True, text=True).stdout
        assert ("installed 3 wheels" in out) == (i == len(parts)), out
    # The image's own nvidia.* packages (a namespace folder elsewhere on the path) stay importable.
    image = tmp_path / "image"
    (image / "nvidia" / "cu13").mkdir(parents=True)
    (image / "nvidia" / "cu13" / "lib.py").write_text("Z = 3\n")
    code = ("import hashlib, pkgutil, tlxfake_big, tlxfake_small, nvidia.fake, nvidia.cu13.lib\n"
            "blob = pkgutil.get_data('tlxfake_big', 'blob.bin')\n"
            "print(hashlib.sha256(blob).hexdigest() == tlxfake_big.SHA, nvidia.fake.Y, nvidia.cu13.lib.Z)")
    got = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": f"{target}:{image}"}, check=True,
                         capture_output=True, text=True).stdout.split()
    assert got == ["True", "2", "3"]


def test_gpu_wheels_refuses_a_corrupt_chunk(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    pin = _wheel(source, "tlxfake_big", {"tlxfake_big/blob.bin": random.Random(1).randbytes(150_000)})
    (tmp_path / "list.txt").write_text(pin + "\n")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(source), "PYTHON": sys.executable,
           "TLX_PART_BYTES": "100000", "TLX_WHEEL_LIST": str(tmp_path / "list.txt"),
           "TLX_WHEEL_STAGE": str(tmp_path / "stage"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    script = str(ROOT / "scripts" / "gpu_wheels.sh")
    subprocess.run(["bash", script, "download", str(tmp_path / "whl")], env=env, check=True, capture_output=True)
    parts = sorted((tmp_path / "whl").glob("part-*"))
    chunk = next(parts[0].glob("*.chunk-*"))
    chunk.write_bytes(b"x" + chunk.read_bytes()[1:])
    runs = [subprocess.run(["bash", script, "install", str(p), str(tmp_path / "site")], env=env, capture_output=True,
                           text=True, check=False) for p in parts]
    assert runs[-1].returncode == 1
    assert "does not match its sha256; carry its part again" in runs[-1].stderr
    assert not (tmp_path / "site").exists()
