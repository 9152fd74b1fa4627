"""Compare A and B: paired differences overall, per class and per slice; the examples they disagree on.

The page shows the comparison run A keeps (``keras-audit app A B`` computes it before the server
starts, ``keras-audit compare A B --save`` at any time); it never runs the bootstrap itself.
"""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from audit.errors import StoreError
from audit.views.app import charts, links, store_cache
from audit.views.format import interval, md_text, percent

PER_PAGE = 8
WINNER = {"a": "A better", "b": "B better", "tie": "no clear winner", None: "—"}
# Table headers in words (the frames keep the stored names).
HEADERS = {"recall_a": "recall A", "recall_b": "recall B", "accuracy_a": "accuracy A", "accuracy_b": "accuracy B",
           "difference": "B − A", "interval": "B − A, 95% interval", "n": "examples", "too_small": "too small to test",
           "column": "annotation", "value": "slice"}

run_a, run_b = store_cache.runs()  # the pair as started, whichever run the sidebar shows
st.title("Compare A and B")
if run_b is None:
    st.info("Start the app with two runs of the same examples (`keras-audit app OUT_A OUT_B`) to compare them.")
    st.stop()
try:
    result = store_cache.comparison(run_a, run_b)
except StoreError as e:
    st.error(f"**These two runs cannot be compared.**\n\n{md_text(e)}", icon=":material/block:")
    st.stop()
if result is None:
    st.info("Run A keeps no comparison with this version of run B. `keras-audit app A B` computes it before the "
            "app starts; or run this, then reload the page:", icon=":material/compare_arrows:")
    st.code(store_cache.compare_command(run_a, run_b), language="bash")
    st.stop()

st.markdown(f"**A** · {md_text(result['a']['model'])} · {md_text(result['a']['path'])}  \n"
            f"**B** · {md_text(result['b']['model'])} · {md_text(result['b']['path'])}")
st.caption(f"{result['num_examples']} examples; differences are B − A with paired bootstrap 95% intervals "
           f"({result['bootstrap']} resamples): a model wins where the whole interval is on its side of zero.")


def difference_interval(ci) -> str:
    return interval(ci, is_signed=True, as_percent=True, missing="no interval")


def _differences(frame: pd.DataFrame, columns: list[str], numbers: tuple[str, ...], key: str) -> None:
    """A table of differences B − A, with each interval and winner in words."""
    table = frame.assign(interval=[difference_interval(c) for c in frame["difference_ci"]],
                         winner=[WINNER[w] for w in frame["winner"]])
    st.dataframe(table[columns], hide_index=True, width="stretch", key=key,
                 column_config={c: (st.column_config.NumberColumn(HEADERS.get(c, c), format="%.3f") if c in numbers
                                    else st.column_config.Column(HEADERS.get(c, c))) for c in columns})


o, g = result["overall"], result["agreement"]
cols = st.columns(4)
for col, name, key in ((cols[0], "Accuracy", "accuracy"), (cols[1], "Balanced accuracy", "balanced_accuracy")):
    col.metric(f"{name} A → B", percent(o[f"{key}_b"]), percent(o[f"{key}_difference"], is_signed=True),
               help=f"A: {percent(o[f'{key}_a'])}")
    col.caption(f"A {percent(o[f'{key}_a'])} · B − A {difference_interval(o.get(f'{key}_difference_ci'))} · "
                f"{WINNER[o.get(f'{key}_winner')]}")
cols[2].metric("Predictions differ", f"{g['predictions_differ']}",
               help=f"{percent(g['predictions_differ_rate'])} of examples")
cols[2].caption(f"only A right {g['only_a_right']} · only B right {g['only_b_right']} · "
                f"both right {g['both_right']} · both wrong {g['both_wrong']}")
p = o.get("mcnemar_p")
cols[3].metric("McNemar p", "n/a" if p is None else f"{p:.3g}",
               help="exact test on the examples exactly one model gets right")

st.subheader("Recall per class")
per_class = pd.DataFrame(result["per_class"])
if not per_class.empty:
    _differences(per_class, ["class", "support", "recall_a", "recall_b", "difference", "interval", "winner"],
                 ("recall_a", "recall_b", "difference"), "cmp_classes")

st.subheader("Per-slice differences")
slices = pd.DataFrame(result["slices"])
if slices.empty:
    st.info("Run A has no annotations to slice by.")
else:
    slices["lo"] = [c[0] if c else None for c in slices["difference_ci"]]
    slices["hi"] = [c[1] if c else None for c in slices["difference_ci"]]
    slices["label"] = slices["column"] + " = " + slices["value"]
    a, b = st.columns([3, 2], vertical_alignment="bottom")
    choices = ["(all)", *dict.fromkeys(slices["column"])]
    notice = links.from_url("annotation", "cmp_column", choices, why="not an annotation of these runs")
    if notice:
        st.info(notice, icon=":material/link_off:")
    if st.session_state.get("cmp_column") not in choices:
        st.session_state.cmp_column = "(all)"
    column = a.selectbox("Annotation", choices, key="cmp_column")
    links.to_url(annotation=None if column == "(all)" else column)
    decided = b.toggle("Only slices one model wins", value=False, key="cmp_decided")
    shown = slices if column == "(all)" else slices[slices["column"] == column]
    if decided:
        shown = shown[shown["winner"].isin(["a", "b"])]
    if shown.empty:
        st.info("No slice separates the two models beyond its interval.")
    else:
        st.altair_chart(charts.slice_difference(shown), width="stretch", key="cmp_slice_chart")
        _differences(shown, ["column", "value", "n", "accuracy_a", "accuracy_b", "difference", "interval", "winner",
                             "too_small"], ("accuracy_a", "accuracy_b", "difference"), "cmp_slices")

st.subheader("Where they disagree")
disagreements = pd.DataFrame(result["disagreements"])
if disagreements.empty:
    st.success("The two models predict the same class on every example.")
    st.stop()
methods_a, methods_b = store_cache.heatmap_methods(run_a), store_cache.heatmap_methods(run_b)
common = [m for m in methods_a if m in methods_b]
a, b, c = st.columns([3, 3, 2])
who = a.radio("Right answer from", ["any", "A only", "B only", "neither"], horizontal=True, key="cmp_right")
shown_map = b.radio("Heatmap", [*common, "none"], horizontal=True, key="cmp_method",
                    format_func=lambda m: md_text(store_cache.method_title(run_a, m)))  # radio options are Markdown
alpha = c.slider("Opacity", 0.0, 1.0, 0.45, 0.05, key="cmp_alpha")
wanted = {"any": None, "A only": "a", "B only": "b", "neither": "neither"}[who]
rows = disagreements if wanted is None else disagreements[disagreements["right"] == wanted]
pages = max(1, math.ceil(len(rows) / PER_PAGE))
top = st.columns([5, 2], vertical_alignment="bottom")
top[0].markdown(f"**{len(rows)} of {g['predictions_differ']} disagreements** "
                "(one model right and the other confidently wrong first)")
st.session_state["cmp_page"] = min(max(1, int(st.session_state.get("cmp_page", 1))), pages)
page = top[1].number_input("Page", min_value=1, max_value=pages, step=1, key="cmp_page")
method = None if shown_map == "none" else shown_map
explained_a, explained_b = set(store_cache.explained(run_a).tolist()), set(store_cache.explained(run_b).tolist())
for r in rows.iloc[(page - 1) * PER_PAGE: page * PER_PAGE].to_dict("records"):
    i = int(r["index"])
    with st.container(border=True):
        left, mid, right = st.columns([1, 1, 2])
        for col, run, side, explained in ((left, run_a, "a", explained_a), (mid, run_b, "b", explained_b)):
            col.image(store_cache.picture(run, i, method, alpha), width="stretch",
                      caption=f"{side.upper()}: {md_text(r['pred_' + side])} ({percent(r['confidence_' + side], 0)})"
                              + ("" if method is None or i in explained else " · no map"))
        right.markdown(f"**#{i}** · true **{md_text(r['label'])}**  \n"
                       f"A says {md_text(r['pred_a'])} ({percent(r['confidence_a'])}) · "
                       f"B says {md_text(r['pred_b'])} ({percent(r['confidence_b'])})  \n"
                       f"right: **{ {'a': 'A', 'b': 'B', 'neither': 'neither'}[r['right']] }**"
                       + (f"  \n{md_text(r['path'])}" if r.get("path") else ""))
        if right.button("Open in example detail (A)", key=f"cmp_open_{i}"):
            links.open_example(i)
