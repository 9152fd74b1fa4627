"""Keras callbacks that audit a model while it trains, into TensorBoard.

Add one line to ``model.fit`` and the audit shows up next to the usual
training curves, as run ``audit`` beside Keras' ``train`` and ``validation``:

>>> from audit.callbacks import AuditCallback                         # doctest: +SKIP
>>> audit = AuditCallback((x_val, y_val), annotations=val_table, log_dir="logs")  # doctest: +SKIP
>>> model.fit(x, y, epochs=20, callbacks=[audit, keras.callbacks.TensorBoard("logs")])  # doctest: +SKIP

Every ``freq`` epochs (at epochs 0, freq, 2 freq, ... like Keras' own
``*_freq`` arguments; the step is the epoch) :class:`AuditCallback` writes, on
the validation data:

* ``pr_curves``: ``pr/<class>``, one-vs-rest PR curve per class;
* ``slices``: ``metrics/accuracy`` and ``slices/<annotation>/<value>``, each
  with ``/ci_low`` and ``/ci_high`` (95% Wilson interval);
* ``images``: ``<method>/<class>``, heatmap overlays of a fixed sample of
  ``num_images`` validation images spread over the classes (one tag per true
  class), framed green when the model gets them right at that epoch and red
  when it does not;
* ``histograms``: ``activations/<layer>`` on the same fixed sample.

The summaries are made by the same functions as ``keras-audit tensorboard``
(:mod:`audit.views.tensorboard`), so live and finished audits read alike.
:class:`GradCAMCallback`, :class:`PRCurveCallback` and
:class:`SlicedMetricsCallback` each write one of those kinds.

Costs stay flat over epochs: the explainers and the prediction function are
compiled once per model (``trace_counts`` shows it), the fixed sample is
copied once, and nothing else is kept between epochs.

The classes subclass ``keras.callbacks.Callback``, so importing this module
imports Keras (whoever imports it is training with Keras already);
TensorBoard's summary code is imported at the first audit. The explainers need
Keras' TensorFlow backend.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import keras
import numpy as np

from audit.errors import AuditError
from audit.views import tensorboard as tb

SUMMARIES = ("images", "pr_curves", "slices", "histograms")
DEFAULT_RUN = "audit"


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AuditError(f"{name} must be a positive int. Received: {name}={value!r}")
    return int(value)


def _annotation_table(annotations):
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


def _class_indices(y, num_classes: int) -> np.ndarray:
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


class _ValidationData:
    """Validation examples streamed as ``(x float32 (B, ...), y as given)`` batches.

    Accepts ``(x, y)`` or ``(x, y, sample_weight)`` arrays, or an iterable
    that can be iterated again each epoch (a ``tf.data.Dataset``) of such
    tuples, batched or single examples.
    """

    def __init__(self, data, batch_size: int):
        self.batch_size = batch_size
        self.arrays: tuple[np.ndarray, np.ndarray] | None = None
        self.iterable = None
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

    def batches(self, image_rank: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.arrays is not None:
            x, y = self.arrays
            for i in range(0, len(x), self.batch_size):
                yield np.asarray(x[i : i + self.batch_size], np.float32), y[i : i + self.batch_size]
            return
        singles: list[tuple[np.ndarray, np.ndarray]] = []
        for element in self.iterable:
            if not isinstance(element, (tuple, list)) or len(element) < 2:
                raise AuditError("validation_data must yield (x, y) or (x, y, sample_weight) tuples")
            x, y = np.asarray(element[0]), np.asarray(element[1])
            if x.ndim == image_rank:  # an unbatched dataset: group its examples
                singles.append((x, y))
                if len(singles) == self.batch_size:
                    yield np.stack([s[0] for s in singles]).astype(np.float32), np.stack([s[1] for s in singles])
                    singles = []
                continue
            yield x.astype(np.float32), y
        if singles:
            yield np.stack([s[0] for s in singles]).astype(np.float32), np.stack([s[1] for s in singles])


@dataclass
class _Prepared:
    """What is built once per model: compiled functions, the fixed sample, the slicings."""

    loaded: Any
    class_names: list[str]
    predict: Any
    explainers: dict[str, Any] = field(default_factory=dict)
    activations: Any = None
    count: int | None = None
    labels: np.ndarray | None = None
    fixed_x: np.ndarray | None = None
    fixed_y: np.ndarray | None = None
    columns: list = field(default_factory=list)


class AuditCallback(keras.callbacks.Callback):
    """Audit the model on validation data every ``freq`` epochs, into TensorBoard.

    Args:
        validation_data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)``
            batches, preprocessed as the model expects; ``y`` as class indices
            or one-hot rows. A dataset is read once per audited epoch; with
            ``annotations`` it must yield the examples in the same order
            every time (do not shuffle it).
        annotations: a DataFrame (or dict of columns) with one row per
            validation example, in order; each column is sliced as in
            ``metrics.json`` (categories per value, numbers in quantile bins).
        log_dir: the TensorBoard log folder; this callback writes the run
            ``log_dir/<run_name>``.
        freq: audit at epochs 0, freq, 2 freq, ...
        explainers: heatmap methods for the overlays: ``"gradcam"``,
            ``"gradcam++"``, ``"occlusion"``.
        num_images: size of the fixed sample shown as overlays (spread over the classes).
        class_names: one name per model output class; default ``"0"``, ``"1"``, ...
        summaries: which of ``SUMMARIES`` to write.
        layer: the Grad-CAM layer (name, ``"backbone/conv"`` or object); None: the last 4-D layer.
        occlusion_patch: occlusion patch side; None: about 1/8 of the shorter image side.
        min_slice_size: numbers are binned into quantiles of at least this many examples.
        batch_size: validation examples per prediction call.
        run_name: the run folder under ``log_dir``.

    Example:
        >>> audit = AuditCallback((x_val, y_val), annotations={"site": sites}, log_dir="logs",
        ...                       explainers=("gradcam", "occlusion"), class_names=["cat", "dog"])  # doctest: +SKIP
        >>> model.fit(x, y, epochs=10, callbacks=[audit])                   # doctest: +SKIP
        >>> audit.audit(step=10)        # once more after training          # doctest: +SKIP
    """

    def __init__(
        self,
        validation_data,
        annotations=None,
        log_dir: str | Path = "logs",
        freq: int = 1,
        explainers: Sequence[str] | str = ("gradcam",),
        num_images: int = 16,
        class_names: Sequence[str] | None = None,
        *,
        summaries: Sequence[str] = SUMMARIES,
        layer=None,
        occlusion_patch: int | None = None,
        min_slice_size: int = 30,
        batch_size: int = 64,
        run_name: str = DEFAULT_RUN,
    ):
        super().__init__()
        from audit.explain import EXPLAINERS

        self.freq = _positive_int("freq", freq)
        self.num_images = _positive_int("num_images", num_images)
        self.min_slice_size = _positive_int("min_slice_size", min_slice_size)
        self.batch_size = _positive_int("batch_size", batch_size)
        if occlusion_patch is not None:
            self.occlusion_patch = _positive_int("occlusion_patch", occlusion_patch)
        else:
            self.occlusion_patch = None
        summaries = (summaries,) if isinstance(summaries, str) else tuple(summaries)
        unknown = [s for s in summaries if s not in SUMMARIES]
        if unknown or not summaries:
            raise AuditError(f"summaries must be some of {', '.join(SUMMARIES)}. Received: summaries={summaries!r}")
        self.summaries = summaries
        explainers = (explainers,) if isinstance(explainers, str) else tuple(explainers)
        unknown = [e for e in explainers if e not in EXPLAINERS]
        if unknown:
            raise AuditError(f"unknown explainer(s) {unknown}; choose from {', '.join(EXPLAINERS)}")
        self.explainers = explainers
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.layer = layer
        self.log_dir = Path(log_dir)
        if not run_name or "/" in str(run_name):
            raise AuditError(f"run_name must be a folder name. Received: run_name={run_name!r}")
        self.run_name = str(run_name)
        self.annotations = _annotation_table(annotations)
        self.validation = _ValidationData(validation_data, self.batch_size)
        self._state: _Prepared | None = None
        self._writer = None
        self._for_model = None

    # -- Keras hooks ---------------------------------------------------------------------
    def set_model(self, model):
        if model is not self._for_model:
            self._state = None  # compiled functions belong to one model
        self._for_model = model
        super().set_model(model)

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.freq == 0:
            self.audit(step=epoch)

    def on_train_end(self, logs=None):
        self.close()

    # -- public --------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        """The run folder this callback writes."""
        return self.log_dir / self.run_name

    def audit(self, step: int) -> None:
        """Write every chosen summary for the model as it is now, at ``step``."""
        state = self._prepare()
        want = set(self.summaries)
        probs = labels = None
        if want & {"pr_curves", "slices"} or state.count is None:
            probs, labels = self._predict_all(state)
        with self._summary_writer().as_default():
            if "pr_curves" in want:
                tb.write_pr_curves(labels, probs, state.class_names, step)
            if "slices" in want:
                self._write_slices(state, labels, probs.argmax(axis=1) == labels, step)
            if "images" in want and state.fixed_x is not None and len(state.fixed_x):
                self._write_overlays(state, step)
            if "histograms" in want and state.activations is not None and state.fixed_x is not None:
                tb.write_histograms(state.activations(state.fixed_x), step)
        self._writer.flush()

    def trace_counts(self) -> dict[str, int]:
        """How often each compiled function of the model was traced (stays put across epochs)."""
        return {} if self._state is None else self._state.loaded.trace_counts()

    def close(self) -> None:
        """Close the summary writer (a later audit opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- internals -----------------------------------------------------------------------
    def _summary_writer(self):
        if self._writer is None:
            import tensorflow as tf

            self.log_path.mkdir(parents=True, exist_ok=True)
            self._writer = tf.summary.create_file_writer(str(self.log_path))
        return self._writer

    def _prepare(self) -> _Prepared:
        if self._state is not None:
            return self._state
        if keras.backend.backend() != "tensorflow":
            raise AuditError(
                f"AuditCallback needs Keras' TensorFlow backend; this Keras runs {keras.backend.backend()}"
            )
        if self.model is None:
            raise AuditError("AuditCallback has no model; pass it to model.fit(callbacks=[...]) first")
        from audit.explain import EXPLAINERS, Activations, as_model
        from audit.explain.occlusion import default_patch

        loaded = as_model(self.model)
        names = self.class_names or [str(k) for k in range(loaded.num_classes)]
        if len(names) != loaded.num_classes:
            raise AuditError(
                f"class_names has {len(names)} names but the model has {loaded.num_classes} classes"
            )
        state = _Prepared(loaded=loaded, class_names=names, predict=loaded.predict_fn())
        if "images" in self.summaries:
            for method in self.explainers:
                if method == "occlusion":
                    patch = self.occlusion_patch or default_patch(loaded.input_shape)
                    state.explainers[method] = EXPLAINERS[method](loaded, patch_size=patch)
                else:
                    state.explainers[method] = EXPLAINERS[method](loaded, layer=self.layer)
        if "histograms" in self.summaries:
            state.activations = Activations(loaded)
        self._state = state
        return state

    def _predict_all(self, state: _Prepared) -> tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        first = state.count is None
        sample = first and bool({"images", "histograms"} & set(self.summaries))
        quota = math.ceil(self.num_images / state.loaded.num_classes)
        picked: dict[int, list[np.ndarray]] = {}
        probs, labels = [], []
        rank = len(state.loaded.input_shape)
        for x, y in self.validation.batches(rank):
            k = _class_indices(y, state.loaded.num_classes)
            probs.append(state.predict(tf.constant(x)).numpy())
            labels.append(k)
            if sample:
                for image, label in zip(x, k):
                    bucket = picked.setdefault(int(label), [])
                    if len(bucket) < quota and sum(map(len, picked.values())) < self.num_images:
                        bucket.append(image)
        count = sum(len(k) for k in labels)
        if count == 0:
            raise AuditError(
                "validation_data yielded no examples" + ("" if first else " on this pass (a one-shot generator?); "
                                                         "pass arrays or a tf.data.Dataset")
            )
        probs_all, labels_all = np.concatenate(probs), np.concatenate(labels)
        if first:
            self._first_pass(state, labels_all, picked)
        elif self.annotations is not None and not np.array_equal(labels_all, state.labels):
            raise AuditError(
                "validation_data yields its examples in a different order on each pass (shuffled?); "
                "annotations need a fixed order: do not shuffle the validation dataset"
            )
        return probs_all, labels_all

    def _first_pass(self, state: _Prepared, labels: np.ndarray, picked: dict[int, list[np.ndarray]]) -> None:
        from audit.metrics.slices import make_slice_column

        state.count, state.labels = len(labels), labels
        if picked:
            order = sorted(picked)
            state.fixed_x = np.stack([img for k in order for img in picked[k]]).astype(np.float32)
            state.fixed_y = np.concatenate([np.full(len(picked[k]), k, np.int64) for k in order])
        if self.annotations is None:
            return
        if len(self.annotations) != state.count:
            raise AuditError(
                f"annotations has {len(self.annotations)} rows but validation_data has {state.count} examples"
            )
        for name in self.annotations.columns:
            column = make_slice_column(name, self.annotations[name], builtin=False,
                                       min_slice_size=self.min_slice_size, notes=[])
            if isinstance(column, str):
                warnings.warn(f"annotation {name!r} is not sliced: {column}", stacklevel=2)
            else:
                state.columns.append(column)

    def _write_slices(self, state: _Prepared, labels: np.ndarray, correct: np.ndarray, step: int) -> None:
        from audit.metrics.intervals import wilson
        from audit.metrics.slices import slice_counts, slice_rows

        lo, hi = wilson(int(correct.sum()), len(correct))
        tb.write_scalars(tb.with_interval("metrics/accuracy", float(correct.mean()), (float(lo), float(hi))), step)
        rows = []
        for column in state.columns:
            counts = slice_counts(column, labels, correct, state.loaded.num_classes)
            rows += slice_rows(column, counts, min_slice_size=self.min_slice_size)
        tb.write_slice_scalars(rows, step)

    def _write_overlays(self, state: _Prepared, step: int) -> None:
        import tensorflow as tf

        x, y = state.fixed_x, state.fixed_y
        correct = state.predict(tf.constant(x)).numpy().argmax(axis=1) == y
        for method, explainer in state.explainers.items():
            maps = explainer(x)
            for k in np.unique(y):
                mask = y == k
                name = state.class_names[k]
                description = (
                    f"{method} heatmaps (for the predicted class) of {int(mask.sum())} fixed validation images of "
                    f"true class **{tb.md_text(name)}**; the frame is green when the prediction is right, red when wrong."
                )
                tb.write_images(f"{method}/{name}", tb.overlay_images(x[mask], maps[mask], correct[mask]), step,
                                description)


class GradCAMCallback(AuditCallback):
    """Heatmap overlays of a fixed validation sample every ``freq`` epochs (``<method>/<class>``).

    Arguments as :class:`AuditCallback`; ``method`` is ``"gradcam"``,
    ``"gradcam++"`` or ``"occlusion"``. Several single-purpose callbacks in
    one ``fit`` need distinct ``run_name`` values (or use :class:`AuditCallback`
    with ``summaries=...``), so each run folder has one writer.

    Example:
        >>> model.fit(x, y, epochs=5, callbacks=[GradCAMCallback((x_val, y_val), num_images=8)])  # doctest: +SKIP
    """

    def __init__(self, validation_data, log_dir: str | Path = "logs", freq: int = 1, num_images: int = 16,
                 class_names: Sequence[str] | None = None, *, method: str = "gradcam", layer=None,
                 batch_size: int = 64, run_name: str = DEFAULT_RUN):
        super().__init__(validation_data, log_dir=log_dir, freq=freq, explainers=(method,), num_images=num_images,
                         class_names=class_names, summaries=("images",), layer=layer, batch_size=batch_size,
                         run_name=run_name)


class PRCurveCallback(AuditCallback):
    """One-vs-rest PR curve per class on the validation data every ``freq`` epochs (``pr/<class>``).

    Example:
        >>> model.fit(x, y, epochs=5, callbacks=[PRCurveCallback(val_ds, class_names=names)])  # doctest: +SKIP
    """

    def __init__(self, validation_data, log_dir: str | Path = "logs", freq: int = 1,
                 class_names: Sequence[str] | None = None, *, batch_size: int = 64, run_name: str = DEFAULT_RUN):
        super().__init__(validation_data, log_dir=log_dir, freq=freq, class_names=class_names,
                         summaries=("pr_curves",), batch_size=batch_size, run_name=run_name)


class SlicedMetricsCallback(AuditCallback):
    """Accuracy overall and per annotation value, with 95% intervals, every ``freq`` epochs.

    Tags: ``metrics/accuracy`` and ``slices/<annotation>/<value>``, each with
    ``/ci_low`` and ``/ci_high``.

    Example:
        >>> cb = SlicedMetricsCallback((x_val, y_val), annotations={"background": bg})  # doctest: +SKIP
        >>> model.fit(x, y, epochs=5, callbacks=[cb])                                  # doctest: +SKIP
    """

    def __init__(self, validation_data, annotations, log_dir: str | Path = "logs", freq: int = 1,
                 class_names: Sequence[str] | None = None, *, min_slice_size: int = 30, batch_size: int = 64,
                 run_name: str = DEFAULT_RUN):
        if annotations is None:
            raise AuditError("SlicedMetricsCallback needs annotations: a DataFrame or dict of columns")
        super().__init__(validation_data, annotations=annotations, log_dir=log_dir, freq=freq,
                         class_names=class_names, summaries=("slices",), min_slice_size=min_slice_size,
                         batch_size=batch_size, run_name=run_name)
