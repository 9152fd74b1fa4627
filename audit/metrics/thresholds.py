"""Decision thresholds, one class against the rest, for the app's threshold slider.

A binary model is scored for its positive class (index 1, score ``prob_1``);
a model with more classes for each class ``c`` (score ``prob_c``), the first
``DETAIL_CLASSES`` of them. An example counts as positive when its score is
``>= threshold``.

Per class:
    * ``default``: precision, recall and F1 at ``DEFAULT_THRESHOLD`` (scikit-learn).
    * ``best_f1``: the threshold on scikit-learn's precision-recall curve with
      the highest F1, and its precision and recall.
    * ``equal_opportunity``: for every value of every single annotation column
      (not intersections), the highest threshold at which the recall *within
      that slice* reaches ``target_recall`` (the class's overall recall at the
      default threshold), with the recall and precision it gives there. Using
      these per-slice thresholds equalises recall across slices, the "equal
      opportunity" strategy of the What-If Tool. ``grid_thresholds`` and
      ``grid_precision`` give the same for every target in
      ``target_recall_grid``, so the slider can move the target. A slice
      threshold is the score of its ``ceil(target * positives)``-th best
      positive, so at least one positive is always kept; ties can lift the
      achieved recall above the target.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import precision_recall_curve, precision_recall_fscore_support

from audit.metrics.predictions import DETAIL_CLASSES, Predictions
from audit.metrics.slices import SliceColumn

DEFAULT_THRESHOLD = 0.5
TARGET_RECALL_GRID = np.round(np.linspace(0.05, 1.0, 20), 2)


def _at(truth: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, _ = precision_recall_fscore_support(
            truth, score >= threshold, average="binary", zero_division=np.nan
        )
    return {"threshold": threshold, "precision": precision, "recall": recall, "f1": f1}


def best_f1(truth: np.ndarray, score: np.ndarray) -> dict:
    """The threshold with the highest F1 on the precision-recall curve."""
    precision, recall, thresholds = precision_recall_curve(truth, score)
    precision, recall = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    i = int(np.argmax(f1))
    return {"threshold": thresholds[i], "precision": precision[i], "recall": recall[i], "f1": f1[i]}


def recall_thresholds(positives: np.ndarray, negatives: np.ndarray, targets: np.ndarray):
    """Thresholds that reach each target recall among ``positives``, with achieved recall and precision.

    Args:
        positives: scores of the positive examples, sorted ascending (non-empty).
        negatives: scores of the negative examples, sorted ascending.
        targets: target recalls in (0, 1].
    """
    count = len(positives)
    need = np.clip(np.ceil(np.asarray(targets) * count - 1e-9).astype(np.int64), 1, count)
    threshold = positives[count - need]
    true_pos = count - np.searchsorted(positives, threshold, side="left")
    false_pos = len(negatives) - np.searchsorted(negatives, threshold, side="left")
    return threshold, true_pos / count, true_pos / (true_pos + false_pos)


def _segments(codes_sorted: np.ndarray, slices: int) -> np.ndarray:
    return np.searchsorted(codes_sorted, np.arange(slices + 1), side="left")


def threshold_metrics(p: Predictions, columns: list[SliceColumn], notes: list[str]) -> dict:
    """The ``thresholds`` section of metrics.json."""
    classes = [1] if p.binary else list(range(min(p.num_classes, DETAIL_CLASSES)))
    if not p.binary and p.num_classes > DETAIL_CLASSES:
        notes.append(f"thresholds are computed for the first {DETAIL_CLASSES} classes only")
    out_classes = []
    for c in classes:
        truth = p.y == c
        score = p.probs[:, c]
        entry: dict = {"class": p.class_names[c], "index": c, "positives": int(truth.sum()),
                       "default": None, "best_f1": None, "equal_opportunity": None}
        if not 0 < truth.sum() < len(truth):
            out_classes.append(entry)
            continue
        entry["default"] = _at(truth, score, DEFAULT_THRESHOLD)
        entry["best_f1"] = best_f1(truth, score)
        target = float(entry["default"]["recall"])
        targets = np.append(target, TARGET_RECALL_GRID)
        # Sorting once by score, then stably by slice, leaves every slice's scores ascending.
        by_score = np.argsort(score, kind="stable")
        slices = []
        for column in columns:
            k = len(column.labels)
            # Narrow codes let numpy's stable sort use radix sort.
            codes = column.codes.astype(np.int16) if k < 2**15 else column.codes
            order = by_score[np.argsort(codes[by_score], kind="stable")]
            pos = order[truth[order]]
            neg = order[~truth[order]]
            pos_at, neg_at = _segments(column.codes[pos], k), _segments(column.codes[neg], k)
            for s, label in enumerate(column.labels):
                pos_scores = score[pos[pos_at[s]:pos_at[s + 1]]]
                neg_scores = score[neg[neg_at[s]:neg_at[s + 1]]]
                row = {"column": column.name, "value": label, "positives": len(pos_scores),
                       "negatives": len(neg_scores), "recall_at_default": None, "threshold": None,
                       "recall": None, "precision": None, "grid_thresholds": None, "grid_precision": None}
                if len(pos_scores):
                    threshold, recall, precision = recall_thresholds(pos_scores, neg_scores, targets)
                    row.update(
                        recall_at_default=float(np.mean(pos_scores >= DEFAULT_THRESHOLD)),
                        threshold=threshold[0], recall=recall[0], precision=precision[0],
                        grid_thresholds=threshold[1:], grid_precision=precision[1:],
                    )
                slices.append(row)
        entry["equal_opportunity"] = {"target_recall": target, "slices": slices}
        out_classes.append(entry)
    return {
        "scope": "binary" if p.binary else "one_vs_rest",
        "default_threshold": DEFAULT_THRESHOLD,
        "target_recall_grid": TARGET_RECALL_GRID,
        "classes": out_classes,
    }
