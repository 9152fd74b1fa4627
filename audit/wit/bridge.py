"""The What-If Tool bridge: a results store (or a model on a dataset) as WIT's examples and models.

Every example becomes a ``tf.train.Example`` holding its PNG-encoded image
(``image/encoded``, which WIT shows as thumbnails), the label (``label``, the
target feature, and ``label_name``), every annotation under its own name, the
audit's prediction (``audit_pred``, ``audit_confidence``, ``audit_correct``,
``audit_prob_<class>``) and, for explained examples, a summary of each stored
heatmap (``<stem>_centre_mass``, ``<stem>_border_mass``, ``<stem>_peak_x``,
``<stem>_peak_y``, with the method's file stem, e.g. ``gradcam_pp``; see
:func:`heatmap_features`). The tool runs the model itself through
:class:`ModelPredictFn`, which prepares the images with the audit's own input
pipeline, so datapoints edited in the tool are re-scored live.

witwidget is loaded through :mod:`audit.wit.compat`.
"""

from __future__ import annotations

import io
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.engine.options import AuditOptions, recorded_preprocessing
from audit.errors import AuditError, StoreError, positive_number, whole_number
from audit.store import schema
from audit.wit.compat import IMAGE_FEATURE, load_witwidget

TARGET_FEATURE = "label"
PREDICT_BATCH = 64


# -- examples --------------------------------------------------------------------------------------


def heatmap_features(heatmap: np.ndarray) -> dict[str, float]:
    """Where a map puts its weight, as four numbers WIT can plot and slice by.

    * ``centre_mass``: share of the map's total inside the central box that
      spans the middle half of each side (a quarter of the image);
    * ``border_mass``: share in the outer ring, one eighth of each side wide
      (the ring covers 7/16 of the image);
    * ``peak_x``, ``peak_y``: position of the maximum, 0 (left / top) to 1.

    A uniform map gives 0.25 and 0.4375; a model that looks at the object in
    the middle scores a high ``centre_mass``, one that reads a corner tag a
    high ``border_mass`` and a peak near that corner. An all-zero map has no
    mass to share out and gives an empty dict (example: :mod:`audit.wit`).
    """
    m = np.asarray(heatmap, np.float64)
    if m.ndim != 2 or m.size == 0:
        raise AuditError(f"heatmap must be a non-empty (h, w) array; received shape {m.shape}")
    total = float(m.sum())
    if not total > 0:
        return {}
    h, w = m.shape
    ch, cw = h // 4, w // 4
    bh, bw = max(1, round(h / 8)), max(1, round(w / 8))
    centre = float(m[ch : h - ch, cw : w - cw].sum())
    inner = float(m[bh : h - bh, bw : w - bw].sum())
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    return {
        "centre_mass": centre / total,
        "border_mass": 1.0 - inner / total,
        "peak_x": (int(x) + 0.5) / w,
        "peak_y": (int(y) + 0.5) / h,
    }


@dataclass
class _Rows:
    """The examples to show, in order, with everything known about each."""

    index: np.ndarray  # (n,) dataset positions
    images: np.ndarray  # (n, h, w, 3) uint8
    labels: np.ndarray  # (n,) class indices
    probs: np.ndarray  # (n, C) the audit's probabilities
    paths: list | None
    annotations: Any  # DataFrame with n rows, or None
    heatmaps: dict[int, dict[str, float]] = field(default_factory=dict)  # row -> features


def _feature(tf, value):
    import pandas as pd

    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
    if isinstance(value, (float, np.floating)):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(out, format="PNG")
    return out.getvalue()


def _examples(rows: _Rows, class_names: list[str]) -> list:
    import tensorflow as tf

    own = {IMAGE_FEATURE, "index", "path", TARGET_FEATURE, "label_name", "audit_pred", "audit_pred_name",
           "audit_confidence", "audit_correct", *(f"audit_prob_{c}" for c in class_names)}
    own |= {name for feats in rows.heatmaps.values() for name in feats}
    ann_columns = [] if rows.annotations is None else list(rows.annotations.columns)
    # An annotation that shares a name with a feature of ours keeps its values under a prefix.
    ann_names = {c: (f"annotation/{c}" if c in own else c) for c in ann_columns}
    ann_values = {c: rows.annotations[c].tolist() for c in ann_columns}
    preds = rows.probs.argmax(axis=1)
    out = []
    for r in range(len(rows.index)):
        label, pred = int(rows.labels[r]), int(preds[r])
        values: dict[str, Any] = {
            IMAGE_FEATURE: _png(rows.images[r]),
            "index": int(rows.index[r]),
            "path": rows.paths[r] if rows.paths is not None else None,
            TARGET_FEATURE: label,
            "label_name": class_names[label],
            "audit_pred": pred,
            "audit_pred_name": class_names[pred],
            "audit_confidence": float(rows.probs[r, pred]),
            "audit_correct": pred == label,
        }
        values.update({f"audit_prob_{c}": float(rows.probs[r, k]) for k, c in enumerate(class_names)})
        values.update(rows.heatmaps.get(r, {}))
        values.update({ann_names[c]: ann_values[c][r] for c in ann_columns})
        features = {name: f for name, v in values.items() if (f := _feature(tf, v)) is not None}
        out.append(tf.train.Example(features=tf.train.Features(feature=features)))
    return out


def _choose(count: int, preferred: np.ndarray, max_examples: int) -> np.ndarray:
    """Row positions to show: ``preferred`` rows first, then a seeded sample of the rest, in order."""
    if count <= max_examples:
        return np.arange(count)
    chosen = np.asarray(preferred, np.int64)[:max_examples]
    rest = np.setdiff1d(np.arange(count), chosen)
    fill = np.random.default_rng(0).choice(rest, size=max_examples - len(chosen), replace=False)
    return np.sort(np.concatenate([chosen, fill]))


# -- models ----------------------------------------------------------------------------------------


class ModelPredictFn:
    """WIT's custom predict function for one Keras model.

    It decodes each example's ``image/encoded`` and prepares it with
    :func:`audit.io.data.preprocess_images`, the audit's own input pipeline
    (resized with antialiasing to the model's input size, grayscale for
    one-channel models, then the run's ``preprocessing``), then returns the
    ``LoadedModel``'s class probabilities, ``PREDICT_BATCH`` images per call.
    Its single parameter is what witwidget expects of notebook predict functions.
    """

    def __init__(self, model, preprocessing):
        self.model = model
        self.preprocessing = preprocessing

    def _prepare(self, images: list[np.ndarray]) -> np.ndarray:
        """The batch for the model; an edited datapoint may hold an image of another size."""
        from audit.io.data import preprocess_images

        x = np.zeros((len(images), *self.model.input_shape), np.float32)
        for shape in {img.shape for img in images}:
            rows = [r for r, img in enumerate(images) if img.shape == shape]
            x[rows] = preprocess_images(np.stack([images[r] for r in rows]), self.model.input_shape,
                                        preprocessing=self.preprocessing)
        return x

    def __call__(self, examples) -> list[list[float]]:
        from PIL import Image

        out: list[list[float]] = []
        for start in range(0, len(examples), PREDICT_BATCH):
            images = []
            for ex in examples[start : start + PREDICT_BATCH]:
                encoded = ex.features.feature[IMAGE_FEATURE].bytes_list.value
                if not encoded:
                    raise AuditError(f"a datapoint has no {IMAGE_FEATURE!r} image to predict on")
                with Image.open(io.BytesIO(encoded[0])) as img:
                    images.append(np.asarray(img.convert("RGB")))
            out.extend(self.model.predict(self._prepare(images), batch_size=PREDICT_BATCH).tolist())
        return out


def _loaded_model(model, unsafe: bool):
    """A LoadedModel from a LoadedModel, a model file or directory, or an in-memory keras.Model."""
    from audit.io.models import LoadedModel, from_keras, load_model

    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, Path)):
        return load_model(model, unsafe=unsafe)
    import keras

    if isinstance(model, keras.Model):
        return from_keras(model)
    raise AuditError(
        f"expected a results store, a model file, a LoadedModel or a keras.Model; received {type(model).__name__}"
    )


@dataclass
class _Source:
    """A model with the preprocessing its inputs need and where it came from."""

    model: Any  # LoadedModel
    preprocessing: Any  # audit.io.preprocess.Preprocessing
    class_names: list[str] | None = None  # known when it comes from a store


def _run_model(run, unsafe: bool) -> _Source:
    """The model of a run (a Reader), with the preprocessing the run used."""
    path = Path(run.model_info["path"])
    if not path.exists():
        raise StoreError(
            f"the run's model {path} no longer exists; open the model directly: what_if(MODEL, data=DATA)", run.path
        )
    model = _loaded_model(path, unsafe)
    return _Source(model, recorded_preprocessing(run.options), run.class_names)


# -- the bridge ------------------------------------------------------------------------------------


@dataclass
class WhatIf:
    """The What-If Tool set up for one audited model (and optionally a second to compare).

    Attributes:
        config_builder: witwidget's ``WitConfigBuilder``, configured.
        indices: dataset positions of the examples shown, in the tool's order.
        class_names: the label vocabulary.
        notes: things to know when reading the tool (e.g. live predictions
            that cannot match the stored ones).

    In a notebook the object displays as the tool itself; ``widget`` is the
    ``WitWidget`` (built on first use, anywhere).

    Example:
        >>> tool = what_if("audit_out", compare="retrained.keras")   # doctest: +SKIP
        >>> tool.widget.infer_impl()["label_vocab"]                  # doctest: +SKIP
        ['circle', 'square', 'triangle']
    """

    config_builder: Any
    indices: np.ndarray
    class_names: list[str]
    notes: list[str] = field(default_factory=list)
    height: int = 800
    _widget: Any = field(default=None, repr=False)

    @property
    def widget(self):
        if self._widget is None:
            self._widget = load_witwidget().WitWidget(self.config_builder, height=self.height)
        return self._widget

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def _store_rows(run, max_examples: int) -> tuple[_Rows, list[str]]:
    table = run.predictions.reset_index(drop=True)
    explained = np.flatnonzero(table["index"].isin(list(run.heatmap_index)).to_numpy())
    keep = _choose(len(table), explained, max_examples)
    table = table.iloc[keep].reset_index(drop=True)
    index = table["index"].to_numpy(np.int64)
    heatmaps: dict[int, dict[str, float]] = {}
    for method in run.heatmap_methods:
        prefix = schema.file_stem(method)  # the stem of its file in the store: "gradcam++" -> "gradcam_pp"
        for r, i in enumerate(index):
            if run.has_heatmap(int(i)):
                feats = heatmap_features(run.heatmap(method, int(i)))
                heatmaps.setdefault(r, {}).update({f"{prefix}_{k}": v for k, v in feats.items()})
    rows = _Rows(
        index=index,
        images=np.stack([run.image(int(i)) for i in index]),
        labels=table["label"].to_numpy(np.int64),
        probs=np.stack([table[schema.prob_column(k)].to_numpy(np.float32) for k in range(run.num_classes)], 1),
        paths=table["path"].tolist() if table["path"].notna().any() else None,
        annotations=table[run.annotation_columns],
        heatmaps=heatmaps,
    )
    return rows, run.class_names


def _data_rows(source: _Source, data, annotations, max_examples: int) -> tuple[_Rows, list[str]]:
    import pandas as pd

    from audit.io.annotations import load_annotations
    from audit.io.data import open_dataset, resolve_class_names
    from audit.viz import stored_shape

    dataset = open_dataset(data)
    model = source.model
    class_names = resolve_class_names(dataset, model.num_classes)
    table = load_annotations(annotations, dataset)[0] if annotations is not None else None
    chosen = _choose(dataset.count, np.zeros(0, np.int64), max_examples)
    parts: dict[str, list] = {"index": [], "images": [], "probs": [], "builtin": []}
    shape = stored_shape(model.input_shape)
    for batch in dataset.batches(model.input_shape, shape, preprocessing=source.preprocessing, indices=chosen):
        parts["index"].append(batch.index)
        parts["images"].append(batch.stored)
        parts["probs"].append(model.predict(batch.x))
        parts["builtin"].append(batch.builtin)
    if not parts["index"]:
        raise AuditError("none of the chosen images could be read", dataset.source)
    index = np.concatenate(parts["index"])
    builtin = pd.DataFrame(np.concatenate(parts["builtin"]), columns=list(schema.BUILTIN_ANNOTATIONS))
    if table is not None:
        user = table.iloc[index].reset_index(drop=True)
        builtin = builtin.drop(columns=[c for c in builtin.columns if c in user.columns])  # a user column wins
        table = pd.concat([user, builtin], axis=1)
    else:
        table = builtin
    rows = _Rows(
        index=index,
        images=np.concatenate(parts["images"]),
        labels=dataset.labels[index],
        probs=np.concatenate(parts["probs"]),
        paths=[dataset.paths[i] for i in index] if dataset.paths else None,
        annotations=table,
    )
    return rows, class_names


def _model_names(first: str, second: str | None) -> tuple[str, str | None]:
    # WIT joins model names with commas and tells the two models apart by name.
    first = first.replace(",", " ") or "model"
    if second is None:
        return first, None
    second = second.replace(",", " ") or "compare"
    return first, (f"{second} (compare)" if second == first else second)


def _check_options(max_examples, rescale) -> None:
    whole_number("max_examples", max_examples)
    if rescale is not None:
        positive_number("rescale", rescale)


def _open_first(store_or_model, data, annotations, rescale, unsafe, notes: list[str]):
    """(the run as a Reader or None, the model to show) from what ``what_if`` was given."""
    from audit.store.reader import Reader

    if not (isinstance(store_or_model, (str, Path)) and schema.is_store(store_or_model)):
        if data is None:
            raise AuditError("pass data= with a model (or pass a results store instead of a model)")
        scaling = AuditOptions(rescale=1.0 if rescale is None else float(rescale)).preprocessing()
        return None, _Source(_loaded_model(store_or_model, unsafe), scaling)
    if data is not None or annotations is not None:
        raise AuditError("a results store already names its data and annotations; pass neither with it")
    if rescale is not None:
        raise AuditError("a results store records its own rescale; pass rescale only with a model")
    run = Reader(store_or_model)
    source = _run_model(run, unsafe)
    if run.model_info.get("sha256") != source.model.sha256:
        notes.append(f"the model file {source.model.path} changed since the run; live predictions follow the new file")
    return run, source


def _open_second(compare, source: _Source, unsafe: bool) -> _Source | None:
    """The model to compare with, checked before the first one runs over the data."""
    from audit.store.reader import Reader

    if compare is None:
        return None
    if isinstance(compare, (str, Path)) and schema.is_store(compare):
        other = _run_model(Reader(compare), unsafe)
    else:
        other = _Source(_loaded_model(compare, unsafe), source.preprocessing)
    if other.model.num_classes != source.model.num_classes:
        raise AuditError(
            f"the compared model outputs {other.model.num_classes} classes; "
            f"the audited one has {source.model.num_classes}",
            other.model.path,
        )
    return other


def _size_note(rows: _Rows, model) -> list[str]:
    if tuple(rows.images.shape[1:3]) == tuple(model.input_shape[:2]):
        return []
    return [
        f"the tool's images are {rows.images.shape[1]}x{rows.images.shape[2]} (the store's size limit), smaller "
        f"than the model's {model.input_shape[0]}x{model.input_shape[1]} input; live predictions "
        "run on them enlarged and can differ from the audit's"
    ]


def _config(visualization, examples: list, class_names: list[str], source: _Source, other: _Source | None):
    """witwidget's ``WitConfigBuilder`` for one model, or two to compare."""
    first, second = _model_names(source.model.name, other.model.name if other else None)
    builder = (
        visualization.WitConfigBuilder(examples)
        .set_model_type("classification")
        .set_multi_class(len(class_names) > 2)
        .set_label_vocab(list(class_names))
        .set_target_feature(TARGET_FEATURE)
        .set_max_classes_to_display(len(class_names))
        .set_model_name(first)
        .set_custom_predict_fn(ModelPredictFn(source.model, source.preprocessing))
    )
    if other is not None:
        compare_fn = ModelPredictFn(other.model, other.preprocessing)
        builder.set_compare_model_name(second).set_compare_custom_predict_fn(compare_fn)
    return builder


def what_if(
    store_or_model,
    data: str | Path | None = None,
    annotations: str | Path | None = None,
    compare=None,
    max_examples: int = 1000,
    *,
    rescale: float | None = None,
    unsafe: bool = False,
    height: int = 800,
) -> WhatIf:
    """Set up the What-If Tool for an audited run, or for a model on a dataset.

    Args:
        store_or_model: a results store (the model, data, annotations, images,
            predictions and heatmaps all come from it), or a model (file,
            SavedModel directory, ``LoadedModel`` or ``keras.Model``) to run
            on ``data``.
        data: the dataset, with a model only (class folders, images + labels
            CSV, or ``.npz``).
        annotations: an annotations CSV for ``data`` (with a model only).
        compare: a second model to compare in the tool (model file,
            ``LoadedModel``, ``keras.Model``, or a results store whose model
            and rescale are used); it must have the same classes.
        max_examples: at most this many examples go to the tool; when there
            are more, explained examples come first and a seeded sample
            fills the rest.
        rescale: pixel factor for a model given directly (default 1.0); a
            store's own recorded value is used for its model.
        unsafe: allow loading models whose loading runs code (Lambda layers).
        height: height of the widget in pixels.

    Returns:
        A :class:`WhatIf`: the configured ``WitConfigBuilder`` and, on demand
        (at once inside a notebook), the ``WitWidget``.

    Raises:
        AuditError: the 'wit' extra is missing (the message has the install
            command), or the inputs are unusable.
    """
    _check_options(max_examples, rescale)
    visualization = load_witwidget()
    notes: list[str] = []
    run, source = _open_first(store_or_model, data, annotations, rescale, unsafe, notes)
    other = _open_second(compare, source, unsafe)
    if run is not None:
        rows, class_names = _store_rows(run, max_examples)
    else:
        rows, class_names = _data_rows(source, data, annotations, max_examples)
    notes += _size_note(rows, source.model)
    if other is not None and other.class_names is not None and other.class_names != class_names:
        raise AuditError(f"the compared run has classes {other.class_names}, not {class_names}", compare)
    builder = _config(visualization, _examples(rows, class_names), class_names, source, other)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    tool = WhatIf(builder, rows.index, list(class_names), notes, height=height)
    if _in_notebook():
        tool.widget  # noqa: B018 - build the widget now so a failure shows in the calling cell
    return tool
