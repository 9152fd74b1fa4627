"""Phase 3, finish: the predictions table from the stored arrays, the metrics and the slice
membership computed from it, then the manifest, written last and marked complete (so a complete
manifest implies every other file is in place)."""

from __future__ import annotations

import datetime as dt

import numpy as np

from audit.store import schema
from audit.store.killpoint import checkpoint


def predictions_table(session):
    """One row per readable example, built from the stored arrays (see PREDICTION_COLUMNS)."""
    import pandas as pd

    w, dataset = session.writer, session.dataset
    skipped = {s["index"] for s in w.state.get("skipped", [])}
    keep = np.array([i for i in range(dataset.count) if i not in skipped], np.int64)
    probs = np.asarray(w.work_array("probs.npy"))[keep]
    builtin = np.asarray(w.work_array("builtin.npy"))[keep]
    labels = dataset.labels[keep]
    pred = probs.argmax(axis=1)
    frame = pd.DataFrame(
        {
            "index": keep,
            "path": [dataset.paths[i] for i in keep] if dataset.paths else None,
            "label": labels,
            "pred": pred,
            "confidence": probs.max(axis=1),
            "correct": pred == labels,
        }
    )
    frame["path"] = frame["path"].astype("string")
    for k in range(len(session.class_names)):
        frame[schema.prob_column(k)] = probs[:, k]
    if session.annotations is not None:
        frame = pd.concat([frame, session.annotations.iloc[keep].reset_index(drop=True)], axis=1)
    for j, col in enumerate(schema.BUILTIN_ANNOTATIONS):
        if col not in frame.columns:  # a user column of the same name wins
            frame[col] = builtin[:, j]
    return frame


def finish(session, predictions, explanation_quality: dict) -> None:
    """Write predictions.parquet, metrics.json and slices.parquet, then the complete manifest."""
    from audit.metrics import compute_metrics
    from audit.metrics.slices import slice_membership

    o, w = session.options, session.writer
    metrics = compute_metrics(
        predictions, session.class_names, bootstrap=o.bootstrap, min_slice_size=o.min_slice_size,
        slice_pairs=o.slice_pairs, seed=o.seed,
    )
    if explanation_quality:
        metrics["explanations"] = explanation_quality
    w.write_predictions(predictions)
    w.write_metrics(metrics)
    # Which rows each slice holds, recut from the same predictions and checked against the metrics.
    w.write_slices(slice_membership(predictions, metrics))
    checkpoint("finish")
    manifest = session.manifest
    manifest["dataset"]["skipped"] = w.state.get("skipped", [])
    manifest["dataset"]["readable"] = int(len(predictions))
    manifest["notes"] = [*session.notes, *metrics.get("notes", [])]
    manifest["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if o.tensorboard:
        manifest["tensorboard"] = schema.TENSORBOARD_PENDING
    w.finish(manifest)
