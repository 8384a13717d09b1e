"""A PNG grid of images with a caption under each: what `tlx show` draws for datasets and runs.

    from tlxcore.image_grid import save_grid
    save_grid([[(img, "key\\ntrain / head"), (img2, "...")], [...]], "grid.png")   # rows of (image, caption)

Images are float arrays in [0, 1], (H, W) drawn in grey or (H, W, 3) in colour; rows may be shorter
than the longest (the rest of the row stays blank). The file is written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tlxcore.atomic import atomic_write


def save_grid(rows: list[list[tuple[np.ndarray, str]]], out: str | os.PathLike, cell_inches: float = 1.9) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cell_inches * cols, (cell_inches + 0.2) * len(rows)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(row):
                image, caption = row[c]
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(caption, fontsize=6)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return out
