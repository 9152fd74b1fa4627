"""Gallery: thumbnails with a heatmap overlaid, filtered, sorted and paginated.

Only the current page's images are read (memory-mapped) and blended, so the
first page of a 10k-example run costs the same as that of a small one.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import streamlit as st

from audit.errors import StoreError
from audit.store import schema
from audit.views.app import example_filter, links, pictures, store_cache
from audit.views.format import md_text

COLUMNS = 6


def discovery_filters(run, frame) -> dict[str, dict[str, str]]:
    """Discovered groups as filters beside the annotations: {filter name: {group id: its words}}.

    ``found_errors``/``found_strategy`` are predictions columns; searched groups have none (their
    membership is their predicate) and filter as :data:`pictures.SEARCH_FILTER`.
    """
    out: dict[str, dict[str, str]] = {}
    for entry in store_cache.reader(run).discovered():
        method = str(entry.get("method"))
        name = schema.discovery_column(method) or (pictures.SEARCH_FILTER if method == "search" else None)
        if name is None or (name != pictures.SEARCH_FILTER and name not in frame.columns):
            continue
        words = f"group {entry['group']}: {entry.get('description') or ''} (n={entry['n']})"
        out.setdefault(name, {})[str(entry["group"])] = words
    return out


def discovery_labels(run, frame: pd.DataFrame, name: str, chosen: tuple[str, ...]) -> np.ndarray:
    """Each row's group (as text) under filter ``name``, for :func:`example_filter.select`; for
    searched groups, which overlap, the first chosen group holding the row."""
    if name != pictures.SEARCH_FILTER:
        column = frame[name]
        return np.array([None if pd.isna(v) else str(int(v)) for v in column], object)
    labels = np.full(len(frame), None, object)
    index = frame["index"].to_numpy()
    groups = {str(e["group"]): e for e in store_cache.reader(run).discovered("search")}
    for group in reversed(chosen):  # the first chosen wins where groups overlap
        if group in groups:
            labels[np.isin(index, store_cache.reader(run).discovered_members(groups[group]))] = group
    return labels

run, _ = store_cache.active()
frame = store_cache.predictions(run)
names = store_cache.class_names(run)
methods = store_cache.heatmap_methods(run)
explained = store_cache.explained(run)
slice_columns = store_cache.slice_columns(run)

links.apply_gallery_request()
for key, default in links.GALLERY_DEFAULTS.items():
    st.session_state.setdefault(key, default)
# Choices kept from another run (picked in the sidebar) may not exist in this one.
for key in ("g_true", "g_pred"):
    st.session_state[key] = [k for k in st.session_state[key] if 0 <= k < len(names)]
if st.session_state.g_method not in [*methods, "none"]:
    st.session_state.g_method = methods[0] if methods else "none"
found = discovery_filters(run, frame)
annotation_choices = ["(any)", *[c["column"] for c in slice_columns], *found]
if st.session_state.g_annotation not in annotation_choices:
    st.session_state.g_annotation = "(any)"
# A shared address opens the selection it was copied from (?true=circle&outcome=incorrect&…).
by_name = {name: k for k, name in enumerate(names)}
notices = [
    links.list_from_url("true", "g_true", by_name, why="not a class of this run"),
    links.list_from_url("pred", "g_pred", by_name, why="not a class of this run"),
    links.from_url("outcome", "g_outcome", example_filter.OUTCOMES, why="it takes all, correct or incorrect"),
    links.from_url("annotation", "g_annotation", annotation_choices, why="not an annotation of this run"),
]

st.title("Gallery")

with st.container(border=True):
    a, b, c, d = st.columns([3, 3, 2, 3])
    a.multiselect("True class", range(len(names)), format_func=names.__getitem__, key="g_true",
                  placeholder="any class")
    b.multiselect("Predicted class", range(len(names)), format_func=names.__getitem__, key="g_pred",
                  placeholder="any class")
    c.radio("Outcome", example_filter.OUTCOMES, key="g_outcome", horizontal=True)
    d.slider("Confidence", 0.0, 1.0, step=0.01, key="g_confidence")
    a, b, c, d = st.columns([3, 3, 2, 3])
    a.selectbox("Annotation", annotation_choices, key="g_annotation",
                help="annotations and sliced columns, then the groups discovery found (found_…)")
    column = next((col for col in slice_columns if col["column"] == st.session_state.g_annotation), None)
    groups = found.get(st.session_state.g_annotation)
    values = list(column["values"]) if column else list(groups or [])
    notices.append(links.list_from_url("value", "g_values", {str(v): v for v in values},
                                       why="not a value of the annotation chosen"))
    # A value left over from another annotation would make the widget raise.
    st.session_state.g_values = [v for v in st.session_state.g_values if v in values]
    b.multiselect("Values", values, key="g_values", disabled=column is None and groups is None,
                  format_func=lambda v: (groups or {}).get(v, v),
                  placeholder="any value" if column or groups else "pick an annotation first")
    c.checkbox("Only explained examples", key="g_explained_only",
               help=f"{len(explained)} examples have heatmaps and activations")
    d.selectbox("Sort", example_filter.SORTS, key="g_sort")
    a, b, c, d = st.columns([3, 4, 2, 2])
    a.radio("Heatmap", [*methods, "none"], key="g_method", horizontal=True,
            format_func=lambda m: md_text(store_cache.method_title(run, m)))  # radio options are Markdown
    mode = pictures.mode_picker(b, "g_mode")
    c.slider("Opacity", 0.0, 1.0, step=0.05, key="g_alpha",
             disabled=st.session_state.g_method == "none" or mode in ("contour", "side by side"))
    d.selectbox("Per page", (12, 24, 48, 96), key="g_page_size")
    if st.session_state.g_method != "none":
        pictures.legend(b, mode, alpha=st.session_state.g_alpha)

for notice in filter(None, notices):
    st.info(notice)
links.to_url(
    true=[names[k] for k in st.session_state.g_true], pred=[names[k] for k in st.session_state.g_pred],
    outcome=None if st.session_state.g_outcome == "all" else st.session_state.g_outcome,
    annotation=None if st.session_state.g_annotation == "(any)" else st.session_state.g_annotation,
    value=list(st.session_state.g_values),
)

filters = example_filter.Filters(
    true=tuple(st.session_state.g_true),
    pred=tuple(st.session_state.g_pred),
    outcome=st.session_state.g_outcome,
    values=tuple(st.session_state.g_values),
    confidence=tuple(st.session_state.g_confidence),
    explained_only=st.session_state.g_explained_only,
    explained=frozenset(explained.tolist()),
)
labels = None
if groups is not None and filters.values:
    labels = discovery_labels(run, frame, st.session_state.g_annotation, filters.values)
elif column and filters.values:
    try:
        labels = store_cache.slice_labels(run, column["column"])
    except StoreError as e:
        st.error(f"The annotation filter is ignored: {md_text(e)}")
        filters = dataclasses.replace(filters, values=())
shown = example_filter.select(frame, filters, labels, sort=st.session_state.g_sort)
st.session_state[links.GALLERY_ORDER] = shown.tolist()

pages = max(1, math.ceil(len(shown) / st.session_state.g_page_size))
st.session_state.g_page = min(max(1, int(st.session_state.g_page)), pages)
top = st.columns([5, 2], vertical_alignment="bottom")
top[0].markdown(f"**{len(shown)} of {len(frame)} examples match** · page {st.session_state.g_page} of {pages}")
top[1].number_input("Page", min_value=1, max_value=pages, step=1, key="g_page")

start = (st.session_state.g_page - 1) * st.session_state.g_page_size
page = shown[start: start + st.session_state.g_page_size]
if not len(page):
    st.info("No example matches these filters.")
method = None if st.session_state.g_method == "none" else st.session_state.g_method
pictures.grid(run, page, method, mode, st.session_state.g_alpha, columns=COLUMNS, key="g", buttons=True)
if method is not None:
    pictures.coverage_note(st, run, page, what="examples on this page")
