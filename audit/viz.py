"""Colour overlays, map resizing and the stored picture size, in numpy and matplotlib colormaps only.

Views (the app, TensorBoard export, reports) use these; nothing here imports
TensorFlow.

>>> import numpy as np
>>> from audit.viz import overlay
>>> overlay(np.zeros((4, 6, 3), np.uint8), np.ones((2, 3))).shape
(4, 6, 3)
"""

from __future__ import annotations

import numpy as np

from audit.errors import AuditError
from audit.store.schema import STORED_IMAGE_MAX_SIDE


def stored_shape(input_shape) -> tuple[int, int]:
    """(height, width) at which a store keeps each image and map of a model with ``input_shape``:
    the input's, shrunk to a longest side of at most ``STORED_IMAGE_MAX_SIDE`` (they are for
    looking at). Here, not in the engine, because views that build pictures need it too.

    >>> stored_shape((224, 160, 3))
    (128, 91)
    """
    h, w = input_shape[:2]
    scale = min(1.0, STORED_IMAGE_MAX_SIDE / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _axis_weights(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """(n_out, n_in) weights of a triangle (bilinear) filter at half-pixel centres.

    This is TensorFlow's ``scale_and_translate`` with the triangle kernel, which
    ``tf.image.resize`` uses: weights falling outside the image are dropped and the
    rest renormalised (so edges behave as clamped). Upsampling, it is plain bilinear
    with or without ``antialias``; downsampling with ``antialias`` the kernel is
    widened by the shrink factor, so every input pixel counts (no aliasing).
    """
    inv_scale = n_in / n_out
    width = max(1.0, inv_scale) if antialias else 1.0
    centres = (np.arange(n_out) + 0.5) * inv_scale  # in input pixel-edge coordinates
    distance = (np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / width
    weights = np.maximum(0.0, 1.0 - np.abs(distance))
    return weights / weights.sum(axis=1, keepdims=True)


def resize_map(heatmap, size: tuple[int, int], *, antialias: bool = False) -> np.ndarray:
    """Bilinear resize of a map (h, w) or a stack (N, h, w) to ``size`` = (height, width).

    The one map resizer: views use it for display, the engine for the stored maps
    (with ``antialias=True``, as ``tf.image.resize(..., antialias=True)``: a map shrunk
    to the stored size averages every pixel instead of sampling a few). Without
    ``antialias`` it matches ``tf.image.resize(..., "bilinear")``.

    >>> resize_map(np.array([[0.0, 1.0]]), (1, 4)).round(2).tolist()
    [[0.0, 0.25, 0.75, 1.0]]
    >>> resize_map(np.array([[0.0, 1.0, 1.0, 0.0]]), (1, 2), antialias=True).astype(float).round(3).tolist()
    [[0.571, 0.571]]
    """
    m = np.asarray(heatmap, np.float32)
    if m.ndim not in (2, 3):
        raise AuditError(f"heatmap must be (h, w) or (N, h, w); received shape {m.shape}")
    out_h, out_w = (int(s) for s in size)
    if out_h < 1 or out_w < 1:
        raise AuditError(f"size must be two positive ints (height, width); received: {size!r}")
    in_h, in_w = m.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return m.copy()
    rows = _axis_weights(in_h, out_h, antialias).astype(np.float32)
    cols = _axis_weights(in_w, out_w, antialias).astype(np.float32)
    return np.einsum("ih,...hw,jw->...ij", rows, m, cols, optimize=True).astype(np.float32)


def to_uint8_rgb(image) -> np.ndarray:
    """An image as uint8 (H, W, 3): floats in [0, 1] are scaled by 255, floats
    within [0, 255] are kept, other ranges (e.g. [-1, 1] or standardised) are
    stretched from their min and max; one channel is repeated."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise AuditError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); received shape {img.shape}")
    img = img[..., :3]
    if img.dtype == np.uint8:
        return img.copy()
    f = np.nan_to_num(img.astype(np.float64))
    lo, hi = (f.min(), f.max()) if f.size else (0.0, 0.0)
    if lo >= 0 and hi <= 1:
        f = f * 255
    elif lo < 0 or hi > 255:
        f = (f - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(f)
    return np.clip(np.round(f), 0, 255).astype(np.uint8)


def colorize(heatmap, cmap: str = "jet") -> np.ndarray:
    """A [0, 1] map (h, w) as uint8 RGB (h, w, 3) through a matplotlib colormap."""
    from matplotlib import colormaps

    m = np.clip(np.nan_to_num(np.asarray(heatmap, np.float64)), 0, 1)
    try:
        colours = colormaps[cmap]
    except KeyError:
        raise AuditError(
            f"unknown colormap {cmap!r}; use a matplotlib colormap name such as 'jet' or 'viridis'"
        ) from None
    return np.round(colours(m)[..., :3] * 255).astype(np.uint8)


def overlay(image, heatmap, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] map over an image: ``(1 - alpha) * image + alpha * colours``.

    Args:
        image: (H, W), (H, W, 1) or (H, W, 3); uint8, or float (see :func:`to_uint8_rgb`).
        heatmap: (h, w) in [0, 1], resized to (H, W) when the sizes differ.
        alpha: weight of the colours, in [0, 1].
        cmap: a matplotlib colormap name.

    Returns:
        uint8 (H, W, 3).
    """
    if not 0 <= alpha <= 1:
        raise AuditError(f"alpha must be in [0, 1]; received: alpha={alpha!r}")
    base = to_uint8_rgb(image)
    m = np.asarray(heatmap, np.float32)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise AuditError(f"heatmap must be (h, w); received shape {m.shape}")
    if m.shape != base.shape[:2]:
        m = resize_map(m, base.shape[:2])
    blended = (1 - alpha) * base.astype(np.float64) + alpha * colorize(m, cmap).astype(np.float64)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


# -- legible overlays -----------------------------------------------------------------------------
# The plain jet blend tints the whole frame navy (jet's 0 is dark blue) and paints the hot spot red,
# so a red cue under it vanishes: the very evidence the map should point at. The default instead
# leaves low-relevance pixels untouched (opacity grows with the map's value), uses a colormap with
# no red at the top, and outlines the top of the map so the pixels under it stay visible.
OVERLAY_MODES = ("heat", "contour", "side by side", "jet")
DEFAULT_MODE = "heat"
HEAT_CMAP = "viridis"  # dark → teal → yellow: never red, readable by colour-blind eyes
TOP_SHARE = 0.2  # the outlined region: the 20% of pixels the map ranks highest
MODE_WORDS = {
    "heat": "colour grows with relevance; the outline is the top 20% of the map",
    "contour": "the image untouched; the outline is the top 20% of the map",
    "side by side": "the image, and beside it the map alone",
    "jet": "the classic jet blend over the whole image",
}
_LINE, _HALO = np.array([255, 255, 255], np.uint8), np.array([0, 0, 0], np.uint8)


def top_region(heatmap, share: float = TOP_SHARE) -> np.ndarray:
    """Boolean mask of the ``share`` of pixels with the highest values (ties at the cut included);
    empty for a flat map, which ranks nothing above anything.

    >>> top_region(np.array([[0.0, 0.1, 0.2, 0.9, 1.0]]), share=0.4).tolist()
    [[False, False, False, True, True]]
    """
    m = np.nan_to_num(np.asarray(heatmap, np.float32))
    if not m.size or m.max() <= m.min():
        return np.zeros(m.shape, bool)
    cut = np.quantile(m, 1 - share)
    region = m >= cut
    # Ties at the cut (a map that is mostly zeros) would take far more than the share: keep what lies above it.
    return m > cut if region.mean() > share and (m > cut).any() else region


def _neighbours(mask: np.ndarray, fill: bool) -> tuple[np.ndarray, ...]:
    pad = np.pad(mask, 1, constant_values=fill)
    return pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]


def _edge(mask: np.ndarray) -> np.ndarray:
    """The mask's own pixels that touch a pixel outside it (4-neighbourhood; the frame counts as outside)."""
    up, down, left, right = _neighbours(mask, False)
    return mask & ~(up & down & left & right)


def _rim(mask: np.ndarray) -> np.ndarray:
    """The pixels outside the mask that touch it (4-neighbourhood)."""
    up, down, left, right = _neighbours(mask, False)
    return ~mask & (up | down | left | right)


def _box_blur(m: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)² box, edges clamped: two passes make it close to a Gaussian."""
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(m, pad, mode="edge"), axis=axis, dtype=np.float64)
        hi = np.take(c, np.arange(2 * radius + 1, c.shape[axis]), axis=axis)
        lo = np.take(c, np.arange(0, c.shape[axis] - 2 * radius - 1), axis=axis)
        m = ((hi - lo) / (2 * radius + 1)).astype(np.float32)
    return m


def outline(image, heatmap, share: float = TOP_SHARE, *, smooth: int = 0) -> np.ndarray:
    """``image`` (uint8 RGB) with the edge of the map's top region drawn in white, with a black halo
    just outside it, so the line reads on dark and light pictures alike. ``smooth`` (px) blurs the
    map first, so pixel noise in it does not draw specks."""
    out = image.copy()
    m = np.asarray(heatmap, np.float32)
    for _ in range(2 if smooth > 0 else 0):
        m = _box_blur(m, smooth)
    region = top_region(m, share)
    out[_rim(region)] = _HALO
    out[_edge(region)] = _LINE
    return out


def _upscale(image: np.ndarray, at_least: int) -> np.ndarray:
    # Nearest neighbour keeps small inputs (28 px digits) crisp; maps are then resized to match.
    factor = max(1, -(-int(at_least) // max(image.shape[:2])))
    return np.kron(image, np.ones((factor, factor, 1), np.uint8)) if factor > 1 else image


def render(image, heatmap=None, *, mode: str = DEFAULT_MODE, alpha: float = 0.6, at_least: int = 0) -> np.ndarray:
    """A picture of ``image`` with ``heatmap`` shown as ``mode`` says (see :data:`OVERLAY_MODES`).

    ``heat``: ``viridis`` colours whose opacity is ``alpha`` times the map's value (zero leaves the
    pixel as it was), plus the outline of the top 20%; ``contour``: the outline alone over the
    untouched image; ``side by side``: the image, then the map alone in the same colours;
    ``jet``: :func:`overlay`. The image is first enlarged (nearest neighbour, whole factors) until
    its longest side is at least ``at_least``, and the map resized to it, so outlines stay thin.
    Without a map, the (enlarged) image.

    >>> render(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), at_least=8).shape
    (8, 8, 3)
    >>> render(np.zeros((4, 4, 3), np.uint8), np.ones((2, 2)), mode="side by side").shape
    (4, 10, 3)
    """
    if mode not in OVERLAY_MODES:
        raise AuditError(f"mode must be one of {', '.join(OVERLAY_MODES)}; received: mode={mode!r}")
    if not 0 <= alpha <= 1:
        raise AuditError(f"alpha must be in [0, 1]; received: alpha={alpha!r}")
    base = _upscale(to_uint8_rgb(image), at_least)
    if heatmap is None:
        return base
    m = np.asarray(heatmap, np.float32)
    m = m[..., 0] if m.ndim == 3 and m.shape[-1] == 1 else m
    if m.ndim != 2:
        raise AuditError(f"heatmap must be (h, w); received shape {m.shape}")
    m = np.clip(np.nan_to_num(resize_map(m, base.shape[:2]) if m.shape != base.shape[:2] else m), 0, 1)
    if mode == "jet":
        return overlay(base, m, alpha)
    if mode == "side by side":
        gap = np.full((base.shape[0], 2, 3), 255, np.uint8)
        return np.concatenate([base, gap, colorize(m, HEAT_CMAP)], axis=1)
    if mode == "heat":
        weight = (alpha * m)[..., None]
        base = np.round((1 - weight) * base + weight * colorize(m, HEAT_CMAP)).astype(np.uint8)
    return outline(base, m, smooth=max(1, round(min(base.shape[:2]) / 48)))


def legend(mode: str = DEFAULT_MODE, *, width: int = 160, height: int = 14, alpha: float = 0.6) -> np.ndarray:
    """A colour bar, low (left) to high (right) relevance, drawn as ``mode`` draws a map over a
    mid-grey picture, so the bar reads the way the overlays do; ``contour`` has no colours, so its
    bar is the grey with the outline where the top 20% begins.

    >>> legend(width=10, height=2).shape
    (2, 10, 3)
    """
    ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))
    grey = np.full((height, width, 3), 128, np.uint8)
    if mode == "side by side":
        return colorize(ramp, HEAT_CMAP)
    if mode == "contour":
        bar = grey.copy()
        bar[:, int(round((1 - TOP_SHARE) * (width - 1))):] = grey[0, 0]
        bar[:, int(round((1 - TOP_SHARE) * (width - 1)))] = _LINE
        return bar
    return render(grey, ramp, mode=mode, alpha=alpha) if mode == "jet" else np.round(
        (1 - alpha * ramp[..., None]) * grey + alpha * ramp[..., None] * colorize(ramp, HEAT_CMAP)).astype(np.uint8)
