"""`tlx export`: the encoder leaves tlx as tensors only, readable with weights_only=True, and equal bit for bit."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from tests.fixtures.optional import need
from trainer.checkpoint import new_checkpoint, save_checkpoint
from trainer.errors import TrainerError
from trainer.export import export_encoder
from trainer.models import build_encoder

CONFIG = {"image_size": 64, "normalize": "hu", "window": [-1000.0, 400.0], "data": "data/ct", "lr": 0.3}


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder("resnet-tiny")
    path = tmp_path / "last.pt"
    save_checkpoint(new_checkpoint("resnet-tiny", encoder.state_dict(), step=7, epoch=2, config=CONFIG,
                                   rng={"numpy": np.random.get_state()}, projector={"w": torch.ones(2)}), path)
    return path, encoder


def _same(state, encoder):
    own = encoder.state_dict()
    assert sorted(state) == sorted(own)
    assert all(torch.equal(state[k], own[k]) for k in own)


def test_a_tlx_checkpoint_needs_weights_only_false_but_the_export_does_not(tmp_path, checkpoint):
    path, encoder = checkpoint
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path)   # what a user meets today: the RNG states are numpy objects
    written = export_encoder(path, tmp_path / "enc.pth")
    _same(torch.load(tmp_path / "enc.pth", weights_only=True), encoder)
    meta = json.loads(written[1].read_text())
    assert meta["model"] == "resnet-tiny" and meta["source"]["step"] == 7
    assert meta["inputs"] == {"channels": 3, "image_size": 64, "normalize": "hu", "window": [-1000.0, 400.0],
                              "data": "data/ct"}
    assert meta["parameters"] == sum(p.numel() for p in encoder.parameters()) + sum(
        b.numel() for n, b in encoder.named_buffers() if not n.endswith("num_batches_tracked"))


def test_safetensors_export_is_bit_identical(tmp_path, checkpoint):
    need("safetensors")
    from safetensors.torch import load_file
    path, encoder = checkpoint
    export_encoder(path, tmp_path / "enc.safetensors")
    _same(load_file(tmp_path / "enc.safetensors"), encoder)


def test_bad_names_and_existing_files_are_refused(tmp_path, checkpoint):
    path, _ = checkpoint
    with pytest.raises(TrainerError, match=r"must end in one of \.pth, \.safetensors"):
        export_encoder(path, tmp_path / "enc.bin")
    export_encoder(path, tmp_path / "enc.pth")
    with pytest.raises(TrainerError, match=r"enc.pth.*exists; give another name, or --force"):
        export_encoder(path, tmp_path / "enc.pth")
    export_encoder(path, tmp_path / "enc.pth", force=True)


def test_the_cli_says_what_it_wrote_and_refuses_in_one_line(tmp_path, checkpoint):
    path, _ = checkpoint
    result = CliRunner().invoke(cli, ["export", str(path), str(tmp_path / "e.pth")])
    assert result.exit_code == 0 and result.output.count("wrote ") == 2
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "e.pth"), str(tmp_path / "f.pth")])
    assert result.exit_code == 2 and "is not a tlx checkpoint" in result.output
