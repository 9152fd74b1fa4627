"""audit.discover.attention: grid shares, border band, top cell and flag, against hand-computed maps."""

from __future__ import annotations

import numpy as np
import pytest

from audit.discover import attention as att


def test_shares_of_a_three_by_three_map_are_its_normalised_pixels():
    m = np.arange(9, dtype=float).reshape(1, 3, 3)
    summary = att.summarise(m)
    np.testing.assert_allclose(summary["grid"], np.arange(9).reshape(3, 3) / 36)
    assert summary["top_cell"] == "bottom-right"


def test_pixels_on_a_cell_boundary_are_shared_by_area():
    # 4 x 4: cell edges at 4/3 and 8/3, so pixel row 1 ([1, 2)) lies 1/3 in cell row 0, 2/3 in cell row 1.
    m = np.zeros((1, 4, 4))
    m[0, 1, 0] = 1.0
    grid = np.array(att.summarise(m)["grid"])
    np.testing.assert_allclose(grid[:, 0], [1 / 3, 2 / 3, 0])
    assert grid.sum() == pytest.approx(1.0)


def test_border_band_is_the_outer_eighth():
    m = np.ones((1, 16, 16))  # uniform: 1/8 of 16 is 2 pixels each side, so the band is 1 - (12/16)^2
    assert att.summarise(m)["border"] == pytest.approx(1 - (12 / 16) ** 2)
    inner = np.zeros((1, 16, 16))
    inner[0, 2:14, 2:14] = 1.0
    assert att.summarise(inner)["border"] == pytest.approx(0.0, abs=1e-6)


def test_each_map_counts_once_whatever_its_scale_and_empty_maps_are_left_out():
    a = np.zeros((3, 6, 6))
    a[0, 0, 0] = 100.0  # strong, top-left
    a[1, 3, 3] = 0.01   # faint, centre
    summary = att.summarise(a)  # a[2] has no mass
    assert summary["n"] == 2
    assert summary["grid"][0][0] == pytest.approx(0.5) and summary["grid"][1][1] == pytest.approx(0.5)
    assert att.summarise(np.zeros((2, 4, 4))) is None


def test_flag_sentence_needs_an_off_centre_cell_with_forty_percent():
    m = np.zeros((1, 9, 9))
    m[0, :3, :3] = 0.61 / 9
    m[0, 3:6, 3:6] = 0.39 / 9
    entry, mean = att.attention_entry("class", "circle", "'circle' predictions", "gradcam", m, None)
    assert entry["flag"] == "'circle' predictions put 61% of Grad-CAM mass in the top-left cell"
    assert entry["top_cell"] == "top-left" and mean.dtype == np.float32
    m[0, :3, :3], m[0, 3:6, 3:6] = 0.39 / 9, 0.0
    m[0, 6:, 6:] = 0.61 / 9
    entry, _ = att.attention_entry("class", "circle", "'circle' predictions", "occlusion", m, None)
    assert entry["flag"] == "'circle' predictions put 61% of Occlusion mass in the bottom-right cell"
    just_under = np.zeros((1, 9, 9))
    just_under[0, :3, :3] = 0.39 / 9
    just_under[0, 3:, :] = 0.61 / 54
    entry, _ = att.attention_entry("class", "c", "'c' predictions", "gradcam", just_under, None)
    assert entry["top_cell"] == "top-left" and entry["flag"] is None
    centred = np.zeros((1, 9, 9))
    centred[0, 3:6, 3:6] = 1.0
    entry, _ = att.attention_entry("class", "c", "'c' predictions", "gradcam", centred, None)
    assert entry["top_cell"] == "centre" and entry["flag"] is None


def test_display_mean_keeps_the_stored_scale():
    maps = np.zeros((3, 4, 4), dtype=np.float16)
    maps[0] = 1.0
    maps[1, 0, 0] = 0.5
    np.testing.assert_allclose(att.display_mean(maps), (maps[0] + maps[1]) / 2)
