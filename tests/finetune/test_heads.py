"""Task heads, the U-Net decoder, the losses against their formulas, frozen encoders."""
import pytest
import torch

from trainer.models import build_encoder
from trainer.models.unet import UNetDecoder, default_decoder_channels
from trainer.task_heads import TaskModel, task_loss


def test_unet_output_shape_and_skips_from_every_stage():
    enc = build_encoder("resnet-tiny")
    dec = UNetDecoder(enc.stage_channels, num_classes=3)
    for size in (64, 40):                      # 40 is no multiple of 32: sizes still line up
        x = torch.randn(2, 3, size, size)
        assert dec(enc.forward_stages(x), x.shape[-2:]).shape == (2, 3, size, size)
    # the first conv of blocks 1-4 sees the upsampled map plus the skip of that stage
    ins = [b.conv1[0].in_channels for b in dec.blocks]
    widths = default_decoder_channels(enc.feature_dim)
    assert ins == [256 + 128, widths[0] + 64, widths[1] + 32, widths[2] + 8, widths[3]]
    assert default_decoder_channels(2048) == (256, 128, 64, 32, 16)


def test_weighted_cross_entropy_matches_the_formula():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([1.0, 3.0, 10.0])
    logp = torch.log_softmax(logits, 1)
    expected = -(w[target] * logp[torch.arange(6), target]).sum() / w[target].sum()
    assert torch.allclose(task_loss("classification", logits, target, w), expected)
    # pixel-wise: the same formula over every pixel
    seg_logits, seg_target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    lp = torch.log_softmax(seg_logits, 1).permute(0, 2, 3, 1).reshape(-1, 3)
    t = seg_target.reshape(-1)
    expected = -(w[t] * lp[torch.arange(len(t)), t]).sum() / w[t].sum()
    assert torch.allclose(task_loss("segmentation", seg_logits, seg_target, w), expected)


def test_weighted_bce_matches_the_formula():
    torch.manual_seed(1)
    logits, target = torch.randn(5, 4), (torch.rand(5, 4) > 0.5).float()
    w = torch.tensor([1e-3, 1.0, 1.0, 2.0])
    p = torch.sigmoid(logits)
    expected = (-(w * (target * torch.log(p) + (1 - target) * torch.log(1 - p)))).mean()
    assert torch.allclose(task_loss("multilabel", logits, target, w), expected, atol=1e-6)


@pytest.mark.parametrize("kind,outputs", [("classification", 4), ("segmentation", 3)])
def test_frozen_encoder_stays_in_eval_mode_and_gets_no_gradient(kind, outputs):
    model = TaskModel(build_encoder("resnet-tiny"), kind, outputs, frozen_encoder=True).train()
    assert not model.encoder.training and model.head_module().training
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head_module().parameters())
