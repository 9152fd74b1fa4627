"""TensorBoard's margin charts, tag names, run name, HParams and discovered groups, on the bundled
planted-bias sample (a shape classifier that looks at a red corner tag: ``cue_agrees = no`` is
its worst slice, and discovery finds groups there).

Read back three ways: the event files (``tensorboard.backend.event_processing``), a real
``tensorboard`` process's HTTP API, and the Custom Scalars page in Chromium, where the chart
order a user sees is read off the page and the screenshot goes to
``build/screenshots/tensorboard_margin.png``. Tags are checked with the browser's own RegExp,
as TensorBoard's tag filter builds it (``new RegExp(filter, "i")``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from audit.store.reader import Reader
from audit.views import tensorboard as tb
from audit.views.format import md_text
from browser import chromium, new_page, shoot
from conftest import SAMPLES, free_port, stop
from test_tensorboard import _Server, read_events, run_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The sample audited without maps (discovery still runs on embeddings and annotations)."""
    from audit.engine import AuditOptions
    from audit.pipeline import run_audit

    out = tmp_path_factory.mktemp("tb_margin") / "store"
    run_audit(SAMPLES / "shapes_bias.keras", SAMPLES / "shapes_eval", out,
              annotations=SAMPLES / "shapes_annotations.csv",
              options=AuditOptions(explain=(), bootstrap=50), progress=False)
    return out


@pytest.fixture(scope="module")
def events(shapes):
    return read_events(shapes / "tensorboard")


@pytest.fixture(scope="module")
def layout(shapes):
    """The custom-scalars layout as written: [(category, closed, [(chart, [series])])]."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    acc = pea.EventAccumulator(str(run_folder(shapes / "tensorboard")), size_guidance={pea.TENSORS: 0})
    acc.Reload()
    (event,) = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)
    proto = layout_pb2.Layout.FromString(tf.make_ndarray(event.tensor_proto).item())
    return [(c.title, c.closed, [(ch.title, list(ch.margin.series)) for ch in c.chart]) for c in proto.category]


def _category(layout, prefix: str):
    (found,) = [c for c in layout if c[0].startswith(prefix)]
    return found


def _drawn(charts):
    """Charts in the order the dashboard shows them (it draws a category's list last first)."""
    return charts[::-1] if tb.LAYOUT_DRAWN_REVERSED else charts


def test_run_is_named_after_the_model(shapes):
    run = Reader(shapes)
    assert tb.run_name(run) == "shapes_bias"  # sample_models/shapes_bias.keras
    assert run_folder(shapes / "tensorboard") == shapes / "tensorboard" / "shapes_bias"
    assert not list((shapes / "tensorboard").glob("events.out.tfevents.*"))  # nothing left to show as "."


def test_one_margin_chart_per_annotation_holding_the_stored_numbers(shapes, events, layout):
    m = Reader(shapes).metrics
    rows = [r for r in m["slices"]["rows"] if len(r["columns"]) == 1]
    tag_of = dict(zip(((r["column"], r["value"]) for r in m["slices"]["rows"]), tb.slice_tags(m["slices"]["rows"])))
    title, closed, charts = _category(layout, "Accuracy by annotation")
    assert not closed
    shown = _drawn(charts)
    annotations = [t.split(" | ")[0] for t, _ in shown]
    assert sorted(annotations) == sorted({r["column"] for r in rows})  # one chart per annotation
    assert annotations[0] == "cue_agrees"  # the worst annotation first: the planted bias
    scalars = events["scalars"]
    for chart_title, series in shown:
        column = chart_title.split(" | ")[0]
        mine = [r for r in rows if r["column"] == column]
        assert [s.value for s in series] == [tag_of[(column, r["value"])] for r in mine]
        assert chart_title == f"{column} | left to right: {', '.join(r['value'] for r in mine)}"
        for k, (s, row) in enumerate(zip(series, mine)):
            assert (s.lower, s.upper) == (f"{s.value}/ci_low", f"{s.value}/ci_high")
            for tag, expected in ((s.value, row["accuracy"]), (s.lower, row["accuracy_ci"][0]),
                                  (s.upper, row["accuracy_ci"][1])):
                # The k-th value on steps 2k and 2k + 1, so TensorBoard draws its band.
                assert [step for step, _, _ in scalars[tag]] == [2 * k, 2 * k + 1]
                assert [float(v) for _, v, _ in scalars[tag]] == pytest.approx([expected] * 2, abs=1e-6)
    assert scalars[tag_of[("cue_agrees", "no")]][0][1] == pytest.approx(223 / 325, abs=1e-6)


def test_disparity_pairs_headline_and_discovered_charts(shapes, events, layout):
    run = Reader(shapes)
    m = run.metrics
    titles = [c[0] for c in layout]
    assert titles[0].startswith("Accuracy by annotation")  # before disparity, in the layout and on screen
    _, _, disparity = _category(layout, "Disparity")
    by_measure = {t.split(" | ")[0]: s for t, s in disparity}
    gap = by_measure["accuracy gap (best value - worst value)"]
    columns = {c["column"]: c for c in m["slices"]["columns"] if c.get("kind") != "intersection"}
    for s in gap:
        column = next(c for c in columns if s.value == f"slices_disparity/{tb.tag_part(c)}/accuracy_gap")
        d = columns[column]["disparity"]
        assert float(events["scalars"][s.value][0][1]) == pytest.approx(d["accuracy_gap"], abs=1e-6)
        assert float(events["scalars"][s.upper][0][1]) == pytest.approx(d["accuracy_gap_ci"][1], abs=1e-6)
    _, closed, pairs = _category(layout, "Pairs")
    below = {r["column"] for r in m["slices"]["rows"] if r.get("below_parents")}
    assert closed and {t.split(" | ")[0] for t, _ in pairs} == below
    _, _, (headline,) = _category(layout, "Headline")
    assert [s.value for s in headline[1]] == ["metrics/accuracy", "metrics/balanced_accuracy"]

    groups = run.discovered()[: tb.DISCOVERED_GROUPS]
    assert groups, "discovery found nothing on the planted-bias sample"
    _, _, found = _category(layout, "Discovered")
    charted = [s.value for _, chart in found for s in chart]
    assert charted and len(charted) == len(set(charted)) and all(t.startswith("slices_discovered/") for t in charted)
    for g in groups:
        tag = f"slices_discovered/{g['method']}_{g['group']}"
        assert float(events["scalars"][tag][0][1]) == pytest.approx(g["accuracy"], abs=1e-6)
        assert float(events["scalars"][f"{tag}/ci_low"][0][1]) == pytest.approx(g["accuracy_ci"][0], abs=1e-6)
        # Curves over exactly the group's members, one class at a time.
        members = np.isin(run.predictions["index"].to_numpy(), run.discovered_members(g))
        labels, probs = run.predictions["label"].to_numpy(), run.probabilities()
        for k, name in enumerate(run.class_names):
            curves = events["pr_curves"].get(f"pr/{name}/discovered/{g['method']}_{g['group']}/pr_curves")
            assert (curves is not None) == bool((labels[members] == k).any())
            if curves:
                assert curves[0][1][0, 0] == np.sum(labels[members] == k)  # every positive scores >= 0
                half = (tb.PR_THRESHOLDS - 1) // 2
                assert curves[0][1][0, half] == np.sum(members & (labels == k) & (probs[:, k] >= 0.5))
    # No maps in this run, so no mean heatmaps: the pictures are tested in test_tensorboard.py.
    assert not [g for g in groups if run.discovered_heatmap(g) is not None] and "images" not in events
    assert float(events["scalars"]["metrics/discovered_groups"][0][1]) == sum(
        bool(g["significant"]) for g in m["discovered"])


def test_per_slice_pr_curves_for_every_value_of_each_flagged_annotation(shapes, events):
    run = Reader(shapes)
    rows = run.metrics["slices"]["rows"]
    flagged = {w["column"] for w in run.worst_slices(k=1000)}
    assert "cue_agrees" in flagged
    tag_of = dict(zip(((r["column"], r["value"]) for r in rows), tb.slice_tags(rows)))
    labels = run.predictions["label"].to_numpy()
    for r in rows:
        if len(r["columns"]) > 1:
            continue
        tags = {f"pr/{name}/{tag_of[(r['column'], r['value'])][len('slices/'):]}/pr_curves" for name in run.class_names}
        assert bool(tags & set(events["pr_curves"])) == (r["column"] in flagged), r["column"]
    # cue_agrees = yes is the good side, never among the worst slices, yet has its curves, from its own rows.
    inside = np.isin(run.predictions["index"].to_numpy(), run.slice_rows("cue_agrees", "yes"))
    (_, curve, description), = events["pr_curves"]["pr/triangle/cue_agrees/yes/pr_curves"]
    assert curve[0, 0] == np.sum(labels[inside] == 2)
    assert f"Only the {inside.sum()} examples with {md_text('cue_agrees')} = yes:" in description


def test_tags_pass_the_regex_filter_and_say_what_they_name(shapes, events):
    every = sorted({t for tags in events.values() for t in tags})
    bins = [r["value"] for r in Reader(shapes).metrics["slices"]["rows"] if "[" in r["value"]]
    assert bins  # quantile bins such as "[0.2573, 0.3422)" are sliced, so the sanitising is exercised
    with chromium() as browser:
        page = new_page(browser)
        broken = page.evaluate(_FILTER_BREAKS, every)
        control = page.evaluate(_FILTER_BREAKS, [f"slices/brightness/{bins[0]}", "pr/c++", "slices/(x)"])
    assert broken == []
    assert len(control) == 3  # the check catches the raw names
    (_, text, _), = events["text"]["tag_names"]
    mapping = text.item().decode()
    assert "| `slices/brightness/" in mapping and "brightness = \\[" in mapping  # the readable name, escaped


# TensorBoard's tag filter: new RegExp(filter, "i").test(tag). A tag breaks it when, pasted as the
# filter, it is no valid RegExp or its match is not the tag itself.
_FILTER_BREAKS = """tags => tags.filter(t => {
    try { const m = t.match(new RegExp(t, 'i')); return !(m && m[0] === t); } catch (e) { return true; }
})"""


def test_real_tensorboard_margin_page_and_hparams(shapes, tmp_path):
    logdir = shapes / "tensorboard"
    port = free_port()
    log = (tmp_path / "tensorboard.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast=false"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        server = _Server(port)
        server.wait_for("HTTP", lambda: proc.poll() is None and server.json("/data/plugins_listing"), 150)
        runs = server.wait_for("the run", lambda: server.json("/data/runs"), 60)
        assert runs == ["shapes_bias"]
        served = server.wait_for("layout", lambda: server.json("/data/plugin/custom_scalars/layout"), 60)
        first = served["category"][0]
        assert first["title"].startswith("Accuracy by annotation")
        series = first["chart"][-1 if tb.LAYOUT_DRAWN_REVERSED else 0]["margin"]["series"]
        assert series[0]["value"] == "slices/cue_agrees/no"
        experiment = server.post_json("/data/plugin/hparams/experiment", {"experimentName": ""})
        tags = [m["name"]["tag"] for m in experiment["metricInfos"]]
        assert "metrics/worst_slice_gap" in tags[: tb.HPARAMS_SHOWN]

        with chromium() as browser:
            page = new_page(browser)
            page.goto(f"{server.base}/#custom_scalars")
            page.wait_for_selector("tf-custom-scalar-margin-chart-card", timeout=90_000)
            page.wait_for_timeout(3000)  # the charts fetch their series after the layout
            cards = page.locator("tf-custom-scalar-margin-chart-card").evaluate_all(
                "els => els.map(e => { const r = e.getBoundingClientRect();"
                " return {title: e.title, top: Math.round(r.top), left: Math.round(r.left)}; })")
            path = shoot(page, "tensorboard_margin")
        on_screen = [c["title"].split(" | ")[0] for c in sorted(cards, key=lambda c: (c["top"], c["left"]))]
        assert on_screen[0] == "cue_agrees", on_screen  # the worst annotation is the first chart a user sees
        assert path.is_file()
    finally:
        stop(proc, timeout=20)
        log.close()
