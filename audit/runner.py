"""run_audit(): orchestration only.

Phases, each resumable from ``work/state.json``:

1. predict: stream the dataset once through one compiled function that returns
   class probabilities and penultimate features; store probabilities, the
   stored copy of each image and its built-in annotations.
2. explain: for a chosen subset (all, or ``explain_limit`` examples picked to
   include the most confident mistakes, every class and every annotation
   value), compute each explainer's maps and their deletion/insertion scores.
3. finish: write predictions.parquet and metrics.json, then mark the manifest
   complete.
4. TensorBoard: the logs are exported from the finished store into a staging
   folder under work/ and moved into tensorboard/; until then the manifest says
   ``"tensorboard": "pending"`` and ``--resume`` redoes only this phase.

A run is a pure function of (model, examples, options) per batch, so a resumed
run ends with results identical to an uninterrupted one.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from audit.errors import AuditError, DataError, ModelError
from audit.progress import bar, checkpoint
from audit.store import schema
from audit.store.writer import StoreWriter

DEFAULT_EXPLAIN = ("gradcam", "occlusion")
# Option fields spelled as the CLI spells them, so a message names what the user typed.
_CLI_FLAGS = {"tensorboard": "--no-tensorboard"}


def option_flag(name: str) -> str:
    """The CLI option of an :class:`AuditOptions` field: ``min_slice_size`` is ``--min-slice-size``."""
    return _CLI_FLAGS.get(name, "--" + name.replace("_", "-"))


def _whole(name: str, value, minimum: int, *, none_means: str = "") -> None:
    if value is None and none_means:
        return
    alternative = f" (or None: {none_means})" if none_means else ""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise AuditError(f"{option_flag(name)} must be a whole number{alternative}; received {value!r}")
    if value < minimum:
        raise AuditError(f"{option_flag(name)} must be {minimum} or more{alternative}; received {value!r}")


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

    def validate(self) -> "AuditOptions":
        """Check every option (run_audit does, before reading any input or writing anything).

        Raises:
            AuditError: one line naming the CLI option, e.g. "--seed must be 0 or more; received -1".
        """
        for name, minimum in (("batch_size", 1), ("bootstrap", 0), ("min_slice_size", 1), ("seed", 0)):
            _whole(name, getattr(self, name), minimum)
        _whole("explain_limit", self.explain_limit, 1, none_means="explain every example")
        _whole("occlusion_patch", self.occlusion_patch, 1, none_means="about 1/8 of the shorter side")
        if isinstance(self.rescale, bool) or not isinstance(self.rescale, Real) or not (
            math.isfinite(self.rescale) and self.rescale > 0
        ):
            raise AuditError(f"--rescale must be a positive number; received {self.rescale!r}")
        self._validate_names()
        if self.slice_pairs is not None and not isinstance(self.slice_pairs, (bool, np.bool_)):
            raise AuditError(f"--slice-pairs must be true, false or None; received {self.slice_pairs!r}")
        for name in ("unsafe", "tensorboard"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise AuditError(f"{option_flag(name)} must be true or false; received {getattr(self, name)!r}")
        return self

    def _validate_names(self) -> None:
        """explain, layer and class_names: known, non-empty, distinct names."""
        if self.explain is not None:
            if not isinstance(self.explain, (list, tuple)) or not all(isinstance(m, str) for m in self.explain):
                raise AuditError(f"--explain must be a list of explainer names (or None); received {self.explain!r}")
            unknown = [m for m in self.explain if m not in schema.EXPLAINERS]
            if unknown:
                raise AuditError(f"--explain: unknown explainer {unknown[0]!r}; choose from {', '.join(schema.EXPLAINERS)}")
            if len(set(self.explain)) < len(self.explain):
                raise AuditError(f"--explain names an explainer twice; received {','.join(self.explain)}")
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer.strip()):
            raise AuditError(f"--layer must be a layer name; received {self.layer!r}")
        if self.class_names is not None:
            from audit.io.data import _checked_names  # the one home of "no empty or repeated name"

            if not isinstance(self.class_names, (list, tuple)) or not all(isinstance(n, str) for n in self.class_names):
                raise AuditError(f"--class-names must be a list of names (or None); received {self.class_names!r}")
            _checked_names(self.class_names, "--class-names", None)

    def recorded(self) -> dict:
        d = asdict(self)
        d["explain"] = None if self.explain is None else list(self.explain)
        d["class_names"] = None if self.class_names is None else list(self.class_names)
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


_START_OVER = "rerun without --resume to start over"


def _short(digest) -> str:
    return f"{digest[:12]}…" if isinstance(digest, str) else "none"


def _input_changes(was: dict, now: dict) -> Iterator[str]:
    """What differs between the inputs recorded in two manifests: model, data, annotations, classes."""
    wm, nm = was.get("model", {}), now["model"]
    if wm.get("sha256") != nm["sha256"]:
        yield (f"the model file {nm['path']} changed since the interrupted run (sha256 {_short(wm.get('sha256'))} "
               f"then, {_short(nm['sha256'])} now); {_START_OVER}")
    wd, nd = was.get("dataset", {}), now["dataset"]
    if wd.get("source") != nd["source"]:
        yield f"DATA is {nd['source']} but the interrupted run read {wd.get('source')}; pass the same DATA or {_START_OVER}"
    if wd.get("count") != nd["count"]:
        yield (f"the examples listed by {nd['source']} changed since the interrupted run "
               f"({wd.get('count')} then, {nd['count']} now); {_START_OVER}")
    if wd.get("fingerprint") != nd["fingerprint"]:
        yield (f"the image files of {nd['source']} changed since the interrupted run (fingerprint "
               f"{_short(wd.get('fingerprint'))} then, {_short(nd['fingerprint'])} now); {_START_OVER}")
    wa, na = wd.get("annotations") or {}, nd["annotations"] or {}
    if wa.get("path") != na.get("path"):
        if not wa or not na:
            given = f"--annotations {na['path']} was given now but not" if na else f"--annotations {wa['path']} was given"
            yield f"{given} to the interrupted run; pass the same --annotations or {_START_OVER}"
        else:
            yield f"--annotations is {na['path']} but the interrupted run used {wa['path']}; {_START_OVER}"
    elif wa.get("sha256") != na.get("sha256"):
        yield (f"the annotations table {na['path']} changed since the interrupted run (sha256 "
               f"{_short(wa.get('sha256'))} then, {_short(na.get('sha256'))} now); {_START_OVER}")
    if was.get("class_names") != now["class_names"]:
        old, new = ", ".join(was.get("class_names") or []), ", ".join(now["class_names"])
        yield f"the class names changed since the interrupted run ({old} then, {new} now); {_START_OVER}"


def _shown(name: str, value) -> str:
    if name == "tensorboard":  # the CLI spells it --no-tensorboard
        value = not value
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "the default"
    return ",".join(map(str, value)) if isinstance(value, list) else json.dumps(value)


def _option_changes(was: dict, now: dict) -> Iterator[str]:
    old, new = was.get("options", {}), schema.to_json(now["options"])
    for name in [*new, *(k for k in old if k not in new)]:
        if old.get(name) != new.get(name):
            yield (f"{option_flag(name)} is {_shown(name, new.get(name))} but the interrupted run used "
                   f"{_shown(name, old.get(name))}; pass the same options or {_START_OVER}")


class _Run:
    """State shared by the phases of one run."""

    def __init__(self, model_path, data_path, out, annotations, options: AuditOptions, resume: bool, progress: bool):
        from audit.io.annotations import load_annotations
        from audit.io.data import open_dataset, resolve_class_names
        from audit.io.models import load_model

        # Validate every option and input before touching the output directory.
        self.options, self.progress = options.validate(), progress
        self.dataset = open_dataset(data_path)
        # The run's notes, not the options': one options object may serve many runs.
        self.notes: list[str] = list(self.dataset.notes)
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
        self._check_occlusion_patch()
        if options.layer and self.model.has_layers:
            self.model.find_layer(options.layer)
        self.shape = stored_shape(self.model.input_shape)
        self.manifest = self._manifest()
        self.writer = StoreWriter(out, resume=resume)
        try:
            if self.writer.resuming:
                self._check_same_run(self.writer.read_manifest())
            if not self.writer.export_only:
                self.writer.write_manifest({**self.manifest, "complete": False})
        except BaseException:
            self.writer.close()
            raise

    def _methods(self, asked: tuple[str, ...] | None) -> tuple[str, ...]:
        if self.model.has_layers:
            return DEFAULT_EXPLAIN if asked is None else tuple(asked)
        if asked is None:
            self.notes.append("SavedModel: no layers to explain with Grad-CAM; heatmaps are occlusion only")
            return ("occlusion",)
        need_layers = [m for m in asked if m != "occlusion"]
        if need_layers:
            raise ModelError(
                f"{', '.join(need_layers)} need the model's layers, which a SavedModel does not expose; "
                "use --explain occlusion or none, or save the model as .keras",
                self.model.path,
            )
        return tuple(asked)

    def _check_occlusion_patch(self) -> None:
        """A patch as large as the image covers all of it at once, so every map would be zero."""
        patch, (h, w) = self.options.occlusion_patch, self.model.input_shape[:2]
        if "occlusion" in self.methods and patch is not None and patch >= min(h, w):
            raise AuditError(
                f"--occlusion-patch {patch} is not smaller than the model's {h}x{w} input images "
                f"(every occlusion map would be zero); choose at most {min(h, w) - 1}"
            )

    def _manifest(self) -> dict:
        m, d = self.model, self.dataset
        dataset = {**d.describe(), "fingerprint": d.fingerprint(), "annotations": self.annotation_report}
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
        """Refuse to resume when any input that shapes the results differs from the interrupted
        run's, naming the first one: a mix of the two runs' state would be the result of neither."""
        for problem in (*_input_changes(previous, self.manifest), *_option_changes(previous, self.manifest)):
            raise AuditError(f"--resume: {problem}", self.writer.out)
        self.manifest["started_at"] = previous.get("started_at", self.manifest["started_at"])

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
                checkpoint("predict")
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
            self.notes.append(f"converted {converted} image(s) to {kind} to match the model's input")
        if skipped:
            self.notes.append(f"skipped {len(skipped)} unreadable image(s); listed in manifest.json")

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
        w.save_npy(schema.HEATMAP_INDEX, chosen)
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
                checkpoint("explain")
                advance(len(rows))
        explained = {"methods": methods, "count": k, "activation_layers": act_layers}
        cams = [e for name, e in explainers.items() if name.startswith("gradcam")]
        if cams:
            explained["layer"] = cams[0].layer_name
        if acts is not None and "activation_stats" not in w.state:
            batches = self.dataset.batches(
                self.model.input_shape, self.shape, batch_size=self.options.batch_size, rescale=self.options.rescale,
            )
            w.write_json(schema.ACTIVATION_STATS, acts.stats(_checkpointed("activations", (b.x for b in batches))))
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
        self.writer.write_predictions(predictions)
        self.writer.write_metrics(metrics)
        checkpoint("finish")
        self.manifest["dataset"]["skipped"] = self.writer.state.get("skipped", [])
        self.manifest["dataset"]["readable"] = int(len(predictions))
        self.manifest["notes"] = [*self.notes, *metrics.get("notes", [])]
        self.manifest["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        if o.tensorboard:
            self.manifest["tensorboard"] = schema.TENSORBOARD_PENDING
        self.writer.finish(self.manifest)

    def compute(self) -> None:
        """Phases 1 to 3, each from where an interrupted run left it."""
        if self.writer.state.get("predict_next", 0) < self.dataset.count:
            self.predict()
        self.check_readable()
        predictions = self.predictions()
        self.finish(predictions, self.explain(predictions))



# -- phase 4 ------------------------------------------------------------------------------
def export_tensorboard(w: StoreWriter) -> Path:
    """Export into work/ and move the files into place, so a kill midway leaves the store
    marked pending (never partial logs passed off as done) and --resume redoes just this.
    Every log file is listed as the store's own, so a re-run removes it."""
    from audit.views.tensorboard import EVENT_SUFFIX, export

    staging = w.staging(schema.TENSORBOARD_DIR)
    export(w.out, staging)
    # A schema-1 store's `keras-audit tensorboard OUT` wrote here without listing its files; its
    # event files are keras-audit's by name, and a second set would show every summary twice.
    for stale in (w.out / schema.TENSORBOARD_DIR).glob(f"events.out.tfevents.*{EVENT_SUFFIX}"):
        stale.unlink()
    w.publish(staging, schema.TENSORBOARD_DIR)
    w.update_manifest(tensorboard=schema.TENSORBOARD_WRITTEN)
    return w.out / schema.TENSORBOARD_DIR


def rewrite_tensorboard(store: str | Path) -> Path:
    """``keras-audit tensorboard OUT``: the same staged, listed export as a run's, into a finished store."""
    writer = StoreWriter(store, reopen=True)
    try:
        return export_tensorboard(writer)
    finally:
        writer.close()


def _checkpointed(phase: str, items: Iterable) -> Iterator:
    """``items``, passing the test-only kill point ``phase`` after each one is used."""
    for item in items:
        yield item
        checkpoint(phase)


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
    try:
        if not run.writer.export_only:
            run.compute()
        if options.tensorboard:
            export_tensorboard(run.writer)
    except AuditError:
        if not run.writer.export_only:
            run.writer.discard()  # a mistake found midway: leave nothing that looks like a result
        raise
    finally:
        run.writer.close()  # array files and the store's lock, also after an error
    return run.writer.out
