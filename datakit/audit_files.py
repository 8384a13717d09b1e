"""One audit per kind of file of a dataset; datakit.audit walks the files and keeps the report.

    audit_paths(ctx, rels)                      # every path checked; ctx.names: how findings name each file
    audit_parquet(ctx, "slices.parquet", path)  # audit_manifest, audit_idx, audit_text alike
    audit_tar(ctx, rel, read_tar_headers(str(path)))   # the reading part runs on a process pool

What each column and manifest field of a ct-slices dataset must hold comes from
docs/dataset-format.md (keep them in step); other kinds (tlx convert of public datasets,
which keep the source's ids by design) are checked for dates, UIDs and the deny list, and
their keys, splits and shard paths for their form.
"""
from __future__ import annotations

import json
import mmap
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datakit.audit import AuditContext
from datakit.audit_rules import (
    CODE,
    CT_KEY_BODY,
    FINGERPRINT,
    HEX32,
    HEX64,
    KEY_BODY,
    PSEUDONYM,
    SHARD_IDX,
    SHARD_TAR,
    SPLIT,
    Expect,
    as_strings,
    member_name,
    one_of,
)
from datakit.shards import ustar_header

TABLES = ("slices.parquet", "volumes.parquet")
PER_ROW = frozenset({"key", "pixel_hash"})      # columns with a value per row: no distinct values to check
LINES_PER_CHECK = 100_000
SHARD_FILE = Expect("a shard or shard index path", r"^shards/(train/train|val/val|test/test)-[0-9]{6}\.(tar|idx)$")


def audit_paths(ctx: AuditContext, rels: list[str]) -> None:
    """Check every path (shards/ holds only shards and their indexes); a path component with a finding
    is hidden in every finding that names the file (ctx.names), so the report does not quote it."""
    ctx.check("(paths)", rels, None, where=lambda i: f"path of file {i + 1} in sorted order")
    under_shards = [r for r in rels if r.startswith("shards/")]
    ctx.check("(paths)", under_shards, SHARD_FILE, where=lambda i: f"path of shard file {i + 1} in sorted order")
    parts = sorted({p for r in rels for p in r.split("/")})
    hidden = {parts[i] for i, _ in ctx.checker.check(parts)}
    ctx.names = {r: "/".join(f"<a name of {len(p)} characters>" if p in hidden else p for p in r.split("/"))
                 for r in rels}


# ---------------------------------------------------------------- Parquet tables

def _columns(ctx: AuditContext, rel: str) -> dict[str, Expect | None]:
    """What each column holds; None: free text (tlx's own sentences)."""
    if ctx.kind != "ct-slices":
        return _converted_columns(ctx, rel)
    classes = one_of("classes", ctx.classes)
    details = {"label_rule": CODE, "label_keyword": CODE, "label_field": CODE}
    if rel == "volumes.parquet":
        return {"volume": PSEUDONYM, "patient": PSEUDONYM, "label": classes, "split": SPLIT, "reason": None,
                "order_by": CODE, **details}
    return {"key": Expect("a sample key (<volume pseudonym>-<slice index>)", f"^{CT_KEY_BODY}$"), "split": SPLIT,
            "shard": SHARD_TAR, "label": classes, "patient": PSEUDONYM, "volume": PSEUDONYM, **details,
            "pixel_hash": HEX32}


def _converted_columns(ctx: AuditContext, rel: str) -> dict[str, Expect | None]:
    """The columns of `tlx convert`'s kinds (docs/finetune.md) that hold a form of their own; the others
    (source ids and paths of public datasets, kept by design) are free text: dates, UIDs, the deny list.
    Converters of DICOM (image-mask, dicom-images: their config records a secret fingerprint) keep
    pseudonyms only, so their patients, volumes and keys must be pseudonyms."""
    config = ctx.manifest.get("config") or {}
    classes = one_of("classes", ctx.classes)
    out: dict[str, Expect | None] = {"split": SPLIT, "shard": SHARD_TAR, "label": classes, "labels": classes,
                                     "missing": classes, "uncertain": classes, "view": CODE, "laterality": CODE,
                                     "modality": CODE, "voi": CODE}
    sources = [s.get("name") for s in config.get("sources") or []]
    if sources:
        out["source_dataset"] = one_of("merged sources", sources)
    if config.get("secret_fingerprint"):
        out.update(patient=PSEUDONYM, volume=PSEUDONYM, key=PSEUDONYM)
    elif rel != "volumes.parquet":
        out["key"] = Expect("a sample key (letters, digits, _ or -)", f"^{KEY_BODY}$")
    return out


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or (
        pa.types.is_dictionary(t) and _is_text(t.value_type))


def _is_list_of_text(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_text(t.value_type)


def _readable(t: pa.DataType) -> bool:
    plain = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)
    nested = (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and \
        _readable(t.value_type)
    return plain or nested or _is_text(t)


def audit_parquet(ctx: AuditContext, rel: str, path: Path) -> None:
    """Every string of the table, its column names and its metadata; what its columns may be."""
    name = ctx.names[rel]
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError):
        ctx.report.add(name, "file", "not a readable Parquet file")
        return
    # Arrow's own schema record is the column names and types, checked below.
    meta = [f"{k.decode('utf-8', 'replace')}={v.decode('utf-8', 'replace')}"
            for k, v in (pf.metadata.metadata or {}).items() if k != b"ARROW:schema"]
    ctx.check(name, meta, None, where=lambda i: f"file metadata entry {i}")
    schema, expects = pf.schema_arrow, _columns(ctx, rel)
    ctx.check(name, schema.names, CODE, where=lambda i: f"column name {i}")
    label = [f"column {f.name}" if f.name in expects else f"column {i}" for i, f in enumerate(schema)]
    for i, f in enumerate(schema):
        if pa.types.is_temporal(f.type):
            ctx.report.add(name, label[i], "a date or time column")
        elif not _readable(f.type):
            ctx.report.add(name, label[i], f"a column of type {f.type} that audit cannot read")
        elif ctx.kind == "ct-slices" and (_is_text(f.type) or _is_list_of_text(f.type)) and f.name not in expects:
            ctx.report.add(name, label[i], "a text column the dataset format does not define")
    offset = 0
    for batch in pf.iter_batches(batch_size=1 << 20):
        for i, f in enumerate(schema):
            col = batch.column(i)
            if _is_text(f.type):
                _check_column(ctx, name, col, expects.get(f.name), f.name in PER_ROW,
                              where=lambda r, i=i, offset=offset: f"{label[i]}, row {offset + r}")
            elif _is_list_of_text(f.type):
                parents = pc.list_parent_indices(col).to_numpy()
                ctx.check(name, pc.list_flatten(col), expects.get(f.name),
                          where=lambda r, i=i, offset=offset, parents=parents:
                          f"{label[i]}, row {offset + int(parents[r])}")
        offset += batch.num_rows


def _check_column(ctx: AuditContext, name: str, col, expect, per_row: bool, where) -> None:
    """A text column. Most columns repeat few values (splits, labels, patients, volumes): their
    distinct values are checked, and the rows of a value with a finding are then looked up."""
    col = as_strings(col)
    if per_row:
        ctx.check(name, col, expect, where=where)
        return
    distinct = pc.unique(col)
    if 4 * len(distinct) > len(col):
        ctx.check(name, col, expect, where=where)
        return
    ctx.report.strings += len(col)
    for i, check in ctx.checker.check(distinct, expect):
        for row in np.flatnonzero(pc.fill_null(pc.equal(col, distinct[i]), False).to_numpy(zero_copy_only=False)):
            ctx.report.add(name, where(int(row)), check)


# ---------------------------------------------------------------- manifest.json

class _Pairs(list):
    """A JSON object as its (key, value) pairs: repeated keys are all kept (json.loads keeps the last)."""


# Manifest fields of every kind with a form of their own; other fields of ct-slices are codes.
_MANIFEST_FIELDS = [(re.compile(p), e) for p, e in (
    (r"^\$\.shards\[\d+\]\.path$", SHARD_TAR), (r"^\$\.shards\[\d+\]\.index$", SHARD_IDX),
    (r"^\$\.shards\[\d+\]\.sha256$", HEX64), (r"^\$\.shards\[\d+\]\.split$", SPLIT),
    (r"^\$\.config\.scan\.label_rules\.sha256$", HEX64),
    (r"^\$\.config\.scan\.secret_fingerprint$", FINGERPRINT), (r"^\$\.warnings\[\d+\]$", None))]
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


def _walk(value, path: str, hidden: set, out: list) -> None:
    """(path, string, is_key) of every key and string value; keys that hold findings are not spelled out."""
    if isinstance(value, _Pairs):
        for n, (k, v) in enumerate(value):
            out.append((f"key {n} of {path}", k, True))
            _walk(v, f"{path}.{k}" if k not in hidden and _SAFE_KEY.match(k) else f"{path}.<key {n}>", hidden, out)
    elif isinstance(value, list):
        for n, v in enumerate(value):
            _walk(v, f"{path}[{n}]", hidden, out)
    elif isinstance(value, str):
        out.append((path, value, False))


def _keys(value, out: set) -> set:
    if isinstance(value, _Pairs):
        for k, v in value:
            out.add(k)
            _keys(v, out)
    elif isinstance(value, list):
        for v in value:
            _keys(v, out)
    return out


def audit_manifest(ctx: AuditContext, rel: str, path: Path) -> None:
    """Every key and string value of the manifest, each against the form of its field."""
    name = ctx.names[rel]
    doc = json.loads(path.read_bytes(), object_pairs_hook=_Pairs)   # read_manifest parsed it already
    keys = sorted(_keys(doc, set()))
    hidden = {keys[i] for i, _ in ctx.checker.check(keys)}
    strings: list = []
    _walk(doc, "$", hidden, strings)
    default = CODE if ctx.kind == "ct-slices" else None
    groups: dict = {}
    for where, text, is_key in strings:
        expect = default if is_key else next((e for rx, e in _MANIFEST_FIELDS if rx.match(where)), default)
        groups.setdefault(expect, []).append((where, text))
    for expect, items in groups.items():
        ctx.check(name, [t for _, t in items], expect, where=lambda i, items=items: items[i][0])


# ---------------------------------------------------------------- shards and their indexes

def _member_body(ctx: AuditContext) -> str:
    return member_name(CT_KEY_BODY if ctx.kind == "ct-slices" else KEY_BODY, ctx.exts)


@dataclass
class TarHeaders:
    """What audit reads of a tar: member names, header fields that differ from what the format writes
    (where, check), the text those fields hold (where, text), and whether the tar broke off."""
    names: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    texts: list = field(default_factory=list)
    unreadable: bool = False


def read_tar_headers(path: str) -> TarHeaders:
    """Every member's header, as the format writes it: a regular file, no owner names, uid/gid 0,
    mtime 0, no link name, no pax records (any of them could carry names or dates). Picklable, for a
    process pool. Tars as tlx writes them are read by _ustar_headers; anything else by tarfile
    (~30 us a header: 12 minutes for the 24M members of 12M samples)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _ustar_headers(data)
    except _NotPlain:
        pass
    except OSError:
        return TarHeaders(unreadable=True)
    out = TarHeaders()
    try:
        with tarfile.open(path, "r:") as tar:
            for i, m in enumerate(tar):
                out.names.append(m.name)
                _header(i, m, out)
    except (tarfile.TarError, OSError):
        out.unreadable = True
    return out


class _NotPlain(Exception):
    """A tar that is not all plain USTAR regular-file headers as tlx writes them: tarfile reads it."""


def _size(field: bytes) -> int:
    text = field.rstrip(b"\0 ")
    if not text.isdigit() or b"8" in text or b"9" in text:
        raise _NotPlain                       # base-256 sizes, garbage: tarfile decides
    return int(text, 8)


# A header as tlx writes it (datakit.shards.ustar_header), but for the name, mode, size and checksum:
# uid and gid 0, mtime 0, type "0", no link name, magic "ustar\0" "00", no owner names, no device
# numbers, no name prefix.
_TEMPLATE = np.frombuffer(ustar_header("x", 0), np.uint8)
_FIXED = np.ones(512, bool)
_FIXED[0:108] = _FIXED[124:136] = _FIXED[148:156] = False
_POWERS = 8 ** np.arange(5, -1, -1)
_END = bytes(512)                             # end-of-archive block


def _ustar_headers(data) -> TarHeaders:
    """The members of a tar (bytes or a memory map) whose every header is what tlx writes but for
    name, mode and size, walked header to header (a few us each); the fixed fields and checksums
    are then compared for all headers at once. _NotPlain for anything else (pax, GNU, links, owner
    names, dates, damage): tarfile then reads the tar and says field by field what is there."""
    out, pos, blocks = TarHeaders(), 0, []
    while True:
        block = data[pos:pos + 512]
        if len(block) < 512:
            raise _NotPlain                   # no end-of-archive block: cut short
        if block == _END:
            break
        blocks.append(block)
        out.names.append(block[:100].split(b"\0", 1)[0].decode("utf-8", "replace"))
        pos += 512 + -(-_size(block[124:136]) // 512) * 512
    if blocks:
        h = np.frombuffer(b"".join(blocks), np.uint8).reshape(-1, 512)
        checksum = h[:, :148].sum(1, dtype=np.int64) + h[:, 156:].sum(1, dtype=np.int64) + 8 * 32
        digits = h[:, 148:154].astype(np.int64) - 48
        if not ((h[:, _FIXED] == _TEMPLATE[_FIXED]).all() and ((digits >= 0) & (digits < 8)).all()
                and ((digits * _POWERS).sum(1) == checksum).all()):
            raise _NotPlain
    return out


def _header(i: int, m: tarfile.TarInfo, out: TarHeaders) -> None:
    if not m.isreg():
        out.problems.append((f"member {i}", "not a regular file"))
    for name in ("uname", "gname", "linkname"):
        if getattr(m, name):
            out.problems.append((f"member {i} {name}", f"{name} is not empty (the format writes none)"))
            out.texts.append((f"member {i} {name}", getattr(m, name)))
    if m.uid or m.gid:
        out.problems.append((f"member {i}", "uid or gid is not 0 (the format writes 0)"))
    if m.mtime:
        out.problems.append((f"member {i}", "mtime is not 0 (the format writes 0; a real time dates the file)"))
    for n, (k, v) in enumerate(m.pax_headers.items()):
        out.problems.append((f"member {i} pax record {n}", "a pax header record (the format writes none)"))
        out.texts.append((f"member {i} pax record {n}", f"{k}={v}"))


def audit_tar(ctx: AuditContext, rel: str, headers: TarHeaders) -> None:
    """Findings of one tar from its headers (read_tar_headers): names against the manifest's members."""
    name = ctx.names[rel]
    if headers.unreadable:
        ctx.report.add(name, "file", "not a readable tar (the members before the damage were checked)")
    for where, check in headers.problems:
        ctx.report.add(name, where, check)
    ctx.check(name, headers.names, Expect("a member name (<key>.<member of the manifest>)", f"^{_member_body(ctx)}$"),
              where=lambda i: f"member {i} name")
    texts = headers.texts
    ctx.check(name, [t for _, t in texts], None, where=lambda i: texts[i][0])


def audit_idx(ctx: AuditContext, rel: str, path: Path) -> None:
    """DALI's index: `v1.2 <samples>`, then per sample `<ext> <offset> <size> <member name>` per member."""
    name = ctx.names[rel]
    lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    ctx.check(name, lines[:1], Expect("a DALI index header (v1.2 <samples>)", r"^v1\.2 [0-9]+$"),
              where=lambda i: "line 1")
    exts = "|".join(re.escape(e) for e in ctx.exts)
    one = f"({exts}) [0-9]+ [0-9]+ {_member_body(ctx)}"
    ctx.check(name, lines[1:], Expect("an index line (<ext> <offset> <size> <member name> ...)", f"^{one}( {one})*$"),
              where=lambda i: f"line {i + 2}")


# ---------------------------------------------------------------- anything else: logs, notes

def audit_text(ctx: AuditContext, rel: str, path: Path) -> None:
    """A file the format does not define (a log, a note): every line; a binary one cannot be read."""
    name = ctx.names[rel]
    with open(path, "rb") as f:
        if b"\0" in f.read(1 << 16):
            ctx.report.add(name, "file", "a binary file that is not part of the dataset format (audit cannot "
                                         "read it)")
            return
        f.seek(0)
        lines, first = [], 1
        for raw in f:
            lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if len(lines) == LINES_PER_CHECK:
                ctx.check(name, lines, None, where=lambda i, first=first: f"line {first + i}")
                first, lines = first + len(lines), []
        ctx.check(name, lines, None, where=lambda i, first=first: f"line {first + i}")
