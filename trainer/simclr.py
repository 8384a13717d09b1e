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
4096, LARS lr 0.075 * sqrt(batch) = 4.8, weight decay 1e-6, cosine per epoch over 100
epochs without warmup, temperature 0.5, the study's Sigmoid projector (-> 256), crop,
flip, brightness/contrast jitter, no blur. `simclr` is SimCLR v1: temperature 0.1,
2048-2048-128 head, lr 0.3 * batch / 256, 10 warmup epochs then cosine per step,
Gaussian blur p = 0.5. Every value can be overridden by its flag.

`--batch-size` is the global batch (over all ranks); NT-Xent uses all of it (every
rank's embeddings are gathered). The run directory gets config.json, metrics.jsonl (one
line per epoch), steps.jsonl (one line per logged step) and checkpoints/last.pt, saved
atomically every `--ckpt-every` steps and at each epoch's end. A run whose out folder
holds a checkpoint continues from it (`--resume auto`, the default): model, optimizer,
schedule, RNG and the position inside the epoch are restored and the result is bit for
bit that of an uninterrupted run (on CPU; GPU kernels are not all deterministic, see
docs/trainer.md), which is what `torchrun --max-restarts` needs.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer import checkpoint as ck
from trainer.config import check_at_least, config_dict, opt, parse_config, tool_version
from trainer.data.augment import AugmentConfig
from datakit.read import open_dataset
from trainer.data.loader import make_loader
from trainer.dist import Dist, all_reduce_mean, close_dist, gather_floats, init_dist, rank_share
from tlxcore.errors import UserError
from trainer.errors import TrainerError, exit_on_user_error
from trainer.gradcache import grad_cache_step
from trainer.knn import knn_probe
from trainer.models import build_encoder
from trainer.models.projector import build_projector
from trainer.models.simclr_model import SimCLRModel
from trainer.optim import LARS, Schedule, lars_param_groups, set_lr
from trainer.runlog import RunLog

RECIPES = {
    "paper": dict(epochs=100, batch_size=4096, image_size=256, temperature=0.5, weight_decay=1e-6,
                  projector="paper", schedule="cosine-epoch", warmup_epochs=0.0, blur_p=0.0, lr_rule="sqrt"),
    "simclr": dict(epochs=100, batch_size=4096, image_size=256, temperature=0.1, weight_decay=1e-6,
                   projector="simclr", schedule="warmup-cosine", warmup_epochs=10.0, blur_p=0.5, lr_rule="linear"),
}


@dataclass
class SimCLRConfig:
    data: str = opt(None, "dataset folder written by `tlx shard` (manifest.json inside)", required=True)
    out: str = opt(None, "run folder (config.json, metrics.jsonl, checkpoints/)", required=True)
    recipe: str = opt("paper", "hyperparameter set; every value below overrides it", choices=tuple(RECIPES))
    model: str = opt("resnet50", "encoder: resnet50, resnet18, resnet-tiny (tests, demo)")
    device: str = opt("auto", "cuda, cpu, or auto (cuda when available)", choices=("auto", "cuda", "cpu"))
    epochs: int | None = opt(None, "epochs (recipe: 100)")
    max_steps: int | None = opt(None, "stop after this many steps in total (the schedule still spans --epochs)")
    batch_size: int | None = opt(None, "GLOBAL batch over all ranks (recipe: 4096)")
    image_size: int | None = opt(None, "view size in pixels (recipe: 256)")
    lr: float | None = opt(None, "peak learning rate (recipe: paper 0.075*sqrt(batch), simclr 0.3*batch/256)")
    weight_decay: float | None = opt(None, "LARS weight decay, not on biases/BN (recipe: 1e-6)")
    momentum: float = opt(0.9, "LARS momentum")
    temperature: float | None = opt(None, "NT-Xent temperature (recipe: paper 0.5, simclr 0.1)")
    warmup_epochs: float | None = opt(None, "linear warmup (recipe: paper 0, simclr 10)")
    blur_p: float | None = opt(None, "Gaussian blur probability (recipe: paper 0, simclr 0.5)")
    normalize: str = opt("minmax", "pixels to [0, 1]: per-slice min-max, or a fixed HU window", choices=("minmax", "hu"))
    window: tuple[float, float] = opt((-1024.0, 3072.0), "HU window for --normalize hu: LOW HIGH")
    loader: str = opt("auto", "data loader; auto = dali on GPU when installed, else torch",
                      choices=("auto", "dali", "torch"))
    workers: int = opt(8, "loader worker processes per rank")
    dali_threads: int = opt(4, "DALI operator threads per rank")
    grad_cache_chunk: int = opt(0, "exact gradient caching: views per forward chunk (0 = off; see docs/trainer.md)")
    compile: bool = opt(False, "torch.compile the model")
    bf16: bool = opt(True, "bf16 autocast on GPU (the loss stays float32)")
    channels_last: bool = opt(True, "channels_last memory format on GPU")
    seed: int = opt(0, "seed of the weights, the data order and the augmentations")
    resume: str = opt("auto", "auto: continue from OUT/checkpoints/last.pt if present; none: refuse; or a checkpoint path")
    ckpt_every: int = opt(250, "also checkpoint every N steps (0 = at epoch ends only)")
    eval_every: int = opt(10, "kNN probe on the val split every N epochs and at the end (0 = off)")
    knn_bank: int = opt(4096, "kNN probe: training samples in the bank")
    knn_queries: int = opt(1024, "kNN probe: val samples classified")
    log_every: int = opt(10, "steps between steps.jsonl lines / progress updates")


# Fields that may change when a run resumes; any other difference is refused.
RESUMABLE = {"data", "out", "device", "max_steps", "loader", "workers", "dali_threads", "compile", "resume",
             "ckpt_every", "eval_every", "knn_bank", "knn_queries", "log_every"}


def resolve(cfg: SimCLRConfig) -> SimCLRConfig:
    """Fill every unset field from the recipe; the result is what config.json records."""
    r = RECIPES[cfg.recipe]
    cfg = replace(cfg, **{k: r[k] for k in ("epochs", "batch_size", "image_size", "temperature", "weight_decay",
                                            "warmup_epochs", "blur_p") if getattr(cfg, k) is None})
    check_at_least(cfg, {"batch_size": 1, "epochs": 1, "image_size": 1, "log_every": 1, "ckpt_every": 0,
                         "eval_every": 0, "grad_cache_chunk": 0})
    if cfg.lr is None:
        b = cfg.batch_size
        cfg = replace(cfg, lr=0.075 * math.sqrt(b) if r["lr_rule"] == "sqrt" else 0.3 * b / 256)
    return cfg


def build_model(cfg: SimCLRConfig, env: Dist) -> tuple[torch.nn.Module, SimCLRModel]:
    """(what the loop calls: DDP/compiled wrapper, the plain SimCLRModel inside it)."""
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(cfg.model)
    net = SimCLRModel(encoder, build_projector(RECIPES[cfg.recipe]["projector"], encoder.feature_dim), cfg.temperature)
    if env.world_size > 1 and env.device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # BN statistics over the global batch
    net = net.to(env.device)
    if env.device.type == "cuda" and cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = DDP(net, device_ids=[env.local_rank] if env.device.type == "cuda" else None) if env.world_size > 1 else net
    return (torch.compile(model) if cfg.compile else model), net


def run_config(cfg: SimCLRConfig, env: Dist, dataset, steps_per_epoch: int) -> dict:
    return {"task": "simclr", "init": "scratch", "setting": "pretrain", "fraction": 1.0, "seed": cfg.seed,
            "world_size": env.world_size, "tool_version": tool_version(), "data": str(Path(cfg.data).resolve()),
            "data_train_samples": dataset.num_samples("train"), "init_checkpoint": None, "init_sha256": None,
            "projector": RECIPES[cfg.recipe]["projector"], "schedule": RECIPES[cfg.recipe]["schedule"],
            "steps_per_epoch": steps_per_epoch, "per_rank_batch": cfg.batch_size // env.world_size,
            **config_dict(cfg)}


def find_checkpoint(cfg: SimCLRConfig) -> dict | None:
    last = Path(cfg.out) / "checkpoints" / "last.pt"
    if cfg.resume == "none":
        if last.exists():
            raise TrainerError(f"{last} exists and --resume none: pick a new --out or use --resume auto")
        return None
    if cfg.resume == "auto":
        return ck.load_checkpoint(last) if last.exists() else None
    return ck.load_checkpoint(cfg.resume)


def check_resumable(cfg: SimCLRConfig, ckpt: dict, train_data: dict) -> None:
    """--data may move (RESUMABLE), but its training split must be the one the run started on."""
    saved, before = ckpt["config"], ckpt.get("train_data")  # checkpoints older than this check lack train_data
    if before is not None and before != train_data:
        raise TrainerError(f"cannot resume: --data {cfg.data!r} holds another training split ({train_data['samples']} "
                           f"samples) than the checkpoint's run ({before['samples']} samples, other shards); "
                           f"use that dataset or a new --out")
    changed = [f.name for f in fields(cfg) if f.name not in RESUMABLE and f.name in saved
               and config_dict(cfg)[f.name] != saved[f.name]]
    if changed:
        raise TrainerError(f"cannot resume: {', '.join(f'--{c.replace(chr(95), chr(45))}' for c in changed)} "
                           f"differ from the checkpoint's run; use the same values or a new --out")


def save(path: Path, net: SimCLRModel, optimizer, state: dict, cfg: SimCLRConfig, env: Dist, train_data: dict) -> None:
    rng = ck.gather_rng_states()  # collectives: every rank calls them
    loss_sums = gather_floats(state["epoch_loss_sum"])  # the ranks' partial-epoch loss sums differ
    if env.is_main:
        ck.save_checkpoint(ck.new_checkpoint(cfg.model, net.encoder.state_dict(), projector=net.projector.state_dict(),
                                             optimizer=optimizer.state_dict(), rng=rng, config=config_dict(cfg),
                                             train_data=train_data, epoch_loss_sums=loss_sums, **state), path)


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
    cfg = resolve(parse_config(SimCLRConfig, argv, description=__doc__.split("\n")[0], epilog=__doc__))
    env = init_dist(cfg.device)
    try:
        return train(cfg, env)
    finally:
        close_dist(env)


def train(cfg: SimCLRConfig, env: Dist) -> dict:
    run, log = Path(cfg.out), RunLog(cfg.out, enabled=env.is_main)
    dataset = open_dataset(cfg.data)
    loader_kind = cfg.loader if cfg.loader != "auto" else ("dali" if env.device.type == "cuda" and _has_dali() else "torch")
    aug = AugmentConfig(image_size=cfg.image_size, blur_p=cfg.blur_p, normalize=cfg.normalize, window=cfg.window)
    loader = make_loader(loader_kind, dataset, "train", global_batch=cfg.batch_size, rank=env.rank,
                         world_size=env.world_size, seed=cfg.seed, aug=aug, workers=cfg.workers, device=env.device,
                         **({"threads": cfg.dali_threads} if loader_kind == "dali" else {}))
    model, net = build_model(cfg, env)
    optimizer = LARS(lars_param_groups(net, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    r, spe = RECIPES[cfg.recipe], loader.steps_per_epoch
    schedule = Schedule(r["schedule"], cfg.lr, cfg.epochs, spe, cfg.warmup_epochs)
    # Besides weights, a checkpoint carries the position and the current epoch's running sums.
    state = {"step": 0, "epoch": 0, "epoch_loss_sum": 0.0, "epoch_steps": 0, "epoch_time": 0.0, "wall_s": 0.0}
    ckpt, train_data = find_checkpoint(cfg), dataset.split_identity("train")
    if ckpt is not None:
        check_resumable(cfg, ckpt, train_data)
        net.encoder.load_state_dict(ckpt["encoder"])
        net.projector.load_state_dict(ckpt["projector"])
        optimizer.load_state_dict(ckpt["optimizer"])
        ck.restore_rng_states(ckpt["rng"], env.rank)
        state.update({k: ckpt[k] for k in state})
        state["epoch_loss_sum"] = rank_share(ckpt.get("epoch_loss_sums"), ckpt["epoch_loss_sum"], env)  # rank's own
        log.note(f"resumed from {cfg.resume if cfg.resume != 'auto' else run / 'checkpoints/last.pt'} at step {state['step']}")
    log.write_config(run_config(cfg, env, dataset, spe))
    total = schedule.total_steps if cfg.max_steps is None else min(cfg.max_steps, schedule.total_steps)
    if ckpt is not None and state["step"] < total:  # a finished run keeps its lines (its partial epoch's too)
        log.resume_at(epochs_done=state["step"] // spe, step=state["step"])
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if env.device.type == "cuda" and cfg.bf16
                else contextlib.nullcontext())
    fmt = torch.channels_last if env.device.type == "cuda" and cfg.channels_last else torch.contiguous_format
    first_step, session_start, wall_before = state["step"], time.perf_counter(), state["wall_s"]
    wall = lambda: wall_before + time.perf_counter() - session_start  # noqa: E731
    step = first_step
    # The epoch's loss sum stays on the device (no per-step sync); float64, so it adds like the checkpoint's float.
    loss_sum = torch.tensor(state["epoch_loss_sum"], dtype=torch.float64, device=env.device)
    model.train()
    with log.progress(total, done=step, every=cfg.log_every) as bar:
        while step < total:
            epoch, start = divmod(step, spe)
            t0 = time.perf_counter()
            for batch in loader.epoch(epoch, start):
                lr = schedule(step)
                set_lr(optimizer, lr)
                loss = train_step(model, optimizer, batch.view1, batch.view2, autocast, fmt, cfg.grad_cache_chunk)
                step += 1
                loss_sum += loss.detach()
                state["epoch_steps"] += 1
                if step % cfg.log_every == 0 or step == total:
                    ips = state["epoch_steps"] * cfg.batch_size / (state["epoch_time"] + time.perf_counter() - t0)
                    global_loss = all_reduce_mean(loss.detach(), env.device)
                    log.step({"step": step, "epoch": epoch + 1, "loss": global_loss, "lr": lr, "images_per_s": ips})
                    bar.update(step, f"epoch {epoch + 1}  loss {global_loss:.4f}  lr {lr:.3g}  {ips:,.0f} img/s")
                epoch_done, stopping = step % spe == 0, step >= total
                if not (epoch_done or stopping or (cfg.ckpt_every and step % cfg.ckpt_every == 0)):
                    continue
                state["epoch_time"] += time.perf_counter() - t0
                state["epoch_loss_sum"] = loss_sum.item()
                if epoch_done or stopping:
                    end_epoch(cfg, env, log, net, dataset, aug, state, epoch, step, lr, wall(), partial=not epoch_done)
                if epoch_done:
                    state.update(epoch_loss_sum=0.0, epoch_steps=0, epoch_time=0.0)
                    loss_sum.zero_()
                state.update(step=step, epoch=step // spe, wall_s=wall())
                save(run / "checkpoints" / "last.pt", net, optimizer, state, cfg, env, train_data)
                t0 = time.perf_counter()
                if stopping:
                    break
    if step == first_step:
        log.note(f"nothing to do: the run in {run} is already at step {step} of {total}")
    loader.close()
    return state


def end_epoch(cfg, env, log, net, dataset, aug, state, epoch, step, lr, wall_s, partial: bool) -> None:
    """One metrics.jsonl line per epoch (a `partial` one when --max-steps stops inside an epoch)."""
    row = {"epoch": epoch + 1, "step": step,
           "train_loss": all_reduce_mean(state["epoch_loss_sum"] / state["epoch_steps"], env.device),
           "lr": lr, "images_per_s": state["epoch_steps"] * cfg.batch_size / max(state["epoch_time"], 1e-9),
           "wall_s": wall_s}
    if partial:
        row["partial"] = True
    if cfg.eval_every and env.is_main and ((epoch + 1) % cfg.eval_every == 0 or partial or epoch + 1 == cfg.epochs):
        try:
            row["val_knn_accuracy"] = knn_probe(net.encoder, dataset, aug, env.device, cfg.knn_bank, cfg.knn_queries,
                                                seed=cfg.seed)
        except UserError as exc:  # a dataset without labels or val split: say so, train on
            log.note(f"kNN probe skipped: {exc}")
    log.epoch(row)
    log.note(f"epoch {epoch + 1}{' (partial)' if partial else ''}: loss {row['train_loss']:.4f}"
             + (f"  kNN accuracy {row['val_knn_accuracy']:.3f}" if "val_knn_accuracy" in row else ""))


def _has_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    exit_on_user_error(main)
