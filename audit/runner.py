"""run_audit(): orchestration only.

Phases, each resumable from ``work/state.json``:

1. predict: stream the dataset once through one compiled function that returns
   class probabilities and penultimate features; store probabilities, the
   stored copy of each image and its built-in annotations.
2. explain: for a chosen subset (all, or ``explain_limit`` examples picked to
   include the most confident mistakes, every class and every annotation
   value), compute each explainer's maps and their deletion/insertion scores.
3. finish: write predictions.parquet and metrics.json, then mark the manifest
   complete. TensorBoard logs are exported from the finished store.

A run is a pure function of (model, examples, options) per batch, so a resumed
run ends with results identical to an uninterrupted one.
"""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from audit.errors import AuditError, DataError, ModelError
from audit.progress import bar
from audit.store import schema
from audit.store.writer import StoreWriter, save_npy

DEFAULT_EXPLAIN = ("gradcam", "occlusion")


@dataclass
class AuditOptions:
    """Options of one audit run (recorded in the manifest)."""

    batch_size: int = 64
    rescale: float = 1.0
    explain: tuple[str, ...] | None = None  # None: gradcam + occlusion (occlusion only without layers)
    explain_limit: int | None = 500  # None: explain every example
    layer: str | None = None  # Grad-CAM layer; None: last 4-D layer
    occlusion_patch: int | None = None  # None: about 1/8 of the shorter side
    bootstrap: int = 1000
    min_slice_size: int = 30
    slice_pairs: bool | None = None
    class_names: list[str] | None = None
    seed: int = 0
    unsafe: bool = False
    tensorboard: bool = True
    notes: list[str] = field(default_factory=list, repr=False)

    def recorded(self) -> dict:
        d = asdict(self)
        d.pop("notes")
        d["explain"] = None if self.explain is None else list(self.explain)
        return d


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("keras-audit", "tensorflow-cpu", "tensorflow", "keras", "numpy", "pandas", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def stored_shape(input_shape: tuple[int, int, int]) -> tuple[int, int]:
    h, w = input_shape[:2]
    scale = min(1.0, schema.STORED_IMAGE_MAX_SIDE / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def select_for_explanation(predictions, limit: int | None, annotation_columns: list[str], seed: int) -> np.ndarray:
    """Example indices to explain: confident mistakes first, then every class and annotation value."""
    index = predictions["index"].to_numpy()
    if limit is None or limit >= len(index):
        return np.sort(index)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    wrong = predictions[~predictions["correct"]].sort_values("confidence", ascending=False, kind="stable")
    chosen += wrong["index"].head(limit // 3).tolist()
    groups = [predictions.groupby("label")]
    groups += [predictions.groupby(c, dropna=True) for c in annotation_columns if predictions[c].nunique() <= 50]
    per_group = max(1, limit // (3 * max(1, sum(g.ngroups for g in groups))))
    for grouped in groups:
        for _, rows in grouped:
            pool = rows["index"].to_numpy()
            chosen += rng.choice(pool, size=min(per_group, len(pool)), replace=False).tolist()
    chosen = list(dict.fromkeys(chosen))[:limit]
    rest = np.setdiff1d(index, chosen)
    fill = rng.choice(rest, size=min(limit - len(chosen), len(rest)), replace=False)
    return np.sort(np.concatenate([np.asarray(chosen, np.int64), fill.astype(np.int64)]))


class _Run:
    """State shared by the phases of one run."""

    def __init__(self, model_path, data_path, out, annotations, options: AuditOptions, resume: bool, progress: bool):
        from audit.io.annotations import load_annotations
        from audit.io.data import open_dataset, resolve_class_names
        from audit.io.models import load_model

        self.options, self.progress = options, progress
        # Validate every input before touching the output directory.
        self.dataset = open_dataset(data_path)
        self.model = load_model(model_path, unsafe=options.unsafe)
        if self.model.input_shape[-1] not in (1, 3):
            raise ModelError(
                f"model takes {self.model.input_shape[-1]}-channel input; image files give 1 (grayscale) or 3 (RGB)",
                self.model.path,
            )
        self.class_names = resolve_class_names(self.dataset, self.model.num_classes, options.class_names)
        self.annotations, self.annotation_report = (None, None)
        if annotations is not None:
            self.annotations, self.annotation_report = load_annotations(annotations, self.dataset)
        self.methods = self._methods(options.explain)
        if options.layer and self.model.has_layers:
            self.model.find_layer(options.layer)
        self.writer = StoreWriter(out, resume=resume)
        self.shape = stored_shape(self.model.input_shape)
        self.manifest = self._manifest()
        if self.writer.resuming:
            self._check_same_run(self.writer.read_manifest())
        self.writer.write_manifest({**self.manifest, "complete": False})

    def _methods(self, asked: tuple[str, ...] | None) -> tuple[str, ...]:
        unknown = [m for m in asked or () if m not in schema.EXPLAINERS]
        if unknown:
            raise AuditError(f"unknown explainer(s) {unknown}; choose from {', '.join(schema.EXPLAINERS)}")
        if self.model.has_layers:
            return DEFAULT_EXPLAIN if asked is None else tuple(asked)
        if asked is None:
            self.options.notes.append("SavedModel: no layers to explain with Grad-CAM; heatmaps are occlusion only")
            return ("occlusion",)
        need_layers = [m for m in asked if m != "occlusion"]
        if need_layers:
            raise ModelError(
                f"{', '.join(need_layers)} need the model's layers, which a SavedModel does not expose; "
                "use --explain occlusion or none, or save the model as .keras",
                self.model.path,
            )
        return tuple(asked)

    def _manifest(self) -> dict:
        m, d = self.model, self.dataset
        dataset = {**d.describe(), "annotations": self.annotation_report}
        return {
            "complete": False,
            "model": {
                "path": str(m.path),
                "name": m.name,
                "sha256": m.sha256,
                "format": m.format,
                "input_shape": list(m.input_shape),
                "num_classes": m.num_classes,
                "output_kind": m.output_kind,
                "softmax_applied": m.output_kind == "logits",
            },
            "dataset": dataset,
            "class_names": self.class_names,
            "options": self.options.recorded(),
            "stored_image_shape": list(self.shape),
            "versions": _versions(),
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def _check_same_run(self, previous: dict) -> None:
        same = (
            previous["model"]["sha256"] == self.manifest["model"]["sha256"]
            and previous["dataset"]["source"] == self.manifest["dataset"]["source"]
            and previous["dataset"]["count"] == self.manifest["dataset"]["count"]
            and previous["options"] == self.manifest["options"]
        )
        if not same:
            raise AuditError(
                "--resume needs the same model, data and options as the interrupted run", self.writer.out
            )
        self.manifest["started_at"] = previous["started_at"]

    # -- phase 1 --------------------------------------------------------------------------
    def predict(self) -> None:
        import tensorflow as tf

        n, c = self.dataset.count, self.model.num_classes
        w = self.writer
        start = w.state.get("predict_next", 0)
        skipped = list(w.state.get("skipped", []))
        probs = w.array(f"{schema.WORK_DIR}/probs.npy", (n, c), np.float32)
        builtin = w.array(f"{schema.WORK_DIR}/builtin.npy", (n, len(schema.BUILTIN_ANNOTATIONS)), np.float32)
        images = w.array(schema.IMAGES, (n, *self.shape, 3), np.uint8)
        fn = self.model.predict_fn(embeddings=self.model.has_layers)
        converted = int(w.state.get("converted", 0))
        want_channels = self.model.input_shape[-1]
        with bar("predict", n, completed=start, enabled=self.progress) as advance:
            for batch in self.dataset.batches(
                self.model.input_shape, self.shape, batch_size=self.options.batch_size,
                rescale=self.options.rescale, start=start,
            ):
                out = fn(tf.constant(batch.x))
                p, feats = (out if isinstance(out, tuple) else (out, None))
                p = p.numpy()
                bad = ~np.isfinite(p).all(axis=1)
                if bad.any():
                    first = int(batch.index[bad][0])
                    where = self.dataset.paths[first] if self.dataset.paths else f"example {first}"
                    raise ModelError(f"model produced NaN/inf outputs (first at {where})", self.model.path)
                probs.write(p, batch.index)
                builtin.write(batch.builtin, batch.index)
                images.write(batch.stored, batch.index)
                if feats is not None:
                    emb = w.array(schema.EMBEDDINGS, (n, feats.shape[-1]), np.float16)
                    emb.write(feats.numpy(), batch.index)
                converted += int(np.sum((batch.channels == 1) != (want_channels == 1)))
                w.flush()
                skipped += self.dataset.skipped
                self.dataset.skipped.clear()
                nxt = int(batch.index[-1]) + 1
                w.save_state(predict_next=nxt, skipped=skipped, converted=converted)
                advance(nxt - start)
                start = nxt
        skipped += self.dataset.skipped  # unreadable files after the last batch
        w.save_state(predict_next=n, skipped=skipped, converted=converted)

    def check_readable(self) -> None:
        """Fail if nothing was readable; otherwise say what was skipped or converted."""
        n, state = self.dataset.count, self.writer.state
        skipped, converted = state.get("skipped", []), state.get("converted", 0)
        if len(skipped) == n:
            raise DataError(f"none of the {n} images could be read", self.dataset.source)
        if converted:
            kind = "grayscale" if self.model.input_shape[-1] == 1 else "RGB"
            self.options.notes.append(f"converted {converted} image(s) to {kind} to match the model's input")
        if skipped:
            self.options.notes.append(f"skipped {len(skipped)} unreadable image(s); listed in manifest.json")

    def predictions(self):
        """The predictions table, built from the stored arrays."""
        import pandas as pd

        w, names = self.writer, self.class_names
        skipped = {s["index"] for s in w.state.get("skipped", [])}
        keep = np.array([i for i in range(self.dataset.count) if i not in skipped], np.int64)
        probs = np.asarray(w.work_array("probs.npy"))[keep]
        builtin = np.asarray(w.work_array("builtin.npy"))[keep]
        labels = self.dataset.labels[keep]
        pred = probs.argmax(axis=1)
        frame = pd.DataFrame(
            {
                "index": keep,
                "path": [self.dataset.paths[i] for i in keep] if self.dataset.paths else None,
                "label": labels,
                "pred": pred,
                "confidence": probs.max(axis=1),
                "correct": pred == labels,
            }
        )
        frame["path"] = frame["path"].astype("string")
        for k in range(len(names)):
            frame[schema.prob_column(k)] = probs[:, k]
        if self.annotations is not None:
            frame = pd.concat([frame, self.annotations.iloc[keep].reset_index(drop=True)], axis=1)
        for j, col in enumerate(schema.BUILTIN_ANNOTATIONS):
            if col not in frame.columns:  # a user column of the same name wins
                frame[col] = builtin[:, j]
        return frame

    # -- phase 2 --------------------------------------------------------------------------
    def explain(self, predictions) -> dict:
        from audit.explain import EXPLAINERS, Activations, quality
        from audit.explain.occlusion import default_patch

        methods = [m for m in self.methods if m != "activations"]
        want_acts = "activations" in self.methods
        if not (methods or want_acts):
            return {}
        w = self.writer
        user_cols = list(self.annotations.columns) if self.annotations is not None else []
        chosen = np.asarray(w.state["explained"], np.int64) if "explained" in w.state else select_for_explanation(
            predictions, self.options.explain_limit, user_cols, self.options.seed
        )
        save_npy(w.out / schema.HEATMAP_INDEX, chosen)
        w.save_state(explained=chosen.tolist())
        k = len(chosen)
        targets_all = dict(zip(predictions["index"].to_numpy(), predictions["pred"].to_numpy()))
        layer = self.options.layer
        explainers = {}
        for m in methods:
            if m == "occlusion":
                patch = self.options.occlusion_patch or default_patch(self.model.input_shape)
                explainers[m] = EXPLAINERS[m](self.model, patch_size=patch)
            else:
                explainers[m] = EXPLAINERS[m](self.model, layer=layer)
        maps_out = {m: w.array(schema.heatmap_file(m), (k, *self.shape), np.float16) for m in methods}
        scores = {m: w.array(f"{schema.WORK_DIR}/{_quality_file(m)}", (k, 2), np.float32) for m in methods}
        acts = Activations(self.model) if want_acts else None
        act_layers = list(w.state.get("activation_layers", []))
        done = int(w.state.get("explain_done", 0))
        with bar("explain", k, completed=done, enabled=self.progress) as advance:
            for batch in self.dataset.batches(
                self.model.input_shape, self.shape, batch_size=self.options.batch_size,
                rescale=self.options.rescale, indices=chosen[done:],
            ):
                rows = np.searchsorted(chosen, batch.index)
                targets = np.array([targets_all[i] for i in batch.index])
                for m, explainer in explainers.items():
                    maps = explainer(batch.x, targets=targets)
                    q = quality.deletion_insertion(self.model, batch.x, maps, targets)
                    maps_out[m].write(_resize_maps(maps, self.shape), rows)
                    scores[m].write(np.stack([q["deletion"], q["insertion"]], axis=1), rows)
                if acts is not None:
                    for name, value in acts(batch.x).items():
                        if name not in act_layers:
                            act_layers.append(name)
                        value = _shrink_activations(value)
                        arr = w.array(schema.activation_file(name), (k, *value.shape[1:]), np.float16)
                        arr.write(value.astype(np.float16), rows)
                w.flush()
                done = int(rows[-1]) + 1
                w.save_state(explain_done=done, activation_layers=act_layers)
                advance(len(rows))
        explained = {"methods": methods, "count": k, "activation_layers": act_layers}
        cams = [e for name, e in explainers.items() if name.startswith("gradcam")]
        if cams:
            explained["layer"] = cams[0].layer_name
        if acts is not None and "activation_stats" not in w.state:
            stats = acts.stats(
                b.x for b in self.dataset.batches(
                    self.model.input_shape, self.shape, batch_size=self.options.batch_size, rescale=self.options.rescale,
                )
            )
            from audit.store.writer import write_json

            write_json(w.out / schema.ACTIVATION_STATS, stats)
            w.save_state(activation_stats=True)
        quality_summary = {}
        for m in methods:
            q = np.asarray(w.work_array(_quality_file(m)))
            quality_summary[m] = {
                "deletion_auc": float(np.mean(q[:, 0])),
                "insertion_auc": float(np.mean(q[:, 1])),
                "n": int(len(q)),
                "note": "mean area under the target-probability curve; deletion: lower is better, insertion: higher is better",
            }
        self.manifest["explained"] = explained
        return quality_summary

    # -- phase 3 --------------------------------------------------------------------------
    def finish(self, predictions, explanation_quality: dict) -> None:
        from audit.metrics import compute_metrics

        o = self.options
        metrics = compute_metrics(
            predictions, self.class_names, bootstrap=o.bootstrap, min_slice_size=o.min_slice_size,
            slice_pairs=o.slice_pairs, seed=o.seed,
        )
        if explanation_quality:
            metrics["explanations"] = explanation_quality
        o.notes.extend(metrics.get("notes", []))
        self.writer.write_predictions(predictions)
        self.writer.write_metrics(metrics)
        self.manifest["dataset"]["skipped"] = self.writer.state.get("skipped", [])
        self.manifest["dataset"]["readable"] = int(len(predictions))
        self.manifest["notes"] = list(o.notes)
        self.manifest["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.writer.finish(self.manifest)


def _quality_file(method: str) -> str:
    return f"quality_{schema.file_stem(method)}.npy"


def _shrink_activations(value: np.ndarray) -> np.ndarray:
    """Area-average 4-D activations down to the stored size: they are for looking at, and a
    full-resolution early layer of a large model would take gigabytes per layer."""
    if value.ndim != 4 or max(value.shape[1:3]) <= schema.STORED_ACTIVATION_MAX_SIDE:
        return value
    import tensorflow as tf

    h, w = value.shape[1:3]
    scale = schema.STORED_ACTIVATION_MAX_SIDE / max(h, w)
    return tf.image.resize(value, (max(1, round(h * scale)), max(1, round(w * scale))), method="area").numpy()


def _resize_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    maps = np.asarray(maps, np.float32)
    if maps.shape[1:] == tuple(shape):
        return maps.astype(np.float16)
    import tensorflow as tf

    resized = tf.image.resize(maps[..., None], shape, antialias=True).numpy()[..., 0]
    return np.clip(resized, 0.0, 1.0).astype(np.float16)


def run_audit(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    annotations: str | Path | None = None,
    options: AuditOptions | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Audit ``model`` on ``data`` and write a results store to ``out``.

    Example:
        >>> run_audit("sample_models/shapes_bias.keras", "sample_models/shapes_eval",
        ...           "audit_out", annotations="sample_models/shapes_eval/annotations.csv")  # doctest: +SKIP
    """
    options = options or AuditOptions()
    run = _Run(model, data, out, annotations, options, resume, progress)
    if run.writer.state.get("predict_next", 0) < run.dataset.count:
        run.predict()
    run.check_readable()
    predictions = run.predictions()
    quality = run.explain(predictions)
    run.finish(predictions, quality)
    if options.tensorboard:
        from audit.sinks.tensorboard import export

        export(run.writer.out)
    return run.writer.out
