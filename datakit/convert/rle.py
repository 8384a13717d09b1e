"""Run-length encoded masks as segmentation CSVs give them (SIIM-ACR pneumothorax, Kaggle).

    mask = decode_rle("5 3 10 2", height=64, width=64, form="relative")   # bool [64, 64]
    text = encode_rle(mask, form="relative")                              # the same string back

A string is pairs of integers separated by spaces; `-1` or an empty string is an empty mask.
Pixels are numbered through the image in `order`: `column` (top to bottom, then left to
right: SIIM-ACR and most Kaggle masks) or `row` (left to right, then top to bottom).
Two forms of the pairs:

- `relative`: (offset, length), the offset counted from the end of the previous run (from
  pixel 0 for the first). SIIM-ACR's train-rle.csv, decoded by the competition's own
  mask_functions.rle2mask (0-based, `mask.reshape(width, height).T`).
- `absolute`: (start, length), the start a 1-based pixel number (the usual Kaggle form).

A string that is not such pairs, or whose runs leave the image, is an RleError saying which
run; the converters turn it into a one-line error naming the image (no mask is guessed).
"""
from __future__ import annotations

import numpy as np

FORMS = ("relative", "absolute")
ORDERS = ("column", "row")
EMPTY = ("", "-1")


class RleError(ValueError):
    """A run-length string that cannot be this image's mask; the message says why."""


def _pairs(text: str) -> np.ndarray:
    try:
        values = np.array([int(v) for v in text.split()], dtype=np.int64)
    except ValueError:
        raise RleError("it holds something other than whole numbers") from None
    if len(values) % 2:
        raise RleError(f"it holds {len(values)} numbers, not pairs of (start, length)")
    return values.reshape(-1, 2)


def run_starts(text: str, form: str) -> np.ndarray:
    """[n, 2] 0-based (start, length) of every run of a string, in the form given."""
    if form not in FORMS:
        raise RleError(f"RLE form {form!r} is not one of: {', '.join(FORMS)}")
    if text.strip() in EMPTY:
        return np.zeros((0, 2), np.int64)
    pairs = _pairs(text)
    short = np.flatnonzero(pairs[:, 1] < 1)
    if len(short):
        raise RleError(f"run {short[0] + 1} has length {pairs[short[0], 1]} (a run is at least 1 pixel)")
    if form == "absolute":
        if (pairs[:, 0] < 1).any():
            raise RleError("a start is below 1 (absolute starts count pixels from 1)")
        return np.stack([pairs[:, 0] - 1, pairs[:, 1]], axis=1)
    if (pairs[:, 0] < 0).any():
        raise RleError("an offset is negative")
    ends = np.cumsum(pairs[:, 0] + pairs[:, 1])                       # end of each run (exclusive)
    return np.stack([ends - pairs[:, 1], pairs[:, 1]], axis=1)


def decode_rle(text: str, height: int, width: int, form: str = "relative", order: str = "column") -> np.ndarray:
    """The bool mask [height, width] a string describes; RleError when a run leaves the image."""
    if order not in ORDERS:
        raise RleError(f"RLE order {order!r} is not one of: {', '.join(ORDERS)}")
    runs = run_starts(text, form)
    n = height * width
    flat = np.zeros(n, bool)
    for i, (start, length) in enumerate(runs):
        if start + length > n:
            raise RleError(f"run {i + 1} ends at pixel {int(start + length)}, beyond the {height}x{width} image's "
                           f"{n} pixels")
        flat[start:start + length] = True
    return flat.reshape(width, height).T if order == "column" else flat.reshape(height, width)


def encode_rle(mask: np.ndarray, form: str = "relative", order: str = "column") -> str:
    """The string of a mask (`-1` when empty), inverse of decode_rle."""
    flat = (np.asarray(mask).T if order == "column" else np.asarray(mask)).ravel().astype(bool)
    if not flat.any():
        return "-1"
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat.astype(np.int8), [0]])))
    starts, ends = edges[0::2], edges[1::2]
    lengths = ends - starts
    if form == "absolute":
        firsts = starts + 1
    else:
        firsts = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{a} {b}" for a, b in zip(firsts.tolist(), lengths.tolist()))
