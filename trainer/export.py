"""`tlx export`: a run's encoder out of tlx, as a plain torchvision-layout state dict.

    from trainer.export import export_encoder
    written = export_encoder("runs/pretrain/ct/checkpoints/last.pt", "ct-resnet50.safetensors")
    # -> [ct-resnet50.safetensors, ct-resnet50.json]

A tlx checkpoint (docs/run-format.md) also holds the optimizer, the RNG states (numpy objects) and the config,
so `torch.load(path)` refuses it under torch's default `weights_only=True`. The exported file holds only
tensors: `torch.load(out, weights_only=True)` (.pth) or `safetensors.torch.load_file(out)` (.safetensors)
reads it, and torchvision's ResNet of the same name loads it with `strict=False`, reporting only fc.* missing
(tlx encoders have no classifier). The JSON beside it says how the encoder saw its inputs: image size,
normalisation, window (3 channels: tlx replicates a one-channel CT slice to 3); feed it pixels made the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from tlxcore.atomic import atomic_write, write_json_atomic
from tlxcore.runtime import tool_version
from trainer.checkpoint import load_checkpoint
from trainer.errors import TrainerError
from trainer.task_heads import sha256_file

FORMATS = (".pth", ".safetensors")
# The run config's fields that say how pixels reached the encoder (trainer/simclr.py, trainer/finetune.py).
INPUT_FIELDS = ("image_size", "normalize", "window", "data")


def export_encoder(checkpoint: str | os.PathLike, out: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write the checkpoint's encoder to `out` (.pth or .safetensors) and its input description to out.json."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise TrainerError(f"export to {str(out)!r}: the file name must end in one of {', '.join(FORMATS)}")
    meta_path = out.with_suffix(".json")
    if not force and (existing := [p for p in (out, meta_path) if p.exists()]):
        raise TrainerError(f"{', '.join(map(str, existing))} exists; give another name, or --force to replace it")
    ckpt = load_checkpoint(checkpoint)
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt["encoder"].items()}
    if out.suffix == ".safetensors":
        try:
            from safetensors.torch import save
        except ImportError:
            raise TrainerError("--format safetensors needs the safetensors package: pip install 'tlx[export]' "
                               "(or export to .pth, which needs nothing extra)") from None
        payload = save(state)
        with atomic_write(out) as f:
            f.write(payload)
    else:
        with atomic_write(out) as f:
            torch.save(state, f)
    config = ckpt.get("config") or {}
    write_json_atomic({
        "model": ckpt.get("model_name"),
        "layout": "torchvision ResNet state dict without fc.* (load with strict=False; only fc.* is missing)",
        "inputs": {"channels": 3, **{k: config[k] for k in INPUT_FIELDS if k in config}},
        "tensors": len(state),
        "parameters": int(sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))),
        "source": {"checkpoint": str(checkpoint), "sha256": sha256_file(Path(checkpoint)),
                   "step": ckpt.get("step"), "epoch": ckpt.get("epoch")},
        "tlx_version": tool_version(),
    }, meta_path)
    return [out, meta_path]
