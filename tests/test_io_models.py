"""Model loading: formats, heads, nesting, and every refusal with its message."""

from __future__ import annotations

import numpy as np
import pytest

from audit.errors import ModelError
from audit.io.models import load_model
from conftest import SIZE, brightness_images, brightness_model


def _expected_probs(head: str, x: np.ndarray) -> np.ndarray:
    """The hand-derived probabilities of brightness_model (an independent formula)."""
    v = x.astype(np.float64).mean(axis=(1, 2, 3)) / 100
    if head == "sigmoid":
        p = 1 / (1 + np.exp(-(10 * v - 17)))
        return np.stack([1 - p, p], 1)
    m = np.array([0.4, 1.28, 2.15])
    s = 4 * (2 * m[None] * v[:, None] - m[None] ** 2)
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize(
    "kind,head,suffix",
    [
        ("functional", "softmax", ".keras"),
        ("functional", "logits", ".h5"),
        ("sequential", "sigmoid", ".keras"),
        ("nested", "softmax", ".keras"),
        ("nested", "logits", ".h5"),
    ],
)
def test_formats_and_heads_give_exact_probabilities(tmp_path, kind, head, suffix):
    path = tmp_path / f"m{suffix}"
    brightness_model(head, kind=kind).save(path)
    m = load_model(path)
    assert m.format == ("keras" if suffix == ".keras" else "h5")
    assert m.input_shape == (SIZE, SIZE, 3)
    assert m.output_kind == head
    assert m.num_classes == (2 if head == "sigmoid" else 3)
    x, _ = brightness_images(9)
    np.testing.assert_allclose(m.predict(x.astype(np.float32)), _expected_probs(head, x), atol=1e-5)


def test_sequential_trained_without_input_layer(tmp_path):
    import keras

    model = keras.Sequential([keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((4, 12, 10, 3)).astype(np.float32)
    model.fit(x, np.array([0, 1, 2, 0]), verbose=0, epochs=1)
    model.save(tmp_path / "s.keras")
    m = load_model(tmp_path / "s.keras")
    assert m.input_shape == (12, 10, 3) and m.output_kind == "softmax"
    np.testing.assert_allclose(m.predict(x), model.predict(x, verbose=0), atol=1e-6)
    assert [n for n, _ in m.spatial_layers()] == [m.keras_model.layers[0].name]


def test_nested_layers_are_found_by_qualified_and_plain_name(tmp_path):
    brightness_model(kind="nested").save(tmp_path / "n.keras")
    m = load_model(tmp_path / "n.keras")
    assert m.find_layer("backbone/conv")[0] == "backbone/conv"
    assert m.find_layer("conv")[0] == "backbone/conv"
    assert m.last_spatial_layer()[0] == "backbone/conv"
    with pytest.raises(ModelError, match="'nope' does not exist"):
        m.find_layer("nope")


def test_savedmodel_predicts_but_has_no_layers(tmp_path):
    import tensorflow as tf

    model = brightness_model("softmax")
    model.export(tmp_path / "sm", verbose=False)
    with pytest.raises(ModelError, match="TensorFlow has no safe mode"):
        load_model(tmp_path / "sm")
    m = load_model(tmp_path / "sm", unsafe=True)
    assert m.format == "savedmodel" and m.output_kind == "softmax" and m.num_classes == 3
    x, _ = brightness_images(6)
    np.testing.assert_allclose(m.predict(x.astype(np.float32)), _expected_probs("softmax", x), atol=1e-5)
    with pytest.raises(ModelError, match="SavedModel does not expose"):
        m.layers()
    assert tf.executing_eagerly()


def test_embeddings_are_the_head_input(tmp_path):
    brightness_model(kind="nested").save(tmp_path / "n.keras")
    m = load_model(tmp_path / "n.keras")
    x, _ = brightness_images(4)
    probs, feats = m.predict_fn(embeddings=True)(x.astype(np.float32))
    v = x.astype(np.float64).mean(axis=(1, 2, 3)) / 100
    np.testing.assert_allclose(feats.numpy(), np.stack([v, np.ones_like(v)], 1), atol=1e-5)


def test_lambda_needs_unsafe(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Lambda(lambda t: t * 2), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"lam{suffix}"
        model.save(path)
        with pytest.raises(ModelError, match="Lambda layer.*--unsafe") as err:
            load_model(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        assert load_model(path, unsafe=True).num_classes == 2


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p.with_suffix(".keras"), "does not exist"),
        (lambda p: (p.with_suffix(".keras").write_bytes(b""), p.with_suffix(".keras"))[1], "empty"),
        (lambda p: (p.with_suffix(".keras").write_bytes(b"PK\x03\x04garbage"), p.with_suffix(".keras"))[1],
         "truncated or corrupt"),
        (lambda p: (p.with_suffix(".h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20), p.with_suffix(".h5"))[1],
         "corrupt"),
        (lambda p: (p.with_suffix(".onnx").write_bytes(b"x"), p.with_suffix(".onnx"))[1], "unknown model format"),
    ],
)
def test_bad_model_files(tmp_path, make, message):
    path = make(tmp_path / "model")
    with pytest.raises(ModelError, match=message) as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_truncated_model_file(tmp_path):
    brightness_model().save(tmp_path / "m.keras")
    data = (tmp_path / "m.keras").read_bytes()
    (tmp_path / "t.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_model(tmp_path / "t.keras")


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda k: k.Sequential([k.Input((8, 8, 3)), k.layers.Conv2D(3, 1)]), r"output has shape \(2, 8, 8, 3\)"),
        (lambda k: k.Sequential([k.Input((8, 8, 3)), k.layers.Flatten(), k.layers.Dense(1)]), "single output unit"),
        (lambda k: k.Sequential([k.Input((8, 8, 3)), k.layers.Flatten(), k.layers.Dense(4, activation="relu")]),
         "activation 'relu'"),
        (lambda k: k.Sequential([k.Input((10,)), k.layers.Dense(3, activation="softmax")]), "needs images"),
    ],
)
def test_not_a_classifier(tmp_path, build, message):
    import keras

    build(keras).save(tmp_path / "m.keras")
    with pytest.raises(ModelError, match=message):
        load_model(tmp_path / "m.keras")
