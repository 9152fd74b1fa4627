"""Discovery: groups of examples where the model fails, or looks elsewhere, that nobody annotated.

Pure functions of a store's predictions table, embeddings and maps (numpy,
scikit-learn, scipy, pandas; no TensorFlow): :func:`discover` returns the
``discovered``, ``attention`` and ``discovery`` sections of metrics.json, the
per-row ``found_errors`` / ``found_strategy`` columns and the mean heatmaps to
store. Methods, each in its own module:

* :mod:`~audit.discover.errors`: Domino-style error slices in the embeddings;
* :mod:`~audit.discover.strategy`: SpRAy strategy clusters of each class's maps;
* :mod:`~audit.discover.search`: SliceLine-style search over annotation columns;
* :mod:`~audit.discover.attention`: where each class, group and slice looks;
* :mod:`~audit.discover.fdr`: intervals, p-values and BH q-values of groups.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.discover import attention as att
from audit.discover.errors import error_slices
from audit.discover.fdr import SIGNIFICANCE, bh_qvalues, strongest_first
from audit.discover.search import members as search_members
from audit.discover.search import slice_search
from audit.discover.strategy import MIN_MAPS, strategy_clusters
from audit.errors import DataError
from audit.metrics.predictions import labelled_positions
from audit.store.schema import file_stem

__all__ = ["COLUMNS", "DISCOVERED_DIR", "METHODS", "MIN_MAPS", "SIGNIFICANCE", "bh_qvalues", "discover",
           "group_heatmap_file"]

METHODS = ("errors", "strategy", "search")
COLUMNS = {"errors": "found_errors", "strategy": "found_strategy"}
DISCOVERED_DIR = "discovered"
# The map method whose mass "where it looks" describes: the first of these a run has.
ATTENTION_ORDER = ("gradcam", "gradcam++", "scorecam", "occlusion")


def group_heatmap_file(method: str, group: int) -> str:
    """Store path of a discovered group's mean heatmap: ``discovered/<method>_<group>.npy``."""
    return f"{DISCOVERED_DIR}/{method}_{int(group)}.npy"


def _check(predictions: pd.DataFrame, embeddings, maps, map_index) -> None:
    missing = [c for c in ("index", "label", "pred") if c not in predictions.columns]
    if missing:
        raise DataError(f"predictions table lacks column(s) {', '.join(missing)}")
    if embeddings is not None and len(embeddings) != len(predictions):
        raise DataError(f"embeddings have {len(embeddings)} rows but predictions have {len(predictions)}")
    sizes = {m: np.shape(v) for m, v in (maps or {}).items()}
    if any(len(s) != 3 for s in sizes.values()) or len({s[0] for s in sizes.values()}) > 1:
        raise DataError(f"maps must be (K, h, w) arrays with one K for every method, got {sizes}")
    if sizes and map_index is None and next(iter(sizes.values()))[0] != len(predictions):
        raise DataError("maps without map_index must have one row per prediction")
    if sizes and map_index is not None and len(map_index) != next(iter(sizes.values()))[0]:
        raise DataError(f"map_index has {len(map_index)} entries but the maps have {next(iter(sizes.values()))[0]}")


def _map_rows(predictions: pd.DataFrame, maps: dict, map_index, labelled: np.ndarray,
              notes: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Maps of labelled rows with mass in every method, their position among the labelled rows,
    and their row in ``predictions``."""
    count = len(next(iter(maps.values())))
    if map_index is None:
        rows = np.arange(count)
    else:
        rows = pd.Index(predictions["index"].to_numpy()).get_indexer(np.asarray(map_index))
        if (rows < 0).any():
            raise DataError(f"map_index holds {int((rows < 0).sum())} indices that are not in predictions")
    position = np.full(len(predictions), -1, dtype=np.int64)
    position[labelled] = np.arange(len(labelled))
    keep = position[rows] >= 0
    for method, values in maps.items():
        _, has = att.unit_mass(values)
        if (~has & keep).any():
            notes.append(f"{int((~has & keep).sum())} {method} maps have no signal and are left out of discovery")
        keep &= has
    return {m: np.asarray(v)[keep] for m, v in maps.items()}, position[rows[keep]], rows[keep]


class _Context:
    """What every step reads (labelled rows, maps) and what they add to (heatmaps, attention, notes)."""

    def __init__(self, predictions: pd.DataFrame, class_names, maps: dict, map_index, notes: list[str]):
        self.predictions, self.class_names, self.notes = predictions, [str(c) for c in class_names], notes
        self.labelled = labelled_positions(predictions)
        self.y = predictions["label"].to_numpy(dtype=float)[self.labelled].astype(np.int64)
        self.pred = predictions["pred"].to_numpy(dtype=float)[self.labelled].astype(np.int64)
        self.wrong = self.y != self.pred
        self.maps: dict[str, np.ndarray] = {}
        self.map_pos, self.map_rows = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if maps:
            self.maps, self.map_pos, self.map_rows = _map_rows(predictions, maps, map_index, self.labelled, notes)
        self.primary = next((m for m in ATTENTION_ORDER if m in self.maps), next(iter(self.maps), None))
        self.heatmaps: dict[str, np.ndarray] = {}
        self.attention: list[dict] = []

    def look(self, scope: str, name: str, subject: str, map_mask: np.ndarray, path: str,
             method: str | None = None) -> dict | None:
        """Add the attention entry of the maps in ``map_mask`` (and its heatmap); None without maps."""
        method = method or self.primary
        if method is None or not map_mask.any():
            return None
        made = att.attention_entry(scope, name, subject, method, self.maps[method][map_mask], path)
        if made is None:
            return None
        entry, _ = made
        self.heatmaps[path] = att.display_mean(self.maps[method][map_mask])
        self.attention.append(entry)
        return entry

    def maps_of(self, labelled_mask: np.ndarray) -> np.ndarray:
        """Which maps belong to labelled rows in ``labelled_mask``."""
        return labelled_mask[self.map_pos] if len(self.map_pos) else np.zeros(0, bool)


def _column(length: int, rows: np.ndarray, groups: np.ndarray) -> pd.Series:
    values = pd.array([pd.NA] * length, dtype="Int64")
    keep = groups >= 0
    values[rows[keep]] = groups[keep]
    return pd.Series(values, name=None)


def _class_attention(ctx: _Context) -> None:
    map_pred = ctx.pred[ctx.map_pos]
    for method in ctx.maps:
        for c, name in enumerate(ctx.class_names):
            path = f"{DISCOVERED_DIR}/attention_class_{c}_{file_stem(method)}.npy"
            ctx.look("class", name, f"{name!r} predictions", map_pred == c, path, method)


def _group_attention(ctx: _Context, entries: list[dict], member_maps) -> None:
    """Attention and heatmap of each discovered group (``member_maps(entry)``: which maps are members)."""
    for entry in entries:
        path = group_heatmap_file(entry["method"], entry["group"])
        subject = f"members of {entry['method']} group {entry['group']}"
        found = ctx.look("group", f"{entry['method']} {entry['group']}", subject, member_maps(entry), path)
        if found is not None:
            entry["attention"], entry["heatmap"] = att.group_attention(found), path


def _slice_attention(ctx: _Context, slices: dict[str, np.ndarray]) -> None:
    for i, (name, mask) in enumerate(slices.items()):
        mask = np.asarray(mask, dtype=bool)
        if len(mask) != len(ctx.predictions):
            raise DataError(f"slice {name!r}: its mask has {len(mask)} rows, predictions have {len(ctx.predictions)}")
        path = f"{DISCOVERED_DIR}/attention_slice_{i}_{file_stem(ctx.primary or '')}.npy"
        ctx.look("slice", name, f"examples in slice {name}", ctx.maps_of(mask[ctx.labelled]), path)


def _errors_step(ctx: _Context, embeddings, *, min_slice_size: int, seed: int,
                 label_weight: float) -> tuple[list[dict], np.ndarray, dict | None]:
    component = np.full(len(ctx.labelled), -1, dtype=np.int64)
    if embeddings is None:
        return [], component, None
    if len(ctx.labelled) < 2 * min_slice_size:
        ctx.notes.append(f"error slices: {len(ctx.labelled)} labelled examples, need {2 * min_slice_size}")
        return [], component, None
    emb = np.asarray(embeddings)[ctx.labelled]
    entries, component, info = error_slices(emb, ctx.y, ctx.pred, ctx.class_names, min_slice_size=min_slice_size,
                                            seed=seed, label_weight=label_weight)
    _group_attention(ctx, entries, lambda e: ctx.maps_of(component == e["group"]))
    return entries, component, info


def _strategy_step(ctx: _Context, *, min_slice_size: int, seed: int) -> tuple[list[dict], np.ndarray, dict | None]:
    if not ctx.maps:
        return [], np.zeros(0, np.int64), None
    entries, group_of_map, out = strategy_clusters(ctx.maps, ctx.map_pos, ctx.y, ctx.pred, ctx.class_names,
                                                   min_slice_size=min_slice_size, seed=seed)
    ctx.notes.extend(out["notes"])
    _group_attention(ctx, entries, lambda e: group_of_map == e["group"])
    for entry in entries:
        if entry["attention"] is not None:
            a = entry["attention"]
            share = max(max(row) for row in a["grid"])
            entry["description"] += f"; most mass in the {a['top_cell']} cell ({share:.0%})"
    return entries, group_of_map, out["info"]


def _search_step(ctx: _Context, columns, *, min_slice_size: int) -> tuple[list[dict], dict | None]:
    columns = [c for c in columns if c in ctx.predictions.columns and c not in COLUMNS.values()]
    if not columns:
        return [], None
    frame = ctx.predictions.iloc[ctx.labelled].reset_index(drop=True)
    entries, binned, info = slice_search(frame, ctx.wrong, columns, min_slice_size=min_slice_size)
    _group_attention(ctx, entries, lambda e: ctx.maps_of(search_members(binned, e["predicate"])))
    return entries, info


def discover(predictions: pd.DataFrame, *, class_names, embeddings: np.ndarray | None = None,
             maps: dict[str, np.ndarray] | None = None, map_index: np.ndarray | None = None,
             annotation_columns=(), slices: dict[str, np.ndarray] | None = None, min_slice_size: int = 30,
             seed: int = 0, label_weight: float = 0.0) -> dict:
    """Every discovery of one store's data.

    Args:
        predictions: the store's predictions table (``index``, ``label``, ``pred``,
            annotation columns); rows without a label are left out.
        class_names: one per class, in output order.
        embeddings: ``(N, D)``, rows following ``predictions``; None skips error slices.
        maps: method -> ``(K, h, w)`` stored maps; None skips strategies and attention.
        map_index: the example ``index`` of each map row (``heatmaps/index.npy``);
            None when the maps follow ``predictions`` row for row.
        annotation_columns: columns to search (annotations and built-ins).
        slices: name -> boolean mask over ``predictions`` rows of each flagged
            slice, whose attention is wanted.
        min_slice_size: smallest group that can be significant.
        seed: every random choice (PCA rows, mixture and k-means starts).
        label_weight: Domino's label term in the error-slice mixture
            (:mod:`audit.discover.errors` says why it is 0 by default).

    Returns:
        ``{"discovered", "attention", "discovery", "columns", "heatmaps"}`` as
        the store contract describes them; ``columns`` maps ``found_errors`` /
        ``found_strategy`` to Int64 series aligned to ``predictions`` (null where
        a row is in no group); ``heatmaps`` maps a store path to a float32 map.
    """
    _check(predictions, embeddings, maps, map_index)
    notes: list[str] = []
    ctx = _Context(predictions, class_names, maps or {}, map_index, notes)
    _class_attention(ctx)
    errors, component, errors_info = _errors_step(ctx, embeddings, min_slice_size=min_slice_size, seed=seed,
                                                  label_weight=label_weight)
    strategy, group_of_map, strategy_info = _strategy_step(ctx, min_slice_size=min_slice_size, seed=seed)
    search, search_info = _search_step(ctx, annotation_columns, min_slice_size=min_slice_size)
    _slice_attention(ctx, slices or {})
    methods = {name: info for name, info in
               (("errors", errors_info), ("strategy", strategy_info), ("search", search_info)) if info is not None}
    columns = {"found_errors": _column(len(predictions), ctx.labelled, component),
               "found_strategy": _column(len(predictions), ctx.map_rows, group_of_map)}
    discovery = {"methods": methods, "notes": notes,
                 "attention": {"method": ctx.primary, "border_fraction": att.BORDER_FRACTION,
                               "flag_share": att.FLAG_SHARE}}
    return {"discovered": strongest_first(errors + strategy + search), "attention": ctx.attention,
            "discovery": discovery, "columns": columns, "heatmaps": ctx.heatmaps}
