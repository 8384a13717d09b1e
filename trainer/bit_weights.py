"""Released BiT weights (.npz, TF layout) -> a state dict of trainer.models.bit.ResNetV2.

    import numpy as np
    from trainer.bit_weights import bit_state_dict, bit_model_name
    npz = dict(np.load("BiT-M-R50x1.npz"))
    state = bit_state_dict(npz)                 # {"root.conv.weight": OIHW tensor, ...}
    name = bit_model_name(state)                # "bit-r50x1" (from the shapes)
    build_encoder(name, num_classes=21843).load_state_dict(state)   # strict

The released files (google-research/big_transfer, storage.googleapis.com/bit_models/) hold
one array per variable, named as bit_pytorch's `load_from` reads them:
- resnet/root_block/standardized_conv2d/kernel                  -> root.conv.weight
- resnet/block{b}/unit{uu}/{a,b,c}/standardized_conv2d/kernel   -> body.block{b}.unit{uu}.conv{1,2,3}.weight
- resnet/block{b}/unit{uu}/{a,b,c}/group_norm/{gamma,beta}      -> ....gn{1,2,3}.{weight,bias}
- resnet/block{b}/unit{uu}/a/proj/standardized_conv2d/kernel    -> ....downsample.weight
- resnet/group_norm/{gamma,beta}                                -> norm.{weight,bias}
- resnet/head/conv2d/{kernel,bias}                              -> fc.{weight,bias}
Kernels are HWIO and become OIHW (the head's [1, 1, in, out] becomes Linear's [out, in]).
A key outside this layout is an error naming it: nothing is dropped silently.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from trainer.errors import TrainerError
from trainer.models.bit import BIT_ARCHS

PREFIX = "resnet/"
_CONV = "standardized_conv2d/kernel"
_UNIT = re.compile(r"block(\d)/unit(\d\d)/([abc])/(?:(proj)/)?"
                   r"(standardized_conv2d/kernel|group_norm/gamma|group_norm/beta)")
_GN = {"group_norm/gamma": "weight", "group_norm/beta": "bias"}


def bit_name(key: str) -> tuple[str, str]:
    """(our name, kind) of one npz key without the prefix; kind: conv, head, vector."""
    fixed = {f"root_block/{_CONV}": ("root.conv.weight", "conv"),
             "group_norm/gamma": ("norm.weight", "vector"), "group_norm/beta": ("norm.bias", "vector"),
             "head/conv2d/kernel": ("fc.weight", "head"), "head/conv2d/bias": ("fc.bias", "vector")}
    if key in fixed:
        return fixed[key]
    m = _UNIT.fullmatch(key)
    if m is None:
        raise TrainerError(f"BiT weights: key {PREFIX + key!r} is not in the BiT ResNet-v2 layout "
                           f"(root_block, block{{1-4}}/unit{{NN}}/{{a,b,c}}, group_norm, head)")
    block, unit, part, proj, leaf = m.groups()
    unit_name = f"body.block{block}.unit{unit}"
    if proj:
        if part != "a" or leaf != _CONV:
            raise TrainerError(f"BiT weights: key {PREFIX + key!r}: a projection is a/proj/{_CONV}")
        return f"{unit_name}.downsample.weight", "conv"
    index = "abc".index(part) + 1
    if leaf == _CONV:
        return f"{unit_name}.conv{index}.weight", "conv"
    return f"{unit_name}.gn{index}.{_GN[leaf]}", "vector"


def converted_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """The torch shape an array of `shape` becomes (HWIO -> OIHW; the head -> [out, in])."""
    return {"conv": lambda: (shape[3], shape[2], shape[0], shape[1]), "head": lambda: (shape[3], shape[2]),
            "vector": lambda: tuple(shape)}[kind]()


def _convert(array: np.ndarray, kind: str, key: str) -> torch.Tensor:
    want = {"conv": 4, "head": 4, "vector": 1}[kind]
    if array.ndim != want:
        raise TrainerError(f"BiT weights: {key!r} has shape {array.shape}, expected {want} dimensions")
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if kind == "conv":
        return t.permute(3, 2, 0, 1).contiguous()          # HWIO -> OIHW
    if kind == "head":
        return t[0, 0].t().contiguous()                    # [1, 1, in, out] -> [out, in]
    return t


def bit_state_dict(npz: Mapping[str, np.ndarray], prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """Every array of a BiT .npz (a mapping key -> array) as a ResNetV2 state dict entry."""
    state: dict[str, torch.Tensor] = {}
    for key, array in npz.items():
        if not key.startswith(prefix):
            raise TrainerError(f"BiT weights: key {key!r} does not start with {prefix!r}")
        name, kind = bit_name(key[len(prefix):])
        state[name] = _convert(np.asarray(array), kind, key)
    if "root.conv.weight" not in state:
        raise TrainerError(f"BiT weights: no {prefix}root_block/{_CONV}; is this a BiT ResNet-v2 file?")
    return state


def bit_model_name(state: Mapping[str, torch.Tensor]) -> str:
    """The registry name whose architecture the state dict has (units per block, width)."""
    width, rest = divmod(state["root.conv.weight"].shape[0], 64)
    units = [len({k.split(".")[2] for k in state if k.startswith(f"body.block{b}.")}) for b in range(1, 5)]
    for name, (layers, wf) in BIT_ARCHS.items():
        if rest == 0 and wf == width and layers == units:
            return name
    raise TrainerError(f"BiT weights: units per block {units} and root width "
                       f"{state['root.conv.weight'].shape[0]} match none of {', '.join(BIT_ARCHS)}")


def load_bit_npz(path: str) -> dict[str, torch.Tensor]:
    """bit_state_dict of a file; a file numpy cannot read is a TrainerError naming it."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return bit_state_dict({k: npz[k] for k in npz.files})
    except (OSError, ValueError) as exc:
        raise TrainerError(f"BiT weights: {path!r} cannot be read as .npz ({exc})") from None


def convert_bit_npz(src: str | Path, dst: str | Path, model: str | None = None) -> dict:
    """`tlx weights convert --from bit`: a released BiT .npz as a tlx checkpoint at `dst` that `--init` loads
    strictly; returns {model, keys, dropped}. `model` names the registry model where the shapes name none
    (the tests' bit-tiny); the encoder is loaded strictly either way, so a wrong name is a TrainerError."""
    from trainer.checkpoint import new_checkpoint, save_checkpoint
    from trainer.models import build_encoder

    state = load_bit_npz(str(src))
    name = model or bit_model_name(state)
    if not name.startswith("bit-"):
        raise TrainerError(f"--model {name!r}: BiT weights load into the bit-* models only")
    encoder = build_encoder(name)
    head = sorted(k for k in state if k.startswith("fc."))   # the pretraining classes' head: --init drops it too
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        encoder.load_state_dict(backbone, strict=True)
    except RuntimeError as exc:
        raise TrainerError(f"{src}: its tensors do not fit {name} ({str(exc).splitlines()[1].strip()})") from None
    save_checkpoint(new_checkpoint(name, encoder.state_dict(), converted_from=str(src)), dst)
    return {"model": name, "keys": len(state), "dropped": [f"{k} (the pretraining head)" for k in head]}
