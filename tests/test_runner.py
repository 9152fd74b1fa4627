"""End-to-end runs into a results store, read back through the Reader."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.engine import AuditOptions
from audit.errors import StoreError
from audit.io.data import Dataset
from audit.pipeline import run_audit
from audit.store import schema
from audit.store.reader import Reader
from conftest import CLASSES, SIZE, brightness_images, brightness_model
from test_io_models import _expected_probs

FAST = dict(bootstrap=50, tensorboard=False)


def test_store_round_trip(tiny, tmp_path):
    out = run_audit(tiny["model"], tiny["data"], tmp_path / "out", annotations=tiny["annotations"],
                    options=AuditOptions(explain=("gradcam", "occlusion"), **FAST), progress=False)
    run = Reader(out)
    m = run.manifest
    assert m["complete"] and m["schema_version"] == schema.SCHEMA_VERSION
    assert m["model"]["output_kind"] == "softmax" and m["model"]["input_shape"] == [SIZE, SIZE, 3]
    assert len(m["model"]["sha256"]) == 64 and m["dataset"]["count"] == 30 and run.class_names == list(CLASSES)
    assert not (out / schema.WORK_DIR).exists()

    p = run.predictions
    assert list(p.columns[:6]) == list(schema.PREDICTION_COLUMNS)
    assert run.annotation_columns == ["site", "score", *schema.BUILTIN_ANNOTATIONS]
    assert pd.api.types.is_numeric_dtype(p["score"])
    order = [tiny["paths"].index(path) for path in p["path"]]
    x = tiny["x"][order]
    np.testing.assert_allclose(run.probabilities(), _expected_probs("softmax", x), atol=1e-5)
    assert (p["label"].to_numpy() == tiny["labels"][order]).all()
    assert (p["correct"] == (p["pred"] == p["label"])).all() and p["correct"].all()
    ann = pd.read_csv(tiny["annotations"]).set_index("path")
    assert (p["site"].to_numpy() == ann.loc[p["path"], "site"].to_numpy()).all()

    metrics = run.metrics
    assert metrics["num_examples"] == 30 and metrics["accuracy"] == 1.0
    assert metrics["confusion_matrix"] == [[10, 0, 0], [0, 10, 0], [0, 0, 10]]
    assert [c["support"] for c in metrics["per_class"]] == [10, 10, 10]
    assert set(metrics["explanations"]) == {"gradcam", "occlusion"}

    assert run.heatmap_methods == ["gradcam", "occlusion"] and len(run.heatmap_index) == 30
    hm = run.heatmap("occlusion", 5)
    assert hm.shape == (SIZE, SIZE) and hm.dtype == np.float32 and hm.min() >= 0 and hm.max() <= 1
    np.testing.assert_array_equal(run.image(5), x[5])
    assert run.embeddings().shape == (30, 2)


@pytest.mark.parametrize("fmt", ["npz", "csv"])
def test_other_data_layouts(tmp_path, fmt):
    x, labels = brightness_images(12)
    model = tmp_path / "m.h5"
    brightness_model("logits", kind="nested").save(model)
    if fmt == "npz":
        data = tmp_path / "d.npz"
        np.savez(data, x=x, y=labels)
    else:
        from PIL import Image

        (tmp_path / "img").mkdir()
        for i, img in enumerate(x):
            Image.fromarray(img).save(tmp_path / "img" / f"{i}.bmp")
        data = tmp_path / "labels.csv"
        pd.DataFrame({"path": [f"img/{i}.bmp" for i in range(12)], "label": labels}).to_csv(data, index=False)
    out = run_audit(model, data, tmp_path / "out", options=AuditOptions(explain=("gradcam",), **FAST), progress=False)
    run = Reader(out)
    assert run.manifest["model"]["softmax_applied"] and run.class_names == ["class_0", "class_1", "class_2"]
    np.testing.assert_allclose(run.probabilities(), _expected_probs("logits", x), atol=1e-5)
    assert run.predictions["path"].isna().all() == (fmt == "npz")


def test_sigmoid_and_savedmodel_runs(tmp_path):
    x, labels = brightness_images(12)
    np.savez(tmp_path / "d.npz", x=x, y=(labels == 2).astype(int), class_names=np.array(["other", "light"]))
    model = brightness_model("sigmoid")
    model.save(tmp_path / "s.keras")
    model.export(tmp_path / "sm", verbose=False)
    for source in ("s.keras", "sm"):
        explain = ("gradcam",) if source == "s.keras" else ()
        run = Reader(run_audit(tmp_path / source, tmp_path / "d.npz", tmp_path / f"out_{source}",
                               options=AuditOptions(explain=explain, unsafe=source == "sm", **FAST), progress=False))
        assert run.class_names == ["other", "light"] and run.metrics["accuracy"] == 1.0
        np.testing.assert_allclose(run.probabilities(), _expected_probs("sigmoid", x), atol=1e-5)


def test_a_run_hands_back_the_heap_it_froze_and_leaves_a_callers_frozen(tiny, tmp_path, monkeypatch):
    import audit.engine.run as engine_run

    frozen_during, real_predict = [], engine_run.predict

    def predict(session):
        frozen_during.append(gc.get_freeze_count())
        real_predict(session)

    monkeypatch.setattr(engine_run, "predict", predict)
    options = AuditOptions(explain=(), **FAST)
    assert gc.get_freeze_count() == 0
    run_audit(tiny["model"], tiny["data"], tmp_path / "a", options=options, progress=False)
    assert frozen_during[0] > 100_000 and gc.get_freeze_count() == 0  # TensorFlow's heap, then nothing
    gc.freeze()  # a caller's own freeze, as a preforking server makes
    try:
        theirs = gc.get_freeze_count()
        run_audit(tiny["model"], tiny["data"], tmp_path / "b", options=options, progress=False)
        # neither frozen further (the run's own model would add thousands) nor handed back; a few
        # of the caller's frozen objects may be freed by reference counting meanwhile
        assert theirs - 100 <= frozen_during[1] <= theirs and theirs - 100 <= gc.get_freeze_count() <= theirs
    finally:
        gc.unfreeze()


def test_one_options_object_serves_two_runs_identically(tiny, tmp_path):
    """A run only reads its options: what it settles on (methods, notes) lives in its session."""
    import copy

    options = AuditOptions(explain=None, class_names=list(CLASSES), batch_size=8, **FAST)
    before = copy.deepcopy(options)
    stores = []
    for name in ("first", "second"):
        stores.append(run_audit(tiny["model"], tiny["data"], tmp_path / name, annotations=tiny["annotations"],
                                options=options, progress=False))
        assert options == before and options.explain is None and options.class_names == list(CLASSES)
    assert_same_store(*stores)
    assert Reader(stores[1]).manifest["options"] == before.recorded()


def _interrupt_after(monkeypatch, n_batches: int):
    original = Dataset.batches

    def batches(self, *a, **kw):
        for k, b in enumerate(original(self, *a, **kw)):
            if k == n_batches:
                raise KeyboardInterrupt
            yield b

    monkeypatch.setattr(Dataset, "batches", batches)


def test_resume_after_interrupt_in_predict_phase(tiny, tmp_path, monkeypatch):
    opts = dict(batch_size=4, explain=("gradcam",), **FAST)
    whole = run_audit(tiny["model"], tiny["data"], tmp_path / "whole", annotations=tiny["annotations"],
                      options=AuditOptions(**opts), progress=False)
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_audit(tiny["model"], tiny["data"], tmp_path / "cut", annotations=tiny["annotations"],
                  options=AuditOptions(**opts), progress=False)
    monkeypatch.undo()
    state = json.loads((tmp_path / "cut" / "work" / "state.json").read_text())
    assert state["predict_next"] == 12
    with pytest.raises(StoreError, match="incomplete"):
        Reader(tmp_path / "cut")
    run_audit(tiny["model"], tiny["data"], tmp_path / "cut", annotations=tiny["annotations"],
              options=AuditOptions(**opts), resume=True, progress=False)
    assert_same_store(whole, tmp_path / "cut")


def test_writes_behind_the_model_stay_in_order_and_surface_their_errors():
    """The prediction phase writes each batch in a background thread, one batch behind: jobs run
    in order, one at a time, each `done` runs in the caller's thread after its job, leaving the
    block waits for the job in flight, and a failing job is raised at the next batch, after
    which no later job runs."""
    import threading
    import time

    from audit.engine.predict import _WriteBehind

    log, caller = [], threading.get_ident()

    def job(k, fail=False):
        def run():
            time.sleep(0.02)  # a slow write: the caller has moved on when it ends
            log.append(("job", k, threading.get_ident() != caller))
            if fail:
                raise KeyboardInterrupt(k)
        return run

    def done(k):
        return lambda: log.append(("done", k, threading.get_ident() == caller))

    with _WriteBehind() as writes:
        for k in range(3):
            writes.submit(job(k), done(k))
    assert log == [(what, k, True) for k in range(3) for what in ("job", "done")]
    log.clear()
    with pytest.raises(KeyboardInterrupt, match="1"), _WriteBehind() as writes:
        for k in range(4):
            writes.submit(job(k, fail=k == 1), done(k))
    assert log == [("job", 0, True), ("done", 0, True), ("job", 1, True)]
    log.clear()
    with pytest.raises(ValueError, match="first"), _WriteBehind() as writes:
        writes.submit(job(0, fail=True), done(0))
        raise ValueError("first")  # the error already leaving the block wins over the write's
    assert log == [("job", 0, True)]


def test_batches_produced_ahead_keep_order_surface_errors_and_stop_on_close():
    """The prediction phase reads batches in a background thread, at most `depth` ahead: items
    come out in order, made in another thread; an error raised while producing is raised in the
    consumer (the same object, so the same one-line message) after the items before it; and
    leaving the loop early stops the producer and closes its iterator, in its thread, having
    made no more than the queue holds."""
    import threading
    import time

    from audit.engine.predict import _Ahead

    caller, made, closed = threading.get_ident(), [], []

    def items(n, fail_at=None):
        try:
            for k in range(n):
                if k == fail_at:
                    raise ValueError(f"cannot decode item {k}")
                made.append(k)
                yield k, threading.get_ident() != caller
        finally:
            closed.append(threading.get_ident() != caller)

    with _Ahead(items(50)) as ahead:
        assert list(ahead) == [(k, True) for k in range(50)]
    assert closed == [True]
    made.clear(), closed.clear()
    got = []
    with pytest.raises(ValueError, match=r"^cannot decode item 3$"), _Ahead(items(9, fail_at=3)) as ahead:
        for k, _ in ahead:
            got.append(k)
    assert got == [0, 1, 2] and closed == [True]
    made.clear(), closed.clear()
    with _Ahead(items(1000), depth=2) as ahead:
        for k, _ in ahead:
            if k == 1:
                time.sleep(0.2)  # the producer fills the queue and waits
                break
    assert closed == [True]
    assert len(made) <= 2 + 2 + 1, made  # consumed 2, 2 queued, at most 1 more being put


# Each chain kills one `keras-audit run` process per phase (audit.progress.checkpoint), then
# resumes; the two chains run side by side to halve the wall time of the many TensorFlow starts.
KILL_CHAINS = (("predict:3", "explain:2", "activations:2"), ("finish", "tensorboard", "publish"))
KILL_OPTIONS = dict(batch_size=4, explain=("gradcam", "occlusion", "activations"), explain_limit=None, bootstrap=50)
KILL_ARGS = ["--explain", "gradcam,occlusion,activations", "--explain-limit", "0", "--batch-size", "4",
             "--bootstrap", "50", "--quiet"]


def _killed_state(out) -> dict:
    """What a killed run left: manifest, state (if any) and the TensorBoard files in place."""
    manifest = json.loads((out / schema.MANIFEST).read_text())
    state_file = out / schema.WORK_DIR / "state.json"
    try:
        readable = Reader(out).complete
    except StoreError:
        readable = False
    return {"manifest": manifest, "state": json.loads(state_file.read_text()) if state_file.is_file() else None,
            "logs": sorted(p.name for p in (out / schema.TENSORBOARD_DIR).glob("*")), "readable": readable,
            "metrics_written": (out / schema.METRICS).stat().st_mtime_ns if (out / schema.METRICS).is_file() else None}


def _check_killed_at(point: str, left: dict) -> None:
    """The oracle that each kill happened where it was asked to (30 examples, batches of 4)."""
    m, state = left["manifest"], left["state"]
    assert m["complete"] == left["readable"] == (point in ("tensorboard", "publish")), point
    if point == "predict:3":
        assert state["predict_next"] == 12 and "explain_done" not in state
    elif point == "explain:2":
        assert state["predict_next"] == 30 and state["explain_done"] == 8
    elif point == "activations:2":
        assert state["explain_done"] == 30 and "activation_stats" not in state
    elif point == "finish":
        assert state["activation_stats"] and m.get("finished_at") is None
    else:  # the store is complete but for its logs, which are pending and never partly in place
        assert m["tensorboard"] == schema.TENSORBOARD_PENDING
        assert len(left["logs"]) == (0 if point == "tensorboard" else 1), left["logs"]


def _kill_chain(tiny, out, points) -> list[tuple[str, dict]]:
    args = [sys.executable, "-m", "audit.cli", "run", str(tiny["model"]), str(tiny["data"]), "--out", str(out),
            "--annotations", str(tiny["annotations"]), *KILL_ARGS]
    left = []
    for k, point in enumerate(points):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_AUDIT_KILL_AT": point}
        done = subprocess.run([*args, *(["--resume"] if k else [])], env=env, capture_output=True, text=True)
        assert done.returncode == -signal.SIGKILL, f"{point}: exit {done.returncode}\n{done.stderr[-2000:]}"
        left.append((point, _killed_state(out)))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_AUDIT_KILL_AT"}
    done = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return left


def test_killed_at_every_phase_resumes_to_the_same_store(tiny, tmp_path):
    """SIGKILL real `keras-audit run` processes in every phase, resume each time; the store ends
    identical to an uninterrupted run's, file for file."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(KILL_CHAINS)) as pool:
        chains = [pool.submit(_kill_chain, tiny, tmp_path / f"cut{k}", points) for k, points in enumerate(KILL_CHAINS)]
        whole = run_audit(tiny["model"], tiny["data"], tmp_path / "whole", annotations=tiny["annotations"],
                          options=AuditOptions(**KILL_OPTIONS), progress=False)
        left = [chain.result() for chain in chains]
    for chain in left:
        for point, state in chain:
            _check_killed_at(point, state)
    for k in range(len(KILL_CHAINS)):
        assert_same_store(whole, tmp_path / f"cut{k}")
    # Resuming a store killed in its export redid only the export: metrics.json was not rewritten.
    at_tensorboard, at_publish = left[1][1][1], left[1][2][1]
    final = (tmp_path / "cut1" / schema.METRICS).stat().st_mtime_ns
    assert at_tensorboard["metrics_written"] == at_publish["metrics_written"] == final


_EVENT_FILE = re.compile(r"events\.out\.tfevents\.[^/]*\.keras-audit$")


def _tree(store) -> dict[str, Path]:
    """Every file of a store by relative path; event file names (time, host, pid) made generic."""
    files = {}
    for p in sorted(store.rglob("*")):
        if p.is_file():
            files[_EVENT_FILE.sub("events.keras-audit", p.relative_to(store).as_posix())] = p
    return files


def _manifest_for_comparison(path) -> dict:
    m = json.loads(path.read_text())
    for key in ("started_at", "finished_at"):
        m.pop(key, None)
    m["files"] = [_EVENT_FILE.sub("events.keras-audit", f) for f in m["files"]]
    return m


def _summaries(event_file, store) -> dict:
    """The summaries of one event file, comparable across runs: wall times are not read, and the
    report text's "Finished <time>." and the store's own path are blanked."""
    from test_tensorboard import read_events

    out = {}
    for plugin, tags in read_events(event_file.parent).items():
        for tag, series in tags.items():
            out[(plugin, tag)] = [(step, _comparable(v, store), desc) for step, v, desc in series]
    return out


def _comparable(value: np.ndarray, store):
    if value.dtype.kind == "O":  # strings (text, image PNGs)
        blank = [(rb"Finished [^ ]+\.", b"Finished."), (re.escape(str(store).encode()), b"STORE")]
        return tuple(re.sub(blank[1][0], blank[1][1], re.sub(*blank[0], v)) for v in value.ravel())
    return value.dtype.str, value.shape, value.tobytes()


def assert_same_store(a, b) -> None:
    """Two stores hold the same files with the same content (timestamps in manifest.json aside)."""
    ta, tb = _tree(a), _tree(b)
    assert list(ta) == list(tb)
    for rel, fa in ta.items():
        fb = tb[rel]
        if rel == schema.MANIFEST:
            assert _manifest_for_comparison(fa) == _manifest_for_comparison(fb)
        elif rel.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(fa), pd.read_parquet(fb))
        elif _EVENT_FILE.search(fa.name):
            assert _summaries(fa, a) == _summaries(fb, b), rel
        else:  # .npy, .json, projector files, the (empty) lock file: bytes
            assert fa.read_bytes() == fb.read_bytes(), rel


def test_stored_activations_are_area_averaged_to_the_stored_size():
    from audit.engine.explain import _shrink_activations

    value = np.random.default_rng(0).random((2, 64, 48, 3)).astype(np.float32)
    blocks = value.reshape(2, 32, 2, 24, 2, 3).mean(axis=(2, 4))  # 2x2 block means: the area-average oracle
    np.testing.assert_allclose(_shrink_activations(value), blocks, atol=1e-6)
    small = value[:, :32, :16]
    assert _shrink_activations(small) is small
