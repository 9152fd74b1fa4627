"""Occlusion sensitivity: how much the target probability drops when a patch is covered."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from audit.errors import AuditError, whole_number
from audit.explain.base import DEFAULT_MEMORY_MB, Explainer, as_model, copies_per_call

# Probabilities of identical inputs still differ by a few float32 ulps across
# batch rows (vectorised vs remainder code paths); drops within 4 ulps of 1.0
# are rounding, and counting them would turn "no effect" into a noisy map.
ROUNDING = 2.0**-21


def patch_starts(length: int, patch: int, stride: int) -> np.ndarray:
    """Start offsets along one axis; the last patch is moved in so the far edge is covered.

    >>> patch_starts(10, 4, 4).tolist()
    [0, 4, 6]
    """
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return np.asarray(starts, np.int32)


def default_patch(input_shape) -> int:
    """Patch side used when none is given: about 1/8 of the shorter image side."""
    return max(2, min(input_shape[:2]) // 8)


class OcclusionSensitivity(Explainer):
    """Occlusion sensitivity (Zeiler & Fergus, 2014), batched through one compiled forward.

    Every square patch of ``patch_size`` pixels, moved by ``stride`` along both
    axes (the last row and column of patches are shifted in to reach the
    edges), is replaced by ``baseline``. A pixel's raw value is the drop in the
    target class probability from the unoccluded image, averaged over the
    patches that cover it; the map is that value rescaled to [0, 1] per image.
    A drop within float32 rounding (``ROUNDING``, about 5e-7) counts as 0, so
    a patch that does not change the score contributes exactly nothing.

    Patched copies are built inside the compiled function, for several images
    at once, in chunks holding at most ``memory_mb`` of estimated activations.

    Args:
        model: a ``keras.Model`` or a LoadedModel (a SavedModel works too).
        patch_size: side of the square patch in pixels (clipped to the image).
        stride: step between patches; default ``patch_size // 2``.
        baseline: the fill: None for each image's mean colour, a number, or an
            array broadcastable to ``(H, W, C)`` (e.g. one value per channel).
        memory_mb: bound for one forward call's estimated memory.

    Example:
        >>> from audit.explain import OcclusionSensitivity
        >>> occ = OcclusionSensitivity(model, patch_size=8)            # doctest: +SKIP
        >>> maps = occ(images, targets=labels)                         # doctest: +SKIP
        >>> drops = occ(images, targets=labels, normalize=False)       # doctest: +SKIP
    """

    def __init__(self, model, patch_size: int = 8, stride: int | None = None, baseline=None, *,
                 memory_mb: float = DEFAULT_MEMORY_MB):
        self.model = as_model(model)
        self.patch_size = whole_number("patch_size", patch_size)
        self.stride = whole_number("stride", max(1, self.patch_size // 2) if stride is None else stride)
        self.baseline = None if baseline is None else np.asarray(baseline, np.float32)
        self.max_copies = copies_per_call(self.model, memory_mb)
        self._grid: dict = {}

    @property
    def batch_size(self) -> int:
        return max(1, self.max_copies // (self.patches_for(*self._known_hw()) + 1))

    def _known_hw(self) -> tuple[int, int]:
        h, w = self.model.input_shape[:2]
        return h or self.patch_size, w or self.patch_size

    def patches_for(self, h: int, w: int) -> int:
        """Number of patches per image of size (h, w)."""
        return len(self._layout(h, w)[0])

    def _layout(self, h: int, w: int):
        """Patch corners (P, 2), patch side, and how many patches cover each pixel (h, w)."""
        if (h, w) not in self._grid:
            p = min(self.patch_size, h, w)
            rows, cols = patch_starts(h, p, self.stride), patch_starts(w, p, self.stride)
            corners = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2).astype(np.int32)
            row_cover = np.zeros(h, np.float32)
            col_cover = np.zeros(w, np.float32)
            for r in rows:
                row_cover[r : r + p] += 1
            for c in cols:
                col_cover[c : c + p] += 1
            self._grid[(h, w)] = (corners, p, np.outer(row_cover, col_cover))
        return self._grid[(h, w)]

    def _fill(self, x: np.ndarray) -> np.ndarray:
        if self.baseline is None:
            return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
        try:
            return np.broadcast_to(self.baseline, x.shape)
        except ValueError:
            raise AuditError(
                f"baseline of shape {self.baseline.shape} does not fit images of shape {x.shape[1:]}"
            ) from None

    def _function(self) -> Callable:
        key = ("audit.explain", "occlusion")
        cached = self.model.compiled.get(key)
        if cached is not None:
            return cached
        import tensorflow as tf

        model = self.model

        def drops(x, fill, corners, patch, targets):
            h, w = tf.shape(x)[1], tf.shape(x)[2]
            # An extra first "patch" above the image covers nothing: its copy is
            # the clean image, scored in the same forward call as the patched
            # ones so that rounding is alike (kernels take other code paths at
            # other batch sizes), with no concatenation copy.
            corners = tf.concat([tf.fill((1, 2), -patch), corners], 0)
            top, left = corners[:, :1], corners[:, 1:]
            rows, cols = tf.range(h)[None, :], tf.range(w)[None, :]
            in_rows = (rows >= top) & (rows < top + patch)
            in_cols = (cols >= left) & (cols < left + patch)
            masks = in_rows[:, :, None] & in_cols[:, None, :]  # (1 + P, h, w)
            patched = tf.where(masks[None, :, :, :, None], fill[:, None], x[:, None])  # (B, 1 + P, h, w, C)
            n, p = tf.shape(x)[0], tf.shape(corners)[0]
            probs = model.to_probs(model.raw_output(tf.reshape(patched, tf.concat([[-1], tf.shape(x)[1:]], 0))))
            probs = tf.reshape(probs, (n, p, -1))
            clean = probs[:, 0]
            resolved = tf.where(targets < 0, tf.argmax(clean, axis=-1, output_type=tf.int32), targets)
            scored = tf.gather(probs, resolved, axis=2, batch_dims=1)  # (B, 1 + P)
            drop = scored[:, :1] - scored[:, 1:]
            drop = tf.where(tf.abs(drop) <= ROUNDING, 0.0, drop)
            return tf.einsum("bp,phw->bhw", drop, tf.cast(masks[1:], tf.float32)), resolved

        shape = (None, *model.input_shape)
        fn = tf.function(
            drops,
            input_signature=[
                tf.TensorSpec(shape, tf.float32),
                tf.TensorSpec(shape, tf.float32),
                tf.TensorSpec((None, 2), tf.int32),
                tf.TensorSpec((), tf.int32),
                tf.TensorSpec((None,), tf.int32),
            ],
            autograph=False,
        )
        model.compiled[key] = fn
        return fn

    @property
    def trace_count(self) -> int:
        return self._function().experimental_get_tracing_count()  # type: ignore[attr-defined]

    def _explain_batch(self, x, targets):
        n, h, w = x.shape[:3]
        corners, patch, cover = self._layout(h, w)
        fn = self._function()
        fill = np.ascontiguousarray(self._fill(x), np.float32)
        total = np.zeros((n, h, w), np.float32)
        images_per_call = max(1, self.max_copies // (len(corners) + 1))
        patches_per_call = max(1, min(len(corners), self.max_copies - 1))
        for i in range(0, n, images_per_call):
            xi, fi = x[i : i + images_per_call], fill[i : i + images_per_call]
            ti = targets[i : i + images_per_call]
            for j in range(0, len(corners), patches_per_call):
                summed, resolved = fn(xi, fi, corners[j : j + patches_per_call], patch, ti)
                total[i : i + images_per_call] += summed.numpy()
                ti = resolved.numpy()  # later patch chunks must score the same class
        return total / cover
