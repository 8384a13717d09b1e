"""Configuration as a dataclass: every field becomes a command-line flag, the result is saved as JSON.

    from dataclasses import dataclass
    from trainer.config import opt, parse_config, run_config

    @dataclass
    class Config:
        data: str = opt(None, "dataset folder (manifest.json inside)", required=True)
        batch_size: int = opt(256, "global batch size, summed over all ranks")
        normalize: str = opt("minmax", "how pixels become [0, 1]", choices=("minmax", "hu"))
        window: tuple[float, float] = opt((-1024.0, 3072.0), "HU window for --normalize hu")
        lr: float | None = opt(None, "peak learning rate (default: the recipe's rule)")
        compile: bool = opt(False, "torch.compile the model")

    cfg = parse_config(Config, ["--data", "d/", "--window", "-1000", "1000"],
                       old_spellings={"--bs": "--batch-size"})     # `--bs 8`: one line naming --batch-size
    config = run_config(cfg, task="simclr", init="scratch", setting="pretrain", fraction=1.0, seed=0,
                        world_size=1, resolved={"lr": 4.8}, derived={"steps_per_epoch": 9})

Field `batch_size` is flag `--batch-size`; a `bool` gets `--compile/--no-compile`; a
`tuple[float, float]` takes two values; `X | None` accepts the word `none` too. The
help text shows each default. No globals, no exec: the dataclass is the whole config.
`run_config` is the one shape of config.json (docs/run-format.md): flat, the run
contract's keys, then every flag with the value the run used, then what the trainer derived.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from typing import Any, TypeVar

from tlxcore.runtime import tool_version

T = TypeVar("T")


def opt(default: Any, help: str, *, choices: tuple | None = None, required: bool = False) -> Any:
    """A dataclass field with its flag's help text (and allowed values)."""
    meta = {"help": help, "choices": choices, "required": required}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults (dataclass defaults must be immutable)")
    return dataclasses.field(default=default, metadata=meta)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, accepts None) for `X | None` / Optional[X]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar_parser(tp: Any, nullable: bool):
    def parse(text: str):
        if nullable and text.lower() == "none":
            return None
        return tp(text)
    parse.__name__ = getattr(tp, "__name__", "value")  # argparse names the type in its errors
    return parse


def build_parser(cls: type, description: str | None = None, epilog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of dataclass `cls`."""
    parser = argparse.ArgumentParser(description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, nullable = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        default = f.default
        help_text = meta.get("help", "")
        if meta.get("required"):
            help_text += " (required)"
        elif "[default:" not in help_text:  # a help that states its default in words keeps only those
            help_text += f" (default: {default!r})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("required"):
            kwargs["required"] = True
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(tp) is tuple and typing.get_args(tp)[-1] is Ellipsis:  # a repeatable flag
            kwargs.update(action="append", type=_scalar_parser(typing.get_args(tp)[0], False))
            if not meta.get("required"):
                raise TypeError(f"config field {f.name}: a repeatable flag must be required (append has no default)")
            parser.add_argument(flag, **kwargs)
            continue
        if typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            kwargs.update(nargs=len(args), type=_scalar_parser(args[0], False),
                          metavar=tuple(a.__name__.upper() for a in args))
            parser.add_argument(flag, **kwargs)
            continue
        if tp not in (int, float, str):
            raise TypeError(f"config field {f.name}: unsupported type {tp!r}")
        parser.add_argument(flag, type=_scalar_parser(tp, nullable), **kwargs)
    return parser


def from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    values = {}
    for f in dataclasses.fields(cls):
        v = getattr(ns, f.name)
        values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


def parse_config(cls: type[T], argv: list[str] | None = None, description: str | None = None,
                 epilog: str | None = None, old_spellings: dict[str, str] | None = None) -> T:
    """Parse `argv` (sys.argv[1:] when None) into an instance of dataclass `cls`. `old_spellings`
    maps a flag ("--ckpt-every") or a flag and value ("--resume none") of an earlier version to
    its new spelling: given, it is refused with one line naming the new one."""
    argv = sys.argv[1:] if argv is None else list(argv)
    refuse_old_spellings(argv, old_spellings or {})
    parser = build_parser(cls, description, epilog)
    return from_namespace(cls, parser.parse_args(argv))


def refuse_old_spellings(argv: list[str], old_spellings: dict[str, str]) -> None:
    """TrainerError for the first old spelling in `argv` (`--flag`, `--flag value`, `--flag=value`)."""
    from trainer.errors import TrainerError

    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        for old, new in old_spellings.items():
            old_flag, _, old_value = old.partition(" ")
            if flag == old_flag and (not old_value or value == old_value):
                raise TrainerError(f"{old} was renamed: use {new} (same meaning)")


def check_at_least(cfg: Any, minimums: dict[str, int | float]) -> None:
    """TrainerError naming every flag set below its minimum (None: unset, filled in later)."""
    from trainer.errors import TrainerError

    low = [f"--{k.replace('_', '-')} {getattr(cfg, k)} (at least {m})" for k, m in minimums.items()
           if getattr(cfg, k) is not None and getattr(cfg, k) < m]
    if low:
        raise TrainerError(f"out of range: {', '.join(low)}")


def config_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def run_config(cfg: Any, *, task: str, init: str, setting: str, fraction: float, seed: int, world_size: int,
               resolved: dict[str, Any] | None = None, derived: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json of a run, one flat shape for every trainer: the run contract's keys (the
    keyword arguments, and tool_version), then every flag of `cfg`, where a flag left to a
    default the run resolved holds the value used (`resolved`), then the trainer's `derived`
    keys. A contract key wins over a flag of its name (finetune's `--init` is a file, `init`
    the init's name; the file is the derived `init_checkpoint`)."""
    head = dict(task=task, init=init, setting=setting, fraction=fraction, seed=seed, world_size=world_size,
                tool_version=tool_version())
    flags = {k: v for k, v in config_dict(cfg).items() if k not in head}
    unknown = sorted(set(resolved or {}) - flags.keys())
    clash = sorted(set(derived or {}) & (head.keys() | flags.keys()))
    if unknown or clash:  # a programming error, not a user's
        raise ValueError(f"run_config: resolved keys {unknown} are not flags; derived keys {clash} are")
    return json.loads(json.dumps({**head, **flags, **(resolved or {}), **(derived or {})}))  # tuples -> lists
