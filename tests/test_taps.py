"""Taps and pre-activation swaps: nesting, exact restore, other threads, shared layers.

Oracles are numpy recomputations from the layers' weights and the model's own
plain forward, computed before any swap.
"""

from __future__ import annotations

import threading

import keras
import numpy as np
import pytest

from audit.errors import ModelError
from audit.explain import Activations, GradCAM
from audit.io.models import from_keras, pre_activation, tap


def dense_model():
    inp = keras.Input((4,))
    d = keras.layers.Dense(3, name="d")
    out = keras.layers.Dense(2, activation="softmax", name="head")(d(inp))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    d.set_weights([rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)])
    return model, d


def affine(layer, x):
    kernel, bias = layer.get_weights()
    return x @ kernel + bias


X4 = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)


def test_nested_taps_on_one_layer_both_record_and_restore_exactly():
    model, d = dense_model()
    assert "call" not in vars(d)
    with tap(d, "input") as seen_in:
        outer = vars(d)["call"]
        with tap(d, "output") as seen_out:
            model(X4)
        assert vars(d)["call"] is outer  # the inner tap put the outer one back
    assert "call" not in vars(d)  # and the outer one removed its own: the class method again
    assert d.call.__func__ is type(d).call
    np.testing.assert_allclose(np.asarray(seen_in.one()), X4)
    np.testing.assert_allclose(np.asarray(seen_out.one()), affine(d, X4), rtol=1e-5, atol=1e-6)
    # the model still runs as before, untapped
    untapped = _softmax(affine(model.get_layer("head"), affine(d, X4)))
    np.testing.assert_allclose(np.asarray(model(X4)), untapped, rtol=1e-5)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_tap_over_an_instance_level_call_wraps_it_and_restores_that_one():
    model, d = dense_model()

    def doubled(inputs, *args, **kwargs):
        return type(d).call(d, inputs, *args, **kwargs) * 2.0

    d.call = doubled
    with tap(d, "output") as seen:
        model(X4)
    assert vars(d)["call"] is doubled
    np.testing.assert_allclose(np.asarray(seen.one()), 2.0 * affine(d, X4), rtol=1e-5, atol=1e-6)


def test_pre_activation_nests_and_restores_the_activation_object():
    model, _ = dense_model()
    head = model.get_layer("head")
    act = vars(head)["activation"]
    logits = affine(head, affine(model.get_layer("d"), X4))
    with pre_activation(head):
        with pre_activation(head):
            np.testing.assert_allclose(np.asarray(model(X4)), logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(model(X4)), logits, rtol=1e-5, atol=1e-6)
    assert vars(head)["activation"] is act
    np.testing.assert_allclose(np.asarray(model(X4)), _softmax(logits), rtol=1e-5, atol=1e-6)


class _Gate:
    """Stops one thread inside a model call until told to go on."""

    def __init__(self):
        self.thread: int | None = None
        self.inside = threading.Event()
        self.go = threading.Event()


GATE = _Gate()


class GateLayer(keras.layers.Layer):
    def call(self, x):
        if threading.get_ident() == GATE.thread:
            GATE.inside.set()
            GATE.go.wait(30)
        return x


def gated_cnn():
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = GateLayer(name="gate")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head")(x))


def test_another_thread_gets_probabilities_while_gradcam_traces():
    keras.utils.set_random_seed(3)
    model = gated_cnn()
    loaded = from_keras(model)
    x = np.random.default_rng(2).uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    done: dict = {}

    def trace_gradcam():
        GATE.thread = threading.get_ident()
        try:
            done["maps"] = GradCAM(loaded, layer="conv")(x)
        except BaseException as e:  # reported by the main thread
            done["error"] = e

    worker = threading.Thread(target=trace_gradcam)
    worker.start()
    try:
        assert GATE.inside.wait(60), "the Grad-CAM trace never reached the gate"
        # the trace is stopped inside the model, taps and pre-activation swapped in
        assert "call" in vars(model.get_layer("conv"))
        held_elsewhere = not loaded.lock.acquire(blocking=False)
        if not held_elsewhere:
            loaded.lock.release()
        plain = np.asarray(model(x, training=False))
        traced_here = loaded.predict(x)  # traces predict_fn in this thread, during the other trace
    finally:
        GATE.go.set()
        worker.join(60)
        GATE.thread = None
    np.testing.assert_allclose(plain, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(traced_here, expected, rtol=1e-5, atol=1e-6)
    assert "error" not in done, done.get("error")
    assert held_elsewhere, "the Grad-CAM trace does not hold the model's lock"
    np.testing.assert_allclose(loaded.predict(x), expected, rtol=1e-5, atol=1e-6)  # the cached trace too
    assert "call" not in vars(model.get_layer("conv")) and done["maps"].shape == (4, 8, 8)


def test_shared_layer_records_every_call():
    inp = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(shared(shared(inp))))
    with tap(shared, "output") as seen:
        model(X4)
    first = affine(shared, X4)
    assert len(seen.values) == 2
    np.testing.assert_allclose(np.asarray(seen.values[0]), first, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(seen.values[1]), affine(shared, first), rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelError, match="'shared' is called 2 times in one pass"):
        seen.one()


def test_explainers_refuse_a_shared_layer_by_name():
    inp = keras.Input((8, 8, 2))
    shared = keras.layers.Conv2D(2, 1, name="shared")
    x = keras.layers.GlobalAveragePooling2D()(shared(shared(inp)))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head")(x))
    images = np.random.default_rng(0).uniform(size=(2, 8, 8, 2)).astype(np.float32)
    with pytest.raises(ModelError, match="'shared' is called 2 times in one pass") as err:
        GradCAM(model, layer="shared")(images)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="'shared' is called 2 times in one pass"):
        Activations(model, layers="shared")(images)
    assert "call" not in vars(shared)
