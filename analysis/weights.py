"""Feature reuse (paper Fig. 5) and feature uniqueness (S5) from first_layers.npz, without torch.

Checked against the study's code: TIO-IKIM/Transfer-learning-across-domain-boundaries,
pkgs/CKA/paper_eval_featsim.ipynb (collect_layer_weights_from_model, feature_uniqueness, the Feature
Reuse cells), whose kernel CKA is the CudaCKA class of jayroxis/CKA-similarity.

A conv layer's weights [out, in, kh, kw] become a representation (examples x features)
in one of two layouts (`LAYOUTS`):

- `study-code` (default): examples are the out*kh*kw (filter, row, column) positions,
  features the `in` input channels: X = W.transpose(0, 2, 3, 1).reshape(-1, in),
  (3136 x 3 for ResNet-50's conv1): the notebook's `moveaxis(1, -1).flatten(end_dim=-2)`.
- `kernel-positions` (tlx's earlier form): examples are the in*kh*kw kernel positions,
  features the `out` filters: X = W.reshape(out, -1).T (147 x 64 for conv1). CKA's
  invariance to orthogonal transforms of features then makes relabelled or rotated
  filters count as unchanged.

RBF kernels take their bandwidth by one of analysis.cka's rules (`bandwidth`): `study-code`
(default here: the median of the nonzero squared distances, torch's lower median) or `kornblith`.

- reuse: CKA (linear and RBF) and SVCCA between a layer before and after fine-tuning;
- uniqueness (the study's coefficient): the representation's rows (study-code layout; the
  filters in the kernel-positions layout) cut into 8 contiguous equal chunks, 1 - RBF CKA of
  each of the 28 pairs, their mean (and np.std, the study's error bar); higher = more
  unique filters, 0 for a layer whose chunks are identical;
- redundancy (tlx's earlier "uniqueness"): linear CKA between two random halves of a
  layer's filters in the kernel-positions layout, mean over `splits`; higher = the
  halves encode the same thing.

    >>> layers = load_first_layers("runs/.../first_layers.npz")
    >>> feature_reuse(layers, threshold=1.0, layout="study-code", bandwidth="study-code")
    >>> uniqueness(layers["conv1.weight"][0]), redundancy(layers["conv1.weight"][0])
    >>> uniqueness_values(layers["conv1.weight"][0]).std()     # the study's error bar (28 pairs, ddof 0)
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from analysis.cka import cka_pairs, gram_rbf, linear_cka, rbf_cka
from analysis.errors import AnalysisError
from analysis.svcca import svcca

LAYERS = ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight")
LAYOUTS = ("study-code", "kernel-positions")
UNIQUENESS_CHUNKS = 8   # the study's: 8 contiguous chunks of filters, 28 pairs


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


def as_representation(weight: np.ndarray, layout: str = "study-code") -> np.ndarray:
    """[out, in, kh, kw] -> (examples, features) in `layout` (see the module docstring)."""
    if layout == "study-code":
        return weight.transpose(0, 2, 3, 1).reshape(-1, weight.shape[1])
    if layout == "kernel-positions":
        return weight.reshape(weight.shape[0], -1).T
    raise AnalysisError(f"weight layout {layout!r} is not known; use one of {', '.join(LAYOUTS)}")


@dataclass(frozen=True)
class LayerReuse:
    layer: str
    linear_cka: float
    rbf_cka: float
    svcca: float | None        # None where too few examples make it meaningless (see analysis.svcca)
    svcca_dims: tuple[int, int]


def feature_reuse(layers: dict[str, tuple[np.ndarray, np.ndarray]], threshold: float = 1.0,
                  layout: str = "study-code", bandwidth: str = "study-code") -> list[LayerReuse]:
    out = []
    for name, (init, final) in layers.items():
        X, Y = as_representation(init, layout), as_representation(final, layout)
        cca = svcca(X, Y)
        out.append(LayerReuse(name, linear_cka(X, Y), rbf_cka(X, Y, threshold, bandwidth),
                              None if cca.degenerate else cca.mean, cca.dims))
    return out


def uniqueness_chunks(weight: np.ndarray, chunks: int = UNIQUENESS_CHUNKS, layout: str = "study-code"
                      ) -> list[np.ndarray]:
    """The `chunks` equal representations uniqueness compares, in `layout`.

    study-code: the rows of the (out*kh*kw) x in representation cut into contiguous parts, as the study's
    feature_uniqueness(acts, axis=0, n_split=8) did (refused, as there, unless the rows divide evenly; with
    out a multiple of `chunks` each part is out/chunks whole filters). kernel-positions: the filters (columns)
    cut into contiguous groups, every group with the same in*kh*kw examples."""
    if chunks < 2:
        raise AnalysisError(f"uniqueness needs at least 2 chunks, got {chunks}")
    if layout == "study-code":
        X = as_representation(weight, layout)
        if len(X) % chunks:
            raise AnalysisError(f"uniqueness splits the {len(X)} rows (filter positions) into {chunks} equal chunks; "
                                f"{len(X)} is not a multiple of {chunks}")
        return np.split(X, chunks)
    out_ch = weight.shape[0]
    if out_ch % chunks:
        raise AnalysisError(f"uniqueness splits the {out_ch} filters into {chunks} equal chunks; "
                            f"{out_ch} is not a multiple of {chunks}")
    return [as_representation(part, layout) for part in np.split(weight, chunks)]


def uniqueness_values(weight: np.ndarray, chunks: int = UNIQUENESS_CHUNKS, threshold: float = 1.0,
                      layout: str = "study-code", bandwidth: str = "study-code") -> np.ndarray:
    """1 - RBF CKA of every pair (i < j) of the chunks (28 values for 8 chunks), in pair order."""
    grams = [gram_rbf(part, threshold, bandwidth) for part in uniqueness_chunks(weight, chunks, layout)]
    cka = cka_pairs(grams)
    return np.array([1.0 - cka[i, j] for i, j in combinations(range(len(grams)), 2)])


def uniqueness(weight: np.ndarray, chunks: int = UNIQUENESS_CHUNKS, threshold: float = 1.0,
               layout: str = "study-code", bandwidth: str = "study-code") -> float:
    """The study's uniqueness coefficient: the mean of uniqueness_values (1 - mean RBF CKA over the chunk pairs)."""
    return float(np.mean(uniqueness_values(weight, chunks, threshold, layout, bandwidth)))


def redundancy(weight: np.ndarray, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Mean and std over `splits` random halvings of the filters of linear CKA(half A, half B), kernel-positions
    layout (tlx's earlier 'uniqueness'; higher = more redundant)."""
    if weight.shape[0] < 4:
        raise AnalysisError(f"redundancy needs at least 4 filters, the layer has {weight.shape[0]}")
    X = as_representation(weight, "kernel-positions")
    rng = np.random.default_rng(seed)
    half = X.shape[1] // 2
    values = []
    for _ in range(splits):
        perm = rng.permutation(X.shape[1])
        values.append(linear_cka(X[:, perm[:half]], X[:, perm[half:2 * half]]))
    return float(np.mean(values)), float(np.std(values))
