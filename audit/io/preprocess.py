"""How pixels (0..255, RGB) become the model's input: the geometry and the arithmetic.

One :class:`Preprocessing` describes both: how an image is brought to the model's size
(``resize``: stretch, pad or crop) and the per-pixel arithmetic applied after resizing::

    y = ((x[channel_order] - mean) / std) * scale + offset

with ``mean`` and ``std`` per channel in 0..255 units (in the model's channel order).
Presets (``--preprocess NAME``) name the modes of ``keras.applications``; their constants
are read from Keras itself (:func:`keras.applications.imagenet_utils.preprocess_input`),
never typed here. Keras and TensorFlow are imported only inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESIZES = ("stretch", "pad", "crop")
MODES = ("none", "unit", "tf", "caffe", "torch")
# keras.applications modules -> the mode their preprocess_input uses ("none": the model
# preprocesses in its own graph and preprocess_input passes pixels through).
APPLICATIONS = {
    "convnext": "none", "efficientnet": "none", "efficientnet_v2": "none", "mobilenet_v3": "none",
    "densenet": "torch",
    "inception_resnet_v2": "tf", "inception_v3": "tf", "mobilenet": "tf", "mobilenet_v2": "tf",
    "nasnet": "tf", "resnet_v2": "tf", "xception": "tf",
    "resnet": "caffe", "resnet50": "caffe", "vgg16": "caffe", "vgg19": "caffe",
}
PRESETS = (*MODES, *APPLICATIONS)
SCALING_LAYERS = ("Rescaling", "Normalization")


@dataclass(frozen=True)
class Preprocessing:
    """Geometry and arithmetic that turn decoded pixels into the model's input."""

    name: str = "none"  # the preset, or "custom" for --rescale/--offset/--mean/--std
    scale: float = 1.0
    offset: float = 0.0
    mean: tuple[float, ...] | None = None  # per channel, 0..255 units, model channel order
    std: tuple[float, ...] | None = None
    channel_order: str = "RGB"  # "BGR": channels reversed before the arithmetic
    resize: str = "stretch"

    @property
    def rescales(self) -> bool:
        """Whether the arithmetic changes the pixels at all."""
        return (self.scale != 1.0 or self.offset != 0.0 or self.mean is not None or self.std is not None
                or self.channel_order != "RGB")

    def describe(self) -> dict:
        """Plain JSON for the manifest."""
        return {"name": self.name, "resize": self.resize, "channel_order": self.channel_order,
                "scale": self.scale, "offset": self.offset,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std),
                "formula": "((x[channel_order] - mean) / std) * scale + offset, x in 0..255 RGB"}

    def apply(self, x):
        """The arithmetic on float32 pixels ``(..., C)`` (C = 1 or 3), as TensorFlow ops.

        A one-channel input uses the mean of the per-channel ``mean``/``std`` and no reordering.
        """
        import tensorflow as tf

        x = tf.convert_to_tensor(x, tf.float32)
        one = x.shape[-1] == 1
        if self.channel_order == "BGR" and not one:
            x = x[..., ::-1]
        for values, op in ((self.mean, tf.subtract), (self.std, tf.divide)):
            if values is not None:
                v = np.asarray(values, np.float64)
                v = np.full(1 if one else 3, v.mean()) if one or v.size == 1 else v
                x = op(x, tf.constant(v, tf.float32))
        if self.scale != 1.0:
            x = x * self.scale
        if self.offset != 0.0:
            x = x + self.offset
        return x

    def inverse(self, y) -> np.ndarray:
        """Model inputs ``(..., C)`` back to uint8 RGB pixels (0..255), for display.

        Undoes the arithmetic of :meth:`apply` (offset, scale, std, mean, then the channel
        order); the geometry (resize, padding, crop) cannot be undone and is kept.
        """
        x = np.asarray(y, np.float64)
        one = x.shape[-1] == 1
        if self.offset != 0.0:
            x = x - self.offset
        if self.scale != 1.0:
            x = x / self.scale
        for values, op in ((self.std, np.multiply), (self.mean, np.add)):
            if values is not None:
                v = np.asarray(values, np.float64)
                x = op(x, np.full(1 if one else 3, v.mean()) if one or v.size == 1 else v)
        if self.channel_order == "BGR" and not one:
            x = x[..., ::-1]
        return np.clip(np.round(x), 0, 255).astype(np.uint8)

    def geometry(self, img, size: tuple[int, int], aspect: tuple[int, int]):
        """``img`` (h, w, C) float32 brought to ``size`` by this resize; ``aspect`` is the
        model's (H, W), whose ratio ``crop`` keeps (so a smaller stored copy shows the same region)."""
        return resize_image(img, size, self.resize, aspect)


def resize_image(img, size: tuple[int, int], how: str = "stretch", aspect: tuple[int, int] | None = None):
    """Resize ``img`` (h, w, C) to ``size``: stretch, pad (aspect kept, zeros) or central crop."""
    import tensorflow as tf

    h, w = size
    if how == "pad":
        return tf.image.resize_with_pad(img, h, w, antialias=True)
    if how == "crop":
        ah, aw = aspect or size
        hw = tf.cast(tf.shape(img)[:2], tf.float64)
        ch = tf.minimum(hw[0], hw[1] * ah / aw)  # the largest box of the model's aspect ratio
        cw = tf.minimum(hw[1], hw[0] * aw / ah)
        ch, cw = (tf.cast(tf.maximum(tf.round(v), 1.0), tf.int32) for v in (ch, cw))
        top = (tf.shape(img)[0] - ch) // 2
        left = (tf.shape(img)[1] - cw) // 2
        img = tf.image.crop_to_bounding_box(img, top, left, ch, cw)
    return tf.image.resize(img, size, antialias=True)


def keras_mode(mode: str) -> dict:
    """``channel_order``, ``scale``, ``offset``, ``mean``, ``std`` of a Keras ``preprocess_input``
    mode, read off Keras by calling it on black and on one-hot pixels (it is affine per channel)."""
    from keras.applications import imagenet_utils

    probe = np.zeros((1, 1, 4, 3), np.float64)
    probe[0, 0, 1:] = 255.0 * np.eye(3)
    y = np.asarray(imagenet_utils.preprocess_input(probe, data_format="channels_last", mode=mode))[0, 0]
    base, slope = y[0], (y[1:] - y[0]) / 255.0  # slope[k, j]: output channel j per unit of input k
    order = tuple(int(k) for k in np.argmax(np.abs(slope), axis=0))
    if order not in ((0, 1, 2), (2, 1, 0)):
        raise ValueError(f"Keras mode {mode!r} reorders channels as {order}, not RGB or BGR")
    a = slope[list(order), [0, 1, 2]]
    spec: dict = {"channel_order": "RGB" if order == (0, 1, 2) else "BGR"}
    if np.allclose(a, a[0], rtol=0, atol=1e-12) and np.allclose(base, base[0], rtol=0, atol=1e-12):
        return {**spec, "scale": float(a[0]), "offset": float(base[0])}
    std = None if np.allclose(a, 1.0, rtol=0, atol=1e-12) else tuple(float(v) for v in 1.0 / a)
    return {**spec, "mean": tuple(float(v) for v in -base / a), "std": std}


def preset(name: str, resize: str = "stretch") -> Preprocessing:
    """The :class:`Preprocessing` of a ``--preprocess`` preset (see :data:`PRESETS`)."""
    mode = APPLICATIONS.get(name, name)
    if mode not in MODES:
        raise ValueError(f"unknown preset {name!r}")
    if mode == "none":
        return Preprocessing(name, resize=resize)
    if mode == "unit":
        return Preprocessing(name, scale=1.0 / 255.0, resize=resize)
    return Preprocessing(name, resize=resize, **keras_mode(mode))


def _passes_scale(kind: str) -> bool:
    """Layers that come before a model's own scaling without changing pixel values' range."""
    return kind in ("InputLayer", "Resizing", "CenterCrop") or kind.startswith("Random")


def scaling_layer(keras_model) -> str | None:
    """The name of a ``Rescaling``/``Normalization`` layer the model begins with (looking into
    nested models' first layers), or None."""
    model = keras_model
    for _ in range(16):  # nesting depth; a model cannot contain itself
        layers = [la for la in getattr(model, "layers", []) if not _passes_scale(type(la).__name__)]
        if not layers:
            return None
        first = layers[0]
        if type(first).__name__ in SCALING_LAYERS:
            return str(first.name)
        if not hasattr(first, "layers"):
            return None
        model = first
    return None
