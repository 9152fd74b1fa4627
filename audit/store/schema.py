"""The on-disk format of a results store (public; see README "Results store").

This module is the only place that knows file names, column names and the
schema version. The writer, the reader, the app and every exporter import it.

Layout of ``OUT/``::

    manifest.json          run description; ``complete`` is true only at the end
    predictions.parquet    one row per example (see PREDICTION_COLUMNS)
    metrics.json           metrics computed from predictions.parquet
    slices.parquet         per example, the slice it falls in for every sliced
                           column and pair of columns of metrics.json (see SLICES)
    images.npy             uint8 (N, h, w, 3): each example as the model saw it,
                           longest side at most STORED_IMAGE_MAX_SIDE
    heatmaps/index.npy     int64 (K,): example indices that have heatmaps
    heatmaps/<method>.npy  float16 (K, h, w) in [0, 1], rows follow index.npy
    heatmaps/<method>_signal.npy  bool (K,): the raw map had spread (False: no signal)
    activations/<layer>.npy  float16 (K, a, b, channels) for the same K examples,
                             area-averaged to at most STORED_ACTIVATION_MAX_SIDE
    activations/stats.json   per-layer, per-channel mean / max / fraction of zeros
                             over the whole dataset
    embeddings.npy         float16 (N, D): penultimate-layer features
    discovered/<method>_<group>.npy  float32 (h, w): mean heatmap of a discovered group
                           (metrics.json "discovered"; see DISCOVERY_COLUMNS)
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
from typing import Any, TypedDict, cast

import numpy as np

from audit.errors import AuditError

# 2: manifest gained "store", "files", dataset "fingerprint" and "tensorboard".
SCHEMA_VERSION = 2
STORE_MARKER = "keras-audit"

MANIFEST = "manifest.json"
PREDICTIONS = "predictions.parquet"
METRICS = "metrics.json"
# Slice membership: column "index", then one column per entry of metrics.json's
# slices.columns (single annotations and "a & b" pairs, under those names), each
# holding the row's slice value as metrics.json names it, null where the row is in
# no reported slice (rows without a label, which metrics leave out). Views find
# the rows of a slice here instead of re-binning annotations with metrics code.
# An added file, so the schema version stays: stores written before it lack it,
# and the reader says so when a view asks for slice rows.
SLICES = "slices.parquet"
SLICE_INDEX_COLUMN = "index"
IMAGES = "images.npy"
EMBEDDINGS = "embeddings.npy"
HEATMAP_DIR = "heatmaps"
HEATMAP_INDEX = "heatmaps/index.npy"
ACTIVATION_DIR = "activations"
# Discovery (audit.engine.discovery): mean heatmaps of discovered groups live here.
DISCOVERED_DIR = "discovered"
ACTIVATION_STATS = "activations/stats.json"
TENSORBOARD_DIR = "tensorboard"
WORK_DIR = "work"
LOCK_FILE = ".keras-audit.lock"
# manifest["tensorboard"]: the export's progress ("pending" until the logs are in place).
TENSORBOARD_PENDING = "pending"
TENSORBOARD_WRITTEN = "written"
# manifest["discovery"]: "pending" from the moment discovery starts replacing files until all are
# in place (each file is replaced atomically; --resume or `keras-audit discover OUT` redoes it).
DISCOVERY_PENDING = "pending"
DISCOVERY_WRITTEN = "written"

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
# Every name a run may store: the heatmap methods of audit.explain.registry.METHODS, in its
# order, then "activations". A literal, because views read stores without importing the
# engine; tests/test_registry.py fails when it and the registry disagree.
EXPLAINERS = ("gradcam", "gradcam++", "occlusion", "scorecam", "activations")


def prob_column(k: int) -> str:
    return f"{PROB_PREFIX}{k}"


def file_stem(method: str) -> str:
    """A method name safe for file names: 'gradcam++' becomes 'gradcam_pp'.

    The one rule for every file named after a method (heatmaps, quality scores, report
    pictures, What-If features); ``registry.Method.stem`` calls it.
    """
    return method.replace("++", "_pp")


def heatmap_file(method: str) -> str:
    """File of one explainer's maps: ``heatmaps/<file_stem(method)>.npy``."""
    return f"{HEATMAP_DIR}/{file_stem(method)}.npy"


def signal_file(method: str) -> str:
    """Per explained example, whether its raw map had any signal: ``heatmaps/<stem>_signal.npy``,
    bool (K,), rows follow index.npy. A False row's stored map is all zeros and means nothing."""
    return f"{HEATMAP_DIR}/{file_stem(method)}_signal.npy"


def activation_file(layer: str) -> str:
    """File of one layer's activations; nested names 'backbone/conv' become 'backbone__conv'."""
    return f"{ACTIVATION_DIR}/{layer.replace('/', '__')}.npy"


# Discovered groups of each row in predictions.parquet (nullable Int64, null where the row is in
# no group). Written by discovery, not by the user: never annotations, never sliced. The
# "search" method has no column: its groups are predicates over annotations.
DISCOVERY_METHODS = ("errors", "strategy", "search")
DISCOVERY_COLUMNS = ("found_errors", "found_strategy")


def discovery_column(method: str) -> str | None:
    """The predictions.parquet column holding ``method``'s group of each row, or None (``search``)."""
    column = f"found_{method}"
    return column if column in DISCOVERY_COLUMNS else None


def discovered_heatmap_file(method: str, group: int) -> str:
    """File of a discovered group's mean heatmap: ``discovered/<method>_<group>.npy``."""
    return f"{DISCOVERED_DIR}/{file_stem(method)}_{int(group)}.npy"


def annotation_columns(columns) -> list[str]:
    """Annotation columns of a predictions table, in stored order (discovery columns are not)."""
    return [
        c for c in columns
        if c not in PREDICTION_COLUMNS and not c.startswith(PROB_PREFIX) and c not in DISCOVERY_COLUMNS
    ]


# -- typed models of the JSON files ----------------------------------------------------------
# TypedDicts describe what the writer puts in manifest.json and metrics.json and
# what views may rely on; they cost nothing at run time (plain dicts stay plain).
# total=False where a key is absent in some stores: written late in a run, only
# with some options, or not by schema-1 stores.


class ModelInfo(TypedDict, total=False):
    path: str
    name: str
    sha256: str
    format: str
    input_shape: list[int]
    num_classes: int
    output_kind: str  # one of OUTPUT_KINDS
    softmax_applied: bool


class DatasetInfo(TypedDict, total=False):
    source: str
    kind: str
    count: int
    fingerprint: str
    readable: int
    skipped: list[Any]
    annotations: dict[str, Any] | None


class ExplainedInfo(TypedDict, total=False):
    methods: list[str]
    count: int
    activation_layers: list[str]
    layer: str
    titles: dict[str, str]  # method name -> title, from the method registry


class NoSignal(TypedDict):
    """``metrics.json`` ``explanations[method]["no_signal"]``: maps that were constant before
    normalisation (stored as all zeros), how many of the explained, why, and what to try."""

    count: int
    of: int
    reason: str
    suggestion: str


class ExplanationQuality(TypedDict, total=False):
    deletion_auc: float | None
    insertion_auc: float | None
    n: int
    note: str
    no_signal: NoSignal  # absent in stores written before it


class Manifest(TypedDict, total=False):
    store: str  # STORE_MARKER; absent in schema-1 stores
    schema_version: int
    model: ModelInfo
    dataset: DatasetInfo
    class_names: list[str]
    options: dict[str, Any]
    stored_image_shape: list[int]
    versions: dict[str, str]
    started_at: str
    finished_at: str
    explained: ExplainedInfo
    notes: list[str]
    files: list[str]
    tensorboard: str  # TENSORBOARD_PENDING or TENSORBOARD_WRITTEN
    discovery: str  # DISCOVERY_PENDING or DISCOVERY_WRITTEN; absent before discovery ran
    complete: bool


class SliceRow(TypedDict, total=False):
    column: str
    value: str
    columns: list[str]
    values: list[str]
    n: int
    accuracy: float | None
    accuracy_ci: list[float | None]
    error_rate: float | None
    error_rate_ci: list[float | None]
    rest_accuracy: float | None
    gap: float | None
    gap_ci: list[float | None]
    flagged: bool
    too_small: bool
    support: list[int]  # per class, for models with few enough classes
    recall: list[float | None]
    recall_ci: list[list[float | None]]
    range: list[float]  # quantile slices only
    below_parents: bool  # intersections only


class SliceColumnInfo(TypedDict, total=False):
    column: str
    columns: list[str]
    kind: str  # "category", "level", "quantile" or "intersection"
    builtin: bool
    values: list[str]
    bin_edges: list[float] | None
    missing: int
    disparity: dict[str, Any] | None


class SlicesSection(TypedDict, total=False):
    method: dict[str, Any]
    min_slice_size: int
    pairs: bool
    columns: list[SliceColumnInfo]
    skipped: list[dict[str, str]]
    rows: list[SliceRow]
    summary: dict[str, Any]


class Attention(TypedDict):
    """Where a set of heatmaps looks: mass shares of a 3x3 grid (row 0 top, summing to 1), the
    share in the outer band, and the cell holding most ("top-left" ... "bottom-right")."""

    method: str
    grid: list[list[float]]
    border: float
    top_cell: str


class DiscoveredGroup(TypedDict, total=False):
    """One entry of ``metrics.json`` ``discovered`` (strongest first: ascending q, then gap)."""

    method: str  # one of DISCOVERY_METHODS
    group: int  # unique within method; the value of discovery_column(method)
    n: int
    errors: int
    accuracy: float
    accuracy_ci: list[float]
    rest_accuracy: float
    gap: float  # accuracy - rest_accuracy; negative = worse
    gap_ci: list[float]  # Newcombe, as slices
    p_value: float
    q_value: float  # Benjamini-Hochberg over everything the method tested
    description: str
    predicate: dict[str, Any] | None  # search: membership is this conjunction
    predicted_class: str | None  # strategy: the class whose maps were clustered
    attention: Attention | None
    heatmap: str | None  # discovered_heatmap_file(method, group)
    significant: bool  # q < 0.05, gap_ci excludes 0 and n >= min_slice_size


class AttentionEntry(TypedDict, total=False):
    """One entry of ``metrics.json`` ``attention``: where a class, group or slice looks."""

    scope: str  # "class", "group" or "slice"
    name: str
    method: str
    n: int
    grid: list[list[float]]
    border: float
    top_cell: str
    flag: str | None  # a sentence when the mass sits off-centre or in a corner
    heatmap: str | None


class DiscoverySection(TypedDict, total=False):
    """``metrics.json`` ``discovery``: per method its parameters, chosen k and criterion values;
    notes such as a class with too few maps to cluster."""

    methods: dict[str, dict[str, Any]]
    notes: list[str]


class Metrics(TypedDict, total=False):
    metrics_version: int
    options: dict[str, Any]
    num_examples: int
    num_classes: int
    class_names: list[str]
    accuracy: float | None
    accuracy_ci: list[float | None]
    error_rate: float | None
    balanced_accuracy: float | None
    balanced_accuracy_ci: list[float | None] | None
    top_k_accuracy: dict[str, float | None]
    log_loss: float | None
    macro_f1: float | None
    per_class: list[dict[str, Any]]
    confusion_matrix: list[list[int]]
    curves: dict[str, Any]
    calibration: dict[str, Any]
    slices: SlicesSection
    thresholds: dict[str, Any]
    explanations: dict[str, ExplanationQuality]  # added by the engine after compute_metrics
    notes: list[str]
    discovered: list[DiscoveredGroup]  # added by discovery; absent in older stores
    attention: list[AttentionEntry]
    discovery: DiscoverySection


class WorstSlice(TypedDict):
    column: str
    value: str
    n: int
    accuracy: float | None
    ci: list[float | None]
    gap: float
    gap_ci: list[float | None]
    too_small: bool


def worst_slices(metrics: Metrics, k: int = 5, *, intersections: bool = False) -> list[WorstSlice]:
    """The ``k`` flagged slices of ``metrics`` (metrics.json) worse than the rest, most negative gap first.

    A pure selection over the stored rows, so views rank slices without metrics
    code. Intersections are left out unless ``intersections`` is true; then only
    those ``below_parents`` are included (a pair that is merely as bad as one of
    its columns repeats that column).

    Raises:
        AuditError: ``k`` is not a count.
    """
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 0:
        raise AuditError(f"worst_slices needs a count k >= 0, got {k!r}")
    rows = (metrics.get("slices") or {}).get("rows") or []
    chosen = [
        r for r in rows
        if r.get("flagged") and r.get("gap") is not None and r["gap"] < 0
        and (len(r.get("columns", [])) < 2 or (intersections and r.get("below_parents")))
    ]
    # Ties on the gap go to the slice whose interval ends further below zero (surer).
    chosen.sort(key=lambda r: (r["gap"], r["gap_ci"][1] if r["gap_ci"][1] is not None else 0.0))
    return [
        {"column": r["column"], "value": r["value"], "n": r["n"], "accuracy": r["accuracy"],
         "ci": r["accuracy_ci"], "gap": r["gap"], "gap_ci": r["gap_ci"], "too_small": r["too_small"]}
        for r in chosen[:k]
    ]


def slice_column_names(metrics: Metrics) -> list[str]:
    """The sliced columns of ``metrics`` (singles, then pairs), as slices.parquet names its columns."""
    return [c["column"] for c in (metrics.get("slices") or {}).get("columns") or []]


def read_manifest_file(path) -> Manifest | None:
    """The manifest of the folder ``path`` as a dict, or None if it has no readable JSON object one."""
    import json
    from pathlib import Path

    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return cast(Manifest, manifest) if isinstance(manifest, dict) else None


def is_marked(manifest: Manifest | None) -> bool:
    """A manifest written by this schema version or later (it lists the store's own files)."""
    return manifest is not None and manifest.get("store") == STORE_MARKER


def is_legacy(manifest: Manifest | None) -> bool:
    """A schema-1 manifest: keras-audit's before the marker, still readable, but it lists no files."""
    if not manifest:
        return False
    return (
        "store" not in manifest and manifest.get("schema_version") == 1
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
def read_parquet(path):
    """A store's parquet table (pandas), read through an open file: given a path string, pandas and
    pyarrow parse a folder name such as ``run:1`` as a URI scheme and fail (:func:`write_parquet`
    in audit.store.writer writes the same way)."""
    import pandas as pd

    with open(path, "rb") as fh:
        return pd.read_parquet(fh)


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
