"""`tlx features`: activations of fine-tuning runs' encoders on a probe set (library: trainer.features)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command(epilog="""\b
Example:
  tlx features runs/lits/*/finetune/frac-1/seed-* --probe data/lits
  tlx features runs/radnet/scratch/finetune/frac-1/seed-0 --probe data/ --images 64 --repeats 2
  tlx analyze runs/ --out report/      # adds the activation similarity section
""")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--probe", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset whose images are the probe (e.g. the task's own dataset).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--images", type=click.IntRange(min=1), default=320, show_default=True,
              help="Probe images (a seeded sample of the split; 320 gives 20k positions at ResNet-50's 8x8 layer4).")
@click.option("--points", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="(image, row, column) positions sampled per layer and repeat (Juodelyte et al.: about 20k).")
@click.option("--channels", type=click.IntRange(min=1), default=64, show_default=True,
              help="Channels sampled per layer and repeat.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Independent draws of positions and channels.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the probe images, positions and channels (keep it equal across runs to compare them).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
def features(runs, probe, split, images, points, channels, repeats, seed, device, batch_size):
    """Save the activations of each RUN's initial, fine-tuned and a random encoder on a probe set.

    Writes RUN/features.npz (docs/run-format.md): conv1 and the four stages, sampled at
    the same positions and channels for every run with the same probe and --seed.
    `tlx analyze` then adds layer-wise CCA, SVCCA and CKA with their baselines.
    """
    import torch
    from rich.console import Console

    from tlxcore.progress import drawn
    from trainer.features import extract_features

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    console = Console()
    for run in runs:
        with drawn() as progress:
            path = extract_features(run, probe, split, images, points, channels, repeats, seed, device, batch_size,
                                    progress=progress)
        console.print(f"{run}: {path.name} ({path.stat().st_size / 1e6:.1f} MB)")
