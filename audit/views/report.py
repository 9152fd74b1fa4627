"""A readable report of one run: Markdown, or one self-contained HTML file.

The report reads the store through :class:`audit.store.reader.Reader` and shows
what the run stored; it computes nothing about the model. In order:

1. what was audited, and the headline numbers with their intervals;
2. flagged slices worse than the rest, worst gap first (single annotations),
   then intersections that are worse than both of their parts;
3. disparity per annotation column;
4. PR / ROC curves, the reliability diagram, per-class table, confusion matrix;
5. thresholds (default, best F1, and equal-opportunity thresholds per slice);
6. explanation quality, when the run scored its explainers;
7. the most confident mistakes, with their heatmaps when the run has them;
8. the notes the run raised.

Pictures are matplotlib PNGs drawn without pyplot (no global state, no
display). HTML embeds them as ``data:`` URIs, so the file can be mailed alone;
Markdown writes them to ``<report name>_files/`` beside the report.

Example:
    >>> write_report(Path("audit_out"), "html")     # doctest: +SKIP
    PosixPath('audit_out/report.html')
"""

from __future__ import annotations

import base64
import html
import io
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audit.errors import AuditError, StoreError
from audit.store import schema
from audit.store.reader import Reader
from audit.store.schema import worst_slices
from audit.store.writer import atomic_write_bytes, write_owned_file
from audit.views.findings import meaning, slice_label, source, strongest_finding
from audit.views.format import interval as _ci
from audit.views.format import md_text
from audit.views.format import number as _num
from audit.views.format import with_interval as _with_ci
from audit.viz import DEFAULT_MODE, HEAT_CMAP, MODE_WORDS, colorize, legend, render

FORMATS = ("md", "html")
MISTAKES = 12
CURVE_CLASSES = 10
CONFUSION_MAX_CLASSES = 30
INTERSECTIONS_SHOWN = 15
EO_SLICES_SHOWN = 40
ATTENTION_SHOWN = 8
DISCOVERED_SHOWN = 20


@dataclass
class Picture:
    name: str
    png: bytes
    alt: str
    width: int | None = None


@dataclass
class Block:
    """One piece of the report: ``heading``, ``text``, ``table``, ``pictures`` or ``bullets``.

    ``pictures`` with a ``grid`` keep each row's pictures together (one example: its image and every
    map of it), so a narrow page wraps between examples, never inside one; ``pictures`` still lists
    them all, so a reader of the blocks finds every picture in one place.
    """

    kind: str
    text: str = ""
    level: int = 2
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    grid: list[list[Picture | str]] = field(default_factory=list)  # rows of examples; str: "no map"


def _plot_text(value) -> str:
    """``value`` for a matplotlib label: a ``$`` would start mathtext (and an unbalanced one raises)."""
    return str(value).replace("$", r"\$")


# -- pictures ----------------------------------------------------------------------------------
def _figure(width: float, height: float, cols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(1, cols)
    return fig, axes


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _image_png(image: np.ndarray) -> bytes:
    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, np.asarray(image, np.uint8), format="png")
    return buf.getvalue()


def curves_picture(metrics: schema.Metrics) -> Picture | None:
    curves = metrics.get("curves") or {}
    drawn = [c for c in curves.get("per_class", []) if c.get("pr")][:CURVE_CLASSES]
    if not drawn:
        return None
    fig, (pr_ax, roc_ax) = _figure(10, 4.2, cols=2)
    for c in drawn:
        pr_ax.plot(c["pr"]["recall"], c["pr"]["precision"], lw=1.2,
                   label=f"{_plot_text(c['class'])} (AP {_num(c['average_precision'], 2)})")
        roc_ax.plot(c["roc"]["fpr"], c["roc"]["tpr"], lw=1.2,
                    label=f"{_plot_text(c['class'])} (AUC {_num(c['roc_auc'], 2)})")
    for key, style in (("macro", "--"), ("micro", ":")):
        avg = curves.get(key)
        if avg:
            pr_ax.plot(avg["pr"]["recall"], avg["pr"]["precision"], "k" + style, lw=1.6,
                       label=f"{key} (AP {_num(avg['average_precision'], 2)})")
            roc_ax.plot(avg["roc"]["fpr"], avg["roc"]["tpr"], "k" + style, lw=1.6,
                        label=f"{key} (AUC {_num(avg['roc_auc'], 2)})")
    roc_ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    # A little room past 1 on both axes, so a perfect class's curve is not hidden along the frame.
    pr_ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.05), title="Precision-recall")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(-0.02, 1), ylim=(0, 1.05),
               title="ROC")
    for ax in (pr_ax, roc_ax):
        ax.legend(fontsize=7, loc="lower left" if ax is pr_ax else "lower right")
        ax.grid(alpha=0.3)
    shown = "" if len(drawn) == len(curves.get("per_class", [])) else f" (first {len(drawn)} classes)"
    return Picture("curves", _png(fig), f"precision-recall and ROC curves{shown}")


def reliability_picture(metrics: schema.Metrics) -> Picture | None:
    cal = metrics.get("calibration")
    if not cal:
        return None
    edges = np.asarray(cal["edges"], float)
    acc = np.array([np.nan if a is None else a for a in cal["accuracy"]], float)
    count = np.asarray(cal["count"], float)
    fig, (ax, hist) = _figure(10, 4.2, cols=2)
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    ax.bar(centres, np.nan_to_num(acc), width=width * 0.95, color="#4c78a8", label="accuracy")
    ax.plot([0, 1], [0, 1], color="#e45756", lw=1, label="perfect calibration")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability (ECE {_num(cal.get('ece'))})")
    ax.legend(fontsize=8, loc="upper left")
    hist.bar(centres, count, width=width * 0.95, color="0.6")
    hist.set(xlabel="confidence", ylabel="examples", xlim=(0, 1), title="Confidence histogram")
    return Picture("reliability", _png(fig), "reliability diagram and confidence histogram")


def slices_figure(rows: list[schema.WorstSlice], metrics: schema.Metrics):
    """The gap to the rest of each slice with its 95% interval, worst at the top: the chart draws what the
    table sorts by (accuracy alone would not be in that order)."""
    rows = rows[:15]
    fig, ax = _figure(8, 0.45 * len(rows) + 1.2)
    gap = np.array([r["gap"] for r in rows], float)
    lo = np.array([np.nan if r["gap_ci"][0] is None else r["gap_ci"][0] for r in rows], float)
    hi = np.array([np.nan if r["gap_ci"][1] is None else r["gap_ci"][1] for r in rows], float)
    ax.barh(range(len(rows)), gap, color="#e45756", xerr=[gap - lo, hi - gap], capsize=3)
    labels = [_plot_text(slice_label(metrics, r["column"], r["value"])) for r in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()  # row 0, the worst, on top
    ax.axvline(0, color="k", lw=1)
    left = float(np.nanmin(np.concatenate([lo, gap])))
    ax.set_xlim(min(left * 1.08, -0.05), max(0.02, float(np.nanmax(np.concatenate([hi, gap]))) + 0.02))
    ax.set(xlabel="accuracy of the slice minus the rest, percentage points (95% CI)",
           title="Flagged slices, worst gap first")
    ax.xaxis.set_major_formatter(lambda x, _: f"{x * 100:.0f}".replace("-", "−") if abs(x) > 1e-9 else "0")
    ax.grid(axis="x", alpha=0.3)
    return fig


def slices_picture(rows: list[schema.WorstSlice], metrics: schema.Metrics) -> Picture | None:
    if not rows:
        return None
    return Picture("slices", _png(slices_figure(rows, metrics)),
                   "gap to the rest of each flagged slice, with 95% intervals")


def confusion_picture(metrics: schema.Metrics) -> Picture | None:
    cm = np.asarray(metrics.get("confusion_matrix") or [], float)
    names = [_plot_text(n) for n in metrics.get("class_names") or []]
    if cm.ndim != 2 or not len(cm) or len(cm) > CONFUSION_MAX_CLASSES:
        return None
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = 2.5 + 0.35 * len(cm)
    fig, ax = _figure(size + 1, size)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_xticks(range(len(cm)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(cm)), names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (row-normalised)")
    if len(cm) <= 12:
        for i in range(len(cm)):
            for j in range(len(cm)):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    return Picture("confusion", _png(fig), "confusion matrix")


# -- sections -------------------------------------------------------------------------------
def _values(values) -> str:
    return f"{values[0]:g}" if len(values) == 1 else "(" + ", ".join(f"{v:g}" for v in values) + ")"


def preprocessing_words(entry) -> str:
    """The manifest's ``preprocessing`` entry in words, e.g. "tf (x/127.5 − 1), resize pad";
    "" for a store that does not record one. Plain text: escape it where it becomes Markdown."""
    if not isinstance(entry, dict) or not entry:
        return ""
    x = "x"
    if entry.get("mean"):
        x = f"x − {_values(entry['mean'])}"
    if entry.get("std"):
        x = f"({x})/{_values(entry['std'])}" if x != "x" else f"x/{_values(entry['std'])}"
    scale, offset = float(entry.get("scale", 1.0)), float(entry.get("offset", 0.0))
    if scale != 1.0:
        base = f"({x})" if " " in x else x
        inverse = 1.0 / scale
        x = f"{base}/{inverse:g}" if abs(inverse - round(inverse, 3)) < 1e-9 * inverse else f"{base}·{scale:g}"
    if offset:
        x += f" {'+' if offset > 0 else '−'} {abs(offset):g}"
    arithmetic = "x in 0..255" if x == "x" else x
    if entry.get("channel_order", "RGB") != "RGB":
        arithmetic = f"RGB to {entry['channel_order']}, {arithmetic}"
    return f"{entry.get('name', 'custom')} ({arithmetic}), resize {entry.get('resize', 'stretch')}"


def _headline(metrics: schema.Metrics) -> Block:
    rows = [
        ["accuracy", _num(metrics.get("accuracy")), _ci(metrics.get("accuracy_ci"))],
        ["balanced accuracy", _num(metrics.get("balanced_accuracy")), _ci(metrics.get("balanced_accuracy_ci"))],
    ]
    for k, value in (metrics.get("top_k_accuracy") or {}).items():
        if k != "1":
            rows.append([f"top-{k} accuracy", _num(value), ""])
    rows.append(["macro F1", _num(metrics.get("macro_f1")), ""])
    rows.append(["log loss", _num(metrics.get("log_loss")), ""])
    curves = metrics.get("curves") or {}
    if curves.get("positive_class") is not None and curves.get("per_class"):
        pos = curves["per_class"][0]
        rows.append([f"average precision ({pos['class']})", _num(pos.get("average_precision")), ""])
        rows.append([f"ROC AUC ({pos['class']})", _num(pos.get("roc_auc")), ""])
    elif curves.get("macro"):
        rows.append(["macro average precision", _num(curves["macro"].get("average_precision")), ""])
        rows.append(["macro ROC AUC", _num(curves["macro"].get("roc_auc")), ""])
    if metrics.get("calibration"):
        rows.append(["expected calibration error", _num(metrics["calibration"].get("ece")), ""])
    summary = (metrics.get("slices") or {}).get("summary")
    if summary:
        rows.append(["slices tested / flagged", f"{summary['tested']} / {summary['flagged']}",
                     f"about {summary['expected_flagged_by_chance']:g} expected by chance"])
    return Block("table", headers=["metric", "value", "95% CI"], rows=rows)


def _slice_sections(metrics: schema.Metrics, draw: bool) -> list[Block]:
    slices = metrics.get("slices")
    if not slices:
        return []
    tested = (slices.get("summary") or {}).get("tested", 0)
    blocks = [Block("heading", "Where the model is worse"), *_flagged_blocks(metrics, tested, draw)]
    blocks += _intersection_blocks(metrics, tested)
    blocks += _disparity_blocks(slices)
    skipped = slices.get("skipped") or []
    if skipped:
        blocks.append(Block("bullets", items=[f"{s['column']}: skipped, {s['reason']}" for s in skipped]))
    return blocks


def _flagged_blocks(metrics: schema.Metrics, tested: int, draw: bool) -> list[Block]:
    """Single annotation values worse than the rest, worst gap first, or why there are none."""
    slices = metrics["slices"]
    worst = worst_slices(metrics, k=len(slices.get("rows", [])))
    if not worst:
        if not slices.get("columns"):
            return [Block("text", "There was nothing to slice by: the run has no usable annotation columns "
                                  "(see the notes).")]
        return [Block("text", f"No single annotation value is worse than the rest beyond its 95% interval "
                              f"({tested} slices tested).")]
    blocks = [
        Block("text", "Single annotation values whose accuracy differs from the rest of the data beyond the 95% "
                      "interval of the gap, worst first. Gap = slice accuracy minus the accuracy of all other "
                      "examples."),
        Block("table", headers=["#", "slice", "n", "accuracy [95% CI]", "gap to rest [95% CI]", "note"],
              rows=[[str(i + 1), slice_label(metrics, r["column"], r["value"]), str(r["n"]),
                     _with_ci(r["accuracy"], r["ci"]),
                     _with_ci(r["gap"], r["gap_ci"], is_signed=True), "too small" if r["too_small"] else ""]
                    for i, r in enumerate(worst)]),
    ]
    picture = slices_picture(worst, metrics) if draw else None
    if picture:
        blocks.append(Block("pictures", pictures=[picture]))
    return blocks


def _intersection_blocks(metrics: schema.Metrics, tested: int) -> list[Block]:
    rows = metrics["slices"].get("rows", [])
    pairs = [r for r in worst_slices(metrics, k=len(rows), intersections=True) if "&" in r["column"]]
    if not pairs:
        return []
    return [
        Block("heading", "Intersections worse than both of their parts", level=3),
        Block("text", "Value pairs significantly worse than the other examples of each value alone. These are "
                      f"exploratory: {tested} slices were tested, so a few flags are expected by chance."),
        Block("table", headers=["slice", "n", "accuracy [95% CI]", "gap to rest [95% CI]"],
              rows=[[slice_label(metrics, r["column"], r["value"]), str(r["n"]), _with_ci(r["accuracy"], r["ci"]),
                     _with_ci(r["gap"], r["gap_ci"], is_signed=True)] for r in pairs[:INTERSECTIONS_SHOWN]]),
    ]


def _disparity_blocks(slices: schema.SlicesSection) -> list[Block]:
    disparity = [c for c in slices.get("columns", []) if c.get("disparity") and c.get("kind") != "intersection"]
    if not disparity:
        return []
    rows = []
    for c in disparity:
        d = c.get("disparity") or {}  # never empty: the filter above kept columns with one
        rows.append([
            c["column"] + (" (built-in)" if c.get("builtin") else ""),
            f"{d['worst']} < {d['best']}",
            _with_ci(d["accuracy_gap"], d.get("accuracy_gap_ci")),
            _with_ci(d["accuracy_ratio"], d.get("accuracy_ratio_ci")),
            _with_ci(d["equal_opportunity_gap"], d.get("equal_opportunity_gap_ci"))
            + (f" ({d['equal_opportunity_class']}: {' < '.join(d['equal_opportunity_values'])})"
               if d.get("equal_opportunity_values") else ""),
        ])
    return [
        Block("heading", "Disparity per annotation", level=3),
        Block("text", f"Over values with at least {slices.get('min_slice_size')} examples. Accuracy gap = best minus "
                      "worst value; ratio = worst / best; equal-opportunity gap = largest spread of one class's recall "
                      "(which class, and between which values). Intervals are for the two values each estimate "
                      "compares."),
        Block("table", headers=["annotation", "worst < best", "accuracy gap", "ratio", "equal-opportunity gap"],
              rows=rows),
    ]


def _model_sections(metrics: schema.Metrics, draw: bool) -> list[Block]:
    blocks = [Block("heading", "Curves and calibration")]
    pictures = [p for p in (curves_picture(metrics), reliability_picture(metrics)) if p] if draw else []
    if pictures:
        blocks.append(Block("pictures", pictures=pictures))
    per_class = metrics.get("per_class") or []
    if per_class:
        blocks.append(Block("heading", "Per class", level=3))
        blocks.append(Block(
            "table", headers=["class", "precision", "recall", "F1", "support"],
            rows=[[c["class"], _num(c["precision"]), _num(c["recall"]), _num(c["f1"]), str(c["support"])]
                  for c in per_class],
        ))
    picture = confusion_picture(metrics) if draw else None
    if picture:
        blocks.append(Block("pictures", pictures=[picture]))
    return blocks


def _threshold_sections(metrics: schema.Metrics) -> list[Block]:
    th = metrics.get("thresholds")
    if not th or not th.get("classes"):
        return []
    blocks = [Block("heading", "Thresholds")]
    scope = "the positive class" if th.get("scope") == "binary" else "each class against the rest"
    blocks.append(Block("text", f"Decision thresholds for {scope}; an example is positive when its score is at "
                                "or above the threshold."))
    rows = []
    for c in th["classes"]:
        d, b = c.get("default"), c.get("best_f1")
        if d is None or b is None:
            continue
        rows.append([c["class"], str(c["positives"]), f"{_num(d['precision'])} / {_num(d['recall'])} / {_num(d['f1'])}",
                     _num(b["threshold"]), f"{_num(b['precision'])} / {_num(b['recall'])} / {_num(b['f1'])}"])
    blocks.append(Block("table", headers=["class", "positives", f"P / R / F1 at {th.get('default_threshold')}",
                                          "best-F1 threshold", "P / R / F1 there"], rows=rows))
    if th.get("scope") == "binary":
        c = th["classes"][0]
        eo = c.get("equal_opportunity")
        if eo and eo.get("slices"):
            blocks.append(Block("heading", "Equal-opportunity thresholds", level=3))
            blocks.append(Block(
                "text",
                f"Per-slice thresholds that give every slice the overall recall of {c['class']} at the default "
                f"threshold ({_num(eo['target_recall'])}). The app's threshold slider moves this target.",
            ))
            blocks.append(Block(
                "table", headers=["slice", "positives", "recall at default", "threshold", "recall", "precision"],
                rows=[[f"{s['column']} = {s['value']}", str(s["positives"]), _num(s["recall_at_default"]),
                       _num(s["threshold"]), _num(s["recall"]), _num(s["precision"])]
                      for s in eo["slices"][:EO_SLICES_SHOWN]],
            ))
    return blocks


def _explanation_sections(metrics: schema.Metrics) -> list[Block]:
    quality = metrics.get("explanations")
    if not isinstance(quality, dict) or not quality:
        return []
    rows, empty = [], []
    for method, scores in quality.items():
        if isinstance(scores, dict):
            info: dict = dict(scores.get("no_signal") or {})
            rows.append([method, _num(scores.get("deletion_auc")), _num(scores.get("insertion_auc")),
                         str(scores.get("n", "")), f"{info['count']} of {info['of']}" if info else "–"])
            if info and info.get("count"):
                empty.append(Block("text", f"{method}: {info['count']} of {info['of']} maps have no signal "
                                           f"({info.get('reason')}); they are not findings. "
                                           f"Suggestion: {info.get('suggestion')}."))
    if not rows:
        return []
    return [
        Block("heading", "Explanation quality"),
        Block("text", "Mean area under the target-probability curve as the most salient pixels are removed "
                      "(deletion: lower is better) or revealed (insertion: higher is better)."),
        Block("table", headers=["method", "deletion AUC", "insertion AUC", "examples", "no signal"], rows=rows),
        *empty,
    ]


def _map_methods(run: Reader) -> list[str]:
    return [m for m in run.heatmap_methods if m != "activations"]


def _has_images(run: Reader) -> bool:
    try:
        run.image(0)
    except (StoreError, IndexError):
        return False
    return True


def _example_row(run: Reader, index: int, caption: str, methods: list[str]) -> list[Picture | str]:
    """One example: its image, then each method's map over it ("no map" where it has none)."""
    image = run.image(index)
    row: list[Picture | str] = [Picture(f"example_{index}", _image_png(render(image, at_least=128)), caption,
                                        width=128)]
    for method in methods:
        if not run.has_heatmap(index):
            row.append(f"{method}: no map")
            continue
        empty = run.no_signal(method, index)
        shown = render(image, at_least=128) if empty else render(image, run.heatmap(method, index), at_least=128)
        row.append(Picture(f"example_{index}_{schema.file_stem(method)}", _image_png(shown),
                           f"#{index}: {method}" + (f": no signal ({empty})" if empty else ""), width=128))
    return row


def _caption(run: Reader, r) -> str:
    names = run.class_names
    verdict = "right" if bool(r["correct"]) else "wrong"
    return (f"#{int(r['index'])}: true {names[int(r['label'])]}, predicted {names[int(r['pred'])]} "
            f"({_num(r['confidence'], 2)}, {verdict})")


def _legend_picture() -> Picture:
    return Picture("legend", _image_png(legend(DEFAULT_MODE, width=256, height=14)),
                   f"low to high relevance: {MODE_WORDS[DEFAULT_MODE]}", width=256)


def _grid(run: Reader, indices, methods: list[str]) -> Block:
    frame = run.predictions.set_index("index", drop=False)
    rows = [_example_row(run, int(i), _caption(run, frame.loc[int(i)]), methods) for i in indices]
    flat = [p for row in rows for p in row if isinstance(p, Picture)]
    return Block("pictures", headers=["example", "image", *methods], pictures=flat, grid=rows)


def _finding_sections(run: Reader, draw: bool) -> list[Block]:
    """The strongest finding first: its sentence, what it means, its mean map and its worst members."""
    finding = strongest_finding(run)
    if finding is None:
        return []
    blocks = [Block("heading", "Strongest finding"), Block("text", finding.sentence + "."),
              Block("text", meaning(finding))]
    found = source(finding)
    if found:
        blocks.append(Block("text", found[0].upper() + found[1:] + "."))
    if not (draw and _has_images(run) and len(finding.worst)):
        return blocks
    methods = _map_methods(run)
    if finding.heatmap is not None:
        mean = colorize(np.clip(np.asarray(finding.heatmap, np.float32), 0, 1), HEAT_CMAP)
        where = f"where {finding.label}" if finding.kind == "slice" or "predicate" in finding.filter else "in the group"
        blocks.append(Block("pictures", pictures=[
            Picture("finding_mean_map", _image_png(render(mean, at_least=128)),
                    f"mean map of the {finding.n} examples {where}", width=128),
            _legend_picture(),
        ]))
    blocks.append(Block("text", f"Its {len(finding.worst)} worst members: mistakes first, most confident first."))
    blocks.append(_grid(run, finding.worst, methods))
    return blocks


def _discovery_sections(run: Reader) -> list[Block]:
    """Groups found without annotations (error slices, heatmap strategies, searched conjunctions)."""
    groups = run.discovered()
    blocks: list[Block] = []
    if groups:
        blocks += [
            Block("heading", "Discovered groups"),
            Block("text", "Groups found by discovery, strongest first; q = Benjamini-Hochberg q-value over every "
                          "group its method tested. Significant: q < 0.05 and the gap's interval excludes zero."),
            Block("table", headers=["method", "group", "n", "accuracy [95% CI]", "gap to rest [95% CI]", "q",
                                    "significant"],
                  rows=[[str(g.get("method")), str(g.get("description") or g.get("group")), str(g.get("n")),
                         _with_ci(g.get("accuracy"), g.get("accuracy_ci")),
                         _with_ci(g.get("gap"), g.get("gap_ci"), is_signed=True),
                         "n/a" if g.get("q_value") is None else f"{g['q_value']:.2g}",
                         "yes" if g.get("significant") else "no"] for g in groups[:DISCOVERED_SHOWN]]),
        ]
    flagged = [a for a in run.attention() if a.get("flag")]
    # Every class first (few, and what a reader asks first), then the groups and slices, which can be many.
    ordered = [a for a in flagged if a.get("scope") == "class"] + [a for a in flagged if a.get("scope") != "class"]
    flags = [str(a["flag"]) for a in ordered[:ATTENTION_SHOWN]]
    if len(ordered) > ATTENTION_SHOWN:
        flags.append(f"... and {len(ordered) - ATTENTION_SHOWN} more groups and slices flagged (see the app)")
    if flags:
        blocks += [Block("heading", "Where the model looks", level=3), Block("bullets", items=flags)]
    notes = list(((run.metrics.get("discovery") or {}).get("notes")) or [])
    if notes:
        blocks.append(Block("bullets", items=notes))
    return blocks


def _mistake_sections(run: Reader, draw: bool) -> list[Block]:
    frame = run.predictions
    wrong = frame[~frame["correct"].astype(bool)].sort_values("confidence", ascending=False, kind="stable")
    if wrong.empty:
        return []
    wrong = wrong.head(MISTAKES)
    names = run.class_names
    blocks = [Block("heading", "Most confident mistakes")]
    has_images = _has_images(run)
    if not (has_images and draw):
        if not has_images:
            blocks.append(Block("text", "The run stored no images; the mistakes are listed without pictures."))
        blocks.append(Block(
            "table", headers=["example", "path", "true", "predicted", "confidence"],
            rows=[[str(r["index"]), str(r["path"]), names[int(r["label"])], names[int(r["pred"])],
                   _num(r["confidence"])] for _, r in wrong.iterrows()],
        ))
        return blocks
    methods = _map_methods(run)
    if not any(run.has_heatmap(int(i)) for i in wrong["index"]):
        blocks.append(Block("text", "None of these examples has a stored heatmap."))
    elif methods:
        blocks.append(Block("pictures", pictures=[_legend_picture()]))
    blocks.append(_grid(run, wrong["index"].to_numpy(), methods))
    return blocks


def build_report(run: Reader, *, pictures: bool = True) -> tuple[str, list[Block]]:
    """Title and content of the report of ``run``; ``pictures=False`` skips drawing them (text-only views)."""
    metrics = run.metrics
    model = run.model_info
    title = f"keras-audit report: {model.get('name', 'model')}"
    names = run.class_names
    dataset = run.manifest.get("dataset", {})
    source = dataset.get("source") or dataset.get("path")
    annotations = (dataset.get("annotations") or {}).get("path")
    about = (
        f"Model {model.get('path', model.get('name', ''))} on {metrics.get('num_examples', run.num_examples)} examples"
        f"{' from ' + str(source) if source else ''}"
        f"{' annotated by ' + str(annotations) if annotations else ''}; {len(names)} classes "
        f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}). Store: {run.path}."
    )
    if run.manifest.get("finished_at"):
        about += f" Finished {run.manifest['finished_at']}."
    blocks = [Block("text", about)]
    words = preprocessing_words(run.manifest.get("preprocessing"))
    if words:
        blocks.append(Block("text", f"preprocessing: {words}"))
    blocks += _finding_sections(run, pictures)
    blocks += [Block("heading", "Headline"), _headline(metrics)]
    blocks += _slice_sections(metrics, pictures)
    blocks += _discovery_sections(run)
    blocks += _model_sections(metrics, pictures)
    blocks += _threshold_sections(metrics)
    blocks += _explanation_sections(metrics)
    blocks += _mistake_sections(run, pictures)
    notes = list(dict.fromkeys([*run.manifest.get("notes", []), *metrics.get("notes", [])]))
    if notes:
        blocks += [Block("heading", "Notes"), Block("bullets", items=notes)]
    return title, blocks


# -- rendering --------------------------------------------------------------------------------
CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
@media (max-width: 900px) { table { display: block; max-width: 100%; overflow-x: auto; } }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td.num { white-space: nowrap; }
figure { display: inline-block; margin: 0.3em; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.75em; max-width: 260px; color: #555; }
img.small { image-rendering: pixelated; }
.grid { display: flex; flex-wrap: wrap; gap: 0.6em 1.2em; margin: 0.6em 0; padding: 0; list-style: none; }
.example { display: flex; flex-wrap: nowrap; gap: 0.3em; align-items: flex-start; max-width: 100%;
           border-top: 1px solid #ddd; padding-top: 0.3em; }
.example figure { margin: 0; width: 128px; flex: 0 1 auto; min-width: 0; }
.example .missing { width: 128px; flex: 0 1 auto; min-width: 0; margin: 0; font-size: 0.75em; color: #777;
                    padding-top: 3em; text-align: center; }
"""


# A number with its interval ("0.509 [0.434, 0.584]") reads only on one line.
_NUMERIC = re.compile(r"^[-+]?(\d|n/a)[\d.]*(e[-+]?\d+)?( \[[-+]?[\d.]+, [-+]?[\d.]+\])?$")


def _html_cell(text: str) -> str:
    cls = ' class="num"' if _NUMERIC.match(text) else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def _html_figure(p: Picture) -> str:
    data = base64.b64encode(p.png).decode("ascii")
    size = f' width="{p.width}" class="small"' if p.width else ""
    alt = html.escape(p.alt)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"{size}><figcaption>{alt}</figcaption></figure>'


def render_html(title: str, blocks: list[Block]) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{esc(title)}</title><style>{CSS}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    for b in blocks:
        if b.kind == "heading":
            out.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif b.kind == "text":
            out.append(f"<p>{esc(b.text)}</p>")
        elif b.kind == "bullets":
            out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in b.headers)
            body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "pictures" and not b.grid:
            out.extend(_html_figure(p) for p in b.pictures)
        elif b.kind == "pictures":
            # A list of examples: each item one example's pictures, which wrap between items, not inside.
            out.append('<ul class="grid">' + "".join(
                '<li class="example">' + "".join(
                    _html_figure(p) if isinstance(p, Picture) else f'<p class="missing">{esc(p)}</p>'
                    for p in row) + "</li>"
                for row in b.grid) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(title: str, blocks: list[Block], assets: str) -> tuple[str, dict[str, bytes]]:
    """Markdown text, and the picture files it links to (relative names under ``assets``).

    Blocks hold plain text, so every piece is escaped here, where it becomes Markdown.
    """
    out, files = [f"# {md_text(title)}", ""], {}
    for b in blocks:
        if b.kind == "heading":
            out += ["#" * b.level + " " + md_text(b.text), ""]
        elif b.kind == "text":
            out += [md_text(b.text), ""]
        elif b.kind == "bullets":
            out += [f"- {md_text(i)}" for i in b.items] + [""]
        elif b.kind == "table":
            out.append("| " + " | ".join(md_text(h) for h in b.headers) + " |")
            out.append("|" + "---|" * len(b.headers))
            out += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif b.kind == "pictures" and not b.grid:
            for p in b.pictures:
                files[f"{assets}/{p.name}.png"] = p.png
                out.append(_md_picture(p, assets))
            out.append("")
        elif b.kind == "pictures":  # a table: one row per example, so its pictures stay together
            out.append("| " + " | ".join(md_text(h) for h in b.headers) + " |")
            out.append("|" + "---|" * len(b.headers))
            for row in b.grid:
                cells = [md_text(row[0].alt if isinstance(row[0], Picture) else row[0])]
                for cell in row:
                    if isinstance(cell, Picture):
                        files[f"{assets}/{cell.name}.png"] = cell.png
                    cells.append(_md_picture(cell, assets) if isinstance(cell, Picture) else md_text(cell))
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out), files


def _md_picture(p: Picture, assets: str) -> str:
    # The folder is named after the report file, which may hold spaces or parentheses.
    return f"![{md_text(p.alt)}]({urllib.parse.quote(f'{assets}/{p.name}.png')})"


def write_report(store_dir: Path, fmt: str = "html", out: Path | None = None) -> Path:
    """Write the report of the run in ``store_dir`` and return its path.

    Args:
        store_dir: a finished results store.
        fmt: ``"html"`` (one self-contained file) or ``"md"`` (pictures in ``<name>_files/``).
        out: the file to write; default ``store_dir/report.<fmt>``. A directory
            gets ``report.<fmt>`` inside it. Files written inside the store are
            listed as its own (a re-run into the store removes them).

    Raises:
        StoreError: the store is missing, incomplete, or has no metrics.json.
        AuditError: ``fmt`` is not one of ``md``, ``html``.
    """
    if fmt not in FORMATS:
        raise AuditError(f"report format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = Reader(store_dir)
    title, blocks = build_report(run)
    path = Path(out) if out is not None else Path(store_dir) / f"report.{fmt}"
    if path.is_dir():
        path = path / f"report.{fmt}"
    if fmt == "html":
        _write_file(run.path, path, render_html(title, blocks).encode("utf-8"))
        return path
    text, files = render_markdown(title, blocks, f"{path.stem}_files")
    for rel, data in files.items():  # pictures first: the report links to them
        _write_file(run.path, path.parent / rel, data)
    _write_file(run.path, path, text.encode("utf-8"))
    return path


def _write_file(store: Path, path: Path, data: bytes) -> None:
    """Write atomically; inside the store, as one of the store's own files, so a re-run removes it."""
    try:
        rel = path.resolve().relative_to(store.resolve())
    except ValueError:
        atomic_write_bytes(path, data)
        return
    write_owned_file(store, rel.as_posix(), data)
