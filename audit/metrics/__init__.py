"""Model and bias metrics, computed from stored predictions alone.

:func:`compute_metrics` turns a predictions table (``predictions.parquet``)
into the JSON-ready dict stored as ``metrics.json``; it never needs the model,
so a run's metrics can be recomputed with other options.

Layout of the result (every number is a plain float or int; undefined values
and infinities are ``null``; ``*_ci`` values are ``[lo, hi]`` 95% intervals)::

    metrics_version        1
    options                {bootstrap, min_slice_size, slice_pairs, seed, annotation_columns}
    num_examples, num_classes, class_names
    accuracy, accuracy_ci (Wilson), error_rate
    balanced_accuracy, balanced_accuracy_ci (bootstrap; null when bootstrap is 0)
    top_k_accuracy         {"1": .., "3": .., "5": ..}   (k < number of classes)
    log_loss, macro_f1
    per_class              [{class, precision, recall, f1, support}]
    confusion_matrix       [[...]]  rows = true class, columns = predicted class
    curves                 positive_class (binary) | null
                           per_class [{class, index, positives, average_precision, roc_auc,
                                       pr {precision, recall, thresholds}, roc {fpr, tpr, thresholds}}]
                           macro {average_precision, roc_auc, pr {recall, precision}, roc {fpr, tpr}} | null
                           micro {average_precision, roc_auc, pr {...}, roc {...}} | null
                           (see audit.metrics.curves; binary models: positive class first, then negative)
    calibration            {bins, edges, count, accuracy, confidence, ece, mce}
    slices                 method, min_slice_size, pairs,
                           columns [{column, columns, kind, builtin, values, bin_edges, missing,
                                     disparity {values_compared, best, worst, accuracy_gap(_ci),
                                                accuracy_ratio(_ci), equal_opportunity_gap(_ci),
                                                equal_opportunity_class, equal_opportunity_values [low, high],
                                                recall_gap_per_class [{class, gap, ci, lowest, highest}]}
                                     | null}],
                           skipped [{column, reason}],
                           rows [{column, value, columns, values, n, accuracy(_ci), error_rate(_ci),
                                  rest_accuracy, gap, gap_ci, flagged, too_small,
                                  support, recall, recall_ci, range?, below_parents?}],
                           summary {tested, flagged, expected_flagged_by_chance}
                           (see audit.metrics.slices)
    thresholds             scope, default_threshold, target_recall_grid,
                           classes [{class, index, positives,
                                     default {threshold, precision, recall, f1}, best_f1 {same},
                                     equal_opportunity {target_recall,
                                         slices [{column, value, positives, negatives, recall_at_default,
                                                  threshold, recall, precision,
                                                  grid_thresholds, grid_precision}]}}]
                           (see audit.metrics.thresholds)
    notes                  [str]  warnings for the user (skipped columns, small slices, ...)

The engine adds ``explanations`` (explanation quality per method) itself.

:func:`slice_membership` turns the predictions and these metrics into
``slices.parquet``: per example, the slice it falls in for every sliced column,
so views find a slice's rows in the store without this package.

Example:
    >>> from audit import Reader                                    # doctest: +SKIP
    >>> run = Reader("audit_out")                                   # doctest: +SKIP
    >>> m = compute_metrics(run.predictions, run.class_names, bootstrap=200)  # doctest: +SKIP
    >>> worst_slices(m, k=3)                                        # doctest: +SKIP
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import pandas as pd

from audit.errors import AuditError, DataError
from audit.metrics.calibration import calibration_metrics
from audit.metrics.classification import overall_metrics
from audit.metrics.curves import curve_metrics
from audit.metrics.predictions import read_predictions
from audit.metrics.slices import slice_membership, slice_metrics, worst_slices
from audit.metrics.thresholds import threshold_metrics
from audit.store import schema

METRICS_VERSION = 1

__all__ = ["compute_metrics", "slice_membership", "worst_slices", "METRICS_VERSION"]


def _option(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise AuditError(f"metrics option {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _chosen_columns(available: list[str], wanted: list[str] | None) -> list[str]:
    """The annotation columns to slice by: all of them, or those asked for (each must exist)."""
    if wanted is None:
        return available
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise DataError(
            f"annotation column(s) {', '.join(map(repr, unknown))} not in the predictions table "
            f"(annotations: {', '.join(available) or 'none'})"
        )
    return list(dict.fromkeys(wanted))


def compute_metrics(
    predictions: pd.DataFrame,
    class_names: list[str],
    *,
    bootstrap: int = 1000,
    min_slice_size: int = 30,
    slice_pairs: bool | None = None,
    seed: int = 0,
    annotation_columns: list[str] | None = None,
) -> dict:
    """All metrics of one run, ready for ``json.dump`` (layout in the module docstring).

    Args:
        predictions: the predictions table (columns as in :mod:`audit.store.schema`).
        class_names: one name per class, in output order.
        bootstrap: resamples for bootstrap intervals; 0 turns them off.
        min_slice_size: slices with fewer examples are kept but marked ``too_small``.
        slice_pairs: intersect pairs of annotation columns; None decides by the
            number of user columns (see :mod:`audit.metrics.slices`).
        seed: seed of every bootstrap.
        annotation_columns: columns to slice by; None slices by every annotation column.

    Raises:
        DataError: the predictions table cannot be used.
        AuditError: an option is out of range.
    """
    bootstrap = _option("--bootstrap", bootstrap, 0)
    min_slice_size = _option("--min-slice-size", min_slice_size, 1)
    seed = _option("seed", seed, 0)
    if slice_pairs is not None and not isinstance(slice_pairs, (bool, np.bool_)):
        raise AuditError(f"metrics option --slice-pairs must be true, false or None, got {slice_pairs!r}")

    notes: list[str] = []
    p = read_predictions(predictions, class_names, notes)
    columns = _chosen_columns(schema.annotation_columns(p.frame.columns), annotation_columns)
    metrics: dict = {
        "metrics_version": METRICS_VERSION,
        "options": {"bootstrap": bootstrap, "min_slice_size": min_slice_size, "slice_pairs": slice_pairs,
                    "seed": seed, "annotation_columns": columns},
    }
    metrics.update(overall_metrics(p, bootstrap=bootstrap, seed=seed, notes=notes))
    metrics["curves"] = curve_metrics(p, notes)
    metrics["calibration"] = calibration_metrics(p)
    metrics["slices"], singles = slice_metrics(
        p.frame, p.y, p.correct, p.class_names, columns=columns, min_slice_size=min_slice_size,
        slice_pairs=slice_pairs, bootstrap=bootstrap, seed=seed, notes=notes,
    )
    metrics["thresholds"] = threshold_metrics(p, singles, notes)
    metrics["notes"] = notes
    return schema.to_json(metrics)
