"""Grad-CAM and Grad-CAM++: planted evidence, an eager reference, and tf-explain as oracles."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from audit.errors import AuditError, ModelError
from audit.explain import GradCAM, GradCAMPlusPlus, quality
from audit.explain.base import as_model, normalize_maps, target_scores
from audit.io.models import load_model
from explain_models import (
    H,
    W,
    functional_model,
    nested_model,
    planted_images,
    planted_model,
    predicted,
    reference_cam,
    region_mask,
    sequential_saved,
    split_at_conv_last,
    trunk,
)


@pytest.fixture(scope="module")
def images():
    return planted_images(6, seed=3)[0]


@pytest.fixture(scope="module")
def seq_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("seq")


def _reference_for(model, x, targets=None, sigmoid=False, plus_plus=False):
    before, after = split_at_conv_last(model)
    if targets is None:
        targets = predicted(after(before(x)).numpy(), sigmoid)
    return reference_cam(before, after, x, np.broadcast_to(targets, (len(x),)), sigmoid, plus_plus)


# -- planted evidence -------------------------------------------------------------
@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_peak_falls_in_planted_region_on_non_square_images(head):
    x, labels = planted_images(12, seed=1)
    model = planted_model(head)
    maps = GradCAM(model)(x)
    assert maps.shape == (12, H, W)
    assert quality.pointing_game(maps, region_mask()).all()
    # the cue decides the prediction, so explaining the prediction explains the cue
    assert (quality.region_mass(maps, region_mask()) > 0.99).all()
    plus = GradCAMPlusPlus(model)(x, targets=labels)
    assert quality.pointing_game(plus, region_mask()).all()


def test_peak_falls_in_planted_region_on_square_images():
    region = (4, 14, 18, 30)
    x, labels = planted_images(6, 32, 32, region, seed=2)
    maps = GradCAM(planted_model("logits", 32, 32, region))(x, targets=labels)
    assert quality.pointing_game(maps, region_mask(32, 32, region)).all()


# -- agreement with an independent eager Grad-CAM ------------------------------------
@pytest.mark.parametrize("head", ["softmax", "logits", "sigmoid"])
def test_loaded_sequential_without_input_layer_matches_reference(head, seq_dir, images):
    model = sequential_saved(seq_dir, head)
    explainer = GradCAM(model)
    assert explainer.layer_name == "conv_last"
    assert explainer.model.output_kind == head
    low, full = _reference_for(model, images, sigmoid=head == "sigmoid")
    np.testing.assert_allclose(explainer.layer_maps(images), low, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(explainer(images), full, atol=2e-5)


def test_loaded_model_from_audit_loader(seq_dir, images):
    model = sequential_saved(seq_dir, "softmax")
    loaded = load_model(seq_dir / "seq_softmax.keras")
    _, full = _reference_for(model, images)
    np.testing.assert_allclose(GradCAM(loaded)(images), full, atol=2e-5)


@pytest.mark.parametrize("layer", [None, "conv_last", "backbone/conv_last", "layer-object"])
def test_nested_backbone_layer_by_any_name(layer, images):
    model = nested_model("softmax")
    if layer == "layer-object":
        layer = model.get_layer("backbone").get_layer("conv_last")
    explainer = GradCAM(model, layer=layer)
    assert explainer.layer_name == "backbone/conv_last"
    _, full = _reference_for(model, images)
    np.testing.assert_allclose(explainer(images), full, atol=2e-5)


def test_sigmoid_head_scores_class_zero_with_negated_logit(images):
    model = nested_model("sigmoid")
    for target in (0, 1):
        _, full = _reference_for(model, images, targets=target, sigmoid=True)
        np.testing.assert_allclose(GradCAM(model)(images, targets=target), full, atol=2e-5)


def test_target_scores_by_head_kind():
    z = tf.constant([[2.0], [-1.0]])
    score, resolved = target_scores(z, tf.constant([-1, -1]), "sigmoid")
    assert resolved.numpy().tolist() == [1, 0] and score.numpy().tolist() == [2.0, 1.0]
    score, _ = target_scores(z, tf.constant([0, 1]), "sigmoid")
    assert score.numpy().tolist() == [-2.0, -1.0]
    logits = tf.constant([[0.5, 3.0, -1.0], [4.0, 0.0, 1.0]])
    score, resolved = target_scores(logits, tf.constant([-1, 2]), "softmax")
    assert resolved.numpy().tolist() == [1, 2] and score.numpy().tolist() == [3.0, 1.0]


def test_softmax_score_is_taken_before_the_softmax(seq_dir, images):
    # Same weights, softmax vs logits head: the pre-softmax score gives identical maps.
    soft = GradCAM(sequential_saved(seq_dir, "softmax"))(images, targets=2)
    logit = GradCAM(sequential_saved(seq_dir, "logits"))(images, targets=2)
    np.testing.assert_allclose(soft, logit, atol=1e-6)


def test_separate_softmax_layer_is_bypassed_too(images):
    logits = functional_model("logits")
    with_softmax = keras.Model(logits.input, keras.layers.Softmax()(logits.output))
    explainer = GradCAM(with_softmax)
    assert explainer.model.output_kind == "softmax"
    np.testing.assert_allclose(explainer(images, targets=0), GradCAM(logits)(images, targets=0), atol=1e-6)


def test_gradcam_plus_plus_matches_reference(images):
    model = functional_model("logits")
    _, full = _reference_for(model, images, targets=1, plus_plus=True)
    np.testing.assert_allclose(GradCAMPlusPlus(model)(images, targets=1), full, atol=2e-5)


def _normalized_plus_plus_by_hand(model, x, target):
    """tf-keras-vis's GradcamPlusPlus, step by step: exp-scaled derivatives, alphas divided by their sum."""
    before, after = split_at_conv_last(model)
    acts = tf.convert_to_tensor(before(x))
    with tf.GradientTape() as tape:
        tape.watch(acts)
        score = after(acts)[:, target]
    g = tape.gradient(score, acts).numpy().astype(np.float64)
    a = acts.numpy().astype(np.float64)
    e = np.exp(score.numpy().astype(np.float64))[:, None, None, None]
    first, second, third = e * g, e * g**2, e * g**3
    denom = 2 * second + third * a.sum(axis=(1, 2), keepdims=True)
    alphas = second / (denom + (second == 0))
    constant = alphas.sum(axis=(1, 2), keepdims=True)
    alphas = alphas / (constant + (constant == 0))
    weights = (np.maximum(first, 0) * alphas).sum(axis=(1, 2))
    return np.maximum(np.einsum("bhwk,bk->bhw", a, weights), 0)


def _curved_head_model():
    """The planted trunk, then a tanh 1x1 conv before the mean: gradients at conv_last vary with position."""
    inp = keras.Input((H, W, 3))
    x = inp
    for layer in trunk():
        x = layer(x)
    init = keras.initializers.RandomNormal(stddev=1.0, seed=5)
    x = keras.layers.Conv2D(8, 1, activation="tanh", kernel_initializer=init, name="mix")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    head = keras.layers.Dense(3, kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=7), name="head")
    return keras.Model(inp, head(x))


def test_gradcam_plus_plus_normalized_alpha_matches_hand_computation(images):
    loaded = as_model(_curved_head_model())
    normalized = GradCAMPlusPlus(loaded, layer="conv_last", normalize_alpha=True)
    assert isinstance(normalized, GradCAMPlusPlus) and normalized.normalize_alpha
    plain = GradCAMPlusPlus(loaded, layer="conv_last")
    assert not plain.normalize_alpha
    for target in (0, 1):
        ours = normalized.layer_maps(images, targets=target)
        theirs = _normalized_plus_plus_by_hand(loaded.keras_model, images, target)
        peak = lambda m: np.where(m.max(axis=(1, 2), keepdims=True) > 0, m.max(axis=(1, 2), keepdims=True), 1)  # noqa: E731
        assert theirs.any()
        # the same up to exp(score), one factor per image
        np.testing.assert_allclose(ours / peak(ours), theirs / peak(theirs), atol=1e-4)
        other = plain.layer_maps(images, targets=target)
        assert np.abs(other / peak(other) - ours / peak(ours)).max() > 1e-2  # the option changes the maps
    assert len(loaded.compiled) == 2  # one compiled function per variant


# -- tf-explain as a second implementation ---------------------------------------------
@pytest.mark.filterwarnings("ignore:The structure of `inputs`:UserWarning")  # tf-explain's [model.inputs]
def test_agrees_with_tf_explain_on_a_functional_model(images):
    from tf_explain.core.grad_cam import GradCAM as TfExplainGradCAM

    model = functional_model("logits")
    for class_index in (0, 2):
        outputs, grads = TfExplainGradCAM.get_gradients_and_filters(
            model, images, "conv_last", class_index, use_guided_grads=False
        )
        cams = TfExplainGradCAM.generate_ponderated_output(outputs, grads)
        theirs = np.maximum(np.stack([c.numpy() for c in cams]), 0)
        ours = GradCAM(model, layer="conv_last").layer_maps(images, targets=class_index)
        assert ours.shape == theirs.shape
        for a, b in zip(ours, theirs):
            if not b.any():  # the class has no positive evidence here: both maps must be empty
                assert not a.any()
                continue
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99
        assert theirs.any(axis=(1, 2)).sum() >= 3  # enough non-empty maps for the comparison to mean something


# -- targets and input forms --------------------------------------------------------------
def test_targets_none_int_and_array(images):
    model = functional_model("softmax")
    explainer = GradCAM(model)
    before, after = split_at_conv_last(model)
    pred = predicted(after(before(images)).numpy())
    per_image = np.array([0, 1, 2, 2, 1, 0])
    np.testing.assert_allclose(explainer(images), _reference_for(model, images, pred)[1], atol=2e-5)
    np.testing.assert_allclose(explainer(images, targets=1), _reference_for(model, images, 1)[1], atol=2e-5)
    expected = _reference_for(model, images, per_image)[1]
    np.testing.assert_allclose(explainer(images, targets=per_image), expected, atol=2e-5)


def test_dataset_and_iterator_inputs_give_the_same_maps(images):
    explainer = GradCAM(functional_model("softmax"), batch_size=4)
    targets = np.array([2, 1, 0, 0, 1, 2])
    expected = explainer(images, targets)
    labelled = tf.data.Dataset.from_tensor_slices((images, targets)).batch(4)
    np.testing.assert_allclose(explainer(labelled, targets), expected, atol=1e-6)
    unbatched = tf.data.Dataset.from_tensor_slices(images)
    np.testing.assert_allclose(explainer(unbatched, targets), expected, atol=1e-6)
    np.testing.assert_allclose(explainer(iter([images[:2], images[2:]]), targets), expected, atol=1e-6)
    streamed = list(explainer.iter_maps(iter([images[:2], images[2:]]), targets))
    assert [len(m) for m in streamed] == [2, 4]


def test_compiled_once_for_repeated_calls_and_batch_sizes(images):
    loaded = as_model(functional_model("logits"))
    explainer = GradCAM(loaded, batch_size=4)
    for _ in range(5):
        explainer(images)  # batches of 4 and 2
    explainer(images[:3], targets=1)
    assert explainer.trace_count == 1
    again = GradCAM(loaded, layer="conv_last")  # a new explainer on the same model reuses the function
    again(images)
    assert again.trace_count == 1
    assert len(loaded.compiled) == 1


# -- degenerate maps and errors -----------------------------------------------------------
def test_constant_map_comes_back_as_zeros_not_nan():
    model = functional_model("logits")
    zeros = np.zeros((2, H, W, 3), np.float32)
    model.get_layer("conv_last").set_weights([np.zeros_like(w) for w in model.get_layer("conv_last").get_weights()])
    maps = GradCAM(model)(zeros)
    assert np.isfinite(maps).all() and not maps.any()


def test_normalize_maps_by_hand():
    maps = np.array([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]], [[np.nan, 0.0], [1.0, 2.0]]])
    expected = [[[0.0, 0.5], [0.25, 1.0]], [[0, 0], [0, 0]], [[0.0, 0.0], [0.5, 1.0]]]
    np.testing.assert_allclose(normalize_maps(maps), expected)


def test_clear_errors_for_bad_input(images):
    model = functional_model("softmax")
    with pytest.raises(ModelError, match="does not exist"):
        GradCAM(model, layer="no_such_layer")
    with pytest.raises(ModelError, match="4-D"):
        GradCAM(model, layer="head")
    explainer = GradCAM(model)
    with pytest.raises(AuditError, match="out of range"):
        explainer(images, targets=3)
    with pytest.raises(AuditError, match="6 images"):
        explainer(images, targets=[0, 1])
    with pytest.raises(AuditError, match="ints"):
        explainer(images, targets=np.zeros(6))
    with pytest.raises(AuditError, match="model expects"):
        explainer(images[:, :32])
    with pytest.raises(AuditError, match="keras.Model"):
        GradCAM("model.keras")
    with pytest.raises(ModelError, match="not built"):
        GradCAM(keras.Sequential([keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(2)]))
