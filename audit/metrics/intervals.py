"""95% confidence intervals used by every metric that carries one.

Two kinds, chosen per statistic:

* **Score intervals** for a proportion (Wilson) and for the difference of two
  independent proportions (Newcombe's hybrid score, "method 10"). They are
  closed-form and keep close to nominal coverage for small slices and for
  accuracies near 0 or 1, which is exactly where a percentile bootstrap
  collapses (a slice of 12 examples, all correct, bootstraps to [1, 1]).
* A **bootstrap over count cells** for statistics with no closed form (the
  largest gap between many slices, ratios, balanced accuracy, paired model
  differences). Every such statistic is a function of how many examples fall in
  each cell of a small table (e.g. true class x correct). Resampling the rows of
  a group with replacement is the same, in distribution, as drawing that
  group's cell counts from ``Multinomial(n, observed cell frequencies)``, so one
  vectorised ``Generator.multinomial`` call replaces ``resamples`` passes over
  the rows. Groups are resampled independently with their sizes fixed (a
  stratified bootstrap); intervals are the 2.5 / 97.5 percentiles.

Example:
    >>> lo, hi = wilson(9, 10)
    >>> round(float(lo), 3), round(float(hi), 3)
    (0.596, 0.982)
"""

from __future__ import annotations

import zlib
from statistics import NormalDist

import numpy as np

LEVEL = 0.95
Z = NormalDist().inv_cdf(0.5 + LEVEL / 2)


def wilson(successes, n) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for ``successes / n``; NaN where ``n == 0``."""
    k = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + Z**2 / n
        centre = (p + Z**2 / (2 * n)) / denom
        half = Z * np.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / denom
    # The closed form gives 0 and 1 at k = 0 and k = n only up to rounding.
    lo = np.where(n > 0, np.where(k <= 0, 0.0, np.clip(centre - half, 0.0, 1.0)), np.nan)
    hi = np.where(n > 0, np.where(k >= n, 1.0, np.clip(centre + half, 0.0, 1.0)), np.nan)
    return lo, hi


def newcombe_difference(k1, n1, k2, n2) -> tuple[np.ndarray, np.ndarray]:
    """Interval for ``k1/n1 - k2/n2`` (independent groups), Newcombe (1998) method 10."""
    k1, n1, k2, n2 = (np.asarray(a, dtype=float) for a in (k1, n1, k2, n2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return lo, hi


def rng_for(seed: int, key: str) -> np.random.Generator:
    """A generator for one named statistic, so adding a column leaves the others' intervals unchanged."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def resample_counts(counts: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws of cell counts, one group per leading index.

    Args:
        counts: integer array ``(..., cells)``; each leading index is a group
            whose size ``counts.sum(-1)`` stays fixed.
        resamples: number of bootstrap resamples ``B``.
        rng: the generator (see :func:`rng_for`).

    Returns:
        int64 array ``(B, ..., cells)``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = counts.sum(-1)
    # An empty group has no frequencies; any valid ones give it all-zero draws.
    pvals = np.where(n[..., None] > 0, counts / np.maximum(n, 1)[..., None], 1.0 / counts.shape[-1])
    return rng.multinomial(n, pvals, size=(resamples, *n.shape))


def bootstrap_statistic(counts: np.ndarray, resamples: int, rng: np.random.Generator, statistic, *,
              max_cells: int = 4_000_000) -> tuple[np.ndarray, ...]:
    """``statistic`` over bootstrap draws of ``counts``, drawn in chunks of bounded memory.

    ``statistic`` maps draws ``(b, ..., cells)`` to an array or a tuple of
    arrays with leading axis ``b``; the chunks are concatenated, so each result
    has leading axis ``resamples``.
    """
    per_draw = max(1, int(np.prod(np.shape(counts))))
    chunk = max(1, min(resamples, max_cells // per_draw))
    parts: list[tuple[np.ndarray, ...]] = []
    for start in range(0, resamples, chunk):
        out = statistic(resample_counts(counts, min(chunk, resamples - start), rng))
        parts.append(out if isinstance(out, tuple) else (out,))
    return tuple(np.concatenate(group, axis=0) for group in zip(*parts))


def percentile_interval(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over ``axis``, ignoring resamples where the statistic is undefined."""
    samples = np.asarray(samples, dtype=float)
    samples = np.where(np.isfinite(samples), samples, np.nan)
    defined = ~np.isnan(samples).all(axis=axis)
    # Statistics undefined in every resample would make nanpercentile warn;
    # they are filled with zeros here and get NaN bounds from the mask below.
    samples = np.where(np.expand_dims(defined, axis), samples, 0.0)
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.nanpercentile(samples, [tail, 100 - tail], axis=axis)
    return np.where(defined, lo, np.nan), np.where(defined, hi, np.nan)


def excludes_zero(lo, hi) -> np.ndarray:
    """True where an interval lies wholly on one side of zero (NaN bounds never do)."""
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    return (lo > 0) | (hi < 0)
