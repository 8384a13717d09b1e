"""A minimal JPEG lossless encoder (ITU T.81 process 14, first-order prediction: DICOM "JPEG Lossless SV1").

    frame = encode_sv1(stored, precision=16)      # bytes of one JPEG frame, for encapsulated PixelData

Why hand-written: JPEG lossless SV1 (1.2.840.10008.1.2.4.70) is the compressed syntax
PACS exports hold most often, and pydicom 3 and its plugins can decode it but not
encode it. The synthetic cohort needs such files so the decode path is exercised.
It is a test-data writer, not a production codec: one fixed Huffman table (the 17
difference categories all get 5-bit codes), predictor 1 (the left neighbour), no
restart intervals. Vectorised with numpy, so a 512x512 slice takes tens of ms.
"""
from __future__ import annotations

import struct

import numpy as np

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
_CODE_BITS = 5                   # every category's Huffman code is its number in 5 bits


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def encode_sv1(stored: np.ndarray, precision: int) -> bytes:
    """Encode a 2-D array of stored values (their bit patterns, `precision` bits) as one JPEG frame."""
    if stored.ndim != 2 or not 2 <= precision <= 16:
        raise ValueError(f"encode_sv1 wants a 2-D image and precision 2..16, got {stored.shape}, {precision}")
    rows, cols = stored.shape
    x = (stored.astype(np.int64) & ((1 << stored.dtype.itemsize * 8) - 1)) & ((1 << precision) - 1)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)           # H.1.2.1: the first sample is predicted from 2^(P-1)
    pred[0, 1:] = x[0, :-1]                      # first row: left neighbour
    pred[1:, 0] = x[:-1, 0]                      # first column: the sample above
    pred[1:, 1:] = x[1:, :-1]                    # predictor 1: left neighbour
    d = (x - pred).ravel() % 65536               # differences modulo 2^16 ...
    d = np.where(d > 32768, d - 65536, d)        # ... as values in -32767..32768
    size = np.zeros(d.shape, dtype=np.int64)     # category SSSS = bit length of |d|
    magnitude = np.abs(d)
    for b in range(16):
        size += magnitude >= (1 << b)
    extra_len = np.where(size == 16, 0, size)    # category 16 (d = 32768) has no extra bits
    extra = np.where(d > 0, d, d - 1) & ((1 << extra_len) - 1)
    code = (size << extra_len) | extra
    length = _CODE_BITS + extra_len
    # Left-align each sample's code in 32 bits, unpack, keep the first `length` bits of each row.
    aligned = (code << (32 - length)).astype(">u4")
    bits = np.unpackbits(aligned.view(np.uint8).reshape(-1, 4), axis=1)
    stream = bits[np.arange(32)[None, :] < length[:, None]]   # row-major: each sample's bits in order
    stream = np.concatenate([stream, np.ones(-len(stream) % 8, np.uint8)])   # pad with 1-bits
    data = np.packbits(stream)
    data = np.insert(data, np.flatnonzero(data == 0xFF) + 1, 0)            # byte stuffing
    counts = bytes(4) + bytes([17]) + bytes(11)  # BITS: 17 codes of length 5
    return b"".join([
        b"\xff\xd8",
        _segment(0xFFC3, struct.pack(">BHHBBBB", precision, rows, cols, 1, 1, 0x11, 0)),
        _segment(0xFFC4, bytes([0x00]) + counts + bytes(range(17))),
        _segment(0xFFDA, bytes([1, 1, 0x00, 1, 0, 0])),     # 1 component, table 0, predictor 1, Pt 0
        data.tobytes(),
        b"\xff\xd9",
    ])
