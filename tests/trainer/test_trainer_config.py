"""Config dataclass <-> flags <-> config.json; old spellings; the --workers default rule."""
from dataclasses import dataclass

import pytest

from tlxcore.runtime import tool_version
from trainer.config import build_parser, opt, parse_config, run_config
from trainer.dist import MAX_LOADER_WORKERS, loader_workers
from trainer.errors import TrainerError


@dataclass
class Cfg:
    data: str = opt(None, "dataset folder", required=True)
    batch_size: int = opt(256, "global batch size")
    lr: float | None = opt(None, "peak lr; none = the recipe's rule")
    normalize: str = opt("minmax", "pixel scaling", choices=("minmax", "hu"))
    window: tuple[float, float] = opt((-1024.0, 3072.0), "HU window")
    compile: bool = opt(False, "torch.compile")


def test_defaults_and_overrides_become_the_dataclass():
    cfg = parse_config(Cfg, ["--data", "d/", "--batch-size", "64", "--lr", "0.3", "--window", "-1000", "1000",
                             "--compile", "--normalize", "hu"])
    assert cfg == Cfg(data="d/", batch_size=64, lr=0.3, normalize="hu", window=(-1000.0, 1000.0), compile=True)
    assert parse_config(Cfg, ["--data", "x", "--lr", "none", "--no-compile"]) == Cfg(data="x")


def test_help_lists_every_flag_with_its_default():
    text = build_parser(Cfg).format_help()
    for flag in ("--data", "--batch-size", "--lr", "--normalize", "--window", "--compile", "--no-compile"):
        assert flag in text
    assert "(default: 256)" in text and "(default: (-1024.0, 3072.0))" in text and "(required)" in text


def test_bad_values_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--data", "d", "--normalize", "zscore"])
    assert "invalid choice: 'zscore'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(Cfg, [])
    assert "--data" in capsys.readouterr().err


def test_run_config_is_flat_contract_then_flags_then_derived():
    cfg = Cfg(data="d", window=(-160.0, 240.0))
    config = run_config(cfg, task="t", init="scratch", setting="finetune", fraction=0.5, seed=3, world_size=2,
                        resolved={"lr": 0.3}, derived={"steps_per_epoch": 9})
    assert list(config) == ["task", "init", "setting", "fraction", "seed", "world_size", "tool_version",
                            "data", "batch_size", "lr", "normalize", "window", "compile", "steps_per_epoch"]
    assert (config["tool_version"], config["lr"], config["window"]) == (tool_version(), 0.3, [-160.0, 240.0])
    with pytest.raises(ValueError, match=r"resolved keys \['momentum'\] are not flags; derived keys \['data'\] are"):
        run_config(cfg, task="t", init="i", setting="s", fraction=1.0, seed=0, world_size=1,
                   resolved={"momentum": 0.9}, derived={"data": "x"})


@pytest.mark.parametrize("argv", [["--data", "d", "--bs", "8"], ["--data", "d", "--bs=8"],
                                  ["--data", "d", "--normalize", "zscore-v1"], ["--normalize=zscore-v1"]])
def test_old_spellings_are_refused_naming_the_new_one(argv):
    old = {"--bs": "--batch-size", "--normalize zscore-v1": "--normalize minmax"}
    name = "--bs" if "bs" in "".join(argv) else "--normalize zscore-v1"
    with pytest.raises(TrainerError, match=rf"^{name} was renamed: use {old[name]} \(same meaning\)$"):
        parse_config(Cfg, argv, old_spellings=old)
    # the same flag with another value is not an old spelling
    assert parse_config(Cfg, ["--data", "d", "--normalize", "hu"], old_spellings=old).normalize == "hu"


def test_loader_workers_is_this_ranks_share_of_its_cores_capped(monkeypatch):
    monkeypatch.setattr("trainer.dist.default_workers", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers() == MAX_LOADER_WORKERS == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")       # torchrun: 16 ranks on this node share 64 cores
    assert loader_workers() == 4
    monkeypatch.setattr("trainer.dist.default_workers", lambda: 2)   # a SLURM task with 2 cores, 16 ranks
    assert loader_workers() == 1
