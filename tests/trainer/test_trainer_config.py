"""Config dataclass <-> flags <-> JSON."""
import json
from dataclasses import dataclass

import pytest

from trainer.config import build_parser, config_dict, load_config, opt, parse_config, save_json


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


def test_json_round_trip(tmp_path):
    cfg = Cfg(data="d", window=(-160.0, 240.0))
    save_json({**config_dict(cfg), "task": "simclr"}, tmp_path / "run" / "config.json")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["window"] == [-160.0, 240.0] and saved["task"] == "simclr"
    assert load_config(Cfg, saved) == cfg
    assert not list((tmp_path / "run").glob("*.tmp"))
