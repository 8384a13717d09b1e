"""CKA and SVCCA: the invariances and identities of Kornblith et al. (2019) and Raghu et al. (2017)."""
import numpy as np
import pytest

from analysis.cka import MinibatchCKA, activation_cka, cka_from_grams, gram_rbf, linear_cka, rbf_cka, unbiased_cka
from analysis.errors import AnalysisError
from analysis.svcca import svcca


@pytest.fixture(scope="module")
def reps():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 12))
    Y = X @ rng.normal(size=(12, 8)) + 0.5 * rng.normal(size=(60, 8))  # related to X, not a copy
    Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    A = rng.normal(size=(8, 8)) + np.diag(np.linspace(0.1, 5, 8))   # a general (non-orthogonal) linear map
    return X, Y, Q, A


def reference_cka(K, L):
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with an explicit centring matrix H (Gretton et al. 2005)."""
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    hsic = lambda a, b: np.trace(a @ H @ b @ H) / (n - 1) ** 2  # noqa: E731
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.mark.parametrize("cka", [linear_cka, rbf_cka, unbiased_cka])
def test_cka_of_a_representation_with_itself_is_one(reps, cka):
    X = reps[0]
    assert cka(X, X) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("cka", [linear_cka, rbf_cka])
def test_cka_is_invariant_to_rotation_isotropic_scaling_and_translation(reps, cka):
    X, Y, Q, _ = reps
    base = cka(X, Y)
    assert 0.2 < base < 0.99  # a non-trivial similarity, so the checks below mean something
    assert cka(X, Y @ Q) == pytest.approx(base, abs=1e-10)
    assert cka(X, 7.5 * Y) == pytest.approx(base, abs=1e-10)
    assert cka(X, Y + np.arange(8.0)) == pytest.approx(base, abs=1e-10)


def test_linear_cka_is_not_invariant_to_a_general_linear_map(reps):
    X, Y, _, A = reps
    assert abs(linear_cka(X, Y @ A) - linear_cka(X, Y)) > 0.01
    assert linear_cka(Y, Y @ A) < 0.99


def test_linear_cka_equal_in_feature_and_sample_space(reps):
    X, Y, _, _ = reps
    feature = linear_cka(X, Y)
    assert cka_from_grams(X @ X.T, Y @ Y.T) == pytest.approx(feature, abs=1e-12)
    assert reference_cka(X @ X.T, Y @ Y.T) == pytest.approx(feature, abs=1e-12)


def test_rbf_cka_approaches_linear_cka_as_the_bandwidth_grows(reps):
    X, Y, _, _ = reps
    linear = linear_cka(X, Y)
    gaps = [abs(rbf_cka(X, Y, threshold) - linear) for threshold in (0.5, 2, 8, 32, 128)]
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-4


def test_unbiased_and_minibatch_cka_agree_on_one_batch(reps):
    X, Y, _, _ = reps
    acc = MinibatchCKA()
    acc.update(X, Y)
    assert acc.value() == pytest.approx(unbiased_cka(X, Y), abs=1e-12)


def test_minibatch_cka_over_many_batches_estimates_the_full_cka():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 10))
    Y = X[:, :6] + 0.3 * rng.normal(size=(2000, 6))
    batches = [(X[i:i + 200], Y[i:i + 200]) for i in range(0, 2000, 200)]
    assert activation_cka(batches) == pytest.approx(linear_cka(X, Y), abs=0.02)


def test_cka_refuses_bad_input(reps):
    X = reps[0]
    with pytest.raises(AnalysisError, match="same examples in both: 60 rows vs 59 rows"):
        linear_cka(X, X[:-1])
    with pytest.raises(AnalysisError, match="2-D arrays"):
        linear_cka(X[0], X[0])
    with pytest.raises(AnalysisError, match="constant representation"):
        linear_cka(np.ones((5, 3)), X[:5])
    with pytest.raises(AnalysisError, match="threshold must be > 0"):
        rbf_cka(X, X, threshold=0)
    with pytest.raises(AnalysisError, match="before any update"):
        MinibatchCKA().value()


def test_svcca_is_one_for_any_invertible_map_and_small_for_independent_data(reps):
    X, _, _, _ = reps
    rng = np.random.default_rng(2)
    same = svcca(X, X @ rng.normal(size=(12, 12)))
    assert same.mean == pytest.approx(1.0, abs=1e-9)
    assert not same.degenerate
    independent = svcca(rng.normal(size=(500, 5)), rng.normal(size=(500, 5)))
    assert independent.mean < 0.15


def test_svcca_keeps_the_directions_that_explain_99_percent():
    rng = np.random.default_rng(3)
    signal = rng.normal(size=(300, 3)) * [10, 8, 6]
    X = np.hstack([signal, 1e-3 * rng.normal(size=(300, 5))])  # 5 directions of negligible variance
    result = svcca(X, signal)
    assert result.dims == (3, 3)
    assert result.mean == pytest.approx(1.0, abs=1e-6)
    assert svcca(rng.normal(size=(10, 8)), rng.normal(size=(10, 8))).degenerate  # 8 + 8 directions > 10 examples


def test_svcca_is_degenerate_once_the_directions_fill_the_centred_space():
    # Centred, 10 examples span 9 dimensions: two 5-dimensional subspaces must share a direction.
    rng = np.random.default_rng(4)
    forced = svcca(rng.normal(size=(10, 5)), rng.normal(size=(10, 5)))
    assert forced.dims == (5, 5) and forced.correlations.max() == pytest.approx(1.0, abs=1e-9)
    assert forced.degenerate
    free = svcca(rng.normal(size=(11, 5)), rng.normal(size=(11, 5)))  # 5 + 5 = 10 dimensions of 10: no forced 1
    assert free.correlations.max() < 1 - 1e-6 and not free.degenerate


def test_cca_of_single_columns_is_the_absolute_correlation_and_dead_channels_span_nothing():
    from analysis.svcca import cca

    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 1))
    y = -0.5 * x + rng.normal(size=(500, 1))
    assert cca(x, y)[0] == pytest.approx(abs(np.corrcoef(x[:, 0], y[:, 0])[0, 1]), abs=1e-12)
    X = rng.normal(size=(500, 4))
    dead = np.c_[X, np.zeros(500)]          # a ReLU channel that never fires on the probe
    Y = X @ rng.normal(size=(4, 4)) + 0.1 * rng.normal(size=(500, 4))
    assert cca(dead, Y) == pytest.approx(cca(X, Y), abs=1e-12) and len(cca(dead, Y)) == 4
    assert cca(X, X @ rng.normal(size=(4, 4))) == pytest.approx(np.ones(4), abs=1e-9)


def test_the_covariance_route_gives_what_the_svd_route_gives():
    """activation similarity uses one pass of covariances; it must equal cca, svcca and linear_cka."""
    from analysis.svcca import cca, covariance_similarities

    rng = np.random.default_rng(6)
    X = rng.normal(size=(2000, 16)) * np.linspace(5, 0.1, 16)
    Y = X @ rng.normal(size=(16, 12)) + 0.5 * rng.normal(size=(2000, 12))
    Y[:, 3] = 0.0                                                      # a dead channel
    fast = covariance_similarities(X, Y)
    assert fast["mean_cca"] == pytest.approx(cca(X, Y).mean(), abs=1e-9)
    assert fast["svcca"] == pytest.approx(svcca(X, Y).mean, abs=1e-9)
    assert fast["cka"] == pytest.approx(linear_cka(X, Y), abs=1e-12)
    assert not fast["svcca_degenerate"]


def test_the_two_rbf_bandwidth_rules_by_hand():
    """Points 0, 1, 3, 7: squared distances 1, 4, 9, 16, 36, 49 (each twice off the diagonal).
    study-code (the study's CudaCKA: torch.median of the nonzero entries, the lower middle value of 12): 9;
    kornblith (np.median of all 16 entries, 4 zeros): (4 + 9) / 2 = 6.5. A plain median of the nonzero
    entries would be 12.5: neither."""
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    d2 = (x - x.T) ** 2
    assert np.allclose(gram_rbf(x, bandwidth="study-code"), np.exp(-d2 / (2 * 9.0)), atol=1e-15)
    assert np.allclose(gram_rbf(x), np.exp(-d2 / (2 * 6.5)), atol=1e-15)          # the library default
    assert np.allclose(gram_rbf(x, 2.0, "study-code"), np.exp(-d2 / (2 * 4 * 9.0)), atol=1e-15)
    y = x ** 1.5
    assert rbf_cka(x, y, bandwidth="study-code") == pytest.approx(
        reference_cka(gram_rbf(x, bandwidth="study-code"), gram_rbf(y, bandwidth="study-code")))
    with pytest.raises(AnalysisError, match="RBF bandwidth rule 'mean' is not known; use one of kornblith, study-code"):
        gram_rbf(x, bandwidth="mean")
    with pytest.raises(AnalysisError, match="median distance 0"):
        gram_rbf(np.zeros((3, 2)), bandwidth="study-code")
