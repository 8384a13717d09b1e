"""Task heads, the U-Net decoder, the losses against their formulas, frozen encoders."""
import pytest
import torch

from trainer.models import build_encoder
from trainer.models.unet import UNetDecoder, default_decoder_channels
from trainer.task_heads import TaskModel, task_loss


@pytest.mark.parametrize("kind", ["backboned-unet", "smp-unet"])
def test_unet_output_shape_and_skips_from_every_stage(kind):
    enc = build_encoder("resnet-tiny")
    dec = UNetDecoder(enc.stage_channels, num_classes=3, kind=kind)
    for size in (64, 40):                      # 40 is no multiple of 32: sizes still line up
        x = torch.randn(2, 3, size, size)
        assert dec(enc.forward_stages(x), x.shape[-2:]).shape == (2, 3, size, size)
    # the conv after the concatenation sees the upsampled map plus the skip of that stage
    widths = default_decoder_channels(enc.feature_dim)
    if kind == "smp-unet":
        assert [b.conv1[0].in_channels for b in dec.blocks] == [256 + 128, widths[0] + 64, widths[1] + 32,
                                                                widths[2] + 8, widths[3]]
    else:
        assert [b.conv2.in_channels for b in dec.blocks] == [widths[0] + 128, widths[1] + 64, widths[2] + 32,
                                                             widths[3] + 8, widths[4]]
    assert default_decoder_channels(2048) == (256, 128, 64, 32, 16)


def test_the_study_decoder_has_backboned_unets_layers_and_parameter_count():
    """backboned_unet.Unet('resnet50', classes=3) with its defaults: 12,987,584 decoder parameters + 51 for the 1x1
    head; so linear evaluation trains 35.6% of the model (tlx's earlier smp-unet: 9,013,363 and 27.7%)."""
    enc = build_encoder("resnet50")
    dec = UNetDecoder(enc.stage_channels, num_classes=3)          # the default: the study's
    head = sum(p.numel() for p in dec.classifier.parameters())
    assert sum(p.numel() for p in dec.parameters()) - head == 12_987_584 and head == 51
    assert dec.classifier.kernel_size == (1, 1) and dec.classifier.bias is not None
    for block, (cin, cout) in zip(dec.blocks, [(2048, 256), (256, 128), (128, 64), (64, 32), (32, 16)]):
        up = block.up
        assert (up.in_channels, up.out_channels, up.kernel_size, up.stride, up.padding, up.bias) == \
            (cin, cout, (4, 4), (2, 2), (1, 1), None)
        assert block.conv2.kernel_size == (3, 3) and block.conv2.bias is None
    # per block, from backboned_unet's UpsampleBlock (pkgs/backboned_unet/backboned_unet/unet.py in the study's
    # repository): ConvTranspose2d(cin, cout, 4) + BN(cout) + Conv2d(cout + skip, cout, 3) + BN(cout), no biases;
    # skips from infer_skip_channels for resnet50: layer3 1024, layer2 512, layer1 256, relu 64, None 0
    by_hand = [cin * cout * 16 + 2 * cout + (cout + skip) * cout * 9 + 2 * cout
               for cin, cout, skip in [(2048, 256, 1024), (256, 128, 512), (128, 64, 256), (64, 32, 64), (32, 16, 0)]]
    assert by_hand == [11_338_752, 1_262_080, 315_648, 60_544, 10_560] and sum(by_hand) == 12_987_584
    assert [sum(p.numel() for p in b.parameters()) for b in dec.blocks] == by_hand
    model = TaskModel(enc, "segmentation", 3, frozen_encoder=True)
    trains = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trains == 12_987_635 and round(100 * trains / sum(p.numel() for p in model.parameters()), 1) == 35.6
    smp = UNetDecoder(enc.stage_channels, num_classes=3, kind="smp-unet")
    assert sum(p.numel() for p in smp.parameters()) == 9_013_363
    with pytest.raises(ValueError, match="decoder 'unet' is not one of backboned-unet, smp-unet"):
        UNetDecoder(enc.stage_channels, 3, kind="unet")


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
