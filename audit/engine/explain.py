"""Phase 2, explain: for a chosen subset (all, or ``explain_limit`` examples chosen by
:func:`audit.engine.selection.select_for_explanation`: enough per predicted class and confusion
cell for discovery, then every mistake before the rest), each explainer's maps and their
deletion/insertion scores, the explained examples' activations, and per-channel activation
statistics over the whole dataset. Resumable after every batch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from audit.engine.selection import select_for_explanation
from audit.progress import bar
from audit.store import schema
from audit.store.killpoint import checkpoint
from audit.viz import resize_map

_QUALITY_NOTE = "mean area under the target-probability curve; deletion: lower is better, insertion: higher is better"


def build_explainers(model, methods: Iterable[str], *, layer=None, occlusion_patch: int | None = None) -> dict:
    """The map explainers of ``methods``, built through the method registry (a run and the
    training callbacks build them here, so both explain alike)."""
    from audit.explain.registry import build_explainer

    return {m: build_explainer(m, model, layer=layer, occlusion_patch=occlusion_patch) for m in methods}


@dataclass
class _Outputs:
    """The store arrays phase 2 fills, row k for the k-th chosen example."""

    maps: dict
    scores: dict
    signal: dict  # method -> bool (K,): the raw map had spread
    activation_layers: list[str] = field(default_factory=list)


def explain(session, predictions) -> dict:
    """Phase 2 from the first batch not yet recorded; returns the explanation quality per method."""
    from audit.explain import Activations

    methods = [m for m in session.methods if m != "activations"]
    want_acts = "activations" in session.methods
    if not (methods or want_acts):
        return {}
    chosen = _chosen(session, predictions)
    o = session.options
    explainers = build_explainers(session.model, methods, layer=o.layer, occlusion_patch=o.occlusion_patch)
    acts = Activations(session.model) if want_acts else None
    outputs = _outputs(session, methods, len(chosen))
    _explain_chosen(session, chosen, predictions, explainers, acts, outputs)
    session.manifest["explained"] = _explained(methods, len(chosen), explainers, outputs)
    if acts is not None and "activation_stats" not in session.writer.state:
        _activation_stats(session, acts)
    return {m: {**_quality_summary(session.writer, m), "no_signal": _no_signal(session.writer, m, explainers[m])}
            for m in methods}


def _chosen(session, predictions) -> np.ndarray:
    """The examples to explain: as recorded by an interrupted run, else chosen now and recorded."""
    w = session.writer
    if "explained" in w.state:
        chosen = np.asarray(w.state["explained"], np.int64)
    else:
        o = session.options
        chosen = select_for_explanation(predictions, o.explain_limit, o.seed, num_classes=len(session.class_names))
    w.save_npy(schema.HEATMAP_INDEX, chosen)
    w.save_state(explained=chosen.tolist())
    return chosen


def _outputs(session, methods: list[str], k: int) -> _Outputs:
    w = session.writer
    return _Outputs(
        maps={m: w.array(schema.heatmap_file(m), (k, *session.shape), np.float16) for m in methods},
        scores={m: w.array(f"{schema.WORK_DIR}/{_quality_file(m)}", (k, 2), np.float32) for m in methods},
        signal={m: w.array(schema.signal_file(m), (k,), np.bool_) for m in methods},
        activation_layers=list(w.state.get("activation_layers", [])),
    )


def _explain_chosen(session, chosen: np.ndarray, predictions, explainers: dict, acts, outputs: _Outputs) -> None:
    """The batch loop: maps, scores and activations of the chosen examples not yet done."""
    w, o, model = session.writer, session.options, session.model
    targets_all = dict(zip(predictions["index"].to_numpy(), predictions["pred"].to_numpy()))
    done = int(w.state.get("explain_done", 0))
    with bar("explain", len(chosen), completed=done, enabled=session.progress) as advance:
        for batch in session.dataset.batches(
            model.input_shape, session.shape, batch_size=o.batch_size, preprocessing=session.preprocessing,
            indices=chosen[done:],
        ):
            rows = np.searchsorted(chosen, batch.index)
            targets = np.array([targets_all[i] for i in batch.index])
            _write_maps(session, explainers, batch.x, targets, rows, outputs)
            if acts is not None:
                _write_activations(session, acts(batch.x), rows, len(chosen), outputs)
            w.flush()
            done = int(rows[-1]) + 1
            w.save_state(explain_done=done, activation_layers=outputs.activation_layers)
            checkpoint("explain")
            advance(len(rows))


def explain_rows(session, indices: np.ndarray, targets: dict, explainers: dict, outputs: _Outputs,
                 activations: dict) -> None:
    """Maps of the examples ``indices`` (sorted) into ``outputs``, row k for ``indices[k]``, and the
    activations of ``outputs.activation_layers`` into ``activations`` (layer -> (K, ...) float16);
    no progress recorded: a follow-up run's few rows (audit.engine.followup), explained as phase 2
    explains them."""
    from audit.explain import Activations

    layers = outputs.activation_layers
    acts = Activations(session.model, layers=layers) if layers else None
    for batch in session.dataset.batches(
        session.model.input_shape, session.shape, batch_size=session.options.batch_size,
        preprocessing=session.preprocessing, indices=indices,
    ):
        rows = np.searchsorted(indices, batch.index)
        _write_maps(session, explainers, batch.x, np.array([targets[i] for i in batch.index]), rows, outputs)
        for name, value in (acts(batch.x) if acts is not None else {}).items():
            value = _shrink_activations(value).astype(np.float16)
            activations.setdefault(name, np.zeros((len(indices), *value.shape[1:]), np.float16))[rows] = value


def _write_maps(session, explainers: dict, x: np.ndarray, targets: np.ndarray, rows: np.ndarray,
                outputs: _Outputs) -> None:
    from audit.explain import quality
    from audit.explain.base import has_signal, normalize_maps

    for m, explainer in explainers.items():
        raw = explainer(x, targets=targets, normalize=False)
        maps = normalize_maps(raw)  # what explainer(x) gives; the raw map also says where there is no signal
        q = quality.deletion_insertion(session.model, x, maps, targets)
        outputs.maps[m].write(stored_maps(maps, session.shape), rows)
        outputs.signal[m].write(has_signal(raw), rows)
        outputs.scores[m].write(np.stack([q["deletion"], q["insertion"]], axis=1), rows)


def _write_activations(session, values: dict, rows: np.ndarray, k: int, outputs: _Outputs) -> None:
    for name, value in values.items():
        if name not in outputs.activation_layers:
            outputs.activation_layers.append(name)
        value = _shrink_activations(value)
        arr = session.writer.array(schema.activation_file(name), (k, *value.shape[1:]), np.float16)
        arr.write(value.astype(np.float16), rows)


def _explained(methods: list[str], k: int, explainers: dict, outputs: _Outputs) -> dict:
    """The manifest's ``explained``; titles too, so views can name methods without the registry."""
    from audit.explain.registry import METHODS

    explained = {"methods": methods, "count": k, "activation_layers": outputs.activation_layers,
                 "titles": {m: METHODS[m].title for m in methods}}
    cams = [e for name, e in explainers.items() if METHODS[name].needs_layers]  # Grad-CAM, Score-CAM, …
    if cams:
        explained["layer"] = cams[0].layer_name
    return explained


def _activation_stats(session, acts) -> None:
    """Per-channel statistics over the whole dataset: one more pass, killable after each batch."""
    o, w = session.options, session.writer
    batches = session.dataset.batches(
        session.model.input_shape, session.shape, batch_size=o.batch_size, preprocessing=session.preprocessing,
    )
    w.write_json(schema.ACTIVATION_STATS, acts.stats(_checkpointed("activations", (b.x for b in batches))))
    w.save_state(activation_stats=True)


def _quality_summary(w, method: str) -> dict:
    q = np.asarray(w.work_array(_quality_file(method)))
    return {
        "deletion_auc": float(np.mean(q[:, 0])),
        "insertion_auc": float(np.mean(q[:, 1])),
        "n": int(len(q)),
        "note": _QUALITY_NOTE,
    }


def _no_signal(w, method: str, explainer) -> schema.NoSignal:
    """How many stored maps of ``method`` had no signal, why such a map is empty, what to try."""
    signal = np.load(w.out / schema.signal_file(method))
    layer = getattr(explainer, "layer_name", None)
    if method == "occlusion":
        reason = "no patch changed the predicted probability measurably (a saturated model)"
        suggestion = "a larger --occlusion-patch or Grad-CAM"
    elif layer is not None:
        reason = f"the class-weighted activations of layer {layer} are ≤ 0 everywhere (ReLU leaves nothing)"
        other = "Grad-CAM" if method == "gradcam++" else "Grad-CAM++"
        suggestion = f"try an earlier --layer, {other} or occlusion"
    else:
        reason, suggestion = "the map is constant", "another method"
    return {"count": int(np.sum(~signal)), "of": int(len(signal)), "reason": reason, "suggestion": suggestion}


def _checkpointed(phase: str, items: Iterable) -> Iterator:
    """``items``, passing the test-only kill point ``phase`` after each one is used."""
    for item in items:
        yield item
        checkpoint(phase)


def _quality_file(method: str) -> str:
    return f"quality_{schema.file_stem(method)}.npy"


def stored_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Maps as the store keeps them: float16 at the stored size, antialiased when shrunk."""
    maps = np.asarray(maps, np.float32)
    if maps.shape[1:] == tuple(shape):
        return maps.astype(np.float16)
    return np.clip(resize_map(maps, shape, antialias=True), 0.0, 1.0).astype(np.float16)


def _shrink_activations(value: np.ndarray) -> np.ndarray:
    """Area-average 4-D activations down to the stored size: they are for looking at, and a
    full-resolution early layer of a large model would take gigabytes per layer."""
    if value.ndim != 4 or max(value.shape[1:3]) <= schema.STORED_ACTIVATION_MAX_SIDE:
        return value
    import tensorflow as tf

    h, w = value.shape[1:3]
    scale = schema.STORED_ACTIVATION_MAX_SIDE / max(h, w)
    return tf.image.resize(value, (max(1, round(h * scale)), max(1, round(w * scale))), method="area").numpy()
