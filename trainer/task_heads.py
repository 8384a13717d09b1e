"""The network and loss of a downstream task: a ResNet encoder (initialised from scratch,
an ImageNet state dict or a SimCLR checkpoint) plus a new head.

    state, info = read_init("runs/pretrain/x/checkpoints/last.pt")   # dropped parts listed in info
    encoder = build_encoder(info.model_name or "resnet50")
    load_init(encoder, state, info, allow_partial=False)             # strict, or a TrainerError naming keys
    model = TaskModel(encoder, kind="classification", num_outputs=7, frozen_encoder=False)
    loss = task_loss("classification", model(x), y, class_weights)

Heads (all newly initialised; the encoder may come from a checkpoint):
- classification and multilabel: one linear layer on the pooled features (the SimCLR
  projector or an ImageNet `fc` is never reused);
- segmentation: a U-Net decoder of trainer/models/unet.py on the encoder's stages: the
  study's `backboned-unet` by default, tlx's earlier `smp-unet` on request.

Linear evaluation (`frozen_encoder=True`): the encoder's parameters do not train and
the encoder stays in eval mode even while the model is in train mode, so its
BatchNorm running statistics do not move either (a frozen encoder that still updated
its BN statistics would be a different encoder). For segmentation the decoder trains,
which is the paper's "half the model".
"""
from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainer.checkpoint import unreadable
from trainer.dist import is_distributed
from trainer.errors import TrainerError
from trainer.models.unet import UNetDecoder
from trainer.task_losses import masked_bce, segmentation_loss
from trainer.weight_layouts import extract_encoder, guess_model

KINDS = ("classification", "multilabel", "segmentation")


class TaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, kind: str, num_outputs: int, frozen_encoder: bool = False,
                 decoder_channels: tuple[int, ...] | None = None, decoder: str = "backboned-unet",
                 head_dropout: float = 0.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(KINDS)}")
        if head_dropout and (kind == "segmentation" or not 0 < head_dropout < 1):
            raise TrainerError(f"--head-dropout {head_dropout} must be in [0, 1) and is for the linear head of "
                               f"classification and multilabel tasks (this task: {kind})")
        self.dropout = nn.Dropout(head_dropout) if head_dropout else nn.Identity()   # no parameters
        self.kind, self.frozen_encoder = kind, frozen_encoder
        self.encoder = encoder
        if kind == "segmentation":
            self.decoder = UNetDecoder(encoder.stage_channels, num_outputs, decoder_channels, decoder)
        else:
            self.head = nn.Linear(encoder.feature_dim, num_outputs)
        if frozen_encoder:
            self.freeze_encoder(True)

    def head_module(self) -> nn.Module:
        """The new part: the linear head or the U-Net decoder."""
        return self.decoder if self.kind == "segmentation" else self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "segmentation":
            return self.decoder(self.encoder.forward_stages(x), out_size=x.shape[-2:])
        return self.head(self.dropout(self.encoder.forward_features(x)))

    def freeze_encoder(self, frozen: bool) -> None:
        """Freeze (no gradients, eval mode in training) or unfreeze the encoder: lp-ft's two phases."""
        self.frozen_encoder = frozen
        self.encoder.requires_grad_(not frozen)

    def train(self, mode: bool = True) -> "TaskModel":
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()  # BN statistics of a frozen encoder must not move
        return self


def task_loss(kind: str, logits: torch.Tensor, target: torch.Tensor,
              class_weights: torch.Tensor | None = None, seg_loss: str = "ce",
              label_smoothing: float = 0.0) -> torch.Tensor:
    """Weighted cross-entropy (per image, or per pixel for segmentation: logits [B, C, H, W],
    target [B, H, W]) or, for multilabel, binary cross-entropy on each label's logit with
    the label's weight, over the labels not missing (NaN targets: trainer.task_losses.masked_bce).
    Segmentation takes `seg_loss` ce, dice or dice+ce (trainer.task_losses). `label_smoothing` (classification):
    torch's, CE on (1 - e) one-hot + e / C. Computed in float32
    whatever the autocast dtype."""
    logits = logits.float()
    if kind == "multilabel":
        return masked_bce(logits, target, class_weights)
    if kind == "segmentation":
        return segmentation_loss(seg_loss, logits, target, class_weights, _weighted_ce)
    return _weighted_ce(logits, target, class_weights, label_smoothing)


def _weighted_ce(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    # torch's weighted mean: sum_i w[y_i] * -log p_i[y_i] / sum_i w[y_i]
    if class_weights is None or not is_distributed():
        return F.cross_entropy(logits, target.long(), weight=class_weights, label_smoothing=label_smoothing)
    # DDP averages the ranks' gradients: each rank divides its weighted sum by the global batch's
    # weight sum / world size, so the result is the global batch's weighted mean (a per-rank weighted
    # mean would weigh each rank's samples by its own weight sum, and the run would depend on the
    # number of GPUs)
    target = target.long()
    weight_sum = class_weights[target].sum().detach()
    dist.all_reduce(weight_sum)
    return F.cross_entropy(logits, target, weight=class_weights, reduction="sum",
                           label_smoothing=label_smoothing) * dist.get_world_size() / weight_sum


# ---------------------------------------------------------------------------------------------
# Encoder initialisation: scratch, a torchvision-layout state dict, or a tlx checkpoint.

@dataclass
class InitInfo:
    """What an init loaded, for config.json (and what it left out, and why)."""
    checkpoint: str | None = None      # the file, None for scratch
    sha256: str | None = None
    source: str = "scratch"            # scratch | state-dict | tlx-checkpoint
    layout: str | None = None          # trainer/weight_layouts.py: torchvision, moco, byol, timm, ..., tlx-checkpoint
    stripped: str = ""                 # the prefix taken off the encoder's keys (module.encoder_q., ...)
    model_name: str | None = None      # a tlx checkpoint's model (else None)
    model_guess: str | None = None     # a foreign state dict: the registered model its keys and shapes fit
    dropped: list[str] = field(default_factory=list)      # what was left out on purpose
    missing: list[str] = field(default_factory=list)      # encoder keys the file lacked (--allow-partial-init)
    unexpected: list[str] = field(default_factory=list)   # file keys the encoder lacks (--allow-partial-init)
    mismatched: list[str] = field(default_factory=list)   # same key, other shape (--allow-partial-init)
    pretrain_config: dict | None = None                    # a tlx checkpoint's own config (its normalisation)


def read_init(spec: str) -> tuple[dict[str, torch.Tensor] | None, InitInfo]:
    """The encoder state dict an `--init` names, before any model exists (its model name
    decides which encoder to build). fc.* of an ImageNet state dict and the projector of a
    SimCLR checkpoint are dropped here, and listed in `dropped`."""
    if spec == "scratch":
        return None, InitInfo()
    path = Path(spec)
    if not path.is_file():
        raise TrainerError(f"--init {spec!r}: no such file; give 'scratch', a torchvision-layout state dict "
                           f"(.pth) or a tlx checkpoint (.pt)")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # tlx checkpoints also hold RNG states (numpy objects), which weights_only refuses
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file: torch says why in many ways
        raise TrainerError(f"--init {spec!r} cannot be read by torch.load ({unreadable(exc)}); give 'scratch', "
                           f"a torchvision-layout state dict (.pth) or a tlx checkpoint (.pt)") from exc
    info = InitInfo(checkpoint=str(path), sha256=sha256_file(path))
    if isinstance(obj, dict) and obj.get("format") == "tlx-checkpoint":
        info.source, info.model_name, info.pretrain_config = "tlx-checkpoint", obj.get("model_name"), obj.get("config")
        info.layout, state = "tlx-checkpoint", obj["encoder"]
        info.dropped = [f"{k} (not the encoder: {_WHY_DROPPED.get(k, 'another model part')})" for k in obj
                        if k in _MODEL_PARTS]
    elif isinstance(obj, dict):   # a foreign layout: find the encoder (trainer/weight_layouts.py)
        found = extract_encoder(obj, f"--init {spec!r}")
        info.source, info.layout, info.stripped, state = "state-dict", found.layout, found.prefix, found.state
        info.dropped, info.model_guess = found.dropped, guess_model(state)
    else:
        raise TrainerError(f"--init {spec!r} is neither a tlx checkpoint nor a state dict of tensors")
    return state, info


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_MODEL_PARTS = ("projector", "head", "decoder")
_WHY_DROPPED = {"projector": "the SimCLR projection head", "head": "a previous task's head",
                "decoder": "a previous task's U-Net decoder"}


def load_init(encoder: nn.Module, state: dict[str, torch.Tensor] | None, info: InitInfo,
              allow_partial: bool) -> InitInfo:
    """Load strictly: every encoder key present with its shape and nothing else, or a
    TrainerError naming the keys; with `allow_partial`, load what matches and record the rest."""
    if state is None:
        return info
    own = encoder.state_dict()
    # BatchNorm's step counter came with torch 0.4.1: older files (torchvision's original ImageNet
    # weights among them) lack it, and torch's own strict load sets it to 0 (it matters only for
    # BN momentum None). Do the same rather than call such a file partial; every weight and
    # running statistic is still required.
    state = {**{k: torch.zeros_like(v) for k, v in own.items() if k.endswith(".num_batches_tracked")}, **state}
    info.missing = sorted(set(own) - set(state))
    info.unexpected = sorted(set(state) - set(own))
    info.mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = [(what, keys) for what, keys in (("missing", info.missing), ("unexpected", info.unexpected),
                                               ("shape-mismatched", info.mismatched)) if keys]
    if problems and not allow_partial:
        listed = "; ".join(f"{len(keys)} {what}: {_some(keys)}" for what, keys in problems)
        raise TrainerError(f"--init {info.checkpoint}: strict load failed: {listed} "
                           f"(pass --allow-partial-init to load the matching keys anyway)")
    usable = {k: v for k, v in state.items() if k in own and k not in info.mismatched}
    if not any(not k.endswith(".num_batches_tracked") for k in usable):
        raise TrainerError(f"--init {info.checkpoint}: not one of its {len(state)} keys matches the encoder's "
                           f"(e.g. {_some(sorted(state), 3)}); --allow-partial-init would load nothing")
    encoder.load_state_dict(usable, strict=not problems)
    return info


def _some(keys: list[str], n: int = 20) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
