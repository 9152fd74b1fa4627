"""--shard i/n and merge: three shard runs merged equal one single-process run, store for store.

The oracle is the single-process store of the same model, data and options: predictions,
probabilities, stored images, embeddings and the explained indices byte for byte; maps,
activations and activation statistics within float16 storage rounding; metrics.json and the
slice membership identical; the manifest identical but for times, paths and ``merged_from``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.cli import main
from audit.engine.options import AuditOptions, parse_shard
from audit.engine.shard import share
from audit.errors import AuditError
from audit.store import schema
from conftest import CLASSES, SIZE, brightness_model, write_folder_dataset

N = 72
# Small batches so every share has several; all examples explained would hide the selection, so cap it.
ARGS = ["--explain", "gradcam,occlusion,activations", "--explain-limit", "30", "--batch-size", "4",
        "--bootstrap", "50", "--no-tensorboard", "--quiet"]
OPTIONS = AuditOptions(explain=("gradcam", "occlusion", "activations"), explain_limit=30, batch_size=4, bootstrap=50,
                       tensorboard=False)
BYTE_EQUAL = (schema.PREDICTIONS, schema.IMAGES, schema.EMBEDDINGS, schema.HEATMAP_INDEX, schema.SLICES,
              schema.METRICS)
_RUN_ONLY = ("started_at", "finished_at", "merged_from")


def make_data(root: Path) -> dict:
    """72 images whose brightness crosses the class bands now and then (so there are mistakes to
    select), a site annotation, and the hand-weighted brightness model."""
    rng = np.random.default_rng(7)
    labels = np.arange(N) % len(CLASSES)
    centre = np.array([40, 128, 215])[labels] + rng.normal(0, 30, N)
    x = np.clip(centre[:, None, None, None] + rng.integers(-20, 21, (N, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    write_folder_dataset(root / "data", x, labels)
    paths = [f"{CLASSES[k]}/{i:03d}.png" for i, k in enumerate(labels)]
    pd.DataFrame({"path": paths, "site": np.where(np.arange(N) % 3 == 0, "a", "b")}).to_csv(root / "ann.csv",
                                                                                            index=False)
    brightness_model().save(root / "model.keras")
    return {"model": root / "model.keras", "data": root / "data", "annotations": root / "ann.csv"}


def run_args(data: dict, out: Path) -> list[str]:
    return ["run", str(data["model"]), str(data["data"]), "--out", str(out), "--annotations", str(data["annotations"]),
            *ARGS]


def _files(store: Path) -> list[str]:
    return sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())


def _manifest(store: Path) -> dict:
    m = json.loads((store / schema.MANIFEST).read_text())
    for key in _RUN_ONLY:
        m.pop(key, None)
    m["model"]["path"] = str(Path(m["model"]["path"]).resolve())
    m["dataset"]["source"] = str(Path(m["dataset"]["source"]).resolve())
    m["dataset"]["annotations"]["path"] = str(Path(m["dataset"]["annotations"]["path"]).resolve())
    return m


def assert_equivalent_stores(single: Path, other: Path) -> None:
    """``other`` (merged shards, a Ray run) holds what the single-process store ``single`` holds."""
    assert _files(other) == _files(single)
    for rel in BYTE_EQUAL:
        assert (other / rel).read_bytes() == (single / rel).read_bytes(), rel
    explained = json.loads((single / schema.MANIFEST).read_text())["explained"]
    arrays = [schema.heatmap_file(m) for m in explained["methods"]]
    arrays += [schema.signal_file(m) for m in explained["methods"]]
    arrays += [schema.activation_file(layer) for layer in explained["activation_layers"]]
    assert len(np.load(single / schema.HEATMAP_INDEX)) == explained["count"] == 30
    for rel in arrays:  # float16 rows: one storage step apart at most
        a, b = np.load(single / rel), np.load(other / rel)
        assert a.shape == b.shape and a.dtype == b.dtype, rel
        np.testing.assert_allclose(b.astype(np.float64), a.astype(np.float64), rtol=2**-10, atol=2**-11, err_msg=rel)
    stats_a = json.loads((single / schema.ACTIVATION_STATS).read_text())
    stats_b = json.loads((other / schema.ACTIVATION_STATS).read_text())
    assert stats_a.keys() == stats_b.keys()
    for layer, values in stats_a.items():
        for key, v in values.items():
            np.testing.assert_allclose(stats_b[layer][key], v, rtol=2**-10, atol=1e-9, err_msg=f"{layer} {key}")
    assert _manifest(other) == _manifest(single)


@pytest.fixture(scope="module")
def shards(shard_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    outs = [root / f"s{i}" for i in range(3)]
    for i, out in enumerate(outs):
        assert main([*run_args(shard_data, out), "--shard", f"{i}/3"]) == 0
    return outs


# -- shares ------------------------------------------------------------------------------------
def test_shares_tile_the_data_at_batch_multiples():
    # 100 examples, batches of 8, 3 shares: cuts at round(k * 100 / 24) * 8 = 32, 64 (hand-computed).
    parts = [share(f"{i}/3", 100, 8) for i in range(3)]
    assert [(p.start, p.stop) for p in parts] == [(0, 32), (32, 64), (64, 100)]
    # Too few examples for a batch per share: cut at whole examples, still tiling.
    parts = [share(f"{i}/4", 10, 8) for i in range(4)]
    assert [(p.start, p.stop) for p in parts] == [(0, 2), (2, 5), (5, 8), (8, 10)]
    for n in (1, 2, 5, 7):
        cuts = [share(f"{i}/{n}", 1000, 64) for i in range(n)]
        assert cuts[0].start == 0 and cuts[-1].stop == 1000
        assert all(a.stop == b.start and a.stop % 64 == 0 for a, b in zip(cuts, cuts[1:]))
        assert all(c.stop > c.start for c in cuts)


@pytest.mark.parametrize(("text", "message"), [
    ("3/3", "--shard 3/3: i must be 0 to n-1 (0 to 2)"),
    ("0/0", "--shard 0/0: n must be at least 1"),
    ("x", "--shard must be i/n"),
    ("1/-2", "--shard must be i/n"),
    ("1.5/3", "--shard must be i/n"),
])
def test_bad_shard_is_one_line_and_writes_nothing(text, message, tmp_path, capsys, tiny):
    with pytest.raises(AuditError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_shard(text)
    out = tmp_path / "out"
    code = main(["run", str(tiny["model"]), str(tiny["data"]), "--out", str(out), "--shard", text, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not out.exists()


def test_more_shares_than_examples_is_refused(tiny, tmp_path, capsys):
    code = main(["run", str(tiny["model"]), str(tiny["data"]), "--out", str(tmp_path / "o"), "--shard", "0/31",
                 "--quiet"])
    assert code == 2 and "the data has 30 examples, fewer than 31 shares" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- shard runs and merge ------------------------------------------------------------------------
@pytest.mark.slow
def test_three_shards_merged_equal_the_single_process_store(single_store, shards, tmp_path):
    sizes = [json.loads((s / schema.MANIFEST).read_text())["dataset"]["shard"] for s in shards]
    assert [(p["start"], p["stop"]) for p in sizes] == [(0, 24), (24, 48), (48, 72)]  # round(k*72/12)*4
    chosen = np.load(single_store / schema.HEATMAP_INDEX)
    for s, part in zip(shards, sizes):  # each shard explained a superset of its part of the selection
        local = np.load(s / schema.HEATMAP_INDEX) + part["start"]
        mine = chosen[(chosen >= part["start"]) & (chosen < part["stop"])]
        assert set(mine) <= set(local)
    merged = tmp_path / "merged"
    assert main(["merge", str(merged), *map(str, reversed(shards)), "--no-tensorboard", "--quiet"]) == 0
    assert_equivalent_stores(single_store, merged)
    assert json.loads((merged / schema.MANIFEST).read_text())["merged_from"] == [str(s.resolve()) for s in shards]


@pytest.mark.slow
def test_merge_refuses_shards_that_do_not_fit(single_store, shards, tmp_path, capsys):
    cases = [
        ([shards[0], shards[1]], "shard 2/3 missing"),
        ([shards[0], shards[1], shards[1], shards[2]], "share 1/3 is also"),
        ([shards[0], single_store], "not a shard store"),
        ([shards[0], tmp_path / "nowhere"], "not a keras-audit results store"),
    ]
    for given, message in cases:
        out = tmp_path / "m"
        assert main(["merge", str(out), *map(str, given), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()
