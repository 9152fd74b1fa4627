"""The discovery post-step on a finished store (audit.engine.discovery), without TensorFlow.

On the synthetic planted-bias store of ``app_stores``: what discovery writes round-trips through
the Reader (every group's members are its rows in the found_* column, its heatmap the file
listed), the replacement is atomic (a SIGKILL in the middle leaves each file old or new and the
store marked pending; running again ends identical to an uninterrupted pass), stale mean maps
go, a user's file stays, and ``keras-audit discover OUT`` never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import app_stores
from audit.store import schema
from audit.store.reader import Reader

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _discover_cli(store: Path, *, kill_at: str | None = None) -> subprocess.CompletedProcess:
    # sys.modules is checked in the same process, after the command ran.
    code = ("import sys; from audit.cli import main; rc = main(['discover', sys.argv[1]]); "
            "print('HEAVY', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)); sys.exit(rc)")
    env = {**ENV, **({"KERAS_AUDIT_KILL_AT": kill_at} if kill_at else {})}
    return subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def discovered(tmp_path_factory):
    root = tmp_path_factory.mktemp("step")
    store = app_stores.build_store(root / "run", n=300, explained=90, bootstrap=20)
    (store / schema.DISCOVERED_DIR / "my_notes.txt").write_text("mine\n")  # a user's file, never listed
    done = _discover_cli(store)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "store": store, "stdout": done.stdout}


def test_discover_needs_no_tensorflow(discovered):
    assert "HEAVY []" in discovered["stdout"]
    assert "discovered groups" in discovered["stdout"]


def test_written_discovery_round_trips(discovered):
    store = discovered["store"]
    run = Reader(store)
    manifest = run.manifest
    assert manifest["discovery"] == schema.DISCOVERY_WRITTEN and manifest["complete"]
    frame = pd.read_parquet(store / schema.PREDICTIONS)
    for column in schema.DISCOVERY_COLUMNS:
        assert str(frame[column].dtype) == "Int64"
    assert run.annotation_columns == ["cue", "cue_agrees", "background", "brightness", "contrast"]
    groups = run.discovered()
    assert groups, "discovery found no group at all on a store with a planted error slice"
    for g in groups:
        members = run.discovered_members(g)
        assert len(members) == g["n"]
        assert int((~frame.set_index("index").loc[members, "correct"]).sum()) == g["errors"]
        if g.get("heatmap"):
            assert g["heatmap"] in manifest["files"]
            assert run.discovered_heatmap(g).dtype == np.float32
    on_disk = {p.relative_to(store).as_posix() for p in (store / schema.DISCOVERED_DIR).glob("*.npy")}
    listed = {f for f in manifest["files"] if f.startswith(schema.DISCOVERED_DIR + "/")}
    assert on_disk == listed  # the hand-made maps of build_store that discovery did not remake are gone
    assert (store / schema.DISCOVERED_DIR / "my_notes.txt").read_text() == "mine\n"
    assert not (store / schema.WORK_DIR).exists()
    # Everything else in metrics.json is as the run wrote it.
    metrics = json.loads((store / schema.METRICS).read_text())
    assert {"discovered", "attention", "discovery", "slices", "accuracy"} <= set(metrics)


def _snapshot(store: Path) -> dict[str, bytes]:
    skip = (schema.LOCK_FILE, schema.MANIFEST)
    files = {p.relative_to(store).as_posix(): p.read_bytes() for p in store.rglob("*") if p.is_file()
             and p.name not in skip}
    files["manifest"] = json.dumps({k: v for k, v in json.loads((store / schema.MANIFEST).read_text()).items()},
                                   sort_keys=True).encode()
    return files


def test_a_kill_midway_leaves_old_or_new_and_a_rerun_redoes(discovered):
    store, root = discovered["store"], discovered["root"]
    before = _snapshot(store)
    cut = root / "cut"
    shutil.copytree(store, cut)
    # Make the previous state differ from the next pass, so "old or new" can be told apart.
    metrics = json.loads((cut / schema.METRICS).read_text())
    metrics["discovered"], metrics["attention"] = [], []
    (cut / schema.METRICS).write_text(json.dumps(metrics))
    old_metrics = (cut / schema.METRICS).read_bytes()
    killed = _discover_cli(cut, kill_at="commit")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    manifest = json.loads((cut / schema.MANIFEST).read_text())
    assert manifest["discovery"] == schema.DISCOVERY_PENDING
    assert (cut / schema.METRICS).read_bytes() == old_metrics  # the first move is a mean map, not metrics
    assert len(Reader(cut).predictions) == 300  # every file readable: old or new, never half-written
    from audit.store.writer import StoreWriter

    resumed = StoreWriter(cut, resume=True)  # `run --resume` accepts a store pending only its discovery
    assert resumed.export_only
    resumed.close()
    redo = _discover_cli(cut)
    assert redo.returncode == 0, redo.stderr[-2000:]
    # Redone from the store alone, it ends byte for byte where the first pass did (a pure function).
    assert _snapshot(cut) == before


def test_refusals_are_one_line(tmp_path):
    done = _discover_cli(tmp_path / "missing")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "does not exist" in done.stderr
