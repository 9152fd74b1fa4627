"""Tiny models and images for the explainer tests, with known ground truth.

* :func:`planted_model` decides its class from one rectangle of the image only
  (red there means class 0, green class 1); :func:`planted_images` puts the
  cue in that rectangle and red/green distractors everywhere else.
* :func:`trunk` / :func:`sequential_saved` / :func:`nested_model` are small
  CNNs in the three shapes people ship, with seeded weights.
* :func:`reference_cam` is a second, eager Grad-CAM written from the paper,
  driven by explicit "before the layer" / "after the layer" callables, so it
  needs no tapping at all.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from audit.viz import resize_map

H, W = 48, 64  # non-square on purpose: a transposed map cannot pass
REGION = (8, 24, 36, 60)  # rows [8, 24), cols [36, 60): off-centre, wider than tall
SCALE = 20.0


def region_mask(h: int = H, w: int = W, region=REGION) -> np.ndarray:
    top, bottom, left, right = region
    mask = np.zeros((h, w), bool)
    mask[top:bottom, left:right] = True
    return mask


def planted_model(head: str = "softmax", h: int = H, w: int = W, region=REGION) -> keras.Model:
    """Scores depend on the mean of relu(R - G) and relu(G - R) inside ``region`` only."""
    top, bottom, left, right = region
    crop = ((top, h - bottom), (left, w - right))
    inp = keras.Input((h, w, 3))
    feat = keras.layers.Conv2D(2, 1, activation="relu", name="feat")
    x = feat(inp)
    x = keras.layers.Cropping2D(crop, name="crop")(x)
    x = keras.layers.ZeroPadding2D(crop, name="masked")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if head == "sigmoid":
        dense = keras.layers.Dense(1, activation="sigmoid", name="head")
        out = dense(x)
        dense.set_weights([np.array([[-SCALE], [SCALE]], np.float32), np.zeros(1, np.float32)])
    else:
        dense = keras.layers.Dense(2, activation="softmax" if head == "softmax" else None, name="head")
        out = dense(x)
        dense.set_weights([np.array([[SCALE, -SCALE], [-SCALE, SCALE]], np.float32), np.zeros(2, np.float32)])
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, :, 0] = [1, -1, 0]
    kernel[0, 0, :, 1] = [-1, 1, 0]
    feat.set_weights([kernel, np.zeros(2, np.float32)])
    return keras.Model(inp, out, name=f"planted_{head}")


def planted_images(n: int, h: int = H, w: int = W, region=REGION, seed: int = 0):
    """(images, labels): grey noise, 8x8 red/green distractors outside the region, the cue inside."""
    rng = np.random.default_rng(seed)
    top, bottom, left, right = region
    mask = region_mask(h, w, region)
    x = rng.uniform(0.0, 0.3, (n, h, w, 3)).astype(np.float32)
    labels = np.arange(n) % 2
    colours = np.array([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1]], np.float32)
    for i in range(n):
        placed = 0
        while placed < 3:
            r, c = rng.integers(0, h - 8), rng.integers(0, w - 8)
            if mask[max(r - 1, 0) : r + 9, max(c - 1, 0) : c + 9].any():
                continue
            x[i, r : r + 8, c : c + 8] = colours[rng.integers(0, 2)]
            placed += 1
        cue = colours[labels[i]] * 0.8 + rng.uniform(-0.05, 0.05, (bottom - top, right - left, 3))
        x[i, top:bottom, left:right] = cue
    return x.astype(np.float32), labels


def trunk(seed: int = 1):
    """Layers of a small CNN: conv-pool-conv(conv_last)-GAP, weights seeded."""
    init = keras.initializers.GlorotUniform
    return [
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", kernel_initializer=init(seed), name="conv1"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(6, 3, activation="relu", kernel_initializer=init(seed + 1), name="conv_last"),
    ]


def _dense(units: int, activation, seed: int):
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=seed),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed + 1),
        name="head",
    )


def sequential_saved(tmp_path, head: str = "softmax", h: int = H, w: int = W):
    """A Sequential without an Input layer, built (never called), saved as .keras and loaded back."""
    units = 1 if head == "sigmoid" else 3
    activation = {"softmax": "softmax", "sigmoid": "sigmoid", "logits": None}[head]
    model = keras.Sequential([*trunk(), keras.layers.GlobalAveragePooling2D(name="gap"), _dense(units, activation, 7)])
    model.build((None, h, w, 3))
    path = tmp_path / f"seq_{head}.keras"
    model.save(path)
    return keras.models.load_model(path, compile=False)


def nested_model(head: str = "softmax", h: int = H, w: int = W):
    """Functional model whose spatial layers live in a nested functional 'backbone'."""
    units = 1 if head == "sigmoid" else 3
    activation = {"softmax": "softmax", "sigmoid": "sigmoid", "logits": None}[head]
    b_in = keras.Input((h, w, 3))
    x = b_in
    for layer in trunk():
        x = layer(x)
    backbone = keras.Model(b_in, x, name="backbone")
    inp = keras.Input((h, w, 3))
    y = backbone(inp)
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    out = _dense(units, activation, 7)(y)
    return keras.Model(inp, out, name=f"nested_{head}")


def functional_model(head: str = "logits", h: int = H, w: int = W):
    """Flat functional model (tf-explain can handle this one)."""
    units = 1 if head == "sigmoid" else 3
    activation = {"softmax": "softmax", "sigmoid": "sigmoid", "logits": None}[head]
    inp = keras.Input((h, w, 3))
    x = inp
    for layer in trunk():
        x = layer(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, _dense(units, activation, 7)(x), name=f"functional_{head}")


def split_at_conv_last(model):
    """(before, after_logits) callables around 'conv_last', built by hand from the layers.

    ``after_logits`` applies the head's kernel and bias without its activation,
    so it yields pre-softmax / pre-sigmoid scores.
    """
    names = [layer.name for layer in model.layers]
    if "backbone" in names:
        before = model.get_layer("backbone")
        rest = [model.get_layer("gap")]
    else:
        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        cut = [layer.name for layer in layers].index("conv_last") + 1
        head_layers, rest = layers[:cut], layers[cut:-1]

        def before(x):
            for layer in head_layers:
                x = layer(x)
            return x

    head = model.get_layer("head")

    def after_logits(a):
        for layer in rest:
            a = layer(a)
        return tf.matmul(a, head.kernel) + head.bias

    return before, after_logits


def reference_cam(before, after_logits, x, targets, sigmoid: bool = False, plus_plus: bool = False):
    """Eager Grad-CAM (or Grad-CAM++) from the papers: (layer-resolution maps, normalised input-size maps)."""
    acts = tf.convert_to_tensor(before(tf.convert_to_tensor(x)))
    with tf.GradientTape() as tape:
        tape.watch(acts)
        z = after_logits(acts)
        if sigmoid:
            score = tf.where(np.asarray(targets) == 1, z[:, 0], -z[:, 0])
        else:
            score = tf.gather(z, np.asarray(targets), batch_dims=1)
    grads = tape.gradient(score, acts).numpy()
    a = acts.numpy()
    if plus_plus:
        g2 = grads**2
        denom = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g2 * grads
        alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=denom != 0)
        weights = (alpha * np.maximum(grads, 0)).sum(axis=(1, 2))
    else:
        weights = grads.mean(axis=(1, 2))
    low = np.maximum(np.einsum("bhwk,bk->bhw", a, weights), 0)
    full = resize_map(low, x.shape[1:3])
    lo = full.min(axis=(1, 2), keepdims=True)
    hi = full.max(axis=(1, 2), keepdims=True)
    return low, (full - lo) / np.where(hi > lo, hi - lo, 1)


def predicted(logits: np.ndarray, sigmoid: bool = False) -> np.ndarray:
    if sigmoid:
        return (logits[:, 0] > 0).astype(np.int32)
    return logits.argmax(axis=1).astype(np.int32)
