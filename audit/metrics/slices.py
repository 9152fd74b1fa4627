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
    ``accuracy_gap`` (best minus worst value), ``accuracy_ratio`` (worst /
    best), ``equal_opportunity_gap`` (largest spread in one class's recall
    between values; the positive class's recall for a binary model), each with
    a stratified bootstrap interval over (value x true class x correct) counts.
    The sample maximum of a spread is biased upward when values are alike, and
    so is its interval; read a gap whose interval nears zero as "no evidence".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from audit.metrics.intervals import (
    bootstrap_statistic,
    excludes_zero,
    newcombe_difference,
    percentile_interval,
    rng_for,
    wilson,
)
from audit.store import schema

QUANTILE_BINS = 5
MAX_LEVELS = 10
MAX_CATEGORIES = 50
AUTO_PAIRS_MAX = 4
DETAIL_CLASSES = 50
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
    for digits in range(4, 18):
        text = [f"{x:.{digits}g}" for x in numbers]
        if len(set(text)) == len(text):
            return text
    return [repr(float(x)) for x in numbers]


def _edge_labels(edges: np.ndarray) -> list[str]:
    text = _number_text(edges)
    last = len(edges) - 2
    return [f"[{text[i]}, {text[i + 1]}{']' if i == last else ')'}" for i in range(len(edges) - 1)]


def _codes(values: np.ndarray, present: np.ndarray, order: list, fallback: int | None = None) -> np.ndarray:
    """Code of each present value by its position in ``order``; absent rows get ``len(order)`` (missing)."""
    lookup = {v: i for i, v in enumerate(order)}
    codes = np.full(len(values), len(order), dtype=np.int64)
    codes[present] = [lookup.get(v, fallback) for v in values[present]]
    return codes


def make_slice_column(name: str, series: pd.Series, *, builtin: bool, min_slice_size: int,
                      notes: list[str]) -> SliceColumn | str:
    """Slices of one annotation column, or the reason it was skipped."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
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
            codes = _codes(values, present, list(distinct))
            column = _single(name, "level", codes, _number_text(distinct), builtin, missing)
        else:
            bins = int(np.clip(present.sum() // max(min_slice_size, 1), 2, QUANTILE_BINS))
            edges = np.unique(np.quantile(values[present], np.linspace(0, 1, bins + 1), method="lower"))
            codes = np.full(len(values), len(edges) - 1, dtype=np.int64)
            codes[present] = np.searchsorted(edges[1:-1], values[present], side="right")
            column = _single(
                name, "quantile", codes, _edge_labels(edges), builtin, missing,
                bin_edges=[float(e) for e in edges],
                ranges=[[float(edges[i]), float(edges[i + 1])] for i in range(len(edges) - 1)],
            )
    else:
        raw = series.astype(object).to_numpy()
        present = ~pd.isna(series).to_numpy()
        text = np.array([str(v).strip() if ok else "" for v, ok in zip(raw, present)], dtype=object)
        present &= text != ""
        values, counts = np.unique(text[present].astype(str), return_counts=True)
        if len(values) == 0:
            return "no row has a value (all NaN or empty)"
        if not builtin and len(values) == present.sum() and len(values) > 1:
            return "every value is distinct (an id?)"
        order, other = [str(v) for v in values], None
        if len(values) > MAX_CATEGORIES:
            keep = set(values[np.argsort(-counts, kind="stable")[: MAX_CATEGORIES - 1]])
            order = [str(v) for v in values if v in keep] + [OTHER]
            other = len(order) - 1
            notes.append(
                f"annotation {name!r} has {len(values)} values; the {MAX_CATEGORIES - 1} most frequent are "
                f"sliced and the rest share {OTHER!r}"
            )
        codes = _codes(text.astype(str), present, order, other)
        column = _single(name, "category", codes, list(order), builtin, int((~present).sum()))

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
def _spread(values: np.ndarray, axis: int) -> np.ndarray:
    """max - min over ``axis`` ignoring NaN; NaN when fewer than two values are defined."""
    defined = np.isfinite(values).sum(axis=axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.nanmax(values, axis=axis) - np.nanmin(values, axis=axis)
    return np.where(defined >= 2, spread, np.nan)


def _disparity_statistics(counts: np.ndarray, classes: np.ndarray):
    """Accuracy gap, ratio, per-class recall spread and their max, from counts ``(..., values, C, 2)``."""
    n = counts.sum((-2, -1))
    accuracy = counts[..., 1].sum(-1) / n
    best, worst = accuracy.max(-1), accuracy.min(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(best > 0, worst / best, np.nan)
        support = counts.sum(-1)[..., classes]
        recall = np.where(support > 0, counts[..., classes, 1] / np.maximum(support, 1), np.nan)
    per_class = _spread(recall, axis=-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        eo = np.nanmax(per_class, axis=-1)
    return best - worst, ratio, eo, per_class


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
    classes = np.array([1]) if binary else np.arange(counts.shape[1])
    gap, ratio, eo, per_class = _disparity_statistics(used, classes)
    accuracy = used[:, :, 1].sum(1) / n[use]

    cis: list = [None, None, None, None]
    if bootstrap:
        samples = bootstrap_statistic(used.reshape(len(use), -1), bootstrap, rng_for(seed, f"disparity:{column.name}"),
                                      lambda d: _disparity_statistics(d.reshape(len(d), *used.shape), classes))
        cis = [list(percentile_interval(s)) for s in samples]
        cis[3] = _pairs(*cis[3]) if len(classes) <= DETAIL_CLASSES else None

    eo_class = None
    if np.isfinite(per_class).any():
        eo_class = class_names[int(classes[np.nanargmax(per_class)])]
    out = {
        "values_compared": [column.labels[i] for i in use],
        "best": column.labels[use[int(np.argmax(accuracy))]],
        "worst": column.labels[use[int(np.argmin(accuracy))]],
        "accuracy_gap": gap,
        "accuracy_gap_ci": cis[0],
        "accuracy_ratio": ratio,
        "accuracy_ratio_ci": cis[1],
        "equal_opportunity_gap": eo,
        "equal_opportunity_gap_ci": cis[2],
        "equal_opportunity_class": eo_class,
    }
    if len(classes) <= DETAIL_CLASSES:
        out["recall_gap_per_class"] = [
            {"class": class_names[int(c)], "gap": per_class[k],
             "ci": cis[3][k] if cis[3] is not None else None}
            for k, c in enumerate(classes)
        ]
    return out


# -- the whole slices section ----------------------------------------------------------------
def slice_metrics(frame: pd.DataFrame, y: np.ndarray, correct: np.ndarray, class_names: list[str], *,
                  columns: list[str], min_slice_size: int, slice_pairs: bool | None, bootstrap: int,
                  seed: int, notes: list[str]) -> tuple[dict, list[SliceColumn]]:
    """The ``slices`` section of metrics.json, and the single-column slicings (for thresholds)."""
    num_classes = len(class_names)
    binary = num_classes == 2
    singles, skipped = slice_columns(frame, columns, min_slice_size=min_slice_size, notes=notes)
    pairs = pairs_enabled(slice_pairs, singles, notes) and len(singles) >= 2

    rows: list[dict] = []
    described: list[dict] = []
    parent_counts: dict[str, np.ndarray] = {}

    def add(column: SliceColumn, parents=None) -> list[dict]:
        counts = slice_counts(column, y, correct, num_classes)
        made = slice_rows(column, counts, min_slice_size=min_slice_size, parents=parents)
        rows.extend(made)
        described.append({
            "column": column.name,
            "columns": list(column.columns),
            "kind": column.kind,
            "builtin": column.builtin,
            "values": column.labels,
            "bin_edges": column.bin_edges,
            "missing": column.missing,
            "disparity": disparity(column, counts, binary=binary, class_names=class_names,
                                   min_slice_size=min_slice_size, bootstrap=bootstrap, seed=seed,
                                   notes=notes if column.kind != "intersection" else []),
        })
        parent_counts[column.name] = np.stack([counts.sum((1, 2)), counts[:, :, 1].sum(1)], axis=1)
        return made

    for column in singles:
        made = add(column)
        small = sum(r["too_small"] for r in made)
        if small:
            notes.append(
                f"annotation {column.name!r}: {small} of {len(made)} slices have fewer than {min_slice_size} "
                "examples (kept, marked too_small)"
            )
    if pairs:
        before = len(rows)
        for i, a in enumerate(singles):
            for b in singles[i + 1:]:
                add(intersect(a, b), (parent_counts[a.name], parent_counts[b.name]))
        small = sum(r["too_small"] for r in rows[before:])
        if small:
            notes.append(
                f"{small} of {len(rows) - before} intersection slices have fewer than {min_slice_size} "
                "examples (kept, marked too_small)"
            )

    tested = sum(1 for r in rows if np.isfinite(r["gap_ci"][0]))
    flagged = sum(r["flagged"] for r in rows)
    section = {
        "method": {
            "accuracy_ci": "wilson",
            "gap_ci": "newcombe hybrid score (slice vs rest)",
            "disparity_ci": f"stratified bootstrap percentile, {bootstrap} resamples" if bootstrap else None,
            "level": 0.95,
            "bootstrap": bootstrap,
            "seed": seed,
        },
        "min_slice_size": min_slice_size,
        "pairs": pairs,
        "columns": described,
        "skipped": skipped,
        "rows": rows,
        "summary": {"tested": tested, "flagged": flagged, "expected_flagged_by_chance": round(0.05 * tested, 1)},
    }
    if not bootstrap:
        notes.append("bootstrap is off (--bootstrap 0): disparity and balanced-accuracy intervals are not computed")
    return section, singles


def worst_slices(metrics: dict, k: int = 5, *, intersections: bool = False) -> list[dict]:
    """The ``k`` flagged slices that are worse than the rest, most negative gap first.

    Intersections are left out unless ``intersections`` is true; then only
    those ``below_parents`` are included (a pair that is merely as bad as one of
    its columns repeats that column).

    Returns:
        dicts with ``column, value, n, accuracy, ci, gap, gap_ci, too_small``.
    """
    rows = (metrics.get("slices") or {}).get("rows") or []
    chosen = [
        r for r in rows
        if r.get("flagged") and r.get("gap") is not None and r["gap"] < 0
        and (len(r.get("columns", [])) < 2 or (intersections and r.get("below_parents")))
    ]
    chosen.sort(key=lambda r: (r["gap"], r["gap_ci"][1] if r["gap_ci"][1] is not None else 0.0))
    return [
        {"column": r["column"], "value": r["value"], "n": r["n"], "accuracy": r["accuracy"],
         "ci": r["accuracy_ci"], "gap": r["gap"], "gap_ci": r["gap_ci"], "too_small": r["too_small"]}
        for r in chosen[:k]
    ]
