"""Overall metrics, curves and calibration, each against scikit-learn on the same arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
    top_k_accuracy_score,
)

from audit.errors import AuditError, DataError
from audit.metrics import compute_metrics
from audit.metrics.curves import MAX_POINTS, thin
from audit.metrics.intervals import wilson
from audit.store import schema
from metrics_data import planted_predictions

NAMES4 = ["cat", "dog", "fox", "owl"]


def arrays(frame, num_classes):
    probs = frame[[schema.prob_column(k) for k in range(num_classes)]].to_numpy(float)
    return frame["label"].to_numpy(), frame["pred"].to_numpy(), probs


@pytest.fixture(scope="module")
def multi():
    frame = planted_predictions(900, 4, seed=3, builtins=False)
    return frame, compute_metrics(frame, NAMES4, bootstrap=300)


@pytest.fixture(scope="module")
def binary():
    frame = planted_predictions(700, 2, seed=4, builtins=False)
    return frame, compute_metrics(frame, ["neg", "pos"], bootstrap=300)


def test_result_is_strict_json(multi):
    _, m = multi
    json.dumps(m, allow_nan=False)
    for key in ("num_examples", "accuracy", "per_class", "confusion_matrix", "curves", "calibration", "slices",
                "thresholds", "notes"):
        assert key in m


def test_overall_matches_sklearn(multi):
    frame, m = multi
    y, pred, probs = arrays(frame, 4)
    assert m["num_examples"] == len(frame)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["top_k_accuracy"].keys() == {"1", "3"}  # 5 needs more than 5 classes
    for k in (1, 3):
        assert m["top_k_accuracy"][str(k)] == pytest.approx(top_k_accuracy_score(y, probs, k=k, labels=range(4)))
    assert m["log_loss"] == pytest.approx(log_loss(y, probs / probs.sum(1, keepdims=True), labels=range(4)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(4))
    for k, row in enumerate(m["per_class"]):
        assert row["class"] == NAMES4[k]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[k], r[k], f[k]))
        assert row["support"] == s[k]
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=range(4)).tolist()


def test_accuracy_interval_is_wilson_and_balanced_interval_is_sane(multi):
    frame, m = multi
    lo, hi = wilson(int(frame["correct"].sum()), len(frame))
    assert m["accuracy_ci"] == pytest.approx([float(lo), float(hi)])
    lo, hi = m["balanced_accuracy_ci"]
    assert 0 < lo < m["balanced_accuracy"] < hi < 1
    assert hi - lo < 0.1


def test_binary_curves_are_every_class_positive_first(binary):
    frame, m = binary
    y, _, probs = arrays(frame, 2)
    curves = m["curves"]
    assert curves["positive_class"] == "pos"
    # The headline (positive) class first, then the negative one, each one-vs-rest on its own probability.
    assert [(c["class"], c["index"]) for c in curves["per_class"]] == [("pos", 1), ("neg", 0)]
    assert curves["macro"] is None and curves["micro"] is None
    for entry in curves["per_class"]:
        k = entry["index"]
        assert entry["positives"] == np.sum(y == k)
        assert entry["average_precision"] == pytest.approx(average_precision_score(y == k, probs[:, k]))
        assert entry["roc_auc"] == pytest.approx(roc_auc_score(y == k, probs[:, k]))
        precision, recall, _ = precision_recall_curve(y == k, probs[:, k])
        np.testing.assert_allclose(entry["pr"]["precision"], np.round(precision[thin(len(precision))], 6), atol=1e-6)
        np.testing.assert_allclose(entry["pr"]["recall"], np.round(recall[thin(len(recall))], 6), atol=1e-6)
        fpr, tpr, _ = roc_curve(y == k, probs[:, k])
        np.testing.assert_allclose(entry["roc"]["tpr"], np.round(tpr[thin(len(tpr))], 6), atol=1e-6)
    neg, pos = curves["per_class"][1], curves["per_class"][0]
    assert neg["average_precision"] != pytest.approx(pos["average_precision"])  # a figure of its own
    assert m["top_k_accuracy"] == {"1": pytest.approx(accuracy_score(y, probs.argmax(1)))}


def test_multiclass_curves_match_sklearn(multi):
    frame, m = multi
    y, _, probs = arrays(frame, 4)
    onehot = np.eye(4)[y]
    curves = m["curves"]
    for c, entry in enumerate(curves["per_class"]):
        assert entry["average_precision"] == pytest.approx(average_precision_score(y == c, probs[:, c]))
        assert entry["roc_auc"] == pytest.approx(roc_auc_score(y == c, probs[:, c]))
    macro_ap = average_precision_score(onehot, probs, average="macro")
    assert curves["macro"]["average_precision"] == pytest.approx(macro_ap)
    assert curves["macro"]["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    micro_ap = average_precision_score(onehot, probs, average="micro")
    assert curves["micro"]["average_precision"] == pytest.approx(micro_ap)
    assert curves["micro"]["roc_auc"] == pytest.approx(roc_auc_score(onehot, probs, average="micro"))


def test_stored_curve_points_lie_on_sklearn_curves(multi):
    frame, m = multi
    y, _, probs = arrays(frame, 4)
    for c, entry in enumerate(m["curves"]["per_class"]):
        precision, recall, _ = precision_recall_curve(y == c, probs[:, c])
        full = set(zip(np.round(recall, 6), np.round(precision, 6)))
        stored = list(zip(entry["pr"]["recall"], entry["pr"]["precision"]))
        assert len(stored) <= MAX_POINTS
        assert all(point in full for point in stored)
        assert stored[0] == (1.0, pytest.approx(precision[0], abs=1e-6)) and stored[-1] == (0.0, 1.0)
        fpr, tpr, _ = roc_curve(y == c, probs[:, c])
        roc = entry["roc"]
        assert len(roc["fpr"]) <= MAX_POINTS
        assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
        assert roc["thresholds"][0] is None  # infinity
    assert len(m["curves"]["micro"]["pr"]["recall"]) <= MAX_POINTS


def test_thin_keeps_both_ends():
    keep = thin(10_000, 201)
    assert len(keep) <= 201 and keep[0] == 0 and keep[-1] == 9999
    assert thin(5, 201).tolist() == [0, 1, 2, 3, 4]


def test_calibration_matches_sklearn_and_hand_ece(multi):
    frame, m = multi
    cal = m["calibration"]
    assert cal["bins"] >= 10 and len(cal["edges"]) == cal["bins"] + 1
    prob_true, prob_pred = calibration_curve(frame["correct"], frame["confidence"].astype(float),
                                             n_bins=cal["bins"], strategy="uniform")
    filled = [i for i, n in enumerate(cal["count"]) if n > 0]
    assert [cal["accuracy"][i] for i in filled] == pytest.approx(prob_true)
    assert [cal["confidence"][i] for i in filled] == pytest.approx(prob_pred)
    assert all(cal["accuracy"][i] is None for i, n in enumerate(cal["count"]) if n == 0)
    assert sum(cal["count"]) == len(frame)
    # Each bin's interval is statsmodels' Wilson interval on that bin's hits; empty bins have none.
    confint = pytest.importorskip("statsmodels.stats.proportion").proportion_confint
    for i, n in enumerate(cal["count"]):
        if n == 0:
            assert cal["accuracy_ci"][i] == [None, None]
            continue
        hits = round(cal["accuracy"][i] * n)
        assert cal["accuracy_ci"][i] == pytest.approx(list(confint(hits, n, method="wilson")), abs=1e-9)

    # Hand case: two bins, each with |accuracy - confidence| = 0.45.
    tiny = planted_predictions(4, 2, seed=0, builtins=False)
    tiny["label"] = [1, 0, 1, 1]
    tiny["pred"] = [1, 1, 1, 1]
    tiny["prob_1"] = tiny["confidence"] = np.array([0.95, 0.95, 0.55, 0.55], np.float32)
    tiny["prob_0"] = 1 - tiny["prob_1"]
    cal = compute_metrics(tiny, ["a", "b"], bootstrap=0)["calibration"]
    assert cal["ece"] == pytest.approx(0.45, abs=1e-6)
    assert cal["mce"] == pytest.approx(0.45, abs=1e-6)


def test_absent_class_is_reported_not_fatal():
    frame = planted_predictions(300, 4, seed=5, builtins=False)
    frame = frame[(frame["label"] != 3) & (frame["pred"] != 3)].reset_index(drop=True)
    m = compute_metrics(frame, NAMES4, bootstrap=50)
    json.dumps(m, allow_nan=False)
    owl = m["per_class"][3]
    assert owl["support"] == 0 and owl["recall"] is None
    assert m["curves"]["per_class"][3]["average_precision"] is None
    assert any("no labelled examples" in n for n in m["notes"])
    assert any("PR/ROC undefined" in n for n in m["notes"])


def test_unlabelled_rows_are_left_out_with_a_note():
    frame = planted_predictions(200, 3, seed=6, builtins=False)
    frame["label"] = frame["label"].astype(float)
    frame.loc[:9, "label"] = np.nan
    frame.loc[10:14, "label"] = -1
    m = compute_metrics(frame, ["a", "b", "c"], bootstrap=0)
    assert m["num_examples"] == 185
    assert any("15 rows have no label" in n for n in m["notes"])


def test_unnormalised_probabilities_get_a_note():
    frame = planted_predictions(200, 3, seed=7, builtins=False)
    frame["prob_0"] = frame["prob_0"] * 0.5
    m = compute_metrics(frame, ["a", "b", "c"], bootstrap=0)
    assert any("do not sum to 1" in n for n in m["notes"])


@pytest.mark.parametrize(
    "change, error, text",
    [
        (lambda f: f.drop(columns=["prob_2"]), DataError, "prob_2"),
        (lambda f: f.drop(columns=["label"]), DataError, "label"),
        (lambda f: f.assign(label=f["label"] + 3), DataError, "class index"),
        (lambda f: f.assign(pred=f["pred"].astype(str)), DataError, "'pred'"),
        (lambda f: f.assign(prob_0=f["prob_0"] + 2), DataError, "[0, 1]"),
        (lambda f: f.assign(prob_1=np.nan), DataError, "probabilities"),
        (lambda f: f.assign(prob_3=0.0), DataError, "prob_3"),
    ],
)
def test_bad_tables_raise_data_errors(change, error, text):
    frame = change(planted_predictions(60, 3, seed=8, builtins=False))
    with pytest.raises(error) as info:
        compute_metrics(frame, ["a", "b", "c"], bootstrap=0)
    assert text in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "options, text",
    [
        (dict(bootstrap=-1), "--bootstrap"),
        (dict(bootstrap=2.5), "--bootstrap"),
        (dict(min_slice_size=0), "--min-slice-size"),
        (dict(slice_pairs="yes"), "--slice-pairs"),
    ],
)
def test_bad_options_raise_audit_errors(options, text):
    with pytest.raises(AuditError, match=text):
        compute_metrics(planted_predictions(60, 3, builtins=False), ["a", "b", "c"], **options)


def test_class_names_and_columns_are_checked():
    frame = planted_predictions(60, 3, builtins=False)
    with pytest.raises(DataError, match="at least 2 class names"):
        compute_metrics(frame, ["only"])
    with pytest.raises(DataError, match="'nope'"):
        compute_metrics(frame, ["a", "b", "c"], annotation_columns=["nope"])
