"""--preprocess presets, the affine flags, --resize, and what the run records about them."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from audit.engine import AuditOptions
from audit.errors import AuditError
from audit.io.data import Dataset, preprocess_images
from audit.io.preprocess import APPLICATIONS, PRESETS, Preprocessing, preset, resize_image, scaling_layer
from audit.pipeline import run_audit
from conftest import CLASSES, SIZE, brightness_images, brightness_model
from test_io_models import _expected_probs

RNG = np.random.default_rng(7)
PIXELS = RNG.uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)


def _keras_reference(name: str, x: np.ndarray) -> np.ndarray:
    """What Keras does to ``x`` for a preset name: the module's or imagenet_utils' preprocess_input."""
    from keras.applications import imagenet_utils

    if name == "none":
        return x
    if name == "unit":
        return x / 255.0
    if name in ("tf", "caffe", "torch"):
        return np.asarray(imagenet_utils.preprocess_input(x.copy(), mode=name))
    module = importlib.import_module(f"keras.applications.{name}")
    return np.asarray(module.preprocess_input(x.copy()))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_matches_keras(name):
    got = preset(name).apply(PIXELS).numpy()
    np.testing.assert_allclose(got, _keras_reference(name, PIXELS), rtol=0, atol=1e-5)


def test_application_names_are_keras_modules():
    import keras

    assert set(APPLICATIONS) <= {n for n in dir(keras.applications) if not n.startswith("_")}


def test_presets_through_the_input_pipeline():
    """preprocess_images at the image's own size (no resampling) gives Keras' values."""
    images = RNG.integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
    for name in ("caffe", "torch", "tf", "resnet50"):
        got = preprocess_images(images, (6, 6, 3), preprocessing=preset(name))
        np.testing.assert_allclose(got, _keras_reference(name, images.astype(np.float32)), rtol=0, atol=1e-4)


def test_affine_flags():
    o = AuditOptions(rescale=0.5, offset=-3.0, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0)).validate()
    got = o.preprocessing().apply(PIXELS).numpy()
    want = (PIXELS - np.array([10, 20, 30])) / np.array([2, 4, 5]) * 0.5 - 3.0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    assert o.preprocessing().name == "custom"
    assert o.scaling_flags() == "--rescale 0.5 --offset -3 --mean 10,20,30 --std 2,4,5"
    assert AuditOptions().preprocessing() == Preprocessing() and AuditOptions().scaling_flags() is None
    # one mean for all channels; a one-channel model gets the mean of the channels' values
    np.testing.assert_allclose(Preprocessing(mean=(100.0,)).apply(PIXELS).numpy(), PIXELS - 100, atol=1e-4)
    grey = PIXELS[..., :1]
    np.testing.assert_allclose(preset("caffe").apply(grey).numpy(), grey - np.mean([103.939, 116.779, 123.68]),
                               atol=1e-4)


@pytest.mark.parametrize("options, message", [
    (dict(preprocess="tf", rescale=1 / 255), "--preprocess tf sets the pixel scaling itself; drop --rescale"),
    (dict(preprocess="caffe", mean=(1.0, 2.0, 3.0)), "drop --mean 1,2,3 or use --preprocess none"),
    (dict(preprocess="resnet9"), "--preprocess: unknown choice 'resnet9'"),
    (dict(resize="fit"), "--resize: unknown choice 'fit'; choose from stretch, pad, crop"),
    (dict(std=(1.0, 0.0, 1.0)), "--std must be positive"),
    (dict(mean=(1.0, 2.0)), "--mean must be 1 or 3 numbers"),
    (dict(offset=float("nan")), "--offset must be a number"),
])
def test_validation(options, message):
    with pytest.raises(AuditError, match=message.replace("(", r"\(")):
        AuditOptions(**options).validate()
    AuditOptions(preprocess="none", rescale=1 / 255, offset=-1.0).validate()  # none combines with them


def _ramp(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y * 4.0, x * 3.0, (x + y) * 2.0], -1).astype(np.float32)


def test_pad_and_crop_geometry():
    import tensorflow as tf

    img = _ramp(40, 80)  # wide
    np.testing.assert_allclose(resize_image(img, (32, 32), "pad").numpy(),
                               tf.image.resize_with_pad(img, 32, 32, antialias=True).numpy(), atol=1e-5)
    stretched = tf.image.resize(img, (32, 32), antialias=True).numpy()
    np.testing.assert_allclose(resize_image(img, (32, 32), "stretch").numpy(), stretched)
    # crop to a square model: the central 40x40; to a 32x48 model (2:3): the central 40x60
    for size, box in (((32, 32), (0, 20, 40, 40)), ((32, 48), (0, 10, 40, 60)), ((48, 16), (0, 33, 40, 13))):
        want = tf.image.resize(tf.image.crop_to_bounding_box(img, *box), size, antialias=True).numpy()
        np.testing.assert_allclose(resize_image(img, size, "crop").numpy(), want, atol=1e-5)
    tall = _ramp(90, 30)
    want = tf.image.resize(tf.image.crop_to_bounding_box(tall, 30, 0, 30, 30), (16, 16), antialias=True).numpy()
    np.testing.assert_allclose(resize_image(tall, (16, 16), "crop").numpy(), want, atol=1e-5)


def _npz_dataset(tmp_path, x) -> Dataset:
    from audit.io.data import open_dataset

    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(len(x), np.int64))
    return open_dataset(tmp_path / "d.npz")


def test_stored_image_shows_the_padding_the_model_sees(tmp_path):
    x = np.full((1, 20, 40, 3), 200, np.uint8)  # 1:2, so a square input is padded above and below
    dataset = _npz_dataset(tmp_path, x)
    prep = Preprocessing("tf", scale=1 / 127.5, offset=-1.0, resize="pad")
    (batch,) = dataset.batches((32, 32, 3), (16, 16), preprocessing=prep)
    model_pad = np.isclose(batch.x[0, ..., 0], -1.0)  # black (0) after x/127.5 - 1
    stored_pad = batch.stored[0, ..., 0] == 0
    assert model_pad[:8].all() and model_pad[24:].all() and not model_pad[9:23].any()
    assert stored_pad[:4].all() and stored_pad[12:].all() and not stored_pad[5:11].any()
    np.testing.assert_array_equal(np.repeat(np.repeat(stored_pad, 2, 0), 2, 1)[[0, 7, 8, 23, 24, 31]],
                                  model_pad[[0, 7, 8, 23, 24, 31]])
    np.testing.assert_allclose(batch.builtin[0, :2], [2.0, np.sqrt(800)], rtol=1e-6)  # on the original image
    # the dataset's own preprocessing is used when none is given
    dataset.preprocessing = Preprocessing(resize="crop")
    (batch,) = dataset.batches((32, 32, 3), (16, 16))
    assert (batch.x == 200).all() and (batch.stored == 200).all()


def test_scaling_layer_found_in_nested_models():
    import keras
    from keras import layers

    inner = keras.Sequential([keras.Input((8, 8, 3)), layers.Rescaling(1 / 255, name="scale_in"),
                              layers.Conv2D(2, 1)], name="backbone")
    assert scaling_layer(keras.Sequential([keras.Input((8, 8, 3)), inner, layers.Flatten()])) == "scale_in"
    norm = keras.Sequential([keras.Input((8, 8, 3)), layers.Resizing(8, 8), layers.Normalization(name="norm")])
    assert scaling_layer(norm) == "norm"
    assert scaling_layer(keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(2, 1)])) is None


def test_run_with_preset_records_it_and_warns_of_double_scaling(tmp_path):
    import keras
    from keras import layers

    from conftest import write_folder_dataset

    x, labels = brightness_images(9)
    data = write_folder_dataset(tmp_path / "data", x, labels)
    # The model undoes --preprocess tf itself, so its outputs are those of the 0..255 model.
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), layers.Rescaling(127.5, offset=127.5, name="rescaling"),
                              brightness_model()])
    model.save(tmp_path / "m.keras")
    options = AuditOptions(preprocess="tf", explain=(), bootstrap=0, tensorboard=False)
    out = run_audit(tmp_path / "m.keras", data, tmp_path / "out", options=options, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["preprocess"] == "tf"
    assert manifest["preprocessing"]["name"] == "tf" and manifest["preprocessing"]["offset"] == -1.0
    assert ("the model rescales its input itself (layer 'rescaling'); --preprocess tf rescales again: "
            "use --preprocess none") in manifest["notes"]
    from audit.store.reader import Reader

    run = Reader(out)
    order = [int(p.split("/")[1][:3]) for p in run.predictions["path"]]
    np.testing.assert_allclose(run.probabilities(), _expected_probs("softmax", x[order]), atol=1e-4)
    assert list(run.class_names) == list(CLASSES)


def test_heatmap_of_a_padded_wide_image_lands_on_the_planted_region(tmp_path):
    """Pointing game in the stored image's coordinates: with --resize pad the stored copy is padded as
    the model's input is, and the Grad-CAM peak sits on the bright patch there, not where a stretched
    copy would put it. The brightness model's Grad-CAM is its brightness map, so the patch is the truth."""
    import tensorflow as tf
    from PIL import Image

    from audit.store.reader import Reader

    wide = np.full((SIZE, 2 * SIZE, 3), 40, np.uint8)  # 16 x 32, dark, bright patch near the right edge
    wide[4:12, 24:30] = 250
    for k, name in enumerate(CLASSES):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.fromarray(wide).save(tmp_path / "data" / name / f"{k}.png")
    brightness_model().save(tmp_path / "m.keras")
    out = run_audit(tmp_path / "m.keras", tmp_path / "data", tmp_path / "out", progress=False,
                    options=AuditOptions(resize="pad", explain=("gradcam",), bootstrap=0, tensorboard=False))
    run = Reader(out)
    seen = tf.image.resize_with_pad(wide.astype(np.float32), SIZE, SIZE, antialias=True).numpy()
    truth = seen.mean(axis=-1) > 145  # the patch, where the model's padded input has it
    assert truth[:4].sum() == 0 and truth[12:].sum() == 0  # padding above and below
    stored = run.image(0).astype(np.float32)
    assert np.abs(stored - seen).max() <= 1  # the stored copy is the padded input, rounded
    cam = run.heatmap("gradcam", 0)
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert truth[peak], (peak, np.argwhere(truth).min(0), np.argwhere(truth).max(0))
