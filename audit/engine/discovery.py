"""Discovery on a finished store: error slices, strategy clusters, where each class looks.

A post-step (audit.pipeline runs it before the TensorBoard export, ``keras-audit discover OUT``
and the shard merge run it again): it reads only the store (predictions, embeddings, stored
maps) through :class:`~audit.store.reader.Reader`, so it needs neither the model nor TensorFlow,
calls :func:`audit.discover.discover`, and replaces the store's discovery output:
``predictions.parquet`` with the ``found_*`` columns, ``metrics.json`` with ``discovered``,
``attention`` and ``discovery``, and the mean maps under ``discovered/``.

Atomic and resumable: the new files are written under ``work/discovery/`` first (a kill there
leaves the store as it was), then the manifest says ``"discovery": "pending"``, the files are
moved into place one atomic rename each, stale mean maps removed, and the manifest says
``"written"``. A kill between the two marks leaves every file old or new and the store marked
pending; ``--resume`` (or ``keras-audit discover OUT``) redoes the step from the store, and
since discovery is a pure function of the store and the seed, ends where an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from audit.errors import StoreError
from audit.store import schema
from audit.store.reader import Reader
from audit.store.writer import StoreWriter, save_npy, write_json, write_parquet

# The keys of metrics.json that discovery owns (replaced whole on every pass).
METRICS_KEYS = ("discovered", "attention", "discovery")
_STAGING = "discovery"


def discovery_inputs(reader: Reader) -> dict:
    """The keywords of :func:`audit.discover.discover` for the store ``reader`` reads: predictions
    without earlier discovery columns, embeddings and maps memory-mapped, the run's own options."""
    preds = reader.predictions.drop(columns=[c for c in schema.DISCOVERY_COLUMNS if c in reader.predictions])
    index_file = reader.path / schema.HEATMAP_INDEX
    map_index = np.load(index_file) if index_file.is_file() else np.zeros(0, np.int64)
    maps = {m: reader.stored_array(schema.heatmap_file(m)) for m in reader.heatmap_methods}
    options = reader.options
    embeddings = reader.embeddings()
    if embeddings is not None and len(embeddings) != len(preds):
        # One embedding row per listed example; skipped (unreadable) images have no prediction.
        embeddings = embeddings[preds["index"].to_numpy()]
    return {
        "slices": _flagged_slices(reader),
        "class_names": reader.class_names,
        "embeddings": embeddings,
        "maps": {m: a for m, a in maps.items() if a is not None},
        "map_index": np.asarray(map_index, np.int64),
        "annotation_columns": schema.annotation_columns(preds.columns),
        "min_slice_size": int(options.get("min_slice_size") or 30),
        "seed": int(options.get("seed") or 0),
        "predictions": preds,
    }


def _flagged_slices(reader: Reader) -> dict[str, np.ndarray]:
    """Each flagged slice worse than the rest, by its name ("cue_agrees = no"), as a mask over the
    predictions rows: discovery says where the model looks in it."""
    if not (reader.path / schema.SLICES).is_file():
        return {}
    worst = reader.worst_slices(k=len((reader.metrics.get("slices") or {}).get("rows") or []))
    return {f"{w['column']} = {w['value']}": reader.slice_labels(w["column"]) == w["value"] for w in worst}


def _stage(w: StoreWriter, reader: Reader, preds, result: dict) -> Path:
    """Write the replaced files under work/discovery/, laid out as in the store."""
    import pandas as pd

    staging = w.replacement(_STAGING)
    frame = preds.copy()
    for column, values in (result.get("columns") or {}).items():
        if column not in schema.DISCOVERY_COLUMNS or len(values) != len(frame):
            raise StoreError(f"discovery returned a column {column!r} that the store cannot hold", w.out)
        frame[column] = pd.Series(values).reset_index(drop=True).astype("Int64").array  # by position
    write_parquet(staging / schema.PREDICTIONS, frame)
    metrics = {k: v for k, v in reader.metrics.items() if k not in METRICS_KEYS}
    write_json(staging / schema.METRICS, {**metrics, **{k: result.get(k) or _empty(k) for k in METRICS_KEYS}})
    for rel, array in (result.get("heatmaps") or {}).items():
        norm = schema.owned_path(rel)
        if norm is None or not norm.startswith(schema.DISCOVERED_DIR + "/") or not norm.endswith(".npy"):
            raise StoreError(f"discovery returned a heatmap path {rel!r} outside {schema.DISCOVERED_DIR}/", w.out)
        (staging / norm).parent.mkdir(parents=True, exist_ok=True)
        save_npy(staging / norm, np.asarray(array, np.float32))
    return staging


def _empty(key: str):
    return {"methods": {}, "notes": []} if key == "discovery" else []


def discover_store(w: StoreWriter) -> dict:
    """Run discovery on the finished store ``w`` writes (a run's, or one reopened) and replace its
    discovery output; returns what was written to metrics.json (``discovered``, ``attention``,
    ``discovery``)."""
    from audit.discover import discover

    reader = Reader(w.out)
    inputs = discovery_inputs(reader)
    preds = inputs.pop("predictions")
    result = discover(preds, **inputs)
    staging = _stage(w, reader, preds, result)
    w.update_manifest(discovery=schema.DISCOVERY_PENDING)
    w.commit(staging, stale=f"{schema.DISCOVERED_DIR}/")
    w.update_manifest(discovery=schema.DISCOVERY_WRITTEN)
    return {k: result.get(k) or _empty(k) for k in METRICS_KEYS}


def needs_discovery(w: StoreWriter) -> bool:
    """Whether a run's post-step must (re)do discovery: always, except when resuming a store whose
    discovery is already written (a run killed in its TensorBoard export redoes only that)."""
    return not (w.export_only and w.read_manifest().get("discovery") == schema.DISCOVERY_WRITTEN)


def rediscover(store: str | Path) -> dict:
    """``keras-audit discover OUT``: discovery again on a finished store, its files replaced as a run's."""
    Reader(store)  # refuses a missing, unfinished or foreign folder before the writer touches it
    writer = StoreWriter(store, reopen=True)
    try:
        return discover_store(writer)
    finally:
        writer.close()
