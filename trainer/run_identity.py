"""Which options make a run the run it is: the one changed-options rule of resume, of complete runs and of sweeps.

    from trainer.run_identity import MAY_CHANGE, changed_keys, flag_names, set_flags
    changed = changed_keys(saved_config, config, skip=MAY_CHANGE | {"eval_batch_size"})   # ["lr", "epochs"]
    flag_names(changed, flags={"lr", "epochs"})                                          # "--lr, --epochs"
    set_flags(cfg, ignore=MAY_CHANGE)        # the flags a command line gave a value other than their default

A run is its config.json (trainer.config.run_config). Two configs are the same run when
they agree on every key both hold, except the keys that only say where and how a run
runs, how often it saves and logs (MAY_CHANGE, plus each trainer's own), never what it
computes. A key only one of them holds (a config older than the key) is not compared.
Resuming may also change `--max-steps` (the run goes on further); a complete run may not
(its result is that of the steps it ran): COMPLETE_MAY_CHANGE.

No torch here: `tlx sweep` uses it to tell complete runs of other options (trainer/sweep_check.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

# config.json keys that may differ between a run and its resumption in both trainers: where and how it
# runs, how often it saves and logs, not what it computes. `flags_set` says how values were given, not
# which ones. Each trainer adds its own (trainer.simclr.PRETRAIN_MAY_CHANGE, FINETUNE_MAY_CHANGE).
MAY_CHANGE = frozenset({"out", "run_dir", "device", "workers", "max_steps", "resume", "checkpoint_every",
                        "log_every", "world_size", "tool_version", "flags_set"})
# A complete run's result is that of the steps it ran: --max-steps is part of what it computed.
COMPLETE_MAY_CHANGE = MAY_CHANGE - {"max_steps"}
# trainer.finetune's own: the val/test batch changes how many samples a forward pass holds, not the result;
# --save-masks only adds masks.npz; --compile fuses the same computation (as trainer.simclr's).
FINETUNE_MAY_CHANGE = frozenset({"eval_batch_size", "save_masks", "compile"})


def changed_keys(saved: dict[str, Any], now: dict[str, Any], skip: Iterable[str]) -> list[str]:
    """Keys of `now` whose value differs from `saved`'s, in `now`'s order; keys in `skip` and keys that
    `saved` lacks are not compared."""
    skip = set(skip)
    return [k for k in now if k in saved and k not in skip and saved[k] != now[k]]


def flag_names(keys: Iterable[str], flags: Iterable[str]) -> str:
    """"--lr, --epochs, data_train_samples": a config key as its flag where it is one."""
    flags = set(flags)
    return ", ".join(f"--{k.replace('_', '-')}" if k in flags else k for k in keys)


def set_flags(cfg: Any, ignore: Iterable[str] = ()) -> list[str]:
    """The fields of a config dataclass holding a value other than their default (the flags a command line
    set), sorted, without `ignore`. config.json keeps them as `flags_set`, so that a reader (`tlx sweep`)
    can tell a value chosen on the command line from one the run resolved by itself."""
    ignore = set(ignore)
    return sorted(f.name for f in dataclasses.fields(cfg)
                  if f.name not in ignore and getattr(cfg, f.name) != f.default)
