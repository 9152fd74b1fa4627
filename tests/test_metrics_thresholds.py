"""Thresholds: a hand-worked binary case, and every per-slice threshold checked with scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from audit.metrics import compute_metrics
from audit.metrics.thresholds import TARGET_RECALL_GRID, recall_thresholds
from metrics_data import planted_predictions


def binary_frame(labels, scores, **annotations) -> pd.DataFrame:
    scores = np.asarray(scores, np.float64)
    pred = (scores >= 0.5).astype(np.int64)
    frame = pd.DataFrame({
        "index": np.arange(len(scores)), "path": [f"{i}.png" for i in range(len(scores))],
        "label": np.asarray(labels, np.int64), "pred": pred,
        "confidence": np.where(pred == 1, scores, 1 - scores), "correct": pred == np.asarray(labels),
        "prob_0": 1 - scores, "prob_1": scores,
    })
    for name, values in annotations.items():
        frame[name] = values
    return frame


HAND = binary_frame(
    labels=[1, 1, 1, 0, 0, 1, 1, 0, 0, 0],
    scores=[0.9, 0.6, 0.3, 0.7, 0.2, 0.8, 0.4, 0.45, 0.1, 0.05],
    g=["A"] * 5 + ["B"] * 5,
)


def test_hand_worked_binary_case():
    th = compute_metrics(HAND, ["no", "yes"], bootstrap=0, min_slice_size=1)["thresholds"]
    assert th["scope"] == "binary" and th["default_threshold"] == 0.5
    (c,) = th["classes"]
    assert c["class"] == "yes" and c["positives"] == 5
    # At 0.5: positives 0.9, 0.6, 0.8 found (recall 3/5); 0.7 is a false positive (precision 3/4).
    assert (c["default"]["precision"], c["default"]["recall"], c["default"]["f1"]) == pytest.approx((0.75, 0.6, 2 / 3))
    eo = c["equal_opportunity"]
    assert eo["target_recall"] == pytest.approx(0.6)
    a, b = eo["slices"]
    # A: positives 0.3, 0.6, 0.9 need 2 of 3 -> threshold 0.6 (recall 2/3); negative 0.7 passes -> precision 2/3.
    assert (a["value"], a["positives"], a["negatives"]) == ("A", 3, 2)
    assert (a["threshold"], a["recall"], a["precision"]) == pytest.approx((0.6, 2 / 3, 2 / 3))
    assert a["recall_at_default"] == pytest.approx(2 / 3)
    # B: positives 0.4, 0.8 need 2 of 2 -> threshold 0.4 (recall 1); negative 0.45 passes -> precision 2/3.
    assert (b["threshold"], b["recall"], b["precision"]) == pytest.approx((0.4, 1.0, 2 / 3))
    assert b["recall_at_default"] == pytest.approx(0.5)
    assert len(a["grid_thresholds"]) == len(th["target_recall_grid"]) == len(TARGET_RECALL_GRID)


def test_best_f1_is_the_best_over_every_score():
    rng = np.random.default_rng(21)
    labels = rng.integers(0, 2, 150)
    scores = np.clip(labels * 0.3 + rng.random(150) * 0.7, 0, 1)
    frame = binary_frame(labels, scores)
    best = compute_metrics(frame, ["no", "yes"], bootstrap=0)["thresholds"]["classes"][0]["best_f1"]
    brute = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert best["f1"] == pytest.approx(brute)
    assert f1_score(labels, scores >= best["threshold"]) == pytest.approx(brute)
    assert best["precision"] == pytest.approx(precision_score(labels, scores >= best["threshold"]))
    assert best["recall"] == pytest.approx(recall_score(labels, scores >= best["threshold"]))


def test_recall_thresholds_with_ties():
    positives = np.array([0.2, 0.5, 0.5, 0.5, 0.9])
    negatives = np.array([0.1, 0.5, 0.95])
    threshold, recall, precision = recall_thresholds(positives, negatives, np.array([0.2, 0.4, 0.8, 1.0]))
    assert threshold.tolist() == [0.9, 0.5, 0.5, 0.2]
    # Ties at 0.5 lift the recall reached for a target of 0.4 to 0.8.
    assert recall.tolist() == pytest.approx([0.2, 0.8, 0.8, 1.0])
    assert precision.tolist() == pytest.approx([1 / 2, 4 / 6, 4 / 6, 5 / 7])


def test_every_slice_threshold_reaches_its_target_and_is_the_highest():
    frame = planted_predictions(900, 3, seed=22)
    m = compute_metrics(frame, ["cat", "dog", "fox"], bootstrap=0, annotation_columns=["background", "brightness"])
    th = m["thresholds"]
    assert th["scope"] == "one_vs_rest" and [c["class"] for c in th["classes"]] == ["cat", "dog", "fox"]
    y = frame["label"].to_numpy()
    columns = {c["column"]: c for c in m["slices"]["columns"] if c["kind"] != "intersection"}
    from audit.metrics.slices import slice_columns

    made, _ = slice_columns(frame, list(columns), min_slice_size=30, notes=[])
    labels = {c.name: c.row_labels() for c in made}
    checked = 0
    for c in th["classes"]:
        k = c["index"]
        score = frame[f"prob_{k}"].to_numpy(float)
        truth = y == k
        # The equal-opportunity target and every fourth slider target (sklearn per check is slow).
        every = slice(None, None, 4)
        targets = [c["equal_opportunity"]["target_recall"], *th["target_recall_grid"][every]]
        for row in c["equal_opportunity"]["slices"]:
            mask = labels[row["column"]] == row["value"]
            pos = np.sort(score[mask & truth])
            thresholds = [row["threshold"], *row["grid_thresholds"][every]]
            precisions = [row["precision"], *row["grid_precision"][every]]
            for target, t, p in zip(targets, thresholds, precisions):
                reached = recall_score(truth[mask], score[mask] >= t)
                assert reached >= min(target, 1.0) - 1e-9 or reached == 1 / len(pos)
                higher = pos[pos > t]
                if len(higher):  # the next positive score up no longer reaches the target
                    assert np.mean(pos >= higher[0]) < target
                assert p == pytest.approx(precision_score(truth[mask], score[mask] >= t))
                checked += 1
    assert checked > 100
