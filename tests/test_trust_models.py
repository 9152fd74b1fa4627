"""What keras-audit refuses to load without --unsafe, and that its refusals are one clear line.

The oracle for "this model runs code" is a marker file the model's own graph writes with
``tf.io.write_file``: it must be absent after every refusal and present when the same file is
loaded with ``unsafe=True`` (proof that the refused file really would have run).
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from audit.errors import ModelError
from audit.io import models
from audit.io.models import _check_keras_version, load_model
from conftest import SIZE, brightness_images, brightness_model


def _one_line(err: pytest.ExceptionInfo, path) -> str:
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    return text


def _writing_savedmodel(path, marker):
    """A softmax classifier of (None, 16, 16, 3) images whose graph also writes `marker`."""
    import tensorflow as tf

    class Writer(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.eye(3))

        @tf.function(input_signature=[tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32)])
        def serve(self, images):
            tf.io.write_file(str(marker), "this graph ran")
            return {"probs": tf.nn.softmax(tf.reduce_mean(images, axis=[1, 2]) @ self.w, axis=-1)}

    module = Writer()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    assert not marker.exists(), "saving must not run the graph, or the oracle means nothing"
    return path


@pytest.fixture
def writer(tmp_path):
    marker = tmp_path / "marker.txt"
    return _writing_savedmodel(tmp_path / "sm", marker), marker


def _no_tf_load(monkeypatch):
    """Make any call of tf.saved_model.load fail the test: refusals must come before it."""
    import tensorflow as tf

    def forbidden(*a, **k):
        raise AssertionError("tf.saved_model.load was called before the refusal")

    monkeypatch.setattr(tf.saved_model, "load", forbidden)


def _no_keras_load(monkeypatch):
    import keras

    def forbidden(*a, **k):
        raise AssertionError("keras.models.load_model was called before the refusal")

    monkeypatch.setattr(keras.models, "load_model", forbidden)


def test_savedmodel_needs_unsafe_and_really_runs_code(writer, monkeypatch):
    sm, marker = writer
    with monkeypatch.context() as mp:
        _no_tf_load(mp)
        with pytest.raises(ModelError) as err:
            load_model(sm)
    text = _one_line(err, sm)
    assert "TensorFlow has no safe mode" in text and "--unsafe" in text and "save it as .keras" in text
    assert not marker.exists()
    m = load_model(sm, unsafe=True)
    assert m.format == "savedmodel" and m.num_classes == 3 and m.output_kind == "softmax"
    assert marker.read_text() == "this graph ran"


def test_cli_refuses_savedmodel_without_unsafe(writer, tmp_path, capsys):
    from audit.cli import main

    sm, marker = writer
    x, labels = brightness_images(6)
    np.savez(tmp_path / "d.npz", x=x, y=labels)
    out = tmp_path / "out"
    code = main(["run", str(sm), str(tmp_path / "d.npz"), "--out", str(out), "--quiet", "--no-tensorboard"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"keras-audit: error: {sm}: ") and "TensorFlow has no safe mode" in err[0]
    assert not marker.exists() and not out.exists()


def test_tfsmlayer_needs_unsafe_and_really_runs_code(writer, tmp_path, monkeypatch):
    import keras

    sm, marker = writer
    inp = keras.Input((SIZE, SIZE, 3))
    keras.Model(inp, keras.layers.TFSMLayer(str(sm), call_endpoint="serving_default")(inp)["probs"]).save(
        tmp_path / "tfsm.keras"
    )
    with monkeypatch.context() as mp:
        _no_keras_load(mp)
        _no_tf_load(mp)
        with pytest.raises(ModelError) as err:
            load_model(tmp_path / "tfsm.keras")
    text = _one_line(err, tmp_path / "tfsm.keras")
    assert "TFSMLayer layer" in text and "SavedModel" in text and "--unsafe" in text
    assert not marker.exists()
    assert load_model(tmp_path / "tfsm.keras", unsafe=True).num_classes == 3
    assert marker.read_text() == "this graph ran"


def _archive(path, config: dict | list | str | bytes):
    raw = config if isinstance(config, bytes) else json.dumps(config).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", raw)
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
    return path


def _classifier_config(tmp_path) -> dict:
    brightness_model().save(tmp_path / "ok.keras")
    with zipfile.ZipFile(tmp_path / "ok.keras") as z:
        return json.loads(z.read("config.json"))


def _first_dense(config: dict) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")


@pytest.mark.parametrize("name", ["TorchModuleWrapper", "JaxLayer", "FlaxLayer", "TFSMLayer", "Lambda"])
def test_code_loading_layers_are_refused_by_name(tmp_path, monkeypatch, name):
    config = _classifier_config(tmp_path)
    # Hidden the way a hostile file would: only the registered name says what Keras will build.
    _first_dense(config)["registered_name"] = f"keras>{name}"
    path = _archive(tmp_path / "hostile.keras", config)
    _no_keras_load(monkeypatch)
    with pytest.raises(ModelError) as err:
        load_model(path)
    assert f"contains a {name} layer" in _one_line(err, path) and "--unsafe" in str(err.value)


@pytest.mark.parametrize("gadget", ["TFSMLayer", "load_model", "enable_unsafe_deserialization", "get_file"])
def test_function_references_used_by_bypasses_are_refused(tmp_path, monkeypatch, gadget):
    config = _classifier_config(tmp_path)
    _first_dense(config)["config"]["activation"] = {
        "module": "keras.layers", "class_name": "function", "config": gadget, "registered_name": "function",
    }
    path = _archive(tmp_path / "gadget.keras", config)
    _no_keras_load(monkeypatch)
    with pytest.raises(ModelError) as err:
        load_model(path)
    assert f"Keras function {gadget!r}" in _one_line(err, path) and "--unsafe" in str(err.value)


def test_a_plain_classifier_config_passes_the_scan(tmp_path):
    """The scan must not refuse ordinary models (activations are serialised function names too)."""
    config = _classifier_config(tmp_path)
    _first_dense(config)["config"]["activation"] = {
        "module": "keras.activations", "class_name": "function", "config": "relu", "registered_name": "function",
    }
    models._refuse_unsafe_config(config, tmp_path / "ok.keras")
    assert load_model(tmp_path / "ok.keras").num_classes == 3


@pytest.mark.parametrize("version", ["3.3.0", "3.13.2", "3.14.0", "3.14.1", "3.15.0", "2.15.0", "nightly"])
def test_keras_with_known_bypasses_is_refused(version):
    with pytest.raises(ModelError) as err:
        _check_keras_version(version, "m.keras")
    text = _one_line(err, "m.keras")
    assert f"Keras {version} " in text and 'pip install -U "keras>=3.15.1"' in text


@pytest.mark.parametrize("version", ["3.15.1", "3.15.2", "3.16.0.dev2026101000", "3.20.0rc1", "4.0.0"])
def test_keras_at_or_above_the_floor_is_accepted(version):
    _check_keras_version(version, "m.keras")


def test_old_keras_is_refused_at_load_time_but_unsafe_still_loads(tmp_path, monkeypatch):
    import keras

    brightness_model().save(tmp_path / "m.keras")
    monkeypatch.setattr(keras, "__version__", "3.14.0")
    with pytest.raises(ModelError, match=r"Keras 3\.14\.0 has known safe-mode bypasses"):
        load_model(tmp_path / "m.keras")
    assert load_model(tmp_path / "m.keras", unsafe=True).num_classes == 3


def test_unknown_custom_class_is_named(tmp_path, monkeypatch):
    import keras

    @keras.saving.register_keras_serializable(package="audit_trust_test_only")
    class AuditTestDoubler(keras.layers.Layer):
        def call(self, x):
            return x * 2

    model = keras.Sequential([keras.Input((8, 8, 3)), AuditTestDoubler(), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    for suffix in (".keras", ".h5"):
        model.save(tmp_path / f"custom{suffix}")
    # Unregister it, as in a process that never imported the code defining it.
    monkeypatch.delitem(keras.saving.get_custom_objects(), "audit_trust_test_only>AuditTestDoubler")
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"custom{suffix}"
        with pytest.raises(ModelError) as err:
            load_model(path)
        text = _one_line(err, path)
        assert "Could not locate class 'AuditTestDoubler'" in text, text
        assert "register_keras_serializable" in text
        assert "custom_objects={'audit_trust_test_only>AuditTestDoubler': ...}" in text
        if suffix == ".keras":  # only the Keras 3 config records the name it was registered under
            assert "(registered as 'audit_trust_test_only>AuditTestDoubler')" in text
    # The advice works: the key the message names makes the same file load.
    for suffix in (".keras", ".h5"):
        loaded = load_model(tmp_path / f"custom{suffix}",
                            custom_objects={"audit_trust_test_only>AuditTestDoubler": AuditTestDoubler})
        assert loaded.num_classes == 2


def _deep(path):
    return _archive(path, b"[" * 100_000 + b"]" * 100_000)


def _huge(path):
    return _archive(path, b'{"class_name": "Sequential", "pad": "' + b" " * (65 << 20) + b'"}')


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: _zip_without_config(p.with_suffix(".keras")), "no config.json"),
        (lambda p: (p.with_suffix(".h5").write_text("not an HDF5 file at all"), p.with_suffix(".h5"))[1],
         "not an HDF5 file"),
        (lambda p: _archive(p.with_suffix(".keras"), [1, 2, 3]), "expected a JSON object with a 'class_name'"),
        (lambda p: _archive(p.with_suffix(".keras"), {"foo": 1}), "expected a JSON object with a 'class_name'"),
        (lambda p: _deep(p.with_suffix(".keras")), "nested too deeply"),
        (lambda p: _huge(p.with_suffix(".keras")), "too big for a model config"),
    ],
    ids=["zip-without-config", "h5-not-hdf5", "config-is-a-list", "config-without-class", "deep", "huge"],
)
def test_malformed_model_files_give_one_line(tmp_path, make, message):
    path = make(tmp_path / "model")
    with pytest.raises(ModelError) as err:
        load_model(path)
    assert message in _one_line(err, path)


def _zip_without_config(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("model.weights.h5", b"")
    return path
