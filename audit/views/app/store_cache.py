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


def set_active(run: RunRef, run_b: RunRef | None) -> None:
    st.session_state[_ACTIVE] = (run, run_b)


def active() -> tuple[RunRef, RunRef | None]:
    """The run (and the run to compare with) of this session; ``main.py`` sets them before any page runs."""
    return st.session_state[_ACTIVE]


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
def slice_columns(run: RunRef) -> list[schema.SliceColumnInfo]:
    """The sliced columns of the run (single annotations first, then pairs), as stored."""
    return list((metrics(run).get("slices") or {}).get("columns") or [])


def slice_rows(run: RunRef, column: str | None = None) -> pd.DataFrame:
    """Stored per-slice rows, optionally of one column, with the intervals split into lo/hi."""
    rows = (metrics(run).get("slices") or {}).get("rows") or []
    frame = pd.DataFrame([r for r in rows if column is None or r["column"] == column])
    if frame.empty:
        return frame
    for key in ("accuracy_ci", "gap_ci"):
        frame[f"{key}_lo"] = [c[0] if c else None for c in frame[key]]
        frame[f"{key}_hi"] = [c[1] if c else None for c in frame[key]]
    return frame


@st.cache_data(show_spinner=False, max_entries=64)
def _slice_labels(path: str, mtime: float, column: str) -> np.ndarray:
    # The store's own membership (slices.parquet): no re-binning here; StoreError names what is missing.
    return _reader(path, mtime).slice_labels(column)


def slice_labels(run: RunRef, column: str) -> np.ndarray:
    """The slice value (as named in metrics.json) of every example for ``column``."""
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
