"""Overlays and map resizing (numpy only), with TensorFlow's resize as the second implementation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audit.errors import AuditError
from audit.viz import overlay, resize_map, to_uint8_rgb

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("src, dst", [((6, 8), (48, 64)), ((48, 64), (5, 7)), ((3, 3), (3, 9))])
def test_resize_matches_tensorflow_bilinear(src, dst):
    import tensorflow as tf

    maps = np.random.default_rng(0).random((2, *src)).astype(np.float32)
    theirs = tf.image.resize(maps[..., None], dst, method="bilinear").numpy()[..., 0]
    np.testing.assert_allclose(resize_map(maps, dst), theirs, atol=1e-5)
    np.testing.assert_allclose(resize_map(maps[0], dst), theirs[0], atol=1e-5)


def test_overlay_blends_colours_by_alpha():
    from matplotlib import colormaps

    image = np.full((2, 3, 3), [100, 50, 0], np.uint8)
    heat = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]])
    colours = np.round(colormaps["viridis"](heat)[..., :3] * 255)
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, heat, alpha=1.0, cmap="viridis"), colours)
    half = overlay(image, heat, alpha=0.25, cmap="viridis")
    assert half.dtype == np.uint8 and half.shape == (2, 3, 3)
    np.testing.assert_array_equal(half, np.round(0.75 * image + 0.25 * colours))


def test_overlay_resizes_the_map_and_accepts_float_and_grey_images():
    heat = np.random.default_rng(1).random((3, 4))
    grey = np.random.default_rng(2).random((6, 8, 1)).astype(np.float32)
    as_uint8 = np.repeat(np.round(grey * 255).astype(np.uint8), 3, axis=-1)
    np.testing.assert_array_equal(to_uint8_rgb(grey), as_uint8)
    np.testing.assert_array_equal(overlay(grey, heat), overlay(as_uint8, resize_map(heat, (6, 8))))
    signed = np.array([[[-1.0, 0.0, 1.0]]])
    assert to_uint8_rgb(signed).tolist() == [[[0, 128, 255]]]
    assert to_uint8_rgb(np.array([[[0.0, 2.0, 200.0]]])).tolist() == [[[0, 2, 200]]]


def test_overlay_errors():
    image = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(AuditError, match="alpha"):
        overlay(image, np.zeros((2, 2)), alpha=2)
    with pytest.raises(AuditError, match="colormap"):
        overlay(image, np.zeros((2, 2)), cmap="no-such-map")
    with pytest.raises(AuditError, match="heatmap"):
        overlay(image, np.zeros((2, 2, 2)))


def test_importing_explain_and_viz_does_not_import_tensorflow():
    code = (
        "import sys, numpy as np\n"
        "import audit.explain, audit.viz\n"
        "audit.viz.overlay(np.zeros((4, 4, 3)), np.ones((2, 2)))\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf_explain') if m in sys.modules]\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
