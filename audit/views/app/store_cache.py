"""The app's only way into a results store: open, read and cache.

Pages never touch files. They hold a :class:`RunRef` (path + manifest mtime)
and call the functions here; every expensive read is an ``st.cache_data`` (or,
for the memory-mapped :class:`~audit.store.reader.Reader` itself,
``st.cache_resource``) keyed by that pair, so a store rewritten in place by a
new run is reread and an unchanged one is read once per server.

Nothing here imports TensorFlow: the reader (slice membership included) and
:mod:`audit.viz` are numpy/pandas only. Nothing here computes a
comparison of two runs either: it reads the one run A keeps (see
:mod:`audit.views.terminal`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from audit.errors import StoreError
from audit.store import schema
from audit.store.reader import Reader

# Directories never worth descending into when looking for runs.
_SKIP_DIRS = {"node_modules", "__pycache__", "site-packages", schema.HEATMAP_DIR, schema.ACTIVATION_DIR,
              schema.TENSORBOARD_DIR, schema.WORK_DIR}


@dataclass(frozen=True)
class RunRef:
    """A run the app shows: its path and the manifest mtime that keys every cache."""

    path: str
    mtime: float
    name: str


def open_run(path: str | Path) -> RunRef:
    """Validate the store at ``path`` and return a reference to it.

    Raises:
        StoreError: missing, not a store, incomplete, of a newer schema, or unreadable.
    """
    reader = Reader(Path(path).expanduser().resolve())
    name = str(reader.manifest.get("model", {}).get("name") or reader.path.name)
    ref = RunRef(str(reader.path), reader.mtime, name)
    # Fail here, with a message, rather than with a traceback on the first page that needs them.
    for file, read in ((schema.PREDICTIONS, _predictions), (schema.METRICS, _metrics)):
        try:
            read(ref.path, ref.mtime)
        except (OSError, ValueError) as e:  # unreadable parquet (ArrowInvalid) or JSON
            raise StoreError(f"{file} cannot be read ({type(e).__name__}: {e}); rerun the audit", ref.path) from None
    return ref


def find_runs(root: str | Path, max_depth: int = 3) -> list[tuple[Path, str]]:
    """Stores under ``root`` (itself included), as ``(path, state)`` with state one of
    ``complete``, ``incomplete``, ``unreadable``; sorted by path."""
    root = Path(root).resolve()
    found: list[tuple[Path, str]] = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        if schema.is_store(here):
            try:
                state = "complete" if Reader(here, allow_incomplete=True).complete else "incomplete"
            except StoreError:
                state = "unreadable"
            found.append((here, state))
            dirnames[:] = []
            continue
        dirnames[:] = [] if depth >= max_depth else sorted(
            d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS
        )
    return sorted(found)


_ACTIVE = "_active_runs"
# Session key of the sidebar's choice of run to show, and its choices (also the ``?run=`` values).
SHOWN = "run_shown"
SHOW_CHOICES = ("a", "b", "both")


def set_active(run: RunRef, run_b: RunRef | None) -> None:
    st.session_state[_ACTIVE] = (run, run_b)


def runs() -> tuple[RunRef, RunRef | None]:
    """Run A and run B (None with one run) as started, whatever the sidebar shows: the compare page's pair."""
    return st.session_state[_ACTIVE]


def shown() -> list[RunRef]:
    """The runs the pages show, as the sidebar chose: ``[A]``, ``[B]`` or ``[A, B]``."""
    run_a, run_b = runs()
    choice = st.session_state.get(SHOWN, "a") if run_b is not None else "a"
    if run_b is None or choice not in ("b", "both"):
        return [run_a]
    return [run_b] if choice == "b" else [run_a, run_b]


def active() -> tuple[RunRef, RunRef | None]:
    """The run a page shows (run B when the sidebar says so) and the other run, or None with one run.

    A page that can put two runs side by side asks :func:`shown`; with "A and B" chosen, a
    page that shows one run shows A.
    """
    run_a, run_b = runs()
    first = shown()[0]
    return first, (run_b if first == run_a else run_a)


def run_letter(run: RunRef) -> str:
    """"A" or "B": how the sidebar names ``run`` when two are open ("" with one)."""
    run_a, run_b = runs()
    return "" if run_b is None else ("A" if run == run_a else "B")


# -- cached reads (private functions take the hashable key, public ones a RunRef) -------------
@st.cache_resource(show_spinner=False, max_entries=8)
def _reader(path: str, mtime: float) -> Reader:
    return Reader(path)


@st.cache_data(show_spinner=False, max_entries=8)
def _predictions(path: str, mtime: float) -> pd.DataFrame:
    return _reader(path, mtime).predictions


@st.cache_data(show_spinner=False, max_entries=8)
def _metrics(path: str, mtime: float) -> schema.Metrics:
    return _reader(path, mtime).metrics


def reader(run: RunRef) -> Reader:
    return _reader(run.path, run.mtime)


def predictions(run: RunRef) -> pd.DataFrame:
    return _predictions(run.path, run.mtime)


def metrics(run: RunRef) -> schema.Metrics:
    return _metrics(run.path, run.mtime)


def manifest(run: RunRef) -> schema.Manifest:
    return reader(run).manifest


def class_names(run: RunRef) -> list[str]:
    return reader(run).class_names


def heatmap_methods(run: RunRef) -> list[str]:
    return reader(run).heatmap_methods


def title_of(manifest: schema.Manifest, method: str) -> str:
    """How the app names ``method``: the title the run wrote (``manifest["explained"]["titles"]``,
    from the method registry, which views never import), else the stored name itself."""
    explained = manifest.get("explained")
    titles = explained.get("titles") if isinstance(explained, dict) else None
    title = titles.get(method) if isinstance(titles, dict) else None
    return title if isinstance(title, str) and title.strip() else method


def method_title(run: RunRef, method: str) -> str:
    """:func:`title_of` for a run the app shows."""
    return title_of(manifest(run), method)


def explained(run: RunRef) -> np.ndarray:
    """Indices of the examples that have heatmaps and activations, sorted."""
    return np.array(sorted(reader(run).heatmap_index), dtype=np.int64)


def no_signal(run: RunRef, method: str | None, index: int) -> str | None:
    """The reason ``method``'s map of example ``index`` has no signal, or None (see ``Reader.no_signal``)."""
    return reader(run).no_signal(method, int(index)) if method else None


def no_signal_info(run: RunRef, method: str) -> dict:
    """``metrics.json`` ``explanations[method]["no_signal"]`` (count, of, reason, suggestion), or {}."""
    info = ((metrics(run).get("explanations") or {}).get(method) or {}).get("no_signal")
    return dict(info) if isinstance(info, dict) else {}


# -- slices ---------------------------------------------------------------------------
DISCOVERED_KIND = "discovered"  # the ``kind`` of a discovery column among the slice columns


def _discovered_groups(run: RunRef, column: str) -> list[dict]:
    method = next((m for m in schema.DISCOVERY_METHODS if schema.discovery_column(m) == column), None)
    return [] if method is None else [dict(g) for g in reader(run).discovered(method)]


def discovery_columns(run: RunRef) -> list[schema.SliceColumnInfo]:
    """The run's discovery columns (``found_errors``, ``found_strategy``) shaped like slice columns:
    each group is a value named by its number (as text), in the order discovery ranked them."""
    present = set(predictions(run).columns)
    out: list[schema.SliceColumnInfo] = []
    for column in schema.DISCOVERY_COLUMNS:
        groups = _discovered_groups(run, column)
        if column in present and groups:
            out.append({"column": column, "columns": [column], "kind": DISCOVERED_KIND, "builtin": True,
                        "values": [str(int(g["group"])) for g in groups], "bin_edges": None,
                        "missing": int(predictions(run)[column].isna().sum()), "disparity": None})
    return out


def slice_columns(run: RunRef) -> list[schema.SliceColumnInfo]:
    """The sliced columns of the run (single annotations first, then pairs), as stored; a page
    that offers discovered groups beside them adds :func:`discovery_columns`."""
    return list((metrics(run).get("slices") or {}).get("columns") or [])


def _discovered_rows(run: RunRef, column: str) -> list[dict]:
    """A discovery column's groups as slice rows (the stored figures, renamed; nothing recomputed)."""
    least = int((metrics(run).get("slices") or {}).get("min_slice_size") or 0)
    return [{"column": column, "columns": [column], "value": str(int(g["group"])), "n": int(g["n"]),
             "accuracy": g["accuracy"], "accuracy_ci": g.get("accuracy_ci"), "rest_accuracy": g.get("rest_accuracy"),
             "gap": g["gap"], "gap_ci": g.get("gap_ci"), "flagged": bool(g.get("significant")),
             "too_small": int(g["n"]) < least, "description": g.get("description"),
             "label": f"group {int(g['group'])}" + (f": {g['description']}" if g.get("description") else "")}
            for g in _discovered_groups(run, column)]


def slice_rows(run: RunRef, column: str | None = None) -> pd.DataFrame:
    """Stored per-slice rows, optionally of one column, with the intervals split into lo/hi.

    A discovery column's groups come as rows too, but only when asked for by name: the
    annotation slices alone are the run's tested slices.
    """
    rows: list = (_discovered_rows(run, column) if column in schema.DISCOVERY_COLUMNS
                  else (metrics(run).get("slices") or {}).get("rows") or [])
    frame = pd.DataFrame([r for r in rows if column is None or r["column"] == column])
    if frame.empty:
        return frame
    for key in ("accuracy_ci", "gap_ci"):
        frame[f"{key}_lo"] = [c[0] if c else None for c in frame[key]]
        frame[f"{key}_hi"] = [c[1] if c else None for c in frame[key]]
    if "label" not in frame:  # discovered groups come named by their description
        frame["label"] = [slice_label(r) for r in frame.to_dict("records")]
    return frame


def slice_label(row: dict) -> str:
    """A slice in words that say which annotation each value belongs to.

    >>> slice_label({"column": "cue", "value": "no", "columns": ["cue"]})
    'cue = no'
    >>> slice_label({"column": "cue & bg", "value": "no & dark", "columns": ["cue", "bg"], "values": ["no", "dark"]})
    'cue=no & bg=dark'
    """
    columns, values = list(row.get("columns") or [row["column"]]), row.get("values")
    if len(columns) < 2 or not values or len(values) != len(columns):
        return f"{row['column']} = {row['value']}"
    return " & ".join(f"{c}={v}" for c, v in zip(columns, values))


@dataclass(frozen=True)
class Flagged:
    """The flagged slices a page lists, worst gap first, and the counts its sentence quotes.

    ``flagged`` and ``tested`` count the same rows the list is drawn from (single annotations
    only unless pairs are included); ``expected`` is what chance alone would flag among them.
    """

    rows: pd.DataFrame
    flagged: int
    tested: int
    expected: float


def flagged_slices(run: RunRef, *, pairs: bool) -> Flagged:
    """Flagged slices of ``run`` worst first; a two-valued annotation is listed once, by its worse side.

    With two values each is the other's "rest", so the second row only mirrors the first
    (same interval, opposite sign): listing both would count one finding twice.
    """
    rows = slice_rows(run)
    if rows.empty:
        return Flagged(rows, 0, 0, 0.0)
    if not pairs:
        rows = rows[[len(c) == 1 for c in rows["columns"]]]
    tested = rows[~rows["too_small"]]
    two_valued = {c for c, k in tested.groupby("column").size().items() if k == 2}
    mirror = tested["column"].isin(two_valued) & (tested["gap"] > 0)
    kept = tested[~mirror]
    flagged = kept[kept["flagged"]].sort_values(["gap", "n"], ascending=[True, False])
    # 95% intervals: one test in twenty excludes zero by chance (the stored summary's rule).
    return Flagged(flagged.reset_index(drop=True), len(flagged), len(kept), round(0.05 * len(kept), 1))


@st.cache_data(show_spinner=False, max_entries=64)
def _slice_labels(path: str, mtime: float, column: str) -> np.ndarray:
    # The store's own membership (slices.parquet): no re-binning here; StoreError names what is missing.
    return _reader(path, mtime).slice_labels(column)


def slice_labels(run: RunRef, column: str) -> np.ndarray:
    """The slice value (as named in metrics.json) of every example for ``column``; for a discovery
    column, the group's number as text (None where the row is in no group)."""
    if column in schema.DISCOVERY_COLUMNS:
        groups = predictions(run)[column]
        return np.array([None if pd.isna(g) else str(int(g)) for g in groups], dtype=object)
    return _slice_labels(run.path, run.mtime, column)


# -- images -----------------------------------------------------------------------------
def _enlarge(image: np.ndarray, at_least: int) -> np.ndarray:
    # Nearest-neighbour upscaling keeps small inputs (28 px digits) crisp in the browser.
    factor = max(1, -(-at_least // max(image.shape[:2])))
    return np.kron(image, np.ones((factor, factor, 1), np.uint8)) if factor > 1 else image


def picture(run: RunRef, index: int, method: str | None = None, alpha: float = 0.5, *,
            at_least: int = 128) -> np.ndarray:
    """Example ``index`` as uint8 RGB, with ``method``'s heatmap blended in when it has one."""
    from audit.viz import overlay, to_uint8_rgb

    r = reader(run)
    image = to_uint8_rgb(r.image(int(index)))
    if method and r.has_heatmap(int(index)) and method in r.heatmap_methods and no_signal(run, method, index) is None:
        image = overlay(image, r.heatmap(method, int(index)), alpha)  # a map with no signal: the plain image
    return _enlarge(image, at_least)


@st.cache_data(show_spinner=False, max_entries=16)
def _tiles(path: str, mtime: float, indices: tuple[int, ...], method: str | None, alpha: float) -> list[np.ndarray]:
    run = RunRef(path, mtime, "")
    return [picture(run, i, method, alpha) for i in indices]


def tiles(run: RunRef, indices, method: str | None, alpha: float) -> list[np.ndarray]:
    """Thumbnails of a gallery page (cached per page, method and opacity)."""
    return _tiles(run.path, run.mtime, tuple(int(i) for i in indices), method, round(float(alpha), 2))


def heatmap_colours(run: RunRef, method: str, index: int) -> np.ndarray:
    """The raw map of one example through the colormap, at display size."""
    from audit.viz import colorize

    return _enlarge(colorize(reader(run).heatmap(method, int(index))), 128)


@st.cache_data(show_spinner=False, max_entries=32)
def _activation_view(path: str, mtime: float, layer: str, index: int, max_channels: int):
    from matplotlib import colormaps

    r = _reader(path, mtime)
    acts = r.activations(layer, index)
    channels = acts.shape[-1]
    shown = min(channels, max_channels)
    cols = int(np.ceil(np.sqrt(shown)))
    rows = int(np.ceil(shown / cols))
    h, w = acts.shape[:2]
    # Each channel stretched over its own range so weak channels are still
    # readable; the table beside the grid gives the absolute values.
    flat = acts.reshape(-1, channels)
    lo, span = flat.min(0), np.ptp(flat, axis=0)
    scaled = np.where(span > 0, (acts - lo) / np.where(span > 0, span, 1), 0)
    pad = 1
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad), np.float32) * np.nan
    for c in range(shown):
        y, x = divmod(c, cols)
        top, left = pad + y * (h + pad), pad + x * (w + pad)
        grid[top: top + h, left: left + w] = scaled[..., c]
    rgb = colormaps["viridis"](np.nan_to_num(grid, nan=0.0))[..., :3]
    rgb[np.isnan(grid)] = 1.0
    mosaic = _enlarge(np.round(rgb * 255).astype(np.uint8), 512)
    stats = pd.DataFrame({
        "channel": np.arange(channels),
        "mean": flat.mean(0),
        "max": flat.max(0),
        "frac_zero": (flat == 0).mean(0),
    })
    dataset = r.activation_stats.get(layer) or {}
    for key in ("mean", "max", "frac_zero"):
        if len(dataset.get(key) or []) == channels:
            stats[f"dataset_{key}"] = dataset[key]
    return mosaic, stats, (h, w, channels), shown


def activation_view(run: RunRef, layer: str, index: int, max_channels: int = 64):
    """``(mosaic image, per-channel stats table, (h, w, channels), channels shown)`` of one example."""
    return _activation_view(run.path, run.mtime, layer, int(index), int(max_channels))


# -- comparison ----------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=4)
def _comparison(path_a: str, mtime_a: float, path_b: str, mtime_b: float) -> dict | None:
    from audit.views.terminal import stored_comparison

    return stored_comparison(Path(path_a), Path(path_b))


def comparison(run_a: RunRef, run_b: RunRef) -> dict | None:
    """The comparison of the two runs that run A keeps (``keras-audit app A B`` computes it
    before the server starts), or None when A keeps none for these versions of both runs.

    Raises:
        StoreError: the kept document says the runs cannot be compared (not the same examples).
    """
    document = _comparison(run_a.path, run_a.mtime, run_b.path, run_b.mtime)
    if document is not None and document.get("refused"):
        raise StoreError(document["refused"])  # it names the run already
    return None if document is None else document["comparison"]


def compare_command(run_a: RunRef, run_b: RunRef) -> str:
    """The command that computes and keeps the comparison the page shows."""
    from audit.views.terminal import compare_command

    return compare_command(run_a.path, run_b.path)
