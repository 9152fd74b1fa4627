"""Phase 1, predict: stream the dataset once through one compiled function that returns class
probabilities and penultimate features; store the probabilities, the stored copy of each image,
its built-in annotations and its embedding. Resumable after every batch. Three threads overlap:
one produces the next batches (:class:`_Ahead`), this one runs the model, and one writes the
batch before (:class:`_WriteBehind`)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

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

    out = fn(tf.convert_to_tensor(x))  # no copy of x: the tensor shares its buffer
    probs, feats = out if isinstance(out, tuple) else (out, None)
    return probs.numpy(), None if feats is None else feats.numpy()


def _check_finite(probs: np.ndarray, index: np.ndarray, session) -> None:
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        first = int(index[bad][0])
        where = session.dataset.paths[first] if session.dataset.paths else f"example {first}"
        raise ModelError(f"model produced NaN/inf outputs (first at {where})", session.model.path)


class _WriteBehind:
    """Each batch's writes (rows, fsync, state) in one background thread, one batch behind the
    model: the fsyncs and the state file are I/O waits that the next batch's decode and
    forward pass can overlap. At most one write is in flight, and batches are written in order,
    so the state on disk always names a prefix of recorded batches, as without the thread.
    Leaving the block (also on an error) waits for the write in flight; a failed write is
    raised in the calling thread, at the next batch or at the end."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="keras-audit-write")
        self._pending = None
        self._done = None

    def submit(self, job, done) -> None:
        """Run ``job()`` in the background, then ``done()`` here once it has finished."""
        self.wait()
        self._pending, self._done = self._pool.submit(job), done

    def wait(self) -> None:
        if self._pending is not None:
            pending, done, self._pending, self._done = self._pending, self._done, None, None
            pending.result()
            done()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.wait()
        except BaseException:
            if exc_type is None:  # an error already leaving the block wins over the write's
                raise
        finally:
            self._pool.shutdown(wait=True)


_END = object()


class _Ahead:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead of the consumer.

    The next batches' decode (tf.data's own threads, and its conversion to numpy, which
    releases the GIL) then overlaps the forward pass of this one. Items come out in order; an
    error raised while producing is raised here, by the consumer, in place of the item it
    stopped at. Closing (also on an error or Ctrl-C in the consumer) stops the producer after
    the item it is making and closes ``items`` in its thread.
    """

    def __init__(self, items: Iterator, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(items,), name="keras-audit-read", daemon=True)
        self._thread.start()

    def _produce(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((_END, None))
        except BaseException as e:  # handed to the consumer, which raises it
            self._put((_END, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _put(self, entry) -> bool:
        """Queue ``entry`` once there is room; False if the consumer stopped first."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            item, error = self._queue.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _with_skipped(dataset, batches: Iterator) -> Iterator:
    """``(batch, files skipped before it)``, then ``(None, files skipped after the last)``.

    Run in the producer's thread, the only one touching ``dataset.skipped`` during the pass;
    the files after the last batch stay listed there, as after a pass without the thread.
    """
    for batch in batches:
        gone = list(dataset.skipped)
        dataset.skipped.clear()
        yield batch, gone
    yield None, list(dataset.skipped)


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
    batches = dataset.batches(model.input_shape, session.shape, batch_size=session.options.batch_size,
                              preprocessing=session.preprocessing, start=start)
    with bar("predict", n, completed=start, enabled=session.progress) as advance, _WriteBehind() as writes, \
            _Ahead(_with_skipped(dataset, batches)) as ahead:
        for batch, gone in ahead:
            skipped += gone
            if batch is None:  # the files skipped after the last batch
                break
            probs, feats = predict_batch(fn, batch.x)
            _check_finite(probs, batch.index, session)
            converted += int(np.sum((batch.channels == 1) != (want_channels == 1)))
            nxt = int(batch.index[-1]) + 1
            writes.submit(_commit(session, out, batch, probs, feats, dict(
                predict_next=nxt, skipped=list(skipped), converted=converted)), done=_advance(advance, nxt - start))
            start = nxt
    w.save_state(predict_next=n, skipped=skipped, converted=converted)


def _commit(session, out: dict, batch, probs, feats, state: dict):
    """One batch's write job: its rows, flushed, then the state that counts them recorded."""

    def job() -> None:
        _record(session, out, batch, probs, feats)
        session.writer.save_state(**state)
        checkpoint("predict")

    return job


def _advance(advance, count: int):
    return lambda: advance(count)


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
