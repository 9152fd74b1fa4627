"""Precision, recall and F1 of one class against the rest at a threshold: pure numpy.

An example counts as positive when its score is ``>= threshold``, as in
:mod:`audit.metrics.thresholds`, so the slider at the default threshold shows
the stored ``default`` figures.

>>> import numpy as np
>>> p = at_threshold(np.array([0.9, 0.6, 0.4, 0.2]), np.array([True, False, True, False]), 0.5)
>>> (p["tp"], p["fp"], p["fn"], p["tn"], p["precision"], p["recall"])
(1, 1, 1, 1, 0.5, 0.5)
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def at_threshold(score: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    """Counts and rates at ``threshold``; a rate with no denominator is None."""
    said = np.asarray(score) >= threshold
    truth = np.asarray(truth, bool)
    tp, fp = int((said & truth).sum()), int((said & ~truth).sum())
    fn, tn = int((~said & truth).sum()), int((~said & ~truth).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall, "f1": f1,
            "fpr": _ratio(fp, fp + tn)}


def per_slice(score: np.ndarray, truth: np.ndarray, labels: np.ndarray, values: list[str],
              threshold: float) -> pd.DataFrame:
    """One row per slice value: ``value, n, positives`` and :func:`at_threshold`'s figures."""
    rows = []
    for value in values:
        inside = labels == value
        rows.append({"value": value, "n": int(inside.sum()), "positives": int(truth[inside].sum()),
                     **at_threshold(score[inside], truth[inside], threshold)})
    return pd.DataFrame(rows)
