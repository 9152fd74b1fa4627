"""TensorBoard logs of an audit, in the stock TensorBoard plugins.

:func:`export` writes a finished results store as one TensorBoard run named after the model
(default ``OUT/tensorboard/<model file stem>/``; point ``tensorboard --logdir OUT/tensorboard``
at the folder above it), read through :class:`audit.store.reader.Reader`:

==============  ==============================================================
plugin          tags
==============  ==============================================================
custom_scalars  margin charts (value with its 95% interval as a band): accuracy
                per value, one chart per annotation, worst annotation first;
                discovered groups; disparity between values; pairs; headline
scalars         ``metrics/<name>`` (``/ci_low``, ``/ci_high`` for intervals;
                ``metrics/<method>/deletion_auc``...), ``per_class/<class>/<name>``,
                ``slices/<annotation>/<value>`` (+ bounds),
                ``slices_discovered/<method>_<group>`` (+ bounds),
                ``slices_disparity/<annotation>/<name>`` (+ bounds)
pr_curves       ``pr/<class>`` one-vs-rest, ``pr/<class>/<annotation>/<value>``
                for every value of each flagged annotation, and
                ``pr/<class>/discovered/<method>_<group>`` (TensorBoard appends ``/pr_curves``)
images          ``<method>/<class>/mistakes`` (most confident first) and
                ``<method>/<class>/correct``: heatmap overlays, framed red for
                a mistake and green for a correct prediction;
                ``discovered/<method>_<group>``: a group's mean image and mean map
histograms      ``activations/<layer>`` (stored examples) and
                ``activations/<layer>/channel_mean``, ``.../channel_frac_zero``
                (per-channel statistics over the whole dataset)
text            ``report``: the Markdown report; ``tag_names``: what each tag shows
hparams         the run options and headline metrics (``HPARAM_METRICS``, bias first)
projector       penultimate-layer embeddings with ``metadata.tsv`` and ``sprite.png``
==============  ==============================================================

Tags hold only letters, digits, ``_``, ``-``, ``.`` and ``/`` (:func:`tag_part`): TensorBoard's tag
filter is a JavaScript regular expression, so a tag holding ``(``, ``[`` or ``+`` (a quantile bin
``[0.2, 0.5)``, a class ``c++``) would not find itself when pasted into the filter. The names as the
user wrote them are in each summary's description, in the margin charts' titles and in the
``tag_names`` text.

A finished store has no training step, so everything is written at step 0;
several audited models compare as several runs (export their stores into one
``--logdir``: each becomes the run of its model's name).

The ``write_*`` functions are the one place each kind of summary is made;
:mod:`audit.callbacks` calls the same ones during ``model.fit``. They write
to the default summary writer, so call them inside ``with writer.as_default():``.

Example:
    >>> export(Path("audit_out"))                     # doctest: +SKIP
    PosixPath('audit_out/tensorboard')
    >>> tag_part("[0.2, 0.5)"), tag_part("cue_agrees & background")
    ('0.2_to_0.5', 'cue_agrees_and_background')
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import AuditError, StoreError
from audit.store import schema
from audit.store.reader import Reader

# Descriptions and the text plugin are Markdown: every user string in them goes through md_text.
from audit.views.format import md_text, number, signed

# Our event files end with this, so a re-export removes exactly what an
# earlier export wrote, even in a folder that also holds training logs.
EVENT_SUFFIX = ".keras-audit"
PR_THRESHOLDS = 201
IMAGES_PER_TAG = 12
# PR curves for every value of the worst SLICE_CURVE_ANNOTATIONS flagged annotations, and for the
# strongest DISCOVERED_GROUPS discovered groups (scalars, curves and mean heatmaps).
SLICE_CURVE_ANNOTATIONS = 8
DISCOVERED_GROUPS = 16
DISCOVERED_PER_CHART = 8  # a margin chart of more series is a thicket
GROUP_MEAN_IMAGES = 64  # members averaged into a group's mean image
GROUP_PICTURE_SIDE = 160
HISTOGRAM_BUCKETS = 30
OVERLAY_ALPHA = 0.5
# TensorBoard's projector refuses sprites larger than 8192 px a side.
SPRITE_MAX_SIDE = 8192
THUMBNAIL_MAX_SIDE = 64
# The projector runs in the browser; past this many points it stalls.
PROJECTOR_MAX_POINTS = 50_000
EMBEDDING_NAME = "audit_embedding"
EMBEDDING_TENSOR = f"{EMBEDDING_NAME}/.ATTRIBUTES/VARIABLE_VALUE"
PROJECTOR_CONFIG = "projector_config.pbtxt"
METADATA_TSV = "metadata.tsv"
SPRITE_PNG = "sprite.png"
# The HParams table shows the first HPARAMS_SHOWN metrics and hides the rest until ticked (its
# frontend: `displayed: i < 5`), so the bias comes first.
HPARAMS_SHOWN = 5
HPARAM_METRICS = (
    ("metrics/worst_slice_gap", "worst flagged slice gap"),
    ("metrics/worst_slice_accuracy", "worst flagged slice accuracy"),
    ("metrics/flagged_slices", "flagged slices"),
    ("metrics/accuracy", "accuracy"),
    ("metrics/balanced_accuracy", "balanced accuracy"),
    ("metrics/discovered_groups", "significant discovered groups"),
    ("metrics/macro_f1", "macro F1"),
    ("metrics/log_loss", "log loss"),
    ("metrics/ece", "expected calibration error"),
)
CORRECT_RGB = (40, 200, 60)
MISTAKE_RGB = (230, 30, 30)


def _tf():
    """TensorFlow, after checking that TensorBoard's summary plugins can be imported."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise AuditError(
            "TensorBoard logs need the tensorboard package: pip install tensorboard (or pass --no-tensorboard)"
        ) from None
    import tensorflow as tf

    return tf


# -- one writer per kind of summary (shared with audit.callbacks) ---------------------------
def with_interval(tag: str, value, ci) -> dict[str, float | None]:
    """``{tag: value, tag/ci_low: lo, tag/ci_high: hi}``; the bounds only when ``ci`` has them."""
    out = {tag: value}
    if ci is not None and len(ci) == 2:
        out[f"{tag}/ci_low"], out[f"{tag}/ci_high"] = ci[0], ci[1]
    return out


def write_scalars(values: Mapping[str, float | None], step: int,
                  descriptions: Mapping[str, str] | None = None) -> list[str]:
    """Write each finite value as a scalar (with its Markdown description, if any); ``None`` and
    non-finite values are skipped."""
    tf = _tf()
    written = []
    for tag, value in values.items():
        if value is None or not math.isfinite(float(value)):
            continue
        tf.summary.scalar(tag, float(value), step=step, description=(descriptions or {}).get(tag))
        written.append(tag)
    return written


# -- tag names: safe in TensorBoard's regex filter ------------------------------------------------
# The frontend filters tags with `new RegExp(filter, "i").test(tag)`: `(` or `[` unclosed make the
# filter invalid ("Invalid regex filter"), `(x)` or `[ab]` match other text than themselves, `+`
# `*` `?` `|` `^` `$` `{` `\` are operators. Spaces and `=` are literal there; they go too, so a tag
# can be typed into a shell or a URL as it is.
_TAG_UNSAFE = re.compile(r"[^\w.\-]+")
_BIN = re.compile(r"^[\[(]\s*([^,\s]+)\s*,\s*([^,\s]+)\s*[\])]$")  # a quantile bin: [0.2, 0.5)


def tag_part(text) -> str:
    """``text`` as one tag component: letters, digits, ``_``, ``-`` and ``.`` only, never empty."""
    pieces = [p.strip() for p in str(text).split("&")]  # a pair's value: "dark & [0.02, 0.12)"
    pieces = [f"{b[1]}_to_{b[2]}" if (b := _BIN.match(p)) else p for p in pieces]
    part = _TAG_UNSAFE.sub("_", " and ".join(pieces)).strip("_")
    return part or "_"


def tag_parts(texts: Iterable) -> list[str]:
    """:func:`tag_part` of each text, made unique in order (``_2``, ``_3``... on a clash)."""
    out: list[str] = []
    for text in texts:
        part, n = tag_part(text), 1
        while (candidate := part if n == 1 else f"{part}_{n}") in out:
            n += 1
        out.append(candidate)
    return out


def slice_tags(rows: Sequence[Mapping]) -> list[str]:
    """Scalar tag of each slice row (metrics.json ``slices.rows`` layout), in order:
    ``slices/<annotation>/<value>``, both parts filter-safe and unique (``rows`` may mix columns)."""
    columns = list(dict.fromkeys(str(r["column"]) for r in rows))
    column_part = dict(zip(columns, tag_parts(columns)))
    values: dict[str, list[str]] = {}
    for r in rows:
        values.setdefault(str(r["column"]), []).append(str(r["value"]))
    value_part = {c: dict(zip(v, tag_parts(v))) for c, v in values.items()}
    return [f"slices/{column_part[str(r['column'])]}/{value_part[str(r['column'])][str(r['value'])]}" for r in rows]


def slice_tag(row: Mapping) -> str:
    """Scalar tag of one slice row on its own (no other rows to stay unique against)."""
    return slice_tags([row])[0]


def write_slice_scalars(rows: Sequence[Mapping], step: int) -> list[str]:
    """Accuracy of each slice row (metrics.json ``slices.rows`` layout) with its interval bounds."""
    values: dict[str, float | None] = {}
    for row, tag in zip(rows, slice_tags(rows)):
        values.update(with_interval(tag, row["accuracy"], row.get("accuracy_ci")))
    return write_scalars(values, step)


# -- margin charts (custom_scalars plugin) ----------------------------------------------------------
# A chart is (title, [value tags]); each tag's bounds are its /ci_low and /ci_high scalars.
Chart = tuple[str, list[str]]
# TensorBoard's Custom Scalars dashboard (2.21, seen in Chromium) draws a category's charts last
# first, so the layout lists them reversed for the worst annotation to come first on screen
# (tests/test_tensorboard_margin.py reads the order off the page).
LAYOUT_DRAWN_REVERSED = True


def write_margin_layout(categories: Sequence[tuple[str, Sequence[Chart], bool]], step: int = 0) -> None:
    """The custom-scalars layout: per category (title, charts, closed), one margin chart per
    (title, tags), each tag drawn as its value with the band from ``<tag>/ci_low`` to ``<tag>/ci_high``;
    charts in the order they should appear on screen.

    TensorBoard merges the layouts of several runs category by category, so titles name only
    what is charted (an annotation, a measure), never one run's figures.
    """
    tf = _tf()
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.custom_scalar import summary as cs_summary

    Series = layout_pb2.MarginChartContent.Series
    layout = layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, closed=closed, chart=[
            layout_pb2.Chart(title=chart_title, margin=layout_pb2.MarginChartContent(
                series=[Series(value=t, lower=f"{t}/ci_low", upper=f"{t}/ci_high") for t in tags]))
            for chart_title, tags in (charts[::-1] if LAYOUT_DRAWN_REVERSED else charts) if tags])
        for title, charts, closed in categories if any(tags for _, tags in charts)])
    tf.summary.experimental.write_raw_pb(cs_summary.pb(layout).SerializeToString(), step=step)


def write_pr_curves(labels, probs, class_names: Sequence[str], step: int, *, subset: str = "",
                    about: str = "") -> list[str]:
    """One-vs-rest PR curve of every class that has positives among ``labels``.

    Args:
        labels: true class indices (N,).
        probs: class probabilities (N, C).
        class_names: C names; tags are ``pr/<class>`` or ``pr/<class>/<subset>`` (the class as
            :func:`tag_parts` writes it).
        subset: a tag suffix naming the examples (e.g. ``"cue_agrees/no"``), already filter-safe.
        about: Markdown sentence describing those examples, for the description (user strings
            in it already escaped with :func:`md_text`).

    TensorFlow 2 has no eager PR-curve op, so the proto comes from the
    plugin's numpy ``pb`` and is written raw. Returns the tags TensorBoard
    shows (``.../pr_curves``).
    """
    tf = _tf()
    from tensorboard.plugins.pr_curve import summary as pr_summary

    labels = np.asarray(labels)
    probs = np.clip(np.asarray(probs, np.float32), 0.0, 1.0)
    written = []
    for k, (name, part) in enumerate(zip(class_names, tag_parts(class_names))):
        positive = labels == k
        if not positive.any():
            continue
        tag = f"pr/{part}/{subset}" if subset else f"pr/{part}"
        description = (
            f"One-vs-rest precision and recall of class **{md_text(name)}** over {len(labels)} examples "
            f"({int(positive.sum())} positives). {about}"
        ).strip()
        proto = pr_summary.pb(tag, positive, probs[:, k], num_thresholds=PR_THRESHOLDS, description=description)
        tf.summary.experimental.write_raw_pb(proto.SerializeToString(), step=step)
        written.append(f"{tag}/pr_curves")
    return written


def overlay_images(images, maps, correct=None, alpha: float = OVERLAY_ALPHA, signal=None) -> np.ndarray:
    """Heatmap overlays uint8 (N, H, W, 3); with ``correct``, a green (right) or red (wrong) frame.

    ``images`` may be uint8 or model inputs in any range (see :func:`audit.viz.overlay`). Where
    ``signal`` (N bools) is False the map had no signal and the plain image is drawn instead.
    """
    from audit.viz import overlay

    signal = np.ones(len(images), bool) if signal is None else np.asarray(signal, bool)
    frames = np.stack([overlay(img, m, alpha if s else 0.0) for img, m, s in zip(images, maps, signal)])
    if correct is not None and len(frames):
        h, w = frames.shape[1:3]
        edge = max(1, min(h, w) // 32)
        for frame, right in zip(frames, np.asarray(correct, bool)):
            colour = CORRECT_RGB if right else MISTAKE_RGB
            frame[:edge], frame[-edge:], frame[:, :edge], frame[:, -edge:] = colour, colour, colour, colour
    return frames


def write_images(tag: str, images: np.ndarray, step: int, description: str = "") -> None:
    """All of ``images`` (uint8 (N, H, W, 3)) under one tag; TensorBoard keeps 3 unless told more."""
    tf = _tf()
    tf.summary.image(tag, images, step=step, max_outputs=max(1, len(images)), description=description or None)


def write_histograms(values: Mapping[str, np.ndarray], step: int, prefix: str = "activations") -> list[str]:
    """A histogram per entry (e.g. per layer), tagged ``<prefix>/<name>``.

    The plugin's numpy ``histogram_pb`` is several times faster than the eager
    op on the hundreds of thousands of values one layer produces.
    """
    tf = _tf()
    from tensorboard.plugins.histogram import summary_v2 as histogram_summary

    written = []
    for name, array in values.items():
        flat = np.asarray(array, np.float32).ravel()
        flat = flat[np.isfinite(flat)]
        if not flat.size:
            continue
        tag = f"{prefix}/{name}"
        proto = histogram_summary.histogram_pb(tag, flat, buckets=HISTOGRAM_BUCKETS)
        tf.summary.experimental.write_raw_pb(proto.SerializeToString(), step=step)
        written.append(tag)
    return written


# -- the store, plugin by plugin --------------------------------------------------------------
def _labelled(run: Reader):
    frame = run.predictions
    label = frame["label"].to_numpy()
    return frame[np.isfinite(label.astype(float)) & (label >= 0)].reset_index(drop=True)


def _overall_scalars(metrics: schema.Metrics, slice_tag_of: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in ("accuracy", "balanced_accuracy"):
        values.update(with_interval(f"metrics/{name}", metrics.get(name), metrics.get(f"{name}_ci")))
    for name in ("error_rate", "macro_f1", "log_loss"):
        values[f"metrics/{name}"] = metrics.get(name)
    for k, value in (metrics.get("top_k_accuracy") or {}).items():
        values[f"metrics/top_{k}_accuracy"] = value
    calibration = metrics.get("calibration") or {}
    values["metrics/ece"] = calibration.get("ece")
    values["metrics/mce"] = calibration.get("mce")
    worst = schema.worst_slices(metrics, k=1)
    values["metrics/worst_slice_gap"] = worst[0]["gap"] if worst else 0.0
    values["metrics/worst_slice_accuracy"] = worst[0]["accuracy"] if worst else None
    values["metrics/flagged_slices"] = ((metrics.get("slices") or {}).get("summary") or {}).get("flagged", 0)
    if "discovered" in metrics:
        values["metrics/discovered_groups"] = sum(bool(g.get("significant")) for g in metrics["discovered"])
    names = list(metrics.get("class_names") or [])
    part = dict(zip(names, tag_parts(names)))
    for row in metrics.get("per_class") or []:
        for name in ("precision", "recall", "f1"):
            values[f"per_class/{part.get(row['class'], tag_part(row['class']))}/{name}"] = row.get(name)
    for curve in (metrics.get("curves") or {}).get("per_class") or []:
        for name in ("average_precision", "roc_auc"):
            values[f"per_class/{part.get(curve['class'], tag_part(curve['class']))}/{name}"] = curve.get(name)
    for method, q in (metrics.get("explanations") or {}).items():
        for name in ("deletion_auc", "insertion_auc"):
            values[f"metrics/{tag_part(method)}/{name}"] = q.get(name)
    values.update(_disparity_scalars(metrics, slice_tag_of))
    return values


DISPARITY_MEASURES = (("accuracy_gap", "accuracy gap (best value - worst value)"),
                      ("accuracy_ratio", "accuracy ratio (worst value / best value)"),
                      ("equal_opportunity_gap", "equal opportunity gap (largest recall gap of a class)"))


def _disparity_tag(slice_tag_of: Mapping[tuple[str, str], str], column: str, measure: str) -> str | None:
    # The annotation's part as its slices spell it, so one annotation reads the same in every group.
    part = next((t.split("/")[1] for (c, _), t in slice_tag_of.items() if c == column), None)
    return None if part is None else f"slices_disparity/{part}/{measure}"


def _disparity_scalars(metrics: schema.Metrics, slice_tag_of: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for column in (metrics.get("slices") or {}).get("columns") or []:
        d = column.get("disparity")
        if not d or column.get("kind") == "intersection":
            continue
        for measure, _ in DISPARITY_MEASURES:
            tag = _disparity_tag(slice_tag_of, column["column"], measure)
            if tag:
                values.update(with_interval(tag, d.get(measure), d.get(f"{measure}_ci")))
    return values


def _slice_rows(metrics: schema.Metrics) -> list[schema.SliceRow]:
    # Every single-annotation slice; of the intersections only those worse than
    # both of their parts, the ones the report calls out, so the charts do not
    # drown in hundreds of pairs.
    rows = (metrics.get("slices") or {}).get("rows") or []
    return [r for r in rows if len(r.get("columns", [])) < 2 or r.get("below_parents")]


def _slice_tag_of(metrics: schema.Metrics) -> dict[tuple[str, str], str]:
    """(annotation, value) -> tag, unique over every stored row, so the same data names its slices
    the same in every run (whatever each run flags)."""
    rows = (metrics.get("slices") or {}).get("rows") or []
    return {(str(r["column"]), str(r["value"])): t for r, t in zip(rows, slice_tags(rows))}


def _slice_words(row: Mapping) -> str:
    """``cue = absent & cue_agrees = no``: a slice as the user named it (plain text)."""
    columns, values = row.get("columns") or [row["column"]], row.get("values") or [row["value"]]
    return " & ".join(f"{c} = {v}" for c, v in zip(columns, values))


def _group_part(entry: Mapping) -> str:
    return f"{tag_part(entry.get('method', 'group'))}_{int(entry.get('group', 0))}"


def _group_label(entry: Mapping) -> str:
    """A group in a few words: its predicate (search), else its number."""
    predicate = entry.get("predicate")
    if predicate:
        return " & ".join(f"{c} = {v}" for c, v in predicate.items())
    return f"group {entry.get('group')}"


def _discovered(run: Reader) -> list[schema.DiscoveredGroup]:
    return run.discovered()[:DISCOVERED_GROUPS]  # strongest first


def _discovered_scalars(run: Reader) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    words: dict[str, str] = {}
    for g in _discovered(run):
        tag = f"slices_discovered/{_group_part(g)}"
        values.update(with_interval(tag, g.get("accuracy"), g.get("accuracy_ci")))
        words[tag] = f"discovered group {g.get('method')} {g.get('group')}: {g.get('description', '')}".strip()
    return values, words


def _export_scalars(run: Reader) -> dict[str, str]:
    """Every scalar and the margin-chart layout over them; returns {tag: what it shows, in words}
    for the tags named after the user's things."""
    metrics = run.metrics
    slice_tag_of = _slice_tag_of(metrics)
    rows = _slice_rows(metrics)
    words = {slice_tag_of[(str(r["column"]), str(r["value"]))]: _slice_words(r) for r in rows}
    descriptions = {t: f"Accuracy of the examples with {md_text(w)}. {MARGIN_NOTE}" for t, w in words.items()}
    values = _overall_scalars(metrics, slice_tag_of)
    for row in rows:
        values.update(with_interval(slice_tag_of[(str(row["column"]), str(row["value"]))], row["accuracy"],
                                    row.get("accuracy_ci")))
    found, found_words = _discovered_scalars(run)
    values.update(found)
    words.update(found_words)
    descriptions.update({t: f"Accuracy of the {md_text(w)}. {MARGIN_NOTE}" for t, w in found_words.items()})
    finite = {t for t, v in values.items() if v is not None and math.isfinite(float(v))}
    categories = _margin_categories(run, rows, slice_tag_of, finite)
    at = _margin_steps(categories)
    write_scalars({t: v for t, v in values.items() if t not in at}, 0, descriptions)
    for first in sorted(set(at.values())):
        placed = {t: values[t] for t, s in at.items() if s == first}
        for step in (first, first + 1):
            write_scalars(placed, step, descriptions)
    write_margin_layout(categories, 0)
    return words


# TensorBoard draws an interval as a band between steps, never at a single step, and a finished
# audit has no training steps: in a margin chart the k-th series sits on steps 2k and 2k + 1, so
# each value shows as a short level line inside its band, side by side, the same place in every run.
MARGIN_NOTE = ("Its 95% interval is in /ci_low and /ci_high; the Custom Scalars dashboard draws them as one band, "
               "the k-th value of a chart on steps 2k and 2k + 1 (an audit has no training steps).")


def _margin_steps(categories: Sequence[tuple[str, Sequence[Chart], bool]]) -> dict[str, int]:
    """The first step of each margin-chart series and of its bounds: 2k for the k-th of its chart."""
    at: dict[str, int] = {}
    for _, charts, _ in categories:
        for _, tags in charts:
            for k, tag in enumerate(tags):
                at.update(dict.fromkeys((tag, f"{tag}/ci_low", f"{tag}/ci_high"), 2 * k))
    return at


def _annotation_order(metrics: schema.Metrics, rows: Sequence[Mapping]) -> list[str]:
    """Single annotations, the one holding the worst flagged slice first, then the others as stored."""
    worst = [w["column"] for w in schema.worst_slices(metrics, k=len(rows))]
    singles = [str(r["column"]) for r in rows if len(r.get("columns", [])) < 2]
    return list(dict.fromkeys([*worst, *singles]))


def _margin_categories(run: Reader, rows: Sequence[Mapping], slice_tag_of: Mapping[tuple[str, str], str],
                       finite: set[str]) -> list[tuple[str, list[Chart], bool]]:
    metrics = run.metrics

    def chart(name: str, series: Iterable[tuple[str | None, str]]) -> Chart:
        # Only values with both bounds; the title says which band is which, left to right, since
        # the x axis can only number them (steps) and the legend is a hover away.
        kept = [(t, label) for t, label in series if t and {t, f"{t}/ci_low", f"{t}/ci_high"} <= finite]
        return f"{name} | left to right: {', '.join(label for _, label in kept)}", [t for t, _ in kept]

    by_column: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        by_column.setdefault(str(r["column"]), []).append(
            (slice_tag_of[(str(r["column"]), str(r["value"]))], str(r["value"])))
    singles = [chart(c, by_column[c]) for c in _annotation_order(metrics, rows)]
    pair_columns = dict.fromkeys(str(r["column"]) for r in rows if len(r.get("columns", [])) > 1)
    pairs = [chart(c, by_column[c]) for c in pair_columns]
    groups = _discovered(run)
    found = [chart(f"{m} groups", [(f"slices_discovered/{_group_part(g)}", _group_label(g))
                                   for g in groups if g.get("method") == m][:DISCOVERED_PER_CHART])
             for m in dict.fromkeys(str(g.get("method")) for g in groups)]
    # Stored order, not worst first: the title lists the annotations, and runs whose worst differs
    # must still share one chart.
    annotations = [str(r["column"]) for r in rows if len(r.get("columns", [])) < 2]
    annotations = list(dict.fromkeys(annotations))
    disparity = [chart(label, [(_disparity_tag(slice_tag_of, c, measure), c) for c in annotations])
                 for measure, label in DISPARITY_MEASURES]
    headline = [chart("overall", [("metrics/accuracy", "accuracy"),
                                  ("metrics/balanced_accuracy", "balanced accuracy")])]
    return [
        ("Accuracy by annotation: each value with its 95% interval (worst annotation first)", singles, False),
        ("Discovered groups: accuracy with its 95% interval", found, False),
        ("Disparity between the values of each annotation (95% interval)", disparity, False),
        ("Pairs of annotations worse than both of their parts", pairs, True),
        ("Headline: accuracy with its 95% interval", headline, False),
    ]


def _flagged_annotations(run: Reader) -> list[str]:
    """Single annotations holding a flagged slice worse than the rest, the worst first."""
    return list(dict.fromkeys(w["column"] for w in run.worst_slices(k=10_000)))[:SLICE_CURVE_ANNOTATIONS]


def _export_pr_curves(run: Reader) -> None:
    frame = _labelled(run)
    labels = frame["label"].to_numpy().astype(np.int64)
    probs = frame[[schema.prob_column(k) for k in range(run.num_classes)]].to_numpy(np.float32)
    index = frame["index"].to_numpy()
    write_pr_curves(labels, probs, run.class_names, 0)
    metrics = run.metrics
    slice_tag_of = _slice_tag_of(metrics)
    by_key = {(str(r["column"]), str(r["value"])): r for r in (metrics.get("slices") or {}).get("rows") or []}
    flagged = _flagged_annotations(run)
    # Every value of a flagged annotation, flagged or not: another run flags other values, and
    # its curves should sit beside these on the same tags.
    for (column, value), tag in slice_tag_of.items():
        if column not in flagged or not by_key[(column, value)].get("n"):
            continue
        row = by_key[(column, value)]
        mask = np.isin(index, run.slice_rows(column, value))
        about = (f"Only the {int(mask.sum())} examples with {md_text(column)} = {md_text(value)}: "
                 f"accuracy {number(row['accuracy'])}, {signed(row['gap'])} against the other examples"
                 f"{' (a flagged slice)' if row.get('flagged') else ''}.")
        write_pr_curves(labels[mask], probs[mask], run.class_names, 0, subset=tag[len("slices/"):], about=about)
    for g in _discovered(run):
        mask = np.isin(index, run.discovered_members(g))
        about = (f"Only the {int(mask.sum())} examples of discovered group {md_text(g.get('method'))} "
                 f"{int(g.get('group', 0))}: {md_text(g.get('description', ''))}; accuracy "
                 f"{number(g.get('accuracy'))}, {signed(g.get('gap'))} against the other examples.")
        write_pr_curves(labels[mask], probs[mask], run.class_names, 0, subset=f"discovered/{_group_part(g)}",
                        about=about)


def _explained_choice(frame, explained: set[int], label: int) -> tuple[list[int], list[int]]:
    """Explained examples of one true class: mistakes by falling confidence, then correct ones."""
    rows = frame[frame["index"].isin(explained) & (frame["label"] == label)]
    wrong = rows[~rows["correct"]].sort_values("confidence", ascending=False, kind="stable")
    right = rows[rows["correct"]].sort_values("index", kind="stable")
    if len(right) > IMAGES_PER_TAG:  # a spread over the class rather than its first files
        right = right.iloc[np.linspace(0, len(right) - 1, IMAGES_PER_TAG).round().astype(int)]
    return wrong["index"].head(IMAGES_PER_TAG).tolist(), right["index"].tolist()


def _caption(frame_by_index, index: int, names: list[str]) -> str:
    row = frame_by_index.loc[index]
    # Not a code span: a backtick in the path would end it and let the rest be Markdown.
    where = f" {md_text(row['path'])}" if isinstance(row.get("path"), str) else ""
    return (f"example {index}{where}: true {md_text(names[int(row['label'])])}, "
            f"predicted {md_text(names[int(row['pred'])])} ({float(row['confidence']):.2f})")


def _export_images(run: Reader) -> None:
    methods = run.heatmap_methods
    if not methods or not run.heatmap_index:
        return
    frame = _labelled(run)
    by_index = frame.set_index("index", drop=False)
    explained = set(run.heatmap_index)
    names = run.class_names
    for k, (name, part) in enumerate(zip(names, tag_parts(names))):
        wrong, right = _explained_choice(frame, explained, k)
        for kind, chosen in (("mistakes", wrong), ("correct", right)):
            if not chosen:
                continue
            images = [run.image(i) for i in chosen]
            correct = by_index.loc[chosen, "correct"].to_numpy(bool)
            listing = "\n".join(f"{n}. {_caption(by_index, i, names)}" for n, i in enumerate(chosen, 1))
            for method in methods:
                maps = [run.heatmap(method, i) for i in chosen]
                signal, reason = _signal(run, method, chosen)
                order = "most confident first" if kind == "mistakes" else "a sample"
                description = (f"{md_text(method)} overlays of {kind} on true class **{md_text(name)}** ({order}); "
                               f"the frame is red for a mistake, green for a correct prediction.\n\n{listing}")
                if not signal.all():
                    empty = ", ".join(str(n) for n, s in enumerate(signal, 1) if not s)
                    description += (f"\n\nImages {empty}: no signal ({md_text(reason)}); the plain image is "
                                    "shown, not a finding.")
                write_images(f"{method}/{part}/{kind}", overlay_images(images, maps, correct, signal=signal), 0,
                             description)


def _group_picture(run: Reader, entry: Mapping, members: np.ndarray) -> np.ndarray | None:
    """A discovered group's mean image beside its mean heatmap (None without a stored map)."""
    from audit.viz import render

    heatmap = run.discovered_heatmap(entry)  # type: ignore[arg-type]
    if heatmap is None or not len(members):
        return None
    shown = members[np.linspace(0, len(members) - 1, min(len(members), GROUP_MEAN_IMAGES)).round().astype(int)]
    mean_image = np.mean([np.asarray(run.image(int(i)), np.float32) for i in shown], axis=0)
    return render(np.round(mean_image).astype(np.uint8), heatmap, mode="side by side", at_least=GROUP_PICTURE_SIDE)


def _export_discovered_images(run: Reader) -> None:
    for g in _discovered(run):
        members = run.discovered_members(g)
        picture = _group_picture(run, g, members)
        if picture is None:
            continue
        description = (f"Discovered group {md_text(g.get('method'))} {int(g.get('group', 0))} "
                       f"({int(g.get('n', len(members)))} examples, accuracy {number(g.get('accuracy'))}, "
                       f"{signed(g.get('gap'))} against the rest): {md_text(g.get('description', ''))}. "
                       "Left: the mean of its images; right: its mean heatmap (bright = where the model looks).")
        write_images(f"discovered/{_group_part(g)}", picture[None], 0, description)


def _signal(run: Reader, method: str, chosen: list[int]) -> tuple[np.ndarray, str]:
    """Whether each chosen example's ``method`` map had signal (all True for older stores), and why not."""
    reasons = [run.no_signal(method, i) for i in chosen]
    return np.array([r is None for r in reasons], bool), next((r for r in reasons if r), "")


def _export_histograms(run: Reader) -> None:
    explained = sorted(run.heatmap_index)
    for layer in run.activation_layers:
        try:
            values = np.stack([run.activations(layer, i) for i in explained]) if explained else None
        except StoreError:
            values = None
        if values is not None:
            write_histograms({layer: values}, 0)
    for layer, stats in run.activation_stats.items():
        write_histograms({f"{layer}/channel_mean": np.asarray(stats.get("mean", []), np.float32),
                          f"{layer}/channel_frac_zero": np.asarray(stats.get("frac_zero", []), np.float32)}, 0)


def report_markdown(run: Reader) -> str:
    """The Markdown report without its pictures (TensorBoard's text plugin shows no local images;
    the pictures' content is in the other dashboards)."""
    from audit.views.report import build_report, render_markdown

    title, blocks = build_report(run, pictures=False)
    text, _ = render_markdown(title, [b for b in blocks if b.kind != "pictures"], "")
    return text


def tag_names_markdown(words: Mapping[str, str]) -> str:
    """The readable mapping: each tag named after the user's things, and what it shows."""
    lines = ["Tags hold only letters, digits and `_ - . /`, so each finds itself in TensorBoard's "
             "regex filter; this is what each one shows.", "", "| tag | what it shows |", "|---|---|"]
    lines += [f"| `{tag}` | {md_text(what)} |" for tag, what in words.items()]
    return "\n".join(lines)


def _export_text(run: Reader, words: Mapping[str, str]) -> None:
    tf = _tf()
    tf.summary.text("report", report_markdown(run), step=0)
    if words:
        tf.summary.text("tag_names", tag_names_markdown(words), step=0)


def _hparam_value(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "null"  # as manifest.json records it
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def hparam_values(run: Reader) -> dict[str, bool | int | float | str]:
    """The run described as hyperparameters: model, data, the explainers run and every recorded option."""
    model = run.model_info
    values: dict[str, bool | int | float | str] = {
        "model": str(model.get("name", "")),
        "model_sha256": str(model.get("sha256", ""))[:12],
        "output_kind": str(model.get("output_kind", "")),
        "num_classes": run.num_classes,
        "dataset": str(run.manifest.get("dataset", {}).get("source", "")),
        "num_examples": run.num_examples,
    }
    explained = run.manifest.get("explained") or {}
    methods = list(explained.get("methods", [])) + (["activations"] if explained.get("activation_layers") else [])
    values["explained"] = ",".join(methods) or "none"
    for key, value in sorted(run.options.items()):
        if key not in ("class_names", "tensorboard"):
            values[f"option/{key}"] = _hparam_value(value)
    return values


def _export_hparams(run: Reader) -> None:
    _tf()
    from tensorboard.plugins.hparams import api as hp

    values = hparam_values(run)
    # Every export writes the same configuration (same names, same metrics), so
    # whichever run TensorBoard picks it from describes all audited models.
    hp.hparams_config(
        hparams=[hp.HParam(name) for name in values],
        metrics=[hp.Metric(tag, display_name=label, description=f"{label} (scalar {tag})")
                 for tag, label in HPARAM_METRICS],
    )
    hp.hparams(values, trial_id=f"{values['model']} @ {run.path}")


def _sprite(images: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Square thumbnails in a square grid, within the projector's size limit."""
    from PIL import Image

    grid = max(1, math.ceil(math.sqrt(len(images))))
    side = max(1, min(THUMBNAIL_MAX_SIDE, max(max(i.shape[:2]) for i in images), SPRITE_MAX_SIDE // grid))
    sheet = np.zeros((grid * side, grid * side, 3), np.uint8)
    for n, image in enumerate(images):
        thumb = Image.fromarray(image)
        thumb.thumbnail((side, side))
        t = np.asarray(thumb.convert("RGB"))
        r, c = divmod(n, grid)
        top = r * side + (side - t.shape[0]) // 2
        left = c * side + (side - t.shape[1]) // 2
        sheet[top : top + t.shape[0], left : left + t.shape[1]] = t
    return sheet, side


def _tsv_cell(value) -> str:
    import pandas as pd

    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return ""
    return re.sub(r"[\t\r\n]+", " ", str(value))


def _metadata_tsv(frame, names: list[str]) -> str:
    """One row per point: label, prediction, correctness, confidence and every annotation."""
    annotations = schema.annotation_columns(frame.columns)
    header = ["index", "label", "prediction", "correct", "confidence", *annotations]
    columns = [
        frame["index"].tolist(),
        [names[int(k)] for k in frame["label"]],
        [names[int(k)] for k in frame["pred"]],
        ["yes" if c else "no" for c in frame["correct"]],
        [f"{float(v):.3f}" for v in frame["confidence"]],
        *(frame[c].tolist() for c in annotations),
    ]
    lines = ["\t".join(_tsv_cell(h) for h in header)]
    lines += ["\t".join(_tsv_cell(v) for v in row) for row in zip(*columns)]
    return "\n".join(lines) + "\n"


def _is_ours(path: Path) -> bool:
    try:
        return path.is_file() and EMBEDDING_NAME in path.read_text(errors="replace")
    except OSError:
        return False


def _remove_previous(logdir: Path) -> None:
    """Remove what an earlier export wrote to ``logdir``, and nothing else."""
    for f in logdir.glob(f"events.out.tfevents.*{EVENT_SUFFIX}"):
        f.unlink()
    config = logdir / PROJECTOR_CONFIG
    if config.exists() and not _is_ours(config):
        raise AuditError(
            f"folder holds a {PROJECTOR_CONFIG} that keras-audit did not write; pass another --logdir", logdir
        )
    if config.exists():
        for name in (PROJECTOR_CONFIG, METADATA_TSV, SPRITE_PNG):
            (logdir / name).unlink(missing_ok=True)
        if _is_ours(logdir / "checkpoint"):
            (logdir / "checkpoint").unlink()
        for f in logdir.glob(f"{EMBEDDING_NAME}-*"):
            f.unlink()


def _export_projector(run: Reader, logdir: Path) -> None:
    emb = run.embeddings()
    if emb is None:
        return
    tf = _tf()
    from tensorboard.plugins import projector

    frame = _labelled(run)
    if len(frame) > PROJECTOR_MAX_POINTS:
        frame = frame.iloc[np.linspace(0, len(frame) - 1, PROJECTOR_MAX_POINTS).round().astype(int)]
    index = frame["index"].to_numpy()
    vectors = np.asarray(emb[index], np.float32)
    (logdir / METADATA_TSV).write_text(_metadata_tsv(frame, run.class_names), encoding="utf-8")
    sheet, side = _sprite([run.image(int(i)) for i in index])
    from PIL import Image

    Image.fromarray(sheet).save(logdir / SPRITE_PNG)
    # Checkpoint.save writes a relative `checkpoint` state file, so the
    # projector finds the tensor even after the log folder is moved.
    tf.train.Checkpoint(**{EMBEDDING_NAME: tf.Variable(vectors)}).save(str(logdir / EMBEDDING_NAME))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = EMBEDDING_TENSOR
    embedding.metadata_path = METADATA_TSV
    embedding.sprite.image_path = SPRITE_PNG
    embedding.sprite.single_image_dim.extend([side, side])
    projector.visualize_embeddings(str(logdir), config)


def run_name(run: Reader) -> str:
    """The run's name in TensorBoard: the model file's stem (``shapes_bias`` for
    ``models/shapes_bias.keras``), filter-safe like every tag, else the model's own name."""
    model = run.model_info
    path = str(model.get("path") or "").rstrip("/\\")
    stem = Path(path).stem if path else ""
    return tag_part(stem or model.get("name") or "model")


def _remove_stale_root(logdir: Path, run_dir: Path) -> None:
    """Files an export before runs were named wrote straight into ``logdir``: TensorBoard would show
    them as a second run called ".". Only ours by name (and a projector config that is ours) go."""
    if run_dir == logdir:
        return
    for f in logdir.glob(f"events.out.tfevents.*{EVENT_SUFFIX}"):
        f.unlink()
    if _is_ours(logdir / PROJECTOR_CONFIG):
        _remove_previous(logdir)


def export(store_dir: str | Path, logdir: str | Path | None = None, *, name: str | None = None) -> Path:
    """(Re)write the TensorBoard logs of the finished run in ``store_dir`` as one run; return
    ``logdir``, the folder to pass to ``tensorboard --logdir``.

    Args:
        store_dir: a finished results store.
        logdir: TensorBoard's log folder; default ``store_dir/tensorboard``. The run is its
            sub-folder ``name``; files of an earlier export there are replaced, other files stay.
        name: the run's name (one folder name); default :func:`run_name`, the model's file stem.

    Raises:
        StoreError: the store is missing, incomplete or unreadable.
        AuditError: ``logdir`` is not a writable folder, ``name`` is not a folder name, or
            tensorboard is not installed.
    """
    run = Reader(store_dir)
    root = Path(logdir) if logdir is not None else run.path / schema.TENSORBOARD_DIR
    if name is not None and (not name or name in (".", "..") or tag_part(name) != name):
        raise AuditError(f"run name {name!r} must be one folder name of letters, digits, '_', '-' and '.' "
                         f"(e.g. {tag_part(name)!r})")
    target = root / (name or run_name(run))
    tf = _tf()
    for folder in (root, target):
        if folder.exists() and not folder.is_dir():
            raise AuditError("TensorBoard log folder is a file; pass a folder to --logdir", folder)
    try:
        target.mkdir(parents=True, exist_ok=True)
        _remove_previous(target)
        _remove_stale_root(root, target)
    except OSError as e:
        raise AuditError(f"cannot write TensorBoard logs ({e.strerror or e})", target) from None
    writer = tf.summary.create_file_writer(str(target), filename_suffix=EVENT_SUFFIX)
    try:
        with writer.as_default():
            words = _export_scalars(run)
            _export_pr_curves(run)
            _export_images(run)
            _export_discovered_images(run)
            _export_histograms(run)
            _export_text(run, words)
            _export_hparams(run)
    finally:
        writer.close()
    from audit.store.killpoint import checkpoint

    checkpoint("tensorboard")  # test-only kill point (audit.store.killpoint): event file written, projector not yet
    _export_projector(run, target)
    return root
