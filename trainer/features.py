"""Activations of a fine-tuning run's encoders on a fixed probe set, for layer-wise CCA/CKA (Juodelyte et al.).

    >>> path = extract_features("runs/lits/radnet/finetune/frac-1/seed-0", "data/lits", split="test")
    >>> # -> RUN/features.npz; `tlx analyze` compares its models layer by layer

Three encoders of the run (docs/run-format.md, features.npz):
- `init`: the encoder the run started from (its --init checkpoint, checked against the
  sha256 config.json recorded; for scratch, the weights seeded by the run's seed, checked
  against first_layers.npz);
- `final`: the fine-tuned encoder the run tested (checkpoints/best.pt);
- `random`: a randomly initialised encoder seeded by the run's seed (the same weights a
  scratch run of that seed starts from; for a scratch run it is `init`, stored once).
On `images` probe images of a split (a seeded sample, the same for every run), the
outputs of conv1 (after BN and ReLU) and of the four stages are sampled: per layer and
repeat, `points` (image, row, column) positions and `channels` channels, drawn from
(seed, layer, repeat) alone, so every run with the same probe and sampling is compared
on the same points. Images are prepared as the run's evaluation prepared them (its image
size, normalisation and window). The encoders run in eval mode, in float32.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from datakit.read import open_dataset
from tlxcore.atomic import atomic_write
from tlxcore.progress import Progress, Tick, silent
from tlxcore.runtime import tool_version
from trainer.checkpoint import load_checkpoint
from trainer.data.labelled import ImageOptions, LabelledSplit
from trainer.errors import TrainerError
from trainer.models import build_encoder
from trainer.task_heads import load_init, read_init, sha256_file

FORMAT, VERSION = "tlx-features", 1
LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")   # forward_stages' outputs, in order
FILE = "features.npz"
ROLES = (("mask", "segmentation"), ("labels", "multilabel"), ("label", "classification"))


def run_config(run: Path) -> dict:
    """config.json of a fine-tuning run, flags nested under `args` (older runs) lifted to the top level."""
    try:
        cfg = json.loads((run / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise TrainerError(f"{run}: config.json cannot be read ({exc}); is it a run folder?") from None
    if not isinstance(cfg, dict) or cfg.get("setting") not in ("finetune", "linear"):
        raise TrainerError(f"{run}: not a fine-tuning run (config.json setting {cfg.get('setting')!r})")
    return {**(cfg.get("args") or {}), **{k: v for k, v in cfg.items() if k != "args"}}


def _seeded_encoder(model: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)   # what trainer.finetune does before building the encoder
    return build_encoder(model)


def run_encoders(run: Path, cfg: dict) -> tuple[dict[str, torch.nn.Module], dict[str, dict]]:
    """{"init", "final", "random"} encoders of a run (random absent for a scratch run: it is init) and what each is."""
    model, seed = cfg.get("model") or "resnet50", int(cfg["seed"])
    init = _seeded_encoder(model, seed)
    info: dict[str, dict] = {"random": {"seed": seed}}
    if cfg.get("init_checkpoint"):
        path = Path(cfg["init_checkpoint"])
        if not path.is_file() or sha256_file(path) != cfg.get("init_sha256"):
            raise TrainerError(f"{run}: its init {path} is gone or changed since the run (sha256 differs from "
                               f"config.json's init_sha256)")
        state, init_info = read_init(str(path))
        load_init(init, state, init_info, bool(cfg.get("allow_partial_init")))
        info["init"] = {"checkpoint": str(path), "sha256": cfg["init_sha256"]}
    else:
        _check_scratch(run, init)
        info["init"] = {"scratch_seed": seed}
        info["random"] = {"seed": seed, "same_as": "init"}
    best = run / "checkpoints" / "best.pt"
    final = build_encoder(model)
    final.load_state_dict(load_checkpoint(best)["encoder"])
    info["final"] = {"checkpoint": str(best), "sha256": sha256_file(best)}
    encoders = {"init": init, "final": final}
    if "same_as" not in info["random"]:
        encoders["random"] = _seeded_encoder(model, seed)
    return {k: e.eval() for k, e in encoders.items()}, info


def _check_scratch(run: Path, init: torch.nn.Module) -> None:
    """A scratch init is rebuilt from the seed; first_layers.npz (when there) says whether that gave its weights."""
    path = run / "first_layers.npz"
    if not path.is_file():
        return
    with np.load(path) as saved:
        if "init/conv1.weight" in saved.files and not np.array_equal(
                saved["init/conv1.weight"], init.conv1.weight.detach().numpy()):
            raise TrainerError(f"{run}: rebuilding its scratch init from seed gives other weights than "
                               f"first_layers.npz holds; the init cannot be recovered")


def probe_split(probe: Path | str, split: str, cfg: dict, images: int, seed: int) -> tuple[LabelledSplit, np.ndarray]:
    """The probe split read as the run's evaluation reads it, and the seeded sample of its sample ids."""
    dataset = open_dataset(probe)
    roles = {spec.role for spec in dataset.members.values()}
    kind = next((k for role, k in ROLES if role in roles), None)
    if kind is None:
        raise TrainerError(f"{probe}: no member with role mask, labels or label to read images by")
    options = ImageOptions(int(cfg["image_size"]), cfg.get("normalize", "minmax"),
                           tuple(cfg.get("window", (-1024.0, 3072.0))))
    data = LabelledSplit(dataset, split, kind, options)
    if len(data) == 0:
        raise TrainerError(f"{probe} has no {split} samples to probe with")
    n = min(images, len(data))
    ids = np.sort(np.random.default_rng([seed, 0]).choice(len(data), n, replace=False))
    return data, ids


def sampling(shapes: dict[str, tuple[int, int, int]], n: int, points: int, channels: int, repeats: int,
             seed: int) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(layer, repeat) -> (sorted flat positions image*h*w + y*w + x, sorted channels), from (seed, layer, repeat)."""
    out = {}
    for li, layer in enumerate(LAYERS):
        c, h, w = shapes[layer]
        for r in range(repeats):
            rng = np.random.default_rng([seed, 1, li, r])
            flat = np.sort(rng.choice(n * h * w, min(points, n * h * w), replace=False))
            out[(layer, r)] = flat, np.sort(rng.choice(c, min(channels, c), replace=False))
    return out


@torch.no_grad()
def _collect(encoders, data, ids, plan, shapes, device, batch_size, progress) -> dict[str, np.ndarray]:
    """'{model}/{layer}/{repeat}' -> (points, channels) float16 activations at the planned positions."""
    out = {f"{m}/{layer}/{r}": np.empty((len(flat), len(ch)), np.float16)
           for m in encoders for (layer, r), (flat, ch) in plan.items()}
    moved = {m: e.to(device) for m, e in encoders.items()}
    batches = range(0, len(ids), batch_size)
    for done, start in enumerate(batches, 1):
        stop = min(start + batch_size, len(ids))
        x = torch.stack([data[(int(i), 0)][0] for i in ids[start:stop]]).to(device)
        for m, encoder in moved.items():
            stages = dict(zip(LAYERS, encoder.forward_stages(x)))
            for (layer, r), (flat, ch) in plan.items():
                _, h, w = shapes[layer]
                lo, hi = np.searchsorted(flat, [start * h * w, stop * h * w])
                img, rest = np.divmod(flat[lo:hi] - start * h * w, h * w)
                y, xx = np.divmod(rest, w)
                index = [torch.as_tensor(a, device=device)[:, None] for a in (img, y, xx)]
                # one gather of (points, channels): no copy of whole maps
                rows = stages[layer][index[0], torch.as_tensor(ch, device=device)[None, :], index[1], index[2]]
                out[f"{m}/{layer}/{r}"][lo:hi] = rows.float().cpu().numpy()
        progress(Tick("features", done, len(batches), "batches"))
    return out


def extract_features(run: Path | str, probe: Path | str, split: str = "test", images: int = 320,
                     points: int = 20_000, channels: int = 64, repeats: int = 5, seed: int = 0,
                     device: str = "cpu", batch_size: int = 32, progress: Progress = silent) -> Path:
    """Write RUN/features.npz (see the module docstring); returns its path."""
    for name, value in (("images", images), ("points", points), ("channels", channels), ("repeats", repeats),
                        ("batch_size", batch_size)):
        if value < 1:
            raise TrainerError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    run = Path(run)
    cfg = run_config(run)
    encoders, info = run_encoders(run, cfg)
    data, ids = probe_split(probe, split, cfg, images, seed)
    with torch.no_grad():
        first = encoders["final"].forward_stages(data[(int(ids[0]), 0)][0][None])
    shapes = {layer: tuple(int(s) for s in t.shape[1:]) for layer, t in zip(LAYERS, first)}
    plan = sampling(shapes, len(ids), points, channels, repeats, seed)
    arrays = _collect(encoders, data, ids, plan, shapes, torch.device(device), batch_size, progress)
    keys = [str(data.keys[i]) for i in ids]
    sample = {"seed": seed, "points": points, "channels": channels, "repeats": repeats,
              "keys_sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest(), "images": len(ids),
              "shapes": {k: list(v) for k, v in shapes.items()}, "image_size": int(cfg["image_size"]),
              "normalize": cfg.get("normalize", "minmax"), "window": list(cfg.get("window", (-1024.0, 3072.0)))}
    meta = {"format": FORMAT, "version": VERSION, "tool_version": tool_version(), "layers": list(LAYERS),
            "probe": {"data": str(Path(probe).resolve()), "split": split, "keys": keys}, "sampling": sample,
            "probe_id": hashlib.sha256(json.dumps(sample, sort_keys=True).encode()).hexdigest(), "models": info}
    for (layer, r), (flat, ch) in plan.items():
        arrays[f"points/{layer}/{r}"], arrays[f"channels/{layer}/{r}"] = flat.astype(np.int64), ch.astype(np.int32)
    path = run / FILE
    with atomic_write(path) as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return path
