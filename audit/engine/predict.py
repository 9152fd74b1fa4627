"""Phase 1, predict: stream the dataset once through one compiled function that returns class
probabilities and penultimate features; store the probabilities, the stored copy of each image,
its built-in annotations and its embedding. Resumable after every batch."""

from __future__ import annotations

import numpy as np

from audit.errors import DataError, ModelError
from audit.progress import bar
from audit.store import schema
from audit.store.killpoint import checkpoint


def predict_batch(fn, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (B, C) and, when ``fn`` gives them, features (B, D) of one batch.

    ``fn`` is a LoadedModel's ``predict_fn``: a run and the training callbacks predict
    through this one function, so both see the same numbers.
    """
    import tensorflow as tf

    out = fn(tf.constant(x))
    probs, feats = out if isinstance(out, tuple) else (out, None)
    return probs.numpy(), None if feats is None else feats.numpy()


def _check_finite(probs: np.ndarray, index: np.ndarray, session) -> None:
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        first = int(index[bad][0])
        where = session.dataset.paths[first] if session.dataset.paths else f"example {first}"
        raise ModelError(f"model produced NaN/inf outputs (first at {where})", session.model.path)


def predict(session) -> None:
    """Phase 1 from the first batch not yet recorded (``predict_next`` in the run's state)."""
    dataset, model, w = session.dataset, session.model, session.writer
    n, c = dataset.count, model.num_classes
    start = w.state.get("predict_next", 0)
    skipped = list(w.state.get("skipped", []))
    converted = int(w.state.get("converted", 0))
    out = {
        "probs": w.array(f"{schema.WORK_DIR}/probs.npy", (n, c), np.float32),
        "builtin": w.array(f"{schema.WORK_DIR}/builtin.npy", (n, len(schema.BUILTIN_ANNOTATIONS)), np.float32),
        "images": w.array(schema.IMAGES, (n, *session.shape, 3), np.uint8),
    }
    fn = model.predict_fn(embeddings=model.has_layers)
    want_channels = model.input_shape[-1]
    with bar("predict", n, completed=start, enabled=session.progress) as advance:
        for batch in dataset.batches(
            model.input_shape, session.shape, batch_size=session.options.batch_size,
            preprocessing=session.preprocessing, start=start,
        ):
            probs, feats = predict_batch(fn, batch.x)
            _check_finite(probs, batch.index, session)
            _record(session, out, batch, probs, feats)
            converted += int(np.sum((batch.channels == 1) != (want_channels == 1)))
            skipped += dataset.skipped
            dataset.skipped.clear()
            nxt = int(batch.index[-1]) + 1
            w.save_state(predict_next=nxt, skipped=skipped, converted=converted)
            checkpoint("predict")
            advance(nxt - start)
            start = nxt
    skipped += dataset.skipped  # unreadable files after the last batch
    w.save_state(predict_next=n, skipped=skipped, converted=converted)


def _record(session, out: dict, batch, probs: np.ndarray, feats: np.ndarray | None) -> None:
    """Write one batch's rows into the preallocated arrays and flush them (before its state is saved)."""
    w = session.writer
    out["probs"].write(probs, batch.index)
    out["builtin"].write(batch.builtin, batch.index)
    out["images"].write(batch.stored, batch.index)
    if feats is not None:  # the feature width is known only from the first batch
        emb = w.array(schema.EMBEDDINGS, (session.dataset.count, feats.shape[-1]), np.float16)
        emb.write(feats, batch.index)
    w.flush()


def check_readable(session) -> None:
    """Fail if nothing was readable; otherwise say what was skipped or converted."""
    n, state = session.dataset.count, session.writer.state
    skipped, converted = state.get("skipped", []), state.get("converted", 0)
    if len(skipped) == n:
        raise DataError(f"none of the {n} images could be read", session.dataset.source)
    if converted:
        kind = "grayscale" if session.model.input_shape[-1] == 1 else "RGB"
        session.notes.append(f"converted {converted} image(s) to {kind} to match the model's input")
    if skipped:
        session.notes.append(f"skipped {len(skipped)} unreadable image(s); listed in manifest.json")
    note = near_chance_note(session)
    if note:
        session.notes.append(note)


def near_chance_note(session) -> str | None:
    """A note when the predictions look like chance, as inputs scaled unlike training give.

    The rule, kept simple: the mean top probability is below 1.5 / C (C classes) and the
    accuracy's 95% Wilson interval reaches down to chance (its lower bound is at most 1 / C).
    """
    from audit.metrics.intervals import wilson

    w, dataset = session.writer, session.dataset
    skipped = {s["index"] for s in w.state.get("skipped", [])}
    keep = np.array([i for i in range(dataset.count) if i not in skipped], np.int64)
    c = session.model.num_classes
    if not len(keep) or c < 2:
        return None
    probs = np.asarray(w.work_array("probs.npy"))[keep]
    confidence = float(probs.max(axis=1).mean())
    correct = int(np.sum(probs.argmax(axis=1) == np.asarray(dataset.labels)[keep]))
    low = float(wilson(correct, len(keep))[0])
    if confidence >= 1.5 / c or low > 1.0 / c:
        return None
    return (f"mean confidence {confidence:.2f} with {c} classes is near chance: "
            "are the inputs scaled as in training? (see --preprocess)")
