"""Downstream fine-tuning and linear evaluation: one task x init x setting x fraction x seed per run.

    torchrun --nproc_per_node 8 -m trainer.finetune --task radnet --data radnet/ \\
        --init runs/pretrain/radnet-1.28M/checkpoints/last.pt --init-name radnet-1.28M \\
        --setting linear --fraction 0.01 --seed 2 --out runs/
    python -m trainer.finetune --task lits --data lits/ --init scratch --device cpu \\
        --model resnet-tiny --image-size 64 --epochs 2 --batch-size 8     # CPU, tiny
    from trainer.finetune import main; main(["--task", "radnet", ...])      # in-process (tlx demo)

The run directory (docs/run-format.md) is <out>/<task>/<init-name>/<setting>/frac-<f>/seed-<n>/
unless --run-dir says otherwise; it gets config.json, subset.parquet, metrics.jsonl,
steps.jsonl (trainer/runlog.py, as SimCLR runs), checkpoints/{last,best}.pt, and at the
end result.json, predictions.parquet, first_layers.npz and, for segmentation with
--save-masks, masks.npz (every test slice's predicted and true classes). A run whose result.json exists
is complete and is not run again (with other options than its config.json's it is refused, naming
them: trainer/run_identity.py); one with checkpoints/last.pt continues from it
(`--resume auto`; kill + rerun = one uninterrupted run), which is saved at every epoch's
end and every `--checkpoint-every` steps (trainer/checkpoint.py).

What happens, top to bottom (`run`: build, resume, loop, test, write):
1. the task's defaults (trainer/tasks.py, the paper's Table ST4) for this fraction,
   overridden by every flag given;
2. the init: scratch, a torchvision-layout state dict or a tlx SimCLR checkpoint,
   loaded strictly (trainer/task_heads.py); the new head or U-Net decoder on top
   (--decoder: the study's backboned-unet by default, or smp-unet);
   `linear` freezes the encoder and keeps it in eval mode;
3. the training subset: a nested, stratified fraction of the train split
   (trainer/fractions.py), saved as subset.parquet;
4. fixed epochs (no early stopping): AdamW or LARS (--lars-form: the lr inside the
   momentum buffer by default, as the study), lr x decay after every epoch,
   class-weighted loss; validation after every epoch, the best validation epoch's
   weights kept;
   (or SGD with the issue-19 recipe: --schedule bit-hyperrule, --agc, --mixup, --randaugment,
   --label-smoothing, --zero-init-head; trainer/recipe.py, docs/bit.md);
5. the test split with the best weights: result.json, predictions.parquet, and the
   first three conv layers before and after (first_layers.npz) for feature reuse.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from datakit.read import TlxDataset, open_dataset
from tlxcore.atomic import atomic_write, write_json_atomic
from tlxcore.progress import Progress, drawn, silent
from trainer import metrics as M
from trainer.checkpoint import (
    OLD_SPELLINGS,
    check_complete_run,
    check_same_run,
    checkpoint_due,
    checkpoint_every_flag,
    find_resume_point,
    new_checkpoint,
    restore_rng_states,
    resume_flag,
    resumed_loss_sum,
    save_checkpoint,
    save_resume_point,
)
from trainer.config import check_at_least, opt, parse_config, run_config
from trainer.data.labelled import DaliJpegDecoder, ImageOptions, LabelledSplit, batches
from trainer.data.sharding import epoch_plan, eval_slice, per_rank_batch, steps_per_epoch
from trainer.dist import (
    Dist,
    all_reduce_mean,
    broadcast_buffers,
    close_dist,
    init_dist,
    is_distributed,
    loader_workers,
    workers_flag,
)
from trainer.errors import TrainerError, exit_on_user_error
from trainer.fractions import fraction_order
from trainer.models import build_encoder
from trainer.models.unet import DECODERS
from trainer.optim import LARS_FORMS, Schedule, build_optimizer, lars_param_groups, set_lr
from trainer.precision import Precision
from trainer.recipe import (
    HYPERRULE,
    RECIPES,
    Recipe,
    check_recipe_flags,
    clip_gradients,
    hyperrule_epochs,
    hyperrule_hp,
    mix_rng,
    parse_randaugment,
    resolve_recipe,
    training_loss,
    zero_head_,
)
from trainer.run_guard import RunGuard
from trainer.run_identity import FINETUNE_MAY_CHANGE, MAY_CHANGE, set_flags
from trainer.runlog import RunLog, log_every_flag
from trainer.selection import Watch, loss_sums, plateau_step
from trainer.split_health import class_gaps
from trainer.subsets import patient_folds, shot_subset
from trainer.task_heads import InitInfo, TaskModel, load_init, read_init, task_loss
from trainer.tasks import (
    AUGMENTS,
    HYPERPARAMETERS,
    OPTIMIZERS,
    SEG_LOSSES,
    SETTINGS,
    WEIGHT_DECAY_PRESETS,
    Task,
    default_weight_decay,
    get_task,
    parse_class_weights,
    resolve_class_weights,
    run_dir,
)

# --schedule -> trainer.optim.Schedule's kind (plateau: constant, times the plateau's scale)
FT_SCHEDULES = {"exponential": "exp-epoch", "constant": "constant", "step": "step",
                "warmup-cosine": "warmup-cosine", "plateau": "constant"}
# first_layers.npz's keys: the first three convolutions in forward order, named as in torchvision's ResNet
# (docs/run-format.md); BiT ResNet-v2 models store theirs under the same keys, their own names in `layer_names`
FIRST_LAYERS = ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight")
BIT_FIRST_LAYERS = ("root.conv.weight", "body.block1.unit01.conv1.weight", "body.block1.unit01.conv2.weight")
# config.json keys that may change between a run and its resumption besides trainer.checkpoint.MAY_CHANGE
# (they do not change the result; any other difference is refused): FINETUNE_MAY_CHANGE, in
# trainer/run_identity.py, where `tlx sweep` reads it without torch.


@dataclass
class FinetuneConfig:
    task: str = opt(None, "task name (trainer/tasks.py) or one of --tasks-file", required=True)
    data: str = opt(None, "dataset folder (manifest.json inside) of a kind the task reads", required=True)
    init: str = opt("scratch", "scratch | a ResNet state dict file (torchvision, timm, MoCo, BYOL, module./backbone./"
                               "encoder./model. layouts: trainer/weight_layouts.py) | a tlx checkpoint")
    init_name: str | None = opt(None, "name of the init in run directories and tables "
                                      "[default: scratch, else the checkpoint's run folder or file stem]")
    setting: str = opt("finetune", "finetune: everything trains; linear: the encoder is frozen; lp-ft: frozen for "
                                   "--lp-epochs, then everything trains (the head kept)", choices=SETTINGS)
    fraction: float = opt(1.0, "fraction of the training split used (nested, stratified)")
    shots: int | None = opt(None, "K training examples per class instead of a fraction (nested over K for a seed; "
                                  "multi-label: at least K per label, docs/finetune.md)")
    folds: int | None = opt(None, "K-fold cross-validation of the train split, patient-grouped and stratified: "
                                  "fold --fold is the test set, the other folds train (val stays the val split)")
    fold: int | None = opt(None, "--folds: the held-out fold, 0..K-1")
    seed: int = opt(0, "seed of the subset, the head's initialisation and the data order")
    out: str = opt("runs", "root of the run directories")
    run_dir: str | None = opt(None, "this run's directory "
                                    "[default: <out>/<task>/<init-name>/<setting>/frac-<f>/seed-<n>]")
    model: str | None = opt(None, "encoder [default: the init checkpoint's model, or the model a state dict's keys "
                                  "fit, else resnet50]")
    image_size: int | None = opt(None, "input size [default: a tlx init checkpoint's pretraining view size, else the "
                                       "dataset's stored size; 224 for JPEG datasets]")
    epochs: int | None = opt(None, "epochs [default: the task's]")
    max_steps: int | None = opt(None, "stop after this many optimizer steps in all (tests, demos); "
                                      "the lr schedule still follows --epochs")
    batch_size: int | None = opt(None, "global batch size [default: the task's for this fraction]")
    lr: float | None = opt(None, "learning rate [default: the task's for this fraction]")
    optimizer: str | None = opt(None, f"one of {', '.join(OPTIMIZERS)} [default: the task's for this fraction]")
    weight_decay: float | None = opt(None, "weight decay (not on biases and norm parameters) [default: the task's, "
                                           "else --weight-decay-preset's]")
    weight_decay_preset: str = opt("study", "weight decay where neither the task nor --weight-decay sets one: "
                                            "study (the study's configs where they give one for the task and "
                                            "optimizer, e.g. "
                                            "AdamW 1e-6 for lits, else tlx's) or tlx (AdamW 1e-2, LARS 1e-6, SGD and "
                                            "Adam 0)", choices=WEIGHT_DECAY_PRESETS)
    decay: float | None = opt(None, "lr multiplied by this after every epoch [default: the task's]")
    momentum: float = opt(0.9, "LARS and SGD momentum")
    nesterov: bool = opt(False, "SGD: Nesterov momentum")
    schedule: str = opt("exponential", "lr schedule: exponential (x --decay after every epoch, the study's), "
                                       "constant, step (x --decay every --step-epochs), warmup-cosine "
                                       "(--warmup-epochs, then cosine to 0), plateau (x --decay after more than "
                                       "--plateau-patience epochs without a better selection value), bit-hyperrule "
                                       "(BiT's: steps by training-set size, warmup, /10 staircase, SGD, no weight "
                                       "decay, zero head, MixUp 0.1 from 20k examples; sets the epochs itself)",
                        choices=(*FT_SCHEDULES, HYPERRULE))
    hyperrule_recipe: str | None = opt(None, "--schedule bit-hyperrule: lr and batch of the rule, bit (0.003 at "
                                             "512, as published) or cherti-jitsev (0.001 at 128) [default: bit]",
                                       choices=tuple(RECIPES))
    step_epochs: int = opt(30, "step schedule: epochs between lr drops")
    warmup_epochs: float = opt(0.0, "warmup-cosine schedule: epochs of linear warmup")
    plateau_patience: int = opt(10, "plateau schedule: epochs without a better value before the lr drops")
    early_stop: str | None = opt(None, "METRIC:PATIENCE: stop after PATIENCE epochs without a better val METRIC (loss, "
                                       "or a task metric), and test METRIC's best epoch [default: every epoch runs, "
                                       "the task metric picks the best]")
    lp_epochs: int | None = opt(None, "lp-ft: epochs of the linear phase [default: half of --epochs]")
    head_dropout: float = opt(0.0, "dropout before the linear head (classification and multilabel)")
    zero_init_head: bool = opt(False, "zero-initialise the linear head, as BiT (classification and multilabel; "
                                      "--schedule bit-hyperrule implies it)")
    agc: float | None = opt(None, "adaptive gradient clipping factor (NFNets' AGC, unit-wise, the head left out) "
                                  "[default: none]")
    mixup: float | None = opt(None, "MixUp alpha, one Beta(alpha, alpha) lambda per batch (classification and "
                                    "multilabel) [default: bit-hyperrule's, else 0: none]")
    randaugment: str | None = opt(None, "N,M: RandAugment with N ops per training image at magnitude M (0..30) "
                                        "(classification and multilabel) [default: none]")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy (single-label classification)")
    checkpoint_activations: bool = opt(False, "recompute each stage's activations in the backward pass (less "
                                              "memory; GroupNorm bit-* models only)")
    compile: bool = opt(False, "torch.compile the training forward and backward (validation and test run eager)")
    bf16: bool = opt(True, "bf16 autocast on GPU (losses and metrics in float32; CPU runs are float32)")
    channels_last: bool = opt(True, "channels_last memory format on GPU")
    lars_form: str = opt("study-code", "where LARS applies the lr: study-code (inside the momentum buffer, as "
                                       "TF-SimCLR and the study) or lr-outside (tlx before; torch SGD's)",
                         choices=LARS_FORMS)
    class_weights: str | None = opt(None, "loss weights: by position (1,3,10) or by name (background=1,*=5)")
    augment: str | None = opt(None, f"one of {', '.join(AUGMENTS)} [default: the task's]")
    decoder: str = opt("backboned-unet", "segmentation: the study's U-Net decoder (backboned-unet: transposed "
                                         "convolutions) or tlx's earlier one (smp-unet: nearest upsampling)",
                       choices=DECODERS)
    decoder_channels: str | None = opt(None, "U-Net decoder widths, 5 comma-separated "
                                             "[default: scaled from the encoder]")
    seg_loss: str | None = opt(None, "segmentation loss: ce (class-weighted cross-entropy), dice (soft Dice) or "
                                     "dice+ce [default: the task's]", choices=SEG_LOSSES)
    save_masks: bool = opt(False, "segmentation: also write masks.npz, every test slice's predicted and true class "
                                  "per pixel (pixel maps in tlx analyze)")
    normalize: str | None = opt(None, "int16/float pixels to [0, 1]: per-slice minmax or a fixed HU window "
                                      "[default: what a tlx init checkpoint was pretrained with, else minmax]",
                                choices=("minmax", "hu"))
    window: tuple[float, float] | None = opt(None, "HU window for --normalize hu [default: the init "
                                                   "checkpoint's, else -1024 3072]")
    allow_partial_init: bool = opt(False, "load an init that lacks keys or has extra ones (listed in config.json)")
    resume: str = resume_flag()
    checkpoint_every: int = checkpoint_every_flag()
    log_every: int = log_every_flag()
    eval_batch_size: int | None = opt(None, "per-rank batch size for val/test [default: the per-rank training batch]")
    workers: int | None = workers_flag()
    loader: str = opt("auto", "JPEG datasets: dali (nvJPEG on the GPU; DALI's CPU mode with --device cpu), "
                              "torch (PIL in the workers); auto: dali on a GPU when installed",
                      choices=("auto", "torch", "dali"))
    device: str = opt("auto", "auto | cuda | cpu", choices=("auto", "cuda", "cpu"))
    tasks_file: str | None = opt(None, "TOML file with more task entries ([tasks.<name>])")


def main(argv: list[str] | None = None) -> dict | None:
    """Parse flags and run; returns result.json's content (on rank 0; None elsewhere)."""
    cfg = parse_config(FinetuneConfig, argv, description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1], old_spellings=OLD_SPELLINGS)
    env = init_dist(cfg.device)
    try:
        with drawn(enabled=env.is_main) as progress, RunGuard(env, "trainer.finetune") as guard:
            return run(cfg, env, progress, guard)
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
    seg_loss: str = "ce"
    weight_decay_from: str = "task"    # --weight-decay, task, study (its configs) or tlx (tlx's default)
    watch: Watch = field(default_factory=lambda: Watch("accuracy"))   # picks the best epoch (and stops early)
    lp_epochs: int = 0                 # lp-ft: epochs with the encoder frozen


def check_subset_flags(cfg: FinetuneConfig) -> None:
    """--shots replaces --fraction; --folds and --fold come together, the fold in range."""
    if cfg.shots is not None and cfg.fraction != 1.0:
        raise TrainerError(f"--shots {cfg.shots} and --fraction {cfg.fraction} both choose the training subset; "
                           f"give one")
    if (cfg.folds is None) != (cfg.fold is None):
        raise TrainerError("--folds K and --fold i come together (fold i of K is the test set)")
    if cfg.folds is not None and cfg.folds < 2:
        raise TrainerError(f"--folds {cfg.folds} must be at least 2")
    if cfg.folds is not None and not 0 <= cfg.fold < cfg.folds:
        raise TrainerError(f"--fold {cfg.fold} is out of range for --folds {cfg.folds}: 0..{cfg.folds - 1}")


def default_init_name(init: str) -> str:
    """scratch -> scratch; runs/pretrain/<name>/checkpoints/last.pt -> <name>; weights/x.pth -> x."""
    if init == "scratch":
        return "scratch"
    p = Path(init)
    return p.parent.parent.name if p.parent.name == "checkpoints" and p.parent.parent.name else p.stem


def resolve(cfg: FinetuneConfig, task: Task, dataset, init_model: str | None, pretrain: dict | None,
            model_guess: str | None = None) -> Plan:
    hp = task.hyperparameters(cfg.fraction, fill_weight_decay=False)
    weight_decay_from = "--weight-decay" if cfg.weight_decay is not None else "task"
    for key in HYPERPARAMETERS:
        if getattr(cfg, key) is not None:
            hp[key] = getattr(cfg, key)
    if cfg.schedule == HYPERRULE:   # its epochs follow from the training subset's size (build)
        hp.update(hyperrule_hp(cfg))
        weight_decay_from = HYPERRULE
    if hp["optimizer"] not in OPTIMIZERS:
        raise TrainerError(f"--optimizer {hp['optimizer']!r} is not one of: {', '.join(OPTIMIZERS)}")
    if hp["weight_decay"] is None:   # of the optimizer the run uses, --optimizer included
        hp["weight_decay"], weight_decay_from = default_weight_decay(task.name, hp["optimizer"],
                                                                     cfg.weight_decay_preset)
    if hp["epochs"] < 0 or hp["batch_size"] < 1 or hp["lr"] <= 0 or not 0 < hp["decay"] <= 1:
        raise TrainerError(f"need --epochs >= 0, --batch-size >= 1, --lr > 0 and 0 < --decay <= 1; got "
                           f"{hp['epochs']}, {hp['batch_size']}, {hp['lr']}, {hp['decay']}")
    if cfg.model and init_model and cfg.model != init_model:
        raise TrainerError(f"--model {cfg.model} but the init checkpoint holds a {init_model}; drop --model")
    augment = cfg.augment or task.augment
    if augment not in AUGMENTS or (task.kind == "segmentation" and augment == "crop-flip"):
        raise TrainerError(f"--augment {augment!r} is not one of: {', '.join(AUGMENTS)} "
                           f"(segmentation: none, flip)")
    _, image_spec = dataset.member("image")
    # the size the encoder was pretrained at (a tlx checkpoint says), else the dataset's stored size
    image_size = (cfg.image_size or (pretrain or {}).get("image_size")
                  or (image_spec.shape[-1] if image_spec.shape else 224))
    classes = dataset.classes
    task.check_classes(classes)
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
    if pretrain.get("input_scale", "unit") != "unit":   # its encoder saw other inputs than finetune feeds
        raise TrainerError(f"the init was pretrained with --input-scale {pretrain['input_scale']}; trainer.finetune "
                           f"feeds [0, 1] inputs only (--input-scale unit, the study's), so its numbers would be "
                           f"wrong: pretrain with --input-scale unit, or fine-tune with your own code")
    normalize = cfg.normalize or pretrain.get("normalize") or "minmax"
    if cfg.window is not None and normalize != "hu":   # it would be recorded, and do nothing
        raise TrainerError(f"--window {cfg.window[0]:g} {cfg.window[1]:g} has no effect with --normalize "
                           f"{normalize}; add --normalize hu, or leave --window out")
    window = tuple(cfg.window or pretrain.get("window") or (-1024.0, 3072.0))
    model = cfg.model or init_model or model_guess or "resnet50"
    return Plan(task, hp, cfg.init_name or default_init_name(cfg.init), model, image_size, augment, weights,
                regions, normalize, window, cfg.seg_loss or task.seg_loss, weight_decay_from, _watch(cfg, task),
                _lp_epochs(cfg, hp))


def _watch(cfg: FinetuneConfig, task: Task) -> Watch:
    """The selection metric: --early-stop's (with its patience), else the task's metric (trainer/selection.py)."""
    if cfg.early_stop is None:
        return Watch(task.metric)
    metrics = (task.metric, "accuracy", "auc") if task.kind == "classification" else (task.metric,)
    return Watch.parse(cfg.early_stop, tuple(dict.fromkeys(metrics)))


def _lp_epochs(cfg: FinetuneConfig, hp: dict) -> int:
    if cfg.setting != "lp-ft":
        if cfg.lp_epochs is not None:
            raise TrainerError(f"--lp-epochs is for --setting lp-ft, not {cfg.setting}")
        return 0
    lp = hp["epochs"] // 2 if cfg.lp_epochs is None else cfg.lp_epochs
    if not 0 <= lp <= hp["epochs"]:
        raise TrainerError(f"--lp-epochs {lp} must be in [0, --epochs {hp['epochs']}]")
    return lp


def split_labels(split: LabelledSplit, task: Task, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Every sample's labels: class indices [N] (classification), or a boolean [N, L] of positive labels
    (multilabel) or of the foreground classes a slice shows (segmentation); and the L names."""
    meta = split.metadata()
    if task.kind == "classification":
        if "label_index" not in meta.column_names:
            raise TrainerError(f"{split.dataset.root}/slices.parquet has no label_index column to stratify by")
        return np.asarray(meta["label_index"].to_numpy(zero_copy_only=False), dtype=np.int64), classes
    if task.kind == "multilabel":
        names = meta["labels"].to_pylist()
        positive = np.array([[c in row for c in classes] for row in names], dtype=bool)
        return positive.reshape(len(names), len(classes)), classes
    return np.stack([meta[f"pixels_{c}"].to_numpy() > 0 for c in classes[1:]], axis=1), classes[1:]


def training_subset(split: LabelledSplit, task: Task, classes: list[str], cfg: FinetuneConfig,
                    pool: np.ndarray | None = None):
    """Sample ids of the training subset (from `pool`, the training folds, else the whole train split) and the
    subset.parquet table: key, its index in the train split, its position in the seed's ordering (the 1% subset
    is positions < 1% of N; for --shots the order it was picked in), and its labels (class index, positive
    labels, or foreground classes shown)."""
    import pyarrow as pa

    labels, names = split_labels(split, task, classes)
    pool = np.arange(len(split)) if pool is None else pool
    keys = [split.keys[i] for i in pool]
    if cfg.shots is not None:
        picked = shot_subset(keys, labels[pool], cfg.seed, cfg.shots, names)
        ranked = np.concatenate([picked, np.setdiff1d(np.arange(len(pool)), picked)])
        chosen = np.sort(picked)
    else:
        order = fraction_order(keys, labels[pool], cfg.seed, class_names=names)
        ranked, chosen = order.order, np.sort(order.take(cfg.fraction))
    position = np.empty(len(pool), np.int64)
    position[ranked] = np.arange(len(pool))
    lists = ([[str(int(v))] for v in labels] if labels.ndim == 1
             else [[names[j] for j in np.flatnonzero(r)] for r in labels])
    ids = pool[chosen]
    table = pa.table({"key": [split.keys[i] for i in ids], "index": ids, "order": position[chosen],
                      "labels": [lists[i] for i in ids]})
    return ids, table


def fold_split(split: LabelledSplit, task: Task, classes: list[str], cfg: FinetuneConfig):
    """--folds: (the training folds' ids, the held-out fold's ids, folds.parquet: every train sample's fold)."""
    import pyarrow as pa

    labels, _ = split_labels(split, task, classes)
    meta = split.metadata()
    group = next((c for c in ("patient", "volume") if c in meta.column_names and meta[c].null_count == 0), None)
    groups = meta[group].to_pylist() if group else list(split.keys)
    fold_of = patient_folds(labels, groups, cfg.folds, cfg.seed)
    table = pa.table({"key": list(split.keys), "fold": fold_of, "group_by": [group or "sample"] * len(fold_of)})
    return np.flatnonzero(fold_of != cfg.fold), np.flatnonzero(fold_of == cfg.fold), table


# ---------------------------------------------------------------------------------------------
# Evaluation: forward a split, gather every rank's records, compute the task's metrics.

@torch.no_grad()
def evaluate(model, split: LabelledSplit, plan: Plan, env: Dist, precision: Precision, batch: int, workers: int,
             volumes: list[str] | None, jpeg_decoder=None, masks: dict | None = None,
             only: np.ndarray | None = None) -> tuple[dict, dict]:
    """(metrics and `loss`, predictions.parquet columns) over the whole split, identical on every rank.
    Segmentation with a `masks` dict: it gets masks.npz's arrays (keys, pred, target; uint8 classes per pixel)."""
    model.eval()
    pool = np.arange(len(split)) if only is None else np.asarray(only)   # `only`: these sample ids (a held-out fold)
    ids = pool[eval_slice(len(pool), env.rank, env.world_size)]
    chunks = [ids[i:i + batch] for i in range(0, len(ids), batch)]
    kind = plan.task.kind
    weights = torch.tensor(plan.class_weights, dtype=torch.float32, device=env.device)
    seen, outputs, targets, maps, losses = [], [], [], [], []
    for x, y, i in batches(split, chunks, epoch=0, workers=workers, pin_memory=env.device.type == "cuda",
                           jpeg_decoder=jpeg_decoder):
        with precision.autocast():
            logits = model(precision.inputs(x)).float()
        losses.append(loss_sums(kind, logits, y.to(env.device), weights))   # the loss early stopping may watch
        if kind == "segmentation":  # per-slice overlap counts, not masks: small enough to gather
            pred = logits.argmax(1).cpu().numpy()
            outputs.append(M.dice_counts(pred, y.numpy(), logits.shape[1], tuple(plan.regions.values())))
            if masks is not None:   # (classes fit uint8: checked when the run starts)
                maps.append((pred.astype(np.uint8), y.numpy().astype(np.uint8)))
        else:
            probs = torch.softmax(logits, 1) if kind == "classification" else torch.sigmoid(logits)
            outputs.append(probs.cpu().numpy())
            targets.append(y.numpy())
        seen.append(i.numpy())
    parts = [(seen, outputs, targets, maps, losses)]
    if is_distributed():
        parts = [None] * env.world_size
        dist.all_gather_object(parts, (seen, outputs, targets, maps, losses))
    loss = sum(a for p in parts for a, _ in p[4]) / max(sum(b for p in parts for _, b in p[4]), 1e-12)
    sid = np.concatenate([a for p in parts for a in p[0]])
    out = np.concatenate([a for p in parts for a in p[1]])
    keys = [split.keys[i] for i in sid]
    if masks is not None:
        order = np.argsort(sid, kind="stable")   # sample order, whatever the ranks' shares
        masks.update(keys=np.array(keys)[order], classes=np.array(split.dataset.classes),
                     pred=np.concatenate([m[0] for p in parts for m in p[3]])[order],
                     target=np.concatenate([m[1] for p in parts for m in p[3]])[order])
    classes = split.dataset.classes
    if kind == "segmentation":
        metrics, rows = M.segmentation_results(out, keys, [volumes[i] for i in sid], classes + list(plan.regions))
    elif kind == "classification":
        metrics, rows = M.classification_results(out, np.concatenate([a for p in parts for a in p[2]]), keys)
    else:
        metrics, rows = M.multilabel_results(out, np.concatenate([a for p in parts for a in p[2]]), keys, classes,
                                             plan.task.mean_excludes(classes))
    return {**metrics, "loss": loss}, rows


def _json_safe(metrics: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------
# The run: build, resume, loop, test, write.

@dataclass
class Data:
    """What a run reads: the training subset of the train split, val and test whole."""
    train: LabelledSplit
    val: LabelledSplit
    test: LabelledSplit
    subset: np.ndarray             # sample ids of the training subset (a nested, stratified fraction)
    subset_table: Any              # subset.parquet (pyarrow table)
    volumes: dict                  # "val"/"test" -> each sample's volume (segmentation scores per volume), else None
    decoder: DaliJpegDecoder | None    # JPEG datasets on DALI; None: PIL in the loader workers
    test_ids: np.ndarray | None = None   # --folds: the held-out fold's ids in `test` (the train split); None: all
    folds_table: Any = None              # --folds: folds.parquet (every train sample's fold)


@dataclass
class FinetuneJob:
    """A built run: what the loop, the checkpoints, the test and the outputs use."""
    cfg: FinetuneConfig
    env: Dist
    plan: Plan
    out: Path                      # the run folder
    log: RunLog
    data: Data
    model: TaskModel
    ddp: torch.nn.Module           # what the loop calls: DDP over the ranks, else the model (--compile: compiled)
    precision: Precision           # bf16 autocast and channels_last (GPU)
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int], float]   # lr of a global step: a trainer.optim.Schedule or the BiT-HyperRule's
    weights: torch.Tensor          # the loss's class weights
    steps: int                     # optimizer steps per epoch
    eval_batch: int                # per-rank batch of val and test
    first_init: dict               # the first layers as initialised (first_layers.npz)
    config: dict                   # config.json
    masks: dict | None = None      # --save-masks: filled by the test with masks.npz's arrays
    recipe: Recipe = field(default_factory=Recipe)   # --agc, --mixup, --label-smoothing, bit-hyperrule, ...
    total_steps: int = 0           # the run's optimizer steps without --max-steps


@dataclass
class FinetuneState:
    """Where a run is; last.pt holds it (as step, epoch, epoch_step, epoch_loss_sum, best, wall_s)."""
    step: int = 0
    epoch: int = 0                 # epochs done
    epoch_step: int = 0            # steps done in the current epoch
    loss_sum: float = 0.0          # the current epoch's training loss on this rank, summed over its steps
    best: dict = field(default_factory=lambda: {"metric": -math.inf, "epoch": 0, "state": None})   # (by Watch)
    started: float = field(default_factory=time.time)   # time.time() when the run would have started
    lr_scale: float = 1.0          # --schedule plateau: the lr's factor so far
    plateau_bad: int = 0           # --schedule plateau: epochs without a better value since the last drop
    stopped: int | None = None     # --early-stop: the epoch after which the run stopped

    def wall_s(self) -> float:
        """Seconds since the run started, across restarts (metrics' wall_s)."""
        return time.time() - self.started


def run(cfg: FinetuneConfig, env: Dist, progress: Progress = silent, guard: RunGuard | None = None) -> dict | None:
    """The run the flags describe (module docstring); returns result.json's content on rank 0, None elsewhere.
    `guard`: the run folder's lock is taken there before the run reads or writes it (trainer/run_guard.py)."""
    check_at_least(cfg, {"epochs": 0, "step_epochs": 1, "plateau_patience": 0, "warmup_epochs": 0, "max_steps": 1,
                         "batch_size": 1, "image_size": 1, "checkpoint_every": 0, "log_every": 1,
                         "eval_batch_size": 1, "workers": 0})
    cfg = cfg if cfg.workers is not None else replace(cfg, workers=loader_workers())
    check_subset_flags(cfg)
    task = get_task(cfg.task, cfg.tasks_file)
    check_recipe_flags(cfg, task.kind)
    if cfg.save_masks and task.kind != "segmentation":
        raise TrainerError(f"--save-masks stores segmentation masks; task {task.name} is {task.kind}")
    dataset = open_dataset(cfg.data)
    if cfg.save_masks and len(dataset.classes) > 256:
        raise TrainerError(f"--save-masks stores classes as uint8; {cfg.data} has {len(dataset.classes)} classes")
    if dataset.kind not in task.data_kinds:
        raise TrainerError(f"--task {task.name} trains on datasets of kind {', '.join(task.data_kinds)}; "
                           f"{cfg.data} is of kind {dataset.kind!r}")
    init_state, init_info = read_init(cfg.init)
    plan = resolve(cfg, task, dataset, init_info.model_name, init_info.pretrain_config, init_info.model_guess)
    out = Path(cfg.run_dir) if cfg.run_dir else run_dir(cfg.out, task.name, plan.init_name, cfg.setting,
                                                         cfg.fraction, cfg.seed, shots=cfg.shots,
                                                         fold=(cfg.fold, cfg.folds) if cfg.folds else None)
    if guard is not None:
        guard.hold(out)
    log = RunLog(out, enabled=env.is_main, progress=progress)
    if init_info.layout:
        log.note(f"--init {cfg.init}: {init_info.layout} layout, stripped {init_info.stripped!r}, dropped "
                 f"{'; '.join(init_info.dropped) or 'nothing'}")
    complete = (out / "result.json").exists()
    ckpt, source = (None, None) if complete else find_resume_point(cfg.resume, out, fix="use another --run-dir")
    job = build(cfg, env, plan, dataset, init_state, init_info, log)
    if complete:   # its result, if it was made with these options (all of config.json compared)
        check_complete_run(out, job.config, flags=[f.name for f in fields(FinetuneConfig)],
                           fix="use another --run-dir, or remove the old run", may_change=FINETUNE_MAY_CHANGE,
                           older=saved_config)
        log.note(f"{out}: complete (result.json present, same options); not run again")
        return json.loads((out / "result.json").read_text()) if env.is_main else None
    state = resume(job, ckpt, source) if ckpt is not None else FinetuneState(
        best={"metric": job.plan.watch.worst, "epoch": 0, "state": None})
    log.write_config(job.config)
    log.resume_at(epochs_done=state.epoch, step=state.step)   # lines logged after the checkpoint are logged again
    if env.is_main:
        import pyarrow.parquet as pq
        pq.write_table(job.data.subset_table, out / "subset.parquet")
        if job.data.folds_table is not None:
            pq.write_table(job.data.folds_table, out / "folds.parquet")
    loop(job, state)
    test_metrics, rows = test(job, state)
    return write(job, state, test_metrics, rows) if env.is_main else None


def split_warnings(plan: Plan, dataset: TlxDataset, data: Data) -> list[str]:
    """Classes the training subset lacks that val or test hold (single-label tasks): the run says so before it
    trains, and why such a split scores what it scores (trainer/split_health.py)."""
    if plan.task.kind != "classification":
        return []

    def labels(split: LabelledSplit, ids) -> np.ndarray:
        column, _ = split_labels(split, plan.task, dataset.classes)
        return column if ids is None else column[np.asarray(ids)]

    return class_gaps(dataset.classes, labels(data.train, data.subset), labels(data.val, None),
                      labels(data.test, data.test_ids))


def build(cfg: FinetuneConfig, env: Dist, plan: Plan, dataset: TlxDataset, init_state: dict | None,
          init_info: InitInfo, log: RunLog) -> FinetuneJob:
    """Model, data, optimizer and config.json of a run, before any checkpoint is loaded into them."""
    precision = Precision.of(env.device, bf16=cfg.bf16, channels_last=cfg.channels_last)
    model, ddp, first_init = build_model(cfg, env, precision, plan, dataset, init_state, init_info)
    data = build_data(cfg, env, plan, dataset)
    for line in split_warnings(plan, dataset, data):
        log.note(f"warning: {line}")
    hp = plan.hp
    per_rank = per_rank_batch(hp["batch_size"], env.world_size)
    steps = steps_per_epoch(data.subset, hp["batch_size"])
    recipe = resolve_recipe(cfg, plan.task.kind, train_size=len(data.subset))
    if recipe.zero_init_head:
        zero_head_(model.head)
    params = lars_param_groups(model, hp["weight_decay"])   # no decay on biases and norm parameters
    optimizer = build_optimizer(hp["optimizer"], params, hp["lr"], cfg.momentum, cfg.nesterov, cfg.lars_form)
    schedule, total_steps = lr_schedule(cfg, hp, recipe, steps)
    weights = torch.tensor(plan.class_weights, dtype=torch.float32, device=env.device)
    config = finetune_config(cfg, env, plan, dataset, init_info, data, steps, recipe)
    return FinetuneJob(cfg, env, plan, log.dir, log, data, model, ddp, precision, optimizer, schedule, weights, steps,
                       cfg.eval_batch_size or per_rank, first_init, config, {} if cfg.save_masks else None,
                       recipe=recipe, total_steps=total_steps)


def lr_schedule(cfg: FinetuneConfig, hp: dict, recipe: Recipe, steps: int) -> tuple[Callable[[int], float], int]:
    """(lr of a global step, the run's steps without --max-steps). --schedule bit-hyperrule: the rule's lr and
    step count, the epochs that hold them written into `hp` (config.json's epochs)."""
    if recipe.hyperrule is not None:
        hp["epochs"] = hyperrule_epochs(recipe.hyperrule, steps)
        return recipe.hyperrule.lr, recipe.hyperrule.total_steps
    schedule = Schedule(FT_SCHEDULES[cfg.schedule], base_lr=hp["lr"], epochs=max(1, hp["epochs"]),
                        steps_per_epoch=steps, decay=hp["decay"], warmup_epochs=cfg.warmup_epochs,
                        step_epochs=cfg.step_epochs)
    return schedule, hp["epochs"] * steps


def build_model(cfg: FinetuneConfig, env: Dist, precision: Precision, plan: Plan, dataset: TlxDataset,
                init_state: dict | None, init_info: InitInfo) -> tuple[TaskModel, torch.nn.Module, dict]:
    """(the model: encoder with its init and a new head; what the loop calls, DDP and --compile wrapping it; the
    first layers as initialised)."""
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(plan.model, checkpoint_activations=cfg.checkpoint_activations)
    load_init(encoder, init_state, init_info, cfg.allow_partial_init)
    first_init = first_layers(encoder, plan.model, "init")
    decoder_channels = tuple(int(c) for c in cfg.decoder_channels.split(",")) if cfg.decoder_channels else None
    # lp-ft's encoder is frozen epoch by epoch in train_epoch (its parameters must be in the optimizer)
    model = TaskModel(encoder, plan.task.kind, len(dataset.classes), frozen_encoder=cfg.setting == "linear",
                      decoder_channels=decoder_channels, decoder=cfg.decoder, head_dropout=cfg.head_dropout)
    model = precision.place(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda"
                                                    else None, find_unused_parameters=cfg.setting == "lp-ft"
                                                    ) if is_distributed() else model
    # The compiled wrapper shares the model's parameters: checkpoints and evaluation use `model` itself.
    return model, (torch.compile(ddp) if cfg.compile else ddp), first_init


def build_data(cfg: FinetuneConfig, env: Dist, plan: Plan, dataset: TlxDataset) -> Data:
    """The nested, stratified subset of the train split; val and test whole."""
    task = plan.task
    images = ImageOptions(plan.image_size, plan.normalize, plan.window, plan.augment, cfg.seed,
                          parse_randaugment(cfg.randaugment) if cfg.randaugment else None)
    train = LabelledSplit(dataset, "train", task.kind, images, train=True)
    val = LabelledSplit(dataset, "val", task.kind, images)
    test = LabelledSplit(dataset, "test", task.kind, images)
    for name, split in (("train", train), ("val", val), ("test", test)):
        if len(split) == 0:
            raise TrainerError(f"{cfg.data} has no {name} samples; fine-tuning needs train, val and test splits")
    pool, held_out, folds_table = fold_split(train, task, dataset.classes, cfg) if cfg.folds else (None, None, None)
    subset, subset_table = training_subset(train, task, dataset.classes, cfg, pool)
    test = train if cfg.folds else test   # cross-validation tests on the held-out fold of the train split
    volumes = {name: (s.metadata()["volume"].to_pylist() if task.kind == "segmentation" else None)
               for name, s in (("val", val), ("test", test))}
    per_rank = per_rank_batch(plan.hp["batch_size"], env.world_size)
    decoder = _jpeg_decoder(cfg.loader, train, env, plan.image_size, max(per_rank, cfg.eval_batch_size or per_rank),
                            randaugment=cfg.randaugment is not None)
    return Data(train, val, test, subset, subset_table, volumes, decoder, held_out, folds_table)


def finetune_config(cfg: FinetuneConfig, env: Dist, plan: Plan, dataset: TlxDataset, init_info: InitInfo,
                    data: Data, steps: int, recipe: Recipe) -> dict:
    """config.json (trainer.config.run_config's shape): the flags hold the values the run resolved (the task's
    hyperparameters, the init's model and normalisation); `init` is the init's name, its file `init_checkpoint`."""
    task, linear = plan.task, cfg.setting == "linear"
    head = "decoder" if task.kind == "segmentation" else "head"
    lp_ft = {"lp_epochs": plan.lp_epochs} if cfg.setting == "lp-ft" else {}
    resolved = {"init_name": plan.init_name, "model": plan.model, "image_size": plan.image_size, **plan.hp, **lp_ft,
                "class_weights": plan.class_weights, "augment": plan.augment, "normalize": plan.normalize,
                "window": list(plan.window), "seg_loss": plan.seg_loss, **recipe.resolved()}
    derived = {
        "data_kind": dataset.kind, "data_train_samples": len(data.train), "subset_samples": len(data.subset),
        "init_checkpoint": init_info.checkpoint, "init_sha256": init_info.sha256, "init_source": init_info.source,
        "init_layout": init_info.layout, "init_stripped": init_info.stripped,
        "init_pretrain_samples": (init_info.pretrain_config or {}).get("data_train_samples"),
        "init_dropped": init_info.dropped, "init_missing": init_info.missing,
        "init_unexpected": init_info.unexpected, "init_mismatched": init_info.mismatched,
        "kind": task.kind, "metric": task.metric, "classes": dataset.classes, "steps_per_epoch": steps,
        "regions": {k: list(v) for k, v in plan.regions.items()}, "encoder_frozen": linear,
        "trains": head if linear else (f"{head}, then encoder and {head}" if lp_ft else f"encoder and {head}"),
        "encoder_bn": "eval (statistics frozen)" if linear else ("eval in the linear phase, then train" if lp_ft
                                                                 else "train"),
        "selected_by": plan.watch.metric, "weight_decay_from": plan.weight_decay_from, **recipe.derived(),
        "first_layers": list(first_layer_names(plan.model)),
        "flags_set": set_flags(cfg, ignore=MAY_CHANGE | FINETUNE_MAY_CHANGE)}
    return run_config(cfg, task=task.name, init=plan.init_name, setting=cfg.setting, fraction=cfg.fraction,
                      seed=cfg.seed, world_size=env.world_size, resolved=resolved, derived=derived)


def saved_config(saved: dict) -> dict:
    """A checkpoint's config.json with what runs from before a flag used, where it applied: LARS with the lr
    outside the momentum (--lars-form lr-outside), the smp-unet decoder (--decoder smp-unet), the
    cross-entropy segmentation loss (--seg-loss ce)."""
    before = {}
    if saved.get("optimizer") == "lars":
        before["lars_form"] = "lr-outside"
    if saved.get("kind") == "segmentation":
        before["decoder"] = "smp-unet"
        before["seg_loss"] = "ce"           # the only segmentation loss before --seg-loss
    return {**before, **saved}


def resume(job: FinetuneJob, ckpt: dict, source: Path) -> FinetuneState:
    """The state of a checkpoint of this run, loaded into the model and optimizer."""
    check_same_run(saved_config(ckpt["config"]), job.config, flags=[f.name for f in fields(FinetuneConfig)],
                   source=source, fix="use another --run-dir, or remove the old run", may_change=FINETUNE_MAY_CHANGE)
    job.model.encoder.load_state_dict(ckpt["encoder"])
    job.model.head_module().load_state_dict(ckpt[_head_name(job)])
    job.optimizer.load_state_dict(ckpt["optimizer"])
    restore_rng_states(ckpt["rng"], job.env.rank)
    state = FinetuneState(ckpt["step"], ckpt["epoch"], ckpt["epoch_step"], resumed_loss_sum(ckpt, job.env),
                          ckpt["best"], started=time.time() - ckpt.get("wall_s", 0.0),  # wall_s: from the run's start
                          **{k: ckpt[k] for k in ("lr_scale", "plateau_bad", "stopped") if k in ckpt})
    job.log.note(f"{job.out}: resuming at epoch {state.epoch + 1}, step {state.step}")
    return state


def loop(job: FinetuneJob, state: FinetuneState) -> None:
    """Epochs from where `state` stands to --epochs (or --max-steps): train, then validate, log and save."""
    epochs = job.plan.hp["epochs"]
    total = job.total_steps if job.cfg.max_steps is None else min(job.cfg.max_steps, job.total_steps)
    job.log.begin(state.step, total)
    while state.epoch < epochs and state.step < total and state.stopped is None:
        loss_sum, images, started = train_epoch(job, state, total)
        end_epoch(job, state, loss_sum, images, started)


def train_epoch(job: FinetuneJob, state: FinetuneState, total: int) -> tuple[torch.Tensor, int, float]:
    """The rest of the current epoch, or up to `total` steps: (the epoch's loss sum, on the device: no sync per
    step; the images this rank trained on; when it began)."""
    cfg, env = job.cfg, job.env
    loss_fn = _loss_fn(job)
    if cfg.setting == "lp-ft":   # the linear phase: encoder frozen (no gradients, BN statistics fixed), then all
        job.model.freeze_encoder(state.epoch < job.plan.lp_epochs)
    job.ddp.train()
    order = epoch_plan(job.data.subset, job.plan.hp["batch_size"], seed=cfg.seed, epoch=state.epoch, rank=env.rank,
                       world_size=env.world_size).reshape(job.steps, -1)
    started, images = time.time(), 0
    loss_sum = torch.tensor(state.loss_sum, dtype=torch.float64, device=env.device)
    for x, y, _ in batches(job.data.train, order[state.epoch_step:], state.epoch, cfg.workers,
                           pin_memory=env.device.type == "cuda", jpeg_decoder=job.data.decoder):
        lr = job.schedule(state.step) * state.lr_scale
        set_lr(job.optimizer, lr)
        x, y = job.precision.inputs(x), y.to(env.device, non_blocking=True)
        with job.precision.autocast():
            loss = training_loss(job.ddp, x, y, job.recipe, loss_fn, mix_rng(cfg.seed, state.step, env.rank))
        job.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(job.model, job.recipe)   # --agc (nothing without it)
        job.optimizer.step()
        loss_sum += loss.detach()
        state.step, state.epoch_step, images = state.step + 1, state.epoch_step + 1, images + len(x)
        if state.step % cfg.log_every == 0 or state.step == total:
            job.log.step(state.step, total, state.epoch + 1, all_reduce_mean(loss.detach(), env.device), lr,
                         images * env.world_size / max(time.time() - started, 1e-9))
        if checkpoint_due(state.step, cfg.checkpoint_every) and state.epoch_step < job.steps:  # epoch ends save below
            state.loss_sum = float(loss_sum)
            save(job, state)
        if state.step >= total:
            break
    return loss_sum, images * env.world_size, started


def _loss_fn(job: FinetuneJob) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The task's training loss of (logits, targets): class weights, segmentation loss, label smoothing."""
    kind, plan, smoothing = job.plan.task.kind, job.plan, job.recipe.label_smoothing
    return lambda logits, y: task_loss(kind, logits, y, job.weights, plan.seg_loss, label_smoothing=smoothing)


def end_epoch(job: FinetuneJob, state: FinetuneState, loss_sum: torch.Tensor, images: int, started: float) -> None:
    """Validate; keep the best epoch's weights (and best.pt); the epoch's metrics.jsonl line; last.pt.
    `images` were trained on (all ranks) since `started`; images_per_s counts the validation's time too."""
    env, watch = job.env, job.plan.watch
    train_loss = all_reduce_mean(float(loss_sum) / max(state.epoch_step, 1), env.device)
    broadcast_buffers(job.model)   # every rank evaluates, and keeps as best, the model rank 0 saves
    val_metrics, _ = evaluate(job.model, job.data.val, job.plan, env, job.precision, job.eval_batch,
                              job.cfg.workers, job.data.volumes["val"], job.data.decoder)
    state.epoch += 1
    score, lr = val_metrics[watch.metric], job.schedule(state.step - 1) * state.lr_scale
    improved = watch.better(score, state.best["metric"])
    if improved:
        state.best = {"metric": score, "epoch": state.epoch, "state": copy.deepcopy(job.model.state_dict())}
        if env.is_main:
            save_checkpoint(new_checkpoint(job.plan.model, job.model.encoder.state_dict(), **_head(job),
                                           epoch=state.epoch, metric=score, config=job.config),
                            job.out / "checkpoints" / "best.pt")
    line = {"epoch": state.epoch, "step": state.step, "train_loss": train_loss,
            **{f"val_{k}": v for k, v in _json_safe(val_metrics).items()}, "lr": lr,
            "images_per_s": images / max(time.time() - started, 1e-9), "wall_s": state.wall_s()}
    job.log.epoch(line)
    job.log.note(f"epoch {state.epoch}/{job.plan.hp['epochs']}  loss {train_loss:.4f}  val {watch.metric} "
                 f"{score:.4f}  lr {line['lr']:.3g}  {line['images_per_s']:.0f} img/s")
    if job.cfg.schedule == "plateau":
        state.lr_scale, state.plateau_bad = plateau_step(state.lr_scale, state.plateau_bad, improved,
                                                         job.cfg.plateau_patience, job.plan.hp["decay"])
    if watch.patience is not None and state.epoch - state.best["epoch"] >= watch.patience:
        state.stopped = state.epoch
        job.log.note(f"early stop after epoch {state.epoch}: val {watch.metric} not better for {watch.patience} "
                     f"epochs (best: epoch {state.best['epoch']})")
    state.epoch_step, state.loss_sum = 0, 0.0
    save(job, state)


def save(job: FinetuneJob, state: FinetuneState) -> None:
    """checkpoints/last.pt (every rank calls it)."""
    save_resume_point(job.out / "checkpoints" / "last.pt", job.env.is_main, job.plan.model,
                      job.model.encoder.state_dict(), **_head(job), optimizer=job.optimizer.state_dict(),
                      step=state.step, epoch=state.epoch, epoch_step=state.epoch_step, epoch_loss_sum=state.loss_sum,
                      best=state.best, config=job.config, wall_s=state.wall_s(), lr_scale=state.lr_scale,
                      plateau_bad=state.plateau_bad, stopped=state.stopped)


def _head_name(job: FinetuneJob) -> str:
    return "decoder" if job.plan.task.kind == "segmentation" else "head"


def _head(job: FinetuneJob) -> dict:
    """The task's part of a checkpoint: {"head" or "decoder": its state dict}."""
    return {_head_name(job): job.model.head_module().state_dict()}


def test(job: FinetuneJob, state: FinetuneState) -> tuple[dict, dict]:
    """(test metrics, predictions.parquet columns) of the best validation epoch's weights (--epochs 0: the init's,
    with its new head)."""
    if job.plan.hp["epochs"] > 0:
        if state.best["epoch"] == 0:
            raise TrainerError(f"{job.out}: validation {job.plan.watch.metric} was undefined (NaN) in every epoch, "
                               f"so no best checkpoint exists; check the val split's labels")
        job.model.load_state_dict(state.best["state"])
    return evaluate(job.model, job.data.test, job.plan, job.env, job.precision, job.eval_batch,
                    job.cfg.workers, job.data.volumes["test"], job.data.decoder, job.masks, only=job.data.test_ids)


def write(job: FinetuneJob, state: FinetuneState, test_metrics: dict, rows: dict) -> dict:
    """predictions.parquet, first_layers.npz, then result.json, whose presence marks the run complete (rank 0)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(rows), job.out / "predictions.parquet")
    if job.masks is not None:   # deflate: class maps are mostly background
        with atomic_write(job.out / "masks.npz") as f:
            np.savez_compressed(f, **job.masks)
    final = first_layers(job.model.encoder, job.plan.model, "final")
    names = np.array(first_layer_names(job.plan.model))
    with atomic_write(job.out / "first_layers.npz") as f:
        np.savez(f, **job.first_init, **final, layer_names=names)
    metric, test_loss = job.plan.task.metric, test_metrics.pop("loss")   # metrics: higher is better (run format)
    best_val = state.best["metric"] if math.isfinite(state.best["metric"]) else None
    result = {"metrics": _json_safe(test_metrics), "metric": metric, "best_epoch": state.best["epoch"],
              "best_val": best_val, "selected_by": job.plan.watch.metric, "stopped_epoch": state.stopped,
              "test_loss": test_loss, "epochs": state.epoch, "steps": state.step}
    write_json_atomic(result, job.out / "result.json")
    job.log.note(f"{job.out}: test {metric} {test_metrics[metric]:.4f} (best val epoch {state.best['epoch']})")
    return result


def first_layer_names(model: str) -> tuple[str, ...]:
    """The model's own names of its first three convolutions (first_layers.npz's FIRST_LAYERS, in order)."""
    return BIT_FIRST_LAYERS if model.startswith("bit-") else FIRST_LAYERS


def first_layers(encoder: torch.nn.Module, model: str, when: str) -> dict[str, np.ndarray]:
    """{"<when>/<FIRST_LAYERS[i]>": the model's i-th first convolution}: one key set for every model."""
    state = encoder.state_dict()
    return {f"{when}/{key}": state[name].detach().cpu().numpy().copy()
            for key, name in zip(FIRST_LAYERS, first_layer_names(model))}


def _jpeg_decoder(loader: str, split: LabelledSplit, env: Dist, image_size: int, max_batch: int,
                  randaugment: bool = False):
    """DALI for JPEG datasets when asked (or `auto` on a GPU with DALI installed, without --randaugment, which
    runs in the torch loader's workers), else None (PIL)."""
    if split.image_spec.codec != "jpeg":
        if loader == "dali":
            raise TrainerError(f"--loader dali decodes JPEG datasets; {split.dataset.root} stores "
                               f"{split.image_spec.codec} images (use --loader torch or auto)")
        return None
    if randaugment:
        if loader == "dali":
            raise TrainerError("--randaugment runs in the torch loader's workers, not in DALI; "
                               "use --loader torch or auto")
        return None
    if loader == "auto":
        import importlib.util
        loader = "dali" if env.device.type == "cuda" and importlib.util.find_spec("nvidia.dali") else "torch"
    return DaliJpegDecoder(image_size, max_batch, env.device) if loader == "dali" else None


if __name__ == "__main__":
    exit_on_user_error(main)
