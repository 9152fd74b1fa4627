"""Overview: the strongest finding first (in words and pictures), discoveries, then headline
metrics, per-class table, confusion matrix and flagged slices."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from audit.views.app import charts, links, pictures, store_cache
from audit.views.app.screens import discoveries
from audit.views.format import interval, md_text, number, percent

HEADLINE_COLUMNS = 4  # thumbnails per row beside the sentence: two rows of the worst members
WORST_SLICES = 5


def share_interval(ci) -> str:
    return interval(ci, as_percent=True, missing="n/a")


def map_method(run) -> str | None:
    """The map the headline's thumbnails show: Grad-CAM where stored (the mean maps are Grad-CAM's)."""
    methods = store_cache.heatmap_methods(run)
    return "gradcam" if "gradcam" in methods else (methods[0] if methods else None)


def evidence(where, run, found, *, key: str) -> None:
    """A finding's worst members with their maps, and the members' mean map with its legend."""
    method, mode = map_method(run), pictures.current_mode()
    with where:
        if len(found.worst):
            st.caption(f"Its worst {len(found.worst)} examples (mistakes first, most confident first); "
                       "click one to open it.")
            pictures.grid(run, found.worst, method, mode, 0.6, columns=HEADLINE_COLUMNS, key=key)
            if method:
                pictures.coverage_note(st, run, found.worst, what="of them")
        else:
            st.caption("No member of it could be listed from this store.")


def mean_map(where, found) -> None:
    """The members' mean map, small, with its legend beside it (the first screen has little room)."""
    if found.heatmap is not None:
        picture, words = where.columns([1, 2], vertical_alignment="center")
        picture.image(pictures.map_picture(found.heatmap, at_least=96), width="content")
        words.caption(f"mean heatmap of its {found.n} examples (where maps exist)")
        pictures.legend(words, "side by side", words=pictures.MEAN_MAP_WORDS)


def finding_words(found) -> str:
    """The sentence's second line: accuracies, and q for a discovered group."""
    source = ("an annotated slice" if found.kind == "slice"
              else f"found by {discoveries.METHOD_WORDS.get(found.method or '', 'discovery')}")
    q = f" · q {discoveries.q_text(found.q_value)} (Benjamini–Hochberg)" if found.q_value is not None else ""
    return (f"Accuracy {percent(found.accuracy)} there against {percent(found.rest_accuracy)} in the rest · "
            f"{md_text(source)}{q}")


def worst_slices_text(run) -> list[str]:
    """The worst flagged slices as sentences (page text, not only a chart)."""
    flagged = store_cache.flagged_slices(run, pairs=False).rows.head(WORST_SLICES)
    return [f"**{md_text(r['label'])}**: accuracy {percent(r['accuracy'])} {share_interval(r['accuracy_ci'])} "
            f"against {percent(r['rest_accuracy'])} for the rest, gap {percent(r['gap'], is_signed=True)} "
            f"{interval(r['gap_ci'], True, as_percent=True)}, {int(r['n'])} examples"
            for r in flagged.to_dict("records")]


def headline(run):
    """The first screen: the strongest finding in one sentence, beside its worst members."""
    found = pictures.finding(run)
    box = st.container(border=True, key="headline")
    if found is None:
        box.markdown("#### No annotated slice or discovered group differs from the rest beyond its interval.")
        return None
    left, right = box.columns([1, 1])
    left.markdown(f"### {md_text(found.sentence)}")
    left.markdown(finding_words(found))
    if left.button(f"Show its {found.n} examples in the gallery", key="ov_headline_open", type="primary"):
        pictures.open_members(run, found.filter)
    if found.kind == "discovered" and found.method:
        left.page_link(discoveries.page(found.method), label=f"All {discoveries.title(found.method).lower()}")
    mean_map(left, found)
    evidence(right, run, found, key="ov_headline")
    return found


def worst_slices(run) -> None:
    lines = worst_slices_text(run)
    if lines:
        st.markdown("**Worst annotated slices** (95% intervals)\n" + "\n".join(f"- {line}" for line in lines))


def _same_rows(a, b) -> bool:
    """Whether two findings hold the same examples (however each was found)."""
    return a.filter == b.filter or (len(a.members) == len(b.members) and bool((a.members == b.members).all()))


def discoveries_section(run, headline_finding) -> None:
    """What discovery found without annotations: the strongest group, and a line per method."""
    st.subheader("Discoveries")
    groups = store_cache.reader(run).discovered()
    if not groups:
        st.info("This run has no discoveries (groups found without annotations). Compute them from the "
                "stored embeddings and maps with:")
        st.code(pictures.discover_command(run), language="bash")
        return
    st.markdown("  \n".join(discoveries.summary_line(run, method) for method in discoveries.methods_of(run)))
    best = pictures.finding(run, discovered_only=True)
    if best is None:
        st.success("No discovered group differs from the rest beyond chance (q < 0.05 with an interval "
                   "that excludes zero).")
        return
    lead = ""
    if headline_finding is not None and _same_rows(headline_finding, best):
        # Already on screen (the same group, or a searched 1-way slice equal to the annotated
        # headline): show the strongest group another method found instead, if any.
        best = pictures.finding(run, discovered_only=True, without=best.method)
        if best is None:
            st.caption("The strongest discovered group is the finding above.")
            return
        lead = (f"The strongest discovered group is the finding above; the strongest found by "
                f"{discoveries.METHOD_WORDS.get(best.method or '', 'another method')}:")
    box = st.container(border=True, key="discovery_best")
    left, right = box.columns([1, 1])
    if lead:
        left.caption(md_text(lead))
    left.markdown(f"#### {md_text(best.sentence)}")
    left.markdown(finding_words(best))
    if left.button(f"Show its {best.n} examples", key="ov_discovery_open"):
        pictures.open_members(run, best.filter)
    mean_map(left, best)
    evidence(right, run, best, key="ov_discovery")


run, _ = store_cache.active()
m = store_cache.metrics(run)
names = m["class_names"]
explained = store_cache.manifest(run).get("explained", {})

st.title(f"Overview · {md_text(run.name)}")
st.caption(f"{md_text(run.path)} · {m['num_examples']} examples · {len(names)} classes · "
           f"finished {md_text(store_cache.manifest(run).get('finished_at', '?'))}")
discoveries_section(run, headline(run))
worst_slices(run)

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
    # Counted over what is listed: pairs only with the toggle on, a yes/no annotation once.
    found = store_cache.flagged_slices(run, pairs=pairs)
    flagged = found.rows
    st.caption(
        f"{found.flagged} of {found.tested} slices "
        f"have an accuracy gap to the rest whose 95% interval excludes zero "
        f"(about {found.expected:g} expected by chance). "
        "Ranked from the worst gap; a two-valued annotation is listed by its worse side; "
        "slices under the minimum size are left out here (see Slices)."
    )
    if flagged.empty:
        st.success("No slice differs from the rest beyond its interval.")
    else:
        shown = flagged.head(25)
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
