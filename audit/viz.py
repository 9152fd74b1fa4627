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
