"""What `tlx audit` looks for in strings, and how, without ever quoting them (datakit.audit walks the files).

    checker = TextChecker(load_deny_list("names.txt"))          # or TextChecker(None)
    checker.check(pa.array(["3f9c0a1b7d2e4c55", "MUELLER^HANS"]), PSEUDONYM)
    # -> [(1, 'not a pseudonym (16 hex digits)'), (1, 'deny-list line 1')]

Three kinds of finding per string:
- not what the format says stands there (`Expect`: a pseudonym, a code, a split name, ...);
- something that looks like a DICOM date (DA `YYYYMMDD`, DT `YYYYMMDDHHMMSS[.ffffff]`, years
  1900-2099, valid month and day) or a DICOM UID (`[0-2]` then at least two more dot-separated
  numbers, 10 characters or more; the standard's own UIDs under 1.2.840.10008, which name SOP
  classes and transfer syntaxes and identify nobody, excepted), standing alone (not inside a
  longer run of letters or digits, such as a hex digest);
- an entry of the user's deny list (names, ids), case-insensitively (see load_deny_list).

Whole arrays are matched at once by pyarrow's RE2 engine (a 12M-row column takes seconds);
only the strings RE2 flags are looked at again in Python, to confirm a date or UID and to say
which deny-list line matched. Patterns are therefore written in the syntax both engines share.
"""
from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datakit.errors import DatakitError


@dataclass(frozen=True)
class Expect:
    """What a value must be: a full-match RE2 `pattern`, one of `values`, or at most `max_len`
    characters none of which matches `forbidden` (a character class: RE2 is slow at counted
    repetitions of Unicode classes). `name` says it in a finding."""
    name: str
    pattern: str | None = None
    values: tuple[str, ...] | None = None
    forbidden: str | None = None
    max_len: int | None = None


PSEUDONYM = Expect("a pseudonym (16 hex digits)", r"^[0-9a-f]{16}$")
FINGERPRINT = Expect("a secret fingerprint (16 hex digits)", r"^[0-9a-f]{16}$")
HEX32 = Expect("a hash (32 hex digits)", r"^[0-9a-f]{32}$")
HEX64 = Expect("a sha256 (64 hex digits)", r"^[0-9a-f]{64}$")
CODE = Expect("a code (at most 64 letters, digits, spaces or _.,+/:()-)", forbidden=r"[^\p{L}\p{N} _.,+/:()-]",
              max_len=64)
SPLIT = Expect("a split name (train, val, test)", values=("train", "val", "test"))
SHARD_TAR = Expect("a shard path (shards/<split>/<split>-NNNNNN.tar)",
                   r"^shards/(train/train|val/val|test/test)-[0-9]{6}\.tar$")
SHARD_IDX = Expect("a shard index path (shards/<split>/<split>-NNNNNN.idx)",
                   r"^shards/(train/train|val/val|test/test)-[0-9]{6}\.idx$")
CT_KEY_BODY = r"[0-9a-f]{16}-[0-9]{5,}"          # <volume pseudonym>-<slice index> (datakit.plan)
KEY_BODY = r"[A-Za-z0-9_-]+"                      # any kind's key (docs/dataset-format.md)


def one_of(name: str, values) -> Expect:
    return Expect(f"one of the dataset's {name}", values=tuple(values))


def member_name(key_body: str, exts) -> str:
    """RE2 body (no anchors) of a tar member name `<key>.<ext>` with one of `exts`."""
    return f"{key_body}\\.({'|'.join(re.escape(e) for e in sorted(exts))})"


# ---------------------------------------------------------------- DICOM-looking dates and UIDs

# RE2 pre-filter (a superset of what the two Python patterns accept).
_DICOM_PREFILTER = r"(19|20)[0-9]{6}|[0-2]\.[0-9]+\.[0-9]+"
_DATE = re.compile(r"(?<![0-9A-Za-z])(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?:\d\d){0,3}"
                   r"(?:\.\d{1,6})?(?![0-9A-Za-z])")
_UID = re.compile(r"(?<![\w.])[0-2](?:\.(?:0|[1-9]\d*)){2,}(?!\w|\.\d)")
MIN_UID_CHARS = 10                       # "2.25.1" or a version number like 0.1.0 is no instance UID
STANDARD_UID_ROOT = "1.2.840.10008."     # DICOM's own UIDs: SOP classes, transfer syntaxes


def dicom_like(text: str) -> list[str]:
    """'a DICOM-looking date' and/or 'a DICOM-looking UID' if `text` holds one (see the module docstring)."""
    found = []
    if _DATE.search(text):
        found.append("a DICOM-looking date")
    if any(len(m.group()) >= MIN_UID_CHARS and not m.group().startswith(STANDARD_UID_ROOT)
           for m in _UID.finditer(text)):
        found.append("a DICOM-looking UID")
    return found


# ---------------------------------------------------------------- the deny list

_SEPARATOR = "[^0-9A-Za-z]?"    # DICOM's name separator ^ or a space in an entry: any one sign, or none
_CHUNK = 200                     # entries per RE2 pattern (RE2 caps a program's memory)


def _escaped(form: str) -> str:
    out = []
    for ch in form:
        if ch in " ^":
            out.append(_SEPARATOR)
        elif not ch.isascii() or ch.isalnum():
            out.append(ch)
        elif ch.isprintable():
            out.append("\\" + ch)               # ASCII punctuation: escaped alike in RE2 and Python
        else:
            out.append(f"\\x{ord(ch):02x}")
    return "".join(out)


def _forms(entry: str) -> list[str]:
    """The entry, with German umlauts written out (Müller -> Mueller), and without accents (Muller)."""
    spelled = entry
    for a, b in (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("Ä", "Ae"), ("Ö", "Oe"), ("Ü", "Ue"), ("ß", "ss")):
        spelled = spelled.replace(a, b)
    bare = "".join(c for c in unicodedata.normalize("NFKD", entry) if not unicodedata.combining(c))
    return sorted({entry, spelled, bare})


def _entry_pattern(entry: str) -> str:
    body = "|".join(_escaped(f) for f in _forms(entry))
    if len(entry) <= 3 or entry.isdigit():
        # Short entries and numbers (ids) match only as a whole token, not inside words, hex digests or numbers.
        return f"(^|[^0-9A-Za-z])({body})($|[^0-9A-Za-z])"
    return f"({body})"


class DenyList:
    """Strings that must appear nowhere: each entry, case-insensitively, anywhere in a value (entries
    of 1-3 characters and all-digit entries only as a whole token). `^` or a space in an entry matches
    any one sign or none (MUELLER^HANS finds Mueller_Hans, Mueller Hans, MuellerHans); umlauts and
    accents also match written out or dropped. Findings name the entry's line, never the entry."""

    def __init__(self, entries: list[tuple[int, str]]):
        self.entries = entries
        pieces = [_entry_pattern(e) for _, e in entries]
        self.patterns = ["|".join(pieces[i:i + _CHUNK]) for i in range(0, len(pieces), _CHUNK)]
        self._each = [(line, re.compile(p, re.IGNORECASE)) for (line, _), p in zip(entries, pieces)]

    def lines_in(self, text: str) -> list[int]:
        return [line for line, rx in self._each if rx.search(text)]


def load_deny_list(path: str | os.PathLike) -> DenyList:
    """One entry per line of a UTF-8 file; blank lines and lines starting with # are skipped,
    surrounding whitespace is not part of an entry. DatakitError (one line) for a file that cannot
    be read, is not UTF-8, or holds no entry (an audit that checks nothing must not pass silently)."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DatakitError(f"cannot read the deny list {str(p)!r} ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise DatakitError(f"the deny list {str(p)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    entries = [(n, s) for n, line in enumerate(text.splitlines(), 1) if (s := line.strip()) and not s.startswith("#")]
    if not entries:
        raise DatakitError(f"the deny list {str(p)!r} holds no entries (one name or id per line; # starts a comment)")
    return DenyList(entries)


# ---------------------------------------------------------------- checking arrays of strings

def as_strings(values) -> pa.Array:
    """`values` (a list of str, or a pyarrow string, large string or dictionary array) as one string array."""
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(list(values), pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr.cast(pa.large_string()) if pa.types.is_large_string(arr.type) else arr.cast(pa.string())


def _where(mask) -> np.ndarray:
    return np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))


def _unexpected(arr: pa.Array, expect: Expect) -> pa.Array:
    """True where a (non-null) value is not what `expect` says."""
    if expect.values is not None:
        return pc.invert(pc.is_in(arr, value_set=pa.array(expect.values, arr.type)))
    if expect.pattern is not None:
        return pc.invert(pc.match_substring_regex(arr, expect.pattern))
    return pc.or_(pc.greater(pc.utf8_length(arr), expect.max_len), pc.match_substring_regex(arr, expect.forbidden))


class TextChecker:
    """Checks arrays of strings; returns (index, check) pairs, never the strings."""

    def __init__(self, deny: DenyList | None):
        self.deny = deny

    def check(self, values, expect: Expect | None = None) -> list[tuple[int, str]]:
        """`values`: a pyarrow string array (dictionary and chunked ones too) or a list of str; nulls
        are never findings. `expect` None: free text (dates, UIDs and the deny list only)."""
        arr = as_strings(values)
        found: list[tuple[int, str]] = []
        if expect is not None:
            found += [(int(i), f"not {expect.name}")
                      for i in _where(pc.and_(_unexpected(arr, expect), pc.is_valid(arr)))]
        for i in _where(pc.match_substring_regex(arr, _DICOM_PREFILTER)):
            found += [(int(i), c) for c in dicom_like(arr[int(i)].as_py())]
        if self.deny is not None:
            hits = set()
            for pattern in self.deny.patterns:
                hits.update(int(i) for i in _where(pc.match_substring_regex(arr, pattern, ignore_case=True)))
            for i in sorted(hits):
                found += [(i, f"deny-list line {line}") for line in self.deny.lines_in(arr[i].as_py())]
        return sorted(found)
