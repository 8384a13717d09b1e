"""Foreign checkpoint layouts: find the ResNet encoder inside a state dict, whatever wraps it.

    from trainer.weight_layouts import extract_encoder
    found = extract_encoder(torch.load("moco_v2_800ep.pth.tar", weights_only=False))
    found.layout, found.prefix        # "moco", "module.encoder_q."
    found.state                       # torchvision names: conv1.weight, layer1.0.conv1.weight, ...
    found.dropped                     # ["module.encoder_k.* (the momentum encoder, 320 keys)", "module.queue", ...]

Self-supervised releases save the encoder under a prefix (`module.` of DataParallel, MoCo's
`encoder_q.`, BYOL ports' `online_network.`, `backbone.`, `encoder.`, `model.`), next to
heads (fc, projector, predictor, SwAV's prototypes, MoCo's queue) and momentum copies
(MoCo's `encoder_k.`, BYOL's `target_network.`), often inside a container dict
(`{"state_dict": ...}`; timm's training checkpoints add `arch`). The encoder is found by its
keys: the prefix P with `P + "conv1.weight"` and keys under `P + "layer1."`.
P minus any leading `module.` must be a known layout (LAYOUTS); where two encoders are
present (MoCo, BYOL) the momentum copy's prefix is not a layout, so the other one is taken.
Every key outside the encoder must be a head or a momentum copy (HEAD_PARTS, MOMENTUM_PARTS):
anything else is an error naming the keys, because an encoder with parts left behind would be a
different model. Whether the encoder's own keys match the model is checked by the strict load
(trainer/task_heads.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from trainer.errors import TrainerError

# The prefix (after any leading "module.") under which a layout keeps its encoder.
LAYOUTS = {"": "torchvision", "encoder_q.": "moco", "online_network.": "byol",
           "online_network.encoder.": "byol", "online_network.backbone.": "byol",
           "backbone.": "backbone", "encoder.": "encoder", "model.": "model"}
MOMENTUM_PARTS = ("encoder_k", "target_network", "momentum_encoder")      # second copies of the encoder
HEAD_PARTS = ("fc", "projector", "projection_head", "predictor", "prototypes", "queue", "queue_ptr", "head")
CONTAINERS = ("state_dict", "model", "network")    # dict keys that hold the state dict itself


@dataclass
class FoundEncoder:
    """The encoder state dict (torchvision names) and how it was found."""
    state: dict
    layout: str                    # a LAYOUTS value, "timm", or "tlx-checkpoint"
    prefix: str = ""               # what was stripped from the encoder's keys
    container: str | None = None   # the dict key that held the state dict
    dropped: list[str] = field(default_factory=list)


def unwrap(obj: dict) -> tuple[dict, str | None, bool]:
    """(the state dict, the container key or None, whether it is a timm training checkpoint)."""
    timm = "arch" in obj and isinstance(obj.get("state_dict"), dict)
    for key in CONTAINERS:
        if isinstance(obj.get(key), dict) and obj[key] and not _is_tensor(obj[key]):
            return obj[key], key, timm
    return obj, None, False


def extract_encoder(obj: dict, name: str = "the checkpoint") -> FoundEncoder:
    """The encoder inside a loaded checkpoint (module docstring); TrainerError when none or an unknown layout."""
    state, container, timm = unwrap(obj)
    if not state or not all(_is_tensor(v) for v in state.values()):
        raise TrainerError(f"{name} holds no state dict of tensors (top-level keys: {_some(sorted(obj))})")
    prefix, layout = _encoder_prefix(state, name)
    kept, dropped, stray = {}, {}, []
    for key, value in state.items():
        group = _head_group(key)
        if group is not None:
            dropped[group] = dropped.get(group, 0) + 1
        elif key.startswith(prefix):
            kept[key[len(prefix):]] = value
        else:
            stray.append(key)
    if stray:
        raise TrainerError(f"{name}: {len(stray)} keys are neither the encoder under {prefix!r} ({layout} layout) "
                           f"nor a head ({', '.join(HEAD_PARTS)}) or momentum copy: {_some(sorted(stray))}")
    notes = [f"{g}.* ({_why(g)}, {n} key{'s' if n > 1 else ''})" for g, n in dropped.items()]
    return FoundEncoder(kept, "timm" if timm and layout == "torchvision" else layout, prefix, container, notes)


def _encoder_prefix(state: dict, name: str) -> tuple[str, str]:
    """(prefix, layout) of the encoder: the known layout's prefix, the non-momentum one first."""
    stems = {k[:-len("conv1.weight")] for k in state if k.endswith("conv1.weight")}
    stems = {p for p in stems if not p or p.endswith(".")}
    found = sorted(p for p in stems if any(k.startswith(p + "layer1.") for k in state))
    if not found:
        raise TrainerError(f"{name}: no ResNet encoder found (no '<prefix>conv1.weight' next to "
                           f"'<prefix>layer1.*' keys); keys: {_some(sorted(state))}")
    known = [(p, LAYOUTS[_core(p)]) for p in found if _core(p) in LAYOUTS]
    if not known:
        raise TrainerError(f"{name}: unknown layout: the encoder's keys sit under {_some(found)}; known prefixes "
                           f"(after an optional 'module.'): {', '.join(repr(p) for p in LAYOUTS)}")
    if len(known) > 1:   # (momentum copies' prefixes are not in LAYOUTS, so MoCo and BYOL give one)
        raise TrainerError(f"{name}: {len(known)} encoders found, under {', '.join(repr(p) for p, _ in known)}; "
                           f"save the one to use on its own")
    return known[0]


def _core(prefix: str) -> str:
    return prefix.removeprefix("module.")


def _head_group(key: str) -> str | None:
    """`online_network.projector.net.0.weight` -> `online_network.projector`: the key up to its first head or
    momentum name (HEAD_PARTS, MOMENTUM_PARTS), or None for an encoder key."""
    names = key.split(".")
    for i, name in enumerate(names):
        if name in HEAD_PARTS or name in MOMENTUM_PARTS:
            return ".".join(names[:i + 1])
    return None


def _why(group: str) -> str:
    part = group.rsplit(".", 1)[-1]
    if part in MOMENTUM_PARTS:
        return "the momentum encoder"
    return "the pretraining classifier" if part == "fc" else "a pretraining head"


def _is_tensor(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _some(keys: list[str], n: int = 10) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def guess_model(state: dict) -> str | None:
    """The registered model (trainer/models) whose encoder has exactly these keys and shapes, else None.

    >>> guess_model(build_encoder("wide_resnet50_2").state_dict())
    'wide_resnet50_2'
    """
    import torch

    from trainer.models import MODELS, build_encoder
    shapes = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    for name in MODELS:
        with torch.device("meta"):   # shapes only
            own = build_encoder(name).state_dict()
        if shapes == {k: tuple(v.shape) for k, v in own.items() if not k.endswith("num_batches_tracked")}:
            return name
    return None
