"""``keras-audit layers MODEL``: the layers Grad-CAM and activations can use, and the default.

The oracle for the default is the explainer itself (``GradCAM(model).layer_name``); the oracle for
every listed name is ``find_layer``, which ``--layer`` goes through.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from audit.cli import main
from audit.explain.gradcam import GradCAM
from audit.io.models import load_model
from conftest import SIZE, brightness_model

STRUCTURE_WARNING = "The structure of `inputs` doesn't match"


def _mobilenet_classifier():
    import keras

    backbone = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), include_top=False)
    return keras.Sequential([keras.Input((32, 32, 3)), backbone, keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3, activation="softmax")], name="mobile")


@pytest.fixture(scope="module")
def nested_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("layers") / "nested.keras"
    brightness_model(kind="nested").save(path)
    return path


@pytest.fixture(scope="module")
def mobilenet_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("layers") / "mobile.keras"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MobileNetV2 at 32x32: "not one of [96, 128, ...]"
        _mobilenet_classifier().save(path)
    return path


@pytest.mark.parametrize("which", ["nested_path", "mobilenet_path"])
def test_listed_default_is_what_gradcam_picks_and_every_name_resolves(which, request):
    model = load_model(request.getfixturevalue(which))
    rows = model.describe_layers()
    defaults = [r for r in rows if r["default"]]
    assert len(defaults) == 1
    assert defaults[0]["name"] == GradCAM(model).layer_name
    assert defaults[0]["why"] == "last layer with a 4-D output"
    assert all("/" in r["name"] for r in rows)  # both models keep their convolutions in a nested backbone
    plain_names = [r["name"].rsplit("/", 1)[-1] for r in rows]
    for row, plain in zip(rows, plain_names):
        name, layer = model.find_layer(row["name"])
        assert name == row["name"] and type(layer).__name__ == row["class"]
        assert len(row["output_shape"]) == 4 and tuple(layer.output.shape) == row["output_shape"]
        if plain_names.count(plain) == 1:
            assert model.find_layer(plain) == (name, layer)


def test_nested_brightness_model_lists_its_conv():
    from audit.io.models import from_keras

    rows = from_keras(brightness_model(kind="nested")).describe_layers()
    assert [(r["name"], r["output_shape"], r["default"]) for r in rows] == [
        ("backbone/conv", (None, SIZE, SIZE, 2), True)]


def test_mobilenet_default_is_its_last_4d_layer(mobilenet_path):
    model = load_model(mobilenet_path)
    rows = model.describe_layers()
    assert rows[-1]["default"] and rows[-1]["name"] == "mobilenetv2_1.00_32/out_relu"
    assert rows[-1]["output_shape"] == (None, 1, 1, 1280)
    assert len(rows) > 50  # every block of the backbone is a candidate


def test_cli_prints_the_table(nested_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["layers", str(nested_path)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "backbone/conv" in line)
    assert "Conv2D" in line and f"(batch, {SIZE}, {SIZE}, 2)" in line
    assert "default: last layer with a 4-D output" in line


def test_cli_escapes_layer_names(tmp_path, capsys, monkeypatch):
    import keras

    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(2, 1, name="conv[red]")(inp)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    path = tmp_path / "marked.keras"
    keras.Model(inp, out, name="net[bold]").save(path)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["layers", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "conv[red]" in printed and "net[bold]" in printed


def test_cli_bad_model_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip file")
    assert main(["layers", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("keras-audit: error:") and "\n" not in err


def test_cli_model_without_4d_layers_says_so(tmp_path, capsys):
    import keras

    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")], name="flat")
    path = tmp_path / "flat.keras"
    model.save(path)
    assert main(["layers", str(path)]) == 0
    assert "no layer with a 4-D" in capsys.readouterr().out


def test_legacy_h5_loads_without_the_inputs_structure_warning(tmp_path):
    import keras

    inp = keras.Input((SIZE, SIZE, 3))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp))
    path = tmp_path / "legacy.h5"
    keras.Model([inp], [out]).save(path)  # inputs kept as a list, as every tf.keras 2 .h5 file does
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(path)
    assert not [w for w in caught if STRUCTURE_WARNING in str(w.message)]
    # only the load is quiet: the filter does not leak, Keras still warns on a direct call
    with pytest.warns(UserWarning, match="structure of `inputs`"):
        model.keras_model(np.zeros((1, SIZE, SIZE, 3), np.float32))
