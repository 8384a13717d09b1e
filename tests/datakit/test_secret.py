"""The pseudonym secret: refused when short enough to try every key, made by `tlx secret new` (never
printed), never stored, and recorded by its fingerprint, so that a resume or a join with another
secret is refused in one line that shows neither secret."""
import hashlib
import hmac
import json
import os
import re
import shutil
import stat

import pytest
from click.testing import CliRunner

from cli.main import cli
from datakit.errors import DatakitError
from datakit.scan import scan
from datakit.secret import FINGERPRINT_MESSAGE, SECRET_ENV, fingerprint, load_secret
from tests.datakit.write_helpers import PLAN_ARGS, SECRET, WRITE_ARGS
from tlxcore.lock import LOCK_NAME

STRONG = "0123456789abcdef" * 4            # 64 hex digits (what `openssl rand -hex 32` gives)
OTHER = "another-secret-of-the-same-site-42"


def _one_line_error(result, pattern: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}      # the lock names the pid of its last holder


def test_secret_file_wins_over_env_and_is_stripped(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, STRONG)
    f = tmp_path / "secret"
    f.write_text(f"  {OTHER}\n")
    assert load_secret(f) == OTHER.encode()
    assert load_secret(None) == STRONG.encode()


def test_missing_secret_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(DatakitError, match=r"no pseudonym secret given: set the environment variable TLX_SECRET"):
        load_secret(None)
    with pytest.raises(DatakitError, match=r"cannot read secret file .*nope.* --secret-file"):
        load_secret(tmp_path / "nope")
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(DatakitError, match=r"secret file .*empty.* is empty"):
        load_secret(tmp_path / "empty")


@pytest.mark.parametrize(("value", "message"), [
    ("x", r"is 1 bytes, fewer than 16"),
    ("zzzzzzzzzzzzzzz", r"is 15 bytes, fewer than 16"),
    ("0123456789abcdef", r"is 16 hex digits, fewer than 32 \(16 bytes\)"),      # 8 bytes of key material
    ("0123456789ABCDEF0123456789abcde", r"is 31 hex digits, fewer than 32"),
])
def test_short_secrets_are_refused_with_the_fix(value, message, monkeypatch, tmp_path):
    monkeypatch.setenv(SECRET_ENV, value)
    with pytest.raises(DatakitError, match=rf"the pseudonym secret \(TLX_SECRET\) {message}") as err:
        load_secret(None)
    text = str(err.value)
    assert "\n" not in text and (len(value) < 5 or value not in text)
    assert "`tlx secret new FILE` and pass --secret-file FILE" in text
    f = tmp_path / "key"
    f.write_text(value + "\n")
    with pytest.raises(DatakitError, match=rf"the pseudonym secret \(secret file '.*key'\) {message}"):
        load_secret(f)


@pytest.mark.parametrize("value", ["zzzzzzzzzzzzzzzz", "0123456789abcdef" * 2, STRONG, "p" * 16 + " words"])
def test_strong_enough_secrets_are_taken_as_they_are(value, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, value)
    assert load_secret(None) == value.encode()          # the key's bytes as given: pseudonyms stay what they were


def test_commands_refuse_a_short_secret_in_one_line_without_showing_it(tmp_path):
    (tmp_path / "dicom").mkdir()
    for args in (["scan", "--dicom-root", str(tmp_path / "dicom"), "--out", str(tmp_path / "o")],
                 ["shard", "--dicom-root", str(tmp_path / "dicom"), "--out", str(tmp_path / "o")]):
        line = _one_line_error(CliRunner().invoke(cli, args, env={"TLX_SECRET": "Zq9#x"}),
                               r"is 5 bytes, fewer than 16: anyone holding the dataset could try every key")
        assert "Zq9#x" not in line
    assert not (tmp_path / "o").exists()


def test_the_scan_library_refuses_a_weak_key_too(tmp_path):
    with pytest.raises(DatakitError, match=r"the pseudonym secret \(the secret given to scan\) is 1 bytes"):
        scan(tmp_path, tmp_path / "out", secret=b"s")


def test_a_secret_prints_as_its_fingerprint_only(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, STRONG)
    key = load_secret(None)
    fp = hmac.new(STRONG.encode(), FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()[:16]
    assert fingerprint(key) == fp and re.fullmatch(r"[0-9a-f]{16}", fp)
    for shown in (repr(key), str(key), f"{key}", "%s" % key, repr([key])):  # noqa: UP031 - %-formatting too
        assert STRONG not in shown and fp in shown
    assert fingerprint(OTHER.encode()) != fp and fingerprint(STRONG.encode()) == fp


def test_secret_new_writes_32_random_bytes_readable_by_the_owner_only(tmp_path):
    old = os.umask(0)                       # the file is 0600 whatever the umask
    try:
        results = [CliRunner().invoke(cli, ["secret", "new", str(tmp_path / name)]) for name in ("a", "b")]
    finally:
        os.umask(old)
    keys = []
    for name, result in zip("ab", results):
        assert result.exit_code == 0, result.output
        path = tmp_path / name
        text = path.read_text()
        assert re.fullmatch(r"[0-9a-f]{64}\n", text) and len(bytes.fromhex(text.strip())) == 32
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert text.strip() not in result.output                     # never printed
        assert f"fingerprint {fingerprint(load_secret(path))}" in result.output
        keys.append(text)
    assert keys[0] != keys[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]   # no temporary file left behind


def test_secret_new_never_replaces_a_key_and_defaults_to_the_config_folder(tmp_path):
    key = tmp_path / "key"
    assert CliRunner().invoke(cli, ["secret", "new", str(key)]).exit_code == 0
    before = key.read_bytes()
    _one_line_error(CliRunner().invoke(cli, ["secret", "new", str(key)]), r"already exists; `tlx secret new` never "
                                                                          r"replaces a key")
    assert key.read_bytes() == before
    result = CliRunner().invoke(cli, ["secret", "new"], env={"XDG_CONFIG_HOME": str(tmp_path / "config")})
    assert result.exit_code == 0, result.output
    default = tmp_path / "config" / "tlx" / "secret"
    assert stat.S_IMODE(default.stat().st_mode) == 0o600 and stat.S_IMODE(default.parent.stat().st_mode) == 0o700
    assert len(load_secret(default)) == 64


def test_the_fingerprint_is_recorded_and_the_secret_is_nowhere(sharded):
    ds, output = sharded
    fp = fingerprint(SECRET.encode())
    assert json.loads((ds / "work" / "scan.json").read_text())["secret_fingerprint"] == fp
    assert json.loads((ds / "work" / "plan.json").read_text())["scan"]["secret_fingerprint"] == fp
    assert json.loads((ds / "manifest.json").read_text())["config"]["scan"]["secret_fingerprint"] == fp
    assert SECRET not in output
    for path in ds.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_resume_with_another_secret_is_refused_in_one_line(cohort, sharded):
    root, _ = cohort
    ds, _ = sharded
    before = _files(ds)
    args = ["shard", "--dicom-root", str(root), "--out", str(ds), *PLAN_ARGS, *WRITE_ARGS]
    line = _one_line_error(CliRunner().invoke(cli, args, env={"TLX_SECRET": OTHER}),
                           rf"index.parquet was made with another pseudonym secret \(fingerprint "
                           rf"{fingerprint(SECRET.encode())}; this secret's is {fingerprint(OTHER.encode())}\): "
                           r"its pseudonyms would not match this secret's; use that secret, or a new output folder")
    assert SECRET not in line and OTHER not in line
    assert _files(ds) == before


def test_a_finished_dataset_without_its_index_still_refuses_another_secret(cohort, sharded, tmp_path):
    root, _ = cohort
    ds = tmp_path / "data"
    shutil.copytree(sharded[0], ds, ignore=shutil.ignore_patterns("work"))
    args = ["shard", "--dicom-root", str(root), "--out", str(ds), *PLAN_ARGS, *WRITE_ARGS]
    _one_line_error(CliRunner().invoke(cli, args, env={"TLX_SECRET": OTHER}),
                    r"manifest.json was made with another pseudonym secret")
    assert not (ds / "work").exists()


def test_scanning_again_with_another_secret_is_refused_and_an_unrecorded_one_too(cohort, tmp_path):
    root, truth = cohort
    dicom = tmp_path / "dicom"
    for entry in [f for f in truth["files"] if f["series"] == "p000-st2-se1"][:3]:
        (dicom / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / entry["path"], dicom / entry["path"])
    scan(dicom, tmp_path / "out", workers=1, secret=STRONG.encode())
    scan(dicom, tmp_path / "out", workers=1, secret=STRONG.encode())          # its own scan: made again
    with pytest.raises(DatakitError, match=r"was made with another pseudonym secret"):
        scan(dicom, tmp_path / "out", workers=1, secret=OTHER.encode())
    record = tmp_path / "out" / "work" / "scan.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items()
                                  if k != "secret_fingerprint"}))
    with pytest.raises(DatakitError, match=r"records no fingerprint of the pseudonym secret it was made with \(an "
                                           r"older tlx made it\), so this secret cannot be checked"):
        scan(dicom, tmp_path / "out", workers=1, secret=STRONG.encode())


def test_secret_check_names_the_datasets_of_this_secret_and_refuses_another(sharded, tmp_path):
    ds, _ = sharded
    key = tmp_path / "key"
    key.write_text(SECRET)
    result = CliRunner().invoke(cli, ["secret", "check", str(ds), "--secret-file", str(key)])
    assert result.exit_code == 0 and f"{ds}: made with this secret" in result.output, result.output
    _one_line_error(CliRunner().invoke(cli, ["secret", "check", str(ds)], env={"TLX_SECRET": OTHER}),
                    r"manifest.json was made with another pseudonym secret .*; use the secret that made it, or do "
                    r"not join them")
    _one_line_error(CliRunner().invoke(cli, ["secret", "check", str(tmp_path)], env={"TLX_SECRET": OTHER}),
                    r"holds neither manifest.json nor work/scan.json")
