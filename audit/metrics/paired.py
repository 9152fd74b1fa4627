"""Paired comparison of two runs of different models on the same examples.

Both models answered the same examples, so every difference is paired: the
bootstrap resamples *examples*, keeping each example's pair of outcomes
together. As in :mod:`audit.metrics.intervals`, that is done by drawing the
counts of (true class x A correct x B correct) cells from a multinomial, once
for the whole data and once per slice (slice sizes fixed), and taking 2.5 /
97.5 percentiles of ``B - A``. A model *wins* an overall metric, a class or a
slice when the whole interval of ``B - A`` is on its side of zero. The overall
accuracy difference also gets McNemar's exact test on the examples exactly one
model gets right.

Slices come from run A's annotation columns (single columns, binned as in
:mod:`audit.metrics.slices`); the runs hold the same examples, so the
annotations describe both.

The result is a JSON-ready dict; :mod:`audit.views.terminal` prints it and
``keras-audit compare A B --save`` (or ``keras-audit app A B``) stores it in
run A, where the app reads it: no view runs the bootstrap.

Example:
    >>> result = compare_runs(Path("run_small"), Path("run_big"))    # doctest: +SKIP
    >>> result["overall"]["accuracy_winner"]                          # doctest: +SKIP
    'b'
"""

from __future__ import annotations

from numbers import Integral
from pathlib import Path

import numpy as np
import pandas as pd

from audit.errors import AuditError, StoreError
from audit.metrics.classification import mean_recall
from audit.metrics.intervals import bootstrap_statistic, percentile_interval, rng_for
from audit.metrics.slices import slice_columns
from audit.store import schema
from audit.store.reader import Reader

DISAGREEMENTS = 50


def _same_examples(a: Reader, b: Reader) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both predictions tables ordered by example index, or StoreError when they differ."""
    if a.class_names != b.class_names:
        raise StoreError(
            f"runs have different classes ({', '.join(a.class_names[:5])} vs {', '.join(b.class_names[:5])}); "
            "compare needs two models of the same classes",
            b.path,
        )
    fa = a.predictions.sort_values("index", kind="stable").reset_index(drop=True)
    fb = b.predictions.sort_values("index", kind="stable").reset_index(drop=True)
    if len(fa) != len(fb):
        raise StoreError(
            f"runs are not on the same examples: {len(fa)} predictions in {a.path}, {len(fb)} here", b.path
        )
    ia, ib = fa["index"].to_numpy(), fb["index"].to_numpy()
    if not np.array_equal(ia, ib):
        k = int(np.flatnonzero(ia != ib)[0])
        raise StoreError(f"runs are not on the same examples: example {ia[k]} in {a.path} is {ib[k]} here", b.path)
    both = fa["path"].notna().to_numpy() & fb["path"].notna().to_numpy()
    differ = both & (fa["path"].astype(object).to_numpy() != fb["path"].astype(object).to_numpy())
    if differ.any():
        k = int(np.flatnonzero(differ)[0])
        raise StoreError(
            f"runs are not on the same examples: example {ia[k]} is {fa['path'][k]} in {a.path} "
            f"but {fb['path'][k]} here", b.path,
        )
    la, lb = fa["label"].to_numpy(), fb["label"].to_numpy()
    if not np.array_equal(la, lb):
        k = int(np.flatnonzero(la != lb)[0])
        raise StoreError(
            f"runs are not on the same examples: example {ia[k]} has label {la[k]} in {a.path} but {lb[k]} here",
            b.path,
        )
    return fa, fb


def _winner(ci) -> str | None:
    if ci is None or not np.all(np.isfinite(ci)):
        return None
    return "b" if ci[0] > 0 else "a" if ci[1] < 0 else "tie"


def _paired_overall(y, ca, cb, names: list[str], bootstrap: int, seed: int) -> tuple[dict, list[dict]]:
    """Accuracy and balanced accuracy of both runs, and recall per class, with paired intervals of B - A."""
    num_classes = len(names)
    counts = np.bincount(y * 4 + ca * 2 + cb, minlength=num_classes * 4).reshape(num_classes, 2, 2)

    def recall_of(right: np.ndarray) -> np.ndarray:
        support = right.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(support > 0, right[..., 1] / np.maximum(support, 1), np.nan)

    def differences(cells: np.ndarray):
        """B - A of accuracy, balanced accuracy and per-class recall from (..., C, A right, B right) counts."""
        right_a, right_b = cells.sum(-1), cells.sum(-2)  # (..., C, [wrong, right])
        n = cells.sum((-3, -2, -1))
        accuracy = (right_b[..., 1].sum(-1) - right_a[..., 1].sum(-1)) / n
        return accuracy, mean_recall(right_b) - mean_recall(right_a), recall_of(right_b) - recall_of(right_a)

    right_a, right_b = counts.sum(2), counts.sum(1)
    accuracy, balanced, recall = differences(counts)
    accuracy_ci: list | None = None
    balanced_ci: list | None = None
    recall_ci = np.full((num_classes, 2), np.nan)
    if bootstrap:
        samples = bootstrap_statistic(counts.reshape(-1), bootstrap, rng_for(seed, "compare:overall"),
                                      lambda d: differences(d.reshape(len(d), num_classes, 2, 2)))
        accuracy_ci, balanced_ci = (list(percentile_interval(s)) for s in samples[:2])
        recall_ci = np.stack(percentile_interval(samples[2]), axis=-1)
    overall = {
        "accuracy_a": right_a[:, 1].sum() / len(y),
        "accuracy_b": right_b[:, 1].sum() / len(y),
        "accuracy_difference": accuracy,
        "accuracy_difference_ci": accuracy_ci,
        "accuracy_winner": _winner(accuracy_ci),
        "balanced_accuracy_a": mean_recall(right_a),
        "balanced_accuracy_b": mean_recall(right_b),
        "balanced_accuracy_difference": balanced,
        "balanced_accuracy_difference_ci": balanced_ci,
        "balanced_accuracy_winner": _winner(balanced_ci),
    }
    recall_a, recall_b = recall_of(right_a), recall_of(right_b)
    per_class = [
        {"class": name, "support": int(counts[k].sum()), "recall_a": recall_a[k], "recall_b": recall_b[k],
         "difference": recall[k], "difference_ci": recall_ci[k].tolist() if bootstrap else None,
         "winner": _winner(recall_ci[k]) if bootstrap else None}
        for k, name in enumerate(names)
    ]
    return overall, per_class


def _agreement(ca: np.ndarray, cb: np.ndarray, differ: np.ndarray) -> dict:
    """Counts of who is right (``ca``, ``cb``: 0/1 per example) and of differing predictions."""
    return {
        "both_right": int(((ca == 1) & (cb == 1)).sum()), "only_a_right": int(((ca == 1) & (cb == 0)).sum()),
        "only_b_right": int(((ca == 0) & (cb == 1)).sum()), "both_wrong": int(((ca == 0) & (cb == 0)).sum()),
        "predictions_differ": int(differ.sum()), "predictions_differ_rate": float(differ.mean()),
    }


def _mcnemar(only_a: int, only_b: int) -> float | None:
    from scipy.stats import binomtest

    discordant = only_a + only_b
    return binomtest(only_a, discordant, 0.5).pvalue if discordant else None


def _slice_rows(frame: pd.DataFrame, ca: np.ndarray, cb: np.ndarray, *, min_slice_size: int,
                bootstrap: int, seed: int, notes: list[str]) -> list[dict]:
    columns, _ = slice_columns(frame, schema.annotation_columns(frame.columns), min_slice_size=min_slice_size,
                               notes=notes)
    rows = []
    for column in columns:
        k = len(column.labels)
        counts = np.bincount(column.codes * 4 + ca * 2 + cb, minlength=k * 4).reshape(k, 4)
        n = counts.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc_a = (counts[:, 2] + counts[:, 3]) / n
            acc_b = (counts[:, 1] + counts[:, 3]) / n
        ci = np.full((k, 2), np.nan)
        if bootstrap:
            (diff,) = bootstrap_statistic(
                counts, bootstrap, rng_for(seed, f"compare:{column.name}"),
                lambda d: (d[..., 1] - d[..., 2]) / np.maximum(d.sum(-1), 1),
            )
            ci = np.stack(percentile_interval(diff), axis=-1)
        for s, label in enumerate(column.labels):
            rows.append({
                "column": column.name, "value": label, "n": int(n[s]), "accuracy_a": acc_a[s],
                "accuracy_b": acc_b[s], "difference": acc_b[s] - acc_a[s],
                "difference_ci": ci[s].tolist() if bootstrap else None,
                "winner": _winner(ci[s]) if bootstrap else None, "too_small": bool(n[s] < min_slice_size),
            })
    return rows


def _disagreements(fa: pd.DataFrame, fb: pd.DataFrame, names: list[str], limit: int) -> list[dict]:
    differ = np.flatnonzero(fa["pred"].to_numpy() != fb["pred"].to_numpy())
    ca, cb = fa["correct"].to_numpy(bool), fb["correct"].to_numpy(bool)
    conf_a, conf_b = fa["confidence"].to_numpy(float), fb["confidence"].to_numpy(float)
    right = np.where(ca, "a", np.where(cb, "b", "neither"))
    # Most telling first: one model right while the other was confidently wrong.
    wrong_conf = np.where(ca, conf_b, np.where(cb, conf_a, np.maximum(conf_a, conf_b)))
    order = differ[np.lexsort((-wrong_conf[differ], right[differ] == "neither"))][:limit]
    return [
        {"index": int(fa["index"][i]), "path": None if pd.isna(fa["path"][i]) else str(fa["path"][i]),
         "label": names[int(fa["label"][i])], "pred_a": names[int(fa["pred"][i])],
         "pred_b": names[int(fb["pred"][i])], "confidence_a": conf_a[i], "confidence_b": conf_b[i],
         "right": str(right[i])}
        for i in order
    ]


def compare_runs(store_a: Path, store_b: Path, *, bootstrap: int = 1000, seed: int = 0,
                 min_slice_size: int = 30, max_disagreements: int = DISAGREEMENTS) -> dict:
    """Overall, per-class and per-slice differences ``B - A`` of two runs on the same examples.

    Returns a JSON-ready dict: ``a``/``b`` (path, model), ``num_examples``,
    ``overall`` (accuracies, differences, intervals, winners, McNemar p),
    ``agreement`` (counts of who is right), ``per_class``, ``slices``,
    ``disagreements`` (examples whose predictions differ, most telling first),
    ``wins`` (what each model wins) and ``notes``.

    Raises:
        StoreError: a store is missing or incomplete, or the runs are not on the same examples.
        AuditError: an option is out of range.
    """
    for name, value, minimum in (("--bootstrap", bootstrap, 0), ("seed", seed, 0),
                                 ("--min-slice-size", min_slice_size, 1), ("max_disagreements", max_disagreements, 0)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
            raise AuditError(f"compare option {name} must be an integer >= {minimum}, got {value!r}")
    a, b = Reader(store_a), Reader(store_b)
    fa, fb = _same_examples(a, b)
    names = a.class_names
    y = fa["label"].to_numpy(np.int64)
    ca = fa["correct"].to_numpy(bool).astype(np.int64)
    cb = fb["correct"].to_numpy(bool).astype(np.int64)
    notes: list[str] = []

    overall, per_class = _paired_overall(y, ca, cb, names, bootstrap, seed)
    agreement = _agreement(ca, cb, fa["pred"].to_numpy() != fb["pred"].to_numpy())
    overall["mcnemar_p"] = _mcnemar(agreement["only_a_right"], agreement["only_b_right"])
    slices = _slice_rows(fa, ca, cb, min_slice_size=min_slice_size, bootstrap=bootstrap, seed=seed, notes=notes)
    if not bootstrap:
        notes.append("bootstrap is off (--bootstrap 0): differences have no intervals and no winners")
    wins = {
        side: [f"class {c['class']}" for c in per_class if c["winner"] == side]
        + [f"{s['column']} = {s['value']}" for s in slices if s["winner"] == side]
        for side in ("a", "b")
    }
    return schema.to_json({
        "a": {"path": str(a.path), "model": a.model_info.get("name")},
        "b": {"path": str(b.path), "model": b.model_info.get("name")},
        "num_examples": len(y),
        "class_names": names,
        "bootstrap": bootstrap,
        "seed": seed,
        "overall": overall,
        "agreement": agreement,
        "per_class": per_class,
        "slices": slices,
        "disagreements": _disagreements(fa, fb, names, max_disagreements),
        "wins": wins,
        "notes": notes,
    })
