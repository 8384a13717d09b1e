"""SVCCA (Raghu et al. 2017): canonical correlations between the top singular directions.

    >>> r = svcca(X, Y, keep=0.99)      # X: (n, p1), Y: (n, p2), rows are the same examples
    >>> r.mean, r.dims                  # mean canonical correlation, directions kept in X and Y
    >>> cca(X, Y).mean()                # plain CCA: every direction X and Y span (mean CCA)

Each representation is centred and reduced to the fewest singular directions that
explain `keep` of its variance; the canonical correlations are then the singular
values of Qx^T Qy for orthonormal bases of the two reduced spaces. Centring leaves
n - 1 dimensions, so with few examples (kx + ky > n - 1) the spaces must intersect
and some correlations are 1 by construction: `degenerate` says so, and reports
should not quote such a value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.cka import _pair
from analysis.errors import AnalysisError


@dataclass(frozen=True)
class SVCCA:
    mean: float
    correlations: np.ndarray
    dims: tuple[int, int]
    n: int

    @property
    def degenerate(self) -> bool:
        # centred columns live in the n - 1 dimensions orthogonal to the all-ones vector
        return self.dims[0] + self.dims[1] > self.n - 1


def _top_directions(X: np.ndarray, keep: float) -> np.ndarray:
    """Orthonormal basis (n, k) of the smallest leading subspace that explains `keep` of the variance."""
    U, s, _ = np.linalg.svd(X - X.mean(0), full_matrices=False)
    var = s**2
    if var.sum() == 0:
        raise AnalysisError("SVCCA is undefined for a constant representation (all examples identical)")
    k = int(np.searchsorted(np.cumsum(var) / var.sum(), keep - 1e-12) + 1)
    return U[:, :min(k, len(s))]


def svcca(X, Y, keep: float = 0.99) -> SVCCA:
    if not 0 < keep <= 1:
        raise AnalysisError(f"keep must be in (0, 1], got {keep}")
    X, Y = _pair(X, Y)
    Qx, Qy = _top_directions(X, keep), _top_directions(Y, keep)
    rho = np.clip(np.linalg.svd(Qx.T @ Qy, compute_uv=False), 0.0, 1.0)
    return SVCCA(float(rho.mean()), rho, (Qx.shape[1], Qy.shape[1]), X.shape[0])


def _span(X: np.ndarray, tol: float) -> np.ndarray:
    """Orthonormal basis (n, k) of the centred columns' span; directions below tol * the largest are dropped
    (a channel that is constant on the probe, e.g. a dead ReLU, spans nothing)."""
    U, s, _ = np.linalg.svd(X - X.mean(0), full_matrices=False)
    if s.size == 0 or s[0] == 0:
        raise AnalysisError("CCA is undefined for a constant representation (all examples identical)")
    return U[:, s > tol * s[0]]


def cca(X, Y, tol: float = 1e-10) -> np.ndarray:
    """Canonical correlations of X and Y (all min(rank X, rank Y) of them, largest first), after centring."""
    X, Y = _pair(X, Y)
    Qx, Qy = _span(X, tol), _span(Y, tol)
    return np.clip(np.linalg.svd(Qx.T @ Qy, compute_uv=False), 0.0, 1.0)
