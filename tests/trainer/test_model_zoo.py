"""The larger ResNets: torchvision's parameter names and counts, strict loads, U-Net widths, SimCLR."""
import pytest
import torch

from tests.fixtures.torchvision_layout import torchvision_resnet_keys
from trainer.models import MODELS, build_encoder
from trainer.models.unet import UNetDecoder

# torchvision's counts minus fc (2048 * 1000 + 1000 = 2,049,000 parameters)
FC_LESS = {"resnet101": 42_500_160, "resnet152": 58_143_808,
           "wide_resnet50_2": 66_834_240, "wide_resnet101_2": 124_837_696}
TORCHVISION = {"resnet101": 44_549_160, "resnet152": 60_192_808,
               "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(FC_LESS))
def test_parameter_counts_are_torchvisions(name):
    with torch.device("meta"):   # shapes only: no memory, no init time
        assert _count(build_encoder(name)) == FC_LESS[name]
        assert _count(build_encoder(name, num_classes=1000)) == TORCHVISION[name]


def _torchvision_keys(blocks, width_factor) -> dict[str, tuple[int, ...]]:
    return torchvision_resnet_keys(blocks, width_factor, fc=False)


LAYOUTS = {"resnet101": ([3, 4, 23, 3], 1), "resnet152": ([3, 8, 36, 3], 1),
           "wide_resnet50_2": ([3, 4, 6, 3], 2), "wide_resnet101_2": ([3, 4, 23, 3], 2)}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_torchvision_layout_state_dict_loads_strictly(name):
    expected = _torchvision_keys(*LAYOUTS[name])
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in build_encoder(name).state_dict().items()}
    assert ours == expected
    assert sum(torch.Size(s).numel() for k, s in expected.items() if not k.endswith(("running_mean", "running_var",
               "num_batches_tracked"))) == FC_LESS[name]


def test_strict_load_of_a_wide_state_dict_copies_every_tensor():
    enc = build_encoder("wide_resnet50_2")
    sd = {k: torch.randn(s) if s else torch.tensor(3) for k, s in _torchvision_keys([3, 4, 6, 3], 2).items()}
    enc.load_state_dict(sd, strict=True)
    assert torch.equal(enc.layer2[0].conv2.weight, sd["layer2.0.conv2.weight"])
    assert enc.layer2[0].conv2.stride == (2, 2)   # v1.5: the stride sits in the 3x3 conv


@pytest.mark.parametrize("name,widths", [("resnet18", [64, 64, 128, 256, 512]), ("resnet-tiny", [8, 32, 64, 128, 256]),
                                         ("wide_resnet50_2", [64, 256, 512, 1024, 2048])])
def test_unet_decoder_takes_the_encoders_widths(name, widths):
    enc = build_encoder(name)
    assert enc.stage_channels == widths
    dec = UNetDecoder(enc.stage_channels, num_classes=3)
    x = torch.randn(1, 3, 64, 64)
    assert dec(enc.forward_stages(x), out_size=x.shape[-2:]).shape == (1, 3, 64, 64)
    assert dec.blocks[0].up.in_channels == widths[-1]


def test_every_registered_model_builds_a_simclr_model():
    from trainer.models.projector import build_projector
    from trainer.models.simclr_model import SimCLRModel
    for name in MODELS:
        with torch.device("meta"):
            enc = build_encoder(name)
            model = SimCLRModel(enc, build_projector("paper", enc.feature_dim), 0.5)
        assert model.projector[0].in_features == enc.feature_dim


def test_keras_resnet50_variant_has_keras_trainable_count():
    """keras.applications.ResNet50(include_top=False): 23,534,592 trainable parameters = tlx resnet50's
    23,508,032 plus one bias per conv output channel (26,560)."""
    with torch.device("meta"):
        model = build_encoder("resnet50-keras")
        assert _count(model) == 23_534_592
        assert _count(build_encoder("resnet50")) == 23_508_032
    assert model.layer3[0].conv1.stride == (2, 2) and model.layer3[0].conv2.stride == (1, 1)   # v1: 1x1 strides
    assert model.bn1.eps == 1.001e-5 and model.conv1.bias is not None
