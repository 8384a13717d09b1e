"""The CSV and list files public datasets come with, read strictly.

    rows = read_csv(Path("train.csv"), "--labels", required=["Path", "Sex"])   # list of dicts, names stripped
    names = read_lines(Path("test_list.txt"), "--test-list")                  # non-empty lines, stripped
    path = find_file(root, ["mimic-cxr-2.0.0-split.csv"], "--split-file")     # .csv or .csv.gz below root

UTF-8 (a byte order mark is dropped, as spreadsheets write one), `.gz` files are read
through gzip. Column names are stripped of surrounding spaces (SIIM-ACR's train-rle.csv
names its second column " EncodedPixels"). A missing column or file, or text that is not
UTF-8, is a one-line DatakitError naming the file and what it has.
"""
from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

from datakit.errors import DatakitError


def _open_text(path: Path, option: str):
    if not path.is_file():
        raise DatakitError(f"{option} {path}: no such file")
    raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def read_csv(path: Path, option: str, required: list[str] = (), header: bool = True,
             columns: list[str] | None = None) -> list[dict[str, str]]:
    """Every row as {column: text}. `header=False`: the file has none and `columns` names them."""
    path = Path(path)
    try:
        with _open_text(path, option) as f:
            reader = csv.reader(f)
            names = [c.strip() for c in (next(reader, []) if header else columns or [])]
            missing = [c for c in required if c not in names]
            if missing:
                raise DatakitError(f"{option} {path} has no column(s) {missing}; its columns: {', '.join(names)}")
            rows = []
            for n, values in enumerate(reader, start=2 if header else 1):
                if not any(v.strip() for v in values):
                    continue                                # blank lines, e.g. at the end
                if len(values) < len(names):
                    values = values + [""] * (len(names) - len(values))
                elif len(values) > len(names) and any(v.strip() for v in values[len(names):]):
                    raise DatakitError(f"{option} {path} line {n} has {len(values)} fields, the header {len(names)}")
                rows.append(dict(zip(names, values)))
            return rows
    except UnicodeDecodeError as exc:
        raise DatakitError(f"{option} {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           f"save it as UTF-8") from None
    except (OSError, EOFError, csv.Error) as exc:   # a truncated .gz, a NUL byte
        raise DatakitError(f"{option} {path} cannot be read as CSV ({type(exc).__name__}: {exc})") from None


def read_lines(path: Path, option: str) -> list[str]:
    """The file's non-empty lines, stripped."""
    try:
        with _open_text(Path(path), option) as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as exc:
        raise DatakitError(f"{option} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def find_file(root: Path, names: list[str], option: str, required: bool = True) -> Path | None:
    """The first of `names` (each also with `.gz`) directly in `root`; None or an error when none is there."""
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    if required:
        raise DatakitError(f"{root} holds none of {', '.join(names)} (or .gz); give the file with {option}")
    return None
