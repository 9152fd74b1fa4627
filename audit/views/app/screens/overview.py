"""Overview: headline metrics, per-class table, confusion matrix, flagged slices."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from audit.views.app import charts, links, store_cache
from audit.views.format import interval, md_text, number, percent


def share_interval(ci) -> str:
    return interval(ci, as_percent=True, missing="n/a")


run, _ = store_cache.active()
m = store_cache.metrics(run)
names = m["class_names"]
explained = store_cache.manifest(run).get("explained", {})

st.title(f"Overview · {md_text(run.name)}")
st.caption(f"{md_text(run.path)} · {m['num_examples']} examples · {len(names)} classes · "
           f"finished {md_text(store_cache.manifest(run).get('finished_at', '?'))}")

cols = st.columns(6)
cols[0].metric("Accuracy", percent(m.get("accuracy")), help=f"95% interval {share_interval(m.get('accuracy_ci'))}")
cols[1].metric("Balanced accuracy", percent(m.get("balanced_accuracy")),
               help=f"95% interval {share_interval(m.get('balanced_accuracy_ci'))}")
cols[2].metric("Macro F1", number(m.get("macro_f1")))
cols[3].metric("Log loss", number(m.get("log_loss")))
cols[4].metric("ECE", number((m.get("calibration") or {}).get("ece")), help="expected calibration error")
cols[5].metric("Explained", f"{explained.get('count', 0)}",
               help=md_text(", ".join(explained.get("methods", [])) or "none"))
st.caption(f"Accuracy 95% interval {share_interval(m.get('accuracy_ci'))} · "
           f"balanced accuracy {share_interval(m.get('balanced_accuracy_ci'))}")

left, right = st.columns([1, 1])
with left:
    st.subheader("Per class")
    per_class = pd.DataFrame(m.get("per_class") or [])
    curves = {c["class"]: c for c in (m.get("curves") or {}).get("per_class") or []}
    if not per_class.empty:
        per_class["average precision"] = [curves.get(c, {}).get("average_precision") for c in per_class["class"]]
        per_class["ROC AUC"] = [curves.get(c, {}).get("roc_auc") for c in per_class["class"]]
    st.dataframe(per_class, hide_index=True, width="stretch", key="ov_per_class",
                 column_config={k: st.column_config.NumberColumn(format="%.3f")
                                for k in ("precision", "recall", "f1", "average precision", "ROC AUC")})

with right:
    st.subheader("Confusion matrix")
    matrix = m.get("confusion_matrix") or []
    cells = pd.DataFrame([
        {"true": names[t], "pred": names[p], "count": int(c), "share": c / max(sum(row), 1)}
        for t, row in enumerate(matrix) for p, c in enumerate(row)
    ])
    st.caption("Click a cell to open its examples in the gallery.")
    event = st.altair_chart(charts.confusion_matrix(cells), on_select="rerun", key="ov_cm", width="stretch")
    picked = event.selection.get(charts.PICK) if event and event.selection else None
    if picked:
        cell = picked[0]
        links.open_gallery(true=[names.index(cell["true"])], pred=[names.index(cell["pred"])])
    # Start on the most frequent confusion: the cell most worth opening.
    off = [(c, t, p) for t, row in enumerate(matrix) for p, c in enumerate(row) if t != p]
    _most, top_t, top_p = max(off) if off else (0, 0, 0)
    a, b, c = st.columns([2, 2, 2], vertical_alignment="bottom")
    t = a.selectbox("True class", range(len(names)), index=top_t, format_func=names.__getitem__, key="ov_true")
    p = b.selectbox("Predicted class", range(len(names)), index=top_p, format_func=names.__getitem__, key="ov_pred")
    count = matrix[t][p] if matrix else 0
    if c.button(f"Show {count} examples", key="ov_open_cell"):
        links.open_gallery(true=[t], pred=[p])

st.subheader("Flagged slices")
summary = (m.get("slices") or {}).get("summary") or {}
rows = store_cache.slice_rows(run)
if rows.empty:
    st.info("This run has no annotations to slice by.")
else:
    pairs = st.toggle("Include pairs of annotations", value=False, key="ov_pairs")
    flagged = rows[rows["flagged"] & ~rows["too_small"]]
    if not pairs:
        flagged = flagged[[len(c) == 1 for c in flagged["columns"]]]
    if not flagged.empty:  # rows too small to test carry no gap at all
        flagged = flagged.sort_values(["gap", "n"], ascending=[True, False])
    st.caption(
        f"{summary.get('flagged', len(rows[rows['flagged']]))} of {summary.get('tested', len(rows))} slices "
        f"have an accuracy gap to the rest whose 95% interval excludes zero "
        f"(about {summary.get('expected_flagged_by_chance', '?')} expected by chance). "
        "Ranked from the worst gap; slices under the minimum size are left out here (see Slices)."
    )
    if flagged.empty:
        st.success("No slice differs from the rest beyond its interval.")
    else:
        shown = flagged.head(25).assign(label=lambda f: f["column"] + " = " + f["value"])
        st.altair_chart(charts.gap_forest(shown), width="stretch", key="ov_gaps")
        table = shown[["column", "value", "n", "accuracy", "accuracy_ci_lo", "accuracy_ci_hi", "gap",
                       "gap_ci_lo", "gap_ci_hi"]]
        st.dataframe(table, hide_index=True, width="stretch", key="ov_flagged",
                     column_config={"value": st.column_config.TextColumn(width="medium"),
                                    **{k: st.column_config.NumberColumn(format="%.3f")
                                       for k in ("accuracy", "accuracy_ci_lo", "accuracy_ci_hi", "gap", "gap_ci_lo",
                                                 "gap_ci_hi")}})
        options = list(zip(shown["column"], shown["value"]))
        a, b = st.columns([4, 1], vertical_alignment="bottom")
        choice = a.selectbox("Slice", range(len(options)), key="ov_slice",
                             format_func=lambda i: f"{options[i][0]} = {options[i][1]} ({shown['n'].iloc[i]} examples)")
        if b.button("Show its examples", key="ov_open_slice"):
            links.open_gallery(annotation=options[choice][0], values=[options[choice][1]])

notes = list(m.get("notes") or [])
if notes:
    with st.expander(f"Notes ({len(notes)})"):
        for note in notes:
            st.markdown(f"- {md_text(note)}")
