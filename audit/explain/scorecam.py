"""Score-CAM: conv channels weighted by how well each one, used as a mask, keeps the class."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from audit.errors import ModelError, optional_whole_number
from audit.explain.base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MEMORY_MB,
    Explainer,
    as_model,
    copies_per_call,
    spatial_layer,
)


class ScoreCAM(Explainer):
    """Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for CNNs", CVPR-W 2020).

    Gradient-free. For the chosen layer's activation maps ``A_k`` of an image ``x``:

    1. each ``A_k`` is resized bilinearly to the input and min-max scaled to a
       mask ``H_k`` in [0, 1];
    2. the masked image ``x * H_k`` (baseline zeros, as in the paper) goes through
       the model, and ``s_k = softmax(f(x * H_k))_c`` is the target class's
       probability (the model's own probabilities: softmax of logits, ``[1 - p, p]``
       for a sigmoid unit), not the paper's "increase of confidence"
       ``s_k - softmax(f(0))_c``: the two differ by one constant per image, which
       the softmax below cancels exactly, so the maps are the same;
    3. ``alpha = softmax_k(s)`` over the channels (the paper's Algorithm 1; the
       authors' released code weights by ``s_k`` itself) and the map is
       ``ReLU(sum_k alpha_k A_k)`` at the layer's resolution, resized bilinearly
       to the input (as Grad-CAM's) and rescaled to [0, 1] per image.

    A channel that is constant on an image (a dead ReLU) has no mask; it is left
    out of the softmax and of the sum, as the released code skips it.

    Cost: one forward pass of the whole model per channel and image, so a call
    takes about ``K`` times (``K`` = the layer's channels, or ``max_channels``)
    a plain prediction of the same images: 512 channels make a 224 px ResNet
    explanation about 500 predictions. The masked copies are built inside one
    compiled function and sent through the model in chunks holding at most
    ``memory_mb`` of estimated activations (several images at once when ``K`` is
    small), so it runs at the model's batched forward speed.

    Args:
        model: a ``keras.Model`` or a LoadedModel with layers.
        layer: a layer name (``"backbone/conv_last"`` or the plain inner name),
            a layer object, or None for the last layer with a 4-D output.
        max_channels: None for every channel; else, where the layer has more,
            only this many channels per image, those whose activation map varies
            most over the image (a flat map masks nothing apart).
        batch_size: images whose activations are taken at once.
        memory_mb: bound for one forward call's estimated memory.

    Example:
        >>> from audit.explain import ScoreCAM
        >>> maps = ScoreCAM(model, layer="conv_last", max_channels=64)(images)   # doctest: +SKIP
    """

    batch_size: int

    def __init__(self, model, layer=None, *, max_channels: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 memory_mb: float = DEFAULT_MEMORY_MB):
        self.model = as_model(model)
        self.model.require_layers(type(self).__name__)
        self.layer_name, self.layer = spatial_layer(self.model, layer)
        self.max_channels = optional_whole_number("max_channels", max_channels, none_means="every channel")
        self.batch_size = batch_size
        self.max_copies = copies_per_call(self.model, memory_mb)

    @property
    def trace_count(self) -> int:
        """Traces of the two compiled functions together (2 after any number of calls of one image size)."""
        fns = (self._activations_fn(), self._scores_fn())
        return sum(fn.experimental_get_tracing_count() for fn in fns)  # type: ignore[attr-defined]

    def _activations_fn(self) -> Callable:
        """Compiled ``(x, targets) -> (layer activations (B, h, w, K), resolved targets)``."""
        key = ("audit.explain", "ScoreCAM", "activations", self.layer_name)
        if key in self.model.compiled:  # model.compile caches too; this skips building the closure
            return self.model.compiled[key]
        import tensorflow as tf

        from audit.io.models import tap

        model, layer, layer_name = self.model, self.layer, self.layer_name

        def activations(x, targets):
            # the lock keeps other traces off the tapped layer while this one swaps it
            with model.lock, tap(layer, "output") as record:
                probs = model.to_probs(model.raw_output(x))
            acts = record.one(layer_name, model.path)
            if acts.shape.rank != 4:
                raise ModelError(f"layer {layer_name!r} has a {acts.shape.rank}-D output; Score-CAM needs a 4-D "
                                 "(batch, h, w, channels) layer", model.path)
            resolved = tf.where(targets < 0, tf.argmax(probs, axis=-1, output_type=tf.int32), targets)
            return tf.cast(acts, tf.float32), resolved

        shape = (None, *model.input_shape)
        signature = [tf.TensorSpec(shape, tf.float32), tf.TensorSpec((None,), tf.int32)]
        return model.compile(key, activations, signature, autograph=False)

    def _scores_fn(self) -> Callable:
        """Compiled ``(x (B, H, W, C), acts (B, h, w, k), targets) -> s (B, k)``: each channel as a mask, scored."""
        key = ("audit.explain", "ScoreCAM", "scores")
        if key in self.model.compiled:
            return self.model.compiled[key]
        import tensorflow as tf

        model = self.model

        def scores(x, acts, targets):
            size = tf.shape(x)[1:3]
            up = tf.image.resize(acts, size, method="bilinear")  # (B, H, W, k)
            lo = tf.reduce_min(up, axis=(1, 2), keepdims=True)
            spread = tf.reduce_max(up, axis=(1, 2), keepdims=True) - lo
            masks = tf.math.divide_no_nan(up - lo, spread)  # constant channels are dropped by the caller
            masks = tf.transpose(masks, (0, 3, 1, 2))  # (B, k, H, W)
            masked = x[:, None] * masks[..., None]  # (B, k, H, W, C)
            n, k = tf.shape(acts)[0], tf.shape(acts)[3]
            probs = model.to_probs(model.raw_output(tf.reshape(masked, tf.concat([[-1], tf.shape(x)[1:]], 0))))
            probs = tf.reshape(probs, (n, k, -1))
            return tf.gather(probs, targets, axis=2, batch_dims=1)  # (B, k)

        shape = (None, *model.input_shape)
        signature = [tf.TensorSpec(shape, tf.float32), tf.TensorSpec((None, None, None, None), tf.float32),
                     tf.TensorSpec((None,), tf.int32)]
        return model.compile(key, scores, signature, autograph=False)

    def _kept(self, acts: np.ndarray) -> np.ndarray:
        """The channels to score per image (B, k): all, or the ``max_channels`` of highest spatial variance."""
        n, channels = acts.shape[0], acts.shape[-1]
        if self.max_channels is None or channels <= self.max_channels:
            return np.broadcast_to(np.arange(channels), (n, channels))
        variance = acts.var(axis=(1, 2), dtype=np.float64)
        # stable, so equal variances keep channel order and a rerun keeps the same channels
        return np.argsort(-variance, axis=1, kind="stable")[:, : self.max_channels]

    def _channel_scores(self, x: np.ndarray, acts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``s`` (B, k) for every kept channel, in forward calls of at most ``max_copies`` masked images."""
        fn = self._scores_fn()
        n, k = len(x), acts.shape[-1]
        out = np.zeros((n, k), np.float32)
        if k == 0:
            return out
        images_per_call = max(1, self.max_copies // k)
        channels_per_call = max(1, min(k, self.max_copies))
        for i in range(0, n, images_per_call):
            rows = slice(i, i + images_per_call)
            for j in range(0, k, channels_per_call):
                cols = slice(j, j + channels_per_call)
                out[rows, cols] = fn(x[rows], np.ascontiguousarray(acts[rows, ..., cols]), targets[rows]).numpy()
        return out

    def _explain_batch(self, x, targets):
        import tensorflow as tf

        acts, resolved = self._activations_fn()(x, targets)
        acts = acts.numpy()
        acts = np.take_along_axis(acts, self._kept(acts)[:, None, None, :], axis=3)
        live = acts.max(axis=(1, 2)) > acts.min(axis=(1, 2))  # (B, k): a constant map masks nothing apart
        scored = np.flatnonzero(live.any(axis=0))  # channels dead on every image cost no forward pass
        s = np.zeros(live.shape, np.float64)
        s[:, scored] = self._channel_scores(x, acts[..., scored], resolved.numpy())
        # softmax over each image's live channels; s is a probability, so exp(s) cannot overflow
        e = np.where(live, np.exp(s), 0.0)
        alpha = e / np.maximum(e.sum(axis=1, keepdims=True), 1.0)  # no live channel: all weights 0
        low = np.maximum(np.einsum("bhwk,bk->bhw", acts, alpha), 0.0).astype(np.float32)
        return tf.image.resize(low[..., None], x.shape[1:3], method="bilinear")[..., 0].numpy()
