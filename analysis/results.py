"""Result tables and pairwise comparisons (paper ST1-ST3, SF1-SF3), from runs or published summaries.

    >>> rows = results_from_runs(runs, ddof=0)        # one row per task/setting/fraction/metric/init
    >>> rows += read_summary_csv("published.csv")     # task, metric, init, mean, std, n, ddof[, setting, fraction]
    >>> comps = compare(rows)                         # every ordered pair of inits: delta %, Welch t, df, p
    >>> results_frame(rows).write_csv("results.csv")

A pair is tested from the raw per-seed values when both sides have them, else from
(mean, std, n); both give the same Welch test for the same data.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

from analysis.errors import AnalysisError
from analysis.runs import GroupKey, Run
from analysis.stats import DDOFS, Summary, Welch, describe, relative_difference_pct, welch, welch_from_summary

RESULT_COLUMNS = ("task", "setting", "fraction", "metric", "init", "n", "mean", "std", "ddof", "shots")
COMPARISON_COLUMNS = ("task", "setting", "fraction", "metric", "init_a", "init_b", "delta_pct", "t", "df", "p", "shots")
SUMMARY_COLUMNS = ("task", "metric", "init", "mean", "std", "n", "ddof")
SUMMARY_DEFAULTS = {"setting": "finetune", "fraction": 1.0}


@dataclass(frozen=True)
class ResultRow:
    group: GroupKey
    metric: str
    init: str
    summary: Summary
    values: tuple[float, ...] | None = None  # per-seed values when they are known
    source: str = "runs"                     # runs | summary | scale-adjusted

    def record(self) -> dict:
        s = self.summary
        return {"task": self.group.task, "setting": self.group.setting, "fraction": self.group.fraction,
                "metric": self.metric, "init": self.init, "n": s.n, "mean": s.mean, "std": s.std, "ddof": s.ddof,
                "shots": self.group.shots or None}


@dataclass(frozen=True)
class Comparison:
    group: GroupKey
    metric: str
    init_a: str
    init_b: str
    delta_pct: float
    test: Welch

    def record(self) -> dict:
        return {"task": self.group.task, "setting": self.group.setting, "fraction": self.group.fraction,
                "metric": self.metric, "init_a": self.init_a, "init_b": self.init_b, "delta_pct": self.delta_pct,
                "t": self.test.t, "df": self.test.df, "p": self.test.p, "shots": self.group.shots or None}


def results_from_runs(runs: list[Run], ddof: int = 0) -> list[ResultRow]:
    """Group complete runs (with result.json) by task, setting, fraction, init; one row per metric."""
    values: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        if run.metrics is None:
            continue
        for metric, value in run.metrics.items():
            values[(run.group, metric, run.init)].append(value)
    return [ResultRow(group, metric, init, describe(vals, ddof), tuple(vals))
            for (group, metric, init), vals in sorted(values.items())]


def _field(row: dict, name: str, line: int, path: Path, kind):
    raw = (row.get(name) or "").strip()
    try:
        value = kind(raw)
    except ValueError:
        raise AnalysisError(f"{path}:{line}: {name} {raw!r} is not a valid {kind.__name__}") from None
    if kind is float and not math.isfinite(value):
        raise AnalysisError(f"{path}:{line}: {name} must be a finite number, got {raw!r}")
    return value


def _text(row: dict, name: str, line: int, path: Path) -> str:
    value = (row.get(name) or "").strip()
    if not value:
        raise AnalysisError(f"{path}:{line}: {name} is empty")
    return value


def read_summary_csv(path: Path | str, ddof: int = 0) -> list[ResultRow]:
    """Published results: columns task, metric, init, mean, std, n, ddof (optional: setting, fraction).

    Each std is converted from the row's ddof to the report's `ddof`.
    """
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"summary table {path} does not exist")
    try:  # utf-8-sig: a spreadsheet's "CSV UTF-8" export starts with a byte order mark
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnalysisError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as CSV UTF-8") \
            from None
    except OSError as exc:
        raise AnalysisError(f"summary table {path} cannot be read ({exc})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        records = list(reader)
    except csv.Error as exc:
        raise AnalysisError(f"{path} is not a readable CSV table ({exc})") from None
    missing = [c for c in SUMMARY_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise AnalysisError(f"{path} lacks column(s) {missing}; needed: {list(SUMMARY_COLUMNS)} "
                            f"(optional: setting, fraction)")
    rows, seen = [], set()
    for line, row in enumerate(records, start=2):
        row_ddof = _field(row, "ddof", line, path, int)
        if row_ddof not in DDOFS:
            raise AnalysisError(f"{path}:{line}: ddof {row_ddof} is not allowed; use one of {DDOFS}")
        n = _field(row, "n", line, path, int)
        if n < 1:
            raise AnalysisError(f"{path}:{line}: n must be at least 1, got {n}")
        std = _field(row, "std", line, path, float)
        if std < 0:
            raise AnalysisError(f"{path}:{line}: std must be >= 0, got {std}")
        fraction = _field(row, "fraction", line, path, float) if (row.get("fraction") or "").strip() \
            else SUMMARY_DEFAULTS["fraction"]
        group = GroupKey(_text(row, "task", line, path),
                         (row.get("setting") or "").strip() or SUMMARY_DEFAULTS["setting"], fraction)
        ident = (group, _text(row, "metric", line, path), _text(row, "init", line, path))
        if ident in seen:
            raise AnalysisError(f"{path}:{line}: a second row for {ident[0].label()} {ident[1]} {ident[2]}")
        seen.add(ident)
        summary = Summary(_field(row, "mean", line, path, float), std, n, row_ddof).with_ddof(ddof)
        rows.append(ResultRow(group, ident[1], ident[2], summary, None, "summary"))
    if not rows:
        raise AnalysisError(f"{path} holds no rows")
    return rows


def merge(*tables: list[ResultRow]) -> list[ResultRow]:
    """Rows of several sources; the same task/setting/fraction/metric/init twice is an error."""
    out, seen = [], {}
    for rows in tables:
        for row in rows:
            ident = (row.group, row.metric, row.init)
            if ident in seen:
                raise AnalysisError(f"{row.group.label()} {row.metric} {row.init!r} comes from both {seen[ident]} "
                                    f"and {row.source}; rename one init (e.g. '{row.init} (published)')")
            seen[ident] = row.source
            out.append(row)
    return out


def by_table(rows: list[ResultRow]) -> dict[tuple[GroupKey, str], dict[str, ResultRow]]:
    """(group, metric) -> init -> row."""
    out: dict[tuple[GroupKey, str], dict[str, ResultRow]] = defaultdict(dict)
    for row in rows:
        out[(row.group, row.metric)][row.init] = row
    return dict(sorted(out.items()))


def test_pair(a: ResultRow, b: ResultRow) -> Welch:
    if a.values is not None and b.values is not None:
        return welch(a.values, b.values)
    return welch_from_summary(a.summary, b.summary)


def compare(rows: list[ResultRow]) -> list[Comparison]:
    """Every ordered pair of inits within each task/setting/fraction/metric."""
    out = []
    for (group, metric), inits in by_table(rows).items():
        for a, b in permutations(sorted(inits), 2):
            ra, rb = inits[a], inits[b]
            out.append(Comparison(group, metric, a, b, relative_difference_pct(ra.summary.mean, rb.summary.mean),
                                  test_pair(ra, rb)))
    return out


def results_frame(rows: list[ResultRow]):
    import polars as pl

    return pl.DataFrame([r.record() for r in rows], schema=_schema(RESULT_COLUMNS), orient="row")


def comparisons_frame(comps: list[Comparison]):
    import polars as pl

    return pl.DataFrame([c.record() for c in comps], schema=_schema(COMPARISON_COLUMNS), orient="row")


def _schema(columns):
    import polars as pl

    kinds = {"task": pl.String, "setting": pl.String, "metric": pl.String, "init": pl.String, "init_a": pl.String,
             "init_b": pl.String, "n": pl.Int64, "ddof": pl.Int64, "shots": pl.Int64}
    return {c: kinds.get(c, pl.Float64) for c in columns}
