"""`tlx weights`: what `--init` would load from a checkpoint, and Keras .h5 and BiT .npz conversion
(trainer.weight_layouts, trainer.keras_weights, trainer.bit_weights)."""
from __future__ import annotations

from pathlib import Path

import click


@click.group(epilog="""\b
Examples:
  tlx weights inspect moco_v2_800ep_pretrain.pth.tar
  tlx weights convert RadImageNet-ResNet50_notop.h5 radimagenet.pt
  tlx weights convert --from bit BiT-M-R50x1.npz bit-m-r50x1.pt
  python -m trainer.finetune --task lits --data lits/ --init radimagenet.pt
""")
def weights() -> None:
    """Pretrained checkpoints for `trainer.finetune --init`."""


@weights.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def inspect(path: Path) -> None:
    """Show the layout `--init PATH` detects: prefix stripped, parts dropped, model, without training."""
    from trainer.task_heads import read_init

    state, info = read_init(str(path))
    model = info.model_name or info.model_guess
    click.echo(f"layout    {info.layout}")
    click.echo(f"stripped  {info.stripped!r}")
    # BatchNorm's running statistics are buffers in the state, not parameters
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = sum(v.numel() for k, v in state.items() if not k.endswith(buffers))
    click.echo(f"encoder   {len(state)} tensors, {params:,} parameters")
    click.echo(f"model     {model or 'none of tlx models fits its keys and shapes (give --model; the load is strict)'}")
    for line in info.dropped or ["nothing"]:
        click.echo(f"dropped   {line}")


@weights.command()
@click.option("--from", "source", type=click.Choice(["keras", "bit"]), default="keras", show_default=True,
              help="keras: a Keras ResNet-50 .h5; bit: a released BiT ResNet-v2 .npz (BiT-M-R50x1.npz, ...)")
@click.option("--model", default=None, help="--from bit: the bit-* model [default: named by the file's shapes]")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
def convert(source: str, model: str | None, src: Path, dst: Path) -> None:
    """Convert a Keras ResNet-50 .h5 (RadImageNet, Keras ImageNet; needs h5py) or a BiT .npz to a tlx checkpoint
    DST that `--init` loads strictly."""
    if source == "bit":
        from trainer.bit_weights import convert_bit_npz
        done = convert_bit_npz(src, dst, model)
    elif model is not None:
        raise click.UsageError("--model is for --from bit (a Keras file names its model by its shapes)")
    else:
        from trainer.keras_weights import convert_keras_h5
        done = convert_keras_h5(src, dst)
    click.echo(f"{dst}: {done['model']}, {done['keys']} tensors; dropped {', '.join(done['dropped']) or 'nothing'}")
