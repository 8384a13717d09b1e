"""Accuracy, AUC and Dice against values computed by hand."""
import math

import numpy as np
import pytest

from trainer.metrics import accuracy, dice_counts, dice_from_counts, dice_metrics, mean_auc, roc_auc


def test_accuracy():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert math.isnan(accuracy([], []))


def test_auc_by_hand():
    # positives score 0.9, 0.4; negatives 0.5, 0.1: pairs (pos > neg) = (0.9>0.5, 0.9>0.1, 0.4>0.1) = 3 of 4
    assert roc_auc([0.9, 0.5, 0.4, 0.1], [1, 0, 1, 0]) == 0.75
    # a tie between a positive and a negative counts one half: pairs 1 + 0.5 of 2
    assert roc_auc([0.7, 0.7, 0.2], [1, 0, 1]) == pytest.approx(0.25)
    assert roc_auc([0.3, 0.2, 0.1], [1, 1, 0]) == 1.0


def test_auc_is_nan_when_a_label_has_one_class_and_mean_skips_it():
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.6], [0.8, 0.3, 0.2], [0.1, 0.4, 0.9]])
    targets = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]])
    out = mean_auc(scores, targets, ["a", "b", "c"])
    assert out["auc_a"] == 1.0 and out["auc_c"] == 1.0
    assert math.isnan(out["auc_b"])  # label b absent from this test set
    assert out["mean_auc"] == 1.0
    assert mean_auc(scores, targets, ["a", "b", "c"], exclude_from_mean=("a",))["mean_auc"] == 1.0
    assert math.isnan(mean_auc(scores[:, 1:2], targets[:, 1:2], ["b"])["mean_auc"])


def test_dice_per_slice_and_empty_truth():
    truth = np.zeros((4, 4), int)
    truth[:2, :2] = 1                         # 4 pixels of class 1
    pred = np.zeros((4, 4), int)
    pred[:2, :1] = 1                          # 2 of them found
    pred[3, 3] = 2                            # class 2 predicted but absent from the truth
    counts = dice_counts(pred, truth, 3)
    assert counts.tolist() == [[11, 13, 12], [2, 2, 4], [0, 1, 0]]
    dice = dice_from_counts(counts)
    assert dice[1] == pytest.approx(2 * 2 / (2 + 4))
    assert dice[2] == 0.0                     # absent in truth, predicted: 0
    empty = dice_from_counts(dice_counts(np.zeros((4, 4), int), np.zeros((4, 4), int), 3))
    assert math.isnan(empty[1]) and math.isnan(empty[2])  # absent in both: NaN, left out of means


def test_dice_regions_are_unions_of_classes():
    truth = np.array([[1, 2], [3, 0]])
    pred = np.array([[2, 2], [0, 0]])
    counts = dice_counts(pred, truth, 4, regions=((1, 2, 3),))
    assert counts.shape == (5, 3)
    assert counts[4].tolist() == [2, 2, 3]    # whole region: pred {a,b}, truth {a,b,c}


def test_dice_metrics_per_slice_and_per_volume():
    # Two volumes; class 1 only. Slice dice: v1: 1.0, NaN (empty both); v2: 0.0, 0.5
    counts = np.array([
        [[0, 0, 0], [3, 3, 3]],
        [[0, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [0, 1, 0]],
        [[0, 0, 0], [1, 1, 3]],
    ])
    out = dice_metrics(counts, ["v1", "v1", "v2", "v2"], ["background", "liver"])
    assert out["dice_liver"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    # v1 pooled: 2*3/6 = 1; v2 pooled: inter 1, pred 2, true 3 -> 2/5
    assert out["dice_liver_volume"] == pytest.approx((1.0 + 0.4) / 2)
    assert out["dice_mean"] == out["dice_liver"]
    assert "dice_background" not in out
