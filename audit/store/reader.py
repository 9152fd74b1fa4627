"""Typed, lazy read access to a results store.

Every view (CLI summary, app, TensorBoard export, report, What-If bridge) reads
a run through :class:`Reader`; nothing here imports TensorFlow. Large arrays
are memory-mapped, so reading one heatmap does not load the others.

Example:
    >>> run = Reader("audit_out")                       # doctest: +SKIP
    >>> run.class_names, run.num_examples               # doctest: +SKIP
    (['circle', 'square', 'triangle'], 600)
    >>> run.heatmap("gradcam", 17).shape                # doctest: +SKIP
    (64, 64)
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import cast

import numpy as np

from audit.errors import StoreError
from audit.store import schema


def _by_index(values, index):
    """``values`` keyed by example index (slices.parquet and predictions.parquet are joined on it)."""
    import pandas as pd

    return pd.Series(values.to_numpy(), index=pd.Index(index.to_numpy(np.int64)), dtype=values.dtype)


class Reader:
    """Read access to one results store directory.

    Args:
        path: the store (the ``--out`` directory of a run).
        allow_incomplete: open a run that has not finished (for resume and
            diagnostics); views refuse incomplete runs by default.
    """

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False):
        self.path = Path(path)
        self._mapped: dict[str, np.ndarray | None] = {}
        manifest_path = self.path / schema.MANIFEST
        if self.path.exists() and not self.path.is_dir():
            raise StoreError("is a file, not a results store (a store is the folder a run wrote)", self.path)
        if not self.path.is_dir():
            raise StoreError("results store does not exist", self.path)
        if not manifest_path.is_file():
            raise StoreError("not a keras-audit results store (no manifest.json)", self.path)
        try:
            self.manifest: schema.Manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            detail = e.msg if hasattr(e, "msg") else e
            raise StoreError(f"manifest.json is not valid JSON ({detail})", self.path) from None
        if not isinstance(self.manifest, dict):
            raise StoreError("manifest.json is not a JSON object; not a keras-audit results store", self.path)
        version = self.manifest.get("schema_version")
        if not isinstance(version, int):
            raise StoreError("manifest.json has no schema_version; not a keras-audit results store", self.path)
        # Schema 1 stores carry no "store" marker and stay readable; the writer, which deletes, insists on it.
        if self.manifest.get("store", schema.STORE_MARKER) != schema.STORE_MARKER:
            raise StoreError(
                f"manifest.json belongs to {self.manifest['store']!r}; not a keras-audit results store", self.path
            )
        if version > schema.SCHEMA_VERSION:
            raise StoreError(
                f"store has schema version {version}, newer than this keras-audit understands "
                f"({schema.SCHEMA_VERSION}); upgrade keras-audit",
                self.path,
            )
        if not allow_incomplete and not self.complete:
            raise StoreError(
                "run is incomplete (interrupted?); finish it with `keras-audit run ... --resume`", self.path
            )

    # -- description ------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_examples(self) -> int:
        return int(self.manifest["dataset"]["count"])

    @property
    def model_info(self) -> schema.ModelInfo:
        return self.manifest["model"].copy()

    @property
    def options(self) -> dict:
        return dict(self.manifest.get("options", {}))

    @property
    def mtime(self) -> float:
        """Modification time of the manifest: a cache key for views."""
        return (self.path / schema.MANIFEST).stat().st_mtime

    # -- tables -------------------------------------------------------------------
    @cached_property
    def predictions(self):
        """The predictions table (pandas DataFrame), one row per example."""
        file = self.path / schema.PREDICTIONS
        if not file.is_file():
            raise StoreError("predictions.parquet is missing", self.path)
        return schema.read_parquet(file)

    @property
    def annotation_columns(self) -> list[str]:
        return schema.annotation_columns(self.predictions.columns)

    def probabilities(self) -> np.ndarray:
        cols = [schema.prob_column(k) for k in range(self.num_classes)]
        return self.predictions[cols].to_numpy(np.float32)

    @cached_property
    def metrics(self) -> schema.Metrics:
        file = self.path / schema.METRICS
        if not file.is_file():
            raise StoreError("metrics.json is missing", self.path)
        return json.loads(file.read_text())

    # -- slices -------------------------------------------------------------------------------
    def worst_slices(self, k: int = 5, *, intersections: bool = False) -> list[schema.WorstSlice]:
        """The ``k`` flagged slices worse than the rest, worst first (see :func:`schema.worst_slices`)."""
        return schema.worst_slices(self.metrics, k, intersections=intersections)

    @cached_property
    def slices(self):
        """Slice membership (pandas DataFrame, slices.parquet): ``index``, then per sliced column
        (``"a & b"`` for a pair) the slice value of each example as metrics.json names it, or null."""
        file = self.path / schema.SLICES
        if not file.is_file():
            raise StoreError(
                "slices.parquet is missing (the store was written by an older keras-audit); "
                "run the audit again to get each slice's examples", self.path,
            )
        return schema.read_parquet(file)

    def _slice_column(self, column: str):
        if column == schema.SLICE_INDEX_COLUMN or column not in self.slices.columns:
            known = [c for c in self.slices.columns if c != schema.SLICE_INDEX_COLUMN]
            raise StoreError(f"no slice column {column!r} (sliced: {', '.join(map(repr, known)) or 'none'})", self.path)
        return self.slices[column]

    def slice_rows(self, column: str, value: str) -> np.ndarray:
        """Example indices (int64, ascending) of the slice ``column = value``, as metrics.json reports it.

        Raises:
            StoreError: the store has no membership, or no such column or value.
        """
        labels = self._slice_column(column)
        inside = labels.eq(value).fillna(False).to_numpy(bool)
        if not inside.any():
            values = sorted(labels.dropna().unique())
            shown = ", ".join(map(repr, values[:10])) + (", ..." if len(values) > 10 else "")
            raise StoreError(f"slice column {column!r} has no value {value!r} (values: {shown})", self.path)
        return np.sort(self.slices[schema.SLICE_INDEX_COLUMN].to_numpy(np.int64)[inside])

    def slice_labels(self, column: str) -> np.ndarray:
        """The slice value of ``column`` for every row of :attr:`predictions`, in its order (None where
        the row is in no slice): object array, for masks such as ``labels == "dark"``."""
        labels = self._slice_column(column)
        by_index = _by_index(labels, self.slices[schema.SLICE_INDEX_COLUMN])
        aligned = by_index.reindex(self.predictions["index"].to_numpy())
        return aligned.astype(object).where(aligned.notna(), None).to_numpy(object)

    # -- discovery ----------------------------------------------------------------------------
    def discovered(self, method: str | None = None) -> list[schema.DiscoveredGroup]:
        """Discovered groups (metrics.json ``discovered``), strongest first; only ``method``'s when
        given. [] for stores written before discovery."""
        groups = self.metrics.get("discovered") or []
        return [cast(schema.DiscoveredGroup, dict(g)) for g in groups if method is None or g.get("method") == method]

    def attention(self) -> list[schema.AttentionEntry]:
        """Where each class, discovered group and flagged slice looks (metrics.json ``attention``), or []."""
        return [cast(schema.AttentionEntry, dict(a)) for a in self.metrics.get("attention") or []]

    def discovered_members(self, entry: schema.DiscoveredGroup) -> np.ndarray:
        """Example indices (int64, ascending, like :meth:`slice_rows`) of a discovered group: the rows whose
        ``found_<method>`` column holds its group, or, for a predicate (search), the rows matching every
        ``column = value`` of it (the value as slices.parquet names it where the column is sliced there,
        else the stored annotation value).

        Raises:
            StoreError: the store lacks the column the entry needs.
        """
        preds = self.predictions
        index = preds["index"].to_numpy(np.int64)
        predicate = entry.get("predicate")
        if predicate:
            return np.sort(index[self._predicate_mask(predicate)])
        column = schema.discovery_column(str(entry.get("method")))
        if column is None or column not in preds.columns:
            raise StoreError(f"predictions.parquet has no discovery column for {entry.get('method')!r}", self.path)
        inside = preds[column].eq(int(entry["group"])).fillna(False).to_numpy(bool)
        return np.sort(index[inside])

    def _predicate_mask(self, predicate: dict) -> np.ndarray:
        preds = self.predictions
        inside = np.ones(len(preds), bool)
        sliced = set(self.slices.columns) if (self.path / schema.SLICES).is_file() else set()
        for column, value in predicate.items():
            if column in sliced and column != schema.SLICE_INDEX_COLUMN:
                labels = self.slice_labels(column)
            elif column in preds.columns:
                labels = preds[column].astype(object).to_numpy(object)
            else:
                raise StoreError(f"discovered group's predicate names a column the store lacks: {column!r}", self.path)
            inside &= np.array([v is not None and str(v) == str(value) for v in labels], bool)
        return inside

    def discovered_heatmap(self, entry: schema.DiscoveredGroup) -> np.ndarray | None:
        """A discovered group's (or attention entry's) mean heatmap, float32 (h, w), or None if it has none."""
        rel = schema.owned_path(entry.get("heatmap") or "")
        if rel is None or not rel.startswith(schema.DISCOVERED_DIR + "/"):
            return None
        arr = self._array(rel)
        return None if arr is None else np.asarray(arr, np.float32)

    # -- arrays ---------------------------------------------------------------------
    def _array(self, rel: str) -> np.ndarray | None:
        # Memory-maps are opened once per file: views read one image or map at a time, often.
        if rel not in self._mapped:
            file = self.path / rel
            self._mapped[rel] = np.load(file, mmap_mode="r") if file.is_file() else None
        return self._mapped[rel]

    def stored_array(self, rel: str) -> np.ndarray | None:
        """The store's array file ``rel`` (e.g. ``schema.heatmap_file("gradcam")``), memory-mapped, or None
        if absent: for the engine's passes over whole arrays (discovery, a follow-up run)."""
        return self._array(rel)

    def image(self, index: int) -> np.ndarray:
        """Example ``index`` as the model saw it: uint8 (h, w, 3), longest side <= 128."""
        images = self._array(schema.IMAGES)
        if images is None:
            raise StoreError("images.npy is missing", self.path)
        return np.asarray(images[index])

    @cached_property
    def heatmap_index(self) -> dict[int, int]:
        idx = self._array(schema.HEATMAP_INDEX)
        return {} if idx is None else {int(i): row for row, i in enumerate(idx)}

    @property
    def heatmap_methods(self) -> list[str]:
        return [m for m in schema.EXPLAINERS if (self.path / schema.heatmap_file(m)).is_file()]

    def no_signal(self, method: str, index: int) -> str | None:
        """Why ``method``'s map of ``index`` has no signal (a constant raw map, stored as zeros, that
        must never be drawn as if it were a finding), or None: it has signal, there is no such map,
        or the store predates the check."""
        signal = self._array(schema.signal_file(method))
        row = self.heatmap_index.get(int(index))
        if signal is None or row is None or bool(signal[row]):
            return None
        info: dict = dict(((self.metrics.get("explanations") or {}).get(method) or {}).get("no_signal") or {})
        return str(info.get("reason") or "the map is constant")

    def has_heatmap(self, index: int) -> bool:
        return index in self.heatmap_index

    def heatmap(self, method: str, index: int) -> np.ndarray:
        """The stored map (h, w) float32 in [0, 1] of ``method`` for example ``index``."""
        maps = self._array(schema.heatmap_file(method))
        if maps is None:
            has = ", ".join(self.heatmap_methods) or "none"
            raise StoreError(f"run has no {method!r} heatmaps (has: {has})", self.path)
        if index not in self.heatmap_index:
            raise StoreError(
                f"example {index} has no heatmap (explained: {len(self.heatmap_index)} examples)", self.path
            )
        return np.asarray(maps[self.heatmap_index[index]], np.float32)

    @property
    def activation_layers(self) -> list[str]:
        return list(self.manifest.get("explained", {}).get("activation_layers", []))

    def activations(self, layer: str, index: int) -> np.ndarray:
        """Stored activations (a, b, channels) of ``layer`` for an explained example."""
        arr = self._array(schema.activation_file(layer))
        if arr is None or index not in self.heatmap_index:
            raise StoreError(f"no stored activations of layer {layer!r} for example {index}", self.path)
        return np.asarray(arr[self.heatmap_index[index]], np.float32)

    @cached_property
    def activation_stats(self) -> dict:
        file = self.path / schema.ACTIVATION_STATS
        return json.loads(file.read_text()) if file.is_file() else {}

    def embeddings(self) -> np.ndarray | None:
        """Penultimate-layer features (N, D), memory-mapped, or None if not stored."""
        return self._array(schema.EMBEDDINGS)

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return f"Reader({str(self.path)!r}, {self.num_examples} examples, {state})"
