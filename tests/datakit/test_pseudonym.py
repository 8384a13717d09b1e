"""Pseudonyms are keyed, stable and short (the secret itself: test_secret.py)."""
import hashlib
import hmac

from datakit.pseudonym import pseudonym


def test_pseudonym_is_truncated_hmac_sha256():
    expected = hmac.new(b"k", b"PID-1", hashlib.sha256).hexdigest()[:16]
    assert pseudonym(b"k", "PID-1") == expected
    assert pseudonym(b"k", b"PID-1") == expected
    assert len(pseudonym(b"k", "x", length=24)) == 24


def test_pseudonym_depends_on_secret_and_value():
    assert pseudonym(b"k1", "PID-1") != pseudonym(b"k2", "PID-1")
    assert pseudonym(b"k1", "PID-1") != pseudonym(b"k1", "PID-2")
    assert "PID" not in pseudonym(b"k1", "PID-1")

