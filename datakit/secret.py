"""The pseudonym secret: loaded, checked for strength, fingerprinted, made new; never logged or stored.

    secret = load_secret(secret_file)        # --secret-file FILE, else $TLX_SECRET; DatakitError if weak
    fingerprint(secret)                      # '5c0f3a9e12b4d7e8': an HMAC of a fixed string, safe to record
    check_fingerprint(recorded, secret, "work/scan.json", fix="...")   # another secret: one line, neither shown
    check_dataset_secret("data/", secret)    # manifest.json and work/scan.json record this secret's fingerprint
    path = new_secret_file("~/.config/tlx/secret")   # 32 random bytes as 64 hex digits, mode 0600

Why a minimum length: pseudonyms are a truncated HMAC of short, structured ids (medical
record numbers are often 6-10 digits). With a short key, anyone holding a dataset can try
every key against every plausible id and re-identify all patients. 16 bytes (128 bits) put
that out of reach; a key written as hex digits carries half a byte per character, so it
needs 32 of them. The key's bytes are used as given (`openssl rand -hex 32` keys keep the
pseudonyms they always had).

Why a fingerprint: a dataset must be extended and joined only under the secret that made
it (the same patient gets another pseudonym under another key, and would then sit in two
splits). The fingerprint, HMAC-SHA256(secret, FINGERPRINT_MESSAGE) cut to 16 hex digits,
tells two secrets apart without revealing either: it is one more keyed hash, like every
pseudonym in the dataset, of a string that is no patient id.

The secret itself is never written anywhere by tlx (not in work/, the manifest, logs or
messages); `Secret` prints as its fingerprint so that a stray repr cannot leak it.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from datakit.errors import DatakitError
from datakit.walk import os_reason

SECRET_ENV = "TLX_SECRET"
MIN_KEY_BYTES = 16
NEW_KEY_BYTES = 32
FINGERPRINT_MESSAGE = b"tlx pseudonym secret fingerprint v1"
FINGERPRINT_HEX = 16
_HEX = re.compile(rb"[0-9a-fA-F]+")

_MAKE_ONE = ("make one with `tlx secret new FILE` and pass --secret-file FILE "
             f"(or export {SECRET_ENV}=$(openssl rand -hex 32))")
_FIX = (f"set the environment variable {SECRET_ENV} (e.g. export {SECRET_ENV}=$(openssl rand -hex 32)) "
        "or pass --secret-file FILE (`tlx secret new FILE` makes one); keep the secret: the same secret "
        "gives the same pseudonyms")


class Secret(bytes):
    """The key's bytes. Printed, formatted or logged it shows only its fingerprint."""

    def __repr__(self) -> str:
        return f"Secret(fingerprint={fingerprint(self)})"

    __str__ = __repr__


def fingerprint(secret: bytes) -> str:
    """HMAC-SHA256 of FINGERPRINT_MESSAGE under `secret`, 16 hex digits: equal for equal secrets."""
    return hmac.new(bytes(secret), FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()[:FINGERPRINT_HEX]


def check_strength(secret: bytes, source: str) -> Secret:
    """`secret` as a Secret, or DatakitError (one line, with the fix) if it is too short to keep
    pseudonyms of short ids from being reversed by trying every key. `source` names where it came
    from ("TLX_SECRET", "secret file 'k'"); the message never shows the secret."""
    n = len(secret)
    if _HEX.fullmatch(secret):
        if n < 2 * MIN_KEY_BYTES:
            raise DatakitError(f"the pseudonym secret ({source}) is {n} hex digits, fewer than {2 * MIN_KEY_BYTES} "
                               f"({MIN_KEY_BYTES} bytes): anyone holding the dataset could try every key and "
                               f"re-identify patients; {_MAKE_ONE}")
    elif n < MIN_KEY_BYTES:
        raise DatakitError(f"the pseudonym secret ({source}) is {n} bytes, fewer than {MIN_KEY_BYTES}: anyone "
                           f"holding the dataset could try every key and re-identify patients; {_MAKE_ONE}")
    return Secret(secret)


def load_secret(secret_file: str | os.PathLike | None = None) -> Secret:
    """The pseudonym key: the content of `secret_file` if given, else $TLX_SECRET, checked for strength.

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
        return check_strength(secret, f"secret file {str(path)!r}")
    secret = os.environ.get(SECRET_ENV, "").strip().encode()
    if not secret:
        raise DatakitError(f"no pseudonym secret given: {_FIX}")
    return check_strength(secret, SECRET_ENV)


def check_fingerprint(recorded: str | None, secret: bytes, where: str, fix: str) -> None:
    """DatakitError (one line) unless `recorded`, the fingerprint `where` holds, is that of `secret`.
    None (made before tlx recorded fingerprints) cannot be checked and is refused too. `fix` says
    what to do instead. Only fingerprints are shown, never a secret."""
    if recorded is None:
        raise DatakitError(f"{where} records no fingerprint of the pseudonym secret it was made with (an older "
                           f"tlx made it), so this secret cannot be checked against it; {fix}")
    mine = fingerprint(secret)
    if not hmac.compare_digest(recorded, mine):
        raise DatakitError(f"{where} was made with another pseudonym secret (fingerprint {recorded}; this secret's "
                           f"is {mine}): its pseudonyms would not match this secret's; {fix}")


def check_dataset_secret(dataset: str | os.PathLike, secret: bytes,
                         fix: str = "use the secret that made it, or do not join them") -> None:
    """DatakitError (one line) unless `dataset` was made with `secret`: every record of it that holds
    the fingerprint (manifest.json's config.scan, work/scan.json) must have this secret's."""
    from datakit.manifest import Layout, read_json

    layout = Layout(dataset)
    records = []
    if layout.manifest.exists():
        scan = (read_json(layout.manifest, "manifest.json").get("config") or {}).get("scan") or {}
        records.append((layout.manifest, scan.get("secret_fingerprint")))
    if layout.scan_record.exists():
        records.append((layout.scan_record, read_json(layout.scan_record, "work/scan.json").get("secret_fingerprint")))
    if not records:
        raise DatakitError(f"{str(layout.root)!r} holds neither manifest.json nor work/scan.json: not a dataset made "
                           "by `tlx shard` or `tlx scan`")
    for where, recorded in records:
        check_fingerprint(recorded, secret, str(where), fix)


def default_secret_path() -> Path:
    """Where `tlx secret new` puts a key when given no FILE: $XDG_CONFIG_HOME/tlx/secret (~/.config)."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "tlx" / "secret"


def new_secret_file(path: str | os.PathLike) -> Path:
    """Write a fresh key (NEW_KEY_BYTES random bytes from the OS, as hex digits and a newline) to
    `path`, readable by its owner only (mode 0600). Never replaces an existing file: the pseudonyms
    made with a key can be reproduced only with that key. Returns the path; the key is not returned."""
    path = Path(path).expanduser()
    if path.exists() or path.is_symlink():
        raise DatakitError(f"{str(path)!r} already exists; `tlx secret new` never replaces a key (the pseudonyms "
                           "made with it could no longer be reproduced): choose another FILE")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)                  # whatever the umask says
            os.write(fd, (secrets.token_hex(NEW_KEY_BYTES) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)                    # fails if the name appeared meanwhile: never replaces a key
        except FileExistsError:
            raise DatakitError(f"{str(path)!r} already exists; `tlx secret new` never replaces a key: "
                               "choose another FILE") from None
        except OSError:                           # a file system without hard links
            os.rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
