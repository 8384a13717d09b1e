"""The report's figures: matplotlib with the Agg backend (no display), one PNG each.

Each function takes plain numbers and a path, so it can be called (and tested) alone.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402

from analysis.curves import x_label  # noqa: E402
from tlxcore.atomic import atomic_write  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    try:
        with atomic_write(path) as f:  # a reader never sees half a PNG
            fig.savefig(f, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return path


def _annotated_heatmap(ax, values: np.ndarray, labels: list[str], text: list[list[str]], cmap, vmin, vmax, cbar_label):
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("column: init b")
    ax.set_ylabel("row: init a")
    for i in range(len(labels)):
        for j in range(len(labels)):
            r, g, b, _ = image.cmap(image.norm(values[i, j])) if np.isfinite(values[i, j]) else (1, 1, 1, 1)
            color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"  # readable on any cell
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8, color=color)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=cbar_label)


def comparison_heatmap(inits: list[str], delta_pct: np.ndarray, p: np.ndarray, title: str, path: Path,
                       alpha: float = 0.05) -> Path:
    """Left: relative difference (row vs column, %); right: Welch p, * where p < alpha."""
    k = len(inits)
    fig, axes = plt.subplots(1, 2, figsize=(4.2 + 2.2 * k, 2.2 + 0.7 * k))
    finite = np.abs(delta_pct[np.isfinite(delta_pct)])
    lim = max(float(finite.max()) if finite.size else 1.0, 1e-9)
    delta_text = [["" if i == j or not math.isfinite(delta_pct[i, j]) else f"{delta_pct[i, j]:+.2f}%"
                   for j in range(k)] for i in range(k)]
    _annotated_heatmap(axes[0], delta_pct, inits, delta_text, "RdBu", -lim, lim, "100 (a / b - 1) %")
    axes[0].set_title("relative difference, row vs column")
    with np.errstate(divide="ignore"):
        logp = -np.log10(np.clip(p, 1e-12, 1))
    def p_label(i: int, j: int) -> str:
        if i == j:
            return ""
        return "n/a" if not math.isfinite(p[i, j]) else f"{p[i, j]:.3g}{'*' if p[i, j] < alpha else ''}"

    p_text = [[p_label(i, j) for j in range(k)] for i in range(k)]
    _annotated_heatmap(axes[1], logp, inits, p_text, "viridis", 0, max(3.0, float(np.nanmax(logp, initial=0))),
                       "-log10 p")
    axes[1].set_title(f"Welch two-sided p (* p < {alpha:g})")
    fig.suptitle(title)
    return _save(fig, path)


def convergence_plot(series: dict[str, list[tuple[list, list]]], val_series: dict[str, list[tuple[list, list]]],
                     converged: dict[str, list[int]], title: str, val_label: str | None, path: Path) -> Path:
    """Training loss (left) and validation metric (right) per init: thin lines per seed, thick mean."""
    panels = 2 if val_label else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, data, ylabel in ((axes[0, 0], series, "training loss"),
                             *(((axes[0, 1], val_series, val_label),) if val_label else ())):
        for c, (init, curves) in enumerate(sorted(data.items())):
            color = colors[c % len(colors)]
            for epochs, values in curves:
                ax.plot(epochs, values, color=color, alpha=0.3, linewidth=0.8)
            mean_e, mean_v = _mean_curve(curves)
            ax.plot(mean_e, mean_v, color=color, linewidth=2, label=f"{init} (n={len(curves)})")
            if ax is not axes[0, 0]:
                for epoch in converged.get(init, []):
                    ax.axvline(epoch, color=color, linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if val_label:
        axes[0, 1].set_title("dotted: time to convergence per seed", fontsize=9)
    fig.suptitle(title)
    return _save(fig, path)


def pretraining_plot(loss: dict[str, tuple[list, list]], knn: dict[str, tuple[list, list]], path: Path) -> Path:
    """Pretraining runs against the optimizer step: training loss per logged step (left) and the kNN probe's val
    accuracy at each epoch's end (right, when any run logged it), one colour per run."""
    panels = 2 if knn else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    runs = sorted(set(loss) | set(knn))
    for ax, data, ylabel, style in ((axes[0, 0], loss, "training loss", "-"),
                                    *(((axes[0, 1], knn, "val kNN accuracy", "o-"),) if knn else ())):
        for run, (steps, values) in sorted(data.items()):
            ax.plot(steps, values, style, color=colors[runs.index(run) % len(colors)], linewidth=1, markersize=3,
                    label=run)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if data:
            ax.legend(fontsize=8)
    fig.suptitle("pretraining")
    return _save(fig, path)


def _mean_curve(curves: list[tuple[list, list]]) -> tuple[list, list]:
    """Mean over seeds at each epoch that every seed reached."""
    common = set(curves[0][0])
    for epochs, _ in curves[1:]:
        common &= set(epochs)
    xs = sorted(common)
    lookup = [dict(zip(e, v)) for e, v in curves]
    return xs, [float(np.mean([d[x] for d in lookup])) for x in xs]


def reuse_plot(layers: list[str], inits: list[str], values: dict[str, dict[str, tuple[float, float]]],
               kernels: list[str], title: str, path: Path) -> Path:
    """Bars per layer and init, one panel per CKA kernel; error bars = std over seeds (the report's ddof)."""
    fig, axes = plt.subplots(1, len(kernels), figsize=(5 * len(kernels), 3.8), squeeze=False)
    width = 0.8 / max(len(inits), 1)
    x = np.arange(len(layers))
    for ax, kernel in zip(axes[0], kernels):
        for i, init in enumerate(inits):
            means = [values[kernel].get((init, layer), (np.nan, 0))[0] for layer in layers]
            stds = [values[kernel].get((init, layer), (np.nan, 0))[1] for layer in layers]
            ax.bar(x + (i - (len(inits) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=init)
        ax.set_xticks(x, [layer.replace(".weight", "") for layer in layers])
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"CKA ({kernel}), before vs after fine-tuning")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def overlap_plot(labels: list[str], observed: list[float], expected: list[float], title: str, path: Path) -> Path:
    """Observed vs expected fraction of test units per right/wrong pattern (log scale)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.2))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, np.asarray(observed) * 100, 0.4, label="observed")
    ax.bar(x + 0.2, np.asarray(expected) * 100, 0.4, label="expected if errors were independent")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("% of test units (log scale)")
    ax.set_xlabel("right only under")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def similarity_heatmap(inits: list[str], observed: np.ndarray, expected: np.ndarray, title: str, path: Path) -> Path:
    """P(same right/wrong) for each pair of inits (diagonal: between seeds of one init)."""
    k = len(inits)
    fig, ax = plt.subplots(figsize=(2.5 + 1.3 * k, 2 + 0.9 * k))
    text = [["n/a" if not math.isfinite(observed[i, j]) else f"{observed[i, j]:.3f}\n(exp. {expected[i, j]:.3f})"
             for j in range(k)] for i in range(k)]
    lo = float(np.nanmin(np.r_[observed.ravel(), expected.ravel(), 1.0]))
    _annotated_heatmap(ax, observed, inits, text, "magma", lo, 1.0, "P(both right or both wrong)")
    ax.set_title(title)
    return _save(fig, path)


def slice_utility_plot(rows: list[dict], path: Path) -> Path:
    """Mean utility of a slice against its distance to a known slice, with the 10-90th percentile band (Fig. SF4)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    d = [r["distance"] for r in rows]
    ax.fill_between(d, [r["q10"] for r in rows], [r["q90"] for r in rows], alpha=0.25, label="10th-90th percentile")
    ax.plot(d, [r["mean"] for r in rows], linewidth=2, label="mean")
    ax.plot(d, [r["median"] for r in rows], linestyle="--", linewidth=1, label="median")
    ax.set_xlabel("slice distance |i - j|")
    ax.set_ylabel("utility 1 - r_ij")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("slice utility against distance")
    return _save(fig, path)


def activation_plot(layers: list[str], cells: list, title: str, path: Path) -> Path:
    """Mean CCA, SVCCA and linear CKA per layer, one line per comparison (error bars: std over pairs)."""
    measures = (("mean_cca", "mean CCA"), ("svcca", "SVCCA"), ("cka", "linear CKA"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), squeeze=False)
    lines: dict[str, dict] = {}
    for c in cells:
        lines.setdefault(f"{c.comparison}: {c.label}", {})[c.layer] = c.stats
    x = np.arange(len(layers))
    for ax, (key, name) in zip(axes[0], measures):
        for label, by_layer in lines.items():
            mean = [by_layer[layer][key].mean if layer in by_layer else np.nan for layer in layers]
            std = [by_layer[layer][key].std if layer in by_layer else np.nan for layer in layers]
            style = ":" if label.startswith("random") else "-"
            ax.errorbar(x, mean, yerr=np.nan_to_num(std), linestyle=style, marker="o", capsize=3, label=label)
        ax.set_xticks(x, layers)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def pixel_map_plot(views: list, images: dict, names: list[str], title: str, path: Path) -> Path:
    """Per slice: the CT slice (or the truth) in gray, green where only names[0] is right, magenta where only
    names[1] is, the true foreground outlined."""
    fig, axes = plt.subplots(1, len(views), figsize=(3.2 * len(views), 3.6), squeeze=False)
    for ax, view in zip(axes[0], views):
        background = images.get(view.key)
        if background is None:
            background = view.target.astype(float)
        ax.imshow(background, cmap="gray")
        overlay = np.zeros((*view.target.shape, 4))
        overlay[view.only[0]] = (0.1, 0.8, 0.2, 0.8)
        overlay[view.only[1]] = (0.9, 0.1, 0.9, 0.8)
        ax.imshow(overlay)
        if (view.target > 0).any() and not (view.target > 0).all():
            ax.contour(view.target > 0, levels=[0.5], colors="yellow", linewidths=0.6)
        ax.set_title(f"{view.key}\ngreen: {names[0]}, magenta: {names[1]}", fontsize=7)
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def curve_plot(rows: list[dict], curve: str, title: str, path: Path) -> Path:
    """A metric against shots, fraction or pretraining size (log x): a line per `line` through the means, the
    band mean ± std over its seeds and folds."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for line in sorted({r["line"] for r in rows}):
        points = sorted((r["x"], r["mean"], r["lo"], r["hi"]) for r in rows if r["line"] == line)
        x, mean, lo, hi = (np.array(v, dtype=float) for v in zip(*points))
        (drawn,) = ax.plot(x, mean, marker="o", label=line)
        ax.fill_between(x, lo, hi, alpha=0.2, color=drawn.get_color())
    ax.set_xscale("log")
    ax.set_xlabel(x_label(curve))
    ax.set_ylabel(rows[0]["metric"] if rows else "")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)
