"""Top-label calibration: reliability curve and expected calibration error.

The model's confidence in its prediction is binned into ``BINS`` equal-width
bins on [0, 1], each ``(lo, hi]`` with the first also holding 0, exactly as
scikit-learn's ``calibration_curve(strategy="uniform")`` bins them (the tests
use it as the oracle for the curve). ECE is the example-weighted mean of ``|accuracy - confidence|``
over bins (Guo et al., 2017, who use 15 bins); MCE is the largest such gap. Each bin's accuracy
carries its Wilson interval (``accuracy_ci``), so a view can tell a miscalibrated bin from a bin
of three examples.
"""

from __future__ import annotations

import numpy as np

from audit.metrics.intervals import wilson
from audit.metrics.predictions import Predictions

BINS = 15


def calibration_metrics(p: Predictions, *, bins: int = BINS) -> dict:
    """``{"bins", "edges", "count", "accuracy", "accuracy_ci", "confidence", "ece", "mce"}`` for ``p``."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], p.confidence, side="left")
    count = np.bincount(which, minlength=bins)
    hits = np.bincount(which, weights=p.correct.astype(float), minlength=bins)
    conf = np.bincount(which, weights=p.confidence, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, hits / count, np.nan)
        confidence = np.where(count > 0, conf / count, np.nan)
    gap = np.abs(accuracy - confidence)
    filled = count > 0
    lo, hi = wilson(hits, count)
    return {
        "bins": bins,
        "edges": edges,
        "count": count,
        "accuracy": accuracy,
        "accuracy_ci": np.stack([lo, hi], axis=1),  # NaN rows for empty bins
        "confidence": confidence,
        "ece": float(np.sum(count[filled] * gap[filled]) / count.sum()),
        "mce": float(gap[filled].max()),
    }
