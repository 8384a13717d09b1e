"""Connected-component labelling for body_coverage, without importing scipy.ndimage.

    labels, n = label(mask, structure)    # == scipy.ndimage.label(mask, structure=structure)

`import scipy.ndimage` costs 0.2-0.5 s of CPU (its array-API dispatch layer pulls in much of
scipy), paid by every `tlx shard` and again by every write worker process, for one function.
Coverage needs only scipy's compiled labeller, `scipy.ndimage._ni_label._label` (what the public
`label` calls after checking its arguments), which imports nothing but numpy: it is loaded from the
installed scipy's files. Where that fails (a scipy that renamed or moved it), the public
`scipy.ndimage.label` is used. Both give the same labels (tests/datakit/test_hu_slice.py).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import numpy as np

_labeller = None


def label(mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    """(int32 labels, number of components) of a 2-D bool mask; `structure` a 3x3 bool array."""
    global _labeller
    if _labeller is None:
        _labeller = _compiled_labeller() or _public_labeller
    return _labeller(mask, structure)


def _public_labeller(mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=structure)
    return labels, int(n)


def _compiled_labeller():
    """scipy's compiled `_label` wrapped like the public function (int32 output: coverage's masks are
    at most 128 x 128, far from NeedMoreBits), or None where it cannot be loaded."""
    try:
        import scipy

        folder = Path(scipy.__path__[0], "ndimage")
        path = next(folder / f"_ni_label{s}" for s in importlib.machinery.EXTENSION_SUFFIXES
                    if (folder / f"_ni_label{s}").is_file())
        spec = importlib.util.spec_from_file_location("scipy.ndimage._ni_label", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        compiled = module._label
    except Exception:  # noqa: BLE001 - any failure means: use the public function
        return None

    def run(mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
        labels = np.empty(mask.shape, np.int32)
        return labels, int(compiled(mask, structure, labels))
    return run
