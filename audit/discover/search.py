"""Worst slices over many discrete columns: a SliceLine-style lattice search.

SliceLine (Sagadeeva and Boehm, SIGMOD 2021) enumerates conjunctions of
column = value predicates level by level, pruning a candidate when its support
or its errors cannot be enough. Here, up to ``MAX_LEVEL`` (3) predicates:

* columns are binned exactly as the slices bin them
  (:func:`audit.metrics.slices.make_slice_column`), so a predicate's value is
  the slice label that ``slices.parquet`` holds (``"[0.2, 0.4)"``, ``"no"``,
  ``"(missing)"``) and a search group's rows are the rows whose slice values
  match every predicate;
* a candidate at level l is formed only when all its l parents at level l - 1
  were evaluated (support >= ``min_slice_size`` and at least one error), since
  a child has no more rows and no more errors than any parent;
* error upper bound: a child has at most ``e = min(parent errors)`` errors and
  at least ``min_slice_size`` rows, so its error rate is at most
  ``min(1, e / min_slice_size)``; when that is not above the overall error
  rate the child cannot be a worse slice and is pruned unevaluated;
* a child with exactly a parent's rows is the same slice and is dropped;
* reported are the ``MAX_GROUPS`` strongest worse slices, less any conjunction
  that refines one already reported without a distinguishable accuracy (it is
  still counted among the tested).

Every evaluated slice gets the slices' intervals, a pooled score-test p-value
(:mod:`audit.discover.fdr`), SliceLine's score
``alpha (e_S / e - 1) - (1 - alpha) (n / |S| - 1)`` (alpha = ``ALPHA``), and a
BH q-value over the whole family: everything evaluated plus every candidate
pruned by the error bound (as p = 1), so pruning never lowers a q-value.

Why not the ``sliceline`` package (0.3): it returns only its top-k by score,
pruned against the running top-k, so the family of slices it looked at (which
BH needs) is not available, nor are the counts of any slice outside the top-k;
it also sets its logger's level globally on construction and warns on every
construction without numba. The lattice below is short because every column
combination is counted with one ``bincount``; tests check its top slices and
scores against ``sliceline``'s on a planted example.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from audit.discover import fdr
from audit.metrics.slices import SliceColumn, make_slice_column
from audit.store import schema

MAX_LEVEL = 3
ALPHA = 0.95  # SliceLine's default weight of the error term
MAX_GROUPS = 20  # worse slices reported, strongest first (all count in the q-values)


def search_columns(frame: pd.DataFrame, columns, *, min_slice_size: int) -> list[SliceColumn]:
    """The binned columns to search (skipped ones, as the slices skip them, are left out)."""
    made = []
    for name in columns:
        column = make_slice_column(name, frame[name], builtin=name in schema.BUILTIN_ANNOTATIONS,
                                   min_slice_size=min_slice_size, notes=[])
        if not isinstance(column, str):
            made.append(column)
    return made


def _counts(columns: list[SliceColumn], combo: tuple[int, ...], wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and errors of every value combination of ``combo``, shaped by the columns' value counts."""
    shape = tuple(len(columns[c].labels) for c in combo)
    key = np.zeros(len(wrong), dtype=np.int64)
    for c in combo:
        key = key * len(columns[c].labels) + columns[c].codes
    size = int(np.prod(shape))
    n = np.bincount(key, minlength=size).reshape(shape)
    errors = np.bincount(key, weights=wrong, minlength=size).reshape(shape).astype(np.int64)
    return n, errors


def _parent_bounds(level_tables: dict, combo: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over the parents of each cell of ``combo``: all valid, min rows, min errors."""
    valid: np.ndarray | None = None
    n_ub: np.ndarray | None = None
    e_ub: np.ndarray | None = None
    for drop in range(len(combo)):
        parent = combo[:drop] + combo[drop + 1:]
        table = level_tables.get(parent)
        if table is None:
            return np.zeros(1, bool), np.zeros(1), np.zeros(1)
        expand = tuple(np.expand_dims(a, drop) for a in (table["valid"], table["n"], table["errors"]))
        valid = expand[0] if valid is None else valid & expand[0]
        n_ub = expand[1] if n_ub is None else np.minimum(n_ub, expand[1])
        e_ub = expand[2] if e_ub is None else np.minimum(e_ub, expand[2])
    assert valid is not None and n_ub is not None and e_ub is not None  # combo has at least two columns
    return valid, n_ub, e_ub


def lattice(columns: list[SliceColumn], wrong: np.ndarray, *, min_slice_size: int,
            max_level: int = MAX_LEVEL) -> tuple[list[tuple[tuple[int, ...], tuple[int, ...], int, int]], int]:
    """Evaluated slices ``(columns, values, n, errors)`` (column and value codes), and how many
    candidates the error bound pruned unevaluated."""
    overall = float(wrong.mean()) if len(wrong) else 0.0
    tables: dict[tuple[int, ...], dict] = {}
    evaluated: list[tuple[tuple[int, ...], tuple[int, ...], int, int]] = []
    pruned = 0
    for level in range(1, max_level + 1):
        for combo in combinations(range(len(columns)), level):
            shape = tuple(len(columns[c].labels) for c in combo)
            candidate, n_ub = np.ones(shape, dtype=bool), np.full(shape, np.inf)
            if level > 1:
                valid, n_ub, e_ub = _parent_bounds(tables, combo)
                candidate = np.broadcast_to(valid & (n_ub >= min_slice_size), shape)
                worse = np.minimum(1.0, e_ub / max(min_slice_size, 1)) > overall
                pruned += int((candidate & ~worse).sum())
                candidate = candidate & worse
                if not candidate.any():
                    continue  # no cell can be a worse slice: the rows are never counted
            n, errors = _counts(columns, combo, wrong)
            keep = candidate & (n >= min_slice_size) & (n < n_ub)  # n == a parent's n: that parent's rows
            tables[combo] = {"n": n, "errors": errors, "valid": keep & (errors > 0)}
            evaluated.extend((combo, tuple(int(i) for i in cell), int(n[cell]), int(errors[cell]))
                             for cell in zip(*np.nonzero(keep)))
    return evaluated, pruned


def sliceline_score(n, errors, total_n: int, total_errors: int, alpha: float = ALPHA) -> np.ndarray:
    """SliceLine's score of slices of ``n`` rows with ``errors`` errors."""
    n, errors = np.asarray(n, dtype=float), np.asarray(errors, dtype=float)
    average = total_errors / total_n
    with np.errstate(invalid="ignore", divide="ignore"):
        return alpha * ((errors / n) / average - 1) - (1 - alpha) * (total_n / n - 1)


def predicate_of(columns: list[SliceColumn], combo, values) -> dict[str, str]:
    return {columns[c].name: columns[c].labels[v] for c, v in zip(combo, values)}


def members(columns: list[SliceColumn], predicate: dict[str, str]) -> np.ndarray:
    """Rows (boolean mask) where every ``column = value`` of ``predicate`` holds."""
    by_name = {c.name: c for c in columns}
    mask = np.ones(len(columns[0].codes), dtype=bool)
    for name, value in predicate.items():
        column = by_name[name]
        mask &= column.codes == column.labels.index(value)
    return mask


def slice_search(frame: pd.DataFrame, wrong: np.ndarray, columns, *, min_slice_size: int = 30,
                 max_level: int = MAX_LEVEL) -> tuple[list[dict], list[SliceColumn], dict]:
    """The worst conjunctions of up to ``max_level`` column values.

    Returns:
        ``discovered`` entries (method "search", predicate set; the ``MAX_GROUPS``
        strongest worse slices), the binned columns (for :func:`members`), and the
        method's parameters and counts.
    """
    wrong = np.asarray(wrong, dtype=bool)
    binned = search_columns(frame, columns, min_slice_size=min_slice_size)
    evaluated, pruned = lattice(binned, wrong, min_slice_size=min_slice_size, max_level=max_level)
    info = {"parameters": {"max_level": max_level, "alpha": ALPHA, "min_slice_size": min_slice_size,
                           "columns": [c.name for c in binned], "test": "pooled score test against the rest"},
            "evaluated": len(evaluated), "pruned_by_error_bound": pruned, "tested": len(evaluated) + pruned}
    if not evaluated:
        return [], binned, info
    n = np.array([e[2] for e in evaluated])
    errors = np.array([e[3] for e in evaluated])
    total_n, total_errors = len(wrong), int(wrong.sum())
    p = fdr.mantel_haenszel_p(errors[:, None], n[:, None], [total_errors], [total_n])
    q = fdr.bh_qvalues(p, total=len(evaluated) + pruned)
    stats = fdr.group_statistics(errors, n, total_errors, total_n)
    score = sliceline_score(n, errors, total_n, total_errors)
    worse = np.flatnonzero(stats["gap"] < 0)
    order, predicates = _reported(worse[np.lexsort((stats["gap"][worse], q[worse]))], evaluated, binned, stats)
    entries = fdr.group_entries({k: v[order] for k, v in stats.items()}, p[order], q[order], method="search",
                                groups=range(len(order)), descriptions=[describe(pr) for pr in predicates],
                                min_slice_size=min_slice_size)
    for entry, predicate, i in zip(entries, predicates, order):
        entry["predicate"], entry["score"] = predicate, float(score[i])
    return entries, binned, info


def _reported(ranked: np.ndarray, evaluated: list, binned: list[SliceColumn],
              stats: dict[str, np.ndarray]) -> tuple[np.ndarray, list[dict]]:
    """The first ``MAX_GROUPS`` of ``ranked``, leaving out a conjunction that refines a slice
    already reported and whose accuracy interval holds that slice's accuracy (no new finding)."""
    kept: list[int] = []
    predicates: list[dict] = []
    for i in ranked:
        predicate = predicate_of(binned, *evaluated[i][:2])
        lo, hi = stats["accuracy_lo"][i], stats["accuracy_hi"][i]
        if any(predicate.items() >= earlier.items() and lo <= stats["accuracy"][j] <= hi
               for j, earlier in zip(kept, predicates)):
            continue
        kept.append(int(i))
        predicates.append(predicate)
        if len(kept) == MAX_GROUPS:
            break
    return np.array(kept, dtype=np.int64), predicates


def describe(predicate: dict[str, str]) -> str:
    return " & ".join(f"{k} = {v}" for k, v in predicate.items())
