"""`tlx export`: a checkpoint's encoder as a plain state dict (library: trainer.export)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command(epilog="""\b
Examples:
  tlx export runs/pretrain/ct/checkpoints/last.pt ct-resnet50.pth
  tlx export runs/radnet/ct/finetune/frac-1/seed-0/checkpoints/best.pt radnet.safetensors
\b
In plain torch:
  state = torch.load("ct-resnet50.pth", weights_only=True)
  torchvision.models.resnet50().load_state_dict(state, strict=False)   # only fc.* missing
""")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace OUT and OUT's .json if they exist.")
def export(checkpoint, out, force):
    """Write CHECKPOINT's encoder to OUT (.pth or .safetensors), torchvision-layout, with OUT.json beside it
    (model, image size, normalisation and window, source checkpoint and its sha256)."""
    from trainer.export import export_encoder

    for path in export_encoder(checkpoint, out, force=force):
        click.echo(f"wrote {path}")
