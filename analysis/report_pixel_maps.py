"""The report's pixel maps section (paper Fig. 7): per-pixel overlap of segmentation runs and overlays.

    >>> panels = pixel_map_panels(runs, notes)    # one per task with masks.npz from two or more inits

Inits are matched by seed rank (the i-th seed of each forms the i-th model set), as in
the per-slice prediction overlap; the pattern fractions are averaged over model sets.
The overlays show model set 0's first two inits (alphabetical) on the slices where they
disagree most, over the CT slice when the run's dataset (config.json `data`) is readable.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from analysis.errors import AnalysisError
from analysis.pixel_maps import Masks, PixelView, load_masks, pixel_overlap
from analysis.report_compute import by_group, pattern_label
from analysis.runs import GroupKey, Run


@dataclass
class PixelMapPanel:
    group: GroupKey
    names: list[str]
    model_sets: int
    units: int                                      # compared pixels per model set (mean)
    cells: list[tuple[str, float, float]]           # (right only under, observed, expected)
    rows: list[dict]                                # pixel_overlap.csv rows
    views: list[PixelView] = field(default_factory=list)
    images: dict[str, np.ndarray] = field(default_factory=dict)   # key -> the CT slice, where readable

    @property
    def overlap_figure(self) -> str:
        return f"figures/pixel_overlap_{self.group.slug()}.png"

    @property
    def figure(self) -> str | None:
        """The overlays (None: the two models agree on every compared pixel)."""
        return f"figures/pixelmap_{self.group.slug()}.png" if self.views else None

    @property
    def figures(self) -> list[str]:
        return [self.overlap_figure] + ([self.figure] if self.figure else [])


def pixel_map_panels(runs: list[Run], notes: list[str], slices: int = 4) -> list[PixelMapPanel]:
    with_masks = [r for r in runs if not r.is_pretraining and r.metrics is not None and r.masks is not None]
    if not with_masks:
        notes.append("no segmentation run has masks.npz (fine-tune with --save-masks)")
        return []
    panels = []
    for group, inits in by_group(with_masks).items():
        if len(inits) < 2:
            notes.append(f"{group.label()}: masks from one init only ({', '.join(inits)}); need two to compare")
            continue
        try:
            panels.append(_panel(group, inits, slices, notes))
        except AnalysisError as exc:
            notes.append(f"{group.label()}: {exc}")
    return panels


def _panel(group: GroupKey, inits: dict[str, list[Run]], slices: int, notes: list[str]) -> PixelMapPanel:
    names = sorted(inits)
    sets = min(len(inits[n]) for n in names)
    sums: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    units, views = [], []
    for t in range(sets):
        masks: list[Masks] = [load_masks(inits[n][t].masks) for n in names]
        cells, n_units, set_views = pixel_overlap(masks, slices)
        units.append(n_units)
        views = views or set_views
        for cell in cells:
            sums[cell.pattern][0] += cell.observed / sets
            sums[cell.pattern][1] += cell.expected / sets
    cells_out, rows = [], []
    for pattern, (o, e) in sorted(sums.items(), key=lambda kv: (-sum(kv[0]), kv[0])):
        label = pattern_label(names, pattern)
        cells_out.append((label, o, e))
        rows.append({"task": group.task, "setting": group.setting, "fraction": group.fraction, "right_under": label,
                     **{f"right_{n}": ok for n, ok in zip(names, pattern)}, "observed": o, "expected": e,
                     "model_sets": sets, "pixels": int(np.mean(units))})
    panel = PixelMapPanel(group, names, sets, int(np.mean(units)), cells_out, rows, views)
    panel.images = _images(inits[names[0]][0], [v.key for v in views], notes)
    return panel


def _images(run: Run, keys: list[str], notes: list[str]) -> dict[str, np.ndarray]:
    """The CT slices behind the overlays, from the run's dataset (datakit.read); none when it cannot be read."""
    from datakit.errors import DatakitError
    from datakit.read import SampleReader, open_dataset

    data = run.config.get("data")
    if not keys or not data:
        return {}
    try:
        dataset = open_dataset(data)
        ext, _ = dataset.member("image")
        table = dataset.sample_table("test", with_keys=True)
        where = {str(k): i for i, k in enumerate(table.keys)}
        reader = SampleReader(dataset)
        out = {}
        try:
            for key in (k for k in keys if k in where):
                image = np.asarray(reader.read(table, where[key], ext), np.float64)
                out[key] = image.reshape(-1, *image.shape[-2:])[0]   # the first channel
        finally:
            reader.close()
        return out
    except (DatakitError, OSError, ValueError, KeyError) as exc:
        notes.append(f"{run.group.label()}: overlays drawn without the CT slices ({data} cannot be read: {exc})")
        return {}
