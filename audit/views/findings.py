"""The strongest finding of a run: the one home of "what is most wrong", for every view.

Annotated slices (flagged in metrics.json) and discovered groups (``significant`` entries of
metrics.json ``discovered``) compete on the same footing: the one that surely accounts for the
most mistakes beyond the rest's rate wins, ``n * -gap_ci[1]`` (the drop at the near end of its
95% interval, times its size). Ranking by the interval alone would lead with the narrowest
conjunction that happens to be worst (on the demo, 46 examples of ``cue_agrees = no &
background = dark & contrast = [0.02, 0.12)`` dropping 64 points) instead of the cause that
explains most of the errors (325 examples of ``cue_agrees = no`` dropping 31): the headline
should name what to fix first. A large but uncertain drop still loses to a sure one.
Only differences that the stored tests call real take part:
flagged single-annotation slices with at least ``min_slice_size`` examples, and significant groups.
Pairs of annotation values stay out: they are many (every pair of every two columns), untested for
multiplicity, and the report calls them exploratory; conjunctions compete through discovery's
``search`` groups, whose q-values account for everything searched.

>>> drop_sentence(-0.3104, [-0.372, -0.261], "where cue_agrees = no", 325)
'Accuracy drops 31 points (95% CI 26–37) where cue_agrees = no: 325 examples'
>>> drop_sentence(-0.052, [-0.081, -0.024], "where site = b", 1)
'Accuracy drops 5.2 points (95% CI 2.4–8.1) where site = b: 1 example'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audit.errors import StoreError
from audit.store import schema

WORST_SHOWN = 8  # members shown beside the sentence: the issue asks for 6-8 thumbnails


@dataclass(frozen=True)
class Finding:
    """The strongest finding: what every view puts first.

    ``gap`` is the group's accuracy minus the rest's (negative: worse), ``gap_ci`` its 95%
    Newcombe interval; ``members`` the example indices (the predictions' ``index``) inside it,
    ascending; ``worst`` up to eight of them to show, mistakes first, most confident first;
    ``filter`` what a link into the app's gallery needs: ``{"column": c, "value": v}`` (a slice
    column of slices.parquet, or a discovery column of predictions.parquet) or
    ``{"predicate": {column: value}}`` (a searched conjunction of annotations).
    """

    kind: str  # "slice" | "discovered"
    sentence: str
    label: str
    n: int
    accuracy: float
    rest_accuracy: float
    gap: float
    gap_ci: tuple[float, float]
    q_value: float | None
    members: np.ndarray = field(repr=False)
    worst: np.ndarray = field(repr=False)
    heatmap: np.ndarray | None = field(repr=False)
    filter: dict[str, Any] = field(default_factory=dict)
    method: str | None = None  # discovery method ("errors", "strategy", "search"); None for a slice


# -- words ---------------------------------------------------------------------------------------
def _round_half_up(x: float, digits: int) -> float:
    scale = 10 ** digits
    return math.floor(x * scale + 0.5) / scale


def points(share: float, digits: int) -> str:
    """A share (0.31) as percentage points ("31"), rounded half up, to ``digits`` decimals."""
    value = _round_half_up(share * 100, digits)
    return f"{value:.{digits}f}"


def drop_sentence(gap: float, gap_ci, where: str, n: int) -> str:
    """"Accuracy drops 31 points (95% CI 26–37) where …: 325 examples" for a negative ``gap``.

    The drop is ``-gap`` in percentage points and its interval ``[-hi, -lo]``; drops under ten
    points keep one decimal, so a 4-point drop never reads "drops 4 points (95% CI 0–8)".
    """
    drop, low, high = -gap, -gap_ci[1], -gap_ci[0]
    digits = 0 if _round_half_up(drop * 100, 0) >= 10 else 1
    examples = "example" if n == 1 else "examples"
    return (f"Accuracy drops {points(drop, digits)} points (95% CI {points(low, digits)}–{points(high, digits)}) "
            f"{where}: {n} {examples}")


def predicate_label(predicate: dict) -> str:
    """``{"a": "x", "b": 1}`` reads "a = x & b = 1"."""
    return " & ".join(f"{column} = {value}" for column, value in predicate.items())


def slice_label(metrics: Mapping[str, Any], column: str, value: str) -> str:
    """A slice in words: "cue_agrees = no", and for a pair "cue_agrees = no & background = dark" (each
    value beside its annotation, which ``"a & b" = "x & y"`` leaves to the reader)."""
    for row in (metrics.get("slices") or {}).get("rows") or []:
        if row.get("column") == column and row.get("value") == value:
            return _slice_label(row)
    return f"{column} = {value}"


def _slice_label(row: dict) -> str:
    columns, values = row.get("columns") or [row["column"]], row.get("values") or [row["value"]]
    if len(columns) != len(values):  # an older store: the row's own names are all there is
        return f"{row['column']} = {row['value']}"
    return predicate_label(dict(zip(columns, values)))


def _group_words(entry: dict) -> tuple[str, str]:
    """(label, the sentence's "where/in …" phrase) of a discovered group."""
    if entry.get("predicate"):
        label = predicate_label(entry["predicate"])
        return label, f"where {label}"
    described = str(entry.get("description") or "").strip()
    label = described or f"{entry.get('method')} group {entry.get('group')}"
    return label, f"in a discovered group ({label})"


# -- candidates ----------------------------------------------------------------------------------
def _finite_upper(entry: dict) -> float | None:
    ci = entry.get("gap_ci") or [None, None]
    gap = entry.get("gap")
    if gap is None or ci[0] is None or ci[1] is None:
        return None
    if not all(math.isfinite(float(v)) for v in (gap, ci[0], ci[1])):
        return None
    return float(ci[1]) if ci[1] < 0 else None


def competing_slices(metrics: Mapping[str, Any]) -> list[dict]:
    """Flagged, large-enough single-annotation slices worse than the rest."""
    rows = (metrics.get("slices") or {}).get("rows") or []
    return [
        r for r in rows
        if r.get("flagged") and not r.get("too_small") and _finite_upper(r) is not None
        and len(r.get("columns") or [r.get("column")]) < 2
    ]


def competing_groups(groups: list[dict]) -> list[dict]:
    """Significant discovered groups worse than the rest."""
    return [g for g in groups if g.get("significant") and _finite_upper(g) is not None]


# -- members -------------------------------------------------------------------------------------
def _slice_members(reader, row: dict) -> np.ndarray:
    try:
        return reader.slice_rows(row["column"], row["value"])
    except StoreError:  # a store older than slices.parquet: the sentence stands without pictures
        return np.zeros(0, np.int64)


def _group_members(reader, entry: dict) -> np.ndarray:
    try:
        return reader.discovered_members(entry)
    except StoreError:  # the entry names a column the store lacks: the sentence stands without pictures
        return np.zeros(0, np.int64)


def worst_members(predictions, members: np.ndarray, k: int = WORST_SHOWN) -> np.ndarray:
    """Up to ``k`` of ``members`` to show: mistakes first, most confident first, then by index."""
    rows = predictions[predictions["index"].isin(np.asarray(members))]
    ordered = rows.sort_values(["correct", "confidence", "index"], ascending=[True, False, True], kind="stable")
    return ordered["index"].to_numpy(np.int64)[:k]


def _mean_map(reader, members: np.ndarray) -> np.ndarray | None:
    """The mean Grad-CAM map of the members that have one (first stored method otherwise)."""
    methods = [m for m in reader.heatmap_methods if m != "activations"]
    if not methods:
        return None
    method = "gradcam" if "gradcam" in methods else methods[0]
    maps = [reader.heatmap(method, int(i)) for i in members
            if reader.has_heatmap(int(i)) and reader.no_signal(method, int(i)) is None]
    return np.mean(maps, axis=0).astype(np.float32) if maps else None


def _group_heatmap(reader, entry: dict, members: np.ndarray) -> np.ndarray | None:
    stored = reader.discovered_heatmap(entry)
    return stored if stored is not None else _mean_map(reader, members)


def _slice_heatmap(reader, row: dict, label: str, members: np.ndarray) -> np.ndarray | None:
    names = {label, row["column"], f"{row['column']} = {row['value']}", f"{row['column']}={row['value']}"}
    for entry in reader.attention():
        if entry.get("scope") == "slice" and entry.get("name") in names:
            stored = reader.discovered_heatmap(entry)
            if stored is not None:
                return stored
    return _mean_map(reader, members)


# -- the finding ---------------------------------------------------------------------------------
def _from_slice(reader, row: dict) -> Finding:
    label = _slice_label(row)
    members = _slice_members(reader, row)
    return Finding(
        kind="slice", sentence=drop_sentence(row["gap"], row["gap_ci"], f"where {label}", int(row["n"])),
        label=label, n=int(row["n"]), accuracy=float(row["accuracy"]), rest_accuracy=float(row["rest_accuracy"]),
        gap=float(row["gap"]), gap_ci=(float(row["gap_ci"][0]), float(row["gap_ci"][1])), q_value=None,
        members=members, worst=worst_members(reader.predictions, members),
        heatmap=_slice_heatmap(reader, row, label, members),
        filter={"column": row["column"], "value": row["value"]},
    )


def _from_group(reader, entry: dict) -> Finding:
    label, where = _group_words(entry)
    members = _group_members(reader, entry)
    column = schema.discovery_column(str(entry.get("method")))
    if entry.get("predicate"):
        link: dict[str, Any] = {"predicate": dict(entry["predicate"])}
    else:
        link = {"column": column, "value": int(entry["group"])}
    q = entry.get("q_value")
    return Finding(
        kind="discovered", sentence=drop_sentence(entry["gap"], entry["gap_ci"], where, int(entry["n"])),
        label=label, n=int(entry["n"]), accuracy=float(entry["accuracy"]),
        rest_accuracy=float(entry["rest_accuracy"]), gap=float(entry["gap"]),
        gap_ci=(float(entry["gap_ci"][0]), float(entry["gap_ci"][1])),
        q_value=None if q is None else float(q), members=members,
        worst=worst_members(reader.predictions, members), heatmap=_group_heatmap(reader, entry, members),
        filter=link, method=str(entry.get("method")),
    )


def excess_mistakes(entry: dict) -> float:
    """Mistakes a slice or group surely adds beyond the rest's rate: ``n * -gap_ci[1]``."""
    upper = _finite_upper(entry)
    return 0.0 if upper is None else int(entry["n"]) * -upper


def strongest_finding(reader) -> Finding | None:
    """The flagged slice or significant discovered group with the most :func:`excess_mistakes`,
    as a :class:`Finding`; None when the run has neither.

    Ties go to the larger drop, then to the larger group, then to the annotated slice (its
    meaning needs no explanation).
    """
    slices = [(r, 0) for r in competing_slices(reader.metrics)]
    groups = [(g, 1) for g in competing_groups(reader.discovered())]
    candidates = slices + groups
    if not candidates:
        return None
    best, source = min(candidates, key=lambda c: (-excess_mistakes(c[0]), c[0]["gap"], -int(c[0]["n"]), c[1]))
    return _from_slice(reader, best) if source == 0 else _from_group(reader, best)


# -- more words ----------------------------------------------------------------------------------
_SOURCES = {
    "errors": "found without annotations, by clustering the embeddings together with labels and predictions",
    "strategy": "found without annotations, by clustering the heatmaps of one predicted class (a separate "
                "strategy)",
    "search": "found by searching conjunctions of annotation values",
}


def _share(error_rate: float) -> str:
    return f"{_round_half_up(error_rate * 100, 0):.0f}%"


def meaning(finding: Finding) -> str:
    """What the drop means for a user, in words: how often the model is wrong inside and outside.

    >>> f = Finding("slice", "", "background = dark", 150, 0.6, 0.9, -0.3, (-0.38, -0.22), None,
    ...             np.zeros(0), np.zeros(0), None, {})
    >>> print(meaning(f))  # doctest: +NORMALIZE_WHITESPACE
    The model is wrong on 40% of the 150 examples where background = dark, against 10% of the rest:
    4.0 times as often.
    """
    inside, outside = 1.0 - finding.accuracy, 1.0 - finding.rest_accuracy
    where = f"where {finding.label}" if finding.kind == "slice" or finding.method == "search" else "in this group"
    text = f"The model is wrong on {_share(inside)} of the {finding.n} examples {where}, against "
    if outside <= 0:
        return text + "none of the rest."
    return text + f"{_share(outside)} of the rest: {inside / outside:.1f} times as often."


def source(finding: Finding) -> str:
    """How the finding was found, in words ("" for an annotated slice); q-value included."""
    if finding.kind == "slice":
        return ""
    text = _SOURCES.get(str(finding.method), "found by discovery")
    return text + (f"; q = {finding.q_value:.2g} after correcting for every group tested"
                   if finding.q_value is not None else "")
