"""Keras callbacks: train tiny models and assert what the event files hold."""

from __future__ import annotations

import importlib.util

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from audit.callbacks import (
    AuditCallback,
    GradCAMCallback,
    PRCurveCallback,
    SlicedMetricsCallback,
)
from audit.errors import AuditError
from audit.explain import GradCAM, OcclusionSensitivity
from audit.views import tensorboard as tb
from audit.viz import overlay
from conftest import CLASSES, REPO, SIZE, brightness_images, brightness_model
from test_tensorboard import decode_png, read_events

NV = 18  # validation examples: 6 per class


def _data():
    x, y = brightness_images(24)
    xv, yv = brightness_images(NV, seed=1)
    return x.astype(np.float32), y, xv.astype(np.float32), yv


def _site(n: int = NV) -> np.ndarray:
    return np.where(np.arange(n) % 2 == 0, "a", "b")


def _compiled(kind: str = "functional"):
    model = brightness_model(kind=kind)
    # A tiny step keeps the hand-set weights (and so the predictions) meaningful.
    model.compile(optimizer=keras.optimizers.SGD(1e-5), loss="sparse_categorical_crossentropy")
    return model


def _with_bounds(*tags: str) -> set[str]:
    return {t + suffix for t in tags for suffix in ("", "/ci_low", "/ci_high")}


def _expected_tags(layer: str, explainers=("gradcam", "occlusion")) -> dict[str, set[str]]:
    return {
        "scalars": _with_bounds("metrics/accuracy", "slices/site/a", "slices/site/b", "slices/band/0",
                                "slices/band/1", "slices/band/2"),
        "pr_curves": {f"pr/{c}/pr_curves" for c in CLASSES},
        "images": {f"{m}/{c}" for m in explainers for c in CLASSES},
        "histograms": {f"activations/{layer}"},
    }


def test_tags_steps_and_values_from_event_files(tmp_path):
    x, y, xv, yv = _data()
    model = _compiled()
    annotations = pd.DataFrame({"site": _site(), "band": yv})
    cb = AuditCallback((xv, yv), annotations=annotations, log_dir=tmp_path, freq=2, explainers=("gradcam", "occlusion"),
                       num_images=6, class_names=CLASSES, min_slice_size=3)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[cb])

    events = read_events(tmp_path / "audit")
    assert {plugin: set(tags) for plugin, tags in events.items()} == _expected_tags("conv")
    assert {step for tags in events.values() for series in tags.values() for step, _, _ in series} == {0, 2}
    assert all([s for s, _, _ in series] == [0, 2] for tags in events.values() for series in tags.values())

    # Step 2 is the end of the last epoch: recompute everything from the trained model.
    probs = model.predict(xv, verbose=0)
    pred = probs.argmax(1)
    last = {tag: float(series[-1][1]) for tag, series in events["scalars"].items()}
    assert last["metrics/accuracy"] == pytest.approx(np.mean(pred == yv))
    for site in "ab":
        assert last[f"slices/site/{site}"] == pytest.approx(np.mean((pred == yv)[_site() == site]))
        assert last[f"slices/site/{site}/ci_low"] <= last[f"slices/site/{site}"] <= last[f"slices/site/{site}/ci_high"]
    for k, name in enumerate(CLASSES):
        curve = events["pr_curves"][f"pr/{name}/pr_curves"][-1][1]
        assert curve[0, 100] == np.sum((yv == k) & (probs[:, k] >= 0.5))
        assert curve[1, 100] == np.sum((yv != k) & (probs[:, k] >= 0.5))

    # The fixed sample: the first two validation images of each class, in class order. Maps
    # are recomputed on that same batch: min-max normalising a nearly flat map magnifies the
    # last-bit differences another batch shape could bring.
    fixed = np.concatenate([np.flatnonzero(yv == k)[:2] for k in range(len(CLASSES))])
    patch = max(2, SIZE // 8)
    explainers = {"gradcam": GradCAM(model), "occlusion": OcclusionSensitivity(model, patch_size=patch)}
    for method, explainer in explainers.items():
        all_maps = explainer(xv[fixed])
        for k, name in enumerate(CLASSES):
            pngs = events["images"][f"{method}/{name}"][-1][1][2:]
            assert len(pngs) == 2
            rows, maps = fixed[2 * k : 2 * k + 2], all_maps[2 * k : 2 * k + 2]
            for png, row, heatmap in zip(pngs, rows, maps):
                image = decode_png(png)
                assert tuple(image[0, 0]) == (tb.CORRECT_RGB if pred[row] == yv[row] else tb.MISTAKE_RGB)
                np.testing.assert_allclose(image[1:-1, 1:-1], overlay(xv[row], heatmap)[1:-1, 1:-1], atol=2)
    hist = events["histograms"]["activations/conv"][-1][1]
    assert hist[:, 2].sum() == 6 * SIZE * SIZE * 2  # every activation of the 6 images, 2 channels


@pytest.mark.parametrize("kind, batched", [("sequential", True), ("nested", False)])
def test_other_model_kinds_and_tf_data(tmp_path, kind, batched):
    x, y, xv, yv = _data()
    model = _compiled(kind)
    one_hot = np.eye(len(CLASSES), dtype=np.float32)[yv]
    dataset = tf.data.Dataset.from_tensor_slices((xv, one_hot))
    if batched:
        dataset = dataset.batch(5)  # a ragged last batch on purpose
    annotations = {"site": _site(), "band": yv}
    cb = AuditCallback(dataset, annotations=annotations, log_dir=tmp_path, explainers=("gradcam", "occlusion"),
                       num_images=6, class_names=CLASSES, min_slice_size=3)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    layer = "backbone/conv" if kind == "nested" else "conv"
    events = read_events(tmp_path / "audit")
    assert {plugin: set(tags) for plugin, tags in events.items()} == _expected_tags(layer)
    assert all([s for s, _, _ in series] == [0, 1] for tags in events.values() for series in tags.values())
    accuracy = events["scalars"]["metrics/accuracy"][-1][1]
    assert float(accuracy) == pytest.approx(np.mean(model.predict(xv, verbose=0).argmax(1) == yv))


def test_single_purpose_callbacks_write_one_kind_each(tmp_path):
    x, y, xv, yv = _data()
    model = _compiled()
    callbacks = [
        GradCAMCallback((xv, yv), log_dir=tmp_path, num_images=3, class_names=CLASSES, run_name="gradcam"),
        PRCurveCallback((xv, yv), log_dir=tmp_path, class_names=CLASSES, run_name="pr"),
        SlicedMetricsCallback((xv, yv), {"site": _site()}, log_dir=tmp_path, class_names=CLASSES, run_name="slices",
                              min_slice_size=3),
    ]
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=callbacks)
    expected = _expected_tags("conv", explainers=("gradcam",))
    gradcam, pr, sliced = (read_events(tmp_path / run) for run in ("gradcam", "pr", "slices"))
    assert {p: set(t) for p, t in gradcam.items()} == {"images": expected["images"]}
    assert {p: set(t) for p, t in pr.items()} == {"pr_curves": expected["pr_curves"]}
    assert {p: set(t) for p, t in sliced.items()} == {
        "scalars": _with_bounds("metrics/accuracy", "slices/site/a", "slices/site/b")}
    assert [len(s[1]) - 2 for s in gradcam["images"]["gradcam/c0_dark"]] == [1, 1]  # 3 images over 3 classes


def test_no_retrace_and_flat_memory_over_50_epochs(tmp_path):
    x, y, xv, yv = _data()
    model = _compiled()
    cb = AuditCallback((xv, yv), annotations={"site": _site()}, log_dir=tmp_path, explainers=("gradcam", "occlusion"),
                       num_images=6, class_names=CLASSES, min_slice_size=3)
    seen: dict[int, tuple[float, dict]] = {}

    def resident_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    probe = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.__setitem__(epoch, (resident_mb(), cb.trace_counts())))
    model.fit(x, y, epochs=50, batch_size=24, verbose=0, callbacks=[cb, probe])

    counts = seen[49][1]
    assert counts == seen[1][1]
    assert {name.split("/")[0] for name in counts} >= {"predict", "audit.explain"}
    assert all(n <= 2 for n in counts.values()), counts  # predict: at most a second, batch-agnostic trace
    growth = seen[49][0] - seen[4][0]
    assert growth < 10, f"resident memory grew {growth:.1f} MB over 45 audited epochs"
    events = read_events(tmp_path / "audit")
    assert [s for s, _, _ in events["scalars"]["slices/site/a"]] == list(range(50))
    assert len(list((tmp_path / "audit").glob("events.out.tfevents.*"))) == 1


def _draw_shapes():
    spec = importlib.util.spec_from_file_location("sample_build", REPO / "sample_models" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def test_planted_bias_gap_appears_in_the_sliced_scalars(tmp_path):
    build = _draw_shapes()
    rng = np.random.default_rng(0)
    # Training: the red corner tag marks circles; validation: it is placed at random.
    x, y, _ = build.draw_shapes(800, rng, cue_rate={"circle": 0.95, "square": 0.0, "triangle": 0.0}, light_rate=0.85)
    xv, yv, rows = build.draw_shapes(300, rng, cue_rate=dict.fromkeys(build.CLASSES, 0.5), light_rate=0.5)

    def half(images):  # 32x32 keeps an epoch to about a second; the tag survives as a 5x5 block
        return images.reshape(len(images), 32, 2, 32, 2, 3).mean((2, 4)).astype(np.float32) / 255

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    cb = SlicedMetricsCallback((half(xv), yv), pd.DataFrame(rows), log_dir=tmp_path, class_names=build.CLASSES)
    epochs = 4
    model.fit(half(x), y, epochs=epochs, batch_size=32, verbose=0, callbacks=[cb])

    scalars = read_events(tmp_path / "audit")["scalars"]
    disagree = [float(v) for _, v, _ in scalars["slices/cue_agrees/no"]]
    agree = [float(v) for _, v, _ in scalars["slices/cue_agrees/yes"]]
    assert len(disagree) == len(agree) == epochs
    assert disagree[-1] < agree[-1] - 0.3, (disagree, agree)
    # The intervals separate too: the gap is not noise.
    assert float(scalars["slices/cue_agrees/no/ci_high"][-1][1]) < float(scalars["slices/cue_agrees/yes/ci_low"][-1][1])
    agrees = np.array([r["cue_agrees"] == "yes" for r in rows])
    pred = model.predict(half(xv), verbose=0).argmax(1)
    assert disagree[-1] == pytest.approx(np.mean((pred == yv)[~agrees]))


# -- mistakes a user can make -----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"freq": 0}, "freq must be 1 or more; received 0"),
    ({"num_images": 2.5}, "num_images must be a whole number; received 2.5"),
    ({"explainers": ("lime",)}, "unknown explainer(s) ['lime']"),
    ({"summaries": ("audio",)}, "summaries must be some of images, pr_curves, slices, histograms"),
    ({"annotations": [1, 2, 3]}, "annotations must be a pandas DataFrame or a dict of columns"),
    ({"run_name": "a/b"}, "run_name must be a folder name"),
])
def test_bad_arguments_fail_at_construction(kwargs, message):
    _, _, xv, yv = _data()
    with pytest.raises(AuditError) as e:
        AuditCallback((xv, yv), **kwargs)
    assert message in str(e.value)


def test_bad_validation_data_and_annotations(tmp_path):
    _, _, xv, yv = _data()
    model = _compiled()
    with pytest.raises(AuditError, match="validation_data must be"):
        AuditCallback("data/val")
    with pytest.raises(AuditError, match="18 images but 17 labels"):
        AuditCallback((xv, yv[:-1]))
    with pytest.raises(AuditError, match="needs annotations"):
        SlicedMetricsCallback((xv, yv), None)

    def audited(data, **kwargs):
        cb = AuditCallback(data, log_dir=tmp_path, num_images=3, min_slice_size=3, **kwargs)
        cb.set_model(model)
        return cb

    with pytest.raises(AuditError, match="annotations has 10 rows but validation_data has 18 examples"):
        audited((xv, yv), annotations={"site": ["a", "b"] * 5}).audit(0)
    with pytest.raises(AuditError, match="class_names has 2 names but the model has 3 classes"):
        audited((xv, yv), class_names=["x", "y"]).audit(0)
    with pytest.raises(AuditError, match="validation label 7 is out of range; the model has 3 classes"):
        audited((xv, np.full(NV, 7))).audit(0)

    shuffled = tf.data.Dataset.from_tensor_slices((xv, yv)).shuffle(NV, seed=1).batch(6)
    cb = audited(shuffled, annotations={"site": _site()})
    cb.audit(0)
    with pytest.raises(AuditError, match="different order on each pass"):
        cb.audit(1)
    cb.close()

    one_shot = audited((xv[i : i + 6], yv[i : i + 6]) for i in range(0, NV, 6))
    one_shot.audit(0)
    with pytest.raises(AuditError, match="no examples on this pass"):
        one_shot.audit(1)
    one_shot.close()


def _overlays_under(tmp_path, xv, yv, **display) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Train one epoch with ``display`` (display_fn / preprocess); the fixed sample's rows and
    the decoded gradcam overlay PNGs written for them, in sample order."""
    x, y, _, _ = _data()
    model = _compiled()
    cb = AuditCallback((xv, yv), log_dir=tmp_path, explainers=("gradcam",), num_images=6, class_names=CLASSES,
                       summaries=("images",), **display)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[cb])
    events = read_events(tmp_path / "audit")
    fixed = np.concatenate([np.flatnonzero(yv == k)[:2] for k in range(len(CLASSES))])
    pngs = [decode_png(p) for name in CLASSES for p in events["images"][f"gradcam/{name}"][-1][1][2:]]
    return fixed, pngs, GradCAM(model)(xv[fixed])


def test_overlays_show_the_pixels_before_preprocessing(tmp_path):
    _, _, original, yv = _data()
    pixels = original.astype(np.uint8)
    xv = keras.applications.mobilenet_v2.preprocess_input(original.copy())  # -1..1
    fixed, pngs, maps = _overlays_under(tmp_path / "tf", xv, yv, preprocess="tf")
    for png, row, heatmap in zip(pngs, fixed, maps):
        np.testing.assert_allclose(png[1:-1, 1:-1], overlay(pixels[row], heatmap)[1:-1, 1:-1], atol=2)
    # Without it, -1..1 inputs are stretched from their min and max (the default, unchanged).
    assert np.abs(overlay(xv[fixed[0]], maps[0]).astype(int) - overlay(pixels[fixed[0]], maps[0])).max() > 20


def test_overlays_show_what_display_fn_gives(tmp_path):
    _, _, original, yv = _data()
    xv = original / 255.0

    def negative(batch):
        return (255 - np.round(batch * 255)).astype(np.uint8)

    fixed, pngs, maps = _overlays_under(tmp_path, xv, yv, display_fn=negative)
    for png, row, heatmap in zip(pngs, fixed, maps):
        np.testing.assert_allclose(png[1:-1, 1:-1], overlay(negative(xv[row]), heatmap)[1:-1, 1:-1], atol=2)


def test_display_options_are_checked():
    _, _, xv, yv = _data()
    with pytest.raises(AuditError, match="not both"):
        AuditCallback((xv, yv), display_fn=lambda b: b, preprocess="tf")
    with pytest.raises(AuditError, match="unknown preprocess 'tff'"):
        AuditCallback((xv, yv), preprocess="tff")
    with pytest.raises(AuditError, match="display_fn must be a function"):
        AuditCallback((xv, yv), display_fn="tf")


# -- the fixed sample: every class shown ------------------------------------------------------------
def _ten_class_pipeline(labels: np.ndarray, sample_size: int = 16):
    from audit.engine.live import LiveData, LivePipeline

    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    # Each image carries its position, so the sample says which examples it holds.
    x = np.broadcast_to(np.arange(len(labels), dtype=np.float32)[:, None, None, None], (len(labels), 4, 4, 3)).copy()
    live = LivePipeline.build(model, LiveData((x, labels)), class_names=None, batch_size=7, sample_size=sample_size)
    live.predict_all()
    return live.fixed_x[:, 0, 0, 0].astype(int), live.fixed_y


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_sample_of_16_covers_all_10_classes(order):
    labels = np.repeat(np.arange(10), 5)  # 5 of each class, class 0 first: a fixed quota of 2 fills up by class 7
    if order == "shuffled":
        labels = np.random.default_rng(4).permutation(labels)
    rows, classes = _ten_class_pipeline(labels)
    assert len(rows) == 16 and set(classes) == set(range(10))
    np.testing.assert_array_equal(labels[rows], classes)
    counts = np.bincount(classes, minlength=10)
    assert counts.max() - counts.min() <= 1  # as even as 16 over 10 allows: six classes twice, four once
    for k in range(10):  # each class shows its first images, in data order
        np.testing.assert_array_equal(rows[classes == k], np.flatnonzero(labels == k)[: counts[k]])
    again, _ = _ten_class_pipeline(labels)
    np.testing.assert_array_equal(rows, again)  # deterministic


def test_sample_fills_up_from_the_classes_that_have_more():
    labels = np.array([3] * 12 + [7] * 2 + [0] * 1)  # class 3 arrives first and would take the whole sample
    rows, classes = _ten_class_pipeline(labels, sample_size=8)
    assert dict(zip(*np.unique(classes, return_counts=True))) == {0: 1, 3: 5, 7: 2}
    np.testing.assert_array_equal(rows[classes == 3], np.arange(5))
