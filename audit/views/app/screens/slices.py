"""Slices: accuracy per annotation value (or pair of values) with intervals and disparity.

Discovered groups (``found_errors``, ``found_strategy``) are offered beside the annotations,
with the figures discovery stored. The page opens on the annotation with the worst flagged
slice; the choice lives in the address (``?annotation=cue&crossed=background&slice=present``).
With two runs open, the sidebar can put A and B side by side.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from audit.views.app import charts, links, store_cache
from audit.views.format import interval, md_text, number, percent

NOTHING = "(nothing: one annotation)"  # a real option: a None value shows as "Choose an option"
# Table headers in words; the stored names stay the frame's columns.
HEADERS = {"label": "slice", "n": "examples", "accuracy": "accuracy", "accuracy_ci_lo": "accuracy 95% low",
           "accuracy_ci_hi": "accuracy 95% high", "accuracy_interval": "accuracy 95% interval",
           "gap": "gap to the rest", "gap_ci_lo": "gap 95% low", "gap_ci_hi": "gap 95% high",
           "gap_interval": "gap 95% interval", "flagged": "flagged", "too_small": "too small",
           "below_parents": "below both alone"}
SHARES = ("accuracy", "accuracy_ci_lo", "accuracy_ci_hi", "gap", "gap_ci_lo", "gap_ci_hi")

shown_runs = store_cache.shown()
run = shown_runs[0]
m = store_cache.metrics(run)
columns = store_cache.slice_columns(run) + store_cache.discovery_columns(run)
singles = [c["column"] for c in columns if len(c["columns"]) == 1]
by_name = {c["column"]: c for c in columns}

st.title("Slices")
skipped = (m.get("slices") or {}).get("skipped") or []
if not singles:
    st.info("This run has no annotation to slice by."
            + (" Skipped: " + md_text("; ".join(f"{s['column']} ({s['reason']})" for s in skipped)) if skipped else ""))
    st.stop()


def _pair(a: str, b: str) -> str | None:
    if b == NOTHING:
        return a
    return next((name for name in (f"{a} & {b}", f"{b} & {a}") if name in by_name), None)


def _annotation_words(column: str) -> str:
    kind = by_name[column].get("kind")
    return f"{column} (discovered groups)" if kind == store_cache.DISCOVERED_KIND else column


def _worst_annotation() -> str:
    """The annotation whose flagged slice has the worst gap: where a first look should land."""
    worst = store_cache.flagged_slices(run, pairs=False).rows
    worse = worst[worst["gap"] < 0] if not worst.empty else worst
    return str(worse["column"].iloc[0]) if not worse.empty and worse["column"].iloc[0] in singles else singles[0]


notices = [links.from_url("annotation", "sl_annotation", singles, why="not an annotation of this run")]
if st.session_state.get("sl_annotation") not in singles:
    st.session_state.sl_annotation = _worst_annotation()
pick = st.columns(2)
first = pick[0].selectbox("Annotation", singles, key="sl_annotation", format_func=_annotation_words)
partners = [c for c in singles if c != first and _pair(first, c)]
notices.append(links.from_url("crossed", "sl_pair", partners,
                              why=f"not an annotation crossed with {md_text(first)} in this run"))
if st.session_state.get("sl_pair") not in [NOTHING, *partners]:
    st.session_state.sl_pair = NOTHING
second = pick[1].selectbox("Crossed with", [NOTHING, *partners], key="sl_pair", disabled=not partners,
                           help=None if partners else "no intersections of this annotation were sliced")
pair = _pair(first, second)
assert pair is not None  # partners only holds annotations that have a stored pair with ``first``
name: str = pair
column = by_name[name]
rows = store_cache.slice_rows(run, name)
for notice in filter(None, notices):
    st.info(notice, icon=":material/link_off:")

details = [f"kind: {md_text(column['kind'])}"]
if column.get("bin_edges"):
    details.append("quantile bins of the values")
if column.get("missing"):
    details.append(f"{column['missing']} rows without a value")
st.caption(" · ".join(details))


def disparity_line(disparity: dict) -> str:
    """The disparity figures in one line, for a half-width column (two runs side by side)."""
    parts = [f"accuracy gap (best − worst) **{percent(disparity['accuracy_gap'])}** "
             + interval(disparity.get("accuracy_gap_ci"), as_percent=True, missing="")]
    if disparity.get("accuracy_ratio") is not None:
        parts.append(f"ratio (worst / best) **{number(disparity['accuracy_ratio'], 2)}**")
    if disparity.get("equal_opportunity_gap") is not None:
        parts.append(f"equal-opportunity gap **{percent(disparity['equal_opportunity_gap'])}** "
                     f"(class {md_text(disparity.get('equal_opportunity_class'))})")
    return " · ".join(parts)


def disparity_figures(disparity: dict) -> None:
    cols = st.columns(3)
    gap_interval = interval(disparity.get("accuracy_gap_ci"), as_percent=True, missing="no interval")
    cols[0].metric("Accuracy gap (best − worst)", percent(disparity['accuracy_gap']),
                   help=f"{md_text(disparity['best'])} vs {md_text(disparity['worst'])}; 95% interval {gap_interval}")
    cols[0].caption(f"95% interval {gap_interval}")
    if disparity.get("accuracy_ratio") is not None:
        cols[1].metric("Accuracy ratio (worst / best)", number(disparity['accuracy_ratio'], 2))
        cols[1].caption("95% interval " + interval(disparity.get("accuracy_ratio_ci"), digits=2, missing="no interval"))
    if disparity.get("equal_opportunity_gap") is not None:
        cols[2].metric("Equal-opportunity gap", percent(disparity['equal_opportunity_gap']),
                       help=f"largest spread of one class's recall between values "
                            f"(class {md_text(disparity.get('equal_opportunity_class'))})")
        cols[2].caption(f"class {md_text(disparity.get('equal_opportunity_class'))} · 95% interval "
                        + interval(disparity.get("equal_opportunity_gap_ci"), as_percent=True, missing="no interval"))


def worst_in_words(rows: pd.DataFrame) -> str | None:
    """The worst flagged slice as a sentence: numbers drawn only in a chart are missed by a skim."""
    tested = rows[rows["flagged"] & ~rows["too_small"] & (rows["gap"] < 0)].sort_values("gap")
    if tested.empty:
        return None
    r = tested.iloc[0]
    return (f"Worst: **{md_text(r['label'])}**, accuracy {percent(r['accuracy'])} on {int(r['n'])} examples, "
            f"{percent(-r['gap'])} below the rest (gap 95% interval "
            f"{interval(r['gap_ci'], is_signed=True, as_percent=True, missing='none')}).")


def one_run(shown: store_cache.RunRef, letter: str, *, narrow: bool = False) -> None:
    """Disparity, chart and table of slice ``name`` in run ``shown`` (``letter``: "A"/"B"/"");
    ``narrow`` in a half-width column."""
    table = store_cache.slice_rows(shown, name)
    if table.empty:
        st.info(f"Run {letter} has no slices of {md_text(name)}.")
        return
    if letter:
        st.subheader(f"Run {letter} · {md_text(shown.name)}")
    own = next((c for c in store_cache.slice_columns(shown) if c["column"] == name), None)
    disparity = (own or {}).get("disparity")
    if disparity and narrow:
        st.markdown(disparity_line(disparity))
    elif disparity:
        disparity_figures(disparity)
    words = worst_in_words(table)
    if words:
        st.markdown(words)
    # One annotation: its values under the bars (the axis title names it); else the words.
    plain = len(column["columns"]) == 1 and column.get("kind") != store_cache.DISCOVERED_KIND
    drawn = table.assign(label=table["value"] if plain else table["label"])
    bars = charts.slice_accuracy(drawn, store_cache.metrics(shown)["accuracy"], title=name,
                                 legend_columns=2 if narrow else 4)
    event = st.altair_chart(bars, on_select="rerun", key=f"sl_chart{letter}", width="stretch")
    picked = event.selection.get(charts.PICK) if event and event.selection else None
    if picked:
        links.open_gallery(annotation=name, values=[picked[0]["value"]])
    # Each figure beside its interval, in words: the table fits the page with every column.
    table = table.assign(
        accuracy_interval=[interval(c, digits=3, missing="none") for c in table["accuracy_ci"]],
        gap_interval=[interval(c, is_signed=True, digits=3, missing="none") for c in table["gap_ci"]])
    order = [c for c in ("label", "n", "accuracy", "accuracy_interval", "gap", "gap_interval", "flagged", "too_small",
                         "below_parents") if c in table]
    headers = {c: st.column_config.Column(HEADERS[c]) for c in order if c not in (*SHARES, "label")}
    st.dataframe(table, hide_index=True, width="stretch", key=f"sl_table{letter}", column_order=order,
                 column_config={"label": st.column_config.TextColumn(HEADERS["label"], width="medium"), **headers,
                                **{c: st.column_config.NumberColumn(HEADERS[c], format="%.3f") for c in SHARES}})


st.caption("Bars: accuracy of each slice with its 95% (Wilson) interval; numbers: slice sizes; dashed line: "
           f"overall accuracy. Slices under {m['slices'].get('min_slice_size', '?')} examples are grey. "
           "Click a bar to open its examples in the gallery.")
if len(shown_runs) > 1:
    for col, shown, letter in zip(st.columns(2), shown_runs, ("A", "B")):
        with col:
            one_run(shown, letter, narrow=True)
else:
    one_run(run, store_cache.run_letter(run))

a, b = st.columns([4, 1], vertical_alignment="bottom")
values = rows["value"].tolist()
sizes = dict(zip(rows["value"], rows["n"]))
labels = dict(zip(rows["value"], rows["label"]))
value_notice = links.from_url("slice", "sl_value", values, why=f"not a slice of {md_text(name)} in this run")
if value_notice:
    st.info(value_notice, icon=":material/link_off:")
if st.session_state.get("sl_value") not in values:
    # Set, not dropped: only a value set here is pushed to the browser's widget. The worst first.
    tested = rows[~rows["too_small"]].sort_values("gap")
    st.session_state.sl_value = tested["value"].iloc[0] if not tested.empty else values[0]
value = a.selectbox("Slice", values, key="sl_value", format_func=lambda v: f"{labels[v]} ({sizes[v]} examples)")
if b.button("Show its examples", key="sl_open"):
    links.open_gallery(annotation=name, values=[value])
links.to_url(annotation=first, crossed=None if second == NOTHING else second, slice=value)

if skipped:
    st.caption("Not sliced: " + md_text("; ".join(f"{s['column']} ({s['reason']})" for s in skipped)))
