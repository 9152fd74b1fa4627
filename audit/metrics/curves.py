"""Precision-recall and ROC curves, one class against the rest.

scikit-learn computes every curve and area. What is ours is storage: a curve
keeps at most ``MAX_POINTS`` of its points, taken evenly along the exact curve
(plus both ends), so plots stay faithful and ``metrics.json`` stays small. A
binary model gets a one-vs-rest curve for each of its two classes, the positive
class (index 1, the headline: ``positive_class``) first, then the negative one
scored by its own probability (``prob_0``); they share one ROC AUC, not one
average precision.

Averages over classes:

* macro: areas are the mean over classes that have both positives and
  negatives; the curves are the mean of per-class interpolated precision on a
  recall grid (precision at recall r = the best precision at recall >= r) and
  of per-class TPR interpolated on an FPR grid.
* micro: every (example, class) pair is one binary decision.

Classes past ``DETAIL_CLASSES`` keep their areas but not their curve points.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from audit.metrics.predictions import DETAIL_CLASSES, Predictions

MAX_POINTS = 201
GRID_POINTS = 101
# Micro averages flatten N x C scores; past this many they would dominate run time and memory.
MICRO_LIMIT = 20_000_000


def thin(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` points spread evenly over ``n``, both ends kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


def _thinned(arrays: dict, max_points: int) -> dict:
    keep = thin(len(next(iter(arrays.values()))), max_points)
    return {k: np.round(v[keep], 6) for k, v in arrays.items()}


def pr_curve(y_true: np.ndarray, score: np.ndarray) -> dict:
    """scikit-learn's PR curve; the last point (recall 0) has no threshold, stored as NaN."""
    precision, recall, thresholds = precision_recall_curve(y_true, score)
    return {"precision": precision, "recall": recall, "thresholds": np.append(thresholds, np.nan)}


def roc(y_true: np.ndarray, score: np.ndarray) -> dict:
    """scikit-learn's ROC curve; the first threshold (nothing positive) is infinite."""
    fpr, tpr, thresholds = roc_curve(y_true, score)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}


def interpolated_precision(curve: dict, recall_grid: np.ndarray) -> np.ndarray:
    order = np.argsort(curve["recall"], kind="stable")
    recall, precision = curve["recall"][order], curve["precision"][order]
    best_from_here = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, recall_grid, side="left")
    return np.where(at < len(recall), best_from_here[np.minimum(at, len(recall) - 1)], 0.0)


def _class_curves(p: Predictions, classes: list[int], max_points: int, recall_grid: np.ndarray,
                  fpr_grid: np.ndarray) -> tuple[list[dict], list[str], list[np.ndarray], list[np.ndarray]]:
    """One-vs-rest curves per class; also the classes whose curves are undefined and, for the macro
    average, each defined class's precision on ``recall_grid`` and TPR on ``fpr_grid``."""
    n = len(p.y)
    per_class, undefined, macro_prec, macro_tpr = [], [], [], []
    for c in classes:
        truth = p.y == c
        score = p.probs[:, c]
        positives = int(truth.sum())
        entry = {"class": p.class_names[c], "index": c, "positives": positives,
                 "average_precision": None, "roc_auc": None}
        if 0 < positives < n:
            pr, rc = pr_curve(truth, score), roc(truth, score)
            entry["average_precision"] = average_precision_score(truth, score)
            entry["roc_auc"] = auc(rc["fpr"], rc["tpr"])
            if c < DETAIL_CLASSES:
                entry["pr"], entry["roc"] = _thinned(pr, max_points), _thinned(rc, max_points)
            if not p.binary:
                macro_prec.append(interpolated_precision(pr, recall_grid))
                # Points ROC drops as intermediate are collinear, so interpolating between the rest is exact.
                macro_tpr.append(np.interp(fpr_grid, rc["fpr"], rc["tpr"]))
        else:
            undefined.append(p.class_names[c])
        per_class.append(entry)
    return per_class, undefined, macro_prec, macro_tpr


def _micro(p: Predictions, max_points: int) -> dict:
    # Micro averaging is one binary problem over every (example, class) pair.
    truth = (p.y[:, None] == np.arange(p.num_classes)[None, :]).ravel()
    score = p.probs.ravel()
    rc = roc(truth, score)
    return {
        "average_precision": average_precision_score(truth, score),
        "roc_auc": auc(rc["fpr"], rc["tpr"]),
        "pr": _thinned(pr_curve(truth, score), max_points),
        "roc": _thinned(rc, max_points),
    }


def curve_metrics(p: Predictions, notes: list[str], *, max_points: int = MAX_POINTS) -> dict:
    """Per-class and averaged PR / ROC curves with average precision and ROC AUC."""
    n = len(p.y)
    # Binary: the headline (positive) class first, where readers of per_class[0] look for it.
    classes = [1, 0] if p.binary else list(range(p.num_classes))
    recall_grid = np.linspace(0.0, 1.0, GRID_POINTS)
    fpr_grid = np.linspace(0.0, 1.0, GRID_POINTS)
    per_class, undefined, macro_prec, macro_tpr = _class_curves(p, classes, max_points, recall_grid, fpr_grid)
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
        out["micro"] = _micro(p, max_points)
    else:
        notes.append(f"micro-averaged curves skipped: {n} examples x {p.num_classes} classes is too many pairs")
    return out
