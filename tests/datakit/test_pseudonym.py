"""Pseudonyms are keyed, stable, short, and a missing secret is a one-line error with the fix."""
import hashlib
import hmac

import pytest

from datakit.errors import DatakitError
from datakit.pseudonym import SECRET_ENV, load_secret, pseudonym


def test_pseudonym_is_truncated_hmac_sha256():
    expected = hmac.new(b"k", b"PID-1", hashlib.sha256).hexdigest()[:16]
    assert pseudonym(b"k", "PID-1") == expected
    assert pseudonym(b"k", b"PID-1") == expected
    assert len(pseudonym(b"k", "x", length=24)) == 24


def test_pseudonym_depends_on_secret_and_value():
    assert pseudonym(b"k1", "PID-1") != pseudonym(b"k2", "PID-1")
    assert pseudonym(b"k1", "PID-1") != pseudonym(b"k1", "PID-2")
    assert "PID" not in pseudonym(b"k1", "PID-1")


def test_secret_file_wins_over_env_and_is_stripped(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "from-env")
    f = tmp_path / "secret"
    f.write_text("from-file\n")
    assert load_secret(f) == b"from-file"
    assert load_secret(None) == b"from-env"


def test_missing_secret_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(DatakitError, match=r"no pseudonym secret given: set the environment variable TLX_SECRET"):
        load_secret(None)
    with pytest.raises(DatakitError, match=r"cannot read secret file .*nope.* --secret-file"):
        load_secret(tmp_path / "nope")
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(DatakitError, match=r"secret file .*empty.* is empty"):
        load_secret(tmp_path / "empty")
