"""Slices: accuracy per annotation value (or pair of values) with intervals and disparity."""

from __future__ import annotations

import streamlit as st

from audit.views.app import charts, links, store_cache
from audit.views.format import interval, md_text, number, percent

run, _ = store_cache.active()
m = store_cache.metrics(run)
columns = store_cache.slice_columns(run)
singles = [c["column"] for c in columns if len(c["columns"]) == 1]
by_name = {c["column"]: c for c in columns}

st.title("Slices")
skipped = (m.get("slices") or {}).get("skipped") or []
if not singles:
    st.info("This run has no annotation to slice by."
            + (" Skipped: " + md_text("; ".join(f"{s['column']} ({s['reason']})" for s in skipped)) if skipped else ""))
    st.stop()


def _pair(a: str, b: str | None) -> str | None:
    if b is None:
        return a
    return next((name for name in (f"{a} & {b}", f"{b} & {a}") if name in by_name), None)


if st.session_state.get("sl_annotation") not in singles:
    st.session_state.sl_annotation = singles[0]
pick = st.columns(2)
first = pick[0].selectbox("Annotation", singles, key="sl_annotation")
partners = [c for c in singles if c != first and _pair(first, c)]
if st.session_state.get("sl_pair") not in [None, *partners]:
    st.session_state.sl_pair = None
second = pick[1].selectbox("Crossed with", [None, *partners], key="sl_pair",
                           format_func=lambda c: "(nothing: one annotation)" if c is None else c,
                           disabled=not partners,
                           help=None if partners else "this run has no intersections of annotations")
name = _pair(first, second)
assert name is not None  # partners only holds annotations that have a stored pair with ``first``
column = by_name[name]
rows = store_cache.slice_rows(run, name)

details = [f"kind: {md_text(column['kind'])}"]
if column.get("bin_edges"):
    details.append("quantile bins of the values")
if column.get("missing"):
    details.append(f"{column['missing']} rows without a value")
st.caption(" · ".join(details))

disparity = column.get("disparity")
if disparity:
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

st.caption("Bars: accuracy of each slice with its 95% (Wilson) interval; numbers: slice sizes; dashed line: "
           f"overall accuracy. Slices under {m['slices'].get('min_slice_size', '?')} examples are grey. "
           "Click a bar to open its examples in the gallery.")
event = st.altair_chart(charts.slice_accuracy(rows, m["accuracy"]), on_select="rerun", key="sl_chart",
                        width="stretch")
picked = event.selection.get(charts.PICK) if event and event.selection else None
if picked:
    links.open_gallery(annotation=name, values=[picked[0]["value"]])

table_columns = ["value", "n", "accuracy", "accuracy_ci_lo", "accuracy_ci_hi", "gap", "gap_ci_lo", "gap_ci_hi",
                 "flagged", "too_small"] + (["below_parents"] if "below_parents" in rows else [])
st.dataframe(rows[table_columns], hide_index=True, width="stretch", key="sl_table",
             column_config={"value": st.column_config.TextColumn(width="medium"),
                            **{k: st.column_config.NumberColumn(format="%.3f")
                               for k in ("accuracy", "accuracy_ci_lo", "accuracy_ci_hi", "gap", "gap_ci_lo",
                                         "gap_ci_hi")}})

a, b = st.columns([4, 1], vertical_alignment="bottom")
values = rows["value"].tolist()
sizes = dict(zip(rows["value"], rows["n"]))
if st.session_state.get("sl_value") not in values:
    # Set, not dropped: only a value set here is pushed to the browser's widget.
    st.session_state.sl_value = values[0]
value = a.selectbox("Slice", values, key="sl_value", format_func=lambda v: f"{v} ({sizes[v]} examples)")
if b.button("Show its examples", key="sl_open"):
    links.open_gallery(annotation=name, values=[value])

if skipped:
    st.caption("Not sliced: " + md_text("; ".join(f"{s['column']} ({s['reason']})" for s in skipped)))
