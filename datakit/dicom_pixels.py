"""Reading one CT slice's pixels in Hounsfield units, from the index row scan wrote for it.

    hu = read_hu(path, row)            # float32 HU (rows, cols); raises SliceRejected(code, reason)
    hu = read_hu(path, row, exact=True)  # the same values, as int16/int32 where they are whole numbers
    problem = pixel_problem(row)       # (code, reason) if the declared pixel format is unusable, else None

Why read_hu skips pydicom for uncompressed data: with the index row's
pixel_offset the slice is one read plus a dtype view; pydicom's pixel_array
machinery costs more than the read. Compressed data goes through pydicom's
decoders and their plugins after the codestream's own frame size is checked
against the header, so a corrupt codestream cannot make a decoder allocate
gigabytes; with the index row it is decoded straight from the PixelData value
(the dataset is not parsed again), and a file that does not decode that way is
read by dcmread + pixel_array, which decides.

HU = stored value * RescaleSlope + RescaleIntercept (identity when the tags are
absent, as DICOM defines for a missing Modality LUT). With slope 1 and a whole intercept
(nearly every CT) HU are whole numbers: `exact=True` keeps them in an integer array (int16
where the stored bits and the intercept allow, else int32), which is what write's phase 1
works on (half the bytes of float32; datakit.hu_slice takes either); the values are those of
the float32 array, element for element. The photometric
interpretation (MONOCHROME1 or 2) only affects display, not HU.

The header side (read_header, header_row, SliceRejected) is datakit.dicom_header; what is
done to the HU image afterwards (floor, coverage, resize) is datakit.hu_slice.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import struct
import sys

import numpy as np

from datakit.dicom_header import (
    DEFLATED_LE,
    EXPLICIT_BE,
    ITEM_TAG,
    MAX_PIXEL_BYTES,
    PIXEL_DATA,
    SEQ_END_TAG,
    UNCOMPRESSED,
    Header,
    HeaderError,
    SliceRejected,
    header_row,
    inflate_dataset,
    one_line,
    pydicom_quiet,
    read_header,
    shown_term,
    time_limit,
    walk_dataset,
)
from datakit.dicom_header import EXPLICIT_LE as EXPLICIT_LE_TS
from datakit.walk import os_reason

# Compressed transfer syntaxes, decoded by pydicom's decoders
JPEG_FAMILY = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",   # JPEG baseline, extended
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",   # JPEG lossless, lossless SV1
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",   # JPEG-LS lossless, near-lossless
})
J2K_FAMILY = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                        "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LS = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
ENCAPSULATED = JPEG_FAMILY | J2K_FAMILY | {RLE_LOSSLESS}

MAX_SIDE = 8192                      # rows, columns: checked before anything is allocated
PIXEL_TIMEOUT_S = 30.0               # one read_hu call; see dicom_header.time_limit
MIN_BITS_STORED = 8                  # CT Image storage: 12-16; old 8-bit exports still pass


def decoder_failure(exc: BaseException) -> bool:
    """Whether `exc`, raised while decoding pixel data, means "this file is broken" (a reject)
    rather than something that must propagate. Decoders raise any Exception on corrupt data, and
    pylibjpeg-rle (Rust) raises pyo3's PanicException, which derives from BaseException, so a
    plain `except Exception` lets it end the whole run. The time guard's timeout is never a
    decoder failure: swallowing it would retry the file with no guard left."""
    if isinstance(exc, SliceRejected):
        return exc.code != "timeout"
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


@contextlib.contextmanager
def decoder_stderr_silenced():
    """Point file descriptor 2 at /dev/null while a compressed frame is decoded. The decoders'
    native code writes to it on corrupt data (pylibjpeg-rle's Rust panic message, with a stack
    trace when RUST_BACKTRACE is set), which reads like a crash on the terminal although the file
    only becomes a reject with the decoder's message in its reason. Costs a few microseconds."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):    # no fd 2 (a daemon): nothing to silence
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _value(row, key):
    """A row value with missing / NaN / None all read as None (rows come from pyarrow, polars or dicts)."""
    value = row.get(key) if hasattr(row, "get") else getattr(row, key, None)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def pixel_problem(row) -> tuple[str, str] | None:
    """(code, reason) if the declared pixel format cannot be read as one grey CT slice, else None.

    Checked on headers only, so absurd sizes are refused before anything is allocated.
    """
    rows, cols = _value(row, "rows"), _value(row, "columns")
    pixel_tag = _value(row, "pixel_tag")
    if pixel_tag == 0:
        return "no-pixel-data", "the file has no PixelData"
    if pixel_tag not in (None, PIXEL_DATA):
        return "unsupported-pixels", "float pixel data is not CT image storage"
    if not rows or not cols:
        return "bad-geometry", f"Rows/Columns missing or zero (Rows={rows}, Columns={cols})"
    if rows > MAX_SIDE or cols > MAX_SIDE:
        return "bad-geometry", f"declared size {rows}x{cols} exceeds the limit of {MAX_SIDE} per side"
    frames = _value(row, "number_of_frames") or 1
    if frames < 1:
        return "bad-geometry", f"NumberOfFrames={frames} is not a positive count"
    spp = _value(row, "samples_per_pixel") or 1
    bits = _value(row, "bits_allocated")
    if bits not in (8, 16, 32):
        return "unsupported-pixels", f"BitsAllocated={bits}; supported: 8, 16, 32"
    nbytes = rows * cols * spp * frames * bits // 8
    if nbytes > MAX_PIXEL_BYTES:
        return "bad-geometry", (f"declared pixel data of {nbytes / 2**20:.0f} MiB ({rows}x{cols}x{frames} frames) "
                                f"exceeds the limit of {MAX_PIXEL_BYTES // 2**20} MiB")
    if frames > 1:
        return "multi-frame", f"{frames} frames in one file; tlx reads single-frame CT slices only"
    if spp != 1:
        return "not-grayscale", f"SamplesPerPixel={spp} (colour); CT slices have 1"
    photometric = _value(row, "photometric")
    if photometric not in (None, "MONOCHROME1", "MONOCHROME2"):
        return "not-grayscale", (f"PhotometricInterpretation={shown_term(photometric)}; supported: MONOCHROME1, "
                                 "MONOCHROME2")
    stored = _value(row, "bits_stored") or bits
    if not 1 <= stored <= bits:
        return "unsupported-pixels", f"BitsStored={stored} is outside 1..BitsAllocated={bits}"
    if stored < MIN_BITS_STORED:    # 1 bit of a 12-bit CT value makes a binary image that passes every other check
        return "unsupported-pixels", f"BitsStored={stored}; a CT slice stores at least {MIN_BITS_STORED} bits (12-16)"
    if _value(row, "pixel_representation") not in (None, 0, 1):
        return "unsupported-pixels", f"PixelRepresentation={_value(row, 'pixel_representation')}; allowed: 0, 1"
    invalid = _value(row, "invalid_rescale")
    if invalid:
        return "bad-rescale", (f"{invalid[0]} is present but not a finite number; HU cannot be computed (the "
                               "identity applies only when the tag is absent)")
    slope = _value(row, "rescale_slope")
    if slope is not None and slope == 0:
        return "bad-rescale", "RescaleSlope is 0: every pixel would have the same HU"
    return None


def read_hu(path: str | os.PathLike, row=None, exact: bool = False) -> np.ndarray:
    """One slice in Hounsfield units: float32, (rows, cols). Raises SliceRejected(code, reason).

    `row` is the file's index.parquet row (a mapping); with it, uncompressed pixels are
    read straight from `pixel_offset` without parsing the header again. Without it
    (or if the file changed since the scan) the header is read here. `exact`: whole-number
    HU come back as int16 or int32 (see the module docstring), others as float32.
    """
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise SliceRejected("unreadable", f"cannot open the file ({os_reason(exc)})") from exc
    if row is None or (_value(row, "size") is not None and _value(row, "size") != size):
        with time_limit(PIXEL_TIMEOUT_S):
            row = header_row(read_header(path, size))
    if (problem := pixel_problem(row)) is not None:
        raise SliceRejected(*problem)
    ts, offset = _value(row, "transfer_syntax"), _value(row, "pixel_offset")
    if ts in UNCOMPRESSED and offset is not None and _value(row, "pixel_length") is not None:
        stored = _read_native(path, row, size)   # one bounded read and a view: nothing that could hang
    else:
        with time_limit(PIXEL_TIMEOUT_S):       # decoders (and pydicom) on crafted data can spin
            if ts in ENCAPSULATED and offset is not None and _value(row, "pixel_length") is None:
                stored = _read_encapsulated(path, row, ts, offset)
            elif ts == DEFLATED_LE:
                stored = _read_deflated(path, row)
            else:
                stored = _read_with_pydicom(path, row)
    return _to_hu(stored, row, exact)


def _native_dtype(row) -> np.dtype:
    bits = _value(row, "bits_allocated")
    signed = _value(row, "pixel_representation") == 1
    order = ">" if _value(row, "transfer_syntax") == EXPLICIT_BE else "<"
    return np.dtype(f"{order}{'i' if signed else 'u'}{bits // 8}")


def _read_native(path, row, size: int) -> np.ndarray:
    rows, cols = _value(row, "rows"), _value(row, "columns")
    dtype = _native_dtype(row)
    need = rows * cols * dtype.itemsize
    offset, length = _value(row, "pixel_offset"), _value(row, "pixel_length")
    if length < need or offset + need > size:
        have = max(0, min(length, size - offset))
        raise SliceRejected("truncated", f"PixelData holds {have} bytes; {rows}x{cols} at "
                                         f"{dtype.itemsize * 8} bits needs {need}")
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(need)
    if len(data) < need:
        raise SliceRejected("truncated", f"PixelData holds {len(data)} bytes; {rows}x{cols} needs {need}")
    return _mask_stored(np.frombuffer(data, dtype=dtype).reshape(rows, cols), row)


def _mask_stored(arr: np.ndarray, row) -> np.ndarray:
    """Keep the BitsStored low bits (high bits may hold overlays or junk) and sign-extend signed data,
    in the array's own width and native byte order (0.03 ms for 512x512 against 0.2 in int64)."""
    bits = arr.dtype.itemsize * 8
    stored = _value(row, "bits_stored") or bits
    if stored >= bits:
        return arr
    signed = _value(row, "pixel_representation") == 1
    out = arr.astype(np.dtype(f"=i{arr.dtype.itemsize}" if signed else f"=u{arr.dtype.itemsize}"))
    if signed:             # shift the sign bit to the top and back (arithmetic shift): the low bits, sign-extended
        out <<= bits - stored
        out >>= bits - stored
    else:
        out &= (1 << stored) - 1
    return out


def _read_deflated(path, row) -> np.ndarray:
    """A deflated explicit VR LE file: the data set inflated once (bounded: a file that inflates past
    MAX_INFLATED_BYTES is refused while inflating), its PixelData found by the header walker, the
    pixels viewed in the inflated bytes. Before, the file was inflated twice (once to check its size,
    once by pydicom): 1.9 ms of a slice's time. A file the walker cannot follow goes to pydicom."""
    inflated = inflate_dataset(path)
    if inflated is not None:
        header = Header(EXPLICIT_LE_TS, None)
        try:
            walk_dataset(inflated, header)
        except (HeaderError, struct.error, UnicodeDecodeError):
            header.pixel_tag = None
        if header.pixel_tag == PIXEL_DATA and header.pixel_length is not None:
            rows, cols = _value(row, "rows"), _value(row, "columns")
            dtype = _native_dtype({**dict(row), "transfer_syntax": EXPLICIT_LE_TS})
            need = rows * cols * dtype.itemsize
            have = min(header.pixel_length, len(inflated) - header.pixel_offset)
            if have < need:
                raise SliceRejected("truncated", f"PixelData holds {have} bytes; {rows}x{cols} at "
                                                 f"{dtype.itemsize * 8} bits needs {need}")
            pixels = np.frombuffer(inflated, dtype=dtype, count=rows * cols, offset=header.pixel_offset)
            return _mask_stored(pixels.reshape(rows, cols), row)
    return _read_with_pydicom(path, row)


def _read_encapsulated(path, row, ts: str, offset: int) -> np.ndarray:
    """Compressed pixels decoded straight from the PixelData value at `offset` by pydicom's decoder
    for `ts`, with the image options from the index row: what dcmread + pixel_array do, without
    parsing the dataset again (RLE: 0.8 instead of 1.5 ms per 512x512 slice). Anything unexpected
    falls back to _read_with_pydicom, which then decides (and names the reject)."""
    from pydicom.pixels import get_decoder

    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    _check_items_complete(data)
    rows, cols = _value(row, "rows"), _value(row, "columns")
    try:
        if ts != RLE_LOSSLESS:
            _check_codestream_size(data, ts, rows, cols)
        options = {name: _value(row, col) for name, col in _DECODE_OPTIONS.items() if _value(row, col) is not None}
        options.update(number_of_frames=1, pixel_keyword="PixelData")
        with decoder_stderr_silenced():
            arr = _decode_buffer(get_decoder(ts), data, ts, options)
        if arr.shape == (rows, cols):
            return arr
    except BaseException as exc:  # a broken file: the slow path reads it as pydicom sees it and names the reject
        if not decoder_failure(exc):
            raise
    return _read_with_pydicom(path, row)


def _check_items_complete(data: bytes) -> None:
    """Raise SliceRejected('truncated') if the encapsulated PixelData value (`data`: from its first
    item to the end of the file) is cut short: a fragment's length runs past the end of the file, or
    the file ends inside an item's header. Decoders take a cut codestream for garbage (libjpeg fills
    the rest of a JPEG frame and reports no error) or spend half a minute in C on it (CharLS on
    JPEG-LS), and dcmread then finds no PixelData at all. A tag that is not an item, or items that end
    with the file but no sequence delimiter (a writer that leaves it out), are left to them."""
    pos = 0
    while pos + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        tag = group << 16 | elem
        if tag == SEQ_END_TAG:
            return
        if tag != ITEM_TAG:
            return
        if pos + 8 + length > len(data):
            raise SliceRejected("truncated", f"the file ends inside its compressed pixel data (a fragment of "
                                             f"{length} bytes has {len(data) - pos - 8})")
        pos += 8 + length
    if pos < len(data):
        raise SliceRejected("truncated", "the file ends inside an item header of its compressed pixel data")


# index column -> pydicom decoding option (the Image Pixel module values pydicom takes from a dataset)
_DECODE_OPTIONS = {"rows": "rows", "columns": "columns", "samples_per_pixel": "samples_per_pixel",
                   "bits_allocated": "bits_allocated", "bits_stored": "bits_stored",
                   "pixel_representation": "pixel_representation", "photometric_interpretation": "photometric"}


def _decode_buffer(decoder, data: bytes, ts: str, options: dict) -> np.ndarray:
    plugin = preferred_plugin(ts)
    if plugin is not None:
        try:
            return decoder.as_array(data, decoding_plugin=plugin, **options)[0]
        except BaseException as exc:  # let pydicom's other plugins have a go
            if not decoder_failure(exc):
                raise
    return decoder.as_array(data, **options)[0]


@pydicom_quiet()
def _read_with_pydicom(path, row) -> np.ndarray:
    import pydicom

    ts = _value(row, "transfer_syntax")
    rows, cols = _value(row, "rows"), _value(row, "columns")
    try:
        ds = pydicom.dcmread(path, force=True)
        data = ds.get("PixelData")
    except BaseException as exc:  # any parse failure of a bad file is a reject with its reason
        if not decoder_failure(exc):
            raise
        raise SliceRejected("unreadable-header", f"the file cannot be parsed ({one_line(exc)})") from exc
    if data is None:
        raise SliceRejected("no-pixel-data", "the file has no PixelData")
    if ts in UNCOMPRESSED or ts == DEFLATED_LE:
        need = rows * cols * _value(row, "bits_allocated") // 8
        if len(data) < need:
            raise SliceRejected("truncated", f"PixelData holds {len(data)} bytes; {rows}x{cols} needs {need}")
    elif ts in JPEG_FAMILY or ts in J2K_FAMILY:
        _check_codestream_size(data, ts, rows, cols)
    elif ts != RLE_LOSSLESS:
        raise SliceRejected("unsupported-transfer-syntax", f"transfer syntax {shown_term(ts, 64)} is not supported; "
                                                           "supported: see docs/datakit-input.md")
    try:
        with decoder_stderr_silenced():
            arr = _decode(ds, ts)
    except BaseException as exc:  # decoders raise anything on corrupt data; it becomes a reject
        if not decoder_failure(exc):
            raise
        raise SliceRejected("undecodable", f"pixel data cannot be decoded ({one_line(exc)})") from exc
    if arr.shape != (rows, cols):
        raise SliceRejected("undecodable", f"decoded shape {arr.shape} differs from the header's {rows}x{cols}")
    return arr


# The decoding plugins tlx asks pydicom for, per transfer syntax, fastest first (CPU time per 512x512
# CT slice, benchmarks/RESULTS.md); the first one installed is used, and when it fails on a file the
# others get their turn (pydicom's own order). Only lossless syntaxes get a plugin chosen by speed
# (every lossless decoder must give the same pixels; tested on pydicom's files); lossy ones keep the
# order pydicom had before python-gdcm was installed beside it, since lossy decoders may round
# differently. python-gdcm is optional (`pip install tlx[gdcm]`).
JPEG_LOSSLESS = frozenset({"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"})
J2K_LOSSLESS = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201"})
PLUGIN_ORDER = {
    **dict.fromkeys(JPEG_LOSSLESS, ("gdcm", "pylibjpeg")),     # libjpeg 19.6 ms, gdcm 12.2 ms (CPU)
    **dict.fromkeys(JPEG_LS, ("pyjpegls", "pylibjpeg", "gdcm")),   # CharLS 8.5, gdcm 10.8, libjpeg ~35 ms
    **dict.fromkeys(J2K_LOSSLESS, ("pylibjpeg", "pillow", "gdcm")),  # openjpeg 40.0, pillow 42.3, gdcm 47.8
}
LOSSY_ORDER = ("pillow", "pylibjpeg", "pydicom")


@functools.lru_cache(maxsize=None)
def preferred_plugin(ts: str) -> str | None:
    """The plugin tlx asks pydicom for first when decoding `ts` (PLUGIN_ORDER; lossy syntaxes: pydicom's
    order without gdcm), or None: pydicom's own choice (RLE, for which there is no choice to make)."""
    from pydicom.pixels import get_decoder

    try:
        available = get_decoder(ts).available_plugins
    except (NotImplementedError, ValueError):
        return None
    return first_available(plugin_order(ts), available)


def plugin_order(ts: str) -> tuple[str, ...]:
    return PLUGIN_ORDER.get(ts, LOSSY_ORDER if ts in JPEG_FAMILY | J2K_FAMILY else ())


def first_available(order: tuple[str, ...], available) -> str | None:
    return next((p for p in order if p in available), None)


def _decode(ds, ts: str) -> np.ndarray:
    plugin = preferred_plugin(ts)
    if plugin is not None:
        try:
            ds.pixel_array_options(decoding_plugin=plugin)
            return ds.pixel_array
        except BaseException as exc:  # let pydicom's other plugins have a go before rejecting
            if not decoder_failure(exc):
                raise
            ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array


def _first_frame(data: bytes) -> bytes:
    from pydicom.encaps import generate_frames

    try:
        return next(generate_frames(data, number_of_frames=1))
    except (StopIteration, ValueError, struct.error) as exc:
        raise SliceRejected("undecodable", f"encapsulated pixel data has no readable fragment ({one_line(exc)})") \
            from exc


def _check_codestream_size(data: bytes, ts: str, rows: int, cols: int) -> None:
    """Refuse a codestream whose own frame header disagrees with Rows/Columns, before a decoder allocates."""
    frag = _first_frame(data)
    size = _j2k_size(frag) if ts in J2K_FAMILY else _jpeg_size(frag)
    if size is None:
        raise SliceRejected("undecodable", "the compressed frame has no readable size header")
    if size != (rows, cols):
        raise SliceRejected("pixel-header-mismatch", f"the codestream says {size[0]}x{size[1]}, "
                                                     f"the DICOM header {rows}x{cols}")


def _j2k_size(frag: bytes) -> tuple[int, int] | None:
    at = frag.find(b"\xff\x4f\xff\x51", 0, 4096)    # SOC then SIZ (inside a JP2 wrapper or bare)
    if at < 0 or len(frag) < at + 24:
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", frag, at + 8)
    return ysiz - yo, xsiz - xo


def _jpeg_size(frag: bytes) -> tuple[int, int] | None:
    if frag[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(frag) and pos < 65536:
        if frag[pos] != 0xFF:
            return None
        marker = frag[pos + 1]
        if marker == 0xFF:                       # fill byte
            pos += 1
            continue
        length = struct.unpack_from(">H", frag, pos + 2)[0]
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC); SOF55 (F7) is JPEG-LS.
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if pos + 9 > len(frag):
                return None
            height, width = struct.unpack_from(">HH", frag, pos + 5)
            return height, width
        pos += 2 + length
    return None


def _to_hu(stored: np.ndarray, row, exact: bool = False) -> np.ndarray:
    slope = _value(row, "rescale_slope")
    intercept = _value(row, "rescale_intercept")
    slope = 1.0 if slope is None else float(slope)
    intercept = 0.0 if intercept is None else float(intercept)
    if slope == 1 and intercept.is_integer():
        # The common CT case: whole HU, exact in float32 too (stored values and HU fit in 24 bits).
        if exact and stored.dtype.kind in "iu":
            return _whole_hu(stored, int(intercept))
        hu = stored.astype(np.float32)
        if intercept:
            hu += np.float32(intercept)
        return hu
    # Otherwise in float64 and rounded once, so HU do not depend on the order of float32 roundings.
    return (stored.astype(np.float64) * slope + intercept).astype(np.float32)


def _whole_hu(stored: np.ndarray, intercept: int) -> np.ndarray:
    """stored + intercept in int16 when the values fit there, else int32 (or float32 for 32-bit data
    near its limits). Signed 16-bit data with intercept 0 (about half of all CT) is returned as it is."""
    if stored.dtype == np.int16 and not intercept:
        return stored
    lo, hi = (int(stored.min()), int(stored.max())) if stored.size else (0, 0)
    if stored.dtype.itemsize <= 2 and -32768 <= lo + intercept and hi + intercept <= 32767 and hi <= 32767:
        # The values and the results fit int16: one addition in int16 (the bits of an unsigned array
        # below 32768 are those of the same int16 values).
        as16 = stored.view(np.int16) if stored.dtype == np.uint16 else stored.astype(np.int16)
        return np.add(as16, np.int16(intercept)) if intercept else as16
    if stored.dtype.itemsize > 4 or not (-2**31 <= lo + intercept and hi + intercept < 2**31):
        return (stored.astype(np.float64) + intercept).astype(np.float32)
    hu = stored.astype(np.int32)
    hu += np.int32(intercept)
    return hu
