"""Mutual information between CT slices from 2-D joint histograms, many pairs at once.

    >>> codes = quantize(slices, bins=64)          # (k, H, W) pixels -> (k, H*W) bin indices
    >>> h = entropies(codes, bins=64)              # self-MI of each slice, nats
    >>> mi = mi_matrix(codes_a, codes_b, bins=64)  # (ka, kb) MI of every pair, nats

Binning follows `np.histogram2d(a.ravel(), b.ravel(), bins=64)`: 64 equal bins from
each slice's own minimum to its maximum (the last bin closed), so the MI of two
slices is the same as the one from that call. A fixed `value_range=(lo, hi)` instead
clips values into [lo, hi] first. No smoothing: MI is the plug-in estimate from raw
counts, MI = sum p_ab log(p_ab / (p_a p_b)) = H(a) + H(b) - H(a, b).

Three ways to count the joint histograms of all pairs, with identical results:
- "bincount" (numpy, the CPU default): one np.bincount per slice against a whole
  block of slices (index = pair * bins^2 + a * bins + b); O(pairs * pixels).
- "onehot" (numpy): joint histograms as one-hot products, A^T B with A (pixels,
  ka*bins) and B (pixels, kb*bins), accumulated over pixel chunks. bins^2 / bins = 64
  times more arithmetic than bincount, so slower on a CPU; it is the GPU formulation.
- "torch": the same one-hot product as one int8 matrix product with int32
  accumulation (torch._int_mm: exact counts, tensor cores) on `device`;
  "torch-float": the same in float32 (exact too: 0/1 inputs, float32 accumulation
  of counts below 2^24, also under TF32), should int8 products be unavailable.
Every count table is checked to sum to the pixel count, so an inexact product fails loudly.

Smoothed MI (`PairwiseMI(..., sigma=1.0)`, the study's code): each joint count table is
smoothed with a Gaussian of `sigma` bins (scipy.ndimage.gaussian_filter's kernel,
truncated at 4 sigma, zero outside the table, as one product G C G^T), 1e-6 is added to
every cell and MI is computed from the normalised table: the study's
`mutual_information_2d(x, y, sigma=1, eps=1e-6)` (64 x 64 bins of np.histogram2d over each
slice's own range, after a resize to 256 x 256 that is the identity on tlx's 256 x 256
slices). A slice's MI with itself is then below its entropy.

`PairwiseMI.paired(a, b)` gives the MI of each pair (a_i, b_i) only (the study's baseline:
each slice against one random slice of another volume).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from analysis.errors import AnalysisError

METHODS = ("bincount", "onehot", "torch", "torch-float")


def quantize(slices, bins: int = 64, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Bin index (uint8/uint16) of every pixel of every slice: (k, H, W) -> (k, H*W)."""
    x = np.asarray(slices)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise AnalysisError(f"slices must be (k, H, W) or (H, W), got shape {x.shape}")
    if not 2 <= bins <= 4096:
        raise AnalysisError(f"bins must be in 2..4096, got {bins}")
    flat = x.reshape(len(x), -1)
    out = np.empty(flat.shape, dtype=np.uint8 if bins <= 256 else np.uint16)
    for i, s in enumerate(flat):
        if value_range is None:
            lo, hi = s.min(), s.max()
        else:
            lo, hi = value_range
            if not hi > lo:
                raise AnalysisError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")
            s = np.clip(s, lo, hi)
        out[i] = _bin_slice(s, float(lo), float(hi), bins)
    return out


def _bin_slice(s: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    if lo == hi:  # histogram2d widens an empty range by 0.5 each side: one value lands mid-range
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    if np.issubdtype(s.dtype, np.integer) and hi - lo < 1 << 17:
        # Integer pixels (HU): bin every possible value once, then look up (much faster).
        base = int(np.floor(lo))
        values = np.arange(base, int(np.ceil(hi)) + 1)
        lut = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
        return lut[s.astype(np.int64) - base]
    return np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)


@lru_cache(maxsize=8)
def _xlogx(n: int) -> np.ndarray:
    """c * log(c) for every count c in 0..n (0 log 0 = 0)."""
    c = np.arange(n + 1, dtype=np.float64)
    out = np.zeros(n + 1)
    out[1:] = c[1:] * np.log(c[1:])
    return out


def entropies(codes: np.ndarray, bins: int) -> np.ndarray:
    """Shannon entropy (nats) of each slice's binned values = its MI with itself."""
    n = codes.shape[1]
    table = _xlogx(n)
    h = np.array([table[np.bincount(c, minlength=bins)].sum() for c in codes])
    return np.log(n) - h / n


def _bincount_counts(a: np.ndarray, block: np.ndarray, bins: int) -> np.ndarray:
    """(m, bins*bins) joint counts of slice `a` against every slice of `block`, in one bincount."""
    m, n = block.shape
    idx = block.astype(np.int64)
    idx += (a.astype(np.int64) * bins)[None, :]
    idx += (np.arange(m, dtype=np.int64) * bins * bins)[:, None]
    return np.bincount(idx.ravel(), minlength=m * bins * bins).reshape(m, bins * bins)


def _joint_xlogx_bincount(a: np.ndarray, block: np.ndarray, bins: int) -> np.ndarray:
    """sum_ab C_ab log C_ab of slice `a` against every slice of `block`."""
    counts = _bincount_counts(a, block, bins)
    _check_totals(counts.sum(1), block.shape[1])
    return _xlogx(block.shape[1])[counts].sum(1)


def _onehot(codes: np.ndarray, bins: int, dtype) -> np.ndarray:
    """(k, n) codes -> (n, k*bins) one-hot matrix."""
    k, n = codes.shape
    out = np.zeros((n, k * bins), dtype=dtype)
    cols = codes.T.astype(np.int64) + (np.arange(k) * bins)[None, :]
    out[np.arange(n)[:, None], cols] = 1
    return out


def _joint_counts_onehot(codes_a, codes_b, bins: int, chunk: int = 2048) -> np.ndarray:
    """(ka, kb, bins, bins) joint counts as sum over pixel chunks of onehot(a)^T onehot(b)."""
    ka, n = codes_a.shape
    kb = codes_b.shape[0]
    acc = np.zeros((ka * bins, kb * bins), dtype=np.float64)
    for start in range(0, n, chunk):
        A = _onehot(codes_a[:, start:start + chunk], bins, np.float32)
        B = _onehot(codes_b[:, start:start + chunk], bins, np.float32)
        acc += A.T @ B  # float32 partial sums of 0/1 are exact up to 2^24 per chunk
    return acc.reshape(ka, bins, kb, bins).transpose(0, 2, 1, 3).round().astype(np.int64)


def _torch_counts(codes_a, codes_b, bins: int, device: str, int8: bool = True):
    """(ka, kb, bins, bins) joint counts as one one-hot product (int8 or float32), left on `device`."""
    import torch  # optional accelerator: only imported when asked for

    # torch._int_mm on CUDA wants the first operand's rows > 16, the inner size >= 16 and a multiple of 8, and
    # the second operand's columns a multiple of 8: padding pixels and columns are zeros, they add nothing.
    ka, kb, n = len(codes_a), len(codes_b), codes_a.shape[1]
    n_pad = max(16, -(-n // 8) * 8)

    def onehot(codes, columns):
        c = torch.as_tensor(np.ascontiguousarray(codes), device=device).long()
        out = torch.zeros((n_pad, columns), dtype=torch.int8, device=device)
        out[:n].scatter_(1, c.T + torch.arange(len(codes), device=device)[None, :] * bins, 1)
        return out

    A, B = onehot(codes_a, ka * bins), onehot(codes_b, -(-kb * bins // 8) * 8)
    if not int8 or ka * bins <= 16:
        counts = (A.T.float() @ B.float()).round().int()
    else:
        counts = torch._int_mm(A.T.contiguous(), B)  # exact int32 accumulation on int8 tensor cores
    counts = counts[:, :kb * bins].reshape(ka, bins, kb, bins).permute(0, 2, 1, 3)
    totals = counts.sum((2, 3))
    if not bool((totals == codes_a.shape[1]).all()):
        raise AnalysisError(f"joint histogram counts do not sum to the pixel count {codes_a.shape[1]} "
                            f"(inexact arithmetic on {device}?)")
    return counts


def _joint_counts_torch(codes_a, codes_b, bins: int, device: str, int8: bool = True) -> np.ndarray:
    return _torch_counts(codes_a, codes_b, bins, device, int8).cpu().numpy().astype(np.int64)


def _joint_xlogx_torch(codes_a, codes_b, bins: int, device: str, int8: bool = True) -> np.ndarray:
    """(ka, kb) sum of C log C per pair, reduced on the device: only ka*kb numbers come back."""
    import torch

    counts = _torch_counts(codes_a, codes_b, bins, device, int8).double()
    return torch.special.xlogy(counts, counts).sum((2, 3)).cpu().numpy()


def smoothing_matrix(bins: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """G with G C G^T = scipy.ndimage.gaussian_filter(C, sigma, mode="constant", truncate=truncate) for a
    (bins, bins) table C: the normalised 1-D kernel exp(-k^2 / (2 sigma^2)), |k| <= int(truncate sigma + 0.5)."""
    radius = int(truncate * sigma + 0.5)
    k = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * k**2 / sigma**2)
    kernel /= kernel.sum()
    offset = np.arange(bins)[None, :] - np.arange(bins)[:, None]   # G[i, j] = kernel[j - i]
    return np.where(np.abs(offset) <= radius, kernel[np.clip(offset + radius, 0, 2 * radius)], 0.0)


STUDY_EPS = 1e-6  # added to every smoothed cell: the study's mutual_information_2d default (eps=1e-6)


def smoothed_mi(counts, G: np.ndarray) -> np.ndarray:
    """MI (nats) of joint count tables (..., bins, bins) after smoothing with G (see smoothing_matrix)."""
    p = G @ np.asarray(counts, dtype=np.float64) @ G.T + STUDY_EPS
    p /= p.sum((-1, -2), keepdims=True)
    pa, pb = p.sum(-1), p.sum(-2)
    return ((p * np.log(p)).sum((-1, -2)) - (pa * np.log(pa)).sum(-1) - (pb * np.log(pb)).sum(-1))


def _smoothed_mi_torch(counts, G: np.ndarray) -> np.ndarray:
    """smoothed_mi of (ka, kb, bins, bins) counts left on a torch device; only ka*kb numbers come back."""
    import torch

    g = torch.as_tensor(G, device=counts.device)
    p = g @ counts.double() @ g.T + STUDY_EPS
    p /= p.sum((-1, -2), keepdim=True)
    pa, pb = p.sum(-1), p.sum(-2)
    mi = (p * p.log()).sum((-1, -2)) - (pa * pa.log()).sum(-1) - (pb * pb.log()).sum(-1)
    return mi.cpu().numpy()


def _check_totals(totals: np.ndarray, n: int) -> None:
    if not np.all(totals == n):
        raise AnalysisError(f"joint histogram counts do not sum to the pixel count {n} (inexact arithmetic?)")


def joint_counts(codes_a, codes_b, bins: int, method: str = "onehot", device: str = "cpu") -> np.ndarray:
    """(ka, kb, bins, bins) joint histograms of every pair (a_i, b_j)."""
    codes_a, codes_b = np.atleast_2d(codes_a), np.atleast_2d(codes_b)
    if codes_a.shape[1] != codes_b.shape[1]:
        raise AnalysisError(f"slices differ in pixel count: {codes_a.shape[1]} vs {codes_b.shape[1]}")
    if method == "onehot":
        counts = _joint_counts_onehot(codes_a, codes_b, bins)
    elif method in ("torch", "torch-float"):
        counts = _joint_counts_torch(codes_a, codes_b, bins, device, int8=method == "torch")
    elif method == "bincount":
        counts = np.stack([_bincount_counts(a, codes_b, bins) for a in codes_a])
        counts = counts.reshape(len(codes_a), len(codes_b), bins, bins)
    else:
        raise AnalysisError(f"unknown MI method {method!r}; use one of {METHODS}")
    _check_totals(counts.sum((2, 3)), codes_a.shape[1])
    return counts


def mutual_information(counts: np.ndarray) -> np.ndarray:
    """MI (nats) of joint count tables (..., bins, bins)."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum((-1, -2), keepdims=True)
    p = counts / n
    pa = p.sum(-1, keepdims=True)
    pb = p.sum(-2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / (pa * pb)), 0.0)
    return terms.sum((-1, -2))


class PairwiseMI:
    """MI between binned slices, from joint entropies: MI_ij = H_i + H_j - H_ij (or, with `sigma` > 0, from
    Gaussian-smoothed joint histograms; see the module docstring).

    `within(codes)` gives the symmetric (k, k) matrix of one volume, computing each
    unordered pair once; `between(a, b)` the (ka, kb) matrix of two sets of slices.
    """

    def __init__(self, bins: int = 64, method: str = "bincount", device: str = "cpu", block: int | None = None,
                 sigma: float = 0.0):
        if method not in METHODS:
            raise AnalysisError(f"unknown MI method {method!r}; use one of {METHODS}")
        if sigma < 0:
            raise AnalysisError(f"the histogram smoothing sigma must be >= 0 bins, got {sigma}")
        self.bins, self.method, self.device, self.sigma = bins, method, device, sigma
        self.G = smoothing_matrix(bins, sigma) if sigma > 0 else None
        # At most `block` slices per side in one operation: memory stays bounded for thin-slice
        # volumes of 1,000+ slices (a 160 x 160 block of 64-bin one-hot products peaks near 4 GB on a GPU).
        # A pair's count table grows with bins^2, so above 64 bins the default block shrinks by as much.
        self.block = block if block is not None else max(1, min(160, 160 * 64 * 64 // (bins * bins)))
        self.evaluations = 0  # pairs whose joint histogram was counted

    def _blocks(self, codes_a, codes_b, fn) -> np.ndarray:
        """(ka, kb) of fn(block_a, block_b) over blocks of at most `block` slices per side."""
        out = np.empty((len(codes_a), len(codes_b)))
        for i in range(0, len(codes_a), self.block):
            for j in range(0, len(codes_b), self.block):
                out[i:i + self.block, j:j + self.block] = fn(codes_a[i:i + self.block], codes_b[j:j + self.block])
        return out

    def _block_xlogx(self, codes_a, codes_b) -> np.ndarray:
        """sum of C log C over each pair's joint count table."""
        if self.method == "bincount":
            return np.stack([_joint_xlogx_bincount(a, codes_b, self.bins) for a in codes_a])
        if self.method in ("torch", "torch-float"):
            return _joint_xlogx_torch(codes_a, codes_b, self.bins, self.device, int8=self.method == "torch")
        counts = joint_counts(codes_a, codes_b, self.bins, self.method, self.device)
        return _xlogx(codes_a.shape[1])[counts].sum((2, 3))

    def _block_smoothed(self, codes_a, codes_b) -> np.ndarray:
        """MI of each pair's smoothed joint histogram."""
        b = self.bins
        if self.method == "bincount":
            rows = []
            for a in codes_a:
                counts = _bincount_counts(a, codes_b, b)
                _check_totals(counts.sum(1), codes_b.shape[1])
                rows.append(smoothed_mi(counts.reshape(-1, b, b), self.G))
            return np.stack(rows)
        if self.method in ("torch", "torch-float"):
            counts = _torch_counts(codes_a, codes_b, b, self.device, int8=self.method == "torch")
            return _smoothed_mi_torch(counts, self.G)
        return smoothed_mi(joint_counts(codes_a, codes_b, b, self.method, self.device), self.G)

    def _from_joint(self, j: np.ndarray, h_a: np.ndarray, h_b: np.ndarray, n: int) -> np.ndarray:
        h_joint = np.log(n) - j / n
        return h_a[:, None] + h_b[None, :] - h_joint

    def between(self, codes_a, codes_b) -> np.ndarray:
        n = codes_a.shape[1]
        self.evaluations += len(codes_a) * len(codes_b)
        if self.G is not None:
            return self._blocks(codes_a, codes_b, self._block_smoothed)
        j = self._blocks(codes_a, codes_b, self._block_xlogx)
        return self._from_joint(j, entropies(codes_a, self.bins), entropies(codes_b, self.bins), n)

    def paired(self, codes_a, codes_b) -> np.ndarray:
        """(k,) MI of each pair (a_i, b_i): k joint histograms, not k x k. Counted with numpy on any device (k
        bincounts are cheap next to a volume's pairs), at most `block` pairs at a time."""
        if codes_a.shape != codes_b.shape:
            raise AnalysisError(f"paired MI needs as many slices of as many pixels on both sides, got "
                                f"{codes_a.shape} and {codes_b.shape}")
        b = self.bins
        out = np.empty(len(codes_a))
        for start in range(0, len(codes_a), self.block):
            a, c = codes_a[start:start + self.block], codes_b[start:start + self.block]
            idx = a.astype(np.int64) * b + c
            idx += (np.arange(len(a), dtype=np.int64) * b * b)[:, None]
            counts = np.bincount(idx.ravel(), minlength=len(a) * b * b).reshape(len(a), b, b)
            _check_totals(counts.sum((1, 2)), codes_a.shape[1])
            out[start:start + len(a)] = (smoothed_mi(counts, self.G) if self.G is not None
                                         else mutual_information(counts))
        self.evaluations += len(codes_a)
        return out

    def within(self, codes) -> np.ndarray:
        k, n = codes.shape
        if self.method != "bincount":
            # One product for all pairs (the GPU formulation); the diagonal comes for free.
            self.evaluations += k * k
            if self.G is not None:
                return self._blocks(codes, codes, self._block_smoothed)
            mi = self._from_joint(self._blocks(codes, codes, self._block_xlogx), *(entropies(codes, self.bins),) * 2, n)
            np.fill_diagonal(mi, entropies(codes, self.bins))
            return mi
        # Each slice against the slices before it only: k (k - 1) / 2 pairs.
        pair = self._block_smoothed if self.G is not None else self._block_xlogx
        j = np.zeros((k, k))
        for i in range(1, k):
            for start in range(0, i, self.block):
                stop = min(i, start + self.block)
                j[i, start:stop] = pair(codes[i:i + 1], codes[start:stop])[0]
        j = j + j.T
        self.evaluations += k * (k - 1) // 2
        if self.G is not None:  # a slice with itself: its histogram on the diagonal, smoothed
            diag = np.stack([np.diag(np.bincount(c, minlength=self.bins)) for c in codes])
            np.fill_diagonal(j, smoothed_mi(diag, self.G))
            return j
        h = entropies(codes, self.bins)
        mi = self._from_joint(j, h, h, n)
        np.fill_diagonal(mi, h)
        return mi
