"""tf-explain's gradient family, per image, on any Keras 3 classifier (optional extra).

tf-explain 0.3.1 computes these attributions in small core functions
(``compute_gradients``, ``generate_interpolations``, ``get_integrated_gradients``)
that take any callable as the model. We hand them a score function built from
the model, which is what makes them work where tf-explain alone fails (loaded
Sequential models have no ``model.output``; heads with a built-in softmax are
not stripped), and we return per-image maps instead of one mosaic.

Departures from tf-explain, each because its arithmetic is wrong for the case:

* The score is the target class's pre-activation score (as for Grad-CAM), not
  the softmax probability.
* Images in one batch may have different targets: the score function reads
  each image's target from a variable, so one trace serves every class mix.
* Maps are ``sum over channels of |attribution|`` rescaled to [0, 1] per image.
  tf-explain's ``transform_to_normalized_grayscale`` casts standardised
  (partly negative) values to uint8, which wraps negatives around to bright.
* Integrated gradients are multiplied by ``(input - baseline)``;
  tf-explain returns only the mean path gradient, which breaks completeness.
* SmoothGrad averages the gradient of the class score over noisy copies, as in
  the paper; tf-explain differentiates a cross-entropy of the model's output
  (``log p``, and meaningless on logits), reads ``model.output`` and draws
  unseeded noise with an absolute std of 1.0 whatever the input range. Here
  the std is ``noise`` times each image's value range, from a seeded generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from audit.errors import AuditError, whole_number
from audit.explain.base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MEMORY_MB,
    Explainer,
    Targets,
    as_model,
    class_scores,
    copies_per_call,
)

EXTRA_MESSAGE = (
    "the gradient explainers need the optional extra 'explain': "
    "pip install 'keras-audit[explain]' (tf-explain 0.3.1 with opencv-python-headless)"
)


def _tf_explain() -> dict[str, Any]:
    try:
        from tf_explain.core.gradients_inputs import GradientsInputs
        from tf_explain.core.integrated_gradients import IntegratedGradients
        from tf_explain.core.vanilla_gradients import VanillaGradients
    except ImportError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AuditError(f"{EXTRA_MESSAGE}; import failed: {reason}") from None
    return {"vanilla": VanillaGradients, "inputs": GradientsInputs, "integrated": IntegratedGradients}


class _TargetScore:
    """``x -> (B, 1)`` pre-activation score of each image's target, read from a variable."""

    def __init__(self, model):
        import tensorflow as tf

        from audit.io.models import pre_activation

        self._pre_activation = pre_activation
        self.model = model
        self.head = model.head_layer()
        self.targets = tf.Variable(np.zeros(0, np.int32), shape=tf.TensorShape([None]), trainable=False)

    def __call__(self, x):
        import tensorflow as tf

        # traced inside tf-explain's tf.function: hold the model's lock while the head is swapped
        with self.model.lock, self._pre_activation(self.head):
            scores = self.model.keras_model(x, training=False)
        scores = class_scores(scores, self.model.output_kind)
        return tf.gather(scores, self.targets, batch_dims=1)[:, None]


class _GradientFamily(Explainer):
    """Shared plumbing: predicted targets, per-image score function, channel reduction."""

    copies_per_image = 1
    batch_size: int

    def __init__(self, model, *, batch_size: int = DEFAULT_BATCH_SIZE, memory_mb: float = DEFAULT_MEMORY_MB):
        self.core = _tf_explain()
        self.model = as_model(model)
        self.model.require_layers(type(self).__name__)
        self.score = _TargetScore(self.model)
        self.max_copies = copies_per_call(self.model, memory_mb)
        self.batch_size = max(1, min(batch_size, self.max_copies // self.copies_per_image))

    def _signed(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        if (targets < 0).any():
            predicted = self.model.predict_fn()(x).numpy().argmax(axis=-1).astype(np.int32)
            targets = np.where(targets < 0, predicted, targets)
        self.score.targets.assign(np.repeat(targets, self.copies_per_image))
        return np.asarray(self._attribute(x, tf.constant(0, tf.int32)))

    def _explain_batch(self, x, targets):
        return np.abs(self._signed(x, targets)).sum(axis=-1)

    def attributions(self, images, targets=None) -> np.ndarray:
        """Signed attributions (N, H, W, C), before the channel reduction of the maps."""
        chosen = Targets(targets, self.model.num_classes)
        parts = [self._signed(x, chosen.take(len(x))) for x in self._batches(images)]
        chosen.finish()
        return np.concatenate(parts) if parts else np.zeros((0, *self.model.input_shape), np.float32)

    def _attribute(self, x, column):
        """Attributions (B, H, W, C) for the score in ``column`` of the score function."""
        return self.core["vanilla"].compute_gradients(x, self.score, column)


class VanillaGradients(_GradientFamily):
    """Saliency (Simonyan et al., 2013): ``|d score / d input|`` summed over channels.

    Example:
        >>> from audit.explain import VanillaGradients
        >>> maps = VanillaGradients(model)(images, targets)    # doctest: +SKIP
    """


class GradientsInputs(_GradientFamily):
    """Gradient times input: ``|x * d score / d x|`` summed over channels.

    Example:
        >>> from audit.explain import GradientsInputs
        >>> maps = GradientsInputs(model)(images)    # doctest: +SKIP
    """

    def _attribute(self, x, column):
        return self.core["inputs"].compute_gradients(x, self.score, column)


class SmoothGrad(_GradientFamily):
    """SmoothGrad (Smilkov et al., 2017): mean class-score gradient over noisy copies.

    Args:
        num_samples: noisy copies per image.
        noise: noise std as a fraction of each image's value range (max - min);
            the paper finds 0.1 to 0.2 works best.
        seed: seed of the noise, so a run is reproducible.

    Example:
        >>> from audit.explain import SmoothGrad
        >>> maps = SmoothGrad(model, num_samples=16)(images, targets)    # doctest: +SKIP
    """

    def __init__(self, model, *, num_samples: int = 16, noise: float = 0.15, seed: int = 0, **kwargs):
        whole_number("num_samples", num_samples)
        if noise < 0:
            raise AuditError(f"noise must be >= 0 (a fraction of the value range); received: noise={noise!r}")
        self.copies_per_image = int(num_samples)
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        super().__init__(model, **kwargs)

    def _attribute(self, x, column):
        k = self.copies_per_image
        spread = (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))) * self.noise
        repeated = np.repeat(x, k, axis=0)
        noise = self.rng.standard_normal(repeated.shape, dtype=np.float32)
        noisy = repeated + noise * np.repeat(spread, k)[:, None, None, None]
        grads = self.core["vanilla"].compute_gradients(noisy.astype(np.float32), self.score, column)
        return np.asarray(grads).reshape(len(x), k, *x.shape[1:]).mean(axis=1)


class IntegratedGradients(_GradientFamily):
    """Integrated gradients (Sundararajan et al., 2017) from a black (all-zero) baseline.

    ``(x - 0) * mean of d score / d input`` along the straight path, at
    ``steps`` points including both ends (tf-explain's path). With enough
    steps the attributions sum to ``score(x) - score(0)``.

    Example:
        >>> from audit.explain import IntegratedGradients
        >>> maps = IntegratedGradients(model, steps=32)(images)    # doctest: +SKIP
    """

    def __init__(self, model, *, steps: int = 20, **kwargs):
        if not isinstance(steps, (int, np.integer)) or steps < 2:
            raise AuditError(f"steps must be an int >= 2; received: steps={steps!r}")
        self.copies_per_image = int(steps)
        super().__init__(model, **kwargs)

    def _attribute(self, x, column):
        core = self.core["integrated"]
        path = core.generate_interpolations(x, self.copies_per_image).astype(np.float32)
        mean_grads = core.get_integrated_gradients(path, self.score, column, self.copies_per_image)
        return x * np.asarray(mean_grads)
