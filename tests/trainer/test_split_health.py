"""A training subset lacking classes that val or test hold is named before training, with its consequence."""
import numpy as np

from trainer.split_health import class_gaps

CLASSES = ["head", "thorax", "abdomen"]


def test_classes_the_training_subset_lacks_are_named_with_their_counts():
    lines = class_gaps(CLASSES, train=np.array([0, 0, 1]), val=np.array([0, 2, 2]), test=np.array([2, 2]))
    assert lines == [
        "the training subset has no samples of class abdomen, which 2 of 3 val samples belong to: the model cannot "
        "predict them, so they all count as errors (more patients, a larger --fraction or --shots, or a dataset "
        "without the class)",
        "the training subset has no samples of class abdomen, which 2 of 2 test samples belong to: the model cannot "
        "predict them, so they all count as errors; test accuracy 0 is the expected result, not a failure (more "
        "patients, a larger --fraction or --shots, or a dataset without the class)"]


def test_healthy_splits_give_no_warning():
    assert class_gaps(CLASSES, train=np.array([0, 1, 2]), val=np.array([0, 1]), test=np.array([2])) == []
