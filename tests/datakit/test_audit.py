"""`tlx audit`: a dataset made by `tlx shard` from the synthetic cohort passes (also against every PHI
string of the cohort as a deny list); a string planted in any kind of output file (Parquet column,
manifest, tar member name and header, .idx, a log under the dataset, a file name) is found, located,
and never quoted."""
import io
import json
import shutil
import tarfile

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cli.main import cli
from datakit.audit import audit_dataset
from datakit.audit_rules import TextChecker, dicom_like, load_deny_list
from datakit.errors import DatakitError

NAME = "Fischer^Anna"                 # in the cohort's PHI (cohort.json "phi")
BIRTH_DATE = "19540709"
UID = "1.2.826.0.1.3680043.8.498.77"


@pytest.fixture(scope="module")
def deny_list(cohort, tmp_path_factory):
    """Every PHI string of the synthetic cohort, one per line."""
    _, truth = cohort
    assert NAME in truth["phi"] and BIRTH_DATE in truth["phi"]
    path = tmp_path_factory.mktemp("audit") / "deny.txt"
    path.write_text("# the cohort's names, ids and dates\n" + "\n".join(truth["phi"]) + "\n")
    return path


def _audit(ds, deny_list):
    result = CliRunner().invoke(cli, ["audit", str(ds), "--deny-list", str(deny_list)])
    return result, audit_dataset(ds, deny_list=deny_list)


def test_a_dataset_made_by_tlx_shard_passes(sharded, deny_list):
    ds, _ = sharded
    result, report = _audit(ds, deny_list)
    assert result.exit_code == 0 and "audit passed: " in result.output, result.output
    assert report.clean and report.findings == [] and report.strings > 1000
    shards = sorted(str(p.relative_to(ds)) for p in (ds / "shards").rglob("*.*"))
    assert report.checked == sorted(["manifest.json", "slices.parquet", "volumes.parquet", *shards])
    assert sorted(report.skipped) == [".tlx.lock", "rejects.parquet", "work/"]
    # The operator-side files do hold the cohort's names (folder names of its viewer export): not read.
    paths = pl.read_parquet(ds / "rejects.parquet")["path"].to_arrow()
    assert TextChecker(load_deny_list(deny_list)).check(paths)


def _copy(sharded, tmp_path):
    ds = tmp_path / "data"
    shutil.copytree(sharded[0], ds, ignore=shutil.ignore_patterns("work"))
    return ds


def _set_cell(path, column, row, value):
    table = pq.read_table(path)
    values = table[column].to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    pq.write_table(table.set_column(i, column, pa.array(values, table.schema.field(i).type)), path)


def _rewrite_tar(path, change):
    """Write the tar again with `change(i, TarInfo)` applied to every member's header."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, (m, data) in enumerate(members):
            change(i, m)
            tar.addfile(m, io.BytesIO(data))


def _plant_patient(ds):
    _set_cell(ds / "slices.parquet", "patient", 5, NAME)


def _plant_reason(ds):
    _set_cell(ds / "volumes.parquet", "reason", 0, f"a series of {BIRTH_DATE}")


def _plant_column(ds):
    table = pq.read_table(ds / "slices.parquet")
    pq.write_table(table.append_column("series_description", pa.array(["CT Thorax"] * len(table))),
                   ds / "slices.parquet")


def _plant_manifest(ds):
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["config"]["write"]["note"] = f"from study {UID}"
    manifest["warnings"].insert(0, f"ask {NAME}")   # first: the cohort's own warnings vary in number
    (ds / "manifest.json").write_text(json.dumps(manifest))


def _first_shard(ds):
    return json.loads((ds / "manifest.json").read_text())["shards"][0]["path"]


def _plant_member_name(ds):
    def rename(i, m):
        if i == 3:
            m.name = "Fischer_Anna-00001." + m.name.partition(".")[2]
    _rewrite_tar(ds / _first_shard(ds), rename)


def _plant_member_header(ds):
    def owner(i, m):
        if i == 4:
            m.uname = "fischer.anna"
        if i == 6:
            m.pax_headers = {"comment": f"born {BIRTH_DATE}"}
    _rewrite_tar(ds / _first_shard(ds), owner)


def _plant_idx(ds):
    idx = ds / _first_shard(ds).replace(".tar", ".idx")
    lines = idx.read_text().splitlines()
    key = lines[1].split(" ")[3].partition(".")[0]
    lines[1] = lines[1].replace(key, "PID30610390-00001")          # both members of the sample
    idx.write_text("\n".join(lines) + "\n")


def _plant_log(ds):
    (ds / "shard.log").write_text(f"converted 502 slices\npatient {NAME} born {BIRTH_DATE}\n")


def _plant_file_name(ds):
    (ds / "Fischer_Anna.txt").write_text("nothing in here\n")


# (plant, the file findings name, the findings (check -> where) it must give); {name}, {date}, {pid}: the
# deny-list lines of NAME, BIRTH_DATE and the id PID30610390
CASES = {
    "parquet-pseudonym-column": (_plant_patient, "slices.parquet", {
        "not a pseudonym (16 hex digits)": "column patient, row 5", "deny-list line {name}": "column patient, row 5"}),
    "parquet-text-column": (_plant_reason, "volumes.parquet", {"a DICOM-looking date": "column reason, row 0",
                                                                 "deny-list line {date}": "column reason, row 0"}),
    "parquet-unknown-column": (_plant_column, "slices.parquet", {
        "a text column the dataset format does not define": "column 17"}),
    "manifest": (_plant_manifest, "manifest.json", {"a DICOM-looking UID": "$.config.write.note",
                                                    "deny-list line {name}": "$.warnings[0]"}),
    "tar-member-name": (_plant_member_name, "SHARD", {
        "not a member name (<key>.<member of the manifest>)": "member 3 name",
        "deny-list line {name}": "member 3 name"}),
    "tar-member-header": (_plant_member_header, "SHARD", {
        "uname is not empty (the format writes none)": "member 4 uname", "deny-list line {name}": "member 4 uname",
        "a pax header record (the format writes none)": "member 6 pax record 0",
        "a DICOM-looking date": "member 6 pax record 0", "deny-list line {date}": "member 6 pax record 0"}),
    "idx": (_plant_idx, "IDX", {"not an index line (<ext> <offset> <size> <member name> ...)": "line 2",
                                 "deny-list line {pid}": "line 2"}),
    "log": (_plant_log, "shard.log", {"a DICOM-looking date": "line 2", "deny-list line {name}": "line 2",
                                       "deny-list line {date}": "line 2"}),
    "file-name": (_plant_file_name, "(paths)", {"deny-list line {name}": "path of file 1 in sorted order"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_planted_string_is_found_where_it_stands_and_never_shown(case, sharded, deny_list, tmp_path):
    plant, file, expected = CASES[case]
    line = {entry: n for n, entry in enumerate(deny_list.read_text().splitlines(), 1)}
    number = {"name": line[NAME], "date": line[BIRTH_DATE], "pid": line["PID30610390"]}
    expected = {check.format(**number): where for check, where in expected.items()}
    ds = _copy(sharded, tmp_path)
    plant(ds)
    file = {"SHARD": _first_shard(ds), "IDX": _first_shard(ds).replace(".tar", ".idx")}.get(file, file)
    result, report = _audit(ds, deny_list)
    assert result.exit_code == 1 and "audit FAILED: " in result.output, result.output
    got = {(f.check, f.where) for f in report.findings}
    assert got == set(expected.items()), got
    assert {f.file for f in report.findings} == {file}
    for secret in (NAME, "Fischer_Anna", "fischer.anna", BIRTH_DATE, UID, "PID30610390", "CT Thorax"):
        assert secret not in result.output and not any(secret in str(f) for f in report.findings)


def test_a_pool_of_workers_reads_the_tars_to_the_same_report(sharded, deny_list, tmp_path, monkeypatch):
    import datakit.audit

    ds = _copy(sharded, tmp_path)
    _plant_member_header(ds)
    one = audit_dataset(ds, deny_list=deny_list, workers=1)
    monkeypatch.setattr(datakit.audit, "MIN_POOL_TARS", 1)
    two = audit_dataset(ds, deny_list=deny_list, workers=2)
    assert one.counts == two.counts and one.findings == two.findings and one.checked == two.checked
    assert one.strings == two.strings and len(one.counts) == 5


def test_a_file_whose_name_has_findings_is_named_without_it(sharded, deny_list, tmp_path):
    ds = _copy(sharded, tmp_path)
    (ds / "Fischer_Anna.log").write_text(f"{BIRTH_DATE}\n")
    _, report = _audit(ds, deny_list)
    assert {f.file for f in report.findings} == {"(paths)", "<a name of 16 characters>"}


def test_binary_and_temporary_files_are_findings(sharded, deny_list, tmp_path):
    ds = _copy(sharded, tmp_path)
    (ds / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(100))
    (ds / "slices.parquet.partial-123").write_bytes(b"half")
    _, report = _audit(ds, deny_list)
    assert set(report.counts) == {
        (".DS_Store", "a binary file that is not part of the dataset format (audit cannot read it)"),
        ("slices.parquet.partial-123", "a temporary file of an unfinished write (delete it before sharing)")}


def test_what_cannot_be_audited_is_refused_in_one_line(sharded, tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    for args, message in ((["audit", str(tmp_path)], "holds no manifest.json: not a finished tlx dataset"),
                          (["audit", str(sharded[0]), "--deny-list", str(tmp_path / "empty.txt")],
                           "holds no entries (one name or id per line; # starts a comment)"),
                          (["audit", str(sharded[0]), "--deny-list", str(tmp_path / "nope.txt")],
                           "cannot read the deny list")):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert message in result.output
    (tmp_path / "latin1.txt").write_bytes("Müller\n".encode("latin-1"))
    with pytest.raises(DatakitError, match=r"is not UTF-8 text \(byte 1\); save it as UTF-8"):
        load_deny_list(tmp_path / "latin1.txt")


@pytest.mark.parametrize(("text", "found"), [
    ("19540709", ["a DICOM-looking date"]),
    ("born 1954-07-09", []),                                  # ISO dates (log timestamps) are not DICOM's
    ("20240101120000.5", ["a DICOM-looking date"]),          # DT
    ("19541309", []),                                         # no 13th month
    ("d5e148707caac42ba19540709a5f6964", []),                 # inside a hex digest
    ("12345678-19540709", ["a DICOM-looking date"]),
    ("1.2.840.113619.2.55.3.604688119", ["a DICOM-looking UID"]),
    ("2.25.329800735698586629295641978511506172918", ["a DICOM-looking UID"]),
    ("1.2.840.10008.1.2.1", []),                              # a transfer syntax names no one
    ("tlx 0.1.0, pydicom 3.0.2", []),
    ("v1.2 16", []),
])
def test_what_counts_as_a_dicom_date_or_uid(text, found):
    assert dicom_like(text) == found


def test_deny_list_entries_match_their_usual_spellings(tmp_path):
    (tmp_path / "deny.txt").write_text("Müller^Hans\n42\nAnn\n")
    checker = TextChecker(load_deny_list(tmp_path / "deny.txt"))
    texts = ["MUELLER_HANS", "mueller hans", "Muller^Hans", "MüllerHans", "Hans Müller",
             "room 42", "4242", "ab42cd", "Ann Smith", "Annual", "planned"]
    hits = {texts[i]: check for i, check in checker.check(texts)}
    assert hits == {"MUELLER_HANS": "deny-list line 1", "mueller hans": "deny-list line 1",
                    "Muller^Hans": "deny-list line 1", "MüllerHans": "deny-list line 1",
                    "room 42": "deny-list line 2", "Ann Smith": "deny-list line 3"}


def test_tars_as_tlx_writes_them_are_walked_fast_and_read_as_tarfile_reads_them(sharded):
    from datakit.audit_files import TarHeaders, _header, _ustar_headers

    for path in sorted((sharded[0] / "shards").rglob("*.tar")):
        slow = TarHeaders()
        with tarfile.open(path) as tar:
            for i, m in enumerate(tar):
                slow.names.append(m.name)
                _header(i, m, slow)
        assert _ustar_headers(path.read_bytes()) == slow and len(slow.names) > 0 and slow.problems == []


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """kind -> a tiny `tlx convert` dataset of that kind (public datasets keep their source's ids)."""
    from datakit.convert.class_folder import ClassFolderOptions, convert_class_folder
    from datakit.convert.image_folder import ImageFolderOptions, convert_image_folder
    from datakit.convert.nifti_seg import NiftiSegOptions, convert_nifti_seg
    from tests.fixtures.task_datasets import (
        write_chestxray,
        write_class_folders,
        write_lits_cases,
    )

    tmp = tmp_path_factory.mktemp("audit-kinds")
    convert_nifti_seg(NiftiSegOptions(images=str(write_lits_cases(tmp / "lits", n_cases=5)), out=str(tmp / "seg"),
                                      preset="lits", size=16, workers=1, samples_per_shard=7, val=1, test=1))
    root, csv_path = write_chestxray(tmp / "cxr", n_patients=10, size=24)
    convert_image_folder(ImageFolderOptions(root=str(root), labels=str(csv_path), out=str(tmp / "multi"), size=16,
                                            val=0.2, test=0.2, workers=1, samples_per_shard=6))
    convert_class_folder(ClassFolderOptions(root=str(write_class_folders(tmp / "nat", per_class=5, size=16)),
                                            out=str(tmp / "cls"), val=0.2, test=0.2, workers=1, samples_per_shard=5))
    return {"segmentation": tmp / "seg", "multilabel": tmp / "multi", "image-classification": tmp / "cls"}


@pytest.mark.parametrize("kind", ["segmentation", "multilabel", "image-classification"])
def test_converted_datasets_pass_and_a_planted_date_is_found(kind, converted, tmp_path):
    report = audit_dataset(converted[kind], workers=1)
    assert report.clean and report.kind == kind and "slices.parquet" in report.checked
    ds = tmp_path / kind
    shutil.copytree(converted[kind], ds)
    _set_cell(ds / "slices.parquet", "split", 1, f"train {BIRTH_DATE}")
    report = audit_dataset(ds, workers=1)
    assert set(report.counts) == {("slices.parquet", "a DICOM-looking date"),
                                  ("slices.parquet", "not a split name (train, val, test)")}
