"""Discovery data in the store, read back through the Reader: members, mean maps, attention.

The store is the synthetic planted-bias run of ``app_stores`` whose discovery is drawn from its
planted truth, so the oracle is that truth recomputed here from the predictions table.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import app_stores
from audit.store import schema
from audit.store.reader import Reader


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return app_stores.build_store(tmp_path_factory.mktemp("disc") / "run", n=300, explained=60, bootstrap=20)


def test_schema_names():
    assert [schema.discovery_column(m) for m in schema.DISCOVERY_METHODS] == ["found_errors", "found_strategy", None]
    assert schema.discovered_heatmap_file("strategy", 3) == "discovered/strategy_3.npy"
    cols = ["index", "label", "prob_0", "cue", "found_errors", "found_strategy", "brightness"]
    assert schema.annotation_columns(cols) == ["cue", "brightness"]


def test_members_follow_the_columns_and_predicates(store):
    run = Reader(store)
    frame = pd.read_parquet(store / schema.PREDICTIONS)
    assert "found_errors" not in run.annotation_columns
    planted = frame["index"][(frame["cue"] == "present") & (frame["label"] == 2)].to_numpy()
    (errors0,) = [g for g in run.discovered("errors") if g["group"] == 0]
    np.testing.assert_array_equal(run.discovered_members(errors0), np.sort(planted))
    (search,) = run.discovered("search")
    expected = frame["index"][(frame["cue_agrees"] == "no") & (frame["background"] == "dark")].to_numpy()
    np.testing.assert_array_equal(run.discovered_members(search), expected)
    # Every group's n is its member count, and methods filter.
    for g in run.discovered():
        assert len(run.discovered_members(g)) == g["n"]
    assert {g["method"] for g in run.discovered("strategy")} == {"strategy"}


def test_mean_heatmap_round_trip(store):
    run = Reader(store)
    (strategy0,) = [g for g in run.discovered("strategy") if g["group"] == 0]
    members = [i for i in run.discovered_members(strategy0) if run.has_heatmap(int(i))]
    expected = np.mean([run.heatmap("gradcam", int(i)) for i in members], axis=0)
    np.testing.assert_allclose(run.discovered_heatmap(strategy0), expected, atol=1e-6)
    assert run.discovered_heatmap({"heatmap": None}) is None
    assert run.discovered_heatmap({"heatmap": "../metrics.json"}) is None  # never outside discovered/
    assert {a["scope"] for a in run.attention()} >= {"class", "group"}


def test_store_without_discovery_reads_empty(store, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(store, old)
    metrics = json.loads((old / schema.METRICS).read_text())
    for key in ("discovered", "attention", "discovery"):
        metrics.pop(key)
    (old / schema.METRICS).write_text(json.dumps(metrics))
    run = Reader(old)
    assert run.discovered() == [] and run.attention() == []
    frame = pd.read_parquet(old / schema.PREDICTIONS).drop(columns=list(schema.DISCOVERY_COLUMNS))
    frame.to_parquet(old / schema.PREDICTIONS, index=False)
    with pytest.raises(Exception, match="no discovery column"):
        Reader(old).discovered_members({"method": "errors", "group": 0})
