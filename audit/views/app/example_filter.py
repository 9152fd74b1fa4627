"""Which examples the gallery shows, and in what order: pure pandas, no Streamlit.

>>> import pandas as pd
>>> frame = pd.DataFrame({"index": [0, 1, 2], "label": [0, 1, 1], "pred": [0, 0, 1],
...                       "confidence": [0.9, 0.8, 0.6], "correct": [True, False, True]})
>>> select(frame, Filters(outcome="incorrect")).tolist()
[1]
>>> select(frame, Filters(), sort=LEAST_CONFIDENT).tolist()
[2, 1, 0]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MISTAKES_FIRST = "most confident mistakes first"
LEAST_CONFIDENT = "least confident first"
BY_INDEX = "by index"
SORTS = (MISTAKES_FIRST, LEAST_CONFIDENT, BY_INDEX)
OUTCOMES = ("all", "correct", "incorrect")


@dataclass(frozen=True)
class Filters:
    """A gallery selection. Empty class lists mean every class.

    Attributes:
        true: true class indices to keep.
        pred: predicted class indices to keep.
        outcome: ``"all"``, ``"correct"`` or ``"incorrect"``.
        values: slice values to keep, matched against ``slice_labels`` given to :func:`select`.
        confidence: inclusive ``(lo, hi)`` range of the top probability.
        explained_only: keep only examples that have heatmaps.
    """

    true: tuple[int, ...] = ()
    pred: tuple[int, ...] = ()
    outcome: str = "all"
    values: tuple[str, ...] = ()
    confidence: tuple[float, float] = (0.0, 1.0)
    explained_only: bool = False
    explained: frozenset = field(default_factory=frozenset)


def mask(frame: pd.DataFrame, filters: Filters, slice_labels: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask over the rows of ``frame`` (a predictions table) for ``filters``."""
    if filters.outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}; received: {filters.outcome!r}")
    keep = np.ones(len(frame), dtype=bool)
    if filters.true:
        keep &= frame["label"].isin(filters.true).to_numpy()
    if filters.pred:
        keep &= frame["pred"].isin(filters.pred).to_numpy()
    if filters.outcome != "all":
        keep &= frame["correct"].to_numpy(bool) == (filters.outcome == "correct")
    lo, hi = filters.confidence
    conf = frame["confidence"].to_numpy(np.float64)
    # Widen by a float32 ulp: a slider's 1.0 must keep a stored confidence of 1.0000001.
    keep &= (conf >= lo - 1e-6) & (conf <= hi + 1e-6)
    if filters.values and slice_labels is not None:
        keep &= np.isin(slice_labels, list(filters.values))
    if filters.explained_only:
        keep &= frame["index"].isin(list(filters.explained)).to_numpy()
    return keep


def order(frame: pd.DataFrame, sort: str) -> np.ndarray:
    """Row positions of ``frame`` in gallery order."""
    if sort == MISTAKES_FIRST:
        # Mistakes by falling confidence, then correct rows by rising confidence:
        # the examples most worth a look come first either way.
        key = np.where(frame["correct"].to_numpy(bool), 1 + frame["confidence"].to_numpy(np.float64),
                       -frame["confidence"].to_numpy(np.float64))
        return np.lexsort((frame["index"].to_numpy(), key))
    if sort == LEAST_CONFIDENT:
        return np.lexsort((frame["index"].to_numpy(), frame["confidence"].to_numpy(np.float64)))
    if sort == BY_INDEX:
        return np.argsort(frame["index"].to_numpy(), kind="stable")
    raise ValueError(f"sort must be one of {SORTS}; received: {sort!r}")


def select(frame: pd.DataFrame, filters: Filters, slice_labels: np.ndarray | None = None, *,
           sort: str = MISTAKES_FIRST) -> np.ndarray:
    """Example indices (the ``index`` column) that pass ``filters``, in ``sort`` order."""
    keep = mask(frame, filters, slice_labels)
    rows = order(frame, sort)
    return frame["index"].to_numpy()[rows[keep[rows]]]
