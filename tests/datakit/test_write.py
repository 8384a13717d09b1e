"""The dataset `tlx shard` makes from a synthetic cohort: complete, leak-free, PHI-free, readable by
webdataset and DALI, described exactly by its manifest; `tlx verify` and `tlx info` on it; one-line
errors on bad input."""
import json
import re
import shutil

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cli.main import cli
from datakit.info import dataset_info
from datakit.pixel_hash import pixel_hash
from datakit.plan import sample_key_expr
from datakit.verify import verify_dataset
from tests.datakit.write_helpers import SECRET, image_decoder
from tests.fixtures.optional import need


def _tables(ds):
    return (pl.read_parquet(ds / "slices.parquet"), pl.read_parquet(ds / "volumes.parquet"),
            pl.read_parquet(ds / "rejects.parquet"), json.loads((ds / "manifest.json").read_text()))


def test_dataset_verifies_including_every_pixel(sharded):
    ds, _ = sharded
    report = verify_dataset(ds, workers=1, decode=True)
    assert report.problems == []
    assert report.checked == ["format", "shards", "keys", "counts", "leaks", "pixels"]


def test_every_file_found_is_kept_or_rejected_exactly_once(sharded, cohort):
    ds, _ = sharded
    root, truth = cohort
    slices, volumes, rejects, manifest = _tables(ds)
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    plan = pl.read_parquet(ds / "work" / "plan.parquet").with_columns(pl.col("volume").cast(pl.String))
    index = pl.read_parquet(ds / "work" / "index.parquet", columns=["path"]).with_row_index("row")
    kept_paths = (slices.join(plan.with_columns(key=sample_key_expr()), on="key")
                  .join(index.with_columns(pl.col("row").cast(pl.Int64)), on="row")["path"])
    assert len(kept_paths) == len(slices)
    assert sorted(kept_paths.to_list() + rejects["path"].to_list()) == found
    assert manifest["files"] == {"found": len(found), "kept": len(slices), "rejected": len(rejects),
                                 "rejected_by_code": dict(sorted(rejects.group_by("code").len().rows()))}
    assert volumes["slices_kept"].sum() == len(slices)
    # What the cohort's ground truth says each kind of mess must become.
    code_of = dict(zip(rejects["path"], rejects["code"]))
    kinds = {s["key"]: s["kind"] for s in truth["series"]}
    for f in truth["files"]:
        if kinds.get(f["series"]) == "short":
            assert code_of[f["path"]] == "small-volume", f
    assert {"duplicate-sop", "duplicate-pixels", "low-coverage", "small-volume"} <= set(code_of.values())


def test_splits_are_leak_free_and_resent_series_collapse(sharded, cohort):
    ds, _ = sharded
    root, truth = cohort
    slices, volumes, rejects, manifest = _tables(ds)
    assert {s: manifest["splits"][s]["samples"] > 0 for s in ("train", "val", "test")} == dict.fromkeys(
        ("train", "val", "test"), True)
    assert slices.group_by("patient").agg(pl.col("split").n_unique())["split"].max() == 1
    assert slices["pixel_hash"].n_unique() == len(slices)
    # A re-sent series (same pixels, new UIDs) keeps its slices in one of the two volumes only.
    index = pl.read_parquet(ds / "work" / "index.parquet", columns=["path", "series"])
    series_of = dict(zip(index["path"], index["series"]))
    volume_of_key = {}
    for f in truth["files"]:
        if f["series"] and f["path"] in series_of:
            volume_of_key.setdefault(f["series"], series_of[f["path"]])
    kept = dict(zip(volumes["volume"], volumes["slices_kept"]))
    resent = [(s["key"], s["duplicate_of"]) for s in truth["series"] if s["kind"] == "resent"]
    assert resent
    for copy, original in resent:
        counts = [kept.get(volume_of_key[copy], 0), kept.get(volume_of_key[original], 0)]
        assert min(counts) == 0 and max(counts) > 0, (copy, original, counts)


def test_shards_load_with_webdataset_in_order_with_their_pixels(sharded):
    wds = need("webdataset")
    ds, _ = sharded
    slices, _, _, manifest = _tables(ds)
    for split in ("train", "val", "test"):
        urls = [str(ds / e["path"]) for e in manifest["shards"] if e["split"] == split]
        samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
        want = slices.filter(pl.col("split") == split)
        assert [s["__key__"] for s in samples] == want["key"].to_list()
        assert [int(s["cls"]) for s in samples] == want["label_index"].to_list()
        ext, decode = image_decoder(manifest)
        assert ext == "hu.szst"
        hashes = [pixel_hash(decode(s[ext])) for s in samples]
        assert hashes == want["pixel_hash"].to_list()


def test_shards_load_with_dali_cpu_reader_and_our_index(sharded):
    need("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    ds, _ = sharded
    slices, _, _, manifest = _tables(ds)
    train = [e for e in manifest["shards"] if e["split"] == "train"]
    n = sum(e["samples"] for e in train)
    ext, decode = image_decoder(manifest)

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        return tuple(fn.readers.webdataset(paths=[str(ds / e["path"]) for e in train],
                                           index_paths=[str(ds / e["index"]) for e in train],
                                           ext=[ext, "cls"], random_shuffle=False))

    p = pipe()
    p.build()
    hu, cls = p.run()
    want = slices.filter(pl.col("split") == "train")
    assert [int(bytes(np.array(cls[i]))) for i in range(n)] == want["label_index"].to_list()
    got = [pixel_hash(decode(np.array(hu[i]))) for i in range(n)]
    assert got == want["pixel_hash"].to_list()


def _phi_variants(phi: list[str]) -> set[bytes]:
    """Each PHI string as it may appear: as written, DICOM name parts, without separators."""
    out = set()
    for value in phi:
        for v in {value, value.replace("^", " ").strip(), value.replace("^", "_").strip("_")}:
            for enc in ("utf-8", "latin-1"):
                try:
                    out.add(v.encode(enc).lower())
                except UnicodeEncodeError:
                    pass
        out.update(p.encode().lower() for p in value.split("^") if len(p) >= 4)
    return out


def test_no_phi_in_any_output_or_cli_output(sharded, cohort):
    ds, cli_output = sharded
    _, truth = cohort
    needles = _phi_variants(truth["phi"])
    assert len(needles) > 20
    blobs = {"CLI output": cli_output.encode().lower()}
    for p in sorted(ds.rglob("*")):
        rel = p.relative_to(ds)
        if not p.is_file() or rel.parts[0] == "work":
            continue
        blobs[str(rel)] = p.read_bytes().lower()
        if p.suffix == ".parquet":  # compressed pages: search the decoded values and the schema too
            table = pq.read_table(p)
            # rejects.parquet is the operator's report: only its source-path columns may name files.
            columns = [c for c in table.column_names if not (rel.name == "rejects.parquet" and c in
                                                              ("path", "duplicate_of"))]
            text = "\n".join(str(v) for c in columns for v in table.column(c).to_pylist())
            blobs[f"{rel} (values)"] = (text + str(table.schema)).encode().lower()
            if rel.name == "rejects.parquet":
                del blobs[str(rel)]
    hits = [(name, n.decode(errors="replace")) for name, blob in blobs.items() for n in needles if n in blob]
    assert hits == []


def test_info_reports_splits_rejects_and_shard_diversity(sharded):
    ds, _ = sharded
    info = dataset_info(ds)
    slices, _, rejects, manifest = _tables(ds)
    assert info.by_split_label["slices"].sum() == len(slices)
    assert dict(zip(info.by_split["split"], info.by_split["slices"])) == {
        s: manifest["splits"][s]["samples"] for s in ("train", "val", "test")}
    assert info.rejects["files"].sum() == len(rejects)
    train = info.diversity.filter(pl.col("split") == "train").row(0, named=True)
    per_shard = slices.filter(pl.col("split") == "train").group_by("shard").agg(pl.col("volume").n_unique())
    assert train["volumes_min"] == per_shard["volume"].min() and train["volumes_max"] == per_shard["volume"].max()
    # The global shuffle at work: a 16-slice shard holds slices of several of the split's volumes.
    assert train["volumes_min"] >= 4 and train["max_volume_share"] <= 0.5
    result = CliRunner().invoke(cli, ["info", str(ds)])
    assert result.exit_code == 0 and "shard diversity" in result.output and "low-coverage" in result.output


@pytest.fixture
def broken(sharded, tmp_path):
    ds, _ = sharded
    copy = tmp_path / "data"
    shutil.copytree(ds, copy, ignore=shutil.ignore_patterns("work"))
    return copy


def test_verify_lists_each_problem_and_exits_1(broken):
    manifest = json.loads((broken / "manifest.json").read_text())
    first, second = manifest["shards"][0], manifest["shards"][1]
    data = bytearray((broken / first["path"]).read_bytes())
    data[700] ^= 0xFF                                       # one flipped byte in a payload
    (broken / first["path"]).write_bytes(bytes(data))
    (broken / second["index"]).unlink()
    (broken / "shards" / "train" / "stray.tar").write_bytes(b"")
    result = CliRunner().invoke(cli, ["verify", str(broken), "--workers", "1"])
    assert result.exit_code == 1
    assert f"{first['path']}: sha256 differs from the manifest" in result.output
    assert f"{second['path']}: its index {second['index'].split('/')[-1]} is missing" in result.output
    assert "shards/train/stray.tar: on disk but not in the manifest" in result.output
    manifest["format_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    report = verify_dataset(broken, workers=1)
    assert report.problems == ["manifest.json: format 'tlx-shards' version 99 is not known (this tlx knows "
                               "'tlx-shards' versions 1, 2)"]


def test_verify_reports_a_corrupt_table_or_manifest_instead_of_crashing(broken):
    (broken / "slices.parquet").write_bytes(b"not parquet")
    report = verify_dataset(broken, workers=1)
    assert len(report.problems) == 1 and report.problems[0].startswith("slices.parquet: not a readable Parquet file (")
    result = CliRunner().invoke(cli, ["info", str(broken)])
    assert result.exit_code == 2 and "slices.parquet cannot be read (" in result.output, result.output
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["splits"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    assert verify_dataset(broken, workers=1).problems == ["manifest.json: splits must be a JSON object"]
    (broken / "manifest.json").write_text("[]")
    assert verify_dataset(broken, workers=1).problems == ["manifest.json: not a JSON object"]


@pytest.fixture(scope="module")
def not_ct(cohort, tmp_path_factory):
    """A folder with DICOM files that are not CT (the cohort's MR series)."""
    root, truth = cohort
    folder = tmp_path_factory.mktemp("mr-only")
    mr = {s["key"] for s in truth["series"] if s["kind"] == "mr"}
    for f in truth["files"]:
        if f["series"] in mr:
            shutil.copy(root / f["path"], folder / f["path"].replace("/", "_"))
    return folder


@pytest.mark.parametrize("case, message", [
    ("write-missing", r"dataset folder '.*nowhere' does not exist; run `tlx scan` and `tlx plan` first"),
    ("write-finished", r"already holds a finished dataset \(manifest.json\); choose a new output folder"),
    ("write-finished-other-options", (r"already holds a finished dataset made with other options "
                                      r"\(--samples-per-shard, --size differ\); choose a new output folder")),
    ("shard-not-empty", (r"output folder '.*' is not empty and --resume is never; choose a new folder, or use "
                         r"--resume auto to continue the earlier `tlx shard` there")),
    ("shard-other-root", r"was scanned from '.*', not '.*'; resume with that --dicom-root"),
    ("shard-foreign", (r"output folder '.*' holds 'notes.txt', which no tlx command writes: it is not a tlx "
                       r"dataset folder; choose a new or empty folder")),
    ("shard-missing-root", r"DICOM root '.*nowhere' does not exist or is not a folder"),
    ("shard-empty-root", r"DICOM root '.*empty' holds no files"),
    ("shard-no-ct", r"no usable CT slices found under '.*'"),
    ("shard-no-secret", r"no pseudonym secret given: set the environment variable TLX_SECRET"),
    ("verify-no-manifest", r"holds no manifest.json: not a finished tlx dataset"),
    ("write-bad-partition", r"--partition '3/3': N must be >= 1 and i in 0..N-1"),
    ("write-hu-floor-high", r"--hu-floor -400 must be a whole HU value from -32768 to -501, or 'none' to keep raw"),
    ("write-hu-floor-word", r"--hu-floor 'air' must be a whole HU value from -32768 to -501, or 'none'"),
])
def test_bad_input_is_a_one_line_error_with_exit_code_2(case, message, sharded, not_ct, tmp_path):
    ds, _ = sharded
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("someone's files")
    env = {"TLX_SECRET": SECRET}
    args = {
        "write-missing": ["write", str(tmp_path / "nowhere")],
        "write-finished": ["write", str(ds), "--resume", "never"],
        "write-finished-other-options": ["write", str(ds)],
        "shard-not-empty": ["shard", "--dicom-root", str(not_ct), "--out", str(ds), "--resume", "never"],
        "shard-other-root": ["shard", "--dicom-root", str(not_ct), "--out", str(ds)],
        "shard-foreign": ["shard", "--dicom-root", str(not_ct), "--out", str(tmp_path / "foreign")],
        "shard-missing-root": ["shard", "--dicom-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
        "shard-empty-root": ["shard", "--dicom-root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
        "shard-no-ct": ["shard", "--dicom-root", str(not_ct), "--out", str(tmp_path / "o"), "--workers", "1"],
        "shard-no-secret": ["shard", "--dicom-root", str(not_ct), "--out", str(tmp_path / "o")],
        "verify-no-manifest": ["verify", str(tmp_path / "empty")],
        "write-bad-partition": ["write", str(ds), "--partition", "3/3"],
        "write-hu-floor-high": ["write", str(ds), "--hu-floor", "-400"],
        "write-hu-floor-word": ["write", str(ds), "--hu-floor", "air"],
    }[case]
    if case == "shard-no-secret":
        env = {"TLX_SECRET": ""}
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert re.search(message, lines[0]), lines[0]


def test_shard_resume_with_another_root_or_other_label_rules_is_refused(sharded, not_ct, tmp_path):
    """--resume reuses the index: another --dicom-root made write read another folder's files at the
    index's relative paths under its pseudonyms; other --label-rules were ignored without a word
    (and the manifest named the old rules)."""
    from datakit.labels import SHIPPED_RULES
    from tests.datakit.write_helpers import copy_plan

    ds = copy_plan(sharded[0], tmp_path / "resumed")
    root = json.loads((ds / "work" / "scan.json").read_text())["dicom_root"]
    rules = tmp_path / "my_rules.toml"
    rules.write_text(SHIPPED_RULES.read_text() + "\n# edited\n")
    for args, message in (
            (["--dicom-root", str(not_ct)], r"was scanned from '.*', not '.*'; resume with that --dicom-root"),
            (["--dicom-root", root, "--label-rules", str(rules)],
             r"was labelled with the rules label_rules.toml \(sha256 [0-9a-f]{12}\), not my_rules.toml")):
        result = CliRunner().invoke(cli, ["shard", "--out", str(ds), "--resume", *args], env={"TLX_SECRET": SECRET})
        assert result.exit_code == 2 and result.output.startswith("Error: "), result.output
        assert re.search(message, result.output.replace("\n", " ")), result.output
    assert not (ds / "manifest.json").exists()


def test_the_other_streams_readers_read_it(sharded):
    """The contract in practice: trainer's and analysis's readers (which never import datakit)."""
    from analysis.dataset import CTDataset, read_slices
    from datakit.read import SampleReader, open_dataset

    ds, _ = sharded
    slices = pl.read_parquet(ds / "slices.parquet")
    tds = open_dataset(ds)
    ext, _ = tds.member("image")
    table, reader = tds.sample_table("val"), SampleReader(tds)
    val = slices.filter(pl.col("split") == "val")
    assert [pixel_hash(reader.read(table, i, ext).tobytes()) for i in range(len(table))] == val["pixel_hash"].to_list()
    assert [reader.read(table, i, "cls") for i in range(len(table))] == val["label_index"].to_list()
    cds = CTDataset(ds, split="test")
    test = slices.filter(pl.col("split") == "test")
    for v in range(len(cds.volumes)):
        volume = test.filter(pl.col("volume") == cds.volumes[v]).sort("slice_index")
        pixels = read_slices(cds.refs(v), cds.member)
        assert [pixel_hash(p.tobytes()) for p in pixels] == volume["pixel_hash"].to_list()


def test_scan_records_its_inputs_and_write_needs_no_root_after_a_separate_scan(cohort, sharded, tmp_path,
                                                                               monkeypatch):
    import hashlib

    from datakit.labels import SHIPPED_RULES
    from datakit.secret import fingerprint

    root, _ = cohort
    rules = tmp_path / "my_rules.toml"
    rules.write_text(SHIPPED_RULES.read_text() + "\n# site copy\n")
    env = {"TLX_SECRET": SECRET, "TLX_QUIET": "1"}
    monkeypatch.chdir(root.parent)                          # a relative --dicom-root, recorded absolute
    out = tmp_path / "data"
    steps = [["scan", "--dicom-root", root.name, "--out", str(out), "--workers", "1", "--label-rules", str(rules)],
             ["plan", str(out), "--fractions", "0.5,0.25,0.25"],
             ["write", str(out), "--size", "16", "--workers", "1"]]
    for i, args in enumerate(steps):
        if i == 2:
            monkeypatch.chdir(tmp_path)                     # write runs elsewhere, told nothing about the root
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
    record = json.loads((out / "work" / "scan.json").read_text())
    mine = {"name": "my_rules.toml", "shipped": False, "sha256": hashlib.sha256(rules.read_bytes()).hexdigest()}
    fp = fingerprint(SECRET.encode())          # the secret only by its fingerprint (test_secret.py)
    assert record == {"dicom_root": str(root), "label_rules": mine, "secret_fingerprint": fp}
    manifest_text = (out / "manifest.json").read_text()
    assert json.loads(manifest_text)["config"]["scan"] == {"label_rules": mine, "secret_fingerprint": fp}
    assert str(root) not in manifest_text and str(tmp_path) not in manifest_text and "my_rules.toml" in manifest_text
    # tlx shard records the shipped rules the same way.
    shipped = json.loads((sharded[0] / "manifest.json").read_text())["config"]["scan"]["label_rules"]
    assert shipped == {"name": "label_rules.toml", "shipped": True,
                       "sha256": hashlib.sha256(SHIPPED_RULES.read_bytes()).hexdigest()}


def test_small_splits_are_warned_about_in_the_manifest_and_once_on_screen(sharded):
    ds, output = sharded
    manifest = json.loads((ds / "manifest.json").read_text())
    patients = {s: manifest["splits"][s]["patients"] for s in ("train", "val", "test")}
    assert patients == {"train": 2, "val": 1, "test": 1}            # the 4-patient test cohort
    assert manifest["warnings"][:3] == [
        f"split {s} has only {n} patient{'s' * (n > 1)} ({manifest['splits'][s]['samples']} slices), fewer than 3: "
        "its metrics rest on too few people; add patients, or change --fractions" for s, n in patients.items()]
    # then the classes a split lacks (datakit.plan_splits.class_warnings), as slices.parquet shows them
    slices = pl.read_parquet(ds / "slices.parquet")
    held = {s: set(slices.filter(pl.col("split") == s)["label"]) for s in ("train", "val", "test")}
    lacking = {s: sorted(set().union(*held.values()) - held[s]) for s in held}
    assert [w.split(" ")[1] for w in manifest["warnings"][3:]] == [s for s in held if lacking[s]]
    for w in manifest["warnings"][3:]:
        assert f"of class{'es' * (len(lacking[w.split(' ')[1]]) > 1)} {', '.join(lacking[w.split(' ')[1]])} (in " in w
    flat = " ".join(output.split())                                  # rich wraps long lines
    for w in manifest["warnings"]:
        assert flat.count(f"warning: {w}") == 1
