"""Foreign checkpoint layouts: written here from a tlx model in each layout, found, stripped, loaded strictly,
and giving the original model's outputs."""
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from tests.fixtures.optional import need
from trainer.checkpoint import new_checkpoint, save_checkpoint
from trainer.errors import TrainerError
from trainer.models import build_encoder
from trainer.task_heads import load_init, read_init
from trainer.weight_layouts import extract_encoder, guess_model


def _model(name="resnet-tiny", num_classes=10) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_encoder(name, num_classes=num_classes)
    for m in model.modules():   # non-trivial BN statistics and gammas, so a wrong mapping shows in the outputs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


def _layouts(sd):
    enc = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    head = {"0.weight": torch.randn(4, 256)}
    return {
        "torchvision": (sd, "", ["fc.* (the pretraining classifier, 2 keys)"]),
        "dataparallel": (_prefixed(sd, "module."), "module.", ["module.fc.* (the pretraining classifier, 2 keys)"]),
        "moco": ({"state_dict": {**_prefixed(enc, "module.encoder_q."), **_prefixed(head, "module.encoder_q.fc."),
                                 **_prefixed(enc, "module.encoder_k."), "module.queue": torch.randn(128, 64),
                                 "module.queue_ptr": torch.zeros(1)}, "epoch": 200, "arch": "resnet50"},
                 "module.encoder_q.", ["module.encoder_q.fc.* (the pretraining classifier, 1 key)",
                                       f"module.encoder_k.* (the momentum encoder, {len(enc)} keys)",
                                       "module.queue.* (a pretraining head, 1 key)",
                                       "module.queue_ptr.* (a pretraining head, 1 key)"]),
        "byol": ({**_prefixed(enc, "online_network.encoder."), **_prefixed(head, "online_network.projector.net."),
                  **_prefixed(enc, "target_network.encoder."), **_prefixed(head, "predictor.net.")},
                 "online_network.encoder.", ["online_network.projector.* (a pretraining head, 1 key)",
                                             f"target_network.* (the momentum encoder, {len(enc)} keys)",
                                             "predictor.* (a pretraining head, 1 key)"]),
        "backbone": ({**_prefixed(enc, "backbone."), **_prefixed(head, "head.")}, "backbone.",
                     ["head.* (a pretraining head, 1 key)"]),
        "encoder": ({**_prefixed(enc, "encoder."), **_prefixed(head, "projector.")}, "encoder.",
                    ["projector.* (a pretraining head, 1 key)"]),
        "model": ({"model": _prefixed(sd, "model.")}, "model.", ["model.fc.* (the pretraining classifier, 2 keys)"]),
        "timm": ({"arch": "resnet50", "epoch": 90, "state_dict": sd}, "",
                 ["fc.* (the pretraining classifier, 2 keys)"]),
    }


@pytest.mark.parametrize("layout", ["torchvision", "dataparallel", "moco", "byol", "backbone", "encoder", "model",
                                    "timm"])
def test_each_layout_loads_strictly_and_gives_the_same_outputs(tmp_path, layout):
    model = _model()
    obj, prefix, dropped = _layouts(model.state_dict())[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(obj, path)
    state, info = read_init(str(path))
    assert (info.layout, info.stripped, info.dropped) == (layout if layout != "dataparallel" else "torchvision",
                                                           prefix, dropped)
    assert info.model_guess == "resnet-tiny"
    encoder = build_encoder("resnet-tiny").eval()
    load_init(encoder, state, info, allow_partial=False)
    assert info.missing == info.unexpected == info.mismatched == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_features(x)
        assert expected.abs().max() > 0.1     # the test sees the weights
        assert torch.allclose(encoder(x), expected, atol=1e-5, rtol=0)


def test_tlx_simclr_checkpoint_is_its_own_layout(tmp_path):
    model = _model(num_classes=0)
    save_checkpoint(new_checkpoint("resnet-tiny", model.state_dict(), projector={"0.weight": torch.randn(4, 256)}),
                    tmp_path / "last.pt")
    state, info = read_init(str(tmp_path / "last.pt"))
    assert (info.layout, info.model_name) == ("tlx-checkpoint", "resnet-tiny")
    encoder = build_encoder("resnet-tiny").eval()
    load_init(encoder, state, info, allow_partial=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder(x), model(x), atol=1e-5, rtol=0)


def test_keys_outside_the_encoder_and_heads_are_an_error_naming_them():
    sd = _model().state_dict()
    with pytest.raises(TrainerError, match=r"2 keys are neither the encoder under 'module.encoder_q.' \(moco layout\) "
                                           r"nor a head .*: module.lr_scale, module.temperature$"):
        extract_encoder({**_prefixed(sd, "module.encoder_q."), "module.temperature": torch.ones(1),
                         "module.lr_scale": torch.ones(1)})


def test_unknown_prefix_is_an_unknown_layout():
    with pytest.raises(TrainerError, match=r"unknown layout: the encoder's keys sit under student.trunk.; known"):
        extract_encoder(_prefixed(_model().state_dict(), "student.trunk."))
    with pytest.raises(TrainerError, match=r"no ResNet encoder found"):
        extract_encoder({"weight": torch.ones(3)})


def test_non_head_key_mismatch_is_a_strict_load_error(tmp_path):
    sd = _model().state_dict()
    sd["layer1.0.conv1.weight"] = torch.randn(3, 3, 1, 1)
    torch.save(_prefixed(sd, "backbone."), tmp_path / "bad.pth")
    state, info = read_init(str(tmp_path / "bad.pth"))
    with pytest.raises(TrainerError, match=r"strict load failed: 1 shape-mismatched: layer1.0.conv1.weight"):
        load_init(build_encoder("resnet-tiny"), state, info, allow_partial=False)


def test_partial_init_that_would_load_nothing_is_an_error(tmp_path):
    torch.save(_model("resnet18").state_dict(), tmp_path / "r18.pth")
    state, info = read_init(str(tmp_path / "r18.pth"))
    assert info.model_guess == "resnet18"
    with pytest.raises(TrainerError, match=r"not one of its \d+ keys matches the encoder's .*would load nothing"):
        load_init(build_encoder("resnet-tiny"), state, info, allow_partial=True)


@pytest.mark.parametrize("name", ["resnet18", "resnet-tiny", "resnet-tiny-keras"])
def test_guess_model_finds_the_registered_model(name):
    assert guess_model(build_encoder(name).state_dict()) == name
    assert guess_model({"conv1.weight": torch.ones(1)}) is None


def test_weights_inspect_shows_the_detection(tmp_path):
    obj, _, _ = _layouts(_model().state_dict())["moco"]
    torch.save(obj, tmp_path / "moco.pth.tar")
    res = CliRunner().invoke(cli, ["weights", "inspect", str(tmp_path / "moco.pth.tar")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[:2] == ["layout    moco", "stripped  'module.encoder_q.'"]
    assert "model     resnet-tiny" in lines
    assert sum(line.startswith("dropped") for line in lines) == 4
    torch.save(_prefixed(_model().state_dict(), "student."), tmp_path / "odd.pth")
    res = CliRunner().invoke(cli, ["weights", "inspect", str(tmp_path / "odd.pth")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "unknown layout" in res.output


# ---------------------------------------------------------------------------------------------
# Keras .h5

def _write_keras_h5(model: torch.nn.Module, path) -> None:
    """Write `model` (a Keras-layout tlx ResNet) as Keras 2's save_weights would: one group per layer,
    `layer_names` and `weight_names` attributes, kernels (kh, kw, in, out), BN gamma/beta/moving_*."""
    h5py = need("h5py")
    bn = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    layers: dict[str, list] = {}
    for key, value in model.state_dict().items():
        module, param = key.rsplit(".", 1)
        if param == "num_batches_tracked":
            continue
        if module in ("conv1", "bn1"):
            layer = "conv1_conv" if module == "conv1" else "conv1_bn"
        else:
            stage, block, part = module.split(".", 2)
            i, what = (0, "conv" if part.endswith("0") else "bn") if part.startswith("downsample") \
                else (int(part[-1]), part[:-1])
            layer = f"conv{int(stage[-1]) + 1}_block{int(block) + 1}_{i}_{what}"
        array = value.numpy()
        name = ("kernel" if array.ndim == 4 else "bias") if layer.endswith("conv") else bn[param]
        layers.setdefault(layer, []).append((f"{layer}/{name}:0", array.transpose(2, 3, 1, 0) if array.ndim == 4
                                             else array))
    layers["probs"] = [("probs/kernel:0", torch.randn(256, 10).numpy()), ("probs/bias:0", torch.zeros(10).numpy())]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in layers]
        for layer, weights in layers.items():
            group = f.create_group(layer)
            group.attrs["weight_names"] = [w.encode() for w, _ in weights]
            for w, array in weights:
                group.create_dataset(w, data=array)


def test_keras_h5_converts_to_the_conv_bias_model(tmp_path):
    model = _model("resnet-tiny-keras", num_classes=0)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.bias.data.uniform_(-0.1, 0.1)
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)   # v1
    assert model.bn1.eps == 1.001e-5
    _write_keras_h5(model, tmp_path / "radimagenet.h5")
    res = CliRunner().invoke(cli, ["weights", "convert", str(tmp_path / "radimagenet.h5"), str(tmp_path / "r.pt")])
    assert res.exit_code == 0, res.output
    # 17 convs (stem, 4 blocks x 3, 4 shortcuts) x (kernel, bias) + 17 BNs x 4 = 102 tensors
    assert "resnet-tiny-keras, 102 tensors; dropped probs/kernel, probs/bias" in res.output
    state, info = read_init(str(tmp_path / "r.pt"))
    assert info.model_name == "resnet-tiny-keras"
    encoder = build_encoder("resnet-tiny-keras").eval()
    load_init(encoder, state, info, allow_partial=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder(x), model(x), atol=1e-5, rtol=0)


def test_keras_convert_refuses_other_files(tmp_path):
    h5py = need("h5py")
    with h5py.File(tmp_path / "k3.h5", "w") as f:
        f.create_group("layers")
    res = CliRunner().invoke(cli, ["weights", "convert", str(tmp_path / "k3.h5"), str(tmp_path / "o.pt")])
    assert res.exit_code == 2 and "no Keras 2 'layer_names' attribute" in res.output
    (tmp_path / "x.h5").write_text("not hdf5")
    res = CliRunner().invoke(cli, ["weights", "convert", str(tmp_path / "x.h5"), str(tmp_path / "o.pt")])
    assert res.exit_code == 2 and "is not an HDF5 file h5py can read" in res.output
