"""Per-layer activations and per-channel summary statistics over a whole dataset."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from audit.errors import AuditError, ModelError
from audit.explain.base import DEFAULT_BATCH_SIZE, as_model, iter_batches


def _is_conv_or_pool(layer) -> bool:
    import keras

    kinds = (
        keras.layers.Conv2D,
        keras.layers.Conv2DTranspose,
        keras.layers.DepthwiseConv2D,
        keras.layers.SeparableConv2D,
        keras.layers.MaxPooling2D,
        keras.layers.AveragePooling2D,
    )
    return isinstance(layer, kinds)


class Activations:
    """Outputs of chosen layers, and their per-channel statistics streamed over batches.

    Args:
        model: a ``keras.Model`` or a LoadedModel with layers.
        layers: layer names (qualified ``"backbone/conv"`` or plain inner names),
            layer objects, a single one of those, or None for every 2-D
            convolution and pooling layer with a 4-D output, nested models included.
        batch_size: images per compiled call.

    Calling it returns ``{qualified layer name: array (N, ...)}``, the layer
    outputs in model order. :meth:`stats` reduces each layer's output over
    every axis but the last (channels) without keeping the activations.

    Example:
        >>> from audit.explain import Activations
        >>> acts = Activations(model, layers=["backbone/conv1"])(images)     # doctest: +SKIP
        >>> stats = Activations(model).stats(dataset)                        # doctest: +SKIP
        >>> stats["backbone/conv1"]["frac_zero"][:3]                         # doctest: +SKIP
        [0.51, 0.0, 0.87]
    """

    def __init__(self, model, layers=None, *, batch_size: int = DEFAULT_BATCH_SIZE):
        self.model = as_model(model)
        self.model.require_layers("Activations")
        if layers is None:
            self.layers = [(n, obj) for n, obj in self.model.spatial_layers() if _is_conv_or_pool(obj)]
            if not self.layers:
                raise ModelError("model has no 2-D convolution or pooling layer; pass layers=[...]", self.model.path)
        else:
            chosen = [layers] if isinstance(layers, str) or not isinstance(layers, (list, tuple)) else layers
            if not chosen:
                raise AuditError("layers is empty; pass None for every convolution and pooling layer")
            self.layers = [self.model.find_layer(item) for item in chosen]
        self.names = [name for name, _ in self.layers]
        if len(set(self.names)) != len(self.names):
            raise AuditError(f"layers lists a layer twice: {self.names}")
        self.batch_size = batch_size

    def _traced(self, reduce: bool) -> Callable:
        key = ("audit.explain", "activations", reduce, tuple(self.names))
        cached = self.model.compiled.get(key)
        if cached is not None:
            return cached
        import tensorflow as tf

        from audit.io.models import tap

        keras_model, layers, path = self.model.keras_model, self.layers, self.model.path
        lock = self.model.lock

        def outputs(x):
            with lock, contextlib.ExitStack() as stack:
                records = [stack.enter_context(tap(layer, "output")) for _, layer in layers]
                keras_model(x, training=False)
            values = [record.one(name, path) for (name, _), record in zip(layers, records)]
            if not reduce:
                return tuple(values)
            stats = []
            for value in values:
                value = tf.cast(value, tf.float32)
                flat = tf.reshape(value, (-1, tf.shape(value)[-1]))
                stats.append((
                    tf.reduce_sum(flat, axis=0),
                    tf.reduce_max(flat, axis=0),
                    tf.reduce_sum(tf.cast(tf.equal(flat, 0.0), tf.float32), axis=0),
                    tf.shape(flat)[0],
                ))
            return tuple(stats)

        signature = [tf.TensorSpec((None, *self.model.input_shape), tf.float32)]
        return self.model.compile(key, outputs, signature, autograph=False)

    def __call__(self, images) -> dict[str, np.ndarray]:
        fn = self._traced(reduce=False)
        parts: list[list[np.ndarray]] = [[] for _ in self.names]
        for x in iter_batches(images, self.model, self.batch_size):
            for store, value in zip(parts, fn(x)):
                store.append(value.numpy())
        return {name: np.concatenate(p) for name, p in zip(self.names, parts) if p}

    def stats(self, batches) -> dict[str, dict[str, list[float]]]:
        """Per-channel ``mean``, ``max`` and ``frac_zero`` of each layer over all batches.

        Only running sums are kept, so memory does not grow with the dataset.
        Counts are over every image and spatial position.
        """
        fn = self._traced(reduce=True)
        sums: dict[int, np.ndarray] = {}  # layer position -> running total, set by the first batch
        maxima: dict[int, np.ndarray] = {}
        zeros: dict[int, np.ndarray] = {}
        counts = [0] * len(self.names)
        for x in iter_batches(batches, self.model, self.batch_size):
            for i, (s, m, z, c) in enumerate(fn(x)):
                s, m, z = s.numpy().astype(np.float64), m.numpy(), z.numpy().astype(np.float64)
                sums[i] = s if i not in sums else sums[i] + s
                maxima[i] = m if i not in maxima else np.maximum(maxima[i], m)
                zeros[i] = z if i not in zeros else zeros[i] + z
                counts[i] += int(c)
        if not counts or not counts[0]:
            raise AuditError("no images to compute activation statistics from")
        return {
            name: {
                "mean": (sums[i] / counts[i]).tolist(),
                "max": maxima[i].astype(np.float64).tolist(),
                "frac_zero": (zeros[i] / counts[i]).tolist(),
            }
            for i, name in enumerate(self.names)
        }
