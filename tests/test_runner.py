"""End-to-end runs into a results store, read back through the Reader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from audit.errors import StoreError
from audit.io.data import Dataset
from audit.runner import AuditOptions, run_audit
from audit.store import schema
from audit.store.reader import Reader
from conftest import CLASSES, SAMPLES, SIZE, brightness_images, brightness_model
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
    assert hm.shape == (SIZE, SIZE) and hm.dtype == np.float32 and 0 <= hm.min() and hm.max() <= 1
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
                               options=AuditOptions(explain=explain, **FAST), progress=False))
        assert run.class_names == ["other", "light"] and run.metrics["accuracy"] == 1.0
        np.testing.assert_allclose(run.probabilities(), _expected_probs("sigmoid", x), atol=1e-5)


def _interrupt_after(monkeypatch, n_batches: int):
    original = Dataset.batches

    def batches(self, *a, **kw):
        for k, b in enumerate(original(self, *a, **kw)):
            if k == n_batches:
                raise KeyboardInterrupt
            yield b

    monkeypatch.setattr(Dataset, "batches", batches)


def _same_store(a, b):
    ra, rb = Reader(a), Reader(b)
    pd.testing.assert_frame_equal(ra.predictions, rb.predictions)
    assert ra.metrics == rb.metrics
    for name in (schema.IMAGES, schema.EMBEDDINGS, schema.HEATMAP_INDEX, schema.heatmap_file("gradcam")):
        np.testing.assert_array_equal(np.load(a / name), np.load(b / name))


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
    _same_store(whole, tmp_path / "cut")


def test_killed_process_resumes_to_identical_results(tmp_path):
    """SIGKILL a real `keras-audit run` mid-way, resume it, compare with an uninterrupted run."""
    args = [sys.executable, "-m", "audit.cli", "run", str(SAMPLES / "digits.keras"), str(SAMPLES / "digits_eval.npz"),
            "--annotations", str(SAMPLES / "digits_annotations.csv"), "--explain", "gradcam", "--explain-limit", "120",
            "--batch-size", "8", "--bootstrap", "50", "--no-tensorboard", "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([*args, "--out", str(tmp_path / "whole")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "cut")], env=env, stderr=subprocess.PIPE)
    state_file = tmp_path / "cut" / "work" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state_file.read_text()).get("explain_done", 0) > 0:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not json.loads((tmp_path / "cut" / "manifest.json").read_text())["complete"]
    done = subprocess.run([*args, "--out", str(tmp_path / "cut"), "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _same_store(tmp_path / "whole", tmp_path / "cut")


def test_stored_activations_are_area_averaged_to_the_stored_size():
    from audit.runner import _shrink_activations

    value = np.random.default_rng(0).random((2, 64, 48, 3)).astype(np.float32)
    blocks = value.reshape(2, 32, 2, 24, 2, 3).mean(axis=(2, 4))  # 2x2 block means: the area-average oracle
    np.testing.assert_allclose(_shrink_activations(value), blocks, atol=1e-6)
    small = value[:, :32, :16]
    assert _shrink_activations(small) is small
