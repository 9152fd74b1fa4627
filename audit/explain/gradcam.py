"""Grad-CAM and Grad-CAM++: only the channel weights differ; plumbing is in :class:`CAMExplainer`."""

from __future__ import annotations

from audit.explain.base import DEFAULT_BATCH_SIZE, CAMExplainer


class GradCAM(CAMExplainer):
    """Grad-CAM (Selvaraju et al., 2017): channel weight = spatial mean of the score's gradient.

    Args:
        model: a ``keras.Model`` or a LoadedModel from :func:`audit.load_model`.
        layer: a layer name (``"backbone/conv_last"`` or the plain inner name
            ``"conv_last"``), a layer object, or None for the last layer with a
            4-D output, nested models included.
        batch_size: images per compiled call.

    Calling it with ``(images, targets=None)`` returns ``(N, H, W)`` float32
    maps in [0, 1] at the input's size. The score is the target class's
    pre-activation score: the logit for softmax and logits heads, ``z`` or
    ``-z`` for class 1 or 0 of a single sigmoid unit (see :class:`CAMExplainer`).

    Example:
        >>> from audit.explain import GradCAM
        >>> maps = GradCAM(model, layer="backbone/conv_last")(images)   # doctest: +SKIP
        >>> maps.shape, maps.dtype                                      # doctest: +SKIP
        ((32, 48, 64), dtype('float32'))
    """

    @staticmethod
    def channel_weights(activations, gradients):
        import tensorflow as tf

        return tf.reduce_mean(gradients, axis=(1, 2))


class GradCAMPlusPlus(CAMExplainer):
    """Grad-CAM++ (Chattopadhay et al., 2018): positive gradients weighted per position.

    ``alpha = g^2 / (2 g^2 + sum_ab(A) g^3)`` and ``weight_k = sum_ab alpha relu(g)``,
    the paper's eq. 19, as pytorch-grad-cam computes it. As in the paper, higher
    derivatives are replaced by powers of the first, which is exact when the
    score is passed through ``exp``; positions with a zero gradient get
    ``alpha = 0`` instead of 0/0.

    The authors' released code and tf-keras-vis also divide each channel's
    alphas by their spatial sum, ``alpha / sum_ab(alpha)``, before weighting:
    channels are then weighted by a mean of their positive gradients instead
    of a sum, and the maps differ. ``normalize_alpha=True`` gives that variant
    (a channel whose alphas are all 0 keeps weight 0).

    Args:
        model, layer, batch_size: as :class:`GradCAM`.
        normalize_alpha: divide the alphas by their spatial sum per channel.

    Example:
        >>> from audit.explain import GradCAMPlusPlus
        >>> maps = GradCAMPlusPlus(model)(images, targets=2)    # doctest: +SKIP
        >>> like_tf_keras_vis = GradCAMPlusPlus(model, normalize_alpha=True)(images)  # doctest: +SKIP
    """

    normalize_alpha: bool = False

    def __new__(cls, *args, normalize_alpha: bool = False, **kwargs):
        # The normalised variant is its own class, so its compiled function has its own cache key.
        return super().__new__(_NormalizedGradCAMPlusPlus if normalize_alpha else cls)

    def __init__(self, model, layer=None, *, batch_size: int = DEFAULT_BATCH_SIZE, normalize_alpha: bool = False):
        super().__init__(model, layer, batch_size=batch_size)

    @staticmethod
    def channel_weights(activations, gradients):
        return _plus_plus_weights(activations, gradients, normalize=False)


class _NormalizedGradCAMPlusPlus(GradCAMPlusPlus):
    """``GradCAMPlusPlus(..., normalize_alpha=True)``: alphas divided by their spatial sum per channel."""

    normalize_alpha = True

    @staticmethod
    def channel_weights(activations, gradients):
        return _plus_plus_weights(activations, gradients, normalize=True)


def _plus_plus_weights(activations, gradients, *, normalize: bool):
    """Grad-CAM++ channel weights (B, K); ``normalize`` divides each channel's alphas by their sum."""
    import tensorflow as tf

    g2 = tf.square(gradients)
    g3 = g2 * gradients
    total = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
    alpha = tf.math.divide_no_nan(g2, 2.0 * g2 + total * g3)
    if normalize:
        alpha = tf.math.divide_no_nan(alpha, tf.reduce_sum(alpha, axis=(1, 2), keepdims=True))
    return tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=(1, 2))
