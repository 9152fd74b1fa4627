"""keras-audit app: browse the results store of an audit run (or compare two).

Start it with ``keras-audit app OUT [OUT_B]`` or ``streamlit run audit/views/app/main.py -- OUT [OUT_B]``;
with no run given it lists the stores found under the current directory.

This script frames every page: it opens the run(s), shows a summary in the
sidebar and routes to the page the user chose. It reads stores only through
``store_cache`` and never imports TensorFlow.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

from audit.errors import StoreError
from audit.views.app import links, store_cache
from audit.views.app.screens import discoveries
from audit.views.format import md_text
from audit.views.report import preprocessing_words


def stores_from_argv(argv: list[str]) -> list[str]:
    """Runs given after ``--`` on the command line.

    Only when this file is the script being run: under AppTest or an embedding
    host, ``sys.argv`` belongs to someone else (pytest's options are no runs).
    """
    if argv and Path(argv[0]).resolve() == Path(__file__).resolve():
        return [a for a in argv[1:] if a]
    return []


def pick_from_disk() -> list[str]:
    """No run given: offer the stores found under the working directory."""
    root = Path.cwd()
    found = store_cache.find_runs(root)
    names = {str(p): f"{p.relative_to(root) if p != root else '.'}" + ("" if s == "complete" else f" ({s})")
             for p, s in found}
    st.sidebar.header("Runs")
    if not found:
        st.title("keras-audit")
        st.info(f"No results stores found under {md_text(root)}. Create one with "
                "`keras-audit run MODEL DATA --out OUT` (or try `keras-audit demo`), then "
                "start the app with `keras-audit app OUT`.")
        st.stop()
    first = st.sidebar.selectbox("Run", list(names), format_func=lambda p: names[p], index=None,
                                 placeholder="pick a run", key="pick_run")
    if first is None:
        st.title("keras-audit")
        st.write(f"{len(found)} results store(s) found under {md_text(root)}. Pick one in the sidebar.")
        st.dataframe([{"run": names[str(p)], "state": s} for p, s in found], hide_index=True)
        st.stop()
    others = [p for p in names if p != first]
    second = st.sidebar.selectbox("Compare with", [None, *others],
                                  format_func=lambda p: "(no comparison)" if p is None else names[p], key="pick_run_b")
    return [first] + ([second] if second else [])


def refuse(path: str, error: StoreError, *, which: str) -> None:
    st.error(f"**Cannot open {which} {md_text(path)}.**\n\n{md_text(error)}", icon=":material/block:")


def sidebar_summary(run: store_cache.RunRef, title: str) -> None:
    m = store_cache.metrics(run)
    man = store_cache.manifest(run)
    explained = man.get("explained", {})
    words = preprocessing_words(man.get("preprocessing"))
    st.sidebar.markdown(
        f"**{title}: {md_text(run.name)}**  \n"
        f"{md_text(run.path)}  \n"
        f"{m.get('num_examples', '?')} examples · {len(m.get('class_names', []))} classes · "
        f"accuracy {m.get('accuracy', float('nan')):.1%}  \n"
        f"explained: {explained.get('count', 0)} ({md_text(', '.join(explained.get('methods', [])) or 'none')})"
        + (f"  \npreprocessing: {md_text(words)}" if words else "")
    )


def choose_shown(runs: list[store_cache.RunRef]) -> str | None:
    """With two runs, the sidebar's choice of which one every page shows (``?run=a|b|both``).

    Returns the notice for a link's ``run`` that this session cannot show, else None.
    """
    if len(runs) < 2:
        given = st.query_params.get_all("run")
        links.to_url(run=None)
        if given and given != ["a"]:
            return f"Ignored the link's run={md_text(', '.join(given))}: this app shows one run."
        return None
    notice = links.from_url("run", store_cache.SHOWN, store_cache.SHOW_CHOICES, why="it takes a, b or both")
    st.session_state.setdefault(store_cache.SHOWN, "a")
    names = {"a": f"A · {runs[0].name}", "b": f"B · {runs[1].name}", "both": "A and B side by side"}
    choice = st.sidebar.radio("Show", store_cache.SHOW_CHOICES, key=store_cache.SHOWN,
                              format_func=lambda c: md_text(names[c]),  # radio options are Markdown
                              help="which run every page shows; pages that cannot put two runs side by side show A")
    links.to_url(run=choice)
    return notice


def main() -> None:
    st.set_page_config(page_title="keras-audit", page_icon=":material/search:", layout="wide")
    links.keep_widget_state()
    paths = stores_from_argv(sys.argv) or pick_from_disk()
    if len(paths) > 2:
        st.warning(f"{len(paths)} runs given; showing the first two.")
    runs = []
    for which, path in zip(("the run", "the second run"), paths[:2]):
        try:
            runs.append(store_cache.open_run(path))
        except StoreError as e:
            refuse(path, e, which=which)
            if not runs:
                st.stop()
    store_cache.set_active(runs[0], runs[1] if len(runs) > 1 else None)

    sidebar_summary(runs[0], "A" if len(runs) > 1 else "Run")
    if len(runs) > 1:
        sidebar_summary(runs[1], "B")
    notice = choose_shown(runs)
    pages = [
        st.Page(links.OVERVIEW, title="Overview", icon=":material/dashboard:", default=True),
        st.Page(links.GALLERY, title="Gallery", icon=":material/photo_library:"),
        st.Page(links.EXAMPLE, title="Example detail", icon=":material/image_search:"),
        st.Page(links.SLICES, title="Slices", icon=":material/pie_chart:"),
        st.Page(links.CURVES, title="Curves & thresholds", icon=":material/show_chart:"),
        st.Page(links.CALIBRATION, title="Calibration", icon=":material/target:"),
        *discoveries.pages(runs[0]),  # one page per discovery method the run holds
    ]
    if len(runs) > 1:
        pages.append(st.Page(links.COMPARE, title="Compare A and B", icon=":material/compare:"))
    page = st.navigation(pages)
    if notice:
        st.info(notice, icon=":material/link_off:")
    page.run()


if __name__ == "__main__":
    main()
