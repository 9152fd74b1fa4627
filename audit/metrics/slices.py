"""Slices: accuracy per annotation value and per pair of values, gaps, disparity.

How an annotation column becomes slices
    * Strings, booleans and categories: one slice per value. A column with
      more than ``MAX_CATEGORIES`` values keeps the ``MAX_CATEGORIES - 1`` most
      frequent and pools the rest as ``"(other)"``.
    * Numbers with at most ``MAX_LEVELS`` distinct values: one slice per value.
    * Other numbers: quantile bins, ``[lo, hi)`` with the last closed. There are
      ``QUANTILE_BINS`` bins, fewer when that would leave under
      ``min_slice_size`` examples per bin (never fewer than 2). Edges are data
      values (``numpy.quantile(method="lower")``), so no bin is empty; they
      are recorded in ``bin_edges`` and each slice's ``range``.
    * Missing values (NaN, None, empty or blank strings, infinities) form their
      own slice ``"(missing)"``: a missing annotation can itself predict errors.
    * Skipped, with a note: id-like columns (every present value distinct, for
      anything but non-integral numbers; built-in columns never count as ids),
      columns with a single value and nothing missing, columns with no values.

Intersections
    Every pair of sliced columns is crossed; slices are the value pairs that
    occur. ``slice_pairs=None`` turns this on when there are at most
    ``AUTO_PAIRS_MAX`` *user* annotation columns. The built-in columns
    (aspect ratio, resolution, brightness, contrast) do not count toward that
    limit: they are always present and binned to few values, and "small *and*
    dark" is a question they are there to answer. When on, user and built-in
    columns are crossed alike.

Per slice
    ``n``; ``accuracy`` and ``error_rate`` with Wilson intervals; per-class
    ``support``, ``recall`` and Wilson ``recall_ci``; ``gap`` = slice accuracy
    minus the accuracy of all other rows, with a Newcombe interval; ``flagged``
    when that interval excludes zero (either side: a slice can also be
    significantly *better*); ``too_small`` when ``n < min_slice_size`` (kept,
    counted in a note). An intersection is ``below_parents`` when it is
    significantly worse (Newcombe interval below zero) than the other rows of
    each of its two single-column slices: the pair hurts more than either
    annotation alone.

Disparity per column (and per intersection), over values with at least
``min_slice_size`` examples
    ``accuracy_gap`` (best minus worst value) and ``accuracy_ratio`` (worst /
    best), as fairlearn's ``MetricFrame.difference()`` / ``.ratio()`` define
    them, and ``equal_opportunity_gap``: the largest spread of one class's
    recall between values (the positive class's recall for a binary model),
    with the class and the two values it compares. Intervals come from a
    stratified bootstrap over (value x true class x correct) counts, for the
    difference (or ratio) between the *two values the estimate compares*, kept
    fixed across resamples. Re-picking the extremes in every resample (as a
    bootstrap of max - min does) centres the resamples above the estimate,
    because noise alone spreads values apart, and gives intervals that can
    exclude the estimate itself. The pair is still picked on the same data, so
    for a column with many values that are truly alike the interval is
    somewhat optimistic; an interval that reaches zero is no evidence of a gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pandas as pd

from audit.errors import AuditError
from audit.metrics.intervals import (
    bootstrap_statistic,
    excludes_zero,
    newcombe_difference,
    percentile_interval,
    rng_for,
    wilson,
)
from audit.metrics.predictions import DETAIL_CLASSES, labelled_positions
from audit.store import schema
from audit.store.schema import worst_slices  # noqa: F401  (public here before the store had it)

QUANTILE_BINS = 5
MAX_LEVELS = 10
MAX_CATEGORIES = 50
AUTO_PAIRS_MAX = 4
MISSING = "(missing)"
OTHER = "(other)"


@dataclass(frozen=True)
class SliceColumn:
    """One way of cutting the rows into slices: an annotation column or a pair of them.

    Attributes:
        name: the column name, or ``"a & b"`` for an intersection.
        columns: the annotation column(s) it is made of.
        kind: ``"category"``, ``"level"`` (few numeric values), ``"quantile"`` or ``"intersection"``.
        codes: slice number of every row, int64 (N,).
        labels: the slice value names, indexed by code.
        values: per slice, its value in each of ``columns``.
        builtin: every column it is made of is a built-in annotation.
        bin_edges: quantile edges (``"quantile"`` only).
        ranges: ``[lo, hi]`` per slice (``"quantile"`` only).
        parts: per slice, the codes in each parent column (``"intersection"`` only).
        missing: rows with no value.
    """

    name: str
    columns: tuple[str, ...]
    kind: str
    codes: np.ndarray
    labels: list[str]
    values: list[tuple[str, ...]]
    builtin: bool
    bin_edges: list[float] | None = None
    ranges: list[list[float]] | None = None
    parts: list[tuple[int, int]] | None = field(default=None, repr=False)
    missing: int = 0

    def row_labels(self) -> np.ndarray:
        """The slice value of every row (for cross-checks with other tools)."""
        return np.asarray(self.labels, dtype=object)[self.codes]

    def missing_rows(self) -> np.ndarray:
        """Rows with no value; the missing slice, when there is one, is always the last code."""
        if not self.missing:
            return np.zeros(len(self.codes), dtype=bool)
        return self.codes == len(self.labels) - 1


def _single(name: str, kind: str, codes: np.ndarray, labels: list[str], builtin: bool, missing: int,
            **extra) -> SliceColumn:
    if missing:
        labels = [*labels, MISSING]
    return SliceColumn(name, (name,), kind, codes, labels, [(v,) for v in labels], builtin, missing=missing, **extra)


# -- columns -> slices ------------------------------------------------------------------
def _number_text(numbers: np.ndarray) -> list[str]:
    """Shortest formatting (4 significant digits or more) that keeps distinct numbers distinct."""
    if np.all(numbers == np.round(numbers)) and np.all(np.abs(numbers) < 1e15):
        return [str(int(x)) for x in numbers]
    distinct = np.unique(numbers)
    for digits in range(4, 18):
        if len({f"{x:.{digits}g}" for x in distinct}) == len(distinct):
            return [f"{x:.{digits}g}" for x in numbers]
    return [repr(float(x)) for x in numbers]


def _edge_labels(edges: np.ndarray) -> list[str]:
    text = _number_text(edges)
    last = len(edges) - 2
    return [f"[{text[i]}, {text[i + 1]}{']' if i == last else ')'}" for i in range(len(edges) - 1)]


def _numeric_column(name: str, series: pd.Series, *, builtin: bool, min_slice_size: int) -> SliceColumn | str:
    values = series.to_numpy(dtype=float, na_value=np.nan)
    present = np.isfinite(values)
    distinct = np.unique(values[present])
    if len(distinct) == 0:
        return "no row has a value"
    integral = bool(np.all(distinct == np.round(distinct)))
    if not builtin and integral and len(distinct) == present.sum() and len(distinct) > 1:
        return "every value is distinct (an id?)"
    missing = int((~present).sum())
    if len(distinct) <= MAX_LEVELS:
        codes = np.full(len(values), len(distinct), dtype=np.int64)
        codes[present] = np.searchsorted(distinct, values[present])
        return _single(name, "level", codes, _number_text(distinct), builtin, missing)
    bins = int(np.clip(present.sum() // max(min_slice_size, 1), 2, QUANTILE_BINS))
    edges = np.unique(np.quantile(values[present], np.linspace(0, 1, bins + 1), method="lower"))
    if len(edges) < 3:
        # One value holds nearly every row, so the quantiles fall on it; split
        # the rows at that value instead of leaving a single bin.
        mode = distinct[np.argmax(np.bincount(np.searchsorted(distinct, values[present])))]
        split = distinct[1] if mode == distinct[0] else mode
        edges = np.array([distinct[0], split, distinct[-1]])
    codes = np.full(len(values), len(edges) - 1, dtype=np.int64)
    codes[present] = np.searchsorted(edges[1:-1], values[present], side="right")
    return _single(
        name, "quantile", codes, _edge_labels(edges), builtin, missing,
        bin_edges=[float(e) for e in edges],
        ranges=[[float(edges[i]), float(edges[i + 1])] for i in range(len(edges) - 1)],
    )


def _category_column(name: str, series: pd.Series, *, builtin: bool, notes: list[str]) -> SliceColumn | str:
    notna = series.notna().to_numpy()
    text = series.astype(object).where(notna, "").astype(str).str.strip()
    present = notna & (text != "").to_numpy()
    found, values = pd.factorize(text[present], sort=True)
    if len(values) == 0:
        return "no row has a value (all NaN or empty)"
    if not builtin and len(values) == present.sum() and len(values) > 1:
        return "every value is distinct (an id?)"
    order = [str(v) for v in values]
    if len(values) > MAX_CATEGORIES:
        counts = np.bincount(found, minlength=len(values))
        keep = np.zeros(len(values), dtype=bool)
        keep[np.argsort(-counts, kind="stable")[: MAX_CATEGORIES - 1]] = True
        remap = np.where(keep, np.cumsum(keep) - 1, keep.sum())
        found = remap[found]
        order = [v for v, k in zip(order, keep) if k] + [OTHER]
        notes.append(
            f"annotation {name!r} has {len(values)} values; the {MAX_CATEGORIES - 1} most frequent are "
            f"sliced and the rest share {OTHER!r}"
        )
    codes = np.full(len(series), len(order), dtype=np.int64)
    codes[present] = found
    return _single(name, "category", codes, order, builtin, int((~present).sum()))


def make_slice_column(name: str, series: pd.Series, *, builtin: bool, min_slice_size: int,
                      notes: list[str]) -> SliceColumn | str:
    """Slices of one annotation column, or the reason it was skipped."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        column = _numeric_column(name, series, builtin=builtin, min_slice_size=min_slice_size)
    else:
        column = _category_column(name, series, builtin=builtin, notes=notes)
    if isinstance(column, str):
        return column
    if len(column.labels) < 2:
        return f"it has one value ({column.labels[0]!r}) on every row"
    if column.missing:
        notes.append(
            f"annotation {name!r}: {column.missing} rows have no value (NaN or empty); they form the slice {MISSING!r}"
        )
    return column


def slice_columns(frame: pd.DataFrame, columns: list[str], *, min_slice_size: int,
                  notes: list[str]) -> tuple[list[SliceColumn], list[dict]]:
    """Slice columns for ``columns`` of ``frame``, and ``[{"column", "reason"}]`` for those skipped."""
    made, skipped = [], []
    for name in columns:
        result = make_slice_column(name, frame[name], builtin=name in schema.BUILTIN_ANNOTATIONS,
                                   min_slice_size=min_slice_size, notes=notes)
        if isinstance(result, str):
            skipped.append({"column": name, "reason": result})
            notes.append(f"annotation {name!r} skipped: {result}")
        else:
            made.append(result)
    return made, skipped


def intersect(a: SliceColumn, b: SliceColumn) -> SliceColumn:
    """The pair column of ``a`` and ``b``: one slice per value pair that occurs."""
    combined = a.codes * len(b.labels) + b.codes
    present, codes = np.unique(combined, return_inverse=True)
    parts = [(int(c // len(b.labels)), int(c % len(b.labels))) for c in present]
    return SliceColumn(
        f"{a.name} & {b.name}", a.columns + b.columns, "intersection", codes.astype(np.int64),
        [f"{a.labels[i]} & {b.labels[j]}" for i, j in parts],
        [(a.labels[i], b.labels[j]) for i, j in parts],
        a.builtin and b.builtin, parts=parts, missing=int((a.missing_rows() | b.missing_rows()).sum()),
    )



def stored_slice_column(frame: pd.DataFrame, metrics: dict, column: str) -> SliceColumn:
    """Recut the stored predictions into the slices ``metrics.json`` reports for ``column``.

    Views use it to find the rows of a slice. The stored slice values are the
    oracle: if this code bins differently from the version that wrote the
    metrics, it says so instead of returning the wrong rows.
    """
    slices = metrics.get("slices") or {}
    stored = next((c for c in slices.get("columns", []) if c["column"] == column), None)
    if stored is None:
        raise AuditError(f"metrics.json has no slice column {column!r}")
    size = int(slices.get("min_slice_size", 30))
    parts = []
    for name in stored["columns"]:
        made = make_slice_column(name, frame[name], builtin=name in schema.BUILTIN_ANNOTATIONS,
                                 min_slice_size=size, notes=[])
        if isinstance(made, str):
            raise AuditError(f"cannot rebuild the slices of {name!r}: {made}")
        parts.append(made)
    sliced = parts[0] if len(parts) == 1 else intersect(parts[0], parts[1])
    if not set(stored["values"]) <= set(sliced.labels):
        raise AuditError(
            f"the slices of {column!r} in metrics.json do not match this keras-audit's binning; "
            "recompute the metrics with this version"
        )
    return sliced

def pairs_enabled(slice_pairs: bool | None, columns: list[SliceColumn], notes: list[str]) -> bool:
    if slice_pairs is not None:
        return bool(slice_pairs)
    user = sum(1 for c in columns if not c.builtin)
    if user > AUTO_PAIRS_MAX:
        notes.append(
            f"slice intersections are off: {user} user annotation columns (more than {AUTO_PAIRS_MAX}); "
            "turn them on with --slice-pairs"
        )
        return False
    return True


# -- metrics per slice --------------------------------------------------------------------
def slice_counts(column: SliceColumn, y: np.ndarray, correct: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``(slices, C, 2)``: rows of each slice and true class that were wrong / right."""
    k = len(column.labels)
    keys = (column.codes * num_classes + y) * 2 + correct.astype(np.int64)
    return np.bincount(keys, minlength=k * num_classes * 2).reshape(k, num_classes, 2)


def _pairs(lo: np.ndarray, hi: np.ndarray) -> list[list[float]]:
    return np.stack([lo, hi], axis=-1).tolist()


def _below(right: np.ndarray, n: np.ndarray, parent_right: np.ndarray, parent_n: np.ndarray) -> np.ndarray:
    """Whether each intersection is worse than the other rows of its parent slice (interval below zero)."""
    _, hi = newcombe_difference(right, n, parent_right - right, parent_n - n)
    return (parent_n > n) & (hi < 0)


def slice_rows(column: SliceColumn, counts: np.ndarray, *, min_slice_size: int,
               parents: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict]:
    """One row per slice of ``column`` (see the module docstring for the fields).

    ``parents`` holds, for an intersection, the ``(slices, 2)`` arrays of
    ``(n, right)`` of its two single columns.
    """
    num_classes = counts.shape[1]
    n = counts.sum((1, 2))
    right = counts[:, :, 1].sum(1)
    rest_n, rest_right = n.sum() - n, right.sum() - right
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = right / n
        rest_accuracy = np.where(rest_n > 0, rest_right / np.maximum(rest_n, 1), np.nan)
        support = counts.sum(2)
        recall = np.where(support > 0, counts[:, :, 1] / np.maximum(support, 1), np.nan)
    acc_lo, acc_hi = wilson(right, n)
    gap_lo, gap_hi = newcombe_difference(right, n, rest_right, rest_n)
    gap_lo, gap_hi = np.where(rest_n > 0, gap_lo, np.nan), np.where(rest_n > 0, gap_hi, np.nan)
    flagged = excludes_zero(gap_lo, gap_hi)
    detailed = num_classes <= DETAIL_CLASSES
    if detailed:
        rec_lo, rec_hi = wilson(counts[:, :, 1], support)
    if column.parts is not None and parents is not None:
        part_a, part_b = np.array(column.parts).T
        below = (_below(right, n, parents[0][part_a, 1], parents[0][part_a, 0])
                 & _below(right, n, parents[1][part_b, 1], parents[1][part_b, 0]))

    rows = []
    for s, label in enumerate(column.labels):
        row = {
            "column": column.name,
            "value": label,
            "columns": list(column.columns),
            "values": list(column.values[s]),
            "n": int(n[s]),
            "accuracy": accuracy[s],
            "accuracy_ci": [acc_lo[s], acc_hi[s]],
            "error_rate": 1.0 - accuracy[s],
            "error_rate_ci": [1.0 - acc_hi[s], 1.0 - acc_lo[s]],
            "rest_accuracy": rest_accuracy[s],
            "gap": accuracy[s] - rest_accuracy[s],
            "gap_ci": [gap_lo[s], gap_hi[s]],
            "flagged": bool(flagged[s]),
            "too_small": bool(n[s] < min_slice_size),
        }
        if detailed:
            row["support"] = support[s]
            row["recall"] = recall[s]
            row["recall_ci"] = _pairs(rec_lo[s], rec_hi[s])
        if column.ranges is not None and s < len(column.ranges):
            row["range"] = column.ranges[s]
        if column.parts is not None and parents is not None:
            row["below_parents"] = bool(below[s])
        rows.append(row)
    return rows


# -- disparity ----------------------------------------------------------------------------------
def _rates(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy ``(..., V)`` and per-class recall ``(..., V, C)`` of counts ``(..., V, C, 2)``."""
    n = counts.sum((-2, -1))
    support = counts.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = counts[..., 1].sum(-1) / n
        recall = np.where(support > 0, counts[..., 1] / np.maximum(support, 1), np.nan)
    return accuracy, recall


def _extremes(recall: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``recall`` (V, K): the values with the highest and lowest recall, and the spread."""
    defined = np.isfinite(recall).sum(0) >= 2
    high = np.argmax(np.where(np.isfinite(recall), recall, -np.inf), axis=0)
    low = np.argmin(np.where(np.isfinite(recall), recall, np.inf), axis=0)
    cols = np.arange(recall.shape[1])
    return high, low, np.where(defined, recall[high, cols] - recall[low, cols], np.nan)


def disparity(column: SliceColumn, counts: np.ndarray, *, binary: bool, class_names: list[str],
              min_slice_size: int, bootstrap: int, seed: int, notes: list[str]) -> dict | None:
    """Disparity of one column over its values with at least ``min_slice_size`` rows (None if under two)."""
    n = counts.sum((1, 2))
    use = np.flatnonzero(n >= min_slice_size)
    if len(use) < 2:
        notes.append(
            f"annotation {column.name!r}: fewer than 2 values have {min_slice_size}+ examples; no disparity computed"
        )
        return None
    used = counts[use]
    labels = [column.labels[i] for i in use]
    classes = np.array([1]) if binary else np.arange(counts.shape[1])
    accuracy, recall = _rates(used)
    best, worst = int(np.argmax(accuracy)), int(np.argmin(accuracy))
    high, low, spread = _extremes(recall[:, classes])
    k_star = int(np.nanargmax(spread)) if np.isfinite(spread).any() else None

    gap_ci = ratio_ci = per_ci = None
    if bootstrap:
        cols = np.arange(len(classes))

        def statistic(draws: np.ndarray):
            acc, rec = _rates(draws.reshape(len(draws), *used.shape))
            rec = rec[:, :, classes]
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(acc[:, best] > 0, acc[:, worst] / acc[:, best], np.nan)
            return acc[:, best] - acc[:, worst], ratio, rec[:, high, cols] - rec[:, low, cols]

        gap_s, ratio_s, per_s = bootstrap_statistic(
            used.reshape(len(use), -1), bootstrap, rng_for(seed, f"disparity:{column.name}"), statistic
        )
        gap_ci, ratio_ci = list(percentile_interval(gap_s)), list(percentile_interval(ratio_s))
        per_lo, per_hi = percentile_interval(per_s)
        per_ci = np.stack([per_lo, per_hi], axis=-1)
        per_ci[~np.isfinite(spread)] = np.nan

    out = {
        "values_compared": labels,
        "best": labels[best],
        "worst": labels[worst],
        "accuracy_gap": accuracy[best] - accuracy[worst],
        "accuracy_gap_ci": gap_ci,
        "accuracy_ratio": accuracy[worst] / accuracy[best] if accuracy[best] > 0 else None,
        "accuracy_ratio_ci": ratio_ci,
        "equal_opportunity_gap": None if k_star is None else spread[k_star],
        "equal_opportunity_gap_ci": None if k_star is None or per_ci is None else per_ci[k_star].tolist(),
        "equal_opportunity_class": None if k_star is None else class_names[int(classes[k_star])],
        "equal_opportunity_values": None if k_star is None else [labels[low[k_star]], labels[high[k_star]]],
    }
    if len(classes) <= DETAIL_CLASSES:
        out["recall_gap_per_class"] = [
            {"class": class_names[int(c)], "gap": spread[k],
             "ci": None if per_ci is None else per_ci[k].tolist(),
             "lowest": labels[low[k]] if np.isfinite(spread[k]) else None,
             "highest": labels[high[k]] if np.isfinite(spread[k]) else None}
            for k, c in enumerate(classes)
        ]
    return out


# -- the whole slices section ----------------------------------------------------------------
class _SectionBuilder:
    """Accumulates rows, column descriptions and parent counts while columns are added in order;
    intersections need their parents' counts, so singles go first."""

    def __init__(self, y: np.ndarray, correct: np.ndarray, class_names: list[str], *, min_slice_size: int,
                 bootstrap: int, seed: int, notes: list[str]):
        self.y, self.correct, self.class_names = y, correct, class_names
        self.min_slice_size, self.bootstrap, self.seed, self.notes = min_slice_size, bootstrap, seed, notes
        self.rows: list[dict] = []
        self.described: list[dict] = []
        self.parent_counts: dict[str, np.ndarray] = {}

    def add(self, column: SliceColumn, parents=None) -> list[dict]:
        num_classes = len(self.class_names)
        counts = slice_counts(column, self.y, self.correct, num_classes)
        made = slice_rows(column, counts, min_slice_size=self.min_slice_size, parents=parents)
        self.rows.extend(made)
        self.described.append({
            "column": column.name,
            "columns": list(column.columns),
            "kind": column.kind,
            "builtin": column.builtin,
            "values": column.labels,
            "bin_edges": column.bin_edges,
            "missing": column.missing,
            # A note for every intersection without two large values would bury the
            # other notes; the count of small intersection slices says it once.
            "disparity": disparity(column, counts, binary=num_classes == 2, class_names=self.class_names,
                                   min_slice_size=self.min_slice_size, bootstrap=self.bootstrap, seed=self.seed,
                                   notes=self.notes if column.kind != "intersection" else []),
        })
        self.parent_counts[column.name] = np.stack([counts.sum((1, 2)), counts[:, :, 1].sum(1)], axis=1)
        return made

    def add_singles(self, singles: list[SliceColumn]) -> None:
        for column in singles:
            made = self.add(column)
            small = sum(r["too_small"] for r in made)
            if small:
                self.notes.append(
                    f"annotation {column.name!r}: {small} of {len(made)} slices have fewer than "
                    f"{self.min_slice_size} examples (kept, marked too_small)"
                )

    def add_pairs(self, singles: list[SliceColumn]) -> None:
        before = len(self.rows)
        for i, a in enumerate(singles):
            for b in singles[i + 1:]:
                self.add(intersect(a, b), (self.parent_counts[a.name], self.parent_counts[b.name]))
        small = sum(r["too_small"] for r in self.rows[before:])
        if small:
            self.notes.append(
                f"{small} of {len(self.rows) - before} intersection slices have fewer than {self.min_slice_size} "
                "examples (kept, marked too_small)"
            )


def _section(built: _SectionBuilder, skipped: list[dict], pairs: bool) -> dict:
    bootstrap = built.bootstrap
    tested = sum(1 for r in built.rows if np.isfinite(r["gap_ci"][0]))
    flagged = sum(r["flagged"] for r in built.rows)
    return {
        "method": {
            "accuracy_ci": "wilson",
            "gap_ci": "newcombe hybrid score (slice vs rest)",
            "disparity_ci": f"stratified bootstrap percentile, {bootstrap} resamples, pair fixed"
            if bootstrap else None,
            "level": 0.95,
            "bootstrap": bootstrap,
            "seed": built.seed,
        },
        "min_slice_size": built.min_slice_size,
        "pairs": pairs,
        "columns": built.described,
        "skipped": skipped,
        "rows": built.rows,
        "summary": {"tested": tested, "flagged": flagged, "expected_flagged_by_chance": round(0.05 * tested, 1)},
    }


def slice_metrics(frame: pd.DataFrame, y: np.ndarray, correct: np.ndarray, class_names: list[str], *,
                  columns: list[str], min_slice_size: int, slice_pairs: bool | None, bootstrap: int,
                  seed: int, notes: list[str]) -> tuple[dict, list[SliceColumn]]:
    """The ``slices`` section of metrics.json, and the single-column slicings (for thresholds)."""
    singles, skipped = slice_columns(frame, columns, min_slice_size=min_slice_size, notes=notes)
    pairs = pairs_enabled(slice_pairs, singles, notes) and len(singles) >= 2
    built = _SectionBuilder(y, correct, class_names, min_slice_size=min_slice_size, bootstrap=bootstrap,
                            seed=seed, notes=notes)
    built.add_singles(singles)
    if pairs:
        built.add_pairs(singles)
    section = _section(built, skipped, pairs)
    if not bootstrap:
        notes.append("bootstrap is off (--bootstrap 0): disparity and balanced-accuracy intervals are not computed")
    return section, singles


# -- per-row membership (slices.parquet) ---------------------------------------------------------
def slice_membership(predictions: pd.DataFrame, metrics: dict) -> pd.DataFrame:
    """Which slice of ``metrics`` (metrics.json) every row of ``predictions`` falls in: slices.parquet.

    Columns: ``index`` (the example index), then one per entry of
    ``metrics["slices"]["columns"]`` under its name (``"a & b"`` for a pair),
    holding the slice value as metrics.json names it (the quantile bin, the
    crossed label), null for rows in no reported slice: rows without a label,
    which metrics leave out. Rows follow ``predictions``.

    The slices are recut from the labelled rows, as :func:`compute_metrics` cut
    them (quantile edges depend on which rows are present); the count of every
    slice is then checked against metrics.json's ``n``, so a store never holds a
    membership that disagrees with its own metrics.

    Raises:
        AuditError: the predictions do not reproduce metrics.json's slices.
    """
    labelled = labelled_positions(predictions)
    kept = predictions.iloc[labelled].reset_index(drop=True)
    out = {schema.SLICE_INDEX_COLUMN: predictions["index"].to_numpy(np.int64)}
    sizes = {(r["column"], r["value"]): r["n"] for r in (metrics.get("slices") or {}).get("rows") or []}
    # compute_metrics builds a plain dict; schema.Metrics is the store's typed view of the same layout
    for name in schema.slice_column_names(cast(schema.Metrics, metrics)):
        row_labels = stored_slice_column(kept, metrics, name).row_labels()
        found = dict(zip(*np.unique(row_labels.astype(str), return_counts=True)))
        wrong = [v for (c, v), n in sizes.items() if c == name and found.get(v, 0) != n]
        if wrong:
            raise AuditError(
                f"slice {name} = {wrong[0]!r} does not have the {sizes[(name, wrong[0])]} rows metrics.json "
                "reports; recompute the metrics from these predictions"
            )
        labels = np.full(len(predictions), None, dtype=object)
        labels[labelled] = row_labels
        out[name] = pd.array(labels, dtype="string")
    return pd.DataFrame(out)
