"""Layer-wise similarity of activations (Juodelyte et al.): mean CCA, SVCCA and linear CKA from features.npz.

    >>> f = load_features("runs/.../features.npz")          # written by `tlx features` (docs/run-format.md)
    >>> rows = compare(f, "init", f, "final")               # one dict per layer: means and sds over repeats

Each features.npz holds, per model (init, final, random), layer (conv1, layer1..4) and
repeat, the activations at the same sampled (image, row, column) positions and
channels; two files with the same `probe_id` sampled the same points, so their models
can be compared too. Per layer and repeat: mean CCA (mean of all canonical
correlations), SVCCA (analysis.svcca: 99% of the variance kept) and linear CKA; the
row gives the mean over repeats and their standard deviation (ddof 0).
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.errors import AnalysisError
from analysis.svcca import covariance_similarities

FORMAT, VERSION = "tlx-features", 1
MEASURES = ("mean_cca", "svcca", "cka")


@dataclass
class Features:
    path: Path
    meta: dict

    @property
    def probe_id(self) -> str:
        return self.meta["probe_id"]

    @property
    def layers(self) -> list[str]:
        return list(self.meta["layers"])

    @property
    def repeats(self) -> int:
        return int(self.meta["sampling"]["repeats"])

    @property
    def models(self) -> list[str]:
        return list(self.meta["models"])

    def activations(self, model: str, layer: str, repeat: int) -> np.ndarray:
        """(points, channels) float64; a model stored as another (`same_as`) reads that one's arrays."""
        model = self.meta["models"].get(model, {}).get("same_as", model)
        key = f"{model}/{layer}/{repeat}"
        try:
            with np.load(self.path) as npz:
                return npz[key].astype(np.float64)
        except KeyError:
            raise AnalysisError(f"{self.path} lacks {key}") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise AnalysisError(f"{self.path}: {key} cannot be read ({type(exc).__name__}: {exc})") from None


def load_features(path: Path | str) -> Features:
    """The file's metadata, checked; its arrays are read when compared. Refuses what `tlx features` did not write."""
    path = Path(path)
    try:
        with np.load(path) as npz:
            meta = json.loads(str(npz["meta"][()]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise AnalysisError(f"{path} cannot be read as features ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise AnalysisError(f"{path} is not a {FORMAT} v{VERSION} file (write it with `tlx features`)")
    return Features(path, meta)


def similarity(X: np.ndarray, Y: np.ndarray) -> dict[str, float]:
    """mean CCA, SVCCA and linear CKA of two (points, channels) activations of the same points, from their
    covariances (analysis.svcca.covariance_similarities: one pass over the points for all three)."""
    values = covariance_similarities(X, Y)
    return {m: values[m] for m in MEASURES}


def compare(a: Features, model_a: str, b: Features, model_b: str) -> list[dict]:
    """Per layer: each measure's mean and sd over the repeats (models of two files need the same probe_id)."""
    if a.probe_id != b.probe_id:
        raise AnalysisError(f"{a.path} and {b.path} were sampled differently (another probe set, --seed, "
                            f"--points, --channels, --repeats or image size); rerun `tlx features` alike")
    rows = []
    for layer in a.layers:
        values, points = [], 0
        for r in range(a.repeats):
            X, Y = a.activations(model_a, layer, r), b.activations(model_b, layer, r)
            values.append(similarity(X, Y))
            points = len(X)
        row = {"layer": layer, "repeats": len(values), "points": points}
        for m in MEASURES:
            column = np.array([v[m] for v in values])
            row[m], row[f"{m}_sd"] = float(column.mean()), float(column.std())
        rows.append(row)
    return rows
