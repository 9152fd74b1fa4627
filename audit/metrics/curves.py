"""Precision-recall and ROC curves, one class against the rest.

scikit-learn computes every curve and area. What is ours is storage: a curve
keeps at most ``MAX_POINTS`` of its points, taken evenly along the exact curve
(plus both ends), so plots stay faithful and ``metrics.json`` stays small. A
binary model has one curve, for its positive class (class index 1).

Averages over classes:

* macro: areas are the mean over classes that have both positives and
  negatives; the curves are the mean of per-class interpolated precision on a
  recall grid (precision at recall r = the best precision at recall >= r) and
  of per-class TPR interpolated on an FPR grid.
* micro: every (example, class) pair is one binary decision.

Classes past ``DETAIL_CLASSES`` keep their areas but not their curve points.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from audit.metrics.predictions import Predictions

MAX_POINTS = 201
GRID_POINTS = 101
DETAIL_CLASSES = 50
# Micro averages flatten N x C scores; past this many they would dominate run time and memory.
MICRO_LIMIT = 20_000_000


def thin(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` points spread evenly over ``n``, both ends kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


def pr_points(y_true: np.ndarray, score: np.ndarray, max_points: int = MAX_POINTS) -> dict:
    """Thinned precision-recall curve; the last point (recall 0) has no threshold."""
    precision, recall, thresholds = precision_recall_curve(y_true, score)
    thresholds = np.append(thresholds, np.nan)
    keep = thin(len(precision), max_points)
    return {
        "precision": np.round(precision[keep], 6),
        "recall": np.round(recall[keep], 6),
        "thresholds": np.round(thresholds[keep], 6),
    }


def roc_points(y_true: np.ndarray, score: np.ndarray, max_points: int = MAX_POINTS) -> dict:
    """Thinned ROC curve; the first point (nothing predicted positive) has threshold infinity, stored as null."""
    fpr, tpr, thresholds = roc_curve(y_true, score)
    keep = thin(len(fpr), max_points)
    return {"fpr": np.round(fpr[keep], 6), "tpr": np.round(tpr[keep], 6), "thresholds": np.round(thresholds[keep], 6)}


def interpolated_precision(y_true: np.ndarray, score: np.ndarray, recall_grid: np.ndarray) -> np.ndarray:
    precision, recall, _ = precision_recall_curve(y_true, score)
    order = np.argsort(recall, kind="stable")
    recall, precision = recall[order], precision[order]
    best_from_here = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, recall_grid, side="left")
    return np.where(at < len(recall), best_from_here[np.minimum(at, len(recall) - 1)], 0.0)


def curve_metrics(p: Predictions, notes: list[str], *, max_points: int = MAX_POINTS) -> dict:
    """Per-class and averaged PR / ROC curves with average precision and ROC AUC."""
    n = len(p.y)
    classes = [1] if p.binary else list(range(p.num_classes))
    recall_grid = np.linspace(0.0, 1.0, GRID_POINTS)
    fpr_grid = np.linspace(0.0, 1.0, GRID_POINTS)
    per_class, undefined, macro_prec, macro_tpr = [], [], [], []
    for c in classes:
        truth = p.y == c
        score = p.probs[:, c]
        positives = int(truth.sum())
        entry = {"class": p.class_names[c], "index": c, "positives": positives,
                 "average_precision": None, "roc_auc": None}
        if 0 < positives < n:
            entry["average_precision"] = average_precision_score(truth, score)
            entry["roc_auc"] = roc_auc_score(truth, score)
            if c < DETAIL_CLASSES:
                entry["pr"] = pr_points(truth, score, max_points)
                entry["roc"] = roc_points(truth, score, max_points)
            if not p.binary:
                macro_prec.append(interpolated_precision(truth, score, recall_grid))
                fpr, tpr, _ = roc_curve(truth, score, drop_intermediate=False)
                macro_tpr.append(np.interp(fpr_grid, fpr, tpr))
        else:
            undefined.append(p.class_names[c])
        per_class.append(entry)
    if undefined:
        notes.append(
            f"PR/ROC undefined for {len(undefined)} class(es) with no positive or no negative examples "
            f"({', '.join(undefined[:5])}{', ...' if len(undefined) > 5 else ''})"
        )
    if p.num_classes > DETAIL_CLASSES:
        notes.append(f"curve points are stored for the first {DETAIL_CLASSES} classes only (areas for all)")

    out: dict = {"positive_class": p.class_names[1] if p.binary else None, "per_class": per_class,
                 "macro": None, "micro": None}
    if p.binary:
        return out

    defined = [e for e in per_class if e["average_precision"] is not None]
    if defined:
        macro_prec_arr, macro_tpr_arr = np.mean(macro_prec, axis=0), np.mean(macro_tpr, axis=0)
        out["macro"] = {
            "average_precision": float(np.mean([e["average_precision"] for e in defined])),
            "roc_auc": float(np.mean([e["roc_auc"] for e in defined])),
            "pr": {"recall": recall_grid, "precision": np.round(macro_prec_arr, 6)},
            "roc": {"fpr": fpr_grid, "tpr": np.round(macro_tpr_arr, 6)},
        }
    if n * p.num_classes <= MICRO_LIMIT:
        onehot = (p.y[:, None] == np.arange(p.num_classes)[None, :]).astype(np.int8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out["micro"] = {
                "average_precision": average_precision_score(onehot, p.probs, average="micro"),
                "roc_auc": roc_auc_score(onehot, p.probs, average="micro"),
                "pr": pr_points(onehot.ravel(), p.probs.ravel(), max_points),
                "roc": roc_points(onehot.ravel(), p.probs.ravel(), max_points),
            }
    else:
        notes.append(f"micro-averaged curves skipped: {n} examples x {p.num_classes} classes is too many pairs")
    return out
