"""Discoveries: a page per discovery method, its groups as galleries.

Unlike the other screens (scripts run by path), this module is imported by ``main.py``: one
function draws every method's page, and :func:`pages` hands ``st.navigation`` one page per method
the run holds. Each group shows its sentence, size, accuracy with its interval, q-value, where its
heatmaps sit, its mean heatmap and its worst members.
"""

from __future__ import annotations

from functools import partial

import streamlit as st

from audit.store import schema
from audit.views.app import pictures, store_cache
from audit.views.findings import drop_sentence, predicate_label, worst_members
from audit.views.format import interval, md_text, number, percent

TITLES = {"errors": "Error slices", "strategy": "Heatmap strategies", "search": "Slice search"}
METHOD_WORDS = {
    "errors": "error-slice discovery on the embeddings",
    "strategy": "strategy clusters of the heatmaps (SpRAy)",
    "search": "slice search over the annotations",
}
ABOUT = {
    "errors": "Groups of examples that sit together in the model's penultimate-layer features, with "
              "their labels and predictions (Domino's idea), ranked by how much worse they fare than "
              "the rest. No annotations needed: a group is described by what its members share.",
    "strategy": "For each predicted class, its examples' heatmaps clustered (spectral clustering, "
                "eigengap): a separate cluster is a separate strategy, such as predicting 'circle' "
                "from a corner mark instead of the shape (Lapuschkin et al., 2019).",
    "search": "Conjunctions of up to three annotation and built-in columns, searched exhaustively with "
              "support and error pruning (SliceLine), with the same intervals and q-values.",
}
MEMBERS_SHOWN = 12
COLUMNS = 6


def q_text(q) -> str:
    """"= 0.0123", or "< 0.0001" where four decimals would read as zero."""
    if q is None:
        return "n/a"
    return "< 0.0001" if q < 0.0001 else f"= {number(q, 4)}"


def title(method: str) -> str:
    return TITLES.get(method, method)


def methods_of(run: store_cache.RunRef) -> list[str]:
    """The discovery methods with groups in ``run``, in the store's vocabulary order."""
    found = {str(g.get("method")) for g in store_cache.reader(run).discovered()}
    return [m for m in schema.DISCOVERY_METHODS if m in found]


def summary_line(run: store_cache.RunRef, method: str) -> str:
    """"**Error slices** (error-slice discovery …): 2 groups, 1 significant" (Markdown)."""
    groups = store_cache.reader(run).discovered(method)
    significant = sum(bool(g.get("significant")) for g in groups)
    return (f"**{title(method)}** ({METHOD_WORDS.get(method, method)}): {len(groups)} group"
            f"{'' if len(groups) == 1 else 's'}, {significant} significant")


def page(method: str | None) -> st.Page:
    """The page of ``method``, or (None) the one page of a run without discoveries. Equal to the
    one ``main.py`` registers: Streamlit knows pages by their address."""
    if method is None:
        return st.Page(partial(show, None), title="Discoveries", icon=":material/travel_explore:",
                       url_path="discoveries")
    return st.Page(partial(show, method), title=f"Discoveries: {title(method).lower()}",
                   icon=":material/travel_explore:", url_path=f"discoveries_{method}")


def pages(run: store_cache.RunRef) -> list[st.Page]:
    """One page per method the run holds; one page saying how to compute them when it holds none."""
    return [page(m) for m in methods_of(run)] or [page(None)]


def _where(entry: schema.DiscoveredGroup) -> str:
    predicate = entry.get("predicate")
    return f"where {predicate_label(predicate)}" if predicate else "in this group"


def _attention_words(entry: schema.DiscoveredGroup) -> str:
    att = entry.get("attention")
    if not att or not att.get("grid"):
        return "No heatmaps among its members."
    top = max(max(row) for row in att["grid"])
    return (f"Heatmap mass: most in the {md_text(att.get('top_cell', '?'))} cell ({percent(top, 0)}), "
            f"{percent(att.get('border'), 0)} in the border band ({md_text(att.get('method', 'gradcam'))}).")


def _facts(entry: schema.DiscoveredGroup) -> str:
    q = entry.get("q_value")
    verdict = "significant" if entry.get("significant") else "not significant"
    cls = f" · predicted class {md_text(entry['predicted_class'])}" if entry.get("predicted_class") else ""
    return (f"n = {int(entry['n'])} ({int(entry.get('errors', 0))} mistakes) · accuracy {percent(entry['accuracy'])} "
            f"{interval(entry.get('accuracy_ci'), as_percent=True, missing='')} against "
            f"{percent(entry.get('rest_accuracy'))} for the rest · gap {percent(entry['gap'], is_signed=True)} "
            f"{interval(entry.get('gap_ci'), True, as_percent=True)} · "
            f"q {q_text(q)} ({verdict}){cls}")


def _sentence(entry: schema.DiscoveredGroup) -> str:
    gap, ci = entry.get("gap"), entry.get("gap_ci")
    if gap is not None and ci and ci[1] is not None and ci[1] < 0:
        return drop_sentence(gap, ci, _where(entry), int(entry["n"]))
    words = entry.get("description") or "a group"
    return f"{words}: accuracy {percent(entry.get('accuracy'))}, {int(entry['n'])} examples"


def _group(run: store_cache.RunRef, method: str, entry: schema.DiscoveredGroup, mode: str, alpha: float) -> None:
    reader = store_cache.reader(run)
    key = f"d_{method}_{int(entry['group'])}"
    box = st.container(border=True, key=key)
    box.markdown(f"#### Group {int(entry['group'])} · {md_text(_sentence(entry))}")
    if not entry.get("predicate") and entry.get("description"):
        box.markdown(f"*{md_text(entry['description'])}*")
    box.markdown(_facts(entry))
    left, right = box.columns([1, 4])
    heat = reader.discovered_heatmap(entry)
    if heat is not None:
        left.image(pictures.map_picture(heat), width=pictures.THUMB, caption="mean heatmap")
        pictures.legend(left, "side by side", words=pictures.MEAN_MAP_WORDS)
    left.caption(_attention_words(entry))
    members = reader.discovered_members(entry)
    with right:
        shown = worst_members(store_cache.predictions(run), members, MEMBERS_SHOWN)
        pictures.grid(run, shown, _method(run), mode, alpha, columns=COLUMNS, key=key)
        pictures.coverage_note(st, run, shown, what="of these examples")
        if st.button(f"Show all {len(members)} in the gallery", key=f"{key}_open"):
            pictures.open_members(run, _filter(method, entry))


def _method(run: store_cache.RunRef) -> str | None:
    methods = store_cache.heatmap_methods(run)
    return "gradcam" if "gradcam" in methods else (methods[0] if methods else None)


def _filter(method: str, entry: schema.DiscoveredGroup) -> dict:
    predicate = entry.get("predicate")
    if predicate:
        return {"predicate": dict(predicate)}
    return {"column": schema.discovery_column(method), "value": int(entry["group"])}


def show(method: str | None) -> None:
    """Draw the page of one discovery method for the run the sidebar shows."""
    run, _ = store_cache.active()
    st.title(f"Discoveries · {title(method)}" if method else "Discoveries")
    st.caption(ABOUT.get(method or "", "Groups found without annotations: " + "; ".join(METHOD_WORDS.values())))
    groups = store_cache.reader(run).discovered(method) if method else []
    if method is None or not groups:
        st.info(f"This run holds no discovered groups{' for this method' if method else ''}. Compute "
                "discoveries from the stored embeddings and maps (no TensorFlow needed) with:")
        st.code(pictures.discover_command(run), language="bash")
        return
    discovery = store_cache.metrics(run).get("discovery") or {}
    notes = [n for n in discovery.get("notes") or []]
    a, b = st.columns([3, 2], vertical_alignment="bottom")
    mode = pictures.mode_picker(a, "d_mode")
    pictures.legend(b, mode)
    st.markdown(f"{len(groups)} groups, strongest first (ascending q-value). "
                f"{sum(bool(g.get('significant')) for g in groups)} are significant: q < 0.05 "
                "(Benjamini–Hochberg over every group this method tested), a gap interval that excludes "
                "zero, and at least the minimum slice size.")
    for entry in groups:
        _group(run, method, entry, mode, 0.6)
    params = (discovery.get("methods") or {}).get(method)
    if params or notes:
        with st.expander("How these groups were found"):
            if params:
                st.json(params, expanded=False)
            for note in notes:
                st.markdown(f"- {md_text(note)}")
