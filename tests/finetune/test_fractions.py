"""Data-fraction subsets: stratified, nested, reproducible, one per class or an error."""
import numpy as np
import pytest

from trainer.errors import TrainerError
from trainer.fractions import fraction_order


def _single_label(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=n, p=[0.5, 0.25, 0.15, 0.09, 0.01])
    keys = [f"k{i:05d}" for i in range(n)]
    return keys, labels


def test_nested_and_reproducible_and_order_independent():
    keys, labels = _single_label()
    order = fraction_order(keys, labels, seed=3)
    sets = {f: set(order.take(f)) for f in (1.0, 0.5, 0.1, 0.01)}
    assert sets[0.01] <= sets[0.1] <= sets[0.5] <= sets[1.0] == set(range(len(keys)))
    assert [len(sets[f]) for f in (0.5, 0.1, 0.01)] == [1000, 200, 20]
    again = fraction_order(keys, labels, seed=3).take(0.1)
    assert np.array_equal(again, order.take(0.1))
    # same samples when the rows arrive in another order
    perm = np.random.default_rng(9).permutation(len(keys))
    shuffled = fraction_order([keys[i] for i in perm], labels[perm], seed=3).take(0.1)
    assert {keys[perm[i]] for i in shuffled} == {keys[i] for i in order.take(0.1)}
    assert set(fraction_order(keys, labels, seed=4).take(0.1)) != sets[0.1]


def test_stratified_within_one_sample_and_every_class_kept():
    keys, labels = _single_label()
    total = np.bincount(labels, minlength=5)
    for f in (0.5, 0.1, 0.05):
        idx = fraction_order(keys, labels, seed=1).take(f)
        counts = np.bincount(labels[idx], minlength=5)
        assert np.all(np.abs(counts - total * len(idx) / len(keys)) <= 2), (f, counts)
    # 1% of 2000 = 20 samples: the rare class (about 20 of 2000) still has its one example
    assert np.all(np.bincount(labels[fraction_order(keys, labels, seed=1).take(0.01)], minlength=5) >= 1)


def test_too_small_fraction_is_an_error():
    keys, labels = _single_label(n=300)
    order = fraction_order(keys, labels, seed=0, class_names=["a", "b", "c", "d", "e"])
    with pytest.raises(TrainerError, match=r"--fraction 0.01 of 300 training samples keeps 3, but one example "
                                           r"of each of the 5 classes present \(a, b, c, d, e\) needs 5"):
        order.take(0.01)
    with pytest.raises(TrainerError, match=r"--fraction 1.5 must be in \(0, 1\]"):
        order.take(1.5)


def test_multilabel_every_label_present_and_prevalence_kept():
    rng = np.random.default_rng(0)
    prevalence = np.array([0.3, 0.1, 0.05, 0.004])
    labels = rng.random((3000, 4)) < prevalence
    keys = [f"img{i}" for i in range(3000)]
    order = fraction_order(keys, labels, seed=2)
    small = labels[order.take(0.01)]          # 30 samples
    assert small.any(0).all()                 # even the 0.4% label has an example
    half = labels[order.take(0.5)]
    assert np.allclose(half.mean(0), labels.mean(0), atol=0.02)
    assert set(order.take(0.01)) <= set(order.take(0.1))
