"""Pseudonyms: keyed hashes that keep equality of ids (patients, UIDs) and hide their content.

    secret = load_secret(secret_file)          # --secret-file, else env TLX_SECRET
    pseudonym(secret, "PID-00042")             # -> '3f9c0a1b7d2e4c55' (16 hex digits)

Why HMAC and not a plain hash: a plain SHA-256 of a patient id can be reversed by
hashing every plausible id (they are short and structured); without the secret the
HMAC cannot. The same secret gives the same pseudonyms, so datasets made from
overlapping exports with one secret can be joined and split consistently.

Why 16 hex digits (64 bits): keys stay short (shard member names are capped at 100
characters) and the chance of any collision among 12M SOP UIDs is about 4e-6.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from datakit.errors import DatakitError
from datakit.walk import os_reason

SECRET_ENV = "TLX_SECRET"
PSEUDONYM_HEX = 16

_FIX = (f"set the environment variable {SECRET_ENV} (e.g. export {SECRET_ENV}=$(openssl rand -hex 32)) "
        "or pass --secret-file FILE; keep the secret: the same secret gives the same pseudonyms")


def load_secret(secret_file: str | os.PathLike | None = None) -> bytes:
    """The pseudonym key: the content of `secret_file` if given, else $TLX_SECRET.

    Surrounding whitespace (a trailing newline from `echo > file`) is not part of the key.
    """
    if secret_file is not None:
        path = Path(secret_file)
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise DatakitError(f"cannot read secret file {str(path)!r} ({os_reason(exc)}); {_FIX}") from exc
        if not secret:
            raise DatakitError(f"secret file {str(path)!r} is empty; {_FIX}")
        return secret
    secret = os.environ.get(SECRET_ENV, "").strip().encode()
    if not secret:
        raise DatakitError(f"no pseudonym secret given: {_FIX}")
    return secret


def pseudonym(secret: bytes, value: str | bytes, length: int = PSEUDONYM_HEX) -> str:
    """Truncated HMAC-SHA256 hex digest of `value` (str values are UTF-8 encoded)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return hmac.new(secret, value, hashlib.sha256).hexdigest()[:length]
