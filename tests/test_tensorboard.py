"""TensorBoard export of a results store, read back twice: with TensorBoard's
event-file reader, and through a real ``tensorboard`` process's HTTP data API.

The store comes from a real run (which exports at its end) on brightness
images where a third of site "b" is mislabelled: the hand-weighted model stays
right about brightness, so site "b" holds every mistake, confidently made, and
is a flagged slice.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.errors import AuditError, StoreError
from audit.metrics import worst_slices
from audit.store.reader import Reader
from audit.views import tensorboard as tb
from audit.viz import overlay
from conftest import CLASSES, brightness_images, brightness_model, free_port, stop

N = 90
THRESHOLD_HALF = (tb.PR_THRESHOLDS - 1) // 2  # index of threshold 0.5


def run_folder(logdir: Path) -> Path:
    """The one folder under ``logdir`` (itself included) that holds event files: an export's run."""
    folders = sorted({f.parent for f in Path(logdir).rglob("events.out.tfevents.*")})
    assert len(folders) == 1, folders
    return folders[0]


def read_events(logdir: Path) -> dict[str, dict[str, list]]:
    """``{plugin: {tag: [(step, numpy value, description)]}}`` via TensorBoard's event-file reader,
    of the one run under ``logdir``."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea

    acc = pea.EventAccumulator(str(run_folder(logdir)), size_guidance={pea.TENSORS: 0})
    acc.Reload()
    out: dict[str, dict[str, list]] = {}
    for tag in acc.Tags()["tensors"]:
        meta = acc.SummaryMetadata(tag)
        plugin = meta.plugin_data.plugin_name
        out.setdefault(plugin, {})[tag] = [
            (e.step, tf.make_ndarray(e.tensor_proto), meta.summary_description) for e in acc.Tensors(tag)
        ]
    return out


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from audit.engine import AuditOptions
    from audit.pipeline import run_audit

    root = tmp_path_factory.mktemp("tb_store")
    x, labels = brightness_images(N)
    site = np.where(np.arange(N) % 2 == 0, "a", "b")
    flip = (site == "b") & (np.arange(N) % 3 == 0)
    labels = np.where(flip, (labels + 1) % len(CLASSES), labels)
    np.savez(root / "eval.npz", x=x, y=labels, class_names=np.array(CLASSES))
    pd.DataFrame({"index": np.arange(N), "site": site}).to_csv(root / "ann.csv", index=False)
    brightness_model().save(root / "model.keras")
    options = AuditOptions(explain=("gradcam", "occlusion", "activations"), explain_limit=30, bootstrap=50,
                           min_slice_size=10)
    return run_audit(root / "model.keras", root / "eval.npz", root / "store", annotations=root / "ann.csv",
                     options=options, progress=False)


@pytest.fixture(scope="module")
def events(store) -> dict:
    return read_events(store / "tensorboard")


def _expected_images(run: Reader) -> dict[str, list[int]]:
    frame = run.predictions
    explained = frame[frame["index"].isin(list(run.heatmap_index))]
    expected = {}
    for k, name in enumerate(CLASSES):
        rows = explained[explained["label"] == k]
        wrong = rows[~rows["correct"]].sort_values("confidence", ascending=False, kind="stable")
        right = rows[rows["correct"]]
        for kind, chosen in (("mistakes", wrong["index"].tolist()), ("correct", right["index"].tolist())):
            if chosen:
                expected[f"{name}/{kind}"] = chosen
    return expected


def test_run_writes_every_plugin(store, events):
    assert set(events) == {"scalars", "pr_curves", "images", "histograms", "text", "hparams", "custom_scalars"}
    margin = {t for t, series in events["scalars"].items() if [s for s, _, _ in series] != [0]}
    assert all(step == 0 for plugin, tags in events.items() for tag, series in tags.items()
               for step, _, _ in series if tag not in margin)
    # Only margin-chart series leave step 0: the k-th of a chart on steps 2k and 2k + 1.
    assert margin and all(t.startswith(("slices", "metrics/accuracy", "metrics/balanced_accuracy")) for t in margin)
    run = store / "tensorboard" / "model"  # the run is named after the model file, model.keras
    assert len(list(run.glob(f"events.out.tfevents.*{tb.EVENT_SUFFIX}"))) == 1
    assert not list((store / "tensorboard").glob("events.out.tfevents.*"))


def test_scalars_match_metrics_json(store, events):
    run = Reader(store)
    m = run.metrics
    scalars = {tag: float(series[0][1]) for tag, series in events["scalars"].items()}
    assert scalars["metrics/accuracy"] == pytest.approx(m["accuracy"], abs=1e-6)
    assert scalars["metrics/accuracy"] == pytest.approx(1 - 15 / N, abs=1e-6)
    assert [scalars["metrics/accuracy/ci_low"], scalars["metrics/accuracy/ci_high"]] == pytest.approx(m["accuracy_ci"])
    assert scalars["metrics/balanced_accuracy"] == pytest.approx(m["balanced_accuracy"], abs=1e-6)
    assert scalars["metrics/ece"] == pytest.approx(m["calibration"]["ece"], abs=1e-6)
    assert scalars["metrics/worst_slice_gap"] == pytest.approx(worst_slices(m, k=1)[0]["gap"], abs=1e-6)
    rows = m["slices"]["rows"]
    tags = dict(zip(((r["column"], r["value"]) for r in rows), tb.slice_tags(rows)))
    singles = [r for r in rows if len(r["columns"]) == 1]
    for row in singles:
        tag = tags[(row["column"], row["value"])]
        assert scalars[tag] == pytest.approx(row["accuracy"], abs=1e-6)
        assert scalars[f"{tag}/ci_low"] == pytest.approx(row["accuracy_ci"][0], abs=1e-6)
        assert scalars[f"{tag}/ci_high"] == pytest.approx(row["accuracy_ci"][1], abs=1e-6)
    assert scalars["slices/site/a"] == 1.0
    assert scalars["slices/site/b"] == pytest.approx(30 / 45, abs=1e-6)
    for row in m["per_class"]:
        assert scalars[f"per_class/{row['class']}/recall"] == pytest.approx(row["recall"], abs=1e-6)
    pair_tags = {tags[(r["column"], r["value"])] for r in rows if len(r["columns"]) == 2}
    below = {tags[(r["column"], r["value"])] for r in rows if r.get("below_parents")}
    assert set(scalars) & pair_tags == below


def test_pr_curves_per_class_and_flagged_slice(store, events):
    run = Reader(store)
    frame = run.predictions
    labels = frame["label"].to_numpy()
    probs = run.probabilities()
    rows = run.metrics["slices"]["rows"]
    flagged_columns = {r["column"] for r in worst_slices(run.metrics, k=1000)}
    # Every value of each flagged annotation, flagged or not, so another run's curves sit beside these.
    flagged = {t[len("slices/"):] for r, t in zip(rows, tb.slice_tags(rows)) if r["column"] in flagged_columns}
    assert {"site/a", "site/b"} <= flagged
    tags = set(events["pr_curves"])
    assert {f"pr/{name}/pr_curves" for name in CLASSES} <= tags
    # Every c0_dark example of site b was relabelled: a class without positives there has no curve.
    assert {t for t in tags if "/site/b/" in t} == {"pr/c1_mid/site/b/pr_curves", "pr/c2_light/site/b/pr_curves"}
    subsets = {tag[len(f"pr/{name}/"): -len("/pr_curves")] for tag in tags for name in CLASSES
               if tag.startswith(f"pr/{name}/") and tag != f"pr/{name}/pr_curves"}
    assert {t for t in subsets if not t.startswith("discovered/")} == flagged
    groups = run.discovered()[: tb.DISCOVERED_GROUPS]
    assert {t for t in subsets if t.startswith("discovered/")} == {f"discovered/{g['method']}_{g['group']}"
                                                                    for g in groups}
    for k, name in enumerate(CLASSES):
        (_, curve, description), = events["pr_curves"][f"pr/{name}/pr_curves"]
        assert curve.shape == (6, tb.PR_THRESHOLDS)
        tp, fp = curve[0, THRESHOLD_HALF], curve[1, THRESHOLD_HALF]
        assert tp == np.sum((labels == k) & (probs[:, k] >= 0.5))
        assert fp == np.sum((labels != k) & (probs[:, k] >= 0.5))
        assert f"({np.sum(labels == k)} positives)" in description
    in_b = frame["site"].to_numpy() == "b"
    (_, curve, _), = events["pr_curves"]["pr/c1_mid/site/b/pr_curves"]
    assert curve[0, 0] == np.sum(labels[in_b] == 1)  # every positive scores >= threshold 0
    assert curve[0, THRESHOLD_HALF] == np.sum(in_b & (labels == 1) & (probs[:, 1] >= 0.5))


def test_images_are_overlays_by_class_and_correctness(store, events):
    run = Reader(store)
    expected = _expected_images(run)
    methods = ("gradcam", "occlusion")
    overlays = {t for t in events["images"] if not t.startswith("discovered/")}  # groups: test_tensorboard_margin
    assert overlays == {f"{m}/{key}" for m in methods for key in expected}
    assert "c1_mid/mistakes" in expected and "c0_dark/mistakes" not in expected
    for method in methods:
        for key, chosen in expected.items():
            (_, value, description), = events["images"][f"{method}/{key}"]
            pngs = value[2:]  # width, height, then one PNG per image
            assert len(pngs) == min(tb.IMAGES_PER_TAG, len(chosen))
            listed = [int(i) for i in re.findall(r"^\d+\. example (\d+)", description, flags=re.M)]
            if key.endswith("mistakes"):
                assert listed == chosen[: tb.IMAGES_PER_TAG]  # most confident first
            assert len(listed) == len(pngs)
            for i, png in zip(listed, pngs):
                image = decode_png(png)
                frame_colour = tb.MISTAKE_RGB if key.endswith("mistakes") else tb.CORRECT_RGB
                assert tuple(image[0, 0]) == tuple(image[-1, -1]) == frame_colour
                blended = overlay(run.image(i), run.heatmap(method, i), tb.OVERLAY_ALPHA)
                np.testing.assert_array_equal(image[1:-1, 1:-1], blended[1:-1, 1:-1])


def test_discovered_groups_mean_image_beside_mean_heatmap(store, events):
    run = Reader(store)
    groups = [g for g in run.discovered()[: tb.DISCOVERED_GROUPS] if run.discovered_heatmap(g) is not None]
    assert groups, "discovery stored no mean heatmap on this store"
    pictures = {t: v for t, v in events["images"].items() if t.startswith("discovered/")}
    assert set(pictures) == {f"discovered/{g['method']}_{g['group']}" for g in groups}
    for g in groups:
        (_, value, description), = pictures[f"discovered/{g['method']}_{g['group']}"]
        picture = decode_png(value[2])
        members = run.discovered_members(g)
        heatmap = run.discovered_heatmap(g)
        side = picture.shape[0]
        assert picture.shape == (side, 2 * side + 2, 3) and side >= tb.GROUP_PICTURE_SIDE
        if len(members) <= tb.GROUP_MEAN_IMAGES:  # every member averaged: recompute it by hand
            mean = np.round(np.mean([run.image(int(i)).astype(float) for i in members], axis=0))
            factor = side // mean.shape[0]
            np.testing.assert_array_equal(picture[::factor, :side:factor][: mean.shape[0], : mean.shape[1]], mean)
        # The right panel is the map: its brightest cell sits where the map peaks.
        right = picture[:, side + 2 :].astype(float).sum(-1)
        peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        cell = (side // heatmap.shape[0], side // heatmap.shape[1])
        block = right[peak[0] * cell[0] : (peak[0] + 1) * cell[0], peak[1] * cell[1] : (peak[1] + 1) * cell[1]]
        assert block.mean() >= np.percentile(right, 90) - 1e-9
        assert f"({int(g['n'])} examples" in description


def test_histograms_text_and_hparams(store, events):
    from tensorboard.plugins.hparams import metadata as hp_metadata

    run = Reader(store)
    layer = run.activation_layers[0]
    assert set(events["histograms"]) == {f"activations/{layer}", f"activations/{layer}/channel_mean",
                                         f"activations/{layer}/channel_frac_zero"}
    (_, hist, _), = events["histograms"][f"activations/{layer}"]
    stored = np.stack([run.activations(layer, i) for i in run.heatmap_index])
    assert hist[:, 2].sum() == stored.size
    assert hist[0, 0] == pytest.approx(stored.min(), abs=1e-3) and hist[-1, 1] == pytest.approx(stored.max(), abs=1e-3)

    (_, text, _), = events["text"]["report"]
    report = text.item().decode()
    assert report.startswith("# keras-audit report")
    assert "## Headline" in report and "site" in report
    assert "![" not in report  # pictures live in the other dashboards

    acc = _plugin_contents(store / "tensorboard", "hparams")
    session = hp_metadata.parse_session_start_info_plugin_data(acc[hp_metadata.SESSION_START_INFO_TAG])
    assert session.hparams["model"].string_value == "func"
    assert session.hparams["num_examples"].number_value == N
    assert session.hparams["option/explain"].string_value == "gradcam,occlusion,activations"
    assert session.hparams["explained"].string_value == "gradcam,occlusion,activations"
    assert session.hparams["option/layer"].string_value == "null"
    experiment = hp_metadata.parse_experiment_plugin_data(acc[hp_metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == [tag for tag, _ in tb.HPARAM_METRICS]
    # The table shows the first five metrics unticked-by-nobody: the bias ones are among them.
    shown = [m.name.tag for m in experiment.metric_infos][: tb.HPARAMS_SHOWN]
    assert {"metrics/worst_slice_gap", "metrics/worst_slice_accuracy", "metrics/flagged_slices"} <= set(shown)
    assert {h.name for h in experiment.hparam_infos} == set(session.hparams)
    scalars = set(events["scalars"])
    assert all(tag in scalars for tag, _ in tb.HPARAM_METRICS)


def _plugin_contents(logdir: Path, plugin: str) -> dict[str, bytes]:
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea

    acc = pea.EventAccumulator(str(run_folder(logdir)))
    acc.Reload()
    return acc.PluginTagToContent(plugin)


def test_projector_files(store):
    import tensorflow as tf
    from google.protobuf import text_format
    from tensorboard.plugins.projector import ProjectorConfig

    logdir = run_folder(store / "tensorboard")
    run = Reader(store)
    config = text_format.Parse((logdir / tb.PROJECTOR_CONFIG).read_text(), ProjectorConfig())
    (emb,) = config.embeddings
    assert (emb.tensor_name, emb.metadata_path, emb.sprite.image_path) == (
        tb.EMBEDDING_TENSOR, tb.METADATA_TSV, tb.SPRITE_PNG)
    vectors = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(logdir))).get_tensor(tb.EMBEDDING_TENSOR)
    np.testing.assert_allclose(vectors, np.asarray(run.embeddings(), np.float32))
    table = pd.read_csv(logdir / tb.METADATA_TSV, sep="\t")
    assert list(table.columns) == ["index", "label", "prediction", "correct", "confidence", *run.annotation_columns]
    assert len(table) == N
    assert (table["correct"] == "no").sum() == 15
    assert set(table.loc[table["correct"] == "no", "site"]) == {"b"}
    assert table["label"].tolist() == [CLASSES[k] for k in run.predictions["label"]]
    sprite = decode_png((logdir / tb.SPRITE_PNG).read_bytes())
    side = emb.sprite.single_image_dim[0]
    grid = int(np.ceil(np.sqrt(N)))
    assert sprite.shape == (grid * side, grid * side, 3)
    np.testing.assert_array_equal(sprite[side : 2 * side, :side], run.image(int(grid)))  # row 1, column 0


def test_cli_rewrites_only_its_own_files(store, tmp_path, capsys):
    from audit.cli import main

    logdir = tmp_path / "logs"
    logdir.mkdir()
    foreign = logdir / "events.out.tfevents.1.host.training"
    foreign.write_bytes(b"")
    (logdir / "notes.txt").write_text("mine")
    for _ in range(2):
        assert main(["tensorboard", str(store), "--logdir", str(logdir)]) == 0
        assert capsys.readouterr().out.strip() == str(logdir)
    ours = list(logdir.rglob(f"events.out.tfevents.*{tb.EVENT_SUFFIX}"))
    assert [f.parent for f in ours] == [logdir / "model"]
    assert foreign.exists() and (logdir / "notes.txt").read_text() == "mine"
    assert read_events(logdir / "model")["scalars"]["metrics/ece"][0][0] == 0


def test_export_refuses_bad_targets(store, tmp_path):
    with pytest.raises(StoreError, match="not a keras-audit results store"):
        tb.export(tmp_path)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(AuditError, match="is a file"):
        tb.export(store, a_file)
    theirs = tmp_path / "theirs"
    (theirs / "model").mkdir(parents=True)
    for folder in (theirs, theirs / "model"):
        (folder / tb.PROJECTOR_CONFIG).write_text('embeddings { tensor_name: "word_vectors" }\n')
    with pytest.raises(AuditError, match=f"{tb.PROJECTOR_CONFIG} that keras-audit did not write") as e:
        tb.export(store, theirs)  # the run folder, theirs/model, holds someone else's projector
    assert str(theirs / "model") in str(e.value)
    for folder in (theirs, theirs / "model"):
        assert (folder / tb.PROJECTOR_CONFIG).read_text().startswith("embeddings { tensor_name: \"word_vectors\"")
    assert tb.export(store, theirs, name="mine") == theirs  # beside it, their files untouched
    assert (theirs / tb.PROJECTOR_CONFIG).read_text().startswith("embeddings { tensor_name: \"word_vectors\"")
    with pytest.raises(AuditError, match="run name 'a/b' must be one folder name"):
        tb.export(store, theirs, name="a/b")


def test_cli_run_name_needs_a_logdir(store, capsys):
    from audit.cli import main

    assert main(["tensorboard", str(store), "--run", "other"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--run" in err and "--logdir" in err and len(err.splitlines()) == 1


def test_run_without_explanations_exports_the_rest(tiny, tmp_path):
    from audit.engine import AuditOptions
    from audit.pipeline import run_audit

    out = run_audit(tiny["model"], tiny["data"], tmp_path / "store", annotations=tiny["annotations"],
                    options=AuditOptions(explain=(), bootstrap=0, tensorboard=False), progress=False)
    assert not (out / "tensorboard").exists()
    logdir = tb.export(out)
    assert logdir == out / "tensorboard"
    events = read_events(logdir)
    assert set(events) == {"scalars", "pr_curves", "text", "hparams", "custom_scalars"}
    assert "metrics/balanced_accuracy" in events["scalars"]
    assert "metrics/balanced_accuracy/ci_low" not in events["scalars"]  # no bootstrap, no interval
    assert (logdir / tb.run_name(Reader(out)) / tb.PROJECTOR_CONFIG).is_file()


# -- a real TensorBoard ---------------------------------------------------------------------------
class _Server:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params) -> bytes:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.read()

    def json(self, path: str, **params):
        return json.loads(self.get(path, **params))

    def post_json(self, path: str, body: dict):
        request = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def wait_for(self, what: str, check, timeout: float):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                result = check()
                if result:
                    return result
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError) as e:
                last = e
            time.sleep(0.5)
        raise AssertionError(f"tensorboard: {what} not ready within {timeout}s (last error: {last})")


def test_real_tensorboard_serves_the_logs(store, tmp_path):
    runs = tmp_path / "runs"
    tb.export(store, runs, name="model_a")
    tb.export(store, runs, name="model_b")
    run = Reader(store)
    port = free_port()
    log = (tmp_path / "tensorboard.log").open("wb")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(runs), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast=false", "--reload_interval=1"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        server = _Server(port)
        server.wait_for("HTTP", lambda: proc.poll() is None and server.json("/data/plugins_listing"), 150)
        scalar_tags = server.wait_for(
            "both runs", lambda: (t := server.json("/data/plugin/scalars/tags")) and len(t) == 2 and t, 60)
        assert set(scalar_tags) == {"model_a", "model_b"}
        assert {"metrics/accuracy", "slices/site/b", "slices/site/b/ci_low"} <= set(scalar_tags["model_a"])
        (_, step, value), = server.json("/data/plugin/scalars/scalars", run="model_a", tag="metrics/ece")
        assert step == 0 and value == pytest.approx(run.metrics["calibration"]["ece"], abs=1e-6)
        points = server.json("/data/plugin/scalars/scalars", run="model_a", tag="slices/site/b")
        assert [v for _, _, v in points] == pytest.approx([30 / 45] * 2, abs=1e-6)

        listing = server.wait_for(
            "projector", lambda: (p := server.json("/data/plugins_listing"))["projector"]["enabled"] and p, 60)
        for plugin in ("scalars", "pr_curves", "images", "histograms", "text", "hparams", "projector"):
            assert listing[plugin]["enabled"], plugin

        pr_tags = server.json("/data/plugin/pr_curves/tags")["model_a"]
        assert {f"pr/{c}/pr_curves" for c in CLASSES} | {"pr/c1_mid/site/b/pr_curves"} <= set(pr_tags)
        curve = server.json("/data/plugin/pr_curves/pr_curves", run="model_a", tag="pr/c1_mid/pr_curves")["model_a"][0]
        labels, probs = run.predictions["label"].to_numpy(), run.probabilities()
        assert curve["true_positives"][THRESHOLD_HALF] == np.sum((labels == 1) & (probs[:, 1] >= 0.5))
        # The plugin drops the thresholds above every score, where no example is predicted positive.
        assert len(curve["precision"]) == len(curve["recall"]) == len(curve["thresholds"]) <= tb.PR_THRESHOLDS

        image_tags = server.json("/data/plugin/images/tags")["model_a"]
        expected = _expected_images(run)
        overlays = {t for t in image_tags if not t.startswith("discovered/")}
        assert overlays == {f"{m}/{key}" for m in ("gradcam", "occlusion") for key in expected}
        shown = min(tb.IMAGES_PER_TAG, len(expected["c1_mid/mistakes"]))
        assert image_tags["gradcam/c1_mid/mistakes"]["samples"] == shown
        (entry,) = server.json("/data/plugin/images/images", run="model_a", tag="gradcam/c1_mid/mistakes", sample=0)
        png = server.get("/data/plugin/images/individualImage?" + entry["query"])
        assert tuple(decode_png(png)[0, 0]) == tb.MISTAKE_RGB

        assert "report" in server.json("/data/plugin/text/tags")["model_a"]
        assert f"activations/{run.activation_layers[0]}" in server.json("/data/plugin/histograms/tags")["model_a"]

        assert sorted(server.json("/data/plugin/projector/runs")) == ["model_a", "model_b"]
        config = server.json("/data/plugin/projector/info", run="model_a")
        (emb,) = config["embeddings"]
        dims = run.embeddings().shape[1]
        assert emb["tensorName"] == tb.EMBEDDING_TENSOR and emb["tensorShape"] == [N, dims]
        tensor = server.get("/data/plugin/projector/tensor", run="model_a", name=tb.EMBEDDING_TENSOR)
        np.testing.assert_allclose(np.frombuffer(tensor, np.float32).reshape(N, dims), run.embeddings())
        metadata = server.get("/data/plugin/projector/metadata", run="model_a", name=tb.EMBEDDING_TENSOR).decode()
        assert metadata.splitlines()[0].split("\t")[-5:] == ["site", "aspect_ratio", "resolution", "brightness",
                                                             "contrast"]
        sprite = server.get("/data/plugin/projector/sprite_image", run="model_a", name=tb.EMBEDDING_TENSOR)
        assert sprite[:8] == b"\x89PNG\r\n\x1a\n"

        experiment = server.post_json("/data/plugin/hparams/experiment", {"experimentName": ""})
        assert [m["name"]["tag"] for m in experiment["metricInfos"]] == [tag for tag, _ in tb.HPARAM_METRICS]
        groups = server.post_json("/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                      "STATUS_RUNNING"],
            "colParams": [], "startIndex": 0, "sliceSize": 10,
        })
        sessions = {s["name"] for g in groups["sessionGroups"] for s in g["sessions"]}
        assert sessions == {"model_a", "model_b"}
    finally:
        stop(proc, timeout=20)
        log.close()
