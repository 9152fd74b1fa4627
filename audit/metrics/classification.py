"""Whole-dataset classification metrics (scikit-learn does the arithmetic).

Accuracy carries a Wilson interval; balanced accuracy a bootstrap interval over
(true class x correct) counts, see :mod:`audit.metrics.intervals`.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from audit.metrics.intervals import bootstrap_statistic, percentile_interval, rng_for, wilson
from audit.metrics.predictions import Predictions

TOP_K = (1, 3, 5)


def class_correct_counts(y: np.ndarray, correct: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``(C, 2)``: examples of each true class that were wrong / right."""
    return np.bincount(y * 2 + correct, minlength=num_classes * 2).reshape(num_classes, 2)


def mean_recall(counts: np.ndarray) -> np.ndarray:
    """Balanced accuracy of ``(..., C, 2)`` counts, averaged over classes present."""
    support = counts.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, counts[..., 1] / support, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(recall, axis=-1)


def _accuracies(p: Predictions, *, bootstrap: int, seed: int) -> dict:
    """Accuracy with its Wilson interval; balanced accuracy with a bootstrap one."""
    n = len(p.y)
    lo, hi = wilson(p.correct.sum(), n)
    out: dict = {
        "num_examples": n,
        "num_classes": p.num_classes,
        "class_names": p.class_names,
        "accuracy": accuracy_score(p.y, p.pred),
        "accuracy_ci": [lo, hi],
        "error_rate": 1.0 - accuracy_score(p.y, p.pred),
    }
    with warnings.catch_warnings():
        # Classes absent from the labels are reported in notes, once.
        warnings.simplefilter("ignore", UserWarning)
        out["balanced_accuracy"] = balanced_accuracy_score(p.y, p.pred)
    counts = class_correct_counts(p.y, p.correct.astype(np.int64), p.num_classes)
    if bootstrap:
        (samples,) = bootstrap_statistic(
            counts.reshape(-1), bootstrap, rng_for(seed, "balanced_accuracy"),
            lambda draws: mean_recall(draws.reshape(len(draws), -1, 2)),
        )
        out["balanced_accuracy_ci"] = list(percentile_interval(samples))
    else:
        out["balanced_accuracy_ci"] = None
    return out


def _score_metrics(p: Predictions, notes: list[str]) -> dict:
    """Top-k accuracy and log loss: the metrics that read the probabilities, not just the argmax."""
    labels = np.arange(p.num_classes)
    # Top-k ranks by the stored probabilities; binary scikit-learn wants the positive score only.
    scores = p.probs[:, 1] if p.binary else p.probs
    out: dict = {
        "top_k_accuracy": {
            str(k): top_k_accuracy_score(p.y, scores, k=k, labels=labels) for k in TOP_K if p.num_classes > k
        },
    }
    row_sums = p.probs.sum(1)
    if np.abs(row_sums - 1).max() > 1e-3:
        notes.append(
            f"class probabilities do not sum to 1 (row sums {row_sums.min():.3g}..{row_sums.max():.3g}); "
            "log loss uses them renormalised"
        )
    out["log_loss"] = log_loss(p.y, p.probs / np.maximum(row_sums, 1e-12)[:, None], labels=labels)
    return out


def _class_notes(p: Predictions, support: np.ndarray, notes: list[str]) -> None:
    """Say which classes make per-class numbers undefined: never labelled, or never predicted."""
    absent = [name for k, name in enumerate(p.class_names) if support[k] == 0]
    if absent:
        notes.append(
            f"{len(absent)} class(es) have no labelled examples ({', '.join(absent[:5])}"
            f"{', ...' if len(absent) > 5 else ''}); their recall is undefined and balanced accuracy "
            "averages the others"
        )
    never = [name for k, name in enumerate(p.class_names) if not (p.pred == k).any() and support[k] > 0]
    if never:
        notes.append(
            f"the model never predicts {len(never)} class(es) ({', '.join(never[:5])}"
            f"{', ...' if len(never) > 5 else ''}); their precision is undefined"
        )


def _per_class(p: Predictions, notes: list[str]) -> dict:
    """Macro F1, the per-class precision / recall / F1 table and the confusion matrix."""
    labels = np.arange(p.num_classes)
    out: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, support = precision_recall_fscore_support(
            p.y, p.pred, labels=labels, zero_division=np.nan
        )
        out["macro_f1"] = f1_score(p.y, p.pred, labels=labels, average="macro", zero_division=np.nan)
    out["per_class"] = [
        {"class": name, "precision": precision[k], "recall": recall[k], "f1": f1[k], "support": int(support[k])}
        for k, name in enumerate(p.class_names)
    ]
    _class_notes(p, support, notes)
    out["confusion_matrix"] = confusion_matrix(p.y, p.pred, labels=labels)
    return out


def overall_metrics(p: Predictions, *, bootstrap: int, seed: int, notes: list[str]) -> dict:
    """Accuracy, balanced accuracy, top-k, log loss, per-class table, confusion matrix."""
    # Key order is that of metrics.json before the split (readers of the raw JSON see no change).
    return {
        **_accuracies(p, bootstrap=bootstrap, seed=seed),
        **_score_metrics(p, notes),
        **_per_class(p, notes),
    }
