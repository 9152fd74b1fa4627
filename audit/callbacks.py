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
  ``num_images`` validation images stratified by class (one tag per true
  class), framed green when the model gets them right at that epoch and red
  when it does not;
* ``histograms``: ``activations/<layer>`` on the same fixed sample.

The summaries are made by the same functions as ``keras-audit tensorboard``
(:mod:`audit.views.tensorboard`), and the numbers by the engine's in-memory
pipeline (:mod:`audit.engine.live`: the same batching, explainers from the
method registry and prediction function as a store run), so live and finished
audits read alike. These classes hold only the Keras hooks, the schedule and
the summary calls.
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

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from audit.engine.live import LiveData, LivePipeline, annotation_table
from audit.errors import AuditError, whole_number
from audit.views import tensorboard as tb

SUMMARIES = ("images", "pr_curves", "slices", "histograms")
DEFAULT_RUN = "audit"


def _positive_int(name: str, value) -> int:
    return whole_number(name, value)


def _display_fn(display_fn, preprocess: str | None):
    """What turns validation inputs into the overlays' pixels: ``display_fn``, the inverse of the
    ``preprocess`` preset, or None (the inputs as they are)."""
    if display_fn is not None and preprocess is not None:
        raise AuditError("pass display_fn or preprocess, not both")
    if display_fn is not None and not callable(display_fn):
        raise AuditError(f"display_fn must be a function. Received: display_fn of type {type(display_fn).__name__}")
    if preprocess is None:
        return display_fn
    from audit.io.preprocess import PRESETS, preset

    if preprocess not in PRESETS:
        raise AuditError(f"unknown preprocess {preprocess!r}; choose from {', '.join(PRESETS)}")
    return preset(preprocess).inverse


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
        num_images: size of the fixed sample shown as overlays: stratified by class, every class
            shown when there are no more classes than images (the first images of each, in data order).
        class_names: one name per model output class; default ``"0"``, ``"1"``, ...
        summaries: which of ``SUMMARIES`` to write.
        layer: the Grad-CAM layer (name, ``"backbone/conv"`` or object); None: the last 4-D layer.
        occlusion_patch: occlusion patch side; None: about 1/8 of the shorter image side.
        min_slice_size: numbers are binned into quantiles of at least this many examples.
        batch_size: validation examples per prediction call.
        run_name: the run folder under ``log_dir``.
        display_fn: maps a batch of validation inputs (preprocessed) to uint8 RGB images
            ``(N, H, W, 3)`` shown under the overlays.
        preprocess: instead of ``display_fn``, the ``--preprocess`` preset the inputs went
            through (e.g. ``"tf"`` for ``mobilenet_v2.preprocess_input``); its inverse
            (:meth:`audit.io.preprocess.Preprocessing.inverse`) gives the overlays' pixels.
            With neither, uint8 inputs and floats in [0, 1] or [0, 255] are shown as they
            are and other ranges are stretched from their min and max.

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
        display_fn=None,
        preprocess: str | None = None,
    ):
        super().__init__()
        from audit.explain.registry import METHODS

        self.freq = _positive_int("freq", freq)
        self.num_images = _positive_int("num_images", num_images)
        self.min_slice_size = _positive_int("min_slice_size", min_slice_size)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.occlusion_patch: int | None = None
        if occlusion_patch is not None:
            self.occlusion_patch = _positive_int("occlusion_patch", occlusion_patch)
        summaries = (summaries,) if isinstance(summaries, str) else tuple(summaries)
        unknown = [s for s in summaries if s not in SUMMARIES]
        if unknown or not summaries:
            raise AuditError(f"summaries must be some of {', '.join(SUMMARIES)}. Received: summaries={summaries!r}")
        self.summaries = summaries
        explainers = (explainers,) if isinstance(explainers, str) else tuple(explainers)
        unknown = [e for e in explainers if e not in METHODS]
        if unknown:
            raise AuditError(f"unknown explainer(s) {unknown}; choose from {', '.join(METHODS)}")
        self.explainers = explainers
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.layer = layer
        self.log_dir = Path(log_dir)
        if not run_name or "/" in str(run_name):
            raise AuditError(f"run_name must be a folder name. Received: run_name={run_name!r}")
        self.run_name = str(run_name)
        self.display_fn = _display_fn(display_fn, preprocess)
        self.annotations = annotation_table(annotations)
        self.validation = LiveData(validation_data)
        self._live: LivePipeline | None = None
        self._writer = None
        self._for_model = None

    # -- Keras hooks ---------------------------------------------------------------------
    def set_model(self, model):
        if model is not self._for_model:
            self._live = None  # compiled functions belong to one model
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
        live = self._prepare()
        want = set(self.summaries)
        predicted = None
        # The first pass also fixes the sample and the slicings, so it runs whatever is wanted.
        if want & {"pr_curves", "slices"} or not live.first_pass_done:
            predicted = live.predict_all()
        writer = self._summary_writer()
        with writer.as_default():
            if predicted is not None:
                probs, labels = predicted
                if "pr_curves" in want:
                    tb.write_pr_curves(labels, probs, live.class_names, step)
                if "slices" in want:
                    self._write_slices(live, labels, probs.argmax(axis=1) == labels, step)
            if "images" in want and live.has_sample():
                self._write_overlays(live, step)
            if "histograms" in want and live.activations is not None and live.has_sample():
                tb.write_histograms(live.sample_activations(), step)
        writer.flush()

    def trace_counts(self) -> dict[str, int]:
        """How often each compiled function of the model was traced (stays put across epochs)."""
        return {} if self._live is None else self._live.trace_counts()

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

    def _prepare(self) -> LivePipeline:
        if self._live is not None:
            return self._live
        if keras.backend.backend() != "tensorflow":
            raise AuditError(
                f"AuditCallback needs Keras' TensorFlow backend; this Keras runs {keras.backend.backend()}"
            )
        if self.model is None:
            raise AuditError("AuditCallback has no model; pass it to model.fit(callbacks=[...]) first")
        want = set(self.summaries)
        self._live = LivePipeline.build(
            self.model, self.validation, class_names=self.class_names,
            methods=self.explainers if "images" in want else (), layer=self.layer,
            occlusion_patch=self.occlusion_patch, activations="histograms" in want,
            batch_size=self.batch_size, sample_size=self.num_images if want & {"images", "histograms"} else 0,
            annotations=self.annotations, min_slice_size=self.min_slice_size,
        )
        return self._live

    def _write_slices(self, live: LivePipeline, labels: np.ndarray, correct: np.ndarray, step: int) -> None:
        accuracy, interval, rows = live.sliced(labels, correct)
        tb.write_scalars(tb.with_interval("metrics/accuracy", accuracy, interval), step)
        tb.write_slice_scalars(rows, step)

    def _write_overlays(self, live: LivePipeline, step: int) -> None:
        correct, maps = live.sample_maps()
        x, y = live.fixed_x, live.fixed_y
        assert x is not None and y is not None  # sample_maps ran, so the fixed sample exists
        for method, method_maps in maps.items():
            for k in np.unique(y):
                mask = y == k
                name = live.class_names[k]
                description = (
                    f"{method} heatmaps (for the predicted class) of {int(mask.sum())} fixed validation images of "
                    f"true class **{tb.md_text(name)}**; the frame is green when the prediction is right, "
                    "red when wrong."
                )
                images = x[mask] if self.display_fn is None else np.asarray(self.display_fn(x[mask]))
                tb.write_images(f"{method}/{name}", tb.overlay_images(images, method_maps[mask], correct[mask]), step,
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
                 batch_size: int = 64, run_name: str = DEFAULT_RUN, display_fn=None, preprocess: str | None = None):
        super().__init__(validation_data, log_dir=log_dir, freq=freq, explainers=(method,), num_images=num_images,
                         class_names=class_names, summaries=("images",), layer=layer, batch_size=batch_size,
                         run_name=run_name, display_fn=display_fn, preprocess=preprocess)


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
