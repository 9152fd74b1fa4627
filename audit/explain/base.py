"""Plumbing shared by every explainer: model adapter, input batches, targets, maps.

Each method module holds its math only. Gradient methods (Grad-CAM and
Grad-CAM++) subclass :class:`CAMExplainer` and supply the per-channel weights;
perturbation methods (occlusion) need only a compiled forward function.

Conventions that hold for every explainer:

* ``images`` is a preprocessed batch ``(N, H, W, C)``, a ``tf.data`` dataset or
  any iterable of such batches (``(x, y)`` tuples use ``x``; a dataset of single
  images is batched here).
* ``targets`` is ``None`` (each image's predicted class), an int (one class for
  all images) or ``N`` ints.
* Maps are float32 ``(N, H, W)`` at the input's size, rescaled to [0, 1] per
  image (min to 0, max to 1); a map without signal (constant) is all zeros.

TensorFlow is imported inside functions, so importing this module is cheap.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.errors import AuditError, ModelError, whole_number

DEFAULT_BATCH_SIZE = 64
# Large enough for batches that keep the CPU busy, small enough that the
# activations of one call stay mostly in cache (measured faster than 512 MB).
DEFAULT_MEMORY_MB = 128
# Fallback size of one forward copy, in multiples of the input, when the
# model's layers are unknown (a SavedModel): typical CNN activations peak at
# a few times the input size per layer pair.
_UNKNOWN_ACTIVATION_FACTOR = 16
# Relative spread under which a map counts as constant: float32 resizing of a
# constant map leaves ripples near 1e-7 that must not be stretched to [0, 1].
_CONSTANT_RTOL = 1e-6


# -- model ----------------------------------------------------------------------
def as_model(model) -> Any:
    """A :class:`~audit.io.models.LoadedModel` for a ``keras.Model`` or a LoadedModel.

    A raw Keras model is wrapped without copying: input shape from the model,
    output kind from the head layer's activation, as :func:`audit.io.models.load_model`
    decides it for files.
    """
    from audit.io.models import LoadedModel

    if isinstance(model, LoadedModel):
        return model
    import keras

    if not isinstance(model, keras.Model):
        raise AuditError(
            f"expected a keras.Model or a LoadedModel from audit.load_model; received: {type(model).__name__}"
        )
    from audit.io.models import from_keras

    return from_keras(model)


def spatial_layer(model, layer) -> tuple[str, Any]:
    """Resolve ``layer`` (name, qualified name, object or None) to a 4-D layer."""
    import keras

    if layer is not None:
        name, obj = model.find_layer(layer)
        try:
            rank = len(obj.output.shape)
        except (AttributeError, ValueError):
            rank = 4  # unknown until traced; the compiled function checks it then
        if rank != 4:
            raise ModelError(f"layer {name!r} has a {rank}-D output; explaining needs a 4-D (batch, h, w, c) layer",
                             model.path)
        return name, obj
    candidates = [
        (name, obj) for name, obj in model.spatial_layers() if not isinstance(obj, keras.layers.InputLayer)
    ]
    if not candidates:
        raise ModelError("model has no layer with a 4-D (batch, h, w, c) output to explain", model.path)
    return candidates[-1]


def copy_bytes(model) -> int:
    """Estimated peak bytes one input image costs in a forward pass (input plus widest layer pair)."""
    h, w, c = (d or 224 for d in model.input_shape)
    in_elems = h * w * c
    widest = 0
    if model.has_layers:
        for _, layer in model.layers():
            try:
                shape = layer.output.shape
            except (AttributeError, ValueError):
                continue
            widest = max(widest, int(np.prod([d or 1 for d in shape[1:]])))
    elems = 2 * in_elems + 2 * widest if widest else in_elems * _UNKNOWN_ACTIVATION_FACTOR
    return 4 * elems


def copies_per_call(model, memory_mb: float) -> int:
    """How many images one forward call may hold within ``memory_mb``."""
    if not memory_mb or memory_mb <= 0:
        raise AuditError(f"memory_mb must be a positive number; received: memory_mb={memory_mb!r}")
    return max(1, int(memory_mb * 2**20 // copy_bytes(model)))


# -- inputs ---------------------------------------------------------------------
def _is_array(images) -> bool:
    if isinstance(images, np.ndarray):
        return True
    return type(images).__module__.startswith("tensorflow") and hasattr(images, "shape") and hasattr(images, "numpy")


def _check_batch(x: np.ndarray, model) -> np.ndarray:
    if x.ndim != 4:
        raise AuditError(f"images must be a batch (N, height, width, channels); received shape {x.shape}")
    expected = model.input_shape
    for got, want in zip(x.shape[1:], expected):
        if want is not None and got != want:
            raise AuditError(
                f"images have shape {x.shape[1:]} but the model expects {tuple(expected)} (height, width, channels)"
            )
    return np.asarray(x, np.float32)


def iter_batches(images, model, batch_size: int) -> Iterator[np.ndarray]:
    """Float32 batches of at most ``batch_size`` images from any supported input form."""
    whole_number("batch_size", batch_size)
    if _is_array(images):
        x = _check_batch(np.asarray(images), model)
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size]
        return
    if isinstance(images, (str, bytes, dict)) or not isinstance(images, Iterable):
        raise AuditError(
            "images must be an array (N, height, width, channels), a tf.data dataset or an iterable of batches; "
            f"received: {type(images).__name__}"
        )
    singles: list[np.ndarray] = []
    for element in images:
        if isinstance(element, (tuple, list)):
            element = element[0]
        x = np.asarray(element)
        if x.ndim == 3:  # an unbatched dataset yields single images
            singles.append(x)
            if len(singles) == batch_size:
                yield _check_batch(np.stack(singles), model)
                singles = []
            continue
        x = _check_batch(x, model)
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size]
    if singles:
        yield _check_batch(np.stack(singles), model)


class Targets:
    """Hands out each batch's target classes; -1 stands for "the predicted class"."""

    def __init__(self, targets, num_classes: int, count: int | None = None):
        self.num_classes = num_classes
        self.fixed: int | None = None
        self.array: np.ndarray | None = None
        self.used = 0
        if targets is None:
            self.fixed = -1
        elif isinstance(targets, (int, np.integer)) and not isinstance(targets, (bool, np.bool_)):
            self.fixed = self._check(np.asarray([targets]))[0]
        else:
            arr = np.asarray(targets)
            if arr.ndim != 1:
                raise AuditError(f"targets must be None, an int or a 1-D array of ints; received shape {arr.shape}")
            self.array = self._check(arr)
            if count is not None and len(arr) != count:
                raise AuditError(f"targets has {len(arr)} entries but there are {count} images")

    def _check(self, arr: np.ndarray) -> np.ndarray:
        if arr.size and arr.dtype.kind not in "iu":
            raise AuditError(f"targets must be class indices (ints); received dtype {arr.dtype}")
        bad = arr[(arr < 0) | (arr >= self.num_classes)] if arr.size else arr
        if bad.size:
            raise AuditError(f"target class {int(bad[0])} is out of range; the model has {self.num_classes} classes")
        return arr.astype(np.int32)

    def take(self, n: int) -> np.ndarray:
        if self.array is None:
            return np.full(n, self.fixed, np.int32)
        part = self.array[self.used : self.used + n]
        self.used += n
        if len(part) != n:
            raise AuditError(f"targets has {len(self.array)} entries but there are more images than that")
        return part

    def finish(self) -> None:
        if self.array is not None and self.used != len(self.array):
            raise AuditError(f"targets has {len(self.array)} entries but there are {self.used} images")


# -- maps -----------------------------------------------------------------------
def normalize_maps(maps) -> np.ndarray:
    """Rescale each map to [0, 1] (min to 0, max to 1); constant or empty maps become zeros.

    Non-finite values are treated as 0 so that a degenerate model can never
    produce a NaN map.

    >>> normalize_maps(np.array([[[1.0, 3.0]], [[2.0, 2.0]]])).tolist()
    [[[0.0, 1.0]], [[0.0, 0.0]]]
    """
    m = np.nan_to_num(np.asarray(maps, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if m.size == 0:
        return m.astype(np.float32)
    lo, spread, flat = _spread(m)
    out = (m - lo) / np.where(flat, 1.0, spread)
    return np.where(flat, 0.0, out).astype(np.float32)


def has_signal(maps) -> np.ndarray:
    """Per raw map (N, ...), whether it has any spread: False exactly where :func:`normalize_maps`
    returns all zeros (e.g. a Grad-CAM that ReLU zeroed everywhere).

    >>> has_signal(np.array([[[1.0, 3.0]], [[2.0, 2.0]], [[0.0, 0.0]]])).tolist()
    [True, False, False]
    """
    m = np.nan_to_num(np.asarray(maps, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if m.size == 0:
        return np.zeros(len(m), bool)
    return ~_spread(m)[2].reshape(len(m))


def _spread(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per map: minimum, spread (max - min) and whether it counts as constant (kept dims)."""
    axes = tuple(range(1, m.ndim))
    lo = m.min(axis=axes, keepdims=True)
    hi = m.max(axis=axes, keepdims=True)
    spread = hi - lo
    scale = np.maximum(np.abs(lo), np.abs(hi))
    return lo, spread, spread <= _CONSTANT_RTOL * scale


def target_scores(scores, targets, output_kind: str):
    """Pre-activation score of each image's target class, resolving -1 to the prediction.

    For a single sigmoid unit the logit ``z`` scores class 1 and ``-z`` class 0,
    because ``sigmoid(-z) = 1 - sigmoid(z)`` is class 0's probability.
    Returns ``(scores (B,), resolved targets (B,))``.
    """
    import tensorflow as tf

    scores = tf.cast(scores, tf.float32)
    if output_kind == "sigmoid":
        z = scores[:, 0]
        t = tf.where(targets < 0, tf.cast(z > 0, tf.int32), targets)
        return tf.where(t == 1, z, -z), t
    t = tf.where(targets < 0, tf.argmax(scores, axis=-1, output_type=tf.int32), targets)
    return tf.gather(scores, t, batch_dims=1), t


def class_scores(scores, output_kind: str):
    """Pre-activation scores as (B, classes): a sigmoid logit ``z`` becomes ``[-z, z]``."""
    import tensorflow as tf

    scores = tf.cast(scores, tf.float32)
    if output_kind == "sigmoid":
        return tf.concat([-scores, scores], axis=-1)
    return scores


class Explainer(abc.ABC):
    """Base of the map explainers: batches in, one ``(N, H, W)`` float32 array out."""

    model: Any

    if TYPE_CHECKING:  # for the type checker only: a plain attribute in most explainers, derived in occlusion

        @property
        def batch_size(self) -> int:
            """Images per compiled call."""

    @abc.abstractmethod
    def _explain_batch(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Raw (unnormalised) maps (B, H, W) for one batch; targets use -1 for "predicted"."""

    def _batches(self, images) -> Iterator[np.ndarray]:
        return iter_batches(images, self.model, self.batch_size)

    def iter_maps(self, images, targets=None, *, normalize: bool = True) -> Iterator[np.ndarray]:
        """Yield the maps batch by batch, so a large dataset never sits in memory."""
        chosen = Targets(targets, self.model.num_classes, len(images) if _is_array(images) else None)
        for x in self._batches(images):
            raw = self._explain_batch(x, chosen.take(len(x)))
            yield normalize_maps(raw) if normalize else np.asarray(raw, np.float32)
        chosen.finish()

    def __call__(self, images, targets=None, *, normalize: bool = True) -> np.ndarray:
        """Maps ``(N, H, W)`` float32 in [0, 1] (raw values with ``normalize=False``)."""
        parts = list(self.iter_maps(images, targets, normalize=normalize))
        if parts:
            return np.concatenate(parts)
        h, w = (d or 0 for d in self.model.input_shape[:2])
        return np.zeros((0, h, w), np.float32)


class CAMExplainer(Explainer):
    """Class-activation maps from a layer's activations and the target score's gradients.

    The abstract base of gradient-weighted CAMs (Grad-CAM, Grad-CAM++). Not to be
    confused with Layer-CAM (Jiang et al., 2021), a different method that weights
    each position by its own positive gradient.

    Subclasses give :meth:`channel_weights`; the map is
    ``ReLU(sum_k weight_k * A_k)`` at the layer's resolution, resized bilinearly
    to the input. Everything runs in one ``tf.function`` per (model, method,
    layer), traced once for any batch size and cached on the LoadedModel, so
    explainers built again for the same LoadedModel reuse it.

    The score is taken before the head's activation: for a softmax head the
    class logit (softmax gradients vanish once a class saturates, and mix in
    every other class); for a logits head the output itself; for a single
    sigmoid unit the logit ``z`` for class 1 and ``-z`` for class 0, the
    log-odds of each class.
    """

    batch_size: int

    def __init__(self, model, layer=None, *, batch_size: int = DEFAULT_BATCH_SIZE):
        self.model = as_model(model)
        self.model.require_layers(type(self).__name__)
        self.layer_name, self.layer = spatial_layer(self.model, layer)
        self.batch_size = batch_size

    @property
    def trace_count(self) -> int:
        """How often the compiled function was traced (1 after any number of calls)."""
        return self._function().experimental_get_tracing_count()  # type: ignore[attr-defined]

    @staticmethod
    @abc.abstractmethod
    def channel_weights(activations, gradients):
        """Per-image, per-channel weights (B, K) from activations and gradients (B, h, w, K)."""

    def _function(self) -> Callable:
        key = ("audit.explain", type(self).__name__, self.layer_name)
        cached = self.model.compiled.get(key)
        if cached is not None:
            return cached
        import tensorflow as tf

        from audit.io.models import pre_activation, tap

        keras_model, lock = self.model.keras_model, self.model.lock
        head = self.model.head_layer()
        layer, layer_name, kind = self.layer, self.layer_name, self.model.output_kind
        weights_of = self.channel_weights
        path = self.model.path

        def cam(x, targets):
            with tf.GradientTape() as tape:

                def watched(value):
                    tape.watch(value)
                    return value

                # the lock keeps other traces off these layers; the swaps are this thread's only
                with lock, tap(layer, "output", on_value=watched) as record, pre_activation(head):
                    scores = keras_model(x, training=False)
                score, resolved = target_scores(scores, targets, kind)
            acts = record.one(layer_name, path)
            if acts.shape.rank != 4:
                raise ModelError(
                    f"layer {layer_name!r} has a {acts.shape.rank}-D output; class-activation maps need a 4-D "
                    "(batch, h, w, channels) layer",
                    path,
                )
            grads = tf.cast(tape.gradient(score, acts), tf.float32)
            acts = tf.cast(acts, tf.float32)
            weights = weights_of(acts, grads)
            low = tf.nn.relu(tf.einsum("bhwk,bk->bhw", acts, weights))
            full = tf.image.resize(low[..., None], tf.shape(x)[1:3], method="bilinear")[..., 0]
            return low, full, resolved

        shape = (None, *self.model.input_shape)
        signature = [tf.TensorSpec(shape, tf.float32), tf.TensorSpec((None,), tf.int32)]
        return self.model.compile(key, cam, signature, autograph=False)

    def _explain_batch(self, x, targets):
        _, full, _ = self._function()(x, targets)
        return full.numpy()

    def layer_maps(self, images, targets=None) -> np.ndarray:
        """Unnormalised maps at the layer's own resolution (B, h, w), before resizing."""
        chosen = Targets(targets, self.model.num_classes)
        parts = [self._function()(x, chosen.take(len(x)))[0].numpy() for x in self._batches(images)]
        chosen.finish()
        return np.concatenate(parts) if parts else np.zeros((0, 0, 0), np.float32)
