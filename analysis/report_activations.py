"""The report's activation similarity section (Juodelyte et al.): which models of which runs are compared.

    >>> rows, panels = activation_panels(runs, notes, ddof=0)   # activation_similarity.csv rows, one panel per task

Per task (group), from each fine-tuning run's features.npz:
- `init ↔ fine-tuned`: each run's initial encoder against its fine-tuned one (how much
  fine-tuning changed each layer);
- `random ↔ random`: the random encoders of two different seeds (the floor: what
  unrelated networks share on this probe);
- `fine-tuned ↔ fine-tuned`: the fine-tuned encoders of two inits, matched by seed rank
  (the i-th seed of each), as the prediction overlap matches them.
A file that cannot be read, or sampled otherwise than the others (another probe_id), is
a note; the rest is computed.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from analysis.activations import MEASURES, Features, compare, load_features
from analysis.errors import AnalysisError
from analysis.report_compute import by_group
from analysis.runs import GroupKey, Run
from analysis.stats import Summary, describe

INIT_FINAL, RANDOM, FINAL_FINAL = "init ↔ fine-tuned", "random ↔ random", "fine-tuned ↔ fine-tuned"


@dataclass
class ActivationCell:
    """One table row: a comparison of a task at one layer, over its pairs of models."""

    comparison: str
    label: str                    # e.g. "radnet-1.28M" or "imagenet-1k ↔ radnet-1.28M"
    layer: str
    n: int
    stats: dict[str, Summary]     # measure -> mean/std over the pairs


@dataclass
class ActivationPanel:
    group: GroupKey
    layers: list[str]
    cells: list[ActivationCell] = field(default_factory=list)

    @property
    def figure(self) -> str:
        return f"figures/activations_{self.group.slug()}.png"


def _pairs(inits: dict[str, list[tuple[Run, Features]]]) -> list[tuple[str, str, tuple, tuple]]:
    """(comparison, label, (run a, features a, model a), (run b, ...)) of one group."""
    out = [(INIT_FINAL, init, (r, f, "init"), (r, f, "final")) for init, rs in inits.items() for r, f in rs]
    by_seed = {}
    for rs in inits.values():
        for r, f in rs:
            by_seed.setdefault(r.seed, (r, f))
    for (_, a), (_, b) in combinations(sorted(by_seed.items()), 2):
        out.append((RANDOM, "random", (*a, "random"), (*b, "random")))
    for x, y in combinations(sorted(inits), 2):
        for (ra, fa), (rb, fb) in zip(inits[x], inits[y]):
            out.append((FINAL_FINAL, f"{x} ↔ {y}", (ra, fa, "final"), (rb, fb, "final")))
    return out


def _group_rows(group: GroupKey, inits: dict[str, list[tuple[Run, Features]]], notes: list[str]) -> list[dict]:
    rows = []
    for comparison, label, (ra, fa, ma), (rb, fb, mb) in _pairs(inits):
        try:
            layers = compare(fa, ma, fb, mb)
        except AnalysisError as exc:  # a damaged file or another sampling: this pair is left out, and said so
            notes.append(f"{group.label()}: {comparison} {ra.rel} / {rb.rel}: {exc}")
            continue
        for layer in layers:
            rows.append({"task": group.task, "setting": group.setting, "fraction": group.fraction,
                         "comparison": comparison, "label": label, "run_a": ra.rel, "model_a": ma,
                         "run_b": rb.rel, "model_b": mb, **layer})
    return rows


def activation_panels(runs: list[Run], notes: list[str], ddof: int) -> tuple[list[dict], list[ActivationPanel]]:
    """activation_similarity.csv rows (one per pair of models and layer) and one panel per task."""
    with_features = [r for r in runs if not r.is_pretraining and r.features is not None]
    if not with_features:
        notes.append("no fine-tuning run has features.npz (run `tlx features RUN --probe DATA`)")
        return [], []
    all_rows, panels = [], []
    for group, inits in by_group(with_features).items():
        loaded: dict[str, list[tuple[Run, Features]]] = {}
        for init, group_runs in inits.items():
            for run in group_runs:
                try:
                    loaded.setdefault(init, []).append((run, load_features(run.features)))
                except AnalysisError as exc:
                    notes.append(f"{run.rel}: left out: {exc}")
        rows = _group_rows(group, loaded, notes)
        if rows:
            all_rows += rows
            panels.append(_panel(group, rows, ddof))
    return all_rows, panels


def _panel(group: GroupKey, rows: list[dict], ddof: int) -> ActivationPanel:
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        cells[(r["comparison"], r["label"], r["layer"])].append(r)
    order = {INIT_FINAL: 0, FINAL_FINAL: 1, RANDOM: 2}
    panel = ActivationPanel(group, layers)
    for (comparison, label, layer), cell in sorted(cells.items(), key=lambda kv: (order[kv[0][0]], kv[0][1],
                                                                                 layers.index(kv[0][2]))):
        stats = {m: describe([r[m] for r in cell], ddof) for m in MEASURES}
        panel.cells.append(ActivationCell(comparison, label, layer, len(cell), stats))
    return panel
