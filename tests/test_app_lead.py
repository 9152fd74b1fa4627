"""The overview's headline on a store without discoveries (written before discovery existed),
through AppTest: the strongest annotated slice leads, its button opens exactly its members, and
the discoveries section says how to compute them. Oracle: the store read back (Reader)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import app_stores
from audit.store import schema
from audit.store.reader import Reader
from audit.views.findings import strongest_finding
from test_app import clean, matching, start


@pytest.fixture(scope="module")
def old_store(tmp_path_factory):
    out = app_stores.build_store(tmp_path_factory.mktemp("lead_app") / "run", n=600, explained=40, bootstrap=50)
    metrics = json.loads((out / schema.METRICS).read_text())
    for key in ("discovered", "attention", "discovery"):
        metrics.pop(key, None)
    (out / schema.METRICS).write_text(json.dumps(metrics))
    frame = pd.read_parquet(out / schema.PREDICTIONS).drop(columns=list(schema.DISCOVERY_COLUMNS))
    frame.to_parquet(out / schema.PREDICTIONS, index=False)
    return out


def test_headline_without_discoveries_leads_with_the_worst_slice(monkeypatch, old_store):
    reader = Reader(old_store)
    found = strongest_finding(reader)
    assert found is not None and found.kind == "slice" and reader.discovered() == []
    members = reader.slice_rows(found.filter["column"], found.filter["value"])
    at = start(monkeypatch, old_store)
    texts = [m.value for m in at.markdown]
    assert f"### {found.sentence}" in texts  # page text, as the first heading after the title
    assert any("This run has no discoveries" in i.value for i in at.info)
    assert [c.value for c in at.code] == [f"keras-audit discover {old_store}"]
    assert any("Worst annotated slices" in t for t in texts)
    at.button(key="ov_headline_open").click().run()
    clean(at)
    assert matching(at) == (len(members), 600)
