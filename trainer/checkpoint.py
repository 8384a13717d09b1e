"""Checkpoints in the run format (docs/run-format.md), and the one resume vocabulary of both trainers.

    from trainer.checkpoint import (check_complete_run, check_same_run, checkpoint_due, find_resume_point,
                                    load_checkpoint, resumed_loss_sum, save_resume_point)
    ckpt, source = find_resume_point(cfg.resume, run_dir, fix="pick a new --out")   # --resume auto|never|PATH
    if ckpt is not None:
        check_same_run(ckpt["config"], config, flags=field_names, source=source, fix="a new --out")
        loss_sum = resumed_loss_sum(ckpt, env)         # this rank's running loss sum of the epoch
    check_complete_run(run_dir, config, flags=field_names, fix="use another --run-dir")   # result.json present
    if epoch_done or checkpoint_due(step, cfg.checkpoint_every):
        save_resume_point(run_dir / "checkpoints" / "last.pt", env.is_main, "resnet50", encoder.state_dict(),
                          epoch_loss_sum=loss_sum, optimizer=opt.state_dict(), step=step, epoch=epoch,
                          config=config)                    # every rank calls it
    ckpt = load_checkpoint(path)                       # TrainerError if not a tlx checkpoint

A checkpoint is a plain dict saved with `torch.save`; `encoder` is a state dict with
torchvision's parameter names and no `fc`, so it loads into torchvision's ResNet with
`strict=False` reporting only `fc.*` missing. `save_checkpoint` writes through
tlxcore.atomic: a job killed mid-write leaves the previous checkpoint intact, never a truncated one.

The vocabulary (docs/trainer.md, docs/finetune.md): `--resume auto` continues from
<run>/checkpoints/last.pt when it exists, `never` refuses a run folder that holds one,
a PATH continues from that checkpoint. `--checkpoint-every N` also saves last.pt every
N optimizer steps (0: only at epoch ends and when the run stops), default 250 (see
CHECKPOINT_EVERY). Both trainers take the two flags from `resume_flag` and
`checkpoint_every_flag` below, so they mean the same thing in both.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist

from tlxcore.atomic import atomic_write
from trainer.config import opt
from trainer.dist import Dist, gather_floats, is_distributed, rank_share
from trainer.errors import TrainerError, stops_deferred
from trainer.run_identity import COMPLETE_MAY_CHANGE, MAY_CHANGE, changed_keys, flag_names

FORMAT = "tlx-checkpoint"
VERSION = 1

# Why 250 steps: a crash then loses at most 250 steps (1M images of the paper recipe's batch of 4096, a
# twelfth of an epoch of RadNet-12M), while a checkpoint costs one collective and one file write by rank 0
# (ResNet-50, projector and LARS momenta: 225-260 MB, measured with torch.save; every epoch end writes one
# anyway). Epochs shorter than 250 steps (most fine-tuning runs) checkpoint at their ends only, as with 0.
CHECKPOINT_EVERY = 250
RESUME_CHOICES = ("auto", "never")  # or a checkpoint path
# Spellings of earlier versions: refused with one line naming the new one (trainer.config.parse_config).
OLD_SPELLINGS = {"--ckpt-every": "--checkpoint-every", "--resume none": "--resume never"}



def resume_flag() -> Any:
    """The `--resume` field of a trainer's config dataclass."""
    return opt("auto", "auto: continue from the run folder's checkpoints/last.pt when present; never: refuse "
                       "a run folder that holds one; or a checkpoint file to continue from")


def checkpoint_every_flag() -> Any:
    """The `--checkpoint-every` field of a trainer's config dataclass."""
    return opt(CHECKPOINT_EVERY, "also save checkpoints/last.pt every N optimizer steps (0: only at epoch ends "
                                 "and when the run stops)")


def checkpoint_due(step: int, every: int) -> bool:
    """True at the steps `--checkpoint-every` asks for (besides epoch ends, which always save)."""
    return every > 0 and step % every == 0


def new_checkpoint(model_name: str, encoder_state: dict[str, torch.Tensor], **entries: Any) -> dict[str, Any]:
    """The checkpoint dict of the run format; `entries` are the trainer's own keys."""
    encoder_state = {k: v for k, v in encoder_state.items() if not k.startswith("fc.")}
    return {"format": FORMAT, "version": VERSION, "model_name": model_name, "encoder": encoder_state, **entries}


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Atomic torch.save (call it on rank 0 only); Ctrl-C and SIGTERM wait until the file is written."""
    with stops_deferred(), atomic_write(path) as f:
        torch.save(ckpt, f)


def save_resume_point(path: str | os.PathLike, is_main: bool, model_name: str,
                      encoder_state: dict[str, torch.Tensor], *, epoch_loss_sum: float, **entries: Any) -> None:
    """A checkpoint a run can continue from: the trainer's entries plus every rank's RNG states and
    every rank's running loss sum of the current epoch (`epoch_loss_sums`; the ranks' sums differ,
    and `epoch_loss_sum`, rank 0's, stays for readers of older checkpoints). Every rank calls it
    (the gathers are collectives); rank 0 writes the file. resumed_loss_sum reads the sum back."""
    rng, loss_sums = gather_rng_states(), gather_floats(epoch_loss_sum)
    if is_main:
        save_checkpoint(new_checkpoint(model_name, encoder_state, rng=rng, epoch_loss_sum=epoch_loss_sum,
                                       epoch_loss_sums=loss_sums, **entries), path)


def resumed_loss_sum(ckpt: dict[str, Any], env: Dist) -> float:
    """This rank's running loss sum of the epoch a checkpoint stopped in (trainer.dist.rank_share:
    the ranks' mean on another number of ranks; rank 0's from a checkpoint older than the per-rank list)."""
    return rank_share(ckpt.get("epoch_loss_sums"), ckpt["epoch_loss_sum"], env)


def find_resume_point(resume: str, run_dir: str | os.PathLike, fix: str) -> tuple[dict[str, Any] | None, Path | None]:
    """(checkpoint, its path) that `--resume` continues from, or (None, None) to start afresh.
    `fix` ends the refusal of `never` ("pick a new --out")."""
    last = Path(run_dir) / "checkpoints" / "last.pt"
    if resume == "never":
        if last.exists():
            raise TrainerError(f"{last} holds a started run and --resume is never: continue it with --resume auto, "
                               f"or {fix}")
        return None, None
    path = last if resume == "auto" else Path(resume)
    if resume == "auto" and not last.exists():
        return None, None
    return load_checkpoint(path), path


def check_same_run(saved: dict[str, Any], now: dict[str, Any], *, flags: Iterable[str], source: os.PathLike | str,
                   fix: str, may_change: Iterable[str] = ()) -> None:
    """Resume only the run that wrote the checkpoint: TrainerError naming every config.json key (as
    its flag where it is one) whose value differs, except MAY_CHANGE and `may_change`. A key the
    saved config lacks (a checkpoint older than the key) is not compared (trainer/run_identity.py)."""
    changed = changed_keys(saved, now, MAY_CHANGE | set(may_change))
    if changed:
        raise TrainerError(f"cannot resume from {source}: {flag_names(changed, flags)} differ from the checkpoint's "
                           f"run; use the same values, or {fix}")


def check_complete_run(run_dir: str | os.PathLike, now: dict[str, Any], *, flags: Iterable[str], fix: str,
                       may_change: Iterable[str] = (), older: Callable[[dict], dict] | None = None) -> None:
    """A run folder whose result.json exists holds the result of its config.json's options: TrainerError
    naming every key that differs from `now` (as check_same_run, but --max-steps counts: COMPLETE_MAY_CHANGE),
    or when config.json cannot tell. `fix` ends the refusal ("use another --run-dir"); `older` fills in what a
    config.json from before a flag meant (the trainer's saved_config)."""
    path = Path(run_dir) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainerError(f"{run_dir} holds a result.json but no readable config.json ({unreadable(exc)}), so "
                           f"which options made it is unknown; {fix}") from None
    saved = {**saved["args"], **saved} if isinstance(saved.get("args"), dict) else saved   # the older finetune shape
    saved = older(saved) if older is not None else saved
    changed = changed_keys(saved, now, COMPLETE_MAY_CHANGE | set(may_change))
    if changed:
        raise TrainerError(f"{run_dir} holds a complete run made with other options: {flag_names(changed, flags)} "
                           f"differ from its config.json; give the values it was made with to read its result, "
                           f"or {fix}")


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
        raise TrainerError(f"{str(path)!r} has checkpoint version {ckpt.get('version')!r}; "
                           f"this tlx reads version {VERSION}")
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
