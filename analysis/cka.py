"""Centered kernel alignment (Kornblith et al. 2019) between two representations.

A representation is an (n, features) array: n examples (inputs, or kernel positions
for weights) by features (neurons, channels, filters). Rows must correspond.

    >>> linear_cka(X, Y)                  # feature space, O(n p^2): cheap for many examples
    >>> rbf_cka(X, Y, threshold=1.0)      # Gaussian kernel, bandwidth = threshold * median distance
    >>> rbf_cka(X, Y, bandwidth="study-code")   # the median rule of the study's CKA code (gram_rbf)
    >>> unbiased_cka(X, Y)                # debiased HSIC (Song et al. 2012), for small n
    >>> cka_pairs([K1, K2, K3])           # CKA of every pair of Gram matrices, each centred once
    >>> acc = MinibatchCKA()              # Nguyen et al. 2021: unbiased HSIC averaged over minibatches,
    >>> for xb, yb in batches: acc.update(xb, yb)    # memory O(batch^2), never O(n^2)
    >>> acc.value()

Two implementations of the debiased estimator on purpose: `unbiased_cka` centres the
Gram matrices with Kornblith's U-centering, `MinibatchCKA` uses Song et al.'s HSIC_1
formula; the tests check that they agree on one batch.
"""
from __future__ import annotations

import numpy as np

from analysis.errors import AnalysisError


def _pair(X, Y, min_n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2:
        raise AnalysisError(f"CKA needs two 2-D arrays (examples x features), got shapes {X.shape} and {Y.shape}")
    if X.shape[0] != Y.shape[0]:
        raise AnalysisError(f"CKA needs the same examples in both: {X.shape[0]} rows vs {Y.shape[0]} rows")
    if X.shape[0] < min_n:
        raise AnalysisError(f"CKA needs at least {min_n} examples, got {X.shape[0]}")
    return X, Y


def linear_cka(X, Y) -> float:
    """||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), columns centred."""
    X, Y = _pair(X, Y)
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    denom = np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)
    if denom == 0:
        raise AnalysisError("CKA is undefined for a constant representation (all examples identical)")
    return float(np.linalg.norm(Y.T @ X) ** 2 / denom)


def gram_linear(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X @ X.T


BANDWIDTHS = ("kornblith", "study-code")


def gram_rbf(X, threshold: float = 1.0, bandwidth: str = "kornblith") -> np.ndarray:
    """exp(-d^2 / (2 sigma^2)), sigma = threshold * sqrt(m), m a median of the squared distances d^2:

    - `kornblith` (Kornblith et al.'s code): the median of all n^2 entries, the zero diagonal included;
    - `study-code` (the CudaCKA class of jayroxis/CKA-similarity, which the study's
      pkgs/CKA/paper_eval_featsim.ipynb imports as gpuCKA): torch.median of the nonzero entries, i.e. the lower
      of the two middle values, so the diagonal and exact duplicates are left out.
    """
    if not threshold > 0:
        raise AnalysisError(f"RBF threshold must be > 0, got {threshold}")
    if bandwidth not in BANDWIDTHS:
        raise AnalysisError(f"RBF bandwidth rule {bandwidth!r} is not known; use one of {', '.join(BANDWIDTHS)}")
    X = np.asarray(X, dtype=np.float64)
    sq = np.einsum("ij,ij->i", X, X)
    d2 = X @ X.T          # becomes the squared distances, then the kernel, in place (n^2 memory once)
    d2 *= -2.0
    d2 += sq[:, None]
    d2 += sq[None, :]
    np.fill_diagonal(d2, 0.0)   # exactly, as the study's diag(G) - G leaves it (rounding may not)
    median = _study_median(d2) if bandwidth == "study-code" else np.median(np.maximum(d2, 0.0))
    if not median > 0:
        raise AnalysisError("RBF CKA is undefined when most examples are identical (median distance 0)")
    np.maximum(d2, 0.0, out=d2)
    d2 *= -1.0 / (2 * threshold**2 * median)
    return np.exp(d2, out=d2)


def _study_median(d2: np.ndarray) -> float:
    """torch.median(d2[d2 != 0]): the lower middle value of the nonzero squared distances (0 if there are none)."""
    nonzero = d2[d2 != 0]
    if not len(nonzero):
        return 0.0
    k = (len(nonzero) - 1) // 2
    return float(np.partition(nonzero, k)[k])


def _center(K: np.ndarray) -> np.ndarray:
    """H K H with H = I - 11^T/n (a new array)."""
    K = K - K.mean(0, keepdims=True)
    K -= K.mean(1, keepdims=True)
    return K


def cka_from_grams(K, L) -> float:
    """Biased CKA in sample space: <HKH, HLH>_F / (||HKH||_F ||HLH||_F)."""
    K, L = _center(np.asarray(K, np.float64)), _center(np.asarray(L, np.float64))
    denom = np.linalg.norm(K) * np.linalg.norm(L)
    if denom == 0:
        raise AnalysisError("CKA is undefined for a constant representation (all examples identical)")
    return float(np.vdot(K, L) / denom)


def cka_pairs(grams: list) -> np.ndarray:
    """(k, k) biased CKA of every pair of k Gram matrices of the same examples, each centred once."""
    centred = [_center(np.asarray(K, np.float64)) for K in grams]
    norms = np.array([np.linalg.norm(K) for K in centred])
    if not norms.all():
        raise AnalysisError("CKA is undefined for a constant representation (all examples identical)")
    flat = np.stack([K.ravel() / n for K, n in zip(centred, norms)])
    return flat @ flat.T


def rbf_cka(X, Y, threshold: float = 1.0, bandwidth: str = "kornblith") -> float:
    """Biased CKA of RBF Gram matrices, each with its own bandwidth (gram_rbf's rules)."""
    X, Y = _pair(X, Y)
    return cka_from_grams(gram_rbf(X, threshold, bandwidth), gram_rbf(Y, threshold, bandwidth))


def _u_center(K: np.ndarray) -> np.ndarray:
    """U-centering (Szekely & Rizzo): <U(K), U(L)> / (n (n - 3)) is the unbiased HSIC."""
    n = K.shape[0]
    K = K.copy()
    np.fill_diagonal(K, 0.0)
    means = K.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    K -= means[:, None]
    K -= means[None, :]
    np.fill_diagonal(K, 0.0)
    return K


def unbiased_cka(X, Y) -> float:
    """Linear CKA from the debiased HSIC estimator; needs n >= 4 examples."""
    X, Y = _pair(X, Y, min_n=4)
    K, L = _u_center(gram_linear(X)), _u_center(gram_linear(Y))
    kk, ll = np.vdot(K, K), np.vdot(L, L)
    if kk <= 0 or ll <= 0:
        raise AnalysisError("unbiased CKA is undefined here (zero self-similarity estimate)")
    return float(np.vdot(K, L) / np.sqrt(kk * ll))


def hsic1(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012) unbiased HSIC estimator of two Gram matrices (n >= 4)."""
    n = K.shape[0]
    K = K.copy()
    L = L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    ones_K, ones_L = K.sum(1), L.sum(1)  # K~ 1 and L~ 1
    term = np.vdot(K, L) + ones_K.sum() * ones_L.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * ones_K @ ones_L
    return float(term / (n * (n - 3)))


class MinibatchCKA:
    """Linear CKA accumulated over minibatches of paired activations (Nguyen et al. 2021).

    Each update adds HSIC_1 of one batch; the value is mean HSIC_1(K, L) /
    sqrt(mean HSIC_1(K, K) * mean HSIC_1(L, L)). Memory stays O(batch^2) for any n.
    """

    def __init__(self) -> None:
        self.kl = self.kk = self.ll = 0.0
        self.batches = 0

    def update(self, X, Y) -> None:
        X, Y = _pair(X, Y, min_n=4)
        K, L = gram_linear(X), gram_linear(Y)
        self.kl += hsic1(K, L)
        self.kk += hsic1(K, K)
        self.ll += hsic1(L, L)
        self.batches += 1

    def value(self) -> float:
        if self.batches == 0:
            raise AnalysisError("MinibatchCKA.value() before any update(): give it at least one batch")
        if self.kk <= 0 or self.ll <= 0:
            raise AnalysisError("minibatch CKA is undefined here (zero self-similarity estimate)")
        return float(self.kl / np.sqrt(self.kk * self.ll))


def activation_cka(batches) -> float:
    """Minibatch linear CKA over an iterable of (X_batch, Y_batch) pairs of activations."""
    acc = MinibatchCKA()
    for X, Y in batches:
        acc.update(np.asarray(X).reshape(len(X), -1), np.asarray(Y).reshape(len(Y), -1))
    return acc.value()
