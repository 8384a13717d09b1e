"""Keras ResNet-50 `.h5` weights -> a tlx checkpoint of the `resnet50-keras` model.

    from trainer.keras_weights import convert_keras_h5
    info = convert_keras_h5("RadImageNet-ResNet50_notop.h5", "radimagenet.pt")
    # then: python -m trainer.finetune --init radimagenet.pt ...   (the model, resnet50-keras, comes from the file)

The RadImageNet and keras.applications ImageNet releases are ResNet-50 v1 as built by
`keras.applications.resnet.ResNet50`: stride in the first 1x1 conv of a block, convolutions
with biases, BatchNorm epsilon 1.001e-5; tlx's `resnet50-keras` is that network with
torchvision's names. Keras names map as
    conv1_conv, conv1_bn                      -> conv1, bn1
    conv{s}_block{b}_{i}_conv, ..._{i}_bn     -> layer{s-1}.{b-1}.conv{i}, .bn{i}   (i = 1, 2, 3)
    conv{s}_block{b}_0_conv, ..._0_bn         -> layer{s-1}.{b-1}.downsample.0, .downsample.1
and tensors as: conv kernel (kh, kw, in, out) -> (out, in, kh, kw); BN gamma, beta,
moving_mean, moving_variance -> weight, bias, running_mean, running_var. The classifier
(`probs`, `predictions`) is dropped. Files written by Keras 2 (`save_weights` or a whole
model's `model.save`, whose weights sit under `model_weights/`) are read; h5py is the
optional extra `tlx[hdf5]`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from trainer.errors import TrainerError

_CONV = re.compile(r"^conv(\d)_block(\d+)_(\d)_(conv|bn)$")
_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_CLASSIFIERS = ("probs", "predictions", "fc1000", "avg_pool", "flatten")


def torch_name(layer: str, weight: str) -> str | None:
    """The torchvision-layout key of Keras weight `weight` of layer `layer`; None for the classifier."""
    if layer in _CLASSIFIERS:
        return None
    kind = "kernel" if weight == "kernel" else ("bias" if weight == "bias" else _BN.get(weight))
    if layer in ("conv1_conv", "conv1_bn"):
        module = "conv1" if layer == "conv1_conv" else "bn1"
    elif (m := _CONV.match(layer)):
        stage, block, i, what = int(m[1]), int(m[2]), int(m[3]), m[4]
        if not 2 <= stage <= 5 or i > 3:
            kind = None
        part = (f"downsample.{0 if what == 'conv' else 1}" if i == 0 else f"{what}{i}")
        module = f"layer{stage - 1}.{block - 1}.{part}"
    else:
        kind = None
    if kind is None:
        raise TrainerError(f"Keras weight {layer}/{weight} is not part of a keras.applications ResNet-50")
    return f"{module}.{'weight' if kind == 'kernel' else kind}"


def read_keras_h5(path: str | Path) -> dict[str, np.ndarray]:
    """{layer/weight: array} of a Keras 2 HDF5 weights file (or a whole saved model)."""
    try:
        import h5py
    except ImportError as exc:
        raise TrainerError("reading Keras .h5 weights needs h5py: pip install 'tlx[hdf5]'") from exc
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise TrainerError(f"{path} is not an HDF5 file h5py can read ({exc})") from None
    with f:
        root = f.get("model_weights", f)   # a whole saved model keeps its weights there
        if "layer_names" not in root.attrs:
            raise TrainerError(f"{path} has no Keras 2 'layer_names' attribute: not a Keras .h5 weights file "
                               f"(Keras 3 .weights.h5 files are not read; save with Keras 2's h5 format)")
        out = {}
        for layer in (_text(n) for n in root.attrs["layer_names"]):
            group = root[layer]
            for full in (_text(n) for n in group.attrs.get("weight_names", [])):
                weight = full.split("/")[-1].split(":")[0]
                out[f"{layer}/{weight}"] = np.asarray(group[full])
    return out


def keras_to_state_dict(weights: dict[str, np.ndarray]) -> tuple[dict, list[str]]:
    """(the torchvision-layout state dict, the dropped Keras layers)."""
    import torch

    state, dropped = {}, []
    for name, array in weights.items():
        layer, weight = name.rsplit("/", 1)
        key = torch_name(layer, weight)
        if key is None:
            dropped.append(name)
            continue
        tensor = torch.from_numpy(np.ascontiguousarray(array)).float()
        state[key] = tensor.permute(3, 2, 0, 1).contiguous() if array.ndim == 4 else tensor
    return state, dropped


def convert_keras_h5(src: str | Path, dst: str | Path) -> dict:
    """Convert and save a tlx checkpoint at `dst`; returns {model, keys, dropped}. The model is the registered
    Keras-layout ResNet whose keys and shapes the file fits exactly, else a TrainerError."""
    from trainer.checkpoint import new_checkpoint, save_checkpoint
    from trainer.models import build_encoder
    from trainer.weight_layouts import guess_model

    state, dropped = keras_to_state_dict(read_keras_h5(src))
    model = guess_model(state)
    if model is None or not model.endswith("-keras"):
        raise TrainerError(f"{src}: its {len(state)} tensors fit no Keras-layout ResNet of tlx (resnet50-keras)")
    encoder = build_encoder(model)
    own = encoder.state_dict()
    full = {k: state.get(k, own[k]) for k in own}   # num_batches_tracked: Keras has none (0, as torch's own load)
    encoder.load_state_dict(full, strict=True)
    save_checkpoint(new_checkpoint(model, encoder.state_dict(), converted_from=str(src)), dst)
    return {"model": model, "keys": len(state), "dropped": dropped}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
