"""Pseudonyms: keyed hashes that keep equality of ids (patients, UIDs) and hide their content.

    secret = load_secret(secret_file)          # datakit.secret: --secret-file, else env TLX_SECRET
    pseudonym(secret, "PID-00042")             # -> '3f9c0a1b7d2e4c55' (16 hex digits)

Why HMAC and not a plain hash: a plain SHA-256 of a patient id can be reversed by
hashing every plausible id (they are short and structured); without the secret the
HMAC cannot (datakit.secret refuses keys short enough to be tried exhaustively). The
same secret gives the same pseudonyms, so datasets made from overlapping exports with
one secret can be joined and split consistently.

Why 16 hex digits (64 bits): keys stay short (shard member names are capped at 100
characters) and the chance of any collision among 12M SOP UIDs is about 4e-6.
"""
from __future__ import annotations

import hashlib
import hmac

PSEUDONYM_HEX = 16


def pseudonym(secret: bytes, value: str | bytes, length: int = PSEUDONYM_HEX) -> str:
    """Truncated HMAC-SHA256 hex digest of `value` (str values are UTF-8 encoded)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return hmac.new(secret, value, hashlib.sha256).hexdigest()[:length]
