"""Percentile bootstrap over documents, every category at once.

Documents are resampled with replacement (`resamples` times, seeded). A resample is a row of counts
W[b, i] = how often document i was drawn, so the micro sums of all categories for all resamples are
one matrix product W @ per_document_counts, and a mean over documents is (W @ values) / (W @ valid).
The interval is the (1-level)/2 and (1+level)/2 percentiles of the resampled statistic (resamples where
it is undefined, e.g. no gold item drawn, are left out).
"""

from __future__ import annotations

import numpy as np


def resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) float32 draw counts; each row sums to n."""
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, n), dtype=np.float32)
    for b in range(resamples):  # row by row: no (resamples x n) int64 index matrix in memory
        out[b] = np.bincount(rng.integers(0, n, n), minlength=n)
    return out


def _bounds(stat: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    finite = np.isfinite(stat)
    out_lo = np.full(stat.shape[1], np.nan)
    out_hi = np.full(stat.shape[1], np.nan)
    ok = finite.any(axis=0)
    if ok.any():
        out_lo[ok], out_hi[ok] = np.nanpercentile(stat[:, ok], [lo, hi], axis=0)
    return out_lo, out_hi


def micro_intervals(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, w: np.ndarray, level: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Intervals of micro precision, recall and F1 per category (columns of the (n, C) count arrays)."""
    T, P, N = (w @ np.asarray(x, dtype=np.float32) for x in (tp, fp, fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = {"p": T / (T + P), "r": T / (T + N), "f1": 2 * T / (2 * T + P + N)}
    return {k: _bounds(v.astype(np.float64), level) for k, v in stats.items()}


def mean_intervals(
    values: np.ndarray, valid: np.ndarray, w: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Intervals of the mean over valid documents of each column of `values` (n, K); `valid` is (n, K)."""
    valid = np.asarray(valid, dtype=np.float32)
    v = np.where(valid > 0, values, 0.0).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = (w @ v) / (w @ valid)
    return _bounds(stat.astype(np.float64), level)
