"""Where a set of heatmaps looks: 3x3 grid shares, the border band, the top cell, the mean map.

Every map is clipped at zero and scaled to unit mass before averaging, so each
example counts once whatever its peak value, and maps with no mass (no signal)
are left out. Cells split the image at exactly 1/3 and 2/3 of each side; a pixel
that straddles a boundary is shared by area, so the nine shares always sum to 1.

* **Border band**: the outer 1/8 of each side (43.75% of the area). A corner
  tag, watermark or frame sits there; and on a 224-pixel input with the usual
  7x7 or 8x8 last convolution, one feature cell is about 1/8 of the side, so the
  band is one Grad-CAM cell wide: the finest border a Grad-CAM map can resolve.
* **Flag**: the top cell is not the centre and holds at least 40% of the mass.
  A uniform map puts 1/9 (11%) in each cell; 40% is 3.6 times that and more
  than the other eight cells' average share four times over. A map centred on an
  object that fills the middle third keeps the top cell in the centre, and one
  spread over a large object rarely puts 40% into one outer cell, so the flag
  singles out maps that concentrate on one off-centre region (a tag, a corner,
  a watermark) rather than off-centre framing.

Example:
    >>> m = np.zeros((1, 24, 24)); m[0, 0, 0] = 3; m[0, 12, 12] = 1
    >>> a = summarise(m)
    >>> a["top_cell"], a["grid"][0][0], a["border"]
    ('top-left', 0.75, 0.75)
"""

from __future__ import annotations

import numpy as np

from audit.explain.registry import titles

CELLS = (("top-left", "top", "top-right"), ("left", "centre", "right"), ("bottom-left", "bottom", "bottom-right"))
BORDER_FRACTION = 1 / 8
FLAG_SHARE = 0.40


def _overlap(size: int, edges) -> np.ndarray:
    """``(len(edges) - 1, size)``: how much of pixel ``i`` (``[i, i + 1)``) lies in each interval."""
    pixels = np.arange(size, dtype=float)
    lo, hi = np.asarray(edges[:-1], dtype=float)[:, None], np.asarray(edges[1:], dtype=float)[:, None]
    return np.clip(np.minimum(pixels + 1, hi) - np.maximum(pixels, lo), 0.0, 1.0)


def unit_mass(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps clipped at zero and scaled to sum 1, float32, and which maps had any mass."""
    maps = np.clip(np.asarray(maps, dtype=np.float32), 0.0, None)
    mass = maps.sum(axis=(1, 2))
    has = mass > 0
    return maps / np.where(has, mass, 1.0)[:, None, None], has


def display_mean(maps: np.ndarray) -> np.ndarray:
    """Mean of the maps that have mass, clipped at zero, float32 at the maps' size: the picture to show."""
    maps = np.clip(np.asarray(maps, dtype=np.float32), 0.0, None)
    has = maps.sum(axis=(1, 2)) > 0
    return maps[has].mean(0) if has.any() else np.zeros(maps.shape[1:], dtype=np.float32)


def grid_shares(mean_map: np.ndarray) -> np.ndarray:
    """``(3, 3)`` mass shares of a unit-mass map, row 0 at the top."""
    h, w = mean_map.shape
    rows = _overlap(h, np.linspace(0, h, 4))
    cols = _overlap(w, np.linspace(0, w, 4))
    return rows @ mean_map.astype(float) @ cols.T


def border_share(mean_map: np.ndarray) -> float:
    """Mass share outside the inner rectangle that leaves 1/8 of each side."""
    h, w = mean_map.shape
    inner_rows = _overlap(h, [h * BORDER_FRACTION, h * (1 - BORDER_FRACTION)])
    inner_cols = _overlap(w, [w * BORDER_FRACTION, w * (1 - BORDER_FRACTION)])
    inner = float((inner_rows @ mean_map.astype(float) @ inner_cols.T).sum())
    return float(mean_map.sum()) - inner


def summarise(maps: np.ndarray) -> dict | None:
    """Grid, border share, top cell and mean (unit-mass) map of ``(n, h, w)`` maps; None without mass."""
    normalised, has = unit_mass(maps)
    if not has.any():
        return None
    mean = normalised[has].mean(0)
    grid = grid_shares(mean)
    r, c = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return {"n": int(has.sum()), "grid": [[float(v) for v in row] for row in grid],
            "border": border_share(mean), "top_cell": CELLS[r][c], "mean": mean.astype(np.float32)}


def flag_sentence(subject: str, method: str, summary: dict) -> str | None:
    """The flag sentence, e.g. "'circle' predictions put 61% of Grad-CAM mass in the top-left cell"."""
    cell = summary["top_cell"]
    r, c = next((i, j) for i, row in enumerate(CELLS) for j, name in enumerate(row) if name == cell)
    share = summary["grid"][r][c]
    if cell == "centre" or share < FLAG_SHARE:
        return None
    title = titles([method]).get(method, method)
    return f"{subject} put {share:.0%} of {title} mass in the {cell} cell"


def attention_entry(scope: str, name: str, subject: str, method: str, maps: np.ndarray,
                    heatmap: str | None) -> tuple[dict, np.ndarray] | None:
    """One ``metrics.json["attention"]`` entry and its mean map, or None when no map has mass.

    ``subject`` starts the flag sentence, in the plural ("'circle' predictions",
    "members of strategy group 3", "examples in slice cue = no").
    """
    summary = summarise(maps)
    if summary is None:
        return None
    entry = {"scope": scope, "name": name, "method": method, "n": summary["n"], "grid": summary["grid"],
             "border": summary["border"], "top_cell": summary["top_cell"],
             "flag": flag_sentence(subject, method, summary), "heatmap": heatmap}
    return entry, summary["mean"]


def group_attention(summary_entry: dict) -> dict:
    """The short form a ``discovered`` entry carries."""
    return {k: summary_entry[k] for k in ("method", "grid", "border", "top_cell")}
