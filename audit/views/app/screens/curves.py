"""Curves & thresholds: PR and ROC per class, a threshold slider, equal-opportunity thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from audit.errors import StoreError
from audit.store import schema
from audit.views.app import charts, operating_point, store_cache
from audit.views.format import md_text, number

run, _ = store_cache.active()
m = store_cache.metrics(run)
frame = store_cache.predictions(run)
curves = [c for c in (m.get("curves") or {}).get("per_class") or [] if c.get("pr") and c.get("roc")]
thresholds = {c["index"]: c for c in (m.get("thresholds") or {}).get("classes") or []}

st.title("Curves & thresholds")
if not curves:
    st.info("This run stored no per-class curves.")
    st.stop()
positive = (m.get("curves") or {}).get("positive_class")
if positive is not None:
    st.caption(f"Binary model: curves are for the positive class {md_text(repr(positive))}.")

by_index = {c["index"]: c for c in curves}
if st.session_state.get("cv_class") not in by_index:
    st.session_state.cv_class = curves[0]["index"]
st.session_state.setdefault("cv_threshold", float((m.get("thresholds") or {}).get("default_threshold", 0.5)))

controls = st.columns([2, 3, 2], vertical_alignment="bottom")
k = controls[0].selectbox("Class (one against the rest)", list(by_index), key="cv_class",
                          format_func=lambda i: by_index[i]["class"])
controls[1].slider("Threshold", 0.0, 1.0, step=0.01, key="cv_threshold",
                   help="an example counts as this class when its probability is at least the threshold")
stored = thresholds.get(k)


def _use(value: float) -> None:
    st.session_state.cv_threshold = round(float(value), 2)


if stored and stored.get("best_f1", {}).get("threshold") is not None:
    best = stored["best_f1"]
    controls[2].button(f"Use best-F1 threshold ({best['threshold']:.2f})", on_click=_use,
                       args=(best["threshold"],), key="cv_best")
threshold = float(st.session_state.cv_threshold)

chosen = by_index[k]
score = frame[schema.prob_column(k)].to_numpy(np.float64)
truth = frame["label"].to_numpy() == k
point = operating_point.at_threshold(score, truth, threshold)

pr_lines: list[pd.DataFrame] = []
roc_lines: list[pd.DataFrame] = []
for c in curves:
    pr = pd.DataFrame({"recall": c["pr"]["recall"], "precision": c["pr"]["precision"]})
    roc = pd.DataFrame({"fpr": c["roc"]["fpr"], "tpr": c["roc"]["tpr"]})
    for lines, table in ((pr_lines, pr), (roc_lines, roc)):
        lines.append(table.assign(**{"class": c["class"], "chosen": c["index"] == k, "order": np.arange(len(table))}))
pr_point = pd.DataFrame([{"recall": point["recall"], "precision": point["precision"], "threshold": threshold}]).dropna()
roc_point = pd.DataFrame([{"fpr": point["fpr"], "tpr": point["recall"], "threshold": threshold}]).dropna()

left, right = st.columns(2)
with left:
    st.markdown(f"**Precision–recall** · average precision of {md_text(chosen['class'])}: "
                f"{chosen.get('average_precision') or float('nan'):.3f}")
    st.altair_chart(charts.curve(pd.concat(pr_lines), "recall", "precision", "recall", "precision", pr_point),
                    width="stretch", key="cv_pr")
with right:
    st.markdown(f"**ROC** · area under the curve of {md_text(chosen['class'])}: "
                f"{chosen.get('roc_auc') or float('nan'):.3f}")
    st.altair_chart(charts.curve(pd.concat(roc_lines), "fpr", "tpr", "false positive rate", "true positive rate",
                                 roc_point, diagonal=True), width="stretch", key="cv_roc")


st.subheader(f"At threshold {threshold:.2f}: {md_text(chosen['class'])} against the rest")
cols = st.columns([1, 1, 1, 3])
cols[0].metric("Precision", number(point["precision"]))
cols[1].metric("Recall", number(point["recall"]))
cols[2].metric("F1", number(point["f1"]))
with cols[3]:
    st.dataframe(pd.DataFrame({f"said {chosen['class']}": [point["tp"], point["fp"]],
                               "said other": [point["fn"], point["tn"]]},
                              index=[f"is {chosen['class']}", "is other"]), width="stretch", key="cv_matrix")
if stored:
    notes = []
    for label, key in (("default", "default"), ("best F1", "best_f1")):
        s = stored.get(key) or {}
        if s.get("threshold") is not None:
            notes.append(f"{label}: threshold {s['threshold']:.3f} → precision {number(s.get('precision'))}, "
                         f"recall {number(s.get('recall'))}, F1 {number(s.get('f1'))}")
    st.caption("Stored: " + " · ".join(notes))

slice_names = [c["column"] for c in store_cache.slice_columns(run) if len(c["columns"]) == 1]
if slice_names:
    st.markdown("**Per slice at this threshold**")
    if st.session_state.get("cv_slice_column") not in slice_names:
        st.session_state.cv_slice_column = slice_names[0]
    name = st.selectbox("Annotation", slice_names, key="cv_slice_column")
    column = next(c for c in store_cache.slice_columns(run) if c["column"] == name)
    try:
        labels = store_cache.slice_labels(run, name)
    except StoreError as e:
        st.error(md_text(e))
        st.stop()
    table = operating_point.per_slice(score, truth, labels, column["values"], threshold)
    st.dataframe(table[["value", "n", "positives", "precision", "recall", "f1", "tp", "fp", "fn", "tn"]],
                 hide_index=True, width="stretch", key="cv_slices",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("precision", "recall", "f1")})

st.subheader("Equal-opportunity thresholds")
opportunity = (stored or {}).get("equal_opportunity") or {}
eo_rows = opportunity.get("slices") or []
if not eo_rows:
    st.info("No equal-opportunity thresholds stored for this class (no annotations, or no positives).")
else:
    grid = list((m.get("thresholds") or {}).get("target_recall_grid") or [])
    stored_target = opportunity.get("target_recall")
    targets = sorted({*grid, *([stored_target] if stored_target is not None else [])})
    default_target = stored_target if stored_target is not None else targets[-1]
    target = st.select_slider("Target recall in every slice", targets, value=default_target, key="cv_target",
                              format_func=lambda t: f"{t:.3f}" + (" (class recall at the default threshold)"
                                                                  if t == stored_target else ""))
    st.caption("Per slice, the highest threshold at which that slice's recall reaches the target: using these "
               "thresholds gives every slice the same chance of being recognised (the What-If Tool's "
               "equal-opportunity strategy).")
    table = []
    for r in eo_rows:
        if target == stored_target:
            t, recall, precision = r.get("threshold"), r.get("recall"), r.get("precision")
        else:
            at = grid.index(target)
            t, recall, precision = r["grid_thresholds"][at], None, r["grid_precision"][at]
        table.append({"annotation": r["column"], "value": r["value"], "positives": r["positives"],
                      "recall at default": r.get("recall_at_default"), "threshold": t, "recall": recall,
                      "precision": precision})
    table = pd.DataFrame(table)
    if table["recall"].isna().all():
        table = table.drop(columns="recall")
    st.dataframe(table, hide_index=True, width="stretch", key="cv_eo",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("recall at default", "threshold", "recall", "precision")})
