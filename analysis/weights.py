"""Feature reuse (paper Fig. 5) and feature uniqueness (S5) from first_layers.npz, without torch.

A conv layer's weights [out, in, kh, kw] are read as a representation whose
examples are the in*kh*kw kernel positions and whose features are the `out`
filters: X = W.reshape(out, -1).T. CKA is invariant to orthogonal transforms of the
features, so relabelling or rotating filters does not count as change.

- reuse: CKA (linear and RBF) and SVCCA between a layer before and after fine-tuning;
- uniqueness: CKA between two random halves of one layer's filters (high = the
  halves encode the same thing, i.e. filters are redundant), mean over `splits`.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass

import numpy as np

from analysis.cka import linear_cka, rbf_cka
from analysis.errors import AnalysisError
from analysis.svcca import svcca

LAYERS = ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight")


def load_first_layers(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """layer -> (init, final) weights; refuses a file that is unreadable, lacks a layer or whose shapes differ."""
    try:
        return _read_first_layers(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # truncated or not an npz
        raise AnalysisError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from None


def _read_first_layers(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with np.load(path) as npz:
        out = {}
        for name in LAYERS:
            keys = (f"init/{name}", f"final/{name}")
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise AnalysisError(f"{path} lacks {missing} (has {sorted(npz.files)})")
            init, final = npz[keys[0]], npz[keys[1]]
            if init.shape != final.shape or init.ndim != 4:
                raise AnalysisError(f"{path}: {name} init {init.shape} and final {final.shape} "
                                    f"must be equal 4-D shapes")
            out[name] = (init.astype(np.float64), final.astype(np.float64))
    return out


def as_representation(weight: np.ndarray) -> np.ndarray:
    """[out, in, kh, kw] -> (in*kh*kw examples, out features)."""
    return weight.reshape(weight.shape[0], -1).T


@dataclass(frozen=True)
class LayerReuse:
    layer: str
    linear_cka: float
    rbf_cka: float
    svcca: float | None        # None where too few examples make it meaningless (see analysis.svcca)
    svcca_dims: tuple[int, int]


def feature_reuse(layers: dict[str, tuple[np.ndarray, np.ndarray]], threshold: float = 1.0) -> list[LayerReuse]:
    out = []
    for name, (init, final) in layers.items():
        X, Y = as_representation(init), as_representation(final)
        cca = svcca(X, Y)
        out.append(LayerReuse(name, linear_cka(X, Y), rbf_cka(X, Y, threshold),
                              None if cca.degenerate else cca.mean, cca.dims))
    return out


def feature_uniqueness(weight: np.ndarray, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Mean and std over `splits` random halvings of the filters of linear CKA(half A, half B)."""
    if weight.shape[0] < 4:
        raise AnalysisError(f"feature uniqueness needs at least 4 filters, the layer has {weight.shape[0]}")
    X = as_representation(weight)
    rng = np.random.default_rng(seed)
    half = X.shape[1] // 2
    values = []
    for _ in range(splits):
        perm = rng.permutation(X.shape[1])
        values.append(linear_cka(X[:, perm[:half]], X[:, perm[half:2 * half]]))
    return float(np.mean(values)), float(np.std(values))
