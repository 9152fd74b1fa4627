"""Example detail: the image, every heatmap, the probabilities, annotations, activations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from audit.store import schema
from audit.views.app import charts, links, pictures, store_cache
from audit.views.format import md_text, number

run, _ = store_cache.active()
frame = store_cache.predictions(run)
names = store_cache.class_names(run)
methods = store_cache.heatmap_methods(run)
explained = store_cache.explained(run)
count = len(frame)
# Stored indices are positions in the dataset listing: a skipped image leaves a gap.
indices = np.sort(frame["index"].to_numpy())

# A link (?example=17) wins over the session's last choice, once per distinct link.
linked = st.query_params.get_all("example")
notice = None
if linked and linked != st.session_state.get("_ex_linked"):
    st.session_state["_ex_linked"] = linked
    chosen, notice = links.linked_example(linked, indices)
    if chosen is not None:
        st.session_state[links.EXAMPLE_INDEX] = chosen
st.session_state.setdefault(links.EXAMPLE_INDEX, int(explained[0]) if len(explained) else int(indices[0]))
# The nearest stored index at or after the asked one (the number box can land in a gap).
asked = int(st.session_state[links.EXAMPLE_INDEX])
st.session_state[links.EXAMPLE_INDEX] = int(indices[min(int(np.searchsorted(indices, asked)), len(indices) - 1)])


def annotation_text(value) -> str:
    """An annotation as the table shows it: numbers through audit.views.format, text as it is."""
    if pd.isna(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return number(float(value))
    return str(value)


def _step(order: list[int], by: int) -> None:
    current = st.session_state[links.EXAMPLE_INDEX]
    if current in order:
        st.session_state[links.EXAMPLE_INDEX] = order[(order.index(current) + by) % len(order)]
    elif order:
        st.session_state[links.EXAMPLE_INDEX] = order[0]


st.title("Example detail")
if notice:
    st.info(notice)
order = st.session_state.get(links.GALLERY_ORDER) or frame["index"].tolist()
explained_list = explained.tolist()
nav = st.columns([2, 1, 1, 1, 1], vertical_alignment="bottom")
nav[0].number_input(f"Example index ({indices[0]}–{indices[-1]})", min_value=int(indices[0]),
                    max_value=int(indices[-1]), step=1, key=links.EXAMPLE_INDEX)
nav[1].button("◀ Previous in gallery", on_click=_step, args=(order, -1), key="ex_prev", width="stretch")
nav[2].button("Next in gallery ▶", on_click=_step, args=(order, 1), key="ex_next", width="stretch")
nav[3].button("Next explained ▶", on_click=_step, args=(explained_list, 1), key="ex_next_explained",
              disabled=not explained_list, width="stretch")
if nav[4].button("Back to gallery", key="ex_back", width="stretch"):
    st.switch_page(links.GALLERY)

index = int(st.session_state[links.EXAMPLE_INDEX])
st.query_params["example"] = str(index)
st.session_state["_ex_linked"] = [str(index)]
row = frame.loc[frame["index"] == index].iloc[0]
true, pred = names[int(row["label"])], names[int(row["pred"])]
verdict = "correct" if row["correct"] else "wrong"
st.subheader(f"#{index} · true {md_text(true)} · predicted {md_text(pred)} ({row['confidence']:.1%}) · {verdict}")
if isinstance(row.get("path"), str) and row["path"]:
    st.caption(md_text(row["path"]))

has_maps = store_cache.reader(run).has_heatmap(index)
st.session_state.setdefault("ex_alpha", 0.6)
if has_maps:
    # How the maps are drawn sits with them, above the pictures it changes.
    a, b, c = st.columns([3, 2, 3], vertical_alignment="bottom")
    mode = pictures.mode_picker(a, "ex_mode")
    b.slider("Heatmap opacity", 0.0, 1.0, step=0.05, key="ex_alpha", disabled=mode in ("contour", "side by side"))
    pictures.legend(c, mode, alpha=st.session_state.ex_alpha)
    shown_methods = methods
else:
    mode, shown_methods = pictures.current_mode(), []
# Fixed-size panels (nearest-neighbour enlarged to DETAIL px): a 64 px input is not stretched to the page.
panels = st.columns(1 + len(shown_methods)) if mode != "side by side" else [st.container() for _ in
                                                                            range(1 + len(shown_methods))]
# "content": the picture's own DETAIL px, narrowed to its column when the page is too narrow for all.
panels[0].image(pictures.picture(run, index, None, mode, 0.0, at_least=pictures.DETAIL), caption="image",
                width="content")
for col, method in zip(panels[1:], shown_methods):
    title, empty = md_text(store_cache.method_title(run, method)), store_cache.no_signal(run, method, index)
    drawn = pictures.picture(run, index, method, mode, st.session_state.ex_alpha, at_least=pictures.DETAIL)
    col.image(drawn, caption=f"{title}: no signal ({md_text(empty)})" if empty else title, width="content")
    if empty:
        suggestion = store_cache.no_signal_info(run, method).get("suggestion")
        col.caption(f"Not a finding: the map is empty. Suggestion: {md_text(suggestion)}." if suggestion
                    else "Not a finding: the map is empty.")
if has_maps:
    with st.expander("Raw maps"):
        raw = st.columns(len(methods))
        for col, method in zip(raw, methods):
            col.image(store_cache.heatmap_colours(run, method, index), width=pictures.THUMB,
                      caption=f"{md_text(store_cache.method_title(run, method))} "
                              + ("(no signal: all zeros)" if store_cache.no_signal(run, method, index)
                                 else "(0 blue … 1 red)"))
else:
    st.info(f"No heatmap for this example: the run explained {len(explained)} of {count} examples "
            "(use “Next explained” to jump to one). The viewer never computes maps; a follow-up run adds "
            "this example's to the store:")
    st.code(pictures.explain_command(run, [index]), language="bash", wrap_lines=True)

left, right = st.columns(2)
with left:
    st.markdown("**Probabilities**")
    probs = [float(row[schema.prob_column(k)]) for k in range(len(names))]
    roles = ["true and predicted" if k == row["label"] == row["pred"] else "true class" if k == row["label"]
             else "predicted (wrong)" if k == row["pred"] else "other" for k in range(len(names))]
    table = pd.DataFrame({"class": names, "probability": probs, "role": roles})
    if len(names) > 20:
        # A long tail of near-zero classes hides the ones that matter.
        table = table.sort_values("probability", ascending=False).head(20)
    st.altair_chart(charts.probabilities(table), width="stretch", key="ex_probs")
with right:
    st.markdown("**Annotations**")
    annotation_names = schema.annotation_columns(frame.columns)
    facts = [("true class", true), ("predicted", pred), ("confidence", number(float(row["confidence"]), 4))]
    facts += [(c, annotation_text(row[c])) for c in annotation_names]
    facts += [(c, "" if pd.isna(row[c]) else f"group {int(row[c])}") for c in schema.DISCOVERY_COLUMNS
              if c in frame.columns]
    st.dataframe(pd.DataFrame(facts, columns=["annotation", "value"]), hide_index=True, width="stretch",
                 key="ex_annotations")

layers = [layer for layer in store_cache.reader(run).activation_layers
          if (store_cache.reader(run).path / schema.activation_file(layer)).is_file()]
st.subheader("Activations")
if not layers:
    st.info("This run stored no activations (run with --explain activations).")
elif not has_maps:
    st.info("Activations are stored for the explained examples only.")
else:
    if st.session_state.get("ex_layer") not in layers:
        st.session_state.ex_layer = layers[-1]
    layer = st.selectbox("Layer", layers, key="ex_layer")
    mosaic, stats, shape, shown = store_cache.activation_view(run, layer, index)
    h, w, channels = shape
    left, right = st.columns([3, 2])
    left.image(mosaic, width="stretch",
               caption=f"{md_text(layer)}: {shown} of {channels} channels ({h}×{w}), "
                       "each stretched over its own range")
    with right:
        st.altair_chart(charts.channel_stats(stats), width="stretch", key="ex_channel_chart")
        st.caption("Bars: this example's mean per channel; red ticks: the mean over the whole dataset.")
        st.dataframe(stats, hide_index=True, width="stretch", height=260, key="ex_channel_stats",
                     column_config={k: st.column_config.NumberColumn(format="%.3f")
                                    for k in stats.columns if k != "channel"})
