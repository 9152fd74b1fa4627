"""Occlusion sensitivity against a patch-by-patch masked recompute and planted evidence."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from audit.errors import AuditError
from audit.explain import OcclusionSensitivity, quality
from audit.explain.base import as_model, normalize_maps
from audit.explain.occlusion import patch_starts
from audit.io.models import LoadedModel
from explain_models import H, W, planted_images, planted_model, region_mask

SMALL = (6, 8)


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(5)
    inp = keras.Input((*SMALL, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(inp)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


@pytest.fixture(scope="module")
def tiny_images():
    return np.random.default_rng(0).uniform(-1, 1, (3, *SMALL, 3)).astype(np.float32)


def masked_recompute(model, x, patch, starts_rows, starts_cols, fill, targets):
    """The definition, one patch and one image at a time."""
    probs = lambda a: np.asarray(model(a[None], training=False))[0]  # noqa: E731
    out = np.zeros(x.shape[:3])
    for i, image in enumerate(x):
        t = targets[i] if targets is not None else probs(image).argmax()
        clean = probs(image)[t]
        total, count = np.zeros(x.shape[1:3]), np.zeros(x.shape[1:3])
        for r in starts_rows:
            for c in starts_cols:
                covered = image.copy()
                covered[r : r + patch, c : c + patch] = fill[i]
                total[r : r + patch, c : c + patch] += clean - probs(covered)[t]
                count[r : r + patch, c : c + patch] += 1
        out[i] = total / count
    return out


def test_patch_starts_reach_the_far_edge():
    assert patch_starts(6, 4, 3).tolist() == [0, 2]
    assert patch_starts(8, 4, 3).tolist() == [0, 3, 4]
    assert patch_starts(8, 4, 4).tolist() == [0, 4]
    assert patch_starts(64, 8, 4).tolist() == list(range(0, 57, 4))


@pytest.mark.parametrize(
    "baseline, targets",
    [(None, None), (0.5, 1), (np.array([0.0, -1.0, 1.0]), np.array([2, 0, 1]))],
    ids=["mean-colour/predicted", "number/int", "per-channel/array"],
)
def test_drop_matches_masked_recompute(tiny, tiny_images, baseline, targets):
    x = tiny_images
    if baseline is None:
        fill = x.mean(axis=(1, 2))
    else:
        fill = np.broadcast_to(np.asarray(baseline, np.float32), (len(x), 3))
    per_image = None if targets is None else np.broadcast_to(targets, (len(x),))
    expected = masked_recompute(tiny, x, 4, [0, 2], [0, 3, 4], fill, per_image)
    occlusion = OcclusionSensitivity(tiny, patch_size=4, stride=3, baseline=baseline)
    raw = occlusion(x, targets, normalize=False)
    assert raw.shape == (3, *SMALL) and raw.dtype == np.float32
    np.testing.assert_allclose(raw, expected, atol=2e-6)
    np.testing.assert_allclose(occlusion(x, targets), normalize_maps(expected), atol=1e-4)


def test_chunked_calls_give_the_same_maps(tiny, tiny_images):
    whole = OcclusionSensitivity(tiny, patch_size=3)(tiny_images, normalize=False)
    one_copy = OcclusionSensitivity(tiny, patch_size=3, memory_mb=1e-9)
    assert one_copy.max_copies == 1
    np.testing.assert_allclose(one_copy(tiny_images, normalize=False), whole, atol=1e-6)
    assert one_copy.trace_count == 1


def test_default_stride_is_half_the_patch(tiny):
    assert OcclusionSensitivity(tiny, patch_size=8).stride == 4
    assert OcclusionSensitivity(tiny, patch_size=1).stride == 1


@pytest.mark.parametrize("patch_size", [4, 8])
def test_hot_area_overlaps_planted_region_on_non_square_images(patch_size):
    x, labels = planted_images(6, seed=4)
    maps = OcclusionSensitivity(planted_model("softmax"), patch_size=patch_size)(x, targets=labels)
    assert maps.shape == (6, H, W)
    assert (quality.half_max_iou(maps, region_mask()) >= 0.8).all()
    # patches away from the region never change the score
    far = np.ones((H, W), bool)
    far[8 - patch_size : 24 + patch_size, 36 - patch_size :] = False
    assert not maps[:, far].any()


def test_sigmoid_head_drop_uses_class_probability():
    # sigmoid(2 s d) equals the softmax head's class-1 probability for the same
    # evidence d, so both heads must give identical drops for either class
    x, labels = planted_images(4, seed=5)
    softmax, sigmoid = planted_model("softmax"), planted_model("sigmoid")
    kernel, bias = sigmoid.get_layer("head").get_weights()
    sigmoid.get_layer("head").set_weights([2 * kernel, bias])
    np.testing.assert_allclose(np.asarray(sigmoid(x))[:, 0], np.asarray(softmax(x))[:, 1], atol=1e-6)
    for targets in (labels, 1 - labels):
        expected = OcclusionSensitivity(softmax, patch_size=8)(x, targets, normalize=False)
        raw = OcclusionSensitivity(sigmoid, patch_size=8)(x, targets, normalize=False)
        np.testing.assert_allclose(raw, expected, atol=1e-6)
        assert (np.abs(raw).max(axis=(1, 2)) > 0.01).all()


def test_constant_output_gives_zero_maps(tiny_images):
    inp = keras.Input((*SMALL, 3))
    out = keras.layers.Dense(2, activation="softmax", kernel_initializer="zeros")(keras.layers.Flatten()(inp))
    maps = OcclusionSensitivity(keras.Model(inp, out), patch_size=2)(tiny_images)
    assert np.isfinite(maps).all() and not maps.any()


def test_works_without_layers_like_a_savedmodel(tiny, tiny_images):
    bare = LoadedModel(
        path=Path("<savedmodel>"), format="savedmodel", sha256="", input_shape=(*SMALL, 3),
        num_classes=3, output_kind="softmax", keras_model=None, _call=lambda x: tiny(x, training=False),
    )
    expected = OcclusionSensitivity(as_model(tiny), patch_size=4)(tiny_images, normalize=False)
    got = OcclusionSensitivity(bare, patch_size=4)(tiny_images, normalize=False)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_clear_errors(tiny, tiny_images):
    with pytest.raises(AuditError, match="patch_size"):
        OcclusionSensitivity(tiny, patch_size=0)
    with pytest.raises(AuditError, match="stride"):
        OcclusionSensitivity(tiny, patch_size=4, stride=0)
    with pytest.raises(AuditError, match="baseline"):
        OcclusionSensitivity(tiny, baseline=np.zeros(5))(tiny_images)
    with pytest.raises(AuditError, match="memory_mb"):
        OcclusionSensitivity(tiny, memory_mb=0)
