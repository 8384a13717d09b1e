"""Stage 2, plan: every decision that needs the whole cohort, made on metadata only.

    summary = make_plan(dataset_dir, PlanConfig(min_slices=30, seed=0))

    work/index.parquet -> work/plan.parquet          one row per slice to convert, volume by volume
                          work/plan_volumes.parquet  one row per series seen, kept or not, with its reason
                          work/plan_rejects.parquet  every file that will not be converted, with its reason
                          work/plan_copies.parquet   the other copies of a planned file (same SOP UID), in order
                          work/plan.json             the config, the classes, the counts, the subset targets

The steps, in the order they run (one small function each):
  1. candidates    rows scan accepted; rows without a UID or a label are rejected, and rows
                   whose pixels may show text or a face (datakit.burned_in) unless allowed
  2. sop dedup     one file per SOPInstanceUID (copies of a file); the smallest path is planned,
                   the other copies are its fallbacks (work/plan_copies.parquet): write reads the
                   next copy when one cannot be read
     matrix        a series mixing matrix sizes keeps its most common one (`mixed_matrix`)
  3. volumes       a volume is a series; a series holding several patients is rejected whole;
                   its label is the label of most of its slices (ties: class order)
  4. slice order   along the slice normal (slice_pos) when every slice has one, else by
                   InstanceNumber, else by SOP pseudonym; positions are compared to 1 um.
                   Ties (slices at one position, e.g. several phases in one series) are
                   ordered by InstanceNumber then SOP and all kept: pixel-identical ones
                   are removed by write, which sees the pixels
  5. min slices    volumes with fewer than `min_slices` slices are rejected
  6. split         by patient (default) or volume, stratified by label (`assign_splits`); no split
                   with a positive fraction left empty when there are enough units, and a
                   warning for a split that is empty or has few patients (plan_splits)
  7. classes       excluded classes are dropped; a subset takes whole volumes per split
                   and label (`choose_subset`)
  8. order         a global shuffle position per slice (shards are filled in this order),
                   the sample key, and the partition unit phase 1 of write distributes

Why it looks the way it does: it must plan the paper's 12M-row index in seconds on a
small machine. The decisions run on a narrow projection of the index in which the
16-hex pseudonyms are parsed to uint64 (a quarter of the memory of the strings, and
integer sorts); plan.parquet refers to index rows by number instead of copying them
(copying 37 columns of 12M rows alone costs more than all decisions); paths are read
only for the rows whose reject reason or dedup needs them.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from datakit.burned_in import ALLOW_HINT, BURNED_IN_REASONS, burned_in_warning
from datakit.errors import DatakitError
from datakit.manifest import SPLITS, Layout, read_json
from datakit.plan_splits import class_warnings, fill_empty_splits, split_warnings
from datakit.resume import check_resume_mode, differing_options, output_lock, refuse_foreign
from tlxcore.atomic import atomic_write, write_json_atomic
from tlxcore.progress import Progress, Tick, silent

PLAN_VERSION = 1
# The paper's seven anatomical classes, in the order that defines label indices. Labels a
# replaced rules file adds are appended in sorted order.
PAPER_CLASSES = ("head", "thorax", "abdomen", "extremities", "pelvis", "spine", "other")
SPLIT_BY = ("patient", "volume")
ID_COLUMNS = ("patient", "series", "sop")
# Index columns the decisions read (paths and reasons are read later, for rejected rows only).
DECISION_COLUMNS = ("reject_code", *ID_COLUMNS, "slice_pos", "instance_number", "label", "burned_in", "rows",
                    "columns")
DETAIL_COLUMNS = ("path", "reject_code", "reject_reason", "series", "label_rule", "label_keyword", "label_field")

# `path` and `duplicate_of` are source paths (relative to the DICOM root), for the operator only.
REJECT_SCHEMA = pa.schema([("path", pa.string()), ("volume", pa.string()), ("stage", pa.string()),
                           ("code", pa.string()), ("reason", pa.string()), ("duplicate_of", pa.string())])
VOLUME_SCHEMA = pa.schema([
    ("volume", pa.string()), ("patient", pa.string()), ("label", pa.string()), ("label_rule", pa.string()),
    ("label_keyword", pa.string()), ("label_field", pa.string()), ("split", pa.string()), ("files", pa.int32()),
    ("slices_planned", pa.int32()), ("kept", pa.bool_()), ("reason", pa.string()), ("order_by", pa.string()),
    ("duplicate_positions", pa.int32()), ("partition_unit", pa.int32()), ("subset_rank", pa.int32())])

_POS_UNITS_PER_MM = 1000                # slice positions compared to 1 um
_MATRIX = 1 << 16                       # matrix key: rows * _MATRIX + columns
_SLOT_BITS = 40                         # composite sort key: volume code << 40 | position slot
_SLOT_MID = 1 << (_SLOT_BITS - 1)


@dataclass(frozen=True)
class PlanConfig:
    """Everything that decides a plan; saved in plan.json and in the dataset's manifest."""

    min_slices: int = 30
    split_by: str = "patient"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test (shares of slices)
    seed: int = 0
    exclude_classes: tuple[str, ...] = ()
    subset_size: int | None = None  # slices in the written dataset; None = all
    # Phase 1 converts this much more than a subset needs, since the coverage and pixel-duplicate
    # filters of write drop slices; write then cuts each split and class to its exact target.
    subset_margin: float = 0.25
    # Keep slices whose header says (or whose ImageType suggests) that the pixels show text or a face
    # (datakit.burned_in); rejected as `burned-in` by default. Recorded in plan.json and the manifest.
    allow_burned_in: bool = False

    def check(self) -> None:
        if self.min_slices < 1:
            raise DatakitError(f"--min-slices must be at least 1, got {self.min_slices}")
        if self.split_by not in SPLIT_BY:
            raise DatakitError(f"--split-by {self.split_by!r} is not one of: {', '.join(SPLIT_BY)}")
        fr = self.fractions
        if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6 or fr[0] <= 0:
            raise DatakitError(f"--fractions {','.join(map(str, fr))} must be three numbers >= 0 for "
                               "train,val,test that sum to 1, with train > 0 (e.g. 0.8,0.1,0.1)")
        if self.subset_size is not None and self.subset_size < 1:
            raise DatakitError(f"--subset-size must be a positive number of slices, got {self.subset_size}")
        if not 0 <= self.subset_margin <= 10:
            raise DatakitError(f"--subset-margin must be in [0, 10], got {self.subset_margin}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fractions"], d["exclude_classes"] = list(self.fractions), list(self.exclude_classes)
        return d


def stable_key(seed: int, purpose: str, values) -> np.ndarray:
    """A keyed 64-bit hash per value: a random order that depends on the seed and the id only,
    not on row order, library versions or which other ids are present."""
    prefix = f"{seed}:{purpose}:".encode()
    return np.fromiter((int.from_bytes(hashlib.blake2b(prefix + v.encode(), digest_size=8).digest(), "little")
                        for v in values), dtype=np.uint64, count=len(values))


def class_list(labels) -> list[str]:
    return list(PAPER_CLASSES) + sorted(set(labels) - set(PAPER_CLASSES))


def _class_index(classes: list[str], col: str = "label") -> pl.Expr:
    return pl.col(col).replace_strict(classes, list(range(len(classes))), return_dtype=pl.Int16)


# ---------------------------------------------------------------- reading the index

@dataclass
class Ids:
    """How the id columns were turned into uint64 codes, and how to turn codes back."""

    hex_digits: int | None  # uniform-length hex pseudonyms: code = int(hex); else None
    names: dict[str, np.ndarray]  # fallback: column -> sorted unique strings (code = position)

    def decode(self, column: str, codes) -> list[str]:
        if self.hex_digits is not None:
            return [f"{int(c):0{self.hex_digits}x}" for c in codes]
        return self.names[column][np.asarray(codes, dtype=np.int64)].tolist()


def require_index(path: Path) -> None:
    if not path.exists():
        raise DatakitError(f"{path} not found: run `tlx scan --dicom-root DIR --out {path.parent.parent}` first")


def read_index(path: Path) -> tuple[pl.DataFrame, Ids]:
    """The narrow index: row, rejected, patient/series/sop, slice_pos, instance_number, label, matrix."""
    require_index(path)
    names = _index_metadata(path).schema.to_arrow_schema().names
    missing = [c for c in (*DECISION_COLUMNS, *DETAIL_COLUMNS) if c not in names]
    if missing:
        raise DatakitError(f"{path} lacks columns {', '.join(missing)}: it was not written by this tlx's scan")
    scan = pl.scan_parquet(path)
    parsed = scan.select(
        rejected=pl.col("reject_code").is_not_null(),
        **{c: pl.col(c).str.to_integer(base=16, dtype=pl.UInt64, strict=False) for c in ID_COLUMNS},
        **{f"{c}_len": pl.col(c).str.len_bytes() for c in ID_COLUMNS},
        slice_pos=pl.col("slice_pos").cast(pl.Float64), instance_number=pl.col("instance_number").cast(pl.Int64),
        label=pl.col("label").cast(pl.Categorical), burned_in=pl.col("burned_in").cast(pl.Categorical),
        matrix=pl.col("rows").cast(pl.Int64) * _MATRIX + pl.col("columns").cast(pl.Int64),
    ).collect(engine="streaming")
    if parsed.is_empty():
        raise DatakitError(f"{path} lists no files: the scanned folder was empty")
    # Pseudonyms are uniform-length hex (datakit.pseudonym); anything else takes the slow path.
    stats = parsed.select(
        *[(pl.col(c).null_count() == pl.col(f"{c}_len").null_count()).alias(f"{c}_parsed") for c in ID_COLUMNS],
        lo=pl.min_horizontal(*[pl.col(f"{c}_len").min() for c in ID_COLUMNS]),
        hi=pl.max_horizontal(*[pl.col(f"{c}_len").max() for c in ID_COLUMNS])).row(0, named=True)
    if all(stats[f"{c}_parsed"] for c in ID_COLUMNS) and stats["lo"] == stats["hi"] and (stats["hi"] or 16) <= 16:
        ids = Ids(hex_digits=stats["hi"] or 16, names={})
    else:
        ids, codes = _dense_codes(scan)
        parsed = parsed.with_columns(codes)
    return parsed.drop([f"{c}_len" for c in ID_COLUMNS]).with_row_index("row"), ids


def _index_metadata(path: Path) -> pq.FileMetaData:
    try:
        return pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError) as exc:
        raise DatakitError(f"{path} is not a readable Parquet file ({exc}); rerun `tlx scan`") from exc


def _dense_codes(scan: pl.LazyFrame) -> tuple[Ids, list[pl.Series]]:
    """Fallback for ids that are not uniform hex: code = rank among the sorted distinct strings."""
    names, codes = {}, []
    for c in ID_COLUMNS:
        col = scan.select(c).collect()[c]
        uniq = col.drop_nulls().unique().sort()
        names[c] = uniq.to_numpy()
        codes.append((col.rank("dense").cast(pl.UInt64) - 1).alias(c))
    return Ids(hex_digits=None, names=names), codes


def read_paths(path: Path, rows: np.ndarray) -> pl.DataFrame:
    """row, path of the index rows `rows`."""
    wanted = pl.Series(np.asarray(rows, dtype=np.uint32))
    return (pl.scan_parquet(path).select("path").with_row_index("row")
            .filter(pl.col("row").is_in(wanted.implode())).collect(engine="streaming"))


# ---------------------------------------------------------------- the steps

def _reject(frame: pl.DataFrame, code: str, reason: pl.Expr | str, duplicate_of: pl.Expr | None = None) -> pl.DataFrame:
    """Rows of `frame` as plan rejects: row, series, code, reason, duplicate_of (the kept copy's path)."""
    reason = pl.lit(reason) if isinstance(reason, str) else reason
    return frame.select(pl.col("row"), pl.col("series"), code=pl.lit(code), reason=reason.cast(pl.String),
                        duplicate_of=pl.lit(None, pl.String) if duplicate_of is None else duplicate_of)


def _slices_of(slices: pl.DataFrame, vols: pl.DataFrame) -> pl.DataFrame:
    """The slices of the (few) volumes in `vols`, with those volumes' columns."""
    return slices.filter(pl.col("vcode").is_in(vols["vcode"].implode())).join(vols.drop("slice_index", strict=False),
                                                                              on="vcode")


def candidates(index: pl.DataFrame) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """Step 1: rows scan accepted and that carry what plan needs."""
    cand = index.filter(~pl.col("rejected"))
    missing_uid = pl.any_horizontal(pl.col(*ID_COLUMNS).is_null())
    rejects = [
        _reject(cand.filter(missing_uid), "missing-uid",
                "the header lacks PatientID, SeriesInstanceUID or SOPInstanceUID; the file cannot be placed "
                "in a volume"),
        _reject(cand.filter(~missing_uid & pl.col("label").is_null()), "no-label",
                "no rule of the label rules file matched; add a keyword or a default class to the rules file"),
    ]
    return cand.filter(~missing_uid & pl.col("label").is_not_null()), rejects


def reject_burned_in(cand: pl.DataFrame, allow: bool) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """Step 1b: candidates whose pixels may show text or a face (scan's `burned_in` flag) are
    rejected as `burned-in`, unless `allow` (--allow-burned-in) keeps them."""
    flagged = pl.col("burned_in").is_not_null()
    if allow:
        return cand, []
    reason = pl.format("{}; {}", pl.col("burned_in").cast(pl.String).replace_strict(
        BURNED_IN_REASONS, default="scan flagged its pixels as likely to show text or a face"), pl.lit(ALLOW_HINT))
    return cand.filter(~flagged), [_reject(cand.filter(flagged), "burned-in", reason)]


def sop_copies(cand: pl.DataFrame) -> np.ndarray:
    """Rows whose SOP UID occurs more than once (sorting uint64 beats hashing here)."""
    s = np.sort(cand["sop"].to_numpy())
    repeated = np.unique(s[1:][s[1:] == s[:-1]])
    if not len(repeated):
        return np.empty(0, np.uint32)
    return cand.filter(pl.col("sop").is_in(pl.Series(repeated).implode()))["row"].to_numpy()


DUPLICATE_SOP_REASON = ("a copy of the file named in duplicate_of (same SOPInstanceUID), which stands for both: its "
                        "own row says what became of it; a copy is read only when the files before it cannot be")


def dedup_sop(cand: pl.DataFrame, copies: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Step 2: one file per SOPInstanceUID. Copies of a file share the UID; the smallest path
    is planned so the choice does not depend on the order scan found the files in. The others
    are its fallbacks, in path order: write reads the next one when a copy cannot be read (a
    corrupt first copy must not cost the intact one). `copies` holds row and path of every row
    whose SOP UID repeats. Returns the candidates, the rejects (`duplicate-sop`, until write
    needs a copy) and the fallbacks (row: the planned file, copy: another, rank: 1, 2, ...)."""
    dups = cand.select("row", "sop", "series").join(copies, on="row").sort("sop", "path")
    first = dups["sop"].is_first_distinct()
    kept = dups.filter(first).select("sop", kept_path=pl.col("path"), kept_row=pl.col("row"))
    losers = dups.filter(~first).join(kept, on="sop", maintain_order="left")
    rejects = _reject(losers, "duplicate-sop", DUPLICATE_SOP_REASON, duplicate_of=pl.col("kept_path"))
    fallbacks = losers.select(row=pl.col("kept_row").cast(pl.Int64), copy=pl.col("row").cast(pl.Int64),
                              rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("sop"))
    return cand.filter(~pl.col("row").is_in(losers["row"].implode())), rejects, fallbacks


def mixed_matrix(cand: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Step 2b: a series whose slices differ in Rows x Columns (another reconstruction or an
    overview filed under its UID) keeps its most common matrix (ties: the larger); the other
    slices are rejected as `mixed-matrix`, since resized to one size they would not be slices of
    one volume at one spacing."""
    counts = cand.group_by("series", "matrix").agg(n=pl.len())
    multi = counts.filter(pl.col("series").is_duplicated())
    if multi.is_empty():
        return cand, None
    major = (multi.sort(["series", "n", "matrix"], descending=[False, True, True], nulls_last=True)
             .unique("series", keep="first", maintain_order=True).select("series", major="matrix"))
    odd = cand.join(major, on="series").filter(pl.col("matrix").ne_missing(pl.col("major")))
    side = [(pl.col(c) // _MATRIX).cast(pl.String) + "x" + (pl.col(c) % _MATRIX).cast(pl.String) for c in
            ("matrix", "major")]
    reason = pl.format("its series mixes matrix sizes: this slice is {}, most of the series {}",
                       *[s.fill_null("unknown") for s in side])
    return cand.filter(~pl.col("row").is_in(odd["row"].implode())), _reject(odd, "mixed-matrix", reason)


def volumes_of(cand: pl.DataFrame, classes: list[str]) -> pl.DataFrame:
    """Step 3: one row per candidate series: slices, patient(s), label, how to order it.

    The volume code `vcode` numbers series in id order (the canonical order of the plan)."""
    per_label = (cand.group_by("series", "label")
                 .agg(n=pl.len(), first_row=pl.col("row").min(), pmin=pl.col("patient").min(),
                      pmax=pl.col("patient").max(), pos_nulls=pl.col("slice_pos").null_count(),
                      inst_nulls=pl.col("instance_number").null_count())
                 .with_columns(label=pl.col("label").cast(pl.String)))
    majority = (per_label.with_columns(class_index=_class_index(classes))
                .sort("series", "n", "class_index", descending=[False, True, False])
                .unique("series", keep="first", maintain_order=True)
                .select("series", "label", label_row="first_row"))
    vols = (per_label.group_by("series")
            .agg(slices=pl.col("n").sum(), patient=pl.col("pmin").min(), pmax=pl.col("pmax").max(),
                 pos_nulls=pl.col("pos_nulls").sum(), inst_nulls=pl.col("inst_nulls").sum())
            .join(majority, on="series").sort("series").with_row_index("vcode")
            .with_columns(mixed=pl.col("patient") != pl.col("pmax"),
                          order_by=pl.when(pl.col("pos_nulls") == 0).then(pl.lit("position"))
                          .when(pl.col("inst_nulls") == 0).then(pl.lit("instance")).otherwise(pl.lit("sop"))))
    return vols.drop("pmax", "pos_nulls", "inst_nulls")


def order_slices(cand: pl.DataFrame, vols: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
    """Step 4: slice_index of every candidate, volume by volume. Returns the slices in canonical
    order (vcode, slice_index) and the number of repeated positions per vcode.

    One composite uint64 key (volume code, then the quantised position or instance number)
    sorted by numpy; the rare ties are then ordered by InstanceNumber and SOP."""
    if len(vols) >= 1 << (64 - _SLOT_BITS):
        raise DatakitError(f"{len(vols)} series exceed the {1 << (64 - _SLOT_BITS)} one plan can order")
    # vcode by binary search: vols is sorted by series id (a 12M-row join costs more).
    vcode = np.searchsorted(vols["series"].to_numpy(), cand["series"].to_numpy())
    order_by = vols["order_by"].replace_strict({"position": 0, "instance": 1, "sop": 2}, return_dtype=pl.Int8)
    order_by = order_by.to_numpy()[vcode]
    pos = cand["slice_pos"].to_numpy()
    inst = cand["instance_number"].fill_null(0).to_numpy()
    lim = float(_SLOT_MID - 1)
    with np.errstate(invalid="ignore"):  # NaN positions only occur in volumes not ordered by position
        slot = np.where(order_by == 0, np.clip(np.rint(pos * _POS_UNITS_PER_MM), -lim, lim),
                        np.where(order_by == 1, np.clip(inst, -lim, lim), 0.0))
    comp = (vcode.astype(np.uint64) << np.uint64(_SLOT_BITS)) | (slot.astype(np.int64) + _SLOT_MID).astype(np.uint64)
    keyed = cand.select("row", "sop", "instance_number")
    idx = np.argsort(comp, kind="stable")
    comp = comp[idx]
    tie = np.zeros(len(comp), bool)
    if len(comp) > 1:
        same = comp[1:] == comp[:-1]
        tie[1:] |= same
        tie[:-1] |= same
    if tie.any():  # order each run of equal keys by (instance number, sop)
        at = np.flatnonzero(tie)
        inst = keyed["instance_number"].fill_null(np.iinfo(np.int64).max).to_numpy()[idx[at]]
        sop = keyed["sop"].to_numpy()[idx[at]]
        idx[at] = idx[at][np.lexsort((sop, inst, comp[at]))]
    vcode = (comp >> np.uint64(_SLOT_BITS)).astype(np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(vcode)) + 1]
    slice_index = np.arange(len(comp)) - np.repeat(starts, np.diff(np.r_[starts, len(comp)]))
    repeated = np.zeros(len(vols), np.int64)
    if len(comp) > 1:
        np.add.at(repeated, vcode[1:][same], 1)
    ordered = pl.DataFrame({"row": keyed["row"].to_numpy()[idx], "vcode": vcode.astype(np.uint32),
                            "slice_index": slice_index.astype(np.int32)})
    return ordered, repeated


def assign_splits(units: pl.DataFrame, config: PlanConfig, classes: list[str]) -> pl.DataFrame:
    """Step 6: a split per unit (patient or volume). `units`: one row per (unit, label, slices).

    Iterative stratification (after Sechidis et al. 2011, on slice counts): units are
    taken in a seeded random order, and each goes whole to the split where it most
    reduces the squared relative shortfall of the whole set and of every label it holds:

        cost(s) = sum over g in {all} + the unit's labels of  ((a[s,g] + c_g - d[s,g])^2 - (a[s,g] - d[s,g])^2) / T_g^2

    with a = slices assigned so far, d = fraction_s * T_g, T_g = all slices of g. A label
    takes part only if at least 2 / (smallest positive fraction) units hold it: a label of
    a handful of units cannot be split by fractions (each unit is whole), and letting it
    vote would send every such unit to the largest split. A patient with volumes of
    several labels is placed by all of them at once. The whole set and every label that
    takes part end within about one unit of their fractions; a split with fraction 0 gets
    nothing; another seed gives another order, hence other splits. Small cohorts: a split
    with a positive fraction left empty then gets one unit whenever there are enough
    (plan_splits.fill_empty_splits).
    """
    fractions = config.fractions
    min_units = math.ceil(2 / min(f for f in fractions if f > 0))
    indexed = units.with_columns(g=_class_index(classes).cast(pl.Int32))
    holders = indexed.group_by("g").agg(n=pl.len(), total=pl.col("slices").sum())
    voting = set(holders.filter(pl.col("n") >= min_units)["g"].to_list())
    total = dict(zip(holders["g"].to_list(), holders["total"].to_list()))
    total[-1] = sum(total.values())  # -1: the whole set
    per_unit = (indexed.filter(pl.col("g").is_in(list(voting)))
                .vstack(indexed.group_by("unit").agg(label=pl.lit(None, pl.String), slices=pl.col("slices").sum(),
                                                     g=pl.lit(-1, pl.Int32)).select(indexed.columns))
                .group_by("unit").agg(groups=pl.col("g"), counts=pl.col("slices").cast(pl.Float64)))
    per_unit = per_unit.with_columns(rand=pl.Series(stable_key(config.seed, "split", per_unit["unit"].to_list())))
    per_unit = per_unit.sort("rand")
    desired = [{g: f * t for g, t in total.items()} for f in fractions]
    assigned = [dict.fromkeys(total, 0.0) for _ in fractions]
    weight = {g: 1.0 / max(t, 1) ** 2 for g, t in total.items()}
    splits, sizes = [], []
    for groups, counts in zip(per_unit["groups"].to_list(), per_unit["counts"].to_list()):
        sizes.append(counts[groups.index(-1)])
        best, best_cost = 0, math.inf
        for s in range(len(fractions)):
            if fractions[s] <= 0:
                continue
            a, d = assigned[s], desired[s]
            cost = sum(weight[g] * c * (c + 2 * (a[g] - d[g])) for g, c in zip(groups, counts))
            if cost < best_cost:
                best, best_cost = s, cost
        for g, c in zip(groups, counts):
            assigned[best][g] += c
        splits.append(SPLITS[best])
    splits = fill_empty_splits(splits, sizes, fractions)
    return per_unit.select("unit", split=pl.Series(splits, dtype=pl.String))


def largest_remainder(total: int, weights: dict) -> dict:
    """Integer shares of `total` proportional to `weights`, summing exactly to `total`."""
    wsum = sum(weights.values())
    exact = {k: total * w / wsum for k, w in weights.items()}
    shares = {k: int(math.floor(v)) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (shares[k] - exact[k], str(k)))[:total - sum(shares.values())]:
        shares[k] += 1
    return shares


def choose_subset(vols: pl.DataFrame, config: PlanConfig) -> tuple[pl.DataFrame, dict | None]:
    """Step 7: drop excluded classes; pick a subset of whole volumes per (split, label).

    The subset keeps the class ratio of the full set over the classes not excluded, and
    each split's share: target(split, label) = subset_size * slices(split, label) / slices
    of all included classes (largest-remainder rounding, so targets sum to subset_size).
    Volumes are taken in a seeded random order until their slices reach target * (1 +
    subset_margin); write cuts each (split, label) to its exact target after its own
    filters. Splits are those of the full set with the same seed, so a volume is in the
    same split in the subset as in the full dataset (leak-free).
    """
    vols = vols.with_columns(excluded=pl.col("label").is_in(list(config.exclude_classes)) & pl.col("usable"))
    if config.subset_size is None:
        return vols.with_columns(subset_rank=pl.lit(None, pl.Int32), picked=pl.col("usable")), None
    included = vols.filter(pl.col("usable") & ~pl.col("excluded"))
    available = int(included["slices"].sum())
    if config.subset_size > available:
        raise DatakitError(f"--subset-size {config.subset_size} exceeds the {available} planned slices of the "
                           "included classes; choose at most that many")
    counts = included.group_by("split", "label").agg(pl.col("slices").sum()).rows()
    targets = largest_remainder(config.subset_size, {(s, lab): n for s, lab, n in counts})
    target_frame = pl.DataFrame([(s, lab, t) for (s, lab), t in targets.items()],
                                schema={"split": pl.String, "label": pl.String, "target": pl.Int64}, orient="row")
    ranked = (included.with_columns(rand=pl.Series(stable_key(config.seed, "subset", included["volume"].to_list())))
              .sort("split", "label", "rand")
              .with_columns(subset_rank=pl.int_range(pl.len(), dtype=pl.Int32).over("split", "label"),
                            before=(pl.col("slices").cum_sum() - pl.col("slices")).over("split", "label"))
              .join(target_frame, on=["split", "label"])
              .select("series", "subset_rank", picked=pl.col("before") < pl.col("target") * (1 + config.subset_margin)))
    vols = vols.join(ranked, on="series", how="left").with_columns(pl.col("picked").fill_null(False))
    nested: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for (s, lab), t in sorted(targets.items()):
        nested[s][lab] = t
    return vols, nested


# ---------------------------------------------------------------- the whole stage

@dataclass
class Plan:
    """The decisions (in memory), before they are written."""

    rows: int                     # files found (index rows)
    fallbacks: pl.DataFrame       # other copies of planned files: row, copy, rank (dedup_sop)
    slices: pl.DataFrame          # planned slices in canonical order: row, vcode, slice_index, order
    vols: pl.DataFrame            # every candidate series: vcode, series, volume, patient_id, label, split, ...
    rejects: pl.DataFrame         # plan rejects: row, series, code, reason
    classes: list[str]
    targets: dict | None
    burned_in_planned: int = 0    # planned slices flagged by datakit.burned_in (only with allow_burned_in)


def decide(index_path: Path, config: PlanConfig) -> Plan:
    index, ids = read_index(index_path)
    cand, rejects = candidates(index)
    cand, burned = reject_burned_in(cand, config.allow_burned_in)
    rejects += burned
    classes = class_list(cand["label"].unique().drop_nulls().cast(pl.String).to_list())
    unknown = sorted(set(config.exclude_classes) - set(classes))
    if unknown:
        raise DatakitError(f"--exclude-class {', '.join(unknown)} is not a class of this index; "
                           f"classes: {', '.join(classes)}")
    copies = sop_copies(cand)
    fallbacks = pl.DataFrame(schema={"row": pl.Int64, "copy": pl.Int64, "rank": pl.Int32})
    if len(copies):
        cand, sop_rejects, fallbacks = dedup_sop(cand, read_paths(index_path, copies))
        rejects.append(sop_rejects)
    cand, matrix_rejects = mixed_matrix(cand)
    if matrix_rejects is not None:
        rejects.append(matrix_rejects)
    vols = volumes_of(cand, classes)
    vols = vols.with_columns(volume=pl.Series(ids.decode("series", vols["series"].to_list()), dtype=pl.String),
                             patient_id=pl.Series(ids.decode("patient", vols["patient"].to_list()), dtype=pl.String))
    bad = vols.filter(~pl.col("volume").str.contains(r"^[A-Za-z0-9_-]{1,64}$"))
    if len(bad):  # sample keys are built from volume ids: they must be pseudonyms, not raw UIDs
        raise DatakitError(f"{len(bad)} series ids in {index_path.name} are not pseudonyms (e.g. "
                           f"{len(bad['volume'][0])} characters with dots or other signs); rerun `tlx scan`")

    slices, repeated = order_slices(cand, vols)
    vols = vols.with_columns(duplicate_positions=pl.when(pl.col("order_by") == "position")
                             .then(pl.Series(repeated[vols["vcode"].to_numpy()])).otherwise(0).cast(pl.Int32),
                             small=pl.col("slices") < config.min_slices)
    vols = vols.with_columns(usable=~pl.col("mixed") & ~pl.col("small"))
    rejects.append(_reject(_slices_of(slices, vols.filter("mixed")), "mixed-patients",
                           "its series holds slices of several patients; check the export"))
    rejects.append(_reject(_slices_of(slices, vols.filter(~pl.col("mixed") & pl.col("small"))), "small-volume",
                           pl.format("its series has {} slices, fewer than --min-slices {}", "slices",
                                     pl.lit(config.min_slices))))

    vols = _with_splits(vols, config, classes)
    vols, targets = choose_subset(vols, config)
    vols = vols.with_columns(planned=pl.col("usable") & ~pl.col("excluded") & pl.col("picked"))
    rejects.append(_reject(_slices_of(slices, vols.filter("excluded")), "excluded-class",
                           pl.format("its volume's class {} is excluded (--exclude-class)", "label")))
    rejects.append(_reject(_slices_of(slices, vols.filter(pl.col("usable") & ~pl.col("excluded") & ~pl.col("planned"))),
                           "not-in-subset",
                           f"its volume was not picked for the subset of {config.subset_size} slices (--subset-size)"))

    # Partition units: planned volumes by size, largest first, dealt round-robin over partitions.
    units = (vols.filter("planned").sort(["slices", "volume"], descending=[True, False])
             .with_row_index("partition_unit").select("vcode", pl.col("partition_unit").cast(pl.Int32)))
    vols = vols.join(units, on="vcode", how="left")
    # The global shuffle: a seeded permutation of the planned slices, numbered in canonical order.
    is_planned = np.zeros(len(vols), bool)
    is_planned[units["vcode"].to_numpy()] = True
    slices = slices.filter(pl.Series(is_planned[slices["vcode"].to_numpy()]))
    perm = np.random.default_rng([config.seed, 0x5EED]).permutation(len(slices))
    slices = slices.with_columns(order=pl.Series(perm, dtype=pl.Int64))
    rejects = pl.concat([r.cast({"row": pl.UInt32}) for r in rejects]).sort("row")
    flagged = cand.filter(pl.col("burned_in").is_not_null())["row"]
    burned_in_planned = int(slices["row"].is_in(flagged.implode()).sum())
    fallbacks = fallbacks.filter(pl.col("row").is_in(slices["row"].cast(pl.Int64).implode()))
    return Plan(len(index), fallbacks, slices, vols, rejects, classes, targets, burned_in_planned)


def _with_splits(vols: pl.DataFrame, config: PlanConfig, classes: list[str]) -> pl.DataFrame:
    unit = "patient_id" if config.split_by == "patient" else "volume"
    ok = vols.filter("usable")
    if ok.is_empty():
        return vols.with_columns(split=pl.lit(None, pl.String))
    units = ok.group_by(unit, "label").agg(pl.col("slices").sum()).rename({unit: "unit"})
    splits = assign_splits(units, config, classes).rename({"unit": unit})
    return vols.join(splits, on=unit, how="left").with_columns(
        split=pl.when("usable").then(pl.col("split")))


def _write_parquet(path: Path, table: pa.Table, **options) -> None:
    with atomic_write(path) as f:
        pq.write_table(table, f, **options)


def write_rejects(layout: Layout, plan: Plan) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every file not planned -> plan_rejects.parquet, in index order, from one streaming
    read of the index's detail columns, filtered to the rows that need them (parquet
    predicate pushdown keeps this cheap). Also returns the label details of each volume's
    label row, and the series and code of each scan reject."""
    label_rows = plan.vols.select(row=pl.col("label_row").cast(pl.UInt32))
    names = plan.vols.select("series", "volume")
    rejects = plan.rejects.join(names, on="series", how="left").drop("series")
    wanted = pl.concat([rejects["row"], label_rows["row"]]).implode()
    scan = (pl.scan_parquet(layout.index).select(DETAIL_COLUMNS).with_row_index("row")
            .filter(pl.col("reject_code").is_not_null() | pl.col("row").is_in(wanted)))
    label_details, scan_series = [], []
    with atomic_write(layout.plan_rejects) as f, pq.ParquetWriter(f, REJECT_SCHEMA) as out:
        for batch in scan.collect_batches(chunk_size=1 << 20):
            at_scan = batch.filter(pl.col("reject_code").is_not_null())
            scan_series.append(at_scan.select("series", "reject_code"))
            both = pl.concat([
                at_scan.select("row", "path", volume="series", stage=pl.lit("scan"), code="reject_code",
                               reason="reject_reason", duplicate_of=pl.lit(None, pl.String)),
                batch.select("row", "path").join(rejects, on="row").select(
                    "row", "path", "volume", stage=pl.lit("plan"), code="code", reason="reason",
                    duplicate_of="duplicate_of")])
            out.write_table(both.sort("row").drop("row").to_arrow().cast(REJECT_SCHEMA))
            label_details.append(batch.join(label_rows, on="row", how="semi")
                                 .select("row", "label_rule", "label_keyword", "label_field"))
    return pl.concat(label_details), pl.concat(scan_series)


def _dictionary(codes: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values, pa.string()))


def write_plan(layout: Layout, plan: Plan, config: PlanConfig) -> pl.DataFrame:
    """plan.parquet, plan_rejects.parquet, plan_volumes.parquet (each written then renamed).
    Returns the volume table. plan.parquet's string columns are built as dictionaries of
    the volume table (12M strings would cost more than every decision)."""
    vols = plan.vols.sort("vcode")
    vcode = plan.slices["vcode"].to_numpy()
    split_code = vols["split"].replace_strict(list(SPLITS), list(range(len(SPLITS))), default=0,
                                              return_dtype=pl.Int32).to_numpy()
    table = pa.table({
        "row": pa.array(plan.slices["row"].to_numpy().astype(np.int64)),
        "volume": _dictionary(vcode, vols["volume"].to_list()),
        "slice_index": pa.array(plan.slices["slice_index"].to_numpy()),
        "split": _dictionary(split_code[vcode], list(SPLITS)),
        "order": pa.array(plan.slices["order"].to_numpy()),
        "partition_unit": pa.array(vols["partition_unit"].fill_null(-1).to_numpy().astype(np.int32)[vcode]),
    })
    _write_parquet(layout.plan, table, use_dictionary=["volume", "split"])
    _write_parquet(layout.plan_copies, plan.fallbacks.sort("row", "rank").to_arrow())
    label_details, scan_series = write_rejects(layout, plan)
    vols = plan.vols.join(label_details.rename({"row": "label_row"}), on="label_row", how="left")
    volumes = _volume_table(vols, plan.rejects, scan_series, config)
    _write_parquet(layout.plan_volumes, volumes.to_arrow().cast(VOLUME_SCHEMA))
    return volumes


def sample_key_expr(volume: str = "volume", slice_index: str = "slice_index") -> pl.Expr:
    """The sample key of every slice, over two columns: `<volume>-<slice index, 5 digits>`, the
    pseudonymous volume id and the slice's index (no dots: both webdataset and DALI cut keys at the
    first dot)."""
    return pl.format("{}-{}", pl.col(volume).cast(pl.String), pl.col(slice_index).cast(pl.String).str.zfill(5))


def _volume_table(vols: pl.DataFrame, rejects: pl.DataFrame, scan_series: pl.DataFrame,
                  config: PlanConfig) -> pl.DataFrame:
    """plan_volumes: every series seen (scan-rejected ones included), kept or not, with why."""
    scan_only = (scan_series.filter(pl.col("series").is_not_null()).group_by("series")
                 .agg(scan_files=pl.len(), codes=pl.col("reject_code").unique().sort().str.join(", ")))
    copies = rejects.filter(pl.col("code") == "duplicate-sop").group_by("series").agg(copies=pl.len())
    vols = vols.join(copies, on="series", how="left")
    reason = (pl.when(pl.col("mixed")).then(pl.lit("the series holds slices of several patients"))
              .when(pl.col("small"))
              .then(pl.format("{} slices, fewer than --min-slices {}", "slices", pl.lit(config.min_slices)))
              .when(pl.col("excluded")).then(pl.format("class {} is excluded (--exclude-class)", "label"))
              .when(~pl.col("planned")).then(pl.lit("not picked for the subset (--subset-size)")))
    known = vols.select(
        "volume", patient="patient_id", label="label", label_rule="label_rule", label_keyword="label_keyword",
        label_field="label_field", split=pl.when("planned").then(pl.col("split")),
        files=pl.col("slices") + pl.col("copies").fill_null(0),
        slices_planned=pl.when("planned").then(pl.col("slices")).otherwise(0), kept="planned", reason=reason,
        order_by="order_by", duplicate_positions="duplicate_positions", partition_unit="partition_unit",
        subset_rank="subset_rank")
    # Files of a series rejected at scan count towards its files; series with no candidate at all
    # appear with the scan's codes as the reason.
    known = (known.join(scan_only.select(volume="series", scan_files="scan_files"), on="volume", how="left")
             .with_columns(files=pl.col("files") + pl.col("scan_files").fill_null(0)).drop("scan_files"))
    unseen = scan_only.join(known.select(series="volume"), on="series", how="anti").select(
        volume="series", files="scan_files", slices_planned=pl.lit(0), kept=pl.lit(False),
        reason=pl.format("every file of the series was rejected at scan ({})", "codes"))
    return pl.concat([known, unseen], how="diagonal_relaxed").sort("volume")


def index_fingerprint(path: Path) -> dict:
    """What identifies the index a plan was made from (plan.parquet refers to its rows by number)."""
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "rows": _index_metadata(path).num_rows}


@dataclass
class PlanSummary:
    found: int
    planned: int
    rejected_by_code: dict[str, int]
    by_split: dict[str, dict[str, int]]        # split -> {slices, volumes, patients}
    by_split_label: dict[str, dict[str, int]]  # split -> label -> slices
    classes: list[str]
    subset_targets: dict | None
    volumes_seen: int
    volumes_planned: int
    warnings: list[str]                        # splits that are empty or have too few patients; burned-in kept
    burned_in_planned: int = 0                 # planned slices flagged as likely to show text or a face

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(plan: Plan, volumes: pl.DataFrame, scan_codes: pl.Series, config: PlanConfig) -> PlanSummary:
    planned = plan.vols.filter("planned")
    by_split = {s: {"slices": 0, "volumes": 0, "patients": 0} for s in SPLITS}
    for row in planned.group_by("split").agg(slices=pl.col("slices").sum(), volumes=pl.len(),
                                             patients=pl.col("patient").n_unique()).iter_rows(named=True):
        by_split[row["split"]] = {k: int(row[k]) for k in ("slices", "volumes", "patients")}
    by_split_label: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for s, lab, n in planned.group_by("split", "label").agg(pl.col("slices").sum()).sort("split", "label").rows():
        by_split_label[s][lab] = int(n)
    codes = pl.concat([scan_codes.alias("code"), plan.rejects["code"]])
    rejected = {c: int(n) for c, n in codes.value_counts().sort("code").rows()}
    return PlanSummary(found=plan.rows, planned=len(plan.slices), rejected_by_code=rejected, by_split=by_split,
                       by_split_label=by_split_label, classes=plan.classes, subset_targets=plan.targets,
                       volumes_seen=len(volumes), volumes_planned=len(planned),
                       warnings=split_warnings(config.fractions, by_split)
                       + class_warnings(config.fractions, by_split_label)
                       + ([burned_in_warning(plan.burned_in_planned)] if config.allow_burned_in else []),
                       burned_in_planned=plan.burned_in_planned)


def scan_inputs(layout: Layout) -> dict:
    """What of scan's inputs a dataset may name (passed on to its manifest): the label rules'
    file name and sha256 and the secret's fingerprint (datakit.secret), never the DICOM root or
    the secret. None when the index was not made by `tlx scan`."""
    if not layout.scan_record.exists():
        return {"label_rules": None, "secret_fingerprint": None}
    record = read_json(layout.scan_record, "work/scan.json")
    return {"label_rules": record.get("label_rules"), "secret_fingerprint": record.get("secret_fingerprint")}


def make_plan(dataset_dir, config: PlanConfig = PlanConfig(), resume: str = "auto",
              progress: Progress = silent) -> PlanSummary:
    """Run the plan stage on `dataset_dir/work/index.parquet` (see the module docstring).

    `resume` (datakit.resume): `auto` plans again over an earlier plan (planning is deterministic:
    the same options give the same files), except under output of `tlx write` made from a plan of
    other options, which re-planning would orphan; `never` refuses a folder that holds a plan.
    `progress` gets Tick("plan", steps done, 3): decided, written, summarised."""
    config.check()
    check_resume_mode(resume)
    layout = Layout(dataset_dir)
    refuse_foreign(layout.root)
    require_index(layout.index)              # before the lock, which would create a missing folder
    with output_lock(layout.root, "tlx plan"):
        return _make_plan(layout, config, resume, progress)


def _make_plan(layout: Layout, config: PlanConfig, resume: str, progress: Progress) -> PlanSummary:
    """make_plan() once the folder is locked."""
    _check_earlier_plan(layout, config, resume)
    fingerprint = index_fingerprint(layout.index) if layout.index.exists() else None
    progress(Tick("plan", 0, 3, "steps"))
    plan = decide(layout.index, config)
    progress(Tick("plan", 1, 3, "steps"))
    # plan.json marks a complete plan (write trusts it and hashes it): it goes first, so a plan killed
    # while its parquet files are replaced never pairs the new files with the old plan.json.
    layout.plan_json.unlink(missing_ok=True)
    volumes = write_plan(layout, plan, config)
    progress(Tick("plan", 2, 3, "steps"))
    scan_codes = pl.read_parquet(layout.plan_rejects, columns=["stage", "code"]).filter(
        pl.col("stage") == "scan")["code"]
    summary = summarise(plan, volumes, scan_codes, config)
    if summary.found != summary.planned + sum(summary.rejected_by_code.values()):  # the invariant, checked
        raise AssertionError(f"plan lost files: {summary.found} found != {summary.planned} planned + "
                             f"{sum(summary.rejected_by_code.values())} rejected")
    write_json_atomic({"plan_version": PLAN_VERSION, "config": config.to_dict(), "index": fingerprint,
                       "scan": scan_inputs(layout), **summary.to_dict()}, layout.plan_json, sort_keys=True)
    progress(Tick("plan", 3, 3, "steps"))
    return summary


def _check_earlier_plan(layout: Layout, config: PlanConfig, resume: str) -> None:
    """What --resume allows of a plan already in the folder (see make_plan)."""
    if not layout.plan_json.exists():
        return
    if resume == "never":
        raise DatakitError(f"{layout.root} already holds a plan (work/plan.json) and --resume is never; use "
                           "--resume auto to plan again, or a new folder (with a copy of work/index.parquet and "
                           "work/scan.json)")
    differ = differing_options(read_json(layout.plan_json, "work/plan.json").get("config") or {}, config.to_dict())
    written = layout.final_outputs() + ([layout.staging] if layout.staging.exists() else [])
    if written and differ:
        raise DatakitError(f"{layout.root} holds output of `tlx write` ({written[0].name}) made from a plan of other "
                           f"options ({', '.join(differ)} differ): planning again would orphan it; use a new folder "
                           "(with a copy of work/index.parquet and work/scan.json)")
