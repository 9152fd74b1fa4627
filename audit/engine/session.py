"""The session of one run: every input validated, the manifest drafted, the store opened.

Everything a user can get wrong is checked here, before the store is touched; a
resumed run is refused when any input that shapes the result differs from the
interrupted run's. The phases (predict, explain, finish) read the session and add
to its notes and manifest; they never change the options.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import platform
from collections.abc import Iterator, Mapping
from typing import Any

from audit.engine.options import DEFAULT_EXPLAIN, AuditOptions, option_flag
from audit.errors import AuditError, ModelError
from audit.store import schema
from audit.store.writer import StoreWriter
from audit.viz import stored_shape

_START_OVER = "rerun without --resume to start over"
_NO_LAYERS_NOTE = "SavedModel: no layers to explain with Grad-CAM; heatmaps are occlusion only"


def library_versions(packages=("keras-audit", "tensorflow-cpu", "tensorflow", "keras", "numpy", "pandas",
                                 "scikit-learn")) -> dict[str, str]:
    """Installed versions of ``packages`` (those not installed are left out) and of Python, read
    from package metadata without importing anything: what a store records and --version says."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def needs_layers(method: str) -> bool:
    """Whether ``method`` (a registry method or "activations") needs the model's layers."""
    from audit.explain.registry import METHODS

    return method == "activations" or METHODS[method].needs_layers


class Session:
    """Validated inputs, the manifest in the making and the open StoreWriter of one run."""

    def __init__(self, model_path, data_path, out, annotations, options: AuditOptions, resume: bool, progress: bool):
        self.options, self.progress = options.validate(), progress
        self._open_inputs(model_path, data_path, annotations)
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
        # After importing TensorFlow and loading a model the heap holds ~450k objects, and each
        # full pass of Python's collector over them costs ~0.3 s; tracing the phases' graphs
        # allocates enough to trigger some (issue 13: tracing the input pipeline took 0.35-0.45 s
        # with them, 0.08-0.14 s without). What exists now lives as long as the run, so it is
        # kept out of the collector's sight until close() hands it back. A heap someone else
        # froze (a preforking server, an outer session) is theirs: left as it is, both ways.
        self._froze_heap = gc.get_freeze_count() == 0
        if self._froze_heap:
            gc.freeze()

    def _open_inputs(self, model_path, data_path, annotations) -> None:
        """Read and check the data, model, class names, annotations and explainer choices."""
        from audit.io.annotations import load_annotations
        from audit.io.data import open_dataset, resolve_class_names
        from audit.io.models import load_model

        options = self.options
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
        self._preprocessing()
        self.annotations, self.annotation_report = (None, None)
        if annotations is not None:
            self.annotations, self.annotation_report = load_annotations(annotations, self.dataset)
        self.shard = None
        if options.shard is not None:  # one share of the data, rows numbered within it (audit.engine.shard)
            from audit.engine.shard import restrict

            self.shard, self.dataset, self.annotations = restrict(
                self.dataset, self.annotations, options.shard, options.batch_size)
        self.methods = self._methods(options.explain)
        self._check_occlusion_patch()
        if options.layer and self.model.has_layers:
            self.model.find_layer(options.layer)

    def _preprocessing(self) -> None:
        """The run's preprocessing, given to the dataset; a note when the model rescales its input too."""
        from audit.io.preprocess import scaling_layer

        self.preprocessing = self.options.preprocessing()
        self.dataset.preprocessing = self.preprocessing
        flags = self.options.scaling_flags()
        layer = scaling_layer(self.model.keras_model) if flags and self.model.has_layers else None
        if layer is not None:
            fix = "use --preprocess none" if self.options.preprocess != "none" else f"drop {flags}"
            self.notes.append(f"the model rescales its input itself (layer {layer!r}); {flags} rescales again: {fix}")

    @property
    def user_columns(self) -> list[str]:
        return list(self.annotations.columns) if self.annotations is not None else []

    def _methods(self, asked: tuple[str, ...] | None) -> tuple[str, ...]:
        if self.model.has_layers:
            return DEFAULT_EXPLAIN if asked is None else tuple(asked)
        if asked is None:
            self.notes.append(_NO_LAYERS_NOTE)
            return tuple(m for m in DEFAULT_EXPLAIN if not needs_layers(m))
        need_layers = [m for m in asked if needs_layers(m)]
        if need_layers:
            raise ModelError(
                f"{', '.join(need_layers)} {'needs' if len(need_layers) == 1 else 'need'} the model's layers, "
                "which a SavedModel does not expose; "
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
            "preprocessing": self.preprocessing.describe(),
            "stored_image_shape": list(self.shape),
            "versions": library_versions(),
            "started_at": _now(),
        }

    def _check_same_run(self, previous: Mapping[str, Any]) -> None:
        """Refuse to resume when any input that shapes the results differs from the interrupted
        run's, naming the first one: a mix of the two runs' state would be the result of neither."""
        for problem in (*_input_changes(previous, self.manifest), *_option_changes(previous, self.manifest)):
            raise AuditError(f"--resume: {problem}", self.writer.out)
        self.manifest["started_at"] = previous.get("started_at", self.manifest["started_at"])

    def close(self) -> None:
        """Close the store's array files and release its lock (also after an error)."""
        if self._froze_heap:
            self._froze_heap = False
            gc.unfreeze()  # what became garbage among the frozen objects is collected again
        self.writer.close()


# -- what changed since an interrupted run ------------------------------------------------------
def _short(digest) -> str:
    return f"{digest[:12]}…" if isinstance(digest, str) else "none"


def _input_changes(was: Mapping[str, Any], now: dict) -> Iterator[str]:
    """What differs between the inputs recorded in two manifests: model, data, annotations, classes."""
    wm, nm = was.get("model", {}), now["model"]
    if wm.get("sha256") != nm["sha256"]:
        yield (f"the model file {nm['path']} changed since the interrupted run (sha256 {_short(wm.get('sha256'))} "
               f"then, {_short(nm['sha256'])} now); {_START_OVER}")
    wd, nd = was.get("dataset", {}), now["dataset"]
    if wd.get("source") != nd["source"]:
        yield (f"DATA is {nd['source']} but the interrupted run read {wd.get('source')}; "
               f"pass the same DATA or {_START_OVER}")
    if wd.get("count") != nd["count"]:
        yield (f"the examples listed by {nd['source']} changed since the interrupted run "
               f"({wd.get('count')} then, {nd['count']} now); {_START_OVER}")
    if wd.get("fingerprint") != nd["fingerprint"]:
        yield (f"the image files of {nd['source']} changed since the interrupted run (fingerprint "
               f"{_short(wd.get('fingerprint'))} then, {_short(nd['fingerprint'])} now); {_START_OVER}")
    yield from _annotation_changes(wd.get("annotations") or {}, nd["annotations"] or {})
    if was.get("class_names") != now["class_names"]:
        old, new = ", ".join(was.get("class_names") or []), ", ".join(now["class_names"])
        yield f"the class names changed since the interrupted run ({old} then, {new} now); {_START_OVER}"


def _annotation_changes(wa: dict, na: dict) -> Iterator[str]:
    if wa.get("path") != na.get("path"):
        if not wa or not na:
            given = (f"--annotations {na['path']} was given now but not" if na
                     else f"--annotations {wa['path']} was given")
            yield f"{given} to the interrupted run; pass the same --annotations or {_START_OVER}"
        else:
            yield f"--annotations is {na['path']} but the interrupted run used {wa['path']}; {_START_OVER}"
    elif wa.get("sha256") != na.get("sha256"):
        yield (f"the annotations table {na['path']} changed since the interrupted run (sha256 "
               f"{_short(wa.get('sha256'))} then, {_short(na.get('sha256'))} now); {_START_OVER}")


def _shown(name: str, value) -> str:
    if name == "tensorboard":  # the CLI spells it --no-tensorboard
        value = not value
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "the default"
    return ",".join(map(str, value)) if isinstance(value, list) else json.dumps(value)


def _option_changes(was: Mapping[str, Any], now: dict) -> Iterator[str]:
    old, new = was.get("options", {}), schema.to_json(now["options"])
    # An option a store from before it does not record had its default then.
    defaults = schema.to_json(AuditOptions().recorded())
    for name in [*new, *(k for k in old if k not in new)]:
        if old.get(name, defaults.get(name)) != new.get(name):
            yield (f"{option_flag(name)} is {_shown(name, new.get(name))} but the interrupted run used "
                   f"{_shown(name, old.get(name))}; pass the same options or {_START_OVER}")
