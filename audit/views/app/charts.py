"""Altair charts of the app, built from tables; Streamlit draws them natively.

Charts that open examples carry a point selection named :data:`PICK`; a page
passes them to ``st.altair_chart(..., on_select="rerun")`` and reads
``event.selection[PICK]``.
"""

from __future__ import annotations

from typing import TypeAlias

import altair as alt
import pandas as pd

PICK = "pick"
# What alt.layer returns: a FacetChart when every layer shares a facet encoding (none here do).
Layered: TypeAlias = alt.LayerChart | alt.FacetChart
WORSE, BETTER, NEUTRAL, SMALL = "#d62728", "#2ca02c", "#4c78a8", "#c7c7c7"


def confusion_matrix(cells: pd.DataFrame) -> alt.Chart | Layered:
    """Cells ``true, pred, count, share`` (share of the true class); click a cell to pick it."""
    classes = cells["true"].nunique()
    pick = alt.selection_point(name=PICK, fields=["true", "pred"], on="click")
    base = alt.Chart(cells).encode(
        x=alt.X("pred:N", title="predicted class", sort=in_order(cells["pred"]),
                axis=alt.Axis(labelAngle=0 if classes <= 8 else -60, orient="top")),
        y=alt.Y("true:N", title="true class", sort=in_order(cells["true"])),
    )
    rect = base.mark_rect(stroke="white", strokeWidth=2 if classes <= 20 else 0).encode(
        color=alt.Color("share:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), title="share of true class",
                        legend=alt.Legend(orient="bottom", format="%", gradientLength=160)),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.55)),
        tooltip=["true", "pred", "count", alt.Tooltip("share:Q", format=".1%")],
    ).add_params(pick)
    # Rows shrink with the number of classes so a 100-class matrix stays on a screen;
    # counts are written in the cells only while they fit.
    step = int(max(6, min(44, 640 // max(classes, 1))))
    if step < 24:
        return rect.properties(height=alt.Step(step))
    text = base.mark_text(fontSize=14 if step >= 36 else 10).encode(
        text="count:Q",
        color=alt.condition(alt.datum.share > 0.5, alt.value("white"), alt.value("black")),
    )
    return alt.layer(rect, text).properties(height=alt.Step(step))


def in_order(values) -> list[str]:
    """An explicit sort for a nominal axis: the rows' own order, written into the spec.

    ``sort=None`` leaves the order to Vega's data flow, which keeps the categories of the previous
    data when Streamlit swaps in new rows for an unchanged spec: the chart kept its old ranking
    after a toggle. A literal list changes the spec with the order and fixes the domain.
    """
    return [str(v) for v in dict.fromkeys(values)]


def slice_accuracy(rows: pd.DataFrame, overall: float | None, *, title: str = "slice",
                   legend_columns: int = 4) -> Layered:
    """Accuracy per slice value with its interval; ``too_small`` slices grey; click a bar to pick it.

    ``rows`` needs ``value, n, accuracy, accuracy_ci_lo, accuracy_ci_hi, gap, flagged, too_small``
    and may carry ``label``, the words under each bar (else the value); bars are drawn in the
    rows' order, ``title`` names the x axis (the annotation). A click picks the stored ``value``.
    """
    data = rows.assign(status=[_status(r) for r in rows.itertuples()],
                       label=rows["label"] if "label" in rows else rows["value"])
    pick = alt.selection_point(name=PICK, fields=["value"], on="click")
    colours = alt.Scale(domain=["worse than the rest", "better than the rest", "no significant gap", "too small"],
                        range=[WORSE, BETTER, NEUTRAL, SMALL])
    x = alt.X("label:N", sort=in_order(data["label"]), title=title,
              axis=alt.Axis(labelAngle=-30 if len(rows) <= 6 else -45, labelLimit=360, labelOverlap=False))
    bars = alt.Chart(data).mark_bar().encode(
        x=x,
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy (95% interval)"),
        color=alt.Color("status:N", scale=colours, title=None,
                        legend=alt.Legend(orient="bottom", columns=legend_columns, labelLimit=0)),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.5)),
        tooltip=[alt.Tooltip("label:N", title="slice"), "n", alt.Tooltip("accuracy:Q", format=".1%"),
                 alt.Tooltip("accuracy_ci_lo:Q", format=".1%", title="lo"),
                 alt.Tooltip("accuracy_ci_hi:Q", format=".1%", title="hi"),
                 alt.Tooltip("gap:Q", format="+.1%"), "status"],
    ).add_params(pick)
    errors = alt.Chart(data).mark_rule(strokeWidth=2, color="black").encode(
        x=x, y="accuracy_ci_lo:Q", y2="accuracy_ci_hi:Q")
    # Sizes sit at the foot of each bar, clear of the interval whiskers at the top.
    sizes = alt.Chart(data.assign(foot=0.0)).mark_text(
        dy=-8, fontSize=11, color="white", fontWeight="bold").encode(x=x, y="foot:Q", text=alt.Text("n:Q", format="d"))
    rule = alt.Chart(pd.DataFrame({"overall": [overall]})).mark_rule(
        strokeDash=[5, 4], color="#555").encode(y="overall:Q")
    # The height holds the axis labels and the legend too (Streamlit fits the whole chart).
    return alt.layer(bars, errors, sizes, rule).properties(height=460)


def _status(row) -> str:
    if row.too_small:
        return "too small"
    if row.flagged:
        return "worse than the rest" if row.gap < 0 else "better than the rest"
    return "no significant gap"


def gap_forest(rows: pd.DataFrame) -> Layered:
    """Gap to the rest of the data per slice, with intervals; ``label`` names the slice."""
    data = rows.assign(side=["worse" if g < 0 else "better" for g in rows["gap"]])
    y = alt.Y("label:N", sort=in_order(data["label"]), title=None, axis=alt.Axis(labelLimit=360))
    points = alt.Chart(data).mark_point(filled=True, size=70).encode(
        x=alt.X("gap:Q", title="accuracy gap vs the rest (95% interval)", axis=alt.Axis(format="+%")),
        y=y,
        color=alt.Color("side:N", scale=alt.Scale(domain=["worse", "better"], range=[WORSE, BETTER]), legend=None),
        tooltip=["label", "n", alt.Tooltip("accuracy:Q", format=".1%"), alt.Tooltip("gap:Q", format="+.1%"),
                 alt.Tooltip("gap_ci_lo:Q", format="+.1%", title="lo"),
                 alt.Tooltip("gap_ci_hi:Q", format="+.1%", title="hi")],
    )
    bars = alt.Chart(data).mark_rule(strokeWidth=2).encode(
        x="gap_ci_lo:Q", x2="gap_ci_hi:Q", y=y,
        color=alt.Color("side:N", scale=alt.Scale(domain=["worse", "better"], range=[WORSE, BETTER]), legend=None))
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(color="#555").encode(x="x:Q")
    return alt.layer(bars, points, zero).properties(height=alt.Step(24))


def probabilities(frame: pd.DataFrame) -> alt.Chart:
    """Horizontal bars ``class, probability, role`` (role: true / predicted / both / other)."""
    colours = alt.Scale(domain=["true class", "predicted (wrong)", "true and predicted", "other"],
                        range=[BETTER, WORSE, NEUTRAL, SMALL])
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        y=alt.Y("class:N", sort=in_order(frame["class"]), title=None),
        color=alt.Color("role:N", scale=colours, title=None, legend=alt.Legend(orient="bottom")),
        tooltip=["class", alt.Tooltip("probability:Q", format=".2%")],
    ).properties(height=alt.Step(26))


# Rates live on [0, 1]; a curve along 0 or 1 (a perfect class's precision) would lie on the frame,
# so the domain is padded and the ticks stay on [0, 1].
_RATE = alt.Scale(domain=[-0.02, 1.03], nice=False, zero=False)
_RATE_TICKS = [0, 0.2, 0.4, 0.6, 0.8, 1.0]
# One dash per class, so lines that coincide (two perfect classes) are still told apart.
_DASHES = [[1, 0], [6, 3], [2, 2], [8, 3, 2, 3], [4, 4], [1, 3]]


def _rate_axis(field: str, title: str, channel):
    return channel(f"{field}:Q", title=title, scale=_RATE, axis=alt.Axis(values=_RATE_TICKS, format=".1f"))


def curve(lines: pd.DataFrame, x: str, y: str, x_title: str, y_title: str, point: pd.DataFrame | None,
          diagonal: bool = False, baseline: float | None = None) -> Layered:
    """Lines ``class, x, y`` (one per class; the chosen one ``chosen`` = True is drawn bold, on top)
    and the operating point at the current threshold.

    ``diagonal`` draws chance for ROC; ``baseline`` the no-skill precision of a PR curve (the
    chosen class's prevalence). Legends carry whole class names.
    """
    classes = in_order(lines["class"])
    colour = alt.Color("class:N", title="class", sort=classes, scale=alt.Scale(domain=classes),
                       legend=alt.Legend(orient="bottom", labelLimit=0, columns=min(len(classes), 4)))
    dashes = [_DASHES[i % len(_DASHES)] for i in range(len(classes))]
    dash = alt.StrokeDash("class:N", sort=classes, legend=None, scale=alt.Scale(domain=classes, range=dashes))
    layers = []
    if diagonal:
        layers.append(alt.Chart(pd.DataFrame({x: [0, 1], y: [0, 1]})).mark_line(strokeDash=[4, 4], color="#999")
                      .encode(x=f"{x}:Q", y=f"{y}:Q"))
    if baseline is not None:
        rule = pd.DataFrame({y: [baseline], "words": [f"no skill: precision {baseline:.2f} (prevalence)"]})
        layers.append(alt.Chart(rule).mark_rule(strokeDash=[2, 3], color="#666").encode(y=f"{y}:Q", tooltip=["words"]))
        layers.append(alt.Chart(rule).mark_text(align="left", dx=4, dy=-7, color="#555", fontSize=11, x=0)
                      .encode(y=f"{y}:Q", text="words:N"))
    for chosen in (False, True):  # the chosen class last: drawn over the others
        part = lines[lines["chosen"] == chosen]
        if part.empty:
            continue
        line = alt.Chart(part).mark_line(interpolate="linear" if diagonal else "step-after",
                                         strokeWidth=3 if chosen else 1.5, opacity=1.0 if chosen else 0.6)
        layers.append(line.encode(
            x=_rate_axis(x, x_title, alt.X), y=_rate_axis(y, y_title, alt.Y), color=colour, strokeDash=dash,
            detail="class:N", order="order:Q", tooltip=["class"]))
    if point is not None and len(point):
        layers.append(alt.Chart(point).mark_point(filled=True, size=140, color="black").encode(
            x=f"{x}:Q", y=f"{y}:Q", tooltip=[alt.Tooltip("threshold:Q", format=".3f"),
                                             alt.Tooltip(f"{x}:Q", format=".3f"), alt.Tooltip(f"{y}:Q", format=".3f")]))
    return alt.layer(*layers).properties(height=380)


def reliability(bins: pd.DataFrame, reachable: float = 0.0) -> Layered:
    """Bins ``lo, hi, centre, accuracy, confidence, count`` (and ``accuracy_lo, accuracy_hi`` when the
    run stored intervals): accuracy per confidence bin vs the diagonal, each bin's size above it.

    The x axis starts at ``reachable``: a top-label confidence is never below 1 / classes, so the
    bins under it are always empty and only squeeze the ones that matter.
    """
    filled = bins.dropna(subset=["accuracy"]).assign(zero=0.0, words=lambda f: [f"n={int(c)}" for c in f["count"]])
    x_scale = alt.Scale(domain=[reachable, 1], nice=False, zero=False)
    y_scale = alt.Scale(domain=[0, 1.08], nice=False)
    diagonal = alt.Chart(pd.DataFrame({"x": [reachable, 1], "y": [reachable, 1]})).mark_line(
        strokeDash=[4, 4], color="#999").encode(
        x=alt.X("x:Q", title="confidence (top class probability)", scale=x_scale, axis=alt.Axis(tickCount=8)),
        y=alt.Y("y:Q", title="accuracy", scale=y_scale, axis=alt.Axis(values=_RATE_TICKS, format=".0%")))
    tooltip = [alt.Tooltip("lo:Q", format=".2f"), alt.Tooltip("hi:Q", format=".2f"), "count:Q",
               alt.Tooltip("accuracy:Q", format=".1%"), alt.Tooltip("confidence:Q", format=".1%")]
    has_ci = {"accuracy_lo", "accuracy_hi"} <= set(filled.columns) and filled["accuracy_lo"].notna().any()
    if has_ci:
        tooltip += [alt.Tooltip("accuracy_lo:Q", format=".1%", title="95% low"),
                    alt.Tooltip("accuracy_hi:Q", format=".1%", title="95% high")]
    bars = alt.Chart(filled).mark_bar(opacity=0.75, color=NEUTRAL, stroke="white").encode(
        x="lo:Q", x2="hi:Q", y="accuracy:Q", y2="zero:Q", tooltip=tooltip)
    gaps = alt.Chart(filled).mark_rule(color=WORSE, strokeWidth=2).encode(
        x="centre:Q", y="accuracy:Q", y2="confidence:Q")
    means = alt.Chart(filled).mark_point(color=WORSE, filled=True, shape="diamond", size=60).encode(
        x="confidence:Q", y="confidence:Q")
    # Sizes in a row along the top, clear of the bars, diamonds and whiskers they would hide.
    sizes = alt.Chart(filled.assign(row=1.05)).mark_text(fontSize=11, color="#333").encode(
        x="centre:Q", y="row:Q", text="words:N")
    layers = [diagonal, bars, gaps, means, sizes]
    if has_ci:
        layers.insert(2, alt.Chart(filled).mark_rule(color="black", strokeWidth=1.5).encode(
            x=alt.X("centre:Q"), y="accuracy_lo:Q", y2="accuracy_hi:Q"))
    return alt.layer(*layers).properties(height=420)


def confidence_histogram(bins: pd.DataFrame, reachable: float = 0.0) -> alt.Chart:
    """How many examples fall in each confidence bin, on the same axis as :func:`reliability`."""
    return alt.Chart(bins[bins["hi"] > reachable].assign(zero=0)).mark_bar(color="#888", stroke="white").encode(
        x=alt.X("lo:Q", title="confidence (top class probability)", axis=alt.Axis(tickCount=8),
                scale=alt.Scale(domain=[reachable, 1], nice=False, zero=False)), x2="hi:Q",
        y=alt.Y("count:Q", title="examples"), y2="zero:Q", tooltip=["count:Q"]).properties(height=200)


def channel_stats(stats: pd.DataFrame) -> Layered:
    """Per-channel mean of this example (bars) against the dataset mean (ticks), when stored."""
    base = alt.Chart(stats).encode(x=alt.X("channel:O", title="channel"))
    layers = [base.mark_bar(color=NEUTRAL).encode(y=alt.Y("mean:Q", title="mean activation"),
                                                  tooltip=["channel", alt.Tooltip("mean:Q", format=".3f"),
                                                           alt.Tooltip("max:Q", format=".3f"),
                                                           alt.Tooltip("frac_zero:Q", format=".0%")])]
    if "dataset_mean" in stats:
        layers.append(base.mark_tick(color=WORSE, thickness=2, size=14).encode(y="dataset_mean:Q"))
    return alt.layer(*layers).properties(height=260)


def slice_difference(rows: pd.DataFrame) -> Layered:
    """Per-slice accuracy difference B - A with its interval; ``label`` names the slice."""
    y = alt.Y("label:N", sort=in_order(rows["label"]), title=None, axis=alt.Axis(labelLimit=360))
    side = alt.Color("side:N", scale=alt.Scale(domain=["B better", "A better", "no clear difference"],
                                               range=[BETTER, WORSE, NEUTRAL]), title=None,
                     legend=alt.Legend(orient="bottom"))
    data = rows.assign(side=["B better" if lo > 0 else "A better" if hi < 0 else "no clear difference"
                             for lo, hi in zip(rows["lo"].fillna(0), rows["hi"].fillna(0))])
    points = alt.Chart(data).mark_point(filled=True, size=70).encode(
        x=alt.X("difference:Q", title="accuracy of B minus A (95% interval)", axis=alt.Axis(format="+%")),
        y=y, color=side,
        tooltip=["label", alt.Tooltip("difference:Q", format="+.1%"), alt.Tooltip("lo:Q", format="+.1%"),
                 alt.Tooltip("hi:Q", format="+.1%")])
    bars = alt.Chart(data).mark_rule(strokeWidth=2).encode(x="lo:Q", x2="hi:Q", y=y, color=side)
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(color="#555").encode(x="x:Q")
    return alt.layer(bars, points, zero).properties(height=alt.Step(24))
