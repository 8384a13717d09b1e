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


def covariance_basis(C: np.ndarray, keep: float | None = None, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """W (p, k) with Xc W orthonormal, from C = Xc^T Xc, and the eigenvalues kept (= squared singular values of Xc).

    keep=None: every direction with eigenvalue above tol * the largest (CCA); else the fewest leading
    directions explaining `keep` of the variance (SVCCA), never one below that floor."""
    lam, V = np.linalg.eigh(C)
    lam, V = lam[::-1], V[:, ::-1]
    if lam[0] <= 0:
        raise AnalysisError("CCA is undefined for a constant representation (all examples identical)")
    k = int(np.sum(lam > tol * lam[0]))
    if keep is not None:
        k = min(k, int(np.searchsorted(np.cumsum(lam) / lam.sum(), keep - 1e-12) + 1))
    return V[:, :k] / np.sqrt(lam[:k]), lam[:k]


def covariance_similarities(X, Y, keep: float = 0.99, tol: float = 1e-10) -> dict[str, float | bool]:
    """Mean CCA, SVCCA and linear CKA of two representations of many examples, from their three p x p
    (cross-)covariances only: O(n p^2) once, instead of an SVD of each n x p matrix per measure (the same
    quantities as cca, svcca and analysis.cka.linear_cka; tested equal)."""
    X, Y = _pair(X, Y)
    X, Y = X - X.mean(0), Y - Y.mean(0)
    cxx, cyy, cxy = X.T @ X, Y.T @ Y, X.T @ Y
    out = {}
    for name, k in (("mean_cca", None), ("svcca", keep)):
        (wx, _), (wy, _) = covariance_basis(cxx, k, tol), covariance_basis(cyy, k, tol)
        rho = np.clip(np.linalg.svd(wx.T @ cxy @ wy, compute_uv=False), 0.0, 1.0)
        out[name] = float(rho.mean())
        if k is not None:
            out["svcca_degenerate"] = wx.shape[1] + wy.shape[1] > X.shape[0] - 1
    out["cka"] = float(np.linalg.norm(cxy) ** 2 / (np.linalg.norm(cxx) * np.linalg.norm(cyy)))
    return out
