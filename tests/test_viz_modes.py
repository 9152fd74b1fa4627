"""Legible overlays (issue 14): the default keeps what lies under a hot spot visible.

Oracles: a planted red corner tag under the map's maximum (the demo's shortcut), whose pixels
must stay red-dominant in the default and contour modes while the jet blend turns them into the
hot spot's colour; the top region and its outline counted by hand; the legend against the
colormap it stands for.
"""

from __future__ import annotations

import numpy as np
import pytest

from audit.errors import AuditError
from audit.viz import DEFAULT_MODE, HEAT_CMAP, OVERLAY_MODES, colorize, legend, outline, overlay, render, top_region

RED = np.array([230, 20, 20])


def tagged_picture(size: int = 64):
    """A dark picture with a red 8 px tag in the top-left corner, and a map whose peak is the tag."""
    image = np.full((size, size, 3), 30, np.uint8)
    image[2:10, 2:10] = RED
    yy, xx = np.mgrid[0:size, 0:size]
    heat = np.exp(-((yy - 6) ** 2 + (xx - 6) ** 2) / (2 * 5.0 ** 2))
    return image, heat / heat.max()


def red_dominant(pixels: np.ndarray) -> float:
    """Share of pixels whose red channel exceeds both others by at least 60."""
    p = pixels.reshape(-1, 3).astype(int)
    return float(np.mean((p[:, 0] - p[:, 1] >= 60) & (p[:, 0] - p[:, 2] >= 60)))


def test_the_tag_under_the_hot_spot_stays_visible_in_the_default_and_contour_modes():
    image, heat = tagged_picture()
    untagged = np.full_like(image, 30)
    tag = (slice(3, 9), slice(3, 9))  # inside the tag, away from the outline
    assert DEFAULT_MODE == "heat"
    for mode in ("heat", "contour"):
        # Red in the picture only where the image is red: the tag reads as the tag.
        assert red_dominant(render(image, heat, mode=mode)[tag]) == 1.0, mode
        assert red_dominant(render(untagged, heat, mode=mode)) == 0.0, mode
        kept = np.abs(render(image, heat, mode=mode)[tag].astype(int) - render(untagged, heat, mode=mode)[tag]).sum(-1)
        assert kept.min() >= 0.4 * np.abs(RED - 30).sum(), mode  # the tag keeps most of its contrast
    np.testing.assert_array_equal(render(image, heat, mode="contour")[tag], image[tag])  # untouched
    # The jet blend paints its own red where the map peaks, tag or no tag: a red tag there is hidden.
    jet = render(untagged, heat, mode="jet", alpha=0.5)
    np.testing.assert_array_equal(jet, overlay(untagged, heat, 0.5))
    assert red_dominant(jet[tag]) > 0.9


def test_heat_mode_leaves_zero_relevance_pixels_untouched_and_blends_by_value():
    image = np.full((20, 20, 3), 100, np.uint8)
    heat = np.tile(np.linspace(0, 1, 20), (20, 1))  # columns 16-19 are the top fifth
    out = render(image, heat, mode="heat", alpha=0.6)
    colours = colorize(heat, HEAT_CMAP).astype(float)
    expected = np.round((1 - 0.6 * heat[..., None]) * 100 + 0.6 * heat[..., None] * colours)
    np.testing.assert_array_equal(out[:, :15], expected[:, :15])  # away from the outline: the blend by value
    assert out[:, 0].tolist() == [[100, 100, 100]] * 20  # zero relevance: the image itself
    assert (out[:, 15] == 0).all() and (out[:, 16] == 255).all()  # halo, then the line, where the top fifth begins


def test_top_region_is_the_highest_fifth_and_empty_for_a_flat_map():
    m = np.arange(100, dtype=np.float32).reshape(10, 10)
    assert top_region(m).sum() == 20 and top_region(m)[-2:].all()
    assert not top_region(np.full((5, 5), 0.3)).any()
    ties = np.zeros((10, 10))
    ties[0, :3] = 1.0  # 3% at the max, the rest tied at zero: only the max is "top"
    assert top_region(ties).sum() == 3


def test_outline_is_drawn_on_the_region_edge_with_a_halo_outside():
    image = np.full((12, 12, 3), 128, np.uint8)
    heat = np.zeros((12, 12))
    heat[4:8, 4:8] = 1.0  # 16 px of 144: inside the top fifth
    out = outline(image, heat)  # unsmoothed, so the geometry is exact
    white = (out == 255).all(-1)
    black = (out == 0).all(-1)
    region = np.zeros((12, 12), bool)
    region[4:8, 4:8] = True
    assert white.sum() > 0 and white[region].sum() == white.sum()  # the line lies on the region
    assert black.sum() > 0 and not black[region].any()  # the halo just outside it
    assert (out[0, 0] == 128).all()
    assert white.sum() == 12 and black.sum() == 16  # the 4x4 block's ring of 12, the 16 pixels touching it
    smoothed = (render(image, heat, mode="contour") == 255).all(-1)  # render smooths first: still around the block
    assert smoothed.any() and not smoothed[:2].any() and not smoothed[:, :2].any()


def test_side_by_side_and_enlarging():
    image, heat = tagged_picture(16)
    side = render(image, heat, mode="side by side", at_least=32)
    assert side.shape == (32, 32 + 2 + 32, 3)
    np.testing.assert_array_equal(side[:, :32], np.kron(image, np.ones((2, 2, 1), np.uint8)))
    assert (side[:, 32:34] == 255).all()
    np.testing.assert_array_equal(render(image, None, at_least=48), np.kron(image, np.ones((3, 3, 1), np.uint8)))


def test_legend_runs_low_to_high_in_the_overlay_colours():
    bar = legend("side by side", width=11, height=2)
    np.testing.assert_array_equal(bar[0], colorize(np.linspace(0, 1, 11)[None], HEAT_CMAP)[0])
    heat = legend("heat", width=11, height=1, alpha=0.6)[0].astype(int)
    assert heat[0].tolist() == [128, 128, 128]  # zero relevance: the picture, untinted
    assert np.abs(heat[-1] - 128).sum() > 100  # full relevance: clearly tinted
    for mode in OVERLAY_MODES:
        assert legend(mode, width=20, height=3).shape == (3, 20, 3)


def test_render_refuses_bad_arguments():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(AuditError, match="mode must be one of"):
        render(image, np.zeros((4, 4)), mode="rainbow")
    with pytest.raises(AuditError, match="alpha"):
        render(image, np.zeros((4, 4)), alpha=1.5)
    with pytest.raises(AuditError, match="heatmap"):
        render(image, np.zeros((2, 2, 2)))
