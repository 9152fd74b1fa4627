"""Pages, and the links between them that carry a selection (cell, slice, example).

A link writes what the target page should show into ``st.session_state`` and
switches page; the target applies it before drawing its widgets. Widget values
that must survive a visit to another page are listed in :data:`KEPT`: Streamlit
drops the state of widgets a run did not draw, so ``main.py`` re-assigns them on
every run (the documented way to keep them).
"""

from __future__ import annotations

import re

import streamlit as st

from audit.views.format import md_text

OVERVIEW = "screens/overview.py"
GALLERY = "screens/gallery.py"
EXAMPLE = "screens/example.py"
SLICES = "screens/slices.py"
CURVES = "screens/curves.py"
CALIBRATION = "screens/calibration.py"
COMPARE = "screens/compare.py"

# Session keys of the gallery's filters (prefix "g_") and the example page's choice.
GALLERY_DEFAULTS = {
    "g_true": [],
    "g_pred": [],
    "g_outcome": "all",
    "g_annotation": "(any)",
    "g_values": [],
    "g_confidence": (0.0, 1.0),
    "g_explained_only": False,
    "g_sort": "most confident mistakes first",
    "g_method": None,
    "g_alpha": 0.45,
    "g_page_size": 24,
    "g_page": 1,
}
KEPT = (*GALLERY_DEFAULTS, "ex_index", "ex_layer", "ex_alpha", "sl_annotation", "sl_pair", "cv_class",
        "cv_threshold", "cv_slice_column", "cmp_column")

REQUEST = "_gallery_request"
EXAMPLE_INDEX = "ex_index"
GALLERY_ORDER = "_gallery_order"


def keep_widget_state() -> None:
    """Stop Streamlit from dropping the values of widgets that are on another page."""
    for key in KEPT:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def open_gallery(**filters) -> None:
    """Switch to the gallery showing only ``filters`` (keys of :data:`GALLERY_DEFAULTS` without ``g_``).

    Every filter not given is reset, so the link shows exactly the selection.
    """
    unknown = set(filters) - {k[2:] for k in GALLERY_DEFAULTS}
    if unknown:
        raise ValueError(f"unknown gallery filter(s): {', '.join(sorted(unknown))}")
    if "values" in filters:  # slice values are text (a discovered group's number too: "3")
        filters["values"] = [str(v) for v in filters["values"]]
    st.session_state[REQUEST] = filters
    st.switch_page(GALLERY)


def apply_gallery_request() -> dict | None:
    """On the gallery, before its widgets: take over a pending link's filters."""
    request = st.session_state.pop(REQUEST, None)
    if request is None:
        return None
    # How to look (heatmap, opacity, page size, order) is the user's preference, not part of the selection.
    keep = {"g_method", "g_alpha", "g_page_size", "g_sort"}
    for key, default in GALLERY_DEFAULTS.items():
        if key not in keep:
            st.session_state[key] = default
    for name, value in request.items():
        st.session_state[f"g_{name}"] = value
    st.session_state["g_page"] = 1
    return request


def linked_example(values: list[str], indices) -> tuple[int | None, str | None]:
    """The example a link's ``?example=`` values name, or None and a notice saying why it was ignored.

    A link is typed or pasted by anyone, so a value that is not one decimal index of a stored
    example ("²", "-1", "3.0", out of range, a gap left by a skipped image, the key given twice
    with different values) is ignored with a notice instead of raising.
    """
    distinct = list(dict.fromkeys(values))
    shown = md_text(", ".join(distinct))  # the notice is Markdown; the link's text is not
    if len(distinct) > 1:
        return None, f"Ignored the link's example={shown}: give one example index, not {len(distinct)}."
    value = distinct[0] if distinct else ""
    # ASCII digits only: str.isdigit() accepts "²", which int() then refuses.
    index = int(value) if re.fullmatch(r"[0-9]{1,18}", value) else None
    if index is None or index not in set(int(i) for i in indices):
        span = f" ({min(indices)}–{max(indices)})" if len(indices) else ""
        return None, f"Ignored the link's example={shown}: not an example index of this run{span}."
    return index, None


def from_url(param: str, key: str, allowed, *, why: str) -> str | None:
    """Before the widget ``key`` is drawn: a link's ``?param=`` becomes its value, once per distinct link.

    ``allowed`` are the widget's options; the link's text is matched against ``str`` of each, so
    a shared view opens as it was. A value that is not one of them (typed, or from another run)
    is ignored, and the notice returned says so, ending with ``why`` ("not an annotation of this
    run"); None when there was nothing to apply or it applied.
    """
    given = st.query_params.get_all(param)
    seen = f"_url_{param}"
    if not given or given == st.session_state.get(seen):
        return None
    st.session_state[seen] = given
    options = {str(a): a for a in allowed}
    distinct = list(dict.fromkeys(given))
    if len(distinct) == 1 and distinct[0] in options:
        st.session_state[key] = options[distinct[0]]
        return None
    shown = md_text(", ".join(distinct))
    return f"Ignored the link's {param}={shown}: {why}."


def list_from_url(param: str, key: str, allowed: dict, *, why: str) -> str | None:
    """:func:`from_url` for a multiselect: every ``?param=`` (repeated) names one of ``allowed``'s
    keys (the text a link holds, e.g. a class name) and the widget gets their values (its
    indices); one unknown value ignores the whole link's ``param``, with a notice."""
    given = st.query_params.get_all(param)
    seen = f"_url_{param}"
    if not given or given == st.session_state.get(seen):
        return None
    st.session_state[seen] = given
    distinct = list(dict.fromkeys(given))
    if all(g in allowed for g in distinct):
        st.session_state[key] = [allowed[g] for g in distinct]
        return None
    return f"Ignored the link's {param}={md_text(', '.join(distinct))}: {why}."


def to_url(**params) -> None:
    """Write the view's state into the address bar (None or [] removes a key; a list repeats it),
    so the address can be shared."""
    for param, value in params.items():
        if value is None or (isinstance(value, list) and not value):
            if param in st.query_params:
                del st.query_params[param]
            st.session_state.pop(f"_url_{param}", None)
            continue
        texts = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        if st.query_params.get_all(param) != texts:
            st.query_params[param] = texts if isinstance(value, list) else texts[0]
        st.session_state[f"_url_{param}"] = texts


def open_example(index: int) -> None:
    st.session_state[EXAMPLE_INDEX] = int(index)
    st.switch_page(EXAMPLE)
