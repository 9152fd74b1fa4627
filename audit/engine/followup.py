"""A saved follow-up run: maps for examples the run's budget left unexplained (``keras-audit explain``).

The viewer never computes a map; a user who wants one for an example (a mistake without a map,
a slice) asks for it here. The model and data recorded in the manifest are opened again and
refused if either changed (sha256, fingerprint); the run's own options, preprocessing, methods,
Grad-CAM layer and activation layers are used, so an added map is the one the run would have
stored. The store's map arrays are rewritten with the new rows in index order (under
``work/explain/`` first, then moved into place as discovery's files are), and the explanation
quality means updated; the caller (audit.pipeline) then reruns discovery and the export.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from audit.errors import AuditError
from audit.store import schema
from audit.store.reader import Reader
from audit.store.writer import StoreWriter, save_npy, write_json

_STAGING = "explain"


class _Rows:
    """An in-memory stand-in for a store array: what phase 2's writers fill, for a few rows."""

    def __init__(self, shape: tuple[int, ...], dtype):
        self.a = np.zeros(shape, dtype)

    def write(self, rows: np.ndarray, at) -> None:
        self.a[np.asarray(at)] = rows


def check_indices(reader: Reader, indices) -> np.ndarray:
    """``indices`` as sorted unique int64 examples of the store, or one line naming the first bad one."""
    known = reader.predictions["index"].to_numpy(np.int64)
    wanted = np.unique(np.asarray(list(indices), np.int64))
    bad = np.setdiff1d(wanted, known)
    if bad.size:
        raise AuditError(f"--indices: {int(bad[0])} is not an example of this store "
                         f"(its examples are {int(known.min())} to {int(known.max())})", reader.path)
    return wanted


def _session(reader: Reader, progress: bool):
    """The run's inputs opened again as its session opened them; refused if the model or data changed."""
    from audit.engine.options import AuditOptions
    from audit.engine.session import Session
    from audit.viz import stored_shape

    m = reader.manifest
    recorded = dict(m.get("options") or {})
    fields = AuditOptions.__dataclass_fields__
    values: dict[str, Any] = {k: v for k, v in recorded.items() if k in fields}
    for k in ("explain", "mean", "std"):  # JSON lists, tuples in the options
        if values.get(k) is not None:
            values[k] = tuple(values[k])
    opts = AuditOptions(**values)
    session = Session.__new__(Session)  # its input checks and preprocessing, without opening a new store
    session.options, session.progress = opts.validate(), progress
    session._open_inputs(m["model"]["path"], m["dataset"]["source"], None)
    session.shape = stored_shape(session.model.input_shape)
    if session.model.sha256 != m["model"].get("sha256"):
        raise AuditError(f"the model file {m['model']['path']} changed since the run; explain needs the same model "
                         "(rerun the audit instead)", reader.path)
    if session.dataset.fingerprint() != m["dataset"].get("fingerprint"):
        raise AuditError(f"the image files of {m['dataset']['source']} changed since the run; rerun the audit",
                         reader.path)
    return session


def _compute(session, reader: Reader, new: np.ndarray) -> tuple:
    """Maps, signal and quality scores (an _Outputs of in-memory rows) and activations of ``new``."""
    from audit.engine.explain import _Outputs, build_explainers, explain_rows

    explained = reader.manifest.get("explained") or {}
    methods = list(explained.get("methods") or [])
    explainers = build_explainers(session.model, methods, layer=explained.get("layer"),
                                  occlusion_patch=session.options.occlusion_patch)
    k = len(new)
    outputs = _Outputs(maps={m: _Rows((k, *session.shape), np.float16) for m in methods},
                       scores={m: _Rows((k, 2), np.float32) for m in methods},
                       signal={m: _Rows((k,), np.bool_) for m in methods},
                       activation_layers=list(explained.get("activation_layers") or []))
    targets = dict(zip(reader.predictions["index"].to_numpy(), reader.predictions["pred"].to_numpy()))
    activations: dict = {}
    explain_rows(session, new, targets, explainers, outputs, activations)
    if session.dataset.skipped:
        s = session.dataset.skipped[0]
        raise AuditError(f"example {s['index']} ({s['path']}) cannot be read now: {s['reason']}", reader.path)
    return outputs, activations


def _merged(old: np.ndarray | None, old_index: np.ndarray, new_rows: np.ndarray, new: np.ndarray,
            index: np.ndarray) -> np.ndarray:
    merged = np.zeros((len(index), *new_rows.shape[1:]), new_rows.dtype)
    if old is not None:
        merged[np.searchsorted(index, old_index)] = np.asarray(old)
    merged[np.searchsorted(index, new)] = new_rows
    return merged


def _quality(metrics: dict, method: str, scores: np.ndarray, signal: np.ndarray) -> dict:
    """The stored means over the old maps and the new ones together; the no-signal count recounted."""
    q = dict((metrics.get("explanations") or {}).get(method) or {})
    n_old, n_new = int(q.get("n") or 0), len(scores)
    for key, col in (("deletion_auc", 0), ("insertion_auc", 1)):
        old = q.get(key)
        total = (old or 0.0) * n_old + float(scores[:, col].sum())
        q[key] = total / (n_old + n_new) if (old is not None or not n_old) else None
    q["n"] = n_old + n_new
    if "no_signal" in q:
        q["no_signal"] = {**q["no_signal"], "count": int(np.sum(~signal)), "of": int(len(signal))}
    return q


def add_explanations(w: StoreWriter, indices, *, progress: bool = True) -> np.ndarray:
    """Explain the examples ``indices`` of the finished store ``w`` writes that have no maps yet and
    put them in its arrays; returns the examples added (none: nothing changes)."""
    reader = Reader(w.out)
    wanted = check_indices(reader, indices)
    old_index = np.asarray(np.load(w.out / schema.HEATMAP_INDEX) if reader.heatmap_index else [], np.int64)
    if not (reader.manifest.get("explained") or {}).get("methods"):
        raise AuditError("this run computed no maps (--explain none); rerun the audit with the --explain methods "
                         "wanted", reader.path)
    new = np.setdiff1d(wanted, old_index)
    if not new.size:
        return new
    session = _session(reader, progress)
    outputs, activations = _compute(session, reader, new)
    index = np.union1d(old_index, new)
    staging = w.replacement(_STAGING)
    (staging / schema.HEATMAP_DIR).mkdir()
    save_npy(staging / schema.HEATMAP_INDEX, index)
    metrics: dict[str, Any] = dict(reader.metrics)
    metrics["explanations"] = dict(metrics.get("explanations") or {})
    for m in outputs.maps:
        for rel, rows in ((schema.heatmap_file(m), outputs.maps[m].a), (schema.signal_file(m), outputs.signal[m].a)):
            save_npy(staging / rel, _merged(reader.stored_array(rel), old_index, rows, new, index))
        signal = np.load(staging / schema.signal_file(m))
        metrics["explanations"][m] = _quality(metrics, m, outputs.scores[m].a, signal)
    for layer, rows in activations.items():
        (staging / schema.ACTIVATION_DIR).mkdir(exist_ok=True)
        rel = schema.activation_file(layer)
        save_npy(staging / rel, _merged(reader.stored_array(rel), old_index, rows, new, index))
    write_json(staging / schema.METRICS, metrics)
    explained: dict[str, Any] = dict(reader.manifest.get("explained") or {})
    explained.update(count=int(len(index)), added=sorted({*explained.get("added", []), *new.tolist()}))
    # Discovery reads these maps next; until it is redone the store says so.
    w.update_manifest(explained=explained, discovery=schema.DISCOVERY_PENDING)
    w.commit(staging)
    return new
