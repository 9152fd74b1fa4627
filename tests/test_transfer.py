"""End to end: a transfer-learning model as its owner builds, trains and saves it, then audited.

The book's shape: a MobileNetV2 backbone (``weights=None``: no download) nested in a
Sequential head, trained one epoch with :class:`audit.callbacks.AuditCallback` in ``fit``
on non-square images that only ``--resize pad`` brings to the model's size as the owner's
pipeline does. The oracle for the stored probabilities is Keras' own pipeline:
``tf.image.resize_with_pad`` then ``keras.applications.mobilenet_v2.preprocess_input``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SIZE = 128
CLASSES = ("blue_box", "green_bar", "red_disc")
PER_CLASS = 24
SOURCE_HW = (96, 160)  # non-square: pad and stretch give different pixels
AUDIT_ARGS = ["--preprocess", "tf", "--resize", "pad", "--explain", "gradcam,occlusion,activations",
              "--explain-limit", "12", "--bootstrap", "20", "--quiet",
              "--occlusion-patch", "32"]  # stride 16, 49 patches: the default 16 (225 patches) doubles the time


def _images(seed: int = 0):
    """Three classes of planted shapes and colours on noise, uint8 (n, 96, 160, 3)."""
    rng = np.random.default_rng(seed)
    h, w = SOURCE_HW
    yy, xx = np.mgrid[:h, :w]
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for _ in range(PER_CLASS):
            img = rng.integers(0, 60, (h, w, 3)).astype(np.float32)
            cy, cx = rng.integers(25, h - 25), rng.integers(25, w - 25)
            if name == "blue_box":
                mask = (abs(yy - cy) < 15) & (abs(xx - cx) < 15)
                colour = (30, 40, 230)
            elif name == "green_bar":
                mask = (abs(yy - cy) < 6) & (abs(xx - cx) < 24)
                colour = (30, 220, 40)
            else:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 16**2
                colour = (230, 30, 30)
            img[mask] = colour
            images.append(img.clip(0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels)


def _keras_pipeline(pixels: np.ndarray) -> np.ndarray:
    """The owner's preprocessing: Keras' own functions, not keras-audit's."""
    import keras
    import tensorflow as tf

    resized = tf.image.resize_with_pad(tf.constant(pixels, tf.float32), SIZE, SIZE, antialias=True).numpy()
    return keras.applications.mobilenet_v2.preprocess_input(resized)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import keras
    from PIL import Image

    from audit.callbacks import AuditCallback

    root = tmp_path_factory.mktemp("transfer")
    pixels, labels = _images()
    data = root / "data"
    paths = []
    for i, (img, label) in enumerate(zip(pixels, labels)):
        folder = data / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)

    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    model = keras.Sequential([
        backbone,
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(len(CLASSES), activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = _keras_pipeline(pixels)
    val = np.arange(0, len(x), 4)
    callback = AuditCallback((x[val], labels[val]), log_dir=root / "logs", class_names=CLASSES, num_images=4,
                             batch_size=16)
    model.fit(x, labels, epochs=1, batch_size=16, validation_data=(x[val], labels[val]), callbacks=[callback],
              verbose=0)
    files = {"keras": root / "model.keras", "h5": root / "model.h5"}
    model.save(files["keras"])
    model.save(files["h5"])
    return {"root": root, "data": data, "files": files, "backbone": backbone.name, "callback": callback,
            "pixels": dict(zip((str(p) for p in paths), pixels))}


@pytest.fixture(scope="module")
def audited(trained):
    stores = {}
    for fmt, file in trained["files"].items():
        out = trained["root"] / f"out_{fmt}"
        assert _exit_code(["run", str(file), str(trained["data"]), "--out", str(out), *AUDIT_ARGS]) == 0
        stores[fmt] = out
    return stores


def _exit_code(args) -> int:
    from audit.cli import main

    try:
        return main(args)
    except SystemExit as e:  # argparse refused the arguments
        return int(e.code or 0)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_audit_of_a_saved_transfer_model(trained, audited, fmt):
    import keras

    from audit.io.models import load_model
    from audit.store.reader import Reader

    run = Reader(audited[fmt])
    assert run.num_examples == len(CLASSES) * PER_CLASS and run.class_names == list(CLASSES)

    # Grad-CAM's layer is inside the backbone, and is what `keras-audit layers` marks as default.
    layer = run.manifest["explained"]["layer"]
    assert layer.startswith(trained["backbone"] + "/"), layer
    defaults = [row["name"] for row in load_model(trained["files"][fmt]).describe_layers() if row["default"]]
    assert defaults == [layer]

    assert run.heatmap_methods == ["gradcam", "occlusion"] and len(run.heatmap_index) == 12
    some = next(iter(run.heatmap_index))
    occlusion = run.heatmap("occlusion", some)
    assert occlusion.shape == run.image(some).shape[:2] and np.isfinite(occlusion).all()
    backbone_layers = [n for n in run.activation_layers if n.startswith(trained["backbone"] + "/")]
    assert backbone_layers, run.activation_layers
    assert run.activations(backbone_layers[-1], some).ndim == 3

    # The stored probabilities are the reloaded model's own on Keras' own preprocessing.
    table = run.predictions
    pixels = np.stack([trained["pixels"][str(Path(trained["data"]) / p) if not Path(p).is_absolute() else p]
                       for p in table["path"]])
    model = keras.models.load_model(trained["files"][fmt])
    expected = model.predict(_keras_pipeline(pixels), batch_size=32, verbose=0)
    np.testing.assert_allclose(run.probabilities(), expected, atol=1e-4)


def test_callback_wrote_tensorboard_events(trained):
    import tensorflow as tf

    events = sorted(trained["callback"].log_path.rglob("events.out.tfevents.*"))
    assert events, list(trained["root"].rglob("*"))
    tags = {v.tag for file in events for e in tf.compat.v1.train.summary_iterator(str(file)) for v in e.summary.value}
    assert any(t.startswith("pr") for t in tags) and any("gradcam" in t for t in tags), tags


def test_layer_accepts_the_qualified_and_the_plain_name(trained):
    from audit.store.reader import Reader

    qualified = f"{trained['backbone']}/out_relu"
    recorded = []
    for name, layer in (("plain", "out_relu"), ("qualified", qualified)):
        out = trained["root"] / f"layer_{name}"
        args = ["run", str(trained["files"]["keras"]), str(trained["data"]), "--out", str(out), "--layer", layer,
                "--explain", "gradcam", "--explain-limit", "2", "--bootstrap", "0", "--preprocess", "tf",
                "--resize", "pad", "--no-tensorboard", "--quiet"]
        assert _exit_code(args) == 0
        recorded.append(Reader(out).manifest["explained"]["layer"])
    assert recorded == [qualified, qualified]
