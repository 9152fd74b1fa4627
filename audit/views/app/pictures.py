"""What the app's evidence pages draw: examples with their maps (in the overlay mode the user
picked), clickable thumbnail grids, the colour legend, the strongest finding, and the follow-up
command for examples without maps.

Reads go through :mod:`store_cache` (its cached reader); the pictures are cached here per run,
examples, method and mode, so a rerun that only moves a widget redraws nothing.
"""

from __future__ import annotations

import shlex
from typing import Any

import numpy as np
import streamlit as st

from audit import viz
from audit.views.app import store_cache
from audit.views.findings import Finding, strongest_finding
from audit.views.format import md_text

THUMB = 128  # px, longest side of a thumbnail
DETAIL = 256  # px, the example page's panels: small inputs are not blown up to the page's width
# The overlay mode is one choice across pages: kept under a key no widget owns, because Streamlit
# forgets a widget's value on any page that does not draw it.
_MODE = "_overlay_mode"


def _keep_mode(key: str) -> None:
    # A click on the chosen segment clears it; keep the last mode instead of drawing none.
    if st.session_state.get(key) is None:
        st.session_state[key] = current_mode()
    st.session_state[_MODE] = st.session_state[key]


def mode_picker(where: Any, key: str) -> str:
    """Draw the overlay-mode choice in ``where`` (a container or column); returns the mode."""
    if st.session_state.get(key) not in viz.OVERLAY_MODES:
        st.session_state[key] = current_mode()
    where.segmented_control("Overlay", viz.OVERLAY_MODES, key=key, on_change=_keep_mode, args=(key,),
                            help="how heatmaps are drawn: " + "; ".join(f"{m}: {w}" for m, w in viz.MODE_WORDS.items()))
    st.session_state[_MODE] = st.session_state[key]
    return st.session_state[key]


def current_mode() -> str:
    """The overlay mode last picked on any page (the default until one is)."""
    mode = st.session_state.get(_MODE)
    return mode if mode in viz.OVERLAY_MODES else viz.DEFAULT_MODE


@st.cache_data(show_spinner=False, max_entries=64)
def legend_html(mode: str, *, alpha: float = 0.6, width: int = 64, words: str | None = None) -> str:
    """The colour bar of ``mode`` (:func:`audit.viz.legend`) as a CSS gradient, one hard stop per
    column, between the words "low" and "high relevance", with how the mode draws below. Page
    text rather than a picture, so it is read by a skimmer and by assistive tools alike; every
    string in it is this module's own."""
    row = viz.legend(mode, width=width, height=1, alpha=alpha)[0]
    stops = ", ".join(f"rgb({r},{g},{b}) {100 * i / width:.2f}% {100 * (i + 1) / width:.2f}%"
                      for i, (r, g, b) in enumerate(row.tolist()))
    bar = (f'<span style="display:inline-block;flex:0 1 160px;min-width:48px;height:12px;border:1px solid #888;'
           f'background:linear-gradient(to right, {stops})"></span>')
    return (f'<div class="ka-legend" style="font-size:0.8rem;line-height:1.4">'
            f'<div style="display:flex;align-items:center;gap:6px">low {bar} high relevance</div>'
            f'<div style="opacity:0.7">{viz.MODE_WORDS[mode] if words is None else words}</div></div>')


def legend(where: Any, mode: str, *, alpha: float = 0.6, words: str | None = None) -> None:
    """Draw the colour legend of ``mode`` in ``where`` (``words``: this module's own, replacing the mode's)."""
    where.html(legend_html(mode, alpha=alpha, words=words))


MEAN_MAP_WORDS = "the mean map alone, in the overlays' colours"


def _map_of(run: store_cache.RunRef, index: int, method: str | None) -> np.ndarray | None:
    r = store_cache.reader(run)
    if not method or method not in r.heatmap_methods or not r.has_heatmap(int(index)):
        return None
    if store_cache.no_signal(run, method, index) is not None:
        return None  # a map with no signal: the plain image (the caption says so)
    return r.heatmap(method, int(index))


def picture(run: store_cache.RunRef, index: int, method: str | None, mode: str, alpha: float, *,
            at_least: int = THUMB) -> np.ndarray:
    """Example ``index`` drawn with ``method``'s map in ``mode`` (the plain image when it has none)."""
    image = store_cache.reader(run).image(int(index))
    return viz.render(image, _map_of(run, index, method), mode=mode, alpha=alpha, at_least=at_least)


@st.cache_data(show_spinner=False, max_entries=32)
def _pictures(path: str, mtime: float, indices: tuple[int, ...], method: str | None, mode: str, alpha: float,
              at_least: int) -> list[np.ndarray]:
    run = store_cache.RunRef(path, mtime, "")
    return [picture(run, i, method, mode, alpha, at_least=at_least) for i in indices]


def pictures(run: store_cache.RunRef, indices, method: str | None, mode: str, alpha: float, *,
             at_least: int = THUMB) -> list[np.ndarray]:
    """:func:`picture` of each of ``indices``, cached."""
    return _pictures(run.path, run.mtime, tuple(int(i) for i in indices), method, mode, round(float(alpha), 2),
                     int(at_least))


@st.cache_data(show_spinner=False, max_entries=64)
def map_picture(heatmap: np.ndarray, *, at_least: int = THUMB) -> np.ndarray:
    """A map alone (a group's mean map) in the overlays' colours, stretched to its own maximum:
    averaging lowers the peaks, and what the picture shows is where the mass sits."""
    m = np.clip(np.nan_to_num(np.asarray(heatmap, np.float32)), 0, None)
    m = m / m.max() if m.size and m.max() > 0 else m
    factor = max(1, -(-at_least // max(m.shape)))
    return viz.colorize(np.kron(m, np.ones((factor, factor), np.float32)) if factor > 1 else m, viz.HEAT_CMAP)


def example_link(run: store_cache.RunRef, index: int) -> str:
    """The example page's address for ``index`` (relative, so it works under any base path)."""
    return f"example?example={int(index)}" + ("&run=b" if store_cache.run_letter(run) == "B" else "")


@st.cache_data(show_spinner=False, max_entries=64)
def _captions(path: str, mtime: float, indices: tuple[int, ...], method: str | None) -> list[str]:
    run = store_cache.RunRef(path, mtime, "")
    rows = store_cache.predictions(run).set_index("index")  # one copy out of the cache, not one per picture
    names = store_cache.class_names(run)
    reader = store_cache.reader(run)
    out = []
    for i in indices:
        r = rows.loc[i]
        note = ""
        if method and not reader.has_heatmap(i):
            note = " · no map"
        elif empty := store_cache.no_signal(run, method, i):
            note = f" · no signal ({md_text(empty)})"
        out.append(f"{'✓' if r['correct'] else '✗'} #{i} · {md_text(names[int(r['label'])])} → "
                   f"{md_text(names[int(r['pred'])])} · {r['confidence']:.0%}{note}")
    return out


def captions(run: store_cache.RunRef, indices, method: str | None) -> list[str]:
    """"✗ #17 · triangle → circle · 96%" for each of ``indices``, with "no map" or "no signal" when
    there is nothing to draw (cached)."""
    return _captions(run.path, run.mtime, tuple(int(i) for i in indices), method)


def grid(run: store_cache.RunRef, indices, method: str | None, mode: str, alpha: float, *, columns: int,
         key: str, buttons: bool = False) -> None:
    """Thumbnails in rows of ``columns``; each opens its example (a link, so it also opens in a new
    tab); ``buttons`` adds an "Open #i" button under each that switches page in this session."""
    from audit.views.app import links

    indices = [int(i) for i in indices]
    drawn, words = pictures(run, indices, method, mode, alpha), captions(run, indices, method)
    for start in range(0, len(indices), columns):
        cols = st.columns(columns)
        row = slice(start, start + columns)
        for col, i, image, text in zip(cols, indices[row], drawn[row], words[row]):
            col.image(image, width="stretch", caption=text, link=example_link(run, i))
            if buttons and col.button(f"Open #{i}", key=f"{key}_open_{i}", width="stretch"):
                links.open_example(i)


# -- coverage ---------------------------------------------------------------------------------------
def unexplained(run: store_cache.RunRef, indices) -> list[int]:
    """Those of ``indices`` that have no stored maps."""
    r = store_cache.reader(run)
    return [int(i) for i in indices if not r.has_heatmap(int(i))]


def explain_command(run: store_cache.RunRef, indices) -> str:
    """The follow-up run that adds maps for ``indices`` (the viewer never computes maps itself)."""
    listed = ",".join(str(int(i)) for i in sorted(set(int(i) for i in indices)))
    return f"keras-audit explain {shlex.quote(run.path)} --indices {listed}"


def discover_command(run: store_cache.RunRef) -> str:
    """The command that (re)computes discoveries from the finished store."""
    return f"keras-audit discover {shlex.quote(run.path)}"


def coverage_note(where: Any, run: store_cache.RunRef, indices, *, what: str = "of these examples") -> None:
    """Say how many of ``indices`` lack maps and the exact command that adds them; nothing if none do."""
    missing = unexplained(run, indices)
    if missing:
        where.caption(f"{len(missing)} {what} have no heatmap (the run's explanation budget went elsewhere). "
                      "Add their maps with:")
        where.code(explain_command(run, missing), language="bash", wrap_lines=True)


# -- findings -------------------------------------------------------------------------------------
class _DiscoveredOnly:
    """A reader whose metrics list no slices (and whose discoveries leave out ``without``'s groups):
    the strongest *discovered* group, chosen by the one rule of :mod:`audit.views.findings`."""

    def __init__(self, reader, without: str | None):
        self._reader, self._without = reader, without

    def __getattr__(self, name):
        return getattr(self._reader, name)

    @property
    def metrics(self):
        return {**self._reader.metrics, "slices": {}}

    def discovered(self, method: str | None = None):
        return [g for g in self._reader.discovered(method) if g.get("method") != self._without]


@st.cache_data(show_spinner=False, max_entries=16)
def _finding(path: str, mtime: float, discovered_only: bool, without: str | None) -> Finding | None:
    reader = store_cache.reader(store_cache.RunRef(path, mtime, ""))
    return strongest_finding(_DiscoveredOnly(reader, without) if discovered_only else reader)


def finding(run: store_cache.RunRef, *, discovered_only: bool = False, without: str | None = None) -> Finding | None:
    """The run's strongest finding (:func:`audit.views.findings.strongest_finding`), or with
    ``discovered_only`` the strongest discovered group's (of a method other than ``without``);
    computed once per run."""
    return _finding(run.path, run.mtime, discovered_only, without)


def gallery_request(run: store_cache.RunRef, link: dict) -> dict | None:
    """The gallery filters that show a finding's (or group's) members, from its ``filter``."""
    if "column" in link:
        return {"annotation": str(link["column"]), "values": [str(link["value"])]}
    predicate = link.get("predicate")
    for entry in store_cache.reader(run).discovered("search"):
        if entry.get("predicate") == predicate:
            return {"annotation": SEARCH_FILTER, "values": [str(entry["group"])]}
    return None


def open_members(run: store_cache.RunRef, link: dict) -> None:
    """Switch to the gallery showing exactly the members a finding's ``filter`` names."""
    from audit.views.app import links

    request = gallery_request(run, link)
    if request is not None:
        st.session_state[links.REQUEST] = request  # applied by the gallery before its widgets
        st.switch_page(links.GALLERY)


# The gallery's filter for searched groups, which have no column of their own (membership is the
# predicate); found_errors and found_strategy are predictions columns and filter as themselves.
SEARCH_FILTER = "found_search"
