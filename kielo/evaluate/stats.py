"""Bootstrap confidence intervals: resample examples with replacement, seeded, percentile intervals.

The comparison is paired: both models answered the same examples, so each resample draws example
indices once and takes the difference of the two models' means on them. This removes the (large)
variation between examples from the interval and leaves the difference the adapter made. A weighted
mean (``sum(w * x) / sum(w)``) covers the token-weighted loss: x is an example's mean token loss, w its
token count.
"""

from __future__ import annotations

import numpy as np

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95


def _stat(values: np.ndarray, weights: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
    if weights is None:
        return values[idx].mean(axis=-1)
    w = weights[idx]
    return (values[idx] * w).sum(axis=-1) / w.sum(axis=-1)


def _interval(point: float, draws: np.ndarray, level: float, n: int) -> dict:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {"value": point, "low": float(low), "high": float(high), "level": level, "n": n}


def bootstrap_mean(values, weights=None, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict | None:
    """The (weighted) mean of ``values`` with a bootstrap interval: ``{value, low, high, level, n}``."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return None
    w = None if weights is None else np.asarray(weights, dtype=float)
    point = float(_stat(x, w, np.arange(x.size)))
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    return _interval(point, _stat(x, w, idx), level, int(x.size))


def paired_bootstrap(a, b, weights=None, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict | None:
    """Mean of ``b`` minus mean of ``a`` over the same examples, with a paired bootstrap interval.

    Returns ``{delta, low, high, level, n, p_value}``; ``p_value`` is the two-sided bootstrap share of
    resampled deltas on the other side of zero (a rough guide, not a test to lean on).
    """
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples differ in size: {xa.shape} vs {xb.shape}")
    if xa.size == 0:
        return None
    w = None if weights is None else np.asarray(weights, dtype=float)
    full = np.arange(xa.size)
    point = float(_stat(xb, w, full) - _stat(xa, w, full))
    idx = np.random.default_rng(seed).integers(0, xa.size, size=(resamples, xa.size))
    draws = _stat(xb, w, idx) - _stat(xa, w, idx)
    out = _interval(point, draws, level, int(xa.size))
    out["delta"] = out.pop("value")
    below, above = float((draws <= 0).mean()), float((draws >= 0).mean())
    out["p_value"] = min(1.0, 2 * min(below, above))
    return out


def excludes_zero(ci: dict | None) -> bool:
    """Whether an interval lies entirely on one side of zero (the difference is clear at its level)."""
    return ci is not None and (ci["low"] > 0 or ci["high"] < 0)
