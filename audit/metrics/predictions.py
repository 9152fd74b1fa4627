"""The predictions table (``predictions.parquet``) checked and turned into arrays.

Every metric starts from :func:`read_predictions`, so a malformed table fails
once, here, with a message that says which column is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.errors import DataError
from audit.store import schema

# Per-class detail (curve points, per-slice recall, thresholds) is stored for
# this many classes; past it metrics.json would grow with classes x slices.
DETAIL_CLASSES = 50


@dataclass(frozen=True)
class Predictions:
    """Labelled rows of a predictions table.

    Attributes:
        frame: the labelled rows, re-indexed 0..N-1 (annotation columns included).
        class_names: one name per class, in the model's output order.
        y: true class per row, int64 (N,).
        pred: predicted class per row, int64 (N,).
        probs: class probabilities, float64 (N, C).
        confidence: the probability the model gave its prediction, float64 (N,).
    """

    frame: pd.DataFrame
    class_names: list[str]
    y: np.ndarray
    pred: np.ndarray
    probs: np.ndarray
    confidence: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def correct(self) -> np.ndarray:
        return self.y == self.pred


def _class_indices(values: pd.Series, name: str, num_classes: int) -> np.ndarray:
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise DataError(f"predictions column {name!r} must hold class indices (integers), found {values.dtype}")
    arr = values.to_numpy(dtype=float, na_value=np.nan)
    fractional = np.isfinite(arr) & (arr != np.round(arr))
    if fractional.any():
        raise DataError(f"predictions column {name!r} must hold whole class indices, found {arr[fractional][0]}")
    bad = arr >= num_classes
    if bad.any():
        raise DataError(
            f"predictions column {name!r} has class index {int(arr[bad][0])} but there are only "
            f"{num_classes} class names"
        )
    return arr


def _is_labelled(y: np.ndarray) -> np.ndarray:
    return ~np.isnan(y) & (y >= 0)


def labelled_positions(frame: pd.DataFrame) -> np.ndarray:
    """Positions of the rows that metrics score (those with a label), as :func:`read_predictions` keeps them."""
    return np.flatnonzero(_is_labelled(frame["label"].to_numpy(dtype=float, na_value=np.nan)))


def read_predictions(frame: pd.DataFrame, class_names: list[str], notes: list[str]) -> Predictions:
    """Check a predictions table against ``class_names`` and return its labelled rows as arrays.

    Rows without a label (NaN or a negative index) cannot be scored; they are
    left out and counted in ``notes``.

    Raises:
        DataError: a required column is missing or holds impossible values.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"predictions must be a pandas DataFrame, got {type(frame).__name__}")
    names = [str(c) for c in class_names] if class_names is not None else []
    if len(names) < 2:
        raise DataError(f"metrics need at least 2 class names, got {len(names)}")
    num_classes = len(names)
    prob_cols = [schema.prob_column(k) for k in range(num_classes)]
    missing = [c for c in ("label", "pred", *prob_cols) if c not in frame.columns]
    if missing:
        raise DataError(f"predictions table lacks column(s) {', '.join(missing)} (for {num_classes} classes)")
    extra = schema.prob_column(num_classes)
    if extra in frame.columns:
        raise DataError(f"predictions table has column {extra!r} but only {num_classes} class names were given")

    y = _class_indices(frame["label"], "label", num_classes)
    pred = _class_indices(frame["pred"], "pred", num_classes)
    if np.any(np.isnan(pred) | (pred < 0)):
        raise DataError("predictions column 'pred' has missing or negative class indices")
    labelled = _is_labelled(y)
    if not labelled.all():
        notes.append(f"{int((~labelled).sum())} rows have no label (NaN or negative) and are left out of all metrics")
    if not labelled.any():
        raise DataError("no predictions have a label; metrics need labelled examples")

    probs = frame[prob_cols].to_numpy(dtype=float, na_value=np.nan)
    if not np.isfinite(probs).all():
        raise DataError("predictions table has missing or infinite probabilities (prob_* columns)")
    if probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
        raise DataError(
            f"prob_* columns must be probabilities in [0, 1], found values in [{probs.min():.4g}, {probs.max():.4g}]"
        )
    probs = np.clip(probs, 0.0, 1.0)
    if "confidence" in frame.columns:
        confidence = frame["confidence"].to_numpy(dtype=float, na_value=np.nan)
        if not np.isfinite(confidence).all():
            raise DataError("predictions column 'confidence' has missing or infinite values")
    else:
        confidence = probs[np.arange(len(probs)), pred.astype(np.int64)]

    keep = np.flatnonzero(labelled)
    return Predictions(
        frame=frame.iloc[keep].reset_index(drop=True),
        class_names=names,
        y=y[keep].astype(np.int64),
        pred=pred[keep].astype(np.int64),
        probs=probs[keep],
        confidence=np.clip(confidence[keep], 0.0, 1.0),
    )
