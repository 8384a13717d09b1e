"""The ResNet's parameter names and shapes match torchvision's layout exactly."""
import pytest
import torch

from tests.fixtures.torchvision_layout import torchvision_resnet_keys
from trainer.errors import TrainerError
from trainer.models import build_encoder


def torchvision_resnet50_keys() -> dict[str, tuple[int, ...]]:
    return torchvision_resnet_keys()


def test_resnet50_state_dict_matches_torchvision_layout():
    model = build_encoder("resnet50", num_classes=1000)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == torchvision_resnet50_keys()
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's count


def test_torchvision_state_dict_loads_strictly():
    ref = build_encoder("resnet50", num_classes=1000)
    sd = {k: torch.randn(s) if s else torch.tensor(7) for k, s in torchvision_resnet50_keys().items()}
    ref.load_state_dict(sd, strict=True)
    assert torch.equal(ref.layer3[5].conv2.weight, sd["layer3.5.conv2.weight"])


def test_zero_init_last_bn_gamma_makes_blocks_identity_residuals():
    model = build_encoder("resnet50")
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            assert torch.count_nonzero(block.bn3.weight) == 0
            assert torch.all(block.bn1.weight == 1)


@pytest.mark.parametrize("name,dim", [("resnet50", 2048), ("resnet18", 512), ("resnet-tiny", 256)])
def test_feature_dims_and_stage_strides(name, dim):
    model = build_encoder(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stages = model.forward_stages(x)
        feats = model(x)
    assert feats.shape == (2, dim) == (2, model.feature_dim)
    assert [s.shape[-1] for s in stages] == [32, 16, 8, 4, 2]
    assert [s.shape[1] for s in stages] == model.stage_channels


def test_unknown_model_name_lists_known():
    with pytest.raises(TrainerError, match=r"--model 'resnet51' is not one of bit-r101x1, .*, bit-tiny, resnet-tiny, "
                                           r"resnet-tiny-keras, resnet101, resnet152, resnet18, resnet50, "
                                           r"resnet50-keras, "
                                           r"wide_resnet101_2, wide_resnet50_2"):
        build_encoder("resnet51")
