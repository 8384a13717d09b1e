"""Downstream fine-tuning and linear evaluation: one task x init x setting x fraction x seed per run.

    torchrun --nproc_per_node 8 -m trainer.finetune --task radnet --data radnet/ \\
        --init runs/pretrain/radnet-1.28M/checkpoints/last.pt --init-name radnet-1.28M \\
        --setting linear --fraction 0.01 --seed 2 --out runs/
    python -m trainer.finetune --task lits --data lits/ --init scratch --device cpu \\
        --model resnet-tiny --image-size 64 --epochs 2 --batch-size 8     # CPU, tiny
    from trainer.finetune import main; main(["--task", "radnet", ...])      # in-process (tlx demo)

The run directory (docs/run-format.md) is <out>/<task>/<init-name>/<setting>/frac-<f>/seed-<n>/
unless --run-dir says otherwise; it gets config.json, subset.parquet, metrics.jsonl,
checkpoints/{last,best}.pt, and at the end result.json, predictions.parquet and
first_layers.npz. A run whose result.json exists is complete and is not run again; one
with checkpoints/last.pt continues from it (kill + rerun = one uninterrupted run).

What happens, top to bottom:
1. the task's defaults (trainer/tasks.py, the paper's Table ST4) for this fraction,
   overridden by every flag given;
2. the init: scratch, a torchvision-layout state dict or a tlx SimCLR checkpoint,
   loaded strictly (trainer/task_heads.py); the new head or U-Net decoder on top;
   `linear` freezes the encoder and keeps it in eval mode;
3. the training subset: a nested, stratified fraction of the train split
   (trainer/fractions.py), saved as subset.parquet;
4. fixed epochs (no early stopping): AdamW or LARS, lr x decay after every epoch,
   class-weighted loss; validation after every epoch, the best validation epoch's
   weights kept;
5. the test split with the best weights: result.json, predictions.parquet, and the
   first three conv layers before and after (first_layers.npz) for feature reuse.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from trainer import metrics as M
from trainer.checkpoint import gather_rng_states, load_checkpoint, new_checkpoint, restore_rng_states, save_checkpoint
from trainer.config import check_at_least, config_dict, opt, parse_config, save_json, tool_version
from datakit.read import open_dataset
from trainer.data.labelled import DaliJpegDecoder, ImageOptions, LabelledSplit, batches
from trainer.data.sharding import epoch_plan, eval_slice, per_rank_batch, steps_per_epoch
from trainer.dist import (Dist, all_reduce_mean, broadcast_buffers, close_dist, gather_floats, init_dist,
                          is_distributed, print0, rank_share)
from trainer.errors import TrainerError, exit_on_user_error
from trainer.fractions import fraction_order
from trainer.models import build_encoder
from trainer.optim import LARS, Schedule, lars_param_groups, set_lr
from trainer.runlog import RunLog
from trainer.task_heads import TaskModel, load_init, read_init, task_loss
from trainer.tasks import (AUGMENTS, HYPERPARAMETERS, OPTIMIZERS, SETTINGS, Task, get_task, parse_class_weights,
                           resolve_class_weights, run_dir)

FIRST_LAYERS = ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight")
# Flags that may change between a run and its resumption (they do not change the result).
VOLATILE = ("max_steps", "workers", "device", "checkpoint_every", "resume", "eval_batch_size", "out", "run_dir")


@dataclass
class FinetuneConfig:
    task: str = opt(None, "task name (trainer/tasks.py) or one of --tasks-file", required=True)
    data: str = opt(None, "dataset folder (manifest.json inside) of a kind the task reads", required=True)
    init: str = opt("scratch", "scratch | a torchvision-layout ResNet state dict file | a tlx checkpoint")
    init_name: str | None = opt(None, "name of the init in run directories and tables "
                                      "[default: scratch, else the checkpoint's run folder or file stem]")
    setting: str = opt("finetune", "finetune: everything trains; linear: the encoder is frozen", choices=SETTINGS)
    fraction: float = opt(1.0, "fraction of the training split used (nested, stratified)")
    seed: int = opt(0, "seed of the subset, the head's initialisation and the data order")
    out: str = opt("runs", "root of the run directories")
    run_dir: str | None = opt(None, "this run's directory [default: <out>/<task>/<init-name>/<setting>/frac-<f>/seed-<n>]")
    model: str | None = opt(None, "encoder [default: the init checkpoint's model, else resnet50]")
    image_size: int | None = opt(None, "input size [default: the dataset's stored size; 224 for JPEG datasets]")
    epochs: int | None = opt(None, "epochs [default: the task's]")
    max_steps: int | None = opt(None, "stop after this many optimizer steps in all (tests, demos); "
                                      "the lr schedule still follows --epochs")
    batch_size: int | None = opt(None, "global batch size [default: the task's for this fraction]")
    lr: float | None = opt(None, "learning rate [default: the task's for this fraction]")
    optimizer: str | None = opt(None, f"one of {', '.join(OPTIMIZERS)} [default: the task's for this fraction]")
    weight_decay: float | None = opt(None, "weight decay (not on biases and norm parameters) [default: the task's]")
    decay: float | None = opt(None, "lr multiplied by this after every epoch [default: the task's]")
    momentum: float = opt(0.9, "LARS momentum")
    class_weights: str | None = opt(None, "loss weights: by position (1,3,10) or by name (background=1,*=5)")
    augment: str | None = opt(None, f"one of {', '.join(AUGMENTS)} [default: the task's]")
    decoder_channels: str | None = opt(None, "U-Net decoder widths, 5 comma-separated [default: scaled from the encoder]")
    normalize: str | None = opt(None, "int16/float pixels to [0, 1]: per-slice minmax or a fixed HU window "
                                      "[default: what a tlx init checkpoint was pretrained with, else minmax]",
                                choices=("minmax", "hu"))
    window: tuple[float, float] | None = opt(None, "HU window for --normalize hu [default: the init "
                                                   "checkpoint's, else -1024 3072]")
    allow_partial_init: bool = opt(False, "load an init that lacks keys or has extra ones (listed in config.json)")
    resume: str = opt("auto", "auto: continue from checkpoints/last.pt when present; never: refuse a started run",
                      choices=("auto", "never"))
    checkpoint_every: int = opt(0, "also save checkpoints/last.pt every N steps (0: at the end of each epoch only)")
    eval_batch_size: int | None = opt(None, "per-rank batch size for val/test [default: the per-rank training batch]")
    workers: int = opt(4, "data loading processes per rank (0: in the main process)")
    loader: str = opt("auto", "JPEG datasets: dali (nvJPEG on the GPU; DALI's CPU mode with --device cpu), "
                              "torch (PIL in the workers); auto: dali on a GPU when installed",
                      choices=("auto", "torch", "dali"))
    device: str = opt("auto", "auto | cuda | cpu", choices=("auto", "cuda", "cpu"))
    tasks_file: str | None = opt(None, "TOML file with more task entries ([tasks.<name>])")


def main(argv: list[str] | None = None) -> dict | None:
    """Parse flags and run; returns result.json's content (on rank 0; None elsewhere)."""
    cfg = parse_config(FinetuneConfig, argv, description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1])
    env = init_dist(cfg.device)
    try:
        return run(cfg, env)
    finally:
        close_dist(env)


# ---------------------------------------------------------------------------------------------
# Setup: everything that is decided before the first step, written to config.json.

@dataclass
class Plan:
    """The resolved run: what config.json records besides the flags."""
    task: Task
    hp: dict
    init_name: str
    model: str
    image_size: int
    augment: str
    class_weights: list[float]
    regions: dict[str, tuple[int, ...]]
    normalize: str
    window: tuple[float, float]


def default_init_name(init: str) -> str:
    """scratch -> scratch; runs/pretrain/<name>/checkpoints/last.pt -> <name>; weights/x.pth -> x."""
    if init == "scratch":
        return "scratch"
    p = Path(init)
    return p.parent.parent.name if p.parent.name == "checkpoints" and p.parent.parent.name else p.stem


def resolve(cfg: FinetuneConfig, task: Task, dataset, init_model: str | None, pretrain: dict | None) -> Plan:
    hp = task.hyperparameters(cfg.fraction)
    for key in HYPERPARAMETERS:
        if getattr(cfg, key) is not None:
            hp[key] = getattr(cfg, key)
    if hp["optimizer"] not in OPTIMIZERS:
        raise TrainerError(f"--optimizer {hp['optimizer']!r} is not one of: {', '.join(OPTIMIZERS)}")
    if hp["epochs"] < 1 or hp["batch_size"] < 1 or hp["lr"] <= 0 or not 0 < hp["decay"] <= 1:
        raise TrainerError(f"need --epochs >= 1, --batch-size >= 1, --lr > 0 and 0 < --decay <= 1; got "
                           f"{hp['epochs']}, {hp['batch_size']}, {hp['lr']}, {hp['decay']}")
    if cfg.model and init_model and cfg.model != init_model:
        raise TrainerError(f"--model {cfg.model} but the init checkpoint holds a {init_model}; drop --model")
    augment = cfg.augment or task.augment
    if augment not in AUGMENTS or (task.kind == "segmentation" and augment == "crop-flip"):
        raise TrainerError(f"--augment {augment!r} is not one of: {', '.join(AUGMENTS)} "
                           f"(segmentation: none, flip)")
    _, image_spec = dataset.member("image")
    image_size = cfg.image_size or (image_spec.shape[-1] if image_spec.shape else 224)
    classes = dataset.classes
    weights = resolve_class_weights(parse_class_weights(cfg.class_weights) if cfg.class_weights
                                    else task.class_weights, classes, strict=cfg.class_weights is not None)
    regions = {}
    for name, members in task.regions.items():
        unknown = [m for m in members if m not in classes]
        if unknown:
            raise TrainerError(f"task {task.name} scores region {name} from classes {unknown} that the dataset lacks "
                               f"(its classes: {', '.join(classes)})")
        regions[name] = tuple(classes.index(m) for m in members)
    # An encoder should see pixels scaled as in its pretraining: a tlx checkpoint says how.
    pretrain = pretrain or {}
    normalize = cfg.normalize or pretrain.get("normalize") or "minmax"
    window = tuple(cfg.window or pretrain.get("window") or (-1024.0, 3072.0))
    return Plan(task, hp, cfg.init_name or default_init_name(cfg.init), cfg.model or init_model or "resnet50",
                image_size, augment, weights, regions, normalize, window)


def training_subset(split: LabelledSplit, task: Task, classes: list[str], fraction: float, seed: int):
    """Sample ids of the training subset and the subset.parquet table: key, its position in
    the seed's ordering (the 1% subset is positions < 1% of N), and its labels (class
    index, positive labels, or foreground classes shown)."""
    import pyarrow as pa

    meta = split.metadata()
    if task.kind == "classification":
        if "label_index" not in meta.column_names:
            raise TrainerError(f"{split.dataset.root}/slices.parquet has no label_index column to stratify by")
        labels = np.asarray(meta["label_index"].to_numpy(zero_copy_only=False), dtype=np.int64)
    elif task.kind == "multilabel":
        names = meta["labels"].to_pylist()
        labels = np.array([[c in row for c in classes] for row in names], dtype=bool).reshape(len(names), len(classes))
    else:  # segmentation: the foreground classes a slice shows
        labels = np.stack([meta[f"pixels_{c}"].to_numpy() > 0 for c in classes[1:]], axis=1)
    if labels.ndim == 1:
        order = fraction_order(split.keys, labels, seed, class_names=classes)
        label_lists = [[int(v)] for v in labels]
    else:
        names = classes if task.kind == "multilabel" else classes[1:]
        order = fraction_order(split.keys, labels, seed, class_names=names)
        label_lists = [[names[j] for j in np.flatnonzero(row)] for row in labels]
    ids = np.sort(order.take(fraction))
    position = np.empty(len(order.order), np.int64)
    position[order.order] = np.arange(len(order.order))
    table = pa.table({"key": [split.keys[i] for i in ids], "order": position[ids],
                      "labels": [[str(v) for v in label_lists[i]] for i in ids]})
    return ids, table


# ---------------------------------------------------------------------------------------------
# Evaluation: forward a split, gather every rank's records, compute the task's metrics.

@torch.no_grad()
def evaluate(model, split: LabelledSplit, plan: Plan, env: Dist, batch: int, workers: int,
             volumes: list[str] | None, jpeg_decoder=None) -> tuple[dict, dict]:
    """(metrics, predictions.parquet columns) over the whole split, identical on every rank."""
    model.eval()
    ids = eval_slice(len(split), env.rank, env.world_size)
    chunks = [ids[i:i + batch] for i in range(0, len(ids), batch)]
    kind = plan.task.kind
    seen, outputs, targets = [], [], []
    for x, y, i in batches(split, chunks, epoch=0, workers=workers, pin_memory=env.device.type == "cuda",
                           jpeg_decoder=jpeg_decoder):
        with _autocast(env):
            logits = model(_to_device(x, env)).float()
        if kind == "segmentation":  # per-slice overlap counts, not masks: small enough to gather
            outputs.append(M.dice_counts(logits.argmax(1).cpu().numpy(), y.numpy(), logits.shape[1],
                                         tuple(plan.regions.values())))
        else:
            outputs.append((torch.softmax(logits, 1) if kind == "classification" else torch.sigmoid(logits)).cpu().numpy())
            targets.append(y.numpy())
        seen.append(i.numpy())
    parts = [(seen, outputs, targets)]
    if is_distributed():
        parts = [None] * env.world_size
        dist.all_gather_object(parts, (seen, outputs, targets))
    sid = np.concatenate([a for p in parts for a in p[0]])
    out = np.concatenate([a for p in parts for a in p[1]])
    keys = [split.keys[i] for i in sid]
    classes = split.dataset.classes
    if kind == "segmentation":
        return M.segmentation_results(out, keys, [volumes[i] for i in sid], classes + list(plan.regions))
    target = np.concatenate([a for p in parts for a in p[2]])
    if kind == "classification":
        return M.classification_results(out, target, keys)
    return M.multilabel_results(out, target, keys, classes, plan.task.exclude_from_mean)


def _to_device(x: torch.Tensor, env: Dist) -> torch.Tensor:
    x = x.to(env.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if env.device.type == "cuda" else x


def _autocast(env: Dist):
    # bf16 on GPUs (no loss scaling needed); CPU runs stay float32, which makes them reproducible.
    return torch.autocast("cuda", dtype=torch.bfloat16) if env.device.type == "cuda" else torch.autocast("cpu", enabled=False)


def _json_safe(metrics: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------
# The run.

def run(cfg: FinetuneConfig, env: Dist) -> dict | None:
    check_at_least(cfg, {"epochs": 1, "max_steps": 1, "batch_size": 1, "image_size": 1, "checkpoint_every": 0,
                         "eval_batch_size": 1, "workers": 0})
    task = get_task(cfg.task, cfg.tasks_file)
    dataset = open_dataset(cfg.data)
    if dataset.kind not in task.data_kinds:
        raise TrainerError(f"--task {task.name} trains on datasets of kind {', '.join(task.data_kinds)}; "
                           f"{cfg.data} is of kind {dataset.kind!r}")
    state, init_info = read_init(cfg.init)
    plan = resolve(cfg, task, dataset, init_info.model_name, init_info.pretrain_config)
    out = Path(cfg.run_dir) if cfg.run_dir else run_dir(cfg.out, task.name, plan.init_name, cfg.setting,
                                                         cfg.fraction, cfg.seed)
    if (out / "result.json").exists():
        print0(f"{out}: complete (result.json present); not run again")
        return json.loads((out / "result.json").read_text()) if env.is_main else None
    last = out / "checkpoints" / "last.pt"
    if last.exists() and cfg.resume == "never":
        raise TrainerError(f"{out} holds a started run (checkpoints/last.pt); use --resume auto or another --run-dir")

    # Model: encoder with its init, a new head; the first layers as initialised, for CKA.
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(plan.model)
    load_init(encoder, state, init_info, cfg.allow_partial_init)
    first_init = {f"init/{k}": v.detach().cpu().numpy().copy() for k, v in encoder.state_dict().items() if k in FIRST_LAYERS}
    decoder_channels = tuple(int(c) for c in cfg.decoder_channels.split(",")) if cfg.decoder_channels else None
    model = TaskModel(encoder, task.kind, len(dataset.classes), frozen_encoder=cfg.setting == "linear",
                      decoder_channels=decoder_channels).to(env.device)
    if env.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda"
                                                    else None) if is_distributed() else model

    # Data: the nested, stratified subset of the train split; val and test whole.
    images = ImageOptions(plan.image_size, plan.normalize, plan.window, plan.augment, cfg.seed)
    train = LabelledSplit(dataset, "train", task.kind, images, train=True)
    val = LabelledSplit(dataset, "val", task.kind, images)
    test = LabelledSplit(dataset, "test", task.kind, images)
    for name, split in (("train", train), ("val", val), ("test", test)):
        if len(split) == 0:
            raise TrainerError(f"{cfg.data} has no {name} samples; fine-tuning needs train, val and test splits")
    subset, subset_table = training_subset(train, task, dataset.classes, cfg.fraction, cfg.seed)
    hp = plan.hp
    per_rank = per_rank_batch(hp["batch_size"], env.world_size)
    steps = steps_per_epoch(subset, hp["batch_size"])
    eval_batch = cfg.eval_batch_size or per_rank
    volumes = {name: (s.metadata()["volume"].to_pylist() if task.kind == "segmentation" else None)
               for name, s in (("val", val), ("test", test))}
    decoder = _jpeg_decoder(cfg.loader, train, env, plan.image_size, max(per_rank, eval_batch))

    params = lars_param_groups(model, hp["weight_decay"])   # no decay on biases and norm parameters
    if hp["optimizer"] == "lars":
        optimizer = LARS(params, lr=hp["lr"], momentum=cfg.momentum)
    else:
        optimizer = torch.optim.AdamW(params, lr=hp["lr"])
    schedule = Schedule("exp-epoch", base_lr=hp["lr"], epochs=hp["epochs"], steps_per_epoch=steps, decay=hp["decay"])
    weights = torch.tensor(plan.class_weights, dtype=torch.float32, device=env.device)

    config = {
        "task": task.name, "init": plan.init_name, "setting": cfg.setting, "fraction": cfg.fraction,
        "seed": cfg.seed, "world_size": env.world_size, "tool_version": tool_version(), "data": cfg.data,
        "data_kind": dataset.kind, "data_train_samples": len(train), "subset_samples": len(subset),
        "init_checkpoint": init_info.checkpoint, "init_sha256": init_info.sha256, "init_source": init_info.source,
        "init_dropped": init_info.dropped, "init_missing": init_info.missing,
        "init_unexpected": init_info.unexpected, "init_mismatched": init_info.mismatched,
        "model": plan.model, "kind": task.kind, "metric": task.metric, "classes": dataset.classes,
        **hp, "steps_per_epoch": steps, "class_weights": plan.class_weights, "augment": plan.augment,
        "image_size": plan.image_size, "normalize": plan.normalize, "window": list(plan.window),
        "regions": {k: list(v) for k, v in plan.regions.items()},
        "encoder_frozen": cfg.setting == "linear",
        "trains": ("decoder" if task.kind == "segmentation" else "head") if cfg.setting == "linear"
        else "encoder and " + ("decoder" if task.kind == "segmentation" else "head"),
        "encoder_bn": "eval (statistics frozen)" if cfg.setting == "linear" else "train",
        "args": config_dict(cfg),
    }

    # Resume: the saved state replaces what was just built.
    step, epoch, epoch_step, loss_sum, wall_before = 0, 0, 0, 0.0, 0.0
    best = {"metric": -math.inf, "epoch": 0, "state": None}
    if last.exists():
        ckpt = load_checkpoint(last, map_location="cpu")
        _check_same_run(ckpt["config"], config, last)
        model.encoder.load_state_dict(ckpt["encoder"])
        model.head_module().load_state_dict(ckpt["decoder" if task.kind == "segmentation" else "head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, epoch, epoch_step = ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]
        loss_sum = rank_share(ckpt.get("epoch_loss_sums"), ckpt["epoch_loss_sum"], env)  # each rank its own
        best = ckpt["best"]
        wall_before = ckpt.get("wall_s", 0.0)   # metrics' wall_s counts from the run's start, not this process's
        restore_rng_states(ckpt["rng"], env.rank)
        print0(f"{out}: resuming at epoch {epoch + 1}, step {step}")
    log = RunLog(out, enabled=env.is_main)
    log.write_config(config)
    log.resume_at(epochs_done=epoch, step=step)   # lines logged after the checkpoint are logged again
    if env.is_main:
        import pyarrow.parquet as pq
        pq.write_table(subset_table, out / "subset.parquet")

    def save_last(done_epoch: int, at_step: int, sums: float) -> None:
        rngs, all_sums = gather_rng_states(), gather_floats(sums)  # collectives; the ranks' loss sums differ
        if env.is_main:
            save_checkpoint(_checkpoint(model, plan, optimizer=optimizer.state_dict(), step=step, epoch=done_epoch,
                                        epoch_step=at_step, epoch_loss_sum=sums, epoch_loss_sums=all_sums, best=best,
                                        rng=rngs, config=config,
                                        wall_s=time.time() - start),
                            last)

    start = time.time() - wall_before
    max_steps = cfg.max_steps or math.inf
    while epoch < hp["epochs"] and step < max_steps:
        ddp.train()
        order = epoch_plan(subset, hp["batch_size"], seed=cfg.seed, epoch=epoch, rank=env.rank,
                           world_size=env.world_size).reshape(steps, per_rank)
        t_epoch, n_images = time.time(), 0
        loss_acc = torch.tensor(loss_sum, dtype=torch.float64, device=env.device)  # summed on the device: no sync per step
        for x, y, _ in batches(train, order[epoch_step:], epoch, cfg.workers, pin_memory=env.device.type == "cuda",
                               jpeg_decoder=decoder):
            set_lr(optimizer, schedule(step))
            x, y = _to_device(x, env), y.to(env.device, non_blocking=True)
            with _autocast(env):
                loss = task_loss(task.kind, ddp(x), y, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_acc += loss.detach()
            step, epoch_step, n_images = step + 1, epoch_step + 1, n_images + len(x)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and epoch_step < steps:
                save_last(epoch, epoch_step, float(loss_acc))
            if step >= max_steps:
                break
        train_loss = all_reduce_mean(float(loss_acc) / max(epoch_step, 1), env.device)
        broadcast_buffers(model)   # every rank evaluates, and keeps as best, the model rank 0 saves
        val_metrics, _ = evaluate(model, val, plan, env, eval_batch, cfg.workers, volumes["val"], decoder)
        epoch += 1
        score = val_metrics[task.metric]
        if not math.isnan(score) and score > best["metric"]:
            best = {"metric": score, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
            if env.is_main:
                save_checkpoint(_checkpoint(model, plan, epoch=epoch, metric=score, config=config),
                                out / "checkpoints" / "best.pt")
        line = {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in _json_safe(val_metrics).items()},
                "lr": schedule(step - 1), "images_per_s": n_images * env.world_size / max(time.time() - t_epoch, 1e-9),
                "wall_s": time.time() - start, "steps": step}
        log.epoch(line)
        print0(f"epoch {epoch}/{hp['epochs']}  loss {train_loss:.4f}  val {task.metric} {score:.4f}  "
               f"lr {line['lr']:.3g}  {line['images_per_s']:.0f} img/s")
        epoch_step, loss_sum = 0, 0.0
        save_last(epoch, 0, 0.0)

    # Test with the best validation epoch's weights.
    if best["epoch"] == 0:
        raise TrainerError(f"{out}: validation {task.metric} was undefined (NaN) in every epoch, so no best "
                           f"checkpoint exists; check the val split's labels")
    model.load_state_dict(best["state"])
    test_metrics, rows = evaluate(model, test, plan, env, eval_batch, cfg.workers, volumes["test"], decoder)
    if not env.is_main:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table(rows), out / "predictions.parquet")
    final = {f"final/{k}": v.detach().cpu().numpy() for k, v in model.encoder.state_dict().items() if k in FIRST_LAYERS}
    np.savez(out / "first_layers.npz", **first_init, **final)
    result = {"metrics": _json_safe(test_metrics), "metric": task.metric, "best_epoch": best["epoch"],
              "best_val": best["metric"], "epochs": epoch, "steps": step}
    save_json(result, out / "result.json")   # last: its presence marks the run complete
    print0(f"{out}: test {task.metric} {test_metrics[task.metric]:.4f} (best val epoch {best['epoch']})")
    return result


def _jpeg_decoder(loader: str, split: LabelledSplit, env: Dist, image_size: int, max_batch: int):
    """DALI for JPEG datasets when asked (or `auto` on a GPU with DALI installed), else None (PIL)."""
    if split.image_spec.codec != "jpeg":
        if loader == "dali":
            raise TrainerError(f"--loader dali decodes JPEG datasets; {split.dataset.root} stores "
                               f"{split.image_spec.codec} images (use --loader torch or auto)")
        return None
    if loader == "auto":
        import importlib.util
        loader = "dali" if env.device.type == "cuda" and importlib.util.find_spec("nvidia.dali") else "torch"
    return DaliJpegDecoder(image_size, max_batch, env.device) if loader == "dali" else None


def _checkpoint(model: TaskModel, plan: Plan, **entries) -> dict:
    part = "decoder" if plan.task.kind == "segmentation" else "head"
    return new_checkpoint(plan.model, model.encoder.state_dict(), **{part: model.head_module().state_dict()}, **entries)


def _check_same_run(saved: dict, now: dict, path: Path) -> None:
    """A checkpoint resumes only the run that wrote it (volatile flags such as --max-steps may differ)."""
    # the number of ranks may change (each global batch holds the same samples however it is split)
    a = {k: v for k, v in saved.items() if k not in ("args", "tool_version", "world_size")}
    b = {k: v for k, v in now.items() if k not in ("args", "tool_version", "world_size")}
    a_args = {k: v for k, v in saved["args"].items() if k not in VOLATILE}
    b_args = {k: v for k, v in now["args"].items() if k not in VOLATILE}
    diff = sorted({k for k in a | b if a.get(k) != b.get(k)} | {k for k in a_args | b_args if a_args.get(k) != b_args.get(k)})
    if diff:
        raise TrainerError(f"{path} belongs to a run with other settings ({', '.join(diff)} differ); "
                           f"use another --run-dir, or remove the old run")


if __name__ == "__main__":
    exit_on_user_error(main)
