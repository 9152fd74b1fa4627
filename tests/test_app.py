"""The Streamlit app, page by page, through ``streamlit.testing.v1.AppTest``.

The stores are synthetic planted-bias runs (``tests/app_stores.py``); every
count a test expects is recomputed from the store's own predictions table, so
the oracle is the store and not the app. Chart clicks cannot be driven from
AppTest, so the links they make are tested through the button routes that
open the same filtered gallery.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import app_stores
from audit.store import schema

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "audit" / "views" / "app" / "main.py"
TIMEOUT = 90  # seconds per script run: the cores are shared, the first run imports everything


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_runs")
    a = app_stores.build_store(root / "run_a", n=600, explained=40, bootstrap=50)
    b = app_stores.variant_store(a, root / "run_b")
    broken = app_stores.broken_stores(root / "broken", a)
    return {"a": a, "b": b, "broken": broken, "root": root,
            "frame_a": pd.read_parquet(a / schema.PREDICTIONS), "frame_b": pd.read_parquet(b / schema.PREDICTIONS),
            "metrics_a": json.loads((a / schema.METRICS).read_text())}


def start(monkeypatch, *runs) -> AppTest:
    """The app as ``streamlit run audit/views/app/main.py -- runs...`` starts it, after its first run."""
    monkeypatch.setattr(sys, "argv", [str(ENTRY), *map(str, runs)])
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)
    return clean(at.run())


def clean(at: AppTest) -> AppTest:
    """No traceback and no Streamlit warning (e.g. a widget given a value twice) on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.warning, [w.value for w in at.warning]
    return at


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"screens/{page}.py").run()
    return clean(at)


def matching(at: AppTest) -> tuple[int, int]:
    """The gallery's "**k of n examples match**" line, as (k, n)."""
    line = next(m.value for m in at.markdown if "examples match" in m.value)
    k, _, n = line.split("**")[1].split()[:3]
    return int(k), int(n)


def table(at: AppTest, *columns: str) -> pd.DataFrame:
    """The first table on the page that has all ``columns`` (AppTest does not keep dataframe keys)."""
    return next(d.value for d in at.dataframe if set(columns) <= set(d.value.columns))


def captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def caption_index(caption: str) -> int:
    return int(caption.split("#")[1].split()[0])


# -- overview -------------------------------------------------------------------------------------------
def test_overview_shows_headline_metrics_per_class_and_confusion(stores, monkeypatch):
    at = start(monkeypatch, stores["a"])
    frame, m = stores["frame_a"], stores["metrics_a"]
    assert at.title[0].value == "Overview · shapes_synthetic"
    metric = {x.label: x.value for x in at.metric}
    assert metric["Accuracy"] == f"{frame['correct'].mean():.1%}"
    assert metric["Explained"] == "40"
    assert metric["ECE"] == f"{m['calibration']['ece']:.3f}"
    per_class = table(at, "class", "average precision")
    assert per_class["class"].tolist() == list(app_stores.CLASSES)
    assert per_class["support"].tolist() == np.bincount(frame["label"]).tolist()
    charts = [c.proto.spec for c in at.get("vega_lite_chart")]
    # The confusion matrix is clickable: its chart carries the point selection.
    assert any('"pick"' in spec and '"true"' in spec for spec in charts)
    assert len(at.get("vega_lite_chart")) == 2  # confusion matrix and flagged-slice gaps


def test_confusion_cell_opens_its_examples_in_the_gallery(stores, monkeypatch):
    at = start(monkeypatch, stores["a"])
    frame = stores["frame_a"]
    at.selectbox(key="ov_true").set_value(2)
    at.selectbox(key="ov_pred").set_value(0).run()
    cell = int(((frame["label"] == 2) & (frame["pred"] == 0)).sum())
    assert cell > 20  # the planted bias: triangles with the cue called circles
    button = at.button(key="ov_open_cell")
    assert button.label == f"Show {cell} examples"
    button.click().run()
    assert at.title[0].value == "Gallery"
    assert matching(at) == (cell, len(frame))
    assert at.session_state["g_true"] == [2] and at.session_state["g_pred"] == [0]
    for caption in captions(at):
        assert "triangle → circle" in caption and caption.startswith("✗")


def test_flagged_slices_are_ranked_by_gap_and_open_in_the_gallery(stores, monkeypatch):
    at = start(monkeypatch, stores["a"])
    flagged = table(at, "column", "gap_ci_lo")
    assert flagged["gap"].is_monotonic_increasing
    assert (flagged["gap_ci_lo"] <= flagged["gap"]).all() and (flagged["gap"] <= flagged["gap_ci_hi"]).all()
    worst = flagged.iloc[0]
    assert (worst["column"], worst["value"]) == ("cue", "present")  # the planted bias
    assert at.selectbox(key="ov_slice").value == 0
    at.button(key="ov_open_slice").click().run()
    assert at.title[0].value == "Gallery"
    assert matching(at)[0] == int((stores["frame_a"]["cue"] == "present").sum())
    assert at.session_state["g_annotation"] == "cue" and at.session_state["g_values"] == ["present"]


# -- gallery --------------------------------------------------------------------------------------------
def test_gallery_filters_change_what_is_shown(stores, monkeypatch):
    frame = stores["frame_a"]
    at = goto(start(monkeypatch, stores["a"]), "gallery")
    assert matching(at) == (600, 600)
    assert len(at.image) == 24
    assert at.radio(key="g_method").options == ["Grad-CAM", "Grad-CAM++", "Occlusion", "none"]

    at.radio(key="g_outcome").set_value("incorrect").run()
    assert matching(at)[0] == int((~frame["correct"]).sum())
    assert all(c.startswith("✗") for c in captions(at))

    at.multiselect(key="g_true").set_value([1]).run()
    assert matching(at)[0] == int(((~frame["correct"]) & (frame["label"] == 1)).sum())

    at.radio(key="g_outcome").set_value("all").run()
    at.multiselect(key="g_true").set_value([]).run()
    at.selectbox(key="g_annotation").set_value("background").run()
    assert at.multiselect(key="g_values").options == ["dark", "light"]
    at.multiselect(key="g_values").set_value(["dark"]).run()
    assert matching(at)[0] == int((frame["background"] == "dark").sum())

    at.slider(key="g_confidence").set_value((0.9, 1.0)).run()
    expected = (frame["background"] == "dark") & (frame["confidence"] >= 0.9 - 1e-6)
    assert matching(at)[0] == int(expected.sum())

    at.checkbox(key="g_explained_only").check().run()
    explained = set(np.load(stores["a"] / schema.HEATMAP_INDEX).tolist())
    assert matching(at)[0] == int((expected & frame["index"].isin(explained)).sum())
    assert not any("no map" in c for c in captions(at))


def test_gallery_filters_live_in_the_address(stores, monkeypatch):
    """A shared address opens the selection it names; choosing filters writes them back; a value
    that is not one of this run's is ignored with a notice (issue 14: filters in the URL)."""
    frame, names = stores["frame_a"], json.loads((stores["a"] / schema.METRICS).read_text())["class_names"]
    at = start(monkeypatch, stores["a"])
    at.query_params.update(true=names[1], outcome="incorrect", annotation="background", value="dark")
    at = goto(at, "gallery")
    expected = (frame["label"] == 1) & ~frame["correct"] & (frame["background"] == "dark")
    assert matching(at)[0] == int(expected.sum()) > 0
    assert at.multiselect(key="g_true").value == [1]

    at.radio(key="g_outcome").set_value("all").run()
    at.multiselect(key="g_pred").set_value([0, 2]).run()
    address = {k: v if isinstance(v, list) else [v] for k, v in at.query_params.items()}
    assert "outcome" not in address and address["pred"] == [names[0], names[2]]
    assert address["true"] == [names[1]] and address["value"] == ["dark"]

    bad = start(monkeypatch, stores["a"])
    bad.query_params.update(true="no such class", outcome="sideways")
    bad = goto(bad, "gallery")
    notices = " ".join(i.value for i in bad.info)
    assert "Ignored the link's true=no such class" in notices and "outcome=sideways" in notices
    assert matching(bad) == (600, 600)


def test_gallery_filters_on_numeric_annotation_bins(stores, monkeypatch):
    """A quantile slice of a numeric annotation keeps exactly the rows the metrics counted in it."""
    at = goto(start(monkeypatch, stores["a"]), "gallery")
    rows = [r for r in stores["metrics_a"]["slices"]["rows"] if r["column"] == "brightness"]
    at.selectbox(key="g_annotation").set_value("brightness").run()
    for row in (rows[0], rows[-1]):
        at.multiselect(key="g_values").set_value([row["value"]]).run()
        assert matching(at)[0] == row["n"]


def test_gallery_sorts_and_paginates(stores, monkeypatch):
    frame = stores["frame_a"]
    at = goto(start(monkeypatch, stores["a"]), "gallery")
    first = [caption_index(c) for c in captions(at)]
    wrong = frame[~frame["correct"]].sort_values("confidence", ascending=False)
    assert first[:5] == wrong["index"].head(5).tolist()

    at.selectbox(key="g_sort").set_value("least confident first").run()
    assert caption_index(captions(at)[0]) == int(frame.loc[frame["confidence"].idxmin(), "index"])

    at.selectbox(key="g_sort").set_value("by index").run()
    at.selectbox(key="g_page_size").set_value(12).run()
    assert [caption_index(c) for c in captions(at)] == list(range(12))
    at.number_input(key="g_page").set_value(3).run()
    assert [caption_index(c) for c in captions(at)] == list(range(24, 36))
    assert "page 3 of 50" in next(m.value for m in at.markdown if "examples match" in m.value)


def test_gallery_filters_survive_a_visit_to_another_page(stores, monkeypatch):
    at = goto(start(monkeypatch, stores["a"]), "gallery")
    at.radio(key="g_outcome").set_value("incorrect").run()
    at.selectbox(key="g_annotation").set_value("cue").run()
    at.multiselect(key="g_values").set_value(["present"]).run()
    before = matching(at)
    goto(at, "calibration")
    goto(at, "gallery")
    assert matching(at) == before
    assert at.multiselect(key="g_values").value == ["present"] and at.radio(key="g_outcome").value == "incorrect"


def test_gallery_overlay_follows_method_and_opacity(stores, monkeypatch):
    from audit.views.app import store_cache

    run = store_cache.open_run(stores["a"])
    i = int(np.load(stores["a"] / schema.HEATMAP_INDEX)[0])
    plain = store_cache.picture(run, i)
    grad = store_cache.picture(run, i, "gradcam", 0.5)
    occl = store_cache.picture(run, i, "occlusion", 0.5)
    faint = store_cache.picture(run, i, "gradcam", 0.1)
    assert plain.shape == grad.shape == (128, 128, 3)  # 64 px stored, shown at least 128
    assert np.abs(grad.astype(int) - plain).mean() > np.abs(faint.astype(int) - plain).mean() > 0
    assert not np.array_equal(grad, occl)
    at = goto(start(monkeypatch, stores["a"]), "gallery")
    at.radio(key="g_method").set_value("none").run()
    assert at.slider(key="g_alpha").disabled
    assert not any("no map" in c for c in captions(at))


# -- example detail ----------------------------------------------------------------------------------------
def test_gallery_opens_example_with_heatmaps_probabilities_annotations(stores, monkeypatch):
    frame = stores["frame_a"]
    at = goto(start(monkeypatch, stores["a"]), "gallery")
    at.checkbox(key="g_explained_only").check().run()
    index = caption_index(captions(at)[0])
    at.button(key=f"g_open_{index}").click().run()
    assert at.title[0].value == "Example detail"
    row = frame.set_index("index").loc[index]
    names = app_stores.CLASSES
    assert at.subheader[0].value.startswith(f"#{index} · true {names[row['label']]} · predicted {names[row['pred']]}")
    assert [c for img in at.image[:4] for c in img.captions] == ["image", "Grad-CAM", "Grad-CAM++", "Occlusion"]
    annotations = table(at, "annotation", "value").set_index("annotation")["value"]
    assert annotations["background"] == row["background"] and annotations["cue"] == row["cue"]
    assert at.query_params["example"] == str(index)
    probs = next(c.proto.spec for c in at.get("vega_lite_chart") if "probability" in c.proto.spec)
    assert '"role"' in probs


def test_example_activations_grid_and_statistics(stores, monkeypatch):
    explained = np.load(stores["a"] / schema.HEATMAP_INDEX)
    at = start(monkeypatch, stores["a"])
    at.session_state["ex_index"] = int(explained[3])
    goto(at, "example")
    assert at.selectbox(key="ex_layer").options == list(app_stores.LAYERS)
    at.selectbox(key="ex_layer").set_value("backbone/conv1").run()
    stats = table(at, "channel", "frac_zero")
    acts = np.load(stores["a"] / schema.activation_file("backbone/conv1"))[3].astype(np.float32)
    assert len(stats) == acts.shape[-1]
    np.testing.assert_allclose(stats["mean"], acts.reshape(-1, acts.shape[-1]).mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["frac_zero"], (acts == 0).reshape(-1, acts.shape[-1]).mean(0))
    dataset = json.loads((stores["a"] / schema.ACTIVATION_STATS).read_text())["backbone/conv1"]
    np.testing.assert_allclose(stats["dataset_mean"], dataset["mean"])
    assert "8 of 8 channels" in at.image[-1].captions[0]


def test_example_link_and_unexplained_example(stores, monkeypatch):
    explained = set(np.load(stores["a"] / schema.HEATMAP_INDEX).tolist())
    plain = next(i for i in range(600) if i not in explained)
    at = start(monkeypatch, stores["a"])
    at.query_params["example"] = str(plain)
    goto(at, "example")
    assert at.subheader[0].value.startswith(f"#{plain} ")
    assert any("explained 40 of 600" in i.value for i in at.info)
    assert len(at.image) == 1
    at.button(key="ex_next_explained").click().run()
    assert at.session_state["ex_index"] in explained
    assert len(at.image) >= 4


# -- slices -----------------------------------------------------------------------------------------------
def test_slices_page_single_and_pair(stores, monkeypatch):
    frame = stores["frame_a"]
    at = goto(start(monkeypatch, stores["a"]), "slices")
    at.selectbox(key="sl_annotation").set_value("background").run()
    shown = table(at, "value", "flagged")
    assert shown["value"].tolist() == ["dark", "light"]
    assert shown["n"].tolist() == [int((frame["background"] == v).sum()) for v in ("dark", "light")]
    metric = {m.label: m.value for m in at.metric}
    assert "Accuracy gap (best − worst)" in metric

    at.selectbox(key="sl_pair").set_value("brightness").run()
    shown = table(at, "value", "flagged")
    assert shown["value"].str.contains(" & ").all()
    assert (shown["too_small"] == (shown["n"] < 30)).all()
    assert shown["n"].sum() == len(frame)
    spec = next(c.proto.spec for c in at.get("vega_lite_chart"))
    assert '"too small"' in spec and '"pick"' in spec

    at.selectbox(key="sl_pair").set_value(None).run()
    at.selectbox(key="sl_annotation").set_value("cue").run()
    at.selectbox(key="sl_value").set_value("present").run()
    at.button(key="sl_open").click().run()
    assert at.title[0].value == "Gallery"
    assert matching(at)[0] == int((frame["cue"] == "present").sum())


# -- curves & thresholds -----------------------------------------------------------------------------------
def test_curves_threshold_slider_matches_recomputed_rates(stores, monkeypatch):
    from sklearn.metrics import precision_score, recall_score

    frame, m = stores["frame_a"], stores["metrics_a"]
    at = goto(start(monkeypatch, stores["a"]), "curves")
    metric = {x.label: x.value for x in at.metric}
    stored = m["thresholds"]["classes"][0]["default"]
    assert metric["Precision"] == f"{stored['precision']:.3f}" and metric["Recall"] == f"{stored['recall']:.3f}"

    at.selectbox(key="cv_class").set_value(2)
    at.slider(key="cv_threshold").set_value(0.8).run()
    truth, said = frame["label"] == 2, frame["prob_2"] >= 0.8
    metric = {x.label: x.value for x in at.metric}
    assert metric["Precision"] == f"{precision_score(truth, said):.3f}"
    assert metric["Recall"] == f"{recall_score(truth, said):.3f}"
    matrix = table(at, "said other")
    assert matrix.iloc[0, 0] == int((truth & said).sum()) and matrix.iloc[1, 0] == int((~truth & said).sum())

    per_slice = table(at, "positives", "tp").set_index("value")
    for value in per_slice.index:
        inside = frame["cue"] == value
        assert per_slice.loc[value, "tp"] == int((truth & said & inside).sum())

    eo = table(at, "recall at default")
    stored_eo = m["thresholds"]["classes"][2]["equal_opportunity"]["slices"]
    assert len(eo) == len(stored_eo)
    expected = [np.nan if s["threshold"] is None else s["threshold"] for s in stored_eo]
    np.testing.assert_allclose(eo["threshold"].astype(float), expected)

    best = m["thresholds"]["classes"][2]["best_f1"]["threshold"]
    at.button(key="cv_best").click().run()
    assert at.slider(key="cv_threshold").value == pytest.approx(round(best, 2))


# -- calibration ---------------------------------------------------------------------------------------------
def test_calibration_page(stores, monkeypatch):
    cal = stores["metrics_a"]["calibration"]
    at = goto(start(monkeypatch, stores["a"]), "calibration")
    assert {m.label: m.value for m in at.metric}["Expected calibration error"] == f"{cal['ece']:.3f}"
    bins = table(at, "count", "gap")
    assert bins["count"].sum() == 600
    assert len(bins) == sum(1 for c in cal["count"] if c)
    assert len(at.get("vega_lite_chart")) == 2


# -- compare --------------------------------------------------------------------------------------------
def keep_comparison(a: Path, b: Path) -> dict:
    """The paired bootstrap, computed here, kept in run A as ``keras-audit app A B`` keeps it."""
    from audit.cli import STORED_DISAGREEMENTS
    from audit.metrics.paired import compare_runs
    from audit.store.writer import write_owned_file
    from audit.views.terminal import comparison_bytes, comparison_file

    result = compare_runs(a, b, bootstrap=1000, max_disagreements=STORED_DISAGREEMENTS)
    write_owned_file(a, comparison_file(b), comparison_bytes(a, b, result=result))
    return result


def test_compare_page_differences_and_disagreements(stores, monkeypatch):
    fa, fb = stores["frame_a"], stores["frame_b"]
    result = keep_comparison(stores["a"], stores["b"])
    at = start(monkeypatch, stores["a"], stores["b"])
    assert any("B: shapes_synthetic_v2" in m.value for m in at.sidebar.markdown)
    goto(at, "compare")
    differ = fa["pred"].to_numpy() != fb["pred"].to_numpy()
    assert {m.label: m.value for m in at.metric}["Predictions differ"] == str(int(differ.sum()))
    slices = table(at, "accuracy_a", "column")
    row = slices[(slices["column"] == "cue") & (slices["value"] == "present")].iloc[0]
    present = (fa["cue"] == "present").to_numpy()
    assert row["difference"] == pytest.approx(fb["correct"][present].mean() - fa["correct"][present].mean())
    assert row["winner"] == "B better"  # B's cue bias is mostly fixed
    kept = next(s for s in result["slices"] if (s["column"], s["value"]) == ("cue", "present"))
    lo, hi = kept["difference_ci"]
    assert row["interval"] == f"[{lo:+.1%}, {hi:+.1%}]"  # the test's own bootstrap, as the page shows it
    line = next(m.value for m in at.markdown if "disagreements" in m.value)
    assert line.startswith(f"**{int(differ.sum())} of {int(differ.sum())} disagreements")

    at.radio(key="cmp_right").set_value("B only").run()
    only_b = differ & fb["correct"].to_numpy() & ~fa["correct"].to_numpy()
    assert next(m.value for m in at.markdown if "disagreements" in m.value).startswith(f"**{int(only_b.sum())} of")
    first = at.image[0].captions[0], at.image[1].captions[0]
    assert first[0].startswith("A: ") and first[1].startswith("B: ")


def test_compare_page_only_with_two_runs_and_refuses_other_classes(stores, monkeypatch, tmp_path):
    import shutil

    from audit.cli import prepare_comparison

    at = start(monkeypatch, stores["a"])
    with pytest.raises(ValueError):
        at.switch_page("screens/compare.py")
    run_a = shutil.copytree(stores["a"], tmp_path / "run_a")
    other = shutil.copytree(stores["b"], tmp_path / "other_classes")
    manifest = json.loads((other / schema.MANIFEST).read_text())
    manifest["class_names"] = ["ring", "box", "wedge"]
    (other / schema.MANIFEST).write_text(json.dumps(manifest))
    at = goto(start(monkeypatch, run_a, other), "compare")  # nothing kept yet: the page says what to run
    assert "keeps no comparison" in at.info[0].value
    assert at.code[0].value == f"keras-audit compare {run_a.resolve()} {other.resolve()} --save"
    prepare_comparison(run_a, other)  # what `keras-audit app A B` does before the server starts
    at = goto(start(monkeypatch, run_a, other), "compare")
    assert "cannot be compared" in at.error[0].value and "different classes" in at.error[0].value


# -- opening runs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, says", [
    ("missing", "does not exist"),
    ("not_a_store", "not a keras-audit results store"),
    ("incomplete", "run is incomplete"),
    ("newer", "newer than this keras-audit understands"),
    ("corrupt", "predictions.parquet cannot be read"),
])
def test_bad_store_gets_a_message_not_a_traceback(stores, monkeypatch, kind, says):
    at = start(monkeypatch, stores["broken"][kind])
    assert not at.exception
    assert len(at.error) == 1 and says in at.error[0].value and "Cannot open the run" in at.error[0].value
    assert not at.title  # no page was drawn from a store that failed


def test_bad_second_run_leaves_the_first_browsable(stores, monkeypatch):
    at = start(monkeypatch, stores["a"], stores["broken"]["newer"])
    assert "Cannot open the second run" in at.error[0].value
    assert at.title[0].value.startswith("Overview")
    with pytest.raises(ValueError):
        at.switch_page("screens/compare.py")


def test_without_arguments_lists_runs_under_the_working_directory(stores, monkeypatch):
    monkeypatch.chdir(stores["root"])
    monkeypatch.setattr(sys, "argv", ["pytest", "-k", "app"])  # not the app's argv: no run given
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT).run()
    assert not at.exception
    listed = at.dataframe[0].value
    assert set(listed["run"]) >= {"run_a", "run_b", "broken/incomplete (incomplete)"}
    pick = at.sidebar.selectbox(key="pick_run")
    pick.set_value(str(stores["a"].resolve())).run()
    assert at.title[0].value == "Overview · shapes_synthetic"
    at.sidebar.selectbox(key="pick_run_b").set_value(str(stores["b"].resolve())).run()
    goto(at, "compare")
    assert at.title[0].value == "Compare A and B"


def test_without_arguments_and_no_runs_says_how_to_make_one(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT).run()
    assert "No results stores found" in at.info[0].value and "keras-audit demo" in at.info[0].value


def test_cache_is_keyed_by_store_mtime(stores, monkeypatch, tmp_path):
    import shutil

    run = tmp_path / "rewritten"
    shutil.copytree(stores["a"], run)
    at = start(monkeypatch, run)
    before = {m.label: m.value for m in at.metric}["Log loss"]
    metrics = json.loads((run / schema.METRICS).read_text())
    metrics["log_loss"] = 9.875
    (run / schema.METRICS).write_text(json.dumps(metrics))
    at.run()
    assert {m.label: m.value for m in at.metric}["Log loss"] == before  # same manifest: cached
    stamp = (run / schema.MANIFEST).stat().st_mtime + 5
    os.utime(run / schema.MANIFEST, (stamp, stamp))  # a new run finishing rewrites the manifest last
    at.run()
    assert {m.label: m.value for m in at.metric}["Log loss"] == "9.875"


def test_rendering_every_page_never_imports_tensorflow(stores):
    """In a fresh interpreter (other tests in this session may have loaded TensorFlow)."""
    script = textwrap.dedent(f"""
        import json, sys
        from streamlit.testing.v1 import AppTest
        sys.argv = [{str(ENTRY)!r}, {str(stores["a"])!r}, {str(stores["b"])!r}]
        at = AppTest.from_file({str(ENTRY)!r}, default_timeout={TIMEOUT}).run()
        failed = [e.value for e in at.exception]
        for page in ("gallery", "example", "slices", "curves", "calibration", "compare"):
            at.switch_page(f"screens/{{page}}.py").run()
            failed += [e.value for e in at.exception]
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print(json.dumps({{"failed": failed, "heavy": heavy, "titles": [t.value for t in at.title]}}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["failed"] == []
    assert result["titles"] == ["Compare A and B"]
    assert result["heavy"] == []


# -- pieces without Streamlit -----------------------------------------------------------------------------------
def test_example_filter_select_and_order():
    from audit.views.app import example_filter as ef

    frame = pd.DataFrame({"index": [0, 1, 2, 3, 4], "label": [0, 1, 1, 2, 2], "pred": [0, 0, 1, 1, 2],
                          "confidence": [0.9, 0.8, 0.6, 0.99, 0.7], "correct": [True, False, True, False, True]})
    assert ef.select(frame, ef.Filters()).tolist() == [3, 1, 2, 4, 0]
    assert ef.select(frame, ef.Filters(), sort=ef.BY_INDEX).tolist() == [0, 1, 2, 3, 4]
    assert ef.select(frame, ef.Filters(pred=(1,), outcome="correct")).tolist() == [2]
    assert ef.select(frame, ef.Filters(confidence=(0.75, 0.95)), sort=ef.BY_INDEX).tolist() == [0, 1]
    labels = np.array(["a", "b", "a", "b", "a"], dtype=object)
    assert ef.select(frame, ef.Filters(values=("b",)), labels, sort=ef.BY_INDEX).tolist() == [1, 3]
    assert ef.select(frame, ef.Filters(explained_only=True, explained=frozenset({4})), sort=ef.BY_INDEX).tolist() == [4]
    with pytest.raises(ValueError, match="outcome"):
        ef.select(frame, ef.Filters(outcome="maybe"))


def test_launcher_command_binds_loopback_and_passes_runs(tmp_path):
    from audit.errors import AuditError
    from audit.views.app.launch import app_entry, command

    cmd = command([tmp_path / "a", Path("b")], port=8642)
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(app_entry())]
    assert app_entry() == ENTRY.resolve()
    flags = dict(zip(cmd[5:13:2], cmd[6:13:2]))
    assert flags == {"--server.address": "127.0.0.1", "--server.port": "8642", "--server.headless": "true",
                     "--browser.gatherUsageStats": "false"}
    assert cmd[13:] == ["--", str((tmp_path / "a").resolve()), str(Path("b").resolve())]
    assert command([], host="0.0.0.0")[6] == "0.0.0.0"
    with pytest.raises(AuditError, match="at most two runs"):
        command([Path("a"), Path("b"), Path("c")])
    from audit.cli import build_parser

    args = build_parser().parse_args(["app", "x", "y", "--port", "9000"])
    assert (args.stores, args.host, args.port) == (["x", "y"], "127.0.0.1", 9000)
