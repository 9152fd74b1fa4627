"""Curves & thresholds: PR and ROC per class, a threshold slider, equal-opportunity thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from audit.errors import StoreError
from audit.store import schema
from audit.views.app import charts, links, operating_point, store_cache
from audit.views.format import md_text, number

shown_runs = store_cache.shown()
run = shown_runs[0]
m = store_cache.metrics(run)
frame = store_cache.predictions(run)
thresholds = {c["index"]: c for c in (m.get("thresholds") or {}).get("classes") or []}


def drawn_curves(shown: store_cache.RunRef) -> list[dict]:
    return [c for c in (store_cache.metrics(shown).get("curves") or {}).get("per_class") or []
            if c.get("pr") and c.get("roc")]


curves = drawn_curves(run)
st.title("Curves & thresholds")
if not curves:
    st.info("This run stored no per-class curves.")
    st.stop()
positive = (m.get("curves") or {}).get("positive_class")
by_index = {c["index"]: c for c in curves}
# A binary model's headline is its positive class; the others' one-vs-rest curves are drawn too.
headline = next((c["index"] for c in curves if positive is not None and c["class"] == positive), curves[0]["index"])
if positive is not None:
    st.caption(f"Binary model: the positive class is {md_text(repr(positive))}"
               + ("; every class's one-against-the-rest curve is drawn." if len(curves) > 1 else "."))

notice = links.from_url("class", "cv_class", list(by_index), why="not the index of a class with a curve in this run")
if notice:
    st.info(notice, icon=":material/link_off:")
if st.session_state.get("cv_class") not in by_index:
    st.session_state.cv_class = headline
st.session_state.setdefault("cv_threshold", float((m.get("thresholds") or {}).get("default_threshold", 0.5)))

controls = st.columns([2, 3, 2], vertical_alignment="bottom")
k = controls[0].selectbox("Class (one against the rest)", list(by_index), key="cv_class",
                          format_func=lambda i: by_index[i]["class"])
controls[1].slider("Threshold", 0.0, 1.0, step=0.01, key="cv_threshold",
                   help="an example counts as this class when its probability is at least the threshold")
links.to_url(**{"class": k})
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


def lines_of(shown: store_cache.RunRef, prefix: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PR and ROC lines of every class of ``shown`` (``prefix`` names the run when two are drawn)."""
    pr_lines: list[pd.DataFrame] = []
    roc_lines: list[pd.DataFrame] = []
    for c in drawn_curves(shown):
        pr = pd.DataFrame({"recall": c["pr"]["recall"], "precision": c["pr"]["precision"]})
        roc = pd.DataFrame({"fpr": c["roc"]["fpr"], "tpr": c["roc"]["tpr"]})
        for lines, table in ((pr_lines, pr), (roc_lines, roc)):
            lines.append(table.assign(**{"class": prefix + c["class"], "chosen": c["index"] == k,
                                         "order": np.arange(len(table))}))
    return pd.concat(pr_lines), pd.concat(roc_lines)


both = len(shown_runs) > 1
drawn = [lines_of(r, f"{store_cache.run_letter(r)}: " if both else "") for r in shown_runs]
pr_lines, roc_lines = pd.concat([d[0] for d in drawn]), pd.concat([d[1] for d in drawn])
pr_point = pd.DataFrame([{"recall": point["recall"], "precision": point["precision"], "threshold": threshold}]).dropna()
roc_point = pd.DataFrame([{"fpr": point["fpr"], "tpr": point["recall"], "threshold": threshold}]).dropna()
prevalence = chosen["positives"] / max(len(frame), 1)

if both:
    st.caption(f"Runs A and B drawn together (A: {md_text(shown_runs[0].name)}, B: {md_text(shown_runs[1].name)}); "
               "the point and the figures below are run A's.")
left, right = st.columns(2)
with left:
    st.markdown(f"**Precision–recall** · average precision of {md_text(chosen['class'])}: "
                f"{number(chosen.get('average_precision'))} · no skill: {number(prevalence)} (its prevalence)")
    st.altair_chart(charts.curve(pr_lines, "recall", "precision", "recall", "precision", pr_point,
                                 baseline=prevalence), width="stretch", key="cv_pr")
with right:
    st.markdown(f"**ROC** · area under the curve of {md_text(chosen['class'])}: "
                f"{number(chosen.get('roc_auc'))} · no skill: 0.500 (the diagonal)")
    st.altair_chart(charts.curve(roc_lines, "fpr", "tpr", "false positive rate", "true positive rate",
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

# Annotations, then discovered groups: the same filters as the slices page.
filter_columns = store_cache.slice_columns(run) + store_cache.discovery_columns(run)
slice_names = [c["column"] for c in filter_columns if len(c["columns"]) == 1]
if slice_names:
    st.markdown("**Per slice at this threshold**")
    if st.session_state.get("cv_slice_column") not in slice_names:
        st.session_state.cv_slice_column = slice_names[0]
    name = st.selectbox("Annotation", slice_names, key="cv_slice_column")
    column = next(c for c in filter_columns if c["column"] == name)
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
