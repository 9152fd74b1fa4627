"""The engine in memory, for the training callbacks: validation data in, predictions, sliced
accuracy, heatmaps and activations out, nothing written.

It runs the pieces a store run runs: batches from :func:`audit.explain.base.iter_batches` (the
explainers' own batching), probabilities from :func:`audit.engine.predict.predict_batch`,
explainers from :func:`audit.engine.explain.build_explainers` (the method registry), slices from
:mod:`audit.metrics.slices`. :class:`LivePipeline` is built once per model, so its compiled
functions are traced once; after the first pass it keeps only the fixed sample and the slicings.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audit.errors import AuditError


def annotation_table(annotations):
    """Annotations as a DataFrame with a fresh 0..N-1 index, or None."""
    if annotations is None:
        return None
    import pandas as pd

    if isinstance(annotations, pd.DataFrame):
        table = annotations.reset_index(drop=True)
    elif isinstance(annotations, Mapping):
        try:
            table = pd.DataFrame({str(k): list(v) for k, v in annotations.items()})
        except (TypeError, ValueError) as e:
            raise AuditError(f"annotations must map column names to equally long sequences ({e})") from None
    else:
        raise AuditError(
            "annotations must be a pandas DataFrame or a dict of columns, one row per validation example. "
            f"Received: annotations of type {type(annotations).__name__}"
        )
    if table.shape[1] == 0:
        raise AuditError("annotations has no columns; pass None for no slices")
    return table


def class_indices(y, num_classes: int) -> np.ndarray:
    """Labels as class indices (N,): from indices, (N, 1) columns or one-hot / probability rows."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    elif y.ndim > 1:
        y = y.reshape(len(y))
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y) & (y == np.round(y))):
            raise AuditError("validation labels must be class indices or one-hot rows; received non-integer values")
        y = np.round(y)
    elif y.dtype.kind not in "iub":
        raise AuditError(f"validation labels must be class indices or one-hot rows; received dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y.min() if y.min() < 0 else y.max())
        raise AuditError(f"validation label {bad} is out of range; the model has {num_classes} classes")
    return y


class LiveData:
    """Validation examples: ``(x, y)`` or ``(x, y, sample_weight)`` arrays, or an iterable that can
    be iterated again each pass (a ``tf.data.Dataset``) of such tuples, batched or single examples.
    Its form is checked here, when the callback is made; shapes when a model reads it."""

    def __init__(self, data) -> None:
        self.arrays: tuple[np.ndarray, np.ndarray] | None = None
        self.iterable: Iterable | None = None
        if isinstance(data, (tuple, list)):
            if len(data) not in (2, 3):
                raise AuditError(
                    "validation_data must be (x, y) or (x, y, sample_weight). "
                    f"Received: a sequence of {len(data)} items"
                )
            x, y = np.asarray(data[0]), np.asarray(data[1])
            if len(x) != len(y):
                raise AuditError(f"validation_data has {len(x)} images but {len(y)} labels")
            self.arrays = (x, y)
        elif isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
            raise AuditError(
                "validation_data must be (x, y) arrays or a tf.data.Dataset of (x, y) batches. "
                f"Received: validation_data of type {type(data).__name__}"
            )
        else:
            self.iterable = data

    def batches(self, model, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(x float32 (B, H, W, C), y as given)`` batches, batched as the explainers batch."""
        from audit.explain.base import iter_batches

        if self.arrays is not None:
            x, y = self.arrays
            start = 0
            for xb in iter_batches(x, model, batch_size):
                yield xb, y[start : start + len(xb)]
                start += len(xb)
            return
        # iter_batches sees the images only; each element's labels wait here, in order, until
        # the batch holding its images comes out (it pulls elements only as it needs them).
        labels: deque = deque()
        for xb in iter_batches(self._images(labels), model, batch_size):
            yield xb, np.stack([labels.popleft() for _ in range(len(xb))])

    def _images(self, labels: deque) -> Iterator[np.ndarray]:
        assert self.iterable is not None  # batches() reads arrays directly; an iterable otherwise
        for element in self.iterable:
            if not isinstance(element, (tuple, list)) or len(element) < 2:
                raise AuditError("validation_data must yield (x, y) or (x, y, sample_weight) tuples")
            x, y = np.asarray(element[0]), np.asarray(element[1])
            labels.extend(y if x.ndim == 4 else [y])  # a batch's labels one by one; a single's as is
            yield x


def keep_stratified(picked: dict[int, list], label: int, item, size: int) -> None:
    """Add ``item`` (one example of class ``label``, arriving in data order) to ``picked`` and keep
    at most ``size`` items in all, as evenly over the classes as their counts allow.

    When one too many are kept, the largest bucket (the highest class on a tie) gives up its latest
    item. A bucket of one is never the largest while some bucket holds two, so every class seen has
    an image whenever there are no more classes than ``size``; each class keeps its first images;
    memory never exceeds ``size + 1`` items; and the choice depends only on the data's order.
    With a fixed quota of ``ceil(size / classes)`` instead, the first classes would use the whole
    sample up (16 images over 10 classes: 2 each for classes 0-7, none for 8 and 9).
    """
    if size <= 0:
        return
    picked.setdefault(label, []).append(item.copy())  # a copy: not a view that keeps the whole batch alive
    if sum(map(len, picked.values())) > size:
        largest = max(picked, key=lambda k: (len(picked[k]), k))
        picked[largest].pop()
        if not picked[largest]:
            del picked[largest]


@dataclass
class LivePipeline:
    """What is built once per model (compiled functions, explainers) and kept between passes
    (the fixed sample, the slicings); nothing else outlives a pass."""

    model: Any  # a LoadedModel
    class_names: list[str]
    data: LiveData
    batch_size: int
    sample_size: int = 0  # images in the fixed sample (0: none)
    annotations: Any = None
    min_slice_size: int = 30
    explainers: dict[str, Any] = field(default_factory=dict)
    activations: Any = None
    count: int | None = None
    labels: np.ndarray | None = None
    fixed_x: np.ndarray | None = None
    fixed_y: np.ndarray | None = None
    columns: list = field(default_factory=list)

    @classmethod
    def build(cls, keras_model, data: LiveData, *, class_names: Sequence[str] | None, methods: Sequence[str] = (),
              layer=None, occlusion_patch: int | None = None, activations: bool = False, **kept) -> LivePipeline:
        """The pipeline for ``keras_model``; ``kept``: batch_size, sample_size, annotations, min_slice_size."""
        from audit.engine.explain import build_explainers
        from audit.explain import Activations, as_model

        loaded = as_model(keras_model)
        names = list(class_names) if class_names else [str(k) for k in range(loaded.num_classes)]
        if len(names) != loaded.num_classes:
            raise AuditError(f"class_names has {len(names)} names but the model has {loaded.num_classes} classes")
        live = cls(model=loaded, class_names=names, data=data, **kept)
        live.explainers = build_explainers(loaded, methods, layer=layer, occlusion_patch=occlusion_patch)
        live.activations = Activations(loaded) if activations else None
        return live

    @property
    def first_pass_done(self) -> bool:
        return self.count is not None

    def trace_counts(self) -> dict[str, int]:
        return self.model.trace_counts()

    def _probs(self, x: np.ndarray) -> np.ndarray:
        from audit.engine.predict import predict_batch

        return predict_batch(self.model.predict_fn(), x)[0]

    def predict_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, C) and labels (N,) of one pass; the first pass also picks the sample."""
        first = self.count is None
        picked: dict[int, list[np.ndarray]] | None = {} if first and self.sample_size else None
        probs, labels = [], []
        for x, y in self.data.batches(self.model, self.batch_size):
            k = class_indices(y, self.model.num_classes)
            probs.append(self._probs(x))
            labels.append(k)
            if picked is not None:
                self._pick(picked, x, k)
        if sum(len(k) for k in labels) == 0:
            raise AuditError(
                "validation_data yielded no examples" + ("" if first else " on this pass (a one-shot generator?); "
                                                         "pass arrays or a tf.data.Dataset")
            )
        probs_all, labels_all = np.concatenate(probs), np.concatenate(labels)
        if first:
            self._first_pass(labels_all, picked or {})
        elif self.annotations is not None and self.labels is not None and not np.array_equal(labels_all, self.labels):
            raise AuditError(
                "validation_data yields its examples in a different order on each pass (shuffled?); "
                "annotations need a fixed order: do not shuffle the validation dataset"
            )
        return probs_all, labels_all

    def _pick(self, picked: dict[int, list[np.ndarray]], x: np.ndarray, labels: np.ndarray) -> None:
        """The fixed sample, stratified by class in one pass: every class seen keeps its first
        images, as many as an even share of ``sample_size`` allows (:func:`keep_stratified`)."""
        for image, label in zip(x, labels):
            keep_stratified(picked, int(label), image, self.sample_size)

    def _first_pass(self, labels: np.ndarray, picked: dict[int, list[np.ndarray]]) -> None:
        from audit.metrics.slices import make_slice_column

        self.count, self.labels = len(labels), labels
        if picked:
            order = sorted(picked)
            self.fixed_x = np.stack([img for k in order for img in picked[k]]).astype(np.float32)
            self.fixed_y = np.concatenate([np.full(len(picked[k]), k, np.int64) for k in order])
        if self.annotations is None:
            return
        if len(self.annotations) != self.count:
            raise AuditError(
                f"annotations has {len(self.annotations)} rows but validation_data has {self.count} examples"
            )
        for name in self.annotations.columns:
            column = make_slice_column(name, self.annotations[name], builtin=False,
                                       min_slice_size=self.min_slice_size, notes=[])
            if isinstance(column, str):
                warnings.warn(f"annotation {name!r} is not sliced: {column}", stacklevel=3)
            else:
                self.columns.append(column)

    def sliced(self, labels: np.ndarray, correct: np.ndarray) -> tuple[float, tuple[float, float], list[dict]]:
        """Accuracy, its 95% Wilson interval, and the slice rows of every sliced annotation."""
        from audit.metrics.intervals import wilson
        from audit.metrics.slices import slice_counts, slice_rows

        lo, hi = wilson(int(correct.sum()), len(correct))
        rows = []
        for column in self.columns:
            counts = slice_counts(column, labels, correct, self.model.num_classes)
            rows += slice_rows(column, counts, min_slice_size=self.min_slice_size)
        return float(correct.mean()), (float(lo), float(hi)), rows

    def has_sample(self) -> bool:
        return self.fixed_x is not None and len(self.fixed_x) > 0

    def sample_maps(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Whether the model gets each fixed-sample image right now, and each method's maps of them
        (for the predicted class)."""
        x = self.fixed_x
        assert x is not None, "sample_maps needs the fixed sample (check has_sample() first)"
        correct = self._probs(x).argmax(axis=1) == self.fixed_y
        return correct, {method: explainer(x) for method, explainer in self.explainers.items()}

    def sample_activations(self) -> dict[str, np.ndarray]:
        return self.activations(self.fixed_x)
