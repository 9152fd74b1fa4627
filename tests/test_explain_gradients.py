"""tf-explain's gradient family through our wrappers: hand-computed maps on linear models,
completeness for integrated gradients, and the cases where tf-explain alone is wrong or fails."""

from __future__ import annotations

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from audit.errors import AuditError
from audit.explain import GradientsInputs, IntegratedGradients, SmoothGrad, VanillaGradients, normalize_maps
from explain_models import sequential_saved, split_at_conv_last

SHAPE = (4, 5, 2)


def linear(head: str):
    """score_c = x . w_c + b_c exactly, so every gradient is known in advance."""
    rng = np.random.default_rng(4)
    units = 1 if head == "sigmoid" else 3
    inp = keras.Input(SHAPE)
    dense = keras.layers.Dense(units, activation={"softmax": "softmax", "logits": None, "sigmoid": "sigmoid"}[head])
    model = keras.Model(inp, dense(keras.layers.Flatten()(inp)))
    kernel = rng.normal(size=(np.prod(SHAPE), units)).astype(np.float32)
    dense.set_weights([kernel, rng.normal(size=units).astype(np.float32)])
    return model, kernel.reshape(*SHAPE, units)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(5).uniform(-1, 1, (4, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize("head", ["softmax", "logits"])
def test_vanilla_and_gradient_times_input_by_hand(head, x):
    model, w = linear(head)
    targets = np.array([0, 1, 2, 1])  # mixed targets in one batch
    w_t = np.moveaxis(w[..., targets], -1, 0)
    np.testing.assert_allclose(VanillaGradients(model)(x, targets), normalize_maps(np.abs(w_t).sum(-1)), atol=1e-5)
    np.testing.assert_allclose(GradientsInputs(model)(x, targets), normalize_maps(np.abs(x * w_t).sum(-1)), atol=1e-5)


def test_integrated_gradients_are_input_times_gradient_on_a_linear_model(x):
    model, w = linear("logits")
    ig = IntegratedGradients(model, steps=5)
    np.testing.assert_allclose(ig.attributions(x, targets=2), x * w[..., 2], atol=1e-5)
    # tf-explain's own result is the bare mean gradient: w, not x * w
    from tf_explain.core.integrated_gradients import IntegratedGradients as TfExplainIG

    path = TfExplainIG.generate_interpolations(x, 5)
    theirs = TfExplainIG.get_integrated_gradients(path, lambda a: model(a), 2, 5).numpy()
    np.testing.assert_allclose(theirs, np.broadcast_to(w[..., 2], x.shape), atol=1e-5)


def test_integrated_gradients_complete_on_a_nonlinear_model(x):
    keras.utils.set_random_seed(3)
    inp = keras.Input(SHAPE)
    hidden = keras.layers.Conv2D(3, 2, activation="tanh")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(hidden)))
    attributions = IntegratedGradients(model, steps=200).attributions(x, targets=1)
    gap = model(x).numpy()[:, 1] - model(np.zeros_like(x)).numpy()[:, 1]
    np.testing.assert_allclose(attributions.sum(axis=(1, 2, 3)), gap, rtol=0.02, atol=1e-3)


def test_sigmoid_head_class_zero_is_the_negated_logit(x):
    model, w = linear("sigmoid")
    ig = IntegratedGradients(model, steps=3)
    np.testing.assert_allclose(ig.attributions(x, targets=1), x * w[..., 0], atol=1e-5)
    np.testing.assert_allclose(ig.attributions(x, targets=0), -x * w[..., 0], atol=1e-5)


def test_smoothgrad_averages_the_class_score_gradient(x):
    model, w = linear("softmax")
    maps = SmoothGrad(model, num_samples=4, noise=0.2)(x, targets=1)
    np.testing.assert_allclose(maps, normalize_maps(np.broadcast_to(np.abs(w[..., 1]).sum(-1), x.shape[:3])), atol=1e-5)
    # tf-explain's cross-entropy gradient mixes in the other classes' weights
    from tf_explain.core.smoothgrad import SmoothGrad as TfExplainSmoothGrad

    theirs = TfExplainSmoothGrad.get_averaged_gradients(tf.constant(x), model, 1, 1).numpy()
    assert not np.allclose(normalize_maps(np.abs(theirs).sum(-1)), maps, atol=1e-2)


def test_smoothgrad_is_reproducible_with_a_seed(x):
    keras.utils.set_random_seed(2)
    inp = keras.Input(SHAPE)
    hidden = keras.layers.Dense(4, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(hidden)))
    first = SmoothGrad(model, num_samples=3, seed=7)(x)
    np.testing.assert_array_equal(SmoothGrad(model, num_samples=3, seed=7)(x), first)


def test_works_on_a_loaded_sequential_where_tf_explain_fails(tmp_path):
    model = sequential_saved(tmp_path, "softmax")
    images = np.random.default_rng(6).random((2, 48, 64, 3)).astype(np.float32)
    from tf_explain.core.smoothgrad import SmoothGrad as TfExplainSmoothGrad

    with pytest.raises(AttributeError, match="never been called"):
        TfExplainSmoothGrad().explain((images, None), model, 0)
    before, after = split_at_conv_last(model)
    inputs = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        score = after(before(inputs))[:, 0]
    expected = normalize_maps(np.abs(tape.gradient(score, inputs).numpy()).sum(-1))
    np.testing.assert_allclose(VanillaGradients(model)(images, targets=0), expected, atol=1e-5)
    assert SmoothGrad(model, num_samples=2)(images).shape == (2, 48, 64)


def test_missing_extra_gives_a_clear_error(monkeypatch):
    model, _ = linear("logits")
    monkeypatch.setitem(sys.modules, "tf_explain.core.vanilla_gradients", None)
    with pytest.raises(AuditError, match=r"keras-audit\[explain\]"):
        VanillaGradients(model)


def test_clear_errors():
    model, _ = linear("logits")
    with pytest.raises(AuditError, match="num_samples"):
        SmoothGrad(model, num_samples=0)
    with pytest.raises(AuditError, match="steps"):
        IntegratedGradients(model, steps=1)
