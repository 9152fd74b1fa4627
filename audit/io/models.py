"""Load a saved classifier and give uniform access to it.

:func:`load_model` accepts Keras 3 ``.keras`` files, legacy ``.h5`` files and
TensorFlow SavedModel directories. Keras files load with ``safe_mode`` on, on a Keras
without known bypasses, after a scan of their config for code-running layers; a
SavedModel (no safe mode exists for it) only when the caller opts out with ``unsafe``.
The returned :class:`LoadedModel` knows the input size, the number of classes and
the kind of output head (softmax, logits or a single sigmoid unit), finds layers
through nested sub-models, and builds compiled functions that also return
intermediate tensors ("taps").

Taps work by swapping a layer's ``call`` for the duration of a trace, so they
reach layers inside nested backbones and loaded Sequential models, where
``keras.Model(model.inputs, layer.output)`` fails with "Graph disconnected" or
"never been called". A swap is seen only by the thread that made it (any other
thread calling the model meanwhile runs the real layer), is undone by putting
back exactly what was there, and every trace that taps a model holds the model's
lock (:attr:`LoadedModel.lock`), so two traces never swap the same layers at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import warnings
import weakref
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import ModelError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")

# What Keras says when a model saved with a list of inputs is called on one tensor (legacy .h5).
_INPUTS_STRUCTURE_WARNING = r"The structure of `inputs` doesn't match the expected structure"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# The first Keras release with no known way around its safe mode or out of the model archive:
# 3.15.0 fixed path traversal through layer names (CVE-2026-12479) and Lambda deserialised
# without a SafeModeScope (CVE-2026-12481); 3.15.1 checks every HDF5 group on the path and
# rejects decompression bombs. Older releases have published bypasses (README, safe mode).
KERAS_FLOOR = (3, 15, 1)
_FLOOR_TEXT = ".".join(map(str, KERAS_FLOOR))

# A model config bigger than this is not a real classifier's (a 1000-layer net is a few MB);
# reading it whole would let a zip bomb exhaust memory before Keras sees the file.
_MAX_CONFIG_BYTES = 64 << 20

# Layers whose loading runs code or reads graphs from outside the file. Keras' safe mode refuses
# them too, but it has had bypasses, so they are refused here before Keras parses anything.
_UNSAFE_LAYERS = {
    "Lambda": "runs arbitrary Python code when loaded",
    "TFSMLayer": "loads an external TensorFlow SavedModel (arbitrary graph operations)",
    "TorchModuleWrapper": "unpickles a PyTorch module, which runs arbitrary code",
    "JaxLayer": "calls functions named in the file",
    "FlaxLayer": "calls functions named in the file",
}

# Keras functions that published safe-mode bypasses referenced from a config (CVE-2025-8747,
# CVE-2025-9906, the TFSMLayer constructor of keras PR #23654); no classifier's config names them.
_GADGETS = {"load_model", "load_weights", "enable_unsafe_deserialization", "get_file", "set_global_attribute",
            "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer", "Lambda"}


def _check_keras_version(version: str, path: Path | None = None) -> None:
    """Refuse a Keras whose safe mode has known bypasses; the file cannot be trusted to it."""
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    nums = tuple(int(n or 0) for n in found.groups()) if found else ()
    if nums < KERAS_FLOOR:  # an unreadable version compares as () and is refused too
        raise ModelError(
            f"the installed Keras {version} has known safe-mode bypasses (fixed by {_FLOOR_TEXT}); "
            f'upgrade with pip install -U "keras>={_FLOOR_TEXT}", or pass --unsafe only if you trust this file',
            path,
        )


def _config_of(path: Path) -> dict | None:
    """The model's JSON config read without deserialising any layer."""
    if path.suffix.lower() == ".keras":
        with zipfile.ZipFile(path) as z:
            if "config.json" not in z.namelist():
                raise ModelError("not a Keras model archive: the zip file has no config.json", path)
            size = z.getinfo("config.json").file_size
            if size > _MAX_CONFIG_BYTES:
                raise ModelError(
                    f"config.json is {size >> 20} MiB, too big for a model config (corrupt or hostile)", path)
            return _parsed_config(z.read("config.json"), path)
    import h5py

    if not h5py.is_hdf5(path):
        raise ModelError("not a readable Keras model file (corrupt: not an HDF5 file)", path)
    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
        if raw is None:
            return None
        return _parsed_config(raw, path)


def _parsed_config(raw: bytes | str, path: Path) -> dict:
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except RecursionError:  # json nests by recursion; a hostile file can nest deeper than Python allows
        raise ModelError("model config is nested too deeply to be a Keras model (corrupt or hostile)", path) from None
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise ModelError("model config is not a Keras model (expected a JSON object with a 'class_name')", path)
    return config


def _config_objects(config: Any) -> Iterator[dict]:
    """Every JSON object in a model config, at any depth; iterative, so a deeply nested config
    cannot overflow the stack."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            yield node
            stack.extend(node.values())


def _referenced_names(config: Any) -> Iterator[tuple[str, str]]:
    """(kind, name) for every class and function the config names, at any depth.

    ``registered_name`` ('package>Name') and serialised function references
    ({'class_name': 'function', 'config': 'load_model'}) count too: both make Keras look a name up.
    """
    for node in _config_objects(config):
        cls, reg = node.get("class_name"), node.get("registered_name")
        if isinstance(cls, str):
            yield "class", cls
            if cls == "function" and isinstance(node.get("config"), str):
                yield "function", node["config"].rsplit(".", 1)[-1]
        if isinstance(reg, str):
            yield "class", reg.rsplit(">", 1)[-1]


def _refuse_unsafe_config(config: dict, path: Path) -> None:
    for kind, name in _referenced_names(config):
        if kind == "class" and name in _UNSAFE_LAYERS:
            raise ModelError(
                f"model contains a {name} layer, which {_UNSAFE_LAYERS[name]}; "
                "refusing to load it in safe mode (pass --unsafe only if you trust this file)",
                path,
            )
        if kind == "function" and name in _GADGETS:
            raise ModelError(
                f"model config references the Keras function {name!r}, which published safe-mode bypasses use "
                "to run code; refusing to load it in safe mode (pass --unsafe only if you trust this file)",
                path,
            )


def _qualified_layers(model, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every layer as (qualified name, layer), descending into nested models."""
    for layer in getattr(model, "layers", []):
        name = f"{prefix}{layer.name}"
        yield name, layer
        if hasattr(layer, "layers"):
            yield from _qualified_layers(layer, f"{name}/")


def _output_shape(layer) -> tuple:
    """A layer's output shape, batch included; () when it is not known."""
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return tuple(getattr(layer, "_build_output_shape", None) or ())


def _head_layer(model):
    """The layer whose output is the model's output, looked up through nesting."""
    layer = model.layers[-1]
    try:
        outputs = model.outputs
        if outputs:
            layer = outputs[0]._keras_history.operation
    except (AttributeError, ValueError):
        pass
    return _head_layer(layer) if hasattr(layer, "layers") else layer


def _activation_name(layer) -> str | None:
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    name = getattr(act, "__name__", str(act))
    return {"softmax": "softmax", "sigmoid": "sigmoid", "linear": "linear"}.get(name, name)


@dataclass
class LoadedModel:
    """A loaded classifier with what the audit needs to know about it.

    Example:
        >>> m = load_model("sample_models/shapes_bias.keras")  # doctest: +SKIP
        >>> m.input_shape, m.num_classes, m.output_kind       # doctest: +SKIP
        ((64, 64, 3), 3, 'softmax')
    """

    path: Path
    format: str  # "keras" | "h5" | "savedmodel"
    sha256: str
    input_shape: tuple[int, int, int]  # (height, width, channels)
    num_classes: int  # 2 for a single sigmoid unit
    output_kind: str  # "softmax" | "logits" | "sigmoid"
    keras_model: Any = None  # None for a SavedModel
    _call: Callable | None = field(default=None, repr=False)
    _owner: Any = field(default=None, repr=False)  # keeps a SavedModel's variables alive
    # Compiled functions keyed by (owner, name, ...): every explainer built on this model
    # reuses its tf.function instead of tracing a new one per instance or batch.
    compiled: dict = field(default_factory=dict, repr=False)
    _lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def lock(self) -> threading.RLock:
        """The lock held while a function that taps this model is traced (hold it around the taps).

        Shared by every LoadedModel that wraps the same Keras model (or SavedModel),
        so two explainers built from one ``keras.Model`` never swap its layers at once.
        """
        owner = self.keras_model if self.keras_model is not None else self._owner
        return self._lock if owner is None else model_lock(owner)

    def compile(self, key, python_fn: Callable, input_signature: list | None = None, **options) -> Callable:
        """The ``tf.function`` of ``python_fn``, cached under ``key`` in :attr:`compiled`.

        With an ``input_signature`` the one concrete trace is made here, so errors found while
        tracing (an unused or shared layer) surface before the function is cached. A
        ``python_fn`` that taps layers holds :attr:`lock` around its taps, so that every trace,
        this one and any retrace, swaps them under the lock. This method takes no lock itself:
        a plain forward need not wait for another thread's trace. Two threads that miss the
        cache together both trace, and the first stored is kept.
        """
        cached = self.compiled.get(key)
        if cached is not None:
            return cached
        import tensorflow as tf

        fn = tf.function(python_fn, input_signature=input_signature, **options)
        if input_signature is not None:
            fn.get_concrete_function()
        return self.compiled.setdefault(key, fn)

    @property
    def name(self) -> str:
        return getattr(self.keras_model, "name", self.path.stem)

    @property
    def has_layers(self) -> bool:
        return self.keras_model is not None

    def require_layers(self, what: str) -> Any:
        if self.keras_model is None:
            raise ModelError(
                f"{what} needs the model's layers, which a SavedModel does not expose; "
                "save the model as .keras to use it",
                self.path,
            )
        return self.keras_model

    # -- layers ---------------------------------------------------------------
    def layers(self) -> list[tuple[str, Any]]:
        """All layers as (qualified name, layer); nested names look like 'backbone/conv'."""
        return list(_qualified_layers(self.require_layers("layer lookup")))

    def find_layer(self, layer) -> tuple[str, Any]:
        """Resolve a layer object, a qualified name ('backbone/conv') or a plain inner name."""
        layers = self.layers()
        if not isinstance(layer, str):
            for name, obj in layers:
                if obj is layer:
                    return name, obj
            raise ModelError(f"layer {getattr(layer, 'name', layer)!r} is not part of the model", self.path)
        exact = [(n, obj) for n, obj in layers if n == layer]
        plain = [(n, obj) for n, obj in layers if n.rsplit("/", 1)[-1] == layer]
        found = exact or plain
        if len(found) == 1:
            return found[0]
        names = ", ".join(n for n, _ in layers)
        reason = "is ambiguous" if found else "does not exist"
        raise ModelError(f"layer {layer!r} {reason}; layers are: {names}", self.path)

    def spatial_layers(self) -> list[tuple[str, Any]]:
        """Layers with a 4-D (batch, height, width, channels) output, in model order."""
        out = []
        import keras

        for name, layer in self.layers():
            if hasattr(layer, "layers") or isinstance(layer, keras.layers.InputLayer):
                continue
            if len(_output_shape(layer)) == 4:
                out.append((name, layer))
        return out

    def describe_layers(self) -> list[dict]:
        """The layers Grad-CAM and activations can use (4-D outputs), in model order.

        Each entry has ``name`` (qualified, e.g. 'backbone/conv', what ``--layer`` takes),
        ``class``, ``output_shape``, ``default`` (True for the layer Grad-CAM uses without
        ``--layer``, chosen by the explainers' own rule, so the two never disagree) and
        ``why`` (the reason, on the default only).
        """
        from audit.explain.base import spatial_layer

        try:
            default = spatial_layer(self, None)[0]
        except ModelError:  # no 4-D layer at all: nothing to list
            default = None
        return [
            {"name": name, "class": type(layer).__name__, "output_shape": _output_shape(layer),
             "default": name == default, "why": "last layer with a 4-D output" if name == default else ""}
            for name, layer in self.spatial_layers()
        ]

    def last_spatial_layer(self) -> tuple[str, Any]:
        layers = self.spatial_layers()
        if not layers:
            raise ModelError("model has no layer with a 4-D (batch, h, w, c) output", self.path)
        return layers[-1]

    def head_layer(self):
        return _head_layer(self.require_layers("the output head"))

    # -- calling --------------------------------------------------------------
    def raw_output(self, x):
        """The model's output tensor as stored (softmax, logits or sigmoid)."""
        if self._call is not None:
            return self._call(x)
        return self.keras_model(x, training=False)

    def to_probs(self, y):
        """Turn a raw output batch into (N, C) float32 class probabilities."""
        import tensorflow as tf

        y = tf.cast(y, tf.float32)
        if self.output_kind == "logits":
            return tf.nn.softmax(y, axis=-1)
        if self.output_kind == "sigmoid":
            return tf.concat([1.0 - y, y], axis=-1)
        return y

    def predict_fn(self, embeddings: bool = False) -> Callable:
        """A compiled ``x -> probs`` (or ``x -> (probs, penultimate features)``), built once."""
        key = ("predict", embeddings)
        if key in self.compiled:
            return self.compiled[key]
        import tensorflow as tf

        if embeddings and self.has_layers:
            head = self.head_layer()

            def fn(x):
                with self.lock, tap(head, "input") as rec:
                    y = self.raw_output(x)
                feats = rec.one(head.name, self.path)
                feats = tf.reshape(feats, (tf.shape(feats)[0], -1))
                return self.to_probs(y), tf.cast(feats, tf.float32)

        else:

            def fn(x):
                return self.to_probs(self.raw_output(x))

        return self.compile(key, fn, reduce_retracing=True, autograph=False)

    def trace_counts(self) -> dict[str, int]:
        """How often each compiled function was traced; constant across calls of one input shape."""
        return {
            "/".join(map(str, key if isinstance(key, tuple) else (key,))): int(fn.experimental_get_tracing_count())
            for key, fn in self.compiled.items()
            if hasattr(fn, "experimental_get_tracing_count")
        }

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, C) for a preprocessed batch, in chunks."""
        fn = self.predict_fn()
        parts = [fn(x[i : i + batch_size]).numpy() for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.num_classes), np.float32)


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The re-entrant lock of one model object (created on first use, dropped with the model)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


class TapRecord:
    """What a :func:`tap` saw: one value per call of the layer while the block ran.

    A layer the model calls twice in one pass (a shared layer) records two values;
    :meth:`one` is for callers that need a single value, and refuses that case by name.
    """

    def __init__(self, layer, what: str):
        self.layer, self.what = layer, what
        self.values: list = []

    def one(self, name: str | None = None, path: Path | None = None):
        """The layer's only recorded value, or a one-line ModelError naming the layer."""
        name = name or self.layer.name
        if not self.values:
            raise ModelError(f"layer {name!r} is not used when the model runs", path)
        if len(self.values) > 1:
            raise ModelError(
                f"layer {name!r} is called {len(self.values)} times in one pass (a shared layer), so its "
                f"{self.what} is not one tensor; choose a layer the model calls once",
                path,
            )
        return self.values[0]


@contextlib.contextmanager
def _swapped(obj, attr: str, replacement: Callable, name: str | None = None):
    """Within the block, ``obj.attr`` is ``replacement(current, *args)`` for this thread only.

    ``current`` is what ``obj.attr`` was (an outer swap, an instance attribute or the
    class's method); other threads keep calling it. Afterwards the instance attribute
    is exactly what it was before, or absent if it was absent.
    """
    had = attr in vars(obj)
    previous = vars(obj).get(attr)
    current = getattr(obj, attr)
    owner = threading.get_ident()

    def dispatch(*args, **kwargs):
        if threading.get_ident() == owner:
            return replacement(current, *args, **kwargs)
        return current(*args, **kwargs)

    if name is not None:
        dispatch.__name__ = name  # what _activation_name reads from another thread
    setattr(obj, attr, dispatch)
    try:
        yield
    finally:
        if had:
            setattr(obj, attr, previous)
        else:
            delattr(obj, attr)


@contextlib.contextmanager
def tap(layer, what: str = "output", on_value: Callable | None = None):
    """Record a layer's input or output while the model is called inside the block.

    Yields a :class:`TapRecord` with one value per call of the layer. ``on_value``
    can transform each recorded tensor before the rest of the model sees it (e.g.
    ``tape.watch``); the transformed tensor is what flows on. Works inside
    ``tf.function`` because the swap is active while tracing; only the calling
    thread sees it. Trace under the model's :attr:`LoadedModel.lock`. Taps nest,
    also on one layer.
    """
    if what not in ("input", "output"):
        raise ValueError(f"what must be 'input' or 'output'; received: {what!r}")
    record = TapRecord(layer, what)

    def keep(value):
        value = on_value(value) if on_value else value
        record.values.append(value)
        return value

    def call(original, *args, **kwargs):
        if what == "input":
            if args:
                args = (keep(args[0]), *args[1:])
            else:
                first = next(iter(kwargs))
                kwargs = {**kwargs, first: keep(kwargs[first])}
            return original(*args, **kwargs)
        return keep(original(*args, **kwargs))

    with _swapped(layer, "call", call):
        yield record


@contextlib.contextmanager
def pre_activation(layer):
    """Within the block, the head layer returns scores before softmax/sigmoid (for this thread only)."""
    import keras

    if isinstance(layer, keras.layers.Softmax) or (
        isinstance(layer, keras.layers.Activation) and _activation_name(layer) in ("softmax", "sigmoid")
    ):
        with _swapped(layer, "call", lambda original, inputs, *a, **k: inputs):
            yield
        return
    name = _activation_name(layer)
    if name in ("softmax", "sigmoid"):
        with _swapped(layer, "activation", lambda original, x: x, name=name):
            yield
        return
    yield


def _keras_input_shape(model, path: Path) -> tuple:
    if not getattr(model, "built", True):
        raise ModelError(
            "model is not built (no input shape, no weights); build or train it before auditing it", path
        )
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        build = getattr(model, "_build_shapes_dict", None) or {}
        shape = next(iter(build.values()), None)
    if isinstance(shape, list):
        if len(shape) != 1:
            raise ModelError(f"model has {len(shape)} inputs; keras-audit needs one image input", path)
        shape = shape[0]
    if shape is None:
        raise ModelError("model has no known input shape; build it with model.build((None, h, w, c))", path)
    return tuple(shape)


def _load_keras(path: Path, unsafe: bool, custom_objects: dict | None = None):
    import keras

    if not unsafe:
        _check_keras_version(keras.__version__, path)
    try:
        config = _config_of(path)
    except (zipfile.BadZipFile, OSError, KeyError, ValueError) as e:  # ValueError covers bad JSON and UTF-8
        raise ModelError(f"not a readable Keras model file (truncated or corrupt: {type(e).__name__})", path) from None
    if config is not None and not unsafe:
        _refuse_unsafe_config(config, path)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=not unsafe, custom_objects=custom_objects)
    except (ValueError, TypeError, KeyError, OSError, RecursionError, zipfile.BadZipFile) as e:
        raise _keras_load_error(e, config, path) from e


def _keras_load_error(e: Exception, config: dict | None, path: Path) -> ModelError:
    """One line for a Keras load failure, keeping the sentence that says what is wrong.

    Keras buries "Could not locate class 'X'" after a dump of the whole config (or in the
    chained cause), so it is searched for in the full text of the error and its causes.
    """
    text = " ".join(str(x) for x in (e, e.__cause__, e.__context__) if x is not None)
    missing = re.search(r"Could not locate (class|function) '([^']+)'|Unknown \w+: '([^']+)'", text)
    if missing:
        what = missing.group(1) or "class"
        raw = missing.group(2) or missing.group(3)
        name = raw.rsplit(">", 1)[-1]
        regs = sorted({r for k, r in _registered_names(config) if k == name and r != name})
        reg = f" (registered as {regs[0]!r})" if regs else ""
        # Keras looks custom_objects up by the registered name ('package>Name') when there is one.
        key = regs[0] if regs else raw
        return ModelError(
            f"Could not locate {what} {name!r}{reg}: the model uses custom code that is not defined here; "
            "in Python, import the module that defines it (decorated with "
            f"@keras.saving.register_keras_serializable()) before loading, or pass custom_objects={{{key!r}: ...}} "
            "to audit.load_model",
            path,
        )
    if "safe_mode" in text:
        return ModelError(
            "model needs code execution to load (safe_mode refused it); pass --unsafe only if you trust this file",
            path,
        )
    if isinstance(e, RecursionError):
        return ModelError("model config is nested too deeply to be a Keras model (corrupt or hostile)", path)
    first = str(e).strip().splitlines()[0] if str(e).strip() else "corrupt file"
    return ModelError(f"cannot load model ({type(e).__name__}: {first[:300]})", path)


def _registered_names(config: dict | None) -> Iterator[tuple[str, str]]:
    """(class name, 'package>Name') pairs, to tell the user under which name a class was saved."""
    for node in _config_objects(config):
        reg = node.get("registered_name")
        if isinstance(reg, str) and isinstance(node.get("class_name"), str):
            yield node["class_name"], reg


def _load_savedmodel(path: Path):
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:  # TF raises many types for a bad SavedModel
        raise ModelError(f"not a readable SavedModel directory ({type(e).__name__})", path) from None
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        raise ModelError("SavedModel has no 'serving_default' signature", path)
    _, kwargs = sig.structured_input_signature
    if len(kwargs) != 1:
        raise ModelError(f"SavedModel signature has {len(kwargs)} inputs; keras-audit needs one image input", path)
    (in_name, spec), = kwargs.items()
    out_keys = list(sig.structured_outputs)
    if len(out_keys) != 1:
        raise ModelError(f"SavedModel signature has {len(out_keys)} outputs; keras-audit needs one", path)

    def call(x):
        return sig(**{in_name: tf.cast(x, spec.dtype)})[out_keys[0]]

    return loaded, tuple(spec.shape), call


def _detect_kind(
    path: Path, out_shape: tuple, head_activation: str | None, probe: np.ndarray | None
) -> tuple[str, int]:
    if len(out_shape) != 2:
        raise ModelError(
            f"model output has shape {out_shape}; keras-audit needs a classifier with output (batch, classes)",
            path,
        )
    units = out_shape[-1]
    if head_activation is None and probe is not None:  # SavedModel: judge by values
        if units == 1 and np.all((probe >= 0) & (probe <= 1)):
            head_activation = "sigmoid"
        elif units > 1 and np.all(probe >= 0) and np.allclose(probe.sum(-1), 1, atol=1e-3):
            head_activation = "softmax"
        else:
            head_activation = "linear"
    if units == 1:
        if head_activation == "sigmoid":
            return "sigmoid", 2
        raise ModelError(
            f"model has a single output unit with activation {head_activation!r}; "
            "keras-audit needs softmax/logit outputs or one sigmoid unit (binary)",
            path,
        )
    if head_activation == "softmax":
        return "softmax", units
    if head_activation in (None, "linear"):
        return "logits", units
    raise ModelError(
        f"model output uses activation {head_activation!r} over {units} units; keras-audit needs a "
        "single-label classifier (softmax, logits, or one sigmoid unit)",
        path,
    )


def load_model(path: str | Path, *, unsafe: bool = False, custom_objects: dict | None = None) -> LoadedModel:
    """Load a classifier from a ``.keras``/``.h5`` file or a SavedModel directory.

    Args:
        path: the model file or SavedModel directory.
        unsafe: allow models whose loading can run arbitrary code: layers such as
            Lambda or TFSMLayer, and every SavedModel (TensorFlow has no safe mode).
            Off by default: files load with Keras ``safe_mode`` on a Keras without
            known bypasses, after a scan of their config.
        custom_objects: your own layer classes by name, for a model that uses them
            (passed to ``keras.models.load_model``).

    Raises:
        ModelError: the file is missing, corrupt, not a classifier, or unsafe.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError("model file does not exist", path)
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelError("directory is not a SavedModel (no saved_model.pb)", path)
        fmt = "savedmodel"
    elif path.suffix.lower() in KERAS_SUFFIXES:
        fmt = "keras" if path.suffix.lower() == ".keras" else "h5"
    else:
        raise ModelError(f"unknown model format {path.suffix!r}; expected .keras, .h5 or a SavedModel directory", path)
    if path.is_file() and path.stat().st_size == 0:
        raise ModelError("model file is empty", path)

    if fmt == "savedmodel":
        if not unsafe:  # refused before TensorFlow reads a byte of it
            raise ModelError(
                "a TensorFlow SavedModel can run arbitrary operations when loaded or called (TensorFlow has no "
                "safe mode for it); pass --unsafe only if you trust this file, or save it as .keras",
                path,
            )
        owner, in_shape, call = _load_savedmodel(path)
        return _describe(path, fmt, sha256_of(path), in_shape, None, call=call, owner=owner)
    return from_keras(_load_keras(path, unsafe, custom_objects), path=path, fmt=fmt, sha256=sha256_of(path))


def from_keras(model, *, path: str | Path | None = None, fmt: str = "keras", sha256: str = "") -> LoadedModel:
    """Wrap an in-memory ``keras.Model``, with the same checks as a model file.

    Example:
        >>> loaded = from_keras(model)      # doctest: +SKIP
        >>> loaded.output_kind               # doctest: +SKIP
        'softmax'
    """
    path = Path(path) if path is not None else Path(f"<{model.name}>")
    in_shape = _keras_input_shape(model, path)
    head = _activation_name(_head_layer(model))
    return _describe(path, fmt, sha256, in_shape, head, keras_model=model, owner=model)


def _describe(path, fmt, sha256, in_shape, head_activation, *, keras_model=None, call=None, owner=None) -> LoadedModel:
    """Check that the model is an image classifier, probe its head, and describe it."""
    if len(in_shape) != 4 or None in in_shape[1:]:
        raise ModelError(
            f"model input has shape {in_shape}; "
            "keras-audit needs images of a fixed size (batch, height, width, channels)",
            path,
        )
    probe_x = np.full((2, *in_shape[1:]), 0.5, np.float32)
    try:
        with warnings.catch_warnings():
            # A legacy .h5 keeps its single input as a list, so Keras warns on this call of every load.
            warnings.filterwarnings("ignore", message=_INPUTS_STRUCTURE_WARNING, category=UserWarning)
            probe = np.asarray(call(probe_x) if call else keras_model(probe_x, training=False))
    except Exception as e:  # a model that cannot run on its own input shape is unusable
        raise ModelError(
            f"model fails on an input of its own shape {in_shape}: {str(e).splitlines()[0]}", path) from e
    if not np.isfinite(probe).all():  # NaN weights: refuse now, before a store is started
        raise ModelError("model produced NaN/inf outputs on a plain grey input (are its weights NaN?)", path)
    kind, classes = _detect_kind(path, probe.shape, head_activation, probe)
    h, w, c = (int(d) for d in in_shape[1:])
    return LoadedModel(
        path=path,
        format=fmt,
        sha256=sha256,
        input_shape=(h, w, c),
        num_classes=int(classes),
        output_kind=kind,
        keras_model=keras_model,
        _call=call,
        _owner=owner,
    )
