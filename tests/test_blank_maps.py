"""Maps with no signal: counted per method, stored per example, never drawn as a blank finding.

The model's head weighs every channel of its (ReLU) conv layer negatively for class 0 and
positively for class 1, so Grad-CAM of a dark image (predicted 0) is negative everywhere
before its ReLU, and comes back all zeros; a bright image (predicted 1) has a real map.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit.store import schema
from audit.store.reader import Reader
from test_app import captions, goto, start
from test_tensorboard import read_events

N, SIZE = 24, 16
NAMES = ("dark", "bright")


def _model():
    import keras
    from keras import layers

    inp = keras.Input((SIZE, SIZE, 3))
    conv = layers.Conv2D(4, 3, activation="relu", name="conv")
    dense = layers.Dense(2, activation="softmax", name="head")
    model = keras.Model(inp, dense(layers.GlobalAveragePooling2D(name="gap")(conv(inp))), name="blank")
    conv.set_weights([np.full((3, 3, 3, 4), 1.0 / (27 * 255), np.float32), np.zeros(4, np.float32)])
    # logit_0 = 4 - sum of pooled channels (each channel's weight < 0), logit_1 = + sum: bright wins above 0.5
    dense.set_weights([np.stack([-np.ones(4), np.ones(4)], 1).astype(np.float32), np.array([4.0, 0.0], np.float32)])
    return model


def _images():
    rng = np.random.default_rng(3)
    level = np.linspace(30, 225, N)
    x = np.clip(level[:, None, None, None] + rng.integers(-20, 21, (N, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    labels = (level > 127).astype(np.int64)
    labels[::4] = 1 - labels[::4]  # some mistakes, for the report's grid
    return x, labels


def _empty_gradcam(model, x: np.ndarray) -> np.ndarray:
    """Independently: whether the predicted class's raw Grad-CAM at "conv" has no positive value."""
    import keras
    import tensorflow as tf

    conv, head = model.get_layer("conv"), model.get_layer("head")
    kernel, bias = head.get_weights()
    features = keras.Model(model.inputs, conv.output)
    x = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        acts = features(x)
        tape.watch(acts)
        logits = tf.reduce_mean(acts, axis=(1, 2)) @ kernel + bias
        score = tf.gather(logits, tf.argmax(logits, axis=1), batch_dims=1)
    weights = tf.reduce_mean(tape.gradient(score, acts), axis=(1, 2))
    cam = tf.einsum("bhwk,bk->bhw", acts, weights).numpy()
    return cam.reshape(len(cam), -1).max(axis=1) <= 0


@pytest.fixture(scope="module")
def blank(tmp_path_factory):
    from audit.engine import AuditOptions
    from audit.pipeline import run_audit

    root = tmp_path_factory.mktemp("blank")
    x, y = _images()
    np.savez(root / "eval.npz", x=x, y=y, class_names=np.array(NAMES))
    # A slice holding every mistake, so one is flagged (the overview fails on a run with none flagged).
    site = np.where(np.arange(N) % 4 == 0, "flipped", "kept")
    pd.DataFrame({"index": np.arange(N), "site": site}).to_csv(root / "ann.csv", index=False)
    model = _model()
    model.save(root / "model.keras")
    options = AuditOptions(explain=("gradcam", "occlusion"), bootstrap=20, min_slice_size=4)
    store = run_audit(root / "model.keras", root / "eval.npz", root / "store", annotations=root / "ann.csv",
                      options=options, progress=False)
    return {"store": store, "empty": _empty_gradcam(model, x.astype(np.float32))}


def test_count_and_signal_array_match_an_independent_grad_cam(blank):
    run = Reader(blank["store"])
    empty = blank["empty"]
    assert 0 < empty.sum() < N  # the model gives both kinds
    info = run.metrics["explanations"]["gradcam"]["no_signal"]
    assert info["count"] == int(empty.sum()) and info["of"] == N
    assert "layer conv" in info["reason"] and "ReLU" in info["reason"] and "--layer" in info["suggestion"]
    assert set(run.metrics["explanations"]["occlusion"]["no_signal"]) == {"count", "of", "reason", "suggestion"}
    signal = np.load(blank["store"] / schema.signal_file("gradcam"))
    index = np.load(blank["store"] / schema.HEATMAP_INDEX)
    np.testing.assert_array_equal(~signal, empty[index])
    assert schema.signal_file("gradcam") in run.manifest["files"]
    for i in index[~signal]:
        assert not run.heatmap("gradcam", int(i)).any()


def test_app_says_no_signal_and_suggests(blank, monkeypatch):
    empty = set(np.flatnonzero(blank["empty"]).tolist())
    at = start(monkeypatch, blank["store"])
    at = goto(at, "gallery")
    at.radio(key="g_method").set_value("gradcam").run()
    shown = captions(at)
    assert shown
    for caption in shown:
        i = int(caption.split("#")[1].split()[0])
        assert ("no signal (" in caption) == (i in empty), caption
    at.session_state["ex_index"] = min(empty)
    at = goto(at, "example")
    assert any("Grad-CAM: no signal (" in c for c in captions(at))
    assert any("earlier --layer" in c.value for c in at.caption)


def test_report_says_no_signal(blank):
    from audit.views.report import build_report

    _, blocks = build_report(Reader(blank["store"]))
    texts = [b.text for b in blocks if b.kind == "text"]
    assert any("gradcam:" in t and "no signal" in t for t in texts)
    pictures = [p for b in blocks if b.kind == "pictures" for p in b.pictures]
    wrong = [p for p in pictures if p.alt.endswith(": gradcam") or "gradcam: no signal" in p.alt]
    assert any("no signal (" in p.alt for p in wrong)
    for p in wrong:
        i = int(p.alt.split("#")[1].split(":")[0])
        assert ("no signal (" in p.alt) == bool(blank["empty"][i]), p.alt


def test_tensorboard_description_says_no_signal(blank):
    events = read_events(blank["store"] / "tensorboard")
    seen = 0
    for tag, values in events["images"].items():
        if not tag.startswith("gradcam/"):
            continue
        (_, _, description), = values
        listed = [int(i) for i in re.findall(r"^\d+\. example (\d+)", description, flags=re.M)]
        has_empty = any(blank["empty"][i] for i in listed)
        assert ("no signal (" in description) == has_empty, (tag, description)
        seen += has_empty
    assert seen
