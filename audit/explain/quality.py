"""How good a set of maps is: deletion/insertion curves and agreement with a known region.

:func:`deletion_insertion` needs the model; the region measures are pure numpy
and work on stored maps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from audit.errors import AuditError, whole_number
from audit.explain.base import DEFAULT_MEMORY_MB, Targets, _check_batch, as_model, copies_per_call


def _resized(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    from audit.viz import resize_map

    return maps if maps.shape[1:] == (h, w) else resize_map(maps, (h, w))


def _curve_function(model) -> Callable:
    key = ("audit.explain", "deletion_insertion")
    cached = model.compiled.get(key)
    if cached is not None:
        return cached
    import tensorflow as tf

    def curves(x, fill, ranks, counts, targets):
        shape = tf.shape(x)
        n, s = shape[0], tf.shape(counts)[0]
        hidden = ranks[:, None, :] < counts[None, :, None]  # (B, S, h*w): top-ranked pixels first
        hidden = tf.reshape(hidden, tf.concat([[n, s], shape[1:3], [1]], 0))
        deleted = tf.where(hidden, fill[:, None], x[:, None])
        inserted = tf.where(hidden, x[:, None], fill[:, None])
        flat = tf.concat([[-1], shape[1:]], 0)
        # one forward call for clean and changed copies, so that rounding
        # cannot differ between them (kernels vary with the batch size)
        batch = tf.concat([x, tf.reshape(deleted, flat), tf.reshape(inserted, flat)], 0)
        probs = model.to_probs(model.raw_output(batch))
        clean = probs[:n]
        resolved = tf.where(targets < 0, tf.argmax(clean, axis=-1, output_type=tf.int32), targets)
        rest = tf.reshape(probs[n:], (2, n, s, -1))
        picked = tf.gather(tf.transpose(rest, (1, 0, 2, 3)), resolved, axis=3, batch_dims=1)  # (B, 2, S)
        return picked[:, 0], picked[:, 1], resolved

    spec = tf.TensorSpec((None, *model.input_shape), tf.float32)
    fn = tf.function(
        curves,
        input_signature=[
            spec,
            spec,
            tf.TensorSpec((None, None), tf.int32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((None,), tf.int32),
        ],
        autograph=False,
    )
    model.compiled[key] = fn
    return fn


def deletion_insertion(
    model,
    images,
    maps,
    targets=None,
    *,
    steps: int = 20,
    baseline=None,
    memory_mb: float = DEFAULT_MEMORY_MB,
    return_curves: bool = False,
) -> dict[str, np.ndarray]:
    """Deletion and insertion scores of maps (Petsiuk et al., 2018), batched.

    Pixels are ranked by map value, highest first (see :func:`_pixel_ranks`
    for ties: a blurred copy of the map, then a fixed random order, so that
    blocky maps such as occlusion's carry no top-left bias). Deletion replaces the
    top-ranked ``k`` pixels by ``baseline``; insertion starts from the baseline
    and reveals them; ``k`` goes from 0 to all pixels in ``steps`` equal steps.
    Each score is the area under the target class probability over the
    fraction of pixels changed (trapezoid rule): low deletion and high
    insertion mean the map found what the model uses.

    Args:
        model: a ``keras.Model`` or LoadedModel.
        images: a preprocessed batch (N, H, W, C).
        maps: (N, h, w) maps for those images; resized to (H, W) when needed.
        targets: None (predicted class of each clean image), an int, or N ints.
        steps: number of steps from no pixel to all pixels.
        baseline: None for each image's mean colour, or a number / array
            broadcastable to (H, W, C).
        memory_mb: bound for one forward call's estimated memory.
        return_curves: also return the probability curves, (N, steps + 1) each.

    Returns:
        ``{"deletion": (N,), "insertion": (N,)}`` (plus ``"deletion_curve"``,
        ``"insertion_curve"`` and ``"targets"`` with ``return_curves=True``).

    Example:
        >>> from audit.explain import GradCAM, quality
        >>> maps = GradCAM(model)(images)                                   # doctest: +SKIP
        >>> quality.deletion_insertion(model, images, maps)["deletion"].mean()  # doctest: +SKIP
    """
    model = as_model(model)
    whole_number("steps", steps)
    x = _check_batch(np.asarray(images), model)
    maps = _checked_maps(maps, x)
    chosen = Targets(targets, model.num_classes)
    wanted = chosen.take(len(x))
    chosen.finish()
    fill = _baseline_fill(x, baseline)
    ranks = _pixel_ranks(maps)
    counts = np.round(np.linspace(0, x.shape[1] * x.shape[2], steps + 1)).astype(np.int32)
    deletion, insertion, resolved = _curves(model, x, fill, ranks, counts, wanted, memory_mb)
    out = {"deletion": _area(deletion, steps), "insertion": _area(insertion, steps)}
    if return_curves:
        out.update(deletion_curve=deletion, insertion_curve=insertion, targets=resolved)
    return out


def _checked_maps(maps, x: np.ndarray) -> np.ndarray:
    """(N, H, W) float32 maps for the images ``x``, resized to their size, NaN as 0."""
    n, h, w = x.shape[:3]
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3 or len(maps) != n:
        raise AuditError(f"maps must be (N, h, w) for the {n} images; received shape {maps.shape}")
    return np.nan_to_num(_resized(maps, h, w), nan=0.0)


def _baseline_fill(x: np.ndarray, baseline) -> np.ndarray:
    """The replacement pixels, shaped like ``x``: each image's mean colour, or ``baseline`` broadcast."""
    if baseline is None:
        fill = np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
    else:
        try:
            fill = np.broadcast_to(np.asarray(baseline, np.float32), x.shape)
        except ValueError:
            raise AuditError(
                f"baseline of shape {np.shape(baseline)} does not fit images of shape {x.shape[1:]}"
            ) from None
    return np.ascontiguousarray(fill, np.float32)


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian blur along one axis, edges mirrored (``a b | b a``), so flipping commutes with it."""
    radius = int(4 * sigma + 0.5)  # scipy.ndimage.gaussian_filter's default cut at 4 sigma
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    padded = np.pad(np.eye(n), ((radius, radius), (0, 0)), mode="symmetric")
    rows = np.stack([taps @ padded[i : i + 2 * radius + 1] for i in range(n)])
    return rows / rows.sum(axis=1, keepdims=True)


def tie_break_keys(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two tie-breaking keys of :func:`_pixel_ranks` for (N, H, W) maps, each (N, H*W).

    The blurred map: a separable Gaussian of ``sigma = max(1, min(H, W) / 8)``
    pixels (about an occlusion patch), cut at ``4 sigma``, edges mirrored (as
    ``scipy.ndimage.gaussian_filter(map, sigma, mode="reflect")``),
    computed in float64 and kept in float32 so that values equal up to rounding
    tie exactly. The random key: ``numpy.random.default_rng((H, W)).permutation(H * W)``,
    the same for every image of that size.
    """
    n, h, w = maps.shape
    sigma = max(1.0, min(h, w) / 8)
    blurred = _blur_matrix(h, sigma) @ maps.astype(np.float64) @ _blur_matrix(w, sigma).T
    random = np.random.default_rng((h, w)).permutation(h * w)
    return blurred.astype(np.float32).reshape(n, -1), np.broadcast_to(random, (n, h * w))


def _pixel_ranks(maps: np.ndarray) -> np.ndarray:
    """Rank of each pixel (N, H*W), 0 first: by map value, highest first.

    Ties go to the higher value of the blurred map (a pixel inside a hot region
    before one at its edge), then to a random order fixed per image size (see
    :func:`tie_break_keys`). Neither depends on where the image starts, so
    flipping an image and its map flips the ranks with them (up to the random
    key, which only orders pixels the blur cannot tell apart); ranking ties
    in pixel order instead would take a blocky map's top-left pixels first.
    """
    n = len(maps)
    blurred, random = tie_break_keys(maps)
    order = np.lexsort((random, -blurred, -maps.reshape(n, -1)), axis=-1)
    ranks = np.empty_like(order, dtype=np.int32)
    np.put_along_axis(ranks, order, np.arange(order.shape[1], dtype=np.int32)[None, :], axis=1)
    return ranks


def _curves(model, x, fill, ranks, counts, wanted, memory_mb: float):
    """Deletion and insertion curves (N, S) and resolved targets, in chunks within ``memory_mb``."""
    n = len(x)
    budget = copies_per_call(model, memory_mb)
    per_image = 2 * len(counts) + 1
    images_per_call = max(1, budget // per_image)
    steps_per_call = max(1, min(len(counts), (budget - 1) // 2))
    fn = _curve_function(model)
    deletion = np.zeros((n, len(counts)), np.float64)
    insertion = np.zeros((n, len(counts)), np.float64)
    resolved = wanted.copy()
    for i in range(0, n, images_per_call):
        sl = slice(i, i + images_per_call)
        for j in range(0, len(counts), steps_per_call):
            cols = slice(j, j + steps_per_call)
            d, ins, t = fn(x[sl], fill[sl], ranks[sl], counts[cols], resolved[sl])
            deletion[sl, cols], insertion[sl, cols] = d.numpy(), ins.numpy()
            resolved[sl] = t.numpy()
    return deletion, insertion, resolved


def _area(curves: np.ndarray, steps: int) -> np.ndarray:
    """Trapezoid area under each curve sampled at ``steps`` equal steps over [0, 1]."""
    return (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2 * steps)


def _maps_and_mask(maps, mask) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps, np.float64)
    mask = np.asarray(mask, bool)
    if maps.ndim != 3:
        raise AuditError(f"maps must be (N, h, w); received shape {maps.shape}")
    if mask.shape not in (maps.shape, maps.shape[1:]):
        raise AuditError(f"mask of shape {mask.shape} does not match maps of shape {maps.shape}")
    return np.nan_to_num(maps, nan=0.0), np.broadcast_to(mask, maps.shape)


def region_mass(maps, mask) -> np.ndarray:
    """Fraction of each map's total mass inside a boolean mask, (N,); 0 for an empty map.

    ``mask`` is (h, w) for all maps or (N, h, w), at the maps' size.

    >>> region_mass(np.array([[[1.0, 3.0]]]), np.array([[False, True]])).tolist()
    [0.75]
    """
    maps, mask = _maps_and_mask(maps, mask)
    total = maps.sum(axis=(1, 2))
    inside = (maps * mask).sum(axis=(1, 2))
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def pointing_game(maps, mask) -> np.ndarray:
    """Whether each map's peak (first maximum) lies inside the mask, (N,) bool.

    A map without signal has its peak at pixel (0, 0), so it only scores when
    the mask covers that pixel.
    """
    maps, mask = _maps_and_mask(maps, mask)
    flat = maps.reshape(len(maps), -1).argmax(axis=1)
    return mask.reshape(len(maps), -1)[np.arange(len(maps)), flat]


def half_max_iou(maps, mask) -> np.ndarray:
    """IoU between each map's area at or above half its maximum and the mask, (N,)."""
    maps, mask = _maps_and_mask(maps, mask)
    peak = maps.max(axis=(1, 2), keepdims=True)
    hot = (maps >= 0.5 * peak) & (peak > 0)
    union = (hot | mask).sum(axis=(1, 2))
    inter = (hot & mask).sum(axis=(1, 2))
    return np.divide(inter, union, out=np.zeros(len(maps)), where=union > 0)
