"""audit.discover.discover: one call on a store-shaped table; the sections agree with each other."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from audit.discover import COLUMNS, discover, group_heatmap_file
from audit.errors import DataError
from test_discover_errors import planted_embeddings
from test_discover_strategy import blobs

CLASSES = ["circle", "square", "rare"]


@pytest.fixture(scope="module")
def store_data():
    emb, label, pred, planted = planted_embeddings(0, n=1200)
    n = len(label)
    rng = np.random.default_rng(0)
    label = label.copy()
    label[:5] = -1  # unlabelled rows are left out
    frame = pd.DataFrame({"index": np.arange(n) + 1000, "path": [f"{i}.png" for i in range(n)], "label": label,
                          "pred": pred, "confidence": 0.9, "correct": label == pred,
                          "cue": np.where(planted, "off", rng.choice(["on", "off"], n, p=[0.9, 0.1])),
                          "brightness": rng.random(n)})
    explained = np.flatnonzero(pred == 0)[:80]  # 'circle' predictions; the first 30 look at the corner
    maps = np.concatenate([blobs(rng, 30, (3, 3)), blobs(rng, 50, (16, 16))])
    slices = {"cue = off": (frame["cue"] == "off").to_numpy()}
    result = discover(frame, class_names=CLASSES, embeddings=emb, maps={"gradcam": maps},
                      map_index=frame["index"].to_numpy()[explained], annotation_columns=["cue", "brightness"],
                      slices=slices, min_slice_size=30, seed=0)
    return frame, result, explained, planted


def test_sections_and_columns(store_data):
    frame, result, explained, _ = store_data
    assert set(result) == {"discovered", "attention", "discovery", "columns", "heatmaps"}
    for name in COLUMNS.values():
        column = result["columns"][name]
        assert str(column.dtype) == "Int64" and len(column) == len(frame)
    assert result["columns"]["found_errors"][:5].isna().all()
    assert result["columns"]["found_strategy"].notna().sum() <= len(explained)
    json.dumps({k: result[k] for k in ("discovered", "attention", "discovery")})
    q = [e["q_value"] for e in result["discovered"]]
    assert q == sorted(q)
    assert set(result["discovery"]["methods"]) == {"errors", "strategy", "search"}


def test_group_sizes_match_the_columns_and_predicates(store_data):
    frame, result, _, _ = store_data
    for entry in result["discovered"]:
        if entry["method"] in COLUMNS:
            column = result["columns"][COLUMNS[entry["method"]]]
            assert int((column == entry["group"]).sum()) == entry["n"]
        else:
            assert entry["predicate"] and entry["predicted_class"] is None
    search = [e for e in result["discovered"] if e["method"] == "search"]
    cue = next(e for e in search if e["predicate"] == {"cue": "off"})
    labelled = frame[frame["label"] >= 0]
    assert cue["n"] == int((labelled["cue"] == "off").sum())
    assert cue["errors"] == int((labelled["cue"] == "off").mul(labelled["label"] != labelled["pred"]).sum())


def test_planted_error_slice_and_corner_strategy(store_data):
    frame, result, explained, planted = store_data
    errors = [e for e in result["discovered"] if e["method"] == "errors" and e["significant"]]
    best = min(errors, key=lambda e: e["gap_ci"][1])
    members = (result["columns"]["found_errors"] == best["group"]).to_numpy(dtype=bool, na_value=False)
    assert planted[members].mean() >= 0.9
    strategy = [e for e in result["discovered"] if e["method"] == "strategy"]
    corner = [e for e in strategy if e["attention"]["top_cell"] == "top-left"]
    corner_rows = explained[:30]
    assert len(strategy) == 2 and len(corner) == 1 and corner[0]["n"] == (frame["label"][corner_rows] >= 0).sum()
    assert corner[0]["predicted_class"] == "circle"
    sentences = [a["flag"] for a in result["attention"] if a["scope"] == "group" and a["flag"]]
    assert any("members of strategy group" in s and "top-left cell" in s for s in sentences)


def test_heatmaps_and_attention(store_data):
    _, result, _, _ = store_data
    for entry in result["discovered"]:
        if entry["heatmap"] is not None:
            assert entry["heatmap"] == group_heatmap_file(entry["method"], entry["group"])
            picture = result["heatmaps"][entry["heatmap"]]
            assert picture.dtype == np.float32 and picture.shape == (32, 32)
    scopes = {a["scope"] for a in result["attention"]}
    assert scopes == {"class", "group", "slice"}
    assert all(a["heatmap"] in result["heatmaps"] for a in result["attention"])
    classes = [a for a in result["attention"] if a["scope"] == "class"]
    assert [a["name"] for a in classes] == ["circle"]  # only 'circle' predictions were explained
    assert sum(map(sum, classes[0]["grid"])) == pytest.approx(1.0)


def test_bad_inputs_are_named():
    frame = pd.DataFrame({"index": [0, 1], "label": [0, 1], "pred": [0, 1]})
    with pytest.raises(DataError, match="embeddings have 3 rows"):
        discover(frame, class_names=["a", "b"], embeddings=np.zeros((3, 4)))
    with pytest.raises(DataError, match="not in predictions"):
        discover(frame, class_names=["a", "b"], maps={"gradcam": np.ones((1, 4, 4))}, map_index=[7])
    with pytest.raises(DataError, match="lacks column"):
        discover(frame.drop(columns="pred"), class_names=["a", "b"])
