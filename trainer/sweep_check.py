"""Does a run folder hold the run a sweep asks for? Its config.json against the matrix's flags, without torch.

    differences(run.run_dir, run.flags(), run.task, run.fraction, run.tasks_file)
    # []: the same options; else one phrase per option that differs, e.g.
    # ["--epochs (the run: 2, the matrix: 1)", "--lr (the run: 0.002, the matrix: the task's default 0.001)"]

The rule is trainer.finetune's for a complete run (trainer/run_identity.py): every option
counts except where and how a run runs and how often it saves and logs. config.json holds
the value each flag had, resolved (docs/run-format.md), and `flags_set`, the flags its
command line set. So a flag the matrix gives is compared with the value the run used, read
as trainer.finetune parses it (by the type config.json holds); a flag the run set that the
matrix leaves out is compared with the task's default where that is a hyperparameter
(trainer/tasks.py), and otherwise counts as a difference (the default another run resolves,
from its init or dataset, is not known without them). An `--init` file whose sha256 is no
longer the run's also differs: the checkpoint was replaced since. A run folder without a
readable config.json cannot tell, and counts as different. Runs written before `flags_set`
are compared on the matrix's flags only.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError
from trainer.run_identity import COMPLETE_MAY_CHANGE, FINETUNE_MAY_CHANGE
from trainer.tasks import HYPERPARAMETERS, get_task, parse_class_weights, resolve_class_weights

NOT_COMPARED = COMPLETE_MAY_CHANGE | FINETUNE_MAY_CHANGE


def saved_config(run_dir: Path) -> dict | None:
    """config.json, flat (the older finetune shape's `args` lifted); None when missing or unreadable."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    return {**config["args"], **config} if isinstance(config.get("args"), dict) else config


def given_flags(tokens: list[str]) -> dict[str, list[str] | bool]:
    """["--epochs", "2", "--window", "-200", "300", "--no-compile"] -> {"epochs": ["2"], "window": [...],
    "compile": False}: config keys (`_` for `-`) and their value tokens, True/False for a bare switch."""
    out: dict[str, list[str] | bool] = {}
    key = None
    for token in tokens:
        if token.startswith("--"):
            key = token[2:].replace("-", "_")
            out[key] = []
        elif key is not None:
            out[key].append(token)
    for key in [k for k, v in out.items() if v == []]:   # a switch: --x is True, --no-x is False
        if key.startswith("no_"):
            del out[key]
            out[key[3:]] = False
        else:
            out[key] = True
    return out


def _same_scalar(text: str, saved: Any) -> bool:
    if saved is None:
        return text.lower() == "none"
    if isinstance(saved, bool):
        return False
    if isinstance(saved, (int, float)):
        try:
            return float(text) == float(saved)
        except ValueError:
            return False
    return text == saved


def same_value(key: str, given: list[str] | bool, saved: Any, config: dict) -> bool:
    """Would trainer.finetune, given these tokens for `key`, record `saved` in config.json?"""
    if isinstance(given, bool) or isinstance(saved, bool):
        return given is saved
    if key == "class_weights" and isinstance(saved, list) and len(given) == 1:   # recorded resolved, per class
        try:
            return resolve_class_weights(parse_class_weights(given[0]), config.get("classes", []), strict=True) == saved
        except TrainerError:
            return False
    if isinstance(saved, list):
        return len(given) == len(saved) and all(_same_scalar(t, s) for t, s in zip(given, saved))
    return len(given) == 1 and _same_scalar(given[0], saved)


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def init_changed(init: str, config: dict) -> bool:
    """The --init file is no longer the one the run started from (its sha256 differs)."""
    path = Path(init)
    if init == "scratch" or not path.is_file() or not isinstance(config.get("init_sha256"), str):
        return False
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns) != config["init_sha256"]


def differences(run_dir: Path, tokens: list[str], task: str, fraction: float, tasks_file: str | None) -> list[str]:
    """One phrase per option in which the run folder's config.json differs from `tokens` (the flags the sweep
    would run it with); [] when it holds that run."""
    config = saved_config(run_dir)
    if config is None:
        return ["no readable config.json, so its options are unknown"]
    given = given_flags(tokens)
    out = []
    for key, value in given.items():
        target = "init_checkpoint" if key == "init" else key   # config.json's `init` is the init's name
        if key in NOT_COMPARED or target not in config:
            continue
        if not (key == "init" and value == ["scratch"] and config[target] is None) \
                and not same_value(key, value, config[target], config):
            shown = " ".join(value) if isinstance(value, list) else f"--{'' if value else 'no-'}{key}"
            out.append(f"--{key.replace('_', '-')} (the run: {json.dumps(config[target])}, the matrix: {shown})")
    if isinstance(given.get("init"), list) and len(given["init"]) == 1 and init_changed(given["init"][0], config):
        out.append("--init (its file changed since the run started: another init_sha256)")
    set_by_run = config.get("flags_set")
    for key in set_by_run if isinstance(set_by_run, list) else []:
        if key in given or key in NOT_COMPARED or key not in config:
            continue
        if key in HYPERPARAMETERS:
            default = get_task(task, tasks_file).hyperparameters(fraction)[key]
            if config[key] != default:
                out.append(f"--{key.replace('_', '-')} (the run: {json.dumps(config[key])}, the matrix: the task's "
                           f"default {json.dumps(default)})")
        else:
            out.append(f"--{key.replace('_', '-')} (the run: {json.dumps(config[key])}, the matrix: its default)")
    return out
