"""Reading DICOM headers: the fields scan needs, and where the pixel data lies.

    header = read_header(path)         # Header: the fields of HEADER_TAGS, transfer syntax, PixelData position
    row = header_row(header)           # the index columns datakit.dicom_pixels.read_hu needs
    with time_limit(10.0): ...         # SliceRejected("timeout") if a file takes longer

Why a hand-written header walker: scan reads millions of headers, and pydicom's
element generator builds an object per element of the whole header (a GE or
Siemens header has hundreds, mostly private) before anything is converted. Here
the header bytes are walked with struct, only the ~29 values in HEADER_TAGS are
decoded, and the position of the PixelData value falls out for free, so write
can later read uncompressed pixels with one seek and np.frombuffer. Anything the
walker cannot follow is handed to pydicom (`read_header_pydicom`), which then
decides; tests check the two agree on every file of pydicom's own test corpus.

The pixels themselves are datakit.dicom_pixels' job; what both need (SliceRejected, the
transfer syntaxes, the size limits, pydicom_quiet) lives here, the module with no
dependency on the other.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import signal
import struct
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field

# Transfer syntaxes the walker tells apart (the compressed ones are datakit.dicom_pixels')
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
UNCOMPRESSED = frozenset({IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE})

# The largest pixel data a file may declare (rows x cols x samples x frames x bytes per sample):
# checked before anything is allocated or inflated.
MAX_PIXEL_BYTES = 256 * 1024 * 1024

# The header fields scan needs: tag -> (keyword, VR used when the file is implicit VR).
HEADER_TAGS: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080008: ("ImageType", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080060: ("Modality", "CS"),
    0x00081030: ("StudyDescription", "LO"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00100020: ("PatientID", "LO"),
    0x00180015: ("BodyPartExamined", "CS"),
    0x00180050: ("SliceThickness", "DS"),
    0x00181030: ("ProtocolName", "LO"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00280301: ("BurnedInAnnotation", "CS"),             # datakit.burned_in
    0x00280302: ("RecognizableVisualFeatures", "CS"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
}
KEYWORDS = tuple(kw for kw, _ in HEADER_TAGS.values())
_TEXT = frozenset({"StudyDescription", "SeriesDescription", "PatientID", "BodyPartExamined", "ProtocolName"})
_MULTI = frozenset({"ImageType", "SpecificCharacterSet", "ImagePositionPatient", "ImageOrientationPatient",
                    "PixelSpacing"})

PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA = 0x7FE00010, 0x7FE00008, 0x7FE00009
ITEM_TAG, _ITEM_END, SEQ_END_TAG = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})
_CHUNK = 16384


class SliceRejected(Exception):
    """A file or slice that cannot be used, with a short machine code and a sentence for people."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


_TERM = re.compile(r"[A-Za-z0-9_ .-]*")


def shown_term(value, max_len: int = 16) -> str:
    """A header value as a reject reason may quote it: a code string or UID (letters, digits, space,
    `_ . -`, at most `max_len` characters: 16 for a CS, 64 for a UI), else only its length. Reasons
    are shareable (rejects.parquet); a corrupt length makes a value run on into the elements after
    it, names and birth dates included."""
    text = str(value).strip()
    if len(text) <= max_len and _TERM.fullmatch(text):
        return text
    return f"an invalid value of {len(text)} characters"


class HeaderError(Exception):
    """The header walker cannot follow this file (pydicom gets a second opinion)."""


@dataclass
class Header:
    """What one file's header says, as far as tlx cares."""
    transfer_syntax: str | None
    media_sop_class: str | None          # from the file meta (DICOMDIR: 1.2.840.10008.1.3.10)
    values: dict = field(default_factory=dict)   # keyword -> str | int | float | tuple | None
    pixel_tag: int = 0                   # PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA, or 0 if none
    pixel_offset: int | None = None      # file offset of the PixelData value (not for deflated files)
    pixel_length: int | None = None      # its length; None when undefined (encapsulated data)
    # Numeric fields (DS, IS) present with a value that is not a finite number ("NaN", "abc", "-1024x"):
    # their value reads None like an absent one, so callers that must tell the two apart look here.
    invalid: frozenset = frozenset()

    def get(self, keyword: str, default=None):
        value = self.values.get(keyword)
        return default if value is None else value


# --------------------------------------------------------------------------- sniffing

def sniff(head: bytes) -> str | None:
    """'part10' (preamble + DICM), 'raw' / 'raw-be' (a dataset without preamble, little or big
    endian, as old exports have), or None."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "part10"
    if len(head) >= 8:
        # A raw dataset starts with a low tag of group 0002 or 0008, explicit (VR letters) or implicit.
        for kind, endian in (("raw", "<"), ("raw-be", ">")):
            group, elem = struct.unpack_from(endian + "HH", head)
            if group in (0x0002, 0x0008) and elem < 0x0100:
                return kind
    return None


# --------------------------------------------------------------------------- header walker

class _Cursor:
    """Random access to a file through a small window, so headers cost one or two reads."""

    def __init__(self, f, size: int, data: bytes | None = None):
        self.f, self.size = f, size
        self.buf, self.base = (data, 0) if data is not None else (b"", 0)

    def get(self, pos: int, n: int) -> bytes:
        end = pos + n
        if end > self.size:
            raise HeaderError(f"header ends early: needs bytes {pos}..{end} of a {self.size}-byte file")
        off = pos - self.base
        if off < 0 or end > self.base + len(self.buf):
            self.f.seek(pos)
            self.buf, self.base, off = self.f.read(max(n, _CHUNK)), pos, 0
            if len(self.buf) < n:
                raise HeaderError("file shrank while reading")
        return self.buf[off:off + n]


_STRUCTS = {e: (struct.Struct(e + "HH"), struct.Struct(e + "I"), struct.Struct(e + "H")) for e in "<>"}


def _element_header(cur: _Cursor, pos: int, implicit: bool, endian: str):
    """(tag, vr, length, value_pos) of the element at pos."""
    tag_s, u32, u16 = _STRUCTS[endian]
    # Unpacked straight from the cursor's window when the element header lies in it (nearly always:
    # the window holds the first 16 KiB), without slicing bytes out first: scan walks ~55 elements a file.
    buf, off = cur.buf, pos - cur.base
    if off < 0 or off + 12 > len(buf):
        buf, off = cur.get(pos, 12 if pos + 12 <= cur.size else 8), 0
    group, elem = tag_s.unpack_from(buf, off)
    tag = group << 16 | elem
    if group == 0xFFFE:                                    # item / delimiters carry no VR
        return tag, None, u32.unpack_from(buf, off + 4)[0], pos + 8
    if implicit:
        known = HEADER_TAGS.get(tag)
        return tag, known[1].encode() if known else None, u32.unpack_from(buf, off + 4)[0], pos + 8
    v0, v1 = buf[off + 4], buf[off + 5]
    if not (65 <= v0 <= 90 and 65 <= v1 <= 90):
        raise HeaderError(f"element ({group:04X},{elem:04X}) has no valid VR ({bytes(buf[off + 4:off + 6])!r})")
    vr = buf[off + 4:off + 6]
    if vr in _LONG_VRS:
        if len(buf) - off < 12 or pos + 12 > cur.size:
            raise HeaderError("header ends inside an element header")
        return tag, vr, u32.unpack_from(buf, off + 8)[0], pos + 12
    return tag, vr, u16.unpack_from(buf, off + 6)[0], pos + 8


def _skip_undefined(cur: _Cursor, pos: int, implicit: bool, endian: str, depth: int = 0) -> int:
    """Position after a sequence (or encapsulated value) of undefined length that starts at pos."""
    if depth > 16:
        raise HeaderError("sequences nested deeper than 16 levels")
    while True:
        tag, _, length, pos = _element_header(cur, pos, True, endian)
        if tag == SEQ_END_TAG:
            return pos
        if tag != ITEM_TAG:
            raise HeaderError(f"expected an item in a sequence, found tag {tag:08X}")
        if length != _UNDEFINED:
            pos += length
            continue
        while True:                                        # an item of undefined length: walk its elements
            tag, vr, length, pos = _element_header(cur, pos, implicit, endian)
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                # UN of undefined length holds implicit VR little endian (PS3.5 6.2.2).
                pos = _skip_undefined(cur, pos, implicit or vr == b"UN", endian, depth + 1)
            else:
                pos += length


def _walk(cur: _Cursor, pos: int, implicit: bool, endian: str, header: Header) -> None:
    raw: dict[int, tuple[bytes | None, bytes]] = {}
    while pos + 8 <= cur.size:
        tag, vr, length, vpos = _element_header(cur, pos, implicit, endian)
        if tag in (PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA):
            header.pixel_tag, header.pixel_offset = tag, vpos
            if length != _UNDEFINED:
                header.pixel_length = length
            break
        if tag >> 16 == 0xFFFE:
            raise HeaderError(f"item tag {tag:08X} outside a sequence")
        if length == _UNDEFINED:
            if tag in HEADER_TAGS:
                raise HeaderError(f"element {tag:08X} has undefined length")
            pos = _skip_undefined(cur, vpos, implicit or vr == b"UN", endian)
            continue
        if tag in HEADER_TAGS:
            raw[tag] = (vr, cur.get(vpos, length))
        pos = vpos + length
    header.values, header.invalid = _decode_values(raw, endian)


def _decode_values(raw: dict, endian: str) -> tuple[dict, frozenset]:
    """keyword -> value of the raw elements, and the numeric keywords whose value is present but
    not a finite number (their value is None)."""
    charset = raw.get(0x00080005)
    encodings = None
    if charset is not None:
        terms = [t.strip() for t in charset[1].decode("ascii", "replace").strip(" \0").split("\\")]
        encodings = tuple(t for t in terms if t) or None
    values, invalid = {}, set()
    for tag, (vr, data) in raw.items():
        keyword, default_vr = HEADER_TAGS[tag]
        if default_vr == "US":
            # Some writers use SS/OW or UN here; the value is still one 16-bit integer.
            values[keyword] = struct.unpack_from(endian + "H", data)[0] if len(data) >= 2 else None
            continue
        if keyword in _TEXT and encodings:
            text = _decode_text(data, encodings)
        else:
            text = data.decode("latin-1")
        text = text.strip(" \0")
        if default_vr in ("DS", "IS"):
            try:
                values[keyword] = _numbers(text, keyword in _MULTI, integer=default_vr == "IS")
            except ValueError:
                values[keyword] = None
                invalid.add(keyword)
        elif keyword in _MULTI:
            values[keyword] = tuple(t.strip(" \0") for t in text.split("\\")) if text else None
        else:
            values[keyword] = text or None
    return values, frozenset(invalid)


# pydicom's codecs (pydicom.charset.python_encoding) of the character sets nearly every CT export uses:
# the default repertoire, Latin-1 and UTF-8 (a test keeps them equal to pydicom's). They let scan decode
# text without importing pydicom (0.45 s of CPU per scan worker); other sets go to pydicom.
COMMON_CODECS = {"": "iso8859", "ISO_IR 6": "iso8859", "ISO_IR 100": "latin_1", "ISO_IR 192": "UTF8"}


@functools.lru_cache(maxsize=64)
def _single_codec(encodings: tuple[str, ...]) -> str | None:
    """The Python codec of a single-byte or UTF-8 character set, or None (ISO 2022 code extensions)."""
    if len(encodings) != 1:
        return None
    if encodings[0] in COMMON_CODECS:
        return COMMON_CODECS[encodings[0]]
    from pydicom.charset import python_encoding

    return python_encoding.get(encodings[0])


def _decode_text(data: bytes, encodings: tuple[str, ...]) -> str:
    codec = _single_codec(encodings)
    if codec is not None:
        return data.decode(codec, "replace")
    from pydicom.charset import convert_encodings, decode_bytes

    try:
        with pydicom_quiet():     # its warnings quote the character set value, which may run on into names
            return decode_bytes(data, convert_encodings(list(encodings)), set())
    except (LookupError, ValueError):     # an unknown or broken character set: keep what latin-1 shows
        return data.decode("latin-1")


def _numbers(text: str, multi: bool, integer: bool):
    """The number(s) of a DS / IS value; None when it is empty. Raises ValueError when it is present
    but not finite numbers ("NaN", "inf", "abc", "-1024x"): that is not the same as absent."""
    parts = [p.strip() for p in text.split("\\")] if text else []
    floats = [float(p) for p in parts if p]
    if not all(math.isfinite(n) for n in floats):
        raise ValueError(f"not a finite number: {text[:16]!r}")
    if not floats:
        return None
    nums = [int(n) for n in floats] if integer else floats
    return tuple(nums) if multi else nums[0]


def read_header(path: str | os.PathLike, size: int | None = None) -> Header:
    """Parse the header fields of HEADER_TAGS; raises SliceRejected for files that are not DICOM.

    Falls back to pydicom (read_header_pydicom) when the walker cannot follow the file.
    """
    with open(path, "rb") as f:
        if size is None:
            size = os.fstat(f.fileno()).st_size
        head = f.read(_CHUNK)
        kind = sniff(head)
        if kind is None:
            raise SliceRejected("not-dicom", "not a DICOM file (no DICM marker and no DICOM tags at the start)")
        try:
            return _read_header_fast(f, size, head, kind)
        except (HeaderError, struct.error, UnicodeDecodeError, zlib.error) as exc:
            walker_error = exc
    check_inflated_size(path)   # pydicom inflates a deflated data set whole, and then parses it all
    return read_header_pydicom(path, walker_error)


def _file_meta(cur: _Cursor, head: bytes, kind: str) -> tuple[int, str | None, str | None]:
    """(position after the file meta, transfer syntax, media storage SOP class) as the meta says."""
    ts = media = None
    pos = 132 if kind == "part10" else 0
    if kind == "part10" or struct.unpack_from("<H", head)[0] == 0x0002:
        while pos + 8 <= cur.size:                              # file meta: always explicit VR little endian
            group = struct.unpack("<H", cur.get(pos, 2))[0]
            if group != 0x0002:
                break
            tag, vr, length, vpos = _element_header(cur, pos, False, "<")
            if length == _UNDEFINED:
                raise HeaderError("file meta element of undefined length")
            if tag == 0x00020010:
                ts = cur.get(vpos, length).decode("ascii", "replace").strip(" \0")
            elif tag == 0x00020002:
                media = cur.get(vpos, length).decode("ascii", "replace").strip(" \0")
            pos = vpos + length
    return pos, ts, media


def _read_header_fast(f, size: int, head: bytes, kind: str) -> Header:
    cur = _Cursor(f, size)
    cur.buf, cur.base = head, 0
    pos, ts, media = _file_meta(cur, head, kind)
    if kind == "raw-be":
        ts = EXPLICIT_BE                      # big endian without meta is always explicit VR
    elif ts is None or ts == EXPLICIT_LE:     # no meta, or meta that may lie: VR letters tell explicit from implicit
        vr = cur.get(pos + 4, 2)
        ts = EXPLICIT_LE if (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90) else IMPLICIT_LE
    header = Header(transfer_syntax=ts, media_sop_class=media)
    if ts == DEFLATED_LE:
        f.seek(pos)
        _walk_deflated(f.read(), header)
        header.pixel_offset = header.pixel_length = None     # offsets inside inflated bytes mean nothing on disk
        return header
    _walk(cur, pos, ts == IMPLICIT_LE, ">" if ts == EXPLICIT_BE else "<", header)
    return header


_INFLATE_PEEK = 256 * 1024           # inflated bytes tried first: a CT header (up to PixelData) fits
_INFLATE_MAX = 64 * 1024 * 1024
# A deflated data set that inflates to more than this is refused before pydicom inflates all of it
# in memory (a few MB of deflated zeros inflate to GB): the largest pixel data allowed plus a header.
MAX_INFLATED_BYTES = MAX_PIXEL_BYTES + _INFLATE_MAX


def _walk_deflated(compressed: bytes, header: Header) -> None:
    """Walk a deflated dataset, inflating only its start when the header (up to PixelData) lies
    there: the whole file would cost ~3 ms per 512x512 slice, most of a deflated file's scan."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    data = inflater.decompress(compressed, _INFLATE_PEEK)
    if inflater.unconsumed_tail or not inflater.eof:
        try:
            _walk(_Cursor(None, len(data), data), 0, False, "<", header)
            if header.pixel_tag:
                return
        except HeaderError:
            pass
        # The header goes on past the peek (or the data has no PixelData): walk all of it, as if
        # the peek had never happened.
        header.values, header.pixel_tag = {}, 0
        data += inflater.decompress(inflater.unconsumed_tail, _INFLATE_MAX - len(data))
    _walk(_Cursor(None, len(data), data), 0, False, "<", header)


def check_inflated_size(path) -> None:
    """Raise SliceRejected if `path` is deflated and its data set inflates to more than MAX_INFLATED_BYTES.
    Inflates in bounded steps and keeps nothing; a file it cannot follow is left to pydicom."""
    _inflate(path, keep=False)


def inflate_dataset(path) -> bytes | None:
    """The inflated data set of a deflated file (explicit VR little endian, from its first element
    after the file meta), inflated once in bounded steps: SliceRejected past MAX_INFLATED_BYTES.
    None when the file is not deflated or cannot be followed (pydicom then decides)."""
    return _inflate(path, keep=True)


def walk_dataset(data: bytes, header: "Header") -> None:
    """Walk an inflated data set (explicit VR LE) into `header`, up to its PixelData."""
    _walk(_Cursor(None, len(data), data), 0, False, "<", header)


def _inflate(path, keep: bool) -> bytes | None:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_CHUNK)
        kind = sniff(head)
        if kind is None:
            return None
        try:
            pos, ts, _ = _file_meta(_Cursor(f, size, head), head, kind)
        except (HeaderError, struct.error):
            return None
        if ts != DEFLATED_LE:
            return None
        f.seek(pos)
        inflater, total, parts = zlib.decompressobj(-zlib.MAX_WBITS), 0, []
        try:
            while not inflater.eof and (chunk := inflater.unconsumed_tail or f.read(1 << 20)):
                part = inflater.decompress(chunk, 1 << 24)
                total += len(part)
                if total > MAX_INFLATED_BYTES:
                    raise SliceRejected("undecodable", f"the deflated data set inflates to more than "
                                                       f"{MAX_INFLATED_BYTES // 2**20} MiB (a corrupt file)")
                if keep:
                    parts.append(part)
        except zlib.error:
            return None
    return b"".join(parts) if keep else None


@contextlib.contextmanager
def pydicom_quiet():
    """Silence pydicom's warnings and log records while it reads a file: they quote invalid header
    values ("Invalid value for VR UI: '...'"), and a corrupt length makes a value run on into the
    names, birth dates and ids after it, which must never reach a terminal or a job log. What was
    wrong with the file is in its reject reason, without the values."""
    logger = logging.getLogger("pydicom")
    disabled = logger.disabled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.disabled = True
        try:
            yield
        finally:
            logger.disabled = disabled


def read_header_pydicom(path, walker_error: Exception | None = None) -> Header:
    """The same Header through pydicom (stop_before_pixels); for files the walker cannot follow."""
    try:
        return _header_via_pydicom(path)
    except (SliceRejected, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises any kind on broken files: a reject with its reason
        why = walker_error or exc
        raise SliceRejected("unreadable-header", f"the DICOM header cannot be parsed ({one_line(why)})") from exc


@pydicom_quiet()
def _header_via_pydicom(path) -> Header:
    import pydicom

    with open(path, "rb") as f:
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        pixel_at = f.tell()
        tail = f.read(12)
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    ts = ts or (IMPLICIT_LE if ds.is_implicit_VR else (EXPLICIT_BE if not ds.is_little_endian else EXPLICIT_LE))
    header = Header(transfer_syntax=ts, media_sop_class=str(meta.get("MediaStorageSOPClassUID", "")) or None
                    if meta is not None else None)
    invalid = set()
    for keyword in KEYWORDS:
        try:
            header.values[keyword] = _from_pydicom(keyword, ds.get(keyword))
        except ValueError:
            header.values[keyword] = None
            invalid.add(keyword)
    header.invalid = frozenset(invalid)
    endian = "<" if ds.is_little_endian in (True, None) else ">"
    if len(tail) >= 8:
        group, elem = struct.unpack_from(endian + "HH", tail)
        tag = group << 16 | elem
        if tag in (PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA):
            header.pixel_tag = tag
            explicit_long = tail[4:6] in _LONG_VRS
            length = struct.unpack_from(endian + "I", tail, 8 if explicit_long else 4)[0] if len(tail) >= 12 or \
                not explicit_long else None
            if length is not None and ts != DEFLATED_LE:
                header.pixel_offset = pixel_at + (12 if explicit_long else 8)
                header.pixel_length = None if length == _UNDEFINED else length
    return header


def _from_pydicom(keyword: str, value):
    if value is None or value == "":
        return None
    _, vr = next(v for v in HEADER_TAGS.values() if v[0] == keyword)
    if vr == "US":
        return int(value[0] if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and
                   not isinstance(value, (str, bytes)) else value)
    if vr in ("DS", "IS"):
        # Present but not finite numbers raises ValueError (read_header_pydicom records it as invalid).
        seq = list(value) if keyword in _MULTI and not isinstance(value, (str, bytes)) else [value]
        try:
            floats = [float(v) for v in seq if v is not None and str(v).strip()]
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        if not all(math.isfinite(n) for n in floats):
            raise ValueError("not a finite number")
        if not floats:
            return None
        nums = [int(n) for n in floats] if vr == "IS" else floats
        return tuple(nums) if keyword in _MULTI else nums[0]
    if keyword in _MULTI:
        seq = [value] if isinstance(value, str) else list(value)
        return tuple(str(v).strip() for v in seq)
    return str(value).strip() or None


def one_line(exc: BaseException) -> str:
    """The exception on one line for a reject reason: its type and message, lines joined with "; "
    (pydicom lists each plugin's failure on a line of its own after a line ending in ':')."""
    text = "; ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    text = text.replace(":;", ":")
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# --------------------------------------------------------------------------- per-file time guard

@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise SliceRejected('timeout') if the block runs longer than `seconds`.

    Uses SIGALRM, so it works in the main thread of a process (where pool workers
    run their tasks) and is a no-op in other threads. An outer timer (pytest-timeout,
    a caller's own limit) is put back afterwards with its remaining time; if it would
    fire first it is left alone. A decoder stuck inside C code is interrupted only
    when it returns to Python.
    """
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
    if outer_left and outer_left <= seconds:
        yield
        return

    def _expired(signum, frame):
        raise SliceRejected("timeout", f"reading took longer than {seconds:g} s; the file is probably corrupt")

    started = time.monotonic()
    outer_handler = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - started), 1e-3))


def header_row(header: Header) -> dict:
    """The index columns read_hu needs, from a Header (what scan writes, for one file)."""
    v = header.values
    return {
        "transfer_syntax": header.transfer_syntax, "rows": v.get("Rows"), "columns": v.get("Columns"),
        "bits_allocated": v.get("BitsAllocated"), "bits_stored": v.get("BitsStored"),
        "pixel_representation": v.get("PixelRepresentation"), "samples_per_pixel": v.get("SamplesPerPixel"),
        "number_of_frames": v.get("NumberOfFrames"), "photometric": v.get("PhotometricInterpretation"),
        "rescale_slope": v.get("RescaleSlope"), "rescale_intercept": v.get("RescaleIntercept"),
        "pixel_offset": header.pixel_offset, "pixel_length": header.pixel_length,
        "pixel_tag": header.pixel_tag,
        # Not an index column: a file whose rescale is invalid is rejected at scan, so only read_hu's
        # own header reads (no index row, or a file changed since the scan) need it.
        "invalid_rescale": sorted(k for k in header.invalid if k.startswith("Rescale")) or None,
    }

