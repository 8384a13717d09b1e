"""Masked BCE (missing labels give zero gradient), Dice losses, and metrics with missing labels."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.errors import TrainerError
from trainer.metrics import classification_results, dice_metrics, mean_auc, multilabel_results
from trainer.task_heads import task_loss
from trainer.task_losses import dice_loss
from trainer.tasks import get_task


def test_masked_bce_ignores_missing_labels_in_value_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    target = (torch.rand(6, 4) > 0.5).float()
    target[0, 1] = target[3, 0] = target[5, 3] = float("nan")
    target[2, 2] = 0.7                                         # a smoothed label is taken as it is
    w = torch.tensor([1.0, 2.0, 0.5, 1.0])
    loss = task_loss("multilabel", logits, target, w)
    loss.backward()
    missing = torch.isnan(target)
    assert (logits.grad[missing] == 0).all() and (logits.grad[~missing] != 0).all()
    p = torch.sigmoid(logits.detach())
    t = torch.nan_to_num(target)
    per = -(w * (t * torch.log(p) + (1 - t) * torch.log(1 - p)))
    assert torch.allclose(loss, per[~missing].sum() / (~missing).sum(), atol=1e-6)
    # the value of a missing label does not matter; with none missing it is the plain (weighted) BCE mean
    other = target.clone()
    other[missing] = 1.0
    assert torch.allclose(task_loss("multilabel", logits.detach(), other, w),
                          F.binary_cross_entropy_with_logits(logits.detach(), other, weight=w.expand(6, 4)))
    all_missing = torch.full((2, 4), float("nan"))
    zero = task_loss("multilabel", logits[:2], all_missing)
    assert zero.item() == 0 and not torch.isnan(zero)


def test_dice_loss_formula_and_dice_plus_ce():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    p = torch.softmax(logits, 1)
    want = []
    for c in (1, 2):
        t = (target == c).float()
        want.append((2 * (p[:, c] * t).sum() + 1) / (p[:, c].sum() + t.sum() + 1))
    assert torch.allclose(dice_loss(logits, target), 1 - torch.stack(want).mean())
    w = torch.tensor([1.0, 3.0, 10.0])
    assert torch.allclose(task_loss("segmentation", logits, target, w, "dice+ce"),
                          dice_loss(logits, target) + F.cross_entropy(logits, target, weight=w))
    perfect = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert task_loss("segmentation", perfect, target, None, "dice").item() < 1e-6


def test_auc_and_predictions_leave_missing_targets_out():
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.8, 0.3], [0.3, 0.1]])
    targets = np.array([[1, np.nan], [0, 1], [np.nan, 0], [0, np.nan]])
    m = mean_auc(scores, targets, ["a", "b"])
    assert m["auc_a"] == 1.0 and m["auc_b"] == 1.0                       # rows 0, 1, 3 for a; 1, 2 for b
    metrics, rows = multilabel_results(scores, targets, ["s0", "s1", "s2", "s3"], ["a", "b"])
    assert list(zip(rows["sample"], rows["label"])) == [("s0", "a"), ("s1", "a"), ("s1", "b"), ("s2", "b"), ("s3", "a")]
    with pytest.raises(TrainerError,
                       match=r"^1 evaluation targets are neither 0, 1 nor missing \(soft labels, e.g. 0.7\)"):
        multilabel_results(scores, np.where(np.isnan(targets), 0, targets) * np.array([1, 0.7]), list("wxyz"),
                           ["a", "b"])


def test_binary_classification_reports_auc_and_dice_variants():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    metrics, _ = classification_results(probs, np.array([0, 1, 1, 0]), list("abcd"))
    assert metrics == {"accuracy": 0.5, "auc": 0.75}
    # two images: one where class 1 is found half (2*1/(2+2)=0.5), one empty in truth and prediction (NaN)
    counts = np.array([[[10, 12, 12], [1, 2, 2]], [[16, 16, 16], [0, 0, 0]]])
    out = dice_metrics(counts, ["a", "b"], ["background", "x"])
    assert out["dice_x"] == 0.5 and out["dice_x_volume"] == 0.5 and out["dice_x_global"] == 0.5
    counts[1, 1] = [0, 6, 0]                                      # image b: 6 false-positive pixels
    out = dice_metrics(counts, ["a", "b"], ["background", "x"])
    assert out["dice_x"] == 0.25 and out["dice_x_global"] == 2 / 10 and out["dice_mean_global"] == 0.2


def test_study_tasks():
    chexpert = get_task("chexpert")
    classes = ["No Finding", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Fracture"]
    assert chexpert.mean_excludes(classes) == ("No Finding", "Fracture")
    with pytest.raises(TrainerError, match=r"averages the AUC of labels \['Edema'\] that the dataset lacks"):
        chexpert.check_classes([c for c in classes if c != "Edema"])
    with pytest.raises(TrainerError, match=r"task pcam scores auc, which needs two classes; the dataset has 3"):
        get_task("pcam").check_classes(["a", "b", "c"])
    assert get_task("siim-acr").seg_loss == "dice+ce" and get_task("drive").metric == "dice_mean_global"
    assert get_task("lits").seg_loss == "ce" and not math.isnan(get_task("mrnet").lr)


def _masked_bce_on_a_rank(out_dir: str) -> None:
    """Rank r's half of one batch (its own share of missing labels); DDP's gradient averaging, by hand."""
    import torch.distributed as dist
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    layer, x, target = _masked_problem()
    loss = task_loss("multilabel", layer(x[rank * 4:rank * 4 + 4]), target[rank * 4:rank * 4 + 4])
    loss.backward()
    for p in layer.parameters():
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()
    torch.save([p.grad for p in layer.parameters()], f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def _masked_problem():
    torch.manual_seed(0)
    layer, x = torch.nn.Linear(3, 4), torch.randn(8, 3)
    target = (torch.rand(8, 4) > 0.5).float()
    target[:4][torch.rand(4, 4) < 0.6] = float("nan")           # rank 0's half misses many more labels
    target[5, 2] = float("nan")
    return layer, x, target


def test_masked_bce_on_two_ranks_equals_one_process(tmp_path):
    """The mean over observed labels is the global batch's: 2 gloo ranks give one process's gradient."""
    from tests.trainer.dist_helpers import run_ranks
    run_ranks(_masked_bce_on_a_rank, str(tmp_path))
    layer, x, target = _masked_problem()
    task_loss("multilabel", layer(x), target).backward()
    for rank in (0, 1):
        for got, want in zip(torch.load(tmp_path / f"{rank}.pt"), [p.grad for p in layer.parameters()]):
            assert torch.allclose(got, want, atol=1e-6)
