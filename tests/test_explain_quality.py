"""Deletion/insertion against a step-by-step recompute; region measures by hand."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from audit.errors import AuditError
from audit.explain import GradCAM, OcclusionSensitivity, quality
from explain_models import planted_images, planted_model, region_mask


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(11)
    inp = keras.Input((4, 5, 2))
    x = keras.layers.Conv2D(3, 2, activation="tanh")(inp)
    out = keras.layers.Dense(3)(keras.layers.Flatten()(x))  # logits head: probabilities via softmax
    return keras.Model(inp, out)


def _mirror(i, n):
    i %= 2 * n
    return i if i < n else 2 * n - 1 - i


def blurred_by_hand(m):
    """The documented blur, pixel by pixel: Gaussian of sigma max(1, min(H, W) / 8), cut at 4 sigma, edges mirrored."""
    h, w = m.shape
    sigma = max(1.0, min(h, w) / 8)
    r = int(4 * sigma + 0.5)
    taps = {t: np.exp(-0.5 * (t / sigma) ** 2) for t in range(-r, r + 1)}
    total = sum(taps.values()) ** 2
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            out[i, j] = sum(
                taps[a] * taps[b] * float(m[_mirror(i + a, h), _mirror(j + b, w)]) for a in taps for b in taps
            ) / total
    return out.astype(np.float32)


def order_by_hand(m, stable=False):
    """Pixels, first deleted first: map value, then blurred map (both highest first), then the fixed random key."""
    if stable:  # the old rule: ties in pixel order
        return np.argsort(-m.ravel(), kind="stable")
    h, w = m.shape
    blurred = blurred_by_hand(m).ravel()
    random = np.random.default_rng((h, w)).permutation(h * w)
    return np.array(sorted(range(h * w), key=lambda p: (-m.ravel()[p], -blurred[p], random[p])))


def curves_by_hand(model, x, maps, targets, steps, fill, stable=False):
    probs = lambda a: keras.ops.softmax(model(a[None])).numpy()[0]  # noqa: E731
    n, h, w = maps.shape
    deletion = np.zeros((n, steps + 1))
    insertion = np.zeros((n, steps + 1))
    for i in range(n):
        order = order_by_hand(maps[i], stable)
        for s in range(steps + 1):
            k = int(round(s * h * w / steps))
            hidden = np.zeros(h * w, bool)
            hidden[order[:k]] = True
            hidden = hidden.reshape(h, w)
            deleted = np.where(hidden[..., None], fill[i], x[i])
            inserted = np.where(hidden[..., None], x[i], fill[i])
            deletion[i, s] = probs(deleted)[targets[i]]
            insertion[i, s] = probs(inserted)[targets[i]]
    return deletion, insertion


@pytest.mark.parametrize("baseline", [None, 0.0])
def test_deletion_insertion_match_step_by_step_recompute(tiny, baseline):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (3, 4, 5, 2)).astype(np.float32)
    maps = rng.random((3, 4, 5)).astype(np.float32)
    maps[0] = 0.5  # all tied, blurred copy too: the fixed random order decides
    maps[1, :2] = 0.25  # tied block: the blurred copy decides
    targets = np.array([0, 2, 1])
    fill = x.mean(axis=(1, 2)) if baseline is None else np.zeros((3, 2), np.float32)
    deletion, insertion = curves_by_hand(tiny, x, maps, targets, 4, fill)
    got = quality.deletion_insertion(tiny, x, maps, targets, steps=4, baseline=baseline, return_curves=True)
    np.testing.assert_allclose(got["deletion_curve"], deletion, atol=1e-6)
    np.testing.assert_allclose(got["insertion_curve"], insertion, atol=1e-6)
    # trapezoid rule over the fraction of pixels, done by hand
    np.testing.assert_allclose(got["deletion"], (deletion[:, :-1] + deletion[:, 1:]).sum(axis=1) / 8, atol=1e-6)
    np.testing.assert_allclose(got["insertion"], (insertion[:, :-1] + insertion[:, 1:]).sum(axis=1) / 8, atol=1e-6)
    # chunking across steps and images gives the same numbers
    tight = quality.deletion_insertion(tiny, x, maps, targets, steps=4, baseline=baseline, memory_mb=1e-9)
    np.testing.assert_allclose(tight["deletion"], got["deletion"], atol=1e-6)


def test_ties_carry_no_spatial_bias():
    # A model that ignores where things are (1x1 conv, global mean) and a blocky map whose top half is one
    # tie. Under the old rule (ties in pixel order) the cue at the top is deleted first, and last once the
    # image and map are flipped upside down; ties broken by the blurred map and a fixed random key give
    # the same scores for every flip.
    inp = keras.Input((16, 16, 1))
    cue = keras.layers.Conv2D(1, 1, activation="relu", kernel_initializer="ones", bias_initializer="zeros")(inp)
    pooled = keras.layers.GlobalAveragePooling2D()(cue)
    dense = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant([[200.0, -200.0]]),
                               bias_initializer=keras.initializers.Constant([-4.0, 4.0]))
    out = dense(pooled)  # class 0 is sure with the cue, and ruled out without it
    model = keras.Model(inp, out)
    x = np.zeros((1, 16, 16, 1), np.float32)
    x[0, 0:2, 1:7] = 1.0  # the cue, near the top of the tied region
    coarse = np.array([[1.0, 1.0], [0.3, 0.0]], np.float32)
    maps = np.kron(coarse, np.ones((8, 8), np.float32))[None]  # occlusion-like blocks
    flips = {"lr": (2,), "ud": (1,), "both": (1, 2)}
    old = {name: curves_by_hand(model, *flipped(x, maps, axes), [0], 8, np.zeros((1, 1)), stable=True)[0]
           for name, axes in {"none": (), **flips}.items()}
    old_area = {name: quality._area(d, 8)[0] for name, d in old.items()}
    assert old_area["ud"] - old_area["none"] > 0.3  # the tie order alone moves the old deletion score
    got = quality.deletion_insertion(model, x, maps, [0], steps=8, baseline=0.0)
    for axes in flips.values():
        again = quality.deletion_insertion(model, *flipped(x, maps, axes), [0], steps=8, baseline=0.0)
        np.testing.assert_allclose(again["deletion"], got["deletion"], atol=1e-6)
        np.testing.assert_allclose(again["insertion"], got["insertion"], atol=1e-6)


def flipped(x, maps, axes):
    return np.flip(x, axes).copy(), np.flip(maps, axes).copy()


def test_tie_break_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    maps = np.random.default_rng(4).random((2, 9, 30)).astype(np.float32)
    blurred, random = quality.tie_break_keys(maps)
    expected = [ndimage.gaussian_filter(m.astype(np.float64), max(1.0, 9 / 8), mode="reflect") for m in maps]
    np.testing.assert_allclose(blurred.reshape(maps.shape), expected, atol=1e-6)
    assert (random[0] == random[1]).all() and sorted(random[0]) == list(range(9 * 30))


def test_predicted_targets_and_resized_maps(tiny):
    x = np.random.default_rng(2).uniform(-1, 1, (2, 4, 5, 2)).astype(np.float32)
    small = np.random.default_rng(3).random((2, 2, 3)).astype(np.float32)
    got = quality.deletion_insertion(tiny, x, small, steps=2, return_curves=True)
    pred = keras.ops.softmax(tiny(x)).numpy().argmax(axis=1)
    assert got["targets"].tolist() == pred.tolist()
    from audit.viz import resize_map

    same = quality.deletion_insertion(tiny, x, resize_map(small, (4, 5)), pred, steps=2)
    np.testing.assert_allclose(got["insertion"], same["insertion"], atol=1e-7)


def test_good_maps_score_better_than_reversed_maps_on_planted_model():
    x, labels = planted_images(4, seed=8)
    model = planted_model("softmax")
    maps = OcclusionSensitivity(model, patch_size=8)(x, labels)
    good = quality.deletion_insertion(model, x, maps, labels, steps=8)
    bad = quality.deletion_insertion(model, x, 1 - maps, labels, steps=8)
    assert (good["deletion"] < bad["deletion"]).all()
    assert (good["insertion"] > bad["insertion"]).all()


def test_gradcam_mass_sits_in_the_planted_region():
    x, labels = planted_images(6, seed=9)
    mask = region_mask()
    mass = quality.region_mass(GradCAM(planted_model("logits"))(x, labels), mask)
    assert (mass > 0.95).all()
    assert mask.mean() < 0.15  # a map spread evenly would score this little


def test_region_measures_by_hand():
    maps = np.array([[[0.0, 1.0, 0.2], [0.0, 0.5, 0.3]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    mask = np.array([[False, True, True], [False, False, False]])
    np.testing.assert_allclose(quality.region_mass(maps, mask), [1.2 / 2.0, 0.0])
    assert quality.pointing_game(maps, mask).tolist() == [True, False]
    # hot area (>= 0.5) is {(0,1), (1,1)}; mask is {(0,1), (0,2)}: IoU 1/3
    np.testing.assert_allclose(quality.half_max_iou(maps, mask), [1 / 3, 0.0])
    per_image = np.stack([mask, ~mask])
    np.testing.assert_allclose(quality.region_mass(maps, per_image), [0.6, 0.0])


def test_clear_errors(tiny):
    x = np.zeros((2, 4, 5, 2), np.float32)
    with pytest.raises(AuditError, match="maps must be"):
        quality.deletion_insertion(tiny, x, np.zeros((3, 4, 5)))
    with pytest.raises(AuditError, match="steps"):
        quality.deletion_insertion(tiny, x, np.zeros((2, 4, 5)), steps=0)
    with pytest.raises(AuditError, match="targets has 3"):
        quality.deletion_insertion(tiny, x, np.zeros((2, 4, 5)), [0, 1, 2])
    with pytest.raises(AuditError, match="mask"):
        quality.region_mass(np.zeros((2, 4, 5)), np.zeros((4, 4), bool))
