"""How a discovered group is tested: its accuracy against the rest, a p-value, and q-values.

Intervals are the slices' own (:mod:`audit.metrics.intervals`): Wilson for the
group's accuracy, Newcombe's hybrid score interval for ``gap = accuracy -
rest_accuracy``, so a discovered group and an annotated slice of the same rows
carry the same numbers.

The p-value is the **Mantel–Haenszel score test** of the group's error count
against the rest, over strata (a chi-square with one degree of freedom on
``(O - E)^2 / V`` with the hypergeometric mean ``E`` and variance ``V`` of each
stratum's 2x2 table, no continuity correction). With one stratum it is the
pooled two-proportion z-test (the score test, the same family as the Wilson and
Newcombe score intervals) up to the factor ``(N - 1) / N``, so it agrees with
the gap interval on which groups differ; it is vectorised over hundreds of
groups where Fisher's exact test is not, and at ``n >= min_slice_size`` (30) it
is close to exact. Strata are there for groups whose definition saw the
predicted class (the error-slice mixture does): tested within predicted class,
such a group is a discovery only when it is worse than its predicted classes
already are, which the per-class metrics show.

q-values are Benjamini–Hochberg's (1995) adjusted p-values over every
hypothesis a method tested; hypotheses that were pruned without being evaluated
count with p = 1 (``total``), which can only raise the q-values.

Example:
    >>> bh_qvalues([0.01, 0.04, 0.03, 0.2]).round(4).tolist()
    [0.04, 0.0533, 0.0533, 0.2]
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2

from audit.metrics.intervals import newcombe_difference, wilson

SIGNIFICANCE = 0.05


def bh_qvalues(p_values, total: int | None = None) -> np.ndarray:
    """Benjamini–Hochberg q-values; NaN p-values (not tested) stay NaN and do not count.

    ``total`` is the number of hypotheses in the family (at least the finite
    p-values); the missing ones are taken as p = 1.
    """
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    m = max(len(tested), total or 0)
    if len(tested) == 0:
        return q
    order = tested[np.argsort(p[tested], kind="stable")]
    ranked = p[order] * m / np.arange(1, len(order) + 1)
    # q_(i) = min over j >= i of p_(j) m / j: a running minimum from the largest p down.
    q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


def mantel_haenszel_p(group_errors, group_n, stratum_errors, stratum_n) -> np.ndarray:
    """Two-sided p-value of each group's errors against the rest of its strata.

    Args:
        group_errors, group_n: ``(G, S)`` errors and rows of each group in each stratum.
        stratum_errors, stratum_n: ``(S,)`` errors and rows of each whole stratum.

    Returns:
        ``(G,)`` p-values; 1 where no stratum holds both group and rest rows.
    """
    a = np.atleast_2d(np.asarray(group_errors, dtype=float))
    n1 = np.atleast_2d(np.asarray(group_n, dtype=float))
    m1 = np.asarray(stratum_errors, dtype=float)[None, :]
    total = np.asarray(stratum_n, dtype=float)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(total > 0, n1 * m1 / total, 0.0)
        variance = np.where(total > 1, n1 * (total - n1) * m1 * (total - m1) / (total**2 * (total - 1)), 0.0)
    observed, mean, var = a.sum(1), expected.sum(1), variance.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        statistic = np.where(var > 0, (observed - mean) ** 2 / var, 0.0)
    return chi2.sf(statistic, 1)


def group_statistics(group_errors, group_n, total_errors: int, total_n: int) -> dict[str, np.ndarray]:
    """Accuracy with Wilson interval, rest accuracy, and the Newcombe gap interval of each group."""
    errors = np.asarray(group_errors, dtype=np.int64)
    n = np.asarray(group_n, dtype=np.int64)
    right, rest_n = n - errors, total_n - n
    rest_right = (total_n - total_errors) - right
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = right / n
        rest_accuracy = np.where(rest_n > 0, rest_right / np.maximum(rest_n, 1), np.nan)
    acc_lo, acc_hi = wilson(right, n)
    gap_lo, gap_hi = newcombe_difference(right, n, rest_right, rest_n)
    return {
        "n": n, "errors": errors, "accuracy": accuracy, "accuracy_lo": acc_lo, "accuracy_hi": acc_hi,
        "rest_accuracy": rest_accuracy, "gap": accuracy - rest_accuracy,
        "gap_lo": np.where(rest_n > 0, gap_lo, np.nan), "gap_hi": np.where(rest_n > 0, gap_hi, np.nan),
    }


def group_entries(stats: dict[str, np.ndarray], p_values, q_values, *, method: str, groups, descriptions,
                  min_slice_size: int) -> list[dict]:
    """The contract's ``discovered`` entries (without the method-specific fields) of tested groups."""
    out = []
    for i, group in enumerate(groups):
        lo, hi = float(stats["gap_lo"][i]), float(stats["gap_hi"][i])
        q = float(q_values[i])
        out.append({
            "method": method, "group": int(group), "n": int(stats["n"][i]), "errors": int(stats["errors"][i]),
            "accuracy": float(stats["accuracy"][i]),
            "accuracy_ci": [float(stats["accuracy_lo"][i]), float(stats["accuracy_hi"][i])],
            "rest_accuracy": float(stats["rest_accuracy"][i]), "gap": float(stats["gap"][i]),
            "gap_ci": [lo, hi], "p_value": float(p_values[i]), "q_value": q, "description": descriptions[i],
            "predicate": None, "predicted_class": None, "attention": None, "heatmap": None,
            "significant": bool(q < SIGNIFICANCE and (lo > 0 or hi < 0) and stats["n"][i] >= min_slice_size),
        })
    return out


def strongest_first(entries: list[dict]) -> list[dict]:
    """Ascending q-value (untested last), then the most negative gap."""
    def key(e: dict) -> tuple[float, float]:
        q, gap = e["q_value"], e["gap"]
        return (q if np.isfinite(q) else np.inf, gap if np.isfinite(gap) else np.inf)
    return sorted(entries, key=key)
