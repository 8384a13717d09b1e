"""Checkpoints in the run format (docs/run-format.md): written atomically, loaded with checks.

    from trainer.checkpoint import new_checkpoint, save_checkpoint, load_checkpoint, rng_state, set_rng_state
    ckpt = new_checkpoint("resnet50", encoder.state_dict(), projector=..., optimizer=opt.state_dict(),
                          step=1200, epoch=3, rng=gather_rng_states(), config=cfg_dict)
    if env.is_main:
        save_checkpoint(ckpt, run / "checkpoints" / "last.pt")
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")     # TrainerError if not a tlx checkpoint

A checkpoint is a plain dict saved with `torch.save`; `encoder` is a state dict with
torchvision's parameter names and no `fc`, so it loads into torchvision's ResNet with
`strict=False` reporting only `fc.*` missing. `save_checkpoint` writes a temporary file
beside the target, fsyncs it and renames it over the target: a job killed mid-write
leaves the previous checkpoint intact, never a truncated one.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trainer.dist import is_distributed
from trainer.errors import TrainerError

FORMAT = "tlx-checkpoint"
VERSION = 1


def new_checkpoint(model_name: str, encoder_state: dict[str, torch.Tensor], **entries: Any) -> dict[str, Any]:
    """The checkpoint dict of the run format; `entries` are the trainer's own keys."""
    encoder_state = {k: v for k, v in encoder_state.items() if not k.startswith("fc.")}
    return {"format": FORMAT, "version": VERSION, "model_name": model_name, "encoder": encoder_state, **entries}


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Atomic torch.save (call it on rank 0 only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a tlx checkpoint; TrainerError when the file is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file: torch says why in many ways
        raise TrainerError(f"checkpoint {str(path)!r} cannot be read ({unreadable(exc)}); "
                           f"it is damaged or not a torch file") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TrainerError(f"{str(path)!r} is not a tlx checkpoint (no format={FORMAT!r} key)")
    if ckpt.get("version") != VERSION:
        raise TrainerError(f"{str(path)!r} has checkpoint version {ckpt.get('version')!r}; this tlx reads version {VERSION}")
    return ckpt


def unreadable(exc: BaseException) -> str:
    """torch.load's failure, in one short line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0].split('. ')[0][:160]}" if text else type(exc).__name__


def rng_state() -> dict[str, Any]:
    """Every random generator this process uses: Python, NumPy, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU the saving process saw; a machine with fewer GPUs (a run resumed on
        # another node or GPU count) restores those it has, not an IndexError for the others
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"][:torch.cuda.device_count()]])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's rng_state(), in rank order (rank 0 saves them all; each rank restores its own)."""
    mine = rng_state()
    if not is_distributed():
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def restore_rng_states(states: list[dict[str, Any]], rank: int) -> bool:
    """Restore this rank's saved generators; False when the checkpoint had fewer ranks."""
    if rank >= len(states):
        return False
    set_rng_state(states[rank])
    return True
