"""Slices against scikit-learn on masked rows and fairlearn's MetricFrame; binning; bad annotations; planted bias."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame
from sklearn.metrics import accuracy_score, recall_score

from audit.errors import AuditError
from audit.metrics import compute_metrics, worst_slices
from audit.metrics.intervals import newcombe_difference, wilson
from audit.metrics.slices import MISSING, OTHER, make_slice_column, slice_columns
from metrics_data import DARK_ACCURACY, planted_predictions, predictions_from

NAMES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def planted():
    frame = planted_predictions(1500, 3, seed=11)
    return frame, compute_metrics(frame, NAMES, bootstrap=300, slice_pairs=True)


def rows_of(m, column):
    return [r for r in m["slices"]["rows"] if r["column"] == column]


def column_info(m, column):
    return next(c for c in m["slices"]["columns"] if c["column"] == column)


def labels_for(frame, column, min_slice_size=30):
    """Row labels of one column or an 'a & b' intersection, through our slicer."""
    parts = column.split(" & ")
    cols, _ = slice_columns(frame, parts, min_slice_size=min_slice_size, notes=[])
    labels = [c.row_labels() for c in cols]
    return labels[0] if len(labels) == 1 else np.array([f"{a} & {b}" for a, b in zip(*labels)], dtype=object)


def test_every_slice_matches_sklearn_on_masked_rows(planted):
    frame, m = planted
    y, pred = frame["label"].to_numpy(), frame["pred"].to_numpy()
    checked = 0
    for info in m["slices"]["columns"]:
        labels = labels_for(frame, info["column"])
        for row in rows_of(m, info["column"]):
            mask = labels == row["value"]
            assert row["n"] == mask.sum()
            assert row["accuracy"] == pytest.approx(accuracy_score(y[mask], pred[mask]))
            assert row["error_rate"] == pytest.approx(1 - accuracy_score(y[mask], pred[mask]))
            rest = accuracy_score(y[~mask], pred[~mask])
            assert row["rest_accuracy"] == pytest.approx(rest)
            assert row["gap"] == pytest.approx(row["accuracy"] - rest)
            recall = recall_score(y[mask], pred[mask], labels=[0, 1, 2], average=None, zero_division=np.nan)
            assert row["recall"] == pytest.approx([None if np.isnan(r) else r for r in recall], nan_ok=True)
            assert row["support"] == np.bincount(y[mask], minlength=3).tolist()
            k = int((y[mask] == pred[mask]).sum())
            assert row["accuracy_ci"] == pytest.approx([float(v) for v in wilson(k, mask.sum())])
            k_rest = int((y[~mask] == pred[~mask]).sum())
            lo, hi = newcombe_difference(k, mask.sum(), k_rest, (~mask).sum())
            assert row["gap_ci"] == pytest.approx([float(lo), float(hi)])
            assert row["flagged"] == (lo > 0 or hi < 0)
            checked += 1
    assert checked == len(m["slices"]["rows"]) > 100


@pytest.mark.parametrize("features", [["background"], ["site"], ["brightness"], ["background", "site"],
                                      ["background", "contrast"]])
def test_groups_and_disparity_match_fairlearn(planted, features):
    frame, m = planted
    y, pred = frame["label"].to_numpy(), frame["pred"].to_numpy()
    name = " & ".join(features)
    sensitive = pd.DataFrame({f: labels_for(frame, f) for f in features})
    mf = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=pred, sensitive_features=sensitive)
    by_group = mf.by_group
    for row in rows_of(m, name):
        key = tuple(row["values"]) if len(features) > 1 else row["values"][0]
        assert row["accuracy"] == pytest.approx(by_group[key])

    d = column_info(m, name)["disparity"]
    big = [r["value"] for r in rows_of(m, name) if not r["too_small"]]
    assert d["values_compared"] == big
    if len(big) == len(by_group):
        assert d["accuracy_gap"] == pytest.approx(mf.difference())
        assert d["accuracy_ratio"] == pytest.approx(mf.ratio())
    else:  # fairlearn compares every group; we compare those with min_slice_size examples
        keep = sensitive.apply(lambda r: " & ".join(map(str, r)), axis=1).isin(big).to_numpy()
        sub = MetricFrame(metrics=accuracy_score, y_true=y[keep], y_pred=pred[keep],
                          sensitive_features=sensitive[keep])
        assert d["accuracy_gap"] == pytest.approx(sub.difference())
        assert d["accuracy_ratio"] == pytest.approx(sub.ratio())

    # Equal opportunity: the largest between-group spread of one class's recall.
    keep = pd.Series(labels_for(frame, name)).isin(big).to_numpy()
    spreads = []
    for c in range(3):
        rec = MetricFrame(metrics=lambda t, p, c=c: recall_score(t == c, p == c), y_true=y[keep], y_pred=pred[keep],
                          sensitive_features=sensitive[keep])
        spreads.append(rec.difference())
    assert d["equal_opportunity_gap"] == pytest.approx(max(spreads))
    assert d["equal_opportunity_class"] == NAMES[int(np.argmax(spreads))]
    assert [g["gap"] for g in d["recall_gap_per_class"]] == pytest.approx(spreads)


def test_planted_slice_is_flagged_and_ranked_first(planted):
    frame, m = planted
    dark = next(r for r in rows_of(m, "background") if r["value"] == "dark")
    assert dark["flagged"] and dark["gap_ci"][1] < 0
    assert dark["accuracy_ci"][0] < DARK_ACCURACY < dark["accuracy_ci"][1]
    worst = worst_slices(m, k=5)
    assert (worst[0]["column"], worst[0]["value"]) == ("background", "dark")
    assert set(worst[0]) == {"column", "value", "n", "accuracy", "ci", "gap", "gap_ci", "too_small"}
    assert all(w["gap"] < 0 and w["gap_ci"][1] < 0 for w in worst)
    assert [w["gap"] for w in worst] == sorted(w["gap"] for w in worst)
    light = next(r for r in rows_of(m, "background") if r["value"] == "light")
    assert light["flagged"] and light["gap"] > 0  # significantly better, so not among the worst
    assert all(w["value"] != "light" for w in worst)
    d = column_info(m, "background")["disparity"]
    assert (d["worst"], d["best"]) == ("dark", "light")
    assert d["accuracy_gap_ci"][0] > 0.15
    for column in ("site", "aspect_ratio"):  # no effect planted: the gap's interval reaches zero
        assert column_info(m, column)["disparity"]["accuracy_gap_ci"][0] < 0.02


def test_interaction_is_found_below_both_parts():
    rng = np.random.default_rng(12)
    n = 4000
    a = rng.choice(["x", "y"], n)
    b = rng.choice(["u", "v"], n)
    correct = rng.random(n) < np.where((a == "x") & (b == "u"), 0.55, 0.92)
    frame = predictions_from(rng.integers(0, 3, n), correct, 3, rng, {"a": a, "b": b})
    m = compute_metrics(frame, NAMES, bootstrap=100)
    pair = next(r for r in rows_of(m, "a & b") if r["value"] == "x & u")
    assert pair["below_parents"] and pair["columns"] == ["a", "b"] and pair["values"] == ["x", "u"]
    assert not any(r.get("below_parents") for r in rows_of(m, "a & b") if r["value"] != "x & u")
    top = worst_slices(m, k=10, intersections=True)
    assert top[0]["column"] == "a & b" and top[0]["value"] == "x & u"
    assert all(w["column"] != "a & b" for w in worst_slices(m, k=10))


def test_quantile_bins_record_their_edges(planted):
    frame, m = planted
    info = column_info(m, "brightness")
    assert info["kind"] == "quantile" and info["builtin"]
    values = frame["brightness"].to_numpy()
    expected = np.quantile(values, np.linspace(0, 1, 6), method="lower")
    assert info["bin_edges"] == pytest.approx(expected)
    rows = rows_of(m, "brightness")
    assert len(rows) == 5
    for i, row in enumerate(rows):
        lo, hi = row["range"]
        inside = (values >= lo) & ((values < hi) if i < 4 else (values <= hi))
        assert row["n"] == inside.sum()
        assert abs(row["n"] - len(frame) / 5) <= 2
    assert rows[0]["value"].startswith("[") and rows[-1]["value"].endswith("]")


def test_few_numeric_values_slice_by_value_and_fewer_bins_for_small_data():
    notes = []
    col = make_slice_column("ratio", pd.Series([0.75, 1.0, 1.0, 1.333] * 20), builtin=True, min_slice_size=30,
                            notes=notes)
    assert col.kind == "level" and col.labels == ["0.75", "1", "1.333"]
    col = make_slice_column("size", pd.Series(np.linspace(0, 1, 100)), builtin=True, min_slice_size=30, notes=notes)
    assert col.kind == "quantile" and len(col.labels) == 3  # 100 rows / 30 per bin
    assert np.bincount(col.codes).tolist() == [33, 33, 34]
    # Mostly one value: every quantile lands on it, so the rows are split at that value.
    mostly_zero = pd.Series(np.r_[np.zeros(970), -np.arange(1.5, 31.5)])
    col = make_slice_column("offset", mostly_zero, builtin=True, min_slice_size=30, notes=notes)
    assert col.labels == ["[-30.5, 0)", "[0, 0]"] and np.bincount(col.codes).tolist() == [30, 970]


def test_bad_annotations_are_handled_and_said():
    rng = np.random.default_rng(13)
    n = 300
    base = planted_predictions(n, 3, seed=13, builtins=False)
    odd = pd.DataFrame({
        "image_id": [f"id-{i}" for i in range(n)],
        "serial": np.arange(100, 100 + n),
        "constant": ["same"] * n,
        "partly": np.where(np.arange(n) < 40, np.nan, rng.choice([1.5, 2.5], n)),
        "blanks": np.where(np.arange(n) % 10 == 0, "  ", rng.choice(["p", "q"], n)),
        "empty": [np.nan] * n,
        "flag": rng.random(n) < 0.5,
        "many": rng.permutation(np.arange(n) % 80).astype(str),
    })
    frame = pd.concat([base, odd], axis=1)
    m = compute_metrics(frame, NAMES, bootstrap=50)
    json.dumps(m, allow_nan=False)
    skipped = {s["column"]: s["reason"] for s in m["slices"]["skipped"]}
    assert "distinct" in skipped["image_id"] and "distinct" in skipped["serial"]
    assert "one value" in skipped["constant"]
    assert "no row has a value" in skipped["empty"]
    notes = " | ".join(m["notes"])
    for column in ("image_id", "serial", "constant", "empty"):
        assert f"annotation {column!r} skipped" in notes
    partly = {r["value"]: r["n"] for r in rows_of(m, "partly")}
    assert partly[MISSING] == 40 and "'partly': 40 rows have no value" in notes
    blanks = {r["value"]: r["n"] for r in rows_of(m, "blanks")}
    assert blanks[MISSING] == 30 and set(blanks) == {"p", "q", MISSING}
    assert {r["value"] for r in rows_of(m, "flag")} == {"False", "True"}
    many = [r["value"] for r in rows_of(m, "many")]
    assert len(many) == 50 and many[-1] == OTHER and "'many' has 80 values" in notes
    assert sum(r["n"] for r in rows_of(m, "many")) == n


def test_small_slices_are_kept_marked_and_noted():
    frame = planted_predictions(200, 3, seed=14, builtins=False)
    frame["rare"] = np.where(np.arange(200) < 12, "rare", "common")
    m = compute_metrics(frame, NAMES, bootstrap=50, min_slice_size=30)
    rare = next(r for r in rows_of(m, "rare") if r["value"] == "rare")
    assert rare["n"] == 12 and rare["too_small"]
    assert any("'rare': 1 of 2 slices have fewer than 30" in n for n in m["notes"])
    assert column_info(m, "rare")["disparity"] is None
    assert any("'rare': fewer than 2 values" in n for n in m["notes"])


def test_pairs_default_counts_user_columns_only():
    frame = planted_predictions(400, 3, seed=15)  # 2 user + 4 built-in columns
    m = compute_metrics(frame, NAMES, bootstrap=0)
    assert m["slices"]["pairs"] and any(r["column"] == "background & brightness" for r in m["slices"]["rows"])
    rng = np.random.default_rng(15)
    for k in range(3):
        frame[f"extra{k}"] = rng.choice(["u", "v"], len(frame))
    m = compute_metrics(frame, NAMES, bootstrap=0)
    assert not m["slices"]["pairs"]
    assert not any(len(r["columns"]) == 2 for r in m["slices"]["rows"])
    assert any("intersections are off: 5 user annotation columns" in n for n in m["notes"])
    assert compute_metrics(frame, NAMES, bootstrap=0, slice_pairs=True)["slices"]["pairs"]
    assert not compute_metrics(frame.iloc[:, :12], NAMES, bootstrap=0, slice_pairs=False)["slices"]["pairs"]


def test_chosen_columns_only_and_results_repeat_with_the_seed():
    frame = planted_predictions(500, 3, seed=16)
    a = compute_metrics(frame, NAMES, bootstrap=100, annotation_columns=["background"], seed=3)
    assert {c["column"] for c in a["slices"]["columns"]} == {"background"}
    b = compute_metrics(frame, NAMES, bootstrap=100, annotation_columns=["background"], seed=3)
    assert a == b
    both = compute_metrics(frame, NAMES, bootstrap=100, annotation_columns=["background", "site"], seed=3)
    # Each column draws from its own stream, so adding one leaves the others' intervals alone.
    assert column_info(both, "background")["disparity"] == column_info(a, "background")["disparity"]


def test_bootstrap_zero_still_flags_slices():
    frame = planted_predictions(800, 3, seed=17, builtins=False)
    m = compute_metrics(frame, NAMES, bootstrap=0)
    assert worst_slices(m)[0]["value"] == "dark"
    assert column_info(m, "background")["disparity"]["accuracy_gap_ci"] is None
    assert m["balanced_accuracy_ci"] is None
    assert any("bootstrap is off" in n for n in m["notes"])


def test_worst_slices_tolerates_metrics_without_slices():
    assert worst_slices({"accuracy": 0.9}) == []
    with pytest.raises(AuditError, match="k >= 0"):
        worst_slices({"accuracy": 0.9}, k=-1)


def test_stored_slice_column_recovers_each_slice_rows(planted):
    from audit.metrics.slices import stored_slice_column

    frame, m = planted
    for row in m["slices"]["rows"][:40]:
        column = stored_slice_column(frame, m, row["column"])
        mask = column.codes == column.labels.index(row["value"])
        # The reported n and accuracy are the oracle for the recovered rows.
        assert mask.sum() == row["n"]
        assert frame.loc[mask, "correct"].mean() == pytest.approx(row["accuracy"])
    broken = json.loads(json.dumps(m))
    info = next(c for c in broken["slices"]["columns"] if c["column"] == m["slices"]["rows"][0]["column"])
    info["values"] = [*info["values"], "a value this code never makes"]
    with pytest.raises(AuditError, match="do not match"):
        stored_slice_column(frame, broken, info["column"])
