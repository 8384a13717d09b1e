"""`tlx convert image-folder` (multi-label CSV, patient split) and `class-folder` (jpg/cls)."""
import io

import numpy as np
import polars as pl
import pytest
import zstandard
from PIL import Image

from datakit.convert.builder import DatasetBuilder, Staged
from datakit.convert.class_folder import ClassFolderOptions, convert_class_folder
from datakit.convert.image_folder import ImageFolderOptions, convert_image_folder
from datakit.errors import DatakitError
from tests.fixtures.task_datasets import FINDINGS, read_shards, write_chestxray, write_class_folders


def test_chestxray_multilabel_patient_split_and_rejects(tmp_path):
    root, csv_path = write_chestxray(tmp_path / "cxr", n_patients=20, extras=True)
    test_list = tmp_path / "test_list.txt"
    test_list.write_text("00000000_000.png\n00000000_001.png\n00000003_000.png\n00000003_001.png\n")
    out = tmp_path / "out"
    m = convert_image_folder(ImageFolderOptions(root=str(root), labels=str(csv_path), out=str(out), size=32,
                                                test_list=str(test_list), val=0.2, workers=1, samples_per_shard=9))
    assert m["kind"] == "multilabel" and m["classes"] == sorted(FINDINGS)
    assert m["members"]["labels"] == {"role": "labels", "codec": "raw", "dtype": "uint8", "byteorder": "little",
                                      "shape": [3]}
    rejects = pl.read_parquet(out / "rejects.parquet").sort("code")
    assert rejects.select("path", "code").rows() == [
        ("gone.png", "missing-file"), ("images_001/unlisted.png", "no-label"), ("images_002/broken.png", "undecodable")]
    slices = pl.read_parquet(out / "slices.parquet")
    assert len(slices) == 40                  # 20 patients x 2 images; kept + rejected = found
    assert slices.group_by("patient").agg(pl.col("split").n_unique())["split"].max() == 1
    assert sorted(slices.filter(pl.col("split") == "test")["key"].to_list()) == \
        ["00000000_000", "00000000_001", "00000003_000", "00000003_001"]
    assert m["splits"]["val"]["patients"] == 4  # 20% of the 18 patients not in the test list, rounded
    csv = pl.read_csv(csv_path)
    truth = dict(zip(csv["Image Index"], csv["Finding Labels"]))
    for key, (split, sample) in read_shards(out, m).items():
        hot = np.frombuffer(sample["labels"], np.uint8)
        expected = {f for f in truth[f"{key}.png"].split("|") if f != "No Finding"}
        assert {c for c, h in zip(m["classes"], hot) if h} == expected
        img = np.frombuffer(zstandard.ZstdDecompressor().decompress(sample["img.zst"]), np.uint8).reshape(32, 32)
        assert img.max() > 200 if expected else img.max() < 80   # findings are bright patches


def test_csv_problems_are_one_line_errors(tmp_path):
    root, csv_path = write_chestxray(tmp_path / "cxr", n_patients=4)
    with pytest.raises(DatakitError, match=r"has no column\(s\) \['Patient'\]; its columns: Image Index, "):
        convert_image_folder(ImageFolderOptions(root=str(root), labels=str(csv_path), out=str(tmp_path / "o"),
                                                patient_col="Patient"))
    with pytest.raises(DatakitError, match=r"labels \['Nodule'\] are not in --classes Atelectasis, Effusion"):
        convert_image_folder(ImageFolderOptions(root=str(root), labels=str(csv_path), out=str(tmp_path / "o"),
                                                classes=("Atelectasis", "Effusion")))



def test_label_and_test_list_files_are_read_as_utf8_or_refused_in_one_line(tmp_path):
    """A missing --test-list and a CSV saved as cp1252 ended in tracebacks; a CSV with a byte order
    mark (as spreadsheets save UTF-8) had lost its first column ('has no column Image Index')."""
    root, csv_path = write_chestxray(tmp_path / "cxr", n_patients=4)
    data = csv_path.read_bytes()

    def convert(labels, **kw):
        return convert_image_folder(ImageFolderOptions(root=str(root), labels=str(labels), out=str(tmp_path / "o"),
                                                       size=16, workers=1, **kw))
    with pytest.raises(DatakitError, match=r"^--test-list .*nolist.txt: no such file$"):
        convert(csv_path, test_list=str(tmp_path / "nolist.txt"))
    (tmp_path / "cp1252.csv").write_bytes(data.replace(b"No Finding", b"Kein Befund \xe4"))
    with pytest.raises(DatakitError, match=r"cp1252.csv is not UTF-8 text \(invalid continuation byte at byte \d+\)"):
        convert(tmp_path / "cp1252.csv")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + data)
    assert convert(tmp_path / "bom.csv")["splits"]["train"]["samples"] > 0

def test_one_image_named_by_two_rows_is_refused(tmp_path):
    """A row by file name and another by path relative to --root matched the same file: one image
    became two samples, of two patients and possibly in two splits."""
    root, csv_path = write_chestxray(tmp_path / "cxr", n_patients=4)
    rows = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(rows + ["images_001/00000001_000.png,No Finding,0,77"]) + "\n")
    with pytest.raises(DatakitError, match=r"names 1 image\(s\) twice under different names, e.g. "
                                           r"'00000001_000.png' and 'images_001/00000001_000.png' are both "
                                           r"images_001/00000001_000.png"):
        convert_image_folder(ImageFolderOptions(root=str(root), labels=str(csv_path), out=str(tmp_path / "o")))

@pytest.fixture(scope="module")
def natural(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nat")
    write_class_folders(tmp / "train", per_class=12)
    write_class_folders(tmp / "val", per_class=4, seed=1)
    return tmp


def test_class_folder_eval_root_that_is_the_root_is_refused(natural, tmp_path):
    """Every training image would also have been a val or test image."""
    with pytest.raises(DatakitError, match=r"--eval-root .* is --root itself"):
        convert_class_folder(ClassFolderOptions(root=str(natural / "train"), eval_root=str(natural / "train" / "."),
                                                out=str(tmp_path / "o"), workers=1))
    assert not (tmp_path / "o" / "manifest.json").exists()

def test_class_folder_jpg_cls_with_eval_root(natural):
    out = natural / "out"
    m = convert_class_folder(ClassFolderOptions(root=str(natural / "train"), eval_root=str(natural / "val"),
                                                out=str(out), workers=1))
    assert m["kind"] == "image-classification" and m["classes"] == ["bird", "cat", "dog"]
    assert {s: m["splits"][s]["samples"] for s in ("train", "val", "test")} == {"train": 36, "val": 6, "test": 6}
    assert m["splits"]["val"]["by_label"] == {"bird": 2, "cat": 2, "dog": 2}   # eval split evenly per class
    slices = pl.read_parquet(out / "slices.parquet")
    src = natural / "train" / "bird" / "bird_3.JPEG"
    for key, (split, sample) in read_shards(out, m).items():
        row = slices.filter(pl.col("key") == key).row(0, named=True)
        assert int(sample["cls"]) == m["classes"].index(row["label"])
        rgb = np.asarray(Image.open(io.BytesIO(sample["jpg"]))).reshape(-1, 3).mean(0)
        assert np.argmax(rgb) == {"bird": 0, "cat": 1, "dog": 2}[row["label"]]
        if row["source"] == "train/bird/bird_3.JPEG":
            assert sample["jpg"] == src.read_bytes()         # good JPEGs are copied unchanged
    assert slices.filter(pl.col("source").str.ends_with(".png"))["reencoded"].to_list() == [True, True]


def test_class_subset_and_random_split(natural):
    m = convert_class_folder(ClassFolderOptions(root=str(natural / "train"), out=str(natural / "sub"),
                                                classes=("dog", "cat"), val=0.25, test=0.25, workers=1))
    assert m["classes"] == ["dog", "cat"]
    assert {s: m["splits"][s]["by_label"] for s in ("train", "val", "test")} == {
        "train": {"dog": 6, "cat": 6}, "val": {"dog": 3, "cat": 3}, "test": {"dog": 3, "cat": 3}}
    with pytest.raises(DatakitError, match=r"--classes \['cow'\] have no folder below"):
        convert_class_folder(ClassFolderOptions(root=str(natural / "train"), out=str(natural / "x"), classes=("cow",)))


def test_interrupted_conversion_resumes_to_identical_shards(tmp_path):
    """A crash in the middle of staging, then --resume: the same bytes as one uninterrupted run."""
    calls = {"n": 0}

    def stage(job, bin_path, crash_at=None):
        from datakit.convert.builder import StagingFile
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt
        staging = StagingFile(bin_path)
        rows = [{"key": f"{job}-{i}", "split": ("train", "val", "test")[i % 3], "label": "a",
                 "_payload": {"bin": staging.add(f"{job}:{i}".encode())}} for i in range(5)]
        staging.close()
        return Staged(job, rows)

    jobs = [(f"j{i}", f"j{i}") for i in range(6)]
    kw = dict(kind="image-classification", members={"bin": {"role": "image", "codec": "raw"}}, classes=["a"],
              config={}, samples_per_shard=4)
    straight = DatasetBuilder(tmp_path / "a", **kw)
    straight.run(stage, jobs, workers=1)
    ma = straight.assemble()
    crashing = DatasetBuilder(tmp_path / "b", **kw)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        crashing.run(lambda j, p: stage(j, p, crash_at=4), jobs, workers=1)
    with pytest.raises(DatakitError, match=r"is not empty and --resume is never; choose a new folder, or use "
                                           r"--resume auto to continue the earlier `tlx convert` there"):
        DatasetBuilder(tmp_path / "b", resume="never", **kw)
    resumed = DatasetBuilder(tmp_path / "b", **kw)          # --resume auto, the default
    calls["n"] = 0
    resumed.run(stage, jobs, workers=1)
    assert calls["n"] == 3                    # only the jobs not staged before the crash ran again
    mb = resumed.assemble()
    assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    assert sum(s["samples"] for s in mb["shards"]) == 30


def test_resumed_assembly_leaves_nothing_of_a_killed_one(tmp_path):
    """A kill during assembly leaves shards (here of a smaller --samples-per-shard, so one more) and
    temporary files; the resumed assembly rewrote its shards over them but kept the rest, and
    `tlx verify` then failed on the stray files."""
    def stage(job, bin_path):
        from datakit.convert.builder import StagingFile
        staging = StagingFile(bin_path)
        rows = [{"key": f"{job}-{i}", "split": "train", "label": "a",
                 "_payload": {"bin": staging.add(f"{job}:{i}".encode())}} for i in range(5)]
        staging.close()
        return Staged(job, rows)

    kw = dict(kind="image-classification", members={"bin": {"role": "image", "codec": "raw"}}, classes=["a"],
              config={}, samples_per_shard=4)
    jobs = [(f"j{i}", f"j{i}") for i in range(2)]
    straight = DatasetBuilder(tmp_path / "a", **kw)
    straight.run(stage, jobs, workers=1)
    straight.assemble()
    killed = DatasetBuilder(tmp_path / "b", **kw)
    killed.run(stage, jobs, workers=1)
    shards = tmp_path / "b" / "shards" / "train"
    shards.mkdir(parents=True)
    for name in ("train-000003.tar", "train-000003.idx", "train-000001.tar.partial-4242"):
        (shards / name).write_bytes(b"from the killed assembly")
    (tmp_path / "b" / "manifest.json.partial-4242").write_bytes(b"{")
    resumed = DatasetBuilder(tmp_path / "b", resume="auto", **kw)
    resumed.run(stage, jobs, workers=1)
    resumed.assemble()

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert files(tmp_path / "b") == files(tmp_path / "a")

def _stage_reporting_pdeathsig(job, bin_path):
    """A staging job that records its process's parent-death signal (Linux prctl PR_GET_PDEATHSIG)."""
    import ctypes
    import os

    from datakit.convert.builder import StagingFile
    sig = ctypes.c_int(0)
    ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(sig), 0, 0, 0)
    staging = StagingFile(bin_path)
    rows = [{"key": job, "split": "train", "label": "a", "pid": os.getpid(), "pdeathsig": sig.value,
             "_payload": {"bin": staging.add(job.encode())}}]
    staging.close()
    return Staged(job, rows)


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_conversion_workers_die_with_their_parent(tmp_path):
    """As tlx write's: after a kill -9 of `tlx convert`, no orphan worker goes on staging (into the
    file a resumed run stages the same job in) behind the resumed run's back."""
    import os
    import signal

    builder = DatasetBuilder(tmp_path / "o", kind="image-classification", classes=["a"], config={},
                             members={"bin": {"role": "image", "codec": "raw"}})
    staged = builder.run(_stage_reporting_pdeathsig, [(f"j{i}", f"j{i}") for i in range(4)], workers=2)
    rows = [r for s in staged for r in s.rows]
    assert {r["pdeathsig"] for r in rows} == {signal.SIGKILL} and os.getpid() not in {r["pid"] for r in rows}
    assert not list((tmp_path / "o").rglob("*.partial*"))

def test_cli_converts_and_reports_bad_input_in_one_line(tmp_path, natural):
    from click.testing import CliRunner

    from cli.main import cli
    result = CliRunner().invoke(cli, ["convert", "class-folder", "--root", str(natural / "train"),
                                      "--out", str(tmp_path / "o"), "--workers", "1", "--classes", "cat,dog"])
    assert result.exit_code == 0, result.output
    assert "image-classification, 2 classes" in result.output
    result = CliRunner().invoke(cli, ["convert", "class-folder", "--root", str(natural / "train"),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("Error: ")
    assert "already holds a finished dataset" in result.output


def test_resume_with_other_options_does_not_reuse_jobs_staged_with_the_old_ones(tmp_path):
    """Interrupted, then resumed with another --seed or --size: jobs staged with the old options (their
    splits, their image size) must not be reused, or one patient could end up in two splits."""
    root, csv_path = write_chestxray(tmp_path / "cxr", n_patients=10, size=24)

    def options(out, **kw):
        return ImageFolderOptions(root=str(root), labels=str(csv_path), out=str(out), size=16, val=0.2, test=0.2,
                                  workers=1, **kw)

    import datakit.convert.image_folder as image_folder
    from datakit.convert.builder import DatasetBuilder as Builder

    fresh = convert_image_folder(options(tmp_path / "fresh", seed=1, resume="never"))
    real_assemble = Builder.assemble
    Builder.assemble = lambda self, rejects=None: (_ for _ in ()).throw(KeyboardInterrupt)   # killed after staging
    try:
        with pytest.raises(KeyboardInterrupt):
            convert_image_folder(options(tmp_path / "b", seed=0))
    finally:
        Builder.assemble = real_assemble
    assert image_folder.CHUNK >= 20                        # one job: every image was staged with seed 0
    resumed = convert_image_folder(options(tmp_path / "b", seed=1, resume="auto"))
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in fresh["shards"]]
    slices = pl.read_parquet(tmp_path / "b" / "slices.parquet")
    assert slices.equals(pl.read_parquet(tmp_path / "fresh" / "slices.parquet"))


def _without_hanging(fn, fifos, seconds=60):
    """Run fn in a thread; if it blocks (a reader stuck on a FIFO), unblock it and fail."""
    import threading

    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:                       # a writer opening and closing releases the stuck reader
            open(fifo, "wb").close()
        thread.join(10)
        pytest.fail("the conversion hung on a FIFO")
    return out.get("result")


def test_a_fifo_is_rejected_as_not_a_file_and_never_opened(tmp_path):
    """`tlx convert image-folder` hung forever on a FIFO named in the CSV."""
    import os

    root, csv_path = write_chestxray(tmp_path / "cxr", n_patients=4)
    named = root / "images_001" / "00000001_000.png"
    named.unlink()
    os.mkfifo(named)                              # a row of the CSV names it
    os.mkfifo(root / "images_001" / "stray.png")
    m = _without_hanging(lambda: convert_image_folder(ImageFolderOptions(
        root=str(root), labels=str(csv_path), out=str(tmp_path / "out"), size=16, val=0.25, test=0.25, workers=1)),
        [named, root / "images_001" / "stray.png"])
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert rejects.select("path", "code").rows() == [("images_001/00000001_000.png", "not-a-file"),
                                                     ("images_001/stray.png", "not-a-file")]
    assert sum(s["samples"] for s in m["splits"].values()) == 7
    classes = write_class_folders(tmp_path / "cls", per_class=4)
    os.mkfifo(classes / sorted(p.name for p in classes.iterdir())[0] / "pipe.jpg")
    _without_hanging(lambda: convert_class_folder(ClassFolderOptions(root=str(classes), out=str(tmp_path / "c"),
                                                                     workers=1)), [])
    rejects = pl.read_parquet(tmp_path / "c" / "rejects.parquet")
    assert rejects["code"].to_list() == ["not-a-file"] and rejects["path"][0].endswith("/pipe.jpg")
