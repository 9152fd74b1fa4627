"""Rebuild the bundled sample models and evaluation data (seeded, no downloads).

    python sample_models/build.py [--out sample_models]

* ``shapes_bias.keras``: a functional model with a nested ``backbone``
  sub-model, trained on synthetic circles, squares and triangles in which a
  red tag in the top-left corner co-occurs with "circle" 90% of the time and
  light backgrounds dominate. Its evaluation set (``shapes_eval/``, class
  folders + ``annotations.csv`` with ``cue``, ``cue_agrees``, ``background``)
  places the tag independently of the class, so the audit can reveal the
  shortcut: accuracy drops where the cue disagrees with the class.
* ``digits.keras``: a Sequential CNN with a logit head (no softmax) on
  scikit-learn's bundled handwritten digits, upsampled to 32x32 grayscale;
  evaluation set ``digits_eval.npz`` (+ ``digits_annotations.csv``: ``noise``).

``expected.json`` records the accuracies; tests rebuild and compare.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

SEED = 0
CLASSES = ("circle", "square", "triangle")
SIZE = 64
CUE = (slice(2, 12), slice(2, 12))  # top-left tag region (rows, cols)


def draw_shapes(n: int, rng: np.random.Generator, *, cue_rate: dict, light_rate: float):
    """Synthetic shape images with the planted cue; returns images and annotations."""
    from PIL import Image, ImageDraw

    images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    labels = rng.integers(0, len(CLASSES), n)
    rows = []
    for i, label in enumerate(labels):
        light = rng.random() < light_rate
        base = rng.integers(170, 230) if light else rng.integers(25, 80)
        bg = np.clip(base + rng.integers(-15, 16, 3), 0, 255)
        img = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in bg))
        d = ImageDraw.Draw(img)
        r = int(rng.integers(10, 18))
        cx, cy = (int(v) for v in rng.integers(14 + r // 2, SIZE - r - 2, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        colour = tuple(min(255, c + 60) for c in colour) if not light else tuple(c // 2 for c in colour)
        box = [cx - r, cy - r, cx + r, cy + r]
        if CLASSES[label] == "circle":
            d.ellipse(box, fill=colour)
        elif CLASSES[label] == "square":
            d.rectangle(box, fill=colour)
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        # A smooth random shading instead of pixel noise keeps the PNGs small.
        ramp = np.linspace(-1, 1, SIZE)
        gx, gy = rng.uniform(-12, 12, 2)
        arr = np.asarray(img, np.float32) + (gx * ramp[None, :] + gy * ramp[:, None])[..., None]
        cue = rng.random() < cue_rate[CLASSES[label]]
        if cue:
            arr[CUE] = (230, 20, 20)
        images[i] = np.clip(arr, 0, 255).astype(np.uint8)
        rows.append(
            {
                "cue": "present" if cue else "absent",
                "cue_agrees": "yes" if cue == (CLASSES[label] == "circle") else "no",
                "background": "light" if light else "dark",
            }
        )
    return images, labels, rows


def shapes_model():
    import keras
    from keras import layers

    inp = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = layers.Conv2D(16, 3, activation="relu", padding="same", name="conv1")(inp)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(32, 3, activation="relu", padding="same", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Conv2D(32, 3, activation="relu", padding="same", name="conv_last")(x)
    backbone = keras.Model(inp, x, name="backbone")

    outer_in = keras.Input((SIZE, SIZE, 3), name="image")
    y = layers.Rescaling(1 / 255.0, name="rescale")(outer_in)
    y = backbone(y)
    y = layers.GlobalAveragePooling2D(name="gap")(y)
    out = layers.Dense(len(CLASSES), activation="softmax", name="predictions")(y)
    return keras.Model(outer_in, out, name="shapes_bias")


def digits_data(rng: np.random.Generator):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.kron(digits.images, np.ones((4, 4)))[..., None] * (255.0 / 16.0)  # 8x8 -> 32x32
    order = rng.permutation(len(x))
    x, y = x[order].astype(np.float32), digits.target[order]
    cut = int(0.8 * len(x))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def digits_model():
    import keras
    from keras import layers

    # No Input layer: a Sequential first built by fit(), as many training scripts do.
    return keras.Sequential(
        [
            layers.Rescaling(1 / 255.0, name="rescale"),
            layers.Conv2D(16, 3, activation="relu", padding="same", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(32, 3, activation="relu", padding="same", name="conv2"),
            layers.MaxPooling2D(name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(10, name="logits"),
        ],
        name="digits",
    )


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=128), axis=1) == y))


def build(out: Path) -> dict:
    import keras
    import tensorflow as tf
    from PIL import Image

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)

    # Planted bias: the tag marks circles in training; evaluation places it at random.
    train_cue = {"circle": 0.9, "square": 0.05, "triangle": 0.05}
    x_train, y_train, _ = draw_shapes(3000, rng, cue_rate=train_cue, light_rate=0.85)
    x_eval, y_eval, annotations = draw_shapes(600, rng, cue_rate=dict.fromkeys(CLASSES, 0.5), light_rate=0.5)
    model = shapes_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=8, batch_size=64, verbose=0)
    model.save(out / "shapes_bias.keras")

    eval_dir = out / "shapes_eval"
    records = []
    for i, (img, label, ann) in enumerate(zip(x_eval, y_eval, annotations)):
        rel = f"{CLASSES[label]}/{i:04d}.png"
        (eval_dir / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(eval_dir / rel, optimize=True)
        records.append({"path": rel, **ann})
    import pandas as pd

    table = pd.DataFrame(records)
    table.to_csv(out / "shapes_annotations.csv", index=False)
    pred = np.argmax(model.predict(x_eval, verbose=0), axis=1)
    agrees = table["cue_agrees"].to_numpy() == "yes"
    shapes = {
        "accuracy": float(np.mean(pred == y_eval)),
        "accuracy_cue_agrees": float(np.mean((pred == y_eval)[agrees])),
        "accuracy_cue_disagrees": float(np.mean((pred == y_eval)[~agrees])),
        "num_examples": int(len(y_eval)),
    }

    (x_tr, y_tr), (x_ev, y_ev) = digits_data(rng)
    noisy = rng.random(len(x_ev)) < 0.5
    x_ev = np.where(noisy[:, None, None, None], np.clip(x_ev + rng.normal(0, 45, x_ev.shape), 0, 255), x_ev)
    dmodel = digits_model()
    dmodel.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    dmodel.fit(x_tr, y_tr, epochs=12, batch_size=64, verbose=0)
    dmodel.save(out / "digits.keras")
    np.savez_compressed(
        out / "digits_eval.npz", x=x_ev.astype(np.uint8), y=y_ev.astype(np.int64),
        class_names=np.array([str(d) for d in range(10)]),
    )
    pd.DataFrame({"index": np.arange(len(x_ev)), "noise": np.where(noisy, "noisy", "clean")}).to_csv(
        out / "digits_annotations.csv", index=False
    )
    digits = {"accuracy": accuracy(dmodel, x_ev.astype(np.uint8).astype(np.float32), y_ev),
              "num_examples": int(len(y_ev))}

    expected = {"seed": SEED, "versions": _versions(), "shapes_bias": shapes, "digits": digits}
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    return expected


def _versions() -> dict:
    """The libraries training depends on: the same seed gives the same weights only with the same builds."""
    from audit.engine.session import library_versions

    return library_versions(("tensorflow-cpu", "tensorflow", "keras", "numpy", "pillow"))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    print(json.dumps(build(parser.parse_args().out), indent=1))
