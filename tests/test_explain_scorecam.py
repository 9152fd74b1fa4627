"""Score-CAM: planted evidence, and a brute-force loop over channels with ``model.predict`` as the oracle."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from audit.errors import AuditError, ModelError
from audit.explain import ScoreCAM, quality
from audit.viz import resize_map
from explain_models import H, W, functional_model, planted_images, planted_model, region_mask


@pytest.fixture(scope="module")
def images():
    return planted_images(4, seed=3)[0]


def _probs(raw: np.ndarray, head: str) -> np.ndarray:
    if head == "sigmoid":
        return np.concatenate([1 - raw, raw], axis=1)
    if head == "logits":
        e = np.exp(raw - raw.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return raw


def brute_force_scorecam(model, layer: str, x, head: str, targets=None, max_channels=None):
    """Score-CAM from the paper, one image and one channel at a time: (raw maps, [0, 1] maps) at input size."""
    acts = keras.Model(model.inputs, model.get_layer(layer).output).predict(x, verbose=0).astype(np.float64)
    probs = _probs(model.predict(x, verbose=0), head)
    lows = []
    for i in range(len(x)):
        c = int(probs[i].argmax()) if targets is None else int(targets)
        a = acts[i]
        channels = list(range(a.shape[-1]))
        if max_channels is not None and len(channels) > max_channels:
            spread = [a[..., k].var() for k in channels]
            channels = sorted(channels, key=lambda k: -spread[k])[:max_channels]
        scores, used = [], []
        for k in channels:
            if a[..., k].max() == a[..., k].min():
                continue  # no mask to make from a flat map
            up = resize_map(a[..., k], x.shape[1:3]).astype(np.float64)
            mask = (up - up.min()) / (up.max() - up.min())
            masked = (x[i] * mask[..., None])[None].astype(np.float32)
            scores.append(_probs(model.predict(masked, verbose=0), head)[0, c])
            used.append(k)
        alpha = np.exp(scores) / np.exp(scores).sum() if used else np.zeros(0)
        lows.append(np.maximum(np.tensordot(a[..., used], alpha, axes=([2], [0])), 0) if used else a[..., 0] * 0)
    raw = resize_map(np.stack(lows), x.shape[1:3]).astype(np.float64)
    lo, hi = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
    return raw, (raw - lo) / np.where(hi > lo, hi - lo, 1)


# -- planted evidence -------------------------------------------------------------------
@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_peak_falls_in_planted_region_on_non_square_images(head):
    x, labels = planted_images(10, seed=1)
    maps = ScoreCAM(planted_model(head))(x)
    assert maps.shape == (10, H, W)
    assert quality.pointing_game(maps, region_mask()).all()
    assert (quality.region_mass(maps, region_mask()) > 0.99).all()


def test_peak_falls_in_planted_region_on_square_images_for_the_label():
    region = (4, 14, 18, 30)
    x, labels = planted_images(6, 32, 32, region, seed=2)
    maps = ScoreCAM(planted_model("logits", 32, 32, region))(x, targets=labels)
    assert quality.pointing_game(maps, region_mask(32, 32, region)).all()


# -- agreement with the brute-force loop ------------------------------------------------------
@pytest.mark.parametrize("head", ["softmax", "logits", "sigmoid"])
def test_matches_brute_force_loop_over_channels(head, images):
    model = functional_model(head)
    explainer = ScoreCAM(model)
    assert explainer.layer_name == "conv_last"
    raw, full = brute_force_scorecam(model, "conv_last", images, head)
    assert np.ptp(full, axis=(1, 2)).min() == 1  # every reference map has signal, so the match means something
    np.testing.assert_allclose(explainer(images), full, atol=1e-5)
    np.testing.assert_allclose(explainer(images, normalize=False), raw, rtol=1e-5, atol=1e-7)


def test_fixed_target_and_earlier_layer_match_brute_force(images):
    model = functional_model("softmax")
    _, full = brute_force_scorecam(model, "conv1", images, "softmax", targets=2)
    np.testing.assert_allclose(ScoreCAM(model, layer="conv1")(images, targets=2), full, atol=1e-5)


def test_max_channels_keeps_the_channels_that_vary_most(images):
    model = functional_model("softmax")
    _, full = brute_force_scorecam(model, "conv_last", images, "softmax", max_channels=3)
    np.testing.assert_allclose(ScoreCAM(model, max_channels=3)(images), full, atol=1e-5)
    # one channel: its weight is 1 whatever it scores, so the map is that channel, upsampled
    acts = keras.Model(model.inputs, model.get_layer("conv_last").output).predict(images, verbose=0)
    top = acts[np.arange(len(images)), ..., acts.var(axis=(1, 2)).argmax(axis=1)]  # (N, h, w)
    only = resize_map(top, (H, W))
    lo, hi = only.min(axis=(1, 2), keepdims=True), only.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(ScoreCAM(model, max_channels=1)(images), (only - lo) / (hi - lo), atol=1e-5)


# -- batching -----------------------------------------------------------------------------
def test_chunked_forward_calls_give_the_same_maps_and_trace_once(images):
    model = functional_model("logits")
    whole = ScoreCAM(model)(images)
    tiny = ScoreCAM(model, memory_mb=0.05, batch_size=3)  # a few masked copies per forward call
    assert tiny.max_copies < 6  # fewer than one image's channels: channels are split too
    np.testing.assert_allclose(tiny(images), whole, atol=1e-6)
    tiny(images[:1])
    assert tiny.trace_count == 2  # one trace each of the two compiled functions, for any batch or chunk size


def test_a_flat_channel_takes_no_weight():
    # on the planted layer each image has one live channel (its cue's colour) and one all zero;
    # the flat one is left out of the softmax, so the live one weighs exactly 1
    x, labels = planted_images(4, seed=6)
    model = planted_model("softmax")
    acts = keras.Model(model.inputs, model.get_layer("masked").output).predict(x, verbose=0)
    rows = np.arange(len(x))
    assert not acts[rows, ..., 1 - labels].any()
    expected = resize_map(acts[rows, ..., labels], (H, W))
    np.testing.assert_allclose(ScoreCAM(model)(x, normalize=False), expected, rtol=1e-5, atol=1e-7)


def test_flat_layer_gives_zero_maps_not_nan():
    # black images: every channel of the planted layer is zero, so no channel makes a mask
    maps = ScoreCAM(planted_model("softmax"))(np.zeros((2, H, W, 3), np.float32))
    assert maps.shape == (2, H, W) and not maps.any()


# -- mistakes -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_max_channels_must_be_a_positive_int(bad):
    with pytest.raises(AuditError, match="max_channels must be"):
        ScoreCAM(functional_model("softmax"), max_channels=bad)


def test_layer_without_spatial_output_is_refused():
    with pytest.raises(ModelError, match="4-D"):
        ScoreCAM(functional_model("softmax"), layer="gap")
