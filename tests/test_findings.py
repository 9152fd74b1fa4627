"""The strongest finding: a flagged slice and a significant discovered group compete on the mistakes
they surely add (size times the near end of the gap interval); the sentence, members, worst members,
heatmap and link are checked against the hand-built store they come from."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audit.store import schema
from audit.store.reader import Reader
from audit.views.findings import drop_sentence, strongest_finding, worst_members
from metrics_data import planted_predictions, write_store

NAMES = ["cat", "dog", "fox"]
GROUP_ROWS = np.arange(40, 120, 2)  # the planted discovered group: 40 rows


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A store whose flagged slice is background = dark, with a found_errors column (group 3)."""
    frame = planted_predictions(600, 3, seed=5)
    found = np.full(len(frame), None, dtype=object)
    found[GROUP_ROWS] = 3
    frame["found_errors"] = frame["index"].map(dict(enumerate(found))).astype("Int64")
    path = write_store(tmp_path_factory.mktemp("findings") / "run", frame, NAMES, bootstrap=0)
    return path, frame


def _dark_row(metrics):
    return next(r for r in metrics["slices"]["rows"] if r["column"] == "background" and r["value"] == "dark")


def _with(path, tmp_path, edit):
    """A copy of the store at ``path`` whose metrics.json went through ``edit``."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    metrics = json.loads((copy / schema.METRICS).read_text())
    edit(metrics)
    (copy / schema.METRICS).write_text(json.dumps(metrics))
    return Reader(copy)


def _group(upper, **extra):
    entry = {"method": "errors", "group": 3, "n": len(GROUP_ROWS), "errors": 30, "accuracy": 0.25,
             "accuracy_ci": [0.14, 0.4], "rest_accuracy": 0.86, "gap": -0.61, "gap_ci": [-0.75, upper],
             "p_value": 1e-9, "q_value": 2e-8, "description": "fox predictions on the left half",
             "predicate": None, "predicted_class": None, "attention": None,
             "heatmap": schema.discovered_heatmap_file("errors", 3), "significant": True}
    entry.update(extra)
    return entry


def test_sentence_rounds_points_half_up_and_flips_the_interval():
    assert drop_sentence(-0.3104, [-0.372, -0.261], "where cue_agrees = no", 325) == (
        "Accuracy drops 31 points (95% CI 26–37) where cue_agrees = no: 325 examples")
    # 0.125 -> 12.5 points rounds up to 13 (Python's round() would give 12)
    assert drop_sentence(-0.125, [-0.2, -0.04], "where a = b", 2) == (
        "Accuracy drops 13 points (95% CI 4–20) where a = b: 2 examples")
    small = drop_sentence(-0.052, [-0.081, -0.024], "where s = x", 1)
    assert small == "Accuracy drops 5.2 points (95% CI 2.4–8.1) where s = x: 1 example"


def test_flagged_slice_is_the_finding_without_discovery(base, tmp_path):
    path, frame = base

    def hand(metrics):
        row = _dark_row(metrics)
        row.update(gap=-0.3104, gap_ci=[-0.372, -0.261], n=325)

    finding = strongest_finding(_with(path, tmp_path, hand))
    assert finding is not None and finding.kind == "slice"
    assert finding.sentence == "Accuracy drops 31 points (95% CI 26–37) where background = dark: 325 examples"
    assert finding.label == "background = dark" and finding.q_value is None
    assert finding.filter == {"column": "background", "value": "dark"}
    dark = frame.loc[frame["background"] == "dark", "index"].to_numpy()
    np.testing.assert_array_equal(finding.members, np.sort(dark))


def test_worst_members_are_mistakes_then_most_confident(base):
    path, frame = base
    finding = strongest_finding(Reader(path))
    inside = frame[frame["background"] == "dark"]
    # oracle: a plain Python sort of the rows inside
    expected = sorted(zip(inside["correct"], -inside["confidence"], inside["index"]))[:8]
    assert finding.worst.tolist() == [int(i) for _, _, i in expected]
    assert not frame.set_index("index").loc[finding.worst, "correct"].any()  # 8 mistakes exist among ~150 dark


def test_slice_heatmap_is_the_mean_of_its_members_maps(base):
    path, frame = base
    reader = Reader(path)
    finding = strongest_finding(reader)
    explained = np.load(path / schema.HEATMAP_INDEX)
    maps = np.load(path / schema.heatmap_file("gradcam")).astype(np.float32)
    use = np.isin(explained, finding.members)
    assert use.any()
    np.testing.assert_allclose(finding.heatmap, maps[use].mean(axis=0), rtol=1e-5)


def test_group_that_surely_adds_more_mistakes_wins(base, tmp_path):
    path, frame = base
    reader = Reader(path)
    dark = _dark_row(reader.metrics)
    # The group's 40 examples must surely add more mistakes than the dark slice does.
    upper = min(dark["gap_ci"][1] * dark["n"] / len(GROUP_ROWS) - 0.01, -0.3)
    mean_map = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)

    def add(metrics):
        metrics["discovered"] = [_group(upper)]

    stronger = _with(path, tmp_path, add)
    (stronger.path / schema.DISCOVERED_DIR).mkdir()
    np.save(stronger.path / schema.discovered_heatmap_file("errors", 3), mean_map)
    finding = strongest_finding(stronger)
    assert finding.kind == "discovered" and finding.method == "errors"
    assert finding.sentence == (
        "Accuracy drops 61 points (95% CI " f"{round(-upper * 100)}–75) in a discovered group "
        "(fox predictions on the left half): 40 examples")
    assert finding.filter == {"column": "found_errors", "value": 3}
    assert finding.q_value == pytest.approx(2e-8)
    np.testing.assert_array_equal(finding.members, GROUP_ROWS)
    np.testing.assert_array_equal(finding.heatmap, mean_map)
    assert set(finding.worst) <= set(GROUP_ROWS) and len(finding.worst) == 8


def test_slice_wins_when_it_surely_adds_more_mistakes(base, tmp_path):
    path, _ = base
    upper = _dark_row(Reader(path).metrics)["gap_ci"][1]

    def add(metrics):
        # a bigger drop, but less sure: the slice stays first
        metrics["discovered"] = [_group(upper + 0.01, gap=-0.9, gap_ci=[-0.99, upper + 0.01])]

    assert strongest_finding(_with(path, tmp_path, add)).kind == "slice"


def test_narrow_worst_conjunction_loses_to_the_cause_of_most_mistakes(base, tmp_path):
    """The demo's figures: 325 examples of cue_agrees = no dropping 31 points [26, 37] against
    a searched 3-way conjunction of 46 examples dropping 64 [50, 74]: 84.5 against 23 mistakes."""
    path, _ = base

    def edit(metrics):
        _dark_row(metrics).update(gap=-0.3104, gap_ci=[-0.372, -0.261], n=325)
        metrics["discovered"] = [_group(-0.50, method="search", n=46, gap=-0.64, gap_ci=[-0.74, -0.50],
                                        predicate={"cue_agrees": "no", "background": "dark"})]

    finding = strongest_finding(_with(path, tmp_path, edit))
    assert finding.kind == "slice" and finding.label == "background = dark"


def test_only_significant_groups_and_flagged_slices_compete(base, tmp_path):
    path, _ = base

    def edit(metrics):
        for row in metrics["slices"]["rows"]:
            row["flagged"] = False
        metrics["discovered"] = [_group(-0.5, significant=False)]

    assert strongest_finding(_with(path, tmp_path, edit)) is None


def test_search_group_links_by_predicate(base, tmp_path):
    path, frame = base

    def add(metrics):
        metrics["discovered"] = [_group(-0.9, method="search", group=0, predicate={"site": "b", "background": "dark"},
                                        heatmap=None)]

    finding = strongest_finding(_with(path, tmp_path, add))
    assert finding.label == "site = b & background = dark"
    assert "where site = b & background = dark:" in finding.sentence
    assert finding.filter == {"predicate": {"site": "b", "background": "dark"}}
    inside = frame[(frame["site"] == "b") & (frame["background"] == "dark")]["index"].to_numpy()
    np.testing.assert_array_equal(finding.members, np.sort(inside))


def test_worst_members_of_an_empty_group():
    import pandas as pd

    frame = pd.DataFrame({"index": [0, 1], "correct": [True, False], "confidence": [0.9, 0.8]})
    assert worst_members(frame, np.zeros(0, np.int64)).tolist() == []
    assert worst_members(frame, np.array([0, 1])).tolist() == [1, 0]


def test_pairs_and_too_small_slices_do_not_compete(base, tmp_path):
    path, _ = base

    def edit(metrics):
        rows = metrics["slices"]["rows"]
        for row in rows:
            row["flagged"] = False
        pair = next(r for r in rows if len(r["columns"]) == 2)
        pair.update(flagged=True, below_parents=True, too_small=False, gap=-0.95, gap_ci=[-0.99, -0.9])
        _dark_row(metrics).update(flagged=True, too_small=True)

    assert strongest_finding(_with(path, tmp_path, edit)) is None
