"""BiT ResNet-v2: published sizes, the encoder interface (heads, U-Net), weight
standardisation, the .npz converter, and activation checkpointing."""
import numpy as np
import pytest
import torch

from tests.fixtures.bit_npz import bit_npz_keys as _bit_npz_keys
from trainer.bit_weights import bit_model_name, bit_name, bit_state_dict, converted_shape, load_bit_npz
from trainer.errors import TrainerError
from trainer.models import build_encoder
from trainer.models.bit import BIT_ARCHS, StdConv2d
from trainer.models.unet import UNetDecoder
from trainer.task_heads import TaskModel

# Published parameter counts, with the head they were counted with: the Hugging Face model
# cards of timm's ports of the released BiT weights (google-research/big_transfer). The first
# three were read from the cards for this test; the four 1000-class figures after them are the
# same cards' values as recalled (docs/bit.md says which is which).
PUBLISHED = [("bit-r50x1", 21843, 68.3e6), ("bit-r101x1", 21843, 87.2e6), ("bit-r152x4", 1000, 936.5e6),
             ("bit-r50x1", 1000, 25.5e6), ("bit-r50x3", 1000, 217.3e6), ("bit-r101x3", 1000, 387.9e6),
             ("bit-r152x2", 1000, 236.3e6)]


@pytest.mark.parametrize("name,classes,published", PUBLISHED)
def test_parameter_counts_match_published_bit_sizes_within_one_percent(name, classes, published):
    with torch.device("meta"):   # shapes only: R152x4 would need 3.7 GB otherwise
        model = build_encoder(name, num_classes=classes)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - published) / published < 0.01
    # the head is exactly (features + 1) * classes: the rest is the backbone
    assert model.fc.weight.numel() + model.fc.bias.numel() == (model.feature_dim + 1) * classes


def test_r152x4_backbone_is_928m_and_widths_scale():
    with torch.device("meta"):
        big = build_encoder("bit-r152x4")
        r50x1 = build_encoder("bit-r50x1")
    assert sum(p.numel() for p in big.parameters()) == 928_340_224
    assert big.feature_dim == 8192 and r50x1.feature_dim == 2048
    assert big.stage_channels == [256, 1024, 2048, 4096, 8192]


def test_stages_strides_channels_and_pooled_features():
    model = build_encoder("bit-tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stages = model.forward_stages(x)
        feats = model(x)
    assert [s.shape[-1] for s in stages] == [32, 16, 8, 4, 2]
    assert [s.shape[1] for s in stages] == model.stage_channels
    assert feats.shape == (2, model.feature_dim)
    assert torch.allclose(feats, stages[-1].mean(dim=(2, 3)))
    assert (stages[-1] >= 0).all()   # the pooled map is relu(norm(block4))


@pytest.mark.parametrize("kind", ["backboned-unet", "smp-unet"])
def test_unet_and_heads_work_on_bit_encoder(kind):
    torch.manual_seed(0)
    enc = build_encoder("bit-tiny")
    seg = TaskModel(enc, "segmentation", num_outputs=3, decoder=kind)
    x = torch.randn(2, 3, 64, 48)
    logits = seg(x)
    assert logits.shape == (2, 3, 64, 48)
    logits.sum().backward()
    assert enc.body.block1.unit01.conv1.weight.grad.abs().sum() > 0
    cls = TaskModel(build_encoder("bit-tiny"), "classification", num_outputs=5)
    assert cls(x).shape == (2, 5)
    assert isinstance(seg.decoder, UNetDecoder)


def test_weight_standardisation_formula_and_affine_invariance():
    torch.manual_seed(0)
    conv = StdConv2d(4, 6, 3, padding=1, bias=False)
    x = torch.randn(1, 4, 8, 8)
    w = conv.weight.detach()
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    std = ((w - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    ref = torch.nn.functional.conv2d(x, (w - mean) / std, padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-5)
    with torch.no_grad():   # a per-output-channel scale and shift of the weight changes nothing
        conv.weight.mul_(torch.arange(1, 7.0).view(6, 1, 1, 1)).add_(3.0)
    assert torch.allclose(conv(x), ref, atol=1e-4)


def test_zero_head_and_unknown_checkpointing_model():
    model = build_encoder("bit-tiny", num_classes=7)
    assert torch.count_nonzero(model.fc.weight) == 0 and torch.count_nonzero(model.fc.bias) == 0
    with pytest.raises(TrainerError,
                       match=r"--checkpoint-activations needs a GroupNorm model \(bit-\*\), not 'resnet50'"):
        build_encoder("resnet50", checkpoint_activations=True)


# --- the released .npz layout -------------------------------------------------------------

def test_npz_in_bit_layout_loads_strictly_with_kernels_transposed(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(s).astype(np.float32)
              for k, s in _bit_npz_keys([1, 1, 1, 1], 16, classes=5).items()}
    path = tmp_path / "BiT-M-tiny.npz"
    np.savez(path, **arrays)
    state = load_bit_npz(str(path))
    model = build_encoder("bit-tiny", num_classes=5)
    model.load_state_dict(state, strict=True)          # every key present, no extra, shapes right
    assert len(state) == len(arrays) == len(model.state_dict())
    k = arrays["resnet/block2/unit01/b/standardized_conv2d/kernel"]    # HWIO
    w = model.body.block2.unit01.conv2.weight
    assert w[5, 3, 0, 2] == torch.tensor(k[0, 2, 3, 5])
    assert torch.equal(model.body.block3.unit01.downsample.weight[:, :, 0, 0],
                       torch.from_numpy(arrays["resnet/block3/unit01/a/proj/standardized_conv2d/kernel"][0, 0].T))
    assert torch.equal(model.fc.weight, torch.from_numpy(arrays["resnet/head/conv2d/kernel"][0, 0].T))
    assert torch.equal(model.body.block4.unit01.gn1.bias,
                       torch.from_numpy(arrays["resnet/block4/unit01/a/group_norm/beta"]))
    assert torch.equal(model.norm.weight, torch.from_numpy(arrays["resnet/group_norm/gamma"]))


@pytest.mark.parametrize("name", list(BIT_ARCHS))
def test_every_released_key_maps_onto_the_model_and_the_name_is_read_from_the_shapes(name):
    layers, width = BIT_ARCHS[name]
    keys = _bit_npz_keys(layers, 64 * width, classes=21843)
    with torch.device("meta"):   # shapes only: the x4 models' arrays are gigabytes
        own = {k: tuple(v.shape) for k, v in build_encoder(name, num_classes=21843).state_dict().items()}
    mapped = {}
    for key, shape in keys.items():
        target, kind = bit_name(key[len("resnet/"):])
        mapped[target] = converted_shape(shape, kind)
    assert mapped == own                      # a bijection with matching shapes
    with torch.device("meta"):
        assert bit_model_name(build_encoder(name).state_dict()) == name


def test_foreign_keys_and_files_are_refused(tmp_path):
    keys = _bit_npz_keys([1, 1, 1, 1], 16)
    npz = {k: np.zeros(s, np.float32) for k, s in keys.items()}
    with pytest.raises(TrainerError, match=r"key 'resnet/block1/unit01/d/group_norm/gamma' is not in the BiT"):
        bit_state_dict({**npz, "resnet/block1/unit01/d/group_norm/gamma": np.zeros(3, np.float32)})
    with pytest.raises(TrainerError, match=r"key 'vit/embedding' does not start with 'resnet/'"):
        bit_state_dict({**npz, "vit/embedding": np.zeros(3, np.float32)})
    with pytest.raises(TrainerError, match=r"match none of bit-r50x1"):
        bit_model_name(bit_state_dict(npz))   # 16 root channels: no released model
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(TrainerError, match=r"cannot be read as .npz"):
        load_bit_npz(str(bad))


# --- activation checkpointing ---------------------------------------------------------------

@pytest.mark.parametrize("head", ["classification", "segmentation"])
def test_checkpointed_stages_give_identical_loss_and_gradients(head):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = TaskModel(build_encoder("bit-tiny", checkpoint_activations=ckpt), head, num_outputs=3)
        loss = model(x).square().mean()
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss0, g0), (loss1, g1) = grads
    assert torch.equal(loss0, loss1)
    assert g0.keys() == g1.keys() and len(g0) > 40
    for name in g0:
        assert torch.allclose(g0[name], g1[name], rtol=0, atol=1e-7), name
    assert sum(int(torch.equal(g0[n], g1[n])) for n in g0) == len(g0)   # bit for bit on CPU


def test_checkpointing_really_recomputes_in_backward():
    calls = []
    model = build_encoder("bit-tiny", checkpoint_activations=True)
    model.body.block2.unit01.gn1.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    assert len(calls) == 2          # once in forward, once recomputed in backward
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(calls) == 3          # evaluation does not checkpoint
