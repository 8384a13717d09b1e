"""Find and read run directories (docs/run-format.md): every config.json below a folder is a run.

    >>> runs, problems = find_runs("runs/")
    >>> runs[0].task, runs[0].init, runs[0].seed, runs[0].metrics    # metrics: result.json, or None
    >>> runs[0].curve                                                 # metrics.jsonl rows, by epoch

Nothing here raises for one bad run in a big tree: a run that cannot be used is
left out and its reason goes into `problems`, which every report prints. A folder
with no usable run at all is an AnalysisError ("no runs found under X").

A table cell (task, setting, fraction or shots, init) averages the seeds and folds of one config: the K
folds of `--folds K` are K repeats (n = K per seed), each run's fold in `Run.fold`. Runs of a
cell whose configs differ in anything but the seed, the fold or the keys that do not
change a result (VARY_FREELY) are separated, not averaged: each config becomes its own
`variant`, which `run.init` shows ("scratch [lr=0.002]"), so it gets its own column in
every table and test, and `variant_notes(runs)` says which cells were split and why.

Both shapes of config.json that trainers have written are read: the flat one (every
flag at the top level beside the run-contract keys) and the older finetune one that
nests its flags under `args` (lifted to the top level; a top-level key wins, as
`init` there is the init's name and under `args` its checkpoint path). The step
counter of metrics.jsonl rows is `step`; older finetune runs wrote `steps`, read as `step`.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from analysis.errors import AnalysisError

REQUIRED = {"task": str, "init": str, "setting": str, "fraction": (int, float), "seed": int}
PRETRAIN = "pretrain"
HEADLINE_METRICS = ("accuracy", "mean_auc", "dice_mean")  # the number a task is judged by, in this order
# config.json keys in which the runs of one table cell may differ: the seed and fold a cell averages over, and
# what does not change a run's result (where and how it ran, how often it saved and logged: the keys the
# trainers let change when a run resumes, docs/run-format.md; `--max-steps` is not among them here, as it
# cuts a run short). Any other difference separates runs into variants.
VARY_FREELY = frozenset({"seed", "fold", "out", "run_dir", "device", "workers", "resume", "checkpoint_every",
                         "log_every", "world_size", "tool_version", "flags_set", "eval_batch_size", "save_masks"})


@dataclass(frozen=True, order=True)
class GroupKey:
    """What a result table row is about: a task under one setting and data fraction (or K shots per class)."""

    task: str
    setting: str
    fraction: float
    shots: int = 0        # --shots K; 0: a fraction run

    def subset_label(self) -> str:
        """"10%", or "5-shot"."""
        return f"{self.shots}-shot" if self.shots else fraction_label(self.fraction)

    def label(self) -> str:
        return f"{self.task} / {self.setting} / {self.subset_label()}"

    def slug(self) -> str:
        return slug(f"{self.task}_{self.setting}_{self.subset_label()}")


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
    steps: list[dict] = field(default_factory=list)  # steps.jsonl rows (one per --log-every steps), by step
    predictions: Path | None = None
    first_layers: Path | None = None
    features: Path | None = None        # features.npz (`tlx features`): activations on a probe set
    masks: Path | None = None           # masks.npz (segmentation test runs with --save-masks)
    declared_metric: str | None = None  # the task's own headline metric (result.json/config.json "metric")
    variant: str = ""  # how this run's config differs from others of its cell ("lr=0.002"); "" when none does

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def init(self) -> str:
        """The init's name, and the run's variant where its cell holds runs of several configs."""
        return self.config["init"] + (f" [{self.variant}]" if self.variant else "")

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
    def shots(self) -> int:
        """--shots K of the run; 0 for a fraction run."""
        return int(self.config.get("shots") or 0)

    @property
    def fold(self) -> str | None:
        """"1/5" for fold 1 of --folds 5; None without folds."""
        return f"{self.config['fold']}/{self.config['folds']}" if self.config.get("folds") else None

    @property
    def group(self) -> GroupKey:
        return GroupKey(self.task, self.setting, self.fraction, self.shots)

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


def _read_curve(path: Path, counter: str = "epoch") -> list[dict]:
    """metrics.jsonl (by epoch) or steps.jsonl (counter "step") rows, sorted by their counter."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name} line {n} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or counter not in row:
            raise ValueError(f"{path.name} line {n} has no {counter!r}")
        if not isinstance(row[counter], int) or isinstance(row[counter], bool):
            raise ValueError(f"{path.name} line {n}: {counter} {row[counter]!r} is not an integer")
        rows.append(curve_row(row))
    return sorted(rows, key=lambda r: r[counter])


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
    if run.is_pretraining and (path / "steps.jsonl").is_file():   # the report plots pretraining's steps only
        run.steps = _read_curve(path / "steps.jsonl", "step")
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
    """Every run below `root` (sorted by path), each config of a cell its own variant (separate_variants),
    and one line per run that had to be left out. AnalysisError when there is no usable run."""
    root = Path(root)
    if not root.is_dir():
        raise AnalysisError(f"runs folder {root} does not exist")
    loaded: list[Run] = []
    problems: list[str] = []
    configs = sorted(root.rglob("config.json"))
    for config in configs:
        try:
            loaded.append(load_run(config.parent, root))
        except (OSError, ValueError) as exc:
            problems.append(f"{config.parent.relative_to(root).as_posix() or '.'}: left out: {exc}")
    if not loaded:
        raise AnalysisError(f"no runs found under {root}: " + (
            f"{len(configs)} config.json, none usable ({'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''})"
            if configs else "no config.json below it (every run folder holds one: docs/run-format.md)"))
    separate_variants(loaded)
    runs: list[Run] = []
    seen: dict[tuple, str] = {}
    for run in loaded:
        # Pretraining runs all say init "scratch": only their folders tell them apart.
        ident = (run.task, run.init, run.setting, run.fraction, run.shots, run.seed, run.fold) + (
            (run.rel,) if run.is_pretraining else ())
        if ident in seen:
            problems.append(f"{run.rel}: left out: same task/init/setting/fraction/shots/seed/fold and config as "
                            f"{seen[ident]}")
            continue
        seen[ident] = run.rel
        runs.append(run)
    return runs, problems


def _value(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def separate_variants(runs: list[Run]) -> None:
    """Set `variant` on the fine-tuning runs of every table cell (task, setting, fraction, init) that holds
    runs of more than one config. Compared: the keys all runs of the cell hold (a key written by newer trainers
    only is not), but VARY_FREELY. The label names up to three keys that differ, or numbers the configs."""
    cells: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        if not run.is_pretraining:
            cells[(run.group, run.config["init"])].append(run)
    for members in cells.values():
        shared = sorted(set.intersection(*(set(r.config) for r in members)) - VARY_FREELY)
        configs: dict[str, list[Run]] = defaultdict(list)
        for run in members:
            configs[_value({k: run.config[k] for k in shared})].append(run)
        if len(configs) < 2:
            continue
        differ = [k for k in shared if len({_value(r.config[k]) for r in members}) > 1]
        labels = [variant_label(group[0].config, differ) for group in configs.values()]
        if len(set(labels)) < len(labels):   # shortened values that collide: number the configs instead
            labels = [f"config {i}" for i in range(1, len(labels) + 1)]
        for label, group in zip(labels, configs.values()):
            for run in group:
                run.variant = label


def variant_label(config: dict, keys: list[str], shown: int = 3, width: int = 20) -> str:
    """"lr=0.002, epochs=50": the first `shown` keys and their values, each value cut to `width` characters."""
    def short(v) -> str:
        text = v if isinstance(v, str) else _value(v)
        return text if len(text) <= width else text[:width - 1] + "…"
    more = f", +{len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(f"{k}={short(config[k])}" for k in keys[:shown]) + more


def variant_notes(runs: list[Run]) -> list[str]:
    """One line per table cell whose runs were separated into variants: its configs and what differs."""
    cells: dict[tuple, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.variant:
            cells[(run.group, run.config["init"])][run.init].append(run)
    notes = []
    for (group, init), variants in sorted(cells.items()):
        members = [r for group_runs in variants.values() for r in group_runs]
        shared = set.intersection(*(set(r.config) for r in members)) - VARY_FREELY
        differ = sorted(k for k in shared if len({_value(r.config[k]) for r in members}) > 1)
        notes.append(f"{group.label()} / {init}: {len(members)} runs of {len(variants)} configs that differ in "
                     f"{', '.join(differ)}; shown apart as "
                     + ", ".join(f"`{name}` ({len(rs)} run{'s' if len(rs) > 1 else ''})"
                                 for name, rs in sorted(variants.items())))
    return notes


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
