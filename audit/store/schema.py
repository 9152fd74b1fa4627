"""The on-disk format of a results store (public; see README "Results store").

This module is the only place that knows file names, column names and the
schema version. The writer, the reader, the app and every exporter import it.

Layout of ``OUT/``::

    manifest.json          run description; ``complete`` is true only at the end
    predictions.parquet    one row per example (see PREDICTION_COLUMNS)
    metrics.json           metrics computed from predictions.parquet
    images.npy             uint8 (N, h, w, 3): each example as the model saw it,
                           longest side at most STORED_IMAGE_MAX_SIDE
    heatmaps/index.npy     int64 (K,): example indices that have heatmaps
    heatmaps/<method>.npy  float16 (K, h, w) in [0, 1], rows follow index.npy
    activations/<layer>.npy  float16 (K, a, b, channels) for the same K examples,
                             area-averaged to at most STORED_ACTIVATION_MAX_SIDE
    activations/stats.json   per-layer, per-channel mean / max / fraction of zeros
                             over the whole dataset
    embeddings.npy         float16 (N, D): penultimate-layer features
    tensorboard/           TensorBoard logs (written by audit.views.tensorboard)
    work/                  resume state of an unfinished run (removed at the end)
    .keras-audit.lock      held (with the holder's process id inside) while a run writes

``manifest.json`` carries ``"store": "keras-audit"`` beside ``schema_version``
(so someone else's ``manifest.json`` is never taken for a store) and ``files``:
every path, relative to the store, that the store wrote. Re-running into a
store removes exactly those, so a user's file dropped inside survives. An
entry ending in ``/`` is a folder the store made whose whole content is its
own (only the TensorBoard export's staging folder under ``work/``).
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np

# 2: manifest gained "store", "files", dataset "fingerprint" and "tensorboard".
SCHEMA_VERSION = 2
STORE_MARKER = "keras-audit"

MANIFEST = "manifest.json"
PREDICTIONS = "predictions.parquet"
METRICS = "metrics.json"
IMAGES = "images.npy"
EMBEDDINGS = "embeddings.npy"
HEATMAP_DIR = "heatmaps"
HEATMAP_INDEX = "heatmaps/index.npy"
ACTIVATION_DIR = "activations"
ACTIVATION_STATS = "activations/stats.json"
TENSORBOARD_DIR = "tensorboard"
WORK_DIR = "work"
LOCK_FILE = ".keras-audit.lock"
# manifest["tensorboard"]: the export's progress ("pending" until the logs are in place).
TENSORBOARD_PENDING = "pending"
TENSORBOARD_WRITTEN = "written"

# Longest side of the stored copy of each example; heatmaps use the same size.
STORED_IMAGE_MAX_SIDE = 128
# Longest spatial side of stored per-example activations.
STORED_ACTIVATION_MAX_SIDE = 32

# Fixed leading columns of predictions.parquet; then prob_0..prob_{C-1}, then
# one column per annotation under its own name.
PREDICTION_COLUMNS = ("index", "path", "label", "pred", "confidence", "correct")
PROB_PREFIX = "prob_"

# Annotations computed from every image when no CSV gives them (metrics slice by
# these too). Raw numeric values; metrics bin them into quantiles.
BUILTIN_ANNOTATIONS = ("aspect_ratio", "resolution", "brightness", "contrast")

OUTPUT_KINDS = ("softmax", "logits", "sigmoid")
EXPLAINERS = ("gradcam", "gradcam++", "occlusion", "activations")


def prob_column(k: int) -> str:
    return f"{PROB_PREFIX}{k}"


def file_stem(method: str) -> str:
    """A method name safe for file names: 'gradcam++' becomes 'gradcam_pp'."""
    return method.replace("++", "_pp")


def heatmap_file(method: str) -> str:
    """File of one explainer's maps."""
    return f"{HEATMAP_DIR}/{file_stem(method)}.npy"


def activation_file(layer: str) -> str:
    """File of one layer's activations; nested names 'backbone/conv' become 'backbone__conv'."""
    return f"{ACTIVATION_DIR}/{layer.replace('/', '__')}.npy"


def annotation_columns(columns) -> list[str]:
    """Annotation columns of a predictions table, in stored order."""
    return [
        c for c in columns if c not in PREDICTION_COLUMNS and not c.startswith(PROB_PREFIX)
    ]


def read_manifest_file(path) -> dict | None:
    """The manifest of the folder ``path`` as a dict, or None if it has no readable JSON object one."""
    import json
    from pathlib import Path

    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_marked(manifest: dict | None) -> bool:
    """A manifest written by this schema version or later (it lists the store's own files)."""
    return bool(manifest) and manifest.get("store") == STORE_MARKER


def is_legacy(manifest: dict | None) -> bool:
    """A schema-1 manifest: keras-audit's before the marker, still readable, but it lists no files."""
    return (
        bool(manifest) and "store" not in manifest and manifest.get("schema_version") == 1
        and isinstance(manifest.get("model"), dict) and isinstance(manifest.get("dataset"), dict)
    )


def is_store(path) -> bool:
    """Whether ``path`` is a results store (marked, or a schema-1 one), judged by its manifest."""
    manifest = read_manifest_file(path)
    return is_marked(manifest) or is_legacy(manifest)


def owned_path(rel: str) -> str | None:
    """``rel`` as a store-relative POSIX path if it may be one of the store's own files, else None.

    Absolute paths, ``..``, the manifest and the lock file are never a store's
    listed file: a tampered list must not make a re-run delete outside the store.
    """
    import posixpath

    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        return None
    folder = rel.endswith("/")
    norm = posixpath.normpath(rel)
    if norm != rel.rstrip("/") or norm in (".", MANIFEST, LOCK_FILE) or norm.split("/")[0] == "..":
        return None
    return norm + "/" if folder else norm


# JSON files of the store hold plain numbers, with NaN and infinity as null.
def to_json(value):
    """``value`` with numpy types made plain and NaN / infinity made ``None``."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value
