"""`trainer.simclr --init PATH`: start a pretraining run from other weights.

    from trainer.pretrain_init import load_pretrain_init
    record = load_pretrain_init(net, "runs/pretrain/in1k/checkpoints/epoch-50.pt", model="resnet50")
    record  # {"init_checkpoint": ..., "init_sha256": ..., "init_variant": "tlx-simclr", "init_loaded": [...]}

Two formats, nothing else (foreign layouts, `module.` prefixes, MoCo/BYOL checkpoints are
finetune's business):
- a tlx SimCLR checkpoint (`trainer.simclr`'s last.pt / epoch-N.pt): encoder *and* projector,
  variant `tlx-simclr`; its model must be this run's `--model`;
- a torchvision-layout ResNet state dict (e.g. torchvision's ImageNet weights): encoder only,
  the projector stays freshly initialised, variant `torchvision-encoder`; `fc.*` is dropped.
Both load strictly: a missing, unexpected or differently shaped key stops the run with the
keys named. Only weights come over: the optimizer, schedule and data order start afresh
(the schedule at `--init-epoch`, see trainer/simclr.py).
"""
from __future__ import annotations

import torch

from trainer.errors import TrainerError
from trainer.models.simclr_model import SimCLRModel
from trainer.task_heads import load_init, read_init

VARIANTS = {"tlx-checkpoint": "tlx-simclr", "state-dict": "torchvision-encoder"}


def load_pretrain_init(net: SimCLRModel, path: str, model: str) -> dict:
    """Load `path` into `net` strictly; returns what config.json records about it."""
    state, info = read_init(path)  # finetune's reader: file checks, sha256, fc./projector split off
    if info.source == "tlx-checkpoint" and info.model_name != model:
        raise TrainerError(f"--init {path} holds a {info.model_name} encoder; this run's --model is {model} "
                           f"(give --model {info.model_name}, or an init of a {model})")
    load_init(net.encoder, state, info, allow_partial=False)  # TrainerError naming missing/unexpected keys
    loaded = ["encoder"]
    if info.source == "tlx-checkpoint":
        projector = torch.load(path, map_location="cpu", weights_only=False).get("projector")
        if projector is None:
            raise TrainerError(f"--init {path} is a tlx checkpoint without a projector (a fine-tuning run's?); "
                               f"give a trainer.simclr checkpoint or a torchvision-layout state dict")
        _load_strict(net.projector, projector, path)
        loaded.append("projector")
    return {"init_checkpoint": str(path), "init_sha256": info.sha256, "init_variant": VARIANTS[info.source],
            "init_loaded": loaded}


def _load_strict(module: torch.nn.Module, state: dict, path: str) -> None:
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise TrainerError(f"--init {path}: the projector does not fit this run's (--recipe / --model differ?): "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}, other shape {shapes[:5]}")
    module.load_state_dict(state)
