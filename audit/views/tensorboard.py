"""TensorBoard logs of an audit, in the stock TensorBoard plugins.

:func:`export` writes a finished results store as one TensorBoard run
(default ``OUT/tensorboard/``), read through :class:`audit.store.reader.Reader`:

=============  ==============================================================
plugin         tags
=============  ==============================================================
scalars        ``metrics/<name>`` (``/ci_low``, ``/ci_high`` for intervals),
               ``per_class/<class>/<name>``, ``slices/<annotation>/<value>``
               (+ interval bounds), ``disparity/<annotation>/<name>``,
               ``explanations/<method>/<name>``
pr_curves      ``pr/<class>`` one-vs-rest, ``pr/<class>/<annotation>/<value>``
               for each flagged slice (TensorBoard appends ``/pr_curves``)
images         ``<method>/<class>/mistakes`` (most confident first) and
               ``<method>/<class>/correct``: heatmap overlays, framed red for
               a mistake and green for a correct prediction
histograms     ``activations/<layer>`` (stored examples) and
               ``activations/<layer>/channel_mean``, ``.../channel_frac_zero``
               (per-channel statistics over the whole dataset)
text           ``report``: the Markdown report
hparams        the run options and headline metrics (``HPARAM_METRICS``)
projector      penultimate-layer embeddings with ``metadata.tsv`` and ``sprite.png``
=============  ==============================================================

A finished store has no training step, so everything is written at step 0;
several audited models compare as several runs (point ``tensorboard
--logdir`` at a folder holding their log folders).

The ``write_*`` functions are the one place each kind of summary is made;
:mod:`audit.callbacks` calls the same ones during ``model.fit``. They write
to the default summary writer, so call them inside ``with writer.as_default():``.

Example:
    >>> export(Path("audit_out"))                     # doctest: +SKIP
    PosixPath('audit_out/tensorboard')
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import AuditError, StoreError
from audit.store import schema
from audit.store.reader import Reader

# Descriptions and the text plugin are Markdown: every user string in them goes through md_text.
from audit.views.format import md_text, number, signed

# Our event files end with this, so a re-export removes exactly what an
# earlier export wrote, even in a folder that also holds training logs.
EVENT_SUFFIX = ".keras-audit"
PR_THRESHOLDS = 201
IMAGES_PER_TAG = 12
SLICE_CURVES = 10
HISTOGRAM_BUCKETS = 30
OVERLAY_ALPHA = 0.5
# TensorBoard's projector refuses sprites larger than 8192 px a side.
SPRITE_MAX_SIDE = 8192
THUMBNAIL_MAX_SIDE = 64
# The projector runs in the browser; past this many points it stalls.
PROJECTOR_MAX_POINTS = 50_000
EMBEDDING_NAME = "audit_embedding"
EMBEDDING_TENSOR = f"{EMBEDDING_NAME}/.ATTRIBUTES/VARIABLE_VALUE"
PROJECTOR_CONFIG = "projector_config.pbtxt"
METADATA_TSV = "metadata.tsv"
SPRITE_PNG = "sprite.png"
HPARAM_METRICS = (
    ("metrics/accuracy", "accuracy"),
    ("metrics/balanced_accuracy", "balanced accuracy"),
    ("metrics/macro_f1", "macro F1"),
    ("metrics/log_loss", "log loss"),
    ("metrics/ece", "expected calibration error"),
    ("metrics/worst_slice_gap", "worst flagged slice gap"),
    ("metrics/flagged_slices", "flagged slices"),
)
CORRECT_RGB = (40, 200, 60)
MISTAKE_RGB = (230, 30, 30)


def _tf():
    """TensorFlow, after checking that TensorBoard's summary plugins can be imported."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise AuditError(
            "TensorBoard logs need the tensorboard package: pip install tensorboard (or pass --no-tensorboard)"
        ) from None
    import tensorflow as tf

    return tf


# -- one writer per kind of summary (shared with audit.callbacks) ---------------------------
def with_interval(tag: str, value, ci) -> dict[str, float | None]:
    """``{tag: value, tag/ci_low: lo, tag/ci_high: hi}``; the bounds only when ``ci`` has them."""
    out = {tag: value}
    if ci is not None and len(ci) == 2:
        out[f"{tag}/ci_low"], out[f"{tag}/ci_high"] = ci[0], ci[1]
    return out


def write_scalars(values: Mapping[str, float | None], step: int) -> list[str]:
    """Write each finite value as a scalar; ``None`` and non-finite values are skipped."""
    tf = _tf()
    written = []
    for tag, value in values.items():
        if value is None or not math.isfinite(float(value)):
            continue
        tf.summary.scalar(tag, float(value), step=step)
        written.append(tag)
    return written


def slice_tag(row: Mapping) -> str:
    """Scalar tag of one slice row (as in metrics.json): ``slices/<annotation>/<value>``."""
    return f"slices/{row['column']}/{row['value']}"


def write_slice_scalars(rows: Iterable[Mapping], step: int) -> list[str]:
    """Accuracy of each slice row (metrics.json ``slices.rows`` layout) with its interval bounds."""
    values: dict[str, float | None] = {}
    for row in rows:
        values.update(with_interval(slice_tag(row), row["accuracy"], row.get("accuracy_ci")))
    return write_scalars(values, step)


def write_pr_curves(labels, probs, class_names: Sequence[str], step: int, *, subset: str = "",
                    about: str = "") -> list[str]:
    """One-vs-rest PR curve of every class that has positives among ``labels``.

    Args:
        labels: true class indices (N,).
        probs: class probabilities (N, C).
        class_names: C names; tags are ``pr/<class>`` or ``pr/<class>/<subset>``.
        subset: a tag suffix naming the examples (e.g. ``"cue_agrees/no"``).
        about: Markdown sentence describing those examples, for the description (user strings
            in it already escaped with :func:`md_text`).

    TensorFlow 2 has no eager PR-curve op, so the proto comes from the
    plugin's numpy ``pb`` and is written raw. Returns the tags TensorBoard
    shows (``.../pr_curves``).
    """
    tf = _tf()
    from tensorboard.plugins.pr_curve import summary as pr_summary

    labels = np.asarray(labels)
    probs = np.clip(np.asarray(probs, np.float32), 0.0, 1.0)
    written = []
    for k, name in enumerate(class_names):
        positive = labels == k
        if not positive.any():
            continue
        tag = f"pr/{name}/{subset}" if subset else f"pr/{name}"
        description = (
            f"One-vs-rest precision and recall of class **{md_text(name)}** over {len(labels)} examples "
            f"({int(positive.sum())} positives). {about}"
        ).strip()
        proto = pr_summary.pb(tag, positive, probs[:, k], num_thresholds=PR_THRESHOLDS, description=description)
        tf.summary.experimental.write_raw_pb(proto.SerializeToString(), step=step)
        written.append(f"{tag}/pr_curves")
    return written


def overlay_images(images, maps, correct=None, alpha: float = OVERLAY_ALPHA, signal=None) -> np.ndarray:
    """Heatmap overlays uint8 (N, H, W, 3); with ``correct``, a green (right) or red (wrong) frame.

    ``images`` may be uint8 or model inputs in any range (see :func:`audit.viz.overlay`). Where
    ``signal`` (N bools) is False the map had no signal and the plain image is drawn instead.
    """
    from audit.viz import overlay

    signal = np.ones(len(images), bool) if signal is None else np.asarray(signal, bool)
    frames = np.stack([overlay(img, m, alpha if s else 0.0) for img, m, s in zip(images, maps, signal)])
    if correct is not None and len(frames):
        h, w = frames.shape[1:3]
        edge = max(1, min(h, w) // 32)
        for frame, right in zip(frames, np.asarray(correct, bool)):
            colour = CORRECT_RGB if right else MISTAKE_RGB
            frame[:edge], frame[-edge:], frame[:, :edge], frame[:, -edge:] = colour, colour, colour, colour
    return frames


def write_images(tag: str, images: np.ndarray, step: int, description: str = "") -> None:
    """All of ``images`` (uint8 (N, H, W, 3)) under one tag; TensorBoard keeps 3 unless told more."""
    tf = _tf()
    tf.summary.image(tag, images, step=step, max_outputs=max(1, len(images)), description=description or None)


def write_histograms(values: Mapping[str, np.ndarray], step: int, prefix: str = "activations") -> list[str]:
    """A histogram per entry (e.g. per layer), tagged ``<prefix>/<name>``.

    The plugin's numpy ``histogram_pb`` is several times faster than the eager
    op on the hundreds of thousands of values one layer produces.
    """
    tf = _tf()
    from tensorboard.plugins.histogram import summary_v2 as histogram_summary

    written = []
    for name, array in values.items():
        flat = np.asarray(array, np.float32).ravel()
        flat = flat[np.isfinite(flat)]
        if not flat.size:
            continue
        tag = f"{prefix}/{name}"
        proto = histogram_summary.histogram_pb(tag, flat, buckets=HISTOGRAM_BUCKETS)
        tf.summary.experimental.write_raw_pb(proto.SerializeToString(), step=step)
        written.append(tag)
    return written


# -- the store, plugin by plugin --------------------------------------------------------------
def _labelled(run: Reader):
    frame = run.predictions
    label = frame["label"].to_numpy()
    return frame[np.isfinite(label.astype(float)) & (label >= 0)].reset_index(drop=True)


def _overall_scalars(metrics: schema.Metrics) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in ("accuracy", "balanced_accuracy"):
        values.update(with_interval(f"metrics/{name}", metrics.get(name), metrics.get(f"{name}_ci")))
    for name in ("error_rate", "macro_f1", "log_loss"):
        values[f"metrics/{name}"] = metrics.get(name)
    for k, value in (metrics.get("top_k_accuracy") or {}).items():
        values[f"metrics/top_{k}_accuracy"] = value
    calibration = metrics.get("calibration") or {}
    values["metrics/ece"] = calibration.get("ece")
    values["metrics/mce"] = calibration.get("mce")
    worst = schema.worst_slices(metrics, k=1)
    values["metrics/worst_slice_gap"] = worst[0]["gap"] if worst else 0.0
    values["metrics/flagged_slices"] = ((metrics.get("slices") or {}).get("summary") or {}).get("flagged", 0)
    for row in metrics.get("per_class") or []:
        for name in ("precision", "recall", "f1"):
            values[f"per_class/{row['class']}/{name}"] = row.get(name)
    for curve in (metrics.get("curves") or {}).get("per_class") or []:
        for name in ("average_precision", "roc_auc"):
            values[f"per_class/{curve['class']}/{name}"] = curve.get(name)
    for column in (metrics.get("slices") or {}).get("columns") or []:
        d = column.get("disparity")
        if not d or column.get("kind") == "intersection":
            continue
        for name in ("accuracy_gap", "accuracy_ratio", "equal_opportunity_gap"):
            values.update(with_interval(f"disparity/{column['column']}/{name}", d.get(name), d.get(f"{name}_ci")))
    for method, q in (metrics.get("explanations") or {}).items():
        for name in ("deletion_auc", "insertion_auc"):
            values[f"explanations/{method}/{name}"] = q.get(name)
    return values


def _slice_rows(metrics: schema.Metrics) -> list[schema.SliceRow]:
    # Every single-annotation slice; of the intersections only those worse than
    # both of their parts, the ones the report calls out, so the scalars
    # dashboard does not drown in hundreds of pair cards.
    rows = (metrics.get("slices") or {}).get("rows") or []
    return [r for r in rows if len(r.get("columns", [])) < 2 or r.get("below_parents")]


def _export_scalars(run: Reader) -> None:
    metrics = run.metrics
    write_scalars(_overall_scalars(metrics), 0)
    write_slice_scalars(_slice_rows(metrics), 0)


def _slice_masks(frame, run: Reader, rows: list[schema.WorstSlice]) -> list[tuple[schema.WorstSlice, np.ndarray]]:
    """Row masks (over ``frame``) of flagged slices, from the store's own membership (slices.parquet)."""
    index = frame["index"].to_numpy()
    return [(row, np.isin(index, run.slice_rows(row["column"], row["value"]))) for row in rows]


def _export_pr_curves(run: Reader) -> None:
    frame = _labelled(run)
    labels = frame["label"].to_numpy().astype(np.int64)
    probs = frame[[schema.prob_column(k) for k in range(run.num_classes)]].to_numpy(np.float32)
    write_pr_curves(labels, probs, run.class_names, 0)
    for row, mask in _slice_masks(frame, run, run.worst_slices(SLICE_CURVES)):
        about = (
            f"Only the {int(mask.sum())} examples with {md_text(row['column'])} = {md_text(row['value'])}: "
            "a flagged slice, "
            f"accuracy {number(row['accuracy'])}, {signed(row['gap'])} against the other examples."
        )
        write_pr_curves(labels[mask], probs[mask], run.class_names, 0,
                        subset=f"{row['column']}/{row['value']}", about=about)


def _explained_choice(frame, explained: set[int], label: int) -> tuple[list[int], list[int]]:
    """Explained examples of one true class: mistakes by falling confidence, then correct ones."""
    rows = frame[frame["index"].isin(explained) & (frame["label"] == label)]
    wrong = rows[~rows["correct"]].sort_values("confidence", ascending=False, kind="stable")
    right = rows[rows["correct"]].sort_values("index", kind="stable")
    if len(right) > IMAGES_PER_TAG:  # a spread over the class rather than its first files
        right = right.iloc[np.linspace(0, len(right) - 1, IMAGES_PER_TAG).round().astype(int)]
    return wrong["index"].head(IMAGES_PER_TAG).tolist(), right["index"].tolist()


def _caption(frame_by_index, index: int, names: list[str]) -> str:
    row = frame_by_index.loc[index]
    # Not a code span: a backtick in the path would end it and let the rest be Markdown.
    where = f" {md_text(row['path'])}" if isinstance(row.get("path"), str) else ""
    return (f"example {index}{where}: true {md_text(names[int(row['label'])])}, "
            f"predicted {md_text(names[int(row['pred'])])} ({float(row['confidence']):.2f})")


def _export_images(run: Reader) -> None:
    methods = run.heatmap_methods
    if not methods or not run.heatmap_index:
        return
    frame = _labelled(run)
    by_index = frame.set_index("index", drop=False)
    explained = set(run.heatmap_index)
    names = run.class_names
    for k, name in enumerate(names):
        wrong, right = _explained_choice(frame, explained, k)
        for kind, chosen in (("mistakes", wrong), ("correct", right)):
            if not chosen:
                continue
            images = [run.image(i) for i in chosen]
            correct = by_index.loc[chosen, "correct"].to_numpy(bool)
            listing = "\n".join(f"{n}. {_caption(by_index, i, names)}" for n, i in enumerate(chosen, 1))
            for method in methods:
                maps = [run.heatmap(method, i) for i in chosen]
                signal, reason = _signal(run, method, chosen)
                order = "most confident first" if kind == "mistakes" else "a sample"
                description = (f"{md_text(method)} overlays of {kind} on true class **{md_text(name)}** ({order}); "
                               f"the frame is red for a mistake, green for a correct prediction.\n\n{listing}")
                if not signal.all():
                    empty = ", ".join(str(n) for n, s in enumerate(signal, 1) if not s)
                    description += (f"\n\nImages {empty}: no signal ({md_text(reason)}); the plain image is "
                                    "shown, not a finding.")
                write_images(f"{method}/{name}/{kind}", overlay_images(images, maps, correct, signal=signal), 0,
                             description)


def _signal(run: Reader, method: str, chosen: list[int]) -> tuple[np.ndarray, str]:
    """Whether each chosen example's ``method`` map had signal (all True for older stores), and why not."""
    reasons = [run.no_signal(method, i) for i in chosen]
    return np.array([r is None for r in reasons], bool), next((r for r in reasons if r), "")


def _export_histograms(run: Reader) -> None:
    explained = sorted(run.heatmap_index)
    for layer in run.activation_layers:
        try:
            values = np.stack([run.activations(layer, i) for i in explained]) if explained else None
        except StoreError:
            values = None
        if values is not None:
            write_histograms({layer: values}, 0)
    for layer, stats in run.activation_stats.items():
        write_histograms({f"{layer}/channel_mean": np.asarray(stats.get("mean", []), np.float32),
                          f"{layer}/channel_frac_zero": np.asarray(stats.get("frac_zero", []), np.float32)}, 0)


def report_markdown(run: Reader) -> str:
    """The Markdown report without its pictures (TensorBoard's text plugin shows no local images;
    the pictures' content is in the other dashboards)."""
    from audit.views.report import build_report, render_markdown

    title, blocks = build_report(run, pictures=False)
    text, _ = render_markdown(title, [b for b in blocks if b.kind != "pictures"], "")
    return text


def _export_text(run: Reader) -> None:
    tf = _tf()
    tf.summary.text("report", report_markdown(run), step=0)


def _hparam_value(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "null"  # as manifest.json records it
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def hparam_values(run: Reader) -> dict[str, bool | int | float | str]:
    """The run described as hyperparameters: model, data, the explainers run and every recorded option."""
    model = run.model_info
    values: dict[str, bool | int | float | str] = {
        "model": str(model.get("name", "")),
        "model_sha256": str(model.get("sha256", ""))[:12],
        "output_kind": str(model.get("output_kind", "")),
        "num_classes": run.num_classes,
        "dataset": str(run.manifest.get("dataset", {}).get("source", "")),
        "num_examples": run.num_examples,
    }
    explained = run.manifest.get("explained") or {}
    methods = list(explained.get("methods", [])) + (["activations"] if explained.get("activation_layers") else [])
    values["explained"] = ",".join(methods) or "none"
    for key, value in sorted(run.options.items()):
        if key not in ("class_names", "tensorboard"):
            values[f"option/{key}"] = _hparam_value(value)
    return values


def _export_hparams(run: Reader) -> None:
    _tf()
    from tensorboard.plugins.hparams import api as hp

    values = hparam_values(run)
    # Every export writes the same configuration (same names, same metrics), so
    # whichever run TensorBoard picks it from describes all audited models.
    hp.hparams_config(
        hparams=[hp.HParam(name) for name in values],
        metrics=[hp.Metric(tag, display_name=label) for tag, label in HPARAM_METRICS],
    )
    hp.hparams(values, trial_id=f"{values['model']} @ {run.path}")


def _sprite(images: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Square thumbnails in a square grid, within the projector's size limit."""
    from PIL import Image

    grid = max(1, math.ceil(math.sqrt(len(images))))
    side = max(1, min(THUMBNAIL_MAX_SIDE, max(max(i.shape[:2]) for i in images), SPRITE_MAX_SIDE // grid))
    sheet = np.zeros((grid * side, grid * side, 3), np.uint8)
    for n, image in enumerate(images):
        thumb = Image.fromarray(image)
        thumb.thumbnail((side, side))
        t = np.asarray(thumb.convert("RGB"))
        r, c = divmod(n, grid)
        top = r * side + (side - t.shape[0]) // 2
        left = c * side + (side - t.shape[1]) // 2
        sheet[top : top + t.shape[0], left : left + t.shape[1]] = t
    return sheet, side


def _tsv_cell(value) -> str:
    import pandas as pd

    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return ""
    return re.sub(r"[\t\r\n]+", " ", str(value))


def _metadata_tsv(frame, names: list[str]) -> str:
    """One row per point: label, prediction, correctness, confidence and every annotation."""
    annotations = schema.annotation_columns(frame.columns)
    header = ["index", "label", "prediction", "correct", "confidence", *annotations]
    columns = [
        frame["index"].tolist(),
        [names[int(k)] for k in frame["label"]],
        [names[int(k)] for k in frame["pred"]],
        ["yes" if c else "no" for c in frame["correct"]],
        [f"{float(v):.3f}" for v in frame["confidence"]],
        *(frame[c].tolist() for c in annotations),
    ]
    lines = ["\t".join(_tsv_cell(h) for h in header)]
    lines += ["\t".join(_tsv_cell(v) for v in row) for row in zip(*columns)]
    return "\n".join(lines) + "\n"


def _is_ours(path: Path) -> bool:
    try:
        return path.is_file() and EMBEDDING_NAME in path.read_text(errors="replace")
    except OSError:
        return False


def _remove_previous(logdir: Path) -> None:
    """Remove what an earlier export wrote to ``logdir``, and nothing else."""
    for f in logdir.glob(f"events.out.tfevents.*{EVENT_SUFFIX}"):
        f.unlink()
    config = logdir / PROJECTOR_CONFIG
    if config.exists() and not _is_ours(config):
        raise AuditError(
            f"folder holds a {PROJECTOR_CONFIG} that keras-audit did not write; pass another --logdir", logdir
        )
    if config.exists():
        for name in (PROJECTOR_CONFIG, METADATA_TSV, SPRITE_PNG):
            (logdir / name).unlink(missing_ok=True)
        if _is_ours(logdir / "checkpoint"):
            (logdir / "checkpoint").unlink()
        for f in logdir.glob(f"{EMBEDDING_NAME}-*"):
            f.unlink()


def _export_projector(run: Reader, logdir: Path) -> None:
    emb = run.embeddings()
    if emb is None:
        return
    tf = _tf()
    from tensorboard.plugins import projector

    frame = _labelled(run)
    if len(frame) > PROJECTOR_MAX_POINTS:
        frame = frame.iloc[np.linspace(0, len(frame) - 1, PROJECTOR_MAX_POINTS).round().astype(int)]
    index = frame["index"].to_numpy()
    vectors = np.asarray(emb[index], np.float32)
    (logdir / METADATA_TSV).write_text(_metadata_tsv(frame, run.class_names), encoding="utf-8")
    sheet, side = _sprite([run.image(int(i)) for i in index])
    from PIL import Image

    Image.fromarray(sheet).save(logdir / SPRITE_PNG)
    # Checkpoint.save writes a relative `checkpoint` state file, so the
    # projector finds the tensor even after the log folder is moved.
    tf.train.Checkpoint(**{EMBEDDING_NAME: tf.Variable(vectors)}).save(str(logdir / EMBEDDING_NAME))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = EMBEDDING_TENSOR
    embedding.metadata_path = METADATA_TSV
    embedding.sprite.image_path = SPRITE_PNG
    embedding.sprite.single_image_dim.extend([side, side])
    projector.visualize_embeddings(str(logdir), config)


def export(store_dir: str | Path, logdir: str | Path | None = None) -> Path:
    """(Re)write the TensorBoard logs of the finished run in ``store_dir``; return their folder.

    Args:
        store_dir: a finished results store.
        logdir: the run folder to write; default ``store_dir/tensorboard``.
            Files of an earlier export there are replaced; other files stay.

    Raises:
        StoreError: the store is missing, incomplete or unreadable.
        AuditError: ``logdir`` is not a writable folder, or tensorboard is not installed.
    """
    run = Reader(store_dir)
    target = Path(logdir) if logdir is not None else run.path / schema.TENSORBOARD_DIR
    tf = _tf()
    if target.exists() and not target.is_dir():
        raise AuditError("TensorBoard log folder is a file; pass a folder to --logdir", target)
    try:
        target.mkdir(parents=True, exist_ok=True)
        _remove_previous(target)
    except OSError as e:
        raise AuditError(f"cannot write TensorBoard logs ({e.strerror or e})", target) from None
    writer = tf.summary.create_file_writer(str(target), filename_suffix=EVENT_SUFFIX)
    try:
        with writer.as_default():
            _export_scalars(run)
            _export_pr_curves(run)
            _export_images(run)
            _export_histograms(run)
            _export_text(run)
            _export_hparams(run)
    finally:
        writer.close()
    from audit.store.killpoint import checkpoint

    checkpoint("tensorboard")  # test-only kill point (audit.store.killpoint): event file written, projector not yet
    _export_projector(run, target)
    return target
