"""SimCLR pretraining on tlx shards: a hand-written DDP loop, exact and resumable.

One GPU, one node, many nodes, a laptop:

    torchrun --nproc_per_node 1 -m trainer.simclr --data data/ --out runs/pretrain/radnet-1.28M
    torchrun --nproc_per_node 8 -m trainer.simclr --data data/ --out runs/pretrain/radnet-1.28M
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint host:29500 \\
             --max-restarts 3 -m trainer.simclr --data data/ --out runs/pretrain/radnet-1.28M
    python -m trainer.simclr --data data/ --out runs/x --device cpu --model resnet-tiny \\
             --image-size 64 --batch-size 32 --epochs 1

From Python (the demo does this): `trainer.simclr.main(["--data", ..., "--out", ...])`.

Recipes (`--recipe`): `paper` (default) is what the study ran: ResNet-50, 256 px, batch
4096, LARS lr 0.075 * sqrt(batch) = 4.8 (applied inside the momentum buffer, as TF-SimCLR
and the study: --lars-form), weight decay 1e-6, cosine per epoch over 100 epochs without
warmup, temperature 0.5, the study's Sigmoid projector (-> 256), crop, flip,
brightness/contrast jitter, no blur. `simclr` is SimCLR v1: temperature 0.1,
2048-2048-128 head, lr 0.3 * batch / 256, 10 warmup epochs then cosine per step,
Gaussian blur p = 0.5. Every value can be overridden by its flag.

`--batch-size` is the global batch (over all ranks); NT-Xent uses all of it (every
rank's embeddings are gathered). The run directory gets config.json, metrics.jsonl (one
line per epoch), steps.jsonl (one line per logged step) and checkpoints/last.pt, saved
atomically every `--checkpoint-every` steps and at each epoch's end. A run whose out folder
holds a checkpoint continues from it (`--resume auto`, the default): model, optimizer,
schedule, RNG and the position inside the epoch are restored and the result is bit for
bit that of an uninterrupted run (on CPU; GPU kernels are not all deterministic, see
docs/trainer.md), which is what `torchrun --max-restarts` needs.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from datakit.read import TlxDataset, open_dataset
from tlxcore.atomic import atomic_write
from tlxcore.errors import UserError
from tlxcore.progress import Progress, drawn, silent
from trainer.checkpoint import (
    OLD_SPELLINGS,
    check_same_run,
    checkpoint_due,
    checkpoint_every_flag,
    find_resume_point,
    restore_rng_states,
    resume_flag,
    resumed_loss_sum,
    save_resume_point,
)
from trainer.config import check_at_least, opt, parse_config, run_config
from trainer.data.augment import AugmentConfig
from trainer.data.loader import make_loader
from trainer.data.mixed_loader import MixedTwoViewLoader
from trainer.data.mixing import parse_mix
from trainer.data.two_view import TwoViewLoader, image_member
from trainer.dist import Dist, all_reduce_mean, close_dist, init_dist, loader_workers, workers_flag
from trainer.errors import TrainerError, exit_on_user_error, stops_deferred
from trainer.gradcache import grad_cache_step
from trainer.knn import knn_probe
from trainer.models import build_encoder
from trainer.models.projector import build_projector
from trainer.models.simclr_model import SimCLRModel
from trainer.optim import LARS, LARS_FORMS, Schedule, lars_param_groups, set_lr
from trainer.precision import Precision
from trainer.pretrain_init import load_pretrain_init
from trainer.run_guard import RunGuard
from trainer.runlog import RunLog, log_every_flag

RECIPES = {
    "paper": dict(epochs=100, batch_size=4096, image_size=256, temperature=0.5, weight_decay=1e-6,
                  projector="paper", schedule="cosine-epoch", warmup_epochs=0.0, blur_p=0.0, lr_rule="sqrt",
                  lars_form="study-code"),
    "simclr": dict(epochs=100, batch_size=4096, image_size=256, temperature=0.1, weight_decay=1e-6,
                   projector="simclr", schedule="warmup-cosine", warmup_epochs=10.0, blur_p=0.5, lr_rule="linear",
                   lars_form="study-code"),
}


@dataclass
class SimCLRConfig:
    data: tuple[str, ...] = opt(None, "dataset folder tlx wrote (`tlx shard`: CT slices; `tlx convert class-folder"
                                      "|image-folder`: RGB JPEG); repeat it to mix datasets (--mix)", required=True)
    mix: str | None = opt(None, "with several --data: their shares of every batch, e.g. 1,1 (see "
                                "trainer/data/mixing.py)")
    out: str = opt(None, "run folder (config.json, metrics.jsonl, checkpoints/)", required=True)
    recipe: str = opt("paper", "hyperparameter set; every value below overrides it", choices=tuple(RECIPES))
    model: str = opt("resnet50", "encoder: any name of trainer/models (resnet18/50/101/152, wide_resnet50_2, "
                                 "wide_resnet101_2, resnet50-keras; resnet-tiny for tests and the demo)")
    device: str = opt("auto", "cuda, cpu, or auto (cuda when available)", choices=("auto", "cuda", "cpu"))
    epochs: int | None = opt(None, "epochs (recipe: 100)")
    max_steps: int | None = opt(None, "stop after this many steps in total (the schedule still spans --epochs)")
    batch_size: int | None = opt(None, "GLOBAL batch over all ranks (recipe: 4096)")
    image_size: int | None = opt(None, "view size in pixels (recipe: 256)")
    lr: float | None = opt(None, "peak learning rate (recipe: paper 0.075*sqrt(batch), simclr 0.3*batch/256)")
    weight_decay: float | None = opt(None, "LARS weight decay, not on biases/BN (recipe: 1e-6)")
    momentum: float = opt(0.9, "LARS momentum")
    lars_form: str | None = opt(None, "where LARS applies the lr: study-code (inside the momentum buffer, as "
                                      "TF-SimCLR and the study) or lr-outside (tlx before; torch SGD's) "
                                      "[default: the recipe's, study-code]", choices=LARS_FORMS)
    temperature: float | None = opt(None, "NT-Xent temperature (recipe: paper 0.5, simclr 0.1)")
    warmup_epochs: float | None = opt(None, "linear warmup (recipe: paper 0, simclr 10)")
    blur_p: float | None = opt(None, "Gaussian blur probability (recipe: paper 0, simclr 0.5)")
    normalize: str = opt("minmax", "pixels to [0, 1]: per-slice min-max, or a fixed HU window",
                         choices=("minmax", "hu"))
    window: tuple[float, float] | None = opt(None, "HU window for --normalize hu: LOW HIGH [default: -1024 3072]")
    input_scale: str = opt("unit", "what the encoder sees: unit ([0, 1], as the study) or imagenet (ImageNet "
                                   "mean/std per channel, CT replicated to 3 channels first)",
                           choices=("unit", "imagenet"))
    loader: str = opt("auto", "data loader; auto = dali on GPU when installed, else torch",
                      choices=("auto", "dali", "torch"))
    workers: int | None = workers_flag()
    dali_threads: int = opt(4, "DALI operator threads per rank")
    grad_cache_chunk: int = opt(0, "exact gradient caching: views per forward chunk (0 = off; see docs/trainer.md)")
    compile: bool = opt(False, "torch.compile the model")
    bf16: bool = opt(True, "bf16 autocast on GPU (the loss stays float32)")
    channels_last: bool = opt(True, "channels_last memory format on GPU")
    seed: int = opt(0, "seed of the weights, the data order and the augmentations")
    init: str = opt("scratch", "start from: scratch, a tlx SimCLR checkpoint (encoder and projector) or a "
                               "torchvision-layout ResNet state dict (encoder only); loaded strictly")
    init_epoch: int = opt(0, "start the schedule at this epoch of --epochs (a sequential run continuing --init's "
                             "schedule: --init <run>/checkpoints/epoch-50.pt --init-epoch 50 --epochs 100)")
    resume: str = resume_flag()
    checkpoint_every: int = checkpoint_every_flag()
    keep_every: int = opt(0, "also keep checkpoints/epoch-<E>.pt every K epochs (0 = only last.pt)")
    eval_every: int = opt(10, "kNN probe on the val split every N epochs and at the end (0 = off)")
    knn_bank: int = opt(4096, "kNN probe: training samples in the bank")
    knn_queries: int = opt(1024, "kNN probe: val samples classified")
    log_every: int = log_every_flag()


# config.json keys that may change when a run resumes, besides trainer.checkpoint.MAY_CHANGE; any other
# difference is refused. per_rank_batch follows the number of ranks, which may change.
PRETRAIN_MAY_CHANGE = {"data", "loader", "dali_threads", "compile", "eval_every", "knn_bank", "knn_queries",
                       "per_rank_batch", "keep_every", "init_checkpoint", "datasets"}


HU_WINDOW = (-1024.0, 3072.0)   # the window of --normalize hu unless --window says otherwise


def resolve(cfg: SimCLRConfig) -> SimCLRConfig:
    """Fill every unset field from the recipe (and --workers by its rule); the result is what config.json records."""
    r = RECIPES[cfg.recipe]
    cfg = replace(cfg, **{k: r[k] for k in ("epochs", "batch_size", "image_size", "temperature", "weight_decay",
                                            "warmup_epochs", "blur_p", "lars_form") if getattr(cfg, k) is None})
    check_at_least(cfg, {"batch_size": 1, "epochs": 1, "image_size": 1, "log_every": 1, "checkpoint_every": 0,
                         "eval_every": 0, "grad_cache_chunk": 0, "workers": 0, "init_epoch": 0, "keep_every": 0})
    parse_mix(cfg.mix, len(cfg.data))  # its errors before anything is opened
    if cfg.init_epoch >= cfg.epochs:
        raise TrainerError(f"--init-epoch {cfg.init_epoch} is at or past --epochs {cfg.epochs}; the schedule would "
                           f"have no epoch left (give --init-epoch below --epochs)")
    if cfg.init_epoch and cfg.init == "scratch":
        raise TrainerError(f"--init-epoch {cfg.init_epoch} continues another run's schedule; give that run's "
                           f"checkpoint with --init")
    if cfg.window is not None and cfg.normalize != "hu":   # it would be recorded, and do nothing
        raise TrainerError(f"--window {cfg.window[0]:g} {cfg.window[1]:g} has no effect with --normalize "
                           f"{cfg.normalize}; add --normalize hu, or leave --window out")
    cfg = replace(cfg, window=cfg.window or HU_WINDOW)   # config.json records the window as before
    if cfg.lr is None:
        b = cfg.batch_size
        cfg = replace(cfg, lr=0.075 * math.sqrt(b) if r["lr_rule"] == "sqrt" else 0.3 * b / 256)
    if cfg.workers is None:
        cfg = replace(cfg, workers=loader_workers())
    return cfg


def build_model(cfg: SimCLRConfig, env: Dist) -> tuple[torch.nn.Module, SimCLRModel]:
    """(what the loop calls: DDP/compiled wrapper, the plain SimCLRModel inside it)."""
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(cfg.model)
    net = SimCLRModel(encoder, build_projector(RECIPES[cfg.recipe]["projector"], encoder.feature_dim), cfg.temperature)
    if env.world_size > 1 and env.device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # BN statistics over the global batch
    net = Precision.of(env.device, cfg.bf16, cfg.channels_last).place(net)
    model = DDP(net, device_ids=[env.local_rank] if env.device.type == "cuda" else None) if env.world_size > 1 else net
    return (torch.compile(model) if cfg.compile else model), net


def simclr_config(cfg: SimCLRConfig, env: Dist, datasets: list[dict], steps_per_epoch: int, init: dict) -> dict:
    """config.json (trainer.config.run_config's shape). `init`: what trainer.pretrain_init loaded (or Nones);
    `datasets`: what each --data is and how much of a batch it gives."""
    from trainer.finetune import default_init_name
    recipe = RECIPES[cfg.recipe]
    return run_config(cfg, task="simclr", init=default_init_name(cfg.init), setting="pretrain", fraction=1.0,
                      seed=cfg.seed, world_size=env.world_size,
                      resolved={"data": cfg.data[0] if len(cfg.data) == 1 else list(cfg.data)},
                      derived={"data_train_samples": sum(d["train_samples"] for d in datasets), "datasets": datasets,
                               **init,
                               "projector": recipe["projector"], "schedule": recipe["schedule"],
                               "steps_per_epoch": steps_per_epoch, "per_rank_batch": cfg.batch_size // env.world_size})


@dataclass
class PretrainJob:
    """A built run: what the loop, end_epoch and the checkpoints use."""
    cfg: SimCLRConfig
    env: Dist
    log: RunLog
    dataset: TlxDataset
    aug: AugmentConfig
    loader: TwoViewLoader
    model: torch.nn.Module     # what the loop calls (DDP and/or compiled)
    net: SimCLRModel           # the plain model inside it (what checkpoints hold)
    optimizer: LARS
    schedule: Schedule
    config: dict               # config.json
    train_data: dict           # the training split's identity, compared on resume


@dataclass
class PretrainState:
    """Where a run is; a checkpoint holds it besides the weights, the current epoch's running sums included."""
    step: int = 0
    epoch: int = 0                # epochs done
    epoch_loss_sum: float = 0.0
    epoch_steps: int = 0
    epoch_time: float = 0.0       # seconds of training in the current epoch
    wall_s: float = 0.0           # seconds since the run started, over restarts


def build(cfg: SimCLRConfig, env: Dist, progress: Progress) -> PretrainJob:
    log = RunLog(cfg.out, enabled=env.is_main, progress=progress)
    weights = parse_mix(cfg.mix, len(cfg.data))
    datasets = [open_dataset(d) for d in cfg.data]
    loader_kind = (cfg.loader if cfg.loader != "auto"
                   else ("dali" if env.device.type == "cuda" and _has_dali() else "torch"))
    aug = AugmentConfig(image_size=cfg.image_size, blur_p=cfg.blur_p, normalize=cfg.normalize, window=cfg.window,
                        input_scale=cfg.input_scale)
    common = dict(global_batch=cfg.batch_size, rank=env.rank, world_size=env.world_size, seed=cfg.seed, aug=aug,
                  workers=cfg.workers, device=env.device)
    if len(datasets) == 1:
        loader = make_loader(loader_kind, datasets[0], "train", **common,
                             **({"threads": cfg.dali_threads} if loader_kind == "dali" else {}))
    elif loader_kind == "dali":
        raise TrainerError("--loader dali reads one --data; a mixed run (several --data) reads with --loader torch")
    else:
        loader = MixedTwoViewLoader(datasets, weights, "train", **common)
    model, net = build_model(cfg, env)
    init = ({"init_checkpoint": None, "init_sha256": None, "init_variant": "scratch", "init_loaded": []}
            if cfg.init == "scratch" else load_pretrain_init(net, cfg.init, cfg.model))
    optimizer = LARS(lars_param_groups(net, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, form=cfg.lars_form)
    spe = loader.steps_per_epoch
    schedule = Schedule(RECIPES[cfg.recipe]["schedule"], cfg.lr, cfg.epochs, spe, cfg.warmup_epochs)
    counts = getattr(loader, "counts", [cfg.batch_size])
    described = [{"data": path, "kind": ds.kind, "rgb": image_member(ds)[1], "weight": w, "per_batch": n,
                  "train_samples": ds.num_samples("train"),
                  "to_unit": "uint8 / 255" if image_member(ds)[1] else cfg.normalize, "input_scale": cfg.input_scale}
                 for path, ds, w, n in zip(cfg.data, datasets, weights, counts)]
    identity = [ds.split_identity("train") for ds in datasets]
    return PretrainJob(cfg, env, log, datasets[0], aug, loader, model, net, optimizer, schedule,
               simclr_config(cfg, env, described, spe, init), identity[0] if len(identity) == 1 else identity)


def saved_config(ckpt: dict) -> dict:
    """A checkpoint's config.json; one from before --lars-form ran LARS with the lr outside the momentum."""
    return {"lars_form": "lr-outside", **ckpt["config"]}


def resume(job: PretrainJob) -> PretrainState | None:
    """The state of the checkpoint --resume names, loaded into the model and optimizer; None: a new run."""
    ckpt, source = find_resume_point(job.cfg.resume, job.cfg.out, fix="pick a new --out")
    if ckpt is None:
        return None
    before = ckpt.get("train_data")  # checkpoints older than this check lack train_data
    if before is not None and before != job.train_data:
        data = job.cfg.data[0] if len(job.cfg.data) == 1 else list(job.cfg.data)
        raise TrainerError(f"cannot resume: --data {data!r} holds another training split "
                           f"({_samples(job.train_data)} samples) than the checkpoint's run ({_samples(before)} "
                           f"samples, other shards); use that dataset or a new --out")
    # --data may move (PRETRAIN_MAY_CHANGE), but its training split must be the one the run started on (above)
    check_same_run(saved_config(ckpt), job.config, flags=[f.name for f in fields(SimCLRConfig)], source=source,
                   fix="a new --out", may_change=PRETRAIN_MAY_CHANGE)
    job.net.encoder.load_state_dict(ckpt["encoder"])
    job.net.projector.load_state_dict(ckpt["projector"])
    job.optimizer.load_state_dict(ckpt["optimizer"])
    restore_rng_states(ckpt["rng"], job.env.rank)
    state = PretrainState(**{f.name: ckpt[f.name] for f in fields(PretrainState)})
    state.epoch_loss_sum = resumed_loss_sum(ckpt, job.env)  # this rank's own, not rank 0's
    job.log.note(f"resumed from {source} at step {state.step}")
    return state


def _samples(identity: dict | list) -> str:
    return str(identity["samples"]) if isinstance(identity, dict) else "+".join(str(i["samples"]) for i in identity)


def save(job: PretrainJob, state: PretrainState) -> None:
    """checkpoints/last.pt (every rank calls it)."""
    save_resume_point(Path(job.cfg.out) / "checkpoints" / "last.pt", job.env.is_main, job.cfg.model,
                      job.net.encoder.state_dict(), projector=job.net.projector.state_dict(),
                      optimizer=job.optimizer.state_dict(), config=job.config, train_data=job.train_data,
                      **asdict(state))


def keep_epoch(job: PretrainJob, epoch: int) -> None:
    """checkpoints/epoch-<epoch>.pt: a copy of the last.pt just written (rank 0), atomically."""
    if job.env.is_main:
        ckpts = Path(job.cfg.out) / "checkpoints"
        with stops_deferred(), atomic_write(ckpts / f"epoch-{epoch}.pt") as f, open(ckpts / "last.pt", "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)


def train_step(model, optimizer, x1, x2, autocast, memory_format=torch.contiguous_format, grad_cache_chunk=0):
    """One optimizer step on a batch of view pairs; returns the (rank-local) loss."""
    x1, x2 = (v.contiguous(memory_format=memory_format) for v in (x1, x2))
    with autocast:
        if grad_cache_chunk:
            loss = grad_cache_step(model, x1, x2, grad_cache_chunk)
        else:
            loss = model(x1, x2)
            loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def main(argv: list[str] | None = None) -> dict:
    """Train; returns the final state (step, epoch, ...). Raises TrainerError for bad input."""
    cfg = resolve(parse_config(SimCLRConfig, argv, description=__doc__.split("\n")[0], epilog=__doc__,
                               old_spellings=OLD_SPELLINGS))
    env = init_dist(cfg.device)
    try:
        with drawn(enabled=env.is_main) as progress, RunGuard(env, "trainer.simclr") as guard:
            return train(cfg, env, progress, guard)
    finally:
        close_dist(env)


def train(cfg: SimCLRConfig, env: Dist, progress: Progress = silent, guard: RunGuard | None = None) -> dict:
    """The run, continued from its checkpoint when --resume finds one, up to --max-steps or the last epoch.
    `guard`: the run folder's lock is taken there before the run reads or writes it (trainer/run_guard.py)."""
    job = build(cfg, env, progress)
    if guard is not None:
        guard.hold(cfg.out)
    resumed = resume(job)
    # --init-epoch: a new run starts where the schedule (and the data order) of epoch init_epoch begins
    spe = job.loader.steps_per_epoch
    state = resumed or PretrainState(step=cfg.init_epoch * spe, epoch=cfg.init_epoch)
    job.log.write_config(job.config)
    total = job.schedule.total_steps if cfg.max_steps is None else min(cfg.max_steps, job.schedule.total_steps)
    # A finished run keeps its lines (its partial epoch's too); a run started afresh (no checkpoint: a first
    # attempt killed before its first one) drops what an earlier attempt logged, or its steps would appear twice.
    if resumed is None or state.step < total:
        job.log.resume_at(epochs_done=state.step // job.loader.steps_per_epoch, step=state.step)
    first_step = state.step
    loop(job, state, total)
    if state.step == first_step:
        job.log.note(f"nothing to do: the run in {cfg.out} is already at step {state.step} of {total}")
    job.loader.close()
    return asdict(state)


def loop(job: PretrainJob, state: PretrainState, total: int) -> None:
    """Steps from state.step to `total`. A steps.jsonl line every --log-every steps; at an epoch's end
    (or where the run stops) its metrics.jsonl line; then, and every --checkpoint-every steps, last.pt."""
    cfg, env, spe = job.cfg, job.env, job.loader.steps_per_epoch
    precision = Precision.of(env.device, cfg.bf16, cfg.channels_last)
    autocast, fmt = precision.autocast(), precision.memory_format
    session_start, wall_before = time.perf_counter(), state.wall_s
    wall = lambda: wall_before + time.perf_counter() - session_start  # noqa: E731
    step = state.step
    # The epoch's loss sum stays on the device (no per-step sync); float64, so it adds like the checkpoint's float.
    loss_sum = torch.tensor(state.epoch_loss_sum, dtype=torch.float64, device=env.device)
    job.model.train()
    job.log.begin(step, total)
    while step < total:
        epoch, start = divmod(step, spe)
        t0 = time.perf_counter()
        for batch in job.loader.epoch(epoch, start):
            lr = job.schedule(step)
            set_lr(job.optimizer, lr)
            loss = train_step(job.model, job.optimizer, batch.view1, batch.view2, autocast, fmt, cfg.grad_cache_chunk)
            step += 1
            loss_sum += loss.detach()
            state.epoch_steps += 1
            if step % cfg.log_every == 0 or step == total:
                ips = state.epoch_steps * cfg.batch_size / (state.epoch_time + time.perf_counter() - t0)
                job.log.step(step, total, epoch + 1, all_reduce_mean(loss.detach(), env.device), lr, ips)
            epoch_done, stopping = step % spe == 0, step >= total
            if epoch_done or stopping or checkpoint_due(step, cfg.checkpoint_every):
                state.step, state.epoch_time = step, state.epoch_time + time.perf_counter() - t0
                state.epoch_loss_sum = loss_sum.item()
                if epoch_done or stopping:
                    end_epoch(job, state, lr, wall(), partial=not epoch_done)
                if epoch_done:
                    state.epoch_loss_sum, state.epoch_steps, state.epoch_time = 0.0, 0, 0.0
                    loss_sum.zero_()
                state.epoch, state.wall_s = step // spe, wall()
                save(job, state)
                if epoch_done and cfg.keep_every and state.epoch % cfg.keep_every == 0:
                    keep_epoch(job, state.epoch)
                t0 = time.perf_counter()
            if stopping:
                break


def end_epoch(job: PretrainJob, state: PretrainState, lr: float, wall_s: float, partial: bool) -> None:
    """The metrics.jsonl line of the epoch that state.step ends (a `partial` one when --max-steps stops inside it)."""
    cfg, env = job.cfg, job.env
    epoch = (state.step - 1) // job.loader.steps_per_epoch + 1
    row = {"epoch": epoch, "step": state.step,
           "train_loss": all_reduce_mean(state.epoch_loss_sum / state.epoch_steps, env.device),
           "lr": lr, "images_per_s": state.epoch_steps * cfg.batch_size / max(state.epoch_time, 1e-9),
           "wall_s": wall_s}
    if partial:
        row["partial"] = True
    if isinstance(job.loader, MixedTwoViewLoader):  # what the epoch's steps drew from each --data (all ranks)
        counts = job.loader.source_counts(epoch - 1, state.step - (epoch - 1) * job.loader.steps_per_epoch)
        row["source_samples"] = counts
        row["source_fractions"] = [c / sum(counts) for c in counts]
    if cfg.eval_every and env.is_main and (epoch % cfg.eval_every == 0 or partial or epoch == cfg.epochs):
        try:
            row["val_knn_accuracy"] = knn_probe(job.net.encoder, job.dataset, job.aug, env.device, cfg.knn_bank,
                                                cfg.knn_queries, seed=cfg.seed)
        except UserError as exc:  # a dataset without labels or val split: say so, train on
            job.log.note(f"kNN probe skipped: {exc}")
    job.log.epoch(row)
    job.log.note(f"epoch {epoch}{' (partial)' if partial else ''}: loss {row['train_loss']:.4f}"
                 + (f"  kNN accuracy {row['val_knn_accuracy']:.3f}" if "val_knn_accuracy" in row else ""))


def _has_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    exit_on_user_error(main)
