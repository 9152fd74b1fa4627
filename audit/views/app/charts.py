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
        x=alt.X("pred:N", title="predicted class", sort=None,
                axis=alt.Axis(labelAngle=0 if classes <= 8 else -60, orient="top")),
        y=alt.Y("true:N", title="true class", sort=None),
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


def slice_accuracy(rows: pd.DataFrame, overall: float | None) -> Layered:
    """Accuracy per slice value with its interval; ``too_small`` slices grey; click a bar to pick it.

    ``rows`` needs ``value, n, accuracy, accuracy_ci_lo, accuracy_ci_hi, gap, flagged, too_small``.
    """
    data = rows.assign(status=[_status(r) for r in rows.itertuples()])
    pick = alt.selection_point(name=PICK, fields=["value"], on="click")
    colours = alt.Scale(domain=["worse than the rest", "better than the rest", "no significant gap", "too small"],
                        range=[WORSE, BETTER, NEUTRAL, SMALL])
    x = alt.X("value:N", sort=None, title=None,
              axis=alt.Axis(labelAngle=-30 if len(rows) <= 6 else -45, labelLimit=180, labelOverlap=False))
    bars = alt.Chart(data).mark_bar().encode(
        x=x,
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy (95% interval)"),
        color=alt.Color("status:N", scale=colours, title=None, legend=alt.Legend(orient="bottom")),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.5)),
        tooltip=["value", "n", alt.Tooltip("accuracy:Q", format=".1%"),
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
    y = alt.Y("label:N", sort=None, title=None, axis=alt.Axis(labelLimit=320))
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
        y=alt.Y("class:N", sort=None, title=None),
        color=alt.Color("role:N", scale=colours, title=None, legend=alt.Legend(orient="bottom")),
        tooltip=["class", alt.Tooltip("probability:Q", format=".2%")],
    ).properties(height=alt.Step(26))


def curve(lines: pd.DataFrame, x: str, y: str, x_title: str, y_title: str, point: pd.DataFrame | None,
          diagonal: bool = False) -> Layered:
    """Lines ``class, x, y`` (one per class; the chosen one ``chosen`` = True is drawn bold)
    and the operating point at the current threshold."""
    layers = []
    if diagonal:
        layers.append(alt.Chart(pd.DataFrame({x: [0, 1], y: [0, 1]})).mark_line(strokeDash=[4, 4], color="#999")
                      .encode(x=f"{x}:Q", y=f"{y}:Q"))
    layers.append(alt.Chart(lines).mark_line(interpolate="step-after" if not diagonal else "linear").encode(
        x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(domain=[0, 1])),
        y=alt.Y(f"{y}:Q", title=y_title, scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("class:N", title="class"),
        strokeWidth=alt.condition(alt.datum.chosen, alt.value(3), alt.value(1)),
        opacity=alt.condition(alt.datum.chosen, alt.value(1.0), alt.value(0.45)),
        detail="class:N",
        order="order:Q",
    ))
    if point is not None and len(point):
        layers.append(alt.Chart(point).mark_point(filled=True, size=140, color="black").encode(
            x=f"{x}:Q", y=f"{y}:Q", tooltip=[alt.Tooltip("threshold:Q", format=".3f"),
                                             alt.Tooltip(f"{x}:Q", format=".3f"), alt.Tooltip(f"{y}:Q", format=".3f")]))
    return alt.layer(*layers).properties(height=360)


def reliability(bins: pd.DataFrame) -> Layered:
    """Bins ``lo, hi, centre, accuracy, confidence, count``: accuracy per confidence bin vs the diagonal."""
    filled = bins.dropna(subset=["accuracy"]).assign(zero=0.0)
    diagonal = alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line(strokeDash=[4, 4], color="#999").encode(
        x=alt.X("x:Q", title="confidence", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("y:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])))
    bars = alt.Chart(filled).mark_bar(opacity=0.75, color=NEUTRAL, stroke="white").encode(
        x="lo:Q", x2="hi:Q", y="accuracy:Q", y2="zero:Q",
        tooltip=[alt.Tooltip("lo:Q", format=".2f"), alt.Tooltip("hi:Q", format=".2f"), "count:Q",
                 alt.Tooltip("accuracy:Q", format=".1%"), alt.Tooltip("confidence:Q", format=".1%")])
    gaps = alt.Chart(filled).mark_rule(color=WORSE, strokeWidth=2).encode(
        x="centre:Q", y="accuracy:Q", y2="confidence:Q")
    means = alt.Chart(filled).mark_point(color=WORSE, filled=True, shape="diamond", size=60).encode(
        x="confidence:Q", y="confidence:Q")
    return alt.layer(diagonal, bars, gaps, means).properties(height=420)


def confidence_histogram(bins: pd.DataFrame) -> alt.Chart:
    return alt.Chart(bins.assign(zero=0)).mark_bar(color="#888", stroke="white").encode(
        x=alt.X("lo:Q", title="confidence", scale=alt.Scale(domain=[0, 1])), x2="hi:Q",
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
    y = alt.Y("label:N", sort=None, title=None, axis=alt.Axis(labelLimit=320))
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
