"""Per-layer activations and streamed per-channel statistics, checked against eager layer calls."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from audit.errors import AuditError, ModelError
from audit.explain import Activations
from explain_models import nested_model, planted_images, sequential_saved


@pytest.fixture(scope="module")
def images():
    return planted_images(5, seed=7)[0]


def by_hand(layers, x):
    """Outputs of a chain of layers, called one by one outside any model."""
    outs, a = [], tf.convert_to_tensor(x)
    for layer in layers:
        a = layer(a)
        outs.append(a.numpy())
    return outs


def test_default_layers_are_conv_and_pool_inside_the_backbone(images):
    model = nested_model()
    acts = Activations(model)(images)
    assert list(acts) == ["backbone/conv1", "backbone/pool1", "backbone/conv_last"]
    backbone = model.get_layer("backbone")
    expected = by_hand([backbone.get_layer(n) for n in ("conv1", "pool1", "conv_last")], images)
    for got, want in zip(acts.values(), expected):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_chosen_layers_on_a_loaded_sequential(tmp_path, images):
    model = sequential_saved(tmp_path)
    layer = model.get_layer("conv1")
    acts = Activations(model, layers=[layer, "gap"])(images)
    assert list(acts) == ["conv1", "gap"]
    chain = by_hand([model.get_layer(n) for n in ("conv1", "pool1", "conv_last", "gap")], images)
    np.testing.assert_allclose(acts["conv1"], chain[0], atol=1e-5)
    np.testing.assert_allclose(acts["gap"], chain[3], atol=1e-5)
    assert list(Activations(model, layers="pool1")(images)) == ["pool1"]


def test_stats_streamed_over_batches_match_numpy_on_everything(images):
    model = nested_model()
    explainer = Activations(model, batch_size=2)
    whole = explainer(images)
    stats = explainer.stats(tf.data.Dataset.from_tensor_slices(images).batch(2))
    assert list(stats) == list(whole)
    for name, values in whole.items():
        flat = values.reshape(-1, values.shape[-1])
        np.testing.assert_allclose(stats[name]["mean"], flat.mean(axis=0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(stats[name]["max"], flat.max(axis=0), rtol=1e-6)
        np.testing.assert_allclose(stats[name]["frac_zero"], (flat == 0).mean(axis=0))
    assert any(0 < f < 1 for f in stats["backbone/conv1"]["frac_zero"])  # relu zeros are counted


def test_clear_errors(images):
    model = nested_model()
    with pytest.raises(ModelError, match="does not exist"):
        Activations(model, layers=["nope"])
    with pytest.raises(AuditError, match="twice"):
        Activations(model, layers=["conv1", "backbone/conv1"])
    with pytest.raises(AuditError, match="empty"):
        Activations(model, layers=[])
    with pytest.raises(AuditError, match="no images"):
        Activations(model).stats([])
    inp = keras.Input((4, 4, 3))
    dense_only = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp)))
    with pytest.raises(ModelError, match="no 2-D convolution"):
        Activations(dense_only)
