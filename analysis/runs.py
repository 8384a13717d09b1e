"""Find and read run directories (docs/run-format.md): every config.json below a folder is a run.

    >>> runs, problems = find_runs("runs/")
    >>> runs[0].task, runs[0].init, runs[0].seed, runs[0].metrics    # metrics: result.json, or None
    >>> runs[0].curve                                                 # metrics.jsonl rows, by epoch

Nothing here raises for one bad run in a big tree: a run that cannot be used is
left out and its reason goes into `problems`, which every report prints.

Both shapes of config.json that trainers have written are read: the flat one (every
flag at the top level beside the run-contract keys) and the older finetune one that
nests its flags under `args` (lifted to the top level; a top-level key wins, as
`init` there is the init's name and under `args` its checkpoint path). The step
counter of metrics.jsonl rows is `step`; older finetune runs wrote `steps`, read as `step`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from analysis.errors import AnalysisError

REQUIRED = {"task": str, "init": str, "setting": str, "fraction": (int, float), "seed": int}
PRETRAIN = "pretrain"
HEADLINE_METRICS = ("accuracy", "mean_auc", "dice_mean")  # the number a task is judged by, in this order


@dataclass(frozen=True, order=True)
class GroupKey:
    """What a result table row is about: a task under one setting and data fraction."""

    task: str
    setting: str
    fraction: float

    def label(self) -> str:
        return f"{self.task} / {self.setting} / {fraction_label(self.fraction)}"

    def slug(self) -> str:
        return slug(f"{self.task}_{self.setting}_{fraction_label(self.fraction)}")


def fraction_label(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def slug(text: str) -> str:
    """A file-name-safe version of `text`."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text).strip("-") or "x"


@dataclass
class Run:
    path: Path
    rel: str
    config: dict
    metrics: dict[str, float] | None = None  # result.json "metrics" (None: not complete); null values left out
    undefined: list[str] = field(default_factory=list)  # metrics result.json gives as null (NaN: undefined)
    curve: list[dict] = field(default_factory=list)  # metrics.jsonl rows
    predictions: Path | None = None
    first_layers: Path | None = None
    features: Path | None = None        # features.npz (`tlx features`): activations on a probe set
    masks: Path | None = None           # masks.npz (segmentation test runs with --save-masks)
    declared_metric: str | None = None  # the task's own headline metric (result.json/config.json "metric")

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def init(self) -> str:
        return self.config["init"]

    @property
    def setting(self) -> str:
        return self.config["setting"]

    @property
    def fraction(self) -> float:
        return float(self.config["fraction"])

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def group(self) -> GroupKey:
        return GroupKey(self.task, self.setting, self.fraction)

    @property
    def is_pretraining(self) -> bool:
        return self.setting == PRETRAIN


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def flat_config(config: dict) -> dict:
    """config.json in the one flat shape: an `args` object (older finetune runs) lifted to the top level,
    the keys already at the top level winning."""
    args = config.get("args")
    if not isinstance(args, dict):
        return config
    return {**args, **{k: v for k, v in config.items() if k != "args"}}


def curve_row(row: dict) -> dict:
    """A metrics.jsonl row with its step counter named `step` (older finetune runs wrote `steps`)."""
    if "steps" in row and "step" not in row:
        row = {("step" if k == "steps" else k): v for k, v in row.items()}
    return row


def _read_curve(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"metrics.jsonl line {n} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "epoch" not in row:
            raise ValueError(f"metrics.jsonl line {n} has no 'epoch'")
        if not isinstance(row["epoch"], int) or isinstance(row["epoch"], bool):
            raise ValueError(f"metrics.jsonl line {n}: epoch {row['epoch']!r} is not an integer")
        rows.append(curve_row(row))
    return sorted(rows, key=lambda r: r["epoch"])


def _check_config(config: dict) -> str | None:
    for key, kind in REQUIRED.items():
        if key not in config:
            return f"config.json lacks {key!r} (needs {sorted(REQUIRED)})"
        if not isinstance(config[key], kind) or isinstance(config[key], bool):
            return f"config.json {key!r} is {config[key]!r}, expected {kind if isinstance(kind, type) else 'a number'}"
    return None


def load_run(path: Path, root: Path) -> Run:
    """One run directory; raises ValueError with the reason if it cannot be used."""
    try:
        config = flat_config(_read_json(path / "config.json"))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"config.json is not a JSON object ({exc})") from None
    if (reason := _check_config(config)) is not None:
        raise ValueError(reason)
    run = Run(path, path.relative_to(root).as_posix() or ".", config)
    if isinstance(config.get("metric"), str):
        run.declared_metric = config["metric"]
    if (path / "metrics.jsonl").is_file():
        run.curve = _read_curve(path / "metrics.jsonl")
    if (path / "result.json").is_file():
        try:
            result = _read_json(path / "result.json")
        except (json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"result.json is not a JSON object ({exc})") from None
        metrics = result.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            raise ValueError("result.json has no 'metrics' object")
        # null is the trainer's NaN: a metric undefined on this test set (e.g. a class it lacks)
        run.undefined = sorted(k for k, v in metrics.items() if v is None)
        bad = {k: v for k, v in metrics.items()
               if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v))}
        if bad:
            raise ValueError(f"result.json metrics must be numbers (or null), got {bad}")
        run.metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        if isinstance(result.get("metric"), str):
            run.declared_metric = result["metric"]
    if (path / "predictions.parquet").is_file():
        run.predictions = path / "predictions.parquet"
    if (path / "first_layers.npz").is_file():
        run.first_layers = path / "first_layers.npz"
    for name in ("features", "masks"):
        if (path / f"{name}.npz").is_file():
            setattr(run, name, path / f"{name}.npz")
    return run


def find_runs(root: Path | str) -> tuple[list[Run], list[str]]:
    """Every run below `root` (sorted by path), and one line per run that had to be left out."""
    root = Path(root)
    if not root.is_dir():
        raise AnalysisError(f"runs folder {root} does not exist")
    runs: list[Run] = []
    problems: list[str] = []
    seen: dict[tuple, str] = {}
    for config in sorted(root.rglob("config.json")):
        rel = config.parent.relative_to(root).as_posix() or "."
        try:
            run = load_run(config.parent, root)
        except (OSError, ValueError) as exc:
            problems.append(f"{rel}: left out: {exc}")
            continue
        # Pretraining runs all say init "scratch": only their folders tell them apart.
        ident = (run.task, run.init, run.setting, run.fraction, run.seed) + ((rel,) if run.is_pretraining else ())
        if ident in seen:
            problems.append(f"{rel}: left out: same task/init/setting/fraction/seed as {seen[ident]}")
            continue
        seen[ident] = rel
        runs.append(run)
    return runs, problems


def headline_metric(names, declared: str | None = None) -> str:
    """The metric a task is judged by: the one its runs declare, else accuracy, mean_auc or dice_mean, else
    the first by name."""
    names = list(names)
    if declared in names:
        return declared
    for name in HEADLINE_METRICS:
        if name in names:
            return name
    return sorted(names)[0]
