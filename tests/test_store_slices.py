"""slices.parquet: the store says which rows belong to each slice.

The oracle is metrics.json itself: every slice's rows, read back through
``Reader.slice_rows``, must give the ``n`` and ``accuracy`` that metrics.json
reports for that slice, exactly, and every labelled row must lie in exactly one
slice of each column. Categories are also checked against the raw annotation
values and quantile bins against their recorded ranges, which needs no slicing
code at all. A tampered membership must be caught by the same check.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from audit.errors import AuditError, StoreError
from audit.metrics import compute_metrics, slice_membership
from audit.store import schema
from audit.store.reader import Reader
from audit.store.writer import StoreWriter
from metrics_data import planted_predictions, write_store

NAMES = ["cat", "dog", "fox"]
UNLABELLED = 37  # rows that metrics leave out; they must be in no slice


def _frame() -> pd.DataFrame:
    frame = planted_predictions(900, 3, seed=5)
    rng = np.random.default_rng(1)
    # Unlabelled rows move the quantile edges if anyone bins all rows instead of the scored ones.
    frame.loc[rng.choice(len(frame), UNLABELLED, replace=False), "label"] = -1
    frame["correct"] = frame["label"] == frame["pred"]
    frame.loc[rng.choice(len(frame), 40, replace=False), "site"] = None  # a "(missing)" slice
    return frame


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store written through StoreWriter, as the engine's finish phase writes it."""
    frame = _frame()
    metrics = compute_metrics(frame, NAMES, bootstrap=0, slice_pairs=True)
    out = tmp_path_factory.mktemp("slices") / "run"
    w = StoreWriter(out)
    try:
        w.write_manifest({"complete": False, "class_names": NAMES, "dataset": {"count": len(frame)}})
        w.write_predictions(frame)
        w.write_metrics(metrics)
        w.write_slices(slice_membership(frame, metrics))
        w.finish({"class_names": NAMES, "dataset": {"count": len(frame)}})
    finally:
        w.close()
    return out


def mismatches(run: Reader) -> list[str]:
    """Every way slices.parquet disagrees with metrics.json (empty when it reproduces it)."""
    frame = run.predictions.set_index("index")
    right = (frame["label"] == frame["pred"]).to_numpy()
    labelled = (frame["label"] >= 0).to_numpy()
    position = pd.Series(np.arange(len(frame)), index=frame.index)
    problems = []
    totals: dict[str, int] = {}
    for row in run.metrics["slices"]["rows"]:
        try:
            rows = run.slice_rows(row["column"], row["value"])
        except StoreError as e:
            problems.append(str(e))
            continue
        at = position[rows].to_numpy()
        # Integer count over integer n: the very division metrics made, so equality is exact.
        got = (len(at), int(right[at].sum()) / len(at) if len(at) else None)
        if got != (row["n"], row["accuracy"]) or not labelled[at].all():
            problems.append(f"{row['column']} = {row['value']}: {got} != {(row['n'], row['accuracy'])}")
        totals[row["column"]] = totals.get(row["column"], 0) + len(at)
    problems += [f"{c}: slices hold {t} rows, not {labelled.sum()}" for c, t in totals.items() if t != labelled.sum()]
    return problems


def test_every_slice_reproduces_metrics_json(store):
    run = Reader(store)
    rows = run.metrics["slices"]["rows"]
    assert len(rows) > 30 and any(" & " in r["column"] for r in rows)  # singles and pairs
    assert any(r["value"] == "(missing)" for r in rows)
    assert mismatches(run) == []


def test_membership_columns_and_unlabelled_rows(store):
    run = Reader(store)
    slices = run.slices
    names = [c["column"] for c in run.metrics["slices"]["columns"]]
    assert list(slices.columns) == ["index", *names]
    assert "background & site" in names and "brightness" in names
    assert slices["index"].tolist() == run.predictions["index"].tolist()
    unlabelled = (run.predictions["label"] < 0).to_numpy()
    assert unlabelled.sum() == UNLABELLED
    for name in names:
        assert slices[name].isna().to_numpy().tolist() == unlabelled.tolist(), name


def test_categories_match_raw_values_and_bins_their_ranges(store):
    """Independent of any slicing code: the raw annotation decides membership."""
    run = Reader(store)
    frame = run.predictions.set_index("index")
    scored = frame[frame["label"] >= 0]
    dark = run.slice_rows("background", "dark")
    assert dark.tolist() == scored.index[scored["background"] == "dark"].tolist()
    pair = run.slice_rows("background & site", "light & b")
    assert pair.tolist() == scored.index[(scored["background"] == "light") & (scored["site"] == "b")].tolist()
    bins = [r for r in run.metrics["slices"]["rows"] if r["column"] == "brightness"]
    assert len(bins) >= 2
    for k, r in enumerate(bins):
        lo, hi = r["range"]
        value = frame.loc[run.slice_rows("brightness", r["value"]), "brightness"]
        assert (value >= lo).all() and ((value <= hi) if k == len(bins) - 1 else (value < hi)).all(), r["value"]


def test_slice_labels_follow_the_predictions_rows(store):
    run = Reader(store)
    labels = run.slice_labels("background")
    scored = (run.predictions["label"] >= 0).to_numpy()
    assert labels.dtype == object and all(v is None for v in labels[~scored])
    assert labels[scored].tolist() == run.predictions["background"][scored].tolist()


def test_a_tampered_membership_is_caught(store, tmp_path):
    """The check above can fail: move one dark row to light and it says which slices disagree."""
    import shutil

    copy = shutil.copytree(store, tmp_path / "copy")
    slices = pd.read_parquet(copy / schema.SLICES)
    first_dark = slices.index[slices["background"] == "dark"][0]
    slices.loc[first_dark, "background"] = "light"
    slices.to_parquet(copy / schema.SLICES, index=False)
    wrong = mismatches(Reader(copy))
    assert any(w.startswith("background = dark") for w in wrong)
    assert any(w.startswith("background = light") for w in wrong)


def test_membership_that_disagrees_with_metrics_is_refused():
    frame = _frame()
    metrics = compute_metrics(frame, NAMES, bootstrap=0)
    shifted = frame.copy()
    shifted["background"] = np.roll(shifted["background"].to_numpy(), 1)  # other rows, same values
    with pytest.raises(AuditError, match="background"):
        slice_membership(shifted, metrics)


def test_reader_refuses_unknown_slices_and_old_stores(store, tmp_path):
    run = Reader(store)
    with pytest.raises(StoreError, match="no slice column 'nope'"):
        run.slice_rows("nope", "x")
    with pytest.raises(StoreError, match="no value 'purple'.*'dark'"):
        run.slice_rows("background", "purple")
    with pytest.raises(StoreError, match="no slice column 'index'"):
        run.slice_rows("index", "0")
    import shutil

    old = shutil.copytree(store, tmp_path / "old")
    (old / schema.SLICES).unlink()
    with pytest.raises(StoreError, match="slices.parquet is missing"):
        Reader(old).slice_rows("background", "dark")


def test_slices_is_an_own_file_removed_by_a_rerun(store, tmp_path):
    import shutil

    copy = shutil.copytree(store, tmp_path / "copy")
    assert schema.SLICES in json.loads((copy / schema.MANIFEST).read_text())["files"]
    w = StoreWriter(copy)  # a fresh run into the store clears the files it lists
    try:
        assert not (copy / schema.SLICES).exists()
        with pytest.raises(StoreError, match="must start with column 'index'"):
            w.write_slices(pd.DataFrame({"background": ["dark"]}))
    finally:
        w.close()


def test_worst_slices_is_a_store_read(store):
    run = Reader(store)
    worst = run.worst_slices(3)
    assert worst and worst[0]["column"] == "background" and worst[0]["value"] == "dark"
    assert worst == schema.worst_slices(run.metrics, 3)
    from audit.metrics import worst_slices  # the old name keeps working

    assert worst_slices is schema.worst_slices


def test_report_helper_store_has_slices(tmp_path):
    frame = planted_predictions(400, 3, seed=2, builtins=False)
    run = Reader(write_store(tmp_path / "w", frame, NAMES, bootstrap=0, heatmaps=False, images=False))
    assert mismatches(run) == []


def _run_audit():
    from audit.engine import AuditOptions
    from audit.pipeline import run_audit

    return AuditOptions, run_audit


def test_store_from_run_audit_reproduces_its_metrics(tiny, tmp_path):
    AuditOptions, run_audit = _run_audit()
    options = AuditOptions(explain=(), bootstrap=0, min_slice_size=5, tensorboard=False, slice_pairs=True)
    out = run_audit(tiny["model"], tiny["data"], tmp_path / "run", annotations=tiny["annotations"],
                    options=options, progress=False)
    run = Reader(out)
    assert (out / schema.SLICES).is_file(), "the engine's finish phase must write slices.parquet (write_slices)"
    assert {"site", "score", "site & score"} <= set(run.slices.columns)
    assert mismatches(run) == []
